"""Record golden numbers from the real Qualcomm AIMET (aimet-torch 2.42.0) for qa's parity mode.

AIMET is NOT a dependency of qa. This script runs once, by hand, in a separate virtual environment
and writes ``tests/data/aimet/golden.json``; qa's tests only read that file (and regenerate the
inputs from the numpy recipes stored in it, no torch RNG involved).

How to rerun (CPU only, ~2-4 minutes on 2 cores)::

    python3 -m venv /work/aimet-venv && . /work/aimet-venv/bin/activate
    pip install torch==2.13.0                      # CPU wheel (+cpu local build)
    pip install --no-deps torchvision==0.28.0      # CUDA-built wheel; see the import workaround below
    pip install --no-deps aimet-torch==2.42.0      # pure-python wheel (py310-none-any)
    pip install Jinja2 PyYAML "bokeh>=3.3.0,<=3.6.3" cvxpy holoviews "hvplot>=0.10.0" jsonschema \
        "matplotlib>=3" networkx numpy onnx "onnx_ir>=0.1.16" "onnxscript>=0.2.0" osqp pandas psutil \
        pybind11 safetensors scikit-learn scipy tensorboard tqdm onnxruntime
    python benchmarks/aimet_golden.py [--out tests/data/aimet/golden.json]

Import workaround: the torchvision 0.28.0 wheel on PyPI is built against CUDA, so its ``_C.so``
fails to load (libc10_cuda.so missing) and is silently skipped; ``torchvision/_meta_registrations.py``
then calls ``torch.library.register_fake("torchvision::nms")`` (and ``qnms``) unconditionally and
raises "operator torchvision::nms does not exist". aimet_torch imports torchvision, so we define
the two op schemas (schema only, no kernel) before anything imports torchvision. Nothing else is
needed; no torchvision op is ever executed.

Sections written (see NOTES.md next to golden.json for the algorithms):
  A. ``encodings``: encodings of fixed tensors for tf / tf_enhanced / percentile(100, 99.9),
     bitwidth 8 and 4, symmetric and asymmetric, per-tensor and per-channel, read from a
     QuantizationSimModel (one layer per tensor) after ``sim.compute_encodings`` and from
     ``sim.export``; ``fake_quant``: fake-quantized values; ``multi_batch``: 3-batch calibration.
  B. ``model``: QuantAnalyzer on a small CNN (W8A8 tf_enhanced, W4A8 tf_enhanced, W8A8 tf).
  C. ``configs``: config-file aliases, summaries of "default" and "htp_v73", all keys used.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

# --------------------------------------------------------------------------------------------
# Import workaround (see module docstring). Must run before torchvision / aimet_torch import.
# --------------------------------------------------------------------------------------------
import torch

_TV_STUB = torch.library.Library("torchvision", "DEF")  # keep a reference: the lib dies with it
_TV_STUB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_TV_STUB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

import aimet_torch  # noqa: E402
import aimet_torch.common.quantsim as aimet_common_quantsim  # noqa: E402
from aimet_torch.common.defs import CallbackFunc, QuantScheme  # noqa: E402
from aimet_torch.common.quantsim_config.quantsim_config import _config_file_aliases  # noqa: E402
from aimet_torch.nn.modules.custom import Add  # noqa: E402
from aimet_torch.quant_analyzer import QuantAnalyzer  # noqa: E402
from aimet_torch.quantsim import QuantizationSimModel  # noqa: E402
from aimet_torch.utils import _decompose_prequantized_tensor  # noqa: E402

nn = torch.nn
torch.set_num_threads(2)

AIMET_VERSION = "2.42.0"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "tests", "data", "aimet", "golden.json")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def f32(x) -> float:
    """A float32 value as a JSON-able Python float (round-trips exactly to the same float32)."""
    return float(np.float32(x))


def flist(t) -> list:
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return [f32(v) for v in np.asarray(a, dtype=np.float32).ravel()]


def ilist(t) -> list:
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return [int(v) for v in np.asarray(a).ravel()]


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def run_recipe(seed: int, code: str) -> np.ndarray:
    """Executes a numpy recipe. ``rng = np.random.default_rng(seed)``; the code sets ``x``."""
    env = {"np": np, "rng": np.random.default_rng(seed)}
    exec(code, env)  # noqa: S102 - our own constant strings
    x = np.ascontiguousarray(env["x"], dtype=np.float32)
    return x


def write_config(path: str, symmetric: bool, per_channel: bool):
    """A config in the classic schema: act + param symmetry and per-channel switched together."""
    s = "True" if symmetric else "False"
    cfg = {
        "defaults": {
            "ops": {"is_output_quantized": "True", "is_symmetric": s},
            "params": {"is_quantized": "True", "is_symmetric": s},
            "strict_symmetric": "False",
            "unsigned_symmetric": "False",
            "per_channel_quantization": "True" if per_channel else "False",
        },
        "params": {"bias": {"is_quantized": "False"}},
        "op_type": {},
        "supergroups": [],
        "model_input": {"is_input_quantized": "True"},
        "model_output": {},
    }
    with open(path, "w") as f:
        json.dump(cfg, f)
    return cfg


SCHEMES = [  # (label, QuantScheme, percentile value or None)
    ("tf", QuantScheme.post_training_tf, None),
    ("tf_enhanced", QuantScheme.post_training_tf_enhanced, None),
    ("percentile", QuantScheme.post_training_percentile, None),  # AIMET default percentile (100)
    ("percentile", QuantScheme.post_training_percentile, 99.9),
]


def make_sim(model, dummy, scheme, bw_param, bw_act, config_file, percentile):
    sim = QuantizationSimModel(
        model,
        dummy,
        quant_scheme=scheme,
        default_output_bw=bw_act,
        default_param_bw=bw_param,
        config_file=config_file,
    )
    if percentile is not None:
        sim.set_percentile_value(percentile)
    return sim


def quantizer_record(q) -> dict:
    enc = q.get_encodings()
    rec = {
        "qmin": int(q.qmin),
        "qmax": int(q.qmax),
        "shape": list(q.shape),
        "raw_min": flist(q.min),  # the quantizer's min/max parameters as set by calibration
        "raw_max": flist(q.max),
        "min": flist(enc.min),  # scale * (offset + qmin), what forward and export use
        "max": flist(enc.max),
        "scale": flist(enc.scale),
        "offset": ilist(enc.offset),  # AIMET-internal: q = clamp(round(x/scale) - offset, qmin, qmax)
        "legacy_offset": ilist(enc.offset + enc.qmin),  # 'offset' field of 0.6.1 / torch encodings
    }
    return rec


def export_sim(sim, dummy, tmp, prefix):
    """sim.export (encoding version 1.0.0, AIMET's default); returns (.encodings, _torch.encodings, onnx)."""
    import onnx

    os.makedirs(tmp, exist_ok=True)
    sim.export(tmp, prefix, dummy)
    with open(os.path.join(tmp, prefix + ".encodings")) as f:
        enc = json.load(f)
    with open(os.path.join(tmp, prefix + "_torch.encodings")) as f:
        tenc = json.load(f)
    om = onnx.load(os.path.join(tmp, prefix + ".onnx"))
    return enc, tenc, om


def slim_export_entry(e: dict) -> dict:
    out = {k: e[k] for k in ("bw", "dtype", "enc_type", "is_sym", "offset", "scale") if k in e}
    out["scale"] = [f32(v) for v in out["scale"]]
    return out


# --------------------------------------------------------------------------------------------
# Part A: fixed tensors
# --------------------------------------------------------------------------------------------
# Every tensor: x = <code> with rng = np.random.default_rng(seed), then x.astype(float32).
TENSORS = {
    "gauss": (101, "x = rng.standard_normal((8, 64)).astype(np.float32)"),
    "gauss_outliers": (
        102,
        "x = rng.standard_normal((8, 64)).astype(np.float32)\n"
        "x.flat[[3, 77, 200, 411]] = np.array([12.5, -9.0, 20.0, -15.25], np.float32)",
    ),
    "relu_like": (103, "x = np.maximum(rng.normal(-0.3, 1.0, (8, 64)), 0.0).astype(np.float32)"),
    "constant": (104, "x = np.full((8, 64), 0.7, np.float32)"),
    "tiny": (105, "x = (rng.standard_normal((8, 64)) * 1e-8).astype(np.float32)"),
    "narrow_offset": (106, "x = (0.5 + 1e-4 * rng.standard_normal((8, 64))).astype(np.float32)"),
    # rounding probe: exact multiples of 1/64 plus half steps; range pinned to [-2, 127/64]
    # so that 8-bit tf encodings (asym and sym) have scale exactly 1/64.
    "halfway": (
        107,
        "k = (np.arange(512) % 255) - 128\n"
        "x = ((k + 0.5) / 64.0).astype(np.float32).reshape(8, 64)\n"
        "x.flat[0] = -2.0\n"
        "x.flat[1] = 127.0 / 64.0",
    ),
    # 4-D conv weight (8,3,3,3): per-channel scales differ; ch5 has an outlier, ch6 is all zero,
    # ch7 is all positive.
    "conv_w": (
        108,
        "s = np.array([0.05, 0.1, 0.2, 0.5, 1.0, 0.3, 0.0, 0.7], np.float32)\n"
        "x = (rng.standard_normal((8, 3, 3, 3)) * s[:, None, None, None]).astype(np.float32)\n"
        "x[5, 0, 1, 1] = 4.0\n"
        "x[7] = np.abs(x[7])",
    ),
    # 2-D linear weight (10,32): row 3 has an outlier, row 9 is constant 0.25
    "linear_w": (
        109,
        "x = (rng.standard_normal((10, 32)) * 0.1).astype(np.float32)\n"
        "x[3, 7] = -2.0\n"
        "x[9] = 0.25",
    ),
}
ACT_TENSORS = ["gauss", "gauss_outliers", "relu_like", "constant", "tiny", "narrow_offset", "halfway"]
W_TENSORS = ACT_TENSORS + ["conv_w", "linear_w"]
FEED_SEEDS = {"feed_w": 110, "feed_conv": 111, "feed_lin": 112, "act_layer_weights": 113}


def build_tensors():
    return {k: run_recipe(seed, code) for k, (seed, code) in TENSORS.items()}


class PartAModel(nn.Module):
    """One Linear per activation tensor (the tensor is a model input, so the Linear's input
    quantizer sees it unchanged) and one Linear/Conv per weight tensor (the tensor is its weight)."""

    def __init__(self, t):
        super().__init__()
        rng = np.random.default_rng(FEED_SEEDS["act_layer_weights"])
        for name in ACT_TENSORS:
            lin = nn.Linear(64, 2, bias=False)
            lin.weight.data = torch.from_numpy(rng.standard_normal((2, 64)).astype(np.float32) * 0.1)
            setattr(self, "act_" + name, lin)
        for name in ACT_TENSORS:
            lin = nn.Linear(64, 8, bias=False)
            lin.weight.data = torch.from_numpy(t[name].copy())
            setattr(self, "w_" + name, lin)
        self.w_conv_w = nn.Conv2d(3, 8, 3, bias=False)
        self.w_conv_w.weight.data = torch.from_numpy(t["conv_w"].copy())
        self.w_linear_w = nn.Linear(32, 10, bias=False)
        self.w_linear_w.weight.data = torch.from_numpy(t["linear_w"].copy())

    def forward(self, *xs):
        acts = xs[: len(ACT_TENSORS)]
        feed_w, feed_conv, feed_lin = xs[len(ACT_TENSORS) :]
        outs = [getattr(self, "act_" + n)(x) for n, x in zip(ACT_TENSORS, acts)]
        outs += [getattr(self, "w_" + n)(feed_w) for n in ACT_TENSORS]
        outs.append(self.w_conv_w(feed_conv))
        outs.append(self.w_linear_w(feed_lin))
        return tuple(outs)


def part_a_inputs(t):
    feed_w = run_recipe(FEED_SEEDS["feed_w"], "x = rng.standard_normal((2, 64))")
    feed_conv = run_recipe(FEED_SEEDS["feed_conv"], "x = rng.standard_normal((2, 3, 6, 6))")
    feed_lin = run_recipe(FEED_SEEDS["feed_lin"], "x = rng.standard_normal((2, 32))")
    xs = [torch.from_numpy(t[n].copy()) for n in ACT_TENSORS]
    xs += [torch.from_numpy(a) for a in (feed_w, feed_conv, feed_lin)]
    return tuple(xs)


FQ_ACTS = ["gauss_outliers", "halfway"]
FQ_WEIGHTS = ["conv_w", "halfway"]


def fake_quant_record(q, x: torch.Tensor) -> dict:
    with torch.no_grad():
        fast = q(x).as_subclass(torch.Tensor).detach().clone()  # torch.fake_quantize_* path
    with torch.enable_grad():
        slow = q(x).as_subclass(torch.Tensor).detach().clone()  # autograd path: round(x / scale)
    f = fast.numpy().astype(np.float64).ravel()
    return {
        "first64": flist(fast.ravel()[:64]),
        "sum": float(f.sum()),
        "sumsq": float((f * f).sum()),
        "num_elements": int(f.size),
        "slow_path_mismatches": int((fast != slow).sum()),
    }


def decomposes(param: np.ndarray, q) -> bool:
    try:
        _decompose_prequantized_tensor(
            torch.from_numpy(param), q.qmin, q.qmax, scale_shape=tuple(q.shape), block_size=None
        )
        return True
    except Exception:  # noqa: BLE001 - AIMET raises its private _DecompositionError
        return False


def part_a(tmp):
    t = build_tensors()
    xs = part_a_inputs(t)
    cases, fq_cases = [], []
    for per_channel in (False, True):
        for symmetric in (False, True):
            cfg_path = os.path.join(tmp, f"cfg_sym{int(symmetric)}_pc{int(per_channel)}.json")
            write_config(cfg_path, symmetric, per_channel)
            for bw in (8, 4):
                for label, scheme, pct in SCHEMES:
                    model = PartAModel(t).eval()
                    sim = make_sim(model, xs, scheme, bw, bw, cfg_path, pct)
                    with torch.no_grad():
                        sim.compute_encodings(lambda m: m(*xs))
                    prefix = f"a_{label}_{pct}_{bw}_{int(symmetric)}_{int(per_channel)}"
                    enc, _, om = export_sim(sim, xs, os.path.join(tmp, prefix), prefix)
                    # map module -> onnx activation input name through its weight initializer
                    act_name_of = {}
                    for node in om.graph.node:
                        for n in ACT_TENSORS:
                            if ("act_" + n + ".weight") in node.input:
                                act_name_of[n] = node.input[0]
                    act_exp = {e["name"]: e for e in enc["activation_encodings"]}
                    par_exp = {e["name"]: e for e in enc["param_encodings"]}
                    common = {
                        "scheme": label,
                        "percentile": 100.0 if (label == "percentile" and pct is None) else pct,
                        "bitwidth": bw,
                        "symmetric": symmetric,
                    }
                    if not per_channel:  # activations do not depend on the per-channel switch
                        for n in ACT_TENSORS:
                            q = getattr(sim.model, "act_" + n).input_quantizers[0]
                            rec = {"tensor": n, "role": "activation", **common,
                                   "granularity": "per_tensor", "axis": None}
                            rec.update(quantizer_record(q))
                            e = act_exp.get(act_name_of.get(n))
                            rec["export_1_0_0"] = slim_export_entry(e) if e else None
                            cases.append(rec)
                            if n in FQ_ACTS:
                                fq_cases.append({"tensor": n, "role": "activation", **common,
                                                 "granularity": "per_tensor",
                                                 **fake_quant_record(q, torch.from_numpy(t[n]))})
                    for n in W_TENSORS:
                        mod = getattr(sim.model, "w_" + n)
                        q = mod.param_quantizers["weight"]
                        rec = {"tensor": n, "role": "weight", **common,
                               "granularity": "per_channel" if per_channel else "per_tensor",
                               "axis": 0 if per_channel else None}
                        rec.update(quantizer_record(q))
                        rec["prequantized_decomposition"] = bool(symmetric and decomposes(t[n], q))
                        # Linear/Conv re-adjust the weight scale when they exit compute_encodings
                        # (bias / requant-scale overflow protection) and re-set the range from
                        # the encoding grid. Record the plain calibration result too, and the
                        # scales that adjustment used.
                        m2 = copy.deepcopy(mod)
                        m2._compute_param_encodings(overwrite=True)
                        rec["before_overflow_protection"] = quantizer_record(
                            m2.param_quantizers["weight"])
                        iq, oq = mod.input_quantizers[0], mod.output_quantizers[0]
                        rec["module_input_encoding"] = {
                            "scale": flist(iq.get_encodings().scale),
                            "offset": ilist(iq.get_encodings().offset)} if iq is not None else None
                        rec["module_output_encoding"] = {
                            "scale": flist(oq.get_encodings().scale),
                            "offset": ilist(oq.get_encodings().offset)} if oq is not None else None
                        e = par_exp.get("w_" + n + ".weight")
                        rec["export_1_0_0"] = slim_export_entry(e) if e else None
                        cases.append(rec)
                        if n in FQ_WEIGHTS:
                            fq_cases.append({"tensor": n, "role": "weight", **common,
                                             "granularity": rec["granularity"],
                                             **fake_quant_record(q, mod.weight.detach())})
                    print(f"[A] {prefix}", flush=True)
    return t, cases, fq_cases


# --------------------------------------------------------------------------------------------
# Part A (multi-batch): 3 calibration batches of different ranges
# --------------------------------------------------------------------------------------------
MB_BATCHES = {
    "b1": (201, "x = rng.standard_normal((8, 64))"),
    "b2": (202, "x = 6.0 * rng.standard_normal((8, 64))"),
    "b3": (203, "x = np.maximum(rng.normal(0.2, 0.5, (8, 64)), 0.0)"),
}


class OneLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 2, bias=False)
        rng = np.random.default_rng(FEED_SEEDS["act_layer_weights"])
        self.lin.weight.data = torch.from_numpy(rng.standard_normal((2, 64)).astype(np.float32) * 0.1)

    def forward(self, x):
        return self.lin(x)


