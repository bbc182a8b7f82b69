"""Attention-mask sentinel values (finfo.min, -1e9, -1e10, -10000, -inf): the detection rule on
synthetic data, what QuantSim does with them (``sentinels="float"`` keeps the quantizer in float,
``"quantize"`` quantizes it like any other), and a small attention block analysed from ONNX and
from PyTorch, where the activation-only score stays near FP32 with the handling and collapses
without it. Every model is built here; nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

import qa
from qa.errors import QAValueError
from qa.observers import Histogram, RunningMinMax, find_sentinels
from qa.sim import QuantSim

F32 = np.float32
FMIN = float(np.finfo(F32).min)
RNG = np.random.default_rng(0)


def observe(*batches, bins=2048):
    h = Histogram(bins)
    for b in batches:
        h.update(np.asarray(b, F32))
    return find_sentinels(h)


def scores(bound=10.0, shape=(8, 4, 32, 32), seed=0):
    """Attention scores of magnitude ~bound (both ends reached)."""
    s = np.random.default_rng(seed).normal(0.0, bound / 3, shape).astype(F32)
    s.flat[:2] = [bound, -bound]
    return np.clip(s, -bound, bound)


def additive_mask(value, shape=(8, 1, 1, 32), padded=8):
    """0 where attended, ``value`` on the last ``padded`` key positions (a quarter by default)."""
    m = np.zeros(shape, F32)
    m[..., -padded:] = value
    return m


# ---- the rule on synthetic data --------------------------------------------------------------------

@pytest.mark.parametrize("value", [FMIN, -1e9, -1e10, -1e4, -65504.0])
def test_a_mask_added_to_scores_is_found_with_its_exact_count(value):
    s, m = scores(), additive_mask(value)
    found = observe(s + m)
    assert found is not None and found.neginf == 0
    assert found.count == s.size // 4  # exactly the masked quarter, none of the scores
    assert found.lowest <= value + 10 and found.highest <= value * 0.99
    assert f"{value:.3g}".split("e")[0] in found.describe() and "25% of the values" in found.describe()


@pytest.mark.parametrize("value", [FMIN, -1e9, -1e4])
def test_the_mask_tensor_itself_is_found(value):
    found = observe(np.broadcast_to(additive_mask(value), (8, 4, 32, 32)))
    assert found is not None and found.count == 8 * 4 * 32 * 8


def test_a_mask_seen_only_in_a_later_batch_is_found():
    s = scores()
    found = observe(s[:4], s[4:] + additive_mask(-1e4)[4:])  # the histogram grows by whole factors
    assert found is not None and found.count == s.size // 8


def test_minus_10000_is_found_while_scores_stay_within_20():
    """The ratio rule (500x) is exact at the -1000 split: -10000 passes with scores up to +-19.9."""
    assert observe(scores(19.9) + additive_mask(-1e4)) is not None
    assert observe(scores(20.5) + additive_mask(-1e4)) is None  # the documented limit
    assert observe(scores(1e3) + additive_mask(-1e9)) is not None  # huge fills: any real range


def test_without_the_exact_split_the_bins_still_prove_huge_fills():
    """CUDA batches reaching -1000 are not split exactly: the bins decide, conservatively."""
    def bins_only(x):
        h = Histogram()
        h.update(np.asarray(x, F32))
        h.split.known = False
        return find_sentinels(h)
    for value in (FMIN, -1e9, -1e10):
        found = bins_only(scores() + additive_mask(value))
        assert found is not None and found.count == scores().size // 4
    assert bins_only(outlier_channel(1000, 0.0) * 3) is None


def test_minus_inf_is_a_sentinel_counted_apart():
    s = scores()
    found = observe(s + additive_mask(-np.inf))
    assert found is not None and (found.count, found.neginf, found.total) == (0, s.size // 4, s.size)
    assert found.describe().startswith("-inf (attention-mask sentinel, 25%")
    obs = RunningMinMax()  # no counts: only -inf can be found
    obs.update(s + additive_mask(-np.inf))
    assert find_sentinels(obs).neginf == s.size // 4
    obs = RunningMinMax()
    obs.update(s + additive_mask(-1e9))
    assert find_sentinels(obs) is None


def test_a_handful_of_masked_values_is_too_few_below_1e8_is_not_needed_above():
    x = RNG.normal(0, 1, 100_000).astype(F32)
    few = x.copy()
    few[:5] = -1e4  # 0.005% of the values: like a massive activation, not a mask
    assert observe(few) is None
    many = x.copy()
    many[:20] = -1e4  # 0.02%
    assert observe(many).count == 20


def outlier_channel(multiple, spread, rows=64, channels=64, sign=-1.0):
    """N(0, 1) activations with one channel at ``multiple`` x the median magnitude."""
    x = RNG.normal(0, 1, (rows, channels)).astype(F32)
    median = float(np.median(np.abs(x)))
    x[:, 5] = sign * multiple * median * (1 + spread * RNG.normal(size=rows))
    return x


@pytest.mark.parametrize("multiple", [100, 300, 1000])
@pytest.mark.parametrize("spread", [0.0, 0.2])
def test_llm_style_outlier_channels_are_not_sentinels(multiple, spread):
    assert observe(outlier_channel(multiple, spread)) is None
    assert observe(outlier_channel(multiple, spread) * 2.5) is None  # whatever the scale
    assert observe(outlier_channel(multiple, spread, sign=1.0)) is None


def test_ordinary_activations_are_never_sentinels():
    massive = RNG.normal(0, 1, 200_000).astype(F32)
    massive[:4] = [-2622.0, -1547.0, -802.0, 2546.0]  # massive activations: a handful of values
    cases = {
        "relu6": np.clip(RNG.normal(0, 3, 50_000), 0, 6),
        "uniform 1e6": RNG.uniform(-1e6, 1e6, 50_000),
        "uniform 1e9": RNG.uniform(-1e9, 1e9, 50_000),
        "cauchy": RNG.standard_cauchy(200_000),
        "heavy negative tail": -np.abs(RNG.standard_cauchy(200_000)) * 1000,
        "lognormal": -RNG.lognormal(0, 3, 200_000),
        "student t": RNG.standard_t(1.5, 200_000) * 100,
        "massive activations": massive,
        "two levels {0, -1}": np.where(RNG.random(1000) < 0.5, 0.0, -1.0),
        "two levels {0, -500}": np.where(RNG.random(1000) < 0.5, 0.0, -500.0),
        "sparse negated relu": -np.maximum(RNG.normal(0, 1, 10_000), 0) * 1000,
        "positive fill": scores() - additive_mask(-1e9),  # low side only: masks are negative
    }
    for name, x in cases.items():
        assert observe(x) is None, name
        assert observe(*np.array_split(np.asarray(x, F32).ravel(), 7)) is None, f"{name} in batches"


def test_per_channel_observers_are_not_checked():
    h = Histogram(axis=0)
    h.update(np.stack([scores().ravel()[:64], np.full(64, FMIN, F32)]))
    assert find_sentinels(h) is None


def test_the_setting_is_checked():
    with pytest.raises(QAValueError, match="sentinels must be one of 'float', 'quantize'"):
        QuantSim(None, quant_scheme="tf", default_param_bw=8, default_output_bw=8, sentinels="exclude")


# ---- a small attention block, from ONNX and from PyTorch ----------------------------------------------

D, T, B = 16, 12, 8
SENTINELS = {"finfo.min": FMIN, "-1e9": -1e9, "-1e10": -1e10, "-10000": -1e4, "-inf": -math.inf}


def attention_block(sentinel):
    """q @ k^T / sqrt(d) + mask, softmax, @ v; the mask comes from an int64 attention_mask. The add
    is a module (AddMask) so that PyTorch quantizes its output, as ONNX quantizes the Add node's."""
    torch = pytest.importorskip("torch")
    from torch import nn

    class AddMask(nn.Module):
        def forward(self, scores, mask):
            return scores + mask

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
            self.add_mask, self.softmax, self.out = AddMask(), nn.Softmax(dim=-1), nn.Linear(D, 4)

        def forward(self, x, attention_mask):
            s = self.q(x) @ self.k(x).transpose(-1, -2) / math.sqrt(D)
            fill = torch.zeros(attention_mask.shape, dtype=x.dtype).masked_fill(attention_mask == 0, sentinel)
            return self.out(self.softmax(self.add_mask(s, fill[:, None, :])) @ self.v(x))

    torch.manual_seed(0)
    net = Attention().eval()
    with torch.no_grad():  # sharp attention: scores of magnitude ~8
        net.q.weight.mul_(2.5)
        net.k.weight.mul_(2.5)
    return net


