"""Kernel benchmarks: qa against torch and numpy on the same 64M-element float32 data, same run.

Usage: python benchmarks/kernels.py [--elements N] [--repeat R]

Prints one line per comparison: the median time of each side and the ratio (peer / qa),
plus qa's fake-quantization bandwidth against np.copyto.
"""

from __future__ import annotations

import argparse

import numpy as np

from qa import kernels

from _timing import timed  # benchmarks/ is on sys.path when a script runs


def report(label, peer_name, t_peer, t_qa):
    print(f"{label:<34} {peer_name:<38} {t_peer * 1e3:9.1f} ms   qa {t_qa * 1e3:8.1f} ms   "
          f"ratio {t_peer / t_qa:6.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=64 * 2**20)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    n, r = args.elements, args.repeat
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n, dtype=np.float32)
    channels = 256
    w = x.reshape(channels, -1)  # per channel along axis 0
    out = np.empty_like(x)
    print(f"qa kernels benchmark: {n:,} float32 elements ({x.nbytes / 2**20:.0f} MiB), "
          f"{kernels.max_threads()} threads, median of {r}")

    scale, offset = 8.0 / 255, -128
    t_qa_fq = timed(lambda: kernels.fake_quantize(x, scale, offset, 8), r)
    def fresh_memory():  # every call faults in new pages, as the first call of a run does
        kernels.release_cached_memory()
        kernels.fake_quantize(x, scale, offset, 8)
    t_qa_fq_fresh = timed(fresh_memory, r)
    t_qa_fq_out = timed(lambda: kernels.fake_quantize(x, scale, offset, 8, out=out), r)
    scales = np.linspace(0.01, 0.05, channels)
    t_qa_pc = timed(lambda: kernels.fake_quantize(w, scales, offset, 8, axis=0), r)
    t_copy = timed(lambda: np.copyto(out, x), r)
    try:
        import torch
    except ImportError:
        torch = None
        print("torch not installed: torch comparisons skipped")
    if torch is not None:
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        st = torch.tensor(scales, dtype=torch.float32)
        zt = torch.full((channels,), -offset, dtype=torch.int32)
        t_t = timed(lambda: torch.fake_quantize_per_tensor_affine(xt, scale, -offset, 0, 255), r)
        report("fake quantize per tensor", "torch.fake_quantize_per_tensor_affine", t_t, t_qa_fq)
        report("  same, no buffer reuse", "torch.fake_quantize_per_tensor_affine", t_t, t_qa_fq_fresh)
        t_t = timed(lambda: torch.fake_quantize_per_channel_affine(wt, st, zt, 0, 0, 255), r)
        report("fake quantize per channel (256)", "torch.fake_quantize_per_channel_affine", t_t, t_qa_pc)
    gbps = lambda t: 2 * x.nbytes / t / 1e9  # noqa: E731  read + write
    print(f"{'fake quantize bandwidth':<34} {'np.copyto':<38} {gbps(t_copy):9.1f} GB/s  qa {gbps(t_qa_fq_out):6.1f} GB/s "
          f"  share {t_copy / t_qa_fq_out:6.2f} of copy")

    def qa_hist():
        h = kernels.Histogram(2048)
        h.update(x)
        return h
    t_h = timed(lambda: np.histogram(x, bins=2048), r)
    report("histogram 2048 bins", "np.histogram(bins=2048)", t_h, timed(qa_hist, r))

    y = x + rng.standard_normal(n, dtype=np.float32) * np.float32(0.01)

    def qa_err():
        e = kernels.ErrorStats()
        e.update(x, y)
        return e.mse
    t_np = timed(lambda: float(np.mean(np.square(x - y, dtype=np.float64))), r)
    report("error stats (MSE, SQNR, cos, max)", "numpy MSE (float64 accumulation)", t_np, timed(qa_err, r))
    t_np32 = timed(lambda: float(np.mean((x - y) ** 2)), r)
    report("error stats (MSE, SQNR, cos, max)", "numpy MSE (float32)", t_np32, timed(qa_err, r))

    def qa_enh():
        return kernels.compute_encoding(hist, "tf_enhanced", 8)
    hist = qa_hist()
    t_tf = timed(lambda: kernels.compute_encoding(hist, "tf", 8), r)
    print(f"{'encoding search (2048 bins)':<34} tf {t_tf * 1e6:8.1f} us   tf_enhanced {timed(qa_enh, r) * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
