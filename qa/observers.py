"""Streaming observers over the C++ kernels: min/max, fixed-size histograms, error statistics."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

from . import _core, _device
from ._arrays import as_float32, channel_layout, check_axis, normalize_axis, real_number, where
from .errors import QAValueError

__all__ = ["MinMax", "minmax", "RunningMinMax", "Histogram", "ErrorStats", "Sentinels", "find_sentinels"]

MAX_BINS = 1 << 24  # 128 MiB of counters per histogram (per channel)
MAX_COUNTERS = 1 << 31  # 16 GiB for all channels together

# The sentinel rule (find_sentinels): how far below zero, how many times farther from zero than
# every other value, and how large a share of the finite values a low cluster must be.
SENTINEL_MIN_MAGNITUDE = 1000.0
SENTINEL_RATIO = 500.0
SENTINEL_MIN_SHARE = 1e-4


class MinMax(Tuple[Any, Any, Any, Any, Any]):
    """(min, max, n_nan, n_posinf, n_neginf) of the finite values; arrays when per channel."""

    __slots__ = ()

    def __new__(cls, min, max, n_nan, n_posinf, n_neginf):  # noqa: A002
        return super().__new__(cls, (min, max, n_nan, n_posinf, n_neginf))

    min = property(lambda self: self[0])
    max = property(lambda self: self[1])
    n_nan = property(lambda self: self[2])
    n_posinf = property(lambda self: self[3])
    n_neginf = property(lambda self: self[4])

    def __repr__(self) -> str:
        return (f"MinMax(min={self.min!r}, max={self.max!r}, n_nan={self.n_nan!r}, "
                f"n_posinf={self.n_posinf!r}, n_neginf={self.n_neginf!r})")


def _layout(x: np.ndarray, axis: Optional[int], name: Optional[str]):
    if axis is None:
        return None
    if x.ndim == 0:
        raise QAValueError(f"{where(name)}per-channel statistics need a tensor with an axis, got a scalar")
    return channel_layout(x.shape, normalize_axis(axis, x.ndim, name))


def _prepare(x: Any, axis: Optional[int], name: Optional[str]):
    """(array, layout, on_device): host data becomes float32 numpy; CUDA arrays stay on the device."""
    if _device.is_device_array(x):
        if axis is not None:
            raise QAValueError(f"{where(name)}per-channel statistics of CUDA arrays are not supported; "
                               f"copy the tensor to the host first")
        return x, None, True
    x = as_float32(x, name=name)
    return x, _layout(x, axis, name), False


def _minmax(x: Any, layout, on_device: bool, name: Optional[str]) -> "MinMax":
    if on_device:
        return MinMax(*_device.minmax(x, name))
    if layout is None:
        return MinMax(*_core.minmax(x))
    if layout[1] == 0:
        raise QAValueError(f"{where(name)}the channel axis has no channels (shape {x.shape})")
    return MinMax(*_core.minmax_per_channel(x, *layout))


def minmax(x: Any, axis: Optional[int] = None, *, name: Optional[str] = None) -> MinMax:
    """Min and max of the finite values of x, and how many NaN, +inf and -inf it holds.

    Args:
        x: array of floats (converted to float32).
        axis: None for the whole tensor, or the channel axis for one result per channel.
        name: tensor name used in error messages.

    Returns:
        A MinMax; min is +inf and max -inf where there was no finite value.

    Example:
        >>> import numpy as np
        >>> minmax(np.array([1.0, np.nan, -2.0, np.inf], dtype=np.float32))
        MinMax(min=-2.0, max=1.0, n_nan=1, n_posinf=1, n_neginf=0)
    """
    return _minmax(*_prepare(x, axis, name), name)


class RunningMinMax:
    """Min and max over any number of batches, per tensor or per channel; counts non-finite values.

    Example:
        >>> import numpy as np
        >>> obs = RunningMinMax()
        >>> obs.update(np.array([0.5, -1.0], dtype=np.float32))
        >>> obs.update(np.array([3.0, np.nan], dtype=np.float32))
        >>> obs.min, obs.max, obs.n_nan
        (-1.0, 3.0, 1)
    """

    def __init__(self, axis: Optional[int] = None, *, name: Optional[str] = None) -> None:
        self.axis = check_axis(axis, name)
        self.name = name
        self.channels: Optional[int] = None
        self.min: Any = math.inf
        self.max: Any = -math.inf
        self.n_nan: Any = 0
        self.n_posinf: Any = 0
        self.n_neginf: Any = 0
        self.batches = 0

    @property
    def seen_finite(self) -> bool:
        return bool(np.any(np.isfinite(self.min)))

    def _check_channels(self, layout: Optional[Tuple[int, int, int]]) -> None:
        if layout is None:
            return
        if self.channels is None:
            self._start_channels(layout[1])
        elif layout[1] != self.channels:
            raise QAValueError(
                f"{where(self.name)}batch has {layout[1]} channels along axis {self.axis}, "
                f"earlier batches had {self.channels}"
            )

    def _start_channels(self, channels: int) -> None:
        if channels == 0:
            raise QAValueError(f"{where(self.name)}axis {self.axis} has no channels")
        self.channels = channels
        self.min = np.full(channels, math.inf)
        self.max = np.full(channels, -math.inf)
        self.n_nan = np.zeros(channels, np.int64)
        self.n_posinf = np.zeros(channels, np.int64)
        self.n_neginf = np.zeros(channels, np.int64)

    def _merge(self, mm: MinMax) -> None:
        self.min = np.minimum(self.min, mm.min) if self.axis is not None else min(self.min, mm.min)
        self.max = np.maximum(self.max, mm.max) if self.axis is not None else max(self.max, mm.max)
        self.n_nan = self.n_nan + mm.n_nan
        self.n_posinf = self.n_posinf + mm.n_posinf
        self.n_neginf = self.n_neginf + mm.n_neginf
        self.batches += 1

    def _batch_minmax(self, x: Any):
        x, layout, on_device = _prepare(x, self.axis, self.name)
        self._check_channels(layout)
        return x, layout, on_device, _minmax(x, layout, on_device, self.name)

    def update(self, x: Any) -> None:
        """Add one batch (any shape; per channel, the channel count must not change)."""
        self._merge(self._batch_minmax(x)[-1])


class _Split:
    """Exact bounds of a tensor's finite values on either side of -SENTINEL_MIN_MAGNITUDE (the
    sentinel rule's floor): min and max of those above it, max and count of those at or below it.
    Free unless a batch reaches the floor; ``known`` turns False when such a batch could not be
    split (a CUDA array), and find_sentinels then reads the histogram's bins alone."""

    __slots__ = ("rest_min", "rest_max", "low_max", "low_count", "known")

    def __init__(self) -> None:
        self.rest_min, self.rest_max, self.low_max, self.low_count, self.known = math.inf, -math.inf, -math.inf, 0, True

    def _rest(self, lo: float, hi: float) -> None:
        self.rest_min, self.rest_max = min(self.rest_min, lo), max(self.rest_max, hi)

    def update(self, x: Any, mm: MinMax, on_device: bool) -> None:
        if not mm.min <= mm.max:
            return
        if mm.min > -SENTINEL_MIN_MAGNITUDE:
            self._rest(float(mm.min), float(mm.max))
        elif on_device:
            self.known = False
        else:
            finite = x[np.isfinite(x)]
            low = finite <= -SENTINEL_MIN_MAGNITUDE
            self.low_count += int(np.count_nonzero(low))
            self.low_max = max(self.low_max, float(finite[low].max()))
            rest = finite[~low]
            if rest.size:
                self._rest(float(rest.min()), float(rest.max()))


