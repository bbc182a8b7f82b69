"""qa.kernels: the public numeric core (fake quantization, statistics, encodings, errors).

Everything here takes numpy arrays (float32; other float dtypes are converted at the
boundary) and runs in C++ with the GIL released and OpenMP threads. CUDA device arrays
(``__cuda_array_interface__`` or DLPack) go to the CUDA kernels when qa was built with them.

Example:
    >>> import numpy as np
    >>> from qa import kernels
    >>> x = np.array([-1.0, 0.26, 0.5, 9.0], dtype=np.float32)
    >>> kernels.fake_quantize(x, scale=0.5, offset=-2, bitwidth=3).tolist()
    [-1.0, 0.5, 0.5, 2.5]
"""

from __future__ import annotations

from . import _core, _device, _memory
from ._fake_quant import fake_quantize
from .encodings import Encoding, compute_encoding, encoding_from_range
from .observers import ErrorStats, Histogram, MinMax, RunningMinMax, minmax

__all__ = [
    "fake_quantize", "minmax", "MinMax", "RunningMinMax", "Histogram", "ErrorStats",
    "Encoding", "encoding_from_range", "compute_encoding", "has_cuda", "max_threads",
    "release_cached_memory",
]


def has_cuda() -> bool:
    """True when qa was built with its CUDA kernels and a CUDA device is visible."""
    return _device.available()


def release_cached_memory() -> int:
    """Free the large result buffers qa keeps for reuse; returns the number of bytes released."""
    return _memory.release_cached_memory()


def max_threads() -> int:
    """Number of OpenMP threads the CPU kernels use (set OMP_NUM_THREADS before import to change)."""
    return int(_core.max_threads())


