"""Batch-norm folding in the analysis copy: into leaf modules and into functional ops.

A batch norm folds into the conv/linear that feeds it when it reads exactly that layer's output
and nothing else reads it, for a module (``nn.Conv2d`` followed by ``nn.BatchNorm2d``) and for
a functional op (``F.conv2d(x, self.weight)`` in a custom forward, as model zoos write
"same"-padding convs) alike. Folding rewrites the layer's weight and bias, so they must serve
that one call and nothing else: a weight shared with another layer (tied weights) or read by
another call is never folded, and the refusal is recorded with its reason.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from torch import nn

from ...folding import fold_batch_norm
from .calls import Call, Trace
from .ops import BN, FOLDABLE, fold_axis, foldable_module

__all__ = ["fold_batch_norms", "batch_norm_pairs", "fold_pair", "Pair"]

Pair = Tuple[Call, Call]  # (the layer's call, the batch norm's call)


def _np64(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().double().cpu().numpy()


def _fold_params(weight: torch.Tensor, bias: Optional[torch.Tensor], bn: nn.Module, axis: int,
                 name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """The folded weight and bias (:func:`qa.folding.fold_batch_norm`) as tensors like ``weight``."""
    with torch.no_grad():  # torch's float32 sqrt, as AIMET folds (numpy's differs in the last bit)
        sigma = torch.sqrt(bn.running_var.float() + bn.eps).cpu().numpy() if weight.dtype == torch.float32 else None
    w, b = fold_batch_norm(weight.detach().cpu().numpy(), _np64(bias), mean=_np64(bn.running_mean),
                           var=_np64(bn.running_var), gamma=_np64(bn.weight), beta=_np64(bn.bias), eps=bn.eps,
                           axis=axis, name=name, sigma=sigma)
    return torch.from_numpy(w).to(weight.device), torch.from_numpy(b).to(weight.device)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def fold_batch_norms(model: nn.Module, pairs: Sequence[Tuple[str, str]]) -> None:
    """Fold each (layer, batch norm) pair of modules in place and replace the batch norm by Identity."""
    for layer_name, bn_name in pairs:
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        with torch.no_grad():
            w, b = _fold_params(layer.weight, layer.bias, bn, fold_axis(layer), layer_name)
            layer.weight.copy_(w)
            if layer.bias is None:
                layer.bias = nn.Parameter(b.to(layer.weight.dtype))
            else:
                layer.bias.copy_(b)
        _set_submodule(model, bn_name, nn.Identity())


def _batch_norm_of(model: nn.Module, bn: Call) -> Any:
    return bn.bn if bn.kind == "op" else model.get_submodule(bn.module)


def fold_pair(model: nn.Module, src: Call, bn: Call, leaves: Dict[str, nn.Module]) -> Optional[nn.Parameter]:
    """Fold batch norm ``bn`` (a module, replaced by Identity, or an op, which the interceptor then
    skips) into ``src`` (a leaf module or a functional op) in place. Returns the new bias of an op
    called with ``bias=None`` (the interceptor passes it to the op), else None."""
    stats = _batch_norm_of(model, bn)
    if src.kind == "module":
        layer = leaves[src.module]
        weight, bias, axis, name = layer.weight, layer.bias, fold_axis(layer), src.module
    else:
        params = {role: p for role, p, _ in src.params}
        weight, bias, axis, name = params["weight"], params.get("bias"), FOLDABLE[src.info.name], src.name
    new_bias = None
    with torch.no_grad():
        w, b = _fold_params(weight, bias, stats, axis, name)
        weight.copy_(w)
        if bias is not None:
            bias.copy_(b)
        elif src.kind == "module":
            layer.bias = nn.Parameter(b.to(weight.dtype))
        else:
            new_bias = nn.Parameter(b.to(weight.dtype), requires_grad=False)
    if bn.kind == "module":
        _set_submodule(model, bn.module, nn.Identity())
    return new_bias


def _readers(trace: Trace, leaves: Dict[str, nn.Module]) -> Dict[int, List[str]]:
    """id(parameter) -> who computes with it: the leaf modules holding it (by module name) and the
    op layers reading it, each once. (A container that only holds a parameter for the ops in its
    forward, as a "same"-padding conv does, is not a reader of its own.)"""
    readers: Dict[int, List[str]] = {}

    def add(p: nn.Parameter, name: str) -> None:
        names = readers.setdefault(id(p), [])
        if name not in names:
            names.append(name)

    for name, module in leaves.items():
        for p in module._parameters.values():
            if p is not None:
                add(p, name)
    for call in trace.order:
        if call.kind == "op":
            for _, p, _ in call.params:
                add(p, call.name or call.module)
    return readers


def _why_not(trace: Trace, src: Call, bn: Call, leaves: Dict[str, nn.Module],
             readers: Dict[int, List[str]]) -> Optional[str]:
    """Why folding ``bn`` into ``src`` would change more than the pair (None: it would not)."""
    if bn.kind == "module" and trace.calls[bn.module] != 1:
        return f"{bn.module} runs {trace.calls[bn.module]} times in a forward pass"
    if src.kind == "module":
        if trace.calls[src.module] != 1:
            return f"{src.module} runs {trace.calls[src.module]} times in a forward pass and one weight serves every call"
        params = [(r, p) for r, p in leaves[src.module]._parameters.items() if p is not None and r in ("weight", "bias")]
    else:
        if any(not itself for _, _, itself in src.params):
            return "its weight reaches it through a view"
        params = [(r, p) for r, p, _ in src.params]
    own = src.module if src.kind == "module" else src.name
    for role, p in params:
        others = [n for n in readers.get(id(p), []) if n != own]
        if others:
            return f"its {role} is shared with {', '.join(others)}"
    return None


def _foldable(call: Call, leaves: Dict[str, nn.Module]) -> bool:
    if call.kind == "module":
        return foldable_module(leaves[call.module])
    if call.info is None or call.info.name not in FOLDABLE or not call.dynamic:
        return False
    roles = {r for r, _, _ in call.params}
    return "weight" in roles and (not call.info.name.startswith("conv_transpose") or call.groups == 1)


def batch_norm_pairs(trace: Trace, leaves: Dict[str, nn.Module]
                     ) -> Tuple[List[Pair], List[Tuple[str, str, str]]]:
    """(layer call, bn call) pairs where the bn reads exactly the layer's output and nothing else
    reads it, and (bn, layer, reason) for such pairs that must not fold."""
    producer: Dict[Tuple[int, int], Call] = {}
    readers: Dict[Tuple[int, int], Set[int]] = {}
    for i, call in enumerate(trace.order):
        for k in call.outputs:
            producer.setdefault(k, call)
        for k in call.inputs:
            readers.setdefault(k, set()).add(i)
    param_readers = _readers(trace, leaves)
    pairs: List[Pair] = []
    refused: List[Tuple[str, str, str]] = []
    for i, call in enumerate(trace.order):
        if not _is_batch_norm(call, leaves):
            continue
        if (call.kind == "module" and len(call.inputs) != 1) or not call.inputs or call.inputs[0] not in producer:
            continue
        src, k = producer[call.inputs[0]], call.inputs[0]
        if (not _foldable(src, leaves) or readers.get(k) != {i} or k in trace.model_outputs
                or len(src.outputs) != 1):
            continue
        reason = _why_not(trace, src, call, leaves, param_readers)
        src_name = src.module if src.kind == "module" else src.name
        bn_name = call.module if call.kind == "module" else call.name
        if reason is None:
            pairs.append((src, call))
        elif (bn_name, src_name, reason) not in refused:
            refused.append((bn_name, src_name, reason))
    return pairs, refused


def _is_batch_norm(call: Call, leaves: Dict[str, nn.Module]) -> bool:
    if call.kind == "op":
        return call.bn is not None and call.dynamic
    return isinstance(leaves[call.module], BN) and leaves[call.module].running_mean is not None
