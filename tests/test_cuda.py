"""The CUDA kernels (qa._cuda through qa._device) against the CPU kernels, on torch CUDA tensors.

Tolerances: fake quantization, min/max, histogram counts and the counters of error_stats
must match the CPU bit for bit (same scalar math, same parameter rounding); the error sums
are summed in another order, so they match to rtol 1e-8. Without a GPU (or without
qa._cuda) the GPU tests skip; the import, argument and DLPack-parsing tests run anyway.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from qa import _core, _device, kernels
from qa.errors import QAError, QAValueError

try:
    from qa import _cuda
except ImportError:  # built without nvcc (or QA_CUDA=OFF)
    _cuda = None
HAS_MODULE = _cuda is not None
needs_module = pytest.mark.skipif(not HAS_MODULE, reason="qa was built without its CUDA kernels")


def _torch_cuda():
    if not HAS_MODULE:
        pytest.skip("qa was built without its CUDA kernels")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    if not kernels.has_cuda():
        pytest.skip("qa._cuda sees no CUDA device")
    return torch


@pytest.fixture
def torch_cuda():
    return _torch_cuda()


def _nasty(n: int, seed: int = 0, scale: float = 3.0) -> np.ndarray:
    """Random float32 with NaN, +-inf, exact ties, zeros and huge values mixed in."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * scale).astype(np.float32)
    if n >= 16:
        x[:16] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 0.25, -0.25, 0.75, -0.75, 1e30, -1e30,
                  3e-39, 0.5, -0.5, 1.25, 2.5]
        rng.shuffle(x)
    return x


class _CAI:
    """A host-less stand-in for a device array: only its __cuda_array_interface__."""

    def __init__(self, **interface):
        base = {"shape": (4,), "typestr": "<f4", "data": (0, False), "version": 3, "strides": None}
        base.update(interface)
        self.__cuda_array_interface__ = base


class _DLPackOnly:
    """Exposes another array only through DLPack, claiming the device type it is given."""

    def __init__(self, array, device=None):
        self._array = array
        self._device = device

    def __dlpack__(self, stream=None):
        if isinstance(self._array, np.ndarray):  # numpy refuses any stream
            return self._array.__dlpack__()
        return self._array.__dlpack__(stream=stream)

    def __dlpack_device__(self):
        return self._device if self._device is not None else self._array.__dlpack_device__()


# ---- without a GPU ----------------------------------------------------------------------------


@needs_module
def test_module_imports_and_counts_devices_without_raising():
    count = _cuda.device_count()
    assert isinstance(count, int) and count >= 0
    assert kernels.has_cuda() == (count > 0)
    assert _device.available() == (count > 0)


def test_missing_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "qa._cuda", None)  # makes the import fail
    assert not _device.available()
    assert not kernels.has_cuda()
    with pytest.raises(QAError, match="built without its CUDA kernels"):
        kernels.fake_quantize(_CAI(), scale=0.1, offset=-128, bitwidth=8)
    with pytest.raises(QAError, match="built without its CUDA kernels"):
        _device.minmax(_CAI())


def test_device_arrays_are_detected_without_touching_them():
    class RefusingTensor:
        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")

    assert _device.is_device_array(_CAI())
    assert _device.is_device_array(RefusingTensor())
    assert _device.is_device_array(_DLPackOnly(np.zeros(2, np.float32), device=(2, 0)))
    assert not _device.is_device_array(np.zeros(2, np.float32))
    assert not _device.is_device_array(_DLPackOnly(np.zeros(2, np.float32)))  # CPU DLPack
    assert not _device.is_device_array([1.0, 2.0])


@needs_module
def test_dlpack_capsule_is_parsed_without_consuming_it():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    capsule = a.__dlpack__()
    ptr, shape, strides, dtype, device = _cuda.dlpack_info(capsule)
    assert ptr == a.ctypes.data
    assert shape == (2, 3, 4)
    assert strides in (None, (12, 4, 1))
    assert dtype == (2, 32, 1)
    assert device == (1, 0)
    view = a[:, 1:, ::2]
    ptr, shape, strides, _, _ = _cuda.dlpack_info(view.__dlpack__())
    assert (ptr, shape, strides) == (view.ctypes.data, (2, 2, 2), (12, 4, 2))
    scalar = np.array(1.5)
    assert _cuda.dlpack_info(scalar.__dlpack__())[1:4] in (((), None, (2, 64, 1)), ((), (), (2, 64, 1)))
    with pytest.raises(ValueError, match="dltensor"):
        _cuda.dlpack_info(_capsule_named(b"not_a_tensor"))


