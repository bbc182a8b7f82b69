"""QuantAnalyzer on real PyTorch models (issue 3): batch-norm folding, the user's model left alone,
per-layer sweeps, per-layer MSE and the sensitivity scores checked against models quantized by hand
from the exported encodings, AIMET's result files and JSON shapes, callbacks, data formats, errors.

Everything runs on the CPU with tiny models (see tests/torch_models.py).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import qa  # noqa: E402
from qa import kernels  # noqa: E402

from result_files import expected_files  # noqa: E402
import torch_models as tm  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The models are tiny: torch's thread pool only adds barrier waits (tens of ms per conv on a
    busy 2-core machine). One thread keeps the file fast; the setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# AIMET's default quantsim config, written out in full (booleans as AIMET's strings).
_SUPERGROUPS = [["Conv", "Relu"], ["ConvTranspose", "Relu"], ["Conv", "Clip"], ["Add", "Relu"], ["Gemm", "Relu"]]


def aimet_config(per_channel: bool = False, op_type=None) -> dict:
    ops = {op: {"is_output_quantized": "False"} for op in ("Cast", "Dropout", "Expand", "Gather", "Mean", "Pad", "Squeeze")}
    ops.update(op_type or {})
    return {
        "defaults": {
            "ops": {"is_output_quantized": "True"},
            "params": {"is_quantized": "True", "is_symmetric": "True"},
            "strict_symmetric": "False",
            "unsigned_symmetric": "True",
            "per_channel_quantization": "True" if per_channel else "False",
        },
        "params": {"bias": {"is_quantized": "False"}},
        "op_type": ops,
        "supergroups": [{"op_list": ops_} for ops_ in _SUPERGROUPS],
        "model_input": {"is_input_quantized": "True"},
        "model_output": {},
    }


# ---- helpers --------------------------------------------------------------------------------

def run(model, inputs):
    """Model inputs as AIMET's dummy_input: a tensor, a tuple of tensors, or a dict of keywords."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def batches_like(make, n=3, seed=0):
    """n fixed batches; make(generator) builds one batch."""
    g = torch.Generator().manual_seed(seed)
    return [make(g) for _ in range(n)]


def image_batches(shape, n=3, seed=0, scale=2.0, shift=0.3):
    return batches_like(lambda g: torch.randn(*shape, generator=g) * scale + shift, n, seed)


def calibration(batches):
    def forward_pass(model):
        with torch.no_grad():
            for b in batches:
                run(model, b)
    return forward_pass


def closeness(model, batches):
    """A smooth score: minus the mean squared difference from the FP32 model's outputs on fixed data."""
    with torch.no_grad():
        refs = [[o.double() for o in as_tuple(run(model, b))] for b in batches]

    def score(m):
        total = 0.0
        with torch.no_grad():
            for b, ref in zip(batches, refs):
                for o, r in zip(as_tuple(run(m, b)), ref):
                    total += float(((o.double() - r) ** 2).mean())
        return -total / len(batches)
    return score


def make_analyzer(model, batches, **kwargs):
    return qa.QuantAnalyzer(model, batches[0], calibration(batches), closeness(model, batches), progress=False, **kwargs)


def quiet(fn, *args, **kwargs):
    """Call fn with the 'stays in float' UserWarning (expected for functional ops) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


def weight_axis(module):
    return 1 if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0


def fake_quant(t, enc, axis=None):
    """Fake-quantize a tensor with an exported AIMET encoding (a dict, or a list of dicts per channel)."""
    x = t.detach().float().contiguous().numpy()
    if isinstance(enc, list):
        out = kernels.fake_quantize(x, [e["scale"] for e in enc], [e["offset"] for e in enc],
                                    enc[0]["bitwidth"], axis=axis)
    else:
        out = kernels.fake_quantize(x, enc["scale"], enc["offset"], enc["bitwidth"])
    return torch.from_numpy(np.array(out, dtype=np.float32, copy=True)).to(t.dtype)


def _call_key(name, k):
    """qa's layer name of the k-th call of module ``name``: the first keeps the name, later ones ``name/call_k``."""
    return name if k == 0 else f"{name}/call_{k}"


def hand_quantized(model, encodings, *, weights=True, activations=True):
    """A deep copy of a BN-free model quantized by hand from exported encodings: parameters
    replaced by their fake-quantized values (a tied parameter once, by the first key that names
    it), input/output quantizers as forward hooks, the k-th call of a module with the encodings
    of layer ``<module>/call_<k>``. Returns (model, the encoding keys used)."""
    m = copy.deepcopy(model).eval()
    used = set()
    done = set()  # parameters quantized already (tied ones appear under several modules)
    counts = {}
    m.register_forward_pre_hook(lambda mod, args: counts.clear())
    for name, module in m.named_modules():
        if not name or any(True for _ in module.children()):
            continue
        for pname, p in module.named_parameters(recurse=False):
            key = f"{name}_{pname}"
            if key in encodings and weights and id(p) not in done:
                with torch.no_grad():
                    p.copy_(fake_quant(p, encodings[key], weight_axis(module)))
                used.add(key)
                done.add(id(p))
        if not activations:
            continue
        for k in range(8):
            layer = _call_key(name, k)
            used.update(key for key in (f"{layer}_input_0", *(f"{layer}_output_{i}" for i in range(4)))
                        if key in encodings)

        def pre(mod, args, name=name):
            k = counts[name] = counts.get(name, -1) + 1
            enc = encodings.get(f"{_call_key(name, k)}_input_0")
            return None if enc is None else (fake_quant(args[0], enc),) + tuple(args[1:])

        def post(mod, args, out, name=name):
            layer = _call_key(name, counts[name])
            encs = {i: encodings[f"{layer}_output_{i}"] for i in range(4) if f"{layer}_output_{i}" in encodings}
            outs = [fake_quant(o, encs[i]) if i in encs else o for i, o in enumerate(as_tuple(out))]
            return type(out)(outs) if isinstance(out, (tuple, list)) else outs[0]

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)
    return m, used