def part_a_multibatch(tmp):
    batches = [torch.from_numpy(run_recipe(s, c)) for s, c in MB_BATCHES.values()]
    concat = torch.cat(batches, 0)
    out, hist = [], {}
    for symmetric in (False, True):
        cfg_path = os.path.join(tmp, f"cfg_mb_sym{int(symmetric)}.json")
        write_config(cfg_path, symmetric, False)
        for bw in (8, 4):
            for label, scheme, pct in SCHEMES:
                for mode in ("three_batches", "one_concatenated_batch"):
                    sim = make_sim(OneLinear().eval(), batches[0], scheme, bw, bw, cfg_path, pct)

                    def fwd(m, _mode=mode):
                        if _mode == "three_batches":
                            for b in batches:
                                m(b)
                        else:
                            m(concat)

                    with torch.no_grad():
                        sim.compute_encodings(fwd)
                    q = sim.model.lin.input_quantizers[0]
                    rec = {"mode": mode, "scheme": label,
                           "percentile": 100.0 if (label == "percentile" and pct is None) else pct,
                           "bitwidth": bw, "symmetric": symmetric}
                    rec.update(quantizer_record(q))
                    out.append(rec)
                    if mode == "three_batches" and bw == 8 and not symmetric and pct is None \
                            and label in ("tf_enhanced", "percentile"):
                        st = q.encoding_analyzer.observer.get_stats()[0]
                        hist[label] = {
                            "num_bins": int(st.histogram.numel()),
                            "first_edge": f32(st.bin_edges[0]),
                            "last_edge": f32(st.bin_edges[-1]),
                            "stats_min": f32(st.min),
                            "stats_max": f32(st.max),
                            "counts": [int(round(float(c))) for c in st.histogram],
                            "counts_are_integers": bool(torch.all(st.histogram == st.histogram.round())),
                        }
    print("[A] multi-batch done", flush=True)
    return {
        "batches": {k: {"seed": s, "code": c, "shape": [8, 64]} for k, (s, c) in MB_BATCHES.items()},
        "order": ["b1", "b2", "b3"],
        "cases": out,
        "final_histograms_8bit_asym": hist,
    }


