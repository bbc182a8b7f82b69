"""Tensors known without running the model: initializers, Constant nodes, and shape ops on them."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .nodes import STANDARD_DOMAINS

# The ops evaluated on constants up front: what exporters put between a stored weight and the op
# that uses it. Other ops on constants (Slice, Concat, Mul, Div, ...) are evaluated only when a
# parameter slot reads what they make (Work.weight); a node that only reads constants is weight
# plumbing either way.
EVALUATED = frozenset({"Constant", "Identity", "Transpose", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten"})


class Constants:
    """The constant tensors of one graph by name; initializers are converted to numpy only when asked for.

    Args:
        graph: the graph whose initializers are constants.
        opset: the standard ONNX opset version the graph's nodes follow.
    """

    def __init__(self, graph: onnx.GraphProto, opset: int) -> None:
        self.protos: Dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        self.arrays: Dict[str, np.ndarray] = {}
        self._opsets = {"": opset}

    def __contains__(self, name: str) -> bool:
        return name in self.arrays or name in self.protos

    def get(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = numpy_helper.to_array(self.protos[name])
        return self.arrays[name]

    def elem_type(self, name: str) -> Optional[int]:
        """The ONNX element type of a constant, None for an unknown name or a type ONNX lacks."""
        if name in self.protos:
            return self.protos[name].data_type
        arr = self.arrays.get(name)
        if arr is None:
            return None
        try:
            return helper.np_dtype_to_tensor_dtype(arr.dtype)
        except Exception:
            return None

    def evaluate(self, node: onnx.NodeProto, any_op: bool = False) -> bool:
        """Record the output of a Constant node or of a shape op on constants (onnx's reference
        evaluator computes it); False when the node is none of these or cannot be evaluated.
        ``any_op``: any standard op on constants (weight plumbing a parameter is made by, evaluated
        on demand: :meth:`.work.Work.weight`), its outputs all recorded."""
        if node.domain not in STANDARD_DOMAINS or not node.output:
            return False
        if not any_op and (node.op_type not in EVALUATED or len(node.output) != 1):
            return False
        ins = list(node.input)
        if node.op_type != "Constant" and (not ins or not all(i in self for i in ins if i)):
            return False
        try:
            values = ReferenceEvaluator(node, opsets=self._opsets).run(None, {i: self.get(i) for i in ins if i})
        except Exception:
            return False
        if any(not isinstance(v, np.ndarray) or v.dtype.kind not in "biufc" for v in values):
            return False  # strings, sparse tensors, sequences: not weights
        for name, value in zip(node.output, values):
            if name:
                self.arrays[name] = np.require(value, requirements="C")  # a scalar stays 0-d
        return True
