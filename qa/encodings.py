"""Quantization encodings (min, max, scale, offset, bitwidth) and how they are computed from statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import numpy as np

from . import _core
from ._fake_quant import fake_quantize
from ._arrays import check_axis, check_bitwidth, num_steps, number_array, real_number, where
from .errors import QAValueError

__all__ = ["Encoding", "encoding_from_range", "compute_encoding", "SCHEMES"]

SCHEMES = ("tf", "tf_enhanced", "percentile")
TF_ENHANCED_GAMMA = 3.0
MIN_RANGE = 0.01

Scalar = Union[float, np.ndarray]


@dataclass(frozen=True)
class Encoding:
    """How one tensor (or each channel of it) maps to integers.

    ``x_hat = (clamp(round(x / scale) - offset, 0, num_steps) + offset) * scale`` with
    ``min = offset * scale`` and ``max = (offset + num_steps) * scale``. Per-channel
    encodings hold arrays (one value per channel along ``axis``).

    Example:
        >>> enc = encoding_from_range(-1.0, 3.0, bitwidth=8)
        >>> round(enc.scale, 6), enc.offset
        (0.015686, -64)
    """

    min: Scalar
    max: Scalar
    scale: Scalar
    offset: Scalar
    bitwidth: int
    symmetric: bool = False
    strict: bool = False
    axis: Optional[int] = None

    @property
    def num_steps(self) -> float:
        return num_steps(self.bitwidth, self.strict)

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def fake_quantize(self, x: Any, out: Optional[np.ndarray] = None, **kwargs: Any) -> np.ndarray:
        """Fake-quantize x with this encoding (see qa.kernels.fake_quantize)."""
        return fake_quantize(
            x, self.scale, self.offset, self.bitwidth, axis=self.axis, out=out,
            strict=self.strict, **kwargs,
        )

    def to_dict(self) -> Union[Dict[str, Any], List[Dict[str, Any]]]:
        """AIMET-style encoding dict(s): min, max, scale, offset, bitwidth, is_symmetric."""
        def one(mn, mx, sc, off):
            return {"min": float(mn), "max": float(mx), "scale": float(sc), "offset": int(off),
                    "bitwidth": self.bitwidth, "is_symmetric": str(self.symmetric)}
        if not self.per_channel:
            return one(self.min, self.max, self.scale, self.offset)
        return [one(*v) for v in zip(self.min, self.max, self.scale, self.offset)]


_F32_MAX = float(np.finfo(np.float32).max)


def _from_grid(delta, offset, steps, bitwidth, symmetric, strict, axis) -> Encoding:
    delta = np.asarray(delta, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64)
    # Keep both ends of the grid inside float32, or fake quantization of finite data gives inf.
    top = np.maximum(np.abs(offset), np.abs(offset + steps))
    delta = np.minimum(delta, _F32_MAX / top * (1 - 2.0**-20))
    mn, mx = offset * delta, (offset + steps) * delta
    if axis is None:
        return Encoding(float(mn), float(mx), float(delta), int(offset), bitwidth, symmetric, strict)
    return Encoding(mn, mx, delta, offset.astype(np.int64), bitwidth, symmetric, strict, axis)


def _check_options(bitwidth, symmetric, strict, name) -> float:
    check_bitwidth(bitwidth, name)
    if strict and not symmetric:
        raise QAValueError(f"{where(name)}strict symmetric quantization needs symmetric=True")
    return num_steps(bitwidth, strict)


def _widen(lo, hi):
    """The min-max rules: include 0, and keep at least MIN_RANGE between min and max."""
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    return lo, np.maximum(hi, lo + MIN_RANGE)


def _check_range(lo: np.ndarray, hi: np.ndarray, axis: Optional[int], name: Optional[str]) -> None:
    """Finite bounds with min <= max: a NaN or swapped range is a caller's bug, never guessed at."""
    nonfinite = ~(np.isfinite(lo) & np.isfinite(hi))
    for bad, what in ((nonfinite, "min and max must be finite"), (lo > hi, "min > max")):
        if not bad.any():
            continue
        if axis is None:
            raise QAValueError(f"{where(name)}{what}: got min={float(lo)}, max={float(hi)}")
        channels = np.flatnonzero(bad)[:8]
        raise QAValueError(
            f"{where(name)}{what} in channel(s) {channels.tolist()}: got min={lo[channels].tolist()}, "
            f"max={hi[channels].tolist()}"
        )


