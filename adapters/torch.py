"""PyTorch adapter: a private copy of the model, batch-norm folding, tracing, and quantization hooks.

The user's module is never touched: the adapter deep-copies it, folds batch norms into the
copy, and installs its hooks on the copy only. Tensors cross into qa as float32 numpy arrays
(zero-copy on the CPU) and come back with ``torch.from_numpy``; CUDA tensors stay on the
device and use qa's CUDA kernels when available.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import QAValueError
from . import register
from ._base import FLOAT, ActiveSet, Adapter
from ..folding import fold_batch_norm
from ..graph import INPUT, OUTPUT, PARAM, Layer, QuantGraph, Quantizer

__all__ = ["TorchAdapter", "fold_batch_norms"]

log = logging.getLogger("qa.adapters.torch")

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# Module class -> ONNX op type, the vocabulary of AIMET quantsim configs.
_OP_TYPES: List[Tuple[Any, str]] = [
    (_CONV, "Conv"), (_CONV_T, "ConvTranspose"), (nn.Linear, "Gemm"), (_BN, "BatchNormalization"),
    (nn.ReLU, "Relu"), ((nn.ReLU6, nn.Hardtanh), "Clip"), (nn.LeakyReLU, "LeakyRelu"), (nn.PReLU, "PRelu"),
    (nn.Sigmoid, "Sigmoid"), (nn.Tanh, "Tanh"), (nn.GELU, "Gelu"), (nn.SiLU, "Silu"), (nn.Hardswish, "HardSwish"),
    (nn.Hardsigmoid, "HardSigmoid"), (nn.ELU, "Elu"), (nn.Softmax, "Softmax"), (nn.LogSoftmax, "LogSoftmax"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d), "MaxPool"),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), "AveragePool"),
    ((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d), "GlobalAveragePool"),
    (nn.LayerNorm, "LayerNormalization"), (nn.GroupNorm, "GroupNormalization"),
    ((nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d), "InstanceNormalization"),
    (nn.Embedding, "Gather"), ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout), "Dropout"),
    (nn.Identity, "Identity"), ((nn.Flatten, nn.Unflatten), "Flatten"), ((nn.Upsample,), "Resize"),
    ((nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad2d), "Pad"),
]

# Functions that compute (and would be quantized in a deployed graph) when called outside a
# layer; shape and bookkeeping functions are left out of the "not quantized" warning.
_SHAPE_ONLY = {
    "size", "dim", "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze",
    "permute", "transpose", "t", "contiguous", "expand", "expand_as", "__getitem__", "__setitem__", "detach",
    "to", "cpu", "cuda", "float", "type", "chunk", "split", "unbind", "narrow", "select", "clone", "numel",
    "shape", "dtype", "device", "requires_grad", "__len__", "__iter__", "__bool__", "__format__", "__repr__",
    "__get__", "__hash__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "item", "tolist", "numpy",
    "is_floating_point", "is_contiguous", "stride", "storage_offset", "data_ptr", "element_size", "ndim", "T",
    "grad_fn", "is_leaf", "data", "__index__", "__int__", "__float__", "new_zeros", "new_ones", "new_empty",
    "zeros_like", "ones_like", "empty_like", "__contains__", "_has_compatible_shallow_copy_type", "__reduce_ex__",
    "flip", "repeat", "tile", "__array__", "dequantize", "is_quantized", "names", "layout",
}


_ARITHMETIC = {"add", "sub", "mul", "truediv", "floordiv", "matmul", "pow", "mod", "and", "or", "xor"}


def op_type_of(module: nn.Module) -> str:
    for classes, op in _OP_TYPES:
        if isinstance(module, classes):
            return op
    return type(module).__name__


def _weight_axis(module: nn.Module) -> Optional[int]:
    """The output-channel axis of a weight, for per-channel quantization (None: per tensor only)."""
    if isinstance(module, _CONV_T):
        return 1 if module.groups == 1 else None
    if isinstance(module, _CONV + (nn.Linear,)):
        return 0
    return None


# ---- batch-norm folding -----------------------------------------------------------------------

def _foldable_into(module: nn.Module) -> bool:
    if isinstance(module, _CONV_T):
        return module.groups == 1
    return isinstance(module, _CONV + (nn.Linear,))


def _fold(layer: nn.Module, bn: nn.Module, name: str) -> None:
    """Fold ``bn`` into ``layer``'s weight and bias (:func:`qa.folding.fold_batch_norm`)."""
    def np64(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
        return None if t is None else t.detach().double().cpu().numpy()

    with torch.no_grad():
        w, b = fold_batch_norm(layer.weight.detach().cpu().numpy(), np64(layer.bias), mean=np64(bn.running_mean),
                               var=np64(bn.running_var), gamma=np64(bn.weight), beta=np64(bn.bias), eps=bn.eps,
                               axis=1 if isinstance(layer, _CONV_T) else 0, name=name)
        layer.weight.copy_(torch.from_numpy(w))
        new_bias = torch.from_numpy(b).to(device=layer.weight.device)
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias)
        else:
            layer.bias.copy_(new_bias)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def fold_batch_norms(model: nn.Module, pairs: Sequence[Tuple[str, str]]) -> None:
    """Fold each (layer, batch norm) pair in place and replace the batch norm by Identity."""
    for layer_name, bn_name in pairs:
        _fold(model.get_submodule(layer_name), model.get_submodule(bn_name), layer_name)
        _set_submodule(model, bn_name, nn.Identity())


