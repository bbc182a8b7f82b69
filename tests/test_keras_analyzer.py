"""QuantAnalyzer on real Keras 3 models (torch backend, CPU): cloning, batch-norm folding, the
user's model left alone, residual Add layers, config-forced low bitwidths, per-layer MSE, errors."""

from __future__ import annotations

import json
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")

import qa  # noqa: E402
from result_files import expected_files  # noqa: E402

L = keras.layers


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _set_bn(model, name, seed):
    rng = np.random.default_rng(seed)
    bn = model.get_layer(name)
    c = bn.gamma.shape[0]
    bn.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c), rng.uniform(0.5, 2.0, c)])


def conv_net(seed=0):
    keras.utils.set_random_seed(seed)
    x = keras.Input((8, 8, 2))
    y = L.Conv2D(4, 3, padding="same", use_bias=False, name="conv1")(x)
    y = L.BatchNormalization(name="bn1")(y)
    y = L.ReLU(name="relu1")(y)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(y)
    y = L.BatchNormalization(name="bn2")(y)
    y = L.Activation("relu", name="act2")(y)
    y = L.MaxPooling2D(name="pool")(y)
    y = L.Flatten(name="flat")(y)
    y = L.Dropout(0.5, name="drop")(y)
    y = L.Dense(8, name="fc1")(y)
    y = L.BatchNormalization(name="bn3")(y)
    y = L.Dense(3, name="fc2")(y)
    model = keras.Model(x, y)
    for i, name in enumerate(("bn1", "bn2", "bn3")):
        _set_bn(model, name, i)
    return model


def residual_net(seed=0):
    keras.utils.set_random_seed(seed)
    x = keras.Input((6, 6, 3))
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(x)
    b = L.Conv2D(4, 3, padding="same", name="conv_b")(a)
    y = L.Add(name="add")([a, b])
    y = L.ReLU(name="relu")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    y = L.Dense(5, name="head")(y)
    return keras.Model(x, y)


def data(shape, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype("float32") for _ in range(n)]


def closeness(reference_model, batches):
    refs = [_np(reference_model(b, training=False)) for b in batches]

    def score(model):
        return -float(np.mean([np.mean((_np(model(b, training=False)) - r) ** 2) for b, r in zip(batches, refs)]))
    return score


def calibrate(batches):
    def run(model):
        for b in batches:
            model(b, training=False)
    return run


def analyzer_for(model, batches, **kwargs):
    return qa.QuantAnalyzer(model, None, calibrate(batches), closeness(model, batches), progress=False, **kwargs)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_analyze_end_to_end_writes_every_file(tmp_path):
    model = conv_net()
    batches = data((4, 8, 8, 2))
    analyzer = analyzer_for(model, batches)
    analyzer.enable_per_layer_mse_loss(batches, 2)
    result = analyzer.analyze(quant_scheme="tf_enhanced", default_param_bw=4, default_output_bw=8,
                              results_dir=tmp_path)
    assert result.status == "complete"
    names = [layer["name"] for layer in result.layers]
    assert names == ["conv1", "relu1", "dw", "act2", "pool", "flat", "fc1", "fc2"]  # dropout: no layer (as in torch and ONNX)
    assert sorted(result.folded_batch_norms) == [("bn1", "conv1"), ("bn2", "dw"), ("bn3", "fc1")]
    for path in expected_files(result):
        assert path.is_file(), path
    assert any(str(p).endswith(".html") for p in result.files)
    summary = read_json(tmp_path / "summary.json")
    assert summary["status"] == "complete"
    assert list(read_json(tmp_path / "per_layer_quant_enabled.json")) == [
        n for n in names if result.layers[names.index(n)]["quantizers"]]
    weights = read_json(tmp_path / "min_max_ranges" / "weights.json")
    assert "conv1_weight" in weights and "fc2_weight" in weights
    activations = read_json(tmp_path / "min_max_ranges" / "activations.json")
    assert "conv1_input_0" in activations and "fc2_output_0" in activations
    assert "drop_output_0" not in activations  # Dropout: no output quantizer (AIMET's default config)
    assert result.fp32_score == pytest.approx(0.0, abs=1e-10)
    assert result.quantized_score < 0


