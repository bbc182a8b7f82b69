"""qa.aimet_compat against AIMET 2.42's own numbers (tests/data/aimet/golden.json), without AIMET.

Every tensor is rebuilt from its numpy recipe; every number AIMET stored as float32 must come out
as the same float32 (scale, raw and grid-snapped min/max) and the same integer offset.
"""

from __future__ import annotations

import doctest
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

from qa import aimet_compat
from qa.aimet_compat import (
    AimetEncoding, AimetObserver, aimet_encoding, decompose_weight, fake_quantize_like_aimet, protect_weight,
)
from qa.encodings import Encoding
from qa.errors import QAValueError
from qa.observers import Histogram, RunningMinMax, find_sentinels
from qa.report import histogram_record

GOLDEN = json.loads((Path(__file__).parent / "data" / "aimet" / "golden.json").read_text())


def recipe(seed: int, code: str) -> np.ndarray:
    env = {"np": np, "rng": np.random.default_rng(seed)}
    exec(code, env)  # the recipes are this repository's own test data
    return np.ascontiguousarray(env["x"], dtype=np.float32)


TENSORS = {k: recipe(v["seed"], v["code"]) for k, v in GOLDEN["inputs"]["tensors"].items()}

# Flagged cases AIMET decomposes although the tensor is not an exact grid (NOTES §7.1): AIMET's
# tolerances are not known, so qa runs the analyzer there and the numbers differ.
INEXACT_DECOMPOSITION = {("halfway", "per_channel", 8)}


