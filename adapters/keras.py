"""Keras 3 adapter: a cloned analysis model, batch-norm folding, and quantizers patched into layer calls.

The user's model is never touched: the adapter clones it with ``keras.models.clone_model``
(Functional and Sequential models; subclassed models cannot be cloned and are refused with a
clear error), copies the weights into the clone, folds batch norms there, and patches ``call``
on the cloned layers only, so that every layer output (after a fused activation such as
``Conv2D(activation="relu")``) passes through its quantizer. Tensors cross into qa as float32
numpy arrays (``keras.ops.convert_to_numpy``) and come back with ``keras.ops.convert_to_tensor``,
so the adapter works on any Keras backend; only eager execution is supported (``model(x)``,
or ``predict`` on backends that run it eagerly, like torch). Observing, quantizing and capturing
go through the shared mechanics of :class:`qa.adapters._base.Adapter`; activating a quantized
weight assigns the prepared values to the clone's variable (the original values come back when
it is switched off), and the folding arithmetic is :func:`qa.folding.fold_batch_norm`.

What becomes a layer of the analysis:

* every layer of the Functional graph, and every ``keras.ops`` call on symbolic tensors
  (``keras.ops.add(a, b)`` is a layer named after the operation, ``add``, of ONNX type ``Add``;
  shape-only operations get the ONNX types Reshape, Transpose, Slice, ... which the config's
  data-movement policy leaves without an output quantizer). A constant float operand of a
  matmul, einsum or conv operation (``keras.ops.matmul(x, W)`` with a numpy ``W``) is that
  layer's ``weight`` (``<op>_weight``), handed to the operation quantized when it is on; an
  operation reading a layer's variable (``keras.ops.einsum(eq, h, emb.embeddings)``) reads the
  clone's copy and shares the layer's quantizer;
* the layers of a Functional or Sequential model used as a layer (nested models are flattened):
  named ``<nested model>/<layer>`` (deeper: ``outer/inner/layer``), batch norms folded there too;
* the sublayers a layer calls (``MultiHeadAttention``'s query, key, value and output
  projections, a custom block's convolutions): named ``<layer>/<sublayer>`` (the sublayer path
  inside the layer). Which sublayers run is found by calling the cloned layer once on sample
  inputs. The layer itself stays a layer only when it has variables of its own or computes
  its output itself (then its output is quantized). Recurrent layers and TimeDistributed
  (their sublayer runs once per time step), layers whose sample call fails and layers that
  call a layer of the model graph stay one layer. Operations a layer runs between its sublayers
  stay in float and are listed in ``graph.unquantized_ops``, except inside
  ``MultiHeadAttention``, whose attention scores (``<layer>/attention_scores``, a MatMul) and
  attention-weighted values (``<layer>/attention_context``, a MatMul) are quantized too (the
  layer then runs its non-fused attention path, equal to the fused one up to float rounding).

Batch norms are folded into a Dense, Conv, DepthwiseConv or SeparableConv layer they alone
read (into the pointwise kernel of a separable conv), and called once, with no variable shared
(``graph.unfolded_batch_norms`` says why a candidate was not).

A layer object called several times is one layer per call (``name``, ``name/call_1``, ...: the
order the model runs them in), each with its own activation quantizers. A variable is one
parameter quantizer however many layers use it (a layer called twice, a tied embedding read by
a custom output layer, a variable passed to another layer): named after the first layer that
uses it and listed by every layer that does. The clone keeps such sharing (layers holding a
shared variable are copied together). The clone always runs in inference mode: a callback's
``model(x, training=True)`` runs with ``training=False``.

Names: layers are keyed by ``layer.name`` (as AIMET Keras). Kernels become the ``weight``
parameter (``<layer>_weight``, so that a quantsim config's ``params.weight`` applies; a
separable conv's pointwise kernel is ``<layer>_pointwise_weight``, also a ``weight``), biases
``bias``; a batch norm's gamma / beta are its ``weight`` / ``bias``; other variables keep their
Keras name. A variable of a sublayer of a layer that stays one layer (an LSTM's cell) is named
``<layer>_<param>`` too unless that name is taken, then ``<layer>/<sublayer path>_<param>``.
Frozen layers (``trainable=False``) are quantized like any other; non-trainable state (moving
statistics) is not a parameter. A layer reading a float model input gets an input quantizer per
such input (``<layer>_input_<i>``, ``i`` its tensor argument's position; integer inputs such as
token ids get none), and only float outputs get output quantizers. A model quantized by Keras
itself (``model.quantize``) is refused: its layers run ``quantized_call``. Per-channel axis:
the last kernel axis (Keras kernels are ``[..., in, out]``), the input-channel axis of a
depthwise kernel (``[kh, kw, in, mult]``) and the second last for transposed convs.

Memoized sweeps (:meth:`KerasAdapter.memoized`): in the enabling sweep for a layer only its
quantizers are on, so every call of the graph before the first call those quantizers can change
(its *cut*: the layer's call for an activation quantizer, the first call reading the variable for
a weight, whichever layer that is) computes what the float model computes; in the disabling
sweep, what the fully quantized model computes. The clone's graph is a list of *steps*, every
layer and operation call of the graph with nested models walked into, in the order
``Functional._run_through_graph`` runs them (a layer that qa analyses through its sublayers,
such as MultiHeadAttention, is one step). Per eval batch (a hash of the arrays' bytes, shapes and
dtypes and of the other arguments, never an object's identity) the memo remembers the tensors
made before the cut that a later step or the model's result reads, and in the next evaluation of
that batch whose cut lies at or after that *frontier*, the graph run (patched on the clone and
its nested models) skips the steps before it: they return the remembered tensors (masks kept),
or gaps nothing from the frontier on reads (a nested model that must run gets zero placeholders
of the recorded shapes for those); the frontier then moves to the new cut. Layers' per-pass call
counts (which call of a layer runs, so which quantizers it gets) are restored where computing
starts. A pass that cannot replay runs again in full; a model whose steps cannot be laid out
(a nested model that converts its inputs, a graph that does not match) or that holds a layer
defined outside Keras with a seed generator (it may draw random numbers in inference) runs every
evaluation in full, which is logged. Remembered tensors of all batches stay under the budget; a
batch that does not fit runs in full. Layers are taken to compute a function of their inputs and
variables: a layer that changes its own state or its inputs in place in inference is not seen.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import heapq
import inspect
import itertools
import logging
import re
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Set, Tuple

import numpy as np
import keras

from ..errors import QAValueError
from ..folding import fold_batch_norm
from ..graph import INPUT, OUTPUT, PARAM, Layer, QuantGraph, Quantizer, call_name
from . import register
from ._base import Adapter, ActiveSet, FLOAT, check_ignored

__all__ = ["KerasAdapter"]

log = logging.getLogger("qa.adapters.keras")

try:  # how Keras attaches a mask to a tensor (an attribute, or a table on backends without attributes)
    from keras.src.backend.common.masking import get_keras_mask as _get_mask, set_keras_mask as _set_mask
except Exception:  # pragma: no cover - a future Keras may move them
    def _get_mask(t: Any) -> Any:
        return getattr(t, "_keras_mask", None)

    def _set_mask(t: Any, mask: Any) -> None:
        try:
            t._keras_mask = mask
        except Exception:
            pass

L = keras.layers
# Layers that return their input at inference: no layers of the analysis (one policy with torch and ONNX)
_PASS_THROUGH = (L.Identity, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
                 L.GaussianDropout, L.GaussianNoise, L.AlphaDropout)
_CONV = (L.Conv1D, L.Conv2D, L.Conv3D)
_DEPTHWISE = tuple(c for c in (getattr(L, "DepthwiseConv1D", None), L.DepthwiseConv2D) if c is not None)
_CONV_T = tuple(c for c in (getattr(L, "Conv1DTranspose", None), L.Conv2DTranspose,
                            getattr(L, "Conv3DTranspose", None)) if c is not None)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_FOLDABLE = _CONV + _DEPTHWISE + _SEPARABLE + (L.Dense,)
# LSTM, GRU, SimpleRNN, ConvLSTM, TimeDistributed: their sublayer runs once per time step, so they stay one layer
_RNN = (L.RNN, L.TimeDistributed)

# Layer class -> ONNX op type (the vocabulary of AIMET quantsim configs); first match wins.
_OP_TYPES: List[Tuple[Any, str]] = [
    (_CONV + _DEPTHWISE + _SEPARABLE, "Conv"), (_CONV_T, "ConvTranspose"),
    (L.Dense, "Gemm"), (L.EinsumDense, "MatMul"), (L.BatchNormalization, "BatchNormalization"),
    (L.LeakyReLU, "LeakyRelu"), (L.PReLU, "PRelu"), (L.ELU, "Elu"), (L.Softmax, "Softmax"),
    (L.Add, "Add"), (L.Subtract, "Sub"), (L.Multiply, "Mul"), (L.Concatenate, "Concat"),
    (L.Maximum, "Max"), (L.Minimum, "Min"), (L.Average, "Mean"), (L.Dot, "MatMul"),
    ((L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D), "MaxPool"),
    ((L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D), "AveragePool"),
    ((L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D), "GlobalAveragePool"),
    ((L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D), "GlobalMaxPool"),
    (L.Flatten, "Flatten"), (L.Reshape, "Reshape"), (L.Permute, "Transpose"),
    ((L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D, L.GaussianDropout,
      L.GaussianNoise, L.AlphaDropout), "Dropout"),
    ((L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D), "Pad"),
    ((L.UpSampling1D, L.UpSampling2D, L.UpSampling3D), "Resize"),
    (L.LayerNormalization, "LayerNormalization"), (L.GroupNormalization, "GroupNormalization"),
    (L.Embedding, "Gather"), (L.Identity, "Identity"),
]

# keras.ops operation class -> ONNX op type. Shape-only operations map to the ONNX types the
# config's data-movement policy knows (Reshape, Transpose, Slice, ...); others keep their class name.
_OPS: Dict[str, str] = {
    "Add": "Add", "Subtract": "Sub", "Multiply": "Mul", "Divide": "Div", "TrueDivide": "Div",
    "Power": "Pow", "Negative": "Neg", "Absolute": "Abs", "Fabs": "Abs", "Sqrt": "Sqrt", "Exp": "Exp",
    "Log": "Log", "Reciprocal": "Reciprocal", "Square": "Mul", "Matmul": "MatMul", "Dot": "MatMul",
    "Tensordot": "MatMul", "Einsum": "Einsum", "Maximum": "Max", "Minimum": "Min", "Max": "ReduceMax",
    "Min": "ReduceMin", "Amax": "ReduceMax", "Amin": "ReduceMin", "Mean": "ReduceMean", "Sum": "ReduceSum",
    "Prod": "ReduceProd", "Concatenate": "Concat", "Stack": "Concat", "Clip": "Clip", "Tanh": "Tanh",
    "Sin": "Sin", "Cos": "Cos", "Erf": "Erf", "Where": "Where", "Floor": "Floor", "Ceil": "Ceil",
    "Round": "Round", "Sign": "Sign", "Reshape": "Reshape", "Ravel": "Reshape", "Transpose": "Transpose",
    "Swapaxes": "Transpose", "Moveaxis": "Transpose", "ExpandDims": "Unsqueeze", "Squeeze": "Squeeze",
    "GetItem": "Slice", "Slice": "Slice", "Flip": "Slice", "Split": "Split", "ArraySplit": "Split",
    "Unstack": "Split", "Tile": "Tile", "Repeat": "Tile", "BroadcastTo": "Expand", "Pad": "Pad",
    "Take": "Gather", "TakeAlongAxis": "GatherElements", "Cast": "Cast", "ConvertToTensor": "Identity",
    "StopGradient": "Identity", "Copy": "Identity", "DepthToSpace": "DepthToSpace",
    "SpaceToDepth": "SpaceToDepth", "Relu": "Relu", "Relu6": "Clip", "Sigmoid": "Sigmoid",
    "Softplus": "Softplus", "Softsign": "Softsign", "Silu": "Silu", "LeakyRelu": "LeakyRelu",
    "HardSigmoid": "HardSigmoid", "HardSilu": "HardSwish", "Elu": "Elu", "Selu": "Selu", "Gelu": "Gelu",
    "Celu": "Celu", "Softmax": "Softmax", "LogSoftmax": "LogSoftmax", "MaxPool": "MaxPool",
    "AveragePool": "AveragePool", "Conv": "Conv", "DepthwiseConv": "Conv", "SeparableConv": "Conv",
    "ConvTranspose": "ConvTranspose", "OneHot": "OneHot", "BatchNorm": "BatchNormalization",
    "LayerNorm": "LayerNormalization", "RMSNorm": "RMSNormalization", "Normalize": "LpNormalization",
    "DotProductAttention": "Attention",
}

_ACTIVATIONS = {"relu": "Relu", "relu6": "Clip", "sigmoid": "Sigmoid", "tanh": "Tanh", "softmax": "Softmax",
                "gelu": "Gelu", "silu": "Silu", "swish": "Silu", "elu": "Elu", "leaky_relu": "LeakyRelu",
                "hard_sigmoid": "HardSigmoid", "hard_swish": "HardSwish", "hard_silu": "HardSwish",
                "log_softmax": "LogSoftmax", "softplus": "Softplus", "linear": "Identity"}

# Keras variable name -> (the parameter name qa's config vocabulary uses, the quantizer name's suffix).
_PARAM_NAMES = {"kernel": ("weight", "weight"), "depthwise_kernel": ("weight", "weight"),
                "pointwise_kernel": ("weight", "pointwise_weight"), "embeddings": ("weight", "weight"),
                "gamma": ("weight", "weight"), "beta": ("bias", "bias"), "bias": ("bias", "bias")}

# MultiHeadAttention's attention core, quantized as two MatMuls: (layer name suffix, op type)
_SCORES, _CONTEXT = "attention_scores", "attention_context"


def _activation_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return str(name).lower()


def op_type_of(layer: Any) -> str:
    """The ONNX op type of a Keras layer or a keras.ops operation (its class name when unknown)."""
    if not isinstance(layer, keras.layers.Layer):
        return _OPS.get(type(layer).__name__, type(layer).__name__)
    if isinstance(layer, L.TimeDistributed):
        return op_type_of(layer.layer)
    if isinstance(layer, L.ReLU):
        max_value = getattr(layer, "max_value", None)
        return "Clip" if max_value is not None else "Relu"
    if isinstance(layer, L.Activation):
        name = _activation_name(layer.activation)
        return _ACTIVATIONS.get(name, name.capitalize())
    for classes, op in _OP_TYPES:
        if isinstance(layer, classes):
            return op
    return type(layer).__name__


def _is_linear(layer: Any) -> bool:
    act = getattr(layer, "activation", None)
    return act is None or _activation_name(act) == "linear"


def _var_name(v: Any) -> str:
    return str(getattr(v, "name", "") or getattr(v, "path", "")).split("/")[-1].split(":")[0]


def _weight_axis(layer: Any, var: str, ndim: int) -> Optional[int]:
    """The per-channel axis of variable ``var`` of ``layer`` (the layer that owns it)."""
    if ndim < 2:
        return None
    if var == "depthwise_kernel" or (var == "kernel" and isinstance(layer, _DEPTHWISE + _CONV_T)):
        return ndim - 2
    if var == "pointwise_kernel" or (var == "kernel" and isinstance(layer, _CONV + (L.Dense,))):
        return ndim - 1
    return None


def _is_float(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return False
    try:
        name = keras.backend.standardize_dtype(dtype)
    except Exception:
        return False
    return "float" in name


def _is_symbolic(x: Any) -> bool:
    try:
        return keras.backend.is_keras_tensor(x)
    except Exception:
        return False


def _is_tensor(x: Any) -> bool:
    return _is_symbolic(x) or (x is not None and not isinstance(x, (bool, int, float, str))
                               and keras.ops.is_tensor(x))


def _flat(obj: Any) -> List[Any]:
    return list(keras.tree.flatten(obj))


def _to_numpy(t: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float32)


def _from_numpy(array: np.ndarray, like: Any) -> Any:
    return keras.ops.convert_to_tensor(np.asarray(array), dtype=like.dtype)


def _functional_class() -> Any:
    try:
        from keras.src.models.functional import Functional
        return Functional
    except Exception:  # pragma: no cover - a future Keras may move it
        return None


def _is_nested(op: Any) -> bool:
    """A Sequential or Functional model (with Keras's own call) used as a layer: flattened."""
    functional = _functional_class()
    if isinstance(op, keras.Sequential):
        return type(op).call is keras.Sequential.call
    return functional is not None and isinstance(op, functional) and type(op).call is functional.call


def _slots(args: Any, kwargs: Dict[str, Any]) -> List[Tuple[Tuple[Optional[str], int], Any]]:
    """A call's arguments as (slot, value): slot (None, i) is the i-th leaf of the positional
    arguments, (key, i) the i-th leaf of keyword argument ``key`` (stable when Keras adds keywords)."""
    out = [((None, i), v) for i, v in enumerate(_flat(tuple(args)))]
    for key, value in kwargs.items():
        out.extend(((key, i), v) for i, v in enumerate(_flat(value)))
    return out


def _map_slots(args: Any, kwargs: Dict[str, Any], fns: Dict[Tuple[Optional[str], int], Callable[[Any], Any]]
               ) -> Tuple[Any, Dict[str, Any]]:
    """``args`` and ``kwargs`` with the value in each slot of ``fns`` replaced by ``fns[slot](value)``."""
    def mapped(key: Optional[str], value: Any) -> Any:
        flat = _flat(value)
        if not any((key, i) in fns for i in range(len(flat))):
            return value
        flat = [fns[(key, i)](v) if (key, i) in fns else v for i, v in enumerate(flat)]
        return keras.tree.pack_sequence_as(value, flat)

    args = mapped(None, tuple(args))
    kwargs = {k: mapped(k, v) for k, v in kwargs.items()}
    return args, kwargs


# ---- the graph of the user's model -------------------------------------------------------------

_OPAQUE = object()  # a tensor made by operations qa does not see (inside a layer, between its sublayers)


class _Call:
    """One call of a layer or operation (a node of the Keras graph, or a sublayer call found by
    running its layer once): what feeds it, what it makes, and how it is analysed.

    ``kind``: ``leaf`` (one layer of the analysis; the layers it calls run in float inside it),
    ``composite`` (a layer whose sublayers are layers of their own; it quantizes only its own
    outputs and variables), ``hidden`` (such a layer without a layer of its own: ``alias`` names
    the calls that make its outputs) or ``virtual`` (a quantized point inside a layer's call,
    MultiHeadAttention's attention core)."""

    __slots__ = ("op", "clone", "base", "index", "parents", "arg_srcs", "arg_floats", "floats", "shapes",
                 "model_output", "node", "kind", "alias", "params", "op_type", "units", "reason", "consts")

    def __init__(self, op: Any, base: str, index: int) -> None:
        self.op = op
        self.clone: Any = None  # the analysis copy's layer (operation)
        self.base = base  # the layer name (qualified for nested models and sublayers), without the call suffix
        self.index = index  # the k-th call of op in a forward pass, from 0
        self.parents: List[Any] = []  # per input tensor: the _Call making it, None (a model input) or _OPAQUE
        self.arg_srcs: List[Tuple[Tuple[Optional[str], int], Any]] = []  # (argument slot, parent) per input tensor
        self.arg_floats: List[bool] = []  # per input tensor: float? (an integer model input gets no quantizer)
        self.floats: List[bool] = [True]  # per output: a float tensor?
        self.shapes: List[Tuple[Any, ...]] = []
        self.model_output = False
        self.node: Any = None
        self.kind = "leaf"
        self.alias: List["_Call"] = []
        self.params: Optional[List[Any]] = None  # its variables (None: all of its layer's)
        self.op_type: Optional[str] = None
        self.units: List["_Call"] = [self]  # the calls analysed in its place (its sublayer calls when expanded)
        self.reason: Optional[str] = None  # what stays in float inside it
        self.consts: List[Tuple[Tuple[Optional[str], int], Any]] = []  # (slot, value): an op's constant operands

    @property
    def name(self) -> str:
        return call_name(self.base, self.index)


def _call_order(calls: List[_Call], position: Dict[int, Tuple[int, ...]]) -> List[_Call]:
    """The calls in a valid execution order that keeps the model's operation order where it can
    (Kahn's algorithm, the earliest operation first; a layer's calls in their own order)."""
    index = {id(c): i for i, c in enumerate(calls)}
    deps: Dict[int, Set[int]] = {i: set() for i in range(len(calls))}
    previous: Dict[int, int] = {}
    for i, c in enumerate(calls):
        deps[i].update(index[id(p)] for p in c.parents if isinstance(p, _Call))
        if id(c.op) in previous:
            deps[i].add(previous[id(c.op)])
        previous[id(c.op)] = i
    users: Dict[int, List[int]] = {}
    for i, ds in deps.items():
        for d in ds:
            users.setdefault(d, []).append(i)
    last = (len(position),)

    def key(i: int) -> Tuple[Tuple[int, ...], int, int]:
        return (position.get(id(calls[i].op), last), calls[i].index, i)

    ready = [key(i) for i, ds in deps.items() if not ds]
    heapq.heapify(ready)
    order: List[_Call] = []
    while ready:
        i = heapq.heappop(ready)[2]
        order.append(calls[i])
        for j in users.get(i, []):
            deps[j].discard(i)
            if not deps[j]:
                heapq.heappush(ready, key(j))
    return order


class _Topology:
    """Every call of every layer and operation of a Keras model, nested Functional and Sequential
    models flattened into their layers: ``call_list`` in the order the model runs them (the k-th
    call of a layer here is its k-th call at run time), ``ordered`` in the model's operation order."""

    def __init__(self, model: Any) -> None:
        self.call_list: List[_Call] = []
        self.names: Dict[int, str] = {}     # id(op) -> its layer name (nested: outer/inner)
        self.ops: List[Any] = []            # layers and operations, in order of their first call
        self.calls: Dict[int, int] = {}     # id(op) -> how many times it runs
        self.nested: Dict[str, Any] = {}    # name of a nested model -> the model
        self.position: Dict[int, Tuple[int, ...]] = {}
        self._taken: Set[str] = set()
        for src in self._walk(model, "", (), None):
            if isinstance(src, _Call):
                src.model_output = True
        self.ordered = _call_order(self.call_list, self.position)

    def _add(self, op: Any, prefix: str, key: Tuple[int, ...], node: Any) -> _Call:
        if id(op) not in self.names:
            name = prefix + op.name
            unique, k = name, 1
            while unique in self._taken:
                unique, k = f"{name}_{k}", k + 1
            self._taken.add(unique)
            self.names[id(op)] = unique
            self.ops.append(op)
            self.calls[id(op)] = 0
            self.position[id(op)] = key
        call = _Call(op, self.names[id(op)], self.calls[id(op)])
        self.calls[id(op)] += 1
        outs = list(node.outputs) if node is not None else _flat(_try(lambda: op.output) or [])
        if outs:
            call.floats = [_is_float(t) for t in outs]
            call.shapes = [tuple(t.shape) for t in outs]
        call.node = node
        self.call_list.append(call)
        return call

    def _walk(self, model: Any, prefix: str, key: Tuple[int, ...], srcs: Optional[List[Any]]) -> List[Any]:
        """Add the calls of ``model`` (its inputs made by ``srcs``; None: the model inputs) and
        return what makes each of its outputs."""
        graph = model._functional if isinstance(model, keras.Sequential) else model
        if getattr(graph, "_nodes_by_depth", None) is None:
            if not isinstance(model, keras.Sequential):
                raise QAValueError("qa needs a Functional or Sequential Keras model")
            src = srcs[0] if srcs else None  # a Sequential that has no graph: its layers in a chain
            for i, layer in enumerate(model.layers):
                call = self._add(layer, prefix, key + (i,), None)
                call.parents, call.arg_srcs, call.arg_floats = [src], [((None, 0), src)], [True]
                src = call
            return [src]
        made: Dict[int, Any] = {id(t): (srcs[i] if srcs and i < len(srcs) else None)
                                for i, t in enumerate(graph.inputs)}
        position = {id(op): i for i, op in enumerate(graph.operations)}
        # the order Functional._run_through_graph runs the nodes in
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                op = node.operation
                if not op or node.is_input or any(id(t) not in made for t in node.input_tensors):
                    continue
                parents = [made[id(t)] for t in node.input_tensors]
                here = key + (position.get(id(op), len(position)),)
                if _is_nested(op):
                    self.nested.setdefault(prefix + op.name, op)
                    outs = self._walk(op, f"{prefix}{op.name}/", here, parents)
                else:
                    call = self._add(op, prefix, here, node)
                    call.parents = parents
                    tensors = [(slot, v) for slot, v in _slots(node.arguments.args, node.arguments.kwargs)
                               if _is_symbolic(v) and id(v) in made]
                    call.arg_srcs = [(slot, made[id(v)]) for slot, v in tensors]
                    call.arg_floats = [_is_float(v) for _, v in tensors]
                    call.consts = _constant_operands(op, node)
                    outs = [call] * len(node.outputs)
                for t, src in zip(node.outputs, outs):
                    made[id(t)] = src
        return [made.get(id(t)) for t in graph.outputs]


# keras.ops operations whose constant operand is a weight (an ONNX MatMul/Einsum/Conv initializer)
_WEIGHT_OPS = ("Matmul", "Dot", "Tensordot", "Einsum", "Conv", "DepthwiseConv", "ConvTranspose")


def _constant_operands(op: Any, node: Any) -> List[Tuple[Tuple[Optional[str], int], Any]]:
    """(slot, value) for the constant operands of an operation of the graph that qa must see: a
    Keras variable (``keras.ops.einsum(eq, x, emb.embeddings)``: the clone must read its own copy)
    and, for a matmul / einsum / conv, any float array or tensor of 2+ dimensions (a weight)."""
    if isinstance(op, keras.layers.Layer):
        return []
    weights = type(op).__name__ in _WEIGHT_OPS
    consts = []
    for slot, v in _slots(node.arguments.args, node.arguments.kwargs):
        if isinstance(v, keras.Variable) or (weights and _is_float(v) and len(getattr(v, "shape", ())) >= 2 and (
                isinstance(v, np.ndarray) or (_is_tensor(v) and not _is_symbolic(v)))):
            consts.append((slot, v))
    return consts


def _constant_axis(op: Any, slot: Tuple[Optional[str], int], ndim: int) -> Optional[int]:
    """The output-channel axis of a constant weight: the last of a right-hand matmul operand or a
    conv kernel ``[..., in, out]``, the second last of a depthwise / transposed conv kernel."""
    kind = type(op).__name__
    if slot == (None, 0):  # a left-hand operand
        return None
    if kind in ("Matmul", "Dot", "Conv"):
        return ndim - 1
    if kind in ("DepthwiseConv", "ConvTranspose"):
        return ndim - 2
    return None


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # e.g. a layer without a symbolic output
        return None


def _channel_axis_of_output(layer: Any) -> int:
    fmt = getattr(layer, "data_format", "channels_last")
    return 1 if fmt == "channels_first" else -1


def _param_vars(layer: Any) -> List[Any]:
    """The variables of ``layer`` (and its sublayers) that are parameters: float, and created
    trainable (a frozen layer's kernel included: ``trainable=False`` only flips the variables'
    flags; moving statistics and other state are not)."""
    if not hasattr(layer, "weights"):
        return []
    created: Set[int] = set()
    for part in layer._flatten_layers() if hasattr(layer, "_flatten_layers") else [layer]:
        created.update(id(v) for v in getattr(part, "_trainable_variables", None) or [])
    return [v for v in layer.weights if _is_float(v) and (id(v) in created or getattr(v, "trainable", False))]


def _holders(topo: _Topology) -> Dict[int, List[str]]:
    """id(variable) -> the layers that hold it: more than one, a shared variable."""
    holders: Dict[int, List[str]] = {}
    for op in topo.ops:
        for v in getattr(op, "weights", None) or []:
            names = holders.setdefault(id(v), [])
            if topo.names[id(op)] not in names:
                names.append(topo.names[id(op)])
    return holders


def _why_not_foldable(topo: _Topology, src: Any, bn: Any, holders: Dict[int, List[str]]) -> Optional[str]:
    """Why folding ``bn`` into ``src`` would change more than the pair (None: it would not).
    Folding rewrites src's kernel and bias, so they must serve src's one call and nothing else."""
    name, bn_name = topo.names[id(src)], topo.names[id(bn)]
    if topo.calls[id(bn)] != 1:
        return f"{bn_name} runs {topo.calls[id(bn)]} times in a forward pass"
    if topo.calls[id(src)] != 1:
        return f"{name} runs {topo.calls[id(src)]} times in a forward pass and one weight serves every call"
    for v in src.weights:
        others = [n for n in holders.get(id(v), []) if n != name]
        if others:
            pname = _PARAM_NAMES.get(_var_name(v), (_var_name(v),))[0]
            return f"its {pname} is shared with {', '.join(others)}"
    return None


def _bn_pairs(topo: _Topology) -> Tuple[List[Tuple[Any, Any]], List[Tuple[str, str, str]]]:
    """(layer, bn) pairs: the bn reads exactly the layer's output and nothing else reads it; and
    (bn, layer, reason) for such pairs that must not fold (a layer called twice, a shared variable)."""
    pairs: List[Tuple[Any, Any]] = []
    refused: List[Tuple[str, str, str]] = []
    holders = _holders(topo)
    readers: Dict[int, Set[int]] = {}
    for call in topo.call_list:
        for p in call.parents:
            if isinstance(p, _Call):
                readers.setdefault(id(p), set()).add(id(call))
    for call in topo.call_list:
        bn, src = call.op, (call.parents[0] if len(call.parents) == 1 else None)
        if not isinstance(bn, L.BatchNormalization) or not isinstance(src, _Call):
            continue
        if (not isinstance(src.op, _FOLDABLE) or not _is_linear(src.op) or readers.get(id(src)) != {id(call)}
                or src.model_output or len(src.floats) != 1):
            continue
        reason = _why_not_foldable(topo, src.op, bn, holders)
        if reason is not None:
            entry = (topo.names[id(bn)], topo.names[id(src.op)], reason)
            if entry not in refused:
                refused.append(entry)
            continue
        if not src.shapes:
            continue
        rank = len(src.shapes[0])
        axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
        want = _channel_axis_of_output(src.op) if not isinstance(src.op, L.Dense) else -1
        if axis is None or axis % rank != want % rank:
            continue
        pairs.append((src.op, bn))
    return pairs, refused


def _np(v: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(v))


def _fold(layer: Any, bn: Any) -> None:
    """Fold ``bn`` into the clone's ``layer`` (which has a bias), per output channel: the last
    kernel axis, ``in * mult`` for a depthwise kernel ``[..., in, mult]``, the last axis of a
    separable conv's pointwise kernel."""
    if isinstance(layer, _SEPARABLE):
        kernel = layer.pointwise_kernel
    else:
        kernel = layer.kernel
    ndim = len(kernel.shape)
    axis = (ndim - 2, ndim - 1) if isinstance(layer, _DEPTHWISE) else ndim - 1
    gamma = _np(bn.gamma) if getattr(bn, "gamma", None) is not None else None
    beta = _np(bn.beta) if getattr(bn, "beta", None) is not None else None
    w, b = fold_batch_norm(_np(kernel), _np(layer.bias), mean=_np(bn.moving_mean), var=_np(bn.moving_variance),
                           gamma=gamma, beta=beta, eps=bn.epsilon, axis=axis, name=layer.name)
    kernel.assign(w)
    layer.bias.assign(b)


class _FoldedBatchNorm(keras.layers.Layer):
    """Stands in for a batch norm folded into the layer before it: passes its input through."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


# ---- the analysis clone ---------------------------------------------------------------------

def _graph_memo(topo: _Topology) -> Dict[int, Any]:
    """A deepcopy memo that gives every copied layer or operation fresh, empty graph nodes (a copy
    never drags the user's graph along)."""
    memo: Dict[int, Any] = {}
    for op in topo.ops:
        parts = op._flatten_layers() if isinstance(op, keras.layers.Layer) else [op]
        for part in parts:
            for attr in ("_inbound_nodes", "_outbound_nodes"):
                nodes = getattr(part, attr, None)
                if nodes is not None:
                    memo[id(nodes)] = []
    return memo


def _deep_copy(layer: Any, memo: Dict[int, Any]) -> Any:
    """A copy of ``layer`` with its variables; with one ``memo`` for all, objects shared between
    layers (a variable, a sublayer) stay shared between the copies. Keras layers pickle through
    their config, which loses that sharing, so their ``__dict__`` is copied directly."""
    if id(layer) in memo:
        return memo[id(layer)]
    parts = [p for p in layer._flatten_layers() if id(p) not in memo]
    for p in parts:
        for attr in ("_inbound_nodes", "_outbound_nodes"):
            if isinstance(getattr(p, attr, None), list):
                memo.setdefault(id(getattr(p, attr)), [])
        memo[id(p)] = object.__new__(type(p))
    for p in parts:
        memo[id(p)].__dict__.update(copy.deepcopy(p.__dict__, memo))
    return memo[id(layer)]


def _clone_op(op: Any) -> Any:
    """A copy of a keras.ops operation of the graph (the clone patches it; the user's stays as it is)."""
    try:
        return op.__class__.from_config(op.get_config())
    except Exception:
        new = object.__new__(type(op))
        new.__dict__.update(op.__dict__)
        new._inbound_nodes, new._outbound_nodes = [], []
        return new


def _clone(model: Any, topo: _Topology, pairs: List[Tuple[Any, Any]]) -> Tuple[Any, Dict[int, Any]]:
    """A clone of ``model`` holding its weights, with each batch norm in ``pairs`` folded into the
    layer before it (which gets a bias) and replaced by a pass-through; and id(op) -> its clone.
    Layers holding a variable another layer holds, and layers whose config cannot rebuild them,
    are copied with their variables (one memo for all: what they share, their copies share)."""
    fold_into = {id(src) for src, _ in pairs}
    folded_bns = {id(bn) for _, bn in pairs}
    holders = _holders(topo)
    sharing = {id(op) for op in topo.ops if any(len(holders.get(id(v), ())) > 1 for v in getattr(op, "weights", ()))}
    clones: Dict[int, Any] = {}
    copied: Set[int] = set()  # ids of originals whose clone is a copy (weights included)
    memo = _graph_memo(topo)

    def clone_function(layer: Any) -> Any:
        if id(layer) in clones:
            return clones[id(layer)]
        if _is_nested(layer):
            new = keras.models.clone_model(layer, clone_function=clone_function)
            copied.add(id(layer))
        elif not isinstance(layer, keras.layers.Layer):
            new = _clone_op(layer)
        elif id(layer) in folded_bns:
            new = _FoldedBatchNorm(name=layer.name)
        elif id(layer) in sharing:
            new = _deep_copy(layer, memo)
            copied.add(id(layer))
        else:
            try:
                config = layer.get_config()
                if id(layer) in fold_into:
                    config["use_bias"] = True
                new = layer.__class__.from_config(config)
            except Exception as e:  # a custom layer without get_config: copy it
                log.debug("copying layer %s (its config does not rebuild it: %s)", layer.name, e)
                new = _deep_copy(layer, memo)
                copied.add(id(layer))
        clones[id(layer)] = new
        return new

    try:
        clone = keras.models.clone_model(model, clone_function=clone_function)
        for op in topo.ops:
            key = id(op)
            if key in copied or key in folded_bns or not isinstance(op, keras.layers.Layer) or key not in clones:
                continue
            weights = op.get_weights()
            if key in fold_into and not op.use_bias:  # the bias is the last variable of every foldable layer
                weights = weights + [np.zeros(clones[key].bias.shape, dtype=weights[0].dtype)]
            clones[key].set_weights(weights)
    except QAValueError:
        raise
    except Exception as e:
        raise QAValueError(f"qa could not clone the Keras model ({type(e).__name__}: {e}); qa needs a Functional "
                           f"or Sequential model built from standard or serializable layers") from e
    for src, bn in pairs:
        _fold(clones[id(src)], bn)
    return clone, clones


# ---- sublayers: found by running a layer once ---------------------------------------------------

class _Rec:
    """One call seen while running a layer on sample inputs: a sublayer's call, or a quantized
    point of an attention core (``virtual``: (name suffix, op type))."""

    __slots__ = ("layer", "parent", "inputs", "outputs", "virtual")

    def __init__(self, layer: Any, parent: Optional["_Rec"], inputs: List[Tuple[Any, Any]],
                 virtual: Optional[Tuple[str, str]] = None) -> None:
        self.layer = layer
        self.parent = parent  # the enclosing sublayer call (None: the traced layer itself)
        self.inputs = inputs  # (slot, value) per argument leaf
        self.outputs: List[Any] = []
        self.virtual = virtual


def _patch(obj: Any, attr: str, value: Any) -> Callable[[], None]:
    """Set ``obj.<attr>`` on the instance (its __dict__, bypassing Keras's tracking); returns the undo."""
    had, old = attr in obj.__dict__, obj.__dict__.get(attr)
    obj.__dict__[attr] = value

    def undo() -> None:
        if had:
            obj.__dict__[attr] = old
        else:
            obj.__dict__.pop(attr, None)
    return undo


def _attention_core(layer: Any) -> bool:
    """A MultiHeadAttention whose attention core qa can quantize (its own _compute_attention and
    _masked_softmax, flash attention off: the non-fused path is the one with a visible softmax)."""
    mha = L.MultiHeadAttention
    return (isinstance(layer, mha) and type(layer)._compute_attention is mha._compute_attention
            and getattr(type(layer), "_masked_softmax", None) is getattr(mha, "_masked_softmax", None)
            and hasattr(layer, "_masked_softmax") and not getattr(layer, "_flash_attention", False))


def _patch_attention(mha: Any, on_scores: Callable[[Any, List[Any]], Any],
                     on_context: Callable[[Any, List[Any]], Any]) -> List[Callable[[], None]]:
    """Route MultiHeadAttention's attention scores through ``on_scores(scores, [query, key])`` and
    its attention-weighted values through ``on_context(values, [probabilities, value])``. The
    layer runs its non-fused path (return_attention_scores forced on, the scores dropped again)."""
    compute, masked = mha._compute_attention, mha._masked_softmax
    sig = inspect.signature(compute)
    force = "return_attention_scores" in sig.parameters
    pending: List[Dict[str, Any]] = []

    def compute_attention(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        asked = bound.arguments.get("return_attention_scores", False)
        if force:
            bound.arguments["return_attention_scores"] = True
        pending.append(bound.arguments)
        try:
            out, probs = compute(*bound.args, **bound.kwargs)
        finally:
            pending.pop()
        out = on_context(out, [probs, bound.arguments.get("value")])
        return out, (probs if asked or not force else None)

    def masked_softmax(scores, *args, **kwargs):
        found = pending[-1] if pending else {}
        return masked(on_scores(scores, [found.get("query"), found.get("key")]), *args, **kwargs)

    return [_patch(mha, "_compute_attention", compute_attention), _patch(mha, "_masked_softmax", masked_softmax)]


def _sample(t: Any, rng: np.random.Generator) -> Any:
    """A concrete tensor like the symbolic ``t`` (unknown dimensions 2)."""
    shape = tuple(2 if d is None else int(d) for d in t.shape)
    dtype = keras.backend.standardize_dtype(t.dtype)
    if "float" in dtype:
        return keras.ops.cast(keras.ops.convert_to_tensor(rng.standard_normal(shape).astype("float32")), dtype)
    if dtype == "bool":
        return keras.ops.convert_to_tensor(np.ones(shape, dtype=bool))
    return keras.ops.cast(keras.ops.convert_to_tensor(np.zeros(shape, dtype="int32")), dtype)


def _trace(layer: Any, node: Any) -> Optional[Tuple[List[_Rec], List[Tuple[Any, Any]], List[Any]]]:
    """Run ``layer`` (a clone) once on sample inputs shaped like its graph node's, recording
    every sublayer call and attention core: (records, the call's argument slots, its outputs).
    None when the call fails (the layer then stays one layer)."""
    rng = np.random.default_rng(0)
    values = {id(t): _sample(t, rng) for t in node.input_tensors}
    args, kwargs = node.arguments.fill_in(values)
    if getattr(layer, "_call_has_training_arg", False):
        kwargs = dict(kwargs, training=False)
    records: List[_Rec] = []
    stack: List[_Rec] = []

    def tracer(sub: Any, call: Callable[..., Any]):
        def traced(*a, **kw):
            rec = _Rec(sub, stack[-1] if stack else None, _slots(a, kw))
            records.append(rec)
            stack.append(rec)
            try:
                out = call(*a, **kw)
            finally:
                stack.pop()
            rec.outputs = _flat(out)
            return out
        return traced

    def point(mha: Any, virtual: Tuple[str, str]):
        def record(t: Any, inputs: List[Any]) -> Any:
            rec = _Rec(mha, stack[-1] if stack else None, [((None, i), x) for i, x in enumerate(inputs)], virtual)
            rec.outputs = [t]
            records.append(rec)
            return t
        return record

    undo = [_patch(sub, "call", tracer(sub, sub.call)) for sub in layer._flatten_layers(include_self=False)]
    for sub in layer._flatten_layers(include_self=True):
        if _attention_core(sub):
            undo += _patch_attention(sub, point(sub, (_SCORES, "MatMul")), point(sub, (_CONTEXT, "MatMul")))
    try:
        out = layer(*args, **kwargs)
    except Exception as e:
        log.info("layer %s stays one layer: running it on sample inputs failed (%s: %s)", layer.name,
                 type(e).__name__, e)
        return None
    finally:
        for fn in reversed(undo):
            fn()
    return records, _slots(args, kwargs), _flat(out)


def _can_expand(layer: Any, kids: List[_Rec], graph_clones: Set[int]) -> bool:
    """Analyse ``layer`` through the sublayers it called (``kids``)? Not a recurrent layer (its cell
    runs once per time step), and none of the sublayers is a layer of the model graph itself."""
    return (bool(kids) and isinstance(layer, keras.layers.Layer) and not isinstance(layer, _RNN)
            and all(r.virtual is not None or id(r.layer) not in graph_clones for r in kids))




def _sub_name(parent: Any, sub: Any) -> str:
    """A sublayer's name inside ``parent``, the same in every clone: its own name when it was
    given one; an automatic name (``softmax_3``: Keras counts the layers made in the process)
    becomes the class's base name numbered among the parent's sublayers of that class
    (``softmax``, ``softmax_1``, ...)."""
    name = sub.name
    auto = re.sub(r"(?<!^)(?=[A-Z])", "_", type(sub).__name__).lower()
    if name != auto and not re.fullmatch(re.escape(auto) + r"_\d+", name):
        return name
    siblings = [s for s in getattr(parent, "_layers", None) or [] if type(s) is type(sub)]
    k = next((i for i, s in enumerate(siblings) if s is sub), 0)
    return auto if k == 0 else f"{auto}_{k}"


def _sublayer_paths(layer: Any) -> Dict[int, str]:
    """id(sublayer) -> its path inside ``layer`` (``query``, ``block/dense``)."""
    paths: Dict[int, str] = {}

    def walk(parent: Any, prefix: str) -> None:
        for sub in getattr(parent, "_layers", None) or []:
            if id(sub) not in paths:
                paths[id(sub)] = prefix + _sub_name(parent, sub)
                walk(sub, paths[id(sub)] + "/")
    walk(layer, "")
    return paths


def _var_owners(layer: Any) -> Dict[int, Tuple[str, Any]]:
    """id(variable) -> (path of the sublayer that owns it inside ``layer``, "" for its own; that sublayer)."""
    owners: Dict[int, Tuple[str, Any]] = {}
    queue: List[Tuple[str, Any]] = [("", layer)]
    seen: Set[int] = set()
    while queue:
        path, part = queue.pop(0)
        if id(part) in seen:
            continue
        seen.add(id(part))
        for v in list(getattr(part, "_trainable_variables", [])) + list(getattr(part, "_non_trainable_variables", [])):
            owners.setdefault(id(v), (path, part))
        queue.extend((f"{path}/{_sub_name(part, sub)}" if path else _sub_name(part, sub), sub)
                     for sub in getattr(part, "_layers", None) or [])
    return owners


# ---- memoized sweeps: per eval batch, the tensors at the cut; the graph run on from there --------

TensorId = Tuple[int, int]  # (step, output index); step -1: the model's inputs
_FOREVER = 1 << 60
_unique = itertools.count()  # tokens for inputs that cannot be hashed by content: never seen twice


class _NoReplay(Exception):
    """Why this model's sweeps cannot replay (every evaluation then runs in full)."""


class _Abandon(Exception):
    """A replay cannot go on: the pass runs again in full."""


class _Gap:
    """Stands for a tensor a replay did not compute: nothing from the frontier on reads it."""

    __slots__ = ("tid",)

    def __init__(self, tid: TensorId) -> None:
        self.tid = tid


class _Frame:
    """One run of one graph (the model's, or a nested model's at one of its calls): per node, in the
    order Keras runs them, its step or the frame of the nested model it calls."""

    __slots__ = ("graph", "entries", "first", "last", "outs")

    def __init__(self, graph: Any, first: int) -> None:
        self.graph = graph
        self.entries: List[Tuple[Any, Any]] = []
        self.first = first  # its steps are first .. last - 1
        self.last = first
        self.outs: List[TensorId] = []


def _graph_of(model: Any) -> Any:
    graph = model._functional if isinstance(model, keras.Sequential) else model
    return graph if getattr(graph, "_nodes_by_depth", None) is not None else None


class _Plan:
    """The analysis clone's graph as steps: every call of a layer or operation of the flattened
    graph (nested models walked into) in the order Keras runs them, the topology's call for each,
    what each reads, and where each tensor is read last."""

    def __init__(self, model: Any, calls: List[_Call]) -> None:
        self.steps: List[Tuple[Any, Any]] = []  # (node, operation)
        self.reads: List[List[TensorId]] = []
        self.nested_inputs: Set[TensorId] = set()  # handed to a nested model: a replay may need placeholders
        self.graphs: Dict[int, Any] = {}
        graph = _graph_of(model)
        if graph is None:
            raise _NoReplay("the model has no layer graph")
        self.root = self._frame(graph, [(-1, i) for i in range(len(graph.inputs))])
        self.calls = self._match(calls)
        self.last_use: Dict[TensorId, int] = {}
        for p, ins in enumerate(self.reads):
            for t in ins:
                self.last_use[t] = max(self.last_use.get(t, -1), p)
        for t in self.root.outs:
            self.last_use[t] = _FOREVER
        self._live: Dict[int, FrozenSet[TensorId]] = {}

    def _frame(self, graph: Any, srcs: List[TensorId]) -> _Frame:
        """The frame of ``graph`` run on tensors ``srcs`` (what Functional._run_through_graph runs, in its order)."""
        frame = _Frame(graph, len(self.steps))
        self.graphs[id(graph)] = graph
        made = {id(t): s for t, s in zip(graph.inputs, srcs)}
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                op = node.operation
                if not op or node.is_input or any(id(t) not in made for t in node.input_tensors):
                    continue
                ins = [made[id(t)] for t in node.input_tensors]
                if _is_nested(op):
                    sub = self._frame(self._nested_graph(op, node), ins)
                    self.nested_inputs.update(ins)
                    frame.entries.append((node, sub))
                    outs = sub.outs
                else:
                    p = len(self.steps)
                    self.steps.append((node, op))
                    self.reads.append(ins)
                    frame.entries.append((node, p))
                    outs = [(p, i) for i in range(len(node.outputs))]
                made.update((id(t), s) for t, s in zip(node.outputs, outs))
        frame.last = len(self.steps)
        if any(id(t) not in made for t in graph.outputs):
            raise _NoReplay(f"an output of {graph.name} is not connected to its inputs")
        frame.outs = [made[id(t)] for t in graph.outputs]
        return frame

    @staticmethod
    def _nested_graph(op: Any, node: Any) -> Any:
        """The graph of a nested model, which must take the tensors it is handed as they are."""
        graph = _graph_of(op)
        if graph is None:
            raise _NoReplay(f"nested model {op.name} has no layer graph")
        if any(isinstance(a, dict) for a in node.arguments.args) or any(
                _is_symbolic(v) for v in _flat(node.arguments.kwargs)):
            raise _NoReplay(f"nested model {op.name} is called on a dict or on keyword tensors")
        given, taken = node.input_tensors, graph.inputs
        same = len(given) == len(taken) and all(
            keras.backend.standardize_dtype(a.dtype) == keras.backend.standardize_dtype(b.dtype)
            and len(a.shape) == len(b.shape) for a, b in zip(given, taken))
        if not same:
            raise _NoReplay(f"nested model {op.name} converts the tensors it is called on")
        return graph

    def _match(self, calls: List[_Call]) -> List[_Call]:
        """The topology's call for each step (the k-th step of an operation: its k-th call)."""
        by_op: Dict[int, List[_Call]] = {}
        for call in calls:
            by_op.setdefault(id(call.clone), []).append(call)
        seen: Dict[int, int] = {}
        matched = []
        for _, op in self.steps:
            k = seen.get(id(op), 0)
            seen[id(op)] = k + 1
            found = by_op.get(id(op), [])
            if k >= len(found):
                raise _NoReplay(f"the clone's graph calls {getattr(op, 'name', op)} where the model's does not")
            matched.append(found[k])
        if len(matched) != len(calls):
            raise _NoReplay("the clone's graph makes fewer calls than the model's")
        return matched

    def live_at(self, cut: int) -> FrozenSet[TensorId]:
        """Tensors made before step ``cut`` that a step at or after it (or the model's result) reads."""
        if cut not in self._live:
            self._live[cut] = frozenset(t for t, last in self.last_use.items() if 0 <= t[0] < cut <= last)
        return self._live[cut]


def _random_part(op: Any) -> Optional[str]:
    """A part of ``op`` defined outside Keras that holds a seed generator (it may draw random numbers
    in inference: a call cannot be replayed); Keras's own layers draw only in training."""
    parts = op._flatten_layers() if isinstance(op, keras.layers.Layer) else [op]
    for part in parts:
        if not type(part).__module__.startswith("keras.") and getattr(part, "_seed_generators", None):
            return getattr(part, "name", type(part).__name__)
    return None


def _array_bytes(o: Any) -> bytes:
    """An array or tensor as its shape, dtype and bytes; anything else as a token never seen again."""
    try:
        if isinstance(o, (np.ndarray, np.generic)) or (_is_tensor(o) and not _is_symbolic(o)):
            a = np.asarray(o) if isinstance(o, (np.ndarray, np.generic)) else np.asarray(keras.ops.convert_to_numpy(o))
            if a.dtype != object:
                head = f"T{tuple(a.shape)}{a.dtype}{keras.backend.standardize_dtype(o.dtype)}|".encode()
                return head + np.ascontiguousarray(a).tobytes()
    except Exception as e:  # an exotic tensor type: this batch is simply never replayed
        log.debug("memoized sweeps: cannot hash a %s by content (%s)", type(o).__name__, e)
    return f"unique:{next(_unique)}".encode()


def _batch_key(obj: Any) -> str:
    """A hash of a forward pass's arguments: arrays and tensors byte for byte with shapes and dtypes,
    plain values by repr, containers item by item; never an object's identity."""
    h = hashlib.blake2b(digest_size=16)

    def add(o: Any) -> None:
        if isinstance(o, (list, tuple)):
            h.update(b"(" if isinstance(o, tuple) else b"[")
            for x in o:
                add(x)
            h.update(b")")
        elif isinstance(o, dict):
            h.update(b"{")
            for k, v in o.items():
                h.update(repr(k).encode())
                add(v)
            h.update(b"}")
        elif o is None or isinstance(o, (bool, int, float, str, bytes)):
            h.update(f"{type(o).__name__}:{o!r};".encode())
        else:
            h.update(_array_bytes(o))
    add(obj)
    return h.hexdigest()


def _keep(t: Any) -> Any:
    """A tensor to remember: without its gradient history (its Keras mask kept)."""
    if not _is_tensor(t) or _is_symbolic(t):
        return t
    kept = keras.ops.stop_gradient(t)
    mask = _get_mask(t)
    if mask is not None and kept is not t:
        _set_mask(kept, mask)
    return kept


def _nbytes(t: Any) -> int:
    shape = getattr(t, "shape", None)
    if shape is None or not _is_tensor(t):
        return 0
    digits = re.findall(r"\d+", keras.backend.standardize_dtype(t.dtype))
    return int(np.prod([int(d) for d in shape])) * (int(digits[0]) // 8 if digits else 1)


class _Batch:
    __slots__ = ("frontier", "live", "metas", "nbytes", "counts")

    def __init__(self) -> None:
        self.frontier = 0
        self.live: Dict[TensorId, Any] = {}  # the tensors live at the frontier
        self.metas: Dict[TensorId, Tuple[Tuple[int, ...], str]] = {}  # shapes of tensors handed to nested models
        self.nbytes = 0
        self.counts: Dict[str, int] = {}  # the adapter's layer call counts in front of the frontier


class _Memo:
    """The memo of one sweep. Per batch (by content), the frontier (the step in front of which the
    last evaluation's cut lay) and the tensors live there; an evaluation whose cut is at or after
    the frontier skips the steps before it (live outputs are the remembered tensors, others gaps)
    and computes from there; at its end the frontier moves to its cut. ``cuts`` maps each quantizer
    to the first step it can change; ``counts`` is the adapter's per-pass layer call counts (which
    call of a layer runs, so which quantizers it gets), restored where a replay starts computing."""

    def __init__(self, plan: _Plan, cuts: Dict[str, int], budget: int, counts: Dict[str, int]) -> None:
        self.plan, self.cuts, self.budget, self.counts = plan, cuts, budget, counts
        self.batches: Dict[str, Optional[_Batch]] = {}  # None: over the budget, always in full
        self.cut = len(plan.steps)
        self.nbytes = self.saved = self.total = self.abandoned = 0
        self.active = False
        self.key = ""
        self._tally = (0, 0)
        self._reset(None)

    def focus(self, differing: Iterable[str]) -> None:
        """The quantizers that differ from the sweep's reference in the next evaluations."""
        self.cut = min((self.cuts.get(q, 0) for q in differing), default=len(self.plan.steps))

    def _reset(self, batch: Optional[_Batch]) -> None:
        self.batch = batch
        self.replaying = self.restored = False
        self.ok = True  # the pass ran every step through the plan: it may be remembered
        self.new: Dict[TensorId, Any] = {}
        self.snapshot: Optional[Dict[str, int]] = None
        self.pending: Optional[_Frame] = self.plan.root  # the frame the next graph run is
        self.inputs: List[Any] = []
        self.live_next = self.plan.live_at(self.cut) if batch is not None else frozenset()

    def evaluate(self, call: Callable[..., Any], args: Any, kwargs: Dict[str, Any], fresh: Callable[[], None]) -> Any:
        """One forward pass (``call``, after ``fresh()``), replayed up to the frontier when its batch was seen."""
        self.key = _batch_key((args, kwargs))
        batch = self.batches.setdefault(self.key, _Batch())
        self.active, self._tally = True, (self.saved, self.total)
        self._reset(batch)
        self.replaying = batch is not None and 0 < batch.frontier <= self.cut
        try:
            try:
                fresh()
                out = call(*args, **kwargs)
            except Exception as e:
                if not self.replaying:
                    raise
                (log.debug if self.abandoned else log.info)(
                    "memoized sweep: a replay was abandoned (%s: %s); the pass runs again in full", type(e).__name__, e)
                self.abandoned += 1
                self.saved, self.total = self._tally
                self._reset(batch)
                fresh()
                out = call(*args, **kwargs)
            self._finish()
            return out
        finally:
            self.active, self.pending, self.new, self.inputs = False, None, {}, []

    def frame_for(self, graph: Any) -> Optional[_Frame]:
        """The frame a run of ``graph`` is now (None: not a run of this pass's plan)."""
        frame = self.pending if self.active else None
        if frame is None or frame.graph is not graph:
            return None
        self.pending = None
        return frame

    def run(self, frame: _Frame, inputs: Any, operation_fn: Callable[[Any], Any]) -> Any:
        """Functional._run_through_graph over the frame's nodes, skipping the steps before the frontier."""
        graph = frame.graph
        flat = keras.tree.flatten(inputs)
        if frame is self.plan.root:
            self.inputs = flat
        tensors = {id(x): y for x, y in zip(graph.inputs, flat)}
        lookup = getattr(graph, "_get_operation_for_node", None)
        for node, entry in frame.entries:
            op = lookup(node) if lookup is not None else node.operation
            if isinstance(entry, _Frame):
                outs = self._nested(node, op, entry, tensors, operation_fn)
            else:
                outs = self._step(node, op, entry, tensors, operation_fn)
            for x, y in zip(node.outputs, keras.tree.flatten(outs)):
                tensors[id(x)] = y
        return keras.tree.pack_sequence_as(graph._outputs_struct, [tensors[id(x)] for x in graph.outputs])

    def _value(self, t: TensorId) -> Any:
        """A tensor made before the frontier: a model input, a remembered tensor, or a gap."""
        if t[0] < 0:
            return self.inputs[t[1]]
        return self.batch.live.get(t, _Gap(t))

    def _step(self, node: Any, op: Any, p: int, tensors: Dict[int, Any], operation_fn: Callable[[Any], Any]) -> Any:
        self.total += 1
        batch = self.batch
        if self.replaying and p < batch.frontier:
            self.saved += 1
            return [self._value((p, i)) for i in range(len(node.outputs))]
        if self.replaying and not self.restored:  # the first step computed: layer calls counted as in full
            self.counts.clear()
            self.counts.update(batch.counts)
            self.restored = True
        if p == self.cut:
            self.snapshot = dict(self.counts)
        args, kwargs = node.arguments.fill_in(tensors)
        if self.replaying and any(isinstance(v, _Gap) for v in _flat((args, kwargs))):
            raise _Abandon(f"step {p} reads a tensor the replay did not compute")
        outs = operation_fn(op)(*args, **kwargs)
        if batch is not None:
            for i, y in enumerate(keras.tree.flatten(outs)[:len(node.outputs)]):
                t = (p, i)
                if p < self.cut and t in self.live_next:
                    self.new[t] = _keep(y)
                if t in self.plan.nested_inputs and t not in batch.metas and _is_tensor(y):
                    batch.metas[t] = (tuple(int(d) for d in y.shape), keras.backend.standardize_dtype(y.dtype))
        return outs

    def _nested(self, node: Any, op: Any, frame: _Frame, tensors: Dict[int, Any],
                operation_fn: Callable[[Any], Any]) -> Any:
        """A nested model's call: skipped when all of it lies before the frontier, else called (its
        graph run is ``frame``), a gap among its arguments handed over as a placeholder."""
        if self.replaying and frame.last <= self.batch.frontier:
            self.saved += frame.last - frame.first
            self.total += frame.last - frame.first
            return [self._value(t) for t in frame.outs]
        args, kwargs = node.arguments.fill_in(tensors)
        if self.replaying and any(isinstance(v, _Gap) for v in _flat((args, kwargs))):
            args, kwargs = keras.tree.map_structure(self._placeholder, (args, kwargs))
        self.pending = frame
        outs = operation_fn(op)(*args, **kwargs)
        if self.pending is not None:  # the nested model did not run its graph through the plan
            self.pending = None
            if self.replaying:
                raise _Abandon(f"nested model {op.name} did not run its graph")
            self.ok = False
        return outs

    def _placeholder(self, v: Any) -> Any:
        if not isinstance(v, _Gap):
            return v
        meta = self.batch.metas.get(v.tid)
        if meta is None:
            raise _Abandon("no shape recorded for a tensor handed to a nested model")
        return keras.ops.zeros(meta[0], dtype=meta[1])

    def _finish(self) -> None:
        """The pass completed: its batch remembers the tensors live at the cut, and the frontier moves there."""
        batch = self.batch
        if batch is None or not self.ok:
            return
        if self.snapshot is None:  # the cut lies after the last step
            self.snapshot = batch.counts if self.replaying and not self.restored else dict(self.counts)
        live = {t: v for t, v in batch.live.items() if t in self.live_next}
        live.update(self.new)
        if len(live) != len(self.live_next):
            return
        nbytes = sum(_nbytes(v) for v in live.values())
        if self.nbytes - batch.nbytes + nbytes > self.budget:
            self.nbytes -= batch.nbytes
            self.batches[self.key] = None
            log.info("memoized sweeps: a batch's remembered tensors would exceed memo_memory_budget; it is "
                     "evaluated in full")
            return
        self.nbytes += nbytes - batch.nbytes
        batch.live, batch.nbytes, batch.frontier, batch.counts = live, nbytes, self.cut, self.snapshot

    def stats(self) -> str:
        share = self.saved / self.total if self.total else 0.0
        return (f"{self.saved} of {self.total} calls replayed ({share:.0%}), {len(self.batches)} batch(es), "
                f"{self.nbytes / 2**20:.1f} MiB remembered, {self.abandoned} pass(es) run again in full")


# ---- the adapter ---------------------------------------------------------------------------

Site = Tuple[str, Dict[Tuple[Optional[str], int], Quantizer], List[Quantizer]]  # (layer, input quantizers by slot, outputs)


@register
class KerasAdapter(Adapter):
    """Exposes a Keras 3 Functional or Sequential model to qa's engine.

    Example:
        >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "torch")
        >>> import keras
        >>> x = keras.Input((8, 8, 1))
        >>> y = keras.layers.Conv2D(4, 3, name="conv")(x)
        >>> y = keras.layers.BatchNormalization(name="bn")(y)
        >>> net = keras.Model(x, keras.layers.ReLU(name="relu")(y))
        >>> [layer.name for layer in KerasAdapter(net).graph.layers]
        ['conv', 'relu']
    """

    framework = "keras"
    priority = 10  # before torch: on the torch backend a keras.Model is also a torch.nn.Module
    unquantized_hint = ("operations a layer runs between its sublayers stay in float; make them layers or "
                        "keras.ops calls of the Functional graph to quantize them")

    def __init__(self, model: Any, dummy_input: Any = None, *, modules_to_ignore: Any = None) -> None:
        super().__init__()
        self._check_model(model)
        self.dummy_input = dummy_input
        topo = _Topology(model)
        pairs, refused = _bn_pairs(topo)
        for bn, layer, reason in refused:
            log.info("batch norm %s is not folded into %s: %s", bn, layer, reason)
        self.model, clones = _clone(model, topo, pairs)
        folded = [(topo.names[id(bn)], topo.names[id(src)]) for src, bn in pairs]
        if folded:
            log.info("folded %d batch norm(s): %s", len(folded), ", ".join(f"{bn} -> {c}" for bn, c in folded))
        units = self._units(topo, clones)
        ignored = self._ignored_names(topo, units, modules_to_ignore)
        # pass-through layers (Identity; dropout and noise, which do nothing at inference) are no
        # layers, as in the torch and ONNX adapters
        skip = {id(bn) for _, bn in pairs} | {id(op) for op in topo.ops if isinstance(op, _PASS_THROUGH)}
        skipped = {id(u) for u in units if id(u.op) in skip}
        self.graph = self._build_graph(units, skipped, ignored)
        reasons = [c.reason for c in topo.call_list if c.reason]
        self.graph.unquantized_ops = sorted(dict.fromkeys(reasons))
        self.graph.folded_batch_norms = folded
        self.graph.unfolded_batch_norms = refused
        self._quantizers: Dict[str, Quantizer] = {q.name: q for q in self.graph.quantizers()}
        # parameter quantizer -> its float32 (folded) values: what weights() gives and an inactive variable holds
        self._originals: Dict[str, np.ndarray] = {q.name: _np(self._variables[q.name]).astype(np.float32)
                                                   for q in self.graph.quantizers() if q.is_param}
        self._counts: Dict[str, int] = {}  # layer -> its calls so far in the running forward pass
        self._depth = 0  # > 0 while a layer of the analysis runs: the layers it calls run in float inside it
        self._patched: List[Callable[[], None]] = []
        self._memo: Optional[_Memo] = None  # within memoized(): the sweep's memo
        self._patch(units)
        self._replay: Optional[Tuple[_Plan, Dict[str, int]]] = None
        self._no_replay = ""
        try:
            self._replay = self._replay_plan(topo)
        except _NoReplay as e:
            self._no_replay = str(e)
            log.debug("memoized sweeps will run every evaluation in full: %s", e)

    # -- construction --

    @staticmethod
    def _check_model(model: Any) -> None:
        if not isinstance(model, keras.Model):
            raise QAValueError(f"expected a keras.Model, got {type(model).__name__}")
        functional = _functional_class()
        if not (isinstance(model, keras.Sequential) or (functional is not None and isinstance(model, functional))):
            raise QAValueError(
                f"qa analyses Functional and Sequential Keras models; {type(model).__name__} is a subclassed "
                f"keras.Model, whose layer graph cannot be cloned. Build it with the Functional API "
                f"(keras.Model(inputs, outputs)) or as a keras.Sequential")
        if not model.built or (isinstance(model, keras.Sequential) and not model.layers):
            raise QAValueError("the Keras model is not built: give it a keras.Input or call it once on data")
        quantized = [f"{layer.name} ({layer.quantization_mode})" for layer in model._flatten_layers()
                     if getattr(layer, "quantization_mode", None) is not None]
        if quantized:  # such layers run quantized_call, never call: qa's quantizers would never run
            raise QAValueError(f"the Keras model is quantized already (model.quantize): {', '.join(quantized[:5])}"
                               f"{' and more' if len(quantized) > 5 else ''}; qa analyses the float model")

    @staticmethod
    def _ignored_names(topo: _Topology, units: List[_Call], layers: Any) -> Set[str]:
        """Layer names (``<layer>/call_<k>`` for one call, a nested model's or a layer's name for
        everything inside it) to leave unquantized; each must name a layer of the model."""
        names: Set[str] = set()
        nested = {id(m): name for name, m in topo.nested.items()}
        for item in layers or ():
            if isinstance(item, str):
                names.add(item)
            elif isinstance(item, keras.layers.Layer):
                name = topo.names.get(id(item), nested.get(id(item)))
                if name is None:
                    raise QAValueError(f"modules_to_ignore: layer '{item.name}' ({type(item).__name__}) is not a "
                                       f"layer of this model")
                names.add(name)
            else:
                raise QAValueError(f"modules_to_ignore: {type(item).__name__} is not a Keras layer or a layer name")
        valid = list(dict.fromkeys(u.base for u in units))
        prefixes = [p for base in valid for p in _prefixes(base)[:-1]]
        valid += [p for p in dict.fromkeys(prefixes) if p not in valid]
        check_ignored(names, valid + [u.name for u in units if u.index], "a layer of the model")
        return names

    def _units(self, topo: _Topology, clones: Dict[int, Any]) -> List[_Call]:
        """The calls to analyse, in the model's order: every call of the graph, a layer that calls
        sublayers replaced by their calls (found by running it once on sample inputs)."""
        graph_clones = {id(c) for c in clones.values()}
        self._clone_vars: Dict[int, Any] = {}  # id(variable of a layer of the model) -> the clone's copy
        for op in topo.ops:
            if isinstance(op, keras.layers.Layer) and id(op) in clones:
                for original, copied in zip(op.weights, clones[id(op)].weights):
                    self._clone_vars.setdefault(id(original), copied)
        traces: Dict[int, Any] = {}
        expand: Dict[int, bool] = {}  # id(op) -> analysed through its sublayers (every call must allow it)
        for call in topo.call_list:
            call.clone = clones.get(id(call.op), call.op)
            layer = call.clone
            if (call.node is None or not isinstance(layer, keras.layers.Layer) or isinstance(layer, _RNN)
                    or not getattr(layer, "_layers", None)):
                continue
            traced = traces[id(call)] = _trace(layer, call.node)
            ok = traced is not None and _can_expand(layer, [r for r in traced[0] if r.parent is None], graph_clones)
            expand[id(call.op)] = expand.get(id(call.op), True) and ok
        self._child_names: Dict[Tuple[int, Optional[str]], str] = {}
        self._child_counts: Dict[Tuple[int, Optional[str]], int] = {}
        for call in topo.call_list:  # in the order they run: a sublayer's calls are numbered as they run
            if expand.get(id(call.op)):
                self._expand(call, traces[id(call)], graph_clones)
        return [unit for call in topo.ordered for unit in call.units]

    def _expand(self, call: _Call, traced: Any, graph_clones: Set[int]) -> None:
        """Analyse ``call`` through its sublayer calls; it keeps a layer of its own (``composite``)
        only for variables no sublayer holds or outputs no sublayer makes."""
        records, slots, outs = traced
        srcs = dict(call.arg_srcs)
        inputs = {id(v): srcs[slot] for slot, v in slots if slot in srcs}
        made: Dict[int, _Call] = {}
        ctx = (call, records, inputs, made, _sublayer_paths(call.clone), graph_clones)
        units, residual = self._level(ctx, call.clone, [r for r in records if r.parent is None], outs)
        if residual is not None:
            call.kind, call.params, call.parents, call.arg_srcs = "composite", residual, [_OPAQUE], []
            units.append(call)
        else:
            call.kind = "hidden"
            call.alias = list(dict.fromkeys(made[id(o)] for o in outs if id(o) in made))
            for unit in call.alias:
                unit.model_output = unit.model_output or call.model_output
        call.units = units
        if any(_OPAQUE in u.parents for u in units if u.kind != "composite"):
            core = isinstance(call.clone, L.MultiHeadAttention) and not any(u.kind == "virtual" for u in units)
            kind = type(call.clone).__name__
            call.reason = (f"{call.base}: the attention core of {kind} (scores MatMul + Softmax + weighted-sum MatMul)"
                           if core else f"{call.base}: operations in {kind}.call between its sublayers")
        log.debug("layer %s is analysed through %d sublayer call(s)", call.name, len(units))

    def _level(self, ctx: Any, layer: Any, kids: List[_Rec], outs: List[Any]
               ) -> Tuple[List[_Call], Optional[List[Any]]]:
        """The calls analysed for ``layer``'s sublayer calls ``kids`` (recursively), and the variables
        a layer of its own must hold (None: it needs none: its sublayers hold its variables and make
        its outputs)."""
        top, records, inputs, made, paths, graph_clones = ctx

        def source(v: Any) -> Any:
            return made[id(v)] if id(v) in made else inputs.get(id(v), _OPAQUE)

        units: List[_Call] = []
        for rec in kids:
            grand = [r for r in records if r.parent is rec]
            if rec.virtual is None and _can_expand(rec.layer, grand, graph_clones):
                sub, residual = self._level(ctx, rec.layer, grand, rec.outputs)
                units.extend(sub)
                if residual is None:
                    continue
                unit = self._child(top, paths, rec.layer, None)
                unit.kind, unit.params, unit.parents = "composite", residual, [_OPAQUE]
            else:
                unit = self._child(top, paths, rec.layer, rec.virtual)
                tensors = [(slot, v) for slot, v in rec.inputs if v is not None and _is_tensor(v)]
                unit.parents = [source(v) for _, v in tensors]
                unit.arg_srcs = [] if rec.virtual else [(slot, source(v)) for slot, v in tensors]
                unit.arg_floats = [_is_float(v) for _, v in tensors]
            unit.floats = [_is_float(o) for o in rec.outputs]
            for o in rec.outputs:
                made[id(o)] = unit
            units.append(unit)
        covered = {id(v) for u in units for v in (_param_vars(u.clone) if u.params is None else u.params)}
        residual = [v for v in _param_vars(layer) if id(v) not in covered]
        computed = any(_is_float(o) and id(o) not in made for o in outs)
        return units, (residual if residual or computed else None)

    def _child(self, top: _Call, paths: Dict[int, str], layer: Any, virtual: Optional[Tuple[str, str]]) -> _Call:
        """A new call of sublayer ``layer`` of ``top`` (or of an attention-core point), numbered per sublayer."""
        key = (id(layer), virtual[0] if virtual else None)
        if key not in self._child_names:
            base = top.base if layer is top.clone else f"{top.base}/{paths.get(id(layer)) or _sub_name(top.clone, layer)}"
            self._child_names[key] = f"{base}/{virtual[0]}" if virtual else base
        index = self._child_counts.get(key, 0)
        self._child_counts[key] = index + 1
        unit = _Call(layer, self._child_names[key], index)
        unit.clone = layer
        if virtual:
            unit.kind, unit.op_type, unit.params = "virtual", virtual[1], []
        return unit

    def _build_graph(self, units: List[_Call], skipped: Set[int], ignored: Set[str]) -> QuantGraph:
        """One layer per analysed call; one parameter quantizer per variable, named after the first
        layer using it and listed by every layer using it."""
        layers: List[Layer] = []
        self._variables: Dict[str, Any] = {}
        self._sites: Dict[str, Dict[int, Optional[Site]]] = {}
        self._operands: Dict[str, Dict[Tuple[Optional[str], int], Callable[[Any], Any]]] = {}
        self._handed: Set[str] = set()  # constant-weight quantizers whose values are handed to their operation
        self._constants: Dict[str, Any] = {}  # such a quantizer -> the quantized tensor its operation gets now
        by_var: Dict[int, Quantizer] = {}
        calls: Dict[str, int] = {}
        for unit in units:
            calls[unit.base] = calls.get(unit.base, 0) + 1

        def producers(call: _Call) -> List[str]:
            """The nearest analysed calls upstream (through skipped layers such as folded BNs)."""
            names: List[str] = []
            for src in call.parents:
                for name in resolve(src):
                    if name not in names:
                        names.append(name)
            return names

        def resolve(src: Any) -> List[str]:
            if not isinstance(src, _Call):
                return []
            if id(src) in skipped:
                return producers(src)
            if src.kind == "hidden":
                return [n for a in src.alias for n in resolve(a)]
            return [src.name]

        def reads_input(src: Any) -> bool:
            return src is None or (isinstance(src, _Call) and id(src) in skipped
                                   and any(reads_input(p) for p in src.parents))

        for unit in units:
            sites = self._sites.setdefault(unit.base, {})
            if id(unit) in skipped or unit.name in ignored or any(p in ignored for p in _prefixes(unit.base)):
                sites[unit.index] = None
                for slot, value in unit.consts:  # still reads the clone's variables
                    self._operand(unit, slot, value, by_var, quantize=False)
                continue
            type_name = "einsum" if unit.kind == "virtual" else type(unit.clone).__name__
            layer = Layer(name=unit.name, op_type=unit.op_type or op_type_of(unit.clone), type_name=type_name,
                          calls=calls[unit.base], call=unit.index)
            layer.inputs = producers(unit)
            layer.model_output = unit.model_output
            layer.quantizers.extend(self._params(unit, by_var))
            ins: Dict[Tuple[Optional[str], int], Quantizer] = {}
            for i, (slot, src) in enumerate(unit.arg_srcs):
                if reads_input(src):
                    layer.model_input = True
                    if unit.arg_floats[i]:
                        ins[slot] = Quantizer(name=f"{unit.name}_input_{i}", layer=unit.name, kind=INPUT, index=i)
            outs = [Quantizer(name=f"{unit.name}_output_{i}", layer=unit.name, kind=OUTPUT, index=i)
                    for i, is_float in enumerate(unit.floats) if is_float]
            layer.quantizers.extend(list(ins.values()) + outs)
            layers.append(layer)
            sites[unit.index] = (unit.name, ins, outs)
        return QuantGraph(layers)

    def _params(self, unit: _Call, by_var: Dict[int, Quantizer]) -> List[Quantizer]:
        """The parameter quantizers of a call's variables (kernels as ``weight``, biases as ``bias``);
        a variable another layer used first keeps that layer's quantizer."""
        variables = _param_vars(unit.clone) if unit.params is None else unit.params
        owners = _var_owners(unit.clone) if variables else {}
        out: List[Quantizer] = []
        for v in variables:
            q = by_var.get(id(v))
            if q is None:
                path, owner = owners.get(id(v), ("", unit.clone))
                vname = _var_name(v)
                pname, suffix = _PARAM_NAMES.get(vname, (vname, vname))
                candidates = [f"{unit.name}_{suffix}"] + ([f"{unit.name}/{path}_{suffix}"] if path else [])
                candidates.append(f"{unit.name}{'/' + path if path else ''}_{vname}")
                qname = next((c for c in candidates if c not in self._variables), None)
                k = 1
                while qname is None:
                    qname = f"{candidates[-1]}_{k}" if f"{candidates[-1]}_{k}" not in self._variables else None
                    k += 1
                shape = tuple(int(d) for d in v.shape)
                q = by_var[id(v)] = Quantizer(name=qname, layer=unit.name, kind=PARAM, param=pname, shape=shape,
                                              axis=_weight_axis(owner, vname, len(shape)))
                self._variables[qname] = v
            if q not in out:
                out.append(q)
        for slot, value in unit.consts:  # an operation's constant operands (keras.ops.matmul(x, W))
            q = self._operand(unit, slot, value, by_var)
            if q is not None and q not in out:
                out.append(q)
        return out

    def _operand(self, unit: _Call, slot: Tuple[Optional[str], int], value: Any, by_var: Dict[int, Quantizer],
                 quantize: bool = True) -> Optional[Quantizer]:
        """The quantizer of a constant operand of an operation (None: not a weight). A variable of a
        layer of the model is read as the clone's copy (one quantizer with the layer's); another
        constant is handed to the operation quantized while its quantizer is on."""
        variable = self._clone_vars.get(id(value)) if isinstance(value, keras.Variable) else None
        key = variable if variable is not None else value
        operands = self._operands.setdefault(unit.base, {})
        if variable is not None:
            operands[slot] = lambda t, v=variable: v
        weight = quantize and type(unit.op).__name__ in _WEIGHT_OPS and _is_float(value) and len(value.shape) >= 2
        q = by_var.get(id(key))
        if q is None and weight:
            qname, k = f"{unit.name}_weight", 1
            while qname in self._variables:
                qname, k = f"{unit.name}_weight_{k}", k + 1
            shape = tuple(int(d) for d in value.shape)
            q = by_var[id(key)] = Quantizer(name=qname, layer=unit.name, kind=PARAM, param="weight", shape=shape,
                                            axis=_constant_axis(unit.op, slot, len(shape)))
            self._variables[qname] = key
            if variable is None:
                self._handed.add(qname)
        if q is not None and q.name in self._handed:
            operands[slot] = lambda t, n=q.name: self._constants.get(n, t)
        return q

    # -- the quantizers, patched into the clone's layer calls --

    def _input(self, q: Quantizer, t: Any) -> Any:
        """``t`` after input quantizer ``q`` (observed, quantized or passed, as the mode says)."""
        if _is_symbolic(t) or not _is_float(t):
            return t
        quantized = self._activation(q.name, lambda: _to_numpy(t))
        return t if quantized is None else _from_numpy(quantized, t)

    def _patch(self, units: List[_Call]) -> None:
        """Patch each analysed layer's call (and each attention core) of the clone, once per layer."""
        done: Set[str] = set()
        for unit in units:
            if unit.base in done or unit.kind == "hidden":
                continue
            done.add(unit.base)
            if unit.kind == "virtual":
                continue
            sites = self._sites[unit.base]
            self._patched.append(_patch(unit.clone, "call", self._wrapped(unit.base, unit.clone.call, sites,
                                                                          leaf=unit.kind == "leaf")))
        for unit in units:
            if unit.kind == "virtual" and unit.index == 0 and unit.base.endswith("/" + _SCORES):
                base = unit.base[:-len(_SCORES)]
                self._patched += _patch_attention(unit.clone, self._point(base + _SCORES),
                                                  self._point(base + _CONTEXT))
        self._patched.append(_patch(self.model, "call", self._root(self.model.call)))

    def _root(self, call: Callable[..., Any]):
        """The clone's own call: each forward pass counts layer calls from 0, always in inference mode;
        within a memoized sweep, the pass goes through the sweep's memo."""
        adapter = self

        def inference_call(*args, **kwargs):
            if "training" in kwargs:
                kwargs["training"] = False  # a callback's training=True would turn dropout on and update BN statistics
            memo = adapter._memo
            if memo is None or memo.active or adapter._observers is not None or adapter._capture is not None:
                adapter._fresh_pass()
                return call(*args, **kwargs)
            return memo.evaluate(call, args, kwargs, adapter._fresh_pass)

        return inference_call

    def _fresh_pass(self) -> None:
        self._counts.clear()
        self._depth = 0

    # -- memoized sweeps --

    def _replay_plan(self, topo: _Topology) -> Tuple[_Plan, Dict[str, int]]:
        """The clone's graph as steps and each quantizer's cut; the graph runs of the clone (and of
        its nested models) patched to run through a sweep's memo. Raises _NoReplay when the model's
        sweeps cannot replay."""
        plan = _Plan(self.model, topo.call_list)
        for call in plan.calls:
            drawn = _random_part(call.clone)
            if drawn is not None:
                raise _NoReplay(f"layer {drawn} may draw random numbers in inference")
        for graph in plan.graphs.values():
            self._patched.append(_patch(graph, "_run_through_graph", self._runner(graph, graph._run_through_graph)))
        return plan, self._cuts(plan)

    def _runner(self, graph: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        """``graph._run_through_graph``: the memo's run within a memoized pass, Keras's otherwise."""
        adapter = self

        def run_through_graph(inputs, *args, **kwargs):
            memo = adapter._memo
            operation_fn = args[0] if args else kwargs.get("operation_fn")
            plain = memo is None or operation_fn is None or len(args) > 1 or kwargs.get("call_fn") is not None
            frame = None if plain else memo.frame_for(graph)
            if frame is None:
                return original(inputs, *args, **kwargs)
            return memo.run(frame, inputs, operation_fn)

        return run_through_graph

    def _cuts(self, plan: _Plan) -> Dict[str, int]:
        """Quantizer -> the first step it can change: its layer's step for an activation; for a
        parameter, the first step reading its variable (or constant), whichever layer that is."""
        step: Dict[str, int] = {}
        reads: Dict[int, int] = {}
        for p, call in enumerate(plan.calls):
            for unit in call.units:
                step.setdefault(unit.name, p)
            layer = call.clone if isinstance(call.clone, keras.layers.Layer) else None
            held = list(getattr(layer, "weights", None) or []) if layer is not None else []
            held += [self._clone_vars.get(id(v), v) for _, v in call.consts]
            for v in held:
                reads.setdefault(id(v), p)
        cuts: Dict[str, int] = {}
        for layer in self.graph.layers:
            p = step.get(layer.name, 0)
            for q in layer.quantizers:
                where = min(p, reads.get(id(self._variables[q.name]), p)) if q.is_param else p
                cuts[q.name] = min(cuts.get(q.name, where), where)
        return cuts

    @contextlib.contextmanager
    def memoized(self, budget: int) -> Iterator[Optional[Callable[[Iterable[str]], None]]]:
        """Within the block (one sweep), a forward pass on a batch seen before skips the steps in front
        of the frontier (see the module docstring); call the yielded function with the quantizers that
        differ from the sweep's reference before each evaluation. Yields None (every evaluation in
        full) for a model whose sweeps cannot replay."""
        if self._replay is None:
            log.info("memoized sweeps are off for this model (%s); every evaluation runs in full", self._no_replay)
            yield None
            return
        plan, cuts = self._replay
        memo = _Memo(plan, cuts, int(budget), self._counts)
        self._memo = memo
        try:
            yield memo.focus
        finally:
            self._memo = None
            log.info("memoized sweep: %s", memo.stats())

    def _site(self, name: str, sites: Dict[int, Optional[Site]]) -> Tuple[int, Optional[Site]]:
        """Count one call of layer ``name``: (its index in this forward pass, its site)."""
        k = self._counts.get(name, 0)
        self._counts[name] = k + 1
        return k, sites.get(k, sites[max(sites)] if sites else None)

    def _outputs(self, site: Site, output: Any) -> Any:
        """``output`` after the site's output quantizers (captured when a sink is set)."""
        tensors = _flat(output)
        result = self._layer_outputs(site[0], tensors, site[2], _is_float, _to_numpy, _from_numpy)
        return keras.tree.pack_sequence_as(output, result) if not _is_float(output) else result[0]

    def _wrapped(self, name: str, call: Callable[..., Any], sites: Dict[int, Optional[Site]], leaf: bool):
        """The quantized call of layer ``name``: input quantizers on the arguments that are model
        inputs, output quantizers on its float outputs. Inside a leaf layer, layers it calls run as
        they are (uncounted): the leaf is the unit of quantization."""
        adapter = self

        def quantized_call(*args, **kwargs):
            if adapter._depth:
                return call(*args, **kwargs)
            k, site = adapter._site(name, sites)
            fns = dict(adapter._operands.get(name, {}))  # constant operands: the clone's variable, a quantized weight
            if site is not None:
                fns.update({slot: (lambda t, q=q: adapter._input(q, t)) for slot, q in site[1].items()})
            if fns:
                args, kwargs = _map_slots(args, kwargs, fns)
            adapter._depth += leaf
            try:
                output = call(*args, **kwargs)
            finally:
                adapter._depth -= leaf
            if any(_is_symbolic(t) for t in _flat(output)):
                adapter._counts[name] = k  # building a graph (clone_model, keras.Model(...)): no call to count
                return output
            return output if site is None else adapter._outputs(site, output)

        return quantized_call

    def _point(self, name: str) -> Callable[[Any, List[Any]], Any]:
        """The quantizer of an attention-core point (``<layer>/attention_scores``, ...), as
        :func:`_patch_attention` calls it."""
        adapter = self
        sites = self._sites.get(name, {})

        def quantize(t: Any, _inputs: List[Any]) -> Any:
            if adapter._depth or _is_symbolic(t) or not sites:
                return t
            _, site = adapter._site(name, sites)
            return t if site is None else adapter._outputs(site, t)

        return quantize

    # -- the contract --

    @classmethod
    def is_model(cls, model: Any) -> bool:
        """True for a keras.Model (a subclassed one is then refused with a clear error)."""
        return isinstance(model, keras.Model)

    def weights(self) -> Iterator[Tuple[Quantizer, np.ndarray]]:
        """Each parameter quantizer (a shared variable once) with its float32 values (the folded ones)."""
        for name, values in self._originals.items():
            yield self._quantizers[name], values

    def prepare_weight(self, quantizer: Quantizer, values: np.ndarray) -> np.ndarray:
        """The fake-quantized values of a parameter as a float32 array of its variable's shape."""
        shape = self._originals[quantizer.name].shape
        values = np.array(values, dtype=np.float32)
        if values.size != int(np.prod(shape)):
            raise QAValueError(f"{quantizer.name}: {values.size} quantized values for a variable of shape {shape}")
        return values.reshape(shape)

    def activate(self, active: ActiveSet) -> None:
        """Run from now on with exactly the quantizers in ``active`` on; a variable is assigned only
        when its value changes."""
        self._bind_weights(active.weights, list(self._originals))
        self._active = active

    def _bind_weight(self, name: str, value: Any) -> None:
        variable = self._variables[name]
        if name in self._handed:  # a constant operand of an operation: handed to its call
            if value is None:
                self._constants.pop(name, None)
            else:
                self._constants[name] = keras.ops.convert_to_tensor(value, dtype=keras.backend.standardize_dtype(
                    variable.dtype))
            return
        variable.assign(self._originals[name] if value is None else value)

    def run(self, inputs: Any) -> Any:
        """One inference pass of the analysis clone on model inputs (an array, a list/tuple or a dict)."""
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        return self.model(inputs, training=False)

    def close(self) -> None:
        """Restore the clone's original variables and unpatch its layer and attention calls."""
        self.activate(FLOAT)
        for undo in reversed(self._patched):
            undo()
        self._patched = []


def _prefixes(base: str) -> List[str]:
    """``a/b/c`` -> ``a``, ``a/b``, ``a/b/c``: the nested models and layers a layer name lies in, and itself."""
    parts = base.split("/")
    return ["/".join(parts[:i + 1]) for i in range(len(parts))]


# --------------------------------------------------------------------------- model files (qa analyze)

def load_file(path: Any) -> Any:
    """A ``.keras`` / ``.h5`` file as a :class:`qa.data.ModelFile` (``keras.saving.load_model``,
    uncompiled): a Functional or Sequential model with defined inputs.

    Example:
        >>> load_file("cnn.keras").inputs  # doctest: +SKIP
        [InputSpec(name='input_layer', dims=('?', 32, 32, 3), dtype=dtype('float32'))]
    """
    from ..data import InputSpec, ModelFile, flatten_outputs

    model = keras.saving.load_model(str(path), compile=False)
    try:
        tensors = list(model.inputs)
    except (AttributeError, ValueError):
        raise QAValueError(f"{path}: the model has no defined inputs (a subclassed model?); qa analyzes "
                           f"Functional and Sequential Keras models") from None
    inputs = [InputSpec(str(getattr(t, "name", f"input_{i}")), tuple("?" if d is None else int(d) for d in t.shape),
                        np.dtype(keras.backend.standardize_dtype(t.dtype))) for i, t in enumerate(tensors)]
    torch_backend = keras.backend.backend() == "torch"

    def run(m: Any, arrays: Any) -> Any:
        feed = arrays[0] if len(arrays) == 1 else list(arrays)
        if torch_backend:  # no autograd graph for an inference pass
            import torch

            with torch.no_grad():
                out = m(feed, training=False)
        else:
            out = m(feed, training=False)
        return [np.asarray(keras.ops.convert_to_numpy(y)) for y in flatten_outputs(out)]

    return ModelFile(Path(path), "keras", model, inputs, run, lambda arrays: arrays[0] if len(arrays) == 1 else list(arrays))
