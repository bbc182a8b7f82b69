"""Every call in a forward pass of the analysis copy, seen and named: leaf modules and torch ops.

One :class:`Interceptor` is installed on qa's copy of the model. A forward pre/post hook on every
module keeps the stack of module calls (the *scope*); while the model runs, a
``TorchFunctionMode`` sees every torch function called outside known leaf modules (``F.conv2d``,
``torch.matmul``, ``x + y``, ``softmax``, ...). The same code traces a pass on ``dummy_input``
(recording calls, data flow and parameter reads) and, later, quantizes each call's outputs.

Why a function mode rather than ``torch.export``/FX: a forward may branch on data, call modules a
data-dependent number of times or build its inputs in Python; interception runs the user's own
Python unchanged, so whatever runs is seen. An op is identified by its scope (the module call
it runs in), its call site in the source (code object and line) and its order at that site, so
that an op on a branch the trace did not take can never borrow another op's quantizers: it runs
in float and is reported. Its readable layer name is ``<scope>/<op>`` with a per-scope counter
(``encoder.layer.0.attention.self/matmul_1``), fixed by the trace and identical across runs.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import numpy as np
import torch
from torch import nn

from ...graph import Quantizer, call_name
from .decompose import DECOMPOSED
from .memo import Abandon, Event, Memo, Structure
from .ops import META, MOVE, FuncInfo, OpBatchNorm, classify, groups_of, is_float, name_of, param_role

__all__ = ["Call", "Trace", "Interceptor", "Site", "tensors", "key_of"]

log = logging.getLogger("qa.adapters.torch")

OpKey = Tuple[str, Any, int, str, int]  # scope, code object, line, op name, order at that site
_SKIP = (os.path.dirname(torch.__file__), __file__)


def tensors(obj: Any) -> List[torch.Tensor]:
    """Every tensor in a (nested) tuple/list/dict, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in tensors(o)]
    return []


def key_of(t: torch.Tensor) -> Tuple[int, int]:
    """A tensor's identity in the data flow: in-place ops bump _version, so the tensor they
    return counts as new, while pass-through calls keep the key."""
    return (id(t), t._version)


def _call_site() -> Tuple[Any, int]:
    """The code object and line of the first frame outside torch and this module."""
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(_SKIP):
        f = f.f_back
    return (f.f_code, f.f_lineno) if f is not None else (None, 0)


class Call:
    """One call in a traced pass: a leaf module's call or a torch op's."""

    __slots__ = ("kind", "module", "index", "key", "info", "inputs", "outputs", "n_outputs", "params", "dynamic",
                 "name", "groups", "computed_weight", "position", "bn")

    def __init__(self, kind: str, module: str, index: int = 0, key: Optional[OpKey] = None,
                 info: Optional[FuncInfo] = None) -> None:
        self.kind = kind  # "module" or "op"
        self.module = module  # the module (kind "module") or the scope the op runs in
        self.index = index  # the k-th call of the module in this pass, from 0
        self.key = key
        self.info = info
        self.inputs: List[Tuple[int, int]] = []
        self.outputs: List[Tuple[int, int]] = []
        self.n_outputs = 0  # float outputs
        self.params: List[Tuple[str, nn.Parameter, bool]] = []  # (role, parameter, read as itself)
        self.dynamic = True  # computes on model inputs (False: on constants only)
        self.name = call_name(module, index) if kind == "module" else ""
        self.groups = 1
        self.computed_weight = False  # a weight slot holds a tensor computed from parameters
        self.position = -1  # its place among all calls of the pass (Trace.events)
        self.bn: Any = None  # a batch norm op's statistics (fold.OpBatchNorm)


