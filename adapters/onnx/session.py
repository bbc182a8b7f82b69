"""onnxruntime sessions of the analysis copy: building them (with quantizer chains), running them
through an IOBinding, and the session look-alike the user's callbacks receive."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ...errors import QAError, QAValueError
from .nodes import PREFIX
from .work import Point, Prepared

if TYPE_CHECKING:
    from . import OnnxAdapter

__all__ = ["QuantSimSession", "Runner", "make_session", "session_options", "probe_types", "build_model"]

_ORT_TYPES = {"tensor(float)": TensorProto.FLOAT, "tensor(float16)": TensorProto.FLOAT16,
              "tensor(double)": TensorProto.DOUBLE, "tensor(bfloat16)": TensorProto.BFLOAT16,
              "tensor(int64)": TensorProto.INT64, "tensor(int32)": TensorProto.INT32,
              "tensor(int8)": TensorProto.INT8, "tensor(uint8)": TensorProto.UINT8, "tensor(bool)": TensorProto.BOOL}


def session_options() -> Any:
    """The options of every session that runs the analysis copy (full or, in memoized sweeps, from
    a cut): the same everywhere, so that the same nodes compute the same bits. onnxruntime's
    default graph optimizations stay on (:mod:`.memo` keeps fused groups whole in its suffixes
    and checks that they are optimized as in the full model)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # The engine alternates between sessions (FP32 or weights only, with quantizer chains, the
    # suffixes of memoized sweeps): worker threads that busy-wait after a run take the cores
    # the next session's run needs. Numerics are unaffected (same threads, same work split).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def make_session(model: onnx.ModelProto, options: Any, source: str, keep: Optional[List[Any]] = None) -> Any:
    """An onnxruntime CPU session of ``model``; over protobuf's 2 GB limit the model goes through
    a temporary folder with external data, appended to ``keep`` (the caller cleans it up)."""
    providers = ["CPUExecutionProvider"]
    try:
        if model.ByteSize() < (1 << 31) - (64 << 20):
            return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        tmp = tempfile.TemporaryDirectory(prefix="qa-onnx-")
        path = os.path.join(tmp.name, "model.onnx")
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights")
        if keep is not None:
            keep.append(tmp)
        return ort.InferenceSession(path, options, providers=providers)
    except QAError:
        raise
    except Exception as e:
        raise QAValueError(f"onnxruntime cannot load {source}: {type(e).__name__}: {e}") from None


