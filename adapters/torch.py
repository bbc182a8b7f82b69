"""PyTorch adapter: a private copy of the model, batch-norm folding, tracing, and quantization hooks.

The user's module is never touched: the adapter deep-copies it, folds batch norms into the
copy, and installs its hooks on the copy only. Tensors cross into qa as float32 numpy arrays
(zero-copy on the CPU) and come back with ``torch.from_numpy``; CUDA tensors stay on the
device and use qa's CUDA kernels when available.

Sharing: every call of a leaf module in the traced forward pass is a layer (the first call keeps
the module's name, later ones are ``<module>/call_<k>``) with its own activation quantizers; a
parameter is one quantizer however many modules or calls use it (tied weights), and a batch norm
is never folded into a layer whose weight or bias something else also uses.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import types
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import QAValueError
from . import register
from ._base import FLOAT, ActiveSet, Adapter, check_ignored
from ..folding import fold_batch_norm
from ..graph import INPUT, OUTPUT, PARAM, Layer, QuantGraph, Quantizer, call_name

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


class _Call:
    """One call of a leaf module in the traced forward pass: its tensors in and out."""

    __slots__ = ("module", "index", "inputs", "outputs", "n_outputs")

    def __init__(self, module: str, index: int, inputs: List[Tuple[int, int]]) -> None:
        self.module = module
        self.index = index  # the k-th call of the module in this pass, from 0
        self.inputs = inputs
        self.outputs: List[Tuple[int, int]] = []
        self.n_outputs = 0  # float outputs

    @property
    def name(self) -> str:
        return call_name(self.module, self.index)


class _Trace:
    """One forward pass observed: call order, data flow between leaf calls, functional ops outside them."""

    def __init__(self) -> None:
        self.order: List[_Call] = []  # every call of a leaf module, in the order the calls start
        self.calls: Dict[str, int] = {}  # module -> how many times it ran
        self.running: Dict[str, List[_Call]] = {}  # module -> its calls started and not finished
        self.functional: Dict[str, int] = {}
        self.model_outputs: Set[Tuple[int, int]] = set()
        self.functional_reads: Set[Tuple[int, int]] = set()  # tensors read by ops outside layers
        self.param_reads: Dict[int, str] = {}  # id(parameter) -> an op outside layers that read it
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
            call = _Call(name, tr.calls.get(name, 0), [_key(t) for t in ts])
            tr.calls[name] = call.index + 1
            tr.order.append(call)
            tr.running.setdefault(name, []).append(call)
        return hook

    def post(name):
        def hook(module, args, kwargs, output):
            tr.depth -= 1
            ts = _tensors(output)
            tr.keep.extend(ts)
            call = tr.running[name].pop()
            call.outputs = [_key(t) for t in ts]
            call.n_outputs = sum(t.is_floating_point() for t in ts)
        return hook

    class FunctionalOps(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if tr.depth == 0:
                name = getattr(func, "__name__", str(func))
                if name not in _METADATA:
                    read = _tensors((args, kwargs or {}))
                    tr.functional_reads.update(_key(t) for t in read)
                    for t in read:
                        if isinstance(t, nn.Parameter):
                            tr.param_reads.setdefault(id(t), name)
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
    """Tensor id -> the call (layer name) that made it. Pass-through modules (Identity, Dropout in
    eval) return their input object, so the first producer in execution order is the real one."""
    producer: Dict[Tuple[int, int], str] = {}
    for call in trace.order:
        for tid in call.outputs:
            producer.setdefault(tid, call.name)
    return producer


def _holders(model: nn.Module) -> Dict[int, List[str]]:
    """id(parameter) -> the modules that hold it (more than one: a tied weight)."""
    holders: Dict[int, List[str]] = {}
    for name, m in model.named_modules():
        for p in m._parameters.values():
            if p is not None:
                holders.setdefault(id(p), []).append(name)
    return holders


def _why_not_foldable(trace: _Trace, src: str, bn: str, leaves: Dict[str, nn.Module],
                      holders: Dict[int, List[str]]) -> Optional[str]:
    """Why folding ``bn`` into ``src`` would change more than the pair (None: it would not).
    Folding rewrites src's weight and bias, so they must serve src's one call and nothing else."""
    if trace.calls[bn] != 1:
        return f"{bn} runs {trace.calls[bn]} times in a forward pass"
    if trace.calls[src] != 1:
        return f"{src} runs {trace.calls[src]} times in a forward pass and one weight serves every call"
    module = leaves[src]
    for pname in ("weight", "bias"):
        p = module._parameters.get(pname)
        if p is None:
            continue
        others = [n for n in holders.get(id(p), []) if n != src]
        if others:
            return f"its {pname} is shared with {', '.join(others)}"
        if id(p) in trace.param_reads:
            return f"its {pname} is also read outside layers (by {trace.param_reads[id(p)]})"
    return None


def _batch_norm_pairs(trace: _Trace, leaves: Dict[str, nn.Module], holders: Dict[int, List[str]]
                      ) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str, str]]]:
    """(layer, bn) pairs where the bn reads exactly the layer's output and nothing else reads it,
    and (bn, layer, reason) for such pairs that must not fold (a shared weight, a repeated call)."""
    producer = _producers(trace)
    by_name = {call.name: call for call in trace.order}
    readers: Dict[Tuple[int, int], Set[str]] = {}
    for call in trace.order:
        for tid in call.inputs:
            readers.setdefault(tid, set()).add(call.name)
    pairs: List[Tuple[str, str]] = []
    refused: List[Tuple[str, str, str]] = []
    for call in trace.order:
        bn = leaves[call.module]
        if not isinstance(bn, _BN) or bn.running_mean is None:
            continue
        ins = call.inputs
        if len(ins) != 1 or ins[0] not in producer:
            continue
        src = by_name[producer[ins[0]]]
        if (not _foldable_into(leaves[src.module]) or readers.get(ins[0]) != {call.name}
                or ins[0] in trace.model_outputs or ins[0] in trace.functional_reads or len(src.outputs) != 1):
            continue
        reason = _why_not_foldable(trace, src.module, call.module, leaves, holders)
        if reason is None:
            pairs.append((src.module, call.module))
        elif (call.module, src.module, reason) not in refused:
            refused.append((call.module, src.module, reason))
    return pairs, refused


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


def _uncopyable(model: nn.Module) -> str:
    """Which attribute of which submodule ``copy.deepcopy`` fails on, in words ("" if none alone does)."""
    for name, m in model.named_modules():
        where = f"module '{name}'" if name else "the model"
        for attr, value in vars(m).items():
            if attr == "_modules":
                continue  # each submodule is visited itself
            values = value.items() if attr in ("_parameters", "_buffers") else [(attr, value)]
            for key, v in values:
                try:
                    copy.deepcopy(v)
                except Exception as e:
                    return (f"attribute '{key}' of {where} (a {type(v).__module__}.{type(v).__qualname__}: "
                            f"{type(e).__name__}: {e})")
    return ""


def _copy_of(model: nn.Module) -> nn.Module:
    """A deep copy of the user's model, or a QAValueError that names what cannot be copied."""
    try:
        return copy.deepcopy(model)
    except Exception as e:
        what = _uncopyable(model) or f"the model ({type(e).__name__}: {e})"
        raise QAValueError(f"qa works on a copy of the model (it never changes yours), and copy.deepcopy cannot "
                           f"copy {what}; remove or replace that attribute before the analysis (or give its "
                           f"class a __deepcopy__)") from e