def layer_outputs(model, name, inputs):
    """The outputs of one layer in one forward pass, captured after its own hooks: qa's layer
    ``<module>/call_<k>`` is the k-th call of the module (its bare name the first)."""
    module_name, _, call = name.partition("/call_")
    want = int(call) if call else 0
    seen, count = [], [0]

    def hook(mod, args, out):
        if count[0] == want:
            seen.extend(o.detach().double().clone() for o in as_tuple(out))
        count[0] += 1

    handle = model.get_submodule(module_name).register_forward_hook(hook)
    try:
        with torch.no_grad():
            run(model, inputs)
    finally:
        handle.remove()
    return seen


def brute_force_errors(model, encodings, batches, layers):
    """AIMET's way: for each layer, separate FP32 and quantized forward passes per batch."""
    fp32 = copy.deepcopy(model).eval()
    quant, used = hand_quantized(model, encodings)
    assert used == set(encodings), f"encodings not applied by hand: {set(encodings) - used}"
    mse, sqnr = {}, {}
    for name in layers:
        sse = ssr = 0.0
        count = 0
        for b in batches:
            refs, tests = layer_outputs(fp32, name, b), layer_outputs(quant, name, b)
            assert len(refs) == len(tests) > 0
            for r, t in zip(refs, tests):
                sse += float(((r - t) ** 2).sum())
                ssr += float((r ** 2).sum())
                count += r.numel()
        mse[name] = sse / count
        sqnr[name] = 10 * math.log10(ssr / sse) if sse else math.inf
    return mse, sqnr