class Histogram(RunningMinMax):
    """A fixed-size streaming histogram (per tensor or per channel) whose range grows exactly.

    The first batch with finite values sets the range to its min..max. When later data falls
    outside, the bin width grows by a whole factor and the low edge moves by whole bins, so
    every old bin lands in exactly one new bin: nothing is dropped, the total count is exact,
    and memory stays ``bins`` counters (per channel). NaN and inf are counted, not binned.
    Exact min/max are kept alongside, so ``tf`` encodings do not depend on batch order.

    Args:
        bins: number of bins, an integer from 2 to 2^24 (default 2048).
        axis: None, or the channel axis for one histogram per channel.
        name: quantizer name used in error messages.

    Example:
        >>> import numpy as np
        >>> h = Histogram(bins=4)
        >>> h.update(np.array([0.0, 1.0, 2.0, 3.0, 4.0], dtype=np.float32))
        >>> h.counts.tolist(), h.total
        ([1, 1, 1, 2], 5)
        >>> h.update(np.array([8.0], dtype=np.float32))  # grows: width 1 -> 2
        >>> h.counts.tolist(), h.width, h.total
        ([2, 3, 0, 1], 2.0, 6)
    """

    def __init__(self, bins: int = 2048, axis: Optional[int] = None, *, name: Optional[str] = None) -> None:
        super().__init__(axis, name=name)
        self.bins = _check_bins(bins, name)
        self.counts = np.zeros(self.bins, np.int64)
        self.lo: Any = math.nan
        self.width: Any = math.nan
        self.split = _Split()  # per tensor only: what find_sentinels reads exactly

    def _start_channels(self, channels: int) -> None:
        super()._start_channels(channels)
        counts = None
        if channels * self.bins <= MAX_COUNTERS:
            try:
                counts = np.zeros((channels, self.bins), np.int64)
            except MemoryError:
                pass
        if counts is None:
            raise QAValueError(
                f"{where(self.name)}a histogram of {channels} channels x {self.bins} bins needs "
                f"{channels * self.bins * 8 / 2**30:.1f} GiB of counters; use fewer bins"
            )
        self.counts = counts
        self.lo = np.full(channels, math.nan)
        self.width = np.full(channels, math.nan)

    @property
    def total(self) -> Any:
        """Number of finite values binned (per channel when per channel)."""
        total = self.counts.sum(axis=-1)
        return int(total) if self.axis is None else total

    @property
    def edges(self) -> np.ndarray:
        """Bin edges, shape [bins + 1] (or [channels, bins + 1])."""
        steps = np.arange(self.bins + 1, dtype=np.float64)
        if self.axis is None:
            return self.lo + steps * self.width
        return self.lo[:, None] + steps[None, :] * self.width[:, None]

    def _initial_range(self, lo: Any, hi: Any) -> Tuple[Any, Any]:
        """The first range: the batch's min..max; constant data gets a small range around it."""
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        span = hi - lo
        flat = ~(span > 0)
        span = np.where(flat, np.maximum(np.abs(lo) * 2.0**-16, 2.0**-60), span)
        lo = np.where(flat, lo - span / 2, lo)
        if lo.ndim == 0:
            return float(lo), float(span / self.bins)
        return lo, span / self.bins

    def update(self, x: Any) -> None:
        """Add one batch: grow the range if needed, then bin every finite value."""
        x, layout, on_device, mm = self._batch_minmax(x)
        if layout is None:
            if mm.min <= mm.max:  # the batch has finite values
                if not math.isfinite(self.lo):
                    self.lo, self.width = self._initial_range(mm.min, mm.max)
                else:
                    self.lo, self.width, _ = _core.histogram_grow(self.counts, self.lo, self.width, mm.min, mm.max)
                if on_device:
                    _device.histogram_add(x, self.lo, self.width, self.counts, self.name)
                else:
                    _core.histogram_add(x, self.lo, self.width, self.counts)
                self.split.update(x, mm, on_device)
        else:
            new = (mm.min <= mm.max) & ~np.isfinite(self.lo)
            if new.any():
                lo, width = self._initial_range(mm.min[new], mm.max[new])
                self.lo[new], self.width[new] = lo, width
            _core.histogram_grow_per_channel(self.counts, self.lo, self.width, mm.min, mm.max)
            started = np.isfinite(self.lo)
            _core.histogram_add_per_channel(
                x, *layout, np.where(started, self.lo, 0.0), np.where(started, self.width, 1.0), self.counts)
        self._merge(mm)

    def quantile(self, q: float) -> Any:
        """Value at quantile q in [0, 1], interpolated inside bins (NaN where nothing was seen)."""
        value = real_number(q, "quantile q", self.name)
        if not 0.0 <= value <= 1.0:
            raise QAValueError(f"{where(self.name)}quantile q must be a number in [0, 1], got {q!r:.80}")
        q = value
        if self.axis is None:
            if not math.isfinite(self.lo):
                return math.nan
            return _core.histogram_quantile(self.counts, self.lo, self.width, q)
        return np.array([
            _core.histogram_quantile(self.counts[c], self.lo[c], self.width[c], q)
            if math.isfinite(self.lo[c]) else math.nan
            for c in range(self.channels or 0)
        ])


