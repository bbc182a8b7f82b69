"""The ``qa`` command line: version, a kernel self-check, the demo analysis, and the HTML report.

Exit status: 0 done; 1 ``qa selfcheck`` found a kernel that disagrees with numpy; 2 any error
(bad arguments, a missing, unreadable or damaged results folder, a failed analysis): one line on
stderr naming the problem, no traceback (``qa -v`` adds it). Arguments are checked before
anything slow starts (torch is imported, a model loaded).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, NoReturn, Optional, Tuple

from ._version import __version__

ERROR = 2  # the exit status of every error, as argparse's own
BITWIDTHS = (2, 32)


def _selfcheck(args: argparse.Namespace) -> int:
    """Run every kernel once on synthetic data and check the results against numpy."""
    import numpy as np

    from . import kernels

    rng = np.random.default_rng(args.seed)
    n = args.elements
    x = rng.standard_normal(n, dtype=np.float32) * np.float32(2.0)
    x[rng.integers(0, n, 8)] *= np.float32(25.0)  # a few outliers for TF-Enhanced to clip
    w = rng.standard_normal((64, 3, 3, 3), dtype=np.float32)
    failures: List[str] = []

    def check(label: str, ok: bool, detail: str) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {label:<28} {detail}")
        if not ok:
            failures.append(label)

    t0 = time.perf_counter()
    print(f"qa {__version__} self-check: {n:,} values, {kernels.max_threads()} CPU thread(s), "
          f"CUDA {'available' if kernels.has_cuda() else 'not available'}")
    hist = kernels.Histogram(2048)
    for batch in np.array_split(x, 8):
        hist.update(batch)
    check("histogram", int(hist.total) == n, f"{int(hist.total):,} values in 2048 bins, range grew exactly")
    encs = {s: kernels.compute_encoding(hist, s, 8) for s in ("tf", "tf_enhanced", "percentile")}
    tf = encs["tf"]
    check("tf encoding", np.isclose(tf.min, min(x.min(), 0), atol=tf.scale) and np.isclose(tf.max, x.max(), atol=tf.scale),
          f"[{tf.min:.4f}, {tf.max:.4f}]")
    err = {}
    for scheme, enc in encs.items():
        e = kernels.ErrorStats()
        e.update(x, enc.fake_quantize(x))
        err[scheme] = e
    check("tf_enhanced beats tf", err["tf_enhanced"].sqnr_db > err["tf"].sqnr_db,
          "SQNR " + ", ".join(f"{s} {e.sqnr_db:.1f} dB" for s, e in err.items()))
    q = tf.fake_quantize(x)
    ref = (np.clip(np.round(x * (np.float32(1) / np.float32(tf.scale))), tf.offset, tf.offset + 255) * np.float32(tf.scale)).astype(np.float32)
    check("fake quantize vs numpy", np.array_equal(q, ref), "bit-exact, 8 bit per tensor")
    wenc = kernels.compute_encoding(_observed(kernels.RunningMinMax(axis=0), w), "tf", 4, symmetric=True)
    wq = wenc.fake_quantize(w)
    levels = max(len(np.unique(wq[c])) for c in range(w.shape[0]))
    check("per-channel 4-bit weights", levels <= 16, f"{w.shape[0]} channels, at most {levels} levels each")
    print(f"done in {time.perf_counter() - t0:.2f} s: {'all checks passed' if not failures else 'FAILED: ' + ', '.join(failures)}")
    return 1 if failures else 0


# -- qa demo: the shipped CNN on its shipped images -------------------------------------------------

# What qa/demo/data holds, known here so that `qa demo` can check its arguments before PyTorch
# loads (tests/test_cli_demo.py checks them against the shipped file).
DEMO_CALIBRATION_IMAGES = 500
DEMO_MSE_BATCH = 64  # images per per-layer MSE batch (Demo.unlabeled_batches)
DEMO_MSE_BATCHES = -(-DEMO_CALIBRATION_IMAGES // DEMO_MSE_BATCH)  # 8: the most --mse-batches can use
# The demo's story is per-tensor weights (AIMET's per-tensor default config): the per-channel fix is
# what the analysis finds and --recommend measures. analyze()'s own default is AIMET 2.x's, per channel.
DEMO_CONFIG = "per_tensor"
DEMO_PROGRESS_EVERY = 5.0  # seconds between "N evaluations done" lines (without progress bars)


def _check_demo_args(args: argparse.Namespace) -> None:
    """Every check of `qa demo`'s arguments that argparse does not make, before anything slow starts
    (nothing is created: a refused run leaves no folder behind)."""
    if args.target is not None and not args.recommend:
        raise _Usage("--target goes with --recommend")
    if args.mse_batches > DEMO_MSE_BATCHES:
        raise _Usage(f"--mse-batches {args.mse_batches}: the demo has {DEMO_CALIBRATION_IMAGES} calibration images, "
                     f"{DEMO_MSE_BATCHES} batches of {DEMO_MSE_BATCH}; use 1 to {DEMO_MSE_BATCHES}")
    _check_results_dir(args.out, "--out")
    if importlib.util.find_spec("torch") is None:  # the demo imports it; the CLI itself never does
        raise _Usage("qa demo needs PyTorch: pip install torch==2.13.0 'qa-quant[torch]'")


class _DemoSteps:
    """The demo's progress on stdout: a line as each step of the analysis starts and, without
    progress bars, a count of the evaluations every few seconds, so that a run is never silent for
    long. It wraps the demo's callbacks and MSE data, so it sees only what they see: the lines name
    what starts, never how much is left (a resumed run skips evaluations it already has)."""

    def __init__(self, t0: float, bars: bool) -> None:
        self.t0 = t0
        self.bars = bars  # progress bars on stderr show the counts; a line on the same terminal
        self._clear = "\r\033[K" if bars and sys.stdout.isatty() else ""  # first erases a half-drawn bar
        self.calibrations = self.evaluations = 0
        self._last = t0

    def say(self, text: str, elapsed: bool = True) -> None:
        when = f"  [{time.perf_counter() - self.t0:.1f} s]" if elapsed else ""
        print(f"{self._clear}qa demo: {text}{when}", flush=True)

    def calibration(self, calibrate: Any) -> Any:
        def run(model: Any, images: Any) -> None:
            self.calibrations += 1
            if self.calibrations == 1:
                self.say(f"calibrating the quantizers on {len(images):,} images")
            calibrate(model, images)
        return run

    def evaluation(self, evaluate: Any) -> Any:
        def run(model: Any, data: Any) -> float:
            now = time.perf_counter()
            if self.evaluations == 0:
                self.say(f"evaluating on {len(data[1]):,} images: FP32, weights only, activations only, fully "
                         f"quantized, then per-layer sweeps")
                self._last = now
            elif not self.bars and now - self._last >= DEMO_PROGRESS_EVERY:
                self.say(f"  {self.evaluations} evaluations done")
                self._last = now
            self.evaluations += 1
            return evaluate(model, data)
        return run

    def mse_data(self, batches: List[Any]) -> "_Announced":
        return _Announced(batches, self, f"per-layer MSE and SQNR on {len(batches)} batch"
                                         f"{'es' if len(batches) != 1 else ''} of {DEMO_MSE_BATCH} images, "
                                         f"then the HTML report")


class _Announced:
    """Batches that announce the per-layer MSE step when it starts: at the first pass over them
    after an evaluation, or at the second pass (the analyzer's first one checks a single batch)."""

    def __init__(self, batches: List[Any], steps: _DemoSteps, text: str) -> None:
        self.batches, self.steps, self.text = batches, steps, text
        self.passes = 0
        self.announced = False

    def __iter__(self):
        self.passes += 1
        if not self.announced and (self.passes >= 2 or self.steps.evaluations > 0):
            self.announced = True
            self.steps.say(self.text)
        return iter(self.batches)


def _demo(args: argparse.Namespace) -> int:
    """Analyse the shipped demo CNN on its shipped images and print what matters."""
    t0 = time.perf_counter()
    _check_demo_args(args)  # every argument, before the first line: a refused run prints nothing
    progress = False if args.no_progress else None  # None: bars on stderr when it is a terminal
    steps = _DemoSteps(t0, bars=progress is None and bool(getattr(sys.stderr, "isatty", lambda: False)()))
    steps.say("loading PyTorch and the demo CNN...", elapsed=False)  # torch takes seconds to import
    import qa
    from qa.demo import OUTPUT_BW, PARAM_BW, calibrate, evaluate, load_demo

    demo = load_demo()
    param_bw = PARAM_BW if args.param_bw is None else args.param_bw
    output_bw = OUTPUT_BW if args.output_bw is None else args.output_bw
    print(f"qa demo: a 6-layer CNN (with a depthwise conv) on {len(demo.eval_labels):,} Fashion-MNIST test images")
    print(f"quantization: weights {param_bw} bit per tensor, activations {output_bw} bit, scheme {args.scheme}",
          flush=True)
    analyzer = qa.QuantAnalyzer(
        demo.model, demo.dummy_input,
        forward_pass_callback=qa.CallbackFunc(steps.calibration(calibrate), demo.calibration),
        eval_callback=qa.CallbackFunc(steps.evaluation(evaluate), demo.eval_data),
        progress=progress)
    analyzer.enable_per_layer_mse_loss(steps.mse_data(demo.unlabeled_batches(args.mse_batches, DEMO_MSE_BATCH)),
                                       args.mse_batches)
    r = analyzer.analyze(quant_scheme=args.scheme, default_param_bw=param_bw, default_output_bw=output_bw,
                         config_file=DEMO_CONFIG, results_dir=args.out, recommend=args.recommend, target=args.target)
    print(f"  FP32 accuracy                {r.fp32_score:6.2f} %")
    print(f"  weights quantized only       {r.weight_quantized_score:6.2f} %")
    print(f"  activations quantized only   {r.activation_quantized_score:6.2f} %")
    print(f"  fully quantized              {r.quantized_score:6.2f} %")
    print("most sensitive layers (accuracy with only this layer quantized / with all but this layer):")
    for name in r.most_sensitive_layers(3):
        extra = f", output SQNR {r.per_layer_sqnr_db[name]:.1f} dB" if name in r.per_layer_sqnr_db else ""
        print(f"  {name:<24} {r.per_layer_quant_enabled[name]:6.2f} % / {r.per_layer_quant_disabled[name]:6.2f} %{extra}")
    _print_recommendation(r.recommendation, lambda v: "   n/a" if v is None else f"{v:6.2f} %")
    print(f"results ({len(r.files)} files) in {r.results_dir}  [{time.perf_counter() - t0:.1f} s]")
    if (r.results_dir / "index.html").is_file():
        print(f"open {r.results_dir / 'index.html'} in a browser (works offline)")
    return 0


def _report(args: argparse.Namespace) -> int:
    """Rebuild every HTML page of a results folder from its JSON files."""
    from .report import build_html

    folder = Path(args.results_dir).expanduser()
    if not folder.exists():  # nothing is created: a typo must not leave an empty results folder
        raise _Usage(f"no qa results in {args.results_dir}: there is no such folder")
    if not folder.is_dir():
        raise _Usage(f"{args.results_dir} is a file; qa report takes the results folder (the one with summary.json)")
    t0 = time.perf_counter()
    files = build_html(args.results_dir, png=args.png, svg=args.svg)
    pages = [f for f in files if f.suffix == ".html"]
    images = [f for f in files if f.suffix in (".png", ".svg")]
    extra = f" and {len(images)} chart images" if images else ""
    index = Path(args.results_dir).expanduser().resolve() / "index.html"
    print(f"qa report: {len(pages)} pages{extra} in {time.perf_counter() - t0:.1f} s; open {index}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Two results folders side by side: a table here, the page in RUN_B (or --out)."""
    from .report.compare import compare, text_table, write_page

    result = compare(args.run_a, args.run_b)  # every folder error first, in one line; nothing written yet
    page = write_page(result, args.out, top=args.top)
    print(text_table(result, args.top))
    print(f"open {page} in a browser (works offline)")
    return 0


# -- qa analyze: a model file and data, no code --------------------------------------------------

ANALYZE_BATCH = 32  # images / samples per batch when the model does not fix it
ANALYZE_CALIBRATION = 4  # batches
ANALYZE_MSE = 2  # batches of the evaluation data for per-layer MSE
ANALYZE_RANDOM_EVAL = 4  # batches of random data evaluated (after the calibration ones)
ANALYZE_RECORD = "analyze.json"  # in the results folder: the score and the data of the last qa analyze
_IMAGE_FLAGS = (("size", "--size"), ("mean", "--mean"), ("std", "--std"), ("layout", "--layout"),
                ("resize", "--resize"))


def _analyze_flags(sub, bitwidth) -> None:
    """The ``qa analyze`` subcommand and its flags."""
    p = sub.add_parser(
        "analyze", help="analyse a model file (.onnx, .keras, .h5, .pt2) on images, .npy/.npz data or random data",
        description="Analyse a model file without writing code: calibrate on the first --calibration batches of the "
                    "data, evaluate on the rest (on all of them when there is no rest), per-layer MSE on the first "
                    "--mse-batches evaluation batches. Without --labels the score is label-free: top-1 agreement "
                    "with the FP32 model's predictions for a classifier (first output [N, C], C > 1), output SQNR "
                    "against the FP32 outputs otherwise. With --labels it is accuracy.")
    p.add_argument("model", help="the model file: .onnx, .keras or .h5 (Keras 3), .pt2 (torch.export.save)")
    g = p.add_argument_group("data (one of --data and --random)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="PATH", help="a folder of images (subfolders too), a .npy file (one-input "
                     "models) or a .npz file (one array per input, named after it); samples along the first axis")
    src.add_argument("--random", action="store_true", help="standard normal inputs shaped as the model's inputs "
                     "(integer inputs: 0 or 1); symbolic dims must be given with --shape")
    g.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1,...",
                   help="fix the shape of one batch of an input (repeatable; NAME= may be left out for a one-input "
                        "model), e.g. input=8,3,224,224; needed for --random when a dim is symbolic")
    g.add_argument("--batch-size", type=_int_type(1, None), default=None,
                   help=f"samples per batch (default: the model's batch dim when fixed, else {ANALYZE_BATCH})")
    g.add_argument("--limit", type=_int_type(1, None), default=None, metavar="N",
                   help=f"use the first N images / samples (--random: make N samples; default "
                        f"{ANALYZE_CALIBRATION} + {ANALYZE_RANDOM_EVAL} batches)")
    g.add_argument("--labels", metavar="FILE", help="class labels, so that the score is accuracy: for an image folder "
                   "a CSV of 'file name,class index' lines (path relative to the folder, or base name); for .npy/.npz "
                   "data a .npy (or text) file with one class index per sample")
    g.add_argument("--seed", type=_int_type(0, None), default=0, help="seed of --random (default 0)")
    g = p.add_argument_group("images (a --data folder)")
    g.add_argument("--size", type=_image_size, default=None, metavar="S|H,W",
                   help="image size fed to the model (default: the model's input size; needed when it is symbolic)")
    g.add_argument("--resize", choices=["crop", "stretch"], default=None,
                   help="crop (default): scale to cover the size keeping the aspect ratio, then cut the center; "
                        "stretch: resize to the size")
    g.add_argument("--mean", type=_floats("--mean"), default=None, metavar="M[,M,...]",
                   help="per-channel mean subtracted from pixels in [0, 1] (default: ImageNet's 0.485,0.456,0.406 "
                        "for 3 channels, 0 otherwise)")
    g.add_argument("--std", type=_floats("--std", positive=True), default=None, metavar="S[,S,...]",
                   help="per-channel std the pixels are divided by (default: ImageNet's 0.229,0.224,0.225 for 3 "
                        "channels, 1 otherwise)")
    g.add_argument("--layout", choices=["nchw", "nhwc"], default=None,
                   help="channels first or last (default: read from the model's input shape, when unambiguous)")
    g = p.add_argument_group("score and data split")
    g.add_argument("--metric", choices=["agreement", "sqnr", "cosine", "accuracy"], default=None,
                   help="default: accuracy with --labels; else agreement for a classifier, sqnr otherwise")
    g.add_argument("--calibration", type=_int_type(1, None), default=ANALYZE_CALIBRATION, metavar="N",
                   help=f"calibrate on the first N batches (default {ANALYZE_CALIBRATION}); the rest are evaluated")
    g.add_argument("--mse-batches", type=_int_type(0, None), default=ANALYZE_MSE, metavar="N",
                   help=f"evaluation batches for per-layer MSE (default {ANALYZE_MSE}; 0: no per-layer MSE)")
    g.add_argument("--no-local-mse", action="store_true", help="skip each layer's local error (one pass per layer)")
    g.add_argument("--mse-memory-budget", type=_byte_size, default=None, metavar="SIZE",
                   help="FP32 layer outputs held at once for per-layer MSE (default 256MiB)")
    g = p.add_argument_group("quantization")
    g.add_argument("--scheme", default="tf_enhanced", choices=["tf", "tf_enhanced", "percentile"])
    g.add_argument("--param-bw", type=bitwidth, default=8, help="weight bitwidth, 2..32 (default 8)")
    g.add_argument("--output-bw", type=bitwidth, default=8, help="activation bitwidth, 2..32 (default 8)")
    g.add_argument("--percentile", type=_percentile, default=None,
                   help="for --scheme percentile, 50..100 (default 99.99; with --aimet-compat, AIMET's 100)")
    g.add_argument("--config", metavar="FILE|NAME",
                   help="an AIMET quantsim config JSON, or one of AIMET's names: default (the default: per-channel "
                        "Conv/Gemm/MatMul weights), per_tensor, htp_v66..htp_v85, enpu_v6, enpu_v7")
    g.add_argument("--aimet-compat", action="store_true",
                   help="AIMET 2.x's numbers: its encodings, calibration and per-layer MSE convention")
    g.add_argument("--per-channel", action="store_true",
                   help="per-channel weights (sets defaults.per_channel_quantization in the config)")
    g.add_argument("--rounding", choices=["half_even", "half_away"], default="half_even")
    g.add_argument("--sentinels", choices=["float", "quantize"], default="float",
                   help="activations holding attention-mask fill values: keep in float (default) or quantize")
    g.add_argument("--ignore", action="append", default=[], metavar="LAYER",
                   help="a module / layer name to leave unquantized (repeatable)")
    g = p.add_argument_group("run")
    g.add_argument("--results", default="./qa_results", metavar="DIR", help="results folder (default ./qa_results)")
    g.add_argument("--no-memoize", action="store_true", help="evaluate every sweep step in full")
    g.add_argument("--memo-memory-budget", type=_byte_size, default=None, metavar="SIZE",
                   help="tensors memoized sweeps may hold (default 1GiB)")
    g.add_argument("--no-resume", action="store_true",
                   help="evaluate everything even when the results folder holds a finished part of the same run")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where the per-layer evaluations run (ray: a local Ray, or RAY_ADDRESS's cluster)")
    g.add_argument("--workers", type=_int_type(1, None), default=None, metavar="N",
                   help="Ray workers (default: one per CPU)")
    g = p.add_argument_group("verified fixes")
    g.add_argument("--recommend", action="store_true",
                   help="measure the fixes for the top culprits and a smallest plan within --target of FP32")
    g.add_argument("--target", type=_target, default=None, metavar="T",
                   help="how close to FP32 the plan must get: 0.01 (relative, the default) or abs=0.5")
    p.set_defaults(func=_analyze)


def _target(text: str) -> Any:
    """--target: a relative share (0.01) or abs=<score points>."""
    kind, _, value = text.partition("=") if "=" in text else ("relative", "", text)
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.01 or abs=0.5, got {text!r}") from None
    if kind not in ("abs", "absolute", "relative", "rel") or not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 such as 0.01 or abs=0.5, got {text!r}")
    return {"absolute": number} if kind.startswith("abs") else {"relative": number}


def _image_size(text: str) -> Tuple[int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S or H,W in pixels, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected S or H,W in pixels (at least 1), got {text!r}")
    return (values[0], values[-1])


def _floats(flag: str, positive: bool = False):
    def parse(text: str) -> Tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
        if not all(math.isfinite(v) for v in values) or (positive and min(values) <= 0):
            raise argparse.ArgumentTypeError(f"expected {'positive ' if positive else ''}finite numbers, got {text!r}")
        return values
    parse.__name__ = flag
    return parse


def _percentile(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 50 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be from 50 to 100, got {text}")
    return value


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def _byte_size(text: str) -> int:
    """Bytes: ``1000000``, ``256MiB``, ``1G`` (K, M, G are powers of 1024)."""
    number = text.strip().rstrip("BbIiKkMmGg")
    unit = text.strip()[len(number):].lower()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a size in bytes like 512MiB or 1GiB, got {text!r}")
    return int(value * _UNITS[unit])


def _check_results_dir(path: str, flag: str = "--results") -> None:
    """Refuse a results folder (given as ``flag``) that cannot be written, before any work
    (nothing is created)."""
    import os

    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise _Usage(f"{flag} {path} is a file, not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise _Usage(f"{flag} {path}: the folder is not writable")
        return
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise _Usage(f"{flag} {path}: cannot create the folder, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _Usage(f"{flag} {path}: cannot create the folder, {parent} is not writable")


def _analyze_plan(args: argparse.Namespace) -> Dict[str, Any]:
    """Every check that needs no framework: the model file, the data, the flags that go together."""
    import importlib.util

    from .config import dump_config, load_config
    from .data import array_file_keys, check_model_path, list_images, parse_shape, read_label_array, read_label_csv

    plan: Dict[str, Any] = {"framework": check_model_path(args.model)}
    if args.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise _Usage("--executor ray needs Ray: pip install 'qa-quant[ray]'")
    if args.workers is not None and args.executor != "ray":
        raise _Usage("--workers goes with --executor ray")
    if args.target is not None and not args.recommend:
        raise _Usage("--target goes with --recommend")
    images = arrays = None
    if args.data is not None:
        data = Path(args.data)
        if data.is_dir():
            if importlib.util.find_spec("PIL") is None:
                raise _Usage("reading images needs Pillow: pip install 'qa-quant[images]'")
            images = list_images(data)
        elif not data.exists():
            raise _Usage(f"--data {args.data}: no such file or folder")
        elif data.suffix.lower() in (".npy", ".npz"):
            arrays = array_file_keys(data)
        else:
            raise _Usage(f"--data {args.data}: expected a folder of images, a .npy or a .npz file")
    plan["images"], plan["arrays"] = images, arrays
    if images is None:
        given = [flag for attr, flag in _IMAGE_FLAGS if getattr(args, attr) is not None]
        if given:
            raise _Usage(f"{given[0]} applies to image folders; --data is {'--random' if args.random else args.data}")
    plan["labels"] = None
    if args.labels is not None:
        if args.random:
            raise _Usage("--labels needs real data: --random has no labels")
        if not Path(args.labels).is_file():
            raise _Usage(f"--labels {args.labels}: no such file")
        plan["labels"] = read_label_csv(args.labels) if images is not None else read_label_array(args.labels)
    if args.metric == "accuracy" and args.labels is None:
        raise _Usage("--metric accuracy needs --labels")
    if args.labels is not None and args.metric not in (None, "accuracy"):
        raise _Usage(f"--labels makes the score accuracy; --metric {args.metric} compares with the FP32 model "
                     f"instead: drop one of them")
    shapes: Dict[Optional[str], Tuple[int, ...]] = {}
    for text in args.shape:
        name, dims = parse_shape(text)
        if name in shapes:
            raise _Usage(f"--shape {text}: {'input ' + repr(name) if name else 'the input'} is given twice")
        shapes[name] = dims
    if None in shapes and len(shapes) > 1:
        raise _Usage("--shape without a name is for one-input models; name every input (NAME=D0,D1,...)")
    plan["shapes"] = shapes
    config: Any = args.config
    if config is not None:
        load_config(config)  # a missing or malformed file fails now, with its reason
    if args.per_channel:  # the config (a file, an AIMET name or the default) with every weight per channel
        config = dump_config(load_config(config))
        config["defaults"]["per_channel_quantization"] = "True"
    plan["config"] = config
    _check_results_dir(args.results)
    return plan


def _resolve_inputs(specs: List[Any], shapes: Dict[Optional[str], Tuple[int, ...]]) -> List[Any]:
    """The model's inputs with the --shape dims in place of theirs."""
    names = [s.name for s in specs]
    if None in shapes:
        if len(specs) != 1:
            raise _Usage(f"--shape without a name is for one-input models; this one has inputs {names}: "
                         f"--shape NAME=D0,D1,...")
        shapes = {names[0]: shapes[None]}
    unknown = [n for n in shapes if n not in names]
    if unknown:
        raise _Usage(f"--shape {unknown[0]}=...: the model has no input '{unknown[0]}'; its inputs are {names}")
    return [s.with_shape(shapes[s.name]) if s.name in shapes else s for s in specs]


def _batch_size(args: argparse.Namespace, specs: List[Any]) -> Tuple[Optional[int], bool]:
    """(samples per batch or None when not known yet, whether the model fixes it)."""
    fixed = {s.dims[0] for s in specs if s.dims and isinstance(s.dims[0], int)}
    if len(fixed) > 1:
        raise _Usage(f"the model's inputs fix different batch sizes ({sorted(fixed)})")
    if fixed:
        (n,) = fixed
        if args.batch_size is not None and args.batch_size != n:
            spec = next(s for s in specs if s.dims and s.dims[0] == n)
            raise _Usage(f"--batch-size {args.batch_size}: the model's input '{spec.name}' {spec.text()} takes "
                         f"batches of {n}")
        return n, True
    return args.batch_size, False


def _analyze_data(args: argparse.Namespace, plan: Dict[str, Any], model_file: Any, progress: Optional[bool]):
    """(batches, labels per batch or None, batch size, what the data is in words)."""
    import numpy as np

    from .data import ImageOptions, labels_for, load_arrays, load_images, make_batches, random_batch

    specs = _resolve_inputs(model_file.inputs, plan["shapes"])
    batch, exact = _batch_size(args, specs)
    labels = None
    if args.random:
        if batch is not None:
            specs = [s.with_shape((batch,) + tuple(s.dims[1:]), "--batch-size") if s.dims and s.symbolic() == [0]
                     else s for s in specs]
        rng = np.random.default_rng(args.seed)
        first = random_batch(specs, rng)  # symbolic dims not given: refused here, naming the input
        batch = len(first[0])
        count = -(-args.limit // batch) if args.limit else args.calibration + ANALYZE_RANDOM_EVAL
        batches = [first] + [random_batch(specs, rng) for _ in range(count - 1)]
        return batches, None, batch, f"{count * batch} random samples (seed {args.seed})"
    batch = batch or ANALYZE_BATCH
    if plan["images"] is not None:
        if len(specs) != 1:
            raise _Usage(f"an image folder feeds a one-input model; this one has inputs {[s.name for s in specs]}: "
                         f"use a .npz file with one array per input")
        files = plan["images"][:args.limit]
        options = ImageOptions(size=args.size, resize=args.resize or "crop", layout=args.layout, mean=args.mean,
                               std=args.std)
        samples = [load_images(files, specs[0], options, progress)]
        if plan["labels"] is not None:
            labels = labels_for(files, args.data, plan["labels"], args.labels)
        what = f"{len(files)} image{'s' if len(files) != 1 else ''} from {args.data}"
    else:
        samples, unused = load_arrays(args.data, specs)
        if plan["labels"] is not None:
            labels = plan["labels"]
            if len(labels) != len(samples[0]):
                raise _Usage(f"--labels {args.labels}: {len(labels)} labels for {len(samples[0])} samples in "
                             f"{args.data}")
        what = f"{min(len(samples[0]), args.limit or len(samples[0]))} samples from {args.data}"
        if unused:
            what += f" (arrays not used: {', '.join(unused)})"
        samples = [a[:args.limit] for a in samples]
        labels = labels[:args.limit] if labels is not None else None
    batches = make_batches(samples, batch, exact)
    if not batches:
        raise _Usage(f"--data {args.data}: {len(samples[0])} samples, fewer than one batch of {batch} (the model's "
                     f"batch size)")
    label_batches = None if labels is None else [b[0] for b in make_batches([labels], batch, exact)]
    if plan["labels"] is not None:
        what += f", labels from {args.labels}"
    return batches, label_batches, batch, what


def _evaluation_digest(batches: List[List[Any]], labels: Optional[List[Any]], kind: str) -> str:
    """A hash of what an evaluation computes beyond the model and its quantization: data, labels, metric."""
    import hashlib

    import numpy as np

    h = hashlib.blake2b(digest_size=16)
    h.update(kind.encode())
    for i, batch in enumerate(batches):
        for a in list(batch) + ([labels[i]] if labels is not None else []):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _previous_digest(results: str) -> Optional[str]:
    """The evaluation digest ``qa analyze`` recorded in this results folder, if any."""
    import json

    try:
        with open(Path(results).expanduser() / ANALYZE_RECORD, encoding="utf-8") as f:
            return json.load(f)["data"]["evaluation_digest"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _analyze(args: argparse.Namespace) -> int:
    """Analyse a model file on images, .npy/.npz data or random data, and print what matters."""
    plan = _analyze_plan(args)  # everything that can be checked before a framework loads
    import qa
    from ._progress import Progress
    from .data import load_model_file
    from .metrics import Scorer, default_metric

    t0 = time.perf_counter()
    progress = False if args.no_progress else None
    model_file = load_model_file(args.model)
    batches, label_batches, batch, what = _analyze_data(args, plan, model_file, progress)
    n_cal = min(args.calibration, len(batches))
    calibration = batches[:n_cal]
    evaluation = batches[n_cal:] or batches
    eval_labels = None if label_batches is None else (label_batches[n_cal:] or label_batches)
    run = model_file.run
    scorer: Any = None

    def calibrate(model: Any) -> None:
        for b in calibration:
            run(model, b)

    def evaluate(model: Any) -> float:
        return scorer(run(model, b) for b in evaluation)

    analyzer = qa.QuantAnalyzer(model_file.model, model_file.dummy_input(calibration[0]),
                                forward_pass_callback=calibrate, eval_callback=evaluate,
                                modules_to_ignore=args.ignore or None, forward_fn=run, progress=progress)
    reference = []
    with Progress(len(evaluation), "FP32 reference outputs", progress) as bar:
        for i, b in enumerate(evaluation):  # the analysis copy, in float until analyze() starts
            try:
                reference.append(run(analyzer.adapter.model, b))
            except Exception as e:
                raise _Usage(f"the FP32 model failed on evaluation batch {i} (shapes "
                             f"{[list(a.shape) for a in b]}): {type(e).__name__}: {e}") from e
            bar.update()
    kind = args.metric or default_metric(reference[0], eval_labels is not None)
    scorer = Scorer(kind, reference if kind != "accuracy" else None, eval_labels)
    if kind == "accuracy":
        _check_classes(reference[0], eval_labels, args.labels)
    del reference
    n_mse = min(args.mse_batches, len(evaluation))
    if n_mse:
        options = {"mse_memory_budget": args.mse_memory_budget} if args.mse_memory_budget else {}
        analyzer.enable_per_layer_mse_loss(evaluation[:n_mse], n_mse, local_mse=not args.no_local_mse, **options)
    digest = _evaluation_digest(evaluation, eval_labels, kind)
    resume = not args.no_resume and _previous_digest(args.results) == digest
    record = {"score": {"kind": scorer.kind, "unit": scorer.unit, "label_free": scorer.label_free,
                        "description": scorer.describe()},
              "data": {"model": str(model_file.path), "framework": model_file.framework, "data": what,
                       "split": _split_text(batch, calibration, evaluation, batches, n_mse),
                       "evaluation_digest": digest}}
    _write_record(args.results, record, None)  # before the long work: a killed run can be resumed
    extra = {"memo_memory_budget": args.memo_memory_budget} if args.memo_memory_budget else {}
    if args.recommend:
        extra.update(recommend=True, target=args.target)
    if args.executor == "ray":
        from .executors import RayExecutor

        extra["executor"] = RayExecutor(num_workers=args.workers) if args.workers else "ray"
    r = analyzer.analyze(quant_scheme=args.scheme, default_param_bw=args.param_bw, default_output_bw=args.output_bw,
                         config_file=plan["config"], results_dir=args.results, percentile=args.percentile,
                         rounding=args.rounding, sentinels=args.sentinels, memoize=not args.no_memoize,
                         aimet_compat=args.aimet_compat,
                         resume=resume, **extra)
    _write_record(args.results, record, "summary.json")
    _print_analyze(r, model_file, scorer, what, record["data"]["split"], len(analyzer.adapter.graph.layers), args,
                   time.perf_counter() - t0)
    return 0


def _split_text(batch: int, calibration: List[Any], evaluation: List[Any], batches: List[Any], n_mse: int) -> str:
    return (f"batches of {batch}: {len(calibration)} for calibration, "
            + (f"the same {len(evaluation)} for evaluation (no batches left after calibration)"
               if evaluation is batches else f"{len(evaluation)} for evaluation")
            + (f", {n_mse} of them for per-layer MSE" if n_mse else ", no per-layer MSE"))


def _check_classes(outputs: List[Any], labels: List[Any], source: str) -> None:
    """Refuse labels naming classes the model's first output does not have."""
    from .metrics import is_classifier

    if not is_classifier(outputs):
        raise _Usage(f"--labels: accuracy needs class scores, a first output of shape [N, C]; this model's first "
                     f"output is {list(outputs[0].shape)}")
    classes = outputs[0].shape[1]
    top = max(int(t.max()) for t in labels)
    if top >= classes:
        raise _Usage(f"--labels {source}: class index {top}, but the model's first output has {classes} classes")


def _write_record(results: str, record: Dict[str, Any], summary: Optional[str]) -> None:
    """What the score is and what data it came from: ``analyze.json`` in the results folder (read
    back to decide whether a rerun may resume), and with ``summary`` also the keys ``score`` and
    ``data`` of summary.json."""
    from .report import ResultsDir

    folder = ResultsDir(Path(results).expanduser())
    folder.write_json(record, ANALYZE_RECORD)
    if summary is not None:
        data = folder.read_json(summary) or {}
        data.update(record)
        folder.write_json(data, summary)


def _print_analyze(r: Any, model_file: Any, scorer: Any, what: str, split: str, layers: int,
                   args: argparse.Namespace, seconds: float) -> None:
    def score(value: Optional[float]) -> str:
        if value is None:
            return "   n/a"
        if scorer.unit == "%":
            return f"{value:6.2f} %"
        return f"{value:6.2f} dB" if scorer.unit == "dB" else f"{value:.5f}"

    print(f"qa analyze: {model_file.path.name} ({model_file.kind}, {layers} layers) on {what}")
    print(f"data: {split}")
    print(f"score: {scorer.describe()}")
    per_channel = ", per-channel weights" if args.per_channel else ""
    print(f"quantization: weights {r.default_param_bw} bit, activations {r.default_output_bw} bit, "
          f"scheme {r.quant_scheme}{per_channel}")
    print(f"  FP32                         {score(r.fp32_score)}")
    print(f"  weights quantized only       {score(r.weight_quantized_score)}")
    print(f"  activations quantized only   {score(r.activation_quantized_score)}")
    print(f"  fully quantized              {score(r.quantized_score)}")
    top = r.most_sensitive_layers(3)
    if top:
        print(f"most sensitive layers ({scorer.kind} with only this layer quantized / with all but this layer):")
        for name in top:
            extra = f", output SQNR {r.per_layer_sqnr_db[name]:.1f} dB" if name in r.per_layer_sqnr_db else ""
            print(f"  {name:<24} {score(r.per_layer_quant_enabled[name])} / "
                  f"{score(r.per_layer_quant_disabled[name])}{extra}")
    else:
        print("no layer stands out: quantizing any one of them alone costs nothing measurable")
    _print_recommendation(r.recommendation, score)
    print(f"results ({len(r.files)} files) in {r.results_dir}  [{seconds:.1f} s]")
    if (r.results_dir / "index.html").is_file():
        print(f"open {r.results_dir / 'index.html'} in a browser (works offline)")


def _print_recommendation(rec: Any, score: Callable[[Optional[float]], str]) -> None:
    """The verified fixes of ``analyze(recommend=True)``: each candidate measured, then the plan."""
    if rec is None:
        return
    print(f"verified fixes ({rec.evaluations} evaluations; target {rec.target.describe()}: >= "
          f"{score(rec.goal).strip()}):")
    for c in rec.candidates:
        where = "  (disabling sweep)" if c.source == "sweep" else ""
        delta = "" if c.delta is None else f" ({c.delta:+.2f})"
        mark = "*" if c.in_plan else " "
        print(f" {mark}{c.change.layer:<20} {c.change.description:<40} {score(c.score)}{delta}{where}")
    if rec.status == "met":
        print("plan: none needed, the fully quantized model meets the target")
        return
    plan = "; ".join(f"{c.layer}: {c.description}" for c in rec.plan) or "no change helps"
    verdict = "target reached" if rec.reached else "target MISSED"
    how = "measured alone" if rec.plan_evaluated == "candidate" else "confirmed by one evaluation"
    print(f"plan (*): {plan} -> {score(rec.score).strip()} ({how}): {verdict}")
    if rec.aimet_per_layer:
        print(f"  for AIMET: recommended_config_aimet.json, plus per-layer changes in code for "
              f"{', '.join(rec.aimet_per_layer)} (recommendation.json lists them)")


def _observed(obs, data):
    obs.update(data)
    return obs


class _Usage(Exception):
    """A bad argument found after parsing (a folder that is a file, a missing extra)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: "qa demo: argument --param-bw: ...", exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(ERROR, f"{self.prog}: {message} ({self.prog} -h for help)\n")


def _int_type(low: int, high: Optional[int], what: str = ""):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}must be a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{what}must be {span}, got {value}")
        return value
    parse.__name__ = what.strip() or "number"  # argparse names the type in some messages
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qa", description="Find where a network loses accuracy when quantized.")
    parser.add_argument("--version", action="version", version=f"qa {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages; tracebacks on errors")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    bitwidth = _int_type(*BITWIDTHS, "a bitwidth ")
    p = sub.add_parser("selfcheck", help="run every C++ kernel once and check it against numpy")
    p.add_argument("--elements", type=_int_type(1, None), default=1_000_000)
    p.add_argument("--seed", type=_int_type(0, None), default=0)
    p.set_defaults(func=_selfcheck)
    p = sub.add_parser("demo", help="analyse the shipped demo CNN (needs the torch extra)")
    p.add_argument("--out", default="./qa_results", help="results folder (default ./qa_results)")
    p.add_argument("--param-bw", type=bitwidth, default=None, help="weight bitwidth, 2..32 (default: the demo's)")
    p.add_argument("--output-bw", type=bitwidth, default=None,
                   help="activation bitwidth, 2..32 (default: the demo's)")
    p.add_argument("--scheme", default="tf_enhanced", choices=["tf", "tf_enhanced", "percentile"])
    p.add_argument("--mse-batches", type=_int_type(1, None), default=4,
                   help=f"batches of {DEMO_MSE_BATCH} images for per-layer MSE, 1..{DEMO_MSE_BATCHES} (default 4)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (the step lines on stdout stay)")
    p.add_argument("--recommend", action="store_true",
                   help="measure the fixes for the top culprits and a smallest plan within --target of FP32")
    p.add_argument("--target", type=_target, default=None, metavar="T",
                   help="how close to FP32 the plan must get: 0.01 (relative, the default) or abs=0.5")
    p.set_defaults(func=_demo)
    _analyze_flags(sub, bitwidth)
    p = sub.add_parser("report", help="rebuild the HTML pages of a results folder from its JSON files")
    p.add_argument("results_dir", help="a results folder written by qa (or AIMET-style JSON files)")
    p.add_argument("--png", action="store_true", help="also write every chart as PNG, for slides")
    p.add_argument("--svg", action="store_true", help="also write every chart as SVG")
    p.set_defaults(func=_report)
    p = sub.add_parser("compare", help="compare two results folders (before/after a fix, W8 vs W4, torch vs ONNX)")
    p.add_argument("run_a", metavar="RUN_A", help="the baseline results folder (only read)")
    p.add_argument("run_b", metavar="RUN_B", help="the results folder under study; changes are B - A")
    p.add_argument("--out", metavar="DIR", default=None, help="write compare.html into DIR instead of RUN_B")
    p.add_argument("--top", metavar="N", type=_int_type(1, 1000), default=10,
                   help="layers per measure in the table and charts (default 10)")
    p.set_defaults(func=_compare)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 1000 else text[:990] + " ..."


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``qa`` command; returns the exit status (0, 1: selfcheck failed, 2: error)."""
    from .errors import QAError

    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    prog = f"qa {args.command}"
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (_Usage, QAError, ValueError, OSError, RecursionError) as e:
        if args.verbose:
            traceback.print_exc()
        print(f"{prog}: {_one_line(e)}", file=sys.stderr)
        return ERROR


if __name__ == "__main__":
    sys.exit(main())
