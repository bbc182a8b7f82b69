"""The graph passes that turn the user's model into qa's analysis copy, and ``prepare`` that runs them.

Each pass does one job on a :class:`~.work.Work` (the node copies and what earlier passes
found), in this order (:data:`PASSES`, then pruning):

1. :func:`name_nodes`: unnamed nodes become ``<OpType>_<index>`` (names are AIMET's keys).
2. :func:`sort_nodes`: a stable topological order (the file's order where it is valid).
3. :func:`classify_constants`: which tensors depend on the model inputs, which nodes only do
   weight plumbing, and the values of constants (onnx's reference evaluator).
4. :func:`infer_types`: element types and ranks (onnx shape inference, onnxruntime for the rest).
5. :func:`~.linear.find_linear_units`: linear ops with constant weights, MatMul + Add paired.
6. :func:`~.linear.fold_batch_norms`: batch norms folded into the units before them.
7. :func:`~.quantizers.insert_quantizers`: layers, parameters as graph inputs, quantizer points.
8. :func:`prune_dead_nodes`: weight plumbing nobody reads any more, and unused initializers.

Library passes were weighed against each of these: onnx_ir's ``TopologicalSortPass`` orders an
invalid file differently (from the sinks, latest first), its ``NameFixPass`` names nodes
``node_<OpType>_<n>`` and its ``RemoveUnusedNodesPass`` would also drop computing nodes whose
output nobody reads (which are layers here); all three would change AIMET's keys or the layer
order, so the small versions here stay. Constant evaluation uses ``onnx.reference``.
"""

from __future__ import annotations

import heapq
import logging
from typing import Dict, Iterable, List, Optional, Set, Tuple

import onnx
from onnx import TensorProto, helper

from ...errors import QAValueError
from ...graph import QuantGraph
from .._base import check_ignored
from .linear import find_linear_units, fold_batch_norms
from .load import without_graph
from .nodes import CONTROL_FLOW, count_readers, subgraph_reads
from .quantizers import insert_quantizers
from .session import probe_types
from .work import Prepared, Work

__all__ = ["PASSES", "prepare", "name_nodes", "sort_nodes", "classify_constants", "infer_types",
           "prune_dead_nodes"]

log = logging.getLogger("qa.adapters.onnx")


def prepare(model: onnx.ModelProto, source: str, ignored: Iterable[str] = ()) -> Tuple[QuantGraph, Prepared]:
    """Run the passes on a copy of ``model``'s nodes: the layer graph and the analysis copy."""
    work = Work.start(model, source, ignored)
    for step in PASSES:
        step(work)
        if step is name_nodes:
            check_ignored(work.ignored, work.names, f"a node of {source}")
    initializers = prune_dead_nodes(work)
    graph = QuantGraph(work.layers)
    graph.unquantized_ops = work.unquantized
    graph.folded_batch_norms = work.folded
    graph.unfolded_batch_norms = work.unfolded
    prepared = Prepared(work.nodes, initializers, list(model.graph.sparse_initializer), work.inputs,
                        list(model.graph.output), work.params, work.points, work.types)
    return graph, prepared


def name_nodes(work: Work) -> None:
    """Copy the model's nodes into ``work.nodes`` (the user's model is only read) and name them:
    an unnamed node becomes ``<OpType>_<index in the graph>``, a repeated name gets a ``_<k>``
    suffix, so that every name is a key."""
    work.nodes = []
    for n in work.model.graph.node:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        work.nodes.append(c)
    named = {n.name for n in work.nodes if n.name}
    used: Set[str] = set()
    for i, node in enumerate(work.nodes):
        base = name = node.name or f"{node.op_type}_{i}"
        k = 1
        while name in used or (not node.name and name in named):
            name = f"{base}_{k}"
            k += 1
        node.name = name
        used.add(name)
    work.names = [n.name for n in work.nodes]


