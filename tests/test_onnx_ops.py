"""The ONNX adapter's coverage of ops: every op that computes with a weight gets the parameter
quantizers a deployed integer graph has (LSTM / GRU / RNN, Einsum, ``W @ x``, RMSNormalization,
DeformConv, weights that plumbing computes from constants), a weight tied through plumbing is one
quantizer, pass-through ops (Identity, Dropout) get none, every run-time tensor a layer reads is
quantized, and what stays in float is listed with a reason.

Models are tiny: exported from PyTorch inside the tests, or built with onnx.helper.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import qa  # noqa: E402
from qa import kernels  # noqa: E402
from qa.adapters.onnx import OnnxAdapter  # noqa: E402
from qa.sim import QuantSim  # noqa: E402

import onnx_models as om  # noqa: E402

FLOAT = TensorProto.FLOAT
FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}

# Per-channel weights, biases quantized too, activations off: only parameters change the output.
WEIGHTS_ONLY = {"defaults": {"ops": {"is_output_quantized": "False"},
                             "params": {"is_quantized": "True", "is_symmetric": "True"},
                             "per_channel_quantization": "True"},
                "params": {"bias": {"is_quantized": "True"}},
                "model_input": {"is_input_quantized": "False"}}


# ---- helpers ------------------------------------------------------------------------------------

def vi(name, shape=None, elem=FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def node(op, ins, outs, name="", **attrs):
    return helper.make_node(op, ins, outs, name=name, **attrs)


def export(module, args, fold, names):
    torch = pytest.importorskip("torch")
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(torch.from_numpy(a) for a in args), f, dynamo=False, opset_version=17,
                          do_constant_folding=fold, input_names=names)
    return onnx.load_from_string(f.getvalue())


def calibrated(adapter, feeds, config=None, param_bw=4):
    sim = QuantSim(adapter, quant_scheme="tf", default_param_bw=param_bw, default_output_bw=8, config_file=config)
    sim.compute_encodings(qa.CallbackFunc(lambda s, _: [s.run(None, f) for f in feeds]))
    return sim


def fake_quantized(sim, name, values):
    """``values`` fake-quantized by hand with quantizer ``name``'s encoding (qa.kernels)."""
    enc = sim.quantizers[name].encoding
    return kernels.fake_quantize(np.ascontiguousarray(values, np.float32), enc.scale, enc.offset, enc.bitwidth,
                                 axis=enc.axis, strict=enc.strict)


