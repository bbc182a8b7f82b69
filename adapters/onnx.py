"""ONNX adapter: a private copy of the graph, batch-norm folding, and fake quantization inside onnxruntime.

The user's ``onnx.ModelProto`` (or file) is never touched: the adapter reads it and builds its
own graphs from copies of the nodes. It folds batch norms, turns every node into a layer, and
runs fake quantization inside onnxruntime, switched on and off through extra graph inputs:

* activation quantizer on tensor ``x``: ``Where(on, Mul(Round(Clip(Mul(x, 1/scale), offset,
  offset + steps)), scale), x)``. ``Round`` is half to even, as ``qa.kernels``; for float32
  the result is bit-identical to ``qa.kernels.fake_quantize`` (same ``x * (1/scale)`` in
  float32, clamp, round, multiply). ``rounding="half_away"`` builds a variant on first use.
* parameters (weights, biases) become graph inputs; the FP32 and the fake-quantized values
  are ``OrtValue`` s created once, and switching a quantizer rebinds one ``OrtValue`` through
  the session's ``IOBinding`` (no copy, no session rebuild).

Sessions are built once per kind and kept: one without any quantizer chain (used while no
activation quantizer is on: FP32, weights only, calibration) and one with a chain for every
activation quantizer the quantsim config enables; each also in a variant that adds every layer
output as a graph output, for calibration and per-layer MSE, which stream one batch at a time.

The callbacks receive a :class:`QuantSimSession`, which behaves like an
``onnxruntime.InferenceSession`` (``run``, ``get_inputs``, ``get_outputs``) and computes the
model under the current quantization setting.

What is a layer (key names as AIMET's ONNX QuantAnalyzer: the node name):

* every node that computes on data (not on constants only) and has a float output, in
  topological order; unnamed nodes are named ``<OpType>_<index in the graph>``.
* a MatMul with a constant weight followed by an Add of a constant bias is one layer (as
  ``nn.Linear`` exports and as runtimes execute it): weight and bias parameters, one output
  quantizer after the Add.
* pure data-movement ops (:data:`NO_OUTPUT_QUANTIZER`: Reshape, Transpose, Flatten, Squeeze,
  Unsqueeze, Identity, Dropout, Expand, Slice, Split, Tile, DepthToSpace, SpaceToDepth) are
  layers without an output quantizer: their output holds the same values as their input,
  which the producer's quantizer already quantized. Concat keeps its quantizer (it merges
  ranges); Cast, Gather, Pad, ... are left to the quantsim config, as in AIMET.
* If / Loop / Scan nodes and their subgraphs stay in float and are listed in
  ``graph.unquantized_ops``.
* graphs that are quantized already (QuantizeLinear, QLinearConv, MatMulInteger, ...) are
  refused with a ``QAValueError``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Mapping, Optional, Sequence, Set,
                    Tuple)

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ..errors import QAError, QAValueError
from ._base import AdapterBase
from ..graph import INPUT, OUTPUT, PARAM, Layer, QuantGraph, Quantizer

__all__ = ["OnnxAdapter", "QuantSimSession", "is_model", "load_model", "NO_OUTPUT_QUANTIZER"]

log = logging.getLogger("qa.adapters.onnx")

# Data movement: the output holds (a subset or rearrangement of) the input's values.
NO_OUTPUT_QUANTIZER = frozenset({
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Expand", "Slice",
    "Split", "Tile", "DepthToSpace", "SpaceToDepth"})

_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
_PRE_QUANTIZED = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "QGemm",
    "QAttention", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "MatMulIntegerToFloat", "MatMulNBits",
    "MatMulBnb4", "GatherBlockQuantized", "QuantizeBFP", "DequantizeBFP", "QEmbedLayerNormalization"})
_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE})
_LINEAR = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_CONST_EVAL = frozenset({"Identity", "Transpose", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten"})
_MIN_OPSET = 11  # Clip with min/max inputs, Round
_PREFIX = "qa::"


def is_model(model: Any) -> bool:
    """True for an ``onnx.ModelProto`` or a path ending in ``.onnx``."""
    if isinstance(model, onnx.ModelProto):
        return True
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx")


# ---- loading ------------------------------------------------------------------------------------

def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for g in _subgraphs(node):
            yield from _all_nodes(g)


def _subgraph_reads(node: onnx.NodeProto) -> Set[str]:
    """Names a node's subgraphs read (a superset of what they take from the outer scope)."""
    names: Set[str] = set()
    for g in _subgraphs(node):
        for n in _all_nodes(g):
            names.update(i for i in n.input if i)
        names.update(o.name for o in g.output)
    return names