def _capsule_named(name: bytes):
    import ctypes

    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return new(ctypes.c_void_p(8), name, None)  # the name is a bytes constant, so it outlives the capsule


@needs_module
@pytest.mark.parametrize(
    "array, message",
    [
        (_CAI(typestr="<f8"), "float32"),
        (_CAI(typestr=">f4"), "float32"),
        (_CAI(shape=(2, 3), strides=(4, 8)), "C-contiguous"),
        (_CAI(mask=(0, False)), "masked"),
        (_CAI(shape=None), "malformed"),
        (_DLPackOnly(np.zeros((2, 3)), device=(2, 0)), "float32"),
        (_DLPackOnly(np.zeros((3, 4), np.float32)[:, ::2], device=(2, 0)), "C-contiguous"),
    ],
)
def test_unusable_device_arrays_are_refused_by_name(array, message):
    with pytest.raises(QAValueError, match=f"conv1: x.*{message}"):
        kernels.fake_quantize(array, scale=0.1, offset=-128, bitwidth=8, name="conv1")
    with pytest.raises(QAValueError, match=message):
        _device.minmax(array)
    with pytest.raises(QAValueError, match=f"ref.*{message}"):
        _device.error_stats(array, array, np.zeros(7))


@needs_module
def test_layout_and_host_arguments_are_checked_before_any_cuda_call():
    x = _CAI(shape=(2, 3), strides=(12, 4))  # C-contiguous, pointer never used
    with pytest.raises(QAValueError, match="axis 2 is out of range"):
        kernels.fake_quantize(x, scale=0.1, offset=0, bitwidth=8, axis=2)
    with pytest.raises(QAValueError, match="3 channels"):
        kernels.fake_quantize(x, scale=[0.1, 0.2], offset=0, bitwidth=8, axis=1)
    with pytest.raises(QAValueError, match="out has shape"):
        kernels.fake_quantize(x, scale=0.1, offset=0, bitwidth=8, out=_CAI(shape=(3, 2)))
    with pytest.raises(QAValueError, match="read-only"):
        kernels.fake_quantize(x, scale=0.1, offset=0, bitwidth=8, out=_CAI(shape=(2, 3), data=(0, True)))
    with pytest.raises(QAValueError, match="counts"):
        _device.histogram_add(x, 0.0, 1.0, np.zeros(4, np.int32))
    with pytest.raises(QAValueError, match="width"):
        _device.histogram_add(x, 0.0, 0.0, np.zeros(4, np.int64))
    with pytest.raises(QAValueError, match="acc"):
        _device.error_stats(x, x, np.zeros(6))
    with pytest.raises(QAValueError, match="differ"):
        _device.error_stats(x, _CAI(shape=(6,)), np.zeros(7))


@needs_module
def test_empty_arrays_need_no_device():
    empty = _CAI(shape=(0,))
    assert _device.minmax(empty) == (np.inf, -np.inf, 0, 0, 0)
    counts = np.zeros(4, np.int64)
    _device.histogram_add(empty, 0.0, 1.0, counts)
    assert counts.tolist() == [0, 0, 0, 0]
    acc = np.zeros(7)
    _device.error_stats(empty, empty, acc)
    assert acc.tolist() == [0.0] * 7


# ---- on a GPU ---------------------------------------------------------------------------------


def _host(a) -> np.ndarray:
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    return a.detach().cpu().numpy()


FAKE_QUANT_CASES = [
    # bitwidth, scale, offset, strict
    (2, 0.5, -2, False),
    (4, 0.3, -8, True),
    (8, 0.02, -128, False),
    (8, 0.02, 0, False),
    (16, 1e-4, -32768, False),
    (24, 1e-6, -(2**23), False),  # double arithmetic
    (32, 1e-9, -(2**31), False),
]


