"""Argument checking and conversion at the kernel boundary: everything becomes float32 numpy."""

from __future__ import annotations

import operator
import sys
from typing import Any, Optional, Tuple

import numpy as np

from .errors import QAValueError

MIN_BITWIDTH, MAX_BITWIDTH = 2, 32
# Integers up to 2^22 are exact in float32 arithmetic; beyond that the kernels use double.
_FLOAT_EXACT = 2.0**22


def where(name: Optional[str]) -> str:
    """A prefix that names the quantizer or tensor an error is about."""
    return f"{name}: " if name else ""


def _describe(x: Any, arr: np.ndarray) -> str:
    kind = "" if isinstance(x, np.ndarray) else f" (from {type(x).__name__})"
    return f"dtype {arr.dtype}{kind}"


def is_float_dtype(dtype: np.dtype) -> bool:
    """True for numpy's floats and for extension floats that numpy casts to float32 (ml_dtypes)."""
    if np.issubdtype(dtype, np.floating):
        return True
    # bfloat16, float8_* and the other ml_dtypes floats are not np.floating subtypes. Such an
    # array exists only when ml_dtypes is imported, so ask it (never import it to find out).
    ml_dtypes = sys.modules.get("ml_dtypes")
    if ml_dtypes is None or dtype.fields is not None or not dtype.type.__module__.startswith("ml_dtypes"):
        return False
    try:
        ml_dtypes.finfo(dtype)
    except (TypeError, ValueError):  # ml_dtypes' integers (int4, uint2, ...)
        return False
    return bool(np.can_cast(dtype, np.float32, casting="same_kind"))


def float_array(x: Any, what: str = "x", name: Optional[str] = None) -> np.ndarray:
    """x as a numpy array of a floating-point dtype, not yet converted; anything else is refused."""
    try:
        arr = np.asarray(x)
    except MemoryError:
        raise
    except Exception as e:  # a ragged list, a tensor numpy cannot read (torch bfloat16, requires_grad)
        raise QAValueError(
            f"{where(name)}{what} must be a floating-point array; a {type(x).__name__} could not be "
            f"read as one ({e})"
        ) from e
    if arr.dtype != np.float32 and not is_float_dtype(arr.dtype):
        raise QAValueError(f"{where(name)}{what} must be a floating-point array, got {_describe(x, arr)}")
    return arr


def as_float32(x: Any, what: str = "x", name: Optional[str] = None) -> np.ndarray:
    """x as an aligned C-contiguous float32 array (0-d stays 0-d); other float dtypes are converted."""
    arr = float_array(x, what, name)
    if arr.dtype == np.float32 and arr.flags.aligned:
        return np.asarray(arr, order="C")
    # Values beyond float32's range become +-inf, as the kernels' float32 contract says.
    with np.errstate(over="ignore"):
        return np.array(arr, dtype=np.float32, order="C")


def check_bitwidth(bitwidth: Any, name: Optional[str] = None) -> int:
    if isinstance(bitwidth, (bool, np.bool_)):
        raise QAValueError(f"{where(name)}bitwidth must be an integer, got {bitwidth!r}")
    try:
        bw = operator.index(bitwidth)
    except TypeError:
        raise QAValueError(f"{where(name)}bitwidth must be an integer, got {bitwidth!r}") from None
    if not MIN_BITWIDTH <= bw <= MAX_BITWIDTH:
        raise QAValueError(
            f"{where(name)}bitwidth must be between {MIN_BITWIDTH} and {MAX_BITWIDTH}, got {bw}"
        )
    return bw


def num_steps(bitwidth: int, strict: bool = False) -> float:
    """Number of quantization steps: 2^bw - 1 levels apart, one fewer when strict symmetric."""
    return float(2**bitwidth - 1 - (1 if strict else 0))


def check_axis(axis: Any, name: Optional[str] = None) -> Optional[int]:
    """None, or axis as an int (not a bool, a float or a string)."""
    if axis is None:
        return None
    if isinstance(axis, (bool, np.bool_)):
        raise QAValueError(f"{where(name)}axis must be an integer or None, got {axis!r}")
    try:
        return operator.index(axis)
    except TypeError:
        raise QAValueError(f"{where(name)}axis must be an integer or None, got {axis!r}") from None


