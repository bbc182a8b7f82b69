"""qa.recommend: the remedies for the culprit layers are measured, the plan meets the target or says it
does not, and the written config computes exactly the confirmed score.

The model: a small CNN trained here (a few hundred steps on synthetic 4-class images) whose
depthwise conv gets one channel with an 8x wider weight range, compensated in the pointwise conv
after it (the FP32 function is unchanged). At 4-bit per-tensor weights that one channel sets the
grid and the other seven round to almost nothing: per-channel weights for that conv are the fix.
"""

import copy
import doctest
import io
import json
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import qa  # noqa: E402
import qa.cli  # noqa: E402
import qa.recommend  # noqa: E402
from qa.config import dump_config, load_config  # noqa: E402
from qa.errors import QAError, QAValueError  # noqa: E402
from qa.recommend import (CONFIG_FILE, RECOMMENDATION_FILE, Candidate, Change, Target, merged_config,  # noqa: E402
                          merged_settings, parse_target, plan_changes, recommend)

SCHEME, PARAM_BW, OUTPUT_BW = "tf_enhanced", 4, 8
CONFIG = "per_tensor"  # AIMET's per-tensor weights: the per-channel fix is what the analysis should find


class Net(nn.Module):
    def __init__(self, names=None) -> None:
        super().__init__()
        names = names or {}
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.relu2 = nn.ReLU()
        self.pw = nn.Conv2d(8, 16, 1)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.dw(x))
        x = self.relu3(self.pw(x))
        return self.fc(self.flat(self.pool(x)))


def _data(n, gen, protos):
    y = torch.randint(0, protos.shape[0], (n,), generator=gen)
    return protos[y] + 0.8 * torch.randn(n, *protos.shape[1:], generator=gen), y