# ---- tracing --------------------------------------------------------------------------------

def _tensors(obj: Any) -> List[torch.Tensor]:
    """Every tensor in a (nested) tuple/list/dict, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _key(t: torch.Tensor) -> Tuple[int, int]:
    """A tensor's identity in the data flow: in-place ops (ReLU(inplace=True)) bump _version,
    so the tensor they return counts as new, while pass-through modules keep the key."""
    return (id(t), t._version)


# Reading only these leaves a tensor's values alone (a batch norm may still be folded).
_METADATA = {"size", "dim", "numel", "shape", "dtype", "device", "is_floating_point", "is_contiguous", "stride",
             "requires_grad", "__len__", "data_ptr", "element_size", "ndim", "layout", "storage_offset",
             "__format__", "__repr__", "__hash__", "__get__", "names", "is_quantized"}


def _leaves(model: nn.Module) -> Dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name and not any(True for _ in m.children())}


class _Trace:
    """One forward pass observed: call order, data flow between leaves, functional ops outside them."""

    def __init__(self) -> None:
        self.order: List[str] = []
        self.calls: Dict[str, int] = {}
        self.inputs: Dict[str, List[Tuple[int, int]]] = {}
        self.outputs: Dict[str, List[Tuple[int, int]]] = {}
        self.n_outputs: Dict[str, int] = {}
        self.functional: Dict[str, int] = {}
        self.model_outputs: Set[Tuple[int, int]] = set()
        self.functional_reads: Set[Tuple[int, int]] = set()  # tensors read by ops outside layers
        self.keep: List[torch.Tensor] = []  # holds tensors so that their ids stay unique
        self.depth = 0


def _trace(model: nn.Module, run: Callable[[], Any], leaves: Dict[str, nn.Module]) -> Tuple[_Trace, Any]:
    tr = _Trace()
    handles = []

    def pre(name):
        def hook(module, args, kwargs):
            tr.depth += 1
            ts = _tensors((args, kwargs))
            tr.keep.extend(ts)
            if name not in tr.calls:
                tr.order.append(name)
                tr.calls[name] = 0
            tr.calls[name] += 1
            tr.inputs.setdefault(name, []).extend(_key(t) for t in ts)
        return hook

    def post(name):
        def hook(module, args, kwargs, output):
            tr.depth -= 1
            ts = _tensors(output)
            tr.keep.extend(ts)
            tr.outputs.setdefault(name, []).extend(_key(t) for t in ts)
            tr.n_outputs[name] = max(tr.n_outputs.get(name, 0), sum(t.is_floating_point() for t in ts))
        return hook

    class FunctionalOps(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if tr.depth == 0:
                name = getattr(func, "__name__", str(func))
                if name not in _METADATA:
                    tr.functional_reads.update(_key(t) for t in _tensors((args, kwargs or {})))
                if name.startswith("__") and name.endswith("__"):  # x + y arrives as __add__
                    base = name[2:-2]
                    base = base[1:] if base[:1] in "ri" and base[1:] in _ARITHMETIC else base
                    name = base if base in _ARITHMETIC else name  # other dunders stay private
                if name not in _SHAPE_ONLY and not name.startswith("_"):
                    tr.functional[name] = tr.functional.get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    for name, m in leaves.items():
        handles.append(m.register_forward_pre_hook(pre(name), with_kwargs=True))
        handles.append(m.register_forward_hook(post(name), with_kwargs=True))
    try:
        with torch.no_grad(), FunctionalOps():
            output = run()
    finally:
        for h in handles:
            h.remove()
    tr.keep.extend(_tensors(output))
    tr.model_outputs = {_key(t) for t in _tensors(output)}
    return tr, output


def _producers(trace: _Trace) -> Dict[Tuple[int, int], str]:
    """Tensor id -> the layer that made it. Pass-through modules (Identity, Dropout in eval)
    return their input object, so the first producer in execution order is the real one."""
    producer: Dict[Tuple[int, int], str] = {}
    for name in trace.order:
        for tid in trace.outputs.get(name, []):
            producer.setdefault(tid, name)
    return producer


def _batch_norm_pairs(trace: _Trace, leaves: Dict[str, nn.Module]) -> List[Tuple[str, str]]:
    """(layer, bn) pairs where the bn reads exactly the layer's output and nothing else reads it."""
    producer = _producers(trace)
    readers: Dict[Tuple[int, int], Set[str]] = {}
    for name, ids in trace.inputs.items():
        for tid in ids:
            readers.setdefault(tid, set()).add(name)
    pairs = []
    for name in trace.order:
        bn = leaves[name]
        if not isinstance(bn, _BN) or bn.running_mean is None or trace.calls[name] != 1:
            continue
        ins = trace.inputs[name]
        if len(ins) != 1 or ins[0] not in producer:
            continue
        src = producer[ins[0]]
        if (not _foldable_into(leaves[src]) or trace.calls[src] != 1 or readers.get(ins[0]) != {name}
                or ins[0] in trace.model_outputs or ins[0] in trace.functional_reads
                or len(trace.outputs[src]) != 1):
            continue
        pairs.append((src, name))
    return pairs