def test_batch_norm_folding_matches_the_model(tmp_path):
    from qa.adapters.keras import KerasAdapter

    model = conv_net()
    adapter = KerasAdapter(model)
    assert [layer.name for layer in adapter.graph.layers if layer.op_type == "BatchNormalization"] == []
    x = data((5, 8, 8, 2), 1, seed=3)[0]
    np.testing.assert_allclose(_np(adapter.run(x)), _np(model(x, training=False)), atol=1e-5, rtol=1e-5)
    # per-channel axes: last kernel axis for Conv/Dense, 2 for the depthwise kernel
    assert adapter.graph["conv1"].quantizer("param", "weight").axis == 3
    assert adapter.graph["dw"].quantizer("param", "weight").axis == 2
    assert adapter.graph["fc1"].quantizer("param", "weight").axis == 1


def test_batch_norms_after_separable_and_multiplier_convs_fold_exactly():
    """Separable convs fold into the pointwise kernel; a depthwise multiplier makes channel i * mult + m."""
    from qa.adapters.keras import KerasAdapter

    keras.utils.set_random_seed(2)
    x = keras.Input((8, 8, 3))
    y = L.SeparableConv2D(5, 3, padding="same", depth_multiplier=2, use_bias=False, name="sep")(x)
    y = L.BatchNormalization(name="bn_sep")(y)
    y = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(y)
    y = L.BatchNormalization(name="bn_dw")(y)
    y = L.Reshape((64, 10), name="reshape")(y)
    y = L.SeparableConv1D(4, 3, padding="same", data_format="channels_first", name="sep1d")(y)
    y = L.BatchNormalization(axis=1, name="bn_sep1d")(y)
    model = keras.Model(x, L.Flatten(name="flat")(y))
    for i, name in enumerate(("bn_sep", "bn_dw", "bn_sep1d")):
        _set_bn(model, name, i)
    adapter = KerasAdapter(model)
    assert sorted(adapter.graph.folded_batch_norms) == [("bn_dw", "dw"), ("bn_sep", "sep"), ("bn_sep1d", "sep1d")]
    assert all(layer.op_type != "BatchNormalization" for layer in adapter.graph.layers)
    b = data((3, 8, 8, 3), 1, seed=4)[0]
    np.testing.assert_allclose(_np(adapter.run(b)), _np(model(b, training=False)), atol=1e-5, rtol=1e-5)
    # the depthwise half of a separable conv is untouched; the original's layers are unchanged
    np.testing.assert_array_equal(_np(adapter.model.get_layer("sep").depthwise_kernel),
                                  _np(model.get_layer("sep").depthwise_kernel))
    assert not model.get_layer("sep").use_bias


def test_unfoldable_batch_norm_stays_a_layer():
    from qa.adapters.keras import KerasAdapter

    x = keras.Input((4,))
    h = L.Dense(4, name="fc")(x)
    y = L.BatchNormalization(name="bn")(h)
    model = keras.Model(x, L.Add(name="add")([h, y]))  # fc's output is read twice: no folding
    _set_bn(model, "bn", 0)
    adapter = KerasAdapter(model)
    assert adapter.graph.folded_batch_norms == []
    assert adapter.graph["bn"].op_type == "BatchNormalization"
    b = data((3, 4), 1)[0]
    np.testing.assert_allclose(_np(adapter.run(b)), _np(model(b, training=False)), atol=1e-6)


def test_user_model_is_unchanged(tmp_path):
    model = conv_net()
    before = [w.copy() for w in model.get_weights()]
    layer_types = [type(layer) for layer in model.layers]
    calls = [layer.call for layer in model.layers]
    batches = data((4, 8, 8, 2))
    out_before = _np(model(batches[0], training=False))
    analyzer_for(model, batches).analyze(quant_scheme="tf", default_param_bw=4, results_dir=tmp_path)
    after = model.get_weights()
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert [type(layer) for layer in model.layers] == layer_types
    assert [layer.call for layer in model.layers] == calls
    np.testing.assert_array_equal(_np(model(batches[0], training=False)), out_before)


