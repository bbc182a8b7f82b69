"""Checking what is fed to the model: input names, dtypes and shapes, with errors that name the input."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ...errors import QAValueError

__all__ = ["Feeds"]


def _spec(vi: onnx.ValueInfoProto) -> Tuple[Optional[np.dtype], Optional[List[Optional[int]]], str]:
    """(numpy dtype, dims with None where symbolic, the shape in words) of a graph input."""
    tt = vi.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else None
    if not tt.HasField("shape"):
        return dtype, None, "any shape"
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    text = "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                           for d in tt.shape.dim) + "]"
    return dtype, dims, text


class Feeds:
    """The model's inputs, and the conversion of what users pass into checked ``{name: array}`` feeds."""

    def __init__(self, inputs: Sequence[onnx.ValueInfoProto], source: str) -> None:
        self.names = [vi.name for vi in inputs]
        self._specs = {vi.name: _spec(vi) for vi in inputs}
        self._source = source

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def from_inputs(self, inputs: Any, what: str) -> Dict[str, np.ndarray]:
        """{input name: array} from a dict, a single array (one-input models) or a tuple in input order."""
        names = self.names
        if isinstance(inputs, Mapping):
            feed = dict(inputs)
        elif isinstance(inputs, (tuple, list)):
            if len(inputs) != len(names):
                raise QAValueError(f"{what}: got {len(inputs)} arrays, the model has {len(names)} input(s) "
                                   f"{names}; pass a dict {{input name: array}}")
            feed = dict(zip(names, inputs))
        elif len(names) == 1:
            feed = {names[0]: inputs}
        else:
            raise QAValueError(f"{what}: the model has inputs {names}; pass a dict {{input name: array}}")
        return self.check(feed, what)

    def check(self, feed: Any, what: str) -> Dict[str, np.ndarray]:
        """The feed as contiguous arrays, every model input present with its dtype and shape."""
        if not isinstance(feed, Mapping):
            raise QAValueError(f"{what} must be a dict {{input name: array}}, got {type(feed).__name__}; "
                               f"the model's inputs are {self.names}")
        unknown = [k for k in feed if k not in self._specs]
        if unknown:
            raise QAValueError(f"{what}: '{unknown[0]}' is not an input of {self._source}; its inputs are "
                               f"{self.names}")
        missing = [k for k in self.names if k not in feed]
        if missing:
            raise QAValueError(f"{what}: input '{missing[0]}' of {self._source} is missing")
        return {name: self._array(name, value, what) for name, value in feed.items()}

    def _array(self, name: str, value: Any, what: str) -> np.ndarray:
        dtype, dims, text = self._specs[name]
        if isinstance(value, ort.OrtValue):
            value = value.numpy()
        try:
            arr = np.asarray(value)
        except Exception:
            raise QAValueError(f"{what}: input '{name}' must be a numpy array, got {type(value).__name__}") from None
        if dtype is not None and arr.dtype != dtype:
            raise QAValueError(f"{what}: input '{name}' has dtype {arr.dtype}, the model expects {np.dtype(dtype)}")
        if dims is not None and (arr.ndim != len(dims)
                                 or any(d is not None and d > 0 and d != s for d, s in zip(dims, arr.shape))):
            raise QAValueError(f"{what}: input '{name}' has shape {list(arr.shape)}, the model expects {text}")
        return np.require(arr, requirements="C")  # keeps a 0-d input 0-d (ascontiguousarray makes it 1-d)
