"""The adapters on models that share: tied weights, a module (layer) called twice, callbacks that
switch the copy to training mode, models that cannot be copied, misspelt modules_to_ignore, ONNX
models with scalar inputs and missing external data. Every test here failed before the fix it guards.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

import qa  # noqa: E402
from qa import kernels  # noqa: E402


def _closeness(reference, batches, run):
    """Minus the mean squared difference from the reference outputs: exactly 0 for the FP32 model."""
    refs = [np.asarray(reference(b), np.float64) for b in batches]

    def score(model):
        return -float(np.mean([np.mean((np.asarray(run(model, b), np.float64) - r) ** 2)
                               for b, r in zip(batches, refs)]))
    return score


# ---- torch ----------------------------------------------------------------------------------------

@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def tm(torch):
    import torch_models

    return torch_models


def _torch_out(model, x):
    import torch

    with torch.no_grad():
        return model(x).detach().double().numpy()


def _torch_analyzer(model, batches, **kwargs):
    def calibrate(m):
        for b in batches:
            _torch_out(m, b)
    score = _closeness(lambda b: _torch_out(model, b), batches, _torch_out)
    return qa.QuantAnalyzer(model, batches[0], calibrate, score, progress=False, **kwargs)


def _fake_quant(t, enc):
    import torch

    x = t.detach().float().contiguous().numpy()
    return torch.from_numpy(np.array(kernels.fake_quantize(x, enc["scale"], enc["offset"], enc["bitwidth"]),
                                     dtype=np.float32))


def test_tied_embedding_is_one_quantizer_and_its_batch_norm_does_not_fold(torch, tm, tmp_path, caplog):
    torch.manual_seed(0)
    model = tm.TiedEmbedding().eval()
    batches = [torch.randint(0, 12, (5, 4), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    with caplog.at_level(logging.INFO, logger="qa.adapters.torch"):
        analyzer = _torch_analyzer(model, batches)
    graph = analyzer.adapter.graph
    # the analysis copy computes exactly what the user's model computes
    for b in batches:
        assert np.array_equal(_torch_out(analyzer.adapter.model, b), _torch_out(model, b))
    # the batch norm after the tied head stays a layer; the reason is recorded and logged
    assert graph.folded_batch_norms == []
    assert graph.unfolded_batch_norms == [("bn", "head", "its weight is shared with emb")]
    assert "bn" in graph and "shared with emb" in caplog.text
    # one quantizer, named after the first layer that uses it, listed by both layers
    assert [q.name for q in graph["emb"].params] == ["emb_weight"]
    assert [q.name for q in graph["head"].params] == ["emb_weight"]
    assert graph["head"].params[0] is graph["emb"].params[0]
    assert [q.name for q, _ in analyzer.adapter.weights()] == ["emb_weight", "fc_weight", "fc_bias", "bn_weight",
                                                               "bn_bias"]
    assert [q.name for q in graph.quantizers()].count("emb_weight") == 1
    result = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    assert result.fp32_score == 0.0
    assert "emb_weight" in result.encodings and "head_weight" not in result.encodings
    # enabling either layer quantizes the shared weight, once: both equal the hand-quantized model
    hand = copy.deepcopy(model)
    with torch.no_grad():
        hand.emb.weight.copy_(_fake_quant(model.emb.weight, result.encodings["emb_weight"]))
    expected = _closeness(lambda b: _torch_out(model, b), batches, _torch_out)(hand)
    assert expected < 0
    assert result.per_layer_quant_enabled["emb"] == pytest.approx(expected, rel=1e-9)  # emb: only its weight
    layers = {layer["name"]: layer["quantizers"] for layer in result.layers}
    assert "emb_weight" in layers["emb"] and "emb_weight" in layers["head"]
    # the refusal reaches the result, summary.json and the dashboard
    assert result.unfolded_batch_norms == [("bn", "head", "its weight is shared with emb")]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["unfolded_batch_norms"] == [["bn", "head", "its weight is shared with emb"]]
    page = (tmp_path / "index.html").read_text()
    assert "left unfolded" in page and "its weight is shared with emb" in page


def test_sweeps_toggle_a_weight_shared_by_two_linears_from_either_layer(torch, tm):
    torch.manual_seed(0)
    model = tm.TiedLinears().eval()
    batches = [torch.randn(4, 6, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    analyzer = _torch_analyzer(model, batches)
    sim = analyzer.create_quantsim("tf", config_file="per_tensor")
    quantized = _fake_quant(model.fc_a.weight, sim.quantizers["fc_a_weight"].encoding.to_dict())
    copy_ = analyzer.adapter.model
    for layer in ("fc_a", "fc_b"):
        own = sim.layer_quantizers(layer)
        sim.set_active(own)  # the shared weight is quantized whichever layer is on
        assert torch.equal(copy_.fc_a.weight, quantized) and copy_.fc_b.weight is copy_.fc_a.weight, layer
        sim.set_active(sim.enabled - own)  # and in float whichever layer is off
        assert torch.equal(copy_.fc_a.weight, model.fc_a.weight), layer
        assert "fc_a_weight" in own
    sim.set_active(())
    weight = [q for q in sim.quantizers.values() if q.is_param and q.param == "weight"]
    assert [q.name for q in weight] == ["fc_a_weight"]


def test_a_module_called_twice_is_one_layer_per_call(torch, tm, tmp_path):
    torch.manual_seed(0)
    model = tm.ReusedActivation().eval()
    batches = [torch.randn(6, 4, generator=torch.Generator().manual_seed(i)) * 3 for i in range(3)]
    analyzer = _torch_analyzer(model, batches)
    graph = analyzer.adapter.graph
    # the functional * and + are layers of their own, named by order in the model's forward
    assert [(layer.name, layer.inputs) for layer in graph.layers] == [
        ("fc_in", []), ("mul", ["fc_in"]), ("act", ["mul"]), ("shared", ["act"]), ("mul_1", ["shared"]),
        ("add", ["mul_1"]), ("act/call_1", ["add"]), ("shared/call_1", ["act/call_1"]),
        ("fc_out", ["shared/call_1"])]
    assert (graph["act/call_1"].calls, graph["act/call_1"].call, graph["act"].call) == (2, 1, 0)
    assert graph["fc_in"].model_input and not graph["act/call_1"].model_input
    assert graph["fc_out"].model_output and not graph["shared/call_1"].model_output
    # the Linear's weight is one quantizer listed by both of its calls; outputs are one per call
    assert [q.name for q in graph["shared/call_1"].quantizers] == ["shared_weight", "shared_bias",
                                                                   "shared/call_1_output_0"]
    assert graph["shared/call_1"].params[0] is graph["shared"].params[0]
    # capture names every call
    seen = []
    with analyzer.adapter.capturing(lambda layer, i, a: seen.append(layer)):
        analyzer.adapter.run(batches[0])
    assert seen == [layer.name for layer in graph.layers]
    analyzer.enable_per_layer_mse_loss(batches, len(batches))
    result = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    # each call has its own encoding, from its own tensor's range
    first, second = result.encodings["act_output_0"], result.encodings["act/call_1_output_0"]
    assert first["max"] < 0.5 and second["max"] > 5.0
    assert list(result.per_layer_mse) == [layer.name for layer in graph.layers]
    assert list(result.per_layer_quant_enabled) == list(result.per_layer_mse)
    assert "act/call_1" in result.per_layer_quant_disabled


def test_module_calls_missing_from_the_trace_are_warned_about_at_calibration(torch, tm, caplog):
    torch.manual_seed(0)
    model = tm.DynamicCalls().eval()
    small = torch.randn(3, 4)  # act once, extra never
    analyzer = qa.QuantAnalyzer(model, small, lambda m: m(torch.randn(8, 4)), lambda m: 0.0, progress=False)
    assert [layer.name for layer in analyzer.adapter.graph.layers] == ["fc", "act"]
    with caplog.at_level(logging.WARNING, logger="qa.adapters.torch"):
        sim = analyzer.create_quantsim("tf")
    assert "extra" in caplog.text and "not on dummy_input" in caplog.text
    assert "act" in caplog.text and "more often" in caplog.text
    sim.set_active(sim.enabled)
    out = analyzer.adapter.run(torch.randn(8, 4))  # extra calls reuse the last call's quantizers
    assert out.shape == (8, 4)
    sim.set_active(())


@pytest.mark.parametrize("mode", ["train()", "training flag"])
def test_a_callback_that_switches_to_training_mode_changes_nothing(torch, tm, tmp_path, mode, caplog):
    torch.manual_seed(0)
    model = tm.DropoutBNNet().eval()
    batches = [torch.randn(5, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    well_behaved = _closeness(lambda b: _torch_out(model, b), batches, _torch_out)

    def careless(m):
        if mode == "train()":
            m.train()
        else:
            for sub in m.modules():
                sub.training = True
        return well_behaved(m)

    def calibrate(m):
        m.train()
        for b in batches:
            _torch_out(m, b)

    results = {}
    for name, evaluate in (("careless", careless), ("well_behaved", well_behaved)):
        analyzer = qa.QuantAnalyzer(model, batches[0], calibrate, evaluate, progress=False)
        with caplog.at_level(logging.WARNING, logger="qa.adapters.torch"):
            results[name] = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path / name)
        copy_bn = analyzer.adapter.model.bn
        assert torch.equal(copy_bn.running_mean, model.bn.running_mean)  # statistics never updated
        assert torch.equal(copy_bn.running_var, model.bn.running_var)
    careless_, good = results["careless"], results["well_behaved"]
    assert careless_.fp32_score == good.fp32_score == 0.0
    assert careless_.quantized_score == good.quantized_score
    assert careless_.per_layer_quant_enabled == good.per_layer_quant_enabled
    assert careless_.per_layer_quant_disabled == good.per_layer_quant_disabled
    assert "eval mode" in caplog.text
    assert not model.training  # the user's model is left alone


@pytest.mark.parametrize("what", ["lock", "generator"])
def test_a_model_that_cannot_be_copied_names_the_attribute(torch, tm, what):
    model = tm.MLP().eval()
    if what == "lock":
        model.act.guard = threading.Lock()
    else:
        model.act.guard = (i for i in range(3))
    with pytest.raises(qa.QAValueError, match=r"copy.*attribute 'guard' of module 'act'") as info:
        qa.QuantAnalyzer(model, torch.randn(2, 8), lambda m: None, lambda m: 0.0, progress=False)
    assert "qa works on a copy" in str(info.value)


def test_unknown_modules_to_ignore_are_refused_in_torch(torch, tm):
    model = tm.ReusedActivation().eval()
    x = torch.randn(2, 4)

    def make(ignore):
        return qa.QuantAnalyzer(model, x, lambda m: None, lambda m: 0.0, progress=False, modules_to_ignore=ignore)

    with pytest.raises(qa.QAValueError, match=r"'fc_inn', 'sharred' are not a module.*'fc_in', 'act'") as info:
        make(["fc_inn", "sharred", "act"])
    assert isinstance(info.value, ValueError)
    # a call of a module called twice can be ignored by its layer name, a module by its name, an op
    # by its layer name
    graph = make(["act/call_1", "shared", "mul_1"]).adapter.graph
    assert [layer.name for layer in graph.layers] == ["fc_in", "mul", "act", "add", "fc_out"]


# ---- keras ----------------------------------------------------------------------------------------

@pytest.fixture
def keras():
    return pytest.importorskip("keras")


def _keras_out(model, x):
    import keras

    return keras.ops.convert_to_numpy(model(x, training=False))


def test_a_keras_layer_called_twice_is_one_layer_per_call(keras, tmp_path):
    L = keras.layers
    keras.utils.set_random_seed(0)
    x = keras.Input((4,))
    act = L.Activation("relu6", name="act")
    shared = L.Dense(4, name="shared")
    h = act(L.Rescaling(0.05, name="small")(L.Dense(4, name="fc_in")(x)))
    h = act(L.Rescaling(40.0, offset=3.0, name="big")(shared(h)))
    model = keras.Model(x, L.Dense(3, name="fc_out")(shared(h)))
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(6, 4)).astype("float32") * 3 for _ in range(3)]
    analyzer = qa.QuantAnalyzer(model, None, lambda m: [m(b) for b in batches],
                                _closeness(lambda b: _keras_out(model, b), batches, _keras_out), progress=False)
    graph = analyzer.adapter.graph
    assert [(layer.name, layer.inputs) for layer in graph.layers] == [
        ("fc_in", []), ("small", ["fc_in"]), ("act", ["small"]), ("shared", ["act"]), ("big", ["shared"]),
        ("act/call_1", ["big"]), ("shared/call_1", ["act/call_1"]), ("fc_out", ["shared/call_1"])]
    assert [q.name for q in graph["shared/call_1"].quantizers] == ["shared_weight", "shared_bias",
                                                                   "shared/call_1_output_0"]
    assert graph["fc_out"].model_output and not graph["shared/call_1"].model_output
    for b in batches:
        np.testing.assert_array_equal(_keras_out(analyzer.adapter.model, b), _keras_out(model, b))
    analyzer.enable_per_layer_mse_loss(batches, len(batches))
    result = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    assert result.fp32_score == 0.0
    assert result.encodings["act_output_0"]["max"] < 0.5 and result.encodings["act/call_1_output_0"]["max"] > 5.0
    assert list(result.per_layer_mse) == [layer.name for layer in graph.layers]  # one entry per call


def test_keras_callback_asking_for_training_mode_runs_in_inference(keras, tmp_path):
    L = keras.layers
    keras.utils.set_random_seed(0)
    x = keras.Input((6,))
    y = L.Dropout(0.5, name="drop")(L.Dense(8, name="fc")(x))
    model = keras.Model(x, L.Dense(3, name="head")(L.BatchNormalization(name="bn")(L.ReLU(name="relu")(y))))
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(5, 6)).astype("float32") for _ in range(2)]
    training = _closeness(lambda b: _keras_out(model, b), batches,
                          lambda m, b: keras.ops.convert_to_numpy(m(b, training=True)))
    analyzer = qa.QuantAnalyzer(model, None, lambda m: [m(b, training=True) for b in batches], training,
                                progress=False)
    result = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    assert result.fp32_score == 0.0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(analyzer.adapter.model.get_layer("bn").moving_mean),
                                  keras.ops.convert_to_numpy(model.get_layer("bn").moving_mean))


def test_unknown_modules_to_ignore_are_refused_in_keras(keras):
    L = keras.layers
    x = keras.Input((4,))
    model = keras.Model(x, L.Dense(2, name="head")(L.Dense(4, name="fc")(x)))
    stranger = L.Dense(2, name="stranger")
    with pytest.raises(qa.QAValueError, match=r"'hed' is not a layer of the model; valid names are 'fc', 'head'"):
        qa.QuantAnalyzer(model, None, lambda m: None, lambda m: 0.0, progress=False, modules_to_ignore=["hed"])
    with pytest.raises(qa.QAValueError, match="'stranger'.*not a layer of this model"):
        qa.QuantAnalyzer(model, None, lambda m: None, lambda m: 0.0, progress=False, modules_to_ignore=[stranger])


# ---- onnx -----------------------------------------------------------------------------------------

@pytest.fixture
def om():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import onnx_models

    return onnx_models


def _onnx_score(om, model, feeds):
    refs = [om.plain_run(model, f)[0].astype(np.float64) for f in feeds]

    def score(session):
        return -float(np.mean([np.mean((session.run(None, f)[0] - r) ** 2) for f, r in zip(feeds, refs)]))
    return score


def test_onnx_scalar_inputs_through_analyze_and_per_layer_mse(om, tmp_path):
    model = om.scalar_inputs()
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((5, 4)).astype(np.float32), "gain": np.array(rng.uniform(1, 3), np.float32),
              "sr": np.array(16000, np.int64)} for _ in range(3)]
    analyzer = qa.QuantAnalyzer(model, feeds[0], lambda s: [s.run(None, f) for f in feeds],
                                _onnx_score(om, model, feeds), progress=False)
    assert analyzer.adapter.dummy_input["sr"].shape == () and analyzer.adapter.dummy_input["gain"].shape == ()
    assert analyzer.adapter.run(feeds[0])[0].shape == (5, 3)
    analyzer.enable_per_layer_mse_loss(feeds, len(feeds))  # a batch of a multi-input model: a dict
    result = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    assert result.status == "complete" and result.fp32_score == 0.0
    assert list(result.per_layer_mse) == ["fc", "relu", "scale", "per_sample"]
    assert "scale_input_1" in result.encodings  # the scalar float input is quantized as a model input
    sim = analyzer.create_quantsim("tf")
    sim.set_active(sim.enabled)
    assert analyzer.adapter.model.run(None, feeds[1])[0].shape == (5, 3)  # quantizer chains keep 0-d 0-d


def test_onnx_initializer_shared_by_two_layers_is_one_quantizer_and_does_not_fold(om, tmp_path):
    from qa.adapters.onnx import OnnxAdapter

    model = om.tied_weights()
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((6, 4)).astype(np.float32)} for _ in range(2)]
    adapter = OnnxAdapter(model, feeds[0])
    graph = adapter.graph
    assert graph.folded_batch_norms == []
    assert graph.unfolded_batch_norms == [("bn", "fc2", "its weight 'w' is shared with fc1")]
    assert [q.name for q in graph["fc1"].params] == ["fc1_weight", "fc1_bias"]
    assert [q.name for q in graph["fc2"].params] == ["fc1_weight"]
    assert [q.name for q, _ in adapter.weights()].count("fc1_weight") == 1
    for f in feeds:
        np.testing.assert_array_equal(adapter.run(f)[0], om.plain_run(model, f)[0])
    analyzer = qa.QuantAnalyzer(model, feeds[0], lambda s: [s.run(None, f) for f in feeds],
                                _onnx_score(om, model, feeds), progress=False)
    sim = analyzer.create_quantsim("tf", config_file="per_tensor")
    enc = sim.quantizers["fc1_weight"].encoding
    w = np.asarray(om.onnx_weight(model, "w"), np.float32)
    expected = np.asarray(kernels.fake_quantize(w, enc.scale, enc.offset, enc.bitwidth), np.float32)
    for layer in ("fc1", "fc2"):  # either layer's sweep quantizes the one shared weight
        sim.set_active({"fc1_weight"} & sim.layer_quantizers(layer))
        hand = om.with_initializer(model, "w", expected)
        np.testing.assert_allclose(analyzer.adapter.model.run(None, feeds[0])[0], om.plain_run(hand, feeds[0])[0],
                                   rtol=1e-6, atol=1e-6)
    sim.set_active(())


def test_onnx_unknown_modules_to_ignore_are_refused(om):
    from qa.adapters.onnx import OnnxAdapter

    x = {"x": np.zeros((2, 6), np.float32)}
    with pytest.raises(qa.QAValueError, match=r"'fc3' is not a node of the ONNX model.*valid names are 'fc1', 'relu'"):
        OnnxAdapter(om.mlp(), x, modules_to_ignore=["fc3"])
    assert "relu" not in OnnxAdapter(om.mlp(), x, modules_to_ignore=["relu"]).graph


def test_onnx_missing_external_data_names_the_file_and_folder(om, tmp_path):
    import onnx
    from qa.adapters.onnx import OnnxAdapter

    model = om.token_model(vocab=300, dim=8)
    path = tmp_path / "tokens.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
                    size_threshold=256)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(qa.QAValueError) as info:
        OnnxAdapter(str(path), {"ids": np.zeros((2, 3), np.int64)})
    message = str(info.value)
    assert "'weights.bin'" in message and "missing" in message and str(tmp_path / "weights.bin") in message
    assert "malformed" not in message
