"""Rebuild the demo's data subset and weights from Fashion-MNIST (CPU, fixed seeds).

Usage::

    apt-get install dataset-fashion-mnist          # or pass --source DIR with the four .gz files
    python -m qa.demo.train --out qa/demo/data     # writes fashion_mnist_subset.npz, weights.npz
    python -m qa.demo.train --check                # only measure the shipped weights

Training uses the 60,000 Fashion-MNIST training images; the shipped calibration and
evaluation images come from the 10,000 test images (disjoint, class balanced), so neither
was seen in training. After training (and with ``--check``) the quantization sensitivity
table of ``qa/demo/README.md`` is printed: batch norms folded, weights fake-quantized
symmetric and activations asymmetric, scheme tf_enhanced, all with ``qa.kernels``.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import logging
import time
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from . import SUBSET_FILE, calibrate, evaluate, normalize
from .model import DATA_DIR, MEAN, STD, build_model, load_weights, state_arrays

log = logging.getLogger("qa.demo.train")

SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")
EVAL_PER_CLASS = 200        # 2,000 evaluation images
CALIBRATION_PER_CLASS = 50  # 500 calibration images
SEED = 0
EPOCHS = 5
BATCH = 128
LR = 3e-3

# (conv, bn) pairs that fold; fc has no batch norm.
BN_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("dwconv", "bn3"), ("pwconv", "bn4"),
            ("conv5", "bn5"))
WEIGHT_LAYERS = ("conv1", "conv2", "dwconv", "pwconv", "conv5", "fc")


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) into a uint8 array."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def read_fashion_mnist(source: Path) -> Dict[str, np.ndarray]:
    """The four Fashion-MNIST arrays (train/test images and labels) from ``source``."""
    files = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
             "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}
    missing = [f for f in files.values() if not (source / f).is_file()]
    if missing:
        raise SystemExit(f"{source}: missing {missing}; install Debian's dataset-fashion-mnist "
                         "or pass --source DIR")
    return {k: read_idx(source / f) for k, f in files.items()}


def split_test_set(labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Indices of the evaluation and calibration images: disjoint, class balanced, seeded."""
    order = np.random.default_rng(SEED).permutation(len(labels))
    evaluation, calibration = [], []
    for c in range(10):
        idx = order[labels[order] == c]
        evaluation.append(idx[:EVAL_PER_CLASS])
        calibration.append(idx[EVAL_PER_CLASS:EVAL_PER_CLASS + CALIBRATION_PER_CLASS])
    return np.sort(np.concatenate(evaluation)), np.sort(np.concatenate(calibration))


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return evaluate(model, (images, labels))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # Random horizontal flip and a random shift of up to 2 pixels (one per batch: cheap).
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    pad = nn.functional.pad(x, (2, 2, 2, 2), value=-MEAN / STD)
    return pad[:, :, 2 + dy:30 + dy, 2 + dx:30 + dx]


