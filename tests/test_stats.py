"""Streaming statistics against the numpy reference: min/max, histograms (exact growth), quantiles."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qa
import reference as ref
from qa.kernels import Histogram, RunningMinMax, minmax

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
F32 = np.finfo(np.float32)
BIG = 1 << 16  # the kernels thread from 2^16 elements (2 threads) and work in blocks of 2048


def values(wide=True):
    """float32 values: ordinary ones, and (wide) NaN, +-inf, subnormals and +-FLT_MAX."""
    ordinary = st.floats(-1e3, 1e3, width=32)
    if not wide:
        return ordinary
    return st.one_of(ordinary, ordinary, st.floats(width=32), st.sampled_from(
        [np.nan, np.inf, -np.inf, 0.0, float(F32.smallest_subnormal), -float(F32.max), float(F32.max)]))


def batches(min_dims=1, max_dims=3, wide=True, max_batches=5):
    shapes = hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=7)
    return st.lists(hnp.arrays(np.float32, shapes, elements=values(wide)), min_size=1, max_size=max_batches)


def assert_minmax(got, want):
    for g, w, name in zip(got, want, ["min", "max", "n_nan", "n_posinf", "n_neginf"]):
        np.testing.assert_array_equal(g, w, err_msg=name)


def special_blocks(n, seed=0):
    """Mostly finite data with non-finite values in a few blocks only (first, middle, last element)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32) * 100
    x[[5, n // 2, n - 1]] = [np.nan, np.inf, -np.inf]
    x[2048 * 3 + 7] = F32.max  # a finite extreme in a block of its own
    x[2048 * 5 + 1] = -F32.smallest_subnormal
    return x


# ---- minmax -------------------------------------------------------------------------------------

@FAST
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9), elements=values()))
def test_minmax_matches_reference(x):
    assert_minmax(minmax(x), ref.minmax(x))


