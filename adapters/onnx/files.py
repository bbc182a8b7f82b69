"""Reading a ``.onnx`` file for ``qa analyze``: the model, its inputs, and how to run it on arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ...data import Dim, InputSpec, ModelFile
from .load import load_model

__all__ = ["load_file"]

_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
           9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


def load_file(path: Path) -> ModelFile:
    """The ONNX model at ``path`` (external data resolved) with its graph inputs (initializers left out).

    Example:
        >>> load_file(Path("cnn.onnx")).inputs  # doctest: +SKIP
        [InputSpec(name='input', dims=('batch', 3, 32, 32), dtype=dtype('float32'))]
    """
    proto, _ = load_model(str(path))
    initializers = {t.name for t in proto.graph.initializer}
    inputs = []
    for vi in proto.graph.input:
        if vi.name in initializers:
            continue
        tt = vi.type.tensor_type
        dims: Optional[Tuple[Dim, ...]] = None
        if tt.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim)
        inputs.append(InputSpec(vi.name, dims, np.dtype(_DTYPES.get(tt.elem_type, np.float32))))
    names = [s.name for s in inputs]

    def run(session: Any, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
        return [np.asarray(y) for y in session.run(None, dict(zip(names, arrays)))]

    return ModelFile(path, "onnx", proto, inputs, run, lambda arrays: dict(zip(names, arrays)))
