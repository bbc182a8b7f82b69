"""Results that are never wrong, stale or lost: the analyzer's side of the trust promises."""

import json
import math

import numpy as np
import pytest

import qa
from qa.report import ResultsDir

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).eval()


X = torch.randn(32, 6)


class Counting:
    """An eval callback (closeness to the user's model) that counts its calls."""

    def __init__(self, net, score=None):
        self.ref = net(X).detach()
        self.calls = 0
        self.score = score

    def __call__(self, model):
        self.calls += 1
        if self.score is not None:
            return self.score(model)
        with torch.no_grad():
            return -float((model(X) - self.ref).pow(2).mean())


def _analyzer(net, evaluate):
    return qa.QuantAnalyzer(net, X[:1], lambda m: m(X), evaluate, progress=False)


def _read(path):
    return json.loads(path.read_text())


def test_a_layer_that_makes_the_score_nan_ranks_first_and_is_stored_as_valid_json(tmp_path):
    net = _net()
    original = net[2].weight.detach().clone()

    def score(model):  # quantizing layer 2's weight breaks the model (as a decomposed LayerNorm can)
        if not torch.equal(model[2].weight, original):
            return float("nan")
        with torch.no_grad():
            return -float((model(X) - net(X)).pow(2).mean())

    result = _analyzer(net, Counting(net, score)).analyze("tf", results_dir=tmp_path)
    assert math.isnan(result.per_layer_quant_enabled["2"])
    assert result.most_sensitive_layers(1) == ["2"]
    text = (tmp_path / "per_layer_quant_enabled.json").read_text()
    assert json.loads(text)["2"] is None and "nan" not in text.lower()  # valid JSON: null, not "nan"
    summary = _read(tmp_path / "summary.json")
    assert summary["nonfinite_scores"]["per_layer_quant_enabled"] == {"2": "nan"}
    assert summary["most_sensitive_layers"][0] == "2"
    assert any("quantizing only 2 makes the score nan" in p for p in summary["problems"])


def test_nan_weights_are_said_plainly(tmp_path):
    net = _net()
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    result = _analyzer(net, Counting(net)).analyze("tf", results_dir=tmp_path)
    assert result.status == "complete"
    problems = " | ".join(result.problems)
    assert "the weight of 0_weight contains 1 NaN/inf value(s)" in problems
    assert "every score is NaN or infinite" in problems
    assert result.nonfinite_quantizers and not result.unused_quantizers  # not "their layers never ran"


def test_nothing_quantized_is_a_finding_of_its_own(tmp_path):
    net = _net()
    off = {"defaults": {"ops": {"is_output_quantized": False}, "params": {"is_quantized": False}},
           "params": {}, "op_type": {}, "supergroups": [], "model_input": {"is_input_quantized": False},
           "model_output": {}}
    result = _analyzer(net, Counting(net)).analyze("tf", config_file=off, results_dir=tmp_path)
    assert result.active_quantizers == 0
    assert any("nothing was quantized" in p for p in result.problems)
    assert _read(tmp_path / "summary.json")["active_quantizers"] == 0


def test_an_eval_returning_a_huge_integer_is_a_clear_error(tmp_path):
    net = _net()
    with pytest.raises(qa.QACallbackError, match="too large for a float"):
        _analyzer(net, lambda m: 10 ** 400).analyze("tf", results_dir=tmp_path)
    assert _read(tmp_path / "summary.json")["status"] == "failed"


def test_empty_mse_data_fails_before_any_evaluation(tmp_path):
    net = _net()
    evaluate = Counting(net)
    analyzer = _analyzer(net, evaluate)
    analyzer.enable_per_layer_mse_loss([], 2)
    with pytest.raises(qa.QAValueError, match="yielded no batches"):
        analyzer.analyze("tf", results_dir=tmp_path)
    assert evaluate.calls == 0
    analyzer.enable_per_layer_mse_loss([torch.randn(4, 7)], 1)  # the wrong width: the model fails on it
    with pytest.raises(qa.QACallbackError, match="per-layer MSE"):
        analyzer.analyze("tf", results_dir=tmp_path)
    assert evaluate.calls == 0


