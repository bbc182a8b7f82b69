"""Plain numpy references for qa's kernels, written from the formulas (never calling qa).

Each function is the scalar-clear version of one kernel: the tests run the C++ kernels
against these. Sources of the formulas: AIMET's documented quantization semantics (README, "The
kernels") and the docstrings of qa.kernels / qa.encodings / qa.observers. Where the arithmetic order matters
for bit-exactness (float32 ``x * (1/scale)`` like torch, sequential sums in the
TF-Enhanced cost), it is spelled out and the reason is given.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np

GAMMA = 3.0  # TF-Enhanced saturation weight
MIN_RANGE = 0.01  # tf / tf_enhanced: max >= min + 0.01
FLOAT_EXACT = 2.0**22  # grids reaching |q| >= 2^22 are computed in double


# ---- rounding ----------------------------------------------------------------------------


def round_half_even(v):
    """Nearest integer, ties to even (numpy's rint, IEEE default). NaN/inf unchanged."""
    return np.rint(v)


def round_half_away(v):
    """Nearest integer, ties away from zero. v - trunc(v) is exact for any float."""
    v = np.asarray(v)
    with np.errstate(invalid="ignore"):
        r = np.trunc(v)
        frac = v - r
        return np.where(np.abs(frac) >= 0.5, r + np.sign(v), r).astype(v.dtype)


def std_round(v: float) -> float:
    """C's std::round: ties away from zero (used by the TF-Enhanced candidate offsets)."""
    return float(round_half_away(np.float64(v)))


# ---- fake quantization ---------------------------------------------------------------------


def num_steps(bitwidth: int, strict: bool = False) -> int:
    return 2**bitwidth - 1 - (1 if strict else 0)


def _per_channel_shape(param, ndim: int, axis: Optional[int]) -> np.ndarray:
    param = np.asarray(param, dtype=np.float64).reshape(-1)
    if axis is None:
        return param.reshape(())
    shape = [1] * ndim
    shape[axis] = -1 if param.size != 1 else 1
    return param.reshape(shape)


def fake_quant(x, scale, offset, bitwidth: int, axis: Optional[int] = None,
               rounding: str = "half_even", strict: bool = False) -> np.ndarray:
    """The AIMET formula, literally:

        r = round(x / scale);  q = clamp(r - offset, 0, n);  x_hat = (q + offset) * scale

    with n = 2^bw - 1 (one fewer when strict). Like torch, ``x / scale`` is
    ``x * float32(1 / float32(scale))`` in float32, and the product ``(q + offset) * scale``
    is a float32 multiply. When the integer grid reaches 2^22 (float32 can no longer hold
    every x/scale to the needed precision) everything is done in double with the double
    scale and rounded to float32 at the end. NaN stays NaN (comparisons with NaN are
    false, so the clamp lets it through); +-inf clamp to the ends of the grid.
    """
    x = np.asarray(x, dtype=np.float32)
    if axis is not None:
        axis %= x.ndim
    n = num_steps(bitwidth, strict)
    scale = _per_channel_shape(scale, x.ndim, axis)
    offset = _per_channel_shape(offset, x.ndim, axis)
    use_double = bool(np.max(np.maximum(np.abs(offset), np.abs(offset + n))) >= FLOAT_EXACT)
    T = np.float64 if use_double else np.float32
    s = scale.astype(T)
    off = offset.astype(T)
    rnd = round_half_even if rounding == "half_even" else round_half_away
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        inv = T(1) / s
        r = rnd(x.astype(T) * inv)
        q = r - off
        q = np.where(q < 0, T(0), q)
        q = np.where(q > n, T(n), q)
        y = ((q + off) * s).astype(np.float32)
    return y


# ---- min / max -----------------------------------------------------------------------------


def minmax(x) -> Tuple[float, float, int, int, int]:
    """(min, max) of the finite values (+inf, -inf when there are none), #NaN, #+inf, #-inf."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    fin = x[np.isfinite(x)]
    lo = float(fin.min()) if fin.size else math.inf
    hi = float(fin.max()) if fin.size else -math.inf
    return (lo, hi, int(np.isnan(x).sum()), int((x == np.inf).sum()), int((x == -np.inf).sum()))


def channels_first(x, axis: int) -> np.ndarray:
    """x as [channels, everything else]."""
    x = np.asarray(x, dtype=np.float32)
    return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


def minmax_per_channel(x, axis: int):
    rows = channels_first(x, axis)
    res = [minmax(r) for r in rows]
    return tuple(np.array([r[i] for r in res]) for i in range(5))


# ---- histograms ----------------------------------------------------------------------------


def bin_index(x, lo: float, width: float, nbins: int) -> np.ndarray:
    """Bin of each finite value: floor((double(x) - lo) * (1.0 / width)) clamped to [0, nbins-1]."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    x = x[np.isfinite(x)].astype(np.float64)
    f = (x - lo) * (1.0 / width)
    f = np.minimum(np.maximum(f, 0.0), float(nbins - 1))
    return np.floor(f).astype(np.int64)


def histogram(x, lo: float, width: float, nbins: int) -> np.ndarray:
    """Counts of the finite values of x in bins [lo + i*width, lo + (i+1)*width)."""
    return np.bincount(bin_index(x, lo, width, nbins), minlength=nbins).astype(np.int64)


def first_range(mn: float, mx: float, nbins: int) -> Tuple[float, float]:
    """The range the first batch sets (non-constant data): lo = min, width = (max - min) / bins."""
    return mn, (mx - mn) / nbins


def rebin(counts, old_lo: float, old_width: float, new_lo: float, new_width: float) -> np.ndarray:
    """Moves each old bin whole into the new bin that holds its midpoint."""
    counts = np.asarray(counts)
    nbins = counts.size
    mids = old_lo + (np.arange(nbins) + 0.5) * old_width
    b = np.floor((mids - new_lo) / new_width).astype(np.int64)
    b = np.clip(b, 0, nbins - 1)
    out = np.zeros(nbins, np.int64)
    np.add.at(out, b, counts)
    return out


def quantile(counts, lo: float, width: float, q: float) -> float:
    """Value at quantile q: walk the non-empty bins until the cumulative count reaches q*total,
    interpolating linearly inside that bin; NaN for an empty histogram."""
    counts = np.asarray(counts)
    total = float(counts.sum())
    if total <= 0:
        return math.nan
    target = q * total
    cum = 0.0
    last = -1
    for i, c in enumerate(counts.tolist()):
        if c == 0:
            continue
        c = float(c)
        if cum + c >= target:
            frac = min(1.0, max(0.0, (target - cum) / c))
            return lo + (float(i) + frac) * width
        cum += c
        last = i
    return lo + float(last + 1) * width


# ---- encodings -----------------------------------------------------------------------------


class Enc(tuple):
    """(min, max, scale, offset) of one tensor or channel."""

    min = property(lambda s: s[0])
    max = property(lambda s: s[1])
    scale = property(lambda s: s[2])
    offset = property(lambda s: s[3])


def widen(mn: float, mx: float) -> Tuple[float, float]:
    """Include 0; keep max >= min + 0.01."""
    lo = min(mn, 0.0)
    hi = max(mx, 0.0)
    return lo, max(hi, lo + MIN_RANGE)


def grid(delta: float, offset: float, n: int) -> Enc:
    # qa's rule on top of AIMET's: both grid ends stay inside float32 (else finite data -> inf).
    top = max(abs(offset), abs(offset + n))
    delta = min(delta, float(np.finfo(np.float32).max) / top * (1 - 2.0**-20))
    return Enc((offset * delta, (offset + n) * delta, delta, offset))


def tf_encoding(mn: float, mx: float, bitwidth: int, symmetric: bool = False, strict: bool = False,
                unsigned_symmetric: bool = False) -> Enc:
    """Min-max encoding (aimet_semantics.md, "tf (min-max) encodings").

    Asymmetric: delta = (max - min)/n, offset = round(min/delta) (half to even).
    Symmetric: M = max(|min|, |max|), delta = M/floor(n/2), offset = -ceil(n/2); unsigned
    symmetric (when min == 0 after widening): delta = M/n, offset 0.
    """
    n = num_steps(bitwidth, strict)
    lo, hi = widen(float(mn), float(mx))
    if not symmetric:
        delta = (hi - lo) / n
        return grid(delta, float(np.round(lo / delta)), n)
    m = max(abs(lo), abs(hi))
    if unsigned_symmetric and lo >= 0:
        return grid(m / n, 0.0, n)
    return grid(m / math.floor(n / 2), float(-math.ceil(n / 2)), n)


def _nonempty(counts, lo: float, width: float):
    counts = np.asarray(counts, dtype=np.int64)
    total = float(counts.sum())
    idx = np.flatnonzero(counts)
    p = counts[idx].astype(np.float64) / total
    mid = lo + (idx.astype(np.float64) + 0.5) * width
    return p, mid


def tfe_cost(p: np.ndarray, mid: np.ndarray, delta: float, offset: float, n: int,
             gamma: float = GAMMA) -> float:
    """quant + gamma * sat for one candidate grid; each bin is represented by its midpoint.

    quant = sum over bins in [lo, hi] of p (m - delta round(m / delta))^2, sat = sum of
    p (m - lo)^2 below lo and p (m - hi)^2 above hi. The sums run over the bins in order
    (a cumulative sum is sequential), so the result is bit-identical to a plain loop.
    """
    lo, hi = delta * offset, delta * (offset + n)
    below, above = mid < lo, mid > hi
    inside = ~(below | above)
    e = mid - delta * round_half_even(mid / delta)
    quant_terms = np.where(inside, (p * e) * e, 0.0)
    d = np.where(below, mid - lo, np.where(above, mid - hi, 0.0))
    sat_terms = (p * d) * d
    quant = float(np.cumsum(quant_terms)[-1]) if p.size else 0.0
    sat = float(np.cumsum(sat_terms)[-1]) if p.size else 0.0
    return quant + gamma * sat


def tfe_candidates(obs_min: float, obs_max: float, n: int, mode: int) -> List[Tuple[float, float]]:
    """(delta, offset) candidates in search order.

    mode 0 (asymmetric): delta_obs = (max - min)/n; offsets round(-n + i*n/20), i = 0..20,
    plus round(min/delta_obs) (std::round: ties away); deltas k/16 * delta_obs, k = 1..17;
    each candidate is clamped to the observed range and turned back into a grid
    (d = (tmax - tmin)/n, offset = round(tmin/d)).
    mode 1 (symmetric): offset -ceil(n/2), delta_max = M/floor(n/2) (the tf symmetric grid);
    mode 2 (unsigned symmetric): offset 0, delta_max = M/n; deltas k/100 * delta_max, k = 1..101.
    """
    out: List[Tuple[float, float]] = []
    if mode == 0:
        delta_obs = (obs_max - obs_min) / n
        offsets = [std_round(-n + i * n / 20.0) for i in range(21)]
        offsets.append(std_round(obs_min / delta_obs))
        for k in range(1, 18):
            delta = k / 16.0 * delta_obs
            for off in offsets:
                tmin = max(obs_min, delta * off)
                tmax = min(obs_max, delta * (off + n))
                d = (tmax - tmin) / n
                if not d > 0:
                    continue
                out.append((d, std_round(tmin / d)))
    else:
        abs_max = max(abs(obs_min), abs(obs_max))
        off = 0.0 if mode == 2 else -math.ceil(n / 2)
        levels = n if mode == 2 else math.floor(n / 2)
        delta_max = abs_max / levels
        out = [(k / 100.0 * delta_max, float(off)) for k in range(1, 102)]
    return out


def tf_enhanced_search(counts, lo: float, width: float, obs_min: float, obs_max: float, n: int,
                       mode: int, gamma: float = GAMMA) -> Tuple[float, float, float]:
    """(min, max, cost) of the first candidate of least cost; the observed range if none."""
    p, mid = _nonempty(counts, lo, width)
    best = (obs_min, obs_max, math.inf)
    for delta, off in tfe_candidates(obs_min, obs_max, n, mode):
        if not delta > 0:
            continue
        c = tfe_cost(p, mid, delta, off, n, gamma)
        if c < best[2]:
            best = (delta * off, delta * (off + n), c)
    return best


def tf_enhanced_encoding(counts, lo: float, width: float, mn: float, mx: float, bitwidth: int,
                         symmetric: bool = False, strict: bool = False,
                         unsigned_symmetric: bool = False) -> Enc:
    """TF-Enhanced over a histogram whose exact finite min/max are mn/mx (widened first)."""
    n = num_steps(bitwidth, strict)
    obs_lo, obs_hi = widen(float(mn), float(mx))
    mode = 0 if not symmetric else (2 if unsigned_symmetric and obs_lo >= 0 else 1)
    emin, emax, _ = tf_enhanced_search(counts, lo, width, obs_lo, obs_hi, n, mode)
    delta = (emax - emin) / n
    return grid(delta, float(np.round(emin / delta)), n)


def percentile_encoding(counts, lo: float, width: float, mn: float, mx: float, bitwidth: int,
                        percentile: float, **opts) -> Enc:
    """Quantiles 1 - p/100 and p/100 of the histogram, kept inside [min, max], then tf rules."""
    qlo = max(quantile(counts, lo, width, 1.0 - percentile / 100.0), float(mn))
    qhi = min(quantile(counts, lo, width, percentile / 100.0), float(mx))
    return tf_encoding(qlo, qhi, bitwidth, **opts)


# ---- error statistics ----------------------------------------------------------------------


def error_stats(pairs) -> dict:
    """MSE, SQNR (dB), cosine and max |ref - test| over the finite pairs of all batches."""
    refs, tests, nonfinite = [], [], 0
    for r, t in pairs:
        r = np.asarray(r, dtype=np.float32).reshape(-1).astype(np.float64)
        t = np.asarray(t, dtype=np.float32).reshape(-1).astype(np.float64)
        ok = np.isfinite(r) & np.isfinite(t)
        nonfinite += int((~ok).sum())
        refs.append(r[ok])
        tests.append(t[ok])
    r = np.concatenate(refs) if refs else np.zeros(0)
    t = np.concatenate(tests) if tests else np.zeros(0)
    d = r - t
    n = r.size
    sse, srr, stt, dot = float(d @ d), float(r @ r), float(t @ t), float(r @ t)
    if n == 0:
        mse = sqnr = cosine = math.nan
    else:
        mse = sse / n
        sqnr = math.inf if sse == 0 else (-math.inf if srr == 0 else 10 * math.log10(srr / sse))
        if srr == 0 and stt == 0:
            cosine = 1.0
        elif srr == 0 or stt == 0:
            cosine = 0.0
        else:
            cosine = dot / math.sqrt(srr * stt)
    return {"mse": mse, "sqnr_db": sqnr, "cosine": cosine,
            "max_abs_error": float(np.abs(d).max()) if n else 0.0, "count": n,
            "n_nonfinite": nonfinite, "sse": sse, "srr": srr, "stt": stt, "dot": dot}