def train(images: torch.Tensor, labels: torch.Tensor, epochs: int = EPOCHS,
          eval_data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> nn.Module:
    """Train a fresh DemoNet with AdamW and a one-cycle schedule; deterministic on CPU."""
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    steps = epochs * ((len(images) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        t0, total = time.perf_counter(), 0.0
        for idx in torch.randperm(len(images), generator=gen).split(BATCH):
            loss = loss_fn(model(_augment(images[idx], gen)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        msg = f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f}, {time.perf_counter() - t0:.0f} s"
        if eval_data is not None:
            msg += f", eval accuracy {accuracy(model, *eval_data):.2f}%"
        log.info(msg)
    return model.eval()


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of the model with each BatchNorm folded into its conv (the BN becomes Identity),
    exactly as the analyzer folds them."""
    from qa.adapters.torch import fold_batch_norms as fold

    folded = copy.deepcopy(model).eval()
    fold(folded, BN_PAIRS)
    return folded


def quantize_weights(model: nn.Module, layers: Iterable[str], bitwidth: int,
                     per_channel: bool = False) -> nn.Module:
    """A copy with the named layers' weights fake-quantized (symmetric, tf_enhanced)."""
    from qa import kernels

    quantized = copy.deepcopy(model)
    with torch.no_grad():
        for name in layers:
            w = getattr(quantized, name).weight
            hist = kernels.Histogram(axis=0 if per_channel else None, name=f"{name}_weight")
            hist.update(w.numpy())
            enc = kernels.compute_encoding(hist, "tf_enhanced", bitwidth, symmetric=True)
            w.copy_(torch.from_numpy(enc.fake_quantize(w.numpy())))
    return quantized


def activation_quantized_accuracy(model: nn.Module, calibration: torch.Tensor, images: torch.Tensor,
                                  labels: torch.Tensor, bitwidth: int) -> float:
    """Accuracy with the model input and each layer's output fake-quantized (asymmetric, tf_enhanced).

    Quantizers sit where a conv/ReLU or linear supergroup ends: after relu1..relu5 and fc.
    """
    from qa import kernels

    names = ("input", "relu1", "relu2", "relu3", "relu4", "relu5", "fc")
    hists = {n: kernels.Histogram(name=n) for n in names}
    encodings: Dict[str, object] = {}

    def observe_or_quantize(name: str, x: torch.Tensor) -> torch.Tensor:
        if name not in encodings:
            hists[name].update(x.detach().numpy())
            return x
        return torch.from_numpy(encodings[name].fake_quantize(x.detach().numpy()))

    handles = [model.conv1.register_forward_pre_hook(lambda m, a: (observe_or_quantize("input", a[0]),))]
    for n in names[1:]:
        handles.append(getattr(model, n).register_forward_hook(
            lambda m, a, out, n=n: observe_or_quantize(n, out)))
    try:
        calibrate(model, calibration)
        encodings.update({n: kernels.compute_encoding(h, "tf_enhanced", bitwidth) for n, h in hists.items()})
        return accuracy(model, images, labels)
    finally:
        for h in handles:
            h.remove()


def sensitivity(model: nn.Module, calibration: torch.Tensor, images: torch.Tensor,
                labels: torch.Tensor, bitwidths: Sequence[int] = (8, 4)) -> Dict[str, float]:
    """Accuracies (%) of the BN-folded model under weight and activation quantization.

    FP32; all weights at each bitwidth (per tensor, then per channel at the lowest); each
    single layer's weights at the lowest bitwidth; activations only at 8 bits.
    """
    folded = fold_batch_norms(model)
    low = min(bitwidths)
    result = {"fp32": accuracy(folded, images, labels)}
    for bw in bitwidths:
        result[f"all weights W{bw}"] = accuracy(quantize_weights(folded, WEIGHT_LAYERS, bw), images, labels)
    result[f"all weights W{low} per channel"] = accuracy(
        quantize_weights(folded, WEIGHT_LAYERS, low, per_channel=True), images, labels)
    for name in WEIGHT_LAYERS:
        result[f"only {name} W{low}"] = accuracy(quantize_weights(folded, [name], low), images, labels)
    result["activations A8"] = activation_quantized_accuracy(folded, calibration, images, labels, 8)
    result[f"W{low} + A8"] = activation_quantized_accuracy(
        quantize_weights(folded, WEIGHT_LAYERS, low), calibration, images, labels, 8)
    return result


def channel_range_spread(model: nn.Module) -> Dict[str, float]:
    """Per layer, max over channels of |w| divided by the median channel's max |w| (after folding)."""
    folded = fold_batch_norms(model)
    spread = {}
    for name in WEIGHT_LAYERS:
        w = getattr(folded, name).weight.detach().abs().flatten(1).amax(1)
        spread[name] = float(w.max() / w.median())
    return spread


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qa.demo.train", description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=SOURCE_DIR,
                   help="folder with the four Fashion-MNIST .gz files (default: %(default)s)")
    p.add_argument("--out", type=Path, default=DATA_DIR, help="where to write the .npz files")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--check", action="store_true",
                   help="do not train: measure the weights and subset already in --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    if args.check:
        with np.load(args.out / SUBSET_FILE.name, allow_pickle=False) as d:
            eval_x, eval_y = normalize(d["eval_images"]), torch.from_numpy(d["eval_labels"]).long()
            calib_x = normalize(d["calibration_images"])
        model = load_weights(build_model(), args.out / "weights.npz").eval()
    else:
        data = read_fashion_mnist(args.source)
        ev, cal = split_test_set(data["test_labels"])
        args.out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            args.out / SUBSET_FILE.name,
            calibration_images=data["test_images"][cal], calibration_labels=data["test_labels"][cal],
            eval_images=data["test_images"][ev], eval_labels=data["test_labels"][ev])
        eval_x = normalize(data["test_images"][ev])
        eval_y = torch.from_numpy(data["test_labels"][ev]).long()
        calib_x = normalize(data["test_images"][cal])
        t0 = time.perf_counter()
        model = train(normalize(data["train_images"]), torch.from_numpy(data["train_labels"]).long(),
                      args.epochs, (eval_x, eval_y))
        log.info(f"training took {time.perf_counter() - t0:.0f} s on {args.threads} threads")
        np.savez_compressed(args.out / "weights.npz", **state_arrays(model))
        log.info(f"wrote {args.out / SUBSET_FILE.name} and {args.out / 'weights.npz'}")

    for name, acc in sensitivity(model, calib_x, eval_x, eval_y).items():
        log.info(f"{name:>30}: {acc:6.2f}%")
    for name, ratio in channel_range_spread(model).items():
        log.info(f"{name:>30}: largest channel range / median channel range = {ratio:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