def _check_bins(bins: Any, name: Optional[str]) -> int:
    """bins as an int in [2, MAX_BINS]; None, bools, floats and strings are refused."""
    try:
        if isinstance(bins, (bool, np.bool_)):
            raise TypeError
        n = operator.index(bins)
    except TypeError:
        raise QAValueError(f"{where(name)}histogram bins must be an integer, got {bins!r:.80}") from None
    if not 2 <= n <= MAX_BINS:
        raise QAValueError(f"{where(name)}a histogram needs 2 to {MAX_BINS} bins, got {n}")
    return n


@dataclass(frozen=True)
class Sentinels:
    """The sentinel values one observer saw: a low cluster of finite values, -inf, or both.

    ``count`` finite sentinels lie in ``lowest .. highest`` (``highest`` is exact, or an upper
    bound, where the cluster's last bin ends, when only the bins could prove the rule); ``neginf``
    values were -inf; ``total`` is every value seen (None when the observer kept no counts).
    """

    count: int
    lowest: float
    highest: float
    neginf: int
    total: Optional[int]

    @property
    def values(self) -> str:
        """The sentinel values in short: ``-3.4e+38``, ``-1e+04 to -9.99e+03``, ``-inf``."""
        parts = []
        if self.count:
            lo, hi = f"{self.lowest:.3g}", f"{self.highest:.3g}"
            parts.append(lo if lo == hi else f"{lo} to {hi}")
        if self.neginf:
            parts.append("-inf")
        return " and ".join(parts)

    def describe(self) -> str:
        """``-3.4e+38 (attention-mask sentinel, 25% of the values)``."""
        share = ""
        if self.total:
            share = f", {100.0 * (self.count + self.neginf) / self.total:.3g}% of the values"
        return f"{self.values} (attention-mask sentinel{share})"


