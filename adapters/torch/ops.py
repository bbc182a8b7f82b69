"""What each torch module and function is, in the vocabulary of AIMET quantsim configs (ONNX op types).

Three kinds of torch functions reach the interceptor (:mod:`.calls`):

* *metadata* (``size``, ``dim``, ``shape``, ...): read no values, make no tensor of values; ignored.
* *data movement* (``view``, ``permute``, ``transpose``, ``x[...]``, ``contiguous``, ``to``, ...):
  rearrange or re-type values without computing new ones; their outputs count as their input in
  the data flow and get no quantizer (a deployed integer graph moves the codes unchanged).
* *compute* ops (everything else that returns a float tensor): a layer of the analysis each, with an
  output quantizer, its op type from :data:`FUNCTION_OP_TYPES` (unlisted functions get their own
  name in CamelCase, so that a config can still name them), and parameter quantizers for the
  ``nn.Parameter`` objects they read (see :func:`param_role`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["MODULE_OP_TYPES", "FUNCTION_OP_TYPES", "FuncInfo", "OpBatchNorm", "classify", "name_of", "op_type_of", "is_known_leaf",
           "param_role", "weight_axis", "module_weight_axis"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# Module class -> ONNX op type; a leaf module of one of these classes is one layer (AIMET's unit).
MODULE_OP_TYPES: List[Tuple[Any, str]] = [
    (_CONV, "Conv"), (_CONV_T, "ConvTranspose"), (nn.Linear, "Gemm"), (BN, "BatchNormalization"),
    (nn.ReLU, "Relu"), ((nn.ReLU6, nn.Hardtanh), "Clip"), (nn.LeakyReLU, "LeakyRelu"), (nn.PReLU, "PRelu"),
    (nn.Sigmoid, "Sigmoid"), (nn.Tanh, "Tanh"), (nn.GELU, "Gelu"), (nn.SiLU, "Silu"), (nn.Hardswish, "HardSwish"),
    (nn.Hardsigmoid, "HardSigmoid"), (nn.ELU, "Elu"), (nn.Softmax, "Softmax"), (nn.LogSoftmax, "LogSoftmax"),
    (nn.Mish, "Mish"), (nn.Softplus, "Softplus"), (nn.LSTM, "LSTM"), (nn.GRU, "GRU"), (nn.RNN, "RNN"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d), "MaxPool"),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), "AveragePool"),
    ((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d), "GlobalAveragePool"),
    (nn.LayerNorm, "LayerNormalization"), (nn.GroupNorm, "GroupNormalization"),
    ((nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d), "InstanceNormalization"),
    (nn.Embedding, "Gather"), ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout), "Dropout"),
    (nn.Identity, "Identity"), ((nn.Flatten, nn.Unflatten), "Flatten"), ((nn.Upsample,), "Resize"),
    ((nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad2d), "Pad"),
]
if hasattr(nn, "RMSNorm"):
    MODULE_OP_TYPES.append((nn.RMSNorm, "RMSNormalization"))

# Function name (in-place and reflected forms folded: add_, __radd__ -> add) -> ONNX op type.
FUNCTION_OP_TYPES: Dict[str, str] = {
    "conv1d": "Conv", "conv2d": "Conv", "conv3d": "Conv",
    "conv_transpose1d": "ConvTranspose", "conv_transpose2d": "ConvTranspose", "conv_transpose3d": "ConvTranspose",
    "linear": "Gemm", "addmm": "Gemm", "bilinear": "Gemm",
    "matmul": "MatMul", "mm": "MatMul", "bmm": "MatMul", "baddbmm": "MatMul", "einsum": "Einsum",
    "add": "Add", "sub": "Sub", "rsub": "Sub", "mul": "Mul", "div": "Div", "true_divide": "Div", "truediv": "Div",
    "floor_divide": "Div", "pow": "Pow", "neg": "Neg", "abs": "Abs", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
    "rsqrt": "Rsqrt", "reciprocal": "Reciprocal", "erf": "Erf", "sin": "Sin", "cos": "Cos",
    "softmax": "Softmax", "log_softmax": "LogSoftmax", "relu": "Relu", "relu6": "Clip", "hardtanh": "Clip",
    "clamp": "Clip", "clip": "Clip", "gelu": "Gelu", "silu": "Silu", "sigmoid": "Sigmoid", "tanh": "Tanh",
    "hardswish": "HardSwish", "hardsigmoid": "HardSigmoid", "leaky_relu": "LeakyRelu", "elu": "Elu",
    "mish": "Mish", "softplus": "Softplus", "prelu": "PRelu",
    "layer_norm": "LayerNormalization", "group_norm": "GroupNormalization", "batch_norm": "BatchNormalization",
    "instance_norm": "InstanceNormalization", "rms_norm": "RMSNormalization", "normalize": "LpNormalization",
    "embedding": "Gather", "cat": "Concat", "concat": "Concat", "concatenate": "Concat", "stack": "Concat",
    "mean": "ReduceMean", "sum": "ReduceSum", "amax": "ReduceMax", "amin": "ReduceMin", "max": "Max", "min": "Min",
    "maximum": "Max", "minimum": "Min", "where": "Where", "masked_fill": "Where",
    "avg_pool1d": "AveragePool", "avg_pool2d": "AveragePool", "avg_pool3d": "AveragePool",
    "max_pool1d": "MaxPool", "max_pool2d": "MaxPool", "max_pool3d": "MaxPool",
    "adaptive_avg_pool1d": "GlobalAveragePool", "adaptive_avg_pool2d": "GlobalAveragePool",
    "adaptive_avg_pool3d": "GlobalAveragePool", "adaptive_max_pool2d": "MaxPool",
    "interpolate": "Resize", "upsample": "Resize", "pad": "Pad", "scaled_dot_product_attention": "Attention",
    "multi_head_attention_forward": "MultiHeadAttention", "cumsum": "CumSum", "var": "ReduceVar",
}

# Functions that read no values or make no new ones. Their outputs are their input in the data flow.
_METADATA = frozenset({
    "size", "dim", "numel", "shape", "dtype", "device", "is_floating_point", "is_contiguous", "stride",
    "requires_grad", "__len__", "data_ptr", "element_size", "ndim", "layout", "storage_offset", "__format__",
    "__repr__", "__hash__", "names", "is_quantized", "__bool__", "__index__", "__int__", "__float__", "item",
    "tolist", "numpy", "__array__", "__iter__", "__contains__", "_has_compatible_shallow_copy_type",
    "__reduce_ex__", "grad_fn", "is_leaf", "__setitem__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__",
    "eq", "ne", "lt", "le", "gt", "ge", "isnan", "isinf", "isfinite", "any", "all", "argmax", "argmin", "nonzero",
    "is_nonzero", "equal", "allclose", "dequantize", "get_device", "is_complex", "is_signed", "new_zeros",
    "new_ones", "new_empty", "new_full", "new_tensor", "zeros_like", "ones_like", "empty_like", "full_like",
    "rand_like", "randn_like", "logical_not", "logical_and", "logical_or", "bool", "long", "int", "cpu", "cuda",
    "requires_grad_", "detach_", "retain_grad", "register_hook", "backward", "sort", "argsort", "topk", "unique",
    "bincount", "__get__", "__deepcopy__", "__getstate__", "__setstate__", "__dir__",
})
_MOVEMENT = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze", "permute",
    "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "T", "mT", "contiguous", "expand", "expand_as",
    "__getitem__", "chunk", "split", "tensor_split", "unbind", "narrow", "select", "clone", "detach", "to", "float",
    "double", "half", "bfloat16", "type", "type_as", "repeat", "tile", "flip", "roll", "index_select", "gather",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "split_with_sizes",
    "as_strided", "diagonal", "tril", "triu", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "unfold",
    "broadcast_to", "repeat_interleave", "data", "real",
})
_ARITHMETIC = {"add", "sub", "mul", "truediv", "floordiv", "matmul", "pow", "mod", "and", "or", "xor", "div"}

META, MOVE = "metadata", "movement"

# Where known ops take their parameters: positional index and keyword name of each role.
_PARAM_SLOTS: Dict[str, Tuple[Tuple[str, int], ...]] = {
    "conv1d": (("weight", 1), ("bias", 2)), "conv2d": (("weight", 1), ("bias", 2)),
    "conv3d": (("weight", 1), ("bias", 2)), "conv_transpose1d": (("weight", 1), ("bias", 2)),
    "conv_transpose2d": (("weight", 1), ("bias", 2)), "conv_transpose3d": (("weight", 1), ("bias", 2)),
    "linear": (("weight", 1), ("bias", 2)), "embedding": (("weight", 1),), "prelu": (("weight", 1),),
    "layer_norm": (("weight", 2), ("bias", 3)), "group_norm": (("weight", 2), ("bias", 3)),
    "batch_norm": (("weight", 3), ("bias", 4)), "instance_norm": (("weight", 3), ("bias", 4)),
    "rms_norm": (("weight", 2),), "addmm": (("bias", 0), ("weight", 2)),
}
# Ops into which a following batch norm folds: name -> the weight's output-channel axis.
FOLDABLE = {"conv1d": 0, "conv2d": 0, "conv3d": 0, "linear": 0,
            "conv_transpose1d": 1, "conv_transpose2d": 1, "conv_transpose3d": 1}
_GROUPS_SLOT = {"conv1d": 6, "conv2d": 6, "conv3d": 6, "conv_transpose1d": 6, "conv_transpose2d": 6,
                "conv_transpose3d": 6}


@dataclass(frozen=True)
class FuncInfo:
    """A compute op: its normalised name (``add`` for ``__radd__``, ``add_``), ONNX type, in-place."""

    name: str
    op_type: str
    inplace: bool = False


# ATen ops a torch.export program calls under other names than their torch.nn.functional twins
_ATEN_NAMES = {"_native_batch_norm_legit_no_training": "batch_norm", "_native_batch_norm_legit": "batch_norm",
               "native_layer_norm": "layer_norm", "_softmax": "softmax", "_log_softmax": "log_softmax",
               "convolution": "conv2d", "_to_copy": "to", "alias": "view", "clone": "clone"}


def _base_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or str(func)
    if name == "__get__":  # a property such as x.T arrives as its descriptor's __get__
        return getattr(getattr(func, "__self__", None), "__name__", name)
    if isinstance(func, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        # torch.export programs call ATen ops: aten.conv2d.default, aten.add.Tensor -> conv2d, add
        name = name.split(".")[0]
        return _ATEN_NAMES.get(name, name)
    return name


_cache: Dict[Any, Any] = {}
_names: Dict[Any, str] = {}


def name_of(func: Any) -> str:
    """A torch function's name as calls are identified by (``__get__`` of ``x.T``: ``T``); cached."""
    try:
        return _names[func]
    except (KeyError, TypeError):
        name = _base_name(func)
        try:
            _names[func] = name
        except TypeError:
            pass
        return name


