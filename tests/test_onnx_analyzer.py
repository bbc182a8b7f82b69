"""QuantAnalyzer on ONNX models, on onnxruntime (issue 5): agreement with qa's PyTorch results on the
same networks, FP32 runs equal to plain onnxruntime, fake quantization inside the graph bit-identical
to qa.kernels, batch-norm folding (initializers and Constant nodes), the user's model and file left
alone, int64 inputs, external data, subgraphs, opsets 11 to 21, and clear errors.

Models are tiny: exported from PyTorch inside the tests, or built with onnx.helper in
tests/onnx_models.py.
"""

from __future__ import annotations

import doctest
import io
import json
import os
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import qa  # noqa: E402
from qa.adapters.onnx import OnnxAdapter  # noqa: E402
from qa.sim import QuantSim  # noqa: E402

import onnx_models as om  # noqa: E402

# Scores from ONNX and from PyTorch on the same network agree to this fraction of the largest score
# magnitude in the comparison: both compute the same quantization; only float rounding differs
# (onnxruntime's and torch's kernels, and the batch-norm epsilon stored as float32 in ONNX).
SCORE_RTOL = 1e-3


# ---- helpers ------------------------------------------------------------------------------------

def batches(shape, n=3, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape) * 1.5 + 0.2).astype(dtype) for _ in range(n)]


def closeness_onnx(reference, name, data):
    """Minus the mean squared difference from reference outputs (one per batch): a smooth score."""
    def score(session):
        total = 0.0
        for x, ref in zip(data, reference):
            out = session.run(None, {name: x})[0]
            total += float(np.mean((out.astype(np.float64) - ref) ** 2))
        return -total / len(data)
    return score


def calibrate_onnx(name, data):
    def forward_pass(session):
        for x in data:
            session.run(None, {name: x})
    return forward_pass


def analyze_onnx(model, name, data, results, scheme="tf_enhanced", mse=True, **kwargs):
    reference = [np.asarray(o, np.float64) for o in (om.plain_run(as_proto(model), {name: x})[0] for x in data)]
    analyzer = qa.QuantAnalyzer(model, {name: data[0][:1]}, calibrate_onnx(name, data),
                                closeness_onnx(reference, name, data), progress=False)
    if mse:
        analyzer.enable_per_layer_mse_loss([{name: x} for x in data], len(data))
    return analyzer, analyzer.analyze(quant_scheme=scheme, results_dir=results, **kwargs)


def as_proto(model):
    return model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))


def export(module, example, opset=17, fold=False, name="input"):
    torch = pytest.importorskip("torch")
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(example),), f, dynamo=False, opset_version=opset, do_constant_folding=fold,
                          input_names=[name], output_names=["output"], dynamic_axes={name: {0: "batch"}})
    return onnx.load_from_string(f.getvalue())


def torch_module_of(node_name):
    """'/conv1/Conv' -> 'conv1', '/features/features.0/Conv' -> 'features.0' (the exporter's scopes)."""
    parts = node_name.split("/")
    return parts[-2] if len(parts) >= 3 else node_name


def assert_close_scores(a, b, scale, what):
    assert abs(a - b) <= SCORE_RTOL * scale, f"{what}: {a} vs {b}"


# ---- PyTorch networks, exported ---------------------------------------------------------------------

def _torch_cnn():
    torch = pytest.importorskip("torch")
    from torch import nn

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.relu1 = nn.ReLU()
            self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.bn2 = nn.BatchNorm2d(16)
            self.relu2 = nn.ReLU()
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.relu3 = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.relu1(self.bn1(self.conv1(x)))
            x = self.relu2(self.bn2(self.conv2(x)))
            x = self.relu3(self.dw(x))
            return self.fc(self.pool(x).flatten(1))

    torch.manual_seed(0)
    net = CNN().eval()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
        net.dw.weight.mul_(torch.linspace(0.2, 3.0, 16).reshape(16, 1, 1, 1))  # uneven channels
    return net


