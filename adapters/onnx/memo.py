"""Memoized sweeps on onnxruntime: an evaluation recomputes only the nodes its quantizers can change.

In the enabling sweep for layer k only k's quantizers are on, so every node in front of the first
node that reads one of k's quantizer inputs (its parameters' graph inputs, the switches of its
activation quantizers' chains) computes exactly what it computes with nothing on; in the
disabling sweep, what it computes with everything on. A :class:`Plan` sees one session kind's
analysis copy (a rounding and a set of chained quantizers) as a sequence of nodes: where each
quantizer is first read (the *cut*), and which tensors cross a cut (made in front of it and read
at or after it, or model outputs: the *frontier*). Per eval batch (recognised by a hash of the
feeds' bytes, shapes and dtypes, never by object identity) :class:`Memo` remembers the frontier
of one cut. When the batch comes again with a cut at or after it, only the suffix runs: a session
of the nodes from the remembered cut on, whose inputs are the remembered tensors (and the model
inputs, parameters and switches it reads). That run also returns the frontier of the new cut
(reference values: nothing in front of it reads a quantizer that differs), which is remembered
instead. A cut in front of the remembered one runs from the start again. Suffix sessions are
built lazily, one per (remembered cut, new cut), and the last ``MAX_SESSIONS`` kept; one is
built only when the run time it saves (measured per node as the sweep goes) repays its build
time (measured too), so models that run in microseconds are simply evaluated in full.

Bit for bit: suffix sessions have the options of the full session (onnxruntime's default graph
optimizations stay on) and the same nodes: every node from the cut on (also those whose outputs
nobody reads: a reader less could enable a fusion), every constant-only node (constants fold as
in the full model), the full model's outputs, inputs declared with the shapes onnx infers for
the full model. A tensor onnxruntime does not make in the full model's optimized graph (asked
once per session kind through ``optimized_model_filepath``: an intermediate fused into a node
after the cut, an Identity it removed, a Shape it folded) never crosses a cut: its producer runs
again in the suffix, so that the whole fused group is there, as in the full graph. Last, each
suffix's optimized graph is checked against the full model's: a node the full one does not
have (same op, inputs, outputs and attributes; constants by value) means onnxruntime optimized
the suffix otherwise, and no run starts at that cut (it runs in full).

Batches: one is remembered from the second time it is seen (in this sweep or an earlier one), so
batches that change every evaluation cost only their hash, and forgotten when an evaluation
passes without it. The remembered tensors of all batches stay under the budget; a batch that
would exceed it is evaluated in full.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import logging
import os
import tempfile
import time
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from .load import without_graph
from .nodes import CONTROL_FLOW, all_nodes, subgraph_reads
from .session import Runner, make_session, session_options

__all__ = ["Plan", "Memo", "batch_key", "MAX_SESSIONS", "BUILD_PAYOFF"]

log = logging.getLogger("qa.adapters.onnx")

# Suffix sessions kept per plan. A session's (frontier, cut) serves one evaluation of a sweep (all
# its batches); each holds its own memory arena, about the peak activations of its suffix.
MAX_SESSIONS = 4
# A session is built when the run time it is expected to save is at least this many times its
# build time (measured as the sweep goes; tests set 0 to build whatever the cost).
BUILD_PAYOFF = 1.0
RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                        "Bernoulli"})
_FETCHABLE = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT8,
                        TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8,
                        TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64, TensorProto.BOOL})
_NEVER = 1 << 60  # the last use of a model output
_MAX_SEEN = 1 << 20  # batch hashes kept to tell a second sighting


def batch_key(feeds: Mapping[str, np.ndarray]) -> str:
    """A hash of a batch's content: each input's name, dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(feeds):
        arr = np.asarray(feeds[name])
        h.update(f"{name}\0{arr.dtype.str}\0{arr.shape}\0".encode())
        if arr.dtype.hasobject:
            h.update(repr(arr.tolist()).encode())
        else:
            h.update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
    return h.hexdigest()


def optimized_session(model: onnx.ModelProto, source: str, keep: List[Any]) -> Tuple[Any, onnx.ModelProto]:
    """A session of ``model`` with the options every session of the analysis copy has, and the
    graph onnxruntime optimized it into (what the session runs)."""
    with tempfile.TemporaryDirectory(prefix="qa-onnx-memo-") as tmp:
        options = session_options()
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        sess = make_session(model, options, source, keep)
        return sess, onnx.load(options.optimized_model_filepath, load_external_data=False)


