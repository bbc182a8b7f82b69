"""Every op of a PyTorch forward is quantized: functional convs with folded batch norms, attention
matmuls and softmax, residual adds, in-place ops, tied heads, data-dependent branches, and
Hugging Face style models (keyword inputs, int64 token ids, dict outputs)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import qa  # noqa: E402
from qa import kernels  # noqa: E402
from qa.adapters.torch import TorchAdapter  # noqa: E402

import torch_zoo as zoo  # noqa: E402


def _fq(t, enc):
    """Hand fake quantization with qa's kernels (per tensor or per channel on axis 0)."""
    x = t.detach().float().contiguous().numpy()
    if isinstance(enc, list):
        scale = np.array([e["scale"] for e in enc])
        offset = np.array([e["offset"] for e in enc])
        out = kernels.fake_quantize(x, scale, offset, enc[0]["bitwidth"], axis=0)
    else:
        out = kernels.fake_quantize(x, enc["scale"], enc["offset"], enc["bitwidth"])
    return torch.from_numpy(np.array(out, dtype=np.float32))


def _analyzer(model, batches, run=None, **kwargs):
    run = run or (lambda m, b: m(**b) if isinstance(b, dict) else m(b))

    def calibrate(m):
        with torch.no_grad():
            for b in batches:
                run(m, b)

    def score(m):
        return 0.0

    return qa.QuantAnalyzer(model, batches[0], calibrate, score, progress=False, **kwargs)


# ---- functional convs ("same" padding) --------------------------------------------------------------

def test_same_padding_convs_are_layers_with_weights_and_folded_batch_norms():
    torch.manual_seed(0)
    model = zoo.SameConvNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 16, 16)
    adapter = TorchAdapter(model, x[:1])
    graph = adapter.graph
    names = [layer.name for layer in graph.layers]
    assert names == ["conv_stem.static_padding", "conv_stem/conv2d", "silu", "dw.static_padding", "dw/conv2d",
                     "silu_1", "pw.static_padding", "pw/conv2d", "mean", "head"]
    # every batch norm folded into the functional conv before it; none is a layer
    assert graph.folded_batch_norms == [("bn0", "conv_stem/conv2d"), ("bn1", "dw/conv2d"), ("bn2", "pw/conv2d")]
    conv = graph["dw/conv2d"]
    assert (conv.op_type, conv.type_name, conv.inputs) == ("Conv", "conv2d", ["dw.static_padding"])
    assert [(q.name, q.param, q.axis) for q in conv.params] == [("dw/conv2d_weight", "weight", 0),
                                                                ("dw/conv2d_bias", "bias", None)]
    # the folded copy computes what the user's model computes; the user's model is untouched
    with torch.no_grad():
        assert torch.allclose(adapter.run(x), model(x), atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.bn1, nn.BatchNorm2d) and model.dw.bias is None


def test_functional_conv_weight_quantization_equals_hand_folded_and_quantized():
    torch.manual_seed(0)
    model = zoo.SameConvNet().eval()
    batches = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    analyzer = _analyzer(model, batches)
    sim = analyzer.create_quantsim("tf", default_param_bw=4)
    sim.set_active({"dw/conv2d_weight", "dw/conv2d_bias"} & sim.enabled)
    enc = sim.quantizers["dw/conv2d_weight"].encoding.to_dict()
    # by hand: fold bn1 into dw (bias from the batch norm alone), quantize the weight
    bn = model.bn1
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = model.dw.weight * scale[:, None, None, None]
    b = bn.bias - bn.running_mean * scale
    with torch.no_grad():
        x = batches[0]
        h = F.silu(model.bn0(model.conv_stem(x)))
        h = F.silu(F.conv2d(model.dw.static_padding(h), _fq(w, enc), b, 1, 0, 1, 8))
        expected = model.head(model.bn2(model.pw(h)).mean((2, 3)))
        assert torch.allclose(sim.model(x), expected, atol=1e-5)
        sim.set_active(())
        assert not torch.allclose(sim.model(x), expected, atol=1e-5)


# ---- transformers ----------------------------------------------------------------------------------

ATTENTION_OPS = ["matmul", "div", "add", "softmax", "matmul_1"]