@pytest.mark.cuda
@pytest.mark.parametrize("rounding", ["half_even", "half_away"])
@pytest.mark.parametrize("bitwidth, scale, offset, strict", FAKE_QUANT_CASES)
def test_fake_quantize_per_tensor_matches_cpu(torch_cuda, bitwidth, scale, offset, strict, rounding):
    torch = torch_cuda
    x = _nasty(100_003, seed=bitwidth)
    x[16:32] = (np.arange(16, dtype=np.float32) - 8 + 0.5) * np.float32(scale)  # ties
    want = kernels.fake_quantize(x, scale, offset, bitwidth, rounding=rounding, strict=strict)
    t = torch.from_numpy(x).cuda()
    got = kernels.fake_quantize(t, scale, offset, bitwidth, rounding=rounding, strict=strict)
    assert isinstance(got, _cuda.DeviceArray)
    assert got.shape == t.shape
    np.testing.assert_array_equal(got.copy_to_host(), want)
    np.testing.assert_array_equal(torch.as_tensor(got, device="cuda").cpu().numpy(), want)
    out = torch.empty_like(t)
    assert kernels.fake_quantize(t, scale, offset, bitwidth, out=out, rounding=rounding, strict=strict) is out
    np.testing.assert_array_equal(out.cpu().numpy(), want)
    kernels.fake_quantize(t, scale, offset, bitwidth, out=t, rounding=rounding, strict=strict)  # in place
    np.testing.assert_array_equal(t.cpu().numpy(), want)


@pytest.mark.cuda
@pytest.mark.parametrize("shape, axis", [((7, 3, 5), 0), ((7, 3, 5), 1), ((7, 3, 5), -1), ((64, 300), 1),
                                         ((5,), 0), ((2, 1, 33, 4), 2)])
@pytest.mark.parametrize("bitwidth", [4, 8, 24])
def test_fake_quantize_per_channel_matches_cpu(torch_cuda, shape, axis, bitwidth):
    torch = torch_cuda
    x = _nasty(int(np.prod(shape)), seed=len(shape) + bitwidth).reshape(shape)
    channels = shape[axis]
    rng = np.random.default_rng(channels)
    scale = rng.uniform(0.01, 0.5, channels) / 2 ** (bitwidth - 8)
    offset = -np.round(rng.uniform(0, 2**bitwidth - 1, channels))
    for rounding in ("half_even", "half_away"):
        want = kernels.fake_quantize(x, scale, offset, bitwidth, axis=axis, rounding=rounding)
        got = kernels.fake_quantize(torch.from_numpy(x).cuda(), scale, offset, bitwidth, axis=axis,
                                    rounding=rounding)
        np.testing.assert_array_equal(got.copy_to_host(), want)


@pytest.mark.cuda
def test_fake_quantize_empty_and_scalar(torch_cuda):
    torch = torch_cuda
    empty = torch.empty((0, 3), device="cuda")
    got = kernels.fake_quantize(empty, 0.1, -128, 8, axis=1)
    assert got.shape == (0, 3) and got.copy_to_host().shape == (0, 3)
    scalar = torch.tensor(0.26, device="cuda")
    got = kernels.fake_quantize(scalar, 0.5, -2, 3)
    assert got.shape == () and float(got.copy_to_host()) == 0.5


@pytest.mark.cuda
@pytest.mark.parametrize("n", [1, 255, 257, 100_003, 3_000_001])
def test_minmax_matches_cpu(torch_cuda, n):
    x = _nasty(n, seed=n)
    assert _device.minmax(torch_cuda.from_numpy(x).cuda()) == tuple(_core.minmax(x))


@pytest.mark.cuda
@pytest.mark.parametrize("values", [[np.nan, np.inf, -np.inf, np.nan], [], [7.0], [-0.0, 0.0]])
def test_minmax_edge_cases_match_cpu(torch_cuda, values):
    x = np.array(values, np.float32)
    assert _device.minmax(torch_cuda.from_numpy(x).cuda()) == tuple(_core.minmax(x))