def test_residual_add_is_a_quantized_layer(tmp_path):
    model = residual_net()
    batches = data((4, 6, 6, 3))
    result = analyzer_for(model, batches).analyze(quant_scheme="tf", results_dir=tmp_path)
    layers = {layer["name"]: layer for layer in result.layers}
    assert layers["add"]["op_type"] == "Add"
    # [Add, Relu] is a supergroup: the add's own output quantizer is off, the relu's is on
    assert "relu_output_0" in layers["relu"]["quantizers"]
    assert "add" in result.per_layer_quant_enabled or layers["add"]["quantizers"] == []
    assert "conv_a_output_0" in layers["conv_a"]["quantizers"]  # fused relu: the output after it
    from qa.adapters.keras import KerasAdapter

    graph = KerasAdapter(model).graph
    assert graph["add"].inputs == ["conv_a", "conv_b"]
    assert graph["conv_a"].model_input and graph["head"].model_output


def test_two_bit_dense_ranks_worst(tmp_path):
    keras.utils.set_random_seed(1)
    x = keras.Input((16,))
    y = L.Dense(16, activation="relu", name="fc1")(x)
    y = L.Reshape((16, 1), name="reshape")(y)
    y = L.Conv1D(2, 3, padding="same", name="conv")(y)
    y = L.Flatten(name="flat")(y)
    y = L.Dense(4, name="fc2")(y)
    model = keras.Model(x, y)
    batches = data((8, 16), 3)
    config = {
        "defaults": {"ops": {"is_output_quantized": "True"}, "params": {"is_quantized": "True", "is_symmetric": "True"}},
        "params": {"bias": {"is_quantized": "False"}},
        "op_type": {"Gemm": {"supported_kernels": [
            {"activation": {"bitwidth": 16, "dtype": "int"}, "param": {"bitwidth": 2, "dtype": "int"}}]}},
    }
    result = analyzer_for(model, batches).analyze(quant_scheme="tf", default_param_bw=8, default_output_bw=8,
                                                  config_file=config, results_dir=tmp_path)
    assert result.encodings["fc1_weight"]["bitwidth"] == 2
    enabled = result.per_layer_quant_enabled
    worst = min(enabled, key=enabled.get)
    assert worst in ("fc1", "fc2")
    assert max(enabled["fc1"], enabled["fc2"]) < enabled["conv"]  # both Gemm layers: 2-bit weights
    assert result.encodings["conv_weight"]["bitwidth"] == 8


def test_per_layer_mse_matches_brute_force(tmp_path):
    model = residual_net()
    batches = data((4, 6, 6, 3), 2)
    analyzer = analyzer_for(model, batches)
    analyzer.enable_per_layer_mse_loss(batches, 2)
    sim = analyzer.create_quantsim("tf", 4, 8)
    mse = analyzer.export_per_layer_mse_loss(sim, tmp_path)
    # brute force for conv_b: FP32 and fully quantized runs of a model whose output is conv_b's output
    adapter = analyzer.adapter
    probe = keras.Model(adapter.model.inputs, adapter.model.get_layer("conv_b").output)
    expected = []
    for b in batches:
        sim.set_active(())
        ref = _np(probe(b, training=False))
        sim.set_active(sim.enabled)
        quant = _np(probe(b, training=False))
        expected.append(np.mean((ref.astype(np.float64) - quant) ** 2))
    sim.set_active(())
    assert mse["conv_b"] == pytest.approx(float(np.mean(expected)), rel=1e-4)
    assert list(mse) == [layer.name for layer in sim.graph.layers if layer.name in mse]


def test_weights_quantized_as_encodings_say():
    from qa.adapters.keras import KerasAdapter

    model = residual_net()
    batches = data((4, 6, 6, 3), 2)
    analyzer = analyzer_for(model, batches)
    sim = analyzer.create_quantsim("tf", 4, 8)
    q = sim.quantizers["head_weight"]
    sim.set_active({"head_weight"})
    got = _np(analyzer.adapter.model.get_layer("head").kernel)
    want = q.encoding.fake_quantize(model.get_layer("head").get_weights()[0].astype(np.float32))
    np.testing.assert_array_equal(got, want)
    sim.set_active(())
    np.testing.assert_array_equal(_np(analyzer.adapter.model.get_layer("head").kernel),
                                  model.get_layer("head").get_weights()[0])
    assert isinstance(analyzer.adapter, KerasAdapter)


def test_sequential_model(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, name="d1"), L.BatchNormalization(name="bn"),
                              L.ReLU(name="r"), L.Dense(2, name="d2")])
    _set_bn(model, "bn", 2)
    batches = data((4, 6), 2)
    result = analyzer_for(model, batches).analyze(quant_scheme="tf", results_dir=tmp_path)
    assert [layer["name"] for layer in result.layers] == ["d1", "r", "d2"]
    assert result.folded_batch_norms == [("bn", "d1")]
    assert result.fp32_score == pytest.approx(0.0, abs=1e-10)


