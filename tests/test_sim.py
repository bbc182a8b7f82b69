"""The engine's structure: simulations own their state, one folding function, the adapter registry."""

import numpy as np
import pytest

import qa
from qa.folding import fold_batch_norm

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()


def _analyzer(net, x):
    return qa.QuantAnalyzer(net, x[:1], lambda m: m(x), lambda m: float(m(x).sum()), progress=False)


def test_two_simulations_of_one_analyzer_never_interfere():
    net = _net()
    x = torch.randn(16, 3, 8, 8)
    analyzer = _analyzer(net, x)
    sim8 = analyzer.create_quantsim("tf", 8, 8)
    sim8.set_active(sim8.enabled)
    score8 = sim8.evaluate(analyzer.eval_callback, "8-bit")
    encodings8 = sim8.encodings()
    weights8 = {q.name: q.encoding for q in sim8.quantizers.values() if q.is_param and q.encoding}

    sim2 = analyzer.create_quantsim("tf", 2, 4)  # created after, switched on last
    sim2.set_active(sim2.enabled)
    score2 = sim2.evaluate(analyzer.eval_callback, "2-bit")
    assert score2 != score8

    # The 8-bit simulation still has its own encodings and quantized weights, and evaluates as before.
    assert sim8.encodings() == encodings8
    assert {q.name: q.encoding for q in sim8.quantizers.values() if q.is_param and q.encoding} == weights8
    assert sim8.evaluate(analyzer.eval_callback, "8-bit again") == score8
    assert sim2.evaluate(analyzer.eval_callback, "2-bit again") == score2
    # ... and the adapter holds no encodings or settings of either.
    assert all(q.encoding is None for q in analyzer.adapter.graph.quantizers())
    assert sim8.quantizers["0_weight"] is not sim2.quantizers["0_weight"]


def test_the_analysis_copy_ends_in_float_and_the_model_is_untouched():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(8, 3, 8, 8)
    analyzer = _analyzer(net, x)
    sim = analyzer.create_quantsim("tf", 4, 8)
    sim.set_active(sim.enabled)
    quantized = analyzer.adapter.run(x)
    sim.set_active(())
    torch.testing.assert_close(analyzer.adapter.run(x), net(x), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(quantized, net(x), atol=1e-3)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_data_movement_gets_no_output_quantizer_by_default():
    net = _net()
    x = torch.randn(4, 3, 8, 8)
    sim = _analyzer(net, x).create_quantsim("tf", 8, 8)
    assert "5_output_0" in sim.quantizers and "5_output_0" not in sim.enabled  # nn.Flatten
    forced = _analyzer(net, x).create_quantsim("tf", 8, 8, config_file={
        "defaults": {"ops": {}, "params": {}}, "params": {}, "op_type": {"Flatten": {"is_output_quantized": True}},
        "supergroups": [], "model_input": {}, "model_output": {}})
    assert "5_output_0" in forced.enabled


# ---- the one batch-norm folding function -------------------------------------------------------

def _reference_fold(w, b, mean, var, gamma, beta, eps, channel_of):
    """Folded by hand, element by element: channel_of(index) is the output channel of a weight element."""
    s = gamma / np.sqrt(var + eps)
    out = np.empty_like(w, dtype=np.float64)
    for idx in np.ndindex(w.shape):
        out[idx] = w[idx] * s[channel_of(idx)]
    return out, (b - mean) * s + beta


@pytest.mark.parametrize("shape, axis, channel_of", [
    ((6, 3, 2, 2), 0, lambda i: i[0]),            # conv [out, in, kh, kw]
    ((3, 6, 2, 2), 1, lambda i: i[1]),            # transposed conv [in, out, kh, kw]
    ((2, 2, 3, 6), -1, lambda i: i[3]),           # Keras conv [kh, kw, in, out]
    ((2, 2, 3, 2), (2, 3), lambda i: i[2] * 2 + i[3]),  # Keras depthwise [kh, kw, in, mult]
])
def test_fold_batch_norm_matches_a_hand_fold_on_any_axis(shape, axis, channel_of):
    rng = np.random.default_rng(1)
    w = rng.standard_normal(shape).astype(np.float32)
    c = 6
    b, mean, beta = (rng.standard_normal(c) for _ in range(3))
    var, gamma = rng.uniform(0.5, 2.0, c), rng.uniform(0.5, 2.0, c)
    got_w, got_b = fold_batch_norm(w, b.astype(np.float32), mean=mean, var=var, gamma=gamma, beta=beta, eps=1e-3,
                                   axis=axis)
    want_w, want_b = _reference_fold(w.astype(np.float64), b.astype(np.float32).astype(np.float64), mean, var,
                                     gamma, beta, 1e-3, channel_of)
    assert got_w.dtype == np.float32 and got_b.dtype == np.float32
    np.testing.assert_allclose(got_w, want_w.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(got_b, want_b.astype(np.float32), rtol=1e-6, atol=1e-7)


def test_fold_batch_norm_refuses_mismatched_channels():
    with pytest.raises(qa.QAValueError, match="conv7.*5 channels.*4 output channels"):
        fold_batch_norm(np.ones((4, 2), np.float32), None, mean=np.zeros(5), var=np.ones(5), name="conv7")


def test_torch_folding_equals_the_original_model():
    net = _net()
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 8, 8)
    analyzer = _analyzer(net, x)
    assert analyzer.adapter.graph.folded_batch_norms == [("1", "0")]
    torch.testing.assert_close(analyzer.adapter.run(x), net(x), rtol=1e-4, atol=1e-5)


# ---- the adapter registry ----------------------------------------------------------------------

def test_registry_picks_the_adapter_by_model_and_refuses_others(tmp_path):
    from qa.adapters import adapter_class

    assert adapter_class(_net()).framework == "torch"
    with pytest.raises(qa.QAValueError, match="unsupported model type builtins.dict"):
        adapter_class({})
    with pytest.raises(qa.QAValueError, match="unsupported model type"):
        adapter_class(str(tmp_path / "model.txt"))