def normalize_axis(axis: Any, ndim: int, name: Optional[str] = None) -> int:
    ax = check_axis(axis, name)
    if ax is None:
        raise QAValueError(f"{where(name)}axis must be an integer, got None")
    if not -ndim <= ax < ndim:
        raise QAValueError(
            f"{where(name)}axis {ax} is out of range for a tensor with {ndim} dimension(s)"
        )
    return ax % ndim


def channel_layout(shape: Tuple[int, ...], axis: int) -> Tuple[int, int, int]:
    """View a tensor as [outer, channels, inner] around `axis`."""
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    return outer, int(shape[axis]), inner


def number_array(value: Any, what: str, name: Optional[str] = None) -> np.ndarray:
    """value (a number or an array of numbers) as float64; None, strings and the like are refused."""
    try:
        arr = np.asarray(value)
        ok = arr.dtype.kind in "biufO" or is_float_dtype(arr.dtype)
        if arr.dtype.kind == "O":  # numpy would turn None into NaN
            ok = not any(v is None for v in arr.flat)
        if ok:
            arr = arr.astype(np.float64)
    except (TypeError, ValueError, OverflowError):  # ragged lists, objects that are not numbers
        ok = False
    if not ok:
        raise QAValueError(f"{where(name)}{what} must be a number or an array of numbers, got {value!r:.80}")
    return arr


def real_number(value: Any, what: str, name: Optional[str] = None) -> float:
    """One number (a Python or numpy scalar) as a float; NaN is left for the range check."""
    arr = number_array(value, what, name)
    if arr.size != 1:
        raise QAValueError(f"{where(name)}{what} must be one number, got {arr.size} values")
    return float(arr.reshape(-1)[0])


def per_channel_param(
    value: Any, channels: Optional[int], what: str, name: Optional[str] = None
) -> np.ndarray:
    """A scale/offset as a float64 vector of length `channels` (or a 1-vector per tensor)."""
    arr = number_array(value, what, name).reshape(-1)
    if channels is None:
        if arr.size != 1:
            raise QAValueError(
                f"{where(name)}{what} has {arr.size} values; pass axis= for per-channel "
                f"quantization or a single value per tensor"
            )
        return arr
    if arr.size == 1:
        return np.full(channels, arr[0])
    if arr.size != channels:
        raise QAValueError(
            f"{where(name)}{what} has {arr.size} values but the tensor has {channels} "
            f"channels along the quantization axis"
        )
    return np.ascontiguousarray(arr)


def check_quant_params(scale: Any, offset: Any, channels: Optional[int], steps: float,
                       name: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, bool]:
    """Validated scale/offset vectors, and whether the integer grid needs double arithmetic."""
    scale = per_channel_param(scale, channels, "scale", name)
    offset = per_channel_param(offset, channels, "offset", name)
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise QAValueError(f"{where(name)}scale must be finite and positive, got {scale[:8].tolist()}")

    if not np.all(np.isfinite(offset)) or np.any(offset != np.round(offset)):
        raise QAValueError(f"{where(name)}offset must hold integers, got {offset[:8].tolist()}")
    if np.any(np.abs(offset) > 2.0**40):
        raise QAValueError(f"{where(name)}offset out of range: {offset[:8].tolist()}")
    if offset.size == 0:  # an empty channel axis: nothing to quantize
        return scale, offset, False
    span = max(np.abs(offset).max(), np.abs(offset + steps).max())
    # float32 arithmetic needs exact integers on the grid and a scale whose float32 value and
    # reciprocal are normal numbers; anything else is computed in double.
    f32 = np.finfo(np.float32)
    odd_scale = np.any(scale < f32.tiny) or np.any(scale > 1.0 / f32.tiny)
    return scale, offset, bool(span >= _FLOAT_EXACT or odd_scale)