def classify(func: Any) -> Any:
    """META, MOVE, or the :class:`FuncInfo` of a compute op (cached per function object)."""
    try:
        return _cache[func]
    except (KeyError, TypeError):
        pass
    info = _classify(_base_name(func))
    try:
        _cache[func] = info
    except TypeError:  # an unhashable callable: classify it every time
        pass
    return info


def _classify(name: str) -> Any:
    inplace = False
    if name.startswith("__") and name.endswith("__"):
        base = name[2:-2]
        if base[:1] == "i" and base[1:] in _ARITHMETIC:
            base, inplace = base[1:], True
        elif base[:1] == "r" and base[1:] in _ARITHMETIC and base != "rsub":
            base = base[1:]
        if base not in _ARITHMETIC and base not in ("rsub", "neg", "abs"):
            return META if name not in _MOVEMENT else MOVE
        name = {"truediv": "div", "floordiv": "floor_divide"}.get(base, base)
    elif name.endswith("_") and not name.startswith("_"):
        name, inplace = name[:-1], True
    if name in _METADATA or name.startswith("_"):
        return META
    if name in _MOVEMENT:
        return MOVE
    op_type = FUNCTION_OP_TYPES.get(name) or "".join(p.capitalize() for p in name.split("_"))
    return FuncInfo(name, op_type, inplace)