def made_by_nodes(graph: onnx.GraphProto) -> Set[str]:
    """The tensors nodes of an optimized graph make (not those folded into constants)."""
    return {o for node in all_nodes(graph) for o in node.output}


def signatures(model: onnx.ModelProto) -> Set[Tuple[Any, ...]]:
    """The nodes the outputs of an optimized model depend on, each as (domain, op, inputs, outputs,
    attributes; those at their schema's default left out, which onnxruntime writes or not)."""
    g = model.graph
    opsets = {o.domain: o.version for o in model.opset_import}
    consts = {t.name: _content(t) for t in g.initializer if t.data_location != TensorProto.EXTERNAL}
    producer = {o: n for n in g.node for o in n.output if o}
    todo = [o.name for o in g.output]
    used: Dict[int, onnx.NodeProto] = {}
    while todo:
        node = producer.get(todo.pop())
        if node is not None and id(node) not in used:
            used[id(node)] = node
            todo.extend(i for i in node.input if i)
            todo.extend(subgraph_reads(node))
    # a constant input by its value: onnxruntime merges equal constants under either name
    return {(n.domain, n.op_type, tuple(consts.get(i, i) for i in n.input), tuple(n.output), _attributes(n, opsets))
            for n in used.values()}


def _content(t: TensorProto) -> str:
    unnamed = TensorProto()
    unnamed.CopyFrom(t)
    unnamed.ClearField("name")
    return "const:" + hashlib.blake2b(unnamed.SerializeToString(), digest_size=16).hexdigest()


def _attributes(node: onnx.NodeProto, opsets: Mapping[str, int]) -> Tuple[bytes, ...]:
    try:
        defaults = onnx.defs.get_schema(node.op_type, opsets.get(node.domain, 1), node.domain).attributes
    except Exception:  # onnxruntime's own ops
        defaults = {}
    out = []
    for a in node.attribute:
        default = defaults[a.name].default_value if a.name in defaults else None
        if default is not None and default.type == a.type and (
                helper.get_attribute_value(default) == helper.get_attribute_value(a)):
            continue
        out.append(a.SerializeToString())
    return tuple(sorted(out))


def inferred_types(model: onnx.ModelProto) -> Dict[str, onnx.TypeProto]:
    """Tensor -> its type (element type and shape) as onnx's shape inference tells for ``model``."""
    g = model.graph
    slim = without_graph(model)
    s = slim.graph
    s.node.extend(g.node)
    s.input.extend(g.input)
    s.output.extend(g.output)
    s.sparse_initializer.extend(g.sparse_initializer)
    for t in g.initializer:  # big values are not needed to infer shapes
        if t.ByteSize() <= (1 << 20):
            s.initializer.append(t)
        else:
            s.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(slim, strict_mode=False)
    except Exception as e:
        log.debug("memoized sweeps: onnx shape inference failed (%s)", e)
        return {}
    return {vi.name: vi.type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}


class SuffixRunner(Runner):
    """A session from a cut on: qa's inputs are rebound whenever the adapter's value changed (the
    adapter marks only its own runners dirty, so this one compares identities)."""

    def __init__(self, sess: Any) -> None:
        super().__init__(sess, {})
        self.bound: Dict[str, Any] = {}

    def run(self, values: Dict[str, Any], feeds: Dict[str, np.ndarray], outputs: Sequence[str],
            run_options: Any) -> List[np.ndarray]:
        for name in self.inputs:
            value = values.get(name)
            if value is not None and self.bound.get(name) is not value:
                self.bound[name] = value
                self.dirty.add(name)
        return super().run(values, feeds, outputs, run_options)