# ---- the adapter ---------------------------------------------------------------------------

def _to_numpy(t: torch.Tensor) -> Any:
    """float32 numpy (zero-copy for contiguous CPU float32), or the CUDA tensor itself."""
    t = t.detach()
    if t.is_cuda:
        return t.float().contiguous()
    return t.float().contiguous().numpy()


def _is_float(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _from_result(result: Any, like: torch.Tensor) -> torch.Tensor:
    if isinstance(result, np.ndarray):
        out = torch.from_numpy(result)
    else:  # a CUDA array from qa's kernels
        out = torch.as_tensor(result, device=like.device)
    return out.to(like.dtype) if out.dtype != like.dtype else out


@register
class TorchAdapter(Adapter):
    """Exposes a torch model to qa's engine: layers, quantizers, and runs with any quantizers on.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
        >>> adapter = TorchAdapter(net.eval(), torch.randn(1, 1, 8, 8))
        >>> [layer.name for layer in adapter.graph.layers]
        ['0', '2']
    """

    framework = "torch"
    priority = 20  # after Keras: a Keras model on the torch backend is an nn.Module too
    # How to get an operation that runs outside layers quantized in this framework.
    unquantized_hint = "wrap them in modules (e.g. an nn.Module doing the add) to quantize them"

    def __init__(self, model: nn.Module, dummy_input: Any, *, modules_to_ignore: Optional[Iterable[Any]] = None) -> None:
        if not isinstance(model, nn.Module):
            raise QAValueError(f"expected a torch.nn.Module, got {type(model).__name__}")
        super().__init__()
        ignored = self._ignored_names(model, modules_to_ignore)
        # Everything below touches only this copy. It runs in eval mode: batch norms are folded
        # with their running statistics, and a deployed model does not train.
        self.model = copy.deepcopy(model).eval()
        if model.training:
            log.info("the model is in training mode; qa analyses an eval-mode copy of it")
        self.dummy_input = dummy_input
        leaves = _leaves(self.model)
        trace, _ = self._trace(leaves)
        model_inputs = {_key(t) for t in _tensors(dummy_input)}
        pairs = _batch_norm_pairs(trace, leaves)
        if pairs:
            fold_batch_norms(self.model, pairs)
            log.info("folded %d batch norm(s): %s", len(pairs), ", ".join(f"{bn} -> {c}" for c, bn in pairs))
            leaves = _leaves(self.model)
            trace, _ = self._trace(leaves)
        self._leaves = leaves
        self.graph = self._build_graph(trace, leaves, ignored, model_inputs)
        self.graph.folded_batch_norms = [(bn, c) for c, bn in pairs]
        # parameter quantizer -> (its definition, the parameter, the float values)
        self._params: Dict[str, Tuple[Quantizer, nn.Parameter, torch.Tensor]] = {}
        for layer in self.graph.layers:
            module = self._leaves[layer.name]
            for q in layer.params:
                p = getattr(module, q.param)
                self._params[q.name] = (q, p, p.data)
        self._handles = self._install_hooks()

    @classmethod
    def is_model(cls, model: Any) -> bool:
        """True for a torch.nn.Module."""
        return isinstance(model, nn.Module)

    # -- construction --

    @staticmethod
    def _ignored_names(model: nn.Module, modules: Optional[Iterable[Any]]) -> Set[str]:
        if not modules:
            return set()
        by_id = {id(m): name for name, m in model.named_modules()}
        names = set()
        for m in modules:
            if isinstance(m, str):
                names.add(m)
            elif id(m) in by_id:
                # a container means all of its leaves
                prefix = by_id[id(m)]
                names.update(n for n, _ in m.named_modules(prefix=prefix))
            else:
                raise QAValueError(f"modules_to_ignore: {type(m).__name__} object is not a module of this model")
        return names

    def _run(self, inputs: Any) -> Any:
        """Model inputs as AIMET's dummy_input: a tensor, a tuple of tensors, or a dict of keywords."""
        if isinstance(inputs, dict):
            return self.model(**inputs)
        if isinstance(inputs, (tuple, list)):
            return self.model(*inputs)
        return self.model(inputs)

    def _trace(self, leaves):
        try:
            return _trace(self.model, lambda: self._run(self.dummy_input), leaves)
        except Exception as e:
            raise QAValueError(f"the model failed on dummy_input ({type(e).__name__}: {e}); "
                               f"pass a dummy_input the model accepts (a tensor, a tuple of tensors or a dict)") from e

    def _build_graph(self, trace: _Trace, leaves, ignored: Set[str], model_inputs: Set[Tuple[int, int]]) -> QuantGraph:
        producer = _producers(trace)
        layers: List[Layer] = []
        for name in trace.order:
            module = leaves[name]
            if name in ignored or isinstance(module, (nn.Identity,)):
                continue
            op = op_type_of(module)
            layer = Layer(name=name, op_type=op, type_name=type(module).__name__, calls=trace.calls[name])
            ins = trace.inputs.get(name, [])
            layer.inputs = sorted({producer[t] for t in ins if t in producer and producer[t] != name},
                                  key=trace.order.index)
            layer.model_input = any(t in model_inputs for t in ins)
            for pname, p in module.named_parameters(recurse=False):
                if not p.is_floating_point():
                    continue
                layer.quantizers.append(Quantizer(
                    name=f"{name}_{pname}", layer=name, kind=PARAM, param=pname, shape=tuple(p.shape),
                    axis=_weight_axis(module) if pname == "weight" else None))
            if layer.model_input:
                layer.quantizers.append(Quantizer(name=f"{name}_input_0", layer=name, kind=INPUT, index=0))
            for i in range(trace.n_outputs.get(name, 0)):
                layer.quantizers.append(Quantizer(name=f"{name}_output_{i}", layer=name, kind=OUTPUT, index=i))
            layers.append(layer)
        graph = QuantGraph(layers)
        for layer in layers:  # layers whose output is a model output
            layer.model_output = any(t in trace.model_outputs for t in trace.outputs.get(layer.name, []))
        graph.unquantized_ops = sorted(f"{fn} (x{n})" if n > 1 else fn for fn, n in trace.functional.items())
        return graph

    # -- hooks --

    def _install_hooks(self):
        handles = []
        for layer in self.graph.layers:
            module = self._leaves[layer.name]
            outs = [q for q in layer.quantizers if q.kind == OUTPUT]
            ins = [q for q in layer.quantizers if q.kind == INPUT]
            if ins:
                handles.append(module.register_forward_pre_hook(self._pre_hook(layer.name, ins)))
            handles.append(module.register_forward_hook(self._post_hook(layer.name, outs)))
        return handles

    def _pre_hook(self, name: str, quantizers: List[Quantizer]):
        def hook(module, args):
            if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
                return None
            quantized = self._activation(quantizers[0].name, lambda: _to_numpy(args[0]))
            return None if quantized is None else (_from_result(quantized, args[0]),) + tuple(args[1:])
        return hook

    def _post_hook(self, name: str, quantizers: List[Quantizer]):
        def hook(module, args, output):
            tensors = output if isinstance(output, (tuple, list)) else (output,)
            result = self._layer_outputs(name, tensors, quantizers, _is_float, _to_numpy, _from_result)
            if isinstance(output, (tuple, list)):
                return type(output)(result)
            return result[0]
        return hook

    # -- the verbs the engine uses --

    def weights(self) -> Iterator[Tuple[Quantizer, np.ndarray]]:
        """Each parameter quantizer with its float32 values (the folded ones)."""
        for q, _, original in self._params.values():
            yield q, original.detach().float().cpu().numpy()

    def prepare_weight(self, quantizer: Quantizer, values: np.ndarray) -> torch.Tensor:
        """The fake-quantized values as a tensor of the parameter's dtype, device and shape."""
        _, _, original = self._params[quantizer.name]
        q = torch.from_numpy(np.ascontiguousarray(values)).to(dtype=original.dtype, device=original.device)
        return q.reshape(original.shape)

    def _bind_weight(self, name: str, value: Optional[torch.Tensor]) -> None:
        _, param, original = self._params[name]
        param.data = original if value is None else value

    def activate(self, active: ActiveSet) -> None:
        """Run with exactly these quantizers on: parameters swap their data in O(1); the hooks
        quantize the activations ``active`` names."""
        self._active = active
        self._bind_weights(active.weights, list(self._params))

    def run(self, inputs: Any) -> Any:
        """One forward pass of the analysis copy on model inputs, without gradients."""
        with torch.no_grad():
            return self._run(inputs)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.activate(FLOAT)
