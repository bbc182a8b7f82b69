"""Encodings (tf, tf_enhanced, percentile) against the reference formulas and hand-checked histograms."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qa
import reference as ref
from qa.kernels import Histogram, RunningMinMax, compute_encoding, encoding_from_range

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
F32 = np.finfo(np.float32)

# (symmetric, strict, unsigned_symmetric): asymmetric, symmetric, strict symmetric, unsigned symmetric
FLAVOURS = [(False, False, False), (True, False, False), (True, True, False), (True, False, True)]
FLAVOUR_IDS = ["asymmetric", "symmetric", "strict", "unsigned"]


def opts(flavour):
    symmetric, strict, unsigned = flavour
    return dict(symmetric=symmetric, strict=strict, unsigned_symmetric=unsigned)


def assert_enc(enc, want, exact=True):
    got = (enc.min, enc.max, enc.scale, enc.offset)
    if exact:
        assert got == tuple(want), (got, tuple(want))
    else:
        np.testing.assert_allclose(got[:3], want[:3], rtol=1e-12, atol=1e-300)
        assert got[3] == want[3]
    assert isinstance(enc.offset, int)


def data_batches(max_batches=4, max_side=200):
    """Batches of float32 data of different spreads and offsets (growth happens), some NaN/inf."""
    @st.composite
    def one(draw):
        n = draw(st.integers(0, max_side))
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        kind = draw(st.sampled_from(["normal", "uniform", "relu", "negative", "spiky", "constant"]))
        loc, spread = draw(st.floats(-5, 5)), draw(st.sampled_from([1e-3, 0.1, 1.0, 30.0]))
        if kind == "normal":
            x = rng.normal(loc, spread, n)
        elif kind == "uniform":
            x = rng.uniform(loc - spread, loc + spread, n)
        elif kind == "relu":
            x = np.maximum(rng.normal(loc, spread, n), 0)
        elif kind == "negative":
            x = -np.abs(rng.normal(loc, spread, n))
        elif kind == "spiky":
            x = rng.laplace(loc, spread, n)
            x[: n // 50] *= 100
        else:
            x = np.full(n, loc)
        x = x.astype(np.float32)
        if n and draw(st.booleans()):
            x[rng.integers(0, n, 3)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return x
    return st.lists(one(), min_size=1, max_size=max_batches)


def observe(seq, obs):
    for b in seq:
        obs.update(b)
    return obs


# ---- tf -------------------------------------------------------------------------------------------

@FAST
@given(st.floats(width=32, allow_nan=False, allow_infinity=False), st.floats(width=32, allow_nan=False,
       allow_infinity=False), st.integers(2, 32), st.sampled_from(FLAVOURS))
def test_tf_matches_reference(a, b, bw, flavour):
    mn, mx = min(a, b), max(a, b)
    enc = encoding_from_range(mn, mx, bw, **opts(flavour))
    want = ref.tf_encoding(mn, mx, bw, *flavour)
    assert_enc(enc, want)
    assert enc.bitwidth == bw and enc.symmetric == flavour[0] and enc.strict == flavour[1]
    # 0 is on the grid and the observed range (widened) is covered to within half a step
    n = ref.num_steps(bw, flavour[1])
    assert -n <= enc.offset <= 0
    lo, hi = ref.widen(mn, mx)
    slack = enc.scale * (0.5 + 1e-9)
    # Unless a grid end had to stop at float32's limit (documented: the grid stays finite).
    at_limit = max(abs(enc.min), abs(enc.max)) >= float(np.finfo(np.float32).max) * (1 - 2.0**-19)
    assert at_limit or (enc.min <= lo + slack and enc.max >= hi - slack)
    assert enc.fake_quantize(np.zeros(3, np.float32)).tolist() == [0.0] * 3


def test_tf_by_hand():
    enc = encoding_from_range(-1.0, 3.0, 8)  # delta 4/255, offset round(-63.75) = -64
    assert (enc.scale, enc.offset, enc.min, enc.max) == (4 / 255, -64, -64 * (4 / 255), 191 * (4 / 255))
    enc = encoding_from_range(-0.5, 2.0, 8, symmetric=True)  # M 2, delta 2/127, levels -128..127
    assert (enc.scale, enc.offset) == (2 / 127, -128)
    assert enc.min == pytest.approx(-256 / 127) and enc.max == pytest.approx(2.0)
    enc = encoding_from_range(-1.0, 1.0, 8, symmetric=True, strict=True)  # levels -127..127
    assert (enc.scale, enc.offset, enc.num_steps) == (1 / 127, -127, 254)
    assert enc.min == pytest.approx(-1.0) and enc.max == pytest.approx(1.0)
    enc = encoding_from_range(0.0, 2.0, 8, symmetric=True, unsigned_symmetric=True)  # 0..255 steps of 2/255
    assert (enc.scale, enc.offset, enc.min) == (2 / 255, 0, 0.0) and enc.max == pytest.approx(2.0)
    enc = encoding_from_range(-0.1, 2.0, 8, symmetric=True, unsigned_symmetric=True)  # negative: signed
    assert (enc.scale, enc.offset) == (2 / 127, -128)
    enc = encoding_from_range(2.0, 5.0, 8)  # includes 0: [0, 5]
    assert (enc.scale, enc.offset, enc.min) == (5 / 255, 0, 0.0)
    enc = encoding_from_range(-5.0, -2.0, 8)  # [-5, 0]
    assert (enc.scale, enc.offset, enc.max) == (5 / 255, -255, 0.0)
    enc = encoding_from_range(0.0, 0.0, 8)  # at least 0.01 wide
    assert (enc.scale, enc.offset, enc.min) == (0.01 / 255, 0, 0.0)
    enc = encoding_from_range(-1.0, 2.0, 2)  # 4 levels: -1, 0, 1, 2
    assert (enc.scale, enc.offset, enc.min, enc.max) == (1.0, -1, -1.0, 2.0)
    enc = encoding_from_range(-1.0, 1.0, 32)  # -1/delta = -2147483647.5 up to rounding
    assert enc.scale == 2 / (2**32 - 1) and enc.offset in (-(2**31), -(2**31) + 1)


@pytest.mark.parametrize("flavour", FLAVOURS, ids=FLAVOUR_IDS)
def test_tf_huge_and_tiny_ranges(flavour):
    for mn, mx in [(-F32.max, F32.max), (0.0, F32.max), (-F32.max, -1.0), (-1e-45, 1e-45), (1e-38, 1e-38)]:
        for bw in (2, 8, 16, 32):
            enc = encoding_from_range(mn, mx, bw, **opts(flavour))
            assert_enc(enc, ref.tf_encoding(mn, mx, bw, *flavour))
            assert np.isfinite([enc.min, enc.max, enc.scale]).all() and enc.scale > 0


@pytest.mark.parametrize("flavour", FLAVOURS, ids=FLAVOUR_IDS)
@pytest.mark.parametrize("bw", [2, 8, 16])
def test_tf_grid_of_float32_extremes_stays_finite(flavour, bw):
    # Data reaching +-FLT_MAX: fake-quantizing that very data with its own tf encoding must not
    # turn finite values into +-inf (the grid's ends must be float32 numbers).
    for mn, mx in [(-F32.max, F32.max), (0.0, F32.max), (-F32.max, 0.0)]:
        enc = encoding_from_range(mn, mx, bw, **opts(flavour))
        x = np.array([mn, mx, 0.0, mn / 2, mx / 3], np.float32)
        y = enc.fake_quantize(x)
        assert np.isfinite(y).all(), (mn, mx, enc, y)


@FAST
@given(data_batches(), st.integers(2, 16), st.sampled_from(FLAVOURS))
def test_tf_from_observers(seq, bw, flavour):
    flat = np.concatenate(seq)
    fin = flat[np.isfinite(flat)]
    for obs in (RunningMinMax(), Histogram(bins=64)):
        observe(seq, obs)
        if fin.size == 0:
            with pytest.raises(qa.QAValueError, match="no finite values"):
                compute_encoding(obs, "tf", bw, **opts(flavour))
            continue
        enc = compute_encoding(obs, "tf", bw, **opts(flavour))
        assert_enc(enc, ref.tf_encoding(float(fin.min()), float(fin.max()), bw, *flavour))


def test_tf_per_channel():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (6, 5, 7)).astype(np.float32) * np.array([0.01, 1, 10, 100, 0.5])[None, :, None]
    x[0, 2, 0] = np.nan
    x[:, 4] = np.abs(x[:, 4])  # a non-negative channel (unsigned symmetric applies there only)
    for axis in (1, -2):
        obs = observe([x[:3], x[3:]], RunningMinMax(axis=axis))
        for flavour in FLAVOURS:
            enc = compute_encoding(obs, "tf", 8, **opts(flavour))
            assert enc.axis == axis and enc.per_channel
            rows = ref.channels_first(x, 1)
            for c in range(5):
                fin = rows[c][np.isfinite(rows[c])]
                want = ref.tf_encoding(float(fin.min()), float(fin.max()), 8, *flavour)
                assert (enc.min[c], enc.max[c], enc.scale[c], enc.offset[c]) == tuple(want)
            d = enc.to_dict()
            assert len(d) == 5 and d[4]["offset"] == int(enc.offset[4])


# ---- tf_enhanced ---------------------------------------------------------------------------------

@FAST
@given(data_batches(), st.sampled_from([2, 3, 4, 8, 16]), st.sampled_from(FLAVOURS), st.sampled_from([4, 64, 2048]))
def test_tf_enhanced_matches_reference(seq, bw, flavour, bins):
    h = observe(seq, Histogram(bins=bins))
    if h.total == 0:
        return
    enc = compute_encoding(h, "tf_enhanced", bw, **opts(flavour))
    want = ref.tf_enhanced_encoding(h.counts, h.lo, h.width, h.min, h.max, bw, *flavour)
    assert_enc(enc, want)
    # the grid holds 0 and stays within the observed range (symmetric: within 1.01 x max |x|)
    lo, hi = ref.widen(h.min, h.max)
    n = ref.num_steps(bw, flavour[1])
    assert -n <= enc.offset <= 0 and enc.scale > 0
    tol = 1e-9 * (hi - lo)
    if not flavour[0]:  # clamped to the observed range, then snapped to whole steps: half a step out
        half = enc.scale * (0.5 + 1e-9)
        assert lo - half - tol <= enc.min and enc.max <= hi + half + tol
    else:
        m = max(-lo, hi)
        assert -1.01 * m * math.ceil(n / 2) / math.floor(n / 2) - tol <= enc.min and enc.max <= 1.01 * m + tol


@pytest.mark.parametrize("flavour", FLAVOURS, ids=FLAVOUR_IDS)
def test_tf_enhanced_realistic_data(flavour):
    rng = np.random.default_rng(1)
    seq = [rng.normal(0.5, 1.0, 20000).astype(np.float32), rng.laplace(0, 2, 20000).astype(np.float32),
           np.maximum(rng.normal(1, 3, 20000), 0).astype(np.float32)]
    for data in seq:
        h = observe([data[:5000], data[5000:] * 1.5], Histogram())
        for bw in (4, 8):
            enc = compute_encoding(h, "tf_enhanced", bw, **opts(flavour))
            assert_enc(enc, ref.tf_enhanced_encoding(h.counts, h.lo, h.width, h.min, h.max, bw, *flavour))


def test_tf_enhanced_per_channel():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (200, 6)).astype(np.float32) * np.array([0.01, 1, 10, 100, 0.5, 3], np.float32)
    x[:, 4] = np.abs(x[:, 4])  # non-negative: unsigned symmetric there, signed elsewhere
    x[:, 5] = rng.laplace(0, 3, 200)
    x[0, 0] = np.inf
    h = observe([x[:100], x[100:] * 2], Histogram(bins=256, axis=-1))
    for flavour in FLAVOURS:
        for bw in (4, 8):
            enc = compute_encoding(h, "tf_enhanced", bw, **opts(flavour))
            assert enc.axis == -1
            for c in range(6):
                want = ref.tf_enhanced_encoding(h.counts[c], h.lo[c], h.width[c], h.min[c], h.max[c], bw, *flavour)
                assert (enc.min[c], enc.max[c], enc.scale[c], enc.offset[c]) == tuple(want), c


def two_point_histogram(a, b, bins):
    h = Histogram(bins=bins)
    h.update(np.array([a, b], np.float32))
    return h


def test_tf_enhanced_by_hand_symmetric():
    # Data {-1, 1} in 2 bins: lo -1, width 1, mass 1/2 at the midpoints -0.5 and 0.5.
    # Symmetric 2-bit: levels -2d..d, d = k/100 (delta_max = 1/floor(3/2) = 1). For d < 0.5 the
    # midpoint 0.5 saturates (cost > 0); d = 0.5 (k = 50) puts both midpoints on the grid:
    # cost 0, the first minimum. Encoding [-1, 0.5], scale 0.5, offset -2.
    h = two_point_histogram(-1.0, 1.0, 2)
    assert (h.lo, h.width, h.counts.tolist()) == (-1.0, 1.0, [1, 1])
    enc = compute_encoding(h, "tf_enhanced", 2, symmetric=True)
    assert (enc.min, enc.max, enc.scale, enc.offset) == (-1.0, 0.5, 0.5, -2)
    assert ref.tf_enhanced_search(h.counts, h.lo, h.width, -1.0, 1.0, 3, 1) == (-1.0, 0.5, 0.0)
    # strict: levels -d, 0, d; again d = 0.5 is the first with both midpoints on the grid
    enc = compute_encoding(h, "tf_enhanced", 2, symmetric=True, strict=True)
    assert (enc.min, enc.max, enc.scale, enc.offset) == (-0.5, 0.5, 0.5, -1)


def test_tf_enhanced_by_hand_asymmetric():
    # Data {-1, 1} in 2 bins, asymmetric 2-bit (3 steps): a zero-cost grid needs -0.5 and 0.5 on
    # it inside [-1, 1]: step 0.5 with levels -1..0.5 or -0.5..1. Candidates: delta k/16 * 2/3
    # = k/24, offsets -3,-3,-3,-3,-2 x7,-1 x6,0 x4 and round(-1.5) = -2. The first is k = 12,
    # offset -2: [-1, 0.5] (k = 12, offset -1 gives [-0.5, 1] later; no k < 12 reaches 0.5).
    h = two_point_histogram(-1.0, 1.0, 2)
    enc = compute_encoding(h, "tf_enhanced", 2)
    assert enc.offset == -2 and enc.min == pytest.approx(-1.0, abs=1e-12)
    assert enc.max == pytest.approx(0.5, abs=1e-12) and enc.scale == pytest.approx(0.5, abs=1e-12)
    # Data {0, 1}: midpoints 0.25, 0.75; every candidate starts at 0 (offsets <= 0 clamp to the
    # observed min 0), so grids are 0, d, 2d, 3d with 3d <= 1. Only d = 0.25 holds both midpoints:
    # k = 12, offset 0 (3 * 12/48 = 0.75). Earlier k saturate 0.75, later ones miss 0.25.
    h = two_point_histogram(0.0, 1.0, 2)
    enc = compute_encoding(h, "tf_enhanced", 2)
    assert enc.offset == 0 and enc.min == 0.0 and enc.max == pytest.approx(0.75, abs=1e-12)
    # unsigned symmetric on the same data: levels 0..3d, d = k/100 * (1/3): k = 75 gives d = 0.25
    enc = compute_encoding(h, "tf_enhanced", 2, symmetric=True, unsigned_symmetric=True)
    assert enc.offset == 0 and enc.min == 0.0 and enc.max == pytest.approx(0.75, abs=1e-12)


def test_tf_enhanced_cost_by_hand():
    # The reference cost itself, on one candidate worked out by hand: midpoints -0.5 (p 1/4),
    # 0.5 (p 1/2), 2.5 (p 1/4); grid delta 0.4, offset -2 (levels -0.8..0.4 for 2 bits).
    # -0.5: inside, nearest level -0.4, error 0.1; 0.5: above 0.4, saturation 0.1;
    # 2.5: saturation 2.1. cost = 1/4*0.01 + 3 * (1/2*0.01 + 1/4*4.41) = 3.325
    p, mid = np.array([0.25, 0.5, 0.25]), np.array([-0.5, 0.5, 2.5])
    assert ref.tfe_cost(p, mid, 0.4, -2, 3) == pytest.approx(3.325, rel=1e-12)
    # and the search over a histogram with an outlier
    h = Histogram(bins=8)
    h.update(np.array([-1.0] * 500 + [1.0] * 500 + [7.0], np.float32))
    enc = compute_encoding(h, "tf_enhanced", 8)
    assert_enc(enc, ref.tf_enhanced_encoding(h.counts, h.lo, h.width, h.min, h.max, 8))


# ---- percentile ----------------------------------------------------------------------------------

@FAST
@given(data_batches(), st.floats(50, 100), st.integers(2, 16), st.sampled_from(FLAVOURS))
def test_percentile_matches_reference(seq, p, bw, flavour):
    h = observe(seq, Histogram(bins=128))
    if h.total == 0:
        return
    enc = compute_encoding(h, "percentile", bw, percentile=p, **opts(flavour))
    want = ref.percentile_encoding(h.counts, h.lo, h.width, h.min, h.max, bw, p,
                                   symmetric=flavour[0], strict=flavour[1], unsigned_symmetric=flavour[2])
    assert_enc(enc, want)


def test_percentile_by_hand():
    h = Histogram(bins=4)
    h.update(np.array([-2.0, -1.0, 0.0, 1.0, 2.0], np.float32))  # lo -2, width 1, counts [1, 1, 1, 2]
    # p = 80: the 0.2 quantile is the end of bin 0 (-1.0), the 0.8 quantile (target 4) is half-way
    # through bin 3 (1.5). tf on [-1, 1.5]: delta 2.5/255, offset round(-102.0) = -102.
    enc = compute_encoding(h, "percentile", 8, percentile=80)
    assert enc.offset == -102 and enc.scale == pytest.approx(2.5 / 255, rel=1e-15)
    assert enc.min == pytest.approx(-1.0) and enc.max == pytest.approx(1.5)
    # p = 100 is the observed min/max
    assert_enc(compute_encoding(h, "percentile", 8, percentile=100), ref.tf_encoding(-2.0, 2.0, 8))


def test_percentile_per_channel():
    rng = np.random.default_rng(3)
    x = rng.laplace(0, 1, (4, 500)).astype(np.float32) * np.array([[0.1], [1], [10], [3]], np.float32)
    x[3] = np.abs(x[3])
    h = observe([x[:, :200], x[:, 200:] * 1.7], Histogram(bins=512, axis=0))
    for flavour in FLAVOURS:
        for p in (99.0, 99.99, 60.0):
            enc = compute_encoding(h, "percentile", 8, percentile=p, **opts(flavour))
            for c in range(4):
                want = ref.percentile_encoding(h.counts[c], h.lo[c], h.width[c], h.min[c], h.max[c], 8, p,
                                               symmetric=flavour[0], strict=flavour[1],
                                               unsigned_symmetric=flavour[2])
                assert (enc.min[c], enc.max[c], enc.scale[c], enc.offset[c]) == tuple(want)


@FAST
@given(data_batches(), st.sampled_from(FLAVOURS))
def test_percentile_100_is_tf(seq, flavour):
    h = observe(seq, Histogram(bins=64))
    if h.total == 0:
        return
    a = compute_encoding(h, "percentile", 8, percentile=100.0, **opts(flavour))
    b = compute_encoding(h, "tf", 8, **opts(flavour))
    assert_enc(a, (b.min, b.max, b.scale, b.offset), exact=False)


# ---- batch order ---------------------------------------------------------------------------------

@FAST
@given(data_batches(max_batches=5), st.randoms(use_true_random=False), st.sampled_from(FLAVOURS))
def test_encodings_stable_under_batch_order(seq, rnd, flavour):
    flat = np.concatenate(seq)
    fin = flat[np.isfinite(flat)]
    if fin.size == 0:
        return
    other = list(seq)
    rnd.shuffle(other)
    # tf: exact min/max are kept, so any order gives the same encoding
    a, b = observe(seq, Histogram(bins=256)), observe(other, Histogram(bins=256))
    assert compute_encoding(a, "tf", 8, **opts(flavour)) == compute_encoding(b, "tf", 8, **opts(flavour))
    # percentile: each histogram quantile is within one bin of the data's, so the two agree to
    # within the two final bin widths
    for q in (0.001, 0.01, 0.5, 0.99, 0.999):
        assert abs(a.quantile(q) - b.quantile(q)) <= (a.width + b.width) * (1 + 1e-9)
    # every scheme: identical when the first batch holds the extremes (no growth afterwards)
    first = np.array([fin.min(), fin.max()], np.float32)
    a, b = observe([first] + seq, Histogram(bins=256)), observe([first] + other, Histogram(bins=256))
    for scheme in ("tf", "tf_enhanced", "percentile"):
        assert compute_encoding(a, scheme, 8, **opts(flavour)) == compute_encoding(b, scheme, 8, **opts(flavour))


# ---- bad arguments -------------------------------------------------------------------------------

def raises(words, fn, *args, **kwargs):
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, qa.QAValueError), f"{type(info.value).__name__}: {info.value}"
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_bad_arguments():
    h = observe([np.linspace(-1, 1, 100, dtype=np.float32)], Histogram(name="relu1"))
    raises(["relu1", "scheme", "minmax"], compute_encoding, h, "minmax")
    raises(["relu1", "percentile", "49"], compute_encoding, h, "percentile", percentile=49)
    raises(["percentile", "101"], compute_encoding, h, "percentile", percentile=101)
    raises(["relu1", "strict", "symmetric"], compute_encoding, h, "tf", strict=True)
    raises(["strict", "symmetric"], encoding_from_range, -1.0, 1.0, strict=True)
    for bw in (1, 33):
        raises(["relu1", "bitwidth", str(bw)], compute_encoding, h, "tf", bw)
        raises(["bitwidth", str(bw)], encoding_from_range, -1.0, 1.0, bw)
    mm = observe([np.ones(3, np.float32)], RunningMinMax(name="fc"))
    for scheme in ("tf_enhanced", "percentile"):
        raises(["fc", scheme, "Histogram"], compute_encoding, mm, scheme)
    raises(["no finite values"], compute_encoding, Histogram(), "tf_enhanced")
    raises(["no finite values"], compute_encoding, observe([np.array([np.nan, np.inf], np.float32)], Histogram()),
           "tf")
    per = observe([np.array([[1.0, np.nan, 2.0], [3.0, np.nan, -1.0]], np.float32)], Histogram(axis=1))
    raises(["channel", "[1]"], compute_encoding, per, "tf_enhanced")
    for bad in (np.nan, np.inf, -np.inf):
        raises(["finite"], encoding_from_range, bad, 1.0)
        raises(["finite"], encoding_from_range, -1.0, bad)


def test_encoding_from_range_shape_mismatch():
    # per-channel min/max of different lengths, or several values without an axis: a ValueError
    # from qa that says so (not numpy's broadcasting error, not a TypeError)
    raises(["min", "max"], encoding_from_range, np.zeros(3) - 1, np.ones(4), 8, axis=0)
    raises(["axis"], encoding_from_range, np.zeros(3) - 1, np.ones(3), 8)