def test_bert_like_encoder_quantizes_every_attention_op(tmp_path):
    torch.manual_seed(0)
    model = zoo.TinyBert().eval()
    batches = [zoo.bert_inputs(4, 8, seed=i) for i in range(3)]
    analyzer = _analyzer(model, batches)
    graph = analyzer.adapter.graph
    for i in range(2):
        scope = f"encoder.layer.{i}.attention.self"
        ops = [layer for layer in graph.layers if layer.name.startswith(scope + "/")]
        assert [layer.name[len(scope) + 1:] for layer in ops] == ATTENTION_OPS
        assert [layer.op_type for layer in ops] == ["MatMul", "Div", "Add", "Softmax", "MatMul"]
        assert graph[f"{scope}/matmul"].inputs == [f"{scope}.query", f"{scope}.key"]
        assert graph[f"{scope}/matmul_1"].inputs == [f"{scope}/softmax", f"{scope}.value"]
        assert {f"encoder.layer.{i}/add", f"encoder.layer.{i}/add_1", f"encoder.layer.{i}/gelu"} <= set(graph._by_name)
    assert graph.unquantized_ops == []
    # the int64 token ids get no input quantizer; the embedding's output is quantized
    assert [q.kind for q in graph["embeddings.word"].quantizers] == ["param", "output"]
    # names are fixed by the trace: a second analysis names every layer the same
    again = _analyzer(model, batches).adapter.graph
    assert [layer.name for layer in again.layers] == [layer.name for layer in graph.layers]
    sim = analyzer.create_quantsim("tf", default_output_bw=8)
    softmax = sim.quantizers["encoder.layer.1.attention.self/softmax_output_0"]
    # probabilities: rows of 8 positions, so the largest is at least 1/8 and at most 1
    assert softmax.encoding.min == 0.0 and 1 / 8 <= softmax.encoding.max <= 1.0 + 1e-6
    result = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    assert "encoder.layer.0.attention.self/softmax" in result.per_layer_quant_enabled
    assert result.status == "complete"