def max_diff(a, b):
    return float((a.detach() - b.detach()).abs().max())


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def snapshot(model):
    """Everything about the user's model that analyze must leave alone."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "params": {k: v for k, v in model.named_parameters()},
        "modules": {n: (type(m), m.training) for n, m in model.named_modules()},
        "hooks": {n: {attr: list(getattr(m, attr).items()) for attr in
                      ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                       "_forward_pre_hooks_with_kwargs", "_backward_hooks")}
                  for n, m in model.named_modules()},
    }


# ---- batch-norm folding ---------------------------------------------------------------------

FOLDABLE = {
    "conv1d": (lambda: tm.ConvBN(dim=1), (4, 3, 10), [("bn", "conv")]),
    "conv2d": (lambda: tm.ConvBN(dim=2), (4, 3, 8, 8), [("bn", "conv")]),
    "conv3d": (lambda: tm.ConvBN(dim=3), (2, 3, 5, 5, 5), [("bn", "conv")]),
    "conv2d_no_bias": (lambda: tm.ConvBN(dim=2, bias=False), (4, 3, 8, 8), [("bn", "conv")]),
    "conv1d_no_bias": (lambda: tm.ConvBN(dim=1, bias=False), (4, 3, 10), [("bn", "conv")]),
    "depthwise": (lambda: tm.ConvBN(dim=2, cin=4, cout=4, groups=4), (4, 4, 8, 8), [("bn", "conv")]),
    "conv_transpose2d": (lambda: tm.ConvTransposeBN(), (4, 3, 5, 5), [("bn", "convt")]),
    "conv_transpose2d_no_bias": (lambda: tm.ConvTransposeBN(bias=False), (4, 3, 5, 5), [("bn", "convt")]),
    "linear_bn1d": (lambda: tm.LinearBN(), (8, 6), [("bn", "fc")]),
    "linear_no_bias_bn1d": (lambda: tm.LinearBN(bias=False), (8, 6), [("bn", "fc")]),
    "depthwise_net": (lambda: tm.Depthwise(), (4, 3, 6, 6), [("bn", "dw")]),
    "residual": (lambda: tm.Residual(), (4, 3, 6, 6), [("bn1", "conv1")]),
}


@pytest.mark.parametrize("case", list(FOLDABLE))
def test_batch_norm_folding_keeps_outputs(case, tmp_path):
    make, shape, folded = FOLDABLE[case]
    torch.manual_seed(0)
    model = make().eval()
    batches = image_batches(shape, n=2)
    analyzer = quiet(make_analyzer, model, batches)
    graph = analyzer.adapter.graph
    assert graph.folded_batch_norms == folded
    assert not [layer.name for layer in graph.layers if layer.op_type == "BatchNormalization"]
    assert not [n for n in (bn for bn, _ in folded) if n in graph]
    for x in batches:
        with torch.no_grad():
            expected = model(x)
        diff = max_diff(analyzer.adapter.run(x), expected)
        assert diff <= 1e-5, f"folded copy differs from the user's model by {diff:.3g}"
    result = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    assert result.folded_batch_norms == folded
    for x in batches:  # after analyze the copy is left in float
        with torch.no_grad():
            expected = model(x)
        diff = max_diff(analyzer.adapter.run(x), expected)
        assert diff <= 1e-5, f"folded copy differs from the user's model by {diff:.3g}"


UNFOLDABLE = {
    "bn_after_add": tm.BNAfterAdd,
    "conv_output_also_read_by_a_layer": tm.BNInputAlsoReadByLayer,
    "conv_output_also_read_by_a_functional_add": tm.BNInputAlsoReadFunctionally,
}


@pytest.mark.parametrize("case", list(UNFOLDABLE))
def test_unfoldable_batch_norm_stays_a_layer(case, tmp_path):
    torch.manual_seed(0)
    model = UNFOLDABLE[case]().eval()
    batches = image_batches((4, 3, 6, 6), n=2)
    analyzer = quiet(make_analyzer, model, batches)
    graph = analyzer.adapter.graph
    assert graph.folded_batch_norms == []
    assert "bn" in graph and graph["bn"].op_type == "BatchNormalization"
    assert graph["bn"].type_name == "BatchNorm2d"
    for x in batches:
        with torch.no_grad():
            expected = run(model, x)
        diff = max_diff(analyzer.adapter.run(x), expected)
        assert diff <= 1e-5, f"folded copy differs from the user's model by {diff:.3g}"
    result = quiet(analyzer.analyze, quant_scheme="tf", results_dir=tmp_path)
    assert [layer["op_type"] for layer in result.layers if layer["name"] == "bn"] == ["BatchNormalization"]
    assert "bn" in result.per_layer_quant_enabled


def test_batch_norm_folding_of_model_in_training_mode_uses_its_running_statistics():
    """A model handed over in training mode (a common slip) is analysed as deployed: the folded
    copy computes what the user's model computes in eval mode, with the user's running statistics
    (tracing the copy in training mode would overwrite them with the dummy input's batch statistics)."""
    torch.manual_seed(0)
    model = tm.ConvBN(dim=2)  # training mode
    batches = image_batches((4, 3, 8, 8), n=2)
    analyzer = qa.QuantAnalyzer(model, batches[0], calibration(batches), lambda m: 0.0, progress=False)
    assert model.training and all(m.training for m in model.modules())
    assert analyzer.adapter.graph.folded_batch_norms == [("bn", "conv")]
    model.eval()
    for x in batches:
        with torch.no_grad():
            expected = model(x)
        diff = max_diff(analyzer.adapter.run(x), expected)
        assert diff <= 1e-5, f"folded copy differs from the user's model by {diff:.3g}"


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_analyze_leaves_the_users_model_unchanged(mode, tmp_path):
    torch.manual_seed(0)
    model = tm.PreservationNet()
    model.train(mode == "train")
    model.block[0].train(False)  # a mixed mode survives too
    calls = []
    model.fc.register_forward_hook(lambda m, a, o: calls.append("fc"))
    model.block[1].register_forward_pre_hook(lambda m, a: None)
    model.register_forward_hook(lambda m, a, o: None)
    before = snapshot(model)
    batches = image_batches((4, 3, 6, 6), n=2)
    analyzer = quiet(qa.QuantAnalyzer, model, batches[0], calibration(batches), lambda m: 1.0, progress=False)
    analyzer.enable_per_layer_mse_loss(batches, 2)
    quiet(analyzer.analyze, quant_scheme="tf_enhanced", results_dir=tmp_path)
    after = snapshot(model)
    assert after["modules"] == before["modules"]  # module types and training flags
    assert after["hooks"] == before["hooks"]
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    for k, p in before["params"].items():  # the same Parameter objects, not swapped
        assert after["params"][k] is p, k
    # the analysis ran on a copy: no parameter of the copy shares memory with the user's model
    user_ptrs = {p.data_ptr() for p in model.parameters()}
    assert not user_ptrs & {p.data_ptr() for p in analyzer.adapter.model.parameters()}


# ---- per-layer sweeps with a forced low bitwidth --------------------------------------------

def test_low_bitwidth_layer_ranks_worst_to_enable_and_best_to_disable(tmp_path):
    torch.manual_seed(0)
    model = tm.LowBitNet().eval()
    batches = image_batches((8, 3, 8, 8), n=3)
    kernels_2bit = [{"activation": {"bitwidth": 8, "dtype": "int"}, "param": {"bitwidth": 2, "dtype": "int"}}]
    config = aimet_config(op_type={"Gemm": {"supported_kernels": kernels_2bit}})
    analyzer = make_analyzer(model, batches)
    result = analyzer.analyze(quant_scheme="tf_enhanced", config_file=config, results_dir=tmp_path)
    assert result.encodings["fc_weight"]["bitwidth"] == 2
    assert {k: v["bitwidth"] for k, v in result.encodings.items() if k != "fc_weight"} == {
        k: 8 for k in result.encodings if k != "fc_weight"}
    enabled, disabled = result.per_layer_quant_enabled, result.per_layer_quant_disabled
    # flatten only moves values: no quantizer of its own (one policy, qa.config.GRID_PRESERVING), no sweep entry
    assert list(enabled) == ["conv1", "relu1", "conv2", "relu2", "pool", "fc"]
    assert min(enabled, key=enabled.get) == "fc"
    assert max(disabled, key=disabled.get) == "fc"
    assert result.most_sensitive_layers(1) == ["fc"]
    # the FP32 score of a smooth closeness score is exactly 0; everything quantized is worse
    assert result.fp32_score == 0.0
    assert all(v < 0 for v in enabled.values() if v is not None)


# ---- per-layer MSE and sensitivity against hand-quantized models ----------------------------

ANALYZED = {
    "convnet_tf_enhanced": (tm.PlainConvNet, (4, 3, 6, 6), "tf_enhanced", False),
    "convnet_tf_per_channel": (tm.PlainConvNet, (4, 3, 6, 6), "tf", True),
    "convnet_percentile": (tm.PlainConvNet, (4, 3, 6, 6), "percentile", False),
    "shared_module_tf": (tm.SharedModule, (6, 8), "tf", False),
    "mlp_tf_enhanced_per_channel": (tm.MLP, (6, 8), "tf_enhanced", True),
}


@pytest.fixture(scope="module", params=list(ANALYZED))
def analyzed(request, tmp_path_factory):
    make, shape, scheme, per_channel = ANALYZED[request.param]
    torch.manual_seed(1)
    model = make().eval()
    batches = image_batches(shape, n=3, seed=5)
    analyzer = make_analyzer(model, batches)
    analyzer.enable_per_layer_mse_loss((b for b in batches), len(batches))
    result = analyzer.analyze(quant_scheme=scheme, config_file=aimet_config(per_channel=per_channel),
                              results_dir=tmp_path_factory.mktemp(request.param))
    return model, batches, result


def test_per_layer_mse_matches_brute_force(analyzed):
    model, batches, result = analyzed
    layers = [layer["name"] for layer in result.layers if layer["quantizers"]]
    assert list(result.per_layer_mse) == layers  # every quantized layer (as the sweeps), in execution order
    mse, sqnr = brute_force_errors(model, result.encodings, batches, layers)
    for name in layers:
        assert result.per_layer_mse[name] == pytest.approx(mse[name], rel=1e-6, abs=1e-15), name
    assert read_json(result.results_dir / "per_layer_mse_loss.json") == pytest.approx(result.per_layer_mse, rel=1e-12)
    assert list(read_json(result.results_dir / "per_layer_mse_loss.json")) == layers
    assert list(result.per_layer_sqnr_db) == layers
    for name in layers:
        if math.isinf(sqnr[name]):
            assert math.isinf(result.per_layer_sqnr_db[name])
        else:
            assert result.per_layer_sqnr_db[name] == pytest.approx(sqnr[name], rel=1e-6, abs=1e-9), name
    # the quantized model differs from FP32 at the output
    assert result.per_layer_mse[layers[-1]] > 0


def test_sensitivity_scores_match_hand_quantized_models(analyzed):
    model, batches, result = analyzed
    score = closeness(model, batches)
    assert result.fp32_score == pytest.approx(score(copy.deepcopy(model)), rel=1e-6, abs=1e-15)
    weights_only, used_w = hand_quantized(model, result.encodings, activations=False)
    acts_only, used_a = hand_quantized(model, result.encodings, weights=False)
    everything, used = hand_quantized(model, result.encodings)
    assert used_w == {k for k in result.encodings if k.endswith(("_weight", "_bias"))}
    assert used_a | used_w == used == set(result.encodings)
    assert result.weight_quantized_score == pytest.approx(score(weights_only), rel=1e-6, abs=1e-15)
    assert result.activation_quantized_score == pytest.approx(score(acts_only), rel=1e-6, abs=1e-15)
    assert result.quantized_score == pytest.approx(score(everything), rel=1e-6, abs=1e-15)
    assert result.weight_quantized_score < 0 and result.activation_quantized_score < 0


def test_per_layer_sweeps_match_hand_quantized_layers(analyzed):
    model, batches, result = analyzed
    score = closeness(model, batches)
    layers = list(result.per_layer_quant_enabled)
    assert layers == list(result.per_layer_quant_disabled)
    assert layers == [layer["name"] for layer in result.layers if layer["quantizers"]]
    listed = {layer["name"]: set(layer["quantizers"]) for layer in result.layers}
    for name in layers[:3] + layers[-3:]:
        own = {k: v for k, v in result.encodings.items() if k in listed[name]}
        assert own, name
        others = {k: v for k, v in result.encodings.items() if k not in own}
        alone, _ = hand_quantized(model, own)
        rest, _ = hand_quantized(model, others)
        assert result.per_layer_quant_enabled[name] == pytest.approx(score(alone), rel=1e-6, abs=1e-15), name
        assert result.per_layer_quant_disabled[name] == pytest.approx(score(rest), rel=1e-6, abs=1e-15), name


def test_inplace_relu_keeps_data_flow_and_supergroups(tmp_path):
    """torchvision-style ``nn.ReLU(inplace=True)`` returns its input tensor object: the next layer
    still reads the ReLU's output, so the graph, the Conv+Relu supergroups and every number must be
    the same as with out-of-place ReLUs."""
    batches = image_batches((4, 3, 4, 4), n=2)
    results, graphs = {}, {}
    for inplace in (False, True):
        torch.manual_seed(0)
        model = tm.InplaceReluNet(inplace=inplace).eval()
        analyzer = make_analyzer(model, batches)
        analyzer.enable_per_layer_mse_loss(batches, 2)
        results[inplace] = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path / str(inplace))
        graphs[inplace] = [(layer.name, layer.inputs) for layer in analyzer.adapter.graph.layers]
    assert graphs[False] == [("conv1", []), ("relu1", ["conv1"]), ("conv2", ["relu1"]), ("relu2", ["conv2"]),
                             ("flatten", ["relu2"]), ("fc", ["flatten"])]
    assert graphs[True] == graphs[False]
    assert "conv1_output_0" not in results[True].encodings  # Conv+Relu supergroup
    assert sorted(results[True].encodings) == sorted(results[False].encodings)
    assert results[True].quantized_score == pytest.approx(results[False].quantized_score, rel=1e-6)
    assert results[True].per_layer_mse == pytest.approx(results[False].per_layer_mse, rel=1e-6)