def op_type_of(module: nn.Module) -> str:
    """The ONNX op type of a module (its class name when it has none)."""
    for classes, op in MODULE_OP_TYPES:
        if isinstance(module, classes):
            return op
    return type(module).__name__


def is_known_leaf(module: nn.Module) -> bool:
    """A module with no children, of a torch.nn class with an ONNX op type and torch's own forward:
    one layer. (A subclass with a forward of its own, such as a weight-standardised conv, may
    compute something else: its ops are seen one by one.)"""
    if any(True for _ in module.children()):
        return False
    if not getattr(type(module).forward, "__module__", "").startswith("torch.nn"):
        return False
    return any(isinstance(module, classes) for classes, _ in MODULE_OP_TYPES)


def module_weight_axis(module: nn.Module) -> Optional[int]:
    """The output-channel axis of a module's weight, for per-channel quantization (None: per tensor only)."""
    if isinstance(module, _CONV_T):
        return 1 if module.groups == 1 else None
    if isinstance(module, _CONV + (nn.Linear, nn.RNNBase)):
        return 0
    return None


def foldable_module(module: nn.Module) -> bool:
    if isinstance(module, _CONV_T):
        return module.groups == 1
    return isinstance(module, _CONV + (nn.Linear,))


def fold_axis(module: nn.Module) -> int:
    return 1 if isinstance(module, _CONV_T) else 0


