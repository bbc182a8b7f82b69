"""Reused result buffers: live results never share memory; freed ones are reused, then released."""

import gc

import numpy as np

from qa import _memory, kernels

N = (_memory.MIN_BYTES // 4) + 1000  # just above the reuse threshold


def test_live_results_never_share_memory_and_freed_buffers_are_reused():
    kernels.release_cached_memory()
    x = np.linspace(-3, 3, N, dtype=np.float32)
    a = kernels.fake_quantize(x, 0.05, -60, 8)
    b = kernels.fake_quantize(x, 0.1, -30, 8)
    assert not np.shares_memory(a, b) and not np.shares_memory(a, x)
    assert type(a) is np.ndarray and a.dtype == np.float32 and a.shape == x.shape and a.flags.writeable
    expect_a = kernels.fake_quantize(x, 0.05, -60, 8, out=np.empty_like(x))
    np.testing.assert_array_equal(a, expect_a)
    address = a.__array_interface__["data"][0]
    view = a[::2]
    del a
    gc.collect()
    c = kernels.fake_quantize(x, 0.2, -15, 8)
    assert c.__array_interface__["data"][0] != address  # a view still holds the first buffer
    freed = {address, c.__array_interface__["data"][0]}
    np.testing.assert_array_equal(view, expect_a[::2])
    del view, c
    gc.collect()
    d = kernels.fake_quantize(x, 0.05, -60, 8)
    assert d.__array_interface__["data"][0] in freed
    np.testing.assert_array_equal(d, expect_a)
    del b, d
    gc.collect()
    assert kernels.release_cached_memory() >= 2 * x.nbytes
    assert kernels.release_cached_memory() == 0


def test_freed_buffer_is_handed_out_again():
    kernels.release_cached_memory()
    first = _memory.empty((N,))
    address = first.__array_interface__["data"][0]
    del first
    gc.collect()
    again = _memory.empty((N,))
    assert again.__array_interface__["data"][0] == address
    small = _memory.empty((10,))
    assert small.base is None  # small arrays come straight from numpy


def test_cache_is_bounded():
    kernels.release_cached_memory()
    held = [_memory.empty((_memory.MAX_CACHED_BYTES // 4 // 2 + 1,)) for _ in range(3)]
    del held
    gc.collect()
    assert 0 < kernels.release_cached_memory() <= _memory.MAX_CACHED_BYTES