# ---- end to end: every file ---------------------------------------------------------------

def _two_input_batches():
    return batches_like(lambda g: (torch.randn(4, 3, 6, 6, generator=g), torch.randn(4, 5, generator=g)), 3)


END_TO_END = {
    "residual": (tm.Residual, lambda: image_batches((4, 3, 6, 6)), {}),
    "depthwise": (tm.Depthwise, lambda: image_batches((4, 3, 6, 6)), {}),
    "conv_transpose": (tm.ConvTransposeNet, lambda: image_batches((4, 3, 5, 5)), {}),
    "linear": (tm.MLP, lambda: image_batches((6, 8)), {}),
    "shared_module": (tm.SharedModule, lambda: image_batches((6, 8)), {}),
    "two_inputs": (tm.TwoInputs, _two_input_batches, {"forward_fn": lambda m, batch: m(*batch)}),
    "unfoldable_bn": (tm.UnfoldableBNNet, lambda: image_batches((4, 3, 6, 6)), {}),
    "keyword_inputs": (tm.KeywordInputs, lambda: batches_like(
        lambda g: {"image": torch.randn(4, 6, generator=g), "mask": torch.randn(4, 4, generator=g)}, 3), {}),
}


@pytest.mark.parametrize("case", list(END_TO_END))
def test_analyze_end_to_end_writes_every_file(case, tmp_path):
    make, data, kwargs = END_TO_END[case]
    torch.manual_seed(2)
    model = make().eval()
    batches = data()
    analyzer = quiet(make_analyzer, model, batches, **kwargs)
    analyzer.enable_per_layer_mse_loss(batches, len(batches))
    result = quiet(analyzer.analyze, results_dir=tmp_path)  # tf_enhanced by default
    assert result.status == "complete" and result.error is None
    assert result.quant_scheme == "tf_enhanced"
    files = expected_files(result)
    missing = [str(f.relative_to(tmp_path)) for f in files if not f.is_file()]
    assert not missing
    assert set(result.files) >= files
    assert any((tmp_path / "weights_pdf").iterdir()) and any((tmp_path / "activations_pdf").iterdir())
    quantized = [layer["name"] for layer in result.layers if layer["quantizers"]]
    assert list(read_json(tmp_path / "per_layer_quant_enabled.json")) == quantized
    assert list(read_json(tmp_path / "per_layer_quant_disabled.json")) == quantized
    assert list(read_json(tmp_path / "per_layer_mse_loss.json")) == quantized
    assert all(math.isfinite(v) and v >= 0 for v in result.per_layer_mse.values())
    summary = read_json(tmp_path / "summary.json")
    assert summary["status"] == "complete"
    assert summary["per_layer_quant_enabled"] == pytest.approx(result.per_layer_quant_enabled)
    for name, record in ((p.stem, read_json(p)) for p in (tmp_path / "activations_pdf").glob("*.json")):
        assert sum(record["counts"]) > 0, name
        assert record["encoding_min"] <= 0 <= record["encoding_max"], name
    if case == "shared_module":  # one layer per call; the Linear's weight is one quantizer for both calls
        assert [layer["name"] for layer in result.layers] == [
            "fc_in", "act", "shared", "act/call_1", "shared/call_1", "act/call_2", "fc_out"]
        assert analyzer.adapter.graph["shared"].calls == analyzer.adapter.graph["shared/call_1"].calls == 2
        assert [k for k in result.encodings if k.startswith("shared")] == [
            "shared_weight", "shared_output_0", "shared/call_1_output_0"]
    if case == "unfoldable_bn":
        assert result.folded_batch_norms == [("bn0", "conv0")]
        assert [layer["op_type"] for layer in result.layers if layer["name"] == "bn"] == ["BatchNormalization"]
    if case == "two_inputs":
        assert {"conv_input_0", "vec_input_0"} <= set(result.encodings)
    if case == "keyword_inputs":
        assert {"fc_image_input_0", "fc_mask_input_0"} <= set(result.encodings)


