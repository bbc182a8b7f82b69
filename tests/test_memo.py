"""Memoized sweeps give bit-identical results to full evaluations, and really skip work.

Each case analyses one model twice, ``memoize=False`` and ``memoize=True``, with the same data and
callbacks, and compares every score of both sweeps exactly; the log line of the memoized sweeps
says how many calls were replayed instead of computed.
"""

from __future__ import annotations

import logging
import re

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import qa  # noqa: E402

import torch_models as tm  # noqa: E402
import torch_zoo as zoo  # noqa: E402


def _images(shape, n=3):
    return [torch.randn(*shape, generator=torch.Generator().manual_seed(i)) for i in range(n)]


def _run(model, batches, call, tmp_path, caplog, memoize, **kwargs):
    with torch.no_grad():
        reference = [call(model, b) for b in batches]

    def calibrate(m):
        with torch.no_grad():
            for b in batches:
                call(m, b)

    def score(m):
        with torch.no_grad():
            return -float(sum(float(((call(m, b) - r) ** 2).mean()) for b, r in zip(batches, reference)))

    analyzer = qa.QuantAnalyzer(model, batches[0], calibrate, score, progress=False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="qa"):
        result = analyzer.analyze("tf", default_param_bw=4, results_dir=tmp_path / str(memoize), memoize=memoize,
                                  **kwargs)
    return result, caplog.text


def _replayed(text):
    """(replayed, total, passes run again) summed over both sweeps, from the memo's log lines."""
    found = re.findall(r"memoized sweep: (\d+) of (\d+) calls replayed .*?, (\d+) pass\(es\) run again", text)
    assert len(found) == 2, text
    return tuple(sum(int(f[i]) for f in found) for i in range(3))


def _image(m, b):
    return m(b)


CASES = {
    "residual_branches": (tm.Residual, lambda: _images((4, 3, 6, 6)), _image),
    "shared_module": (tm.ReusedActivation, lambda: _images((6, 4)), _image),
    "in_place_relu": (tm.InplaceReluNet, lambda: _images((4, 3, 4, 4)), _image),
    "functional_convs": (zoo.SameConvNet, lambda: _images((4, 3, 16, 16)), _image),
    "tied_head": (zoo.TinyGpt, lambda: [torch.randint(0, 40, (3, 8), generator=torch.Generator().manual_seed(i))
                                        for i in range(3)], _image),
    "bert_keywords": (zoo.TinyBert, lambda: [zoo.bert_inputs(4, 8, seed=i) for i in range(3)],
                      lambda m, b: m(**b)["last_hidden_state"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_memoized_sweeps_equal_full_sweeps(case, tmp_path, caplog):
    make, data, call = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    batches = data()
    full, _ = _run(model, batches, call, tmp_path, caplog, memoize=False)
    memo, text = _run(model, batches, call, tmp_path, caplog, memoize=True)
    assert memo.per_layer_quant_enabled == full.per_layer_quant_enabled  # exactly, not approximately
    assert memo.per_layer_quant_disabled == full.per_layer_quant_disabled
    assert list(memo.per_layer_quant_enabled) == list(full.per_layer_quant_enabled)
    replayed, total, again = _replayed(text)
    assert again == 0
    assert replayed > 0.2 * total, f"only {replayed} of {total} calls replayed"


class _DataDependent(nn.Module):
    """A branch on the values of an intermediate tensor between two layers."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.act = nn.ReLU()

    def forward(self, x):
        h = self.act(self.fc1(x))
        if bool(h.mean() > 0.2):  # reads values: a replay cannot follow it
            h = h * 2.0
        return self.fc3(self.act(self.fc2(h)))


def test_control_flow_on_data_runs_in_full_with_the_same_results(tmp_path, caplog):
    torch.manual_seed(0)
    model = _DataDependent().eval()
    batches = _images((16, 4)) + [torch.randn(16, 4) + 1.0]
    full, _ = _run(model, batches, _image, tmp_path, caplog, memoize=False)
    memo, text = _run(model, batches, _image, tmp_path, caplog, memoize=True)
    assert memo.per_layer_quant_enabled == full.per_layer_quant_enabled
    assert memo.per_layer_quant_disabled == full.per_layer_quant_disabled
    _, _, again = _replayed(text)
    assert again > 0  # passes whose replay would have read an uncomputed value ran again in full


def test_batches_never_seen_twice_run_in_full(tmp_path, caplog):
    """An eval loader with random augmentation: every evaluation sees new batches; nothing is
    replayed and the results still equal the plain path (the same seeds in both runs)."""
    torch.manual_seed(0)
    model = tm.Residual().eval()
    counter = {"n": 0}

    def fresh(m, b):
        counter["n"] += 1
        noise = torch.randn(b.shape, generator=torch.Generator().manual_seed(counter["n"])) * 0.01
        return m(b + noise)

    counter["n"] = 0
    full, _ = _run(model, _images((4, 3, 6, 6)), fresh, tmp_path, caplog, memoize=False)
    counter["n"] = 0
    memo, text = _run(model, _images((4, 3, 6, 6)), fresh, tmp_path, caplog, memoize=True)
    assert memo.per_layer_quant_enabled == full.per_layer_quant_enabled
    replayed, total, _ = _replayed(text)
    assert replayed == 0 and total > 0


def test_a_zero_budget_remembers_nothing(tmp_path, caplog):
    torch.manual_seed(0)
    model = tm.Residual().eval()
    batches = _images((4, 3, 6, 6))
    full, _ = _run(model, batches, _image, tmp_path, caplog, memoize=False)
    memo, text = _run(model, batches, _image, tmp_path, caplog, memoize=True, memo_memory_budget=0)
    assert memo.per_layer_quant_enabled == full.per_layer_quant_enabled
    assert _replayed(text)[0] == 0
    with pytest.raises(qa.QAValueError, match="memo_memory_budget"):
        qa.QuantAnalyzer(model, batches[0], lambda m: None, lambda m: 0.0, progress=False).analyze(
            results_dir=tmp_path / "x", memo_memory_budget=-1)
