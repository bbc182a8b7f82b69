"""Layers and their quantizers: parameters become graph inputs, activations get quantizer points."""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import helper

from ...graph import INPUT, OUTPUT, PARAM, Layer, Quantizer
from .nodes import CONTROL_FLOW, PREFIX, STANDARD_DOMAINS, attr
from .plumbing import axis_at_root, root_of
from .work import Param, Point, Unit, Work

__all__ = ["insert_quantizers"]


def insert_quantizers(work: Work) -> None:
    """Make a layer of every node that computes on run-time data and has a float output (a unit
    with its absorbed Add is one layer), with quantizers named as AIMET names them: each constant
    parameter becomes a graph input, each float model input the node reads gets an input
    quantizer point, each float output an output quantizer point. Control-flow nodes and their
    subgraphs stay in float; ignored nodes are no layers. Pass-through nodes (Identity, Dropout
    in inference) are no layers either: they get no quantizers, whatever the config, and layers
    that read their outputs read what they pass on (the model input, the layer before).

    A constant tensor that several layers read as a parameter (a tied weight) is one graph input
    and one quantizer, named after the first layer, listed by every layer that reads it; other
    run-time nodes that read it read that graph input too, so that it is one tensor everywhere
    (as a shared ``nn.Parameter`` is in torch). That holds through weight plumbing: an embedding
    table that one layer reads as stored and another through a Transpose (a tied LM head) is one
    quantizer on the stored table, and the Transpose runs on its (quantized) values."""
    _Inserter(work).run()


class _Spec(NamedTuple):
    """A parameter of a layer: ``node.input[slot]``, its values and channel axis; ``as_stored``:
    the values are the tensor's own (not folded), so layers reading the same tensor share it."""

    name: str  # the quantizer's suffix: weight, bias, weight_r
    node: onnx.NodeProto
    slot: int
    values: np.ndarray
    axis: Optional[int]
    as_stored: bool