def test_residual_add_is_a_quantized_layer(tmp_path):
    """`y + x` in a forward is a layer of its own (named after the module calling it), fed by both
    branches, and quantizing it quantizes exactly the sum."""
    torch.manual_seed(0)
    model = tm.Residual().eval()
    batches = image_batches((4, 3, 6, 6), n=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left in float, so nothing is warned about
        analyzer = make_analyzer(model, batches)
    graph = analyzer.adapter.graph
    assert graph["add"].op_type == "Add" and graph["add"].inputs == ["conv2", "relu0"]
    assert graph.unquantized_ops == []
    # the default config's Add+Relu supergroup leaves the add's output to the relu after it
    assert not analyzer.create_quantsim("tf").quantizers["add_output_0"].enabled
    no_supergroups = {"defaults": {"ops": {"is_output_quantized": "True"}, "params": {"is_quantized": "True"}}}
    sim = analyzer.create_quantsim("tf", config_file=no_supergroups)
    sim.set_active({"add_output_0"})
    enc = sim.quantizers["add_output_0"].encoding.to_dict()
    with torch.no_grad():
        x = batches[0]
        h = model.relu0(model.stem(x))
        s = model.conv2(model.relu1(model.bn1(model.conv1(h)))) + h
        q = torch.from_numpy(np.asarray(kernels.fake_quantize(s.numpy(), enc["scale"], enc["offset"], enc["bitwidth"])))
        expected = model.fc(model.flatten(model.pool(model.relu2(q))))
        assert not torch.equal(q, s)
        assert torch.allclose(sim.model(x), expected, atol=1e-6)
    result = analyzer.analyze(quant_scheme="tf", config_file=no_supergroups, results_dir=tmp_path)
    assert "add" in result.per_layer_quant_enabled and result.unquantized_ops == []
    assert read_json(tmp_path / "summary.json")["unquantized_ops"] == []


def test_tf_scheme_writes_no_histograms(tmp_path):
    torch.manual_seed(0)
    model = tm.MLP().eval()
    batches = image_batches((6, 8), n=2)
    make_analyzer(model, batches).analyze(quant_scheme="tf", results_dir=tmp_path)
    assert not (tmp_path / "activations_pdf").exists()
    assert not (tmp_path / "weights_pdf").exists()
    assert (tmp_path / "min_max_ranges" / "weights.json").is_file()


# ---- JSON shapes -------------------------------------------------------------------------

def test_json_shapes_per_tensor_in_execution_order(tmp_path):
    torch.manual_seed(0)
    model = tm.ExecutionOrderNet().eval()
    batches = image_batches((6, 4), n=2)
    result = make_analyzer(model, batches).analyze(quant_scheme="tf", config_file="per_tensor", results_dir=tmp_path)
    order = ["a_first", "m_middle", "relu", "z_last"]
    for file in ("per_layer_quant_enabled.json", "per_layer_quant_disabled.json"):
        data = read_json(tmp_path / file)
        assert list(data) == order
        assert all(isinstance(v, float) for v in data.values())
    weights = read_json(tmp_path / "min_max_ranges" / "weights.json")
    assert list(weights) == ["a_first_weight", "m_middle_weight", "z_last_weight"]
    for key, value in weights.items():
        enc = result.encodings[key]
        assert value == [enc["min"], enc["max"]]
        w = model.get_submodule(key[: -len("_weight")]).weight.detach().abs().max().item()
        assert value[1] == pytest.approx(w, rel=1e-6)  # symmetric tf: max is the largest |w|
    activations = read_json(tmp_path / "min_max_ranges" / "activations.json")
    # Gemm+Relu is a supergroup: m_middle has no output quantizer of its own
    assert set(activations) == {"a_first_input_0", "a_first_output_0", "relu_output_0", "z_last_output_0"}
    for key, value in activations.items():
        assert value == [result.encodings[key]["min"], result.encodings[key]["max"]]
        assert len(value) == 2 and value[0] <= 0 <= value[1]
    assert result.weight_ranges == weights and result.activation_ranges == activations
    assert list(read_json(tmp_path / "summary.json")["per_layer_quant_enabled"]) == order


def test_json_shapes_per_channel(tmp_path):
    torch.manual_seed(0)
    model = tm.PlainConvNet().eval()
    batches = image_batches((4, 3, 6, 6), n=2)
    result = make_analyzer(model, batches).analyze(quant_scheme="tf", config_file=aimet_config(per_channel=True),
                                                   results_dir=tmp_path)
    weights = read_json(tmp_path / "min_max_ranges" / "weights.json")
    channels = {"conv1": (6, 0), "conv2": (4, 0), "up": (3, 1), "fc": (4, 0)}  # up: ConvTranspose2d(4, 3): axis 1
    assert list(weights) == [f"{name}_weight" for name in channels]
    for name, (n, axis) in channels.items():
        per_channel = weights[f"{name}_weight"]
        assert list(per_channel) == [f"{name}_weight_{c}" for c in range(n)]
        w = model.get_submodule(name).weight.detach()
        for c in range(n):
            lo, hi = per_channel[f"{name}_weight_{c}"]
            enc = result.encodings[f"{name}_weight"][c]
            assert [lo, hi] == [enc["min"], enc["max"]]
            assert hi == pytest.approx(w.select(axis, c).abs().max().item(), rel=1e-6), (name, c)
            assert lo < 0 < hi
    activations = read_json(tmp_path / "min_max_ranges" / "activations.json")
    assert all(isinstance(v, list) and len(v) == 2 for v in activations.values())  # never per channel
    assert "conv1_output_0" not in activations and "relu1_output_0" in activations  # Conv+Relu supergroup


# ---- callbacks, schemes, bitwidths --------------------------------------------------------

def test_callback_func_and_plain_callbacks(tmp_path):
    torch.manual_seed(0)
    model = tm.MLP().eval()
    batches = image_batches((6, 8), n=2)
    seen = {"forward": [], "eval": [], "plain": 0}

    def forward_pass(m, args):
        seen["forward"].append((m, args))
        calibration(batches)(m)

    def evaluate(m, args):
        seen["eval"].append((m, args))
        return closeness(model, batches)(m) * args["factor"]

    def plain_eval(m):
        seen["plain"] += 1
        return torch.tensor(1.5)  # a 1-element tensor is a number

    analyzer = qa.QuantAnalyzer(model, batches[0], qa.CallbackFunc(forward_pass, "calib-args"),
                                qa.CallbackFunc(evaluate, {"factor": 2.0}), progress=False)
    result = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path / "a")
    assert len(seen["forward"]) == 1 and seen["forward"][0][1] == "calib-args"
    assert all(args == {"factor": 2.0} for _, args in seen["eval"])
    models = {id(m) for m, _ in seen["forward"] + seen["eval"]}
    assert models == {id(analyzer.adapter.model)} and id(model) not in models
    assert isinstance(seen["eval"][0][0], nn.Module)
    assert len(seen["eval"]) == 4 + 2 * len(result.per_layer_quant_enabled)
    plain = qa.QuantAnalyzer(model, batches[0], calibration(batches), plain_eval, progress=False)
    result = plain.analyze(quant_scheme="tf", results_dir=tmp_path / "b")
    assert result.fp32_score == 1.5 and set(result.per_layer_quant_enabled.values()) == {1.5}
    assert seen["plain"] == 4 + 2 * len(result.per_layer_quant_enabled)


