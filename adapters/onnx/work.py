"""What the graph passes share: the work in progress (:class:`Work`), its parts, and the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import TensorProto

from ...graph import Layer
from .constants import Constants
from .load import opset
from .nodes import CONTROL_FLOW, FLOAT_TYPES

__all__ = ["Work", "Prepared", "Unit", "Param", "Point"]


@dataclass
class Unit:
    """A linear op with a constant weight, possibly with a separate bias Add: one layer."""

    node: onnx.NodeProto
    weight: np.ndarray
    weight_axis: Optional[int]  # the weight's output-channel axis (None: not one axis)
    weight_slot: int = 1  # 0: a constant first operand (MatMul(W, x), Gemm(A, x))
    bias: Optional[np.ndarray] = None
    bias_node: Optional[onnx.NodeProto] = None  # the Add (MatMul + Add), else the bias is an input of node
    bias_slot: int = 2
    foldable: bool = True
    folded: bool = False  # a batch norm was folded in: weight and bias are no longer the stored tensors

    @property
    def out_node(self) -> onnx.NodeProto:
        return self.bias_node if self.bias_node is not None else self.node


@dataclass
class Param:
    """A parameter, rewired to read a graph input that carries its float or quantized values."""

    quantizer: str
    input: str  # the graph input that carries it
    original: np.ndarray  # batch norms folded, in the model's dtype
    elem_type: int


@dataclass
class Point:
    """Where an activation quantizer sits: ``src`` is read, ``dst`` is what consumers see."""

    quantizer: str
    src: str
    dst: str
    elem_type: int
    inputs: Tuple[str, str, str, str, str]  # the graph inputs inv, scale, lo, hi, on
    node: str  # the node that makes src (output quantizer) or reads dst (input quantizer)
    slot: int  # the output / input position there
    is_input: bool


@dataclass
class Work:
    """One analysis copy being built: the node copies and what the passes have found so far."""

    model: onnx.ModelProto  # the user's model, only read
    source: str  # how errors name the model
    consts: Constants
    ignored: FrozenSet[str] = frozenset()  # node names the user left unquantized
    nodes: List[onnx.NodeProto] = field(default_factory=list)  # copies, changed freely
    runtime: Set[str] = field(default_factory=set)  # tensors that depend on the model inputs
    constant_nodes: Set[str] = field(default_factory=set)  # nodes that compute on constants only
    plumbing: Dict[str, onnx.NodeProto] = field(default_factory=dict)  # output -> the constant node making it
    unevaluable: Set[str] = field(default_factory=set)  # weight plumbing outputs Work.weight could not compute
    types: Dict[str, int] = field(default_factory=dict)  # tensor -> ONNX element type
    ranks: Dict[str, Optional[int]] = field(default_factory=dict)  # tensor -> rank (None: unknown)
    units: Dict[str, Unit] = field(default_factory=dict)  # node name -> its linear unit
    absorbed: Set[str] = field(default_factory=set)  # bias Adds that are part of a unit
    folded: List[Tuple[str, str]] = field(default_factory=list)  # (batch norm, layer)
    unfolded: List[Tuple[str, str, str]] = field(default_factory=list)  # (batch norm, layer, why not)
    names: List[str] = field(default_factory=list)  # every node name, after name_nodes
    layers: List[Layer] = field(default_factory=list)
    unquantized: List[str] = field(default_factory=list)  # what stays in float, in words
    params: Dict[str, Param] = field(default_factory=dict)
    points: List[Point] = field(default_factory=list)

    @classmethod
    def start(cls, model: onnx.ModelProto, source: str = "the ONNX model", ignored: Iterable[str] = ()) -> "Work":
        """The work on ``model`` before any pass ran."""
        return cls(model, source, Constants(model.graph, opset(model)), frozenset(ignored))

    @property
    def initializer_names(self) -> Set[str]:
        return {t.name for t in self.model.graph.initializer}

    @property
    def inputs(self) -> List[onnx.ValueInfoProto]:
        """The model inputs (graph inputs that are not initializers)."""
        init = self.initializer_names
        return [vi for vi in self.model.graph.input if vi.name not in init]

    @property
    def output_names(self) -> List[str]:
        return [o.name for o in self.model.graph.output]

    def is_float(self, name: str) -> bool:
        return self.types.get(name) in FLOAT_TYPES

    def const_float(self, name: str) -> bool:
        """A float tensor known without running the model."""
        return (bool(name) and name in self.consts and name not in self.runtime
                and self.consts.elem_type(name) in FLOAT_TYPES)

    def weight(self, name: str) -> Optional[np.ndarray]:
        """The values of a float tensor known without running the model, None for anything else.
        A tensor that weight plumbing makes with ops :mod:`.constants` does not evaluate up front
        (the Slice and Concat before an exported LSTM's W, a weight norm's Div) is computed now, on
        demand, so that every weight a deployed graph would fold to a constant is a parameter."""
        if not name or name in self.runtime:
            return None
        if name not in self.consts and not self._evaluate(name):
            return None
        return self.consts.get(name) if self.const_float(name) else None

    def _evaluate(self, name: str) -> bool:
        """Evaluate the weight plumbing that makes ``name`` (depth first, without recursion)."""
        stack = [name]  # the graph is acyclic (sort_nodes checked it)
        while stack:
            tensor = stack[-1]
            if tensor in self.consts:
                stack.pop()
                continue
            node = self.plumbing.get(tensor)
            missing = [i for i in node.input if i and i not in self.consts] if node is not None else []
            if (tensor in self.unevaluable or node is None or node.op_type in CONTROL_FLOW
                    or any(i in self.unevaluable for i in missing)):
                self.unevaluable.update((tensor, name))
                return False
            if missing:
                stack.extend(missing)
            elif not self.consts.evaluate(node, any_op=True):
                self.unevaluable.update((tensor, name))
                return False
        return True


@dataclass
class Prepared:
    """The analysis copy: what the sessions are built from."""

    nodes: List[onnx.NodeProto]
    initializers: List[TensorProto]
    sparse_initializers: List[onnx.SparseTensorProto]
    inputs: List[onnx.ValueInfoProto]
    outputs: List[onnx.ValueInfoProto]
    params: Dict[str, Param]
    points: List[Point]
    types: Dict[str, int]