def load_model(model: Any) -> Tuple[onnx.ModelProto, str]:
    """The model (external data loaded) and how to name it in errors.

    A ModelProto is returned as is, not copied: the adapter only reads it (the nodes it changes
    are copies), so a large model is not held twice.

    Args:
        model: an ``onnx.ModelProto`` or the path of a ``.onnx`` file.

    Returns:
        (model, description) where the description names the file or the graph.

    Raises:
        QAValueError: the file is missing, malformed or truncated, or a ModelProto refers to
            external data that was not loaded.
    """
    if isinstance(model, onnx.ModelProto):
        loaded = model
        source = f"the ONNX model (graph '{loaded.graph.name}')"
        for t in loaded.graph.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                raise QAValueError(f"{source}: initializer '{t.name}' lives in an external data file that was not "
                                   f"loaded; pass the path of the .onnx file instead, or load it with "
                                   f"onnx.load(path, load_external_data=True)")
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        source = f"ONNX file '{path}'"
        if not os.path.isfile(path):
            raise QAValueError(f"{source} not found")
        try:
            loaded = onnx.load(path, load_external_data=True)
        except FileNotFoundError as e:
            raise QAValueError(f"{source}: external data file not found ({e})") from None
        except Exception as e:
            raise QAValueError(f"{source} is not a valid ONNX model (malformed or truncated file): "
                               f"{type(e).__name__}: {e}") from None
    else:
        raise QAValueError(f"expected an onnx.ModelProto or the path of a .onnx file, got {type(model).__name__}")
    if not loaded.HasField("graph") or not loaded.graph.node:
        raise QAValueError(f"{source} is not a usable ONNX model: it has no graph nodes (empty, malformed or "
                           f"truncated)")
    if not loaded.graph.output:
        raise QAValueError(f"{source} is not a usable ONNX model: its graph has no outputs (malformed or truncated)")
    quantized = sorted({n.op_type for n in _all_nodes(loaded.graph)
                        if n.op_type in _PRE_QUANTIZED or n.op_type.startswith("QLinear")})
    if quantized:
        raise QAValueError(f"{source} is quantized already (it contains {', '.join(quantized)}); qa analyses FP32 "
                           f"models: pass the model before quantization")
    return loaded, source


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _upgrade_opset(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    version = _opset(model)
    if version >= _MIN_OPSET:
        return model
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(model, _MIN_OPSET)
    except Exception as e:
        raise QAValueError(f"{source} uses opset {version}; qa needs opset {_MIN_OPSET} or later and the "
                           f"conversion failed ({type(e).__name__}: {e})") from None
    log.info("%s: converted from opset %d to %d", source, version, _MIN_OPSET)
    return converted


# ---- constants ------------------------------------------------------------------------------------

def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _constant_value(node: onnx.NodeProto) -> Optional[np.ndarray]:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


class _Constants:
    """Tensors known without running the model: initializers, Constant nodes, and simple ops on them.
    Initializers are converted to numpy only when asked for."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.protos: Dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        self.arrays: Dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.arrays or name in self.protos

    def get(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = numpy_helper.to_array(self.protos[name])
        return self.arrays[name]

    def elem_type(self, name: str) -> Optional[int]:
        if name in self.protos:
            return self.protos[name].data_type
        arr = self.arrays.get(name)
        if arr is None:
            return None
        try:
            return helper.np_dtype_to_tensor_dtype(arr.dtype)
        except Exception:
            return None

    def evaluate(self, node: onnx.NodeProto) -> bool:
        """Record the outputs of a Constant node or of a simple op on constants; False if not possible."""
        if node.op_type == "Constant":
            value = _constant_value(node)
            if value is None:
                return False
            self.arrays[node.output[0]] = value
            return True
        if node.op_type not in _CONST_EVAL or node.domain not in ("", "ai.onnx"):
            return False
        ins = [i for i in node.input]
        if not ins or not all(i and i in self for i in ins):
            return False
        try:
            self.arrays[node.output[0]] = _eval(node, [self.get(i) for i in ins])
        except Exception:
            return False
        return True


def _eval(node: onnx.NodeProto, args: List[np.ndarray]) -> np.ndarray:
    x = args[0]
    op = node.op_type
    if op == "Identity":
        return x
    if op == "Transpose":
        perm = _attr(node, "perm")
        return np.ascontiguousarray(np.transpose(x, perm))
    if op == "Cast":
        return x.astype(helper.tensor_dtype_to_np_dtype(_attr(node, "to")))
    if op == "Flatten":
        axis = _attr(node, "axis", 1)
        axis = axis + x.ndim if axis < 0 else axis
        return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
    if op == "Reshape":
        shape = [int(s) for s in args[1]]
        if not _attr(node, "allowzero", 0):
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return x.reshape(shape)
    axes = args[1] if len(args) > 1 else _attr(node, "axes")
    if op == "Unsqueeze":
        out = x
        ndim = x.ndim + len(axes)
        for a in sorted(int(a) + ndim if a < 0 else int(a) for a in axes):
            out = np.expand_dims(out, a)
        return out
    if op == "Squeeze":
        return np.squeeze(x, axis=None if axes is None else tuple(int(a) for a in axes))
    raise ValueError(op)


# ---- graph analysis ---------------------------------------------------------------------------------

@dataclass
class _Unit:
    """A linear op with a constant weight, possibly with a separate bias Add: one layer."""

    node: onnx.NodeProto
    weight: np.ndarray
    weight_axis: Optional[int]
    bias: Optional[np.ndarray] = None
    bias_node: Optional[onnx.NodeProto] = None  # the Add (MatMul + Add), else the bias is an input of node
    bias_slot: int = 2
    foldable: bool = True

    @property
    def out_node(self) -> onnx.NodeProto:
        return self.bias_node if self.bias_node is not None else self.node


@dataclass
class _Param:
    quantizer: str
    input: str  # the graph input that carries it
    original: np.ndarray  # the model's dtype
    elem_type: int
    quantized: Optional[np.ndarray] = None
    original_value: Any = None  # OrtValue
    quantized_value: Any = None


@dataclass
class _Point:
    """Where an activation quantizer sits: `src` is read, `dst` is what consumers see."""

    quantizer: str
    src: str
    dst: str
    elem_type: int
    inputs: Tuple[str, str, str, str, str]  # inv, scale, lo, hi, on
    node: str  # the node that makes src (output quantizer) or reads dst (input quantizer)
    slot: int  # the output / input position there
    is_input: bool


@dataclass
class _Prepared:
    nodes: List[onnx.NodeProto]
    initializers: List[TensorProto]
    inputs: List[onnx.ValueInfoProto]
    outputs: List[onnx.ValueInfoProto]
    params: Dict[str, _Param] = field(default_factory=dict)
    points: List[_Point] = field(default_factory=list)
    types: Dict[str, int] = field(default_factory=dict)
    sparse_initializers: List[Any] = field(default_factory=list)


def _toposort(nodes: Sequence[onnx.NodeProto], available: Set[str], source: str) -> List[onnx.NodeProto]:
    """Stable topological order (the file's order where it is valid already)."""
    import heapq

    producer: Dict[str, int] = {}
    for i, node in enumerate(nodes):
        for o in node.output:
            if o:
                producer[o] = i
    deps: List[Set[int]] = []
    users: Dict[int, List[int]] = {}
    for i, node in enumerate(nodes):
        need = set(i_ for i_ in node.input if i_) | (_subgraph_reads(node) & producer.keys())
        d = set()
        for name in need:
            if name in producer:
                if producer[name] != i:
                    d.add(producer[name])
            elif name not in available and name in node.input:
                raise QAValueError(f"{source}: node '{node.name or node.op_type}' reads '{name}', which nothing "
                                   f"defines (malformed or truncated model)")
        deps.append(d)
        for j in d:
            users.setdefault(j, []).append(i)
    pending = [len(d) for d in deps]
    ready = [i for i, n in enumerate(pending) if n == 0]
    heapq.heapify(ready)
    order: List[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in users.get(i, []):
            pending[j] -= 1
            if pending[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise QAValueError(f"{source}: the graph has a cycle")
    return [nodes[i] for i in order]


def _name_nodes(nodes: Sequence[onnx.NodeProto]) -> None:
    """Unnamed nodes become `<OpType>_<index>`; duplicate names get a suffix, so names are keys."""
    named = {n.name for n in nodes if n.name}
    used: Set[str] = set()
    for i, node in enumerate(nodes):
        base = name = node.name or f"{node.op_type}_{i}"
        k = 1
        while name in used or (not node.name and name in named):
            name = f"{base}_{k}"
            k += 1
        node.name = name
        used.add(name)


def _infer_types(model: onnx.ModelProto, source: str) -> Tuple[Dict[str, int], Dict[str, Optional[int]]]:
    """elem type and rank (None if unknown) of every tensor onnx's shape inference can tell."""
    slim = _without_graph(model)
    g, src = slim.graph, model.graph
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    declared = {i.name for i in src.input}
    for t in src.initializer:  # big values are not needed to infer shapes: declare them as inputs instead
        if t.ByteSize() <= (1 << 20):
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(slim, strict_mode=False)
    except Exception as e:  # custom ops, or a model shape inference cannot follow
        log.debug("%s: onnx shape inference failed (%s); asking onnxruntime", source, e)
        inferred = slim
    types: Dict[str, int] = {}
    ranks: Dict[str, Optional[int]] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.elem_type:
            types[vi.name] = tt.elem_type
            ranks[vi.name] = len(tt.shape.dim) if tt.HasField("shape") else None
    for t in model.graph.initializer:
        types[t.name] = t.data_type
        ranks[t.name] = len(t.dims)
    return types, ranks


def _without_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model's opsets, IR version, functions and graph name, with an empty graph."""
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    out.graph.name = model.graph.name
    return out


def _probe_types(model: onnx.ModelProto, names: Sequence[str], source: str) -> Dict[str, int]:
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
        sess = _session(probe, opts, source)
    except QAValueError:
        return {}
    out = {}
    for arg in sess.get_outputs():
        t = _ORT_TYPES.get(arg.type)
        if t is not None:
            out[arg.name] = t
    return out


_ORT_TYPES = {"tensor(float)": TensorProto.FLOAT, "tensor(float16)": TensorProto.FLOAT16,
              "tensor(double)": TensorProto.DOUBLE, "tensor(bfloat16)": TensorProto.BFLOAT16,
              "tensor(int64)": TensorProto.INT64, "tensor(int32)": TensorProto.INT32,
              "tensor(int8)": TensorProto.INT8, "tensor(uint8)": TensorProto.UINT8, "tensor(bool)": TensorProto.BOOL}


def _session(model: onnx.ModelProto, options: Any, source: str, keep: Optional[List[Any]] = None) -> Any:
    providers = ["CPUExecutionProvider"]
    try:
        if model.ByteSize() < (1 << 31) - (64 << 20):
            return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        tmp = tempfile.TemporaryDirectory(prefix="qa-onnx-")  # over protobuf's 2 GB: external data
        path = os.path.join(tmp.name, "model.onnx")
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights")
        if keep is not None:
            keep.append(tmp)
        return ort.InferenceSession(path, options, providers=providers)
    except QAError:
        raise
    except Exception as e:
        raise QAValueError(f"onnxruntime cannot load {source}: {type(e).__name__}: {e}") from None


def _count_readers(nodes: Sequence[onnx.NodeProto], outputs: Iterable[str]) -> Dict[str, int]:
    readers: Dict[str, int] = {}
    for node in nodes:
        for i in node.input:
            if i:
                readers[i] = readers.get(i, 0) + 1
        for name in _subgraph_reads(node):
            readers[name] = readers.get(name, 0) + 1
    for name in outputs:
        readers[name] = readers.get(name, 0) + 1  # a graph output is read by the user
    return readers


def _bias_shape_ok(bias: np.ndarray, channels: int) -> bool:
    return bias.ndim >= 1 and bias.shape[-1] == channels and all(d == 1 for d in bias.shape[:-1])


def _fold_batch_norm(unit: _Unit, bn: onnx.NodeProto, consts: _Constants) -> bool:
    """W' = W * s, b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps), per output channel."""
    node = unit.node
    gamma, beta, mean, var = (consts.get(n).astype(np.float64) for n in bn.input[1:5])
    eps = float(_attr(bn, "epsilon", 1e-5))
    s = gamma / np.sqrt(var + eps)
    w = unit.weight
    axis = unit.weight_axis
    if axis is None or w.shape[axis] != s.shape[0] or s.ndim != 1:
        return False
    shape = [1] * w.ndim
    shape[axis] = -1
    scale_bias = 1.0
    if node.op_type == "Gemm":
        scale_bias = float(_attr(node, "beta", 1.0))
    b = unit.bias.astype(np.float64) * scale_bias if unit.bias is not None else np.zeros(s.shape[0])
    if b.ndim > 1 and not _bias_shape_ok(b, s.shape[0]):
        return False
    new_w = (w.astype(np.float64) * s.reshape(shape)).astype(w.dtype)
    new_b = ((b.reshape(-1) - mean) * s + beta).astype(w.dtype)
    unit.weight = new_w
    unit.bias = new_b.reshape(unit.bias.shape) if unit.bias is not None and unit.bias.size == new_b.size else new_b
    if node.op_type == "Gemm":
        for a in node.attribute:
            if a.name == "beta":
                a.f = 1.0
    return True


# ---- the session the callbacks receive --------------------------------------------------------------

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
        return f"QuantSimSession({self._adapter._source}, {len(self._adapter._active)} quantizers on)"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(f"QuantSimSession has no '{name}': qa's session offers run(output_names, input_feed), "
                             f"get_inputs(), get_outputs(), get_modelmeta(), get_providers() and "
                             f"get_session_options() (IOBinding and OrtValue runs are not supported)")


class _Runner:
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


# ---- the adapter ------------------------------------------------------------------------------------

class OnnxAdapter(AdapterBase):
    """Exposes an ONNX model to qa's engine: layers, quantizers, and runs with any quantizers on.

    Args:
        model: an ``onnx.ModelProto`` or the path of a ``.onnx`` file (external data is read
            from the file's folder). It is never modified.
        dummy_input: ``{input name: numpy array}`` (AIMET's ONNX convention); a single array
            or a tuple in input order also works.
        modules_to_ignore: node names (or NodeProtos) to leave unquantized.

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
    unquantized_hint = "nodes inside If/Loop subgraphs and custom-domain ops stay in float"

    def __init__(self, model: Any, dummy_input: Any, *, modules_to_ignore: Optional[Iterable[Any]] = None) -> None:
        proto, self._source = load_model(model)
        proto = _upgrade_opset(proto, self._source)
        self._keep: List[Any] = []  # temporary folders of sessions saved with external data
        self._meta = _without_graph(proto)  # what every built model repeats
        ignored = self._ignored_names(modules_to_ignore)
        self.graph, self._prep = self._prepare(proto, ignored)
        self._quantizers: Dict[str, Quantizer] = {q.name: q for q in self.graph.quantizers()}
        self._user_inputs = [vi.name for vi in self._prep.inputs]
        self._specs = {vi.name: self._spec(vi) for vi in self._prep.inputs}
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
        # The values bound to qa's graph inputs, and the sessions that read them.
        self._true = self._ortvalue(np.array(True))
        self._false = self._ortvalue(np.array(False))
        self._values: Dict[str, Any] = {}
        self._encoded: Dict[str, Tuple[Any, List[Any]]] = {}  # quantizer -> (encoding, its OrtValues)
        for p in self._prep.params.values():
            p.original_value = self._ortvalue(p.original)
            self._values[p.input] = p.original_value
        for point in self._prep.points:
            neutral = self._scalars(point.elem_type, 1.0, 1.0, -1.0, 1.0)
            for name, value in zip(point.inputs, neutral + [self._false]):
                self._values[name] = value
        self._runners: Dict[Tuple[str, bool, FrozenSet[str]], _Runner] = {}  # (rounding, tap, chained)
        self._active: Set[str] = set()
        self._activations_on = False
        self._rounding = "half_even"
        self._quantize_fn: Optional[Callable[[Quantizer, Any], Any]] = None
        self._observers: Optional[Dict[str, Any]] = None
        self._capture: Optional[Callable[[str, int, Any], None]] = None
        self.model = QuantSimSession(self)
        main = self._main()
        self._input_args = [a for a in main.sess.get_inputs() if a.name in self._specs]
        self._output_args = [a for a in main.sess.get_outputs() if a.name in set(self._output_names)]
        self.dummy_input = self._as_feeds(dummy_input, "dummy_input")
        try:
            main.run(self._values, self.dummy_input, self._output_names, None)
        except Exception as e:
            raise QAValueError(f"{self._source} failed on dummy_input ({type(e).__name__}: {e}); pass a dict "
                               f"{{input name: numpy array}} the model accepts") from None

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

    @staticmethod
    def _spec(vi: onnx.ValueInfoProto) -> Tuple[Optional[np.dtype], Optional[List[Optional[int]]], str]:
        tt = vi.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else None
        if not tt.HasField("shape"):
            return dtype, None, "any shape"
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        text = "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                               for d in tt.shape.dim) + "]"
        return dtype, dims, text

    def _prepare(self, proto: onnx.ModelProto, ignored: Set[str]) -> Tuple[QuantGraph, _Prepared]:
        g = proto.graph
        source = self._source
        init_names = {t.name for t in g.initializer}
        inputs = [vi for vi in g.input if vi.name not in init_names]
        input_names = {vi.name for vi in inputs}
        output_names = [o.name for o in g.output]
        nodes = []
        for n in g.node:  # copies: the user's model is only read
            c = onnx.NodeProto()
            c.CopyFrom(n)
            nodes.append(c)
        _name_nodes(nodes)
        nodes = _toposort(nodes, input_names | init_names | {""}, source)
        consts = _Constants(g)
        constant_nodes: Set[str] = set()  # nodes that compute on constants only (weight plumbing)
        runtime: Set[str] = set(input_names)  # tensors that depend on the model inputs
        for node in nodes:
            reads = [i for i in node.input if i] + sorted(_subgraph_reads(node) & runtime)
            if any(i in runtime for i in reads):
                runtime.update(o for o in node.output if o)
            elif node.op_type in _CONTROL_FLOW or not consts.evaluate(node):
                if not reads and node.op_type not in ("Constant",):
                    runtime.update(o for o in node.output if o)  # e.g. RandomNormal: runs every time
                else:
                    constant_nodes.add(node.name)
            else:
                constant_nodes.add(node.name)
        types, ranks = _infer_types(proto, source)
        for name in consts.arrays:
            t = consts.elem_type(name)
            if t:
                types.setdefault(name, t)
        untyped = [o for n in nodes if n.name not in constant_nodes for o in n.output if o and o not in types]
        if untyped:
            types.update(_probe_types(proto, untyped, source))

        def is_float(name: str) -> bool:
            return types.get(name) in _FLOAT_TYPES

        readers = _count_readers(nodes, output_names)
        consumers: Dict[str, List[onnx.NodeProto]] = {}
        for n in nodes:
            for i in set(n.input):
                if i:
                    consumers.setdefault(i, []).append(n)

        def const_float(name: str) -> bool:
            return bool(name) and name in consts and name not in runtime and consts.elem_type(name) in _FLOAT_TYPES

        # Linear units: the weight is constant, the bias constant (in the op, or a following Add).
        units: Dict[str, _Unit] = {}
        absorbed: Set[str] = set()
        for node in nodes:
            if (node.op_type not in _LINEAR or node.domain not in ("", "ai.onnx") or node.name in ignored
                    or len(node.input) < 2 or node.input[0] not in runtime or not const_float(node.input[1])):
                continue
            w = consts.get(node.input[1])
            if node.op_type == "Conv":
                axis: Optional[int] = 0
            elif node.op_type == "ConvTranspose":
                axis = 1 if _attr(node, "group", 1) == 1 else None
            elif node.op_type == "Gemm":
                axis = (0 if _attr(node, "transB", 0) else 1) if w.ndim == 2 else None
            else:
                if w.ndim < 2:
                    continue
                axis = w.ndim - 1
            unit = _Unit(node, w, axis)
            if node.op_type != "MatMul":
                if len(node.input) > 2 and node.input[2]:
                    if const_float(node.input[2]):
                        unit.bias = consts.get(node.input[2])
                    else:
                        unit.foldable = False  # a bias computed at run time
            else:
                out = node.output[0]
                nxt = consumers.get(out, [])
                if (readers.get(out, 0) == 1 and len(nxt) == 1 and nxt[0].op_type == "Add"
                        and nxt[0].name not in ignored and list(nxt[0].input).count(out) == 1):
                    add = nxt[0]
                    other = 1 if add.input[0] == out else 0
                    if const_float(add.input[other]) and _bias_shape_ok(consts.get(add.input[other]), w.shape[-1]):
                        unit.bias, unit.bias_node, unit.bias_slot = consts.get(add.input[other]), add, other
                        absorbed.add(add.name)
            units[node.name] = unit
        unit_by_output = {u.out_node.output[0]: u for u in units.values()}

        # Batch norms that read only a linear unit's output fold into it.
        folded: List[Tuple[str, str]] = []
        removed: Set[str] = set()
        for bn in nodes:
            if bn.op_type != "BatchNormalization" or bn.name in ignored or len(bn.input) < 5:
                continue
            x = bn.input[0]
            unit = unit_by_output.get(x)
            if (unit is None or not unit.foldable or readers.get(x, 0) != 1 or _attr(bn, "training_mode", 0) or _attr(bn, "spatial", 1) != 1
                    or any(readers.get(o, 0) for o in bn.output[1:] if o)
                    or not all(const_float(n) for n in bn.input[1:5])):
                continue
            op = unit.node.op_type
            if op in ("Gemm", "MatMul") and (ranks.get(x) != 2 or unit.weight.ndim != 2):
                continue  # BN's channel axis is 1: it matches the output features only for 2-D outputs
            if op == "ConvTranspose" and _attr(unit.node, "group", 1) != 1:
                continue
            if not _fold_batch_norm(unit, bn, consts):
                continue
            out_node = unit.out_node
            out_node.output[0] = bn.output[0]
            del unit_by_output[x]
            if op == "MatMul" and unit.bias_node is None:  # add the bias as an Add after the MatMul
                mm_out = f"{_PREFIX}{unit.node.name}::matmul"
                unit.node.output[0] = mm_out
                add = helper.make_node("Add", [mm_out, f"{_PREFIX}{unit.node.name}::bias"], [bn.output[0]],
                                       name=f"{unit.node.name}/bias_add")
                unit.bias_node, unit.bias_slot = add, 1
                nodes.insert(nodes.index(unit.node) + 1, add)
                absorbed.add(add.name)
                types[mm_out] = types.get(bn.output[0], TensorProto.FLOAT)
            elif op != "MatMul" and len(unit.node.input) < 3:
                unit.node.input.append(f"{_PREFIX}{unit.node.name}::bias")
            elif op != "MatMul" and not unit.node.input[2]:
                unit.node.input[2] = f"{_PREFIX}{unit.node.name}::bias"
            unit_by_output[bn.output[0]] = unit
            removed.add(bn.name)
            folded.append((bn.name, unit.node.name))
        if folded:
            nodes = [n for n in nodes if n.name not in removed]
            log.info("%s: folded %d batch norm(s): %s", source, len(folded),
                     ", ".join(f"{bn} -> {c}" for bn, c in folded))

        prep = _Prepared(nodes=nodes, initializers=[], inputs=list(inputs), outputs=list(g.output), types=types)
        taken = {o for n in nodes for o in n.output} | input_names | init_names
        layers: List[Layer] = []
        unquantized: List[str] = []
        producer_layer: Dict[str, str] = {}
        index = {n.name: i for i, n in enumerate(nodes)}

        def fresh(name: str) -> str:
            """A tensor name no other tensor of the graph uses (suffixed with _ until free)."""
            while name in taken:
                name += "_"
            taken.add(name)
            return name

        def param(layer: Layer, pname: str, node: onnx.NodeProto, slot: int, values: np.ndarray,
                  axis: Optional[int]) -> None:
            qname = f"{layer.name}_{pname}"
            graph_input = fresh(f"{_PREFIX}{qname}")
            values = np.ascontiguousarray(values)
            node.input[slot] = graph_input
            elem = helper.np_dtype_to_tensor_dtype(values.dtype)
            prep.params[qname] = _Param(qname, graph_input, values, elem)
            layer.quantizers.append(Quantizer(name=qname, layer=layer.name, kind=PARAM, param=pname,
                                              shape=tuple(values.shape), axis=axis))

        def point(qname: str, src: str, dst: str, elem: int, node: str, slot: int, is_input: bool) -> None:
            names = [fresh(f"{_PREFIX}{qname}::{suffix}") for suffix in ("inv", "scale", "lo", "hi", "on")]
            prep.points.append(_Point(qname, src, dst, elem, tuple(names), node, slot, is_input))  # type: ignore[arg-type]

        for node in nodes:
            if node.name in constant_nodes or node.name in absorbed:
                continue
            if node.op_type in _CONTROL_FLOW:
                unquantized.append(f"{node.op_type} '{node.name}' (with its subgraphs)")
                continue
            unit = units.get(node.name)
            out_node = unit.out_node if unit is not None else node
            outs = list(out_node.output)
            if node.name in ignored or not any(o and is_float(o) for o in outs):
                continue
            layer = Layer(name=node.name, op_type=node.op_type,
                          type_name=(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}")
                          + ("+Add" if unit is not None and unit.bias_node is not None and unit.bias_node.name in absorbed
                             and node.op_type == "MatMul" else ""))
            reads = [i for i in node.input if i]
            layer.inputs = sorted({producer_layer[i] for i in reads if i in producer_layer and producer_layer[i] != node.name},
                                  key=lambda n: index[n])
            layer.model_input = any(i in input_names for i in reads)
            # parameters
            if unit is not None:
                param(layer, "weight", node, 1, unit.weight, unit.weight_axis)
                if unit.bias is not None:
                    param(layer, "bias", unit.out_node if unit.bias_node is not None else node, unit.bias_slot,
                          unit.bias, None)
            else:
                for pname, slot in self._param_slots(node, consts, runtime):
                    if slot < len(node.input) and const_float(node.input[slot]):
                        param(layer, pname, node, slot, consts.get(node.input[slot]), None)
            # input quantizers: model inputs read directly
            for slot, name in enumerate(node.input):
                if name in input_names and is_float(name):
                    qname = f"{node.name}_input_{slot}"
                    dst = fresh(f"{_PREFIX}{qname}")
                    node.input[slot] = dst
                    layer.quantizers.append(Quantizer(name=qname, layer=layer.name, kind=INPUT, index=slot))
                    point(qname, name, dst, types[name], node.name, slot, True)
            # output quantizers
            for i, out in enumerate(outs):
                if not out:
                    continue
                producer_layer[out] = layer.name
                if not is_float(out) or node.op_type in NO_OUTPUT_QUANTIZER:
                    continue
                qname = f"{node.name}_output_{i}"
                raw = fresh(f"{_PREFIX}{qname}::raw")
                out_node.output[i] = raw
                layer.quantizers.append(Quantizer(name=qname, layer=layer.name, kind=OUTPUT, index=i))
                point(qname, raw, out, types[out], out_node.name, i, False)
            layer.model_output = any(o in output_names for o in outs)
            layers.append(layer)

        # Weight plumbing that fed only the rewired parameters is dropped, with unused initializers.
        prep.nodes = self._prune(nodes, constant_nodes, output_names)
        used = {i for n in prep.nodes for i in n.input} | {x for n in prep.nodes for x in _subgraph_reads(n)}
        used.update(output_names)
        for t in g.initializer:
            if t.name in used:
                kept = TensorProto()
                kept.CopyFrom(t)
                prep.initializers.append(kept)
        prep.sparse_initializers = list(g.sparse_initializer)
        graph = QuantGraph(layers)
        graph.unquantized_ops = unquantized
        graph.folded_batch_norms = folded
        return graph, prep

    @staticmethod
    def _param_slots(node: onnx.NodeProto, consts: _Constants, runtime: Set[str]) -> List[Tuple[str, int]]:
        """Constant inputs that are parameters, named as torch names them (AIMET's keys)."""
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            return []
        if op in ("BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization"):
            return [("weight", 1), ("bias", 2)]
        if op == "PRelu":
            return [("weight", 1)]
        if op == "Gather" and node.input[0] in consts and len(node.input) > 1 and node.input[1] in runtime:
            return [("weight", 0)]  # an embedding table
        return []

    @staticmethod
    def _prune(nodes: List[onnx.NodeProto], constant_nodes: Set[str], outputs: Sequence[str]) -> List[onnx.NodeProto]:
        keep = list(nodes)
        while True:
            readers = _count_readers(keep, outputs)
            dead = {n.name for n in keep if n.name in constant_nodes and not any(readers.get(o, 0) for o in n.output if o)}
            if not dead:
                return keep
            keep = [n for n in keep if n.name not in dead]

    # -- building sessions --

    def _chain(self, p: _Point, rounding: str) -> List[onnx.NodeProto]:
        """dst = on ? clamp(round(src * inv), lo, hi) * scale : src."""
        inv, scale, lo, hi, on = p.inputs
        n = f"{_PREFIX}{p.quantizer}"
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
            half, zero = self._constant_names(p.elem_type)
            nodes += [mk("Sign", [n + "::clipped"], [n + "::sign"], name=n + "::Sign"),
                      mk("Sub", [n + "::clipped", rounded], [n + "::frac"], name=n + "::Sub"),
                      mk("Mul", [n + "::sign", half], [n + "::tie"], name=n + "::MulHalf"),
                      mk("Equal", [n + "::frac", n + "::tie"], [n + "::is_tie"], name=n + "::Equal"),
                      mk("Where", [n + "::is_tie", n + "::sign", zero], [n + "::step"], name=n + "::WhereTie"),
                      mk("Add", [rounded, n + "::step"], [n + "::rounded_away"], name=n + "::Add")]
            rounded = n + "::rounded_away"
        nodes += [mk("Mul", [rounded, scale], [n + "::dequantized"], name=n + "::Dequantize"),
                  mk("Where", [on, n + "::dequantized", p.src], [p.dst], name=n + "::Where")]
        return nodes

    @staticmethod
    def _wired_through(node: onnx.NodeProto, points: List[_Point]) -> onnx.NodeProto:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for p in points:
            if p.is_input:
                copy.input[p.slot] = p.src
            else:
                copy.output[p.slot] = p.dst
        return copy

    @staticmethod
    def _constant_names(elem: int) -> Tuple[str, str]:
        return f"{_PREFIX}half::{elem}", f"{_PREFIX}zero::{elem}"

    def _build(self, rounding: str, tap: bool, chained: FrozenSet[str]) -> onnx.ModelProto:
        """The model with a quantizer chain for each quantizer in `chained`; the others are wired
        straight through (they can never turn on in this session)."""
        prep = self._prep
        points = [p for p in prep.points if p.quantizer in chained]
        before = [n for p in points if p.is_input for n in self._chain(p, rounding)]
        after: Dict[str, List[onnx.NodeProto]] = {}
        for p in points:
            if not p.is_input:
                after.setdefault(p.node, []).extend(self._chain(p, rounding))
        rewire: Dict[str, List[_Point]] = {}
        for p in prep.points:
            if p.quantizer not in chained:
                rewire.setdefault(p.node, []).append(p)
        nodes = list(before)
        for node in prep.nodes:
            if node.name in rewire:
                node = self._wired_through(node, rewire[node.name])
            nodes.append(node)
            nodes.extend(after.get(node.name, ()))
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
                half, zero = self._constant_names(elem)
                initializers += [numpy_helper.from_array(np.array(0.5, dtype), half),
                                 numpy_helper.from_array(np.array(0.0, dtype), zero)]
        outputs = list(prep.outputs)
        if tap:
            have = {o.name for o in outputs}
            for _, _, tensor in self._captures:
                if tensor not in have:
                    have.add(tensor)
                    outputs.append(helper.make_tensor_value_info(tensor, prep.types.get(tensor, TensorProto.FLOAT), None))
        graph = helper.make_graph(nodes, self._meta.graph.name or "qa", inputs, outputs, initializers)
        graph.sparse_initializer.extend(prep.sparse_initializers)
        model = onnx.ModelProto()
        model.CopyFrom(self._meta)
        model.producer_name = "qa"
        model.graph.CopyFrom(graph)
        return model

    def _runner(self, tap: bool) -> _Runner:
        """The session for the current setting: without any quantizer chain while no activation
        quantizer is on (FP32, weights only, calibration), else with a chain for every activation
        quantizer the config enables. Sessions are built once per kind and kept."""
        if self._activations_on:
            chained = frozenset(n for n, q in self._quantizers.items()
                                if q.kind != PARAM and (q.enabled or n in self._active))
        else:
            chained = frozenset()
        key = (self._rounding if chained else "half_even", tap, chained)
        if key not in self._runners:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            sess = _session(self._build(key[0], tap, chained), options, self._source, self._keep)
            self._runners[key] = _Runner(sess, self._values)
        return self._runners[key]

    def _main(self) -> _Runner:
        return self._runner(tap=False)

    # -- values bound to qa's inputs --

    @staticmethod
    def _ortvalue(array: np.ndarray) -> Any:
        # No copy on the CPU; the OrtValue holds the array. A replaced value stays bound until the
        # next run, which rebinds it first (it is marked dirty), so freed memory is never read.
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))

    def _scalars(self, elem: int, inv: float, scale: float, lo: float, hi: float) -> List[Any]:
        dtype = helper.tensor_dtype_to_np_dtype(elem)
        return [self._ortvalue(np.array(v, dtype=dtype)) for v in (inv, scale, lo, hi)]

    def _encoding_values(self, q: Quantizer, p: _Point) -> List[Any]:
        cached = self._encoded.get(q.name)
        if cached is not None and cached[0] is q.encoding:
            return cached[1]
        enc = q.encoding
        # As qa.kernels: inv = 1 / scale in float32, clamp to [offset, offset + steps] before rounding.
        scale = np.float32(enc.scale)
        inv = np.float32(1.0) / scale
        values = self._scalars(p.elem_type, float(inv), float(scale), float(enc.offset),
                               float(enc.offset) + float(enc.num_steps))
        self._encoded[q.name] = (enc, values)
        return values

    def _set(self, name: str, value: Any) -> None:
        if self._values.get(name) is not value:
            self._values[name] = value
            for runner in self._runners.values():
                if name in runner.inputs:
                    runner.dirty.add(name)

    # -- feeds --

    def _as_feeds(self, inputs: Any, what: str) -> Dict[str, np.ndarray]:
        """{input name: array} from a dict, a single array (one-input models) or a tuple in input order."""
        names = self._user_inputs
        if isinstance(inputs, Mapping):
            feed = dict(inputs)
        elif isinstance(inputs, (tuple, list)):
            if len(inputs) != len(names):
                raise QAValueError(f"{what}: got {len(inputs)} arrays, the model has {len(names)} input(s) "
                                   f"{names}; pass a dict {{input name: array}}")
            feed = dict(zip(names, inputs))
        elif len(names) == 1:
            feed = {names[0]: inputs}
        else:
            raise QAValueError(f"{what}: the model has inputs {names}; pass a dict {{input name: array}}")
        return self._check_feeds(feed, what)

    def _check_feeds(self, feed: Any, what: str) -> Dict[str, np.ndarray]:
        if not isinstance(feed, Mapping):
            raise QAValueError(f"{what} must be a dict {{input name: array}}, got {type(feed).__name__}; "
                               f"the model's inputs are {self._user_inputs}")
        unknown = [k for k in feed if k not in self._specs]
        if unknown:
            raise QAValueError(f"{what}: '{unknown[0]}' is not an input of {self._source}; its inputs are "
                               f"{self._user_inputs}")
        missing = [k for k in self._user_inputs if k not in feed]
        if missing:
            raise QAValueError(f"{what}: input '{missing[0]}' of {self._source} is missing")
        out: Dict[str, np.ndarray] = {}
        for name, value in feed.items():
            dtype, dims, text = self._specs[name]
            if isinstance(value, ort.OrtValue):
                value = value.numpy()
            try:
                arr = np.asarray(value)
            except Exception:
                raise QAValueError(f"{what}: input '{name}' must be a numpy array, got {type(value).__name__}") from None
            if dtype is not None and arr.dtype != dtype:
                raise QAValueError(f"{what}: input '{name}' has dtype {arr.dtype}, the model expects {np.dtype(dtype)}")
            if dims is not None and (arr.ndim != len(dims)
                                     or any(d is not None and d > 0 and d != s for d, s in zip(dims, arr.shape))):
                raise QAValueError(f"{what}: input '{name}' has shape {list(arr.shape)}, the model expects {text}")
            out[name] = np.ascontiguousarray(arr)
        return out

    def _run_feeds(self, output_names: Optional[Sequence[str]], input_feed: Any, run_options: Any,
                   what: str) -> List[np.ndarray]:
        feeds = self._check_feeds(input_feed, what)
        names = list(output_names) if output_names else list(self._output_names)
        for n in names:
            if n not in self._output_names:
                raise QAValueError(f"'{n}' is not an output of {self._source}; its outputs are {self._output_names}")
        observers, capture = self._observers, self._capture
        tap = observers is not None or capture is not None
        runner = self._runner(tap)
        fetch = list(names)
        if tap:
            fetch += [t for _, _, t in self._captures if t not in fetch]
        results = dict(zip(fetch, runner.run(self._values, feeds, fetch, run_options)))
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

    # -- the verbs the engine uses --

    def weights(self) -> Iterator[Tuple[Quantizer, np.ndarray]]:
        """Each parameter quantizer with its float32 values (batch norms folded)."""
        for name, p in self._prep.params.items():
            yield self._quantizers[name], p.original.astype(np.float32, copy=False)

    def set_quantized_weight(self, quantizer: Quantizer, values: np.ndarray) -> None:
        """Cache the fake-quantized values of a parameter (bound when it is active)."""
        p = self._prep.params[quantizer.name]
        p.quantized = np.ascontiguousarray(np.asarray(values).astype(p.original.dtype).reshape(p.original.shape))
        p.quantized_value = self._ortvalue(p.quantized)
        if quantizer.name in self._active:
            self._set(p.input, p.quantized_value)

    def set_active(self, names: Set[str], quantize: Optional[Callable[[Quantizer, Any], Any]],
                   rounding: str = "half_even") -> None:
        """Turn on exactly these quantizers: rebinds the OrtValues that change, builds nothing."""
        self._active = set(names)
        self._quantize_fn = quantize
        if quantize is not None:
            self._rounding = "half_away" if rounding in ("half_away", "half_away_from_zero") else "half_even"
        for name, p in self._prep.params.items():
            on = name in self._active and p.quantized_value is not None
            self._set(p.input, p.quantized_value if on else p.original_value)
        self._activations_on = False
        for point in self._prep.points:
            q = self._quantizers[point.quantizer]
            on = q.name in self._active and q.encoding is not None and quantize is not None
            self._activations_on |= on
            if on:
                for input_name, value in zip(point.inputs[:4], self._encoding_values(q, point)):
                    self._set(input_name, value)
            self._set(point.inputs[4], self._true if on else self._false)

    def run(self, inputs: Any) -> List[np.ndarray]:
        """One run of the analysis copy on model inputs ({name: array}, an array, or a tuple)."""
        return self._run_feeds(None, self._as_feeds(inputs, "inputs"), None, "inputs")

    def no_grad(self) -> Any:
        return contextlib.nullcontext()

    def close(self) -> None:
        self._runners.clear()
        for tmp in self._keep:
            tmp.cleanup()
        self._keep = []
