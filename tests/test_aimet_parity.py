"""AIMET parity: qa's defaults are AIMET 2.x's, and with ``aimet_compat=True`` its numbers are AIMET's.

The reference numbers come from one run of aimet-torch 2.42 (``benchmarks/aimet_golden.py``, run
once in a separate environment; AIMET is never a dependency of qa or of these tests) and are stored
in ``tests/data/aimet/golden.json``: numbers only, with the numpy recipes of every input, so that the
same model and data are rebuilt here without AIMET. ``tests/data/aimet/NOTES.md`` says how AIMET
computes each of them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import qa  # noqa: E402
from qa.config import dump_config, load_config  # noqa: E402
from qa.report import CHANNEL_BINS  # noqa: E402

GOLDEN = json.loads((Path(__file__).parent / "data" / "aimet" / "golden.json").read_text())
MODEL = GOLDEN["model"]


def recipe(seed, code):
    env = {"np": np, "rng": np.random.default_rng(seed)}
    exec(code, env)  # the recipes are this repository's own test data
    return np.ascontiguousarray(env["x"], dtype=np.float32)


class Add(nn.Module):
    def forward(self, x, y):
        return x + y


class SmallNet(nn.Module):
    """golden.json's model: conv1-bn1-relu1, conv2-bn2, add (residual), relu2, maxpool, flatten, fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.add = Add()
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, 10)

    def forward(self, x):
        y1 = self.relu1(self.bn1(self.conv1(x)))
        y2 = self.bn2(self.conv2(y1))
        return self.fc(self.flatten(self.pool(self.relu2(self.add(y2, y1)))))


def small_net():
    net = SmallNet()
    state = {k: torch.from_numpy(recipe(r["seed"], r["code"])) for k, r in MODEL["param_recipes"].items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return net.eval()


def calibration_batches():
    c = MODEL["calibration"]
    return [torch.from_numpy(recipe(seed, c["code"])) for seed in c["seeds"]]


def eval_images():
    return torch.from_numpy(recipe(MODEL["eval"]["seed"], MODEL["eval"]["code"]))


def agreement(reference):
    """golden's score: top-1 agreement (%) with the FP32 model's classes on the 64 eval images."""
    images = eval_images()

    def score(model):
        with torch.no_grad():
            return float((model(images).argmax(1) == reference).float().mean() * 100)
    return score


def analyzer_for(net, **kwargs):
    batches = calibration_batches()
    reference = torch.tensor(MODEL["eval"]["fp32_reference_argmax"])

    def calibrate(model):
        with torch.no_grad():
            for b in batches:
                model(b)
    return qa.QuantAnalyzer(net, batches[0][:1], calibrate, agreement(reference), progress=False, **kwargs)


# ---- the defaults are AIMET 2.x's ---------------------------------------------------------------

def test_the_golden_model_is_rebuilt_exactly():
    """The recipes give AIMET's FP32 model: its classes on the eval images are the recorded ones."""
    net = small_net()
    with torch.no_grad():
        classes = net(eval_images()).argmax(1).tolist()
    assert classes == MODEL["eval"]["fp32_reference_argmax"]


@pytest.mark.parametrize("run", sorted(MODEL["runs"]))
def test_quantizer_placement_is_aimets(run):
    """Which tensors get quantizers, per channel or not, at which bitwidth, under AIMET's default
    config (config_file=None) and htp_v73: MaxPool and Flatten keep their input's grid (no output
    quantizer), Conv+ReLU and Add+ReLU are supergroups, the model input is quantized, bias is not."""
    spec = MODEL["runs"][run]
    analyzer = analyzer_for(small_net())
    sim = analyzer.create_quantsim(spec["quant_scheme"], spec["default_param_bw"], spec["default_output_bw"],
                                   spec["config_file"])
    want = {}
    for module, entry in spec["placement"].items():
        for kind in ("input", "output"):
            for i, q in enumerate(entry[f"{kind}_quantizers"]):
                if q is not None:
                    want[f"{module}_{kind}_{i}"] = (q["bitwidth"], q["symmetric"], False)
        for param, q in entry["param_quantizers"].items():
            if q is not None:
                want[f"{module}_{param}"] = (q["bitwidth"], q["symmetric"], len(q["shape"]) > 0 and q["shape"][0] > 1)
    got = {name: (q.bitwidth, q.symmetric, q.per_channel) for name, q in sim.quantizers.items() if q.enabled}
    assert got == want


def test_aimet_config_names_are_aimets_configs():
    """config_file="default" (and None) and "htp_v73" are, key for key, the files AIMET 2.42 ships
    under those names (golden holds them as AIMET read them)."""
    configs = GOLDEN["configs"]
    assert configs["config_file_None_means"] == "default"
    assert set(configs["aliases"]) <= set(qa.config.ALIASES)
    for alias in ("default", "htp_v73"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every key understood
            ours = load_config(alias)
        assert ours == load_config(configs[f"raw_{alias}"]), alias
        assert dump_config(ours) == dump_config(load_config(configs[f"raw_{alias}"]))
    assert load_config(None) == load_config("default")


def test_every_key_of_aimets_shipped_configs_is_understood():
    """No AIMET config key warns as unknown (golden lists every key path of the 19 shipped files)."""
    paths = GOLDEN["configs"]["all_keys"]
    assert any("supergroup_pass_list" in p for p in paths) and any("encoding_constraints" in p for p in paths)
    for alias in qa.config.ALIASES:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_config(alias)


def test_encoding_constraints_fix_the_output_ranges_in_a_simulation():
    """htp_v73: Sigmoid's output range is [0, 1] whatever the data, Tanh's [-1, 1] (symmetric)."""
    net = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 4), nn.Tanh()).eval()
    x = torch.randn(64, 4) * 0.1  # narrow data: a calibrated range would be much smaller
    analyzer = qa.QuantAnalyzer(net, x[:1], lambda m: m(x), lambda m: 0.0, progress=False)
    sim = analyzer.create_quantsim("tf_enhanced", 8, 8, "htp_v73")
    sig, tanh = sim.quantizers["1_output_0"].encoding, sim.quantizers["3_output_0"].encoding
    assert (sig.min, sig.max, sig.offset) == (0.0, 1.0, 0) and not sig.symmetric
    assert tanh.symmetric and tanh.max == pytest.approx(1.0, rel=1e-2) and tanh.min == pytest.approx(-1.0, rel=1e-2)
    free = analyzer.create_quantsim("tf_enhanced", 8, 8, "default").quantizers["1_output_0"].encoding
    assert free.max < 0.9  # without the constraint: the data's own range (sigmoid(0.1 x) ~ 0.5)


