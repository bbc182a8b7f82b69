"""End-to-end benchmark of the PyTorch QuantAnalyzer, with peers measured in the same run.

Usage: python benchmarks/analyzer.py [--batch 32] [--batches 4] [--repeat 3] [--skip-cnn] [--skip-bert]
                                     [--ray]

A ResNet-style CNN (built here, random weights, 32x32 inputs) is analysed. Printed:
- one quantized forward pass with qa's hooks and C++ kernels vs the same simulation written
  with torch hooks and torch.fake_quantize_per_tensor_affine (what a hand-rolled or
  torch-based simulator does), both against the FP32 pass;
- per-layer MSE the AIMET way (FP32 and quantized model re-run once per layer per batch)
  vs qa's one FP32 + one quantized pass per batch for all layers at once, with the FP32
  outputs it held at once (peak memory of the step); then with the local error as well;
- the whole ``analyze`` (calibration, sensitivity, both per-layer sweeps, ranges, histograms,
  MSE) wall time. AIMET is timed too when aimet_torch is installed (it is not a dependency).

Then a BERT-like encoder (6 layers, 384 wide, 12 heads, sequence 128, written as Hugging Face
writes it: every matmul, softmax and residual add is a quantized op layer):
- the quantized forward pass with every op quantized against the FP32 pass;
- ``analyze`` naive (``memoize=False``: every evaluation in full), memoized, and on Ray with two
  workers (``--ray``, when ray is installed), against the 2L+4 FP32 evaluations alone, with the
  peak resident memory after each.
The CNN gets the same naive/memoized comparison.
"""

from __future__ import annotations

import argparse
import logging
import math
import resource
import tempfile
import time

import torch
from torch import nn

import qa

from _timing import timed  # benchmarks/ is on sys.path when a script runs


def block(c_in: int, c_out: int, stride: int) -> nn.Module:
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.relu1 = nn.ReLU()
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.skip = nn.Conv2d(c_in, c_out, 1, stride) if (stride != 1 or c_in != c_out) else nn.Identity()
            self.relu2 = nn.ReLU()

        def forward(self, x):
            return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.skip(x))
    return Res()


def make_model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(),
                        block(32, 32, 1), block(32, 64, 2), block(64, 64, 1), block(64, 128, 2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def torch_fake_quant_sim(model: nn.Module, encodings: dict) -> list:
    """The same activation quantization as qa's, done with torch hooks and torch's kernel."""
    handles = []
    for name, module in model.named_modules():
        enc = encodings.get(f"{name}_output_0")
        if enc is None or isinstance(enc, list):
            continue
        scale, zp = enc["scale"], -enc["offset"]
        hi = 2 ** enc["bitwidth"] - 1

        def hook(m, args, out, scale=scale, zp=zp, hi=hi):
            return torch.fake_quantize_per_tensor_affine(out, scale, zp, 0, hi)
        handles.append(module.register_forward_hook(hook))
    return handles


def aimet_style_mse(sim, x: torch.Tensor) -> dict:
    """AIMET's per-layer MSE: for every layer, run the FP32 and the quantized model again."""
    model, adapter = sim.model, sim.adapter
    out = {}
    modules = dict(model.named_modules())
    for layer in sim.graph.layers:
        module = modules.get(layer.name)
        if module is None:  # an op layer (the residual add): no module to hook
            continue
        grabbed = []
        h = module.register_forward_hook(lambda m, a, o: grabbed.append(o.detach().clone()))
        sim.set_active(())
        adapter.run(x)
        sim.set_active(sim.enabled)
        adapter.run(x)
        h.remove()
        out[layer.name] = float(((grabbed[0] - grabbed[1]) ** 2).mean())
    return out


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.dh).permute(0, 2, 1, 3)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(h)), self.split(self.key(h)), self.split(self.value(h))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.dh) + mask
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.shape[0], ctx.shape[1], -1)


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.attention = _Attention(d, heads)
        self.output = nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.intermediate, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(self.output(self.attention(h, mask)) + h)
        return self.ln2(self.down(torch.nn.functional.gelu(self.intermediate(h))) + h)


