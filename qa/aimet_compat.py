"""AIMET 2.42's encodings, bit for bit: the engine of qa's ``aimet_compat=True`` parity mode.

qa's own encodings (``qa.encodings``) differ from AIMET 2.x's on purpose in places (an exact
growing histogram, no float32 rounding quirks). This module instead computes what aimet-torch
2.42 computes, in the same float32 arithmetic, so that a parity run gives AIMET's numbers.
``tests/data/aimet/NOTES.md`` describes every rule (section numbers below refer to it);
``tests/data/aimet/golden.json`` holds AIMET's own numbers, and ``tests/test_aimet_encodings.py``
checks this module against them. AIMET is not needed (nor imported) for any of this.

What is here:

* :class:`AimetObserver` observes one tensor stream as AIMET's quantizer would for one scheme:
  running min/max (``tf``, NOTES §2), a 512-bin histogram with the 3x growth limit
  (``tf_enhanced``, §3) or a 2048-bin histogram without limit (``percentile``), per tensor or
  per channel. It also feeds the qa observer it wraps, and reads through to it, so that the rest
  of qa (reports, sentinel detection, NaN counts) works unchanged.
* :func:`aimet_encoding`: the encoding AIMET derives from those statistics (§1, §2, §4, §5).
* :func:`decompose_weight`: AIMET's pre-quantized weight decomposition (§7.1), exact cases only.
* :func:`protect_weight`: AIMET's weight-scale overflow protection of Conv/ConvTranspose/Linear
  layers and the re-snap of the range that follows it (§7.2).
* :func:`fake_quantize_like_aimet`: AIMET's evaluation-time fake quantization (§8).

Every encoding returned is an :class:`AimetEncoding`: a ``qa.encodings.Encoding`` (qa's
convention: ``offset`` is AIMET's legacy offset, internal offset + qmin, e.g. -128 for symmetric
8 bit; ``min``/``max`` are AIMET's grid-snapped ``(offset + qmin) * scale`` and ``(offset + qmax)
* scale``) that also carries AIMET's raw quantizer range (``raw_min``/``raw_max``). Values are
float32 numbers, held as Python floats per tensor and float64 arrays per channel.

Reproduced bitwise against golden.json: every per-tensor and per-channel encoding (raw range,
scale, offset, snapped range) of tf, tf_enhanced and percentile (100 and 99.9), 8 and 4 bit,
symmetric and asymmetric, activations and weights, before and after overflow protection; the
3-batch histogram merging (counts, edges, stats) and all multi-batch encodings; AIMET's
fake-quantized outputs; the golden model's BN-folded per-channel weights, plain and protected
(with bias, upstream input encodings, and the ``min_max_ranges`` QuantAnalyzer wrote); whether
AIMET decomposes a weight, for every golden case but one tensor (below), and the constant-weight
decompositions.

Not reproduced, and why:

* The pre-quantized decomposition of weights that are *not* exactly on an integer grid. AIMET
  2.42 accepts some of those (golden.json: the per-channel ``halfway`` weight at 8 bit, whose
  channels 0, 3, 4, 6 and 7 have codes up to half a step off the grid, gets least-squares scales
  such as 0.03173693) with tolerances that NOTES.md does not give. :func:`decompose_weight`
  decomposes only tensors whose every channel is an exact grid (constants included) and returns
  None otherwise, so such a tensor gets the analyzer's encoding instead of AIMET's. Scales of
  exact grids are checked against golden only for constants (scale |c|) and for the exact
  channels of ``halfway`` (1, 2 and 5: scale 1/128, the coarsest grid anchored at max|w|).
* Non-finite values. NaN is left out everywhere (AIMET's min/max would turn NaN, and its
  encoding with it). For ``tf``, +-inf is left out too (AIMET would clamp the range to +-float32
  max, an encoding that quantizes every finite value to 0 or one end). Histograms count +-inf in
  their first/last bin exactly as AIMET does (its histogram range comes from the finite values
  and out-of-range values go to the end bins). A batch (or channel) without finite values leaves
  the AIMET statistics unchanged. The wrapped qa observer still counts every NaN and inf.
* Histogram bins beyond 2**24 values: AIMET's float32 counters stop being exact there; these
  counts are exact integers converted to float32 per batch.
* Bias-overflow and accumulator-overflow protection (§7.2) follow the notes' formulas, but no
  golden case triggers them (their biases are far too small), so their float rounding is unchecked.
  A layer without a quantized output is re-snapped only when the bias rule grew its scale: the
  golden model's ``min_max_ranges`` show that, against the notes' "always" (see protect_weight).
* Only float32 data is modelled (AIMET computes in the tensor's dtype).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from . import _device
from ._arrays import as_float32, check_axis, check_bitwidth, normalize_axis, real_number, where
from .encodings import Encoding
from .errors import QAValueError

__all__ = [
    "AIMET_SCHEMES",
    "AimetEncoding",
    "AimetObserver",
    "aimet_encoding",
    "decompose_weight",
    "protect_weight",
    "fake_quantize_like_aimet",
]

log = logging.getLogger("qa")

AIMET_SCHEMES = ("tf", "tf_enhanced", "percentile")
HISTOGRAM_BINS = {"tf_enhanced": 512, "percentile": 2048}
GROWTH_LIMIT = {"tf_enhanced": 3.0, "percentile": math.inf}  # §3: percentile has no limit
TF_ENHANCED_GAMMA = 3.0  # §4: clipped bins cost 3x
ASYMMETRIC_DELTAS = 17  # §4: D * k / 16, k = 1..17
SYMMETRIC_DELTAS = 101  # §4: D * k / 100, k = 1..101
MAX_OFFSETS = 21  # §4: offset candidates, o_obs included
ACCUMULATOR_BOUND = 2.0**31 - 2.0**15  # §7.2
REQUANT_FLOOR = 2.0**-23.5  # §7.2
CHANNEL_CHUNK_ELEMENTS = 1 << 22  # tf_enhanced search: float32 elements per temporary

_F = np.float32
_F32_MAX = float(np.finfo(np.float32).max)
_F32_EPS = float(np.finfo(np.float32).eps)

Scalar = Union[float, np.ndarray]


@dataclass(frozen=True)
class AimetEncoding(Encoding):
    """An Encoding as AIMET 2.42 computes it, with AIMET's raw quantizer range.

    ``raw_min``/``raw_max`` are the quantizer's stored min/max parameters (what ``set_range``
    received); ``min``/``max`` are the grid-snapped range every AIMET export writes.

    Example:
        >>> obs = AimetObserver("tf", None)
        >>> obs.update(np.array([-1.0, 3.0], np.float32))
        >>> enc = aimet_encoding(obs, 8, symmetric=False)
        >>> enc.raw_min, enc.min, enc.offset
        (-1.0, -1.003921627998352, -64)
    """

    raw_min: Optional[Scalar] = None
    raw_max: Optional[Scalar] = None

    def fake_quantize(self, x: Any, out: Optional[np.ndarray] = None, **kwargs: Any) -> np.ndarray:
        """Fake-quantize as AIMET evaluates (:func:`fake_quantize_like_aimet`: multiply by the
        float32 reciprocal of the scale, round half to even); ``rounding`` is ignored."""
        result = fake_quantize_like_aimet(x, self)
        if out is None:
            return result
        np.copyto(out, result)
        return out


# --------------------------------------------------------------------------------------------
# Grid, scale and offset (§1)
# --------------------------------------------------------------------------------------------

def _grid(bitwidth: int, symmetric: bool) -> Tuple[int, int]:
    """(qmin, qmax): signed [-ceil(n/2), floor(n/2)] when symmetric, else unsigned [0, n]."""
    n = 2**bitwidth - 1
    return (-((n + 1) // 2), n // 2) if symmetric else (0, n)


def _min_scale(n: int) -> float:
    """AIMET's smallest scale, min(float32 eps, 0.01 / n), a Python double."""
    return min(_F32_EPS, 0.01 / n)


