"""qa.kernels.fake_quantize against the numpy reference and torch: bit-exact, every edge case."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qa
import reference as ref
from qa.kernels import encoding_from_range, fake_quantize

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
F32_MAX = float(np.finfo(np.float32).max)
BIG = 1 << 16  # large enough for the kernels' OpenMP paths (2 threads from 2^16 elements)


def assert_same(got, want):
    """Bit-exact equality, NaN where NaN (signed zeros compare equal, as in torch)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    bad = ~((got == want) | (np.isnan(got) & np.isnan(want)))
    if bad.any():
        i = np.flatnonzero(bad.reshape(-1))[:5]
        raise AssertionError(f"{bad.sum()} of {bad.size} differ, e.g. at {i.tolist()}: "
                             f"got {got.reshape(-1)[i].tolist()}, want {want.reshape(-1)[i].tolist()}")


def specials():
    tiny = np.finfo(np.float32).smallest_subnormal
    return np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, tiny, -tiny, 1e-40, F32_MAX, -F32_MAX],
                     np.float32)


def mixed_data(n, scale, offset, bw, seed=0):
    """Values across the grid and beyond it, ties included, plus the special values."""
    rng = np.random.default_rng(seed)
    steps = 2**bw - 1
    q = rng.uniform(offset - 0.25 * steps - 2, offset + 1.25 * steps + 2, n)
    q[: n // 4] = np.round(q[: n // 4]) + 0.5  # exact ties where float32 can hold them
    x = (q * scale).astype(np.float32)
    x[:: max(1, n // 7)] = np.resize(specials(), x[:: max(1, n // 7)].size)
    return x


def to_float32(v: float) -> float:
    with np.errstate(over="ignore"):
        f = np.float32(v)
    return float(f) if np.isfinite(f) else 0.0


# ---- against the reference ------------------------------------------------------------------

@st.composite
def per_tensor_case(draw, like_torch=False):
    """like_torch: only what torch accepts (zero point inside the grid) and computes the same
    way (float32 arithmetic: up to 22 bits; ties to even)."""
    bw = draw(st.integers(2, 22 if like_torch else 32))
    strict = draw(st.booleans())
    steps = 2**bw - 1 - strict
    kind = draw(st.sampled_from(["asym", "sym"] if like_torch else ["asym", "sym", "any"]))
    if kind == "asym":
        offset = draw(st.integers(-steps, 0))
    elif kind == "sym":
        offset = -(2 ** (bw - 1)) + strict
    else:
        offset = draw(st.integers(-(2**33), 2**33))
    scale = draw(st.floats(1e-6, 1e4, allow_subnormal=False))
    # 0-d inputs have their own test (test_zero_dim_input_keeps_its_shape)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6))
    elements = st.one_of(
        st.floats(width=32),  # NaN, +-inf, subnormals, huge
        st.integers(offset - 3, offset + steps + 3).map(lambda q: to_float32(q * scale)),  # on the grid
        st.integers(offset - 3, offset + steps + 3).map(lambda q: to_float32((q + 0.5) * scale)),  # ties
    )
    x = draw(hnp.arrays(np.float32, shape, elements=elements))
    rounding = "half_even" if like_torch else draw(st.sampled_from(["half_even", "half_away"]))
    return x, scale, offset, bw, strict, rounding


@FAST
@given(per_tensor_case())
def test_per_tensor_matches_reference(case):
    x, scale, offset, bw, strict, rounding = case
    got = fake_quantize(x, scale, offset, bw, rounding=rounding, strict=strict)
    assert_same(got, ref.fake_quant(x, scale, offset, bw, rounding=rounding, strict=strict))


@pytest.mark.parametrize("bw", range(2, 33))
@pytest.mark.parametrize("rounding", ["half_even", "half_away"])
def test_every_bitwidth_matches_reference(bw, rounding):
    for scale, offset in [(0.37, -(2 ** (bw - 1))), (3.0e-3, 0), (1.5, -(2**bw - 1)), (2.0**-7, -(2**bw // 3))]:
        x = mixed_data(3000, scale, offset, bw, seed=bw)
        assert_same(fake_quantize(x, scale, offset, bw, rounding=rounding),
                    ref.fake_quant(x, scale, offset, bw, rounding=rounding))
        # per channel, the same parameters on every channel must give the same numbers
        got = fake_quantize(x.reshape(3, 1000), [scale] * 3, offset, bw, axis=0, rounding=rounding)
        assert_same(got.reshape(-1), ref.fake_quant(x, scale, offset, bw, rounding=rounding))


@pytest.mark.parametrize("bw", [23, 24, 28, 32])
def test_wide_grids_are_computed_in_double(bw):
    # x/scale near 2^(bw-1) with fractional parts: float32 x * (1/scale) loses them, double does not.
    rng = np.random.default_rng(bw)
    scale = 1.0 / 3.0
    offset = -(2 ** (bw - 1))
    x = (rng.uniform(-(2 ** (bw - 1)), 2 ** (bw - 1) - 1, 5000) * scale).astype(np.float32)
    exact = np.clip(np.rint(x.astype(np.float64) / scale), offset, offset + 2**bw - 1)
    want = (exact * scale).astype(np.float32)
    single = (np.rint(x * (np.float32(1) / np.float32(scale))) * np.float32(scale)).astype(np.float32)
    assert not np.array_equal(single, want)  # the data does tell the two precisions apart
    got = fake_quantize(x, scale, offset, bw)
    assert_same(got, want)
    assert_same(got, ref.fake_quant(x, scale, offset, bw))


def test_float_path_up_to_22_bits_is_like_torch():
    # bw 22, grid inside +-2^22: computed as float32 x * float32(1/scale), like torch.
    bw, scale, offset = 22, 1.0 / 3.0, -(2**21)
    x = (np.random.default_rng(1).uniform(-(2**21), 2**21, 5000) * scale).astype(np.float32)
    single = np.rint(x * (np.float32(1) / np.float32(scale))) * np.float32(scale)
    assert_same(fake_quantize(x, scale, offset, bw), single.astype(np.float32))


# ---- rounding ---------------------------------------------------------------------------------

def test_round_half_to_even_by_default_and_half_away_as_option():
    # scale 0.5: x * 2 is exact, so these are exact ties at +-0.5, +-1.5, +-2.5
    x = np.array([0.25, 0.75, 1.25, -0.25, -0.75, -1.25], np.float32)
    even = [0.0, 1.0, 1.0, 0.0, -1.0, -1.0]
    away = [0.5, 1.0, 1.5, -0.5, -1.0, -1.5]
    assert fake_quantize(x, 0.5, -128, 8).tolist() == even
    assert fake_quantize(x, 0.5, -128, 8, rounding="half_even").tolist() == even
    assert fake_quantize(x, 0.5, -128, 8, rounding="half_away").tolist() == away
    assert fake_quantize(x, 0.5, -128, 8, rounding="half_away_from_zero").tolist() == away
    assert fake_quantize(x.reshape(2, 3), 0.5, -128, 8, axis=1, rounding="half_away").reshape(-1).tolist() == away


def test_rounding_in_the_double_path():
    bw, offset = 24, -(2**23)
    x = np.array([4194304.5, -4194304.5, 4194305.5, 0.5, -1.5], np.float32)  # exact in float32
    assert fake_quantize(x, 1.0, offset, bw).tolist() == [4194304.0, -4194304.0, 4194306.0, 0.0, -2.0]
    assert fake_quantize(x, 1.0, offset, bw, rounding="half_away").tolist() == [
        4194305.0, -4194305.0, 4194306.0, 1.0, -2.0]


@pytest.mark.parametrize("rounding", ["half_even", "half_away"])
def test_just_below_half_rounds_down(rounding):
    # the largest float below 0.5 (and below 1.5, 2.5): floor(v + 0.5) in float32 gets these wrong
    x = np.nextafter(np.array([0.5, 1.5, 2.5, -0.5, -2.5], np.float32), np.float32(0))
    assert fake_quantize(x, 1.0, -8, 4, rounding=rounding).tolist() == [0.0, 1.0, 2.0, 0.0, -2.0]


# ---- non-finite values, empty, constant, denormal, huge ------------------------------------------

@pytest.mark.parametrize("bw", [2, 8, 16, 22, 23, 32])
def test_nan_stays_nan_and_inf_clamps(bw):
    scale, offset = np.float32(0.1), -(2 ** (bw - 1))
    x = np.array([np.nan, np.inf, -np.inf, F32_MAX, -F32_MAX, 0.0], np.float32)
    top = offset + 2**bw - 1
    if bw <= 22:
        want = [np.nan, np.float32(top) * scale, np.float32(offset) * scale]
    else:
        want = [np.nan, np.float32(top * np.float64(scale)), np.float32(offset * np.float64(scale))]
    want = np.array(want + want[1:3] + [0.0], np.float32)
    assert_same(fake_quantize(x, float(scale), offset, bw), want)
    assert_same(fake_quantize(np.stack([x, x]), [float(scale)] * 6, offset, bw, axis=1),
                np.stack([want, want]))
    big = np.resize(x, BIG + 5)  # OpenMP path
    assert_same(fake_quantize(big, float(scale), offset, bw), np.resize(want, BIG + 5))


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4), (2, 0, 3)])
def test_empty_per_tensor(shape):
    for dtype in (np.float32, np.float16, np.float64):
        y = fake_quantize(np.zeros(shape, dtype), 0.1, 0, 8)
        assert y.shape == shape and y.dtype == dtype


@pytest.mark.parametrize("shape,axis", [((3, 0), 0), ((2, 0, 3), -1), ((2, 0, 3), 0)])
def test_empty_per_channel_with_channels(shape, axis):
    y = fake_quantize(np.zeros(shape, np.float32), [0.1] * shape[axis], 0, 8, axis=axis)
    assert y.shape == shape


@pytest.mark.parametrize("shape,axis", [((0, 3), 0), ((0,), 0), ((2, 0, 3), 1)])
def test_empty_channel_axis(shape, axis):
    # An axis of length 0 holds nothing to quantize: either an empty result, or a qa error
    # that names the problem (not numpy's "zero-size array to reduction operation maximum").
    x = np.zeros(shape, np.float32)
    try:
        y = fake_quantize(x, 0.1, 0, 8, axis=axis, name="w")
    except ValueError as e:
        assert isinstance(e, qa.QAError), f"raw {type(e).__name__}: {e}"
        assert "w" in str(e) and ("axis" in str(e) or "channel" in str(e))
    else:
        assert y.shape == shape


def test_constant_input():
    for value in (0.0, 1.0, -3.3, 1e-30, 7e30):
        x = np.full(4097, value, np.float32)
        for scale, offset, bw in [(0.1, -128, 8), (abs(value) / 100 or 1.0, -50, 8), (1e-3, -(2**23), 24)]:
            y = fake_quantize(x, scale, offset, bw)
            assert_same(y, ref.fake_quant(x, scale, offset, bw))
            assert np.all(y == y[0])


def test_denormal_inputs_are_not_flushed():
    scale = 2.0**-126  # smallest normal float32: 1/scale = 2^126 is finite
    x = np.array([2.0**-127, 1.5 * 2.0**-127, 2.0**-149, -(2.0**-127) * 1.75, 2.0**-128], np.float32)
    assert np.all(np.abs(x) < np.finfo(np.float32).tiny) and np.all(x != 0)
    # x/scale = 0.5, 0.75, 2^-23, -0.875, 0.25
    assert fake_quantize(x, scale, -8, 4).tolist() == [0.0, scale, 0.0, -scale, 0.0]
    assert fake_quantize(x, scale, -8, 4, rounding="half_away").tolist() == [scale, scale, 0.0, -scale, 0.0]
    # denormal outputs: scale 2^-140 (1/scale = 2^140 overflows float32, so via the double path)
    y = fake_quantize(x[:1], 2.0**-140, -(2**30), 32)
    assert y.tolist() == [2.0**-127]


def test_huge_range():
    # a grid spanning most of float32: scale near FLT_MAX / steps
    for bw in (2, 8, 16):
        scale = F32_MAX / 2**bw
        offset = -(2 ** (bw - 1))
        x = np.concatenate([specials(), np.linspace(-F32_MAX, F32_MAX, 1001, dtype=np.float32)])
        y = fake_quantize(x, scale, offset, bw)
        assert_same(y, ref.fake_quant(x, scale, offset, bw))
        assert np.isfinite(y[np.isfinite(x) | np.isinf(x)]).all()


@pytest.mark.parametrize("scale", [1e-50, 1e-40, 1e39])
def test_scale_outside_float32_is_refused_or_computed_exactly(scale):
    # A positive double scale that float32 cannot use (underflows to 0 or subnormal with an
    # infinite reciprocal, or overflows to inf): either a ValueError naming the scale, or the
    # right numbers. Never NaN for finite input, and 0 always maps to 0.
    with np.errstate(over="ignore"):
        x = np.array([0.0, scale * 10, -scale * 3, 1.0], np.float32)
    try:
        y = fake_quantize(x, scale, -128, 8)
    except ValueError as e:
        assert "scale" in str(e)
        return
    q = np.clip(np.rint(x.astype(np.float64) / scale), -128, 127)
    with np.errstate(over="ignore"):
        assert_same(y, (q * scale).astype(np.float32))


# ---- out, aliasing, dtypes ----------------------------------------------------------------------

def test_out_may_be_x():
    x = mixed_data(BIG + 3, 0.05, -100, 8)
    want = ref.fake_quant(x, 0.05, -100, 8)
    y = fake_quantize(x, 0.05, -100, 8, out=x)
    assert y is x
    assert_same(x, want)
    w = mixed_data(4 * 5 * 6, 0.05, -100, 8).reshape(4, 5, 6)
    scales = np.linspace(0.01, 0.1, 5)
    want = ref.fake_quant(w, scales, -100, 8, axis=1)
    assert fake_quantize(w, scales, -100, 8, axis=1, out=w) is w
    assert_same(w, want)


def test_out_separate_and_input_untouched():
    x = mixed_data(1000, 0.05, -100, 8)
    keep = x.copy()
    out = np.full_like(x, 7.0)
    y = fake_quantize(x, 0.05, -100, 8, out=out)
    assert y is out
    assert_same(out, ref.fake_quant(x, 0.05, -100, 8))
    assert_same(x, keep)
    y = fake_quantize(x, 0.05, -100, 8)
    assert y is not x and not np.shares_memory(y, x)
    assert_same(x, keep)
    # a float64 input with a float32 out
    out = np.empty(x.shape, np.float32)
    assert fake_quantize(x.astype(np.float64), 0.05, -100, 8, out=out) is out
    assert_same(out, ref.fake_quant(x, 0.05, -100, 8))


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.longdouble])
def test_other_float_dtypes_are_returned_in_their_dtype(dtype):
    x64 = mixed_data(2000, 0.05, -100, 8).astype(np.float64)
    x = x64.astype(dtype)
    keep = x.copy()
    y = fake_quantize(x, 0.05, -100, 8)
    assert y.dtype == dtype and y.shape == x.shape
    assert_same(y, ref.fake_quant(x.astype(np.float32), 0.05, -100, 8).astype(dtype))
    assert_same(x, keep)
    y = fake_quantize(x.reshape(40, 50), np.linspace(0.01, 0.1, 50), -100, 8, axis=-1)
    assert y.dtype == dtype
    assert_same(y, ref.fake_quant(x.astype(np.float32).reshape(40, 50), np.linspace(0.01, 0.1, 50), -100, 8,
                                  axis=1).astype(dtype))


def test_zero_dim_input_keeps_its_shape():
    for x in (np.float32(0.26), np.array(0.26, np.float32), 0.26, np.array(0.26, np.float16)):
        y = fake_quantize(x, 0.5, -2, 3)
        assert np.shape(y) == () and float(y) == 0.5, repr(y)
    y = fake_quantize(np.array(0.26, np.float32), 0.5, -2, 3, out=np.zeros((), np.float32))
    assert y.shape == () and float(y) == 0.5
    raises(["scalar"], fake_quantize, np.float32(1.0), 0.1, 0, 8, axis=0)


def test_python_lists_and_strided_views():
    assert fake_quantize([0.26, -1.0, 9.0], 0.5, -2, 3).tolist() == [0.5, -1.0, 2.5]
    base = mixed_data(2000, 0.05, -100, 8).reshape(40, 50)
    view = base[::3, 1::2]
    keep = base.copy()
    assert_same(fake_quantize(view, 0.05, -100, 8), ref.fake_quant(np.ascontiguousarray(view), 0.05, -100, 8))
    assert_same(base, keep)


# ---- per channel ------------------------------------------------------------------------------

@st.composite
def per_channel_case(draw, like_torch=False):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))
    ndim = len(shape)
    axis = draw(st.integers(-ndim, ndim - 1))
    channels = shape[axis]
    bw = draw(st.sampled_from([2, 3, 4, 8, 12, 16, 22] + ([] if like_torch else [23, 31, 32])))
    strict = draw(st.booleans())
    steps = 2**bw - 1 - strict
    scales = draw(st.lists(st.floats(1e-5, 1e3), min_size=channels, max_size=channels))
    offsets = draw(st.lists(st.integers(-steps, 0), min_size=channels, max_size=channels))
    x = draw(hnp.arrays(np.float32, shape, elements=st.one_of(
        st.floats(width=32), st.floats(-2e3, 2e3, width=32))))
    rounding = "half_even" if like_torch else draw(st.sampled_from(["half_even", "half_away"]))
    return x, scales, offsets, bw, axis, strict, rounding