@pytest.mark.parametrize("scheme, value", [
    (qa.QuantScheme.post_training_tf, "tf"), ("tf", "tf"),
    (qa.QuantScheme.post_training_tf_enhanced, "tf_enhanced"), ("tf_enhanced", "tf_enhanced"),
    (qa.QuantScheme.post_training_percentile, "percentile"), ("percentile", "percentile"),
])
def test_quant_scheme_as_enum_and_string(scheme, value, tmp_path):
    torch.manual_seed(0)
    model = tm.MLP().eval()
    batches = image_batches((6, 8), n=2)
    result = make_analyzer(model, batches).analyze(quant_scheme=scheme, results_dir=tmp_path)
    assert result.quant_scheme == value
    assert read_json(tmp_path / "summary.json")["quant_scheme"] == value
    assert (tmp_path / "activations_pdf").is_dir() == (value != "tf")


def test_default_activation_bw_alias(tmp_path):
    torch.manual_seed(0)
    model = tm.MLP().eval()
    batches = image_batches((6, 8), n=2)
    analyzer = make_analyzer(model, batches)
    result = analyzer.analyze(quant_scheme="tf", default_param_bw=6, default_activation_bw=4, results_dir=tmp_path)
    assert result.default_output_bw == 4 and result.default_param_bw == 6
    bws = {k: (v[0] if isinstance(v, list) else v)["bitwidth"] for k, v in result.encodings.items()}
    assert {k: b for k, b in bws.items() if k.endswith("_weight")} == {k: 6 for k in bws if k.endswith("_weight")}
    assert {k: b for k, b in bws.items() if not k.endswith("_weight")} == {k: 4 for k in bws if not k.endswith("_weight")}
    same = analyzer.analyze(quant_scheme="tf", default_param_bw=6, default_output_bw=4, results_dir=tmp_path / "b")
    assert same.encodings == result.encodings
    with pytest.raises(qa.QAValueError):
        analyzer.analyze(quant_scheme="tf", default_output_bw=8, default_activation_bw=4, results_dir=tmp_path / "c")


