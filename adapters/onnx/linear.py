"""Linear units (a Conv, ConvTranspose, Gemm or MatMul with a constant weight, a MatMul with its
bias Add) and the batch norms folded into them."""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...folding import fold_batch_norm
from .nodes import PREFIX, STANDARD_DOMAINS, attr, count_readers
from .work import Unit, Work

__all__ = ["find_linear_units", "fold_batch_norms"]

log = logging.getLogger("qa.adapters.onnx")

LINEAR = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _bias_shape_ok(bias: np.ndarray, channels: int) -> bool:
    return bias.ndim >= 1 and bias.shape[-1] == channels and all(d == 1 for d in bias.shape[:-1])


def _weight_axis(node: onnx.NodeProto, weight: np.ndarray) -> Optional[int]:
    """The output-channel axis of a linear op's weight; None where it is not one axis."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1 if attr(node, "group", 1) == 1 else None
    if node.op_type == "Gemm":
        return (0 if attr(node, "transB", 0) else 1) if weight.ndim == 2 else None
    return weight.ndim - 1  # MatMul [..., in, out]


def find_linear_units(work: Work) -> None:
    """Find the linear ops whose input is run-time data and whose weight (and bias) are constant.
    A MatMul whose output only an Add of a constant bias reads is one unit with that Add (as
    ``nn.Linear`` exports and as runtimes execute it); the Add is then absorbed."""
    readers = count_readers(work.nodes, work.output_names)
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for n in work.nodes:
        for i in set(n.input):
            if i:
                consumers.setdefault(i, []).append(n)
    for node in work.nodes:
        if (node.op_type not in LINEAR or node.domain not in STANDARD_DOMAINS or node.name in work.ignored
                or len(node.input) < 2 or node.input[0] not in work.runtime or not work.const_float(node.input[1])):
            continue
        w = work.consts.get(node.input[1])
        if node.op_type == "MatMul" and w.ndim < 2:
            continue
        unit = Unit(node, w, _weight_axis(node, w))
        if node.op_type != "MatMul":
            if len(node.input) > 2 and node.input[2]:
                if work.const_float(node.input[2]):
                    unit.bias = work.consts.get(node.input[2])
                else:
                    unit.foldable = False  # a bias computed at run time
        else:
            _absorb_bias_add(work, unit, readers, consumers.get(node.output[0], []))
        work.units[node.name] = unit


def _absorb_bias_add(work: Work, unit: Unit, readers: Dict[str, int], next_nodes: List[onnx.NodeProto]) -> None:
    out = unit.node.output[0]
    if (readers.get(out, 0) != 1 or len(next_nodes) != 1 or next_nodes[0].op_type != "Add"
            or next_nodes[0].name in work.ignored or list(next_nodes[0].input).count(out) != 1):
        return
    add = next_nodes[0]
    other = 1 if add.input[0] == out else 0
    if work.const_float(add.input[other]) and _bias_shape_ok(work.consts.get(add.input[other]), unit.weight.shape[-1]):
        unit.bias, unit.bias_node, unit.bias_slot = work.consts.get(add.input[other]), add, other
        work.absorbed.add(add.name)


def fold_batch_norms(work: Work) -> None:
    """Fold every inference-mode batch norm that alone reads a foldable unit's output into that
    unit (:func:`qa.folding.fold_batch_norm`): the unit then makes the batch norm's output, a unit
    without a bias gets one (a MatMul an Add after it), and the batch norm node goes."""
    readers = count_readers(work.nodes, work.output_names)
    consumers: Dict[str, List[str]] = {}
    for n in work.nodes:
        for i in dict.fromkeys(n.input):
            if i:
                consumers.setdefault(i, []).append(n.name)
    unit_by_output = {u.out_node.output[0]: u for u in work.units.values()}
    removed = set()
    for bn in list(work.nodes):
        if bn.op_type != "BatchNormalization" or bn.name in work.ignored or len(bn.input) < 5:
            continue
        x = bn.input[0]
        unit = unit_by_output.get(x)
        if (unit is None or not unit.foldable or readers.get(x, 0) != 1 or attr(bn, "training_mode", 0)
                or attr(bn, "spatial", 1) != 1 or any(readers.get(o, 0) for o in bn.output[1:] if o)
                or not all(work.const_float(n) for n in bn.input[1:5])):
            continue
        op = unit.node.op_type
        if op in ("Gemm", "MatMul") and (work.ranks.get(x) != 2 or unit.weight.ndim != 2):
            continue  # BN's channel axis is 1: it matches the output features only for 2-D outputs
        if op == "ConvTranspose" and attr(unit.node, "group", 1) != 1:
            continue
        reason = _shared(unit, consumers, work.output_names)
        if reason is not None:
            work.unfolded.append((bn.name, unit.node.name, reason))
            log.info("%s: batch norm %s is not folded into %s: %s", work.source, bn.name, unit.node.name, reason)
            continue
        if not _fold_values(unit, bn, work):
            continue
        del unit_by_output[x]
        _rewire(work, unit, bn)
        unit_by_output[bn.output[0]] = unit
        removed.add(bn.name)
        work.folded.append((bn.name, unit.node.name))
    if work.folded:
        work.nodes = [n for n in work.nodes if n.name not in removed]
        log.info("%s: folded %d batch norm(s): %s", work.source, len(work.folded),
                 ", ".join(f"{bn} -> {c}" for bn, c in work.folded))


def _shared(unit: Unit, consumers: Dict[str, List[str]], outputs: List[str]) -> Optional[str]:
    """Why the unit's stored weight or bias must keep its values (None: nothing else reads them).
    Folding would give the unit its own copy, splitting a tensor that other nodes read as the same
    one (a tied weight: one quantizer, as in torch, where the shared parameter cannot fold)."""
    node = unit.node
    tensors = [("weight", node.input[1])]
    if unit.bias_node is not None:
        tensors.append(("bias", unit.bias_node.input[unit.bias_slot]))
    elif len(node.input) > 2 and node.input[2]:
        tensors.append(("bias", node.input[2]))
    own = {node.name} | ({unit.bias_node.name} if unit.bias_node is not None else set())
    for what, tensor in tensors:
        others = [n for n in consumers.get(tensor, []) if n not in own]
        if others:
            return f"its {what} '{tensor}' is shared with {', '.join(others)}"
        if tensor in outputs:
            return f"its {what} '{tensor}' is also a graph output"
    return None


def _fold_values(unit: Unit, bn: onnx.NodeProto, work: Work) -> bool:
    """Fold the batch norm's statistics into the unit's weight and bias; False where the channels
    do not line up (then nothing changes)."""
    gamma, beta, mean, var = (work.consts.get(n) for n in bn.input[1:5])
    axis = unit.weight_axis
    if axis is None or any(np.ndim(a) != 1 or np.size(a) != unit.weight.shape[axis] for a in (gamma, beta, mean, var)):
        return False
    bias = None
    if unit.bias is not None:  # Gemm computes beta * C: fold that, then beta is 1
        bias = unit.bias.astype(np.float64) * (float(attr(unit.node, "beta", 1.0)) if unit.node.op_type == "Gemm" else 1.0)
        if bias.ndim > 1 and not _bias_shape_ok(bias, gamma.size):
            return False
    unit.folded = True
    unit.weight, new_b = fold_batch_norm(unit.weight, bias, mean=mean, var=var, gamma=gamma, beta=beta,
                                         eps=float(attr(bn, "epsilon", 1e-5)), axis=axis, name=unit.node.name)
    same_size = unit.bias is not None and unit.bias.size == new_b.size
    unit.bias = new_b.reshape(unit.bias.shape) if same_size else new_b
    for a in unit.node.attribute:
        if unit.node.op_type == "Gemm" and a.name == "beta":
            a.f = 1.0
    return True


def _rewire(work: Work, unit: Unit, bn: onnx.NodeProto) -> None:
    """The unit makes the batch norm's output; a unit that had no bias gets an input for one."""
    node, op = unit.node, unit.node.op_type
    unit.out_node.output[0] = bn.output[0]
    bias_input = f"{PREFIX}{node.name}::bias"
    if op == "MatMul" and unit.bias_node is None:  # add the bias as an Add after the MatMul
        mm_out = f"{PREFIX}{node.name}::matmul"
        node.output[0] = mm_out
        add = helper.make_node("Add", [mm_out, bias_input], [bn.output[0]], name=f"{node.name}/bias_add")
        unit.bias_node, unit.bias_slot = add, 1
        work.nodes.insert(work.nodes.index(node) + 1, add)
        work.absorbed.add(add.name)
        work.types[mm_out] = work.types.get(bn.output[0], TensorProto.FLOAT)
    elif op != "MatMul" and len(node.input) < 3:
        node.input.append(bias_input)
    elif op != "MatMul" and not node.input[2]:
        node.input[2] = bias_input