def _exact_cluster(h: "Histogram") -> Optional[Tuple[int, float]]:
    """(count, max) of the values at or below -SENTINEL_MIN_MAGNITUDE when, read from the exact
    bounds the histogram keeps either side of that floor, they pass the sentinel rule; else None."""
    s = h.split
    if not (s.known and s.low_count and s.rest_min <= s.rest_max):
        return None
    rest = max(abs(s.rest_min), abs(s.rest_max))
    if s.low_max <= -SENTINEL_RATIO * rest and s.low_count >= SENTINEL_MIN_SHARE * h.total:
        return s.low_count, s.low_max
    return None


def _low_cluster(h: "Histogram") -> Optional[Tuple[int, float]]:
    """(count, upper bound) of the highest low cluster of a per-tensor histogram that passes the
    sentinel rule, or None. Bounds are conservative: the cluster's values lie at or below the end
    of its last bin, the rest's at or above the start of their first bin and at most ``h.max``."""
    occupied = np.flatnonzero(h.counts)
    if occupied.size < 2:
        return None
    below = np.cumsum(h.counts[occupied])[:-1]  # values in the cluster when it ends at occupied[i]
    top = h.lo + (occupied[:-1] + 1) * h.width  # the cluster's values are <= top
    rest = np.maximum(np.abs(h.lo + occupied[1:] * h.width), abs(h.max))  # |every other value| <= rest
    ok = ((top <= -SENTINEL_MIN_MAGNITUDE) & (top <= -SENTINEL_RATIO * rest)
          & (below >= SENTINEL_MIN_SHARE * h.total))
    hits = np.flatnonzero(ok)
    if not hits.size:
        return None
    return int(below[hits[-1]]), float(top[hits[-1]])