# ---- MSE data formats ---------------------------------------------------------------------

def test_mse_data_formats(tmp_path):
    torch.manual_seed(0)
    model = tm.MLP().eval()
    batches = image_batches((6, 8), n=3)
    results = {}
    formats = {
        "tensors": lambda: (b for b in batches),
        "labelled": lambda: ((b, torch.zeros(len(b), dtype=torch.long)) for b in batches),
        "endless": lambda: (batches[i % 3] for i in itertools.count()),  # no len(), never ends
    }
    for name, data in formats.items():
        analyzer = make_analyzer(model, batches)
        iterable = data()
        assert not hasattr(iterable, "__len__")
        analyzer.enable_per_layer_mse_loss(iterable, 3)
        results[name] = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path / name).per_layer_mse
    assert list(results["tensors"]) == ["fc1", "act", "fc2", "relu", "fc3"]
    assert results["labelled"] == results["tensors"]
    assert results["endless"] == results["tensors"]


def test_mse_data_as_keyword_dicts(tmp_path):
    torch.manual_seed(0)
    model = tm.KeywordInputs().eval()
    batches = batches_like(lambda g: {"image": torch.randn(4, 6, generator=g), "mask": torch.randn(4, 4, generator=g)}, 3)
    analyzer = make_analyzer(model, batches)
    analyzer.enable_per_layer_mse_loss(iter(batches), 3)
    result = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    assert list(result.per_layer_mse) == ["fc_image", "relu", "head", "fc_mask"]
    mse, _ = brute_force_errors(model, result.encodings, batches, list(result.per_layer_mse))
    assert result.per_layer_mse == pytest.approx(mse, rel=1e-6)


def test_mse_batch_the_model_cannot_run_is_a_clear_error(tmp_path):
    """AIMET's rough edge: a two-input model's (x1, x2) batches are read as (inputs, label) unless
    forward_fn is given. The model then fails; qa must say so as a QAError (pointing at the
    per-layer MSE data / forward_fn) and record the failure in summary.json."""
    torch.manual_seed(0)
    model = tm.TwoInputs().eval()
    batches = _two_input_batches()
    analyzer = quiet(make_analyzer, model, batches)
    analyzer.enable_per_layer_mse_loss(batches, 2)  # no forward_fn
    with pytest.raises(qa.QAError, match="(?i)mse|forward_fn"):
        quiet(analyzer.analyze, quant_scheme="tf", results_dir=tmp_path)
    summary = read_json(tmp_path / "summary.json")
    assert summary["status"] == "failed" and summary["error"]
    # the MSE data is checked with one batch before the long work: no sweep was spent on a doomed run
    assert not (tmp_path / "per_layer_quant_enabled.json").exists()


# ---- errors -------------------------------------------------------------------------------

def _failing_eval(model, batches, fail_on):
    score = closeness(model, batches)
    calls = [0]

    def evaluate(m):
        calls[0] += 1
        if calls[0] == fail_on:
            raise RuntimeError("evaluation broke")
        return score(m)
    return evaluate