def probe_types(model: onnx.ModelProto, names: Sequence[str], source: str) -> Dict[str, int]:
    """Ask onnxruntime for the types of tensors shape inference could not type (custom ops)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for n in names:
        if n not in have:
            vi = onnx.ValueInfoProto()
            vi.name = n
            probe.graph.output.append(vi)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = make_session(probe, opts, source)
    except QAValueError:
        return {}
    return {arg.name: _ORT_TYPES[arg.type] for arg in sess.get_outputs() if arg.type in _ORT_TYPES}


# ---- building: the analysis copy with quantizer chains --------------------------------------------

def _constant_names(elem: int) -> Tuple[str, str]:
    return f"{PREFIX}half::{elem}", f"{PREFIX}zero::{elem}"


def _chain(p: Point, rounding: str) -> List[onnx.NodeProto]:
    """dst = on ? clamp(round(src * inv), lo, hi) * scale : src."""
    inv, scale, lo, hi, on = p.inputs
    n = f"{PREFIX}{p.quantizer}"
    mk = helper.make_node
    nodes = [mk("Mul", [p.src, inv], [n + "::scaled"], name=n + "::Mul")]
    if p.elem_type == TensorProto.DOUBLE:  # onnxruntime's CPU Clip(11) has no double kernel
        nodes += [mk("Max", [n + "::scaled", lo], [n + "::above"], name=n + "::Max"),
                  mk("Min", [n + "::above", hi], [n + "::clipped"], name=n + "::Min")]
    else:
        nodes.append(mk("Clip", [n + "::scaled", lo, hi], [n + "::clipped"], name=n + "::Clip"))
    nodes.append(mk("Round", [n + "::clipped"], [n + "::rounded"], name=n + "::Round"))
    rounded = n + "::rounded"
    if rounding == "half_away":
        # Round is half to even; move the ties it rounded towards zero: r += sign(v) where v - r == sign(v) / 2
        half, zero = _constant_names(p.elem_type)
        nodes += [mk("Sign", [n + "::clipped"], [n + "::sign"], name=n + "::Sign"),
                  mk("Sub", [n + "::clipped", rounded], [n + "::frac"], name=n + "::Sub"),
                  mk("Mul", [n + "::sign", half], [n + "::tie"], name=n + "::MulHalf"),
                  mk("Equal", [n + "::frac", n + "::tie"], [n + "::is_tie"], name=n + "::Equal"),
                  mk("Where", [n + "::is_tie", n + "::sign", zero], [n + "::step"], name=n + "::WhereTie"),
                  mk("Add", [rounded, n + "::step"], [n + "::rounded_away"], name=n + "::Add")]
        rounded = n + "::rounded_away"
    return nodes + [mk("Mul", [rounded, scale], [n + "::dequantized"], name=n + "::Dequantize"),
                    mk("Where", [on, n + "::dequantized", p.src], [p.dst], name=n + "::Where")]


def _wired_through(node: onnx.NodeProto, points: List[Point]) -> onnx.NodeProto:
    """A copy of ``node`` that reads / makes the tensors of quantizers without a chain directly."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for p in points:
        if p.is_input:
            copy.input[p.slot] = p.src
        else:
            copy.output[p.slot] = p.dst
    return copy


def _chained_nodes(prep: Prepared, chained: FrozenSet[str], rounding: str) -> List[onnx.NodeProto]:
    """The nodes in order, each input quantizer's chain just before the node that reads it and each
    output quantizer's just after the node that makes it (memoized sweeps cut in front of the
    first node a quantizer touches: the later that is, the more they skip)."""
    before: Dict[str, List[onnx.NodeProto]] = {}
    after: Dict[str, List[onnx.NodeProto]] = {}
    for p in prep.points:
        if p.quantizer in chained:
            (before if p.is_input else after).setdefault(p.node, []).extend(_chain(p, rounding))
    rewire: Dict[str, List[Point]] = {}
    for p in prep.points:
        if p.quantizer not in chained:
            rewire.setdefault(p.node, []).append(p)
    nodes: List[onnx.NodeProto] = []
    for node in prep.nodes:
        nodes.extend(before.get(node.name, ()))
        if node.name in rewire:
            node = _wired_through(node, rewire[node.name])
        nodes.append(node)
        nodes.extend(after.get(node.name, ()))
    return nodes


def build_model(prep: Prepared, meta: onnx.ModelProto, chained: FrozenSet[str], rounding: str,
                tap: Sequence[str]) -> onnx.ModelProto:
    """The analysis copy with a quantizer chain for each quantizer in ``chained`` (the others are
    wired straight through: they can never turn on in this session), each parameter and each
    chain's inv, scale, lo, hi and on as graph inputs, and the tensors in ``tap`` as extra outputs."""
    points = [p for p in prep.points if p.quantizer in chained]
    inputs = list(prep.inputs)
    for p in prep.params.values():
        inputs.append(helper.make_tensor_value_info(p.input, p.elem_type, list(p.original.shape)))
    for p in points:
        inputs += [helper.make_tensor_value_info(name, p.elem_type, []) for name in p.inputs[:4]]
        inputs.append(helper.make_tensor_value_info(p.inputs[4], TensorProto.BOOL, []))
    initializers = list(prep.initializers)
    if rounding == "half_away":
        for elem in sorted({p.elem_type for p in points}):
            dtype = helper.tensor_dtype_to_np_dtype(elem)
            half, zero = _constant_names(elem)
            initializers += [numpy_helper.from_array(np.array(0.5, dtype), half),
                             numpy_helper.from_array(np.array(0.0, dtype), zero)]
    outputs = list(prep.outputs)
    have = {o.name for o in outputs}
    for tensor in tap:
        if tensor not in have:
            have.add(tensor)
            outputs.append(helper.make_tensor_value_info(tensor, prep.types.get(tensor, TensorProto.FLOAT), None))
    graph = helper.make_graph(_chained_nodes(prep, chained, rounding), meta.graph.name or "qa", inputs, outputs,
                              initializers)
    graph.sparse_initializer.extend(prep.sparse_initializers)
    model = onnx.ModelProto()
    model.CopyFrom(meta)
    model.producer_name = "qa"
    model.graph.CopyFrom(graph)
    return model