def test_per_channel_histograms_stay_small(tmp_path):
    """With per-channel weights (the default) a weight's histogram file holds at most CHANNEL_BINS
    bins per channel, compact JSON, every value counted."""
    net = nn.Sequential(nn.Conv2d(16, 256, 3), nn.ReLU(), nn.Conv2d(256, 256, 3)).eval()
    x = torch.randn(4, 16, 12, 12)
    analyzer = qa.QuantAnalyzer(net, x[:1], lambda m: m(x), lambda m: 0.0, progress=False)
    analyzer.analyze("tf_enhanced", results_dir=tmp_path)
    path = tmp_path / "weights_pdf" / "2" / "weight.json"
    text = path.read_text()
    record = json.loads(text)
    assert "\n" not in text and len(record["channels"]) == 256
    assert max(len(c["counts"]) for c in record["channels"]) <= CHANNEL_BINS
    assert all(sum(c["counts"]) == 256 * 9 for c in record["channels"])
    assert path.stat().st_size < 256 * CHANNEL_BINS * 8  # a few bytes per bin, not 2,048 indented lines


def test_batch_norms_fold_to_aimets_float32_values_bit_for_bit():
    """Folding computes in float32 as AIMET does, so the weights every encoding starts from are AIMET's."""
    folded = MODEL["runs"]["w8a8_tf_enhanced_default"]["folded_fp32_conv_params"]
    values = {d.name: v for d, v in analyzer_for(small_net()).adapter.weights()}
    for key, want in folded.items():
        got = values[key.replace(".", "_")]
        assert np.array_equal(got.ravel(), np.asarray(want, np.float32)), key


# ---- aimet_compat=True: AIMET's numbers ----------------------------------------------------------

def _qa_name(aimet_key):
    """golden's quantizer keys ("conv1.input.0", "conv1.weight") as qa names them."""
    return aimet_key.replace(".", "_")


@pytest.fixture(scope="module", params=sorted(MODEL["runs"]))
def compat_run(request, tmp_path_factory):
    spec = MODEL["runs"][request.param]
    analyzer = analyzer_for(small_net())
    c = MODEL["per_layer_mse"]
    analyzer.enable_per_layer_mse_loss(calibration_batches(), c["num_batches"])
    out = tmp_path_factory.mktemp(request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = analyzer.analyze(spec["quant_scheme"], spec["default_param_bw"], spec["default_output_bw"],
                                  spec["config_file"], results_dir=out, aimet_compat=True)
    return spec, result, out


def _f32(values):
    return np.asarray(values, np.float32)


def test_compat_activation_encodings_are_aimets(compat_run):
    """Every activation encoding (calibrated, as AIMET does, with the weights quantized) equals
    AIMET's to float32 precision: min, max, scale and offset. (The weights' are checked through
    min_max_ranges/weights.json, which holds them after AIMET's weight-scale adjustment.)"""
    spec, result, _ = compat_run
    assert result.aimet_compat
    for key, want in spec["quantizer_encodings"].items():
        if key.endswith(".weight"):
            continue
        got = result.encodings[_qa_name(key)]
        got = got if isinstance(got, list) else [got]
        assert [g["offset"] for g in got] == want["legacy_offset"], key
        for field in ("min", "max", "scale"):
            np.testing.assert_array_equal(_f32([g[field] for g in got]), _f32(want[field]), err_msg=f"{key} {field}")


def test_compat_min_max_range_files_are_aimets(compat_run):
    spec, _, out = compat_run
    for name in ("min_max_ranges/weights.json", "min_max_ranges/activations.json"):
        want = spec["analyzer_files"][name]
        got = json.loads((out / name).read_text())
        assert list(got) == list(want), name
        flat = lambda d: [v for k in d for v in (d[k].values() if isinstance(d[k], dict) else [d[k]])]  # noqa: E731
        np.testing.assert_array_equal(_f32(flat(got)), _f32(flat(want)), err_msg=name)


def test_compat_per_layer_mse_follows_aimets_convention(compat_run):
    """AIMET's per_layer_mse_loss.json: the same layers (folded batch norms, MaxPool and Flatten too, in
    AIMET's order) and the same values: per-batch means summed, divided by the number of samples."""
    spec, result, out = compat_run
    want = spec["analyzer_files"]["per_layer_mse_loss.json"]
    got = json.loads((out / "per_layer_mse_loss.json").read_text())
    assert list(got) == list(want)
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-6), name  # AIMET accumulates in float32