@pytest.mark.parametrize("sweep", ["enabling", "disabling"])
def test_failing_eval_callback_stops_and_keeps_finished_results(sweep, tmp_path):
    torch.manual_seed(0)
    model = tm.MLP().eval()
    batches = image_batches((6, 8), n=2)
    layers = ["fc1", "act", "fc2", "relu", "fc3"]
    # calls 1-4: FP32, weights, activations, everything; then one per layer per sweep
    fail_on = 4 + 2 if sweep == "enabling" else 4 + len(layers) + 3
    failing_layer = "act" if sweep == "enabling" else "fc2"
    analyzer = qa.QuantAnalyzer(model, batches[0], calibration(batches), _failing_eval(model, batches, fail_on),
                                progress=False)
    with pytest.raises(qa.QACallbackError) as info:
        analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    message = str(info.value)
    assert sweep in message and repr(failing_layer) in message and "evaluation broke" in message
    assert isinstance(info.value.__cause__, RuntimeError)
    summary = read_json(tmp_path / "summary.json")
    assert summary["status"] == "failed"
    assert "evaluation broke" in summary["error"] and failing_layer in summary["error"]
    assert summary["fp32_score"] == 0.0 and summary["quantized_score"] is not None
    enabled = read_json(tmp_path / "per_layer_quant_enabled.json")
    if sweep == "enabling":
        assert list(enabled) == ["fc1"]
        assert not (tmp_path / "per_layer_quant_disabled.json").exists()
    else:
        assert list(enabled) == layers
        assert list(read_json(tmp_path / "per_layer_quant_disabled.json")) == ["fc1", "act"]
    assert not (tmp_path / "min_max_ranges").exists()


def test_unwritable_results_dir_fails_before_any_callback(tmp_path):
    torch.manual_seed(0)
    model = tm.MLP().eval()
    batches = image_batches((6, 8), n=2)
    calls = []
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    target = blocker / "results"
    analyzer = qa.QuantAnalyzer(model, batches[0], lambda m: calls.append("forward"),
                                lambda m: calls.append("eval") or 0.0, progress=False)
    with pytest.raises(qa.QAError) as info:
        analyzer.analyze(quant_scheme="tf", results_dir=target)
    assert str(target.resolve()) in str(info.value) or str(target) in str(info.value)
    assert calls == []


def test_failing_forward_pass_callback_names_calibration(tmp_path):
    torch.manual_seed(0)
    model = tm.MLP().eval()
    batches = image_batches((6, 8), n=2)

    def broken(m):
        raise ValueError("no data loader")

    analyzer = qa.QuantAnalyzer(model, batches[0], broken, closeness(model, batches), progress=False)
    with pytest.raises(qa.QACallbackError, match="calibration") as info:
        analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    assert "no data loader" in str(info.value)
    summary = read_json(tmp_path / "summary.json")
    assert summary["status"] == "failed" and "calibration" in summary["error"]


@pytest.mark.parametrize("bad", ["none", "text", "dict", "model_output_tensor", "numpy_vector"])
def test_eval_callback_returning_a_non_number_is_a_clear_error(bad, tmp_path):
    torch.manual_seed(0)
    model = tm.MLP().eval()
    batches = image_batches((6, 8), n=2)
    returns = {
        "none": lambda m: None,
        "text": lambda m: "accuracy",
        "dict": lambda m: {"top1": 0.5},
        "model_output_tensor": lambda m: m(batches[0]),  # forgot to reduce to a score
        "numpy_vector": lambda m: np.array([0.5, 0.7]),
    }
    analyzer = qa.QuantAnalyzer(model, batches[0], calibration(batches), returns[bad], progress=False)
    with pytest.raises(qa.QAError, match="number") as info:
        analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    assert "eval_callback" in str(info.value)
    assert read_json(tmp_path / "summary.json")["status"] == "failed"


# ---- modules_to_ignore --------------------------------------------------------------------

def test_modules_to_ignore_leaves_layers_unquantized(tmp_path):
    torch.manual_seed(0)
    model = tm.MLP().eval()
    batches = image_batches((6, 8), n=2)
    analyzer = make_analyzer(model, batches, modules_to_ignore=[model.fc2, model.act])
    analyzer.enable_per_layer_mse_loss(batches, 2)
    result = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    assert list(result.per_layer_quant_enabled) == ["fc1", "relu", "fc3"]
    assert list(result.per_layer_quant_disabled) == ["fc1", "relu", "fc3"]
    assert not [k for k in result.encodings if k.startswith(("fc2_", "act_"))]
    assert not [k for k in {**result.weight_ranges, **result.activation_ranges} if k.startswith(("fc2_", "act_"))]
    # the ignored Linear's weights stay in float in the fully quantized model, the others do not
    sim = analyzer.create_quantsim("tf")
    sim.set_active(sim.enabled)
    try:
        assert torch.equal(analyzer.adapter.model.fc2.weight, model.fc2.weight)
        assert not torch.equal(analyzer.adapter.model.fc1.weight, model.fc1.weight)
    finally:
        sim.set_active(())


def test_modules_to_ignore_with_a_container(tmp_path):
    torch.manual_seed(0)
    model = tm.PreservationNet().eval()
    batches = image_batches((4, 3, 6, 6), n=2)
    analyzer = quiet(make_analyzer, model, batches, modules_to_ignore=[model.block])
    result = quiet(analyzer.analyze, quant_scheme="tf", results_dir=tmp_path)
    assert not [name for name in result.per_layer_quant_enabled if name.startswith("block")]
    assert not [k for k in result.encodings if k.startswith("block")]
    assert "conv" in result.per_layer_quant_enabled