# ---- running -------------------------------------------------------------------------------------

class Runner:
    """One onnxruntime session and its IOBinding; qa's inputs are rebound only when they change."""

    def __init__(self, sess: Any, values: Dict[str, Any]) -> None:
        self.sess = sess
        self.binding = sess.io_binding()
        self.inputs = {arg.name for arg in sess.get_inputs()}
        self.dirty: Set[str] = set(values) & self.inputs

    def run(self, values: Dict[str, Any], feeds: Dict[str, np.ndarray], outputs: Sequence[str],
            run_options: Any) -> List[np.ndarray]:
        b = self.binding
        for name in self.dirty:
            b.bind_ortvalue_input(name, values[name])
        self.dirty.clear()
        keep = []  # the binding does not hold the OrtValues (which hold the arrays) alive
        for name, arr in feeds.items():
            keep.append(ort.OrtValue.ortvalue_from_numpy(arr))  # no copy
            b.bind_ortvalue_input(name, keep[-1])
        b.clear_binding_outputs()
        for name in outputs:
            b.bind_output(name)
        try:
            self.sess.run_with_iobinding(b, run_options)
            return b.copy_outputs_to_cpu()
        finally:
            b.clear_binding_outputs()  # memory stays bounded by one batch


class QuantSimSession:
    """An ``onnxruntime.InferenceSession`` look-alike that runs qa's analysis copy of the model
    under the current quantization setting (what ``forward_pass_callback`` and ``eval_callback``
    receive).

    Example:
        >>> outputs = session.run(None, {session.get_inputs()[0].name: batch})  # doctest: +SKIP
    """

    def __init__(self, adapter: "OnnxAdapter") -> None:
        self._adapter = adapter

    def run(self, output_names: Optional[Sequence[str]], input_feed: Mapping[str, Any],
            run_options: Any = None) -> List[np.ndarray]:
        """Outputs (all of them when ``output_names`` is None) for ``input_feed`` {input name: array}."""
        return self._adapter._run_feeds(output_names, input_feed, run_options, "session.run input_feed")

    def get_inputs(self) -> List[Any]:
        return list(self._adapter._input_args)

    def get_outputs(self) -> List[Any]:
        return list(self._adapter._output_args)

    def get_modelmeta(self) -> Any:
        return self._adapter._main().sess.get_modelmeta()

    def get_providers(self) -> List[str]:
        return self._adapter._main().sess.get_providers()

    def get_provider_options(self) -> Dict[str, Any]:
        return self._adapter._main().sess.get_provider_options()

    def get_session_options(self) -> Any:
        return self._adapter._main().sess.get_session_options()

    def get_overridable_initializers(self) -> List[Any]:
        return []

    def __repr__(self) -> str:
        return f"QuantSimSession({self._adapter._source}, {len(self._adapter.active.names)} quantizers on)"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(f"QuantSimSession has no '{name}': qa's session offers run(output_names, input_feed), "
                             f"get_inputs(), get_outputs(), get_modelmeta(), get_providers() and "
                             f"get_session_options() (IOBinding and OrtValue runs are not supported)")