@FAST
@given(per_channel_case())
def test_per_channel_matches_reference_on_any_axis(case):
    x, scales, offsets, bw, axis, strict, rounding = case
    got = fake_quantize(x, scales, offsets, bw, axis=axis, rounding=rounding, strict=strict)
    assert_same(got, ref.fake_quant(x, scales, offsets, bw, axis=axis, rounding=rounding, strict=strict))


@pytest.mark.parametrize("shape,axis", [((BIG // 64, 64), -1), ((BIG // 64, 64), 1), ((64, BIG // 64), 0),
                                        ((8, 16, BIG // 128), 1), ((8, 16, BIG // 128), -2),
                                        ((4, 4, 4, BIG // 64), 3), ((5, 3), 1)])
def test_per_channel_large_and_channel_last(shape, axis):
    # inner == 1 (channel last) and inner > 1 go through different loops; both threaded here.
    channels = shape[axis]
    scales = np.geomspace(1e-3, 1.0, channels)
    offsets = -np.arange(channels) % 256
    x = mixed_data(int(np.prod(shape)), 0.02, -128, 8, seed=channels).reshape(shape)
    got = fake_quantize(x, scales, offsets, 8, axis=axis)
    assert_same(got, ref.fake_quant(x, scales, offsets, 8, axis=axis))
    # each channel alone, per tensor, gives the same numbers
    ax = axis % len(shape)
    for c in (0, channels // 2, channels - 1):
        sl = np.take(x, c, axis=ax)
        assert_same(np.take(got, c, axis=ax), fake_quantize(sl, scales[c], offsets[c], 8))


def test_per_channel_double_path():
    x = mixed_data(4 * 1000, 1e-3, -(2**27), 28).reshape(4, 1000)
    scales = [1e-3, 2e-3, 1 / 3, 7.0]
    got = fake_quantize(x, scales, -(2**27), 28, axis=0)
    assert_same(got, ref.fake_quant(x, scales, -(2**27), 28, axis=0))


def test_encoding_fake_quantize_uses_its_grid():
    enc = encoding_from_range(np.array([-1.0, -0.1]), np.array([2.0, 0.3]), 8, axis=1)
    x = mixed_data(3 * 2, 0.01, -100, 8).reshape(3, 2)
    assert_same(enc.fake_quantize(x), ref.fake_quant(x, enc.scale, enc.offset, 8, axis=1))
    enc = encoding_from_range(-1.0, 1.0, 8, symmetric=True, strict=True)
    assert (enc.offset, enc.num_steps) == (-127, 254)
    y = enc.fake_quantize(np.array([-5.0, 5.0], np.float32))
    assert_same(y, ref.fake_quant(np.array([-5.0, 5.0]), enc.scale, -127, 8, strict=True))
    assert y[0] == -y[1]


# ---- torch ------------------------------------------------------------------------------------

def _finite_for_torch(x, scale):
    # Where torch's semantics differ from qa's: NaN (torch: min of the grid) and values whose
    # x/scale leaves int64 (torch casts to int64 first: undefined behaviour, garbage).
    x = np.where(np.isfinite(x), x, 0.0).astype(np.float32)
    lim = np.float32(2.0**40 * float(np.min(scale)))
    return np.clip(x, -lim, lim)


@pytest.mark.torch
@FAST
@given(per_tensor_case(like_torch=True))
def test_per_tensor_bit_exact_with_torch(case):
    torch = pytest.importorskip("torch")
    x, scale, offset, bw, strict, _ = case
    steps = 2**bw - 1 - strict
    x = _finite_for_torch(x, scale)
    want = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x.copy()), scale, -offset, 0, steps).numpy()
    assert_same(fake_quantize(x, scale, offset, bw, strict=strict), want)


@pytest.mark.torch
@pytest.mark.parametrize("bw", [2, 4, 8, 16, 22])
def test_per_tensor_bit_exact_with_torch_including_inf(bw):
    torch = pytest.importorskip("torch")
    for scale, offset in [(0.37, -(2 ** (bw - 1))), (3e-3, 0), (1.5, -(2**bw - 1)), (2.0**-7, -(2**bw // 3))]:
        x = mixed_data(5000, scale, offset, bw, seed=bw)
        x = np.where(np.isnan(x), 0.0, x).astype(np.float32)  # torch maps NaN to the grid's min
        x[:3] = [np.inf, -np.inf, 0.0]  # torch clamps +-inf in float before its int64 cast
        x = np.where(np.abs(x) > 2.0**40 * scale, np.copysign(np.inf, x), x).astype(np.float32)
        want = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), scale, -offset, 0, 2**bw - 1).numpy()
        assert_same(fake_quantize(x, scale, offset, bw), want)


@pytest.mark.torch
@FAST
@given(per_channel_case(like_torch=True))
def test_per_channel_bit_exact_with_torch(case):
    torch = pytest.importorskip("torch")
    x, scales, offsets, bw, axis, strict, _ = case
    steps = 2**bw - 1 - strict
    scales32 = np.asarray(scales, np.float32)  # torch holds per-channel scales in float32
    x = _finite_for_torch(x, scales32)
    want = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(x.copy()), torch.from_numpy(scales32), torch.tensor([-o for o in offsets], dtype=torch.int32),
        axis % x.ndim, 0, steps).numpy()
    assert_same(fake_quantize(x, scales32.astype(np.float64), offsets, bw, axis=axis, strict=strict), want)


@pytest.mark.torch
def test_per_channel_bit_exact_with_torch_large():
    torch = pytest.importorskip("torch")
    for shape, axis in [((64, BIG // 64), 0), ((BIG // 64, 64), 1), ((16, 8, BIG // 128), 1)]:
        channels = shape[axis]
        scales = np.geomspace(1e-3, 1.0, channels).astype(np.float32)
        zps = np.arange(channels, dtype=np.int32) % 256
        x = mixed_data(int(np.prod(shape)), 0.02, -128, 8).reshape(shape)
        x = _finite_for_torch(x, scales)
        want = torch.fake_quantize_per_channel_affine(torch.from_numpy(x), torch.from_numpy(scales),
                                                      torch.from_numpy(zps), axis, 0, 255).numpy()
        assert_same(fake_quantize(x, scales, -zps, 8, axis=axis), want)


# ---- bad arguments ----------------------------------------------------------------------------

X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)


def raises(match, fn, *args, **kwargs):
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, qa.QAValueError) and isinstance(info.value, qa.QAError)
    msg = str(info.value)
    for word in match:
        assert word in msg, f"{word!r} not in {msg!r}"
    return msg


@pytest.mark.parametrize("x", [np.arange(4), np.ones(3, bool), np.ones(3, np.complex64), np.array(["a"]),
                               np.array([1.0, None], dtype=object)])
def test_wrong_dtype(x):
    msg = raises(["conv1", "dtype"], fake_quantize, x, 0.1, 0, 8, name="conv1")
    assert str(x.dtype) in msg


@pytest.mark.parametrize("bw", [1, 0, -8, 33, 64])
def test_bitwidth_out_of_range(bw):
    raises(["conv1", "bitwidth", str(bw)], fake_quantize, X, 0.1, 0, bw, name="conv1")


@pytest.mark.parametrize("bw", [8.0, 8.5, "8", None])
def test_bitwidth_not_an_integer(bw):
    raises(["bitwidth"], fake_quantize, X, 0.1, 0, bw)


@pytest.mark.parametrize("scale", [0.0, -0.1, np.nan, np.inf, -np.inf])
def test_non_positive_or_non_finite_scale(scale):
    raises(["conv1", "scale"], fake_quantize, X, scale, 0, 8, name="conv1")
    raises(["scale"], fake_quantize, X, [0.1, scale, 0.1], 0, 8, axis=0)


@pytest.mark.parametrize("offset", [0.5, np.nan, np.inf, -(2.0**41)])
def test_bad_offset(offset):
    raises(["offset"], fake_quantize, X, 0.1, offset, 8)


def test_shape_and_axis_mismatch():
    raises(["scale", "3", "4", "channels"], fake_quantize, X, [0.1, 0.2, 0.3], 0, 8, axis=1)
    raises(["offset", "2", "3"], fake_quantize, X, 0.1, [0, -1], 8, axis=0)
    raises(["scale", "axis"], fake_quantize, X, [0.1, 0.2, 0.3], 0, 8)  # per-channel scale, no axis
    for axis in (2, -3, 10):
        raises(["axis", str(axis)], fake_quantize, X, 0.1, 0, 8, axis=axis)
    raises(["axis"], fake_quantize, X, 0.1, 0, 8, axis=1.0)


def test_bad_out_and_rounding():
    raises(["out", "float32"], fake_quantize, X, 0.1, 0, 8, out=np.empty(X.shape, np.float64))
    raises(["out", "shape"], fake_quantize, X, 0.1, 0, 8, out=np.empty((4, 3), np.float32))
    raises(["out", "contiguous"], fake_quantize, X, 0.1, 0, 8, out=np.empty((3, 8), np.float32)[:, ::2])
    ro = np.empty(X.shape, np.float32)
    ro.flags.writeable = False
    raises(["out", "read-only"], fake_quantize, X, 0.1, 0, 8, out=ro)
    raises(["out"], fake_quantize, X, 0.1, 0, 8, out=[0.0] * 12)
    raises(["rounding", "half_up"], fake_quantize, X, 0.1, 0, 8, rounding="half_up")
