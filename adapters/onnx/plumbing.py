"""Weight plumbing between a stored tensor and the layers that read it: the constant-only data
movement (Transpose, Cast, Reshape, Identity, ...) that exporters put there, and so which stored
tensor a parameter really is (a tied weight: one tensor, several layers, possibly through
different plumbing such as an embedding table and its transpose in the output MatMul)."""

from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

import onnx

from .nodes import FLOAT_TYPES, STANDARD_DOMAINS, attr
from .work import Work

__all__ = ["MOVEMENT", "moved_from", "root_of", "axis_at_root", "consumers_of", "readers_of"]

# Ops whose output holds all the values of their one data input (input 0), rearranged, converted
# or repeated; their other inputs are integer constants (shapes, axes). A Slice is not one: the
# parts of a packed tensor (a fused QKV weight sliced for three MatMuls) are three weights, each
# quantized on its own as in a deployed graph, where constant folding makes them three tensors.
MOVEMENT = frozenset({"Identity", "Transpose", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand"})


def moved_from(work: Work, node: Optional[onnx.NodeProto]) -> Optional[str]:
    """The tensor a constant-only data-movement node moves, None for any other node."""
    if (node is None or node.op_type not in MOVEMENT or node.domain not in STANDARD_DOMAINS
            or node.name not in work.constant_nodes or len(node.output) != 1 or not node.input or not node.input[0]):
        return None
    if any(i and (i not in work.consts or work.consts.elem_type(i) in FLOAT_TYPES) for i in node.input[1:]):
        return None
    return node.input[0]


def root_of(work: Work, tensor: str) -> Tuple[str, List[onnx.NodeProto]]:
    """The stored tensor that ``tensor`` moves (itself when no data movement makes it) and the
    movement nodes between them, from the root on."""
    chain: List[onnx.NodeProto] = []
    while True:
        node = work.plumbing.get(tensor)
        src = moved_from(work, node)
        if src is None:
            return tensor, chain[::-1]
        chain.append(node)  # type: ignore[arg-type]
        tensor = src


def axis_at_root(chain: List[onnx.NodeProto], axis: Optional[int]) -> Optional[int]:
    """The root's axis that ``axis`` of the chain's output is, None where the movement is not a
    permutation of axes (Reshape, Slice, ...)."""
    for node in reversed(chain):
        if axis is None:
            return None
        if node.op_type == "Transpose":
            perm = attr(node, "perm")
            if perm is None:
                return None  # reversed axes: the rank is not known here
            axis = int(perm[axis])
        elif node.op_type not in ("Identity", "Cast"):
            return None
    return axis


def consumers_of(nodes: List[onnx.NodeProto]) -> Dict[str, List[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it (each once)."""
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for n in nodes:
        for i in dict.fromkeys(n.input):
            if i:
                consumers.setdefault(i, []).append(n)
    return consumers


def readers_of(work: Work, root: str, skip: Set[str],
               consumers: Optional[Dict[str, List[onnx.NodeProto]]] = None) -> Tuple[List[str], bool]:
    """The nodes (not in ``skip``) that read ``root`` or a tensor moved from it, other than the
    movement nodes themselves, and whether one of those tensors is a graph output."""
    if consumers is None:
        consumers = consumers_of(work.nodes)
    outputs = set(work.output_names)
    found: List[str] = []
    is_output = False
    frontier = [root]
    while frontier:
        tensor = frontier.pop()
        is_output = is_output or tensor in outputs
        for n in consumers.get(tensor, []):
            if moved_from(work, n) == tensor:
                frontier.append(n.output[0])
            elif n.name not in skip and n.name not in found:
                found.append(n.name)
    return found, is_output