def make_trained(spread: float = 8.0):
    """(model, calibration images, eval images, eval labels): FP32 accuracy ~100%."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    protos = torch.randn(4, 3, 8, 8, generator=gen)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x, y = _data(2048, gen, protos)
    for _ in range(150):
        idx = torch.randint(0, 2048, (128,), generator=gen)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    scale = torch.ones(8)
    scale[0] = spread  # one wide channel in the depthwise conv, compensated in the pointwise conv
    with torch.no_grad():
        net.dw.weight.mul_(scale.view(-1, 1, 1, 1))
        net.dw.bias.mul_(scale)
        net.pw.weight.div_(scale.view(1, -1, 1, 1))
    xc, _ = _data(128, gen, protos)
    xe, ye = _data(1024, gen, protos)
    return net.eval(), xc, xe, ye


class Counter:
    """eval_callback: accuracy in %, counting its calls."""

    def __init__(self, xe, ye) -> None:
        self.xe, self.ye, self.calls = xe, ye, 0

    def __call__(self, model) -> float:
        self.calls += 1
        with torch.no_grad():
            return float((model(self.xe).argmax(1) == self.ye).float().mean() * 100)


@pytest.fixture(scope="module")
def trained():
    return make_trained()


@pytest.fixture(scope="module")
def analysed(trained, tmp_path_factory):
    net, xc, xe, ye = trained
    state = copy.deepcopy(net.state_dict())
    score = Counter(xe, ye)
    analyzer = qa.QuantAnalyzer(net, xe[:1], lambda m: m(xc), score, progress=False)
    out = tmp_path_factory.mktemp("recommend") / "results"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = analyzer.analyze(SCHEME, PARAM_BW, OUTPUT_BW, CONFIG, results_dir=out)
    before = (out / "index.html").read_text(encoding="utf-8")
    sim = analyzer.create_quantsim(SCHEME, PARAM_BW, OUTPUT_BW, CONFIG)
    encodings = sim.encodings()
    calls = score.calls
    rec = recommend(analyzer, sim, result, target={"relative": 0.02})
    return SimpleNamespace(net=net, state=state, analyzer=analyzer, result=result, sim=sim, rec=rec, out=out,
                           evaluations=score.calls - calls, encodings=encodings, before=before, score=score)


def _candidate(rec, layer, kind, value=None):
    found = [c for c in rec.candidates if c.change.layer == layer and c.change.kind == kind
             and (value is None or c.change.value == value)]
    assert found, [(c.change.layer, c.change.kind, c.change.value) for c in rec.candidates]
    return found[0]


# ---- the measurements ------------------------------------------------------------------------------

def test_the_analysis_sees_the_depthwise_conv_as_a_culprit(analysed):
    r = analysed.result
    assert r.fp32_score > 99 and r.fp32_score - r.quantized_score > 10  # 4-bit weights cost a lot
    assert "dw" in r.most_sensitive_layers(3)
    assert analysed.rec.layers[:3] == r.most_sensitive_layers(3)


def test_per_channel_weights_for_the_depthwise_conv_are_measured_and_recover_most_of_the_loss(analysed):
    rec, r = analysed.rec, analysed.result
    loss = r.fp32_score - r.quantized_score
    fix = _candidate(rec, "dw", "per_channel")
    assert fix.source == "evaluated" and fix.change.settings == {"dw_weight": {"per_channel": True}}
    assert fix.delta == pytest.approx(fix.score - r.quantized_score)
    assert fix.delta > 0.6 * loss, (fix.score, r.quantized_score, r.fp32_score)
    assert fix.change.extra_weight_bits == 0 and fix.change.extra_encodings == 7
    # 8-bit weights cost 4 more bits for each of the 72 weights; per channel is as good for none
    wide = _candidate(rec, "dw", "param_bw", 8)
    assert wide.change.extra_weight_bits == 4 * 72
    # leaving it in float is the disabling sweep's measurement, reused, not evaluated again
    flt = _candidate(rec, "dw", "float")
    assert flt.source == "sweep" and flt.score == r.per_layer_quant_disabled["dw"]
    assert flt.change.extra_weight_bits == (32 - 4) * 72


def test_the_plan_reaches_the_target_and_the_written_config_computes_the_same_score(analysed):
    rec, analyzer = analysed.rec, analysed.analyzer
    assert rec.status == "reached" and rec.reached and rec.score >= rec.goal
    assert rec.notes == []  # among them: the check that the written config sets what the plan measured
    assert rec.goal == pytest.approx(analysed.result.fp32_score * 0.98)
    assert ("dw", "per_channel") in [(c.layer, c.kind) for c in rec.plan]  # the cheapest fix that works
    assert rec.plan_evaluated == ("final" if len(rec.plan) > 1 else "candidate")
    path = analysed.out / CONFIG_FILE
    assert path in rec.files
    # an independent simulation, calibrated again from the written config alone
    fresh = analyzer.create_quantsim(SCHEME, PARAM_BW, OUTPUT_BW, config_file=str(path))
    fresh.set_active(fresh.enabled)
    assert fresh.evaluate(analyzer.eval_callback, "independent check") == rec.score
    planned = analysed.sim.derive(merged_settings(rec.plan))
    assert fresh.encodings() == planned.encodings()
    assert fresh.enabled == planned.enabled


def _aimet_schema():
    return json.loads((Path(qa.__file__).parent / "report" / "schema" / "aimet_quantsim_config.schema.json")
                      .read_text())


def test_the_aimet_config_is_valid_for_aimet_and_lists_what_it_cannot_hold(analysed):
    """recommended_config_aimet.json passes AIMET's config schema (no qa extensions); the plan's
    changes it could not move to an op type (dw is one Conv of three) are listed for AIMET users, and
    with the file alone qa computes the plan for every other quantizer."""
    import jsonschema

    rec = analysed.rec
    path = analysed.out / qa.recommend.AIMET_CONFIG_FILE
    assert path in rec.files
    aimet = json.loads(path.read_text())
    jsonschema.validate(aimet, _aimet_schema())
    with pytest.raises(jsonschema.ValidationError):  # qa's own form is not AIMET's
        jsonschema.validate(json.loads((analysed.out / CONFIG_FILE).read_text()), _aimet_schema())
    listed = json.loads((analysed.out / RECOMMENDATION_FILE).read_text())["aimet"]
    assert listed["config_file"] == path.name
    assert [c["layer"] for c in listed["per_layer"]] == rec.aimet_per_layer
    assert "dw" in rec.aimet_per_layer  # a depthwise Conv: per-channel for all Convs would change conv1 and pw
    planned = analysed.sim.derive(merged_settings(rec.plan))
    wrong = qa.recommend._config_mismatch(analysed.sim, planned, aimet)
    own = {q.name for name in rec.aimet_per_layer for q in analysed.sim.graph[name].quantizers}
    assert wrong and set(wrong) <= own


def test_a_change_aimet_can_hold_moves_to_its_op_type(analysed):
    """fc is the model's only Gemm: its 8-bit weights become op_type.Gemm's kernel, and a simulation
    from the AIMET file alone computes the plan's encodings exactly."""
    import jsonschema

    sim = analysed.sim
    change = [c for c in qa.recommend._Layer(sim, "fc", {}).changes(["param_bw"]) if c.value == 8]
    config = merged_config(dump_config(sim.config), change)
    planned = sim.derive(merged_settings(change))
    aimet, left = qa.recommend.aimet_plan_config(sim, planned, config)
    assert left == [] and "layers" not in aimet
    assert aimet["op_type"]["Gemm"]["supported_kernels"][0]["param"]["bitwidth"] == 8
    jsonschema.validate(aimet, _aimet_schema())
    fresh = analysed.analyzer.create_quantsim(SCHEME, PARAM_BW, OUTPUT_BW, config_file=aimet)
    assert fresh.encodings() == planned.encodings()


