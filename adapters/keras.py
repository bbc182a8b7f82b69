"""Keras 3 adapter: a cloned analysis model, batch-norm folding, and quantizers patched into layer calls.

The user's model is never touched: the adapter clones it with ``keras.models.clone_model``
(Functional and Sequential models; subclassed models cannot be cloned and are refused with a
clear error), copies the weights into the clone, folds batch norms there, and patches ``call``
on the cloned layers only, so that every layer output (after a fused activation such as
``Conv2D(activation="relu")``) passes through its quantizer. Tensors cross into qa as float32
numpy arrays (``keras.ops.convert_to_numpy``) and come back with ``keras.ops.convert_to_tensor``,
so the adapter works on any Keras backend; only eager execution is supported (``model(x)``,
or ``predict`` on backends that run it eagerly, like torch).

Names: layers are keyed by ``layer.name`` (as AIMET Keras). Kernels become the ``weight``
parameter (``<layer>_weight``, so that a quantsim config's ``params.weight`` applies), biases
``bias``; a batch norm's gamma / beta are its ``weight`` / ``bias``; other variables keep
their Keras name. Per-channel axis: the last kernel axis (Keras kernels are ``[..., in, out]``),
2 for DepthwiseConv2D (``[kh, kw, in, mult]``) and the second last for transposed convs.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import numpy as np
import keras

from ..errors import QAValueError
from ._base import AdapterBase
from ..graph import INPUT, OUTPUT, PARAM, Layer, QuantGraph, Quantizer

__all__ = ["KerasAdapter", "is_model"]

log = logging.getLogger("qa.adapters.keras")

L = keras.layers
_CONV = (L.Conv1D, L.Conv2D, L.Conv3D)
_DEPTHWISE = tuple(c for c in (getattr(L, "DepthwiseConv1D", None), L.DepthwiseConv2D) if c is not None)
_CONV_T = tuple(c for c in (getattr(L, "Conv1DTranspose", None), L.Conv2DTranspose,
                            getattr(L, "Conv3DTranspose", None)) if c is not None)
_FOLDABLE = _CONV + _DEPTHWISE + (L.Dense,)

# Layer class -> ONNX op type (the vocabulary of AIMET quantsim configs); first match wins.
_OP_TYPES: List[Tuple[Any, str]] = [
    (_CONV + _DEPTHWISE + (L.SeparableConv1D, L.SeparableConv2D), "Conv"), (_CONV_T, "ConvTranspose"),
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


def is_model(model: Any) -> bool:
    """True for a keras.Model."""
    return isinstance(model, keras.Model)


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


def _functional_class() -> Any:
    try:
        from keras.src.models.functional import Functional
        return Functional
    except Exception:  # pragma: no cover - a future Keras may move it
        return None


# ---- the graph of the user's model -------------------------------------------------------------

class _Topology:
    """Execution order, callers (inbound layers), calls and model inputs/outputs of a Keras model."""

    def __init__(self, model: Any) -> None:
        self.order: List[Any] = []          # layers (and functional ops) in execution order
        self.inputs: Dict[int, List[Any]] = {}  # id(op) -> producing ops (InputLayer included)
        self.calls: Dict[int, int] = {}
        self.readers: Dict[int, Set[int]] = {}  # id(op) -> ids of ops reading its outputs
        self.outputs: Set[int] = set()       # ids of ops making a model output
        if isinstance(model, keras.Sequential):
            prev = None
            for layer in model.layers:
                self.order.append(layer)
                self.calls[id(layer)] = 1
                self.inputs[id(layer)] = [prev] if prev is not None else [None]  # None: the model input
                if prev is not None:
                    self.readers.setdefault(id(prev), set()).add(id(layer))
                prev = layer
            if prev is not None:
                self.outputs.add(id(prev))
            return
        nodes_by_depth = getattr(model, "_nodes_by_depth", None)
        if nodes_by_depth is None:
            raise QAValueError("qa needs a Functional or Sequential Keras model")
        for depth in sorted(nodes_by_depth, reverse=True):
            for node in nodes_by_depth[depth]:
                op = node.operation
                if isinstance(op, L.InputLayer):
                    continue
                if id(op) not in self.calls:
                    self.order.append(op)
                    self.calls[id(op)] = 0
                    self.inputs[id(op)] = []
                self.calls[id(op)] += 1
                for parent in node.parent_nodes:
                    src = parent.operation
                    self.inputs[id(op)].append(None if isinstance(src, L.InputLayer) else src)
                    if not isinstance(src, L.InputLayer):
                        self.readers.setdefault(id(src), set()).add(id(op))
        # keep model.layers order for layers (a valid execution order for functional graphs)
        position = {id(layer): i for i, layer in enumerate(model.layers)}
        self.order.sort(key=lambda op: position.get(id(op), len(position)))
        for t in model.outputs:
            history = getattr(t, "_keras_history", None)
            if history is not None:
                self.outputs.add(id(history[0]))


def _channel_axis_of_output(layer: Any) -> int:
    fmt = getattr(layer, "data_format", "channels_last")
    return 1 if fmt == "channels_first" else -1


def _bn_pairs(topo: _Topology) -> List[Tuple[Any, Any]]:
    """(layer, bn) pairs: the bn reads exactly the layer's output and nothing else reads it."""
    pairs = []
    for bn in topo.order:
        if not isinstance(bn, L.BatchNormalization) or topo.calls[id(bn)] != 1:
            continue
        ins = topo.inputs[id(bn)]
        if len(ins) != 1 or ins[0] is None:
            continue
        src = ins[0]
        if (not isinstance(src, _FOLDABLE) or topo.calls[id(src)] != 1 or not _is_linear(src)
                or topo.readers.get(id(src)) != {id(bn)} or id(src) in topo.outputs):
            continue
        try:
            rank = len(src.output.shape)
        except Exception:
            continue
        axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
        if axis is None:
            continue
        want = _channel_axis_of_output(src) if not isinstance(src, L.Dense) else -1
        if axis % rank != want % rank:
            continue
        pairs.append((src, bn))
    return pairs


