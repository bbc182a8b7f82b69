"""Layers and their quantizers: parameters become graph inputs, activations get quantizer points."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper

from ...graph import INPUT, OUTPUT, PARAM, Layer, Quantizer
from .nodes import CONTROL_FLOW, PREFIX, STANDARD_DOMAINS
from .work import Param, Point, Unit, Work

__all__ = ["insert_quantizers"]


def insert_quantizers(work: Work) -> None:
    """Make a layer of every node that computes on run-time data and has a float output (a unit
    with its absorbed Add is one layer), with quantizers named as AIMET names them: each constant
    parameter becomes a graph input, each float model input the node reads gets an input
    quantizer point, each float output an output quantizer point. Control-flow nodes and their
    subgraphs stay in float; ignored nodes are no layers.

    A constant tensor that several layers read as a parameter (a tied weight) is one graph input
    and one quantizer, named after the first layer, listed by every layer that reads it; other
    run-time nodes that read it read that graph input too, so that it is one tensor everywhere
    (as a shared ``nn.Parameter`` is in torch)."""
    _Inserter(work).run()


class _Inserter:
    def __init__(self, work: Work) -> None:
        self.work = work
        self.input_names = {vi.name for vi in work.inputs}
        self.outputs = set(work.output_names)
        self.taken = {o for n in work.nodes for o in n.output} | self.input_names | work.initializer_names
        self.producer_layer: Dict[str, str] = {}
        self.index = {n.name: i for i, n in enumerate(work.nodes)}
        self.shared: Dict[str, Tuple[Param, Quantizer]] = {}  # constant tensor -> its parameter

    def run(self) -> None:
        work = self.work
        for node in work.nodes:
            if node.name in work.constant_nodes or node.name in work.absorbed:
                continue
            if node.op_type in CONTROL_FLOW:
                work.unquantized.append(f"{node.op_type} '{node.name}' (with its subgraphs)")
                continue
            unit = work.units.get(node.name)
            out_node = unit.out_node if unit is not None else node
            if node.name in work.ignored or not any(o and work.is_float(o) for o in out_node.output):
                continue
            layer = self.layer(node, unit)
            self.params(layer, node, unit)
            self.input_points(layer, node)
            self.output_points(layer, node, out_node)
            work.layers.append(layer)
        for node in work.nodes:  # other run-time reads of a parameter read its graph input (one tensor)
            if node.name in work.constant_nodes:
                continue
            for slot, name in enumerate(node.input):
                if name in self.shared:
                    node.input[slot] = self.shared[name][0].input

    def fresh(self, name: str) -> str:
        """A tensor name no other tensor of the graph uses (suffixed with _ until free)."""
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name

    def layer(self, node: onnx.NodeProto, unit: Optional[Unit]) -> Layer:
        type_name = node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}.{node.op_type}"
        if (unit is not None and unit.bias_node is not None and unit.bias_node.name in self.work.absorbed
                and node.op_type == "MatMul"):
            type_name += "+Add"
        reads = [i for i in node.input if i]
        inputs = {self.producer_layer[i] for i in reads if i in self.producer_layer} - {node.name}
        return Layer(name=node.name, op_type=node.op_type, type_name=type_name,
                     inputs=sorted(inputs, key=lambda n: self.index[n]),
                     model_input=any(i in self.input_names for i in reads))

    def params(self, layer: Layer, node: onnx.NodeProto, unit: Optional[Unit]) -> None:
        work = self.work
        if unit is not None:
            self.param(layer, "weight", node, 1, unit.weight, unit.weight_axis, not unit.folded)
            if unit.bias is not None:
                self.param(layer, "bias", unit.out_node, unit.bias_slot, unit.bias, None, not unit.folded)
            return
        for pname, slot in _param_slots(node, work):
            if slot < len(node.input) and work.const_float(node.input[slot]):
                self.param(layer, pname, node, slot, work.consts.get(node.input[slot]), None, True)

    def param(self, layer: Layer, pname: str, node: onnx.NodeProto, slot: int, values: np.ndarray,
              axis: Optional[int], as_stored: bool) -> None:
        """Make the parameter at ``node.input[slot]`` a graph input with a quantizer; ``as_stored``:
        the values are the tensor's own (not folded), so layers reading the same tensor share it."""
        tensor = node.input[slot] if as_stored else None
        if tensor is not None and tensor in self.shared:
            param, q = self.shared[tensor]
            node.input[slot] = param.input
            layer.quantizers.append(q)
            return
        qname = f"{layer.name}_{pname}"
        graph_input = self.fresh(f"{PREFIX}{qname}")
        values = np.require(values, requirements="C")  # a 0-d parameter stays 0-d
        node.input[slot] = graph_input
        param = Param(qname, graph_input, values, helper.np_dtype_to_tensor_dtype(values.dtype))
        self.work.params[qname] = param
        q = Quantizer(name=qname, layer=layer.name, kind=PARAM, param=pname, shape=tuple(values.shape), axis=axis)
        layer.quantizers.append(q)
        if tensor is not None:
            self.shared[tensor] = (param, q)

    def point(self, qname: str, src: str, dst: str, elem: int, node: str, slot: int, is_input: bool) -> None:
        names = tuple(self.fresh(f"{PREFIX}{qname}::{suffix}") for suffix in ("inv", "scale", "lo", "hi", "on"))
        self.work.points.append(Point(qname, src, dst, elem, names, node, slot, is_input))  # type: ignore[arg-type]

    def input_points(self, layer: Layer, node: onnx.NodeProto) -> None:
        """Model inputs read directly get an input quantizer."""
        for slot, name in enumerate(node.input):
            if name in self.input_names and self.work.is_float(name):
                qname = f"{node.name}_input_{slot}"
                dst = self.fresh(f"{PREFIX}{qname}")
                node.input[slot] = dst
                layer.quantizers.append(Quantizer(name=qname, layer=layer.name, kind=INPUT, index=slot))
                self.point(qname, name, dst, self.work.types[name], node.name, slot, True)

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


def _param_slots(node: onnx.NodeProto, work: Work) -> List[Tuple[str, int]]:
    """Constant inputs that are parameters, named as torch names them (AIMET's keys)."""
    op = node.op_type
    if node.domain not in STANDARD_DOMAINS:
        return []
    if op in ("BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization"):
        return [("weight", 1), ("bias", 2)]
    if op == "PRelu":
        return [("weight", 1)]
    if op == "Gather" and node.input[0] in work.consts and len(node.input) > 1 and node.input[1] in work.runtime:
        return [("weight", 0)]  # an embedding table
    return []
