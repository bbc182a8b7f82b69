"""Output buffers for the kernels: large freed buffers are reused instead of faulted in anew.

Fresh memory costs a page fault and a kernel memset per page, which for a 256 MiB result is
as long as the fake quantization itself. Like PyTorch's caching allocators, qa keeps a few
large buffers that results were built on and hands them out again once those results are
garbage. Results are plain numpy arrays; ``release_cached_memory()`` empties the cache.
"""

from __future__ import annotations

import threading
from typing import Dict, List, Tuple

import numpy as np

MIN_BYTES = 4 << 20  # below this, numpy's allocator is as fast
MAX_CACHED_BYTES = 512 << 20

_lock = threading.Lock()
_free: Dict[int, List[np.ndarray]] = {}
_cached = 0


class _Lease:
    """Owns one raw buffer while an array uses it; gives it back to the cache when collected."""

    __slots__ = ("raw", "__array_interface__")

    def __init__(self, raw: np.ndarray, shape: Tuple[int, ...], dtype: np.dtype) -> None:
        self.raw = raw
        self.__array_interface__ = {"data": (raw.ctypes.data, False), "shape": shape,
                                    "typestr": dtype.str, "version": 3}

    def __del__(self) -> None:
        global _cached
        raw = self.raw
        try:
            with _lock:
                if _cached + raw.nbytes <= MAX_CACHED_BYTES:
                    _free.setdefault(raw.nbytes, []).append(raw)
                    _cached += raw.nbytes
        except Exception:  # interpreter shutdown: let the memory go
            pass


def empty(shape: Tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """An uninitialized C-contiguous array, reusing a cached buffer of the same size if any."""
    global _cached
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    raw = None
    with _lock:
        bucket = _free.get(nbytes)
        if bucket:
            raw = bucket.pop()
            _cached -= nbytes
    if raw is None:
        raw = np.empty(nbytes, np.uint8)
    return np.asarray(_Lease(raw, tuple(shape), dtype))


def release_cached_memory() -> int:
    """Drop every cached buffer; returns the number of bytes released."""
    global _cached
    with _lock:
        released = _cached
        _free.clear()
        _cached = 0
    return released