def test_candidate_evaluations_are_memoized_and_equal_full_evaluations(trained, tmp_path, caplog):
    """With memoize (the default), the candidates run in one memoized block against the fully
    quantized model: calls before a candidate's first changed quantizer are replayed, and every
    score equals that of a full evaluation bit for bit."""
    import logging

    net, xc, xe, ye = trained
    recs = {}
    for memoize in (False, True):
        analyzer = qa.QuantAnalyzer(net, xe[:1], lambda m: m(xc), Counter(xe, ye), progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = analyzer.analyze(SCHEME, PARAM_BW, OUTPUT_BW, CONFIG, results_dir=tmp_path / str(memoize),
                                      memoize=memoize)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="qa"):
            recs[memoize] = recommend(analyzer, analyzer.create_quantsim(SCHEME, PARAM_BW, OUTPUT_BW, CONFIG), result,
                                      target={"absolute": 0.0}, results=tmp_path / f"r{memoize}", report=False)
        replayed = [int(n) for n in re.findall(r"memoized sweep: (\d+) of \d+ calls replayed", caplog.text)]
        assert (replayed and max(replayed) > 0) if memoize else not replayed
    full, memo = recs[False], recs[True]
    assert [(c.change.layer, c.change.description, c.score) for c in memo.candidates] == \
        [(c.change.layer, c.change.description, c.score) for c in full.candidates]
    assert (memo.score, memo.evaluations) == (full.score, full.evaluations) and full.plan_evaluated == "final"


def test_evaluations_are_counted_as_eval_callback_saw_them(analysed):
    rec = analysed.rec
    evaluated = sum(c.source == "evaluated" for c in rec.candidates)
    assert rec.evaluations == analysed.evaluations == evaluated + (rec.plan_evaluated == "final")
    assert json.loads((analysed.out / RECOMMENDATION_FILE).read_text())["evaluations"] == rec.evaluations


def test_nothing_else_changes(analysed):
    """The user's model, the analysis's simulation and every quantizer a change does not touch."""
    for key, value in analysed.state.items():
        assert torch.equal(analysed.net.state_dict()[key], value), key
    assert analysed.sim.encodings() == analysed.encodings == analysed.result.encodings
    derived = analysed.sim.derive({"dw_weight": {"per_channel": True}})
    for name, q in analysed.sim.quantizers.items():
        if name != "dw_weight":
            assert derived.quantizers[name].encoding is q.encoding, name
    assert derived.quantizers["dw_weight"].encoding.per_channel
    assert not analysed.sim.quantizers["dw_weight"].encoding.per_channel


@pytest.mark.parametrize("layer, kinds", [("dw", ["per_channel"]), ("conv1", ["scheme"]), ("pw", ["float"]),
                                          ("conv1", ["param_bw", "output_bw"]), ("conv1", ["float"]),
                                          ("relu3", ["output_bw", "scheme"])])