def test_aimet_keras_signature_and_rounding_mode(tmp_path):
    """AIMET Keras: QuantAnalyzer(model, forward_pass_callback, eval_callback); analyze(rounding_mode=)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, name="d1"), L.ReLU(name="r"), L.Dense(2, name="d2")])
    batches = data((4, 6), 2)
    analyzer = qa.QuantAnalyzer(model, qa.CallbackFunc(lambda m, b: [m(x) for x in b], batches),
                                qa.CallbackFunc(lambda m, _: 1.0), progress=False)
    result = analyzer.analyze(quant_scheme="tf", rounding_mode="nearest", results_dir=tmp_path)
    assert result.fp32_score == 1.0 and list(result.per_layer_quant_enabled) == ["d1", "r", "d2"]
    with pytest.raises(qa.QAValueError, match="rounding_mode"):
        analyzer.analyze(quant_scheme="tf", rounding_mode="stochastic", results_dir=tmp_path)


def test_subclassed_model_gives_a_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = L.Dense(2)

        def call(self, x):
            return self.fc(x)

    net = Net()
    net(np.zeros((1, 3), dtype="float32"))
    with pytest.raises(qa.QAValueError, match="Functional"):
        qa.QuantAnalyzer(net, None, lambda m: None, lambda m: 0.0, progress=False)


# ---- shared variables, nested models, sublayers: every weight one quantizer, none left out ----

@keras.saving.register_keras_serializable(package="qa_tests")
class TiedLogits(L.Layer):
    """Logits against a tied embedding (``x @ embeddings^T``); the embedding layer is passed in and
    serialized with the layer, so the layer can be rebuilt from its config (as a clone would)."""

    def __init__(self, embedding, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding

    def call(self, x):
        return keras.ops.matmul(x, keras.ops.transpose(self.embedding.embeddings))

    def get_config(self):
        return {**super().get_config(), "embedding": keras.saving.serialize_keras_object(self.embedding)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedding"] = keras.saving.deserialize_keras_object(config["embedding"])
        return cls(**config)


class Readout(L.Layer):
    """Reads another layer's kernel, passed in as a variable: ``x @ kernel^T`` (not serializable)."""

    def __init__(self, kernel, **kwargs):
        super().__init__(**kwargs)
        self.kernel = kernel

    def call(self, x):
        return keras.ops.matmul(x, keras.ops.transpose(self.kernel))


def tied_lm(seed=0):
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((5,), dtype="int32")
    emb = L.Embedding(12, 6, name="emb")
    h = L.Dense(6, activation="relu", name="fc")(emb(tokens))
    return keras.Model(tokens, TiedLogits(emb, name="logits")(h))


def token_batches(n=3):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 12, size=(4, 5)).astype("int32") for _ in range(n)]


def test_tied_embedding_is_one_quantizer_quantized_from_either_layer(tmp_path):
    from qa.adapters.keras import KerasAdapter

    model = tied_lm()
    batches = token_batches()
    analyzer = analyzer_for(model, batches)
    graph = analyzer.adapter.graph
    clone = analyzer.adapter.model
    assert clone.get_layer("logits").embedding is clone.get_layer("emb")  # the clone keeps the tie
    for b in batches:
        np.testing.assert_array_equal(_np(clone(b)), _np(model(b)))
    # one quantizer, named after the first layer using it, listed by both
    assert [q.name for q in graph["emb"].params] == ["emb_weight"]
    assert [q.name for q in graph["logits"].params] == ["emb_weight"]
    assert graph["logits"].params[0] is graph["emb"].params[0]
    assert [q.name for q, _ in analyzer.adapter.weights()] == ["emb_weight", "fc_weight", "fc_bias"]
    assert graph["emb"].model_input and graph["emb"].quantizer("input", 0) is None  # integer tokens: no quantizer
    sim = analyzer.create_quantsim("tf", 4, 8)
    assert sim.unused == []
    embeddings = model.get_layer("emb").get_weights()[0]
    quantized = sim.quantizers["emb_weight"].encoding.fake_quantize(embeddings.astype(np.float32))
    assert not np.array_equal(quantized, embeddings)
    for layer in ("emb", "logits"):  # enabling either layer quantizes the shared table, once
        own = sim.layer_quantizers(layer)
        assert "emb_weight" in own
        sim.set_active(own)
        np.testing.assert_array_equal(_np(clone.get_layer("emb").embeddings), quantized)
        sim.set_active(sim.enabled - own)
        np.testing.assert_array_equal(_np(clone.get_layer("emb").embeddings), embeddings)
    sim.set_active(())
    result = analyzer.analyze(quant_scheme="tf", default_param_bw=4, results_dir=tmp_path)
    assert "emb_weight" in result.encodings and "logits_weight" not in result.encodings
    assert KerasAdapter(model).graph["logits"].op_type == "TiedLogits"