def _np(v: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(v))


def _fold(layer: Any, bn: Any) -> None:
    """W' = W * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps), per output channel
    (on the clone's layer, which has a bias)."""
    var = _np(bn.moving_variance).astype(np.float64)
    mean = _np(bn.moving_mean).astype(np.float64)
    gamma = _np(bn.gamma).astype(np.float64) if getattr(bn, "gamma", None) is not None else np.ones_like(var)
    beta = _np(bn.beta).astype(np.float64) if getattr(bn, "beta", None) is not None else np.zeros_like(mean)
    s = gamma / np.sqrt(var + bn.epsilon)
    kernel = _np(layer.kernel)
    w = kernel.astype(np.float64)
    if isinstance(layer, _DEPTHWISE):  # [..., in, mult]: output channel c = i * mult + m
        w = w * s.reshape(w.shape[-2], w.shape[-1])
    else:
        w = w * s
    b = _np(layer.bias).astype(np.float64)
    layer.kernel.assign(w.astype(kernel.dtype))
    layer.bias.assign(((b - mean) * s + beta).astype(kernel.dtype))


class _FoldedBatchNorm(keras.layers.Layer):
    """Stands in for a batch norm folded into the layer before it: passes its input through."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


# ---- the adapter ---------------------------------------------------------------------------

class KerasAdapter(AdapterBase):
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
    unquantized_hint = "wrap them in Keras layers (e.g. keras.layers.Add) to quantize them"

    def __init__(self, model: Any, dummy_input: Any = None, *, modules_to_ignore: Any = None) -> None:
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
        self.dummy_input = dummy_input
        ignored = self._ignored_names(model, modules_to_ignore)
        topo = _Topology(model)
        pairs = _bn_pairs(topo)
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
            self.model = keras.models.clone_model(model, clone_function=clone_function)
        except Exception as e:
            raise QAValueError(f"qa could not clone the Keras model ({type(e).__name__}: {e}); qa needs a Functional "
                               f"or Sequential model built from standard or serializable layers") from e
        originals = {id(op): op for op in topo.order}
        for key, new in clones.items():
            orig = originals.get(key)
            if orig is None or key in folded_bns:
                continue
            weights = orig.get_weights()
            if key in fold_into and not orig.use_bias:
                weights = weights + [np.zeros(new.bias.shape, dtype=weights[0].dtype)]
            new.set_weights(weights)
        for src, bn in pairs:
            _fold(clones[id(src)], bn)
        if pairs:
            log.info("folded %d batch norm(s): %s", len(pairs), ", ".join(f"{bn.name} -> {c.name}" for c, bn in pairs))
        self._layers: Dict[str, Any] = {}
        self.graph = self._build_graph(topo, clones, folded_bns, ignored)
        self.graph.folded_batch_norms = [(bn.name, c.name) for c, bn in pairs]
        self._quantizers: Dict[str, Quantizer] = {q.name: q for q in self.graph.quantizers()}
        # quantizer name -> [variable, original values, quantized values or None, currently quantized]
        self._weights: Dict[str, List[Any]] = {}
        for layer in self.graph.layers:
            for q in layer.params:
                var = self._variables[q.name]
                self._weights[q.name] = [var, _np(var).astype(np.float32), None, False]
        self._active: Set[str] = set()
        self._observers: Optional[Dict[str, Any]] = None
        self._capture: Optional[Callable[[str, int, Any], None]] = None
        self._quantize_fn: Optional[Callable[[Quantizer, Any], Any]] = None
        self._patched: List[Tuple[Any, Any]] = []
        self._patch()

    # -- construction --

    @staticmethod
    def _ignored_names(model: Any, layers: Any) -> Set[str]:
        names: Set[str] = set()
        for item in layers or ():
            if isinstance(item, str):
                names.add(item)
            elif isinstance(item, keras.layers.Layer):
                names.add(item.name)
            else:
                raise QAValueError(f"modules_to_ignore: {type(item).__name__} is not a Keras layer or a layer name")
        return names

    def _build_graph(self, topo: _Topology, clones: Dict[int, Any], folded: Set[int], ignored: Set[str]) -> QuantGraph:
        layers: List[Layer] = []
        unquantized: Dict[str, int] = {}
        self._variables: Dict[str, Any] = {}
        skipped = folded | {id(op) for op in topo.order if isinstance(op, L.Identity)}

        def producers(op: Any) -> List[str]:
            """The nearest quantizable layers upstream (through skipped layers such as folded BNs)."""
            names: List[str] = []
            for src in topo.inputs[id(op)]:
                if src is None:
                    continue
                if id(src) in skipped:
                    names.extend(producers(src))
                elif src.name not in names:
                    names.append(src.name)
            return names

        def reads_input(op: Any) -> bool:
            return any(src is None or (id(src) in skipped and reads_input(src)) for src in topo.inputs[id(op)])

        for op in topo.order:
            if not isinstance(op, keras.layers.Layer):
                name = getattr(op, "name", type(op).__name__)
                unquantized[name] = unquantized.get(name, 0) + 1
                continue
            if id(op) in skipped or op.name in ignored:
                continue
            clone = clones[id(op)]
            layer = Layer(name=op.name, op_type=op_type_of(op), type_name=type(op).__name__, calls=topo.calls[id(op)])
            layer.inputs = [n for n in producers(op)]
            layer.model_input = reads_input(op)
            layer.model_output = id(op) in topo.outputs
            if not isinstance(op, keras.Model):
                for v in clone.trainable_weights:
                    if not _is_float(v):
                        continue
                    vname = _var_name(v)
                    pname = _PARAM_NAMES.get(vname, vname)
                    qname = f"{op.name}_{pname}"
                    if qname in self._variables:
                        continue
                    shape = tuple(int(d) for d in v.shape)
                    layer.quantizers.append(Quantizer(name=qname, layer=op.name, kind=PARAM, param=pname, shape=shape,
                                                      axis=_weight_axis(op, vname, len(shape))))
                    self._variables[qname] = v
            if layer.model_input:
                layer.quantizers.append(Quantizer(name=f"{op.name}_input_0", layer=op.name, kind=INPUT, index=0))
            n_out = max(1, len(_flat(op.output))) if self._has_output(op) else 1
            for i in range(n_out):
                layer.quantizers.append(Quantizer(name=f"{op.name}_output_{i}", layer=op.name, kind=OUTPUT, index=i))
            layers.append(layer)
            self._layers[op.name] = clone
        graph = QuantGraph(layers)
        graph.unquantized_ops = sorted(f"{n} (x{c})" if c > 1 else n for n, c in unquantized.items())
        return graph

    @staticmethod
    def _has_output(op: Any) -> bool:
        try:
            op.output
            return True
        except Exception:
            return False

    # -- the quantizers, patched into the clone's layer calls --

    def _apply(self, q: Quantizer, t: Any) -> Any:
        if _is_symbolic(t) or not _is_float(t):
            return t
        if self._observers is not None:
            obs = self._observers.get(q.name)
            if obs is not None:
                obs.update(np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float32))
            return t
        if q.name in self._active and self._quantize_fn is not None:
            x = np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float32)
            return keras.ops.convert_to_tensor(np.asarray(self._quantize_fn(q, x)), dtype=t.dtype)
        return t

    def _patch(self) -> None:
        for layer in self.graph.layers:
            clone = self._layers[layer.name]
            outs = [q for q in layer.quantizers if q.kind == OUTPUT]
            ins = [q for q in layer.quantizers if q.kind == INPUT]
            original = clone.call
            clone.call = self._wrapped(layer.name, original, ins, outs)
            self._patched.append((clone, original))

    def _wrapped(self, name: str, call: Callable[..., Any], ins: List[Quantizer], outs: List[Quantizer]):
        adapter = self

        def quantized_call(*args, **kwargs):
            if ins and args:
                first = args[0]
                if isinstance(first, (list, tuple)):  # merge layers take a list of inputs
                    first = type(first)(adapter._apply(ins[0], t) for t in first)
                else:
                    first = adapter._apply(ins[0], first)
                args = (first,) + tuple(args[1:])
            output = call(*args, **kwargs)
            tensors = _flat(output)
            if any(_is_symbolic(t) for t in tensors):
                return output
            result = []
            k = 0
            for t in tensors:
                if _is_float(t) and k < len(outs):
                    t = adapter._apply(outs[k], t)
                    k += 1
                result.append(t)
            if adapter._capture is not None:
                for i, t in enumerate(x for x in result if _is_float(x)):
                    adapter._capture(name, i, np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float32))
            return keras.tree.pack_sequence_as(output, result) if not _is_float(output) else result[0]

        return quantized_call

    # -- the verbs the engine uses --

    def weights(self) -> Iterator[Tuple[Quantizer, np.ndarray]]:
        """Each parameter quantizer with its float32 values (the folded ones)."""
        for name, (_, original, _, _) in self._weights.items():
            yield self._quantizers[name], original

    def set_quantized_weight(self, quantizer: Quantizer, values: np.ndarray) -> None:
        """Cache the fake-quantized values of a parameter (assigned when it is active)."""
        entry = self._weights[quantizer.name]
        entry[2] = np.array(values, dtype=np.float32).reshape(entry[1].shape)
        if entry[3]:
            entry[0].assign(entry[2])

    def set_active(self, names: Set[str], quantize: Optional[Callable[[Quantizer, Any], Any]],
                   rounding: str = "half_even") -> None:
        """Turn on exactly these quantizers; a parameter is assigned only when its state changes.
        (``rounding`` matters to adapters that build graphs; here ``quantize`` applies it.)"""
        self._active = set(names)
        self._quantize_fn = quantize
        for name, entry in self._weights.items():
            var, original, quantized, current = entry
            want = name in self._active and quantized is not None
            if want != current:
                var.assign(quantized if want else original)
                entry[3] = want

    def run(self, inputs: Any) -> Any:
        """One inference pass of the analysis clone on model inputs (an array, a list/tuple or a dict)."""
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        return self.model(inputs, training=False)

    def close(self) -> None:
        self.set_active(set(), self._quantize_fn)
        for clone, original in self._patched:
            clone.call = original
        self._patched = []