def encoding_from_range(
    min: Any, max: Any, bitwidth: int = 8, *, symmetric: bool = False, strict: bool = False,
    unsigned_symmetric: bool = False, axis: Optional[int] = None, name: Optional[str] = None,
) -> Encoding:
    """The ``tf`` (min-max) encoding of an observed range, per tensor or per channel.

    The range is widened to include 0 and to at least 0.01. Asymmetric encodings snap the
    offset so that 0 is exactly representable. Symmetric: ``delta = M / floor(n/2)`` with
    ``M = max(|min|, |max|)``, levels ``-ceil(n/2) .. floor(n/2)``; strict symmetric drops the
    lowest level; unsigned symmetric (when the range is non-negative) uses ``0 .. n``. When a
    range reaches float32's limits, the scale shrinks so that both grid ends stay finite.

    Args:
        min, max: observed range, finite with min <= max (scalars, or one value per channel
            with ``axis``); anything else is a QAValueError.
        bitwidth: 2 to 32.
        symmetric, strict, unsigned_symmetric: the quantsim options of the same names.
        axis: the channel axis the arrays refer to, or None per tensor.
        name: quantizer name used in error messages.

    Returns:
        An Encoding.

    Example:
        >>> encoding_from_range(-0.5, 2.0, 8, symmetric=True).offset
        -128
    """
    steps = _check_options(bitwidth, symmetric, strict, name)
    axis = check_axis(axis, name)
    lo, hi = number_array(min, "min", name), number_array(max, "max", name)
    if lo.shape != hi.shape:
        raise QAValueError(f"{where(name)}min has shape {lo.shape} but max has shape {hi.shape}")
    if axis is None and lo.size != 1:
        raise QAValueError(f"{where(name)}{lo.size} min/max values need axis= (per channel) or one value")
    if axis is not None:
        lo, hi = lo.reshape(-1), hi.reshape(-1)
    else:
        lo, hi = lo.reshape(()), hi.reshape(())
    _check_range(lo, hi, axis, name)
    return _tf_grid(lo, hi, steps, bitwidth, symmetric, strict, unsigned_symmetric, axis)


def _tf_grid(lo, hi, steps, bitwidth, symmetric, strict, unsigned_symmetric, axis) -> Encoding:
    """The min-max rules on a checked range (float64 arrays, one value per channel or 0-d)."""
    lo, hi = _widen(lo, hi)
    if not symmetric:
        delta = (hi - lo) / steps
        offset = np.round(lo / delta)
    else:
        unsigned = unsigned_symmetric & (lo >= 0)
        abs_max = np.maximum(np.abs(lo), np.abs(hi))
        delta = np.where(unsigned, abs_max / steps, abs_max / math.floor(steps / 2))
        offset = np.where(unsigned, 0.0, -math.ceil(steps / 2))
    return _from_grid(delta, offset, steps, bitwidth, symmetric, strict, axis)