def param_role(op: str, position: Optional[int], keyword: Optional[str]) -> Optional[str]:
    """``weight`` / ``bias`` for a tensor in a known parameter slot of op ``op`` (None: another slot)."""
    for role, index in _PARAM_SLOTS.get(op, ()):
        if position == index or keyword == role:
            return role
    return None


def groups_of(op: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> int:
    slot = _GROUPS_SLOT.get(op)
    value = kwargs.get("groups", args[slot] if slot is not None and len(args) > slot else 1)
    return int(value) if isinstance(value, int) else 1


def weight_axis(op: str, role: str, groups: int) -> Optional[int]:
    """The output-channel axis of a weight read by a functional op (None: per tensor only)."""
    if role != "weight" or op not in FOLDABLE:
        return None
    if op.startswith("conv_transpose"):
        return 1 if groups == 1 else None
    return 0


def is_float(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


class OpBatchNorm:
    """A batch norm called as a function (``F.batch_norm`` in eval, ``aten.batch_norm`` in a
    torch.export program): its statistics and affine parameters, as a module would hold them."""

    __slots__ = ("running_mean", "running_var", "weight", "bias", "eps")

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, weight: Optional[torch.Tensor],
                 bias: Optional[torch.Tensor], eps: float) -> None:
        self.running_mean, self.running_var, self.weight, self.bias, self.eps = mean, var, weight, bias, eps

    @classmethod
    def of_call(cls, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Optional["OpBatchNorm"]:
        """The batch norm a call computes in eval mode (None: training, or an unknown signature)."""
        names = (("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps")
                 if isinstance(func, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)) else
                 ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"))
        bound = dict(zip(names, args))
        bound.update({k: v for k, v in kwargs.items() if k in names})
        mean, var = bound.get("running_mean"), bound.get("running_var")
        if bound.get("training") or not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor):
            return None
        return cls(mean, var, bound.get("weight"), bound.get("bias"), float(bound.get("eps", 1e-5)))