# --------------------------------------------------------------------------------------------
# Part B: small model + QuantAnalyzer
# --------------------------------------------------------------------------------------------
class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.add = Add()  # aimet_torch.nn.modules.custom.Add: forward(x, y) = x + y
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, 10)

    def forward(self, x):
        y1 = self.relu1(self.bn1(self.conv1(x)))
        y2 = self.bn2(self.conv2(y1))
        z = self.relu2(self.add(y2, y1))
        return self.fc(self.flatten(self.pool(z)))


# name -> (seed, code); shapes implied by the code. Applied in this order.
SMALLNET_PARAMS = {
    "conv1.weight": (301, "x = rng.standard_normal((8, 3, 3, 3)) * np.sqrt(2.0 / 27)"),
    "conv1.bias": (302, "x = rng.standard_normal(8) * 0.05"),
    "bn1.weight": (303, "x = rng.uniform(0.5, 1.5, 8)"),
    "bn1.bias": (304, "x = rng.standard_normal(8) * 0.1"),
    "bn1.running_mean": (305, "x = rng.standard_normal(8) * 0.1"),
    "bn1.running_var": (306, "x = rng.uniform(0.5, 2.0, 8)"),
    "conv2.weight": (307, "x = rng.standard_normal((8, 8, 3, 3)) * np.sqrt(2.0 / 72)"),
    "conv2.bias": (308, "x = rng.standard_normal(8) * 0.05"),
    "bn2.weight": (309, "x = rng.uniform(0.5, 1.5, 8)"),
    "bn2.bias": (310, "x = rng.standard_normal(8) * 0.1"),
    "bn2.running_mean": (311, "x = rng.standard_normal(8) * 0.1"),
    "bn2.running_var": (312, "x = rng.uniform(0.5, 2.0, 8)"),
    "fc.weight": (313, "x = rng.standard_normal((10, 512)) / np.sqrt(512.0)"),
    "fc.bias": (314, "x = rng.standard_normal(10) * 0.05"),
}
CALIB_RECIPE = "x = rng.standard_normal((8, 3, 16, 16))"  # seeds 1000..1003
EVAL_RECIPE = "x = rng.standard_normal((64, 3, 16, 16))"  # seed 2000
CALIB_SEEDS = [1000, 1001, 1002, 1003]
EVAL_SEED = 2000
MSE_NUM_BATCHES = 2