def test_a_variable_passed_to_another_layer_is_one_quantizer_and_its_batch_norm_stays(caplog):
    import logging

    keras.utils.set_random_seed(0)
    x = keras.Input((6,))
    proj = L.Dense(4, use_bias=False, name="proj")
    h = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(proj(x)))
    model = keras.Model(x, Readout(proj.kernel, name="readout")(h))
    _set_bn(model, "bn", 0)
    batches = data((3, 6), 2)
    with caplog.at_level(logging.INFO, logger="qa.adapters.keras"):
        analyzer = analyzer_for(model, batches)
    graph = analyzer.adapter.graph
    # folding bn would rewrite the kernel readout reads too: bn stays a layer, and says why
    assert graph.folded_batch_norms == []
    assert graph.unfolded_batch_norms == [("bn", "proj", "its weight is shared with readout")]
    assert "bn" in graph and "shared with readout" in caplog.text
    assert [q.name for q in graph["readout"].params] == ["proj_weight"]
    assert graph["readout"].params[0] is graph["proj"].params[0]
    clone = analyzer.adapter.model
    assert clone.get_layer("readout").kernel is clone.get_layer("proj").kernel
    for b in batches:
        np.testing.assert_allclose(_np(clone(b)), _np(model(b)), atol=1e-6)
    sim = analyzer.create_quantsim("tf", 4, 8)
    sim.set_active(sim.layer_quantizers("readout"))
    kernel = model.get_layer("proj").get_weights()[0].astype(np.float32)
    want = sim.quantizers["proj_weight"].encoding.fake_quantize(kernel)
    np.testing.assert_array_equal(_np(clone.get_layer("readout").kernel), want)
    sim.set_active(())


def nested_net(seed=0):
    """A Functional block called once (conv + bn + relu), a Functional block called twice and a
    Sequential head (separable conv + bn), inside a Functional model."""
    keras.utils.set_random_seed(seed)
    xi = keras.Input((6, 6, 3))
    y = L.Conv2D(3, 3, padding="same", use_bias=False, name="conv")(xi)
    block = keras.Model(xi, L.ReLU(name="relu")(L.BatchNormalization(name="bn")(y)), name="block")
    xt = keras.Input((6, 6, 3))
    twice = keras.Model(xt, L.Conv2D(3, 1, activation="relu", name="pw")(xt), name="twice")
    head = keras.Sequential([keras.Input((6, 6, 3)), L.SeparableConv2D(4, 3, use_bias=False, name="sep"),
                             L.BatchNormalization(name="bn_sep"), L.GlobalAveragePooling2D(name="gap"),
                             L.Dense(2, name="out")], name="head")
    x = keras.Input((6, 6, 3))
    model = keras.Model(x, head(twice(twice(block(x)))))
    for i, (outer, bn) in enumerate((("block", "bn"), ("head", "bn_sep"))):
        _set_bn(model.get_layer(outer), bn, i)
    return model


