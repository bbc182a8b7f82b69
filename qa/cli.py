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
import sys
import time
import traceback
from pathlib import Path
from typing import List, NoReturn, Optional

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


def _demo(args: argparse.Namespace) -> int:
    """Analyse the shipped demo CNN on its shipped images and print what matters."""
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise _Usage(f"--out {args.out} is a file, not a folder")
    if importlib.util.find_spec("torch") is None:  # the demo imports it; the CLI itself never does
        raise _Usage("qa demo needs PyTorch: pip install torch==2.13.0 'qa-quant[torch]'")
    import qa
    from qa.demo import OUTPUT_BW, PARAM_BW, calibrate, evaluate, load_demo

    t0 = time.perf_counter()
    demo = load_demo()
    analyzer = qa.QuantAnalyzer(
        demo.model, demo.dummy_input,
        forward_pass_callback=qa.CallbackFunc(calibrate, demo.calibration),
        eval_callback=qa.CallbackFunc(evaluate, demo.eval_data),
        progress=not args.no_progress and None)
    analyzer.enable_per_layer_mse_loss(demo.unlabeled_batches(args.mse_batches), args.mse_batches)
    param_bw = PARAM_BW if args.param_bw is None else args.param_bw
    output_bw = OUTPUT_BW if args.output_bw is None else args.output_bw
    r = analyzer.analyze(quant_scheme=args.scheme, default_param_bw=param_bw, default_output_bw=output_bw,
                         results_dir=args.out)
    print(f"qa demo: a 6-layer CNN (with a depthwise conv) on {len(demo.eval_labels):,} Fashion-MNIST test images")
    print(f"quantization: weights {param_bw} bit, activations {output_bw} bit, scheme {r.quant_scheme}")
    print(f"  FP32 accuracy                {r.fp32_score:6.2f} %")
    print(f"  weights quantized only       {r.weight_quantized_score:6.2f} %")
    print(f"  activations quantized only   {r.activation_quantized_score:6.2f} %")
    print(f"  fully quantized              {r.quantized_score:6.2f} %")
    print("most sensitive layers (accuracy with only this layer quantized / with all but this layer):")
    for name in r.most_sensitive_layers(3):
        mse = r.per_layer_mse.get(name)
        extra = f", output SQNR {r.per_layer_sqnr_db[name]:.1f} dB" if mse is not None else ""
        print(f"  {name:<24} {r.per_layer_quant_enabled[name]:6.2f} % / {r.per_layer_quant_disabled[name]:6.2f} %{extra}")
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
                   help="batches of 64 images for per-layer MSE")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)
    p = sub.add_parser("report", help="rebuild the HTML pages of a results folder from its JSON files")
    p.add_argument("results_dir", help="a results folder written by qa (or AIMET-style JSON files)")
    p.add_argument("--png", action="store_true", help="also write every chart as PNG, for slides")
    p.add_argument("--svg", action="store_true", help="also write every chart as SVG")
    p.set_defaults(func=_report)
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
