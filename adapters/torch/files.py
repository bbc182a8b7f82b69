"""Reading a ``.pt2`` file (``torch.export.save``) for ``qa analyze``: the program's module, its
inputs, and how to run it on arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Sequence

import numpy as np
import torch

from ...data import InputSpec, ModelFile, flatten_outputs
from ...errors import QAValueError

__all__ = ["load_file", "to_numpy"]


def load_file(path: Path) -> ModelFile:
    """``torch.export.load(path).module()`` with the program's user inputs (tensors only).

    Example:
        >>> load_file(Path("cnn.pt2")).inputs  # doctest: +SKIP
        [InputSpec(name='x', dims=('s0', 3, 32, 32), dtype=dtype('float32'))]
    """
    program = torch.export.load(str(path))
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    inputs = []
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta.get("val") if name in placeholders else None
        if not isinstance(value, torch.Tensor):
            raise QAValueError(f"{path}: input '{name}' is not a tensor ({type(value).__name__}); qa analyze feeds "
                               f"tensors only")
        dims = tuple(d if isinstance(d, int) else str(d) for d in value.shape)
        try:
            dtype = np.dtype(str(value.dtype).replace("torch.", ""))
        except TypeError:
            raise QAValueError(f"{path}: input '{name}' has dtype {value.dtype}, which numpy has not") from None
        inputs.append(InputSpec(name, dims, dtype))
    module = program.module()

    def run(m: Any, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
        with torch.no_grad():
            out = m(*[torch.from_numpy(a) for a in arrays])
        return [to_numpy(y) for y in flatten_outputs(out)]

    def dummy(arrays: Sequence[np.ndarray]) -> Any:
        tensors = tuple(torch.from_numpy(a) for a in arrays)
        return tensors[0] if len(tensors) == 1 else tensors

    return ModelFile(path, "torch", module, inputs, run, dummy)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor's values on the host as numpy (bfloat16 and other dtypes numpy lacks as float32)."""
    t = t.detach().cpu()
    try:
        return t.numpy()
    except TypeError:
        return t.float().numpy()
