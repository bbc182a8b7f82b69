"""Unusual inputs at every public kernel entry point: a right answer or a QAValueError naming the problem.

Covers outputs that overlap their input, dtypes beyond numpy's floats (ml_dtypes' bfloat16 and
float8, float16, longdouble), histogram bin counts, encoding ranges and bitwidths, and the
None / string / 0-d / empty / strided / read-only arguments each entry point may be given.
Expected results come from the same kernel on a private contiguous float32 copy, whose own
correctness tests/test_fake_quant.py and tests/test_stats.py check against the numpy reference.
"""

from __future__ import annotations

import math
import types
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qa
from qa import _device, _fake_quant
from qa.kernels import (ErrorStats, Histogram, RunningMinMax, compute_encoding, encoding_from_range,
                        fake_quantize, minmax)

try:
    import ml_dtypes
except ImportError:  # optional: the ml_dtypes cases skip
    ml_dtypes = None

needs_ml_dtypes = pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes is not installed")
BIG = (1 << 20) + 37  # large enough for every OpenMP thread to get a share


def raises(words, fn, *args, **kwargs):
    with pytest.raises(qa.QAValueError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"
    return msg


def data(n, seed=0):
    x = (np.random.default_rng(seed).standard_normal(n) * 3).astype(np.float32)
    x[: min(n, 4)] = [np.nan, np.inf, -np.inf, 0.5][: min(n, 4)]
    return x


def same(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---- 1. out overlapping x -------------------------------------------------------------------

def _overlapping(n, shift, reverse=False):
    """(x, out): two length-n float32 views of one buffer, out starting `shift` elements later."""
    buf = data(n + abs(shift), seed=n + abs(shift))
    x = buf[max(0, -shift): max(0, -shift) + n]
    out = buf[max(0, shift): max(0, shift) + n]
    return (x[::-1] if reverse else x), out


@pytest.mark.parametrize("n", [7, 1000, BIG])
@pytest.mark.parametrize("where_", ["+1", "-1", "+half", "-half", "reversed", "reversed+half"])
def test_out_partly_overlapping_x_is_quantized_from_a_copy(n, where_):
    shift = {"+1": 1, "-1": -1, "+half": n // 2, "-half": -(n // 2), "reversed": 0,
             "reversed+half": n // 2}[where_]
    x, out = _overlapping(n, shift, reverse=where_.startswith("reversed"))
    assert np.shares_memory(x, out)
    want = fake_quantize(x.copy(), 0.05, -100, 8)
    assert fake_quantize(x, 0.05, -100, 8, out=out) is out
    same(out, want)


@pytest.mark.parametrize("shift", [1, -3, 50, 500])
@pytest.mark.parametrize("axis", [0, 1])
def test_out_partly_overlapping_x_per_channel(shift, axis):
    n = 4 * 250
    buf = data(n + abs(shift), seed=abs(shift))
    x = buf[max(0, -shift): max(0, -shift) + n].reshape(4, 250)
    out = buf[max(0, shift): max(0, shift) + n].reshape(4, 250)
    scales = [0.01, 0.05, 0.1, 0.5] if axis == 0 else np.linspace(0.01, 0.5, 250)
    want = fake_quantize(x.copy(), scales, -128, 8, axis=axis)
    fake_quantize(x, scales, -128, 8, axis=axis, out=out)
    same(out, want)


def test_out_overlapping_by_part_of_an_element():
    # Two float32 views of one byte buffer 2 bytes apart: every element straddles two others.
    raw = np.zeros(4 * 1001 + 2, np.uint8)
    x = np.ndarray((1000,), np.float32, buffer=raw, offset=0)
    out = np.ndarray((1000,), np.float32, buffer=raw, offset=2)
    x[:] = np.linspace(-3, 3, 1000, dtype=np.float32)
    want = fake_quantize(x.copy(), 0.05, -64, 7)
    fake_quantize(x, 0.05, -64, 7, out=out)
    same(out, want)


@given(st.integers(1, 300), st.integers(-299, 299), st.booleans())
@settings(max_examples=150, deadline=None)
def test_any_overlap_gives_the_result_of_a_copy(n, shift, reverse):
    x, out = _overlapping(n, shift, reverse)
    want = fake_quantize(x.copy(), 0.1, -8, 4, rounding="half_away")
    fake_quantize(x, 0.1, -8, 4, out=out, rounding="half_away")
    same(out, want)


def test_in_place_needs_no_copy(monkeypatch):
    # out is x (or a view of exactly x's elements): quantized in place, no temporary.
    def no_buffer(*args, **kwargs):
        raise AssertionError("a temporary buffer was allocated")
    monkeypatch.setattr(_fake_quant._memory, "empty", no_buffer)
    for make_out in (lambda x: x, lambda x: x[...], lambda x: x.reshape(x.shape)):
        x = data(BIG)
        want = fake_quantize(x.copy(), 0.05, -100, 8, out=np.empty_like(x))
        out = make_out(x)
        assert fake_quantize(x, 0.05, -100, 8, out=out) is out
        same(x, want)
    w = data(600).reshape(3, 200)
    want = fake_quantize(w.copy(), [0.1, 0.2, 0.3], -128, 8, axis=0, out=np.empty_like(w))
    fake_quantize(w, [0.1, 0.2, 0.3], -128, 8, axis=0, out=w)
    same(w, want)


def test_separate_out_needs_no_copy(monkeypatch):
    def no_buffer(*args, **kwargs):
        raise AssertionError("a temporary buffer was allocated")
    monkeypatch.setattr(_fake_quant._memory, "empty", no_buffer)
    buf = data(2 * 1000)
    x, out = buf[:1000], buf[1000:]  # adjacent, not overlapping
    want = fake_quantize(x.copy(), 0.05, -100, 8, out=np.empty_like(x))
    fake_quantize(x, 0.05, -100, 8, out=out)
    same(out, want)


class _CAI:
    """A stand-in device array: only a __cuda_array_interface__ at a made-up address."""

    def __init__(self, ptr, n=8):
        self.__cuda_array_interface__ = {"shape": (n,), "typestr": "<f4", "data": (ptr, False),
                                         "version": 3, "strides": None}


def test_device_out_partly_overlapping_x_is_refused(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(fake_quant_per_tensor=lambda *a: calls.append(a))
    monkeypatch.setattr(_device, "_module", lambda: fake)
    base = 1 << 20
    for out_ptr in (base + 4, base - 4, base + 28):
        raises(["conv1", "out", "overlaps"], fake_quantize, _CAI(base), 0.1, 0, 8, out=_CAI(out_ptr),
               name="conv1")
    assert not calls
    for out_ptr in (base, base + 32, base - 32):  # the same elements, or none of them
        fake_quantize(_CAI(base), 0.1, 0, 8, out=_CAI(out_ptr))
    assert len(calls) == 3


# ---- 2. dtypes --------------------------------------------------------------------------------

def _ml(name):
    return pytest.param(name, marks=needs_ml_dtypes)


FLOAT_DTYPES = [np.float16, np.float64, np.longdouble, _ml("bfloat16"), _ml("float8_e4m3fn"),
                _ml("float8_e5m2")]


def _dtype(d):
    return np.dtype(getattr(ml_dtypes, d) if isinstance(d, str) else d)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_other_float_dtypes_everywhere(dtype):
    dtype = _dtype(dtype)
    x = data(1200).reshape(40, 30).astype(dtype)
    x32 = x.astype(np.float32)
    keep = x.copy()
    y = fake_quantize(x, 0.05, -100, 8, name="act1")
    assert y.dtype == dtype and y.shape == x.shape
    same(y.astype(np.float32), fake_quantize(x32, 0.05, -100, 8).astype(dtype).astype(np.float32))
    y = fake_quantize(x, np.linspace(0.01, 0.1, 30), -100, 8, axis=1)
    assert y.dtype == dtype
    out = np.empty(x.shape, np.float32)
    assert fake_quantize(x, 0.05, -100, 8, out=out) is out
    same(out, fake_quantize(x32, 0.05, -100, 8))
    same(x.astype(np.float32), keep.astype(np.float32))  # input untouched

    assert minmax(x) == minmax(x32)
    for a, b in zip(minmax(x, axis=0), minmax(x32, axis=0)):
        same(a, b)
    for make in (RunningMinMax, lambda: Histogram(64), lambda: Histogram(16, axis=1)):
        obs, ref = make(), make()
        obs.update(x)
        ref.update(x32)
        same(obs.min, ref.min)
        if isinstance(obs, Histogram):
            same(obs.counts, ref.counts)
    e, ref = ErrorStats(), ErrorStats()
    e.update(x, x[::-1])
    ref.update(x32, x32[::-1])
    assert e.as_dict() == ref.as_dict()


@needs_ml_dtypes
def test_bfloat16_from_torch_bits():
    # torch bfloat16 tensors reach qa as ml_dtypes arrays when converted through their bits.
    torch = pytest.importorskip("torch")
    t = torch.randn(1000).to(torch.bfloat16)
    x = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    y = fake_quantize(x, 0.05, -128, 8)
    assert y.dtype == x.dtype
    want = torch.fake_quantize_per_tensor_affine(t.float(), 0.05, 128, 0, 255).to(torch.bfloat16)
    same(y.view(np.int16), want.view(torch.int16).numpy())


def test_float64_beyond_float32_becomes_inf_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mm = minmax(np.array([1e300, -1e300, 1.0]))
        assert (mm.min, mm.max, mm.n_posinf, mm.n_neginf) == (1.0, 1.0, 1, 1)
        y = fake_quantize(np.array([1e300, 0.5]), 0.5, -2, 3)
        assert y.dtype == np.float64 and y.tolist() == [2.5, 0.5]
        y = fake_quantize(np.array([65504.0], np.float16), 1000.0, 0, 8)  # rounds to 66000
        assert y.dtype == np.float16 and np.isinf(y[0])


def _not_floats():
    yield np.array([1.0, None], dtype=object)
    yield np.array([1.0, 2.0], dtype=object)
    yield np.zeros(3, "V4")
    yield np.zeros(3, [("a", np.float32)])
    yield np.array(["1.0"])
    yield np.arange(3)
    yield np.ones(3, bool)
    yield np.ones(3, np.complex64)
    yield "1.0"
    yield None
    if ml_dtypes is not None:
        yield np.zeros(3, ml_dtypes.int4)


@pytest.mark.parametrize("x", list(_not_floats()), ids=lambda x: type(x).__name__ + str(getattr(x, "dtype", "")))
def test_non_float_inputs_are_refused_by_name_everywhere(x):
    raises(["act1", "floating"], fake_quantize, x, 0.1, 0, 8, name="act1")
    raises(["act1", "floating"], minmax, x, name="act1")
    raises(["act1", "floating"], RunningMinMax(name="act1").update, x)
    raises(["act1", "floating"], Histogram(8, name="act1").update, x)
    raises(["act1", "ref", "floating"], ErrorStats(name="act1").update, x, np.zeros(3, np.float32))
    raises(["act1", "test", "floating"], ErrorStats(name="act1").update, np.zeros(3, np.float32), x)


def test_unreadable_inputs_are_refused_by_name():
    ragged = [[1.0], [2.0, 3.0]]
    raises(["act1", "list"], fake_quantize, ragged, 0.1, 0, 8, name="act1")
    raises(["act1", "list"], minmax, ragged, name="act1")
    torch = pytest.importorskip("torch")
    for t in (torch.ones(3, dtype=torch.bfloat16), torch.ones(3, requires_grad=True)):
        raises(["act1", "Tensor"], fake_quantize, t, 0.1, 0, 8, name="act1")
        raises(["act1", "Tensor"], Histogram(8, name="act1").update, t)


# ---- 3. histogram bins ------------------------------------------------------------------------

@pytest.mark.parametrize("bins", [None, 0, 1, -5, 2.5, 3.0, True, False, np.bool_(True), "8", [8],
                                  10**12, (1 << 24) + 1, 2**70])
def test_bad_bins_are_refused_by_name(bins):
    raises(["act1", "bins"], Histogram, bins=bins, name="act1")
    raises(["bins"], Histogram, bins=bins, axis=0)


@pytest.mark.parametrize("bins", [2, np.int64(5), np.uint8(7), 4096])
def test_integer_bins_are_accepted(bins):
    h = Histogram(bins=bins)
    h.update(np.linspace(0, 1, 100, dtype=np.float32))
    assert h.bins == int(bins) and type(h.bins) is int and h.total == 100


def test_per_channel_counters_are_bounded():
    h = Histogram(bins=1 << 24, axis=0, name="act1")
    raises(["act1", "channels", "bins", "GiB"], h.update, np.zeros((200, 2), np.float32))


# ---- 4. encoding ranges and bitwidths ----------------------------------------------------------

@pytest.mark.parametrize("lo, hi", [(5, -5), (0.5, 0.25), (-1.0, -2.0), (1e-30, 0.0)])
def test_min_above_max_is_refused(lo, hi):
    raises(["conv1", "min > max", str(float(lo))], encoding_from_range, lo, hi, name="conv1")
    raises(["min > max"], encoding_from_range, lo, hi, 4, symmetric=True)


def test_min_above_max_per_channel_names_the_channels():
    raises(["conv1", "min > max", "channel(s) [1, 3]:"], encoding_from_range,
           [-1.0, 2.0, -1.0, 0.0], [1.0, 1.0, 0.5, -0.5], axis=0, name="conv1")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_bounds_are_refused(bad):
    raises(["conv1", "finite"], encoding_from_range, bad, 1.0, name="conv1")
    raises(["conv1", "finite"], encoding_from_range, -1.0, bad, name="conv1")
    raises(["finite", "channel", "[2]"], encoding_from_range, [-1, -1, bad], [1, 1, 1], axis=0)


@pytest.mark.parametrize("bad", [None, "a", "1.0", [1.0, None], object()])
def test_non_numeric_bounds_are_refused(bad):
    raises(["conv1", "min"], encoding_from_range, bad, 1.0, name="conv1")
    raises(["conv1", "max"], encoding_from_range, -1.0, bad, name="conv1")


@pytest.mark.parametrize("bw", [1e300, float("inf"), float("nan"), -float("inf"), 10**30, -(10**30), 2**64,
                                True, False, np.bool_(True), 8.0, "8", None, [8]])
def test_absurd_bitwidths_are_refused_quickly(bw):
    h = Histogram(64, name="relu1")
    h.update(np.linspace(-1, 1, 100, dtype=np.float32))
    for scheme in ("tf", "tf_enhanced", "percentile"):
        raises(["relu1", "bitwidth"], compute_encoding, h, scheme, bw)
    raises(["bitwidth"], encoding_from_range, -1.0, 1.0, bw)
    raises(["bitwidth"], fake_quantize, np.zeros(3, np.float32), 0.1, 0, bw)


@given(st.floats(-1e300, 1e300), st.floats(-1e300, 1e300), st.integers(2, 32), st.booleans(), st.booleans())
@settings(max_examples=300, deadline=None)
def test_every_finite_ordered_range_gives_a_usable_encoding(a, b, bw, symmetric, strict):
    lo, hi = min(a, b), max(a, b)
    strict = strict and symmetric
    enc = encoding_from_range(lo, hi, bw, symmetric=symmetric, strict=strict)
    assert math.isfinite(enc.scale) and enc.scale > 0
    assert enc.offset == int(enc.offset) and enc.min <= 0 <= enc.max
    assert math.isfinite(enc.min) and math.isfinite(enc.max)
    with np.errstate(over="ignore"):  # bounds beyond float32 become +-inf, clamped to the grid
        y = enc.fake_quantize(np.array([lo, hi, 0.0], np.float64).astype(np.float32))
    assert np.isfinite(y).all() and y[2] == 0
    if a != b:
        with pytest.raises(qa.QAValueError, match="min > max"):
            encoding_from_range(hi, lo, bw, symmetric=symmetric, strict=strict)


def test_percentile_quantiles_past_the_observed_max_still_work():
    # The 0.5 quantile interpolates to 5.5 inside the bin [3, 6) that holds the max (4.0):
    # lo = max(q, min) passes hi = min(q, max); the range collapses to 4 (and 0), no error.
    h = Histogram(4)
    for batch in ([0.0, 4.0], [-5.0], [4.0] * 1000):
        h.update(np.array(batch, np.float32))
    assert h.quantile(0.5) > h.max
    enc = compute_encoding(h, "percentile", 8, percentile=50)
    assert (enc.min, enc.max) == (encoding_from_range(0.0, 4.0).min, encoding_from_range(0.0, 4.0).max)


# ---- 5. every entry point, odd arguments --------------------------------------------------------

X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)


@pytest.mark.parametrize("scale", [None, "a", "0.1", [0.1, None, 0.1], object(), 0.0, -0.1, np.nan, np.inf])
def test_bad_scale(scale):
    per_channel = isinstance(scale, list)
    raises(["conv1", "scale"], fake_quantize, X, scale, 0, 8, axis=0 if per_channel else None, name="conv1")


@pytest.mark.parametrize("offset", [None, "a", 0.5, np.nan, [0, 1.5, 0]])
def test_bad_offset(offset):
    per_channel = isinstance(offset, list)
    raises(["conv1", "offset"], fake_quantize, X, 0.1, offset, 8, axis=0 if per_channel else None, name="conv1")


@pytest.mark.parametrize("rounding", [None, [], {}, 1, "HALF_EVEN"])
def test_bad_rounding(rounding):
    raises(["conv1", "rounding"], fake_quantize, X, 0.1, 0, 8, rounding=rounding, name="conv1")


@pytest.mark.parametrize("axis", [True, np.bool_(False), "0", 1.0, [0]])
def test_bad_axis_everywhere(axis):
    raises(["conv1", "axis"], fake_quantize, X, 0.1, 0, 8, axis=axis, name="conv1")
    raises(["conv1", "axis"], minmax, X, axis=axis, name="conv1")
    raises(["conv1", "axis"], RunningMinMax, axis=axis, name="conv1")
    raises(["conv1", "axis"], Histogram, 8, axis=axis, name="conv1")
    raises(["conv1", "axis"], encoding_from_range, [-1.0] * 3, [1.0] * 3, axis=axis, name="conv1")


def test_bad_out():
    ro = np.empty(X.shape, np.float32)
    ro.flags.writeable = False
    raises(["conv1", "read-only"], fake_quantize, X, 0.1, 0, 8, out=ro, name="conv1")
    raises(["conv1", "out", "contiguous"], fake_quantize, X, 0.1, 0, 8,
           out=np.empty((4, 3), np.float32).T, name="conv1")
    raises(["conv1", "out", "shape"], fake_quantize, X, 0.1, 0, 8, out=np.empty(12, np.float32), name="conv1")
    raises(["out"], fake_quantize, X, 0.1, 0, 8, out=np.empty(X.shape, ">f4"))
    buf = data(100)
    raises(["out", "contiguous"], fake_quantize, buf, 0.1, 0, 8, out=buf[::-1])  # reversed: refused


def test_bad_stats_scheme_and_percentile():
    h = Histogram(64, name="relu1")
    h.update(np.linspace(-1, 1, 100, dtype=np.float32))
    for stats in (None, "abc", np.zeros(3), {"min": 0}):
        raises(["stats", "RunningMinMax"], compute_encoding, stats)
    for scheme in (None, [], "TF"):
        raises(["relu1", "scheme"], compute_encoding, h, scheme)
    for p in (None, "99", [99.0, 99.0], np.nan, 49.9, 100.5):
        raises(["relu1", "percentile"], compute_encoding, h, "percentile", percentile=p)
    for q in (None, "0.5", np.nan, -0.1, 1.5):
        raises(["relu1", "quantile"], h.quantile, q)
    assert compute_encoding(h, "percentile", percentile=np.float32(99)) == compute_encoding(h, "percentile",
                                                                                          percentile=99)


def test_error_stats_shapes_must_match_exactly():
    raises(["conv1", "shape"], ErrorStats(name="conv1").update, np.zeros((3, 1), np.float32), np.zeros(3, np.float32))
    raises(["conv1", "shape"], ErrorStats(name="conv1").update, np.zeros(3, np.float32), np.float32(0))


def test_scalars_empty_and_strided_inputs_match_contiguous_copies():
    base = data(2000).reshape(40, 50)
    strided = base[::3, 1::2]
    dense = np.ascontiguousarray(strided)
    same(fake_quantize(strided, 0.05, -100, 8), fake_quantize(dense, 0.05, -100, 8))
    assert minmax(strided) == minmax(dense)
    for make in (RunningMinMax, lambda: Histogram(32)):
        obs, ref = make(), make()
        obs.update(strided)
        ref.update(dense)
        assert (obs.min, obs.max, obs.n_nan) == (ref.min, ref.max, ref.n_nan)
    e, r = ErrorStats(), ErrorStats()
    e.update(strided, strided[::-1])
    r.update(dense, dense[::-1])
    assert e.as_dict() == r.as_dict()
    # 0-d and empty: a result of the same shape, or statistics that saw nothing
    assert fake_quantize(np.float32(0.26), 0.5, -2, 3).shape == ()
    assert minmax(np.float32(2.0)) == (2.0, 2.0, 0, 0, 0)
    empty = np.zeros((0, 5), np.float32)
    assert fake_quantize(empty, 0.1, 0, 8).shape == (0, 5)
    assert minmax(empty) == (math.inf, -math.inf, 0, 0, 0)
    h = Histogram(8, name="act1")
    h.update(empty)
    assert h.total == 0
    raises(["act1", "no finite values"], compute_encoding, h, "tf_enhanced")
    e = ErrorStats()
    e.update(empty, empty)
    assert e.count == 0 and math.isnan(e.mse)
    raises(["act1", "no channels"], RunningMinMax(axis=1, name="act1").update, empty.T)
    raises(["act1", "scalar"], Histogram(8, axis=0, name="act1").update, np.float32(1.0))
    raises(["act1", "scalar"], fake_quantize, np.float32(1.0), 0.1, 0, 8, axis=0, name="act1")