def test_compat_scores_and_sweeps_are_aimets(compat_run):
    spec, result, _ = compat_run
    scores = spec["scores"]
    assert (result.fp32_score, result.weight_quantized_score, result.activation_quantized_score,
            result.quantized_score) == (scores["fp32"], scores["weight_quantized_only"],
                                        scores["activation_quantized_only"], scores["full_quantized"])
    assert result.per_layer_quant_enabled == spec["analyzer_files"]["per_layer_quant_enabled.json"]
    assert result.per_layer_quant_disabled == spec["analyzer_files"]["per_layer_quant_disabled.json"]


def test_compat_changes_nothing_by_default():
    """Without aimet_compat, qa's own choices: activations calibrated on the FP32 model, so a 4-bit
    weight changes no activation encoding (under aimet_compat it changes most of them, as in AIMET)."""
    analyzer = analyzer_for(small_net())
    acts = lambda sim: {n: q.encoding for n, q in sim.quantizers.items()  # noqa: E731
                        if not q.is_param and q.encoding is not None}
    assert acts(analyzer.create_quantsim("tf", 8, 8)) == acts(analyzer.create_quantsim("tf", 4, 8))
    w8, w4 = (acts(analyzer.create_quantsim("tf", bw, 8, aimet_compat=True)) for bw in (8, 4))
    assert sum(w8[n] != w4[n] for n in w8) >= len(w8) - 1


def test_compat_at_scale_resnet18_ranges_are_aimets(tmp_path):
    """The ResNet-18 of benchmarks/aimet_vs_qa.py (4,810 weight channels of 27 to 4,608 values): AIMET's
    min/max range files, recorded by that script, equal qa's under aimet_compat, every value."""
    import importlib.util

    path = Path(__file__).parent.parent / "benchmarks" / "aimet_vs_qa.py"
    spec = importlib.util.spec_from_file_location("aimet_vs_qa", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # the model recipe; AIMET itself is imported only by its run_aimet
    want = json.loads((Path(__file__).parent / "data" / "aimet" / "resnet18_ranges.json").read_text())
    model = bench.make_model("resnet18", 64)
    calib = [bench.images(1000 + i, 32) for i in range(4)]

    def calibrate(m):
        with torch.no_grad():
            for b in calib:
                m(b)
    analyzer = qa.QuantAnalyzer(model, calib[0][:1], calibrate, lambda m: 0.0, progress=False)
    sim = analyzer.create_quantsim("tf_enhanced", 8, 8, aimet_compat=True)
    weights, activations = analyzer.export_per_layer_encoding_min_max_range(sim, tmp_path)
    assert json.loads(json.dumps(activations)) == want["activations"]
    got = json.loads(json.dumps(weights))
    assert list(got) == list(want["weights"])
    mismatched = [(k, c) for k in want["weights"] for c in want["weights"][k] if got[k][c] != want["weights"][k][c]]
    assert not mismatched, mismatched[:5]


def test_compat_mse_runs_on_aimets_weights_and_the_rest_on_the_protected_ones(tmp_path):
    """AIMET's MSE stage sees its weights without the overflow protection (its histogram stage re-encodes
    them); qa replays that for the MSE only: the verified fixes after it compare with the fully quantized
    score of the protected simulation, the one the sweeps used."""
    analyzer = analyzer_for(small_net())
    analyzer.enable_per_layer_mse_loss(calibration_batches(), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = analyzer.analyze("tf_enhanced", 4, 8, results_dir=tmp_path, aimet_compat=True, recommend=True,
                                  target={"absolute": 0.0})
    notes = result.recommendation.notes
    assert len(notes) == 1 and notes[0].startswith("aimet_compat:")  # no "encodings differ" note
    want = MODEL["runs"]["w4a8_tf_enhanced_default"]["analyzer_files"]["per_layer_mse_loss.json"]
    got = json.loads((tmp_path / "per_layer_mse_loss.json").read_text())
    assert all(got[n] == pytest.approx(want[n], rel=1e-6) for n in want)