def _finite32(x: np.ndarray) -> np.ndarray:
    """set_range's clamp to finite float32."""
    return np.clip(x, _F(-_F32_MAX), _F(_F32_MAX)).astype(_F)


def _finalize(raw_min: np.ndarray, raw_max: np.ndarray, qmin: int, qmax: int, symmetric: bool
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scale, internal offset, snapped min, snapped max) of raw float32 ranges, as AIMET derives them."""
    n = qmax - qmin
    with np.errstate(over="ignore", invalid="ignore"):
        scale = np.maximum((raw_max - raw_min) / _F(n), _F(_min_scale(n))).astype(_F)
        if symmetric:
            offset = np.full(scale.shape, -round((qmin + qmax) / 2), np.int64)
        else:
            offset = np.clip(np.round(raw_min / scale) - _F(qmin), -qmax, -qmin).astype(np.int64)
        snapped_min = ((offset + qmin).astype(_F) * scale).astype(_F)
        snapped_max = ((offset + qmax).astype(_F) * scale).astype(_F)
    return scale, offset, snapped_min, snapped_max


def _encoding(raw_min: np.ndarray, raw_max: np.ndarray, bitwidth: int, symmetric: bool,
              axis: Optional[int], name: Optional[str]) -> AimetEncoding:
    """The AimetEncoding of raw float32 ranges (one per channel)."""
    qmin, qmax = _grid(bitwidth, symmetric)
    raw_min, raw_max = _finite32(raw_min), _finite32(raw_max)
    scale, offset, mn, mx = _finalize(raw_min, raw_max, qmin, qmax, symmetric)
    if not np.all(np.isfinite(scale)):
        raise QAValueError(f"{where(name)}the range [{float(raw_min.min())}, {float(raw_max.max())}] "
                           f"overflows float32 in AIMET's scale arithmetic")
    legacy = offset + qmin
    if axis is None:
        return AimetEncoding(float(mn[0]), float(mx[0]), float(scale[0]), int(legacy[0]), bitwidth,
                             symmetric, False, None, float(raw_min[0]), float(raw_max[0]))
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    return AimetEncoding(f64(mn), f64(mx), f64(scale), legacy.astype(np.int64), bitwidth, symmetric,
                         False, axis, f64(raw_min), f64(raw_max))


# --------------------------------------------------------------------------------------------
# Range rules: min-max (§2) and the percentile adjustment (§5)
# --------------------------------------------------------------------------------------------

def _minmax_range(data_min: np.ndarray, data_max: np.ndarray, n: int, symmetric: bool
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """MinMaxEncodingAnalyzer: include 0, tiny-range guard, symmetric delta (float32)."""
    ms = _min_scale(n)
    mn = np.minimum(data_min.astype(_F), _F(0))
    mx = np.maximum(data_max.astype(_F), _F(0))
    adj = _F(ms) * ((mx - mn) / _F(n) < ms).astype(_F)
    if not symmetric:
        return mn, (mx + _F(n) * adj).astype(_F)
    pos, neg = n // 2, (n + 1) // 2
    mx = mx + _F(pos) * adj
    mn = mn - _F(neg) * adj
    delta = np.maximum(mx / _F(pos + (1 if n == 3 else 0)), -mn / _F(neg))
    return (_F(-neg) * delta).astype(_F), (_F(pos) * delta).astype(_F)


def _adjust_range(cmin: np.ndarray, cmax: np.ndarray, n: int, symmetric: bool
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """The percentile analyzer's adjust_min_max: like §2 but without the 2-bit special case."""
    ms = _min_scale(n)
    cmin = np.minimum(cmin.astype(_F), _F(0))
    cmax = np.maximum(cmax.astype(_F), _F(0))
    tiny = (cmax - cmin) / _F(n) < ms
    pos, neg = n // 2, (n + 1) // 2
    if not symmetric:
        return cmin, np.where(tiny, cmax + _F(ms * n), cmax).astype(_F)
    cmin = np.where(tiny, cmin - _F(ms * neg), cmin)
    cmax = np.where(tiny, cmax + _F(ms * pos), cmax)
    delta = np.maximum(cmax / _F(pos), -cmin / _F(neg))
    return (_F(-neg) * delta).astype(_F), (_F(pos) * delta).astype(_F)