@pytest.mark.cuda
@pytest.mark.parametrize("nbins", [1, 16, 2048, 6144, 10_000])  # 10_000 bins: no shared memory
@pytest.mark.parametrize("n", [1000, 2_000_003])
def test_histogram_add_matches_cpu(torch_cuda, nbins, n):
    x = _nasty(n, seed=nbins)
    lo, width = -4.0, 8.0 / nbins  # values beyond +-4 land in the end bins
    want = np.arange(nbins, dtype=np.int64)
    got = want.copy()
    _core.histogram_add(x, lo, width, want)
    _device.histogram_add(torch_cuda.from_numpy(x).cuda(), lo, width, got)
    np.testing.assert_array_equal(got, want)


@pytest.mark.cuda
@pytest.mark.parametrize("n", [0, 1, 1000, 3_000_001])
def test_error_stats_matches_cpu(torch_cuda, n):
    ref = _nasty(n, seed=1)
    test = ref + _nasty(n, seed=2, scale=0.01)
    want = np.array([1.0, 2.0, 3.0, 4.0, 0.001, 5.0, 6.0])
    got = want.copy()
    _core.error_stats(ref, test, want)
    _device.error_stats(torch_cuda.from_numpy(ref).cuda(), torch_cuda.from_numpy(test).cuda(), got)
    np.testing.assert_array_equal(got[4:], want[4:])
    np.testing.assert_allclose(got[:4], want[:4], rtol=1e-8)


@pytest.mark.cuda
def test_dlpack_only_arrays_match_cpu(torch_cuda):
    torch = torch_cuda
    x = _nasty(10_007)
    t = torch.from_numpy(x).cuda()
    assert _device.minmax(_DLPackOnly(t)) == tuple(_core.minmax(x))
    got = kernels.fake_quantize(_DLPackOnly(t), 0.05, -128, 8)
    np.testing.assert_array_equal(got.copy_to_host(), kernels.fake_quantize(x, 0.05, -128, 8))
    out = torch.zeros_like(t)
    kernels.fake_quantize(_DLPackOnly(t), 0.05, -128, 8, out=_DLPackOnly(out))
    np.testing.assert_array_equal(out.cpu().numpy(), kernels.fake_quantize(x, 0.05, -128, 8))


@pytest.mark.cuda
def test_unusable_torch_tensors_are_refused(torch_cuda):
    torch = torch_cuda
    with pytest.raises(QAValueError, match="C-contiguous"):
        _device.minmax(torch.zeros((3, 4), device="cuda").T)
    with pytest.raises(QAValueError, match="float32"):
        kernels.fake_quantize(torch.zeros(4, device="cuda", dtype=torch.float16), 0.1, 0, 8)
    with pytest.raises(QAValueError, match="detach"):
        kernels.fake_quantize(torch.zeros(4, device="cuda", requires_grad=True), 0.1, 0, 8)
    host = np.zeros(4, np.float32)
    with pytest.raises(QAValueError, match="not CUDA device memory"):
        _device.minmax(_CAI(data=(host.ctypes.data, False)))


@pytest.mark.cuda
def test_observers_on_device_match_the_host(torch_cuda):
    """Histogram, RunningMinMax and ErrorStats keep CUDA batches on the device, same results."""
    torch = torch_cuda
    batches = [_nasty(50_000, seed=s, scale=1.0 + s) for s in range(4)]
    host, dev = kernels.Histogram(), kernels.Histogram()
    for b in batches:
        host.update(b)
        dev.update(torch.from_numpy(b).cuda())
    np.testing.assert_array_equal(dev.counts, host.counts)
    assert (dev.lo, dev.width, dev.min, dev.max, dev.n_nan) == (host.lo, host.width, host.min, host.max, host.n_nan)
    e_host, e_dev = kernels.ErrorStats(), kernels.ErrorStats()
    e_host.update(batches[0], batches[1])
    e_dev.update(torch.from_numpy(batches[0]).cuda(), torch.from_numpy(batches[1]).cuda())
    assert e_dev.count == e_host.count and e_dev.max_abs_error == e_host.max_abs_error
    assert e_dev.mse == pytest.approx(e_host.mse, rel=1e-9)
    with pytest.raises(QAValueError, match="per-channel"):
        kernels.RunningMinMax(axis=0).update(torch.zeros(4, 4, device="cuda"))