def find_sentinels(obs: Any) -> Optional[Sentinels]:
    """The sentinel values (attention-mask fill values) a per-tensor observer saw, or None.

    The rule: -inf is always a sentinel. Finite values are sentinels when they form a low
    cluster L, separated from the other finite values R by an empty gap, such that

    1. every value of L is at or below -1000 (``SENTINEL_MIN_MAGNITUDE``),
    2. every value of L is at least 500 times (``SENTINEL_RATIO``) farther from zero than any
       value of R (so the gap is at least 499 times R's largest magnitude), and
    3. L holds at least 0.01% (``SENTINEL_MIN_SHARE``) of the finite values.

    The highest split that passes decides (the most values are sentinels). The split at -1000
    itself is checked exactly: a Histogram keeps the exact min and max of the values above -1000
    and the max and count of those at or below (free unless a batch reaches -1000). Lower splits
    (when values at or below -1000 remain among the rest) are checked on the bins with
    conservative bounds (L ends where its last bin ends, R starts where its first bin starts), so
    bins only ever prove the rule, never guess it.

    Why these numbers: masks fill with -1e4 (BERT), -65504, -1e9, -1e10, finfo(float32).min or
    -inf, always far enough below zero that exp() underflows (float32 below about -104); the
    -1000 floor keeps small two-level tensors ({0, -1}) and sparse negated ReLUs out. The factor
    500 catches -10000 added to attention scores within +-19.9 (scores of magnitude ~10) while a
    heavy-tailed activation never passes: an LLM-style outlier channel 1000x the median
    of N(0, s) data sits at 674 s, at most ~200x the bulk's largest magnitude (3.3 s for 1000
    values). The 0.01% share leaves out massive activations (a handful of values in a
    tokens x hidden tensor); a padded key in one sequence of a batch of 8 x 128 tokens is 0.1%
    of the scores. Only the low side counts: additive masks are negative, and huge positive
    values are the ordinary encodings' business. Per-channel observers are never checked
    (activations are per tensor); an observer without counts (RunningMinMax) only finds -inf.

    Example:
        >>> import numpy as np
        >>> h = Histogram()
        >>> scores = np.linspace(-8, 8, 96, dtype=np.float32)
        >>> h.update(np.concatenate([scores, np.full(32, np.finfo(np.float32).min, np.float32)]))
        >>> find_sentinels(h).describe()
        '-3.4e+38 (attention-mask sentinel, 25% of the values)'
        >>> h = Histogram()
        >>> h.update(np.concatenate([scores, np.float32([-900.0])]))  # an outlier, not a sentinel
        >>> find_sentinels(h) is None
        True
    """
    if getattr(obs, "axis", None) is not None or not hasattr(obs, "n_neginf"):
        return None
    neginf = int(obs.n_neginf)
    counts = getattr(obs, "counts", None)
    cluster = None
    if counts is not None and obs.seen_finite:
        cluster = _exact_cluster(obs) or _low_cluster(obs)
    if cluster is None and not neginf:
        return None
    count, top = cluster or (0, math.nan)
    total = None
    if counts is not None:
        total = int(obs.total) + int(obs.n_nan) + int(obs.n_posinf) + neginf
    return Sentinels(count, float(obs.min) if count else math.nan, min(top, float(obs.max)), neginf, total)


class ErrorStats:
    """Accumulates the error between a reference and a test tensor over batches, in double.

    Pairs where either value is NaN or inf are counted in ``n_nonfinite`` and left out.

    Example:
        >>> import numpy as np
        >>> e = ErrorStats()
        >>> e.update(np.array([1.0, 2.0], np.float32), np.array([1.0, 2.5], np.float32))
        >>> e.mse, e.max_abs_error, e.count
        (0.125, 0.5, 2)
    """

    def __init__(self, *, name: Optional[str] = None) -> None:
        self.name = name
        self._acc = np.zeros(7, np.float64)

    def update(self, ref: Any, test: Any) -> None:
        """Add one batch of (reference, test) pairs of the same shape (numpy or both CUDA)."""
        if _device.is_device_array(ref) or _device.is_device_array(test):
            _device.error_stats(ref, test, self._acc, self.name)
            return
        ref = as_float32(ref, "ref", self.name)
        test = as_float32(test, "test", self.name)
        if ref.shape != test.shape:
            raise QAValueError(
                f"{where(self.name)}reference shape {ref.shape} and test shape {test.shape} differ"
            )
        _core.error_stats(ref, test, self._acc)

    @property
    def count(self) -> int:
        return int(self._acc[5])

    def totals(self) -> Tuple[float, int]:
        """(sum of squared errors, pairs counted) so far: what a batch adds is the difference."""
        return float(self._acc[0]), int(self._acc[5])

    @property
    def n_nonfinite(self) -> int:
        return int(self._acc[6])

    @property
    def mse(self) -> float:
        return float(self._acc[0] / self._acc[5]) if self._acc[5] else math.nan

    @property
    def sqnr_db(self) -> float:
        """10 log10(signal power / noise power); inf when there is no error."""
        sse, srr = self._acc[0], self._acc[1]
        if not self._acc[5]:
            return math.nan
        if sse == 0:
            return math.inf
        if srr == 0:
            return -math.inf
        return float(10.0 * math.log10(srr / sse))

    @property
    def cosine(self) -> float:
        srr, stt, dot = self._acc[1], self._acc[2], self._acc[3]
        if srr == 0 and stt == 0:
            return 1.0 if self._acc[5] else math.nan
        if srr == 0 or stt == 0:
            return 0.0
        return float(dot / math.sqrt(srr * stt))

    @property
    def max_abs_error(self) -> float:
        return float(self._acc[4])

    def as_dict(self) -> dict:
        return {"mse": self.mse, "sqnr_db": self.sqnr_db, "cosine": self.cosine,
                "max_abs_error": self.max_abs_error, "count": self.count,
                "n_nonfinite": self.n_nonfinite}