def f32(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(np.float32).reshape(-1)


def grid(bitwidth: int, symmetric: bool):
    n = 2**bitwidth - 1
    return (-((n + 1) // 2), n // 2) if symmetric else (0, n)


def assert_same(enc: AimetEncoding, rec: Dict[str, Any], what: str = "") -> None:
    """enc equals AIMET's record: float32-exact scale, raw and snapped range; exact qa offset."""
    for field, key in (("scale", "scale"), ("raw_min", "raw_min"), ("raw_max", "raw_max"),
                       ("min", "min"), ("max", "max")):
        got, want = f32(getattr(enc, field)), f32(rec[key])
        assert got.shape == want.shape, f"{what} {field}: {got.shape} != {want.shape}"
        bad = np.flatnonzero(got != want)
        assert not bad.size, f"{what} {field}[{bad.tolist()}]: {got[bad].tolist()} != {want[bad].tolist()}"
    got = np.asarray(enc.offset, dtype=np.int64).reshape(-1)
    assert got.tolist() == list(rec["legacy_offset"]), f"{what} offset"
    assert isinstance(enc, Encoding) and not enc.strict


def act_encoding(rec: Optional[Dict[str, Any]], bitwidth: int, symmetric: bool) -> Optional[Encoding]:
    """A golden module input/output encoding (AIMET internal offset) in qa's convention."""
    if rec is None:
        return None
    qmin, qmax = grid(bitwidth, symmetric)
    scale = float(np.float32(rec["scale"][0]))
    offset = int(rec["offset"][0]) + qmin
    return Encoding(offset * scale, (offset + qmax - qmin) * scale, scale, offset, bitwidth, symmetric)


def plain_encoding(x: np.ndarray, scheme: str, bitwidth: int, symmetric: bool, percentile: Optional[float],
                   axis: Optional[int], weight: bool) -> AimetEncoding:
    """AIMET's parameter/activation calibration: decomposition first for symmetric weights."""
    if weight and symmetric:
        enc = decompose_weight(x, bitwidth, axis)
        if enc is not None:
            return enc
    obs = AimetObserver(scheme, None, axis=axis, name="t")
    obs.update(x)
    return aimet_encoding(obs, bitwidth, symmetric, 100.0 if percentile is None else percentile)


def case_id(i: int, c: Dict[str, Any]) -> str:
    pct = "" if c["percentile"] is None else f"{c['percentile']:g}"
    return (f"{i}-{c['tensor']}-{c['role']}-{c['scheme']}{pct}-{c['bitwidth']}b-"
            f"{'sym' if c['symmetric'] else 'asym'}-{c['granularity']}")


def encoding_params() -> List[Any]:
    params = []
    for i, c in enumerate(GOLDEN["encodings"]):
        marks = ()
        if (c.get("prequantized_decomposition")
                and (c["tensor"], c["granularity"], c["bitwidth"]) in INEXACT_DECOMPOSITION):
            marks = pytest.mark.xfail(strict=True, reason=(
                f"case {case_id(i, c)}: AIMET decomposes this weight as pre-quantized although its "
                f"channels 0, 3, 4, 6 and 7 are not exact grids; those tolerances are not reproduced"))
        params.append(pytest.param(c, marks=marks, id=case_id(i, c)))
    return params


@pytest.mark.parametrize("case", encoding_params())
def test_encoding_case(case):
    x = TENSORS[case["tensor"]]
    weight = case["role"] == "weight"
    axis = 0 if case["granularity"] == "per_channel" else None
    bw, sym = case["bitwidth"], case["symmetric"]
    if weight and sym:  # decomposition fires exactly where AIMET's did
        assert (decompose_weight(x, bw, axis) is not None) == case["prequantized_decomposition"]
    enc = plain_encoding(x, case["scheme"], bw, sym, case["percentile"], axis, weight)
    assert enc.axis == axis and enc.bitwidth == bw and enc.symmetric == sym
    if not weight:
        assert_same(enc, case, "activation")
        return
    assert_same(enc, case["before_overflow_protection"], "before protection")
    final = protect_weight(enc, None, act_encoding(case["module_input_encoding"], bw, sym),
                           act_encoding(case["module_output_encoding"], bw, sym))
    assert_same(final, case, "after protection")


# --------------------------------------------------------------------------------------------
# multi-batch: histogram merging (§3)
# --------------------------------------------------------------------------------------------

MB = GOLDEN["multi_batch"]
MB_BATCHES = [recipe(MB["batches"][k]["seed"], MB["batches"][k]["code"]) for k in MB["order"]]


def mb_observer(scheme: str, mode: str) -> AimetObserver:
    obs = AimetObserver(scheme, Histogram(), name="mb")
    for b in (MB_BATCHES if mode == "three_batches" else [np.concatenate(MB_BATCHES, axis=0)]):
        obs.update(b)
    return obs


@pytest.mark.parametrize("case", MB["cases"], ids=lambda c: (
    f"{c['mode']}-{c['scheme']}{'' if c['percentile'] is None else format(c['percentile'], 'g')}-"
    f"{c['bitwidth']}b-{'sym' if c['symmetric'] else 'asym'}"))
def test_multi_batch(case):
    obs = mb_observer(case["scheme"], case["mode"])
    pct = 100.0 if case["percentile"] is None else case["percentile"]
    assert_same(aimet_encoding(obs, case["bitwidth"], case["symmetric"], pct), case, case["mode"])


@pytest.mark.parametrize("scheme", ["tf_enhanced", "percentile"])
def test_multi_batch_histogram(scheme):
    rec = MB["final_histograms_8bit_asym"][scheme]
    state = mb_observer(scheme, "three_batches").aimet_state()
    assert state["counts"].shape == (1, rec["num_bins"])
    assert state["counts"][0].tolist() == rec["counts"]
    assert state["edges"][0, 0] == np.float32(rec["first_edge"])
    assert state["edges"][0, -1] == np.float32(rec["last_edge"])
    assert state["min"][0] == np.float32(rec["stats_min"]) and state["max"][0] == np.float32(rec["stats_max"])


# --------------------------------------------------------------------------------------------
# fake quantization (§8)
# --------------------------------------------------------------------------------------------

def golden_case(fq: Dict[str, Any]) -> Dict[str, Any]:
    keys = ("tensor", "role", "scheme", "percentile", "bitwidth", "symmetric", "granularity")
    found = [c for c in GOLDEN["encodings"] if all(c[k] == fq[k] for k in keys)]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("fq", GOLDEN["fake_quant"], ids=[case_id(i, c) for i, c in enumerate(GOLDEN["fake_quant"])])
def test_fake_quant(fq):
    c = golden_case(fq)
    axis = 0 if c["granularity"] == "per_channel" else None
    scale = f32(c["scale"]).astype(np.float64)
    offset = np.asarray(c["legacy_offset"], np.int64)
    n = 2 ** c["bitwidth"] - 1
    if axis is None:
        enc = Encoding(offset[0] * scale[0], (offset[0] + n) * scale[0], scale[0], int(offset[0]), c["bitwidth"],
                       c["symmetric"])
    else:
        enc = Encoding(offset * scale, (offset + n) * scale, scale, offset, c["bitwidth"], c["symmetric"], axis=axis)
    out = fake_quantize_like_aimet(TENSORS[fq["tensor"]], enc)
    assert out.dtype == np.float32 and out.size == fq["num_elements"]
    assert out.ravel()[:64].tolist() == f32(fq["first64"]).tolist()
    assert float(out.astype(np.float64).sum()) == pytest.approx(fq["sum"], rel=1e-9, abs=1e-9)


# --------------------------------------------------------------------------------------------
# the golden model: per-channel weights with bias, upstream input encodings (§7.2)
# --------------------------------------------------------------------------------------------

MODEL = GOLDEN["model"]
# layer: (input encoding, output encoding) as AIMET's protection sees them. conv1 has its own input
# quantizer and no output quantizer (Conv+ReLU); fc's input comes through MaxPool and Flatten,
# which carry no encoding, so AIMET does not protect fc.
LAYERS = {
    "conv1": ("conv1.input.0", None),
    "conv2": ("relu1.output.0", "conv2.output.0"),
    "fc": (None, "fc.output.0"),
}


def model_param(run: Dict[str, Any], key: str) -> np.ndarray:
    folded = run["folded_fp32_conv_params"]
    if key in folded:
        return np.asarray(folded[key], np.float64).astype(np.float32)
    r = MODEL["param_recipes"][key]
    return recipe(r["seed"], r["code"])


@pytest.mark.parametrize("run_name", sorted(MODEL["runs"]))
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_model_weights(run_name, layer):
    """The golden model's per-channel weights (BN-folded, with bias). min_max_ranges/weights.json
    is what QuantAnalyzer wrote after compute_encodings: the protected encodings. The quantizers
    golden.json recorded after the whole analysis hold the plain calibration instead (something
    later in AIMET's analyze() re-calibrates the weights; NOTES.md does not say what)."""
    run = MODEL["runs"][run_name]
    q = run["quantizer_encodings"]
    wq = run["placement"][layer]["param_quantizers"]["weight"]
    shape = tuple(wq["shape"])
    w = model_param(run, f"{layer}.weight").reshape(shape[0], -1)
    bias = model_param(run, f"{layer}.bias")
    enc = plain_encoding(w, run["quant_scheme"], wq["bitwidth"], wq["symmetric"], None, 0, True)
    assert_same(enc, q[f"{layer}.weight"], f"{run_name} {layer} (after analyze)")
    act_bw = run["default_output_bw"]
    inp, out = LAYERS[layer]
    final = protect_weight(enc, bias, act_encoding(q[inp], act_bw, False) if inp else None,
                           act_encoding(q[out], act_bw, False) if out else None)
    ranges = run["analyzer_files"]["min_max_ranges/weights.json"][f"{layer}_weight"]
    want = f32([ranges[f"{layer}_weight_{c}"] for c in range(shape[0])]).reshape(-1, 2)
    assert f32(final.min).tolist() == want[:, 0].tolist()
    assert f32(final.max).tolist() == want[:, 1].tolist()


def test_model_protection_changes_something():
    """The min_max_ranges check above is not vacuous: protection moves conv2's 4-bit range."""
    run = MODEL["runs"]["w4a8_tf_enhanced_default"]
    q = run["quantizer_encodings"]
    w = model_param(run, "conv2.weight").reshape(8, -1)
    enc = plain_encoding(w, "tf_enhanced", 4, True, None, 0, True)
    final = protect_weight(enc, model_param(run, "conv2.bias"), act_encoding(q["relu1.output.0"], 8, False),
                           act_encoding(q["conv2.output.0"], 8, False))
    assert (f32(final.min) != f32(enc.min)).any()


# --------------------------------------------------------------------------------------------
# the observer wraps qa's observers
# --------------------------------------------------------------------------------------------

def test_observer_forwards_to_inner_histogram():
    x = TENSORS["gauss_outliers"].copy()
    x.flat[5] = np.nan
    inner = Histogram(bins=128, name="act")
    obs = AimetObserver("tf_enhanced", inner)
    obs.update(x)
    assert obs.name == "act" and obs.inner is inner
    assert obs.total == inner.total == x.size - 1 and obs.n_nan == 1 and obs.seen_finite
    assert obs.counts is inner.counts and obs.lo == inner.lo and obs.width == inner.width
    enc = aimet_encoding(obs, 8, False)
    record = histogram_record(obs, enc)
    assert sum(record["counts"]) == x.size - 1 and record["encoding_min"] == enc.min
    assert find_sentinels(obs) is None
    with pytest.raises(AttributeError):
        obs.no_such_attribute  # noqa: B018


def test_observer_per_channel_and_running_minmax():
    w = TENSORS["conv_w"]
    inner = RunningMinMax(axis=0)
    obs = AimetObserver("tf", inner, axis=0, name="w")
    obs.update(w)
    assert obs.channels == 8 and np.array_equal(obs.min, inner.min)
    enc = aimet_encoding(obs, 8, True)
    assert enc.axis == 0 and enc.offset.tolist() == [-128] * 8
    with pytest.raises(QAValueError, match="axis"):
        AimetObserver("tf", Histogram(axis=1), axis=0)
    with pytest.raises(QAValueError, match="9 channels"):
        obs.update(np.zeros((9, 3), np.float32))


@pytest.mark.parametrize("scheme", ["tf", "tf_enhanced", "percentile"])
def test_per_channel_equals_per_tensor_per_channel(scheme):
    """Per channel (here along axis 1, over 3 merged batches) = one per-tensor observer per channel."""
    batches = [b.reshape(8, 4, 16) for b in MB_BATCHES]  # 4 channels on axis 1
    pc = AimetObserver(scheme, Histogram(axis=1), axis=1)
    singles = [AimetObserver(scheme, None) for _ in range(4)]
    for b in batches:
        pc.update(b)
        for c, obs in enumerate(singles):
            obs.update(b[:, c])
    enc = aimet_encoding(pc, 8, False, 99.0)
    for c, obs in enumerate(singles):
        one = aimet_encoding(obs, 8, False, 99.0)
        assert (enc.raw_min[c], enc.raw_max[c], enc.scale[c], enc.offset[c]) == (
            one.raw_min, one.raw_max, one.scale, one.offset)


def test_non_finite_values():
    x = np.array([-1.0, 2.0, np.inf, -np.inf, np.nan], np.float32)
    tf = AimetObserver("tf", Histogram())
    tf.update(x)
    assert tf.n_posinf == 1 and tf.n_neginf == 1 and tf.n_nan == 1  # the inner qa observer counts them
    assert aimet_encoding(tf, 8, False).raw_max == 2.0  # left out of AIMET's min/max
    pct = AimetObserver("percentile", None)
    pct.update(x)
    counts = pct.aimet_state()["counts"][0]
    assert counts.sum() == 4 and counts[0] == 2 and counts[-1] == 2  # +-inf in the end bins, NaN nowhere


def test_errors_name_the_quantizer():
    obs = AimetObserver("percentile", None, name="layer3.out")
    with pytest.raises(QAValueError, match="layer3.out: no finite data"):
        aimet_encoding(obs, 8, False)
    obs.update(np.array([np.nan, np.inf], np.float32))
    with pytest.raises(QAValueError, match="layer3.out: no finite data"):
        aimet_encoding(obs, 8, False)
    obs.update(np.array([1.0, 2.0], np.float32))
    for p in (49.9, 100.5, float("nan")):
        with pytest.raises(QAValueError, match="layer3.out: percentile"):
            aimet_encoding(obs, 8, False, p)
    with pytest.raises(QAValueError, match="layer3.out: bitwidth"):
        aimet_encoding(obs, 1, False)
    with pytest.raises(QAValueError, match="layer3.out: symmetric"):
        aimet_encoding(obs, 8, "yes")
    with pytest.raises(QAValueError, match="layer3.out: AIMET scheme"):
        AimetObserver("mse", None, name="layer3.out")
    pc = AimetObserver("tf", None, axis=0, name="w")
    pc.update(np.array([[1.0, 2.0], [np.nan, np.nan]], np.float32))
    with pytest.raises(QAValueError, match=r"w: channel\(s\) \[1\]"):
        aimet_encoding(pc, 8, True)
    with pytest.raises(QAValueError, match="AimetObserver"):
        aimet_encoding(Histogram(), 8, True)


def test_decompose_and_protect_edges():
    assert decompose_weight(np.zeros((4, 4), np.float32), 8, 0) is None  # all-zero channels
    assert decompose_weight(np.array([1.0, np.nan], np.float32), 8, None) is None
    grid_w = (np.arange(-6, 6, dtype=np.float32) * np.float32(0.125)).reshape(3, 4)
    enc = decompose_weight(grid_w, 4, None)
    assert enc.scale == 0.125 and enc.raw_min == -1.0 and enc.raw_max == 0.875
    assert decompose_weight(grid_w * 3, 4, None).scale == 0.375  # the coarsest grid that fits
    w = Encoding(-1.0, 127 / 128, 1 / 128, -128, 8, symmetric=True)
    assert protect_weight(w, None, None, None) is w  # no input encoding: AIMET leaves it alone
    a = Encoding(0.0, 2.55, 0.01, 0, 8)
    big_bias = np.array([1e8], np.float64)  # bias overflow: s_w >= |b| / ((2^31 - 2^15) s_in)
    grown = protect_weight(w, big_bias, a, None)
    assert grown.scale >= 1e8 / ((2**31 - 2**15) * 0.01) * (1 - 1e-6)


def test_module_docstring_examples():
    result = doctest.testmod(aimet_compat, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
