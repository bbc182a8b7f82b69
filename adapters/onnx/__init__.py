"""ONNX adapter: a private copy of the graph, batch-norm folding, and fake quantization inside onnxruntime.

The user's ``onnx.ModelProto`` (or file) is never touched: the adapter reads it and builds its
own graph from copies of the nodes, through the named passes of :mod:`.passes` (naming,
sorting, constants, types, linear units, batch-norm folding, quantizer insertion, pruning).
Fake quantization runs inside onnxruntime, switched on and off through extra graph inputs:

* activation quantizer on tensor ``x``: ``Where(on, Mul(Round(Clip(Mul(x, 1/scale), offset,
  offset + steps)), scale), x)``. ``Round`` is half to even, as ``qa.kernels``; for float32
  the result is bit-identical to ``qa.kernels.fake_quantize`` (same ``x * (1/scale)`` in
  float32, clamp, round, multiply). ``rounding="half_away"`` builds a variant on first use.
  ``prepare_activation`` makes the four scalars once; ``activate`` binds them and the ``on`` flag.
* parameters (weights, biases) become graph inputs; the FP32 values and the fake-quantized ones
  (``prepare_weight``) are ``OrtValue`` s, and switching a quantizer rebinds one ``OrtValue``
  through the session's ``IOBinding`` (no copy, no session rebuild).

Sessions are built once per kind and kept (:mod:`.session`): one without any quantizer chain
(used while no activation quantizer is on: FP32, weights only, calibration) and one with a chain
for every activation quantizer the simulation can turn on (``ActiveSet.chain``); each also in a
variant that adds every layer output as a graph output, for calibration and per-layer MSE, which
stream one batch at a time.

Memoized sweeps (``memoized``, :mod:`.memo`): per eval batch, the tensors that cross the cut in
front of the first node a layer's quantizers touch are remembered, and later evaluations of the
batch run a session of the nodes from there on (built lazily, where it pays off), bit-identical
to the full session.

The callbacks receive a :class:`QuantSimSession`, which behaves like an
``onnxruntime.InferenceSession`` (``run``, ``get_inputs``, ``get_outputs``) and computes the
model under the current quantization setting.

What is a layer (key names as AIMET's ONNX QuantAnalyzer: the node name):

* every node that computes on data (not on constants only) and has a float output, in
  topological order; unnamed nodes are named ``<OpType>_<index in the graph>``.
* a MatMul with a constant weight followed by an Add of a constant bias is one layer (as
  ``nn.Linear`` exports and as runtimes execute it): weight and bias parameters, one output
  quantizer after the Add.
* parameters (``<layer>_weight``, ``<layer>_bias``, as AIMET's param types): the constant weight
  and bias of Conv, ConvTranspose, Gemm, MatMul (either operand: ``W @ x`` too), Einsum (its
  constant operand), DeformConv, the norms, PRelu and embedding Gathers; LSTM / GRU / RNN get
  ``_weight`` (W), ``_weight_r`` (R, AIMET's name; the config's ``weight`` settings) and
  ``_bias`` (B), per channel on the gate * hidden axis. A weight that plumbing computes from
  constants (Slice / Concat before an exported LSTM, a weight norm) is evaluated and is the
  parameter, as in a deployed graph where it is folded.
* a constant tensor several layers read as a parameter (a tied weight) is one quantizer, named
  after the first of them, also when they read it through constant data movement (an embedding
  table and its Transpose in a tied LM head), and no batch norm folds into a layer whose weight
  or bias other nodes read (``graph.unfolded_batch_norms`` says why). ONNX has no analogue of a
  module called twice: each node runs once.
* every layer's float outputs get an output quantizer, data movement (Reshape, Transpose,
  Flatten, ...) included: whether it quantizes is the quantsim config's choice, as in AIMET.
  Identity and inference-mode Dropout pass data through: they are no layers and get no
  quantizer under any config (as ``nn.Identity`` in torch).
* If / Loop / Scan nodes and their subgraphs stay in float and are listed in
  ``graph.unquantized_ops``, as are constant inputs no parameter quantizer covers (a
  custom-domain op's weights, LSTM peepholes, a weight computed by ops qa cannot evaluate).
* graphs that are quantized already (QuantizeLinear, QLinearConv, MatMulInteger, ...) are
  refused with a ``QAValueError``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from .. import register
from .._base import ActiveSet, Adapter
from ...errors import QAValueError
from ...graph import OUTPUT, Quantizer
from .feeds import Feeds
from .load import load_model, upgrade_opset, without_graph
from .memo import Memo, Plan
from .passes import prepare
from .session import QuantSimSession, Runner, build_model, make_session, session_options

log = logging.getLogger("qa.adapters.onnx")

__all__ = ["OnnxAdapter", "QuantSimSession", "load_model"]


@register
class OnnxAdapter(Adapter):
    """Exposes an ONNX model to qa's engine: layers, quantizers, and runs with any quantizers on.

    Args:
        model: an ``onnx.ModelProto`` or the path of a ``.onnx`` file (external data is read
            from the file's folder). It is never modified.
        dummy_input: ``{input name: numpy array}`` (AIMET's ONNX convention); a single array
            or a tuple in input order also works.
        modules_to_ignore: node names (or NodeProtos) to leave unquantized.

    Raises:
        QAValueError: the model cannot be read (or its external data file is missing), is
            quantized already, fails on dummy_input, or modules_to_ignore names no node of it.

    Example:
        >>> import numpy as np, onnx
        >>> from onnx import helper, numpy_helper, TensorProto
        >>> w = numpy_helper.from_array(np.ones((3, 4), np.float32), "w")
        >>> graph = helper.make_graph(
        ...     [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"), helper.make_node("Relu", ["y"], ["z"])],
        ...     "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        ...     [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w])
        >>> model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        >>> adapter = OnnxAdapter(model, {"x": np.ones((2, 3), np.float32)})
        >>> [(layer.name, [q.name for q in layer.quantizers]) for layer in adapter.graph.layers]
        [('fc', ['fc_weight', 'fc_input_0', 'fc_output_0']), ('Relu_1', ['Relu_1_output_0'])]
        >>> adapter.model.run(None, {"x": np.ones((2, 3), np.float32)})[0].tolist()
        [[3.0, 3.0, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0]]
    """

    framework = "onnx"
    unquantized_hint = "nodes inside If/Loop subgraphs and the weights of custom-domain ops stay in float"
    priority = 30

    @classmethod
    def is_model(cls, model: Any) -> bool:
        """True for an ``onnx.ModelProto`` or a path ending in ``.onnx``."""
        if isinstance(model, onnx.ModelProto):
            return True
        return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx")

    def __init__(self, model: Any, dummy_input: Any, *, modules_to_ignore: Optional[Iterable[Any]] = None) -> None:
        super().__init__()
        proto, self._source = load_model(model)
        proto = upgrade_opset(proto, self._source)
        self._keep: List[Any] = []  # temporary folders of sessions saved with external data
        self._meta = without_graph(proto)  # what every built model repeats
        self.graph, self._prep = prepare(proto, self._source, self._ignored_names(modules_to_ignore))
        self._quantizers: Dict[str, Quantizer] = {q.name: q for q in self.graph.quantizers()}
        self._points = {p.quantizer: p for p in self._prep.points}
        self._feeds = Feeds(self._prep.inputs, self._source)
        self._output_names = [vi.name for vi in self._prep.outputs]
        # What calibration and capture read: (layer, output index, tensor) and input quantizer -> model input.
        self._captures: List[Tuple[str, int, str]] = []
        self._observed_outputs: Dict[str, str] = {}
        self._observed_inputs: Dict[str, str] = {}
        for point in self._prep.points:
            q = self._quantizers[point.quantizer]
            if q.kind == OUTPUT:
                self._captures.append((q.layer, q.index, point.dst))
                self._observed_outputs[q.name] = point.dst
            else:
                self._observed_inputs[q.name] = point.src
        self._runners: Dict[Tuple[str, bool, FrozenSet[str]], Runner] = {}  # (rounding, tap, chained)
        self._plans: Dict[Tuple[str, FrozenSet[str]], Plan] = {}  # memoized sweeps: per (rounding, chained)
        self._memo: Optional[Memo] = None
        self._seen_batches: Set[str] = set()  # batch hashes memoized sweeps saw
        self._bind_neutral()
        self.model = QuantSimSession(self)
        self._check_dummy_input(dummy_input)

    # -- construction --

    @staticmethod
    def _ignored_names(modules: Optional[Iterable[Any]]) -> Set[str]:
        names: Set[str] = set()
        for m in modules or ():
            if isinstance(m, str):
                names.add(m)
            elif isinstance(m, onnx.NodeProto):
                names.add(m.name)
            else:
                raise QAValueError(f"modules_to_ignore: expected node names or onnx.NodeProto, got {type(m).__name__}")
        return names

    def _bind_neutral(self) -> None:
        """The values bound to qa's graph inputs at first: the FP32 parameters, every quantizer off."""
        self._true = self._ortvalue(np.array(True))
        self._false = self._ortvalue(np.array(False))
        self._values: Dict[str, Any] = {}  # qa's graph input -> the OrtValue bound to it now
        self._originals = {name: self._ortvalue(p.original) for name, p in self._prep.params.items()}
        for name, p in self._prep.params.items():
            self._values[p.input] = self._originals[name]
        for point in self._prep.points:
            neutral = self._scalars(point.elem_type, 1.0, 1.0, -1.0, 1.0)
            for name, value in zip(point.inputs, neutral + [self._false]):
                self._values[name] = value

    def _check_dummy_input(self, dummy_input: Any) -> None:
        main = self._main()
        self._input_args = [a for a in main.sess.get_inputs() if a.name in self._feeds]
        self._output_args = [a for a in main.sess.get_outputs() if a.name in set(self._output_names)]
        self.dummy_input = self._feeds.from_inputs(dummy_input, "dummy_input")
        try:
            main.run(self._values, self.dummy_input, self._output_names, None)
        except Exception as e:
            raise QAValueError(f"{self._source} failed on dummy_input ({type(e).__name__}: {e}); pass a dict "
                               f"{{input name: numpy array}} the model accepts") from None

    # -- sessions --

    def _variant(self) -> Tuple[str, FrozenSet[str]]:
        """The session kind for the current setting, (rounding, chained quantizers): no quantizer
        chain while no activation quantizer is on (FP32, weights only, calibration), else a chain
        for every activation quantizer the simulation can turn on."""
        active = self._active
        if active.activations:
            chained = frozenset(n for n in active.chain | frozenset(active.activations) if n in self._points)
        else:
            chained = frozenset()
        rounding = "half_away" if chained and active.rounding in ("half_away", "half_away_from_zero") else "half_even"
        return rounding, chained

    def _runner(self, tap: bool) -> Runner:
        """The session for the current setting (see ``_variant``); built once per kind and kept."""
        rounding, chained = self._variant()
        key = (rounding, tap, chained)
        if key not in self._runners:
            options = session_options()
            tensors = [t for _, _, t in self._captures] if tap else []
            model = build_model(self._prep, self._meta, chained, rounding, tensors)
            self._runners[key] = Runner(make_session(model, options, self._source, self._keep), self._values)
        return self._runners[key]

    def _main(self) -> Runner:
        return self._runner(tap=False)

    # -- values bound to qa's inputs --

    @staticmethod
    def _ortvalue(array: np.ndarray) -> Any:
        # No copy on the CPU; the OrtValue holds the array. A replaced value stays bound until the
        # next run, which rebinds it first (it is marked dirty), so freed memory is never read.
        return ort.OrtValue.ortvalue_from_numpy(np.require(array, requirements="C"))  # 0-d stays 0-d

    def _scalars(self, elem: int, inv: float, scale: float, lo: float, hi: float) -> List[Any]:
        dtype = helper.tensor_dtype_to_np_dtype(elem)
        return [self._ortvalue(np.array(v, dtype=dtype)) for v in (inv, scale, lo, hi)]

    def _set(self, name: str, value: Any) -> None:
        if self._values.get(name) is not value:
            self._values[name] = value
            for runner in self._runners.values():
                if name in runner.inputs:
                    runner.dirty.add(name)

    def _bind_weight(self, name: str, value: Any) -> None:
        self._set(self._prep.params[name].input, self._originals[name] if value is None else value)

    # -- runs --

    def _run_feeds(self, output_names: Optional[Sequence[str]], input_feed: Any, run_options: Any,
                   what: str) -> List[np.ndarray]:
        feeds = self._feeds.check(input_feed, what)
        names = list(output_names) if output_names else list(self._output_names)
        for n in names:
            if n not in self._output_names:
                raise QAValueError(f"'{n}' is not an output of {self._source}; its outputs are {self._output_names}")
        observers, capture = self._observers, self._capture
        tap = observers is not None or capture is not None
        fetch = list(names)
        if tap:
            fetch += [t for _, _, t in self._captures if t not in fetch]
        if self._memo is not None and not tap:
            return self._memo.run(feeds, names, run_options,
                                  lambda: self._runner(False).run(self._values, feeds, names, run_options))
        results = dict(zip(fetch, self._runner(tap).run(self._values, feeds, fetch, run_options)))
        if observers is not None:
            for qname, tensor in self._observed_outputs.items():
                obs = observers.get(qname)
                if obs is not None:
                    obs.update(np.asarray(results[tensor], dtype=np.float32))
            for qname, model_input in self._observed_inputs.items():
                obs = observers.get(qname)
                if obs is not None:
                    obs.update(np.asarray(feeds[model_input], dtype=np.float32))
        if capture is not None:
            for layer, i, tensor in self._captures:
                capture(layer, i, np.asarray(results[tensor], dtype=np.float32))
        return [results[n] for n in names]

    # -- the contract --

    def weights(self) -> Iterator[Tuple[Quantizer, np.ndarray]]:
        """Each parameter quantizer with its float32 values (batch norms folded)."""
        for name, p in self._prep.params.items():
            yield self._quantizers[name], p.original.astype(np.float32, copy=False)

    def prepare_weight(self, quantizer: Quantizer, values: np.ndarray) -> Any:
        """The fake-quantized values of a parameter as an OrtValue in the parameter's dtype and shape."""
        p = self._prep.params.get(quantizer.name)
        if p is None:
            raise QAValueError(f"'{quantizer.name}' is not a parameter quantizer of {self._source}")
        return self._ortvalue(np.asarray(values).astype(p.original.dtype).reshape(p.original.shape))

    def prepare_activation(self, quantizer: Quantizer, encoding: Any, rounding: str) -> List[Any]:
        """The encoding as the OrtValues a quantizer chain reads: inv, scale, lo and hi (the
        rounding is the session's: ``activate`` picks it from the ActiveSet)."""
        point = self._points.get(quantizer.name)
        if point is None:
            raise QAValueError(f"'{quantizer.name}' is not an activation quantizer of {self._source}")
        # As qa.kernels: inv = 1 / scale in float32, clamp to [offset, offset + steps] before rounding.
        scale = np.float32(encoding.scale)
        inv = np.float32(1.0) / scale
        return self._scalars(point.elem_type, float(inv), float(scale), float(encoding.offset),
                             float(encoding.offset) + float(encoding.num_steps))

    def activate(self, active: ActiveSet) -> None:
        """Run from now on with exactly the quantizers in ``active`` on: rebinds the OrtValues
        that change, builds nothing (a session with chains is built on its first run)."""
        self._bind_weights(active.weights, list(self._prep.params))
        for point in self._prep.points:
            values = active.activations.get(point.quantizer)
            if values is not None:
                for input_name, value in zip(point.inputs[:4], values):
                    self._set(input_name, value)
            self._set(point.inputs[4], self._false if values is None else self._true)
        self._active = active

    @contextlib.contextmanager
    def memoized(self, budget: int) -> Iterator[Callable[[Iterable[str]], None]]:
        """Within the block (one sweep), evaluations of a batch seen before run only the nodes from
        the first one the differing quantizers touch (:mod:`.memo`); call the yielded function with
        those quantizers before each evaluation. ``budget``: bytes of remembered tensors."""
        memo = Memo(self._plan, self._values, int(budget), self._seen_batches)
        self._memo = memo
        try:
            yield memo.focus
        finally:
            self._memo = None
            for plan in self._plans.values():  # their arenas hold the peak activations of their suffixes
                plan.runners.clear()
            log.info("memoized sweep: %s", memo.stats())

    def _plan(self) -> Optional[Plan]:
        """The memo plan of the current session kind (None: its evaluations run in full)."""
        key = self._variant()
        if key not in self._plans:
            rounding, chained = key
            model = build_model(self._prep, self._meta, chained, rounding, [])
            switches = {p.input: name for name, p in self._prep.params.items()}
            types = dict(self._prep.types)
            for point in self._prep.points:
                types.setdefault(point.src, point.elem_type)
                types.setdefault(point.dst, point.elem_type)
                if point.quantizer in chained:
                    switches.update((name, point.quantizer) for name in point.inputs)
            plan = Plan(key, model, switches, self._feeds.names, types, self._source, self._keep)
            if plan.problem:
                log.info("memoized sweeps: %s: %s; its evaluations run in full", self._source, plan.problem)
            self._plans[key] = plan
        plan = self._plans[key]
        return None if plan.problem else plan

    def run(self, inputs: Any) -> List[np.ndarray]:
        """One run of the analysis copy on model inputs ({name: array}, an array, or a tuple)."""
        return self._run_feeds(None, self._feeds.from_inputs(inputs, "inputs"), None, "inputs")

    def no_grad(self) -> Any:
        return contextlib.nullcontext()

    def close(self) -> None:
        self._runners.clear()
        self._plans.clear()
        for tmp in self._keep:
            tmp.cleanup()
        self._keep = []