def test_a_one_shot_mse_generator_still_gives_every_batch(tmp_path):
    net = _net()
    batches = [torch.randn(8, 6) for _ in range(3)]
    analyzer = _analyzer(net, Counting(net))
    analyzer.enable_per_layer_mse_loss((b for b in batches), 3)
    from_generator = analyzer.analyze("tf", results_dir=tmp_path / "gen").per_layer_mse
    analyzer.enable_per_layer_mse_loss(batches, 3)
    from_list = analyzer.analyze("tf", results_dir=tmp_path / "list").per_layer_mse
    assert from_generator == from_list and from_list


def test_a_rerun_owns_the_folder_no_stale_files(tmp_path):
    net = _net()
    analyzer = _analyzer(net, Counting(net))
    analyzer.enable_per_layer_mse_loss([torch.randn(8, 6)], 1)
    first = analyzer.analyze("tf_enhanced", results_dir=tmp_path)
    assert (tmp_path / "per_layer_mse_loss.json").is_file() and (tmp_path / "activations_pdf").is_dir()
    analyzer._mse_data = None  # the second run: min-max, no MSE
    second = analyzer.analyze("tf", results_dir=tmp_path)
    assert not (tmp_path / "per_layer_mse_loss.json").exists()
    assert not any((tmp_path / "activations_pdf").glob("*.json"))  # tf has no histograms
    summary = _read(tmp_path / "summary.json")
    listed = set(summary["files"])
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
               and not p.relative_to(tmp_path).as_posix().startswith("_static/")}
    assert listed <= {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {f for f in on_disk if f.endswith(".json")} <= listed
    assert "index.html" in listed and "summary.json" in listed
    assert second.fingerprint != first.fingerprint and second.reused_evaluations == 0


def test_a_same_settings_rerun_reuses_everything_unless_told_not_to(tmp_path):
    net = _net()
    evaluate = Counting(net)
    analyzer = _analyzer(net, evaluate)
    first = analyzer.analyze("tf", results_dir=tmp_path)
    n = evaluate.calls
    again = analyzer.analyze("tf", results_dir=tmp_path)
    assert evaluate.calls == n and again.reused_evaluations == n
    assert again.per_layer_quant_enabled == first.per_layer_quant_enabled and again.fingerprint == first.fingerprint
    analyzer.analyze("tf", results_dir=tmp_path, resume=False)
    assert evaluate.calls == 2 * n
    analyzer.analyze("tf", default_param_bw=4, results_dir=tmp_path)  # other settings: nothing reused
    assert evaluate.calls == 3 * n


def test_the_first_error_is_never_masked_by_the_summary_write(tmp_path, monkeypatch):
    net = _net()
    analyzer = _analyzer(net, Counting(net))
    real = ResultsDir.write_json

    def full_disk(self, data, *parts):
        if parts[-1].startswith("per_layer"):
            raise qa.QAError("cannot write per_layer_quant_enabled.json: No space left on device")
        if parts[-1] == "summary.json" and data.get("status") == "failed":
            raise qa.QAError("cannot write summary.json: No space left on device")
        return real(self, data, *parts)

    monkeypatch.setattr(ResultsDir, "write_json", full_disk)
    with pytest.raises(qa.QAError, match="per_layer_quant_enabled.json: No space"):
        analyzer.analyze("tf", results_dir=tmp_path)


def test_an_eval_callback_that_leaves_training_mode_on_does_not_leak(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).eval()

    def polite(model):
        with torch.no_grad():
            return float(model(X).sum())

    def rude(model):
        score = polite(model)
        model.train()  # and never back: dropout would be on in every later evaluation
        return score

    rude_result = _analyzer(net, rude).analyze("tf", results_dir=tmp_path / "rude")
    polite_result = _analyzer(net, polite).analyze("tf", results_dir=tmp_path / "polite")
    assert rude_result.per_layer_quant_enabled == polite_result.per_layer_quant_enabled
    assert rude_result.per_layer_quant_disabled == polite_result.per_layer_quant_disabled
    assert rude_result.quantized_score == polite_result.quantized_score