class _CallSite:
    """The quantizers of one call of a module (a layer), as the hooks use them."""

    __slots__ = ("name", "inputs", "outputs")

    def __init__(self, layer: Layer) -> None:
        self.name = layer.name
        self.inputs = [q for q in layer.quantizers if q.kind == INPUT]
        self.outputs = [q for q in layer.quantizers if q.kind == OUTPUT]


@register
class TorchAdapter(Adapter):
    """Exposes a torch model to qa's engine: layers, quantizers, and runs with any quantizers on.

    The analysis copy always runs in eval mode, as a deployed model does: ``activate`` (called
    before every evaluation) puts it back in eval mode, and ``train()`` on the copy or any of its
    modules is refused with a warning, so that a callback calling ``model.train()`` turns on no
    dropout and changes no batch-norm statistics.

    A module called several times in one forward pass is one layer per call (``act``,
    ``act/call_1``, ...), each with its own activation quantizers; a parameter used by several
    layers (tied weights, a module called twice) is one quantizer, named after the first layer
    that uses it. Batch norms are not folded into a layer whose weight or bias is shared
    (``graph.unfolded_batch_norms`` says why).

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
        self.model = _copy_of(model).eval()
        if model.training:
            log.info("the model is in training mode; qa analyses an eval-mode copy of it")
        self.dummy_input = dummy_input
        leaves = _leaves(self.model)
        trace, _ = self._trace(leaves)
        check_ignored(ignored, [n for n, _ in model.named_modules(remove_duplicate=False) if n]
                      + [c.name for c in trace.order if c.index],
                      "a module of the model (names as model.named_modules() gives them, or <module>/call_<k>)")
        model_inputs = {_key(t) for t in _tensors(dummy_input)}
        pairs, refused = _batch_norm_pairs(trace, leaves, _holders(self.model))
        for bn, layer, reason in refused:
            log.info("batch norm %s is not folded into %s: %s", bn, layer, reason)
        if pairs:
            fold_batch_norms(self.model, pairs)
            log.info("folded %d batch norm(s): %s", len(pairs), ", ".join(f"{bn} -> {c}" for c, bn in pairs))
            leaves = _leaves(self.model)
            trace, _ = self._trace(leaves)
        self._leaves = leaves
        # parameter quantizer -> (its definition, the parameter, the float values)
        self._params: Dict[str, Tuple[Quantizer, nn.Parameter, torch.Tensor]] = {}
        self.graph = self._build_graph(trace, leaves, ignored, model_inputs)
        self.graph.folded_batch_norms = [(bn, c) for c, bn in pairs]
        self.graph.unfolded_batch_norms = refused
        # module -> the quantizers of each of its calls (None: that call is not a layer)
        self._sites: Dict[str, List[Optional[_CallSite]]] = {}
        for call in trace.order:
            site = _CallSite(self.graph[call.name]) if call.name in self.graph else None
            self._sites.setdefault(call.module, []).append(site)
        self._counts: Dict[str, int] = {}  # module -> calls so far in the running forward pass
        self._running: Dict[str, List[Optional[_CallSite]]] = {}  # module -> its calls not finished
        self._extra_calls: Set[str] = set()  # modules that ran more often than in the trace
        self._untraced_runs: Set[str] = set()  # modules that ran but not on dummy_input
        untraced = [n for n, m in leaves.items() if n not in trace.calls and n not in ignored
                    and not isinstance(m, nn.Identity)]
        self._handles = self._install_hooks(untraced)
        self._modules = list(self.model.modules())
        self._warned_train = False
        adapter = self

        def train(module: nn.Module, mode: bool = True) -> nn.Module:
            """``train()`` of qa's copy: it analyses the deployed model, so it stays in eval mode."""
            if mode:
                adapter._warn_train()
            return nn.Module.train(module, False)

        for m in self._modules:  # the copy stays in eval mode, whatever a callback asks
            m.train = types.MethodType(train, m)

    @classmethod
    def is_model(cls, model: Any) -> bool:
        """True for a torch.nn.Module."""
        return isinstance(model, nn.Module)

    # -- construction --

    @staticmethod
    def _ignored_names(model: nn.Module, modules: Optional[Iterable[Any]]) -> Set[str]:
        """The module (or call) names to ignore; a container, given itself or by name, means all of its leaves."""
        if not modules:
            return set()
        by_id = {id(m): name for name, m in model.named_modules()}
        by_name = dict(model.named_modules(remove_duplicate=False))  # a module registered twice: both names
        names = set()
        for m in modules:
            if isinstance(m, str):
                names.add(m)
                if m in by_name:
                    prefix = by_id[id(by_name[m])]
                    names.update(n for n, _ in by_name[m].named_modules(prefix=prefix))
            elif id(m) in by_id:
                # a container means all of its leaves
                prefix = by_id[id(m)]
                names.update(n for n, _ in m.named_modules(prefix=prefix))
            else:
                raise QAValueError(f"modules_to_ignore: {type(m).__name__} object is not a module of this model")
        names.discard("")  # the model itself, ignored as a container: its leaves are in the set
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
        """One layer per call of a leaf module; one quantizer per parameter, shared by every layer using it."""
        producer = _producers(trace)
        position = {call.name: i for i, call in enumerate(trace.order)}
        by_param: Dict[int, Quantizer] = {}
        layers: List[Layer] = []
        for call in trace.order:
            name, module = call.name, leaves[call.module]
            if call.module in ignored or name in ignored or isinstance(module, (nn.Identity,)):
                continue
            layer = Layer(name=name, op_type=op_type_of(module), type_name=type(module).__name__,
                          calls=trace.calls[call.module], call=call.index)
            layer.inputs = sorted({producer[t] for t in call.inputs if t in producer and producer[t] != name},
                                  key=position.__getitem__)
            layer.model_input = any(t in model_inputs for t in call.inputs)
            layer.model_output = any(t in trace.model_outputs for t in call.outputs)
            for pname, p in module.named_parameters(recurse=False):
                if not p.is_floating_point():
                    continue
                q = by_param.get(id(p))
                if q is None:
                    q = by_param[id(p)] = Quantizer(
                        name=f"{name}_{pname}", layer=name, kind=PARAM, param=pname, shape=tuple(p.shape),
                        axis=_weight_axis(module) if pname == "weight" else None)
                    self._params[q.name] = (q, p, p.data)
                layer.quantizers.append(q)
            if layer.model_input:
                layer.quantizers.append(Quantizer(name=f"{name}_input_0", layer=name, kind=INPUT, index=0))
            for i in range(call.n_outputs):
                layer.quantizers.append(Quantizer(name=f"{name}_output_{i}", layer=name, kind=OUTPUT, index=i))
            layers.append(layer)
        graph = QuantGraph(layers)
        graph.unquantized_ops = sorted(f"{fn} (x{n})" if n > 1 else fn for fn, n in trace.functional.items())
        return graph

    # -- hooks --

    def _install_hooks(self, untraced: List[str]):
        handles = [self.model.register_forward_pre_hook(self._new_pass),
                   self.model.register_forward_hook(self._new_pass)]
        for module_name, sites in self._sites.items():
            if not any(sites):
                continue
            module = self._leaves[module_name]
            handles.append(module.register_forward_pre_hook(self._pre_hook(module_name, sites)))
            handles.append(module.register_forward_hook(self._post_hook(module_name)))
        for module_name in untraced:
            handles.append(self._leaves[module_name].register_forward_pre_hook(self._untraced_hook(module_name)))
        return handles

    def _new_pass(self, *_: Any) -> None:
        """Each forward pass of the model counts the calls of its modules from 0, in eval mode."""
        self._counts.clear()
        self._running.clear()
        if any(m.training for m in self._modules):  # a callback set a training flag directly
            self._warn_train()
            nn.Module.train(self.model, False)

    def _warn_train(self) -> None:
        if not self._warned_train:
            self._warned_train = True
            log.warning("a callback put qa's copy of the model in training mode; it stays in eval mode (dropout "
                        "off, batch-norm statistics frozen), as deployed")

    def _pre_hook(self, module_name: str, sites: List[Optional[_CallSite]]):
        def hook(module, args):
            k = self._counts.get(module_name, 0)
            self._counts[module_name] = k + 1
            if k >= len(sites):  # more calls than on dummy_input: the last traced call's quantizers
                self._extra_calls.add(module_name)
                k = len(sites) - 1
            site = sites[k]
            self._running.setdefault(module_name, []).append(site)
            if (site is None or not site.inputs or not args or not isinstance(args[0], torch.Tensor)
                    or not args[0].is_floating_point()):
                return None
            quantized = self._activation(site.inputs[0].name, lambda: _to_numpy(args[0]))
            return None if quantized is None else (_from_result(quantized, args[0]),) + tuple(args[1:])
        return hook

    def _post_hook(self, module_name: str):
        def hook(module, args, output):
            running = self._running.get(module_name)
            site = running.pop() if running else None
            if site is None:
                return None
            tensors = output if isinstance(output, (tuple, list)) else (output,)
            result = self._layer_outputs(site.name, tensors, site.outputs, _is_float, _to_numpy, _from_result)
            if isinstance(output, (tuple, list)):
                return type(output)(result)
            return result[0]
        return hook

    def _untraced_hook(self, module_name: str):
        def hook(module, args):
            self._untraced_runs.add(module_name)
        return hook

    @contextlib.contextmanager
    def observing(self, observers: Any) -> Iterator[None]:
        """Within the block, runs stream every quantizer's tensor into its observer; afterwards,
        modules that ran but have no quantizers of their own for that run are warned about."""
        self._extra_calls.clear()
        self._untraced_runs.clear()
        with super().observing(observers):
            yield
        if self._untraced_runs:
            log.warning("module(s) %s ran during calibration but not on dummy_input, so qa has no quantizers for "
                        "them and they stay in float; pass a dummy_input that runs them",
                        ", ".join(sorted(self._untraced_runs)))
        if self._extra_calls:
            log.warning("module(s) %s ran more often in one forward pass than on dummy_input; the extra calls "
                        "share the quantizers of the last call seen on dummy_input",
                        ", ".join(sorted(self._extra_calls)))

    # -- the verbs the engine uses --

    def weights(self) -> Iterator[Tuple[Quantizer, np.ndarray]]:
        """Each parameter quantizer (a shared parameter once) with its float32 values (the folded ones)."""
        for q, _, original in self._params.values():
            yield q, original.detach().float().cpu().numpy()

    def prepare_weight(self, quantizer: Quantizer, values: np.ndarray) -> torch.Tensor:
        """The fake-quantized values as a tensor of the parameter's dtype, device and shape."""
        _, _, original = self._params[quantizer.name]
        q = torch.from_numpy(np.require(np.asarray(values), requirements="C")).to(dtype=original.dtype,
                                                                                   device=original.device)
        return q.reshape(original.shape)

    def _bind_weight(self, name: str, value: Optional[torch.Tensor]) -> None:
        _, param, original = self._params[name]
        param.data = original if value is None else value

    def activate(self, active: ActiveSet) -> None:
        """Run with exactly these quantizers on: parameters swap their data in O(1); the hooks
        quantize the activations ``active`` names. The copy is put back in eval mode (a callback
        may have set a module's ``training`` flag)."""
        nn.Module.train(self.model, False)
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