class Plan:
    """One session kind's analysis copy as a sequence of nodes: cuts, what crosses them, suffix
    sessions, and what runs and builds cost (measured).

    ``switches`` maps qa's graph inputs (parameters, chain switches) to their quantizer;
    ``types`` gives element types for tensors shape inference cannot type."""

    def __init__(self, key: Any, model: onnx.ModelProto, switches: Mapping[str, str], model_inputs: Iterable[str],
                 types: Mapping[str, int], source: str, keep: List[Any]) -> None:
        self.key = key
        self.model = model
        self.nodes = list(model.graph.node)
        self.end = len(self.nodes)
        self.model_inputs = set(model_inputs)
        self.fallback_types = types
        self.source = source
        self.keep = keep
        self.problem: Optional[str] = None  # why no evaluation of this kind can be memoized
        self.static_nodes: Set[int] = set()  # nodes on constants only: in every suffix
        self.reads: List[List[str]] = []  # per node, the tensors it reads (subgraphs included)
        self.produced: Dict[str, int] = {}  # run-time tensor -> the position of the node making it
        self.last_use: Dict[str, int] = {}
        self.first_use: Dict[str, int] = {}  # quantizer -> the first node reading its inputs
        self._scan(switches)
        self.before = np.concatenate([[0], np.cumsum([i not in self.static_nodes for i in range(self.end)])])
        self.runtime = int(self.before[-1])  # nodes each full run computes
        self._positions = sorted(set(self.first_use.values()))
        self.runners: "collections.OrderedDict[Tuple[int, int], SuffixRunner]" = collections.OrderedDict()
        self.built = 0
        self.build_seconds = 0.0
        self.run_seconds = 0.0
        self.node_runs = 0
        self._live: Dict[int, List[str]] = {}
        self._layouts: Dict[int, Tuple[FrozenSet[int], List[str]]] = {}
        self._types: Dict[str, onnx.TypeProto] = {}
        self._ok: Set[str] = set()
        self._full: Set[Tuple[Any, ...]] = set()  # the optimized full model's nodes (signatures)
        self.refused: Set[int] = set()  # starts whose suffix onnxruntime optimized otherwise than the full model
        self.first_build = 0.0
        if self.problem is None:
            self._check_tensors()

    def _scan(self, switches: Mapping[str, str]) -> None:
        g = self.model.graph
        static = {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
        known = static | {vi.name for vi in g.input}
        for i, node in enumerate(self.nodes):
            reads = [x for x in node.input if x] + sorted((subgraph_reads(node) & known) - set(node.input))
            self.reads.append(reads)
            outs = [o for o in node.output if o]
            known.update(outs)
            if node.op_type in RANDOM_OPS:
                self.problem = f"{node.op_type} '{node.name}' draws new numbers in every run"
            elif (node.op_type not in CONTROL_FLOW and (reads or node.op_type == "Constant")
                  and all(r in static for r in reads)):
                self.static_nodes.add(i)
                static.update(outs)
                continue
            for r in reads:
                if r in self.produced:
                    self.last_use[r] = i
                q = switches.get(r)
                if q is not None:
                    self.first_use.setdefault(q, i)
            for o in outs:
                self.produced[o] = i
        for o in g.output:
            if o.name in self.produced:
                self.last_use[o.name] = _NEVER
            elif o.name not in static:
                self.problem = f"model output '{o.name}' is not made by a node"

    def _check_tensors(self) -> None:
        """Which tensors a frontier may hold: those still in onnxruntime's optimized graph, of a
        type numpy holds. Building that graph also tells what a session build costs."""
        t0 = time.perf_counter()
        keep: List[Any] = []
        try:
            _, optimized = optimized_session(self.model, self.source, keep)
        except Exception as e:
            log.debug("memoized sweeps: %s: onnxruntime's optimized graph is unknown (%s)", self.source, e)
            self.problem = "onnxruntime's optimized graph is unknown"
            return
        finally:
            for folder in keep:
                folder.cleanup()
        self.first_build = time.perf_counter() - t0  # the full model: a suffix costs at most about that
        present = made_by_nodes(optimized.graph)
        self._full = signatures(optimized)
        self._types = inferred_types(self.model)
        self._ok = {t for t in self.produced if t in present and self._elem_type(t) in _FETCHABLE}

    # -- cuts --

    def live(self, cut: int) -> List[str]:
        """Run-time tensors made in front of ``cut`` that a node at or after it (or the user) reads."""
        if cut not in self._live:
            self._live[cut] = [t for t, p in self.produced.items() if p < cut <= self.last_use.get(t, -1)]
        return self._live[cut]

    def cut(self, differing: Iterable[str]) -> int:
        """In front of the first node reading the inputs of a quantizer in ``differing`` (the end
        when there is none: nothing this session computes differs)."""
        return min((self.first_use[q] for q in differing if q in self.first_use), default=self.end)

    def layout(self, cut: int) -> Tuple[FrozenSet[int], List[str]]:
        """(the nodes in front of ``cut`` that a suffix from it computes again, the frontier: the
        tensors it reads that were made in front of it). A live tensor gone from onnxruntime's
        optimized graph (fused into a node after the cut, an Identity or Shape it removed) or
        that numpy cannot hold is made again in the suffix by its producer, whose inputs are then
        needed in turn: the suffix holds the whole fused group, as the full graph does."""
        if cut not in self._layouts:
            again: Set[int] = set()
            while True:
                needed = set(self.live(cut))
                for i in again:
                    needed.update(r for r in self.reads[i] if r in self.produced)
                frontier = [t for t in needed if self.produced[t] not in again]
                missing = {self.produced[t] for t in frontier if t not in self._ok}
                if not missing:
                    break
                again |= missing
            frontier.sort(key=lambda t: (self.produced[t], t))
            self._layouts[cut] = (frozenset(again), frontier)
        return self._layouts[cut]

    def skipped(self, cut: int) -> int:
        """Nodes a run from ``cut`` does not compute."""
        return int(self.before[cut]) - len(self.layout(cut)[0]) if cut else 0

    def worth(self, start: int, cut: int, batches: int) -> bool:
        """Does a new session from ``start`` pay off? Advancing (cut > start): each later
        evaluation skips the nodes between; the evaluations still to come are estimated from the
        quantizers first read after ``cut`` (about two per layer). Else: the nodes ``start``
        skips, in this evaluation alone. Against the measured (or, before any, estimated) cost
        of a build."""
        if not self.node_runs or start in self.refused:
            return False
        per_node = self.run_seconds / self.node_runs
        if cut > start:
            gain = (self.skipped(cut) - self.skipped(start)) * max(1, (len(self._positions) - bisect.bisect_right(
                self._positions, cut)) // 2)
        else:
            gain = self.skipped(start)
        cost = self.build_seconds / self.built if self.built else self.first_build
        return per_node * batches * gain >= BUILD_PAYOFF * cost

    def observe(self, seconds: float, nodes: int) -> None:
        self.run_seconds += seconds
        self.node_runs += nodes

    def _elem_type(self, tensor: str) -> int:
        tp = self._types.get(tensor)
        if tp is not None and tp.HasField("tensor_type") and tp.tensor_type.elem_type:
            return tp.tensor_type.elem_type
        return 0 if tp is not None else self.fallback_types.get(tensor, 0)

    def _value_info(self, tensor: str) -> onnx.ValueInfoProto:
        tp = self._types.get(tensor)
        if tp is not None and tp.HasField("tensor_type"):
            vi = onnx.ValueInfoProto()
            vi.name = tensor
            vi.type.CopyFrom(tp)
            return vi
        return helper.make_tensor_value_info(tensor, self._elem_type(tensor), None)

    # -- suffix sessions --

    def suffix_model(self, start: int, extras: Sequence[str]) -> onnx.ModelProto:
        """The nodes from ``start`` on, those it makes again and every constant-only node, reading
        the frontier at ``start`` as graph inputs; outputs: the model's made there, and ``extras``."""
        g = self.model.graph
        again, frontier = self.layout(start)
        nodes = [n for i, n in enumerate(self.nodes) if i >= start or i in self.static_nodes or i in again]
        read: Set[str] = set()
        for n in nodes:
            read.update(n.input)
            read.update(subgraph_reads(n))
        inputs = [vi for vi in g.input if vi.name in self.model_inputs or vi.name in read]
        inputs += [self._value_info(t) for t in frontier]
        held = set(frontier)
        outputs = [vi for vi in g.output if vi.name not in held]
        declared = {vi.name for vi in outputs}
        outputs += [self._value_info(t) for t in extras if t not in declared]
        graph = helper.make_graph(nodes, g.name, inputs, outputs, [t for t in g.initializer if t.name in read])
        graph.sparse_initializer.extend(t for t in g.sparse_initializer if t.values.name in read)
        model = without_graph(self.model)
        model.producer_name = "qa"
        model.graph.CopyFrom(graph)
        return model

    def has(self, start: int, cut: int) -> bool:
        return (start, cut) in self.runners

    def extras(self, start: int, cut: int) -> List[str]:
        """What a run from ``start`` returns besides the outputs: the frontier at ``cut`` it makes."""
        if cut <= start:
            return []
        held = set(self.layout(start)[1])
        return [t for t in self.layout(cut)[1] if t not in held]

    def runner(self, start: int, cut: int) -> Optional[SuffixRunner]:
        """The session from ``start`` (a frontier) that also returns the frontier at ``cut``; built
        on first use, the last MAX_SESSIONS kept. None when onnxruntime optimizes it otherwise
        than the full model (a node of it that the full model's optimized graph does not have):
        it might compute other bits, so no run starts there."""
        key = (start, cut)
        runner = self.runners.get(key)
        if runner is not None:
            self.runners.move_to_end(key)
            return runner
        if start in self.refused:
            return None
        extras = self.extras(start, cut)
        t0 = time.perf_counter()
        sess, optimized = optimized_session(self.suffix_model(start, extras), self.source, self.keep)
        self.build_seconds += time.perf_counter() - t0
        self.built += 1
        other = signatures(optimized) - self._full
        if other:
            self.refused.add(start)
            log.debug("memoized sweeps: %s: no run starts at node %d: onnxruntime optimizes the nodes from there "
                      "otherwise than in the full model (%s)", self.source, start, sorted(n[1] for n in other)[:5])
            return None
        runner = self.runners[key] = SuffixRunner(sess)
        if len(self.runners) > MAX_SESSIONS:
            self.runners.popitem(last=False)
        return runner


class _Batch:
    __slots__ = ("frontier", "live", "nbytes", "over")

    def __init__(self) -> None:
        self.frontier = 0
        self.live: Dict[str, np.ndarray] = {}
        self.nbytes = 0
        self.over = False  # its tensors do not fit the budget: always in full


class Memo:
    """The memo of one sweep (see the module docstring). ``plan`` returns the plan of the session
    kind that runs now (None: run in full), ``values`` are the OrtValues bound to qa's inputs,
    ``seen`` the batch hashes seen in this adapter's memoized sweeps (kept across sweeps)."""

    def __init__(self, plan: Callable[[], Optional[Plan]], values: Dict[str, Any], budget: int,
                 seen: Set[str]) -> None:
        self._plan = plan
        self._values = values
        self.budget = budget
        self.seen = seen
        self.differing: Optional[FrozenSet[str]] = None  # None: not told, every run in full
        self.evaluation = 0
        self.batches: Dict[Tuple[Any, str], _Batch] = {}
        self.nbytes = self.peak = 0
        self.runs = self.replayed = self.total = self.skipped = self.over = 0
        self.eval_runs = self.last_eval_runs = 0
        self.hashes: Set[str] = set()
        self.last_seen: Dict[str, int] = {}  # batch hash -> the evaluation that saw it last
        self._built: Dict[int, Tuple[Plan, int, float, int]] = {}  # id(plan) -> (plan, built, seconds, refused) before

    def focus(self, differing: Iterable[str]) -> None:
        """The next evaluation differs from the sweep's reference in these quantizers. Batches the
        evaluation before it did not see are forgotten."""
        self.differing = frozenset(differing)
        self.evaluation += 1
        self.last_eval_runs, self.eval_runs = self.eval_runs, 0
        stale = {h for h, last in self.last_seen.items() if last < self.evaluation - 1}
        for key in [k for k in self.batches if k[1] in stale]:
            self.nbytes -= self.batches.pop(key).nbytes
        for h in stale:
            del self.last_seen[h]

    def run(self, feeds: Dict[str, np.ndarray], names: Sequence[str], run_options: Any,
            full: Callable[[], List[np.ndarray]]) -> List[np.ndarray]:
        """The outputs ``names`` for ``feeds``: from a remembered frontier where one serves (and
        pays off), else ``full()``."""
        self.runs += 1
        self.eval_runs += 1
        plan = self._plan() if self.differing is not None else None
        if plan is None:
            return full()
        if id(plan) not in self._built:
            self._built[id(plan)] = (plan, plan.built, plan.build_seconds, len(plan.refused))
        self.total += plan.runtime
        chosen = self._choose(plan, feeds)
        if chosen is None:
            t0 = time.perf_counter()
            out = full()
            plan.observe(time.perf_counter() - t0, plan.runtime)
            return out
        out = self._run_from(plan, *chosen, feeds, names, run_options)
        if out is None:  # the session was refused
            t0 = time.perf_counter()
            out = full()
            plan.observe(time.perf_counter() - t0, plan.runtime)
        return out

    def _choose(self, plan: Plan, feeds: Dict[str, np.ndarray]) -> Optional[Tuple[_Batch, int, int]]:
        """(batch, start, cut) of a run from a frontier, or None for a full run: batches seen the
        first time, over the budget, or when no session that pays off serves."""
        if self.budget <= 0:
            return None
        h = batch_key(feeds)
        self.hashes.add(h)
        self.last_seen[h] = self.evaluation
        if h not in self.seen:  # first sighting: remembered only if it comes again
            if len(self.seen) >= _MAX_SEEN:
                self.seen.clear()
            self.seen.add(h)
            return None
        batch = self.batches.get((plan.key, h))
        if batch is None:
            batch = self.batches[(plan.key, h)] = _Batch()
        if batch.over:
            return None
        cut = plan.cut(self.differing or ())
        start = batch.frontier if 0 < batch.frontier <= cut else 0
        batches = max(self.last_eval_runs, self.eval_runs, 1)
        if plan.has(start, cut) or (cut > start and plan.worth(start, cut, batches)):
            return batch, start, cut
        if start and (plan.has(start, start) or plan.worth(start, start, batches)):
            return batch, start, start
        return None

    def _run_from(self, plan: Plan, batch: _Batch, start: int, cut: int, feeds: Dict[str, np.ndarray],
                  names: Sequence[str], run_options: Any) -> Optional[List[np.ndarray]]:
        frontier = {t: batch.live[t] for t in plan.layout(start)[1]} if start else {}
        fetch = [n for n in names if n not in frontier]
        fetch += [t for t in plan.extras(start, cut) if t not in fetch]
        results: Dict[str, np.ndarray] = {}
        t0 = time.perf_counter()
        if fetch:  # else the outputs themselves are remembered: nothing to run
            runner = plan.runner(start, cut)
            if runner is None:
                return None
            results = dict(zip(fetch, runner.run(self._values, {**feeds, **frontier}, fetch, run_options)))
        skipped = plan.skipped(start)
        plan.observe(time.perf_counter() - t0, plan.runtime - skipped)
        if start:
            self.replayed += 1
            self.skipped += skipped
        out = [results[n] if n in results else frontier[n].copy() for n in names]
        if cut != start:
            self._remember(plan, batch, frontier, results, set(names), cut)
        return out

    def _remember(self, plan: Plan, batch: _Batch, frontier: Dict[str, np.ndarray], results: Dict[str, np.ndarray],
                  returned: Set[str], cut: int) -> None:
        """The batch's frontier moves to ``cut``, unless its tensors there exceed the budget."""
        live: Dict[str, np.ndarray] = {}
        for t in plan.layout(cut)[1]:
            if t in frontier:
                live[t] = frontier[t]
            else:  # the caller gets the array itself: remember a copy
                live[t] = results[t].copy() if t in returned else results[t]
        nbytes = sum(v.nbytes for v in live.values())
        if self.nbytes - batch.nbytes + nbytes > self.budget:
            self.nbytes -= batch.nbytes
            batch.live, batch.nbytes, batch.frontier, batch.over = {}, 0, 0, True
            self.over += 1
            log.debug("memoized sweep: a batch's remembered tensors would exceed memo_memory_budget; it is "
                      "evaluated in full")
            return
        self.nbytes += nbytes - batch.nbytes
        self.peak = max(self.peak, self.nbytes)
        batch.live, batch.nbytes, batch.frontier = live, nbytes, cut

    def stats(self) -> str:
        """The sweep's log line: what was skipped, remembered and built."""
        built = sum(p.built - n for p, n, _, _ in self._built.values())
        seconds = sum(p.build_seconds - s for p, _, s, _ in self._built.values())
        refused = sum(len(p.refused) - r for p, _, _, r in self._built.values())
        share = self.skipped / self.total if self.total else 0.0
        return (f"{self.skipped} of {self.total} node runs skipped ({share:.0%}), {self.replayed} of {self.runs} "
                f"runs from a remembered frontier, {len(self.hashes)} batch(es), {self.peak / 2**20:.1f} MiB "
                f"remembered, {built} suffix session(s) built in {seconds:.2f} s ({refused} refused), {self.over} "
                f"batch(es) over the budget")
