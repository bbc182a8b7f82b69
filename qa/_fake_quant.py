"""Fake quantization of numpy and CUDA arrays: the one implementation behind kernels and encodings."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _core, _device, _memory
from ._arrays import (as_float32, channel_layout, check_bitwidth, check_quant_params, float_array,
                      normalize_axis, num_steps, where)
from .errors import QAValueError

ROUNDING = {"half_even": 0, "half_away": 1, "half_away_from_zero": 1}


def fake_quantize(
    x: Any, scale: Any, offset: Any, bitwidth: int, axis: Optional[int] = None,
    out: Optional[Any] = None, *, rounding: str = "half_even", strict: bool = False,
    name: Optional[str] = None,
) -> Any:
    """Quantize and dequantize x: ``(clamp(round(x/scale) - offset, 0, 2^bw - 1) + offset) * scale``.

    AIMET's convention: ``offset <= 0`` is the integer that ``min`` maps to, so symmetric
    signed 8-bit is ``offset = -128``. ``x / scale`` is computed as ``x * (1 / scale)`` in
    float32 exactly as torch does (bit-identical to ``torch.fake_quantize_per_*_affine``);
    bitwidths whose integer grid exceeds float precision switch to double. NaN stays NaN
    and +-inf clamp to the ends of the grid.

    Args:
        x: array of floats (float32; other float dtypes, ml_dtypes' bfloat16 and float8
            included, are converted and the result is returned in x's dtype), or a CUDA
            device array.
        scale: positive scale, a scalar or one per channel along ``axis``.
        offset: integer offset, a scalar or one per channel.
        bitwidth: 2 to 32.
        axis: channel axis for per-channel quantization (any axis, negative allowed).
        out: optional float32 C-contiguous array of x's shape to write into (may be x; one
            that partly overlaps x is written from a copy of x).
        rounding: "half_even" (default, as torch) or "half_away" (AIMET v1's C++).
        strict: strict symmetric grid (one level fewer: ``2^bw - 2`` steps).
        name: quantizer name used in error messages.

    Returns:
        The fake-quantized array (``out`` when given).

    Example:
        >>> import numpy as np
        >>> w = np.array([[0.1, -0.3], [2.0, 1.1]], dtype=np.float32)
        >>> fake_quantize(w, scale=[0.1, 0.5], offset=-128, bitwidth=8, axis=0).tolist()
        [[0.10000000149011612, -0.30000001192092896], [2.0, 1.0]]
    """
    if not isinstance(rounding, str) or rounding not in ROUNDING:
        raise QAValueError(f"{where(name)}rounding must be one of {sorted(ROUNDING)}, got {rounding!r}")
    bw = check_bitwidth(bitwidth, name)
    steps = num_steps(bw, strict)
    if _device.is_device_array(x):
        return _device.fake_quantize(x, scale, offset, bw, axis, out, ROUNDING[rounding], steps, name)
    arr = float_array(x, name=name)
    src = as_float32(arr, name=name)
    layout = None
    if axis is not None:
        if src.ndim == 0:
            raise QAValueError(f"{where(name)}per-channel quantization needs a tensor, got a scalar")
        layout = channel_layout(src.shape, normalize_axis(axis, src.ndim, name))
    scale_v, offset_v, use_double = check_quant_params(scale, offset, None if layout is None else layout[1], steps, name)

    if out is None:
        # A converted input is a private copy already: quantize it in place.
        dst = src if src is not arr and not np.may_share_memory(src, arr) else _memory.empty(src.shape)
    else:
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise QAValueError(f"{where(name)}out must be a C-contiguous float32 numpy array")
        if out.shape != src.shape:
            raise QAValueError(f"{where(name)}out has shape {out.shape}, x has shape {src.shape}")
        if not out.flags.writeable:
            raise QAValueError(f"{where(name)}out is read-only")
        dst = out
        if dst is not src and np.may_share_memory(src, dst):  # O(1): compares the bounds only
            # Both are C-contiguous, so overlapping bounds mean shared elements. The same
            # elements (out is x, or a view of all of it) quantize in place; a partial overlap
            # would overwrite inputs before they are read, so it works from a copy.
            if src.__array_interface__["data"][0] != dst.__array_interface__["data"][0]:
                copy = _memory.empty(src.shape)
                np.copyto(copy, src)
                src = copy
    if src.size == 0:
        pass  # nothing to quantize (an empty tensor or an empty channel axis)
    elif layout is None:
        _core.fake_quant_per_tensor(src, dst, float(scale_v[0]), float(offset_v[0]), steps,
                                    ROUNDING[rounding], use_double)
    else:
        _core.fake_quant_per_channel(src, dst, *layout, scale_v, offset_v, steps,
                                     ROUNDING[rounding], use_double)
    if out is None and arr.dtype != np.float32:
        with np.errstate(over="ignore"):  # a grid end beyond float16's range becomes inf
            return dst.astype(arr.dtype)
    return dst