def build_smallnet():
    m = SmallNet()
    sd = m.state_dict()
    for k, (seed, code) in SMALLNET_PARAMS.items():
        v = run_recipe(seed, code)
        assert tuple(v.shape) == tuple(sd[k].shape), k
        sd[k] = torch.from_numpy(v)
    m.load_state_dict(sd)
    return m.eval()


def placement(sim) -> dict:
    def qinfo(q):
        if q is None:
            return None
        return {"bitwidth": int(q.bitwidth), "symmetric": bool(q.symmetric), "shape": list(q.shape),
                "qmin": int(q.qmin), "qmax": int(q.qmax),
                "analyzer": type(q.encoding_analyzer).__name__}

    out = {}
    for name, mod in sim.model.named_modules():
        if not hasattr(mod, "param_quantizers"):
            continue
        out[name] = {
            "type": type(mod).__name__,
            "input_quantizers": [qinfo(q) for q in mod.input_quantizers],
            "output_quantizers": [qinfo(q) for q in mod.output_quantizers],
            "param_quantizers": {k: qinfo(q) for k, q in mod.param_quantizers.items()},
        }
    return out


def all_quantizer_encodings(sim) -> dict:
    out = {}
    for name, mod in sim.model.named_modules():
        if not hasattr(mod, "param_quantizers"):
            continue
        for i, q in enumerate(mod.input_quantizers):
            if q is not None:
                out[f"{name}.input.{i}"] = quantizer_record(q)
        for i, q in enumerate(mod.output_quantizers):
            if q is not None:
                out[f"{name}.output.{i}"] = quantizer_record(q)
        for k, q in mod.param_quantizers.items():
            if q is not None:
                out[f"{name}.{k}"] = quantizer_record(q)
    return out


