"""Memoized sweeps: an evaluation recomputes only what its quantizers can have changed.

In the enabling sweep for layer k only k's quantizers are on, so every call before the first call
that uses one of them computes exactly what the FP32 model computes; in the disabling sweep,
exactly what the fully quantized model computes. :class:`Memo` remembers, per eval batch
(recognised by a hash of its content, never by object identity), the tensors that cross the cut
in front of that first call (the *frontier*), and in the next evaluation of the same batch replays
everything before the frontier: calls there return the remembered tensors, or zero-size
placeholders with the right shape for tensors nothing after the cut reads, without computing.
The Python of the forward still runs, so its control flow is followed: a call that differs from
the trace (another op, another module), or one that reads values of a placeholder (``bool(x)``,
``x.item()``: control flow that depends on data), abandons the replay, and the pass runs again in
full. Going through layers in execution order, the frontier moves forward one layer at a time.

Memory: the remembered tensors of all batches stay under a budget; a batch that would exceed it
is simply evaluated in full. Results are bit-identical to full evaluations (the replayed values
are those the full computation produced).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch

__all__ = ["Abandon", "Event", "Structure", "Memo", "batch_key", "VALUE_FREE"]

log = logging.getLogger("qa.adapters.torch")

TensorId = Tuple[int, int]  # (event position, output index)
_FOREVER = 1 << 60

# Calls that read no values: safe on a placeholder (which has the right shape, dtype and device).
VALUE_FREE = frozenset({"size", "dim", "numel", "shape", "dtype", "device", "ndim", "is_floating_point", "layout",
                        "requires_grad", "__len__", "names", "is_quantized", "element_size", "is_complex",
                        "is_signed", "get_device", "__get__", "__format__", "__repr__", "__hash__", "data_ptr",
                        "is_cuda", "is_sparse", "_has_compatible_shallow_copy_type"})


class Abandon(Exception):
    """The pass no longer follows the trace (or reads a placeholder's values): run it in full."""


class _Slot:
    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i


def template_of(out: Any) -> Any:
    """The structure of a call's result with its tensors replaced by numbered slots."""
    counter = [0]

    def walk(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            counter[0] += 1
            return _Slot(counter[0] - 1)
        if isinstance(obj, (list, tuple)):
            items = [walk(o) for o in obj]
            return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
        if isinstance(obj, dict):
            return type(obj)({k: walk(v) for k, v in obj.items()})
        return obj
    return walk(out)


def _fill(template: Any, values: Sequence[torch.Tensor]) -> Any:
    if isinstance(template, _Slot):
        return values[template.i]
    if isinstance(template, (list, tuple)):
        items = [_fill(o, values) for o in template]
        return type(template)(*items) if hasattr(template, "_fields") else type(template)(items)
    if isinstance(template, dict):
        return type(template)({k: _fill(v, values) for k, v in template.items()})
    return template


class Event:
    """One call of a forward pass as traced: what it is, what it read, what it made.

    ``inputs`` lists, per tensor read, every (event, output) that handed out that very tensor
    object (a call that returns its input, such as ``contiguous()``, hands it out again);
    ``same_as`` maps an output to the input it *is* (in-place ops, pass-through calls)."""

    __slots__ = ("ident", "inputs", "n_outputs", "template", "same_as")

    def __init__(self, ident: Tuple[Any, ...], inputs: List[List[TensorId]], out: Any, n_outputs: int,
                 same_as: Dict[int, int]) -> None:
        self.ident = ident
        self.inputs = inputs
        self.n_outputs = n_outputs
        self.template = template_of(out)
        self.same_as = same_as


class Structure:
    """The traced pass as events, with where each tensor is last read (model outputs: never dropped)
    and which tensors a later call changes in place (they must be real tensors when replayed)."""

    def __init__(self, events: List[Event], outputs: Set[TensorId]) -> None:
        self.events = events
        self.last_use: Dict[TensorId, int] = {}
        self.mutated: Set[TensorId] = set()
        for p, ev in enumerate(events):
            for ids in ev.inputs:
                for t in ids:
                    self.last_use[t] = max(self.last_use.get(t, -1), p)
            for j in ev.same_as.values():
                self.mutated.update(ev.inputs[j] if j < len(ev.inputs) else ())
        for t in outputs:
            self.last_use[t] = _FOREVER
        self.in_place = bool(self.mutated)

    def live_at(self, cut: int) -> List[TensorId]:
        """Tensors made before ``cut`` that a call at or after it (or the model's result) reads."""
        return [t for t, last in self.last_use.items() if t[0] < cut <= last]


def batch_key(args: Any, kwargs: Dict[str, Any]) -> str:
    """A hash of a batch's content (tensors byte for byte, with shapes and dtypes; other values by repr)."""
    h = hashlib.blake2b(digest_size=16)

    def add(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach()
            h.update(f"T{tuple(t.shape)}{t.dtype}{t.device}".encode())
            data = t.contiguous().cpu()
            h.update(data.view(torch.uint8).numpy().tobytes() if data.dtype == torch.bfloat16
                     else np.ascontiguousarray(data.numpy()).view(np.uint8).tobytes())
        elif isinstance(obj, (list, tuple)):
            h.update(b"[")
            for o in obj:
                add(o)
            h.update(b"]")
        elif isinstance(obj, dict):
            h.update(b"{")
            for k in obj:
                h.update(repr(k).encode())
                add(obj[k])
            h.update(b"}")
        else:
            h.update(repr(obj).encode())
    add((args, kwargs))
    return h.hexdigest()


class _Batch:
    __slots__ = ("frontier", "live", "metas", "nbytes")

    def __init__(self) -> None:
        self.frontier = 0
        self.live: Dict[TensorId, torch.Tensor] = {}
        self.metas: Dict[int, List[Tuple[torch.Size, torch.dtype, torch.device]]] = {}
        self.nbytes = 0


class Memo:
    """The memo of one sweep: per batch, the frontier and the tensors live there (see the module docstring).

    ``cuts`` maps each quantizer to the position of the first call that uses it. Before each
    evaluation the engine names the quantizers that differ from the sweep's reference
    (:meth:`focus`); the cut is the first call using any of them.
    """

    def __init__(self, structure: Structure, cuts: Dict[str, int], budget: int, clone: bool) -> None:
        self.structure = structure
        self.cuts = cuts
        self.budget = budget
        self.clone = clone or structure.in_place  # copies keep the memo intact when the model writes in place
        self.batches: Dict[str, Optional[_Batch]] = {}  # None: over the budget, always in full
        self.cut = 0
        self.nbytes = 0
        self.saved = 0  # calls replayed instead of computed
        self.total = 0
        self.abandoned = 0
        self._pass: Optional[_Batch] = None
        self._new: Dict[TensorId, torch.Tensor] = {}
        self._live_next: Set[TensorId] = set()
        self._placeholders: Dict[int, torch.Tensor] = {}
        self.replaying = False
        self.position = 0

    def focus(self, differing: Sequence[str]) -> None:
        positions = [self.cuts[q] for q in differing if q in self.cuts]
        self.cut = min(positions) if positions else len(self.structure.events)

    # -- a pass --

    def start(self, args: Any, kwargs: Dict[str, Any]) -> None:
        key = batch_key(args, kwargs)
        if key not in self.batches:
            self.batches[key] = _Batch()
        self._key = key
        self._pass = self.batches[key]
        batch = self._pass
        self.replaying = batch is not None and 0 < batch.frontier <= self.cut
        self.position = 0
        self._new = {}
        self._live_next = set(self.structure.live_at(self.cut)) if batch is not None else set()
        self._placeholders = {}

    def abandon(self) -> None:
        """Run this pass again in full (it left the trace or read a placeholder's values)."""
        self.abandoned += 1
        self.replaying = False
        self.position = 0
        self._new = {}
        self._placeholders = {}

    def finish(self) -> None:
        """The pass completed: the frontier of its batch moves to the cut."""
        batch = self._pass
        self._pass = None
        if batch is None or self.position != len(self.structure.events):
            return
        live = {t: v for t, v in batch.live.items() if t in self._live_next}
        live.update(self._new)
        if set(live) != self._live_next:
            return
        nbytes = sum(v.numel() * v.element_size() for v in live.values())
        if self.nbytes - batch.nbytes + nbytes > self.budget:
            self.nbytes -= batch.nbytes
            self.batches[self._key] = None
            log.info("memoized sweeps: a batch's remembered tensors would exceed memo_memory_budget; it is "
                     "evaluated in full")
            return
        self.nbytes += nbytes - batch.nbytes
        batch.live, batch.nbytes, batch.frontier = live, nbytes, self.cut
        self._new = {}

    # -- each call --

    def begin(self, ident: Tuple[Any, ...]) -> int:
        """The position of the call now starting. A call other than the traced one there abandons a
        replay; in a full pass it only means that this pass cannot be remembered."""
        p = self.position
        self.position = p + 1
        self.total += 1
        events = self.structure.events
        if p >= len(events) or events[p].ident != ident:
            if self.replaying:
                raise Abandon(f"call {p} is {ident}, the trace has {events[p].ident if p < len(events) else 'none'}")
            self._pass = None  # diverged: nothing of this pass is remembered
        return p

    def skips(self, p: int) -> bool:
        return self.replaying and p < self._pass.frontier

    def replay(self, p: int, inputs: Sequence[torch.Tensor]) -> Any:
        """The result of call ``p`` without computing it: remembered tensors, placeholders for the
        rest; an output that *is* one of the inputs (in place, pass-through) is that input, holding
        the remembered value when one is live."""
        batch = self._pass
        metas = batch.metas.get(p)
        ev = self.structure.events[p]
        if metas is None or len(metas) != ev.n_outputs:
            raise Abandon(f"no shapes recorded for call {p}")
        values = []
        for i, (shape, dtype, device) in enumerate(metas):
            v = batch.live.get((p, i))
            j = ev.same_as.get(i)
            if j is not None and j < len(inputs):
                target = inputs[j]
                if v is not None:
                    if id(target) in self._placeholders:
                        raise Abandon(f"call {p} changes a tensor in place that was not computed")
                    with torch.no_grad():
                        target.copy_(v)
                values.append(target)
                continue
            if v is None:
                if (p, i) in self.structure.mutated:  # changed in place later: a real (scratch) tensor
                    v = torch.empty(shape, dtype=dtype, device=device)
                else:
                    v = torch.zeros((), dtype=dtype, device=device).expand(shape)
                    self._placeholders[id(v)] = v  # held for the pass: the id stays this tensor's
            elif self.clone or (p, i) in self.structure.mutated:
                v = v.clone()
            values.append(v)
        self.saved += 1
        return _fill(ev.template, values)

    def check_reads(self, name: str, tensors: Sequence[torch.Tensor]) -> None:
        """A call that reads values (it returns no tensor, so it cannot be replayed) must not read a placeholder."""
        if name not in VALUE_FREE and any(id(t) in self._placeholders for t in tensors):
            raise Abandon(f"{name} reads the values of a tensor that was not computed (control flow on data)")

    def end(self, p: int, outputs: Sequence[torch.Tensor]) -> None:
        """Call ``p`` computed ``outputs``: note their shapes; remember those live at the cut."""
        batch = self._pass
        if batch is None:
            return
        if p not in batch.metas:
            batch.metas[p] = [(t.shape, t.dtype, t.device) for t in outputs]
        if p < self.cut:
            for i, t in enumerate(outputs):
                if (p, i) in self._live_next:
                    self._new[(p, i)] = t.detach().clone() if self.clone else t.detach()

    def stats(self) -> str:
        share = self.saved / self.total if self.total else 0.0
        return (f"{self.saved} of {self.total} calls replayed ({share:.0%}), {len(self.batches)} batch(es), "
                f"{self.nbytes / 2**20:.1f} MiB remembered, {self.abandoned} pass(es) run again in full")