# --------------------------------------------------------------------------------------------
# Histograms (§3)
# --------------------------------------------------------------------------------------------

def _edges(lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """Bin edges [k, bins + 1]: constant data spans [c - 0.5, c + 0.5]; edges = i * step + lo."""
    flat = lo == hi
    lo = np.where(flat, lo - _F(0.5), lo).astype(_F)
    hi = np.where(flat, hi + _F(0.5), hi).astype(_F)
    step = ((hi - lo) / _F(bins)).astype(_F)
    return (np.arange(bins + 1, dtype=_F)[None, :] * step[:, None] + lo[:, None]).astype(_F)


def _histc(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch.histc on CPU, one row per histogram: (counts [k, bins] int64, below [k], above [k]).

    The bin of x in [lo, hi] is ``floor(fl32(fl32((x - lo) * bins) / (hi - lo)))`` clipped to
    bins - 1 (multiply, then divide). NaN is in no bin and neither below nor above.
    """
    k = rows.shape[0]
    counts = np.zeros((k, bins), np.int64)
    below, above = np.zeros(k, np.int64), np.zeros(k, np.int64)
    for c in range(k):
        x, a, b = rows[c], lo[c], hi[c]
        with np.errstate(invalid="ignore"):
            below[c] = np.count_nonzero(x < a)
            above[c] = np.count_nonzero(x > b)
            if below[c] or above[c] or np.isnan(x.min(initial=np.inf)):
                x = x[(x >= a) & (x <= b)]
        if not b > a:  # a constant beyond 2^24 in magnitude: c +- 0.5 == c in float32
            counts[c, 0] = x.size
            continue
        with np.errstate(over="ignore", invalid="ignore"):  # overflow only near float32's limits
            idx = (((x - a) * _F(bins)) / (b - a)).astype(np.int64)  # >= 0, so truncation is floor
        np.clip(idx, 0, bins - 1, out=idx)
        counts[c] = np.bincount(idx, minlength=bins)
    return counts, below, above


def _rebin(counts: np.ndarray, edges: np.ndarray, umin: np.ndarray, umax: np.ndarray) -> np.ndarray:
    """merge_stats: spread old counts [k, bins] onto the bins of [umin, umax] (float32)."""
    k, bins = counts.shape
    dw = ((umax - umin) / _F(bins)).astype(_F)[:, None]
    sw = (edges[:, 1] - edges[:, 0])[:, None]
    starts = edges[:, :-1]
    lo = umin[:, None]

    def bin_of(v: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore"):
            return np.minimum(((v - lo) / dw).astype(np.int32), bins - 1).astype(np.int64)

    dest = bin_of(starts)
    dest_end = lo + dw * (dest + 1).astype(_F)
    part = np.minimum(np.round(((dest_end - starts) / sw) * counts), counts).astype(_F)
    rows = np.repeat(np.arange(k), bins).reshape(k, bins)
    out = np.zeros((k, bins), _F)
    np.add.at(out, (rows, dest), part)
    rest = part < counts
    np.add.at(out, (rows[rest], bin_of(starts + dw)[rest]), (counts - part)[rest])
    return out


# --------------------------------------------------------------------------------------------
# tf_enhanced (§4) and percentile (§5) on histograms
# --------------------------------------------------------------------------------------------

def _fixed_offsets(n: int) -> np.ndarray:
    """The asymmetric offset candidates before o_obs: round(-n + i*s), s = n/(num_off-2)."""
    num = min(n + 2, MAX_OFFSETS)
    step = n / (num - 2)
    return np.round(-n + np.arange(num - 1) * step).astype(_F)


def _tf_enhanced(counts: np.ndarray, edges: np.ndarray, smin: np.ndarray, smax: np.ndarray, n: int,
                 symmetric: bool) -> Tuple[np.ndarray, np.ndarray]:
    """The SQNR search over (delta, offset) candidates, for k histograms at once (float32)."""
    ms = _min_scale(n)
    mn = np.minimum(smin, _F(0))
    mx = np.maximum(smax, _F(0))
    mx = np.maximum(mx, mn + _F(ms * n))
    k, bins = counts.shape
    if symmetric:
        full = _F(2) * np.maximum(mx, -mn) / _F(n)
        ks = np.arange(1, SYMMETRIC_DELTAS + 1, dtype=_F)
        deltas = np.maximum(full[:, None] * ks[None, :] / _F(100), _F(ms))[:, :, None]  # [k, D, 1]
        offsets = np.full((k, 1, 1), (-n) // 2, _F)
    else:
        full = (mx - mn) / _F(n)
        o_obs = np.round(mn / full)
        obs_min = full * o_obs
        obs_max = obs_min + full * _F(n)
        ks = np.arange(1, ASYMMETRIC_DELTAS + 1, dtype=_F)
        d0 = (full[:, None] * ks[None, :] / _F(16))[:, :, None]  # [k, D, 1]
        fixed = np.broadcast_to(_fixed_offsets(n)[None, :], (k, min(n + 2, MAX_OFFSETS) - 1))
        o0 = np.concatenate([fixed, o_obs[:, None]], axis=1)[:, None, :]  # [k, 1, O]
        t = d0 * o0
        tmin = np.maximum(obs_min[:, None, None], t)
        tmax = np.minimum(obs_max[:, None, None], t + d0 * _F(n))
        deltas = np.maximum((tmax - tmin) / _F(n), _F(ms)).astype(_F)  # [k, D, O]
        offsets = np.round(tmin / deltas).astype(_F)
    deltas, offsets = np.broadcast_arrays(deltas, offsets)
    width = edges[:, 1] - edges[:, 0]
    mids = (edges[:, 0] + width / _F(2))[:, None] + width[:, None] * np.arange(bins, dtype=_F)[None, :]
    cost = np.empty(deltas.shape, _F)
    per_row = deltas[0].size * bins
    step = max(1, CHANNEL_CHUNK_ELEMENTS // per_row)
    for a in range(0, k, step):
        s = slice(a, a + step)
        d, o, m = deltas[s][..., None], offsets[s][..., None], mids[s][:, None, None, :]
        q = np.round(m / d - o)
        clipped = (q < 0) | (q > n)
        x_hat = (np.clip(q, 0, n) + o) * d
        err = np.abs(x_hat - m) ** 2 * counts[s][:, None, None, :]
        err = np.where(clipped, err * _F(TF_ENHANCED_GAMMA), err)
        cost[s] = err.sum(axis=-1, dtype=_F)
    best = np.argmin(cost.reshape(k, -1), axis=1)
    delta = deltas.reshape(k, -1)[np.arange(k), best]
    offset = offsets.reshape(k, -1)[np.arange(k), best]
    lo = (offset * delta).astype(_F)
    return lo, (lo + _F(n) * delta).astype(_F)


def _percentile(counts: np.ndarray, edges: np.ndarray, percentile: float, n: int, symmetric: bool
                ) -> Tuple[np.ndarray, np.ndarray]:
    """Left edges of the bins where the quantiles fall (the end points at 100), then adjusted."""
    k = counts.shape[0]
    cmin, cmax = np.empty(k, _F), np.empty(k, _F)
    for c in range(k):
        if percentile == 100.0:
            lo_i, hi_i = 0, -1
        else:
            cum = np.cumsum(counts[c], dtype=_F)
            hi_i = int(np.searchsorted(cum, cum[-1] * _F(percentile / 100), side="left"))
            lo_i = int(np.searchsorted(cum, cum[-1] * _F(1 - percentile / 100), side="left"))
        cmin[c], cmax[c] = edges[c, lo_i], edges[c, hi_i]
    return _adjust_range(cmin, cmax, n, symmetric)


# --------------------------------------------------------------------------------------------
# The observer
# --------------------------------------------------------------------------------------------

def _host(x: Any, name: Optional[str]) -> Any:
    """x on the host (AIMET's statistics are computed here with numpy)."""
    if not _device.is_device_array(x):
        return x
    for attr in ("get", "cpu"):  # cupy, torch
        fn = getattr(x, attr, None)
        if callable(fn):
            y = fn()
            if isinstance(y, np.ndarray):
                return y
            detach = getattr(y, "detach", None)
            return (detach() if callable(detach) else y).numpy()
    raise QAValueError(f"{where(name)}AIMET-compatible statistics need host arrays; copy the tensor "
                       f"to the host first (got {type(x).__name__})")


class AimetObserver:
    """Observes one tensor stream as AIMET 2.42's quantizer does, and feeds a qa observer too.

    ``tf`` keeps the running float32 min/max; ``tf_enhanced`` a 512-bin histogram whose range may
    grow to at most 3x the first batch's (a batch beyond that is clipped into the end bins);
    ``percentile`` a 2048-bin histogram without limit. Per channel (``axis`` set) every channel
    has its own statistics. Histograms are AIMET's: float32 counts, edges from the first batch's
    finite min/max, later batches merged by re-binning (§3), +-inf counted in the end bins. NaN
    is left out (and so is +-inf for ``tf``); see the module docstring.

    ``update`` first feeds ``inner`` (a qa ``Histogram`` or ``RunningMinMax``, or None), and
    every attribute this class does not define is read from ``inner``, so qa's reports, sentinel
    detection and NaN counts keep working on an AimetObserver.

    Args:
        scheme: "tf", "tf_enhanced" or "percentile".
        inner: the qa observer to feed and read through to (its axis must be ``axis``), or None.
        axis: None per tensor, or the channel axis (0 for Conv/Linear weights).
        name: quantizer name for messages; defaults to ``inner.name``.

    Example:
        >>> from qa.observers import Histogram
        >>> obs = AimetObserver("tf_enhanced", Histogram(bins=64))
        >>> obs.update(np.linspace(-1, 3, 101, dtype=np.float32))
        >>> obs.total, obs.aimet_state()["counts"].shape  # qa's histogram, AIMET's histogram
        (101, (1, 512))
    """

    def __init__(self, scheme: str, inner: Any, axis: Optional[int] = None, name: Optional[str] = None) -> None:
        if name is None and inner is not None:
            name = getattr(inner, "name", None)
        self.name = name
        if scheme not in AIMET_SCHEMES:
            raise QAValueError(f"{where(name)}AIMET scheme must be one of {AIMET_SCHEMES}, got {scheme!r:.80}")
        self.scheme = scheme
        self.axis = check_axis(axis, name)
        if inner is not None and getattr(inner, "axis", self.axis) != self.axis:
            raise QAValueError(f"{where(name)}the inner observer's axis ({inner.axis}) is not the "
                               f"AIMET observer's ({self.axis})")
        self.inner = inner
        self.bins: Optional[int] = HISTOGRAM_BINS.get(scheme)
        self.growth = GROWTH_LIMIT.get(scheme)
        self._k: Optional[int] = None  # rows of AIMET's statistics: channels, or 1 per tensor
        self._batches = 0
        self._started: Optional[np.ndarray] = None  # [k] bool
        self._min: Optional[np.ndarray] = None  # [k] float32: running min/max, or the histogram stats
        self._max: Optional[np.ndarray] = None
        self._counts: Optional[np.ndarray] = None  # [k, bins] float32
        self._edges: Optional[np.ndarray] = None  # [k, bins + 1] float32
        self._left: Optional[np.ndarray] = None  # [k] growth limits, fixed at the first batch
        self._right: Optional[np.ndarray] = None

    def __getattr__(self, attr: str) -> Any:
        # Only called for attributes not found normally; never recurse while unpickling.
        if attr.startswith("__") or attr == "inner" or "inner" not in self.__dict__:
            raise AttributeError(attr)
        inner = self.__dict__["inner"]
        if inner is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {attr!r} (no inner observer)")
        return getattr(inner, attr)

    def __repr__(self) -> str:
        return (f"AimetObserver(scheme={self.scheme!r}, axis={self.axis!r}, name={self.name!r}, "
                f"inner={type(self.inner).__name__})")

    @property
    def channels(self) -> Optional[int]:
        """Channels seen (None per tensor or before the first batch), as qa's observers say it."""
        if self.inner is not None and hasattr(self.inner, "channels"):
            return self.inner.channels
        return self._k if self.axis is not None else None

    # -- state ---------------------------------------------------------------------------------

    def _rows(self, x: Any) -> np.ndarray:
        """The batch as float32 rows [k, m]: one row per channel (one row per tensor)."""
        x = as_float32(_host(x, self.name), name=self.name)
        if self.axis is None:
            rows = x.reshape(1, -1)
        else:
            if x.ndim == 0:
                raise QAValueError(f"{where(self.name)}per-channel statistics need a tensor with an axis")
            ax = normalize_axis(self.axis, x.ndim, self.name)
            rows = np.moveaxis(x, ax, 0).reshape(x.shape[ax], -1)
        k = rows.shape[0]
        if self._k is None:
            if k == 0:
                raise QAValueError(f"{where(self.name)}axis {self.axis} has no channels")
            self._allocate(k)
        elif k != self._k:
            raise QAValueError(f"{where(self.name)}batch has {k} channels along axis {self.axis}, "
                               f"earlier batches had {self._k}")
        return rows

    def _allocate(self, k: int) -> None:
        self._k = k
        self._started = np.zeros(k, bool)
        self._min = np.full(k, np.inf, _F)
        self._max = np.full(k, -np.inf, _F)
        if self.bins is not None:
            self._counts = np.zeros((k, self.bins), _F)
            self._edges = np.zeros((k, self.bins + 1), _F)
            self._left = np.full(k, -np.inf, _F)
            self._right = np.full(k, np.inf, _F)

    @property
    def aimet_seen_finite(self) -> bool:
        """True when every channel has seen a finite value (AIMET has statistics to encode)."""
        return self._started is not None and bool(self._started.all())

    def aimet_state(self) -> Dict[str, Any]:
        """AIMET's statistics so far: ``min``/``max`` [k] (the running min/max, or a histogram's
        stats min/max), and for histograms ``counts`` [k, bins] and ``edges`` [k, bins + 1]
        (float32 copies; k is 1 per tensor)."""
        if self._k is None:
            return {}
        state = {"min": self._min.copy(), "max": self._max.copy()}
        if self.bins is not None:
            state.update(counts=self._counts.copy(), edges=self._edges.copy())
        return state

    # -- update --------------------------------------------------------------------------------

    def update(self, x: Any) -> None:
        """Add one batch: feeds the inner qa observer, then AIMET's statistics."""
        if self.inner is not None:
            self.inner.update(x)
        rows = self._rows(x)
        with np.errstate(invalid="ignore"):
            if np.isfinite(rows).all():
                bmin, bmax = rows.min(axis=1), rows.max(axis=1)
            else:
                finite = np.isfinite(rows)
                bmin = np.where(finite, rows, np.inf).min(axis=1).astype(_F)
                bmax = np.where(finite, rows, -np.inf).max(axis=1).astype(_F)
        has = bmin <= bmax  # the channel has finite values in this batch
        if self.bins is None:
            self._min = np.where(has, np.minimum(self._min, bmin), self._min).astype(_F)
            self._max = np.where(has, np.maximum(self._max, bmax), self._max).astype(_F)
        else:
            new = has & ~self._started
            if new.any():
                self._first(rows[new], new, bmin[new], bmax[new])
            old = has & self._started & ~new
            if old.any():
                self._merge(rows[old], old, bmin[old], bmax[old])
        self._started |= has
        self._batches += 1

    def _first(self, rows: np.ndarray, sel: np.ndarray, bmin: np.ndarray, bmax: np.ndarray) -> None:
        """A channel's first batch: edges from its finite min/max, limits fixed from them."""
        edges = _edges(bmin, bmax, self.bins)
        lo, hi = edges[:, 0], edges[:, -1]
        counts, below, above = _histc(rows, lo, hi, self.bins)
        counts = counts.astype(_F)
        counts[:, 0] += below.astype(_F)
        counts[:, -1] += above.astype(_F)
        self._counts[sel], self._edges[sel] = counts, edges
        self._min[sel], self._max[sel] = bmin, bmax
        if math.isfinite(self.growth):
            with np.errstate(over="ignore", invalid="ignore"):  # a float32-wide range: limits at +-inf, as in AIMET
                half = (hi - lo) * _F(self.growth) / _F(2)
                self._left[sel], self._right[sel] = lo - half, hi + half

    def _merge(self, rows: np.ndarray, sel: np.ndarray, bmin: np.ndarray, bmax: np.ndarray) -> None:
        """merge_stats: grow the range (within the limits), re-bin old counts, add the batch."""
        edges, counts = self._edges[sel], self._counts[sel]
        umin = np.minimum(np.maximum(bmin, self._left[sel]), edges[:, 0]).astype(_F)
        umax = np.minimum(np.maximum(bmax, edges[:, -1]), self._right[sel]).astype(_F)
        keep = (umin == self._min[sel]) & (umax == self._max[sel])
        moved = counts.copy()
        if (~keep).any():
            moved[~keep] = _rebin(counts[~keep], edges[~keep], umin[~keep], umax[~keep])
        new, below, above = _histc(rows, umin, umax, self.bins)
        total = (new.astype(_F) + moved).astype(_F)
        total[:, 0] += below.astype(_F)
        total[:, -1] += above.astype(_F)
        self._counts[sel], self._edges[sel] = total, _edges(umin, umax, self.bins)
        self._min[sel], self._max[sel] = umin, umax


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------

def _check_symmetric(symmetric: Any, name: Optional[str]) -> bool:
    if not isinstance(symmetric, (bool, np.bool_)):
        raise QAValueError(f"{where(name)}symmetric must be True or False, got {symmetric!r:.80}")
    return bool(symmetric)


def aimet_encoding(obs: AimetObserver, bitwidth: int, symmetric: bool, percentile: float = 100.0,
                   fixed: Optional[Tuple[Optional[float], Optional[float]]] = None) -> AimetEncoding:
    """The encoding AIMET 2.42 computes from what ``obs`` saw (its scheme decides how).

    Symmetric encodings use AIMET's signed grid (8 bit: -128..127, offset -128 in qa's
    convention); asymmetric ones the unsigned grid 0..2^b-1. Strict and unsigned symmetric are
    not modes of AIMET 2.x.

    Args:
        obs: the AimetObserver that saw the data.
        bitwidth: 2 to 32.
        symmetric: AIMET's ``is_symmetric``.
        percentile: the percentile scheme's value, in [50, 100] (AIMET's default is 100);
            checked but unused by the other schemes.
        fixed: a config's ``encoding_constraints`` as (min, max): the sides given replace the
            calibrated ones in the quantizer's range (AIMET's ``encoding_min_max_fixed_vals``; it
            encodes such quantizers with min-max, so ``obs`` should be a "tf" observer). A range
            fixed on both sides symmetrically around 0 is encoded symmetric, as AIMET does.

    Returns:
        An AimetEncoding (per channel when ``obs.axis`` is set).

    Raises:
        QAValueError: bad arguments, or a tensor (channel) without finite data.

    Example:
        >>> obs = AimetObserver("tf", None)
        >>> obs.update(np.array([0.0, 0.5, 2.0], np.float32))
        >>> enc = aimet_encoding(obs, 8, symmetric=True)
        >>> enc.scale, enc.offset, enc.raw_min, enc.raw_max
        (0.015748031437397003, -128, -2.0157480239868164, 2.0)
    """
    if not isinstance(obs, AimetObserver):
        raise QAValueError(f"aimet_encoding needs an AimetObserver, got {type(obs).__name__}")
    name = obs.name
    bitwidth = check_bitwidth(bitwidth, name)
    symmetric = _check_symmetric(symmetric, name)
    p = real_number(percentile, "percentile", name)
    if not 50.0 <= p <= 100.0:
        raise QAValueError(f"{where(name)}percentile must be in [50, 100], got {percentile!r:.80}")
    if obs._k is None or not obs._started.any():
        raise QAValueError(f"{where(name)}no finite data was observed: AIMET has no encoding for it")
    if not obs._started.all():
        missing = np.flatnonzero(~obs._started)[:8].tolist()
        raise QAValueError(f"{where(name)}channel(s) {missing} saw no finite data: AIMET has no encoding for them")
    qmin, qmax = _grid(bitwidth, symmetric)
    n = qmax - qmin
    if obs.scheme == "tf":
        lo, hi = _minmax_range(obs._min, obs._max, n, symmetric)
    elif obs.scheme == "tf_enhanced":
        lo, hi = _tf_enhanced(obs._counts, obs._edges, obs._min, obs._max, n, symmetric)
    else:
        lo, hi = _percentile(obs._counts, obs._edges, p, n, symmetric)
    if fixed is not None:
        fmin, fmax = fixed
        if fmin is not None and fmax is not None and math.isclose(fmin, -fmax):
            symmetric = True
            qmin, qmax = _grid(bitwidth, symmetric)
        lo = lo if fmin is None else np.full_like(lo, _F(fmin))
        hi = hi if fmax is None else np.full_like(hi, _F(fmax))
    enc = _encoding(lo, hi, bitwidth, symmetric, obs.axis, name)
    log.debug("%saimet %s encoding: scale %s offset %s", where(name), obs.scheme, enc.scale, enc.offset)
    return enc


def _fit_grid(row: np.ndarray, qmin: int, qmax: int) -> Optional[float]:
    """The float32 scale s with row == codes * s, codes integers in [qmin, qmax], the coarsest one
    anchored at max|row|; None when no such exact grid exists (or the row is all zero)."""
    v = row.astype(np.float64)
    amax = float(np.abs(v).max())
    if not amax > 0:
        return None
    anchor_negative = -amax in v and amax not in v
    top = -qmin if anchor_negative else qmax
    tol = 4.0 * _F32_EPS * amax  # what float32 storage of codes * s can be off by
    sample = v[: 256]
    divisors = np.arange(1, top + 1, dtype=np.float64)
    scales = amax / divisors
    codes = np.round(sample[None, :] / scales[:, None])
    ok = (np.abs(sample[None, :] - codes * scales[:, None]) <= tol).all(axis=1)
    for d in np.flatnonzero(ok):
        s = scales[d]
        q = np.round(v / s)
        if q.min() < qmin or q.max() > qmax or np.abs(v - q * s).max() > tol:
            continue
        s = float(_F((v * q).sum() / (q * q).sum()))  # least squares: s itself on an exact grid
        if np.abs(v - q * s).max() <= tol:
            return s
    return None


def decompose_weight(values: Any, bitwidth: int, axis: Optional[int]) -> Optional[AimetEncoding]:
    """AIMET's pre-quantized decomposition of a symmetric weight (NOTES §7.1), exact grids only.

    AIMET 2.42 first tries to explain a symmetric weight as ``codes * scale`` (per channel along
    ``axis``) with integer codes in the signed grid; when that works the range is
    ``[scale * qmin, scale * qmax]`` and no analyzer runs. This function decomposes a weight when
    every channel is exactly such a grid, the coarsest one anchored at the channel's max|w| (a
    constant channel c gets scale |c|, code 1); it returns None otherwise, and also for
    all-zero channels and non-finite values. AIMET also accepts some inexact grids (see the
    module docstring): those get None here.

    Args:
        values: the weight (float32).
        bitwidth: the weight bitwidth (2 to 32).
        axis: None per tensor, or the channel axis.

    Returns:
        The AimetEncoding AIMET uses, or None when AIMET would run the analyzer (as far as the
        exact rule tells).

    Example:
        >>> enc = decompose_weight(np.full((4, 3), 0.7, np.float32), 8, axis=None)
        >>> enc.scale, enc.raw_min, enc.raw_max
        (0.699999988079071, -89.5999984741211, 88.9000015258789)
        >>> decompose_weight(np.array([0.1234, 0.25, -0.3], np.float32), 8, axis=None) is None
        True
    """
    bitwidth = check_bitwidth(bitwidth)
    axis = check_axis(axis)
    x = as_float32(values, "weight")
    if x.size == 0 or not np.isfinite(x).all():
        return None
    if axis is None:
        rows = x.reshape(1, -1)
    else:
        ax = normalize_axis(axis, x.ndim)
        rows = np.moveaxis(x, ax, 0).reshape(x.shape[ax], -1)
        if rows.shape[1] == 0:
            return None
    qmin, qmax = _grid(bitwidth, True)
    scales = np.empty(rows.shape[0], _F)
    for c, row in enumerate(rows):
        s = _fit_grid(row, qmin, qmax)
        if s is None:
            return None
        scales[c] = s
    lo = (_F(qmin) * scales).astype(_F)
    hi = (_F(qmax) * scales).astype(_F)
    log.debug("weight decomposed as pre-quantized: scale %s", scales if axis is not None else scales[0])
    return _encoding(lo, hi, bitwidth, True, axis, None)


def _one_scale(enc: Encoding, what: str) -> np.float32:
    scale = np.asarray(enc.scale, dtype=np.float64)
    if scale.size != 1:
        raise QAValueError(f"the {what} encoding must be per tensor, got {scale.size} scales")
    return _F(scale.reshape(()))


def _internal_offset(enc: Encoding) -> np.ndarray:
    """AIMET's internal offset (qa's offset minus qmin)."""
    qmin, _ = _grid(enc.bitwidth, enc.symmetric)
    return np.asarray(enc.offset, dtype=np.int64).reshape(-1) - qmin


def protect_weight(weight: Encoding, bias: Optional[Any], input_enc: Optional[Encoding],
                   output_enc: Optional[Encoding]) -> AimetEncoding:
    """AIMET's overflow protection of a Conv/ConvTranspose/Linear weight encoding (NOTES §7.2).

    Only when the layer has an input encoding (its own input quantizer, or the encoding an
    upstream quantizer attached to its input tensor), the weight scale ``s_w`` grows to

    * ``|bias| / ((2^31 - 2^15) * s_in)`` (bias overflow; ``max|bias|`` per tensor), and, when the
      output is quantized,
    * ``fl32(2^-23.5 * s_out) / s_in`` (requantization underflow), and
    * what keeps ``round(b / (s_in s_w)) + round(off_out s_out / (s_in s_w))`` within
      ``2^31 - 2^15`` (accumulator overflow; ``off_out`` is the output's internal offset),

    and then the range is re-set to ``[(off + qmin) s_w, (off + qmax) s_w]`` (float32), from which
    AIMET re-derives scale and offset: the scale may move by an ulp even when nothing grew.

    When is the range re-set although nothing grew? NOTES §7.2 says "always"; golden.json's
    Part A (every layer with a quantized output) confirms it there. Its model runs show no
    re-snap for a layer whose output is not quantized (conv1, a Conv+ReLU supergroup: the
    ``min_max_ranges`` AIMET wrote are the plain calibration), so without ``output_enc`` the range
    is re-set only when the bias rule grew a scale. Without an input encoding AIMET leaves the
    weight alone (golden: ``fc``, whose input comes through MaxPool and Flatten, which carry no
    encoding), and so does this function: it returns ``weight`` itself in both no-op cases.

    Args:
        weight: the calibrated weight encoding (per tensor or per channel).
        bias: the layer's bias (one value per output channel), or None.
        input_enc: the per-tensor encoding of the layer's input, or None.
        output_enc: the per-tensor encoding of the layer's output, or None when not quantized.

    Returns:
        The protected AimetEncoding (``weight`` itself when AIMET changes nothing).

    Example:
        >>> obs = AimetObserver("tf", None, axis=0)
        >>> obs.update(np.array([[0.5, -0.25], [0.0, 0.0]], np.float32))
        >>> w = aimet_encoding(obs, 8, symmetric=True)
        >>> a, out = Encoding(0.0, 2.55, 0.01, 0, 8), Encoding(0.0, 25.5, 0.1, 0, 8)
        >>> protect_weight(w, None, a, out).scale.tolist()  # the all-zero channel: 2^-23.5 * s_out / s_in
        [0.003937007859349251, 8.429370268459024e-07]
        >>> protect_weight(w, None, a, None) is w
        True
    """
    if input_enc is None:
        return weight
    if weight.strict:
        raise QAValueError("strict symmetric weights are not a mode of AIMET 2.x")
    qmin, qmax = _grid(weight.bitwidth, weight.symmetric)
    s_w = np.asarray(weight.scale, dtype=np.float64).reshape(-1).astype(_F)
    offset = _internal_offset(weight)
    s_in = _one_scale(input_enc, "input")
    b = None
    if bias is not None:
        b = np.asarray(bias, dtype=np.float64).reshape(-1)
        if weight.axis is None:
            b = np.array([np.abs(b).max() if b.size else 0.0])
        elif b.size != s_w.size:
            raise QAValueError(f"bias has {b.size} values but the weight encoding {s_w.size} channels")
        grow = np.abs(b) / (ACCUMULATOR_BOUND * float(s_in))
        s_w = np.maximum(s_w, grow.astype(_F))
    if output_enc is None and np.array_equal(s_w, np.asarray(weight.scale, np.float64).reshape(-1).astype(_F)):
        return weight
    if output_enc is not None:
        s_out = _one_scale(output_enc, "output")
        s_w = np.maximum(s_w, (_F(REQUANT_FLOOR) * s_out) / s_in).astype(_F)
        off_out = float(_internal_offset(output_enc)[0])
        bias_v = b if b is not None else np.zeros(1)
        denom = float(s_in) * s_w.astype(np.float64)
        acc = np.round(bias_v / denom) + np.round(off_out * float(s_out) / denom)
        over = np.abs(acc) > ACCUMULATOR_BOUND
        if over.any():
            need = (np.abs(bias_v + off_out * float(s_out)) / (ACCUMULATOR_BOUND * float(s_in))).astype(_F)
            s_w = np.where(over, np.maximum(s_w, need), s_w).astype(_F)
    raw_min = ((offset + qmin).astype(_F) * s_w).astype(_F)
    raw_max = ((offset + qmax).astype(_F) * s_w).astype(_F)
    return _encoding(raw_min, raw_max, weight.bitwidth, weight.symmetric, weight.axis, None)


def fake_quantize_like_aimet(x: Any, enc: Encoding) -> np.ndarray:
    """AIMET's evaluation-time fake quantization (torch.fake_quantize_per_*_affine, NOTES §8).

    ``q = clamp(nearbyint(x * fl32(1/scale)) + zp, qmin, qmax)`` and ``(q - zp) * scale`` in
    float32, with ``zp = -internal offset``: it multiplies by the reciprocal and rounds half to
    even, which differs from ``round(x / scale)`` in rare elements.

    Args:
        x: float32 data (per channel: along ``enc.axis``).
        enc: the encoding (qa convention, e.g. an AimetEncoding).

    Returns:
        The fake-quantized float32 array.

    Example:
        >>> enc = Encoding(-1.0, 1.0, 1 / 64, -64, 7, symmetric=True)
        >>> fake_quantize_like_aimet(np.float32([0.5 / 64, 1.5 / 64, 5.0]), enc).tolist()
        [0.0, 0.03125, 0.984375]
    """
    x = as_float32(x)
    qmin, qmax = _grid(enc.bitwidth, enc.symmetric)
    scale = np.asarray(enc.scale, dtype=np.float64).astype(_F)
    zp = (qmin - np.asarray(enc.offset, dtype=np.int64)).astype(_F)
    if enc.axis is not None:
        ax = normalize_axis(enc.axis, x.ndim)
        shape = [1] * x.ndim
        shape[ax] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    inv = (_F(1) / scale).astype(_F)
    q = np.clip(np.rint(x * inv) + zp, qmin, qmax)
    return ((q - zp) * scale).astype(_F)