def collect_outputs(model, names, x):
    outs, hooks = {}, []
    mods = dict(model.named_modules())
    for n in names:
        hooks.append(mods[n].register_forward_hook(
            lambda m, i, o, _n=n: outs.__setitem__(_n, o.as_subclass(torch.Tensor).detach().clone())))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return outs


def part_b_run(tag, scheme, param_bw, output_bw, config_file, calib, eval_x, ref_pred, ref_logits, tmp):
    model = build_smallnet()
    eval_log = []
    phase = {"name": "?"}

    def eval_fn(m, _args=None):
        with torch.no_grad():
            logits = m(eval_x).as_subclass(torch.Tensor)
        agree = float((logits.argmax(1) == ref_pred).float().mean().item() * 100.0)
        eval_log.append({"phase": phase["name"], "top1_agreement_pct": agree,
                         "logits_mse": float(torch.mean((logits - ref_logits) ** 2).item())})
        return agree

    def calib_fn(m, batches):
        with torch.no_grad():
            for b in batches:
                m(b)

    qa = QuantAnalyzer(model, calib[0], CallbackFunc(calib_fn, calib), CallbackFunc(eval_fn, None))
    qa.enable_per_layer_mse_loss(calib, MSE_NUM_BATCHES)
    captured = {}
    orig_create = qa._create_quantsim_and_encodings
    orig_sens = qa.check_model_sensitivity_to_quantization
    orig_en = qa.perform_per_layer_analysis_by_enabling_quant_wrappers
    orig_dis = qa.perform_per_layer_analysis_by_disabling_quant_wrappers

    def create(*a, **k):
        sim = orig_create(*a, **k)
        captured["sim"] = sim
        return sim

    def sens(sim):
        phase["name"] = "sensitivity(fp32, weight_only, act_only)"
        captured["sensitivity"] = orig_sens(sim)
        return captured["sensitivity"]

    def en(sim, d):
        phase["name"] = "per_layer_quant_enabled"
        return orig_en(sim, d)

    def dis(sim, d):
        phase["name"] = "per_layer_quant_disabled"
        return orig_dis(sim, d)

    qa._create_quantsim_and_encodings = create
    qa.check_model_sensitivity_to_quantization = sens
    qa.perform_per_layer_analysis_by_enabling_quant_wrappers = en
    qa.perform_per_layer_analysis_by_disabling_quant_wrappers = dis

    results_dir = os.path.join(tmp, "qa_" + tag)
    t0 = time.time()
    qa.analyze(quant_scheme=scheme, default_param_bw=param_bw, default_output_bw=output_bw,
               config_file=config_file, results_dir=results_dir)
    wall = time.time() - t0
    sim = captured["sim"]

    files = {}
    for rel in ("per_layer_quant_enabled.json", "per_layer_quant_disabled.json",
                "per_layer_mse_loss.json", "min_max_ranges/weights.json",
                "min_max_ranges/activations.json"):
        p = os.path.join(results_dir, rel)
        files[rel] = json.load(open(p)) if os.path.exists(p) else None
    listing = sorted(os.path.relpath(os.path.join(r, f), results_dir)
                     for r, _, fs in os.walk(results_dir) for f in fs)

    phase["name"] = "full_quantized (W+A, this script)"
    full_score = eval_fn(sim.model)

    # exported encodings
    enc, tenc, om = export_sim(sim, calib[0], os.path.join(tmp, "exp_" + tag), "smallnet")
    old_ver = aimet_common_quantsim.encoding_version
    aimet_common_quantsim.encoding_version = "0.6.1"
    try:
        enc061, _, _ = export_sim(sim, calib[0], os.path.join(tmp, "exp061_" + tag), "smallnet")
    finally:
        aimet_common_quantsim.encoding_version = old_ver

    # per-layer MSE convention check: recompute per-batch means with hooks
    fp32_model = model  # QuantAnalyzer folded the BNs of this very model in place
    names = list(files["per_layer_mse_loss.json"].keys()) if files["per_layer_mse_loss.json"] else []
    per_batch = {n: [] for n in names}
    total = 0
    for b in calib[:MSE_NUM_BATCHES]:
        fo = collect_outputs(fp32_model, names, b)
        qo = collect_outputs(sim.model, names, b)
        for n in names:
            per_batch[n].append(float(torch.nn.functional.mse_loss(fo[n], qo[n]).item()))
        total += b.shape[0]
    mse_check = {
        n: {"per_batch_mean_mse": per_batch[n],
            "sum_of_batch_means_over_num_samples": sum(per_batch[n]) / total,
            "mean_of_batch_means": sum(per_batch[n]) / len(per_batch[n]),
            "aimet_value": files["per_layer_mse_loss.json"][n]}
        for n in names
    }

    # calibration with/without quantization upstream: compare a tf (min-max) activation encoding
    fp32_types = {n: type(m).__name__ for n, m in model.named_modules() if n}
    folded = {k: flist(v) for k, v in model.state_dict().items()
              if k.startswith(("conv1.", "conv2."))}

    rec = {
        "quant_scheme": {QuantScheme.post_training_tf: "tf",
                         QuantScheme.post_training_tf_enhanced: "tf_enhanced"}[scheme],
        "default_param_bw": param_bw,
        "default_output_bw": output_bw,
        "config_file": config_file,
        "scores": {
            "fp32": captured["sensitivity"][0],
            "weight_quantized_only": captured["sensitivity"][1],
            "activation_quantized_only": captured["sensitivity"][2],
            "full_quantized": full_score,
        },
        "eval_log": eval_log,
        "analyzer_files": files,
        "results_dir_listing": listing,
        "placement": placement(sim),
        "sim_model_children_types": {n: type(m).__name__ for n, m in sim.model.named_children()},
        "quantizer_encodings": all_quantizer_encodings(sim),
        "export_1_0_0": {k: enc[k] for k in ("activation_encodings", "param_encodings",
                                             "excluded_layers", "quantizer_args", "version")},
        "export_0_6_1": {k: enc061[k] for k in ("activation_encodings", "param_encodings")},
        "export_torch_encodings": {k: tenc[k] for k in ("activation_encodings", "param_encodings")},
        "onnx_nodes": [{"op": n.op_type, "name": n.name, "inputs": list(n.input),
                        "outputs": list(n.output)} for n in om.graph.node],
        "mse_check": mse_check,
        "fp32_model_module_types_after_analyze": fp32_types,
        "folded_fp32_conv_params": folded,
        "wall_s": wall,
    }
    return rec, sim, model


