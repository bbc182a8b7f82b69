"""AIMET's QuantAnalyzer against qa's on the same PyTorch model, data and callbacks, same run.

Usage: python benchmarks/aimet_vs_qa.py [--model resnet18|small] [--width 64] [--eval-images 256]
                                        [--repeat 1] [--skip-aimet] [--skip-compat] [--keep DIR]

Measured: one ``analyze()`` of each tool (W8A8, tf_enhanced, each tool's default quantsim config:
``config_file=None``, which for qa is AIMET 2.x's "default", per-channel weights), with per-layer
MSE enabled on 2 batches. Printed, one row per stage (seconds, the median of ``--repeat`` runs):
setup (the constructor and ``enable_per_layer_mse_loss``), calibration (quantsim + encodings;
AIMET folds the batch norms here, qa in its constructor), sensitivity (AIMET: FP32, W-only, A-only
evaluations; qa: the same plus the fully quantized one), both per-layer sweeps, min-max ranges,
histograms, per-layer MSE, then qa's HTML dashboard (analyze's time outside its stages; AIMET has
no such step: it writes a bokeh HTML page per plot inside each stage) and the total. The ratio
is AIMET / qa. Then the evaluation and calibration callback calls (and the seconds spent in
them), and the files each tool wrote, by kind (JSON, HTML, other): count and bytes.

qa is timed with ``aimet_compat=True`` too (AIMET 2.x's numbers: its histograms, encodings and
MSE convention) when this qa's ``analyze`` takes that argument.

The model (written here, no torchvision): a ResNet-18-style CIFAR network (3x3 stem, 4 stages of
2 BasicBlocks with batch norms, widths w, 2w, 4w, 8w; 32x32 inputs, 10 classes), weights from
``torch.manual_seed(0)``, batch-norm statistics from 4 synthetic batches in train mode; the
residual adds are ``Add`` modules, so both tools quantize them (for AIMET they are swapped for
``aimet_torch.nn.modules.custom.Add``, the same x + y). ``--model small`` is a tiny CNN for a
quick run. Data: synthetic images from numpy seeds: calibration 4 batches of 32, evaluation
``--eval-images`` images (default 256, batches of 64), per-layer MSE the first 2 calibration
batches. The evaluation callback is top-1 agreement (%) with the FP32 model's predictions.

Run time on 2 CPU cores (nothing else running): the default (ResNet-18 at width 64, 256
evaluation images) takes 8-9 minutes, 6-7 of them AIMET (its histograms write one bokeh HTML
page per weight channel, ~4,900 files for this model; its per-layer MSE re-runs both models once
per layer and batch). The evaluation set is kept at 256 images for that budget; ``--width 32``
or fewer ``--eval-images`` make it shorter; ``--model small`` takes seconds. Other work on the
machine skews the ratios: the load average is printed before and after.

qa's own venv (no AIMET): prints qa's side and one line saying AIMET is missing::

    /work/venv/bin/python benchmarks/aimet_vs_qa.py

The AIMET venv (both tools in one process; AIMET is never a dependency of qa)::

    python3 -m venv /work/aimet-venv && . /work/aimet-venv/bin/activate
    pip install torch==2.13.0                      # CPU wheel (+cpu local build)
    pip install --no-deps torchvision==0.28.0      # CUDA-built wheel; see the import workaround
    pip install --no-deps aimet-torch==2.42.0      # pure-python wheel (py310-none-any)
    pip install Jinja2 PyYAML "bokeh>=3.3.0,<=3.6.3" cvxpy holoviews "hvplot>=0.10.0" jsonschema \\
        "matplotlib>=3" networkx numpy onnx "onnx_ir>=0.1.16" "onnxscript>=0.2.0" osqp pandas psutil \\
        pybind11 safetensors scikit-learn scipy tensorboard tqdm onnxruntime
    pip install altair vl-convert-python scikit-build-core   # qa's report + build (no torch)
    QA_CUDA=OFF pip install --no-deps --no-build-isolation -e /work/main   # qa (rerun if C++ changes)
    python benchmarks/aimet_vs_qa.py

Import workaround (as in benchmarks/aimet_golden.py): the torchvision 0.28.0 wheel is built
against CUDA, its ``_C.so`` does not load on a CPU-only torch, and its meta registrations then
fail on the missing ``torchvision::nms`` / ``qnms`` ops; aimet_torch imports torchvision, so the
two op schemas are defined (schema only, never run) before AIMET is imported, and only when
torchvision's own extension does not load.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

import qa

STAGES = ["setup", "calibration", "sensitivity", "per_layer_enabled", "per_layer_disabled",
          "min_max_ranges", "histograms", "per_layer_mse"]
# AIMET's QuantAnalyzer methods analyze() calls, by qa's stage name (aimet-torch 2.42).
AIMET_METHODS = {
    "calibration": "_create_quantsim_and_encodings",
    "sensitivity": "check_model_sensitivity_to_quantization",
    "per_layer_enabled": "perform_per_layer_analysis_by_enabling_quant_wrappers",
    "per_layer_disabled": "perform_per_layer_analysis_by_disabling_quant_wrappers",
    "min_max_ranges": "export_per_layer_encoding_min_max_range",
    "histograms": "export_per_layer_stats_histogram",
    "per_layer_mse": "export_per_layer_mse_loss",
}
_TV_STUB = None  # the torch.library.Library of the torchvision op stubs: it must stay alive


# --------------------------------------------------------------------------------------------
# model and data
# --------------------------------------------------------------------------------------------
class Add(nn.Module):
    """x + y as a module, so that both tools quantize the residual add's output."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.add = Add()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.add(y, x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (CIFAR stem: one 3x3 convolution, no max pool)."""

    def __init__(self, width: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages, c = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            c_out = width * 2 ** i
            stages.append(nn.Sequential(BasicBlock(c, c_out, stride), BasicBlock(c_out, c_out, 1)))
            c = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


class SmallNet(nn.Module):
    """A tiny CNN: conv-bn-relu, conv-bn, residual add, relu, max pool, linear."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.add = Add()
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(4)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(width * 64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.relu1(self.bn1(self.conv1(x)))
        z = self.relu2(self.add(self.bn2(self.conv2(y1)), y1))
        return self.fc(self.flatten(self.pool(z)))


def images(seed: int, n: int) -> torch.Tensor:
    """n synthetic 3x32x32 images (standard normal, float32) from one numpy seed."""
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32))


def make_model(kind: str, width: int) -> nn.Module:
    """Weights from a fixed seed; batch-norm statistics from synthetic batches, affine parameters
    randomized so that folding changes the weights."""
    torch.manual_seed(0)
    model = ResNet18(width) if kind == "resnet18" else SmallNet(width)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the batches below
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.1)
    model.train()
    with torch.no_grad():
        for seed in range(900, 904):
            model(images(seed, 32))
    return model.eval()


# --------------------------------------------------------------------------------------------
# callbacks, shared by both tools (func(model, args), AIMET's CallbackFunc convention)
# --------------------------------------------------------------------------------------------
class Callbacks:
    """Calibration and evaluation; counts the calls and the seconds spent in each."""

    def __init__(self, calib: List[torch.Tensor], evaluation: List[torch.Tensor], reference: List[torch.Tensor]) -> None:
        self.calib, self.evaluation, self.reference = calib, evaluation, reference
        self.calls = {"calibrate": 0, "evaluate": 0}
        self.seconds = {"calibrate": 0.0, "evaluate": 0.0}

    def reset(self) -> None:
        self.calls = dict.fromkeys(self.calls, 0)
        self.seconds = dict.fromkeys(self.seconds, 0.0)

    def calibrate(self, model: Any, batches: Any) -> None:
        t = time.perf_counter()
        with torch.no_grad():
            for b in batches:
                model(b)
        self.calls["calibrate"] += 1
        self.seconds["calibrate"] += time.perf_counter() - t

    def evaluate(self, model: Any, _args: Any) -> float:
        """Top-1 agreement (%) with the FP32 model's predictions."""
        t = time.perf_counter()
        agree = total = 0
        with torch.no_grad():
            for x, ref in zip(self.evaluation, self.reference):
                pred = torch.Tensor.as_subclass(model(x), torch.Tensor).argmax(1)  # AIMET returns QuantizedTensors
                agree += int((pred == ref).sum())
                total += len(ref)
        self.calls["evaluate"] += 1
        self.seconds["evaluate"] += time.perf_counter() - t
        return 100.0 * agree / total


# --------------------------------------------------------------------------------------------
# the runs
# --------------------------------------------------------------------------------------------
class Run:
    """One tool's analyze: seconds per stage, callback counts, the files written."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds: Dict[str, float] = {}
        self.calls: Dict[str, int] = {}
        self.callback_seconds: Dict[str, float] = {}
        self.files: Dict[str, Tuple[int, int]] = {}  # kind -> (count, bytes)
        self.scores: Optional[Tuple[float, ...]] = None
        self.layers = 0  # layers scored in each per-layer sweep


def file_kinds(root: str) -> Dict[str, Tuple[int, int]]:
    out = {"JSON": [0, 0], "HTML": [0, 0], "other": [0, 0]}
    for d, _, names in os.walk(root):
        for f in names:
            ext = os.path.splitext(f)[1].lower()
            kind = "JSON" if ext == ".json" else "HTML" if ext in (".html", ".htm") else "other"
            out[kind][0] += 1
            out[kind][1] += os.path.getsize(os.path.join(d, f))
    out["total"] = [sum(v[0] for v in out.values()), sum(v[1] for v in out.values())]
    return {k: (c, b) for k, (c, b) in out.items()}


def median_run(runs: List[Run]) -> Run:
    """Per-stage medians over the repeats; files and counts from the last one."""
    out = runs[-1]
    keys = {k for r in runs for k in r.seconds}
    out.seconds = {k: statistics.median(r.seconds.get(k, 0.0) for r in runs) for k in keys}
    return out


def run_qa(model: nn.Module, cb: Callbacks, mse_batches: List[torch.Tensor], root: str, *,
           aimet_compat: bool) -> Run:
    run = Run("qa compat" if aimet_compat else "qa")
    cb.reset()
    results_dir = os.path.join(root, "qa_compat" if aimet_compat else "qa")
    t0 = time.perf_counter()
    analyzer = qa.QuantAnalyzer(model, mse_batches[0][:1], qa.CallbackFunc(cb.calibrate, cb.calib),
                                qa.CallbackFunc(cb.evaluate, None), progress=False)
    analyzer.enable_per_layer_mse_loss(mse_batches, len(mse_batches))
    t1 = time.perf_counter()
    kwargs = {"aimet_compat": True} if aimet_compat else {}
    result = analyzer.analyze("tf_enhanced", 8, 8, config_file=None, results_dir=results_dir, **kwargs)
    t2 = time.perf_counter()
    run.seconds = {"setup": t1 - t0, **{k: float(v) for k, v in result.seconds.items()}}
    run.seconds["report"] = max(0.0, (t2 - t1) - sum(float(v) for v in result.seconds.values()))
    run.seconds["total"] = t2 - t0
    run.calls, run.callback_seconds = dict(cb.calls), dict(cb.seconds)
    run.files = file_kinds(results_dir)
    run.layers = len(result.per_layer_quant_enabled)
    run.scores = tuple(getattr(result, k, None) for k in ("fp32_score", "weight_quantized_score",
                                                          "activation_quantized_score"))
    return run


def import_aimet() -> Tuple[Any, Any, Any, Any]:
    """aimet_torch's QuantAnalyzer, CallbackFunc, QuantScheme and Add (raises ImportError if missing)."""
    global _TV_STUB
    import importlib.util
    if importlib.util.find_spec("aimet_torch") is None:
        raise ImportError("No module named 'aimet_torch'")
    spec = importlib.util.find_spec("torchvision")
    if spec is not None and "torchvision" not in sys.modules and _TV_STUB is None:
        ext = next((os.path.join(d, f) for d in spec.submodule_search_locations or []
                    for f in os.listdir(d) if f.startswith("_C.") and f.endswith((".so", ".pyd"))), None)
        try:
            if ext is None:
                raise OSError("no torchvision/_C extension")
            torch.ops.load_library(ext)
        except OSError:  # a CUDA-built torchvision on a CPU-only torch: stub the ops it registers fakes for
            _TV_STUB = torch.library.Library("torchvision", "DEF")
            _TV_STUB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _TV_STUB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    from aimet_torch.common.defs import CallbackFunc, QuantScheme
    from aimet_torch.nn.modules.custom import Add as AimetAdd
    from aimet_torch.quant_analyzer import QuantAnalyzer
    for name in list(logging.root.manager.loggerDict):  # AIMET logs every stage (INFO) and graph notes (WARNING)
        if not name.startswith("qa"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return QuantAnalyzer, CallbackFunc, QuantScheme, AimetAdd


def run_aimet(model: nn.Module, cb: Callbacks, mse_batches: List[torch.Tensor], root: str, aimet: Tuple) -> Run:
    QuantAnalyzer, CallbackFunc, QuantScheme, AimetAdd = aimet
    run = Run("AIMET")
    cb.reset()
    results_dir = os.path.join(root, "aimet")
    model = copy.deepcopy(model)  # AIMET folds the batch norms into the model it is given
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Add):
                setattr(parent, child_name, AimetAdd())
    t0 = time.perf_counter()
    analyzer = QuantAnalyzer(model, mse_batches[0][:1], CallbackFunc(cb.calibrate, cb.calib),
                             CallbackFunc(cb.evaluate, None))
    analyzer.enable_per_layer_mse_loss(mse_batches, len(mse_batches))
    t1 = time.perf_counter()
    seconds: Dict[str, float] = {}
    for stage, method in AIMET_METHODS.items():
        original = getattr(analyzer, method)

        def wrapper(*a, _original=original, _stage=stage, **k):
            t = time.perf_counter()
            try:
                out = _original(*a, **k)
                if _stage == "sensitivity":
                    run.scores = tuple(out)
                elif _stage == "per_layer_enabled":
                    run.layers = len(out)
                return out
            finally:
                seconds[_stage] = seconds.get(_stage, 0.0) + time.perf_counter() - t
        setattr(analyzer, method, wrapper)
    with warnings.catch_warnings():  # torch.tensor(tensor) and bokeh deprecation warnings inside AIMET
        warnings.simplefilter("ignore")
        analyzer.analyze(quant_scheme=QuantScheme.post_training_tf_enhanced, default_param_bw=8,
                         default_output_bw=8, config_file=None, results_dir=results_dir)
    t2 = time.perf_counter()
    run.seconds = {"setup": t1 - t0, **seconds}
    run.seconds["report"] = max(0.0, (t2 - t1) - sum(seconds.values()))  # outside the stages: makedirs
    run.seconds["total"] = t2 - t0
    run.calls, run.callback_seconds = dict(cb.calls), dict(cb.seconds)
    run.files = file_kinds(results_dir)
    return run


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------
def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or a <= 0 or b <= 0:
        return "-"
    return f"{a / b:.1f}x" if a / b >= 10 else f"{a / b:.2f}x"


def print_table(aimet: Optional[Run], qa_runs: List[Run]) -> None:
    cols = ([aimet] if aimet else []) + qa_runs
    ratios = [(f"AIMET/{r.name}", r) for r in qa_runs] if aimet else []
    w = 16

    def line(label: str, cells: List[str], more: List[str] = (), width: int = w) -> str:
        return f"{label:<20}" + "".join(f"{c:>{width}}" for c in cells) + "".join(f"{c:>{width + 4}}" for c in more)

    head = line("stage (s)", [r.name for r in cols], [name for name, _ in ratios])
    print(head)
    print("-" * len(head))
    stages = STAGES + sorted({k for r in cols for k in r.seconds} - set(STAGES) - {"report", "total"}) \
        + ["report", "total"]
    for stage in stages:
        if stage == "total":
            print("-" * len(head))
        print(line("report (HTML)" if stage == "report" else stage,
                   ["-" if r.seconds.get(stage) is None else f"{r.seconds[stage]:.3f}" for r in cols],
                   [_ratio(aimet.seconds.get(stage), r.seconds.get(stage)) for _, r in ratios]))
    print()
    print(line("callbacks", [r.name for r in cols]))
    print(line("layers per sweep", [str(r.layers) for r in cols]))
    for what in ("evaluate", "calibrate"):
        print(line(f"{what} calls", [str(r.calls.get(what, 0)) for r in cols]))
        print(line("  seconds in them", [f"{r.callback_seconds.get(what, 0.0):.2f}" for r in cols],
                   [_ratio(aimet.callback_seconds.get(what), r.callback_seconds.get(what)) for _, r in ratios]))
    print(line("scores FP32/W/A %", ["/".join("-" if s is None else f"{s:.1f}" for s in (r.scores or ()))
                                     for r in cols]))
    print()
    w = 18
    head = line("files", [r.name for r in cols], [f"bytes {name}" for name, _ in ratios], width=w)
    print(head)
    print("-" * len(head))
    for kind in ("JSON", "HTML", "other", "total"):
        if kind == "total":
            print("-" * len(head))
        print(line(kind, [f"{r.files[kind][0]} ({_size(r.files[kind][1])})" for r in cols],
                   [_ratio(aimet.files[kind][1], r.files[kind][1]) for _, r in ratios], width=w))
    print("(other: qa's dashboard assets, _static/*.js|css)")


def make_case(kind: str, width: int, eval_images: int) -> Tuple[nn.Module, Callbacks, List[torch.Tensor]]:
    """The model, the callbacks on its data and the per-layer MSE batches."""
    model = make_model(kind, width)
    calib = [images(1000 + i, 32) for i in range(4)]
    evaluation = [images(2000 + i, min(64, eval_images - i)) for i in range(0, eval_images, 64)]
    with torch.no_grad():
        reference = [model(x).argmax(1) for x in evaluation]
    return model, Callbacks(calib, evaluation, reference), calib[:2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("resnet18", "small"), default="resnet18")
    ap.add_argument("--width", type=int, default=None, help="base channel width (resnet18: 64, small: 8)")
    ap.add_argument("--eval-images", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=1, help="analyze runs per tool; the median per stage")
    ap.add_argument("--skip-aimet", action="store_true")
    ap.add_argument("--skip-compat", action="store_true", help="no qa aimet_compat=True column")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the untimed run of each tool on the small model (first-use costs: imports, "
                         "tracing, the report's chart renderer)")
    ap.add_argument("--keep", metavar="DIR", help="write the results folders here (default: a temporary folder)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    width = args.width or (64 if args.model == "resnet18" else 8)
    model, cb, mse_batches = make_case(args.model, width, args.eval_images)

    aimet = None
    if not args.skip_aimet:
        try:
            aimet = import_aimet()
        except ImportError as e:
            print(f"AIMET not installed ({e}): qa's side only. To compare, install aimet-torch==2.42.0 and qa in "
                  f"one venv (this script's docstring has the steps).")
    compat = (not args.skip_compat
              and "aimet_compat" in inspect.signature(qa.QuantAnalyzer.analyze).parameters)
    params = sum(p.numel() for p in model.parameters())
    print(f"AIMET QuantAnalyzer vs qa: {args.model} (width {width}, {params / 1e6:.2f} M parameters), "
          f"W8A8 tf_enhanced, default configs; calibration {len(cb.calib)}x32, evaluation {args.eval_images} "
          f"images, per-layer MSE {len(mse_batches)}x32; {torch.get_num_threads()} torch threads; "
          f"qa {qa.__version__}" + (f", aimet_torch {_aimet_version()}" if aimet else "")
          + (f"; median of {args.repeat}" if args.repeat > 1 else "")
          + f"; load average {os.getloadavg()[0]:.2f}", flush=True)

    tools: List[Tuple[str, Callable[..., Run]]] = [("qa", lambda *a: run_qa(*a, aimet_compat=False))]
    if compat:
        tools.append(("qa compat", lambda *a: run_qa(*a, aimet_compat=True)))
    if aimet:
        tools.append(("AIMET", lambda *a: run_aimet(*a, aimet)))
    with (contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory()) as root:
        os.makedirs(root, exist_ok=True)
        if not args.no_warmup:
            small = make_case("small", 8, 64)
            with tempfile.TemporaryDirectory() as scratch:
                for _, fn in tools:
                    fn(*small, scratch)
        runs: Dict[str, Run] = {}
        for name, fn in tools:
            repeats = []
            for i in range(args.repeat):
                t = time.perf_counter()
                print(f"  {name}: analyze {i + 1}/{args.repeat} ...", end="", file=sys.stderr, flush=True)
                repeats.append(fn(model, cb, mse_batches, os.path.join(root, str(i))))
                print(f" {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
            runs[name] = median_run(repeats)
        print()
        print_table(runs.get("AIMET"), [r for n, r in runs.items() if n != "AIMET"])
        load = os.getloadavg()
        print(f"load average at the end: {load[0]:.2f} (1 min), {load[2]:.2f} (15 min); well above "
              f"{os.cpu_count()} (the cores) means something else ran meanwhile and the ratios are not reliable")
        if args.keep:
            print(f"\nresults folders under {os.path.abspath(root)}")


def _aimet_version() -> str:
    try:
        from importlib.metadata import version
        return version("aimet-torch")
    except Exception:
        return "?"


if __name__ == "__main__":
    main()
