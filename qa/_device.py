"""CUDA device arrays: pointer, shape and stream extraction, then dispatch to qa._cuda.

A device array is anything with ``__cuda_array_interface__`` (torch, CuPy, Numba) or with
``__dlpack__`` on a CUDA device (JAX, ...). It must be float32 and C-contiguous: the kernels
read raw pointers. Work is queued on the producer's stream when the array names one
(``__cuda_array_interface__`` v3), else on the legacy default stream, which orders with
every blocking stream. Results that go to the host (statistics) are complete on return.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from ._arrays import channel_layout, check_quant_params, normalize_axis, where
from .errors import QAError, QAValueError

# DLPack device types whose memory a CUDA kernel can address.
_DLPACK_CUDA = (2, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
_DLPACK_FLOAT32 = (2, 32, 1)  # (kDLFloat, bits, lanes)
_FLOAT32 = np.dtype(np.float32)
# The legacy default stream, as both __cuda_array_interface__ and DLPack spell it.
_LEGACY_STREAM = 1


def _module() -> Any:
    try:
        return importlib.import_module("qa._cuda")
    except ImportError as e:
        raise QAError(
            "a CUDA array was given but qa was built without its CUDA kernels (an install builds "
            "them when it finds nvcc and a GPU; reinstall where both are, or with QA_CUDA=ON to build "
            "them without a GPU: pip install -v shows the 'qa: CUDA kernels' line saying why)"
        ) from e


def available() -> bool:
    """True when qa._cuda is built and at least one CUDA device is visible."""
    try:
        return _module().device_count() > 0
    except QAError:
        return False


def is_device_array(x: Any) -> bool:
    try:
        if hasattr(x, "__cuda_array_interface__"):
            return True
    except Exception:
        # The attribute exists but refused (a torch tensor that requires grad): _view says why.
        return True
    dev = getattr(x, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        return int(dev()[0]) in _DLPACK_CUDA
    except Exception:
        return False


class _View(NamedTuple):
    ptr: int
    shape: Tuple[int, ...]
    size: int
    stream: Optional[int]  # the stream to order with; None: the producer needs no ordering
    readonly: bool
    keep: Any  # holds the DLPack capsule (and so the memory) for as long as the view is used


def _c_contiguous(shape: Tuple[int, ...], strides: Tuple[int, ...], itemsize: int) -> bool:
    expected = itemsize
    for dim, stride in zip(reversed(shape), reversed(strides)):
        if dim != 1 and stride != expected:
            return False
        expected *= dim
    return True


def _view(x: Any, what: str, name: Optional[str]) -> _View:
    try:
        cai = getattr(x, "__cuda_array_interface__", None)
    except Exception as e:
        raise QAValueError(
            f"{where(name)}{what}: cannot read its __cuda_array_interface__ ({e}); "
            f"detach tensors that require grad"
        ) from e
    if cai is not None:
        return _view_cai(cai, what, name)
    if hasattr(x, "__dlpack__"):
        return _view_dlpack(x, what, name)
    raise QAValueError(f"{where(name)}{what} must be a CUDA array, got {type(x).__name__}")


def _view_cai(cai: dict, what: str, name: Optional[str]) -> _View:
    try:
        dtype = np.dtype(cai["typestr"])
        shape = tuple(int(d) for d in cai["shape"])
        ptr, readonly = cai["data"]
    except (KeyError, TypeError, ValueError) as e:
        raise QAValueError(f"{where(name)}{what}: malformed __cuda_array_interface__ ({e!r})") from e
    if dtype != _FLOAT32:
        raise QAValueError(f"{where(name)}{what} must be a float32 CUDA array, got {cai['typestr']!r}")
    if cai.get("mask") is not None:
        raise QAValueError(f"{where(name)}{what}: masked CUDA arrays are not supported")
    size = math.prod(shape)
    strides = cai.get("strides")
    if strides is not None and size > 0 and not _c_contiguous(shape, tuple(strides), 4):
        raise QAValueError(
            f"{where(name)}{what} must be C-contiguous, got shape {shape} with byte strides "
            f"{tuple(strides)} (make a contiguous copy first)"
        )
    stream = cai.get("stream") if int(cai.get("version", 0)) >= 3 else None
    return _View(int(ptr or 0), shape, size, None if stream is None else int(stream), bool(readonly), None)


def _view_dlpack(x: Any, what: str, name: Optional[str]) -> _View:
    try:
        device_type = int(x.__dlpack_device__()[0])
    except Exception as e:
        raise QAValueError(f"{where(name)}{what}: cannot read its DLPack device ({e})") from e
    if device_type not in _DLPACK_CUDA:
        raise QAValueError(
            f"{where(name)}{what} must be a CUDA array, its DLPack device type is {device_type}"
        )
    try:
        try:
            # The producer makes its data ready for work on the stream we name.
            capsule = x.__dlpack__(stream=_LEGACY_STREAM)
        except TypeError:  # a producer that takes no stream
            capsule = x.__dlpack__()
    except Exception as e:
        raise QAValueError(f"{where(name)}{what}: DLPack export failed ({e})") from e
    ptr, shape, strides, dtype, _ = _call(name, _module().dlpack_info, capsule)
    shape = tuple(shape)
    if tuple(dtype) != _DLPACK_FLOAT32:
        raise QAValueError(
            f"{where(name)}{what} must be a float32 CUDA array, "
            f"got DLPack dtype (code, bits, lanes) = {tuple(dtype)}"
        )
    size = math.prod(shape)
    if strides is not None and size > 0 and not _c_contiguous(shape, tuple(strides), 1):
        raise QAValueError(
            f"{where(name)}{what} must be C-contiguous, got shape {shape} with strides "
            f"{tuple(strides)} (make a contiguous copy first)"
        )
    return _View(int(ptr), shape, size, _LEGACY_STREAM, False, capsule)


def _call(name: Optional[str], fn: Any, *args: Any) -> Any:
    """Runs a qa._cuda function, re-raising its errors as qa's, named after the quantizer."""
    try:
        return fn(*args)
    except ValueError as e:  # a pointer that is not device memory, arrays on two devices
        raise QAValueError(f"{where(name)}{e}") from e
    except RuntimeError as e:  # a failed CUDA call (no driver, out of memory, bad launch)
        raise QAError(f"{where(name)}{e}") from e