def calibration_probe(sim, model, calib) -> dict:
    """For the tf (min-max) run: which forward produced the activation min/max AIMET stored?
    Candidates: (a) FP32 folded model, (b) folded model with quantized weights only,
    (c) sim.model with everything quantized (after calibration)."""
    names = [n for n, m in sim.model.named_modules()
             if hasattr(m, "output_quantizers") and any(q is not None for q in m.output_quantizers)]
    res = {}
    for n in names:
        q = [q for q in dict(sim.model.named_modules())[n].output_quantizers if q is not None][0]
        cand = {}
        # (a) FP32
        mins, maxs = [], []
        for b in calib:
            o = collect_outputs(model, [n], b)[n]
            mins.append(o.min().item())
            maxs.append(o.max().item())
        cand["fp32"] = (min(mins), max(maxs))
        # (b) weights quantized, activations not
        ctx = contextlib.ExitStack()
        for m in sim.model.modules():
            if hasattr(m, "_remove_activation_quantizers"):
                ctx.enter_context(m._remove_activation_quantizers())
        with ctx:
            mins, maxs = [], []
            for b in calib:
                o = collect_outputs(sim.model, [n], b)[n]
                mins.append(o.min().item())
                maxs.append(o.max().item())
        cand["weights_quantized_only"] = (min(mins), max(maxs))
        raw = (q.min.item(), q.max.item())
        res[n] = {
            "aimet_raw_min_max": [f32(raw[0]), f32(raw[1])],
            **{k: [f32(v[0]), f32(v[1])] for k, v in cand.items()},
            "matches": [k for k, v in cand.items()
                        if abs(f32(min(v[0], 0.0)) - f32(raw[0])) <= 1e-6 * max(1, abs(raw[0]))
                        and abs(f32(max(v[1], 0.0)) - f32(raw[1])) <= 1e-6 * max(1, abs(raw[1]))],
        }
    return res