def _torch_block():
    torch = pytest.importorskip("torch")
    from torch import nn

    class MatMul(nn.Module):
        def forward(self, a, b):
            return a @ b

    class Add(nn.Module):
        def forward(self, a, b):
            return a + b

    class Block(nn.Module):
        """Single-head attention and an MLP; every computing op is a module, so that torch
        quantizes the same tensors as the ONNX graph does."""

        def __init__(self, d=16):
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.qk, self.av = MatMul(), MatMul()
            self.softmax = nn.Softmax(-1)
            self.add1, self.add2 = Add(), Add()
            self.ln2 = nn.LayerNorm(d)
            self.fc1 = nn.Linear(d, 4 * d)
            self.gelu = nn.GELU()
            self.fc2 = nn.Linear(4 * d, d)

        def forward(self, x):
            h = self.ln1(x)
            a = self.softmax(self.qk(self.q(h), self.k(h).transpose(-2, -1)))
            x = self.add1(x, self.o(self.av(a, self.v(h))))
            return self.add2(x, self.fc2(self.gelu(self.fc1(self.ln2(x)))))

    torch.manual_seed(1)
    return Block().eval()


def _analyze_torch(net, data, results, **kwargs):
    torch = pytest.importorskip("torch")
    tensors = [torch.from_numpy(x) for x in data]
    with torch.no_grad():
        reference = [net(x).double() for x in tensors]

    def calibrate(model):
        with torch.no_grad():
            for x in tensors:
                model(x)

    def score(model):
        with torch.no_grad():
            return -float(np.mean([float(((model(x).double() - r) ** 2).mean()) for x, r in zip(tensors, reference)]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analyzer = qa.QuantAnalyzer(net, tensors[0][:1], calibrate, score, progress=False)
        analyzer.enable_per_layer_mse_loss(tensors, len(tensors))
        return analyzer.analyze(results_dir=results, **kwargs)


def _compare_with_torch(r_onnx, r_torch, torch_name=torch_module_of):
    """Same scores (within SCORE_RTOL), same layers in both sweeps, same top-3 (ONNX node names
    mapped to torch layer names by ``torch_name``)."""
    pairs = [(r_onnx.fp32_score, r_torch.fp32_score), (r_onnx.weight_quantized_score, r_torch.weight_quantized_score),
             (r_onnx.activation_quantized_score, r_torch.activation_quantized_score),
             (r_onnx.quantized_score, r_torch.quantized_score)]
    scale = max(abs(v) for pair in pairs for v in pair)
    for (a, b), what in zip(pairs, ("fp32", "weights", "activations", "all")):
        assert_close_scores(a, b, scale, what)
    for sweep in ("per_layer_quant_enabled", "per_layer_quant_disabled", "per_layer_mse"):
        onnx_scores = {torch_name(k): v for k, v in getattr(r_onnx, sweep).items()}
        torch_scores = getattr(r_torch, sweep)
        assert set(onnx_scores) == set(torch_scores), sweep
        scale = max(abs(v) for v in list(onnx_scores.values()) + list(torch_scores.values()))
        for layer, v in torch_scores.items():
            assert_close_scores(onnx_scores[layer], v, scale, f"{sweep}[{layer}]")
    assert [torch_name(n) for n in r_onnx.most_sensitive_layers(3)] == r_torch.most_sensitive_layers(3)


def test_cnn_agrees_with_pytorch(tmp_path):
    net = _torch_cnn()
    model = export(net, batches((1, 3, 16, 16), 1)[0], opset=17)
    assert [n.op_type for n in model.graph.node].count("BatchNormalization") == 2  # the exporter kept them
    data = batches((8, 3, 16, 16))
    analyzer, r_onnx = analyze_onnx(model, "input", data, tmp_path / "onnx", default_param_bw=4)
    r_torch = _analyze_torch(net, data, tmp_path / "torch", default_param_bw=4)
    assert [(torch_module_of(bn), torch_module_of(c)) for bn, c in r_onnx.folded_batch_norms] == \
        [("bn1", "conv1"), ("bn2", "conv2")]
    _compare_with_torch(r_onnx, r_torch)
    # the same encodings, key for key (ONNX keys are node names)
    for key, enc in r_torch.encodings.items():
        layer, _, rest = key.partition("_")
        match = [k for k in r_onnx.encodings if torch_module_of(k.rsplit("_", 2)[0]) == layer
                 and k.endswith(rest)]
        assert match, key
        a, b = r_onnx.encodings[match[0]], enc
        a, b = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x["bitwidth"] == y["bitwidth"] and x["offset"] == y["offset"]
            assert x["scale"] == pytest.approx(y["scale"], rel=1e-4)


def test_transformer_block_agrees_with_pytorch(tmp_path):
    net = _torch_block()
    data = batches((4, 8, 16))
    model = export(net, data[0][:1], opset=20)  # opset 20: LayerNormalization and Gelu are single nodes
    ops = {n.op_type for n in model.graph.node}
    assert {"MatMul", "Softmax", "LayerNormalization", "Gelu", "Transpose"} <= ops
    analyzer, r_onnx = analyze_onnx(model, "input", data, tmp_path / "onnx", default_param_bw=4,
                                    default_activation_bw=6)
    layers = {layer.name: layer for layer in analyzer.adapter.graph.layers}
    assert layers["/q/MatMul"].type_name == "MatMul+Add"  # nn.Linear on 3-D input: one layer, like torch
    # data movement: nothing new to quantize (the data-movement policy turns its output quantizer off)
    assert r_onnx.layers[[entry["name"] for entry in r_onnx.layers].index("/Transpose")]["quantizers"] == []
    r_torch = _analyze_torch(net, data, tmp_path / "torch", default_param_bw=4, default_output_bw=6)
    _compare_with_torch(r_onnx, r_torch)


def test_transformer_block_with_erf_gelu(tmp_path):
    """Opset 17 spells GELU with Erf: every node of it is a layer with its own quantizer."""
    net = _torch_block()
    data = batches((2, 8, 16), n=2)
    model = export(net, data[0][:1], opset=17)
    analyzer, result = analyze_onnx(model, "input", data, tmp_path, scheme="tf", mse=False)
    ops = {layer.op_type for layer in analyzer.adapter.graph.layers}
    assert {"Erf", "Div", "Mul", "LayerNormalization", "Softmax"} <= ops
    assert result.fp32_score == pytest.approx(0.0, abs=1e-10)
    assert result.quantized_score < 0


# ---- functional ops: the PyTorch adapter's op layers against the exported graph's nodes ---------------

# ONNX op type -> the torch function name that produced it (the PyTorch adapter's op layer names)
_TORCH_FUNCTION = {"MatMul": "matmul", "Softmax": "softmax", "Add": "add", "Div": "div", "Mul": "mul",
                   "Relu": "relu", "Conv": "conv2d", "Gelu": "gelu", "ReduceMean": "mean", "Clip": "relu6"}


def torch_layer_of(node_name, torch_layers):
    """'/attn/q/MatMul' -> 'attn.q' (a module layer), '/attn/MatMul_1' -> 'attn/matmul_1' (an op of
    module attn), '/Add' -> 'add' (an op of the model's own forward)."""
    *scope, op = node_name.strip("/").split("/")
    module = ".".join(scope)
    if module in torch_layers:
        return module
    kind, _, n = op.partition("_")
    name = _TORCH_FUNCTION.get(kind, kind.lower()) + (f"_{n}" if n else "")
    return f"{module}/{name}" if module else name


def _compare_op_layers(r_onnx, r_torch):
    """Same scores, same swept layers (ONNX node names mapped to torch op layer names), same top 3."""
    names = set(r_torch.per_layer_mse)
    _compare_with_torch(r_onnx, r_torch, lambda node: torch_layer_of(node, names))


def _functional_block():
    torch = pytest.importorskip("torch")
    from torch import nn
    import torch.nn.functional as F

    class Attention(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

        def forward(self, h):
            p = torch.softmax(self.q(h) @ self.k(h).transpose(-2, -1) / 4.0, dim=-1)
            return self.o(p @ self.v(h))

    class Block(nn.Module):
        def __init__(self, d=16):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn = Attention(d)
            self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    torch.manual_seed(1)
    return Block().eval()


def test_transformer_block_with_functional_ops_agrees_with_pytorch(tmp_path):
    net = _functional_block()
    data = batches((4, 8, 16))
    model = export(net, data[0][:1], opset=20)
    analyzer, r_onnx = analyze_onnx(model, "input", data, tmp_path / "onnx", default_param_bw=4,
                                    default_activation_bw=6)
    r_torch = _analyze_torch(net, data, tmp_path / "torch", default_param_bw=4, default_output_bw=6)
    assert {"attn/matmul", "attn/div", "attn/softmax", "attn/matmul_1", "add", "gelu", "add_1"} <= \
        set(r_torch.per_layer_quant_enabled)
    _compare_op_layers(r_onnx, r_torch)


def test_functional_convs_with_folded_batch_norms_agree_with_pytorch(tmp_path):
    pytest.importorskip("torch")
    import torch.nn.functional as F
    import torch_zoo

    class Net(torch_zoo.SameConvNet):  # relu: one ONNX node per op (silu exports as Sigmoid + Mul)
        def forward(self, x):
            x = F.relu(self.bn0(self.conv_stem(x)))
            x = F.relu(self.bn1(self.dw(x)))
            return self.head(self.bn2(self.pw(x)).mean((2, 3)))

    net = Net().eval()
    data = batches((6, 3, 16, 16))
    model = export(net, data[0][:1], opset=17)
    analyzer, r_onnx = analyze_onnx(model, "input", data, tmp_path / "onnx", default_param_bw=4)
    r_torch = _analyze_torch(net, data, tmp_path / "torch", default_param_bw=4)
    names = set(r_torch.per_layer_mse)
    assert [(torch_module_of(bn), torch_layer_of(c, names)) for bn, c in r_onnx.folded_batch_norms] == \
        r_torch.folded_batch_norms == [("bn0", "conv_stem/conv2d"), ("bn1", "dw/conv2d"), ("bn2", "pw/conv2d")]
    _compare_op_layers(r_onnx, r_torch)


# ---- FP32 runs, fake quantization, weights ---------------------------------------------------------

def test_fp32_score_equals_plain_onnxruntime(tmp_path):
    model = om.conv_bn_constants()
    data = batches((6, 3, 8, 8))
    labels = [om.plain_run(model, {"image": x})[0].argmax(1) for x in data]
    labels[0][:3] = (labels[0][:3] + 1) % 10  # so the FP32 accuracy is not trivially 1

    def accuracy(session):
        return float(np.mean([np.mean(session.run(None, {"image": x})[0].argmax(1) == y)
                              for x, y in zip(data, labels)]))

    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    analyzer = qa.QuantAnalyzer(model, {"image": data[0]}, calibrate_onnx("image", data), accuracy, progress=False)
    result = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    assert result.fp32_score == accuracy(plain)
    # and the outputs themselves (batch norms folded, quantizers off)
    for x in data:
        np.testing.assert_allclose(analyzer.adapter.run({"image": x})[0], plain.run(None, {"image": x})[0],
                                   rtol=1e-5, atol=1e-5)


def _sim(adapter, scheme="tf", rounding="half_even", data=None, name="x", **kwargs):
    sim = QuantSim(adapter, quant_scheme=scheme, default_param_bw=kwargs.pop("param_bw", 8),
                   default_output_bw=kwargs.pop("output_bw", 8), rounding=rounding, **kwargs)
    sim.compute_encodings(qa.CallbackFunc(lambda s, _: [s.run(None, {name: x}) for x in data]))
    return sim


@pytest.mark.parametrize("rounding", ["half_even", "half_away"])
def test_fake_quantization_in_graph_equals_qa_kernels(rounding):
    """One activation quantizer on: the tensor after it is exactly kernels.fake_quantize of the FP32 one."""
    model = om.mlp()
    x = batches((64, 6), n=1)[0]
    adapter = OnnxAdapter(model, {"x": x})
    sim = _sim(adapter, rounding=rounding, data=[x], output_bw=4)
    fp32 = {}
    with adapter.capturing(lambda layer, i, a: fp32.setdefault(layer, a.copy())):
        sim.set_active(())
        adapter.run({"x": x})
    for q in ("fc1_input_0", "relu_output_0", "fc2_output_0"):
        sim.set_active({q})
        got = {}
        with adapter.capturing(lambda layer, i, a: got.setdefault(layer, a.copy())):
            adapter.run({"x": x})
        enc = sim.quantizers[q].encoding
        if q == "fc1_input_0":  # the input itself: compare fc1's output with one computed from fq(x)
            w = {n: onnx.numpy_helper.to_array(t) for n, t in ((t.name, t) for t in model.graph.initializer)}
            expect = enc.fake_quantize(x, rounding=rounding) @ w["w1"].T + w["b1"]
            np.testing.assert_allclose(got["fc1"], expect, rtol=1e-5, atol=1e-6)
            continue
        layer = sim.quantizers[q].layer
        np.testing.assert_array_equal(got[layer], enc.fake_quantize(fp32[layer], rounding=rounding))
        # the quantizer really changed the tensor
        assert not np.array_equal(got[layer], fp32[layer])


def test_half_away_and_half_even_differ_on_ties():
    model = om.mlp()
    # calibrated on [0, 7] at 3 bits: scale 1, offset 0, so k + 0.5 are exact ties
    x = np.array([0.0, 7.0, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 1.0, 2.0, 3.0], np.float32).reshape(2, 6)
    out = {}
    for rounding in ("half_even", "half_away"):
        adapter = OnnxAdapter(model, {"x": x})
        sim = _sim(adapter, rounding=rounding, data=[x], output_bw=3)
        sim.set_active({"fc1_input_0"})
        got = {}
        with adapter.capturing(lambda layer, i, a: got.setdefault(layer, a.copy())):
            adapter.run({"x": x})
        assert sim.quantizers["fc1_input_0"].encoding.scale == 1.0
        out[rounding] = got["fc1"]
        assert {key[0] for key in adapter._runners} == {"half_even", rounding}  # a variant, built on first use
    assert not np.array_equal(out["half_even"], out["half_away"])


def test_quantized_weights_equal_kernels():
    """Weights quantized by the engine with qa.kernels: the model equals a copy whose initializers are
    replaced by those values."""
    model = om.mlp()
    x = batches((16, 6), n=1)[0]
    adapter = OnnxAdapter(model, {"x": x})
    sim = _sim(adapter, data=[x], param_bw=4, config_file={
        "defaults": {"ops": {}, "params": {"is_quantized": "True", "is_symmetric": "True"},
                     "per_channel_quantization": "True"},
        "params": {"bias": {"is_quantized": "True"}}})
    sim.set_active(sim.param_quantizers())
    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    names = {"w1": "fc1_weight", "b1": "fc1_bias", "w2": "fc2_weight", "b2": "fc2_bias"}
    for t in quantized.graph.initializer:
        q = sim.quantizers[names[t.name]]
        assert q.per_channel == (q.param == "weight")
        assert q.axis == ({"w1": 0, "w2": 1}.get(t.name))  # Gemm transB=1: axis 0; MatMul [K, N]: axis 1
        t.CopyFrom(onnx.numpy_helper.from_array(q.encoding.fake_quantize(onnx.numpy_helper.to_array(t)), t.name))
    np.testing.assert_array_equal(adapter.run({"x": x})[0], om.plain_run(quantized, {"x": x})[0])


# ---- batch-norm folding and Constant-node weights -----------------------------------------------------

def test_constant_node_weights_and_batch_norm_folding(tmp_path):
    model = om.conv_bn_constants()
    x = batches((4, 3, 8, 8), n=1)[0]
    adapter = OnnxAdapter(model, {"image": x})
    graph = adapter.graph
    assert graph.folded_batch_norms == [("BatchNormalization_17", "conv1"), ("BatchNormalization_20", "conv2")]
    names = [layer.name for layer in graph.layers]
    assert names == ["conv1", "Relu_18", "conv2", "Add_21", "BatchNormalization_22", "Relu_23",
                     "GlobalAveragePool_24", "Flatten_25", "Gemm_26"]
    bn3 = graph["BatchNormalization_22"]  # after an Add: not foldable, a layer with its parameters
    assert [q.name for q in bn3.params] == ["BatchNormalization_22_weight", "BatchNormalization_22_bias"]
    assert graph["Add_21"].inputs == ["Relu_18", "conv2"] and graph["Gemm_26"].model_output
    assert graph["conv1"].model_input and graph["conv1"].quantizer("input", 0) is not None
    assert [q.kind for q in graph["Flatten_25"].quantizers] == ["output"]  # which the config leaves off
    assert not QuantSim(adapter, quant_scheme="tf", default_param_bw=8,
                        default_output_bw=8).quantizers["Flatten_25_output_0"].enabled
    # the folded weights (conv1's came from Constant nodes)
    consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
              if n.op_type == "Constant"}
    s = consts["bn1_scale"].astype(np.float64) / np.sqrt(consts["bn1_var"].astype(np.float64) + 1e-5)
    weights = {q.name: w for q, w in adapter.weights()}
    np.testing.assert_allclose(weights["conv1_weight"], consts["w1"] * s.reshape(-1, 1, 1, 1), rtol=1e-6)
    np.testing.assert_allclose(weights["conv1_bias"], (consts["b1"] - consts["bn1_mean"]) * s + consts["bn1_bias"],
                               rtol=1e-5, atol=1e-7)
    assert weights["conv2_bias"].shape == (8,)  # conv2 had no bias: folding gave it one
    assert weights["Gemm_26_weight"].shape == (10, 8)
    np.testing.assert_allclose(adapter.run({"image": x})[0], om.plain_run(model, {"image": x})[0],
                               rtol=1e-5, atol=1e-5)
    _, result = analyze_onnx(model, "image", batches((4, 3, 8, 8)), tmp_path, scheme="tf")
    assert "BatchNormalization_22" in result.per_layer_quant_enabled
    assert json.loads((tmp_path / "summary.json").read_text())["folded_batch_norms"][0] == \
        ["BatchNormalization_17", "conv1"]


def test_batch_norm_after_matmul_folds():
    """MatMul (constant weight, no bias) -> BatchNormalization on a 2-D tensor folds into a bias Add."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    bn = {k: v[:4] for k, v in om._bn_params("bn", 4, rng).items()}
    nodes = [om.constant("w", w)] + [om.constant(k, v) for k, v in bn.items()] + [
        onnx.helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"),
        onnx.helper.make_node("BatchNormalization", ["m", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["y"], name="bn")]
    model = om.model(nodes, [onnx.helper.make_tensor_value_info("x", om.FLOAT, ["batch", 6])],
                     [onnx.helper.make_tensor_value_info("y", om.FLOAT, ["batch", 4])])
    x = batches((5, 6), n=1)[0]
    adapter = OnnxAdapter(model, {"x": x})
    assert adapter.graph.folded_batch_norms == [("bn", "fc")]
    assert [q.name for q in adapter.graph["fc"].params] == ["fc_weight", "fc_bias"]
    np.testing.assert_allclose(adapter.run({"x": x})[0], om.plain_run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_batch_norm_folds_into_conv_transpose_and_gemm():
    model = om.deconv_gemm_bn()
    x = batches((3, 4, 5, 5), n=1)[0]
    adapter = OnnxAdapter(model, {"x": x})
    assert adapter.graph.folded_batch_norms == [("bn1", "deconv"), ("bn2", "fc")]
    axes = {q.name: q.axis for q in adapter.graph.quantizers() if q.kind == "param"}
    assert axes == {"deconv_weight": 1, "deconv_bias": None, "fc_weight": 1, "fc_bias": None}
    np.testing.assert_allclose(adapter.run({"x": x})[0], om.plain_run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


# ---- the user's model is never changed ------------------------------------------------------------------

def test_user_model_and_file_unchanged(tmp_path):
    model = om.conv_bn_constants()
    before = model.SerializeToString()
    data = batches((4, 3, 8, 8), n=2)
    analyze_onnx(model, "image", data, tmp_path / "a", scheme="tf")
    assert model.SerializeToString() == before
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    on_disk = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    _, result = analyze_onnx(path, "image", data, tmp_path / "b", scheme="tf")
    assert path.read_bytes() == on_disk and path.stat().st_mtime_ns == mtime
    assert result.folded_batch_norms  # folding happened, on qa's copy


# ---- real-model robustness ------------------------------------------------------------------------

def test_int64_token_input(tmp_path):
    model = om.token_model()
    rng = np.random.default_rng(0)
    data = [rng.integers(0, 20, (8, 5)) for _ in range(3)]
    analyzer, result = analyze_onnx(model, "ids", data, tmp_path, scheme="tf")
    graph = analyzer.adapter.graph
    assert graph["embed"].model_input and graph["embed"].quantizer("input", 1) is None  # ids: not float
    assert [q.name for q in graph["embed"].params] == ["embed_weight"]  # the embedding table
    assert graph["proj"].type_name == "MatMul+Add"
    assert result.fp32_score == pytest.approx(0.0, abs=1e-12)
    assert result.quantized_score < 0
    assert "embed_output_0" not in result.activation_ranges  # Gather: AIMET's config leaves it off
    # sequences of another length than the dummy input's (symbolic dimension)
    out = analyzer.adapter.run({"ids": rng.integers(0, 20, (2, 11))})[0]
    assert out.shape == (2, 3)


def test_external_data(tmp_path, monkeypatch):
    model = om.token_model(vocab=3000, dim=64)  # a 768 KB embedding goes to the external file
    path = tmp_path / "model" / "tokens.onnx"
    path.parent.mkdir()
    saved = onnx.ModelProto()
    saved.CopyFrom(model)  # saving with external data changes the proto it saves
    onnx.save_model(saved, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
                    size_threshold=1024)
    assert (path.parent / "weights.bin").stat().st_size > 700_000
    rng = np.random.default_rng(0)
    data = [rng.integers(0, 3000, (4, 6)) for _ in range(2)]
    monkeypatch.chdir(tmp_path)  # the external file is found next to the model, not in the working folder
    _, from_path = analyze_onnx(str(path), "ids", data, tmp_path / "a", scheme="tf", mse=False)
    _, in_memory = analyze_onnx(model, "ids", data, tmp_path / "b", scheme="tf", mse=False)
    assert from_path.quantized_score == in_memory.quantized_score
    assert from_path.per_layer_quant_enabled == in_memory.per_layer_quant_enabled
    # a ModelProto whose external data was not loaded cannot be analysed; the error says what to do
    unloaded = onnx.load(str(path), load_external_data=False)
    with pytest.raises(qa.QAValueError, match="external data.*path"):
        OnnxAdapter(unloaded, {"ids": data[0]})


def test_if_subgraph_stays_in_float(tmp_path):
    model = om.if_model()
    data = batches((4, 4))
    with pytest.warns(UserWarning, match="If 'choose'"):
        analyzer, result = analyze_onnx(model, "x", data, tmp_path, scheme="tf")
    assert result.unquantized_ops == ["If 'choose' (with its subgraphs)"]
    assert [layer.name for layer in analyzer.adapter.graph.layers] == ["relu", "max", "sigmoid"]
    # the branches read the quantized 'relu' output by its name
    sim = _sim(analyzer.adapter, data=data)
    sim.set_active({"relu_output_0"})
    quantized = analyzer.adapter.run({"x": data[0]})[0]
    relu = sim.quantizers["relu_output_0"].encoding.fake_quantize(np.maximum(data[0], 0))
    expect = 1 / (1 + np.exp(-(relu * 2 if relu.max() > 0 else -relu)))
    np.testing.assert_allclose(quantized, expect, rtol=1e-6)


@pytest.mark.parametrize("opset", list(range(11, 22)))
def test_opsets(opset, tmp_path):
    model = om.mlp(opset)
    data = batches((16, 6), n=2)
    analyzer, result = analyze_onnx(model, "x", data, tmp_path, scheme="tf", mse=False, default_param_bw=4)
    assert result.fp32_score == 0.0
    assert result.quantized_score < 0
    assert list(result.per_layer_quant_enabled) == ["fc1", "relu", "fc2", "softmax"]


def test_opset_below_11_is_converted():
    model = om.mlp(11)
    model.opset_import[0].version = 9
    model.ir_version = 4
    del model.graph.node[-1].attribute[:]  # Softmax axis defaults differ; 2-D input: same result
    before = model.SerializeToString()
    x = batches((4, 6), n=1)[0]
    adapter = OnnxAdapter(model, {"x": x})
    assert model.SerializeToString() == before
    np.testing.assert_allclose(adapter.run({"x": x})[0], om.plain_run(model, {"x": x})[0], rtol=1e-6)


def test_prequantized_graph_is_refused():
    with pytest.raises(qa.QAValueError, match="quantized already.*QuantizeLinear"):
        qa.QuantAnalyzer(om.prequantized(), {"x": np.zeros((1, 1, 4, 4), np.float32)}, lambda s: None,
                         lambda s: 0.0, progress=False)


# ---- errors -----------------------------------------------------------------------------------------

def test_malformed_and_truncated_files(tmp_path):
    def analyzer(path):
        return qa.QuantAnalyzer(path, {"x": np.zeros((1, 6), np.float32)}, lambda s: None, lambda s: 0.0,
                                progress=False)

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07this is not a protobuf \xff\xfe" * 10)
    with pytest.raises(qa.QAValueError, match="garbage.onnx"):
        analyzer(garbage)
    data = om.mlp().SerializeToString()
    for n in (len(data) // 3, len(data) // 2, len(data) - 7, 0):
        truncated = tmp_path / f"truncated_{n}.onnx"
        truncated.write_bytes(data[:n])
        with pytest.raises(qa.QAValueError, match=f"truncated_{n}.onnx"):
            analyzer(truncated)
    with pytest.raises(qa.QAValueError, match="missing.onnx.*not found"):
        analyzer(tmp_path / "missing.onnx")
    with pytest.raises(qa.QAValueError, match="unsupported model type"):
        analyzer(str(tmp_path / "model.txt"))


def test_wrong_inputs_name_the_input(tmp_path):
    model = om.mlp()
    good = np.zeros((2, 6), np.float32)

    def make(dummy):
        return qa.QuantAnalyzer(model, dummy, lambda s: None, lambda s: 0.0, progress=False)

    with pytest.raises(qa.QAValueError, match="input 'x' has dtype float64, the model expects float32"):
        make({"x": good.astype(np.float64)})
    with pytest.raises(qa.QAValueError, match=r"input 'x' has shape \[2, 5\], the model expects \[batch, 6\]"):
        make({"x": np.zeros((2, 5), np.float32)})
    with pytest.raises(qa.QAValueError, match="input 'x' has shape"):
        make({"x": np.zeros((6,), np.float32)})
    with pytest.raises(qa.QAValueError, match="'image' is not an input.*\\['x'\\]"):
        make({"image": good})
    with pytest.raises(qa.QAValueError, match="input 'ids' of .* is missing"):
        OnnxAdapter(om.token_model(), {})
    make(good)  # a single array for a one-input model works too
    # inside a callback: the same clear error, not onnxruntime's
    analyzer = qa.QuantAnalyzer(model, {"x": good}, lambda s: s.run(None, {"x": good.astype(np.float16)}),
                                lambda s: 0.0, progress=False)
    with pytest.raises(qa.QAValueError, match="input 'x' has dtype float16"):
        analyzer.analyze(results_dir=tmp_path)


# ---- the session the callbacks receive, switching, memory -------------------------------------------

def test_session_looks_like_onnxruntime():
    model = om.mlp()
    x = batches((3, 6), n=1)[0]
    adapter = OnnxAdapter(model, {"x": x})
    session = adapter.model
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [(a.name, a.type, a.shape) for a in session.get_inputs()] == \
        [(a.name, a.type, a.shape) for a in plain.get_inputs()]
    assert [(a.name, a.type) for a in session.get_outputs()] == [(a.name, a.type) for a in plain.get_outputs()]
    assert session.get_providers() == ["CPUExecutionProvider"]
    (probs,) = session.run(["probs"], {"x": x})
    np.testing.assert_array_equal(probs, plain.run(["probs"], {"x": x})[0])
    with pytest.raises(qa.QAValueError, match="'h' is not an output"):
        session.run(["h"], {"x": x})


def test_switching_rebinds_and_builds_nothing(tmp_path):
    model = om.conv_bn_constants()
    data = batches((4, 3, 8, 8))
    analyzer, result = analyze_onnx(model, "image", data, tmp_path, scheme="tf")
    adapter = analyzer.adapter
    # sessions without quantizer chains (FP32, weights only, calibration) and with them, each for
    # running and for calibration/capture: built once, never per analysis or layer
    assert sorted((tap, bool(chained)) for _, tap, chained in adapter._runners) == \
        [(False, False), (False, True), (True, False), (True, True)]
    sessions = {key: id(r.sess) for key, r in adapter._runners.items()}
    sim = _sim(adapter, data=data, name="image")
    for layer in result.per_layer_quant_enabled:
        sim.set_active(sim.layer_quantizers(layer))
        adapter.run({"image": data[0]})
    assert {key: id(r.sess) for key, r in adapter._runners.items()} == sessions
    # after a switch only what changed is rebound
    sim.set_active(sim.enabled)
    adapter.run({"image": data[0]})
    runner = adapter._runner(tap=False)
    sim.set_active(sim.enabled - sim.layer_quantizers("conv2"))
    conv2 = sim.layer_quantizers("conv2")
    assert runner.dirty == {p.input for n, p in adapter._prep.params.items() if n in conv2} | \
        {p.inputs[4] for p in adapter._prep.points if p.quantizer in conv2}
    assert conv2 == {"conv2_weight", "conv2_output_0"}
    # quantizers the config leaves off (conv1's output, in a Conv + Relu supergroup) get no chain
    off = next(p for p in adapter._prep.points if p.quantizer == "conv1_output_0")
    assert not sim.quantizers["conv1_output_0"].enabled and off.inputs[4] not in runner.inputs


def test_capture_streams_one_batch_at_a_time():
    model = om.conv_bn_constants()
    data = batches((4, 3, 8, 8))
    adapter = OnnxAdapter(model, {"image": data[0]})
    seen = []
    with adapter.capturing(lambda layer, i, a: seen.append((layer, i, a.shape))):
        for x in data:
            adapter.run({"image": x})
    per_batch = len(seen) // len(data)
    assert per_batch == sum(1 for layer in adapter.graph.layers if layer.quantizer("output", 0) is not None)
    assert seen[:per_batch] == seen[per_batch:2 * per_batch]
    assert ("conv1", 0, (4, 8, 8, 8)) in seen


def test_modules_to_ignore_and_path_objects(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(om.mlp(), path)
    x = batches((4, 6), n=1)[0]
    analyzer = qa.QuantAnalyzer(path, {"x": x}, lambda s: s.run(None, {"x": x}), lambda s: 0.0,
                                modules_to_ignore=["relu"], progress=False)
    assert [layer.name for layer in analyzer.adapter.graph.layers] == ["fc1", "fc2", "softmax"]
    assert analyzer.adapter.framework == "onnx"


def test_docstring_examples():
    import qa.adapters.onnx as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
