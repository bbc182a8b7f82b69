"""Walking ONNX graphs: subgraphs, every node, what a node's subgraphs read, who reads a tensor."""

from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, Sequence, Set

import onnx
from onnx import TensorProto, helper

STANDARD_DOMAINS = ("", "ai.onnx")
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE})
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})  # their subgraphs stay in float
PREFIX = "qa::"  # every tensor, node and graph input qa adds starts with this


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of a node's attribute, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held in a node's attributes (If branches, Loop and Scan bodies)."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of a graph and, recursively, of its subgraphs."""
    for node in graph.node:
        yield node
        for g in subgraphs(node):
            yield from all_nodes(g)


def subgraph_reads(node: onnx.NodeProto) -> Set[str]:
    """Names a node's subgraphs read (a superset of what they take from the outer scope)."""
    names: Set[str] = set()
    for g in subgraphs(node):
        for n in all_nodes(g):
            names.update(i for i in n.input if i)
        names.update(o.name for o in g.output)
    return names


def count_readers(nodes: Sequence[onnx.NodeProto], outputs: Iterable[str]) -> Dict[str, int]:
    """How many times each tensor is read: by node inputs, by subgraphs, and as a graph output."""
    readers: Dict[str, int] = {}
    for node in nodes:
        for i in node.input:
            if i:
                readers[i] = readers.get(i, 0) + 1
        for name in subgraph_reads(node):
            readers[name] = readers.get(name, 0) + 1
    for name in outputs:
        readers[name] = readers.get(name, 0) + 1  # a graph output is read by the user
    return readers