class Trace:
    """One forward pass observed: calls in order, data flow, parameter reads."""

    def __init__(self, model_inputs: Iterable[torch.Tensor], param_names: Dict[int, str]) -> None:
        self.order: List[Call] = []
        self.calls: Dict[str, int] = {}  # module -> how many times it ran
        self.running: Dict[str, List[Call]] = {}
        self.keep: List[torch.Tensor] = []  # holds tensors so that their ids stay unique
        inputs = list(model_inputs)
        self.keep.extend(inputs)
        self.dynamic: Set[Tuple[int, int]] = {key_of(t) for t in inputs}
        self.model_inputs = {key_of(t) for t in inputs if t.is_floating_point()}  # get input quantizers
        self.alias: Dict[Tuple[int, int], Tuple[int, int]] = {}  # a moved tensor -> the one it came from
        self.param_of: Dict[Tuple[int, int], nn.Parameter] = {}  # a view of a parameter -> the parameter
        self.param_names = param_names  # id(parameter) -> its qualified name
        self.model_outputs: Set[Tuple[int, int]] = set()
        self.ops: Set[OpKey] = set()  # every op seen, layer or not
        # every call as an event, for memoized sweeps (:mod:`.memo`)
        self.events: List[Optional[Event]] = []
        self.handed: Dict[Tuple[int, int], List[Tuple[int, int]]] = {}  # tensor key -> (event, output)s
        self._opened: Dict[int, Tuple[List[torch.Tensor], List[Tuple[int, int]]]] = {}

    def open(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> int:
        """The position of a call starting now with these arguments (its tensors are read now,
        before an in-place call changes their version); :meth:`close` completes it."""
        ins = tensors((args, kwargs))
        self._opened[len(self.events)] = (ins, [key_of(t) for t in ins])
        self.events.append(None)
        return len(self.events) - 1

    def close(self, p: int, ident: Tuple[Any, ...], out: Any) -> None:
        ins, in_keys = self._opened.pop(p)
        outs = tensors(out)
        self.keep.extend(outs)
        inputs = [list(self.handed.get(k, [])) for k in in_keys]
        same_as: Dict[int, int] = {}
        for i, t in enumerate(outs):
            k = key_of(t)
            j = next((j for j, x in enumerate(ins) if x is t), None)
            if j is not None:
                same_as[i] = j
            if k in in_keys:  # handed out again (pass-through): one more name for the same tensor
                self.handed.setdefault(k, []).append((p, i))
            else:
                self.handed[k] = [(p, i)]
        self.events[p] = Event(ident, inputs, out, len(outs), same_as)

    def structure(self) -> Structure:
        outputs = {t for k in self.model_outputs for t in self.handed.get(k, [])}
        return Structure([e for e in self.events if e is not None], outputs)

    def source(self, k: Tuple[int, int]) -> Tuple[int, int]:
        while k in self.alias:
            k = self.alias[k]
        return k

    def _param(self, t: torch.Tensor) -> Optional[nn.Parameter]:
        if isinstance(t, nn.Parameter):
            return t
        return self.param_of.get(key_of(t))

    def moved(self, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Any) -> None:
        ins, outs = tensors((args, kwargs)), tensors(out)
        if not ins:
            return
        src = key_of(ins[0])
        param = self._param(ins[0])
        self.keep.extend(outs)
        for t in outs:
            k = key_of(t)
            if k == src:
                continue
            self.alias[k] = src
            if any(key_of(i) in self.dynamic for i in ins):
                self.dynamic.add(k)
            if param is not None:
                self.param_of[k] = param

    def op(self, key: OpKey, info: FuncInfo, func: Callable[..., Any], args: Tuple[Any, ...],
           kwargs: Dict[str, Any]) -> Any:
        self.ops.add(key)
        call = Call("op", key[0], key=key, info=info)
        call.position = len(self.events) - 1
        for position, keyword, t in _slots(args, kwargs):
            self.keep.append(t)
            call.inputs.append(key_of(t))
            param = self._param(t)
            role = param_role(info.name, position, keyword)
            if param is not None:
                name = role or self.param_names.get(id(param), "param").rpartition(".")[2]
                call.params.append((name, param, param is t))
            elif role == "weight" and key_of(t) not in self.dynamic and is_float(t):
                call.computed_weight = True
        out = func(*args, **kwargs)
        outs = tensors(out)
        self.keep.extend(outs)
        call.outputs = [key_of(t) for t in outs]
        call.n_outputs = sum(1 for t in outs if t.is_floating_point())
        call.dynamic = any(k in self.dynamic for k in call.inputs)
        call.groups = groups_of(info.name, args, kwargs)
        if info.name == "batch_norm":
            call.bn = OpBatchNorm.of_call(func, args, kwargs)
        if call.outputs and set(call.outputs) <= set(call.inputs):  # returned its input: computes nothing
            return out
        if call.dynamic:
            self.dynamic.update(call.outputs)
        self.order.append(call)
        return out

    def module_start(self, name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        ts = tensors((args, kwargs))
        self.keep.extend(ts)
        call = Call("module", name, self.calls.get(name, 0))
        call.position = len(self.events) - 1
        call.inputs = [key_of(t) for t in ts]
        self.calls[name] = call.index + 1
        self.order.append(call)
        self.running.setdefault(name, []).append(call)

    def module_end(self, name: str, output: Any) -> None:
        ts = tensors(output)
        self.keep.extend(ts)
        call = self.running[name].pop()
        call.outputs = [key_of(t) for t in ts]
        call.n_outputs = sum(t.is_floating_point() for t in ts)
        call.dynamic = any(k in self.dynamic for k in call.inputs)
        if call.dynamic:
            self.dynamic.update(call.outputs)

    def finish(self, output: Any) -> None:
        self.keep.extend(tensors(output))
        self.model_outputs = {key_of(t) for t in tensors(output)}


def _slots(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> List[Tuple[Optional[int], Optional[str], torch.Tensor]]:
    """(position, keyword, tensor) for every tensor argument; a tensor inside a list argument
    (``torch.cat([a, b])``) has its list's position."""
    found = []
    for i, a in enumerate(args):
        for t in tensors(a):
            found.append((i, None, t))
    for k, v in kwargs.items():
        for t in tensors(v):
            found.append((None, k, t))
    return found


def _map(obj: Any, fn: Callable[[int, torch.Tensor], torch.Tensor], counter: List[int]) -> Any:
    """obj with its i-th tensor (in :func:`tensors` order) replaced by fn(i, tensor)."""
    if isinstance(obj, torch.Tensor):
        i = counter[0]
        counter[0] += 1
        return fn(i, obj)
    if isinstance(obj, dict):
        items = {k: _map(v, fn, counter) for k, v in obj.items()}
        if type(obj) is dict:
            return items
        try:
            return type(obj)(**items)
        except Exception:  # a mapping type that cannot be rebuilt from keywords: mutate a copy
            new = obj.copy()
            new.update(items)
            return new
    if isinstance(obj, (list, tuple)):
        items = [_map(o, fn, counter) for o in obj]
        if hasattr(obj, "_fields"):
            return type(obj)(*items)
        if type(obj) in (list, tuple):
            return type(obj)(items)
        return type(obj)(items)  # torch.return_types and other sequence types
    return obj


def _replace(args: Tuple[Any, ...], kwargs: Dict[str, Any], fn: Callable[[int, torch.Tensor], torch.Tensor]
             ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """args and kwargs with the i-th tensor (in :func:`_slots` order) replaced by fn(i, tensor)."""
    counter = [0]
    new_args = tuple(_map(a, fn, counter) for a in args)
    return new_args, {k: _map(v, fn, counter) for k, v in kwargs.items()}


def _with_bias(args: Tuple[Any, ...], kwargs: Dict[str, Any], bias: torch.Tensor
               ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """A folded batch norm's bias for an op called with ``bias=None`` (position 2 or keyword)."""
    if "bias" in kwargs or len(args) <= 2:
        kwargs = dict(kwargs, bias=bias)
    else:
        args = args[:2] + (bias,) + args[3:]
    return args, kwargs


class Site:
    """The quantizers of one layer (a call of a leaf module or one op), as the interceptor uses them."""

    __slots__ = ("name", "inputs", "outputs")

    def __init__(self, name: str, inputs: Dict[int, Quantizer], outputs: List[Quantizer]) -> None:
        self.name = name
        self.inputs = inputs  # tensor position (leaf modules: 0) -> input quantizer
        self.outputs = outputs


class _Mode(torch.overrides.TorchFunctionMode):
    def __init__(self, owner: "Interceptor") -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self.owner.on_function(func, args, kwargs or {})


def to_numpy(t: torch.Tensor) -> Any:
    """float32 numpy (zero-copy for contiguous CPU float32), or the CUDA tensor itself."""
    t = t.detach()
    if t.is_cuda:
        return t.float().contiguous()
    return t.float().contiguous().numpy()


def from_result(result: Any, like: torch.Tensor) -> torch.Tensor:
    if isinstance(result, np.ndarray):
        out = torch.from_numpy(result)
    else:  # a CUDA array from qa's kernels
        out = torch.as_tensor(result, device=like.device)
    return out.to(like.dtype) if out.dtype != like.dtype else out


class Interceptor:
    """Module hooks and the function mode on qa's copy of a model; traces and quantizes calls.

    ``adapter`` provides the observe/quantize/capture mechanics (``_activation``,
    ``_layer_outputs``). ``leaves`` are the known leaf modules (one layer per call); every other
    module only names the scope of the ops it runs. ``bias`` holds the biases of folded batch
    norms for ops called with ``bias=None``, by op key.
    """

    def __init__(self, adapter: Any, model: nn.Module, leaves: Dict[str, nn.Module],
                 bias: Optional[Dict[OpKey, nn.Parameter]] = None, folded: Optional[Set[OpKey]] = None) -> None:
        self.adapter = adapter
        self.model = model
        self.leaves = leaves
        self.bias: Dict[OpKey, nn.Parameter] = dict(bias or {})
        self.folded: Set[OpKey] = set(folded or ())  # batch-norm ops folded away: they return their input
        self.stack: List[str] = []
        self.counts: Dict[str, int] = {}  # module -> calls so far in this pass
        self.op_counts: Dict[Tuple[str, Any, int, str], int] = {}
        self.leaf_depth = 0
        self.busy = False
        self.depth = 0
        self.trace: Optional[Trace] = None
        self.module_sites: Dict[str, List[Optional[Site]]] = {}
        self.op_sites: Dict[OpKey, Site] = {}
        self.traced_ops: Set[OpKey] = set()
        self.extra_calls: Set[str] = set()  # modules that ran more often than in the trace
        self.untraced_modules: Set[str] = set()
        self.untraced_ops: Set[str] = set()
        self.mode = _Mode(self)
        self._running: Optional[Site] = None
        self.memo: Optional[Memo] = None  # set for the evaluations of a memoized sweep
        self._skipping: Optional[int] = None  # the leaf call being replayed
        self._leaf_at = 0  # the position of the leaf call running
        self.handles = [model.register_forward_pre_hook(self._start, prepend=True, with_kwargs=True),
                        model.register_forward_hook(self._end, always_call=True)]
        self._forwards = [model] + [m for m in leaves.values()]
        model.forward = self._root_forward(model.forward)
        for m in leaves.values():
            m.forward = self._leaf_forward(m.forward)
        seen: Set[int] = set()
        for name, m in model.named_modules():
            if id(m) in seen:
                continue
            seen.add(id(m))
            leaf = name in leaves
            self.handles.append(m.register_forward_pre_hook(self._pre(name, leaf), with_kwargs=True))
            self.handles.append(m.register_forward_hook(self._post(name, leaf), always_call=True))

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        for m in self._forwards:
            m.__dict__.pop("forward", None)
        self._forwards = []

    def _root_forward(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            if self.memo is None:
                return forward(*args, **kwargs)
            try:
                return forward(*args, **kwargs)
            except Abandon as why:
                log.debug("memoized sweep: %s; the pass runs again in full", why)
                self.memo.abandon()
                self._reset(root=True)
                return forward(*args, **kwargs)
        return run

    def _leaf_forward(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            if self._skipping is not None:
                return self.memo.replay(self._skipping, tensors((args, kwargs)))
            return forward(*args, **kwargs)
        return run

    def _reset(self, root: bool = False) -> None:
        self.counts.clear()
        self.op_counts.clear()
        self.stack[:] = [""] if root else []
        if root:
            self.counts[""] = 1
        self.leaf_depth = 0
        self._skipping = None
        self._running = None

    # -- one pass --

    def _start(self, module: nn.Module, args: Any, kwargs: Dict[str, Any]) -> None:
        self.depth += 1
        if self.depth > 1:
            return
        self._reset()
        self.adapter._new_pass()
        if self.memo is not None:
            self.memo.start(args, kwargs)
        self.mode.__enter__()

    def _end(self, module: nn.Module, args: Any, output: Any) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.mode.__exit__(None, None, None)
            if self.memo is not None and output is not None:
                self.memo.finish()

    def _pre(self, name: str, leaf: bool):
        def hook(module, args, kwargs):
            if self.busy or self.leaf_depth:
                return None
            k = self.counts.get(name, 0)
            self.counts[name] = k + 1
            self.stack.append(call_name(name, k) if name else "")
            if not leaf:
                return None
            self.leaf_depth += 1
            self.busy = True  # qa's own bookkeeping below is no call of the model's
            try:
                return self._leaf_start(name, k, args, kwargs)
            finally:
                self.busy = False
        return hook

    def _leaf_start(self, name: str, k: int, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        if self.trace is not None:
            self._leaf_at = self.trace.open(args, kwargs)
            self.trace.module_start(name, args, kwargs)
            return None
        if self.memo is not None:
            self._leaf_at = self.memo.begin(("m", name))
            if self.memo.skips(self._leaf_at):
                self._skipping = self._leaf_at
                return None
        return self._leaf_input(name, k, args, kwargs)

    def _post(self, name: str, leaf: bool):
        def hook(module, args, output):
            if self.busy or (self.leaf_depth and not leaf):
                return None
            if self.stack:
                self.stack.pop()
            if not leaf:
                return None
            self.leaf_depth -= 1
            if output is None:  # the forward raised (this hook is always called)
                self._running = None
                return None
            self.busy = True
            try:
                return self._leaf_end(name, args, output)
            finally:
                self.busy = False
        return hook

    def _leaf_end(self, name: str, args: Tuple[Any, ...], output: Any) -> Any:
        if self.trace is not None:
            self.trace.module_end(name, output)
            self.trace.close(self._leaf_at, ("m", name), output)
            return None
        if self._skipping is not None:
            self._skipping = None
            return None
        result = self._leaf_output(name, output)
        if self.memo is not None:
            self.memo.end(self._leaf_at, tensors(output if result is None else result))
        return result

    def _leaf_site(self, name: str, k: int) -> Optional[Site]:
        sites = self.module_sites.get(name)
        if sites is None:
            self.untraced_modules.add(name)
            return None
        if k >= len(sites):  # more calls than on dummy_input: the last traced call's quantizers
            self.extra_calls.add(name)
            k = len(sites) - 1
        return sites[k]

    def _leaf_input(self, name: str, k: int, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        site = self._leaf_site(name, k)
        self._running = site
        if site is None or 0 not in site.inputs or not args or not is_float(args[0]):
            return None
        quantized = self._quantize(site.inputs[0].name, args[0])
        return None if quantized is None else ((quantized,) + tuple(args[1:]), kwargs)

    def _leaf_output(self, name: str, output: Any) -> Any:
        site = self._running
        self._running = None
        if site is None:
            return None
        return self._outputs(site, output)

    def _quantize(self, name: str, t: torch.Tensor) -> Optional[torch.Tensor]:
        busy, self.busy = self.busy, True
        try:
            q = self.adapter._activation(name, lambda: to_numpy(t))
            return None if q is None else from_result(q, t)
        finally:
            self.busy = busy

    def _outputs(self, site: Site, output: Any, inplace: Tuple[torch.Tensor, ...] = ()) -> Any:
        """The output after the site's output quantizers; a tensor written in place gets the
        quantized values written back into it (whoever holds it sees them)."""
        ts = tensors(output)
        if not ts:
            return output
        busy, self.busy = self.busy, True
        try:
            result = self.adapter._layer_outputs(site.name, ts, site.outputs, is_float, to_numpy, from_result)
            for i, (old, new) in enumerate(zip(ts, result)):
                if new is not old and any(old is t for t in inplace):
                    with torch.no_grad():
                        old.copy_(new)
                    result[i] = old
        finally:
            self.busy = busy
        if all(new is old for old, new in zip(ts, result)):
            return output
        return _map(output, lambda i, t: result[i], [0])

    # -- ops --

    def on_function(self, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        if self.busy or self.leaf_depth:
            return func(*args, **kwargs)
        info = classify(func)
        if isinstance(info, FuncInfo):
            written_out = DECOMPOSED.get(info.name)
            if written_out is not None:
                with self.mode:  # the mode is off inside its own handler: on again for the ops written out
                    out = written_out(*args, **kwargs)
                if out is not NotImplemented:
                    return out
        if self.trace is None and self.memo is None:
            return self._call(info, func, args, kwargs)
        ident = ("f", self.stack[-1] if self.stack else "", name_of(func))
        if self.trace is not None:
            p = self.trace.open(args, kwargs)
            out = self._call(info, func, args, kwargs)
            self.trace.close(p, ident, out)
            return out
        return self._memo_call(ident, info, func, args, kwargs)

    def _memo_call(self, ident: Tuple[Any, ...], info: Any, func: Callable[..., Any], args: Tuple[Any, ...],
                   kwargs: Dict[str, Any]) -> Any:
        """A call in a memoized pass: replayed before the frontier, computed (and remembered) after."""
        memo = self.memo
        p = memo.begin(ident)
        if memo.skips(p):
            ins = tensors((args, kwargs))
            if not memo.structure.events[p].n_outputs:  # returns no tensor: run it if it reads no placeholder
                memo.check_reads(ident[2], ins)
                return func(*args, **kwargs)
            if isinstance(info, FuncInfo):
                self._op_key(info)  # per-site counters stay in step with a computed pass
            return memo.replay(p, ins)
        out = self._call(info, func, args, kwargs)
        memo.end(p, tensors(out))
        return out

    def _op_key(self, info: FuncInfo) -> OpKey:
        code, line = _call_site()
        base = (self.stack[-1] if self.stack else "", code, line, info.name)
        n = self.op_counts.get(base, 0)
        self.op_counts[base] = n + 1
        return base + (n,)

    def _call(self, info: Any, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        if info is META:
            return func(*args, **kwargs)
        if info is MOVE:
            out = func(*args, **kwargs)
            if self.trace is not None:
                self.trace.moved(args, kwargs, out)
            return out
        key = self._op_key(info)
        if key in self.folded:
            return args[0]
        bias = self.bias.get(key)
        if bias is not None:
            args, kwargs = _with_bias(args, kwargs, bias)
        if self.trace is not None:
            return self.trace.op(key, info, func, args, kwargs)
        site = self.op_sites.get(key)
        if site is None:
            if key not in self.traced_ops:
                self.untraced_ops.add(f"{info.name} in {key[0] or 'the model'} "
                                      f"({getattr(key[1], 'co_filename', '?')}:{key[2]})")
            return func(*args, **kwargs)
        if site.inputs:
            args, kwargs = _replace(args, kwargs, lambda i, t: self._input(site, i, t))
        out = func(*args, **kwargs)
        made = {id(o) for o in tensors(out)}
        inplace = tuple(t for t in tensors((args, kwargs)) if id(t) in made)  # written in place: same object
        return self._outputs(site, out, inplace)

    def _input(self, site: Site, i: int, t: torch.Tensor) -> torch.Tensor:
        q = site.inputs.get(i)
        if q is None or not is_float(t):
            return t
        quantized = self._quantize(q.name, t)
        return t if quantized is None else quantized

    def run_trace(self, run: Callable[[], Any], trace: Trace) -> Any:
        self.trace = trace
        try:
            with torch.no_grad():
                output = run()
        finally:
            self.trace = None
        trace.finish(output)
        return output