def sort_nodes(work: Work) -> None:
    """Order ``work.nodes`` topologically, stably: the file's order where it is valid already,
    else the earliest ready node first. A node with a subgraph comes after what the subgraph
    reads. Raises QAValueError for a read of an undefined tensor or a cycle."""
    nodes = work.nodes
    available = {vi.name for vi in work.inputs} | work.initializer_names | {""}
    producer = {o: i for i, node in enumerate(nodes) for o in node.output if o}
    users: Dict[int, List[int]] = {}
    pending: List[int] = []
    for i, node in enumerate(nodes):
        deps = set()
        for name in set(i_ for i_ in node.input if i_) | (subgraph_reads(node) & producer.keys()):
            if name in producer:
                if producer[name] != i:
                    deps.add(producer[name])
            elif name not in available and name in node.input:
                raise QAValueError(f"{work.source}: node '{node.name or node.op_type}' reads '{name}', which "
                                   f"nothing defines (malformed or truncated model)")
        pending.append(len(deps))
        for j in deps:
            users.setdefault(j, []).append(i)
    ready = [i for i, n in enumerate(pending) if n == 0]
    heapq.heapify(ready)
    order: List[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in users.get(i, []):
            pending[j] -= 1
            if pending[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise QAValueError(f"{work.source}: the graph has a cycle")
    work.nodes = [nodes[i] for i in order]


def classify_constants(work: Work) -> None:
    """Split tensors into run-time ones (they depend on a model input, or on a node without
    inputs such as RandomNormal) and constants, record the values of constants that Constant
    nodes and shape ops make, and the nodes that compute on constants only (weight plumbing,
    ``work.plumbing`` by output: what ``Work.weight`` evaluates on demand)."""
    consts = work.consts
    runtime = work.runtime
    runtime.update(vi.name for vi in work.inputs)
    for node in work.nodes:
        reads = [i for i in node.input if i] + sorted(subgraph_reads(node) & runtime)
        if any(i in runtime for i in reads):
            runtime.update(o for o in node.output if o)
        elif node.op_type in CONTROL_FLOW or not consts.evaluate(node):
            if not reads and node.op_type != "Constant":
                runtime.update(o for o in node.output if o)  # e.g. RandomNormal: runs every time
            else:
                work.constant_nodes.add(node.name)
        else:
            work.constant_nodes.add(node.name)
        if node.name in work.constant_nodes:
            work.plumbing.update((o, node) for o in node.output if o)


def infer_types(work: Work) -> None:
    """Element type and rank of every tensor onnx's shape inference can tell, the type of every
    evaluated constant, and (asked of onnxruntime) the types of run-time tensors still unknown,
    such as custom ops' outputs."""
    work.types, work.ranks = _shape_inference(work.model, work.source)
    for name in work.consts.arrays:
        t = work.consts.elem_type(name)
        if t:
            work.types.setdefault(name, t)
    untyped = [o for n in work.nodes if n.name not in work.constant_nodes for o in n.output
               if o and o not in work.types]
    if untyped:
        work.types.update(probe_types(work.model, untyped, work.source))


def _shape_inference(model: onnx.ModelProto, source: str) -> Tuple[Dict[str, int], Dict[str, Optional[int]]]:
    slim = without_graph(model)
    g, src = slim.graph, model.graph
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    declared = {i.name for i in src.input}
    for t in src.initializer:  # big values are not needed to infer shapes: declare them as inputs instead
        if t.ByteSize() <= (1 << 20):
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(slim, strict_mode=False)
    except Exception as e:  # custom ops, or a model shape inference cannot follow
        log.debug("%s: onnx shape inference failed (%s); asking onnxruntime", source, e)
        inferred = slim
    types: Dict[str, int] = {}
    ranks: Dict[str, Optional[int]] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.elem_type:
            types[vi.name] = tt.elem_type
            ranks[vi.name] = len(tt.shape.dim) if tt.HasField("shape") else None
    for t in model.graph.initializer:
        types[t.name] = t.data_type
        ranks[t.name] = len(t.dims)
    return types, ranks


def prune_dead_nodes(work: Work) -> List[TensorProto]:
    """Drop the weight plumbing that fed only the parameters now rewired to graph inputs (until
    nothing more goes), and return copies of the initializers something still reads."""
    outputs = work.output_names
    keep = list(work.nodes)
    while True:
        readers = count_readers(keep, outputs)
        dead = {n.name for n in keep
                if n.name in work.constant_nodes and not any(readers.get(o, 0) for o in n.output if o)}
        if not dead:
            break
        keep = [n for n in keep if n.name not in dead]
    work.nodes = keep
    used = {i for n in keep for i in n.input} | {x for n in keep for x in subgraph_reads(n)} | set(outputs)
    initializers = []
    for t in work.model.graph.initializer:
        if t.name in used:
            kept = TensorProto()
            kept.CopyFrom(t)
            initializers.append(kept)
    return initializers


# The passes that build the layer graph, in order; prune_dead_nodes then finishes the copy.
PASSES = (name_nodes, sort_nodes, classify_constants, infer_types, find_linear_units, fold_batch_norms,
          insert_quantizers)
