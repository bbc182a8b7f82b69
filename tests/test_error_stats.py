"""ErrorStats (MSE, SQNR, cosine, max |error| over batches) against the numpy reference."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qa
import reference as ref
from qa.kernels import ErrorStats, fake_quantize

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
F32 = np.finfo(np.float32)
BIG = 1 << 16  # threaded from 2^16 elements; blocks of 2048


def check(stats: ErrorStats, pairs):
    """Against the reference. The kernel sums in double in blocks, SIMD lanes and threads, numpy
    in its own order: sums of squares agree to a relative 1e-11 (blocked sums: ~600 eps); the
    dot product, which can cancel, to 1e-11 of sqrt(srr * stt); max |error| and counts exactly."""
    want = ref.error_stats(pairs)
    assert stats.count == want["count"] and stats.n_nonfinite == want["n_nonfinite"]
    assert stats.max_abs_error == want["max_abs_error"]
    if want["count"] == 0:
        assert math.isnan(stats.mse) and math.isnan(stats.sqnr_db) and math.isnan(stats.cosine)
        return want
    assert stats.mse == pytest.approx(want["mse"], rel=1e-11, abs=0)
    scale = math.sqrt(want["srr"] * want["stt"])
    if want["srr"] == 0 or want["stt"] == 0:
        assert stats.cosine == want["cosine"]
    else:
        assert abs(stats.cosine - want["cosine"]) <= 1e-11 * (1 + abs(want["dot"]) / scale)
    if math.isinf(want["sqnr_db"]) or want["sse"] == 0 or want["srr"] == 0:
        assert stats.sqnr_db == want["sqnr_db"]
    else:
        assert stats.sqnr_db == pytest.approx(want["sqnr_db"], abs=1e-9)
    d = stats.as_dict()
    assert set(d) == {"mse", "sqnr_db", "cosine", "max_abs_error", "count", "n_nonfinite"}
    assert d["count"] == stats.count and d["max_abs_error"] == stats.max_abs_error
    return want


def values():
    ordinary = st.floats(-1e3, 1e3, width=32)
    return st.one_of(ordinary, ordinary, ordinary, st.floats(width=32),
                     st.sampled_from([np.nan, np.inf, -np.inf, 0.0, float(F32.max), -float(F32.max)]))


@st.composite
def batch_pairs(draw):
    pairs = []
    for _ in range(draw(st.integers(1, 4))):
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=8))
        r = draw(hnp.arrays(np.float32, shape, elements=values()))
        how = draw(st.sampled_from(["independent", "noisy", "quantized", "same"]))
        if how == "independent":
            t = draw(hnp.arrays(np.float32, shape, elements=values()))
        elif how == "noisy":
            noise = draw(hnp.arrays(np.float32, shape, elements=st.floats(-1, 1, width=32)))
            with np.errstate(over="ignore", invalid="ignore"):
                t = (r + noise).astype(np.float32)
        elif how == "quantized":
            t = fake_quantize(r, 0.1, -128, 8)
        else:
            t = r.copy()
        pairs.append((r, t))
    return pairs


@FAST
@given(batch_pairs())
def test_matches_reference_across_batches(pairs):
    stats = ErrorStats()
    for r, t in pairs:
        stats.update(r, t)
    check(stats, pairs)


@pytest.mark.parametrize("n", [1, 2047, 2048, 2049, BIG + 5, 4 * BIG])
def test_large_and_blocked(n):
    # non-finite values in a few blocks only: the fast path for clean blocks, masks for the rest
    rng = np.random.default_rng(n)
    r = rng.normal(0, 3, n).astype(np.float32)
    t = fake_quantize(r, 0.05, -128, 8)
    for idx, v in [(0, np.nan), (n // 2, np.inf), (n - 1, -np.inf)]:
        t[idx] = v
    stats = ErrorStats()
    stats.update(r, t)
    stats.update(r[: n // 3], r[: n // 3] * 1.01)
    check(stats, [(r, t), (r[: n // 3], r[: n // 3] * 1.01)])


def test_by_hand():
    e = ErrorStats()
    e.update(np.array([1.0, 2.0], np.float32), np.array([1.0, 2.5], np.float32))
    e.update(np.array([[3.0, np.nan]], np.float32), np.array([[2.0, 1.0]], np.float32))
    # errors 0, -0.5, 1 over 3 finite pairs; the NaN pair is counted apart
    assert (e.count, e.n_nonfinite) == (3, 1)
    assert e.mse == pytest.approx(1.25 / 3, rel=1e-15)
    assert e.max_abs_error == 1.0
    assert e.sqnr_db == pytest.approx(10 * math.log10(14 / 1.25), rel=1e-15)  # sum r^2 = 1 + 4 + 9
    assert e.cosine == pytest.approx((1 + 5 + 6) / math.sqrt(14 * (1 + 6.25 + 4)), rel=1e-15)


def test_edge_cases():
    e = ErrorStats()
    assert math.isnan(e.mse) and math.isnan(e.sqnr_db) and math.isnan(e.cosine)
    assert (e.count, e.max_abs_error) == (0, 0.0)
    e.update(np.zeros(0, np.float32), np.zeros(0, np.float32))  # empty batch
    assert e.count == 0 and math.isnan(e.mse)
    e.update(np.array([np.nan, np.inf], np.float32), np.array([1.0, 1.0], np.float32))  # nothing finite
    assert (e.count, e.n_nonfinite) == (0, 2) and math.isnan(e.mse) and math.isnan(e.cosine)
    same = np.array([1.0, -2.0, 3.5], np.float32)
    e = ErrorStats()
    e.update(same, same.copy())
    assert (e.mse, e.sqnr_db, e.cosine, e.max_abs_error) == (0.0, math.inf, 1.0, 0.0)
    e = ErrorStats()
    e.update(np.zeros(3, np.float32), np.ones(3, np.float32))  # no signal
    assert (e.mse, e.sqnr_db, e.cosine) == (1.0, -math.inf, 0.0)
    e = ErrorStats()
    e.update(np.zeros(3, np.float32), np.zeros(3, np.float32))
    assert (e.mse, e.sqnr_db, e.cosine) == (0.0, math.inf, 1.0)
    e = ErrorStats()
    e.update(np.array([1.0, 2.0], np.float32), np.array([-1.0, -2.0], np.float32))
    assert e.cosine == pytest.approx(-1.0, abs=1e-15) and e.max_abs_error == 4.0


def test_huge_and_denormal_values():
    # squares of float32 extremes fit a double: nothing overflows, nothing underflows to 0
    big = np.array([F32.max, -F32.max, 1.0], np.float32)
    e = ErrorStats()
    e.update(big, -big)
    check(e, [(big, -big)])
    assert e.max_abs_error == 2 * float(F32.max) and np.isfinite(e.mse)
    tiny = np.array([F32.smallest_subnormal, 3 * F32.smallest_subnormal], np.float32)
    e = ErrorStats()
    e.update(tiny, np.zeros(2, np.float32))
    check(e, [(tiny, np.zeros(2, np.float32))])
    assert e.mse > 0 and e.max_abs_error == 3 * float(F32.smallest_subnormal)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes(dtype):
    r = np.array([0.5, -1.25, 3.0, np.nan], dtype)
    t = np.array([0.25, -1.0, 3.5, 1.0], dtype)
    e = ErrorStats()
    e.update(r, t)
    check(e, [(r.astype(np.float32), t.astype(np.float32))])


def test_bad_arguments():
    e = ErrorStats(name="conv3")
    with pytest.raises(qa.QAValueError) as info:
        e.update(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32))
    assert isinstance(info.value, ValueError)
    assert "conv3" in str(info.value) and "(2, 3)" in str(info.value) and "(3, 2)" in str(info.value)
    with pytest.raises(qa.QAValueError, match="conv3.*ref.*dtype"):
        e.update(np.zeros(3, np.int64), np.zeros(3, np.float32))
    with pytest.raises(qa.QAValueError, match="test.*dtype"):
        e.update(np.zeros(3, np.float32), np.zeros(3, bool))
    assert e.count == 0  # nothing was accumulated by the refused updates