def with_inputs(model, replacements):
    """A copy of ``model`` whose node inputs {(node name, slot): array} read new initializers."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for n in out.graph.node:
        for (name, slot), values in replacements.items():
            if n.name == name:
                n.input[slot] = f"fq::{name}::{slot}"
                out.graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.float32), n.input[slot]))
    return out


def layer_of(adapter, op_type):
    return next(layer for layer in adapter.graph.layers if layer.op_type == op_type)


def unquantized_reads(adapter):
    """(layer node, tensor) for every run-time float tensor a layer reads that no quantizer
    covers (quantizers of data movement included: whether they quantize is the config's choice)."""
    prep = adapter._prep
    covered = {p.dst for p in prep.points} | {p.input for p in prep.params.values()}
    constant = {t.name for t in prep.initializers}
    layers = {layer.name for layer in adapter.graph.layers}
    found = []
    for n in prep.nodes:
        if all(i in constant for i in n.input if i):
            constant.update(n.output)
        elif n.name not in layers:
            if n.op_type in ("Identity", "Dropout") and n.input[0] in covered:
                covered.add(n.output[0])  # passes on a quantized tensor
            continue
        for i in n.input:
            if i and i not in constant and i not in covered and prep.types.get(i) in FLOATS:
                found.append((n.name, i))
    return found


# ---- LSTM / GRU / RNN ------------------------------------------------------------------------------

def _recurrent_net(cls_name, hidden=6):
    torch = pytest.importorskip("torch")
    from torch import nn

    class Ocr(nn.Module):
        """Conv features over a line, a (bidirectional) recurrent layer, per-step classes."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(3, 8, 3, padding=1)
            self.rnn = getattr(nn, cls_name)(8, hidden, batch_first=True, bidirectional=cls_name != "RNN")
            self.fc = nn.Linear(hidden * (1 if cls_name == "RNN" else 2), 5)

        def forward(self, x):
            y, _ = self.rnn(torch.relu(self.conv(x)).transpose(1, 2))
            return self.fc(y)

    torch.manual_seed(0)
    return Ocr().eval()


@pytest.mark.parametrize("cls_name, gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_recurrent_weights_and_bias_get_parameter_quantizers(cls_name, gates):
    """W and R are weights (the config's weight settings, per channel on the gate * hidden axis),
    B a bias; the exporter's Slice / Concat plumbing (no constant folding) gives the same values
    as the folded initializers."""
    net = _recurrent_net(cls_name)
    x = np.random.default_rng(0).standard_normal((2, 3, 7)).astype(np.float32)
    found = {}
    for fold in (True, False):
        model = export(net, [x], fold, ["x"])
        adapter = OnnxAdapter(model, {"x": x})
        layer = layer_of(adapter, cls_name)
        dirs = 1 if cls_name == "RNN" else 2
        assert [(q.name[len(layer.name):], q.param, q.axis, q.shape) for q in layer.params] == [
            ("_weight", "weight", 1, (dirs, gates * 6, 8)), ("_weight_r", "weight", 1, (dirs, gates * 6, 6)),
            ("_bias", "bias", None, (dirs, 2 * gates * 6))]
        assert adapter.graph.unquantized_ops == []
        found[fold] = [adapter._prep.params[q.name].original for q in layer.params]
        np.testing.assert_allclose(adapter.run({"x": x})[0], om.plain_run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)
    for folded, computed in zip(found[True], found[False]):
        np.testing.assert_array_equal(folded, computed)


@pytest.mark.parametrize("cls_name", ["LSTM", "GRU"])
def test_analysis_quantizes_recurrent_weights_and_only_the_layer_s_own(tmp_path, cls_name):
    """QuantAnalyzer on the .onnx file quantizes W and R; turning on only the recurrent layer's
    quantizers changes exactly W and R, by kernels.fake_quantize per gate * hidden channel."""
    net = _recurrent_net(cls_name)
    rng = np.random.default_rng(1)
    data = [rng.standard_normal((4, 3, 7)).astype(np.float32) for _ in range(2)]
    model = export(net, [data[0]], True, ["x"])
    path = tmp_path / "ocr.onnx"
    onnx.save(model, path)
    reference = [om.plain_run(model, {"x": x})[0] for x in data]
    analyzer = qa.QuantAnalyzer(str(path), {"x": data[0]}, lambda s: [s.run(None, {"x": x}) for x in data],
                                lambda s: -float(np.mean([(s.run(None, {"x": x})[0] - r) ** 2
                                                          for x, r in zip(data, reference)])), progress=False)
    result = analyzer.analyze(quant_scheme="tf", default_param_bw=4, results_dir=tmp_path / "out")
    name = layer_of(analyzer.adapter, cls_name).name
    assert {f"{name}_weight", f"{name}_weight_r"} <= set(result.encodings)
    assert f"{name}_bias" not in result.encodings  # AIMET's default config: biases stay in float
    assert result.per_layer_quant_enabled[name] < result.fp32_score

    adapter = analyzer.adapter
    sim = calibrated(adapter, [{"x": x} for x in data], WEIGHTS_ONLY, param_bw=4)
    rec = next(n for n in model.graph.node if n.name == name)
    on = sim.layer_quantizers(name)
    assert on == {f"{name}_weight", f"{name}_weight_r", f"{name}_bias"}
    assert sim.quantizers[f"{name}_weight"].encoding.axis == 1
    sim.set_active(on)
    by_hand = with_inputs(model, {(name, slot): fake_quantized(sim, f"{name}{suffix}", om.onnx_weight(model, rec.input[slot]))
                                  for slot, suffix in ((1, "_weight"), (2, "_weight_r"), (3, "_bias"))})
    got = adapter.run({"x": data[0]})[0]
    np.testing.assert_allclose(got, om.plain_run(by_hand, {"x": data[0]})[0], rtol=1e-5, atol=1e-6)
    assert np.abs(got - reference[0]).max() > 1e-3  # the weights really changed


def test_recurrent_parameters_take_the_configs_weight_and_bias_settings():
    net = _recurrent_net("LSTM")
    x = np.random.default_rng(2).standard_normal((2, 3, 7)).astype(np.float32)
    adapter = OnnxAdapter(export(net, [x], True, ["x"]), {"x": x})
    name = layer_of(adapter, "LSTM").name
    sim = calibrated(adapter, [{"x": x}], {"defaults": {"ops": {}, "params": {}},
                                           "params": {"weight": {"is_symmetric": "False"},
                                                      "bias": {"is_quantized": "True", "is_symmetric": "True"}}})
    q = {s: sim.quantizers[f"{name}_{s}"] for s in ("weight", "weight_r", "bias")}
    assert [(q[s].enabled, q[s].symmetric) for s in ("weight", "weight_r", "bias")] == [
        (True, False), (True, False), (True, True)]
    sim = calibrated(adapter, [{"x": x}], {"defaults": {"ops": {}, "params": {}, "per_channel_quantization": "True"},
                                           "op_type": {"LSTM": {"params": {"weight": {"is_quantized": "False"}}}}})
    q = {s: sim.quantizers[f"{name}_{s}"] for s in ("weight", "weight_r", "bias")}
    assert [q[s].enabled for s in ("weight", "weight_r", "bias")] == [False, False, True]
    assert sim.quantizers["/conv/Conv_weight"].enabled and sim.quantizers["/conv/Conv_weight"].per_channel


def test_lstm_peepholes_are_listed_as_unquantized():
    rng = np.random.default_rng(3)
    h = 3
    inits = [init("W", rng.standard_normal((1, 4 * h, 2)).astype(np.float32)),
             init("R", rng.standard_normal((1, 4 * h, h)).astype(np.float32)),
             init("B", rng.standard_normal((1, 8 * h)).astype(np.float32)),
             init("P", rng.standard_normal((1, 3 * h)).astype(np.float32))]
    model = om.model([node("LSTM", ["x", "W", "R", "B", "", "", "", "P"], ["y"], name="lstm", hidden_size=h)],
                     [vi("x", [5, "batch", 2])], [vi("y", [5, 1, "batch", h])], inits)
    x = rng.standard_normal((5, 2, 2)).astype(np.float32)
    adapter = OnnxAdapter(model, {"x": x})
    assert [q.name for q in adapter.graph["lstm"].params] == ["lstm_weight", "lstm_weight_r", "lstm_bias"]
    assert adapter.graph.unquantized_ops == [
        "LSTM 'lstm': constant input(s) P (weights qa has no parameter quantizer for) stay in float"]


# ---- tied weights through plumbing ---------------------------------------------------------------

def _tied_lm():
    torch = pytest.importorskip("torch")
    from torch import nn

    class TiedLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.head = nn.Linear(8, 20, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(torch.relu(self.emb(ids)))

    torch.manual_seed(0)
    return TiedLM().eval()


def test_a_tied_embedding_and_lm_head_is_one_quantizer():
    """Without constant folding the head reads the table through a Transpose: one quantizer, named
    after the embedding, and quantizing it changes both layers (the Transpose runs on the quantized
    table). With constant folding the exporter writes the transpose as a second initializer: the
    file no longer ties them, and qa (as onnxruntime) sees two tensors."""
    ids = np.random.default_rng(4).integers(0, 20, (3, 5)).astype(np.int64)
    model = export(_tied_lm(), [ids], False, ["ids"])
    adapter = OnnxAdapter(model, {"ids": ids})
    emb, head = adapter.graph["/emb/Gather"], adapter.graph["/head/MatMul"]
    assert [q.name for q in emb.params] == ["/emb/Gather_weight"] and head.params[0] is emb.params[0]
    assert list(adapter._prep.params) == ["/emb/Gather_weight"] and emb.params[0].shape == (20, 8)
    np.testing.assert_allclose(adapter.run({"ids": ids})[0], om.plain_run(model, {"ids": ids})[0], rtol=1e-6)
    sim = calibrated(adapter, [{"ids": ids}])
    sim.set_active({"/emb/Gather_weight"})
    table = om.onnx_weight(model, "emb.weight")
    by_hand = om.with_initializer(model, "emb.weight", fake_quantized(sim, "/emb/Gather_weight", table))
    np.testing.assert_allclose(adapter.run({"ids": ids})[0], om.plain_run(by_hand, {"ids": ids})[0], rtol=1e-5,
                               atol=1e-6)

    folded = export(_tied_lm(), [ids], True, ["ids"])
    graph = OnnxAdapter(folded, {"ids": ids}).graph
    assert len(folded.graph.initializer) == 2
    assert [q.name for q in graph["/head/MatMul"].params] == ["/head/MatMul_weight"]


def test_a_weight_tied_through_plumbing_is_one_quantizer_and_keeps_its_batch_norm():
    """Gather(table), MatMul(Transpose(table)) and MatMul(Cast(Identity(table))): one quantizer on
    the stored table; the batch norm after the second layer does not fold (it would split it)."""
    model = om.tied_through_plumbing()
    ids = np.random.default_rng(5).integers(0, 12, (4, 3)).astype(np.int64)
    adapter = OnnxAdapter(model, {"ids": ids})
    graph = adapter.graph
    q = graph["embed"].params[0]
    assert q.name == "embed_weight" and q.layer == "embed" and q.shape == (12, 6)
    assert graph["head"].params == [q] and graph["back"].params == [q]
    assert list(adapter._prep.params) == ["embed_weight", "bn_weight", "bn_bias"]
    assert graph.folded_batch_norms == []
    assert graph.unfolded_batch_norms == [("bn", "head", "its weight 'table' is shared with embed, back")]
    np.testing.assert_allclose(adapter.run({"ids": ids})[0], om.plain_run(model, {"ids": ids})[0], rtol=1e-5)
    sim = calibrated(adapter, [{"ids": ids}])
    sim.set_active({"embed_weight"})
    by_hand = om.with_initializer(model, "table", fake_quantized(sim, "embed_weight", om.onnx_weight(model, "table")))
    np.testing.assert_allclose(adapter.run({"ids": ids})[0], om.plain_run(by_hand, {"ids": ids})[0], rtol=1e-5,
                               atol=1e-6)


def test_a_tied_weight_first_read_through_a_transpose_keeps_its_channel_axis():
    """The first layer reads the table transposed: the one quantizer is on the stored table, its
    channel axis the stored axis that is the layer's output channels."""
    table = np.random.default_rng(6).standard_normal((5, 4)).astype(np.float32)
    nodes = [node("Transpose", ["table"], ["t"], name="tr", perm=[1, 0]),
             node("MatMul", ["x", "t"], ["h"], name="fc"),  # [n, 4] @ [4, 5]: output channels are the table's rows
             node("Gather", ["table", "ids"], ["e"], name="embed"),
             node("ReduceSum", ["e"], ["s"], name="sum", axes=[1], keepdims=0)]
    model = om.model(nodes, [vi("x", ["n", 4]), vi("ids", ["n", 2], TensorProto.INT64)],
                     [vi("h", ["n", 5]), vi("s", ["n", 4])],
                     [init("table", table)], opset=12)
    x, ids = np.ones((3, 4), np.float32), np.zeros((3, 2), np.int64)
    adapter = OnnxAdapter(model, {"x": x, "ids": ids})
    q = adapter.graph["fc"].params[0]
    assert (q.name, q.axis, q.shape) == ("fc_weight", 0, (5, 4)) and adapter.graph["embed"].params == [q]


def test_slices_of_a_packed_weight_are_separate_weights():
    """A fused QKV weight sliced for three MatMuls is three weights (as constant folding makes them
    in a deployed graph), each quantized on its own values; the stored tensor is read by none."""
    qkv = np.random.default_rng(22).standard_normal((4, 12)).astype(np.float32)
    nodes, outputs = [], []
    for i, name in enumerate("qkv"):
        nodes += [node("Slice", ["qkv", f"s{i}", f"e{i}", "axis"], [f"w{name}"], name=f"slice_{name}"),
                  node("MatMul", ["x", f"w{name}"], [name], name=name)]
        outputs.append(vi(name, ["n", 4]))
    inits = [init("qkv", qkv), init("axis", np.array([1], np.int64))]
    inits += [init(f"{k}{i}", np.array([4 * i + (k == "e") * 4], np.int64)) for i in range(3) for k in "se"]
    model = om.model(nodes, [vi("x", ["n", 4])], outputs, inits)
    adapter = OnnxAdapter(model, {"x": np.ones((2, 4), np.float32)})
    assert [[q.name for q in adapter.graph[n].params] for n in "qkv"] == [["q_weight"], ["k_weight"], ["v_weight"]]
    for i, n in enumerate("qkv"):
        np.testing.assert_array_equal(adapter._prep.params[f"{n}_weight"].original, qkv[:, 4 * i:4 * i + 4])
    assert adapter._prep.initializers == []


# ---- pass-through ops ----------------------------------------------------------------------------

def _pass_through_model():
    w = np.random.default_rng(7).standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3
    nodes = [node("Identity", ["x"], ["xi"], name="id_in"),
             node("Conv", ["xi", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             node("Dropout", ["c", "ratio", "no"], ["d"], name="drop"),
             node("Relu", ["d"], ["r"], name="relu"),
             node("Dropout", ["r"], ["r2"], name="drop2"),
             node("Identity", ["r2"], ["y"], name="id_out")]
    return om.model(nodes, [vi("x", ["n", 3, 5, 5])], [vi("y", ["n", 4, 5, 5])],
                    [init("w", w), init("ratio", np.array(0.5, np.float32)), init("no", np.array(False))], opset=13)


def test_identity_and_dropout_never_get_quantizers():
    """Identity and inference Dropout are no layers, under any config: the layers around them read
    through them (the model input, the layer before) and reach the model output through them."""
    model = _pass_through_model()
    x = np.random.default_rng(8).standard_normal((2, 3, 5, 5)).astype(np.float32)
    adapter = OnnxAdapter(model, {"x": x})
    graph = adapter.graph
    assert [layer.name for layer in graph.layers] == ["conv", "relu"]
    assert [q.name for q in graph.quantizers()] == ["conv_weight", "conv_input_0", "conv_output_0", "relu_output_0"]
    assert graph["conv"].model_input and graph["relu"].inputs == ["conv"] and graph["relu"].model_output
    assert unquantized_reads(adapter) == []
    sim = calibrated(adapter, [{"x": x}], {"defaults": {"ops": {}, "params": {}},
                                           "op_type": {"Identity": {"is_output_quantized": "True"},
                                                       "Dropout": {"is_output_quantized": "True"}}})
    assert not any("id_" in n or "drop" in n for n in sim.quantizers)
    np.testing.assert_allclose(adapter.run({"x": x})[0], om.plain_run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)
    sim = calibrated(adapter, [{"x": x}])
    sim.set_active({"conv_input_0"})  # the input quantizer reads the model input through the Identity
    enc = sim.quantizers["conv_input_0"].encoding
    by_hand = om.plain_run(model, {"x": enc.fake_quantize(x)})[0]
    np.testing.assert_allclose(adapter.run({"x": x})[0], by_hand, rtol=1e-5, atol=1e-6)


def test_a_dropout_in_training_mode_stays_a_layer():
    model = _pass_through_model()
    for t in model.graph.initializer:
        if t.name == "no":
            t.CopyFrom(init("no", np.array(True)))
    x = np.ones((1, 3, 5, 5), np.float32)
    assert "drop" in OnnxAdapter(model, {"x": x}).graph


# ---- other ops that compute with a weight -----------------------------------------------------------

def _einsum():
    w = np.random.default_rng(9).standard_normal((6, 5)).astype(np.float32)
    return om.model([node("Einsum", ["x", "w"], ["y"], name="ein", equation="bsd,dh->bsh")],
                    [vi("x", ["b", 3, 6])], [vi("y", ["b", 3, 5])], [init("w", w)], opset=12), \
        {"x": np.random.default_rng(10).standard_normal((2, 3, 6)).astype(np.float32)}, {("ein", 1): "ein_weight"}


def _weight_times_data():
    w = np.random.default_rng(11).standard_normal((5, 6)).astype(np.float32)
    return om.model([node("MatMul", ["w", "x"], ["y"], name="mm")], [vi("x", [6, "n"])], [vi("y", [5, "n"])],
                    [init("w", w)]), \
        {"x": np.random.default_rng(12).standard_normal((6, 4)).astype(np.float32)}, {("mm", 0): "mm_weight"}


def _rms_norm():
    s = np.random.default_rng(13).uniform(0.5, 1.5, 6).astype(np.float32)
    m = helper.make_model(helper.make_graph([node("RMSNormalization", ["x", "s"], ["y"], name="rms")], "g",
                                            [vi("x", ["b", 6])], [vi("y", ["b", 6])], [init("s", s)]),
                          opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    return m, {"x": np.random.default_rng(14).standard_normal((3, 6)).astype(np.float32)}, {("rms", 1): "rms_weight"}


def _deform_conv():
    rng = np.random.default_rng(15)
    w, b = rng.standard_normal((4, 2, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    m = om.model([node("DeformConv", ["x", "w", "off", "b"], ["y"], name="dc", pads=[1, 1, 1, 1])],
                 [vi("x", [1, 2, 4, 4]), vi("off", [1, 18, 4, 4])], [vi("y", [1, 4, 4, 4])], [init("w", w), init("b", b)],
                 opset=19)
    feeds = {"x": rng.standard_normal((1, 2, 4, 4)).astype(np.float32),
             "off": (rng.standard_normal((1, 18, 4, 4)) * 0.5).astype(np.float32)}
    return m, feeds, {("dc", 1): "dc_weight", ("dc", 3): "dc_bias"}


def _runtime_conv_weight():
    rng = np.random.default_rng(16)
    m = om.model([node("Conv", ["x", "k", "b"], ["y"], name="conv")], [vi("x", [1, 2, 4, 4]), vi("k", [3, 2, 1, 1])],
                 [vi("y", [1, 3, 4, 4])], [init("b", rng.standard_normal(3).astype(np.float32))])
    feeds = {"x": rng.standard_normal((1, 2, 4, 4)).astype(np.float32),
             "k": rng.standard_normal((3, 2, 1, 1)).astype(np.float32)}
    return m, feeds, {("conv", 2): "conv_bias"}


def _weight_norm():
    """A weight normalised from constants (g * v / ||v||), as torch exports weight_norm without
    constant folding: the computed weight is the parameter."""
    rng = np.random.default_rng(17)
    nodes = [node("ReduceL2", ["v"], ["norm"], name="norm", axes=[0], keepdims=1),
             node("Div", ["v", "norm"], ["unit"], name="div"), node("Mul", ["unit", "g"], ["w"], name="scale"),
             node("MatMul", ["x", "w"], ["y"], name="fc")]
    m = om.model(nodes, [vi("x", ["n", 6])], [vi("y", ["n", 4])],
                 [init("v", rng.standard_normal((6, 4)).astype(np.float32)),
                  init("g", rng.uniform(0.5, 2, (1, 4)).astype(np.float32))], opset=13)
    return m, {"x": rng.standard_normal((3, 6)).astype(np.float32)}, {("fc", 1): "fc_weight"}


@pytest.mark.parametrize("build, axes", [(_einsum, [1]), (_weight_times_data, [0]), (_rms_norm, [None]),
                                         (_deform_conv, [0, None]), (_runtime_conv_weight, [None]),
                                         (_weight_norm, [1])],
                         ids=["einsum", "W@x", "rms_norm", "deform_conv", "runtime_conv_weight", "weight_norm"])
def test_ops_that_compute_with_a_weight_get_its_quantizer(build, axes):
    """Each weight gets a parameter quantizer (channel axis as listed); with all of them on, the
    model equals a copy whose weights were fake-quantized by hand, and nothing stays unlisted."""
    model, feeds, weights = build()
    adapter = OnnxAdapter(model, feeds)
    assert [(q.name, q.axis) for q in adapter.graph.quantizers() if q.is_param] == list(zip(weights.values(), axes))
    assert adapter.graph.unquantized_ops == [] and unquantized_reads(adapter) == []
    np.testing.assert_allclose(adapter.run(feeds)[0], om.plain_run(model, feeds)[0], rtol=1e-5, atol=1e-5)
    sim = calibrated(adapter, [feeds], WEIGHTS_ONLY)
    sim.set_active(sim.param_quantizers())
    by_hand = with_inputs(model, {key: fake_quantized(sim, q, adapter._prep.params[q].original)
                                  for key, q in weights.items()})
    got, fp32 = adapter.run(feeds)[0], om.plain_run(model, feeds)[0]
    np.testing.assert_allclose(got, om.plain_run(by_hand, feeds)[0], rtol=1e-5, atol=1e-5)
    assert np.abs(got - fp32).max() > 1e-4


def test_attention_matmuls_of_two_activations_read_quantized_tensors():
    """Q @ K^T and A @ V have no weight: both of their inputs are outputs of layers with output
    quantizers (the K^T Transpose's included), so nothing they read stays in float."""
    rng = np.random.default_rng(18)
    w = {n: (rng.standard_normal((8, 8)) * 0.4).astype(np.float32) for n in ("wq", "wk", "wv")}
    nodes = [node("MatMul", ["x", "wq"], ["q"], name="q"), node("MatMul", ["x", "wk"], ["k"], name="k"),
             node("MatMul", ["x", "wv"], ["v"], name="v"),
             node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
             node("MatMul", ["q", "kt"], ["s"], name="qk"), node("Softmax", ["s"], ["a"], name="softmax", axis=-1),
             node("MatMul", ["a", "v"], ["y"], name="av")]
    model = om.model(nodes, [vi("x", ["b", 4, 8])], [vi("y", ["b", 4, 8])], [init(k, v) for k, v in w.items()])
    adapter = OnnxAdapter(model, {"x": rng.standard_normal((2, 4, 8)).astype(np.float32)})
    assert adapter.graph["qk"].inputs == ["q", "kt"] and adapter.graph["av"].inputs == ["v", "softmax"]
    assert adapter.graph["qk"].params == [] and unquantized_reads(adapter) == []


def test_exported_transformer_block_reads_no_unquantized_run_time_tensor():
    torch = pytest.importorskip("torch")
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d=8):
            super().__init__()
            self.ln = nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
            self.fc = nn.Linear(d, d)

        def forward(self, x):
            h = self.ln(x)
            return x + self.fc(self.attn(h, h, h, need_weights=False)[0])

    torch.manual_seed(0)
    x = np.random.default_rng(19).standard_normal((2, 4, 8)).astype(np.float32)
    model = export(Block().eval(), [x], False, ["x"])
    adapter = OnnxAdapter(model, {"x": x})
    assert unquantized_reads(adapter) == []
    ln = layer_of(adapter, "LayerNormalization")
    assert [q.param for q in ln.params] == ["weight", "bias"]
    assert adapter.graph.unquantized_ops == []


# ---- what stays in float is listed ------------------------------------------------------------------

def test_constant_inputs_of_custom_ops_are_listed():
    w = np.random.default_rng(20).standard_normal((6, 4)).astype(np.float32)
    graph = helper.make_graph([node("FusedMatMul", ["x", "w"], ["y"], name="fused", domain="com.microsoft")], "g",
                              [vi("x", ["n", 6])], [vi("y", ["n", 4])], [init("w", w)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    x = np.ones((2, 6), np.float32)
    adapter = OnnxAdapter(model, {"x": x})
    assert adapter.graph["fused"].params == []
    assert adapter.graph.unquantized_ops == [
        "com.microsoft.FusedMatMul 'fused': constant input(s) w (weights qa has no parameter quantizer for) stay in float"]
    with pytest.warns(UserWarning, match="FusedMatMul 'fused'"):
        qa.QuantAnalyzer(model, {"x": x}, lambda s: None, lambda s: 0.0, progress=False)


def test_a_weight_computed_by_ops_qa_cannot_evaluate_is_listed():
    """The weight comes out of a custom op on constants: it cannot be a parameter, and says so."""
    v = np.random.default_rng(21).standard_normal((6, 4)).astype(np.float32)
    graph = helper.make_graph([node("Gelu", ["v"], ["w"], name="act", domain="com.microsoft"),
                               node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
                              [vi("x", ["n", 6])], [vi("y", ["n", 4])], [init("v", v)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    adapter = OnnxAdapter(model, {"x": np.ones((2, 6), np.float32)})
    assert adapter.graph["fc"].params == []
    assert adapter.graph.unquantized_ops == [
        "MatMul 'fc': its weight 'w' is computed from constants by ops qa cannot evaluate and stays in float"]