def test_gpt_like_tied_head_is_one_quantizer_read_by_the_functional_head():
    torch.manual_seed(0)
    model = zoo.TinyGpt().eval()
    batches = [torch.randint(0, 40, (3, 8), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    analyzer = _analyzer(model, batches)
    graph = analyzer.adapter.graph
    head = graph["linear"]
    assert [q.name for q in head.params] == ["wte_weight"] and head.params[0] is graph["wte"].params[0]
    assert [q.name for q in graph.quantizers()].count("wte_weight") == 1
    assert {"matmul", "mul", "masked_fill", "softmax", "matmul_1", "add_1"} <= set(graph._by_name)
    sim = analyzer.create_quantsim("tf", default_param_bw=4)
    quantized = _fq(model.wte.weight, sim.quantizers["wte_weight"].encoding.to_dict())
    sim.set_active(sim.layer_quantizers("linear"))  # the head alone: the shared weight is quantized
    copy_ = analyzer.adapter.model
    assert torch.equal(copy_.wte.weight, quantized)
    sim.set_active(())
    assert torch.equal(copy_.wte.weight, model.wte.weight)


@pytest.mark.parametrize("case", ["self", "padding_mask", "causal_layer", "unbatched"])
def test_multihead_attention_is_written_out_in_quantized_ops(case):
    """nn.MultiheadAttention (and nn.TransformerEncoderLayer) compute through one composite
    function; qa writes it out so that its projections, scores, mask add and softmax are layers."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)

        def forward(self, x, pad):
            if case == "causal_layer":
                mask = nn.Transformer.generate_square_subsequent_mask(x.shape[-2])
                return self.layer(x, src_mask=mask, src_key_padding_mask=pad)
            if case == "unbatched":
                return self.attn(x[0], x[0], x[0])[0]
            return self.attn(x, x, x, key_padding_mask=pad if case == "padding_mask" else None)[0]

    x = torch.randn(3, 5, 16)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, 3:] = True
    model = Net().eval()
    analyzer = _analyzer(model, [(x, pad)], run=lambda m, b: m(*b))
    graph = analyzer.adapter.graph
    scope = "layer.self_attn" if case == "causal_layer" else "attn"
    ops = [layer.name[len(scope) + 1:] for layer in graph.layers if layer.name.startswith(scope + "/")]
    core = ["linear", "linear_1", "linear_2", "mul", "bmm"]
    expected = {"self": core + ["softmax", "bmm_1", "linear_3", "mean"],
                "unbatched": core + ["softmax", "bmm_1", "linear_3", "mean"],
                # the module turns the boolean padding mask into -inf (masked_fill) before the call
                "padding_mask": ["masked_fill"] + core + ["add", "softmax", "bmm_1", "linear_3", "mean"],
                # the causal and padding masks are summed, then added to the scores
                "causal_layer": core + ["add", "add_1", "softmax", "bmm_1", "linear_3"]}[case]
    assert ops == expected
    # the packed in_proj weight is one quantizer for the three projections
    q, k = graph[f"{scope}/linear"], graph[f"{scope}/linear_1"]
    assert q.params[0] is k.params[0] and q.params[0].name == f"{scope}/linear_weight"
    assert graph.unquantized_ops == []
    with torch.no_grad():
        assert torch.allclose(analyzer.adapter.run((x, pad)), model(x, pad), atol=1e-5)
    sim = analyzer.create_quantsim("tf")
    assert sim.quantizers[f"{scope}/softmax_output_0"].encoding is not None


# ---- in-place ops, branches, names -----------------------------------------------------------------

class _InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        h = self.fc(x)
        h += x  # in place: the quantized sum must be what `out` reads
        F.relu(h, inplace=True)  # result ignored: only the in-place write carries it
        return self.out(h)


def test_in_place_ops_are_quantized_in_place():
    torch.manual_seed(0)
    model = _InPlace().eval()
    batches = [torch.randn(8, 6, generator=torch.Generator().manual_seed(i)) * 2 for i in range(2)]
    analyzer = _analyzer(model, batches)
    graph = analyzer.adapter.graph
    assert [layer.name for layer in graph.layers] == ["fc", "add", "relu", "out"]
    assert graph["relu"].inputs == ["add"] and graph["out"].inputs == ["relu"]
    no_groups = {"defaults": {"ops": {"is_output_quantized": "True"}, "params": {"is_quantized": "True"}}}
    sim = analyzer.create_quantsim("tf", default_output_bw=3, config_file=no_groups)
    sim.set_active({"add_output_0", "relu_output_0"})
    e_add = sim.quantizers["add_output_0"].encoding.to_dict()
    e_relu = sim.quantizers["relu_output_0"].encoding.to_dict()
    with torch.no_grad():
        x = batches[0]
        expected = model.out(_fq(torch.relu(_fq(model.fc(x) + x, e_add)), e_relu))
        assert torch.allclose(sim.model(x), expected, atol=1e-6)


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if bool(x.sum() > 0):
            x = x * 100.0  # a branch the trace on a negative dummy input never takes
        return self.fc(x * 0.5)


def test_an_op_on_an_untraced_branch_stays_float_and_never_borrows_a_quantizer(caplog):
    model = _Branchy().eval()
    dummy = -torch.ones(1, 4)
    positive = [torch.rand(8, 4, generator=torch.Generator().manual_seed(i)) + 0.1 for i in range(2)]

    def calibrate(m):
        with torch.no_grad():
            for b in positive:
                m(b)

    analyzer = qa.QuantAnalyzer(model, dummy, calibrate, lambda m: 0.0, progress=False)
    graph = analyzer.adapter.graph
    assert [layer.name for layer in graph.layers] == ["sum", "mul", "fc"]
    with caplog.at_level(logging.WARNING, logger="qa.adapters.torch"):
        sim = analyzer.create_quantsim("tf")
    assert "ran during calibration but not on dummy_input" in caplog.text and "mul" in caplog.text
    # "mul" is the x * 0.5 of the traced line: it saw x * 100 * 0.5 (up to ~55), not the branch's x * 100
    enc = sim.quantizers["mul_output_0"].encoding
    top = max(float((b * 100.0 * 0.5).max()) for b in positive)
    assert enc.max == pytest.approx(top, rel=1e-2)


def test_op_names_follow_module_calls_and_order():
    class Block(nn.Module):
        def forward(self, x):
            return torch.sigmoid(x) * x + x * 2

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(self.block(x))

    graph = TorchAdapter(Net().eval(), torch.randn(2, 3)).graph
    assert [layer.name for layer in graph.layers] == [
        "block/sigmoid", "block/mul", "block/mul_1", "block/add",
        "block/call_1/sigmoid", "block/call_1/mul", "block/call_1/mul_1", "block/call_1/add"]
    assert graph["block/call_1/sigmoid"].inputs == ["block/add"]


def test_computed_weights_are_listed_as_float():
    class WeightStandardized(nn.Conv2d):
        def forward(self, x):
            w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
            return F.conv2d(x, w, self.bias)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = WeightStandardized(3, 4, 3)

        def forward(self, x):
            return self.conv(x)

    graph = TorchAdapter(Net().eval(), torch.randn(1, 3, 8, 8)).graph
    # a Conv2d subclass with a forward of its own is seen op by op; the weight arithmetic runs on
    # parameters alone (a deployed graph folds it): no layers of its own. The one op left is the
    # module's layer, under the module's name.
    assert [(layer.name, layer.op_type) for layer in graph.layers] == [("conv", "Conv")]
    assert [q.param for q in graph["conv"].params] == ["bias"]
    assert graph.unquantized_ops == ["the weight of conv, computed in forward from parameters"]


# ---- Hugging Face --------------------------------------------------------------------------------

@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_transformers_bert_from_a_config(attention, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=32, attn_implementation=attention)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    batches = [zoo.bert_inputs(4, 8, seed=i) for i in range(2)]
    with torch.no_grad():
        reference = [model(**b).last_hidden_state for b in batches]

    def score(m):
        with torch.no_grad():
            return -float(np.mean([float(((m(**b).last_hidden_state - r) ** 2).mean())
                                   for b, r in zip(batches, reference)]))

    def calibrate(m):
        with torch.no_grad():
            for b in batches:
                m(**b)

    analyzer = qa.QuantAnalyzer(model, batches[0], calibrate, score, progress=False)
    graph = analyzer.adapter.graph
    scope = "encoder.layer.0.attention.self"
    assert {f"{scope}/matmul", f"{scope}/mul" if attention == "sdpa" else f"{scope}/add", f"{scope}/softmax",
            f"{scope}/matmul_1", "encoder.layer.0.output/add"} <= set(graph._by_name)
    assert graph.unquantized_ops == []
    with torch.no_grad():  # the written-out attention computes what torch's fused one does
        assert torch.allclose(analyzer.adapter.run(batches[0]).last_hidden_state, reference[0], atol=1e-5)
    result = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    assert result.fp32_score == pytest.approx(0.0, abs=1e-12)  # float rounding of the written-out attention
    assert math.isfinite(result.quantized_score) and result.quantized_score < -1e-8
    assert f"{scope}/softmax" in result.per_layer_quant_enabled


def test_lstm_weights_take_the_configs_weight_and_bias_settings():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 6, batch_first=True)
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            return self.fc(self.lstm(x)[0][:, -1])

    analyzer = _analyzer(Net().eval(), [torch.randn(3, 5, 4)])
    layer = analyzer.adapter.graph["lstm"]
    assert (layer.op_type, [q.name for q in layer.params]) == ("LSTM", [
        "lstm_weight_ih_l0", "lstm_weight_hh_l0", "lstm_bias_ih_l0", "lstm_bias_hh_l0"])
    assert [q.axis for q in layer.params] == [0, 0, None, None]
    sim = analyzer.create_quantsim("tf")  # AIMET's default config: weights quantized, biases not
    assert [sim.quantizers[q.name].enabled for q in layer.params] == [True, True, False, False]
    assert len([q for q in layer.quantizers if q.kind == "output"]) == 3  # output, h and c


@pytest.mark.parametrize("mask", ["none", "bool", "float", "causal"])
def test_scaled_dot_product_attention_is_written_out(mask):
    class Net(nn.Module):
        def forward(self, q, k, v):
            m = {"none": None, "bool": torch.tril(torch.ones(6, 6, dtype=torch.bool)),
                 "float": torch.randn(6, 6, generator=torch.Generator().manual_seed(0)), "causal": None}[mask]
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=mask == "causal")

    x = tuple(torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    adapter = TorchAdapter(Net().eval(), x)
    masking = {"none": [], "bool": ["masked_fill"], "float": ["add"], "causal": ["masked_fill"]}[mask]
    assert [layer.name for layer in adapter.graph.layers] == ["matmul", "mul"] + masking + ["softmax", "matmul_1"]
    with torch.no_grad():
        assert torch.allclose(adapter.run(x), Net()(*x), atol=1e-6)


def test_config_supergroups_apply_to_op_layers():
    """Conv+BN+ReLU written functionally is the Conv+Relu supergroup (the conv's output quantizer
    off); a MatMul+Add supergroup (or the default config's MatmulAdd pass) leaves the matmul's output to the add."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = zoo.SameConv(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.w = nn.Parameter(torch.randn(4, 4))
            self.b = nn.Parameter(torch.randn(4))

        def forward(self, x):
            h = F.relu(self.bn(self.conv(x))).mean((2, 3))
            return h @ self.w + self.b

    analyzer = _analyzer(Net().eval(), [torch.randn(2, 3, 8, 8)])
    graph = analyzer.adapter.graph
    assert [layer.name for layer in graph.layers] == ["conv.static_padding", "conv/conv2d", "relu", "mean",
                                                      "matmul", "add"]
    assert [q.name for q in graph["matmul"].params] == ["matmul_w"] and [q.name for q in graph["add"].params] == [
        "add_b"]
    sim = analyzer.create_quantsim("tf")
    assert not sim.quantizers["conv/conv2d_output_0"].enabled and sim.quantizers["relu_output_0"].enabled
    # the default config's MatmulAdd pass: a MatMul with a weight plus a bias is a Linear, fused
    assert not sim.quantizers["matmul_output_0"].enabled and sim.quantizers["add_output_0"].enabled
    plain = {"defaults": {"ops": {"is_output_quantized": "True"}, "params": {"is_quantized": "True"}}}
    assert analyzer.create_quantsim("tf", config_file=plain).quantizers["matmul_output_0"].enabled
    config = {**plain, "supergroups": [{"op_list": ["MatMul", "Add"]}]}
    sim = analyzer.create_quantsim("tf", config_file=config)
    assert not sim.quantizers["matmul_output_0"].enabled and sim.quantizers["add_output_0"].enabled


def test_torch_export_programs_are_named_and_folded_like_eager_models():
    """A torch.export program (what `qa analyze model.pt2` loads) calls ATen ops: conv2d.default,
    batch_norm.default, add.Tensor. They get the same names, types and batch-norm folding as the
    functional calls of an eager model; so does F.batch_norm in an eager forward."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 2)
            with torch.no_grad():
                self.bn.running_mean.uniform_(-1, 1)
                self.bn.running_var.uniform_(0.5, 2)
                self.bn.weight.uniform_(0.5, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)) + 1)

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    program = torch.export.export(model, (x,)).module()
    adapter = TorchAdapter(program, x)
    graph = adapter.graph
    assert [(layer.name, layer.op_type) for layer in graph.layers] == [
        ("conv2d", "Conv"), ("relu", "Relu"), ("mean", "ReduceMean"), ("add", "Add"), ("linear", "Gemm")]
    assert graph.folded_batch_norms == [("batch_norm", "conv2d")]
    assert [q.axis for q in graph["conv2d"].params] == [0, None]  # per-channel axis known
    with torch.no_grad():
        assert torch.allclose(adapter.run(x), model(x), atol=1e-5)

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3, 3, 3))
            self.register_buffer("mean", torch.rand(4))
            self.register_buffer("var", torch.rand(4) + 0.5)

        def forward(self, x):
            return F.batch_norm(F.conv2d(x, self.w), self.mean, self.var, None, None, False, 0.1, 1e-5)

    functional = Functional().eval()
    adapter = TorchAdapter(functional, x)
    assert [layer.name for layer in adapter.graph.layers] == ["conv2d"]
    assert adapter.graph.folded_batch_norms == [("batch_norm", "conv2d")]
    assert [q.name for q in adapter.graph["conv2d"].params] == ["conv2d_weight", "conv2d_bias"]  # bias added
    with torch.no_grad():
        assert torch.allclose(adapter.run(x), functional(x), atol=1e-5)