def test_nested_models_are_flattened_into_their_layers(tmp_path):
    from qa.adapters.keras import KerasAdapter

    model = nested_net()
    batches = data((3, 6, 6, 3), 3)
    analyzer = analyzer_for(model, batches)
    graph = analyzer.adapter.graph
    assert [(layer.name, layer.inputs) for layer in graph.layers] == [
        ("block/conv", []), ("block/relu", ["block/conv"]), ("twice/pw", ["block/relu"]),
        ("twice/pw/call_1", ["twice/pw"]), ("head/sep", ["twice/pw/call_1"]), ("head/gap", ["head/sep"]),
        ("head/out", ["head/gap"])]
    # batch norms fold inside nested models; the block called twice is one layer per call, one kernel
    assert sorted(graph.folded_batch_norms) == [("block/bn", "block/conv"), ("head/bn_sep", "head/sep")]
    assert graph["twice/pw/call_1"].calls == 2
    assert [q.name for q in graph["twice/pw/call_1"].quantizers] == ["twice/pw_weight", "twice/pw_bias",
                                                                     "twice/pw/call_1_output_0"]
    assert graph["block/conv"].model_input and graph["head/out"].model_output
    assert not any(q.name.startswith(("block/bn", "head/bn_sep")) for q in graph.quantizers())
    for b in batches:
        np.testing.assert_allclose(_np(analyzer.adapter.run(b)), _np(model(b)), atol=1e-5, rtol=1e-5)
    result = analyzer.analyze(quant_scheme="tf", default_param_bw=4, results_dir=tmp_path)
    assert result.fp32_score == pytest.approx(0.0, abs=1e-9)
    for name in ("block/conv_weight", "twice/pw_weight", "head/sep_weight", "head/sep_pointwise_weight",
                 "head/out_weight", "twice/pw/call_1_output_0"):
        assert name in result.encodings, name
    assert "block/conv" in result.per_layer_quant_enabled
    # a nested model's name (or an inner layer object) in modules_to_ignore leaves its layers in float
    ignored = KerasAdapter(model, modules_to_ignore=["head", model.get_layer("block").get_layer("conv")]).graph
    assert [layer.name for layer in ignored.layers] == ["block/relu", "twice/pw", "twice/pw/call_1"]
    with pytest.raises(qa.QAValueError, match="'head/sepp' is not a layer"):
        KerasAdapter(model, modules_to_ignore=["head/sepp"])


def test_batch_norms_after_separable_and_depthwise_convs_fold_in_sequential_and_nested_models():
    """Each BN after a SeparableConv2D/1D or DepthwiseConv2D (channels first too) folds: no gamma
    quantizer, the same FP32 outputs; a separable conv's two kernels are both ``weight`` parameters."""
    from qa.adapters.keras import KerasAdapter

    keras.utils.set_random_seed(3)
    inner = keras.Sequential([keras.Input((8, 3)), L.SeparableConv1D(4, 3, use_bias=False, name="sep1d"),
                              L.BatchNormalization(name="bn_sep1d")], name="inner")
    model = keras.Sequential([
        keras.Input((3, 8, 8)), L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, data_format="channels_first",
                                                  use_bias=False, name="dw"),
        L.BatchNormalization(axis=1, name="bn_dw"), L.Permute((2, 3, 1), name="to_last"),
        L.SeparableConv2D(3, 3, padding="same", name="sep"), L.BatchNormalization(name="bn_sep"),
        L.Reshape((64, 3), name="flat"), L.Conv1D(3, 1, name="narrow"), L.Reshape((8, 8, 3), name="rows"),
        L.Lambda(lambda t: t[:, 0], name="first_row"), inner])
    for i, (where, bn) in enumerate(((model, "bn_dw"), (model, "bn_sep"), (inner, "bn_sep1d"))):
        _set_bn(where, bn, i)
    adapter = KerasAdapter(model)
    graph = adapter.graph
    assert sorted(graph.folded_batch_norms) == [("bn_dw", "dw"), ("bn_sep", "sep"), ("inner/bn_sep1d", "inner/sep1d")]
    names = [q.name for q in graph.quantizers()]
    assert not any("bn" in n for n in names), names
    b = data((2, 3, 8, 8), 1, seed=5)[0]
    np.testing.assert_allclose(_np(adapter.run(b)), _np(model(b, training=False)), atol=1e-5, rtol=1e-5)
    sep = {q.name: q for q in graph["sep"].params}
    assert (sep["sep_weight"].param, sep["sep_weight"].axis) == ("weight", 2)  # depthwise [kh, kw, in, mult]
    assert (sep["sep_pointwise_weight"].param, sep["sep_pointwise_weight"].axis) == ("weight", 3)
    assert graph["dw"].quantizer("param", "weight").axis == 2
    assert {q.name for q in graph["inner/sep1d"].params} == {"inner/sep1d_weight", "inner/sep1d_pointwise_weight",
                                                             "inner/sep1d_bias"}