class _Inserter:
    def __init__(self, work: Work) -> None:
        self.work = work
        self.input_names = {vi.name for vi in work.inputs}
        self.outputs = set(work.output_names)  # and what pass-through nodes hand on to them
        for node in reversed(work.nodes):
            if _passes_through(node, work) and node.output[0] in self.outputs:
                self.outputs.add(node.input[0])
        self.taken = {o for n in work.nodes for o in n.output} | self.input_names | work.initializer_names
        self.producer_layer: Dict[str, str] = {}
        self.alias: Dict[str, str] = {}  # output of a pass-through node -> the tensor it passes on
        self.index = {n.name: i for i, n in enumerate(work.nodes)}
        self.shared: Dict[str, Tuple[Param, Quantizer]] = {}  # constant tensor -> its parameter
        self.tied: Set[str] = set()  # stored tensors several layers read through different plumbing

    def run(self) -> None:
        work = self.work
        todo: List[Tuple[onnx.NodeProto, Optional[Unit]]] = []
        for node in work.nodes:
            if node.name in work.constant_nodes or node.name in work.absorbed:
                continue
            if node.op_type in CONTROL_FLOW:
                work.unquantized.append(f"{node.op_type} '{node.name}' (with its subgraphs)")
                continue
            unit = work.units.get(node.name)
            out_node = unit.out_node if unit is not None else node
            if _passes_through(node, work):
                todo.append((node, None))
            elif node.name not in work.ignored and any(o and work.is_float(o) for o in out_node.output):
                todo.append((node, unit))
        specs = {node.name: self.specs(node, unit) for node, unit in todo if not _passes_through(node, work)}
        self.tied = self.ties([s for node_specs in specs.values() for s in node_specs])
        for node, unit in todo:
            if node.name not in specs:
                self.pass_through(node)
                continue
            layer = self.layer(node, unit)
            for spec in specs[node.name]:
                self.param(layer, spec)
            self.input_points(layer, node)
            self.output_points(layer, node, unit.out_node if unit is not None else node)
            self.note_float_constants(node)
            work.layers.append(layer)
        for node in work.nodes:  # other reads of a parameter read its graph input (one tensor)
            constant = node.name in work.constant_nodes
            for slot, name in enumerate(node.input):
                if name in self.shared and (not constant or name in self.tied):
                    node.input[slot] = self.shared[name][0].input

    def fresh(self, name: str) -> str:
        """A tensor name no other tensor of the graph uses (suffixed with _ until free)."""
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name

    def specs(self, node: onnx.NodeProto, unit: Optional[Unit]) -> List[_Spec]:
        if unit is not None:
            out = [_Spec("weight", node, unit.weight_slot, unit.weight, unit.weight_axis, not unit.folded)]
            if unit.bias is not None:
                out.append(_Spec("bias", unit.out_node, unit.bias_slot, unit.bias, None, not unit.folded))
            return out
        out = []
        for pname, slot, axis in _param_slots(node, self.work):
            values = self.work.weight(node.input[slot]) if slot < len(node.input) else None
            if values is not None:
                out.append(_Spec(pname, node, slot, values, axis, True))
        return out

    def ties(self, specs: List[_Spec]) -> Set[str]:
        """Stored tensors that layers read as parameters through different plumbing."""
        seen: Dict[str, Set[str]] = {}
        for s in specs:
            if s.as_stored:
                tensor = s.node.input[s.slot]
                seen.setdefault(root_of(self.work, tensor)[0], set()).add(tensor)
        return {root for root, tensors in seen.items() if len(tensors) > 1}

    def pass_through(self, node: onnx.NodeProto) -> None:
        src = node.input[0]
        self.alias[node.output[0]] = self.alias.get(src, src)
        if src in self.producer_layer:
            self.producer_layer[node.output[0]] = self.producer_layer[src]

    def layer(self, node: onnx.NodeProto, unit: Optional[Unit]) -> Layer:
        type_name = node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}.{node.op_type}"
        if (unit is not None and unit.bias_node is not None and unit.bias_node.name in self.work.absorbed
                and node.op_type == "MatMul"):
            type_name += "+Add"
        reads = [i for i in node.input if i]
        inputs = {self.producer_layer[i] for i in reads if i in self.producer_layer} - {node.name}
        return Layer(name=node.name, op_type=node.op_type, type_name=type_name,
                     inputs=sorted(inputs, key=lambda n: self.index[n]),
                     model_input=any(self.alias.get(i, i) in self.input_names for i in reads))

    def param(self, layer: Layer, spec: _Spec) -> None:
        """Make the parameter at ``spec.node.input[spec.slot]`` a graph input with a quantizer, or
        list the quantizer of the tensor's earlier reader. A tied tensor read through plumbing
        stays read through it: the plumbing reads the graph input (see ``run``)."""
        node, slot, values, axis = spec.node, spec.slot, spec.values, spec.axis
        tensor = node.input[slot] if spec.as_stored else None
        key = tensor
        if tensor is not None:
            root, chain = root_of(self.work, tensor)
            if root in self.tied:
                key = root
                if chain:
                    values, axis = self.work.consts.get(root), axis_at_root(chain, axis)
        if key is not None and key in self.shared:
            param, q = self.shared[key]
            if key == tensor:
                node.input[slot] = param.input
            layer.quantizers.append(q)
            return
        qname = f"{layer.name}_{spec.name}"
        graph_input = self.fresh(f"{PREFIX}{qname}")
        values = np.require(values, requirements="C")  # a 0-d parameter stays 0-d
        if key == tensor:
            node.input[slot] = graph_input
        param = Param(qname, graph_input, values, helper.np_dtype_to_tensor_dtype(values.dtype))
        self.work.params[qname] = param
        q = Quantizer(name=qname, layer=layer.name, kind=PARAM, param=_PARAM_KIND.get(spec.name, spec.name),
                      shape=tuple(values.shape), axis=axis)
        layer.quantizers.append(q)
        if key is not None:
            self.shared[key] = (param, q)

    def point(self, qname: str, src: str, dst: str, elem: int, node: str, slot: int, is_input: bool) -> None:
        names = tuple(self.fresh(f"{PREFIX}{qname}::{suffix}") for suffix in ("inv", "scale", "lo", "hi", "on"))
        self.work.points.append(Point(qname, src, dst, elem, names, node, slot, is_input))  # type: ignore[arg-type]

    def input_points(self, layer: Layer, node: onnx.NodeProto) -> None:
        """Model inputs read directly (or through pass-through nodes) get an input quantizer."""
        for slot, name in enumerate(node.input):
            src = self.alias.get(name, name)
            if src in self.input_names and self.work.is_float(src):
                qname = f"{node.name}_input_{slot}"
                dst = self.fresh(f"{PREFIX}{qname}")
                node.input[slot] = dst
                layer.quantizers.append(Quantizer(name=qname, layer=layer.name, kind=INPUT, index=slot))
                self.point(qname, src, dst, self.work.types[src], node.name, slot, True)

    def output_points(self, layer: Layer, node: onnx.NodeProto, out_node: onnx.NodeProto) -> None:
        """Every float output gets an output quantizer (data movement too: the config decides)."""
        outs = list(out_node.output)  # before they are rewired to the quantizers' raw inputs
        for i, out in enumerate(outs):
            if not out:
                continue
            self.producer_layer[out] = layer.name
            if not self.work.is_float(out):
                continue
            qname = f"{node.name}_output_{i}"
            raw = self.fresh(f"{PREFIX}{qname}::raw")
            out_node.output[i] = raw
            layer.quantizers.append(Quantizer(name=qname, layer=layer.name, kind=OUTPUT, index=i))
            self.point(qname, raw, out, self.work.types[out], out_node.name, i, False)
        layer.model_output = any(o in self.outputs for o in outs)

    def note_float_constants(self, node: onnx.NodeProto) -> None:
        """List the constant float inputs of a layer that no parameter quantizer covers: every one
        of a custom-domain op (its weights: qa does not know its slots), an LSTM's peepholes."""
        if node.domain not in STANDARD_DOMAINS:
            slots, what = list(range(len(node.input))), f"{node.domain}.{node.op_type}"
        elif node.op_type == "LSTM":
            slots, what = [7], "LSTM"
        else:
            return
        names = [node.input[s] for s in slots if s < len(node.input) and self.work.weight(node.input[s]) is not None]
        if names:
            self.work.unquantized.append(f"{what} '{node.name}': constant input(s) {', '.join(names)} (weights "
                                         f"qa has no parameter quantizer for) stay in float")