def part_b(tmp):
    calib = [torch.from_numpy(run_recipe(s, CALIB_RECIPE)) for s in CALIB_SEEDS]
    eval_x = torch.from_numpy(run_recipe(EVAL_SEED, EVAL_RECIPE))
    ref_model = build_smallnet()
    with torch.no_grad():
        ref_logits = ref_model(eval_x)
    ref_pred = ref_logits.argmax(1)
    runs = {}
    probe = None
    for tag, scheme, pbw, obw, cfg in (
        ("w8a8_tf_enhanced_default", QuantScheme.post_training_tf_enhanced, 8, 8, None),
        ("w4a8_tf_enhanced_default", QuantScheme.post_training_tf_enhanced, 4, 8, None),
        ("w8a8_tf_default", QuantScheme.post_training_tf, 8, 8, None),
        ("w8a8_tf_enhanced_htp_v73", QuantScheme.post_training_tf_enhanced, 8, 8, "htp_v73"),
    ):
        rec, sim, model = part_b_run(tag, scheme, pbw, obw, cfg, calib, eval_x, ref_pred,
                                     ref_logits, tmp)
        runs[tag] = rec
        if tag == "w8a8_tf_default":
            probe = calibration_probe(sim, model, calib)
        print(f"[B] {tag}: {rec['scores']}", flush=True)
    return {
        "architecture": (
            "x -> conv1(3->8,3x3,pad1) -> bn1 -> relu1 = y1; y1 -> conv2(8->8,3x3,pad1) -> bn2 = y2; "
            "z = relu2(add(y2, y1)); out = fc(flatten(pool(z))) with pool=MaxPool2d(2), fc=Linear(512,10). "
            "'add' is aimet_torch.nn.modules.custom.Add (forward(x, y) = x + y)."
        ),
        "module_order": ["conv1", "bn1", "relu1", "conv2", "bn2", "add", "relu2", "pool",
                         "flatten", "fc"],
        "param_recipes": {k: {"seed": s, "code": c} for k, (s, c) in SMALLNET_PARAMS.items()},
        "param_recipe_note": "x = <code> with rng = np.random.default_rng(seed), cast to float32, "
                             "loaded via state_dict (BN eps=1e-5, eval mode).",
        "calibration": {"seeds": CALIB_SEEDS, "code": CALIB_RECIPE,
                        "note": "4 batches of 8; forward_pass_callback runs all 4 under no_grad"},
        "eval": {"seed": EVAL_SEED, "code": EVAL_RECIPE,
                 "score": "top-1 agreement (%) of argmax(model(eval_x)) with argmax of the "
                          "unfolded FP32 model on the same 64 images",
                 "fp32_reference_argmax": ilist(ref_pred)},
        "per_layer_mse": {"dataset": "the 4 calibration batches", "num_batches": MSE_NUM_BATCHES},
        "runs": runs,
        "calibration_probe_w8a8_tf": probe,
    }


# --------------------------------------------------------------------------------------------
# Part C: configs
# --------------------------------------------------------------------------------------------
def walk_keys(d, prefix, out: set, op_names: set):
    if isinstance(d, dict):
        for k, v in d.items():
            if prefix in ("op_type",):
                op_names.add(k)
                walk_keys(v, "op_type.<OpType>", out, op_names)
                continue
            if prefix in ("params", "op_type.<OpType>.params"):
                key = prefix + ".<param_name>"
                out.add(key)
                walk_keys(v, key, out, op_names)
                continue
            path = f"{prefix}.{k}" if prefix else k
            out.add(path)
            walk_keys(v, path, out, op_names)
    elif isinstance(d, list):
        for v in d:
            walk_keys(v, prefix + "[]", out, op_names)


def schema_paths(node, prefix="", out=None):
    """Key paths allowed by AIMET's JSON schema for config files (derived listing, not a copy)."""
    if out is None:
        out = {}
    if not isinstance(node, dict):
        return out
    for k, v in node.get("properties", {}).items():
        path = f"{prefix}.{k}" if prefix else k
        out[path] = {x: v[x] for x in ("type", "enum", "pattern") if x in v}
        if "required" in node and k in node["required"]:
            out[path]["required"] = True
        schema_paths(v, path, out)
    for pat, v in node.get("patternProperties", {}).items():
        path = f"{prefix}.<{pat}>"
        out[path] = {x: v[x] for x in ("type",) if x in v}
        schema_paths(v, path, out)
    if isinstance(node.get("items"), dict):
        schema_paths(node["items"], prefix + "[]", out)
    return out


def v2_support_probe(tmp) -> dict:
    """What quantsim v2 does with strict_symmetric / unsigned_symmetric = True."""
    res = {}
    for key in ("strict_symmetric", "unsigned_symmetric"):
        path = os.path.join(tmp, f"cfg_{key}.json")
        cfg = write_config(path, True, False)
        cfg["defaults"][key] = "True"
        with open(path, "w") as f:
            json.dump(cfg, f)
        x = torch.from_numpy(run_recipe(101, TENSORS["gauss"][1]))
        try:
            sim = QuantizationSimModel(OneLinear().eval(), x, quant_scheme="tf", config_file=path)
            with torch.no_grad():
                sim.compute_encodings(lambda m: m(x))
            q = sim.model.lin.param_quantizers["weight"]
            res[key] = {"accepted": True, "weight_qmin": int(q.qmin), "weight_qmax": int(q.qmax),
                        "symmetric": bool(q.symmetric)}
        except Exception as e:  # noqa: BLE001
            res[key] = {"accepted": False, "error": f"{type(e).__name__}: {e}"[:300]}
    return res