def _work_stream(main: _View, *others: _View) -> int:
    """The stream to queue on: main's; other producers' streams are waited for first."""
    stream = _LEGACY_STREAM if main.stream is None else main.stream
    for other in others:
        if other.stream is not None and other.stream != stream:
            _call(None, _module().synchronize, other.stream)
    return stream


def _host_array(a: Any, dtype: Any, what: str, name: Optional[str], size: Optional[int] = None) -> np.ndarray:
    ok = isinstance(a, np.ndarray) and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    if not ok:
        raise QAValueError(
            f"{where(name)}{what} must be a writable C-contiguous {np.dtype(dtype)} numpy array"
        )
    if size is not None and a.size != size:
        raise QAValueError(f"{where(name)}{what} must hold {size} values, got {a.size}")
    return a


def fake_quantize(x, scale, offset, bitwidth, axis, out, rounding, steps, name) -> Any:
    """qa.kernels.fake_quantize on a device array (arguments already checked there, except x).

    Returns ``out``, or a new ``qa._cuda.DeviceArray`` (``__cuda_array_interface__``).
    """

    cuda = _module()
    vx = _view(x, "x", name)
    layout = None
    if axis is not None:
        if not vx.shape:
            raise QAValueError(f"{where(name)}per-channel quantization needs a tensor, got a scalar")
        layout = channel_layout(vx.shape, normalize_axis(axis, len(vx.shape), name))
    channels = None if layout is None else layout[1]
    scale_v, offset_v, use_double = check_quant_params(scale, offset, channels, steps, name)
    if out is None:
        stream = _work_stream(vx)
        device = _call(name, cuda.device_of, vx.ptr) if vx.size > 0 else -1
        dst = _call(name, cuda.DeviceArray, vx.shape, device, stream)
        vo = _View(dst.ptr, vx.shape, vx.size, stream, False, None)
    else:
        dst = out
        vo = _view(out, "out", name)
        if vo.shape != vx.shape:
            raise QAValueError(f"{where(name)}out has shape {vo.shape}, x has shape {vx.shape}")
        if vo.readonly:
            raise QAValueError(f"{where(name)}out is read-only")
        nbytes = 4 * vx.size
        if vx.size > 0 and vo.ptr != vx.ptr and vo.ptr < vx.ptr + nbytes and vx.ptr < vo.ptr + nbytes:
            # The kernel reads and writes element by element in parallel: only out == x is safe.
            raise QAValueError(
                f"{where(name)}out partly overlaps x on the device; pass out=x to quantize in "
                f"place, or a separate array"
            )
        stream = _work_stream(vx, vo)
    if vx.size == 0:  # nothing to compute (an empty channel axis included)
        return dst
    if layout is None:
        _call(name, cuda.fake_quant_per_tensor, vx.ptr, vo.ptr, vx.size, float(scale_v[0]),
              float(offset_v[0]), float(steps), int(rounding), use_double, stream)
    else:
        _call(name, cuda.fake_quant_per_channel, vx.ptr, vo.ptr, *layout, scale_v, offset_v,
              float(steps), int(rounding), use_double, stream)
    return dst


def minmax(x: Any, name: Optional[str] = None) -> Tuple[float, float, int, int, int]:
    """(min, max, n_nan, n_posinf, n_neginf) of a device array, as qa._core.minmax."""
    cuda = _module()
    vx = _view(x, "x", name)
    return tuple(_call(name, cuda.minmax, vx.ptr, vx.size, _work_stream(vx)))


def histogram_add(x: Any, lo: float, width: float, counts: np.ndarray, name: Optional[str] = None) -> None:
    """Adds the finite values of a device array to the host int64 ``counts``, as qa._core.histogram_add."""
    cuda = _module()
    vx = _view(x, "x", name)
    _host_array(counts, np.int64, "counts", name)
    if counts.size < 1:
        raise QAValueError(f"{where(name)}counts must hold at least one bin")
    if not width > 0 or not math.isfinite(width) or not math.isfinite(lo):
        raise QAValueError(
            f"{where(name)}histogram needs a finite lo and a finite positive width, "
            f"got lo={lo}, width={width}"
        )
    _call(name, cuda.histogram_add, vx.ptr, vx.size, float(lo), float(width), counts, _work_stream(vx))


def error_stats(ref: Any, test: Any, acc: np.ndarray, name: Optional[str] = None) -> None:
    """Adds the error between two device arrays to the host float64[7] ``acc``, as qa._core.error_stats."""
    cuda = _module()
    vr = _view(ref, "ref", name)
    vt = _view(test, "test", name)
    if vr.shape != vt.shape:
        raise QAValueError(f"{where(name)}reference shape {vr.shape} and test shape {vt.shape} differ")
    _host_array(acc, np.float64, "acc", name, 7)
    _call(name, cuda.error_stats, vr.ptr, vt.ptr, vr.size, acc, _work_stream(vr, vt))