class Bert(nn.Module):
    """A BERT-like encoder: token ids and an attention mask in, hidden states out."""

    def __init__(self, vocab: int = 1000, d: int = 384, heads: int = 12, layers: int = 6, t: int = 128) -> None:
        super().__init__()
        self.word, self.position, self.norm = nn.Embedding(vocab, d), nn.Embedding(t, d), nn.LayerNorm(d)
        self.layer = nn.ModuleList(_Layer(d, heads) for _ in range(layers))
        self.register_buffer("position_ids", torch.arange(t)[None], persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.word(input_ids) + self.position(self.position_ids[:, :input_ids.shape[1]]))
        mask = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        for layer in self.layer:
            h = layer(h, mask)
        return h


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compare_sweeps(label: str, model: nn.Module, dummy, calibrate, evaluate, repeat: int, ray: bool) -> None:
    """analyze() naive, memoized and (optionally) on Ray, against its evaluations done in full."""
    analyzer = qa.QuantAnalyzer(model, dummy, calibrate, evaluate, progress=False)
    t_eval = timed(lambda: evaluate(model, None), repeat)
    runs = [("naive", {"memoize": False}), ("memoized", {"memoize": True})]
    if ray:
        runs.append(("ray, 2 workers", {"memoize": True, "executor": qa.RayExecutor(num_workers=2)}))
    results = {}
    for name, kwargs in runs:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            r = analyzer.analyze("tf", 8, 8, results_dir=d, **kwargs)
            results[name] = (time.perf_counter() - t, r, sum(r.seconds.get(k, 0.0) for k in
                                                            ("per_layer_enabled", "per_layer_disabled")))
        print(f"{label + ' analyze, ' + name:<34} {results[name][0]:7.2f} s (sweeps {results[name][2]:6.2f} s); "
              f"peak RSS {_peak_mib():.0f} MiB")
    naive = results["naive"][1]
    evals = 4 + 2 * len(naive.per_layer_quant_enabled)
    full = evals * t_eval
    for name, (total, r, _) in results.items():
        same = (r.per_layer_quant_enabled == naive.per_layer_quant_enabled
                and r.per_layer_quant_disabled == naive.per_layer_quant_disabled)
        print(f"{'':<34} {name}: {total / full:.2f}x the {evals} evaluations in full ({full:.2f} s); "
              f"results {'identical' if same else 'DIFFERENT'}")


def bert_case(args) -> None:
    torch.manual_seed(0)
    model = Bert().eval()
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(2):
        mask = torch.ones(8, 128, dtype=torch.int64)
        mask[::2, 96:] = 0
        batches.append({"input_ids": torch.randint(0, 1000, (8, 128), generator=g), "attention_mask": mask})
    with torch.no_grad():
        reference = [model(**b) for b in batches]

    def calibrate(m, _):
        with torch.no_grad():
            for b in batches:
                m(**b)

    def evaluate(m, _):
        with torch.no_grad():
            return -sum(float(((m(**b) - r) ** 2).mean()) for b, r in zip(batches, reference))

    analyzer = qa.QuantAnalyzer(model, batches[0], calibrate, evaluate, progress=False)
    sim = analyzer.create_quantsim("tf", 8, 8)
    with torch.no_grad():
        t_fp32 = timed(lambda: model(**batches[0]), args.repeat)
        sim.set_active(sim.enabled)
        t_q = timed(lambda: sim.adapter.run(batches[0]), args.repeat)
        sim.set_active(())
    layers = len(sim.graph.layers)
    ops = sum(1 for layer in sim.graph.layers if "/" in layer.name)
    print(f"\nBERT-like encoder, 6 x 384, 12 heads, sequence 128, batch 8: {layers} layers ({ops} of them ops "
          f"outside modules), {len(sim.enabled)} quantizers on")
    print(f"{'quantized forward pass':<34} FP32 {t_fp32 * 1e3:7.1f} ms   qa, every op quantized {t_q * 1e3:7.1f} ms"
          f"   ratio {t_q / t_fp32:.2f}x")
    compare_sweeps("BERT-like", model, batches[0], calibrate, evaluate, 1, args.ray)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-cnn", action="store_true")
    ap.add_argument("--skip-bert", action="store_true")
    ap.add_argument("--ray", action="store_true", help="also run analyze on a local Ray with 2 workers")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not args.skip_cnn:
        cnn_case(args)
    if not args.skip_bert:
        bert_case(args)