def batches(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lengths = rng.integers(T // 2, T + 1, B)
        out.append((rng.standard_normal((B, T, D)).astype(F32),
                    (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)))
    return out


CALIBRATION, EVALUATION = batches(4, 1), batches(4, 2)


def agreement(outputs, references):
    """1 - squared error / variance of the FP32 outputs at real tokens: 1.0 is FP32 exactly."""
    err = var = 0.0
    for y, ref, (_, m) in zip(outputs, references, EVALUATION):
        keep = m.astype(bool)
        err += float(((np.asarray(y, np.float64)[keep] - ref[keep]) ** 2).sum())
        var += float(((ref[keep] - ref[keep].mean(0)) ** 2).sum())
    return 1.0 - err / var


def torch_analyzer(net):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy
    refs = [net(t(x), t(m)).detach().double().numpy() for x, m in EVALUATION]

    def evaluate(model):
        return agreement([model(t(x), t(m)).detach().numpy() for x, m in EVALUATION], refs)

    with warnings.catch_warnings():  # the matmuls run outside modules: said, and expected here
        warnings.simplefilter("ignore")
        return qa.QuantAnalyzer(net, (t(CALIBRATION[0][0][:1]), t(CALIBRATION[0][1][:1])),
                                lambda model: [model(t(x), t(m)) for x, m in CALIBRATION], evaluate, progress=False)


def onnx_analyzer(net):
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    x, m = CALIBRATION[0]
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x), torch.from_numpy(m)), f, dynamo=False, opset_version=17,
                          input_names=["x", "attention_mask"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "attention_mask": {0: "batch"}})
    model = onnx.load_from_string(f.getvalue())
    refs = [net(torch.from_numpy(x), torch.from_numpy(m)).detach().double().numpy() for x, m in EVALUATION]
    feeds = lambda x, m: {"x": x, "attention_mask": m}  # noqa: E731
    return qa.QuantAnalyzer(model, feeds(x[:1], m[:1]),
                            lambda s: [s.run(None, feeds(x, m)) for x, m in CALIBRATION],
                            lambda s: agreement([s.run(None, feeds(x, m))[0] for x, m in EVALUATION], refs),
                            progress=False)