def test_every_kind_of_change_is_what_a_simulation_from_the_config_computes(analysed, layer, kinds):
    """derive (encodings recomputed from kept statistics) == a fresh calibration from the config."""
    sim = analysed.sim
    changes = [c for c in qa.recommend._Layer(sim, layer, {}).changes(kinds)
               if c.kind != "param_bw" and c.kind != "output_bw" or c.value == 16]
    assert {c.kind for c in changes} == set(kinds)
    config = merged_config(dump_config(sim.config), changes)
    if set(kinds) == {"param_bw", "output_bw"}:  # one kernel for both
        assert config["layers"][layer]["supported_kernels"][0]["activation"]["bitwidth"] == 16
        assert config["layers"][layer]["supported_kernels"][0]["param"]["bitwidth"] == 16
    fresh = analysed.analyzer.create_quantsim(SCHEME, PARAM_BW, OUTPUT_BW, config_file=config)
    derived = sim.derive(merged_settings(changes))
    assert fresh.encodings() == derived.encodings()
    assert fresh.enabled == derived.enabled
    assert fresh.encodings() != sim.encodings() or fresh.enabled != sim.enabled


# ---- the files ---------------------------------------------------------------------------------------

def test_the_config_round_trips_through_load_config(analysed):
    path = analysed.out / CONFIG_FILE
    data = json.loads(path.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown key, no unknown layer
        cfg = load_config(path)
    assert dump_config(cfg) == data
    assert cfg.layers["dw"].params["weight"].per_channel_quantization is True
    # the rest is the analysis's config (AIMET's per-tensor config here), untouched
    assert {k: v for k, v in data.items() if k != "layers"} == dump_config(load_config(CONFIG))


def test_recommendation_json_validates_against_its_schema(analysed):
    jsonschema = pytest.importorskip("jsonschema")
    from qa.report._load import validate_recommendation

    schema = json.loads((Path(qa.__file__).parent / "report" / "schema" / "recommendation.schema.json").read_text())
    data = json.loads((analysed.out / RECOMMENDATION_FILE).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(data, schema)
    assert len(data["candidates"]) == len(analysed.rec.candidates) >= 10
    for entry in data["candidates"]:
        assert {"layer", "change", "score", "delta", "extra_weight_bits", "extra_activation_bits"} <= set(entry)
    assert data["plan"]["status"] == "reached" and data["plan"]["score"] == analysed.rec.score
    assert data["target"] == {"relative": 0.02}
    bad = copy.deepcopy(data)
    bad["candidates"][0]["score"] = "high"
    with pytest.raises(QAError, match=r"recommendation.json: candidates\[0\].score"):
        validate_recommendation(bad)


def test_the_dashboard_replaces_unverified_advice_with_measured_facts(analysed):
    before = analysed.before
    after = (analysed.out / "index.html").read_text(encoding="utf-8")
    assert "Verified fixes" not in before and "Quantize dw_weight per channel" in before
    assert 'id="verified-fixes"' in after and 'data-status="reached"' in after
    assert "Quantize dw_weight per channel" not in after  # the dw card holds facts now
    assert "dw_weight per channel: " in after and "vs fully quantized" in after
    summary = json.loads((analysed.out / "summary.json").read_text())
    assert {CONFIG_FILE, RECOMMENDATION_FILE} <= set(summary["files"])


# ---- targets -----------------------------------------------------------------------------------------

def test_a_target_that_cannot_be_reached_is_reported_as_missed(analysed, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(analysed.out, root)
    rec = recommend(analysed.analyzer, analysed.sim, analysed.result, target={"absolute": 0.0}, layers=1,
                    candidates_per_layer=["param_bw"], results=root)
    assert rec.layers == ["dw"] and rec.plan and rec.plan[0].kind == "param_bw"
    assert rec.status == "missed" and rec.reached is False
    assert rec.score < rec.goal == analysed.result.fp32_score
    assert rec.plan_evaluated == "candidate" and rec.evaluations == 2  # a one-change plan is its measurement
    page = (root / "index.html").read_text(encoding="utf-8")
    assert 'data-status="missed"' in page and "MISSES the target" in page and "The target is missed" in page
    data = json.loads((root / RECOMMENDATION_FILE).read_text())
    assert data["plan"]["reached"] is False and data["plan"]["status"] == "missed"


def test_a_target_already_met_changes_nothing(analysed, tmp_path):
    rec = recommend(analysed.analyzer, analysed.sim, analysed.result, target=0.5, layers=1,
                    candidates_per_layer=1, results=tmp_path, report=False)
    assert rec.status == "met" and rec.reached and rec.plan == [] and rec.score == analysed.result.quantized_score
    assert len(rec.candidates) == 1 and rec.evaluations == 1  # the one candidate; no plan to confirm
    assert "layers" not in rec.config


def test_target_forms():
    assert parse_target(None) == Target("relative", 0.01)
    assert parse_target(0.05) == parse_target({"relative": 0.05}) == Target("relative", 0.05)
    assert parse_target({"absolute": 0.5}).goal(87.4) == pytest.approx(86.9)
    assert Target("relative", 0.1).goal(-2.0) == pytest.approx(-2.2)  # below FP32 for negative scores too
    for bad in (-0.1, float("nan"), "0.1", True, {"relative": 0.1, "absolute": 1}, {"rel": 0.1}, [0.1]):
        with pytest.raises(QAValueError):
            parse_target(bad)


def test_arguments_are_checked(analysed, tmp_path):
    a, s, r = analysed.analyzer, analysed.sim, analysed.result
    with pytest.raises(QAValueError, match="candidates_per_layer"):
        recommend(a, s, r, candidates_per_layer=["bigger"], results=tmp_path, report=False)
    with pytest.raises(QAValueError, match="not the analysis's"):
        recommend(a, a.create_quantsim(SCHEME, 8, OUTPUT_BW, CONFIG), r, results=tmp_path, report=False)
    broken = copy.copy(r)
    broken.quantized_score = float("nan")
    with pytest.raises(QAError, match="fully quantized"):
        recommend(a, s, broken, results=tmp_path, report=False)


def test_the_plan_is_the_fewest_cheapest_changes():
    def cand(layer, kind, bits, gain):
        return Candidate(Change(layer, kind, None, kind, {}, extra_weight_bits=bits), 70.0 + gain, gain)

    cands = [cand("a", "per_channel", 0, 9.5), cand("a", "float", 900, 10.0), cand("b", "param_bw", 100, 5.0),
             cand("b", "float", 300, 6.0), cand("c", "float", 50, 1.0)]
    names = lambda plan: [(c.change.layer, c.change.kind) for c in plan]  # noqa: E731
    assert names(plan_changes(cands, 70.0, 79.0)) == [("a", "per_channel")]  # enough alone, and free
    assert names(plan_changes(cands, 70.0, 84.0)) == [("a", "per_channel"), ("b", "param_bw")]
    # out of reach: the most each layer gives, cheapest within 90% of its best (a: 9.5 of 10; b: 5 < 0.9 x 6)
    assert names(plan_changes(cands, 70.0, 99.0)) == [("a", "per_channel"), ("b", "float"), ("c", "float")]
    assert plan_changes(cands, 80.0, 79.0) == [] and plan_changes([cand("a", "float", 9, -1.0)], 70.0, 79.0) == []


def test_docstring_examples():
    result = doctest.testmod(qa.recommend, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 5


# ---- ONNX ----------------------------------------------------------------------------------------------

def test_onnx_model_gets_the_same_fix(trained, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    net, xc, xe, ye = trained
    buf = io.BytesIO()
    torch.onnx.export(net, (xe[:1],), buf, dynamo=False, opset_version=17, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    calib, data, labels = xc.numpy(), xe.numpy(), ye.numpy()

    def accuracy(session):
        return float((session.run(None, {"input": data})[0].argmax(1) == labels).mean() * 100)

    analyzer = qa.QuantAnalyzer(proto, {"input": data[:1]}, lambda s: s.run(None, {"input": calib}), accuracy,
                                progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = analyzer.analyze(SCHEME, PARAM_BW, OUTPUT_BW, CONFIG, results_dir=tmp_path / "onnx")
    sim = analyzer.create_quantsim(SCHEME, PARAM_BW, OUTPUT_BW, CONFIG)
    rec = recommend(analyzer, sim, result, target={"relative": 0.02}, report=False)
    dw = next(name for name in rec.layers if "dw" in name)
    fix = _candidate(rec, dw, "per_channel")
    assert fix.delta > 0.6 * (result.fp32_score - result.quantized_score)
    assert rec.status == "reached" and (dw, "per_channel") in [(c.layer, c.kind) for c in rec.plan]
    fresh = analyzer.create_quantsim(SCHEME, PARAM_BW, OUTPUT_BW, config_file=str(tmp_path / "onnx" / CONFIG_FILE))
    fresh.set_active(fresh.enabled)
    assert fresh.evaluate(analyzer.eval_callback, "independent check") == rec.score


# ---- in a browser ----------------------------------------------------------------------------------------

def test_verified_fixes_show_in_chromium_with_names_as_text(tmp_path):
    pytest.importorskip("altair")
    from test_report_browser import ARGS, CHROMIUM, PAYLOADS, _browser_or_skip, charts_drawn, open_page

    sync_playwright = _browser_or_skip()
    net, xc, xe, ye = make_trained()
    names = {"dw": PAYLOADS[0], "pw": PAYLOADS[1], "conv1": PAYLOADS[4]}
    renamed = nn.Sequential()
    for name, module in net.named_children():  # the same layers in forward order, some named like payloads
        renamed.add_module(names.get(name, name), module)
    score = Counter(xe, ye)
    analyzer = qa.QuantAnalyzer(renamed, xe[:1], lambda m: m(xc), score, progress=False)
    out = tmp_path / "results"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = analyzer.analyze(SCHEME, PARAM_BW, OUTPUT_BW, CONFIG, results_dir=out)
        rec = recommend(analyzer, analyzer.create_quantsim(SCHEME, PARAM_BW, OUTPUT_BW, CONFIG), result,
                        target={"relative": 0.02}, results=out)
    assert PAYLOADS[0] in rec.layers and rec.status == "reached"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(out / CONFIG_FILE).layers[PAYLOADS[0]].params["weight"].per_channel_quantization
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page, errors, outside, dialogs = open_page(browser, out / "index.html")
            charts_drawn(page)
            section = page.locator("#verified-fixes-table")
            assert section.is_visible() and page.locator("#verified-fixes").inner_text() == "Verified fixes"
            text = section.inner_text()
            assert PAYLOADS[0] in text and PAYLOADS[1] in text  # names shown as text
            assert f"{PAYLOADS[0]}_weight per channel" in text
            plan = page.locator("#verified-plan").inner_text()
            assert "reaches the target" in plan and PAYLOADS[0] in plan
            rows = section.locator("tbody tr")
            assert rows.count() == len(rec.candidates)
            assert section.locator("tr.in-plan").count() == len(rec.plan)
            assert page.locator("img[src=x]").count() == 0
            assert not dialogs and not outside and not errors, (dialogs, outside, errors)
            page.close()
        finally:
            browser.close()


def test_analyze_recommend_true_runs_it_and_lists_its_files(trained, tmp_path):
    """analyze(recommend=True, target=...): the same plan as the standalone call, in the result,
    summary.json (validated by qa report) and the run's file list."""
    net, xc, xe, ye = trained
    analyzer = qa.QuantAnalyzer(net, xe[:1], lambda m: m(xc), Counter(xe, ye), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = analyzer.analyze(SCHEME, PARAM_BW, OUTPUT_BW, CONFIG, results_dir=tmp_path, recommend=True,
                                  target={"relative": 0.02})
    assert result.recommendation is not None and result.seconds["recommendation"] > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["recommendation"] is not None
    assert {"recommendation.json", "recommended_config.json"} <= set(summary["files"])
    assert qa.cli.main(["report", str(tmp_path)]) == 0
    with pytest.raises(qa.QAValueError):
        analyzer.analyze(SCHEME, PARAM_BW, OUTPUT_BW, CONFIG, results_dir=tmp_path / "bad", recommend=True, target="x")
