"""Linear units (a Conv, ConvTranspose, Gemm or MatMul with a constant weight, a MatMul with its
bias Add) and the batch norms folded into them."""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...folding import fold_batch_norm
from .nodes import FLOAT_TYPES, PREFIX, STANDARD_DOMAINS, attr, count_readers
from .plumbing import consumers_of, readers_of, root_of
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
    ``nn.Linear`` exports and as runtimes execute it); the Add is then absorbed. A MatMul or Gemm
    whose constant is the first operand (``W @ x``) is a unit weighted on W's rows; it takes no
    bias Add and folds no batch norm."""
    readers = count_readers(work.nodes, work.output_names)
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for n in work.nodes:
        for i in set(n.input):
            if i:
                consumers.setdefault(i, []).append(n)
    for node in work.nodes:
        if (node.op_type not in LINEAR or node.domain not in STANDARD_DOMAINS or node.name in work.ignored
                or len(node.input) < 2):
            continue
        slot = _weight_slot(work, node)
        if slot is None:
            continue
        w = work.weight(node.input[slot])
        if node.op_type == "MatMul" and w.ndim < 2:
            continue
        if slot == 1:
            unit = Unit(node, w, _weight_axis(node, w))
        else:
            rows = (1 if attr(node, "transA", 0) else 0) if node.op_type == "Gemm" else w.ndim - 2
            unit = Unit(node, w, rows if w.ndim >= 2 else None, weight_slot=0, foldable=False)
        if node.op_type != "MatMul":
            if len(node.input) > 2 and node.input[2]:
                unit.bias = work.weight(node.input[2])
                unit.foldable = unit.foldable and unit.bias is not None  # else a bias computed at run time
        elif slot == 1:
            _absorb_bias_add(work, unit, readers, consumers.get(node.output[0], []))
        work.units[node.name] = unit


def _weight_slot(work: Work, node: onnx.NodeProto) -> Optional[int]:
    """Where a linear op's constant weight is: 1 (data times weight), 0 (a MatMul or Gemm of a
    constant and data), None (no constant weight). A weight that weight plumbing makes with ops
    qa cannot evaluate is listed in ``work.unquantized``."""
    for w_slot in ((1,) if node.op_type in ("Conv", "ConvTranspose") else (1, 0)):
        w, x = node.input[w_slot], node.input[1 - w_slot]
        if x not in work.runtime or w in work.runtime:
            continue
        if work.weight(w) is not None:
            return w_slot
        if w in work.plumbing and work.types.get(w, TensorProto.FLOAT) in FLOAT_TYPES:  # unknown: a custom op's
            work.unquantized.append(f"{node.op_type} '{node.name}': its weight '{w}' is computed from constants by "
                                    f"ops qa cannot evaluate and stays in float")
        return None
    return None


def _absorb_bias_add(work: Work, unit: Unit, readers: Dict[str, int], next_nodes: List[onnx.NodeProto]) -> None:
    out = unit.node.output[0]
    if (readers.get(out, 0) != 1 or len(next_nodes) != 1 or next_nodes[0].op_type != "Add"
            or next_nodes[0].name in work.ignored or list(next_nodes[0].input).count(out) != 1):
        return
    add = next_nodes[0]
    other = 1 if add.input[0] == out else 0
    bias = work.weight(add.input[other])
    if bias is not None and _bias_shape_ok(bias, unit.weight.shape[-1]):
        unit.bias, unit.bias_node, unit.bias_slot = bias, add, other
        work.absorbed.add(add.name)


def fold_batch_norms(work: Work) -> None:
    """Fold every inference-mode batch norm that alone reads a foldable unit's output into that
    unit (:func:`qa.folding.fold_batch_norm`): the unit then makes the batch norm's output, a unit
    without a bias gets one (a MatMul an Add after it), and the batch norm node goes. A bias that
    comes as an Add of a per-channel constant between a Conv, ConvTranspose or Gemm and the
    batch norm (as some exporters write it) folds too: the Add goes with the batch norm."""
    readers = count_readers(work.nodes, work.output_names)
    consumers = consumers_of(work.nodes)
    producers = {o: n for n in work.nodes for o in n.output if o}
    unit_by_output = {u.out_node.output[0]: u for u in work.units.values()}
    removed = set()
    for bn in list(work.nodes):
        if not _inference_batch_norm(bn, work, readers):
            continue
        x = bn.input[0]
        unit, add, extra = unit_by_output.get(x), None, None
        if unit is None:
            unit, add, extra = _bias_add_before(work, producers.get(x), unit_by_output, readers)
        if unit is None or not unit.foldable or readers.get(x, 0) != 1:
            continue
        op = unit.node.op_type
        if op in ("Gemm", "MatMul") and (work.ranks.get(x) != 2 or unit.weight.ndim != 2):
            continue  # BN's channel axis is 1: it matches the output features only for 2-D outputs
        if op == "ConvTranspose" and attr(unit.node, "group", 1) != 1:
            continue
        reason = _shared(unit, work, consumers)
        if reason is not None:
            work.unfolded.append((bn.name, unit.node.name, reason))
            log.info("%s: batch norm %s is not folded into %s: %s", work.source, bn.name, unit.node.name, reason)
            continue
        if not _fold_values(unit, bn, work, extra):
            continue
        del unit_by_output[unit.out_node.output[0]]
        _rewire(work, unit, bn)
        unit_by_output[bn.output[0]] = unit
        removed.update([bn.name] + ([add.name] if add is not None else []))
        work.folded.append((bn.name, unit.node.name))
    if work.folded:
        work.nodes = [n for n in work.nodes if n.name not in removed]
        log.info("%s: folded %d batch norm(s): %s", work.source, len(work.folded),
                 ", ".join(f"{bn} -> {c}" for bn, c in work.folded))


def _inference_batch_norm(bn: onnx.NodeProto, work: Work, readers: Dict[str, int]) -> bool:
    """A batch norm in inference mode with constant statistics, whose extra outputs nobody reads."""
    return (bn.op_type == "BatchNormalization" and bn.domain in STANDARD_DOMAINS and bn.name not in work.ignored
            and len(bn.input) >= 5 and not attr(bn, "training_mode", 0) and attr(bn, "spatial", 1) == 1
            and not any(readers.get(o, 0) for o in bn.output[1:] if o)
            and all(work.weight(n) is not None for n in bn.input[1:5]))


def _bias_add_before(work: Work, add: Optional[onnx.NodeProto], unit_by_output: Dict[str, Unit],
                     readers: Dict[str, int]) -> Tuple[Optional[Unit], Optional[onnx.NodeProto], Optional[np.ndarray]]:
    """(unit, add, per-channel bias) for ``add`` = Add(output of a Conv, ConvTranspose or Gemm unit
    that only the Add reads, constant); (None, None, None) for anything else."""
    if (add is None or add.op_type != "Add" or add.domain not in STANDARD_DOMAINS or add.name in work.ignored
            or add.name in work.absorbed or len(add.input) != 2 or add.input[0] == add.input[1]):
        return None, None, None
    for slot in (0, 1):
        unit = unit_by_output.get(add.input[slot])
        if (unit is None or unit.node.op_type == "MatMul" or unit.bias_node is not None or unit.weight_axis is None
                or readers.get(add.input[slot], 0) != 1):
            continue
        const = work.weight(add.input[1 - slot])
        channels = unit.weight.shape[unit.weight_axis]
        bias = None if const is None else _channel_bias(const, work.ranks.get(add.input[slot]), channels)
        if bias is not None:
            return unit, add, bias
    return None, None, None


def _channel_bias(const: np.ndarray, rank: Optional[int], channels: int) -> Optional[np.ndarray]:
    """The constant as one value per channel (axis 1 of an output of rank ``rank``), None where
    it is not constant along the other axes once broadcast."""
    if rank is None or const.ndim > rank:
        return None
    if const.size == 1:
        return np.full(channels, const.reshape(()), dtype=const.dtype)
    at = const.ndim - (rank - 1)  # the constant's axis that broadcasts against the output's axis 1
    if at < 0 or const.shape[at] != channels or const.size != channels:
        return None
    return const.reshape(channels)


def _shared(unit: Unit, work: Work, consumers: Dict[str, List[onnx.NodeProto]]) -> Optional[str]:
    """Why the unit's stored weight or bias must keep its values (None: nothing else reads them).
    Folding would give the unit its own copy, splitting a tensor that other nodes read as the same
    one, directly or through weight plumbing such as a Transpose (a tied weight: one quantizer, as
    in torch, where the shared parameter cannot fold)."""
    node = unit.node
    tensors = [("weight", node.input[unit.weight_slot])]
    if unit.bias_node is not None:
        tensors.append(("bias", unit.bias_node.input[unit.bias_slot]))
    elif len(node.input) > 2 and node.input[2]:
        tensors.append(("bias", node.input[2]))
    own = {node.name} | ({unit.bias_node.name} if unit.bias_node is not None else set())
    for what, tensor in tensors:
        root = root_of(work, tensor)[0]
        others, is_output = readers_of(work, root, own, consumers)
        if others:
            return f"its {what} '{root}' is shared with {', '.join(others)}"
        if is_output:
            return f"its {what} '{root}' is also a graph output"
    return None


def _fold_values(unit: Unit, bn: onnx.NodeProto, work: Work, extra: Optional[np.ndarray] = None) -> bool:
    """Fold the batch norm's statistics into the unit's weight and bias (plus ``extra``, a bias
    Add's per-channel constant); False where the channels do not line up (then nothing changes)."""
    gamma, beta, mean, var = (work.weight(n) for n in bn.input[1:5])
    axis = unit.weight_axis
    if axis is None or any(np.ndim(a) != 1 or np.size(a) != unit.weight.shape[axis] for a in (gamma, beta, mean, var)):
        return False
    bias = None
    if unit.bias is not None:  # Gemm computes beta * C: fold that, then beta is 1
        bias = unit.bias.astype(np.float64) * (float(attr(unit.node, "beta", 1.0)) if unit.node.op_type == "Gemm" else 1.0)
        if bias.ndim > 1 and not _bias_shape_ok(bias, gamma.size):
            return False
    if extra is not None:
        if bias is not None and bias.size != gamma.size:
            return False
        bias = extra.astype(np.float64) + (0.0 if bias is None else bias.reshape(-1))
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