def quantize_anyway(analyzer, scheme):
    """The activation-only score with the sentinel handling off, and the simulation."""
    sim = QuantSim(analyzer.adapter, quant_scheme=scheme, default_param_bw=8, default_output_bw=8,
                   sentinels="quantize")
    sim.compute_encodings(analyzer.forward_pass_callback)
    return analyzer.check_model_sensitivity_to_quantization(sim)[2], sim


def check_reported(result, tmp_path, mask_add, caplog):
    """The finding reaches the result, summary.json (valid against the schema), the log (once) and
    the dashboard's notes; the float-kept quantizer has no encoding."""
    found = result.sentinel_quantizers
    assert mask_add in found and found[mask_add].endswith(": kept in float"), found
    masked = sum(float((m == 0).mean()) for _, m in CALIBRATION) / len(CALIBRATION)  # of every score
    assert f"(attention-mask sentinel, {100 * masked:.3g}% of the values)" in found[mask_add]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sentinel_quantizers"] == found
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(qa.__file__).parent / "report" / "schema" / "summary.schema.json").read_text())
    jsonschema.validate(summary, schema)
    assert mask_add not in summary["encodings"] and mask_add not in result.activation_ranges
    lines = [r.getMessage() for r in caplog.records if "sentinel" in r.getMessage()]
    assert len(lines) == 1 and mask_add in lines[0] and "stay in float" in lines[0], lines
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    notes = page.split("<h2>Notes</h2>")[1].split("</ul>")[0]
    assert "attention-mask sentinel values" in notes and f"<code>{mask_add}</code>" in notes
    assert not any("NaN/inf" in p or "sentinel" in p for p in result.problems), result.problems


