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

Batch norms are folded into a Dense, Conv, DepthwiseConv or SeparableConv layer they alone
read (into the pointwise kernel of a separable conv), and called once, with no variable shared.

A layer object called several times in a Functional graph is one layer per call (``name``,
``name/call_1``, ...: the order ``Functional`` runs its nodes in), each with its own activation
quantizers and one set of variable quantizers shared by its calls. The clone always runs in
inference mode: a callback's ``model(x, training=True)`` runs with ``training=False``.

Names: layers are keyed by ``layer.name`` (as AIMET Keras). Kernels become the ``weight``
parameter (``<layer>_weight``, so that a quantsim config's ``params.weight`` applies), biases
``bias``; a batch norm's gamma / beta are its ``weight`` / ``bias``; other variables keep
their Keras name. Per-channel axis: the last kernel axis (Keras kernels are ``[..., in, out]``),
2 for DepthwiseConv2D (``[kh, kw, in, mult]``) and the second last for transposed convs.
"""

from __future__ import annotations

import heapq
import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import numpy as np
import keras

from ..errors import QAValueError
from ..folding import fold_batch_norm
from ..graph import INPUT, OUTPUT, PARAM, Layer, QuantGraph, Quantizer, call_name
from . import register
from ._base import Adapter, ActiveSet, FLOAT, check_ignored

__all__ = ["KerasAdapter"]

log = logging.getLogger("qa.adapters.keras")

L = keras.layers
_CONV = (L.Conv1D, L.Conv2D, L.Conv3D)
_DEPTHWISE = tuple(c for c in (getattr(L, "DepthwiseConv1D", None), L.DepthwiseConv2D) if c is not None)
_CONV_T = tuple(c for c in (getattr(L, "Conv1DTranspose", None), L.Conv2DTranspose,
                            getattr(L, "Conv3DTranspose", None)) if c is not None)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_FOLDABLE = _CONV + _DEPTHWISE + _SEPARABLE + (L.Dense,)

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

_ACTIVATIONS = {"relu": "Relu", "relu6": "Clip", "sigmoid": "Sigmoid", "tanh": "Tanh", "softmax": "Softmax",
                "gelu": "Gelu", "silu": "Silu", "swish": "Silu", "elu": "Elu", "leaky_relu": "LeakyRelu",
                "hard_sigmoid": "HardSigmoid", "hard_swish": "HardSwish", "hard_silu": "HardSwish",
                "log_softmax": "LogSoftmax", "softplus": "Softplus", "linear": "Identity"}

# Keras variable name -> the parameter name qa's config vocabulary uses.
_PARAM_NAMES = {"kernel": "weight", "depthwise_kernel": "weight", "embeddings": "weight",
                "gamma": "weight", "beta": "bias", "bias": "bias"}


def _activation_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return str(name).lower()


def op_type_of(layer: Any) -> str:
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
    if var not in ("kernel", "depthwise_kernel") or ndim < 2:
        return None
    if isinstance(layer, _DEPTHWISE):
        return ndim - 2
    if isinstance(layer, _CONV_T):
        return ndim - 2
    if isinstance(layer, _CONV + (L.Dense,)):
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


# ---- the graph of the user's model -------------------------------------------------------------

class _Call:
    """One call of a layer (a node of the Keras graph): what feeds it and what it makes."""

    __slots__ = ("op", "index", "parents", "n_outputs", "model_output")

    def __init__(self, op: Any, index: int) -> None:
        self.op = op
        self.index = index  # the k-th call of op in a forward pass, from 0
        self.parents: List[Optional["_Call"]] = []  # None: a model input
        self.n_outputs = 1
        self.model_output = False

    @property
    def name(self) -> str:
        return call_name(self.op.name, self.index)


def _call_order(calls: List[_Call], position: Dict[int, int]) -> List[_Call]:
    """The calls in a valid execution order that keeps the model's operation order where it can
    (Kahn's algorithm, the earliest operation first; a layer's calls in their own order)."""
    index = {id(c): i for i, c in enumerate(calls)}
    deps: Dict[int, Set[int]] = {i: set() for i in range(len(calls))}
    previous: Dict[int, int] = {}
    for i, c in enumerate(calls):
        deps[i].update(index[id(p)] for p in c.parents if p is not None)
        if id(c.op) in previous:
            deps[i].add(previous[id(c.op)])
        previous[id(c.op)] = i
    users: Dict[int, List[int]] = {}
    for i, ds in deps.items():
        for d in ds:
            users.setdefault(d, []).append(i)

    def key(i: int) -> Tuple[int, int, int]:
        return (position.get(id(calls[i].op), len(position)), calls[i].index, i)

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
    """Execution order, callers (inbound layers), calls and model inputs/outputs of a Keras model;
    ``call_list`` is every call of every layer (a layer called twice is two entries), in execution order."""

    def __init__(self, model: Any) -> None:
        self.order: List[Any] = []          # layers (and functional ops) in execution order
        self.inputs: Dict[int, List[Any]] = {}  # id(op) -> producing ops (InputLayer included)
        self.calls: Dict[int, int] = {}
        self.readers: Dict[int, Set[int]] = {}  # id(op) -> ids of ops reading its outputs
        self.outputs: Set[int] = set()       # ids of ops making a model output
        self.call_list: List[_Call] = []
        if isinstance(model, keras.Sequential):
            prev = None
            for layer in model.layers:
                self.order.append(layer)
                self.calls[id(layer)] = 1
                self.inputs[id(layer)] = [prev] if prev is not None else [None]  # None: the model input
                call = _Call(layer, 0)
                call.parents = [self.call_list[-1] if self.call_list else None]
                try:
                    call.n_outputs = max(1, len(_flat(layer.output)))
                except Exception:  # a layer without a symbolic output
                    pass
                self.call_list.append(call)
                if prev is not None:
                    self.readers.setdefault(id(prev), set()).add(id(layer))
                prev = layer
            if prev is not None:
                self.outputs.add(id(prev))
                self.call_list[-1].model_output = True
            return
        nodes_by_depth = getattr(model, "_nodes_by_depth", None)
        if nodes_by_depth is None:
            raise QAValueError("qa needs a Functional or Sequential Keras model")
        output_ids = {id(t) for t in model.outputs}
        by_node: Dict[int, _Call] = {}
        # the order Functional._run_through_graph runs the nodes in: the k-th call here is the k-th at run time
        for depth in sorted(nodes_by_depth, reverse=True):
            for node in nodes_by_depth[depth]:
                op = node.operation
                if isinstance(op, L.InputLayer):
                    continue
                if id(op) not in self.calls:
                    self.order.append(op)
                    self.calls[id(op)] = 0
                    self.inputs[id(op)] = []
                call = by_node[id(node)] = _Call(op, self.calls[id(op)])
                self.calls[id(op)] += 1
                outs = list(getattr(node, "outputs", []) or [])
                call.n_outputs = max(1, len(outs))
                call.model_output = any(id(t) in output_ids for t in outs)
                for parent in node.parent_nodes:
                    src = parent.operation
                    self.inputs[id(op)].append(None if isinstance(src, L.InputLayer) else src)
                    call.parents.append(None if isinstance(src, L.InputLayer) else by_node.get(id(parent)))
                    if not isinstance(src, L.InputLayer):
                        self.readers.setdefault(id(src), set()).add(id(op))
                self.call_list.append(call)
        # keep the model's operation order (a valid execution order for functional graphs)
        operations = list(getattr(model, "operations", None) or model.layers)
        position = {id(op): i for i, op in enumerate(operations)}
        self.order.sort(key=lambda op: position.get(id(op), len(position)))
        self.call_list = _call_order(self.call_list, position)
        for t in model.outputs:
            history = getattr(t, "_keras_history", None)
            if history is not None:
                self.outputs.add(id(history[0]))


def _channel_axis_of_output(layer: Any) -> int:
    fmt = getattr(layer, "data_format", "channels_last")
    return 1 if fmt == "channels_first" else -1


def _holders(topo: _Topology) -> Dict[int, List[str]]:
    """id(variable) -> the layers (nested models included) that hold it: more than one, a shared variable."""
    holders: Dict[int, List[str]] = {}
    for op in topo.order:
        for v in getattr(op, "weights", None) or []:
            names = holders.setdefault(id(v), [])
            if op.name not in names:
                names.append(op.name)
    return holders


def _why_not_foldable(topo: _Topology, src: Any, bn: Any, holders: Dict[int, List[str]]) -> Optional[str]:
    """Why folding ``bn`` into ``src`` would change more than the pair (None: it would not)."""
    if topo.calls[id(bn)] != 1:
        return f"{bn.name} is called {topo.calls[id(bn)]} times"
    if topo.calls[id(src)] != 1:
        return f"{src.name} is called {topo.calls[id(src)]} times and one kernel serves every call"
    for v in src.weights:
        others = [n for n in holders.get(id(v), []) if n != src.name]
        if others:
            return f"its variable {_var_name(v)} is shared with {', '.join(others)}"
    return None


def _bn_pairs(topo: _Topology) -> Tuple[List[Tuple[Any, Any]], List[Tuple[str, str, str]]]:
    """(layer, bn) pairs: the bn reads exactly the layer's output and nothing else reads it; and
    (bn, layer, reason) for such pairs that must not fold (a layer called twice, a shared variable)."""
    pairs = []
    refused: List[Tuple[str, str, str]] = []
    holders = _holders(topo)
    for bn in topo.order:
        if not isinstance(bn, L.BatchNormalization):
            continue
        ins = topo.inputs[id(bn)]
        if not ins or ins[0] is None or any(src is not ins[0] for src in ins):
            continue
        src = ins[0]
        if (not isinstance(src, _FOLDABLE) or not _is_linear(src)
                or topo.readers.get(id(src)) != {id(bn)} or id(src) in topo.outputs):
            continue
        reason = _why_not_foldable(topo, src, bn, holders)
        if reason is not None:
            refused.append((bn.name, src.name, reason))
            continue
        try:
            rank = len(src.output.shape)
        except Exception:
            continue
        axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
        want = _channel_axis_of_output(src) if not isinstance(src, L.Dense) else -1
        if len(ins) != 1 or axis is None or axis % rank != want % rank:
            continue
        pairs.append((src, bn))
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

def _clone(model: Any, topo: _Topology, pairs: List[Tuple[Any, Any]]) -> Tuple[Any, Dict[int, Any]]:
    """A clone of ``model`` holding its weights, with each batch norm in ``pairs`` folded into the
    layer before it (which gets a bias) and replaced by a pass-through; and id(layer) -> its clone."""
    fold_into = {id(src) for src, _ in pairs}
    folded_bns = {id(bn) for _, bn in pairs}
    clones: Dict[int, Any] = {}

    def clone_function(layer: Any) -> Any:
        if isinstance(layer, keras.Model):
            new = keras.models.clone_model(layer)
        elif not isinstance(layer, keras.layers.Layer):
            return layer  # a functional op (keras.ops.add in the graph): shared, it has no state
        elif id(layer) in folded_bns:
            new = _FoldedBatchNorm(name=layer.name)
        else:
            config = layer.get_config()
            if id(layer) in fold_into:
                config["use_bias"] = True
            new = layer.__class__.from_config(config)
        clones[id(layer)] = new
        return new

    try:
        clone = keras.models.clone_model(model, clone_function=clone_function)
    except Exception as e:
        raise QAValueError(f"qa could not clone the Keras model ({type(e).__name__}: {e}); qa needs a Functional "
                           f"or Sequential model built from standard or serializable layers") from e
    originals = {id(op): op for op in topo.order}
    for key, new in clones.items():
        orig = originals.get(key)
        if orig is None or key in folded_bns:
            continue
        weights = orig.get_weights()
        if key in fold_into and not orig.use_bias:  # the bias is the last variable of every foldable layer
            weights = weights + [np.zeros(new.bias.shape, dtype=weights[0].dtype)]
        new.set_weights(weights)
    for src, bn in pairs:
        _fold(clones[id(src)], bn)
    return clone, clones


# ---- the adapter ---------------------------------------------------------------------------

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
    unquantized_hint = "wrap them in Keras layers (e.g. keras.layers.Add) to quantize them"

    def __init__(self, model: Any, dummy_input: Any = None, *, modules_to_ignore: Any = None) -> None:
        super().__init__()
        self._check_model(model)
        self.dummy_input = dummy_input
        topo = _Topology(model)
        ignored = self._ignored_names(topo, modules_to_ignore)
        pairs, refused = _bn_pairs(topo)
        for bn, layer, reason in refused:
            log.info("batch norm %s is not folded into %s: %s", bn, layer, reason)
        self.model, clones = _clone(model, topo, pairs)
        if pairs:
            log.info("folded %d batch norm(s): %s", len(pairs), ", ".join(f"{bn.name} -> {c.name}" for c, bn in pairs))
        self._layers: Dict[str, Any] = {}
        self.graph = self._build_graph(topo, clones, {id(bn) for _, bn in pairs}, ignored)
        self.graph.folded_batch_norms = [(bn.name, c.name) for c, bn in pairs]
        self.graph.unfolded_batch_norms = refused
        self._quantizers: Dict[str, Quantizer] = {q.name: q for q in self.graph.quantizers()}
        # parameter quantizer -> its float32 (folded) values: what weights() gives and an inactive variable holds
        self._originals: Dict[str, np.ndarray] = {q.name: _np(self._variables[q.name]).astype(np.float32)
                                                   for q in self.graph.quantizers() if q.is_param}
        self._counts: Dict[str, int] = {}  # layer -> its calls so far in the running forward pass
        self._patched: List[Tuple[Any, Any]] = []
        self._patch(topo)

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

    @staticmethod
    def _ignored_names(topo: _Topology, layers: Any) -> Set[str]:
        """Layer names (or ``<layer>/call_<k>`` names) to leave unquantized; each must name a layer of the model."""
        names: Set[str] = set()
        for item in layers or ():
            if isinstance(item, str):
                names.add(item)
            elif isinstance(item, keras.layers.Layer):
                if all(item is not op for op in topo.order):
                    raise QAValueError(f"modules_to_ignore: layer '{item.name}' ({type(item).__name__}) is not a "
                                       f"layer of this model")
                names.add(item.name)
            else:
                raise QAValueError(f"modules_to_ignore: {type(item).__name__} is not a Keras layer or a layer name")
        valid = [op.name for op in topo.order if isinstance(op, keras.layers.Layer)]
        check_ignored(names, valid + [c.name for c in topo.call_list if c.index], "a layer of the model")
        return names

    def _build_graph(self, topo: _Topology, clones: Dict[int, Any], folded: Set[int], ignored: Set[str]) -> QuantGraph:
        """One layer per call of a Keras layer; the variables of a layer called several times are
        quantizers shared by its calls (named after the first)."""
        layers: List[Layer] = []
        unquantized: Dict[str, int] = {}
        self._variables: Dict[str, Any] = {}
        self._sites: Dict[str, List[Optional[Tuple[str, List[Quantizer], List[Quantizer]]]]] = {}
        skipped = folded | {id(op) for op in topo.order if isinstance(op, L.Identity)}
        params: Dict[int, List[Quantizer]] = {}  # id(op) -> its parameter quantizers

        def producers(call: _Call) -> List[str]:
            """The nearest quantizable calls upstream (through skipped layers such as folded BNs)."""
            names: List[str] = []
            for src in call.parents:
                if src is None:
                    continue
                for name in (producers(src) if id(src.op) in skipped else [src.name]):
                    if name not in names:
                        names.append(name)
            return names

        def reads_input(call: _Call) -> bool:
            return any(src is None or (id(src.op) in skipped and reads_input(src)) for src in call.parents)

        for call in topo.call_list:
            op = call.op
            if not isinstance(op, keras.layers.Layer):
                name = getattr(op, "name", type(op).__name__)
                unquantized[name] = unquantized.get(name, 0) + 1
                continue
            sites = self._sites.setdefault(op.name, [])
            if id(op) in skipped or op.name in ignored or call.name in ignored:
                sites.append(None)
                continue
            clone = clones[id(op)]
            layer = Layer(name=call.name, op_type=op_type_of(op), type_name=type(op).__name__,
                          calls=topo.calls[id(op)], call=call.index)
            layer.inputs = producers(call)
            layer.model_input = reads_input(call)
            layer.model_output = call.model_output
            if id(op) not in params and not isinstance(op, keras.Model):
                params[id(op)] = self._params(op, clone, call.name)
            layer.quantizers.extend(params.get(id(op), []))
            if layer.model_input:
                layer.quantizers.append(Quantizer(name=f"{call.name}_input_0", layer=call.name, kind=INPUT, index=0))
            for i in range(call.n_outputs):
                layer.quantizers.append(Quantizer(name=f"{call.name}_output_{i}", layer=call.name, kind=OUTPUT,
                                                  index=i))
            layers.append(layer)
            sites.append((call.name, [q for q in layer.quantizers if q.kind == INPUT],
                          [q for q in layer.quantizers if q.kind == OUTPUT]))
            self._layers[op.name] = clone
        graph = QuantGraph(layers)
        graph.unquantized_ops = sorted(f"{n} (x{c})" if c > 1 else n for n, c in unquantized.items())
        return graph

    def _params(self, op: Any, clone: Any, layer: str) -> List[Quantizer]:
        """The parameter quantizers of a layer's float variables (kernels as ``weight``, biases as ``bias``)."""
        out: List[Quantizer] = []
        for v in clone.trainable_weights:
            if not _is_float(v):
                continue
            vname = _var_name(v)
            pname = _PARAM_NAMES.get(vname, vname)
            qname = f"{layer}_{pname}"
            if qname in self._variables:
                continue
            shape = tuple(int(d) for d in v.shape)
            out.append(Quantizer(name=qname, layer=layer, kind=PARAM, param=pname, shape=shape,
                                 axis=_weight_axis(op, vname, len(shape))))
            self._variables[qname] = v
        return out

    # -- the quantizers, patched into the clone's layer calls --

    def _input(self, q: Quantizer, t: Any) -> Any:
        """``t`` after input quantizer ``q`` (observed, quantized or passed, as the mode says)."""
        if _is_symbolic(t) or not _is_float(t):
            return t
        quantized = self._activation(q.name, lambda: _to_numpy(t))
        return t if quantized is None else _from_numpy(quantized, t)

    def _patch(self, topo: _Topology) -> None:
        for name, clone in self._layers.items():
            original = clone.call
            clone.call = self._wrapped(name, original, self._sites[name])
            self._patched.append((clone, original))
        original = self.model.call
        self.model.call = self._root(original)
        self._patched.append((self.model, original))

    def _root(self, call: Callable[..., Any]):
        """The clone's own call: each forward pass counts layer calls from 0, always in inference mode."""
        adapter = self

        def inference_call(*args, **kwargs):
            adapter._counts.clear()
            if "training" in kwargs:
                kwargs["training"] = False  # a callback's training=True would turn dropout on and update BN statistics
            return call(*args, **kwargs)

        return inference_call

    def _wrapped(self, name: str, call: Callable[..., Any], sites: List[Any]):
        adapter = self

        def quantized_call(*args, **kwargs):
            k = adapter._counts.get(name, 0)
            adapter._counts[name] = k + 1
            site = sites[min(k, len(sites) - 1)]
            if site is None:
                return call(*args, **kwargs)
            layer, ins, outs = site
            if ins and args:
                first = args[0]
                if isinstance(first, (list, tuple)):  # merge layers take a list of inputs
                    first = type(first)(adapter._input(ins[0], t) for t in first)
                else:
                    first = adapter._input(ins[0], first)
                args = (first,) + tuple(args[1:])
            output = call(*args, **kwargs)
            tensors = _flat(output)
            if any(_is_symbolic(t) for t in tensors):
                adapter._counts[name] = k  # building a graph (clone_model, keras.Model(...)): no call to count
                return output
            result = adapter._layer_outputs(layer, tensors, outs, _is_float, _to_numpy, _from_numpy)
            return keras.tree.pack_sequence_as(output, result) if not _is_float(output) else result[0]

        return quantized_call

    # -- the contract --

    @classmethod
    def is_model(cls, model: Any) -> bool:
        """True for a keras.Model (a subclassed one is then refused with a clear error)."""
        return isinstance(model, keras.Model)

    def weights(self) -> Iterator[Tuple[Quantizer, np.ndarray]]:
        """Each parameter quantizer with its float32 values (the folded ones)."""
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
        self._variables[name].assign(self._originals[name] if value is None else value)

    def run(self, inputs: Any) -> Any:
        """One inference pass of the analysis clone on model inputs (an array, a list/tuple or a dict)."""
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        return self.model(inputs, training=False)

    def close(self) -> None:
        """Restore the clone's original variables and unpatch its layer calls."""
        self.activate(FLOAT)
        for clone, original in self._patched:
            clone.call = original
        self._patched = []
