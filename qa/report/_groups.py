"""Layers grouped by module: the blocks of a large model (``encoder.layer.3``), from the layer names alone.

A layer name is a module path, optionally followed by op parts: ``encoder.layer.3.attention.self.query``
and ``encoder.layer.3/add`` (PyTorch), ``/encoder/layer.3/attention/self/MatMul_1`` (ONNX),
``transformer_layer_3/self_attention/query`` (Keras nested layers). Its components are the parts
between ``.`` and ``/``; a name with neither (``conv2_block1_1_conv``, Keras applications) is split
at ``_`` instead. The components form a tree; a group is a subtree cut at a sensible depth:

* the root is always split; a subtree of more than ``MAX_GROUP`` layers is split;
* so is one of more than ``SPLIT_FROM`` layers with at least two children of ``MIN_CHILD`` layers or
  more (``encoder`` with its blocks ``encoder.layer.0``, ``encoder.layer.1``, ...), not a block whose
  one big child is its attention;
* a group runs (nearly) contiguously in execution order: one whose layers are scattered
  (``conv2d``, ``conv2d_1``, ... between other layers) is split further or left as single layers;
* names split at ``_`` never group on a bare count (``conv2d``, ``conv2d_1``, ``conv2d_2``: Keras's
  names for layers of one type, not a module), only on a shared block (``conv2_block1_...``).

Small models (``GROUP_FROM`` layers or fewer) are not grouped at all, and neither is a model where
no group of two or more layers comes out. Pure Python: no names are interpreted beyond splitting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

GROUP_FROM = 40  # more layers than this: grouped (at most this many: the table looks as it always did)
MAX_GROUP = 64  # a subtree of more layers is always split
SPLIT_FROM = 24  # a subtree of more layers is split when it has two or more children ...
MIN_CHILD = 4  # ... of at least this many layers
SPREAD = 1.5  # a group's layers span at most this many times their number of execution positions

_DOTTED = re.compile(r"[^./]+")
_UNDERSCORED = re.compile(r"[^_]+")


def components(name: str) -> List[Tuple[str, int]]:
    """The module-path components of a layer name, each with the offset where it ends in the name.

    Example:
        >>> [c for c, _ in components("encoder.layer.3.attention.self/matmul_1")]
        ['encoder', 'layer', '3', 'attention', 'self', 'matmul_1']
        >>> [c for c, _ in components("/encoder/layer.3/attention/self/MatMul_1")]
        ['encoder', 'layer', '3', 'attention', 'self', 'MatMul_1']
        >>> [c for c, _ in components("conv2_block1_1_conv")]
        ['conv2', 'block1', '1', 'conv']
    """
    name = str(name)
    pattern = _DOTTED if ("." in name or "/" in name) else _UNDERSCORED
    return [(m.group(), m.end()) for m in pattern.finditer(name)]


@dataclass
class Block:
    """Consecutive rows of a layer table: a group of layers of one module, or one layer on its own."""

    members: List[int]  # positions in the layer list, execution order
    label: Optional[str] = None  # the module prefix as it is written in the names; None: one layer alone
    depth: int = 0  # how many components the prefix has

    @property
    def grouped(self) -> bool:
        return self.label is not None

    def rest(self, name: str) -> str:
        """A member's name without the group's prefix (and the separator after it)."""
        if self.label is None or not name.startswith(self.label):
            return name
        rest = name[len(self.label):]
        return rest if rest else name


@dataclass
class _Node:
    members: List[int] = field(default_factory=list)
    children: Dict[str, "_Node"] = field(default_factory=dict)
    own: List[int] = field(default_factory=list)  # layers whose path ends here


def _contiguous(members: List[int], position: Dict[int, int]) -> bool:
    spots = sorted(position[m] for m in members)
    return spots[-1] - spots[0] + 1 <= SPREAD * len(members)


def group_layers(names: Sequence[str], *, group_from: int = GROUP_FROM) -> Optional[List[Block]]:
    """The blocks of a layer table, in execution order (a block sits where its first layer runs);
    None when the layers are not worth grouping (``group_from`` or fewer, or no group comes out).

    Args:
        names: the layer names in execution order.
        group_from: group only more layers than this.

    Example:
        >>> names = ["embed"] + [f"encoder.layer.{i}.{op}" for i in range(3) for op in "abcdefghijklmno"]
        >>> [(b.label, len(b.members)) for b in group_layers(names, group_from=10)]
        [(None, 1), ('encoder.layer.0', 15), ('encoder.layer.1', 15), ('encoder.layer.2', 15)]
    """
    if len(names) <= group_from:
        return None
    paths = [components(n) for n in names]
    underscored = ["." not in str(n) and "/" not in str(n) for n in names]
    root = _Node(members=list(range(len(names))))
    for i, path in enumerate(paths):
        node = root
        for comp, _ in path:
            node = node.children.setdefault(comp, _Node())
            node.members.append(i)
        node.own.append(i)
    position = {i: i for i in range(len(names))}
    blocks: List[Block] = []

    def split(node: _Node, depth: int) -> bool:
        if depth == 0:
            return True
        n = len(node.members)
        if n > MAX_GROUP:
            return True
        while len(node.children) == 1 and not node.own:  # encoder -> encoder.layer -> its blocks
            node = next(iter(node.children.values()))
        big = sum(1 for c in node.children.values() if len(c.members) >= MIN_CHILD)
        return n > SPLIT_FROM and big >= 2

    def visit(node: _Node, depth: int) -> None:
        members = node.members
        if depth > 0 and len(members) >= 2 and not split(node, depth) and _contiguous(members, position):
            first = members[0]
            label = names[first][:paths[first][depth - 1][1]]
            blocks.append(Block(sorted(members), label, depth))
            return
        if depth > 0 and len(members) == 1:
            blocks.append(Block(list(members)))
            return
        children = list(node.children.values())
        if not children or all(len(c.members) == 1 and not c.children for c in children):
            # nothing under it to split into (a flat list of leaves): one group if it can be one
            counted = all(underscored[m] for m in members) and all(k.isdigit() for k in node.children)
            if depth > 0 and len(members) >= 2 and not counted and _contiguous(members, position):
                first = members[0]
                blocks.append(Block(sorted(members), names[first][:paths[first][depth - 1][1]], depth))
            else:
                blocks.extend(Block([m]) for m in members)
            return
        blocks.extend(Block([m]) for m in node.own)
        for child in children:
            visit(child, depth + 1)

    visit(root, 0)
    if not any(b.grouped and len(b.members) >= 2 for b in blocks) or \
            (len(blocks) == 1 and blocks[0].grouped):
        return None
    blocks.sort(key=lambda b: b.members[0])
    return blocks