@FAST
@given(st.data())
def test_minmax_per_channel_matches_reference_on_any_axis(data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(hnp.arrays(np.float32, shape, elements=values()))
    assert_minmax(minmax(x, axis=axis), ref.minmax_per_channel(x, axis % len(shape)))


@pytest.mark.parametrize("n", [0, 1, 2047, 2048, 2049, BIG + 17, 3 * BIG])
def test_minmax_large_and_blocked(n):
    x = special_blocks(max(n, 2048 * 6), seed=n)[:n] if n else np.zeros(0, np.float32)
    assert_minmax(minmax(x), ref.minmax(x))
    fin = x[np.isfinite(x)]
    assert_minmax(minmax(fin), ref.minmax(fin))


@pytest.mark.parametrize("shape,axis", [((BIG // 32, 32), 1), ((BIG // 32, 32), -1), ((32, BIG // 32), 0),
                                        ((4, 16, BIG // 64), 1), ((3, 5, 7, 11), 2)])
def test_minmax_per_channel_large(shape, axis):
    n = int(np.prod(shape))
    x = special_blocks(max(n, 2048 * 6), seed=shape[axis])[:n].reshape(shape)
    assert_minmax(minmax(x, axis=axis), ref.minmax_per_channel(x, axis % len(shape)))


def test_minmax_edge_cases():
    inf = math.inf
    assert_minmax(minmax(np.zeros(0, np.float32)), (inf, -inf, 0, 0, 0))
    assert_minmax(minmax(np.full(5000, np.nan, np.float32)), (inf, -inf, 5000, 0, 0))
    assert_minmax(minmax(np.array([np.inf, -np.inf, np.inf], np.float32)), (inf, -inf, 0, 2, 1))
    assert_minmax(minmax(np.full(7, -2.5, np.float32)), (-2.5, -2.5, 0, 0, 0))
    sub = np.array([3, -2, 1], np.float32) * F32.smallest_subnormal  # denormals are not flushed
    assert_minmax(minmax(sub), (-2 * F32.smallest_subnormal, 3 * F32.smallest_subnormal, 0, 0, 0))
    huge = np.array([F32.max, -F32.max, np.nan], np.float32)
    assert_minmax(minmax(huge), (-F32.max, F32.max, 1, 0, 0))
    # a channel with nothing finite: +inf / -inf there, counted
    x = np.array([[1.0, np.nan], [2.0, -np.inf]], np.float32)
    assert_minmax(minmax(x, axis=1), ([1.0, inf], [2.0, -inf], [0, 1], [0, 0], [0, 1]))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_minmax_other_float_dtypes(dtype):
    x = np.array([1.5, -2.25, np.nan, np.inf, 1e-3], dtype)
    assert_minmax(minmax(x), ref.minmax(x.astype(np.float32)))


# ---- RunningMinMax ------------------------------------------------------------------------------

@FAST
@given(batches())
def test_running_minmax_over_batches(seq):
    obs = RunningMinMax()
    for b in seq:
        obs.update(b)
    flat = np.concatenate([b.reshape(-1) for b in seq])
    assert_minmax((obs.min, obs.max, obs.n_nan, obs.n_posinf, obs.n_neginf), ref.minmax(flat))
    assert obs.batches == len(seq)
    assert obs.seen_finite == bool(np.isfinite(flat).any())


@FAST
@given(st.data())
def test_running_minmax_per_channel(data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    channels = shape[axis]
    seq = []
    for _ in range(data.draw(st.integers(1, 4))):
        s = list(shape)
        for d in range(len(s)):  # other dimensions may change between batches, channels may not
            if d != axis % len(shape):
                s[d] = data.draw(st.integers(0, 4))
        seq.append(data.draw(hnp.arrays(np.float32, tuple(s), elements=values())))
    obs = RunningMinMax(axis=axis)
    for b in seq:
        obs.update(b)
    rows = np.concatenate([ref.channels_first(b, axis % len(shape)) for b in seq], axis=1)
    want = [ref.minmax(r) for r in rows]
    assert_minmax((obs.min, obs.max, obs.n_nan, obs.n_posinf, obs.n_neginf),
                  tuple(np.array([w[i] for w in want]) for i in range(5)))
    assert obs.channels == channels


# ---- histograms ---------------------------------------------------------------------------------

def check_update(h: Histogram, batch: np.ndarray):
    """One Histogram.update against the reference: the first range, or exact growth then binning."""
    old_counts, old_lo, old_w = h.counts.copy(), h.lo, h.width
    h.update(batch)
    fin = batch[np.isfinite(batch)].astype(np.float64)
    if fin.size == 0:
        np.testing.assert_array_equal(h.counts, old_counts)
        assert (h.lo, h.width) == (old_lo, old_w) or (math.isnan(h.lo) and math.isnan(old_lo))
        return
    mn, mx = fin.min(), fin.max()
    if math.isnan(old_lo):
        assert old_counts.sum() == 0
        if mn < mx:  # the first range is the batch's min..max
            assert (h.lo, h.width) == ref.first_range(mn, mx, h.bins)
        else:  # constant data: some small range around the value
            assert h.lo < mn < h.lo + h.bins * h.width and h.width > 0
        np.testing.assert_array_equal(h.counts, ref.histogram(batch, h.lo, h.width, h.bins))
        return
    old_hi = old_lo + h.bins * old_w
    if mn >= old_lo and mx <= old_hi:
        assert (h.lo, h.width) == (old_lo, old_w)  # inside the range: no growth
    elif (h.lo, h.width) == (old_lo, old_w):
        # not grown for an overshoot within rounding (binned into the end bin instead)
        assert mn >= old_lo - 1e-3 * old_w and mx <= old_hi + 1e-3 * old_w, (mn, mx, old_lo, old_hi)
    else:
        k = h.width / old_w
        assert k >= 2 and abs(k - round(k)) <= 1e-9 * k, k  # a whole factor
        shift = (old_lo - h.lo) / old_w
        eps = np.finfo(np.float64).eps
        assert shift >= 0 and abs(shift - round(shift)) <= 1e-6 + 4 * eps * (abs(old_lo) + abs(h.lo)) / old_w, shift
        # covers the batch (up to the rounding of lo; values a hair outside land in an end bin)
        tol = 8 * np.finfo(np.float64).eps * max(abs(h.lo), abs(mx), abs(mn), h.bins * h.width)
        assert h.lo <= mn + tol and h.lo + h.bins * h.width >= mx - tol
        # and not wastefully: no more than needed, or twice the old range
        need = max(mx, old_hi) - h.lo + h.bins * old_w
        assert h.bins * h.width <= max(2 * h.bins * old_w, need) * (1 + 1e-9) + tol
    grown = ref.rebin(old_counts, old_lo, old_w, h.lo, h.width)
    np.testing.assert_array_equal(h.counts, grown + ref.histogram(batch, h.lo, h.width, h.bins))


def check_final(h: Histogram, seq):
    """Nothing dropped: every finite value is in the bin that holds it, up to values that lie on
    an edge within rounding (those may be on either side of it)."""
    flat = np.concatenate([b.reshape(-1) for b in seq]) if seq else np.zeros(0, np.float32)
    fin = flat[np.isfinite(flat)].astype(np.float64)
    assert h.total == fin.size
    assert (h.n_nan, h.n_posinf, h.n_neginf) == (np.isnan(flat).sum(), (flat == np.inf).sum(),
                                                 (flat == -np.inf).sum())
    if fin.size == 0:
        return
    f = (fin - h.lo) / h.width
    tol = 1e-6 + 64 * np.finfo(np.float64).eps * (np.abs(fin) + abs(h.lo)) / h.width
    near = np.abs(f - np.round(f)) <= tol
    edge = np.clip(np.round(f), 0, h.bins).astype(np.int64)
    ambiguous = np.bincount(edge[near], minlength=h.bins + 1)
    want = ref.histogram(fin.astype(np.float32), h.lo, h.width, h.bins)
    # the count left of each inner edge may differ only by the values sitting on that edge
    diff = np.cumsum(h.counts - want)[:-1]
    assert np.all(np.abs(diff) <= ambiguous[1:-1]), (diff, ambiguous)
    assert h.counts.sum() == want.sum()


@FAST
@given(batches(), st.sampled_from([2, 3, 16, 2048]))
def test_histogram_growth_is_exact(seq, bins):
    h = Histogram(bins=bins)
    for b in seq:
        check_update(h, b)
    check_final(h, seq)
    flat = np.concatenate([b.reshape(-1) for b in seq])
    assert_minmax((h.min, h.max, h.n_nan, h.n_posinf, h.n_neginf), ref.minmax(flat))


def test_histogram_docstring_example_by_hand():
    h = Histogram(bins=4)
    h.update(np.array([0.0, 1.0, 2.0, 3.0, 4.0], np.float32))  # lo 0, width 1; 4.0 in the last bin
    assert (h.lo, h.width, h.counts.tolist()) == (0.0, 1.0, [1, 1, 1, 2])
    h.update(np.array([8.0], np.float32))  # grows by 2: bins [0,2) [2,4) [4,6) [6,8]
    assert (h.lo, h.width, h.counts.tolist(), h.total) == (0.0, 2.0, [2, 3, 0, 1], 6)
    # -3: lo moves 2 old bins left to -4; [-4, 8] needs 12 = 1.5 x 8, so the width doubles
    # to 4: old bins (mids 1, 3, 5, 7) go to [0,4) [0,4) [4,8) [4,8); -3 to [-4,0)
    h.update(np.array([-3.0], np.float32))
    assert (h.lo, h.width, h.counts.tolist(), h.total) == (-4.0, 4.0, [1, 5, 1, 0], 7)
    np.testing.assert_array_equal(h.edges, [-4.0, 0.0, 4.0, 8.0, 12.0])


def test_histogram_huge_growth_from_constant_and_tiny():
    for first in ([1.0] * 10, [0.0] * 3, [float(F32.smallest_subnormal)] * 2, [1e-30, 1.1e-30]):
        h = Histogram(bins=64)
        seq = [np.array(first, np.float32),
               np.array([-1e-20, 5e-21], np.float32),
               np.array([3.0, -7.0, np.nan], np.float32),
               np.array([F32.max, np.inf], np.float32),
               np.array([-F32.max, 0.5], np.float32),
               np.array(first, np.float32)]
        for b in seq:
            check_update(h, b)
        check_final(h, seq)
        assert np.isfinite(h.lo) and np.isfinite(h.width) and h.lo <= -F32.max
        assert h.lo + h.bins * h.width >= F32.max


def test_histogram_nonfinite_and_empty_batches_first():
    h = Histogram(bins=8)
    seq = [np.zeros(0, np.float32), np.array([np.nan, np.inf], np.float32), np.array([-np.inf], np.float32),
           np.array([2.0, 4.0, np.nan], np.float32), np.zeros((3, 0), np.float32), np.array([1.0], np.float32)]
    for b in seq[:4]:
        check_update(h, b)
    # the first finite batch sets the range: lo 2, width (4 - 2) / 8; 4.0 lands in the last bin
    assert (h.lo, h.width, h.total, h.counts.tolist()) == (2.0, 0.25, 2, [1, 0, 0, 0, 0, 0, 0, 1])
    for b in seq[4:]:
        check_update(h, b)
    check_final(h, seq)
    # 1.0: lo moves 4 old bins left to 1; [1, 4] needs 3 = 1.5 x 2, so the width doubles to 0.5;
    # old mids 2.125 and 3.875 go to bins 2 and 5
    assert (h.lo, h.width, h.total, h.n_nan, h.n_posinf, h.n_neginf) == (1.0, 0.5, 3, 2, 1, 1)
    assert h.counts.tolist() == [1, 0, 1, 0, 0, 1, 0, 0] and h.batches == len(seq)


def test_histogram_denormal_data():
    sub = float(F32.smallest_subnormal)
    seq = [np.array([3 * sub, 10 * sub, 7 * sub], np.float32), np.array([-5 * sub, 40 * sub], np.float32)]
    h = Histogram(bins=7)
    for b in seq:
        check_update(h, b)
    check_final(h, seq)
    # first range [3, 10] sub, width 1 sub (10 sub clamped into bin 6); then -5 sub moves lo 8
    # bins left and [-5, 40] needs 45 sub: k = ceil(45 / 7) = 7, width 7 sub
    assert (h.lo, h.width) == (-5 * sub, 7 * sub)
    assert h.counts.tolist() == [1, 2, 1, 0, 0, 0, 1]


@pytest.mark.parametrize("n", [BIG + 3, 3 * BIG])
def test_histogram_large_threaded(n):
    # the threaded path with non-finite values in some blocks only
    x = special_blocks(n, seed=n)  # NaN, +-inf in a few blocks, one FLT_MAX
    a = np.where(np.abs(x) == F32.max, np.float32(0), x)
    seq = [a, a * 4, a[:100], x]
    h = Histogram()
    for b in seq:
        check_update(h, b)
    check_final(h, seq)


@FAST
@given(batches(wide=False, max_batches=2), st.sampled_from([3, 7, 2048]))
def test_histogram_same_data_again_does_not_grow(seq, bins):
    # seeing the same values again must not widen the range (no growth from rounding of the first
    # range lo + bins * width). (Counts need not exactly double: the max sits on the closing edge of
    # the first range, is clamped into the last bin, and after a growth that edge can be an inner one.)
    h = Histogram(bins=bins)
    for b in seq:
        h.update(b)
    lo, width, counts = h.lo, h.width, h.counts.copy()
    for b in seq:
        check_update(h, b)
    assert (h.lo, h.width) == (lo, width) or math.isnan(lo)
    assert h.total == 2 * counts.sum()
    check_final(h, seq + seq)


# ---- batch order ---------------------------------------------------------------------------------

@FAST
@given(batches(wide=False, max_batches=6), st.randoms(use_true_random=False))
def test_histogram_order_of_later_batches_does_not_matter(seq, rnd):
    # when the first batch holds the extremes, no growth happens and counts simply add up
    flat = np.concatenate([b.reshape(-1) for b in seq])
    if flat.size == 0:
        return
    first = np.array([flat.min(), flat.max()], np.float32)
    rest = list(seq)
    rnd.shuffle(rest)
    a, b = Histogram(bins=32), Histogram(bins=32)
    for x in [first] + seq:
        a.update(x)
    for x in [first] + rest:
        b.update(x)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert (a.lo, a.width, a.min, a.max) == (b.lo, b.width, b.min, b.max)


@FAST
@given(batches(max_batches=6), st.randoms(use_true_random=False))
def test_histogram_any_order_keeps_counts_and_range(seq, rnd):
    rest = list(seq)
    rnd.shuffle(rest)
    a, b = Histogram(bins=16), Histogram(bins=16)
    for x in seq:
        a.update(x)
    for x in rest:
        b.update(x)
    check_final(a, seq)
    check_final(b, rest)
    assert (a.total, a.n_nan, a.n_posinf, a.n_neginf) == (b.total, b.n_nan, b.n_posinf, b.n_neginf)
    assert (a.min, a.max) == (b.min, b.max)


# ---- per-channel histograms ----------------------------------------------------------------------

@FAST
@given(st.data())
def test_per_channel_histogram_is_one_histogram_per_channel(data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    ax = data.draw(st.integers(-len(shape), len(shape) - 1))
    axis = ax % len(shape)
    seq = [data.draw(hnp.arrays(np.float32, shape, elements=values())) for _ in range(data.draw(st.integers(1, 4)))]
    bins = data.draw(st.sampled_from([2, 5, 64]))
    h = Histogram(bins=bins, axis=ax)
    alone = [Histogram(bins=bins) for _ in range(shape[axis])]
    for b in seq:
        h.update(b)
        for c, hc in enumerate(alone):
            check_update(hc, np.take(b, c, axis=axis))
    for c, hc in enumerate(alone):
        np.testing.assert_array_equal(h.counts[c], hc.counts)
        np.testing.assert_array_equal([h.lo[c], h.width[c], h.min[c], h.max[c]], [hc.lo, hc.width, hc.min, hc.max])
        assert (h.n_nan[c], h.n_posinf[c], h.n_neginf[c]) == (hc.n_nan, hc.n_posinf, hc.n_neginf)
        for q in (0.0, 0.1, 0.5, 0.999, 1.0):
            np.testing.assert_array_equal(h.quantile(q)[c], hc.quantile(q))


@pytest.mark.parametrize("shape,axis", [((BIG // 16, 16), 1), ((16, BIG // 16), 0), ((8, 4, BIG // 32), -2)])
def test_per_channel_histogram_large(shape, axis):
    x = special_blocks(int(np.prod(shape)), seed=3).reshape(shape)
    x = np.where(np.abs(x) > 1e4, np.float32(1e4), x)
    h = Histogram(bins=128, axis=axis)
    h.update(x)
    h.update(x * 3)
    for c in range(shape[axis]):
        hc = Histogram(bins=128)
        check_update(hc, np.take(x, c, axis=axis % len(shape)))
        check_update(hc, np.take(x, c, axis=axis % len(shape)) * 3)
        np.testing.assert_array_equal(h.counts[c], hc.counts)
        assert (h.lo[c], h.width[c]) == (hc.lo, hc.width)


# ---- quantiles ------------------------------------------------------------------------------------

@FAST
@given(batches(wide=True, max_batches=3), st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5),
       st.sampled_from([2, 7, 2048]))
def test_quantile_matches_reference(seq, qs, bins):
    h = Histogram(bins=bins)
    for b in seq:
        h.update(b)
    for q in qs + [0.0, 1.0]:
        got = h.quantile(q)
        if h.total == 0:
            assert math.isnan(got)
            continue
        assert got == ref.quantile(h.counts, h.lo, h.width, q)
        # inside the edges of the non-empty bins
        nz = np.flatnonzero(h.counts)
        assert h.lo + nz[0] * h.width <= got <= h.lo + (nz[-1] + 1) * h.width


def test_quantile_by_hand():
    h = Histogram(bins=4)
    h.update(np.array([0.0, 1.0, 2.0, 3.0, 4.0], np.float32))  # counts [1, 1, 1, 2], width 1
    assert h.quantile(0.0) == 0.0  # left edge of the first non-empty bin
    assert h.quantile(0.5) == 2.5  # target 2.5: half-way through bin 2
    assert h.quantile(0.2) == 1.0  # target 1: the end of bin 0
    assert h.quantile(0.9) == 3.75  # target 4.5: 1.5 of the 2 counts of bin 3
    assert h.quantile(1.0) == 4.0
    assert math.isnan(Histogram().quantile(0.5))


# ---- bad arguments --------------------------------------------------------------------------------

def raises(words, fn, *args, **kwargs):
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, qa.QAValueError)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_bad_arguments():
    x = np.zeros((3, 4), np.float32)
    raises(["act1", "dtype", "int64"], minmax, np.arange(3), name="act1")
    raises(["axis", "2"], minmax, x, axis=2)
    raises(["axis"], minmax, x, axis=-3)
    raises(["bins", "1"], Histogram, bins=1, name="act1")
    obs = RunningMinMax(axis=1, name="act1")
    obs.update(x)
    raises(["act1", "channels", "5", "4"], obs.update, np.zeros((3, 5), np.float32))
    raises(["dtype"], obs.update, np.zeros((3, 4), np.int32))
    raises(["act2", "dtype"], Histogram(name="act2").update, np.array(["1.0"]))


def test_scalar_with_an_axis_is_refused():
    # a 0-d input has no channel axis (it must not become a 1-channel tensor)
    raises(["act2", "scalar"], Histogram(axis=0, name="act2").update, np.float32(1.0))
    raises(["act2", "scalar"], RunningMinMax(axis=-1, name="act2").update, np.array(1.0, np.float32))
    raises(["scalar"], minmax, np.array(2.0), axis=0)