def compute_encoding(
    stats: Any, scheme: str = "tf", bitwidth: int = 8, *, symmetric: bool = False,
    strict: bool = False, unsigned_symmetric: bool = False, percentile: float = 99.99,
) -> Encoding:
    """Compute an encoding from streamed statistics (a RunningMinMax or a Histogram).

    Schemes: ``tf`` (min-max of every value seen), ``tf_enhanced`` (AIMET's SQNR grid
    search over the histogram, saturation weighted by gamma = 3) and ``percentile``
    (clip to the ``percentile``-th and ``100 - percentile``-th values). ``tf_enhanced``
    and ``percentile`` need a Histogram.

    Args:
        stats: the observer that saw the data.
        scheme: "tf", "tf_enhanced" or "percentile".
        bitwidth, symmetric, strict, unsigned_symmetric: as in encoding_from_range.
        percentile: for the percentile scheme, in [50, 100].

    Returns:
        An Encoding (per channel when the observer was per channel).

    Example:
        >>> import numpy as np
        >>> from qa.kernels import Histogram
        >>> h = Histogram()
        >>> h.update(np.linspace(-1, 1, 10001, dtype=np.float32))
        >>> enc = compute_encoding(h, "tf_enhanced", 8)
        >>> -1.01 < enc.min < -0.9 and 0.9 < enc.max < 1.01
        True
    """
    if not all(hasattr(stats, a) for a in ("seen_finite", "min", "max", "axis")):
        raise QAValueError(
            f"stats must be the RunningMinMax or Histogram that observed the data, got {type(stats).__name__}"
        )
    name = getattr(stats, "name", None)
    steps = _check_options(bitwidth, symmetric, strict, name)
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise QAValueError(f"{where(name)}unknown quantization scheme {scheme!r}; use one of {SCHEMES}")
    if not stats.seen_finite:
        raise QAValueError(f"{where(name)}no finite values were observed, cannot compute an encoding")
    empty = np.flatnonzero(np.atleast_1d(~np.isfinite(stats.min)))
    if empty.size:
        raise QAValueError(f"{where(name)}channel(s) {empty[:8].tolist()} saw no finite values")
    axis = stats.axis
    opts = dict(symmetric=symmetric, strict=strict, unsigned_symmetric=unsigned_symmetric,
                axis=axis, name=name)
    if scheme == "tf":
        return encoding_from_range(stats.min, stats.max, bitwidth, **opts)
    if not hasattr(stats, "counts"):
        raise QAValueError(f"{where(name)}scheme {scheme!r} needs a Histogram observer")
    if scheme == "percentile":
        p = real_number(percentile, "percentile", name)
        if not 50.0 <= p <= 100.0:
            raise QAValueError(f"{where(name)}percentile must be a number in [50, 100], got {percentile!r:.80}")
        lo = np.maximum(stats.quantile(1.0 - p / 100.0), stats.min)
        hi = np.minimum(stats.quantile(p / 100.0), stats.max)
        # Quantiles interpolate inside bins and can pass the observed max (or min), so lo may
        # exceed hi a little. The min-max widening (0 included) settles that, as the numpy
        # reference specifies, so this range skips encoding_from_range's min <= max check.
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        return _tf_grid(lo, hi, steps, bitwidth, symmetric, strict, unsigned_symmetric, axis)
    # tf_enhanced
    obs_lo, obs_hi = _widen(stats.min, stats.max)
    unsigned = symmetric & unsigned_symmetric & (obs_lo >= 0)
    mode = np.where(unsigned, 2, 1 if symmetric else 0)
    if axis is None:
        mn, mx, _ = _core.tf_enhanced_search(stats.counts, stats.lo, stats.width, float(obs_lo),
                                             float(obs_hi), steps, int(mode), TF_ENHANCED_GAMMA)
    else:
        mn, mx = np.empty(stats.channels), np.empty(stats.channels)
        for m in np.unique(mode):  # one call per offset mode keeps the C++ loop parallel
            sel = np.flatnonzero(mode == m)
            a, b, _ = _core.tf_enhanced_search_per_channel(
                np.ascontiguousarray(stats.counts[sel]), np.ascontiguousarray(stats.lo[sel]),
                np.ascontiguousarray(stats.width[sel]), np.ascontiguousarray(obs_lo[sel]),
                np.ascontiguousarray(obs_hi[sel]), steps, int(m), TF_ENHANCED_GAMMA)
            mn[sel], mx[sel] = a, b
    delta = (np.asarray(mx) - np.asarray(mn)) / steps
    offset = np.round(np.asarray(mn) / delta)
    return _from_grid(delta, offset, steps, bitwidth, symmetric, strict, axis)