_RECURRENT = frozenset({"LSTM", "GRU", "RNN"})
_NORMS = frozenset({"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization"})
_PARAM_KIND = {"weight_r": "weight"}  # a recurrent weight takes the config's weight settings


def _passes_through(node: onnx.NodeProto, work: Work) -> bool:
    """An Identity, or a Dropout in inference mode (no training_mode input, or a constant false one)."""
    if node.domain not in STANDARD_DOMAINS or node.op_type not in ("Identity", "Dropout") or not node.input \
            or not node.input[0] or not node.output or not work.is_float(node.output[0]):
        return False
    if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
        mode = node.input[2]
        return mode in work.consts and mode not in work.runtime and not np.any(work.consts.get(mode))
    return True


def _param_slots(node: onnx.NodeProto, work: Work) -> List[Tuple[str, int, Optional[int]]]:
    """(quantizer suffix, input slot, channel axis) of the inputs of a node that are parameters
    when constant, named as AIMET names them (its keys); a linear unit's are found elsewhere."""
    op = node.op_type
    if node.domain not in STANDARD_DOMAINS:
        return []
    if op in _NORMS:
        return [("weight", 1, None), ("bias", 2, None)]
    if op in ("PRelu", "RMSNormalization"):
        return [("weight", 1, None)]
    if op in _RECURRENT:  # W and R: [directions, gates * hidden, in]; B: [directions, 2 * gates * hidden]
        return [("weight", 1, 1), ("weight_r", 2, 1), ("bias", 3, None)]
    if op == "DeformConv":
        return [("weight", 1, 0), ("bias", 3, None)]
    if op in ("Conv", "ConvTranspose", "Gemm"):  # not a unit: the weight is run-time data
        return [("bias", 2, None)]
    if op == "Einsum" and len(node.input) == 2:
        return _einsum_slots(node, work)
    if op == "Gather" and len(node.input) > 1 and node.input[1] in work.runtime:
        return [("weight", 0, None)]  # an embedding table
    return []


def _einsum_slots(node: onnx.NodeProto, work: Work) -> List[Tuple[str, int, Optional[int]]]:
    """An Einsum of data and one constant operand: that operand is a weight, its channel axis the
    one subscript that only it and the output have (``bsd,dh->bsh``: h)."""
    consts = [s for s in (0, 1) if node.input[s] not in work.runtime]
    if len(consts) != 1:
        return []
    slot = consts[0]
    lhs, arrow, rhs = str(attr(node, "equation", "")).replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != 2:
        return []
    if not arrow:  # implicit output: the subscripts that appear once, in alphabetical order
        rhs = "".join(sorted(c for c in set(lhs) if c.isalpha() and lhs.count(c) == 1))
    w, other = terms[slot], terms[1 - slot]
    own = [c for c in w if c.isalpha() and c in rhs and c not in other]
    axis = w.index(own[0]) if len(own) == 1 and "." not in w and w.count(own[0]) == 1 else None
    return [("weight", slot, axis)]