def cnn_case(args) -> None:
    model = make_model()
    x = torch.randn(args.batch, 3, 32, 32)
    labels = model(x).argmax(1)

    def calibrate(m, _):
        with torch.no_grad():
            m(x)

    def evaluate(m, _):
        with torch.no_grad():
            return float((m(x).argmax(1) == labels).float().mean() * 100)

    print(f"qa analyzer benchmark: ResNet-style CNN, batch {args.batch}x3x32x32, "
          f"{torch.get_num_threads()} torch threads, median of {args.repeat}")
    analyzer = qa.QuantAnalyzer(model, x[:1], calibrate, evaluate, progress=False)
    sim = analyzer.create_quantsim("tf_enhanced", 8, 8)
    with torch.no_grad():
        t_fp32 = timed(lambda: model(x), args.repeat)
        sim.set_active(sim.activation_quantizers())
        t_qa = timed(lambda: sim.adapter.run(x), args.repeat)
        sim.set_active(())
        plain = make_model()
        from qa.adapters.torch import fold_batch_norms  # same folded model for a fair comparison
        fold_batch_norms(plain, [(c, b) for b, c in sim.graph.folded_batch_norms])
        handles = torch_fake_quant_sim(plain, sim.encodings())
        t_torch = timed(lambda: plain(x), args.repeat)
        for h in handles:
            h.remove()
    print(f"{'quantized forward pass':<30} torch hooks + torch.fake_quantize {t_torch * 1e3:8.1f} ms   "
          f"qa {t_qa * 1e3:8.1f} ms   ratio {t_torch / t_qa:5.2f}x   (FP32 pass {t_fp32 * 1e3:.1f} ms: "
          f"qa overhead {(t_qa - t_fp32) * 1e3:.1f} ms, torch {(t_torch - t_fp32) * 1e3:.1f} ms)")

    batches = [torch.randn(args.batch, 3, 32, 32) for _ in range(args.batches)]
    t_aimet_mse = timed(lambda: [aimet_style_mse(sim, b) for b in batches], 1)
    analyzer.enable_per_layer_mse_loss(batches, len(batches), local_mse=False)  # what AIMET computes
    with tempfile.TemporaryDirectory() as d:
        t_mse = timed(lambda: analyzer.export_per_layer_mse_loss(sim, d), 1)
    print(f"{'per-layer MSE, ' + str(len(sim.graph.layers)) + ' layers':<30} AIMET-style re-run per layer     "
          f"{t_aimet_mse * 1e3:8.1f} ms   qa {t_mse * 1e3:8.1f} ms   ratio {t_aimet_mse / t_mse:5.1f}x")
    print(f"{'':<30} FP32 outputs held at once: {analyzer.mse_peak_bytes / 2**20:.1f} MiB "
          f"({analyzer.mse_passes['fp32'] + analyzer.mse_passes['quantized']} passes)")
    analyzer.enable_per_layer_mse_loss(batches, len(batches))  # with the local error, as analyze runs it
    with tempfile.TemporaryDirectory() as d:
        t_local = timed(lambda: analyzer.export_per_layer_mse_loss(sim, d), 1)
    passes = analyzer.mse_passes
    print(f"{'per-layer MSE + local error':<30} {t_local * 1e3:8.1f} ms, passes: {passes['fp32']} FP32, "
          f"{passes['quantized']} quantized, {passes['local']} local; held at most "
          f"{analyzer.mse_peak_bytes / 2**20:.1f} MiB")

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        result = analyzer.analyze("tf_enhanced", 8, 8, results_dir=d)
        total = time.perf_counter() - t
    evals = 4 + 2 * len(result.per_layer_quant_enabled)
    t_eval = timed(lambda: evaluate(model, None), args.repeat)
    print(f"{'analyze (everything)':<30} {total:.2f} s for {evals} evaluations + calibration + MSE "
          f"({len(result.files)} files); {evals} FP32 evaluations alone take {evals * t_eval:.2f} s")
    stages = ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items())
    print(f"{'':<30} where the time went (s): {stages}, report {total - sum(result.seconds.values()):.2f}")
    compare_sweeps("CNN", model, x[:1], calibrate, evaluate, args.repeat, args.ray)
    try:
        import aimet_torch  # noqa: F401  (only whether it is installed)
        print("aimet_torch is installed, but its QuantAnalyzer timing is not wired up in this script yet")
    except ImportError:
        print("aimet_torch not installed: no AIMET timing in this run")


if __name__ == "__main__":
    main()
