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
    assert names == ["conv1", "relu1", "dw", "act2", "pool", "flat", "drop", "fc1", "fc2"]
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
