"""Memoized sweeps on ONNX models give bit-identical results to full evaluations, and really skip work.

Each case analyses one model twice, ``memoize=False`` and ``memoize=True`` (the same data and
callbacks), and compares every score of both sweeps exactly; the memo's log line says how many
node runs were skipped. A lower-level check runs every evaluation of both sweeps with and without
the memo and compares every output array exactly. Models: residual branches (onnx.helper, and a
ResNet-like network exported from torch), tied weights (one initializer read by two layers, an
embedding tied to a head through Transpose / Identity plumbing), and transformer blocks exported
from torch (BERT-like with a padding mask, at opsets 17 and 20; GPT-like with a head tied to the
embedding).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import qa  # noqa: E402
from qa.adapters.onnx import OnnxAdapter  # noqa: E402
from qa.adapters.onnx import memo as memo_module  # noqa: E402
from qa.sim import QuantSim  # noqa: E402

import onnx_models as om  # noqa: E402

log = logging.getLogger(__name__)

_LINE = re.compile(r"memoized sweep: (\d+) of (\d+) node runs skipped \(\d+%\), (\d+) of (\d+) runs from a "
                   r"remembered frontier")


# ---- models and data ------------------------------------------------------------------------------

def _export(module, feeds, opset=17):
    """torch.onnx.export of ``module`` called with the feeds (in order), the batch axis dynamic."""
    torch = pytest.importorskip("torch")
    names = list(feeds)
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, f, dynamo=False, opset_version=opset, do_constant_folding=False,
                          input_names=names, dynamic_axes={n: {0: "batch"} for n in names})
    return onnx.load_from_string(f.getvalue())


def _resnet(blocks, c=8):
    """stem conv, ``blocks`` residual blocks (conv-BN-ReLU-conv-BN, added to the block's input, ReLU), a head."""
    torch = pytest.importorskip("torch")
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
            self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, c, 3, padding=1)
            self.blocks = nn.Sequential(*[Block() for _ in range(blocks)])
            self.head = nn.Linear(c, 10)

        def forward(self, x):
            return self.head(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net


def _images(name, shape, n=3):
    rng = np.random.default_rng(0)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _tokens(shape, vocab, n=3):
    rng = np.random.default_rng(1)
    return [{"ids": rng.integers(0, vocab, shape).astype(np.int64)} for _ in range(n)]


def _case_resnet():
    data = _images("image", (4, 3, 8, 8))
    return _export(_resnet(3), data[0]), data


def _case_bert(opset):
    torch = pytest.importorskip("torch")
    import torch_zoo as zoo

    class Outputs(torch.nn.Module):  # the dict as a tuple: ONNX outputs are positional
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.bert = zoo.TinyBert(layers=1).eval()

        def forward(self, input_ids, attention_mask):
            out = self.bert(input_ids, attention_mask)
            return out["last_hidden_state"], out["pooler_output"]

    data = [{k: v.numpy() for k, v in zoo.bert_inputs(4, 8, seed=i).items()} for i in range(3)]
    return _export(Outputs().eval(), data[0], opset=opset), data


def _case_gpt():
    torch = pytest.importorskip("torch")
    import torch_zoo as zoo

    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    data = [{"input_ids": rng.integers(0, 40, (3, 8)).astype(np.int64)} for _ in range(3)]
    return _export(zoo.TinyGpt().eval(), data[0]), data


CASES = {
    "residual_helper": lambda: (om.conv_bn_constants(), _images("image", (4, 3, 8, 8))),
    "residual_export": _case_resnet,
    "tied_weights": lambda: (om.tied_weights(), _images("x", (8, 4))),
    "tied_through_plumbing": lambda: (om.tied_through_plumbing(), _tokens((4, 5), 12)),
    "bert_opset17": lambda: _case_bert(17),
    "bert_opset20": lambda: _case_bert(20),
    "gpt_tied_head": _case_gpt,
}


# ---- helpers --------------------------------------------------------------------------------------

@pytest.fixture
def build_always(monkeypatch):
    """Suffix sessions are built whatever they cost: these models are too small for a build to pay
    off, and the tests are about the results of running from remembered tensors."""
    monkeypatch.setattr(memo_module, "BUILD_PAYOFF", 0.0)


def _reference(model, data):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [[np.asarray(o, np.float64) for o in sess.run(None, feeds)] for feeds in data]


def _callbacks(model, data, fresh=False):
    """Calibration over the data; a score that is minus the squared error of every output against
    the FP32 outputs. ``fresh``: every evaluation perturbs its batches anew (random augmentation)."""
    reference = _reference(model, data)
    calls = {"n": 0}

    def calibrate(session):
        for feeds in data:
            session.run(None, feeds)

    def score(session):
        total = 0.0
        for feeds, ref in zip(data, reference):
            if fresh:
                calls["n"] += 1
                rng = np.random.default_rng(calls["n"])
                feeds = {k: (v + rng.standard_normal(v.shape).astype(v.dtype) * 0.01 if v.dtype.kind == "f" else v)
                         for k, v in feeds.items()}
            for out, r in zip(session.run(None, feeds), ref):
                total += float(np.mean((out.astype(np.float64) - r) ** 2))
        return -total
    return calibrate, score


def _analyze(model, data, tmp_path, caplog, memoize, fresh=False, **kwargs):
    calibrate, score = _callbacks(model, data, fresh)
    analyzer = qa.QuantAnalyzer(model, data[0], calibrate, score, progress=False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="qa"):
        result = analyzer.analyze("tf", default_param_bw=4, results_dir=tmp_path / f"memo_{memoize}",
                                  memoize=memoize, **kwargs)
    return result, caplog.text


def _saved(text):
    """(node runs skipped, node runs, runs from a frontier, runs) summed over both sweeps' log lines."""
    found = _LINE.findall(text)
    assert len(found) == 2, text
    return tuple(sum(int(f[i]) for f in found) for i in range(4))


def _assert_same_scores(memo, full):
    assert list(memo.per_layer_quant_enabled) == list(full.per_layer_quant_enabled)
    assert memo.per_layer_quant_enabled == full.per_layer_quant_enabled  # exactly, not approximately
    assert memo.per_layer_quant_disabled == full.per_layer_quant_disabled


# ---- the analyzer, both ways ----------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_memoized_sweeps_equal_full_sweeps(case, tmp_path, caplog, build_always):
    model, data = CASES[case]()
    full, _ = _analyze(model, data, tmp_path, caplog, memoize=False)
    memo, text = _analyze(model, data, tmp_path, caplog, memoize=True)
    _assert_same_scores(memo, full)
    skipped, total, replayed, runs = _saved(text)
    assert replayed > 0 and skipped > 0, text  # batches are remembered from their second evaluation on


def _sweep_outputs(adapter, sim, data, enable, budget):
    """Every output array of every evaluation of one sweep, through the memo when ``budget`` is set."""
    everything = sim.enabled
    layers = [layer.name for layer in sim.graph.layers if sim.layer_quantizers(layer.name)]
    outputs = []
    memo = adapter.memoized(budget) if budget is not None else contextlib.nullcontext()
    with memo as focus:
        for name in layers:
            own = sim.layer_quantizers(name)
            if focus is not None:
                focus(own)
            sim.set_active(own if enable else everything - own)
            outputs.append([adapter.model.run(None, feeds) for feeds in data])
    return outputs


@pytest.mark.parametrize("case", ["residual_export", "tied_through_plumbing", "bert_opset17", "gpt_tied_head"])
def test_every_output_of_a_memoized_sweep_equals_the_full_run(case, build_always):
    model, data = CASES[case]()
    adapter = OnnxAdapter(model, data[0])
    sim = QuantSim(adapter, quant_scheme="tf", default_param_bw=4, default_output_bw=6)
    sim.compute_encodings(qa.CallbackFunc(lambda s, _: [s.run(None, feeds) for feeds in data]))
    for enable in (True, False):
        full = _sweep_outputs(adapter, sim, data, enable, None)
        memo = _sweep_outputs(adapter, sim, data, enable, 1 << 30)
        assert len(memo) == len(full)
        for k, (a, b) in enumerate(zip(memo, full)):
            for x, y in zip(a, b):
                for u, v in zip(x, y):
                    assert u.dtype == v.dtype and u.shape == v.shape
                    assert np.array_equal(u, v), f"evaluation {k} of the {'enabling' if enable else 'disabling'} sweep"
    assert any(plan.built > 0 for plan in adapter._plans.values())


# ---- what is not remembered -----------------------------------------------------------------------

def test_a_zero_budget_remembers_nothing(tmp_path, caplog, build_always):
    model, data = _case_resnet()
    full, _ = _analyze(model, data, tmp_path, caplog, memoize=False)
    memo, text = _analyze(model, data, tmp_path, caplog, memoize=True, memo_memory_budget=0)
    _assert_same_scores(memo, full)
    skipped, total, replayed, _ = _saved(text)
    assert skipped == 0 and replayed == 0 and total > 0


def test_a_small_budget_remembers_some_batches(tmp_path, caplog, build_always):
    """Room for the tensors of about one batch: the others run in full; the scores do not change."""
    model, data = om.conv_bn_constants(), _images("image", (4, 3, 8, 8), n=4)
    full, _ = _analyze(model, data, tmp_path, caplog, memoize=False)
    memo, text = _analyze(model, data, tmp_path, caplog, memoize=True, memo_memory_budget=4 * 8 * 8 * 8 * 4 * 2)
    _assert_same_scores(memo, full)
    _, _, replayed, runs = _saved(text)
    assert 0 < replayed < 0.5 * runs
    assert re.search(r"[1-9]\d* batch\(es\) over the budget", text), text


def test_batches_never_seen_twice_are_never_replayed(tmp_path, caplog, build_always):
    """An eval callback with random augmentation: every evaluation sees new batches; nothing is
    replayed and the scores equal the plain path's (the same seeds in both runs)."""
    model, data = _case_resnet()
    full, _ = _analyze(model, data, tmp_path, caplog, memoize=False, fresh=True)
    memo, text = _analyze(model, data, tmp_path, caplog, memoize=True, fresh=True)
    _assert_same_scores(memo, full)
    skipped, total, replayed, runs = _saved(text)
    assert skipped == 0 and replayed == 0 and runs > 0 and total > 0
    assert "0 suffix session(s) built" in text  # a batch seen once costs no session


# ---- cuts -------------------------------------------------------------------------------------------

def _fused_across():
    """conv_a -> relu, conv_b, add(relu, conv_b): in this order conv_a's output crosses the cut in
    front of conv_b, and onnxruntime fuses conv_a with the relu (FusedConv)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), n)
             for n in ("wa", "wb")]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "b"], ["y"], name="add")]
    return om.model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 6, 6])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 6, 6])], inits)


def test_a_tensor_fused_across_the_cut_is_made_again_in_the_suffix(tmp_path, caplog, build_always):
    model = _fused_across()
    data = _images("x", (2, 3, 6, 6))
    adapter = OnnxAdapter(model, data[0])
    sim = QuantSim(adapter, quant_scheme="tf", default_param_bw=4, default_output_bw=8)
    sim.compute_encodings(qa.CallbackFunc(lambda s, _: [s.run(None, feeds) for feeds in data]))
    sim.set_active({"conv_b_weight"})  # weights only: the session without quantizer chains
    plan = adapter._plan()
    cut = plan.cut({"conv_b_weight"})
    assert plan.nodes[cut].name == "conv_b" and plan.live(cut) == ["a"]
    again, frontier = plan.layout(cut)
    # "a" is gone from onnxruntime's optimized graph (conv_a and the relu are one FusedConv): the
    # suffix from conv_b computes conv_a again, from the model input
    assert [plan.nodes[i].name for i in again] == ["conv_a"] and frontier == []
    assert plan.skipped(cut) == 0
    assert plan.cut({"relu_output_0"}) == plan.end  # a quantizer this session has no chain for: nothing differs
    full, _ = _analyze(model, data, tmp_path, caplog, memoize=False)
    memo, _ = _analyze(model, data, tmp_path, caplog, memoize=True)
    _assert_same_scores(memo, full)


def test_a_suffix_onnxruntime_optimizes_otherwise_is_never_run(tmp_path, caplog, build_always, monkeypatch):
    """Every suffix's optimized graph is compared with the full model's; here the comparison is
    made to fail for any suffix with fewer nodes: no run starts at a remembered cut."""
    monkeypatch.setattr(memo_module, "signatures", lambda model: {("nodes", len(model.graph.node))})
    model, data = _case_resnet()
    full, _ = _analyze(model, data, tmp_path, caplog, memoize=False)
    memo, text = _analyze(model, data, tmp_path, caplog, memoize=True)
    _assert_same_scores(memo, full)
    skipped, _, replayed, _ = _saved(text)
    assert skipped == 0 and replayed == 0
    assert re.search(r"\([1-9]\d* refused\)", text), text


def test_suffix_sessions_are_cached_per_cut(build_always):
    model, data = _case_resnet()
    adapter = OnnxAdapter(model, data[0])
    sim = QuantSim(adapter, quant_scheme="tf", default_param_bw=4, default_output_bw=8)
    sim.compute_encodings(qa.CallbackFunc(lambda s, _: [s.run(None, feeds) for feeds in data]))
    _sweep_outputs(adapter, sim, data, False, 1 << 30)
    plan = next(iter(adapter._plans.values()))
    layers = [layer for layer in sim.graph.layers if sim.layer_quantizers(layer.name)]
    # one session per evaluation at most (from the previous cut to this one), whatever the batches
    assert 0 < plan.built <= len(layers)


# ---- what pays off -----------------------------------------------------------------------------------

def test_no_session_is_built_where_it_cannot_pay_off(tmp_path, caplog):
    """A model that runs in microseconds: building a suffix session (milliseconds) never pays off;
    every evaluation runs in full, with the same scores."""
    model, data = om.tied_weights(), _images("x", (8, 4))
    full, _ = _analyze(model, data, tmp_path, caplog, memoize=False)
    memo, text = _analyze(model, data, tmp_path, caplog, memoize=True)
    _assert_same_scores(memo, full)
    assert text.count("0 suffix session(s) built") == 2, text


def test_memoized_sweeps_of_a_deep_cnn_save_work(tmp_path, caplog, record_property):
    """A 52-layer residual CNN, sessions built as the cost model decides: about half of the node
    runs of the sweeps are skipped. The timings are logged (qa's log), not asserted."""
    data = _images("image", (16, 3, 16, 16), n=3)
    model = _export(_resnet(12, c=16), data[0])
    seconds, results = {}, {}
    for memoize in (False, True):
        t = time.perf_counter()
        results[memoize], text = _analyze(model, data, tmp_path, caplog, memoize=memoize)
        seconds[memoize] = time.perf_counter() - t
    layers = len(results[True].per_layer_quant_enabled)
    log.info("%d-layer CNN, analyze: %.2f s plain, %.2f s memoized", layers, seconds[False], seconds[True])
    record_property("analyze_seconds", seconds)
    assert layers >= 50
    _assert_same_scores(results[True], results[False])
    skipped, total, replayed, runs = _saved(text)
    assert skipped > 0.3 * total, f"only {skipped} of {total} node runs skipped"
    assert replayed > 0.5 * runs