def part_c():
    cfg_dir = os.path.dirname(sys.modules[
        "aimet_torch.common.quantsim_config.quantsim_config"].__file__)
    files = sorted(f for f in os.listdir(cfg_dir) if f.endswith(".json"))
    keys_per_file, all_keys, all_ops = {}, set(), set()
    raw = {}
    for fn in files:
        with open(os.path.join(cfg_dir, fn)) as f:
            d = json.load(f)
        raw[fn] = d
        ks, ops = set(), set()
        walk_keys(d, "", ks, ops)
        keys_per_file[fn] = {"keys": sorted(ks), "op_types": sorted(ops)}
        all_keys |= ks
        all_ops |= ops

    def summary(d):
        dflt = d.get("defaults", {})
        return {
            "defaults": dflt,
            "params": d.get("params", {}),
            "op_type": d.get("op_type", {}),
            "supergroups": [s["op_list"] for s in d.get("supergroups", [])],
            "supergroup_pass_list": d.get("supergroup_pass_list"),
            "model_input": d.get("model_input"),
            "model_output": d.get("model_output"),
            "strict_symmetric": dflt.get("strict_symmetric"),
            "unsigned_symmetric": dflt.get("unsigned_symmetric"),
            "per_channel_quantization_default": dflt.get("per_channel_quantization"),
            "per_channel_op_types": sorted(k for k, v in d.get("op_type", {}).items()
                                           if str(v.get("per_channel_quantization")) == "True"),
            "hw_version": dflt.get("hw_version"),
            "encoding_constraints": {k: v["encoding_constraints"]
                                     for k, v in d.get("op_type", {}).items()
                                     if "encoding_constraints" in v},
        }

    from aimet_torch.common.quantsim_config.quantsim_config_schema import QUANTSIM_CONFIG_SCHEMA

    return {
        "schema_key_paths": schema_paths(QUANTSIM_CONFIG_SCHEMA),
        "aliases": dict(_config_file_aliases),
        "config_file_None_means": "default",
        "shipped_files": files,
        "summary_default": summary(raw[_config_file_aliases["default"]]),
        "summary_htp_v73": summary(raw[_config_file_aliases["htp_v73"]]),
        "raw_default": raw[_config_file_aliases["default"]],
        "raw_htp_v73": raw[_config_file_aliases["htp_v73"]],
        "all_keys": sorted(all_keys),
        "all_op_type_names": sorted(all_ops),
        "keys_per_file": keys_per_file,
    }


# --------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    version = getattr(aimet_torch, "__version__", AIMET_VERSION)
    if not str(version).startswith(AIMET_VERSION):
        print(f"warning: expected aimet-torch {AIMET_VERSION}, found {version}", file=sys.stderr)
    torch.manual_seed(0)  # no data comes from torch's RNG; this only pins anything AIMET might draw
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tensors, cases, fq = part_a(tmp)
        mb = part_a_multibatch(tmp)
        model = part_b(tmp)
        probe = v2_support_probe(tmp)
    configs = part_c()
    configs["v2_strict_unsigned_symmetric_probe"] = probe

    inputs = {}
    for k, (seed, code) in TENSORS.items():
        a = tensors[k]
        inputs[k] = {"seed": seed, "code": code, "shape": list(a.shape), "sha256_f32": sha(a),
                     "min": f32(a.min()), "max": f32(a.max()),
                     "values": flist(a) if a.size <= 400 else None}
    golden = {
        "meta": {
            "aimet_torch": getattr(aimet_torch, "__version__", AIMET_VERSION),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "encoding_version_default": aimet_common_quantsim.encoding_version,
            "generated_by": "benchmarks/aimet_golden.py",
            "import_workaround": "define torchvision::nms and torchvision::qnms op schemas via "
                                 "torch.library.Library('torchvision','DEF') before import",
            "float_format": "floats are float32 values written as the shortest float64 repr; "
                            "float(np.float32(v)) round-trips",
            "recipe_convention": "rng = np.random.default_rng(seed); exec(code) sets x; "
                                 "x = x.astype(np.float32)",
            "offset_convention": "'offset' = AIMET internal offset: q = clamp(round(x/scale) - "
                                 "offset, qmin, qmax), x_hat = (q + offset) * scale; "
                                 "'legacy_offset' = offset + qmin (0.6.1 / torch export field); "
                                 "1.0.0 export 'offset' = offset for unsigned (asym) and "
                                 "offset - 2**(bw-1) for signed (sym)",
            "wall_s": round(time.time() - t0, 1),
        },
        "inputs": {
            "tensors": inputs,
            "part_a_extra_inputs": {k: v for k, v in FEED_SEEDS.items()},
            "part_a_model": "one Linear(64,2,bias=False) per activation tensor (the tensor is a "
                            "model input -> that Linear's input quantizer); one "
                            "Linear(64,8,bias=False) per 8x64 tensor used as weight; "
                            "Conv2d(3,8,3,bias=False) for conv_w; Linear(32,10,bias=False) for "
                            "linear_w. Config: classic schema with acts and params both "
                            "symmetric or both asymmetric, per_channel_quantization on/off, "
                            "no supergroups, model input quantized.",
        },
        "encodings": cases,
        "fake_quant": fq,
        "multi_batch": mb,
        "model": model,
        "configs": configs,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(golden, f, separators=(",", ":"))
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB) in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
