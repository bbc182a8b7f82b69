"""CUDA device arrays: detection and dispatch to qa._cuda (placeholder until the CUDA module lands)."""

from __future__ import annotations

from typing import Any

from .errors import QAError


def available() -> bool:
    return False


def is_device_array(x: Any) -> bool:
    if hasattr(x, "__cuda_array_interface__"):
        return True
    dev = getattr(x, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        return int(dev()[0]) in (2, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
    except Exception:
        return False


def fake_quantize(x, scale, offset, bitwidth, axis, out, rounding, steps, name) -> Any:
    raise QAError("a CUDA array was given but qa was built without its CUDA kernels")