class ResidualBlock(L.Layer):
    """A custom block calling two convolutions, with a float relu between them and a scale of its own."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = L.Conv2D(3, 3, padding="same", name="conv1")
        self.conv2 = L.Conv2D(3, 3, padding="same", name="conv2")

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(3,), initializer="ones", name="scale")

    def call(self, x):
        return x + self.conv2(keras.ops.relu(self.conv1(x))) * self.scale


def test_no_weight_is_left_without_a_quantizer(tmp_path):
    """Frozen layers, a custom block's sublayers (two kernels), a Bidirectional LSTM's two
    directions: every float weight of the model gets a quantizer, each its own."""
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 6, 3))
    stem = L.Conv2D(3, 1, name="stem")
    y = ResidualBlock(name="block")(stem(x))
    y = L.Reshape((6, 18), name="seq")(y)
    y = L.Bidirectional(L.LSTM(4), name="bidi")(y)
    model = keras.Model(x, L.Dense(2, name="head")(y))
    stem.trainable = False
    batches = data((3, 6, 6, 3), 2)
    with pytest.warns(UserWarning, match="block: operations in ResidualBlock.call"):
        analyzer = analyzer_for(model, batches)
    graph = analyzer.adapter.graph
    params = [q.name for q, _ in analyzer.adapter.weights()]
    assert len(params) == len(model.weights) == 15  # every variable of this model is a parameter
    assert {"stem_weight", "stem_bias", "block/conv1_weight", "block/conv2_weight", "block_scale"} <= set(params)
    assert sum(n.startswith("bidi/forward_lstm") for n in params) == 3
    assert sum(n.startswith("bidi/backward_lstm") for n in params) == 3
    # the block's sublayers are layers; the block keeps a layer for its scale and its output
    names = [layer.name for layer in graph.layers]
    assert names[:4] == ["stem", "block/conv1", "block/conv2", "block"]
    assert graph["block/conv1"].inputs == ["stem"] and graph["block/conv2"].inputs == []  # after a float relu
    assert graph.unquantized_ops == ["block: operations in ResidualBlock.call between its sublayers"]
    for b in batches:
        np.testing.assert_allclose(_np(analyzer.adapter.run(b)), _np(model(b)), atol=1e-6)
    result = analyzer.analyze(quant_scheme="tf", default_param_bw=4, results_dir=tmp_path)
    assert "stem_weight" in result.encodings and "block/conv2_weight" in result.encodings
    assert result.per_layer_quant_enabled["stem"] < 0  # the frozen layer's 4-bit kernel costs something


class ArgMax(L.Layer):
    def call(self, x):
        return keras.ops.argmax(x, axis=-1)


def test_input_quantizers_sit_on_model_inputs_only():
    """A layer reading a model input and a computed tensor quantizes only the model input; two
    model inputs get a quantizer each; an integer output gets no quantizer."""
    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    h = L.Dense(4, name="fc")(a)
    cat = L.Concatenate(name="cat")([h, a])
    both = L.Add(name="both")([a, b])
    index = ArgMax(name="index")(both)
    model = keras.Model([a, b], [cat, both, index])
    rng = np.random.default_rng(0)
    batches = [[rng.normal(size=(5, 4)).astype("float32") * 0.1, rng.normal(size=(5, 4)).astype("float32") * 10]
               for _ in range(2)]
    analyzer = qa.QuantAnalyzer(model, None, lambda m: [m(x) for x in batches], lambda m: 0.0, progress=False)
    graph = analyzer.adapter.graph
    assert [q.name for q in graph["cat"].quantizers] == ["cat_input_1", "cat_output_0"]
    assert [q.name for q in graph["both"].quantizers] == ["both_input_0", "both_input_1", "both_output_0"]
    assert graph["index"].quantizers == []
    sim = analyzer.create_quantsim("tf", 8, 4)
    assert sim.unused == []
    assert sim.quantizers["both_input_1"].encoding.max > 10 * sim.quantizers["both_input_0"].encoding.max
    sim.set_active({"cat_input_1"})
    run = analyzer.adapter.run(batches[0])
    sim.set_active(())
    fc = _np(model.get_layer("fc")(batches[0][0]))
    np.testing.assert_array_equal(_np(run[0])[:, :4], fc)  # the computed half is untouched
    assert not np.array_equal(_np(run[0])[:, 4:], batches[0][0])  # the model input is quantized