def check_collapse(analyzer, result, mask_add, scheme, worst):
    """Handled, the activation-only score stays near FP32; quantized with the sentinels, it is at
    most ``worst``."""
    on = result.activation_quantized_score
    assert result.fp32_score == pytest.approx(1.0, abs=1e-9)
    assert on > 0.99, f"handled: {on}"
    off, sim = quantize_anyway(analyzer, scheme)
    assert off < worst, f"sentinels quantized: {off} vs {on}"
    assert mask_add in sim.sentinel_quantizers and "quantized with them" in sim.sentinel_quantizers[mask_add]
    assert any(p.startswith(f"the activation {mask_add} holds") for p in sim.problems())
    return on, off


@pytest.mark.parametrize("label", list(SENTINELS))
def test_onnx_attention_block_keeps_the_mask_path_in_float(label, tmp_path, caplog):
    analyzer = onnx_analyzer(attention_block(SENTINELS[label]))
    with caplog.at_level(logging.INFO, logger="qa"):
        result = analyzer.analyze("tf_enhanced", results_dir=tmp_path)
    mask_add = "/add_mask/Add_output_0"
    check_reported(result, tmp_path, mask_add, caplog)
    assert "/Where_output_0" in result.sentinel_quantizers  # the mask itself (masked_fill)
    # A finite fill collapses the scores' grid. -inf does not (grids come from finite values), but
    # the mask tensor {0, -inf} quantizes to 0 everywhere, so nothing is masked any more.
    check_collapse(analyzer, result, mask_add, "tf_enhanced", 0.85 if label == "-inf" else 0.5)


@pytest.mark.parametrize("label", ["finfo.min", "-10000", "-inf"])
def test_torch_attention_block_agrees_with_onnx(label, tmp_path, caplog):
    net = attention_block(SENTINELS[label])
    analyzer = torch_analyzer(net)
    with caplog.at_level(logging.INFO, logger="qa"):
        result = analyzer.analyze("tf", results_dir=tmp_path / "torch")
    check_reported(result, tmp_path / "torch", "add_mask_output_0", caplog)
    assert not any(q.startswith(("q_", "k_", "v_", "softmax_", "out_")) for q in result.sentinel_quantizers)
    # -inf at the add clamps to the scores' lowest value: the mask still almost masks
    on, off = check_collapse(analyzer, result, "add_mask_output_0", "tf", result.activation_quantized_score
                             if label == "-inf" else 0.5)
    # the engine decides, so both adapters compute the same handled score
    onnx_result = onnx_analyzer(net).analyze("tf", results_dir=tmp_path / "onnx")
    assert onnx_result.activation_quantized_score == pytest.approx(on, abs=1e-4)


def test_analyze_passes_the_setting_and_fingerprints_it(tmp_path):
    net = attention_block(SENTINELS["finfo.min"])
    analyzer = torch_analyzer(net)
    handled = analyzer.analyze("tf", results_dir=tmp_path / "a")
    quantized = analyzer.analyze("tf", results_dir=tmp_path / "b", sentinels="quantize")
    assert "add_mask_output_0" in quantized.encodings and "add_mask_output_0" not in handled.encodings
    assert quantized.activation_quantized_score < handled.activation_quantized_score - 0.3
    assert quantized.fingerprint != handled.fingerprint
    with pytest.raises(qa.QAValueError, match="sentinels"):
        analyzer.analyze("tf", results_dir=tmp_path / "c", sentinels="drop")
