"""One contract, every adapter: the verbs the engine relies on behave the same for torch, ONNX and Keras."""

import io
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")


def _output(result):
    """The first model output as float64 numpy, whatever the framework returned."""
    if isinstance(result, (list, tuple)):
        result = result[0]
    if hasattr(result, "detach"):
        result = result.detach().cpu().numpy()
    return np.asarray(result, dtype=np.float64)


def _torch_net():
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 5 * 5, 3)).eval()
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net


def make_torch(x):
    torch = pytest.importorskip("torch")
    from qa.adapters.torch import TorchAdapter

    net = _torch_net()
    return TorchAdapter(net, torch.from_numpy(x[:1])), torch.from_numpy(x), lambda: _output(net(torch.from_numpy(x))), net


def make_onnx(x):
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from qa.adapters.onnx import OnnxAdapter

    net = _torch_net()
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.from_numpy(x[:1]),), buf, dynamo=False, opset_version=17, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}}, do_constant_folding=False)
    proto = onnx.load_from_string(buf.getvalue())
    plain = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    return OnnxAdapter(proto, {"input": x[:1]}), {"input": x}, lambda: _output(plain.run(None, {"input": x})), proto


def make_keras(x):
    keras = pytest.importorskip("keras")
    from qa.adapters.keras import KerasAdapter

    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((5, 5, 2))
    y = L.Conv2D(4, 3, padding="same", name="conv")(inp)
    y = L.BatchNormalization(name="bn")(y)
    y = L.ReLU(name="relu")(y)
    y = L.Flatten(name="flat")(y)
    model = keras.Model(inp, L.Dense(3, name="fc")(y))
    xk = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return KerasAdapter(model, None), xk, lambda: _output(model(xk)), model


ADAPTERS = {"torch": make_torch, "onnx": make_onnx, "keras": make_keras}


@pytest.fixture(params=sorted(ADAPTERS))
def setup(request):
    x = np.random.default_rng(0).standard_normal((6, 2, 5, 5)).astype(np.float32)
    adapter, inputs, reference, original = ADAPTERS[request.param](x)
    adapter.test_original = original  # what the registry must recognise
    yield adapter, inputs, reference
    adapter.close()


def _coarse(x):
    from qa import kernels

    return kernels.fake_quantize(x, 1 / 32, -64, 7)  # coarse on purpose: any change must show


def _everything_on(adapter):
    """An ActiveSet with every quantizer on, prepared the way QuantSim prepares them."""
    from qa import kernels
    from qa.adapters._base import ActiveSet

    enc = kernels.Encoding(-2.0, 1.75, 0.25, -8, 4)
    weights = {q.name: adapter.prepare_weight(q, _coarse(w)) for q, w in adapter.weights()}
    acts = {q.name: adapter.prepare_activation(q, enc, "half_even")
            for q in adapter.graph.quantizers() if not q.is_param}
    return ActiveSet(weights, acts, chain=frozenset(acts))


def test_graph_names_quantizers_once_and_folds_the_batch_norm(setup):
    adapter, _, _ = setup
    names = [q.name for q in adapter.graph.quantizers()]
    assert len(names) == len(set(names)) and names
    assert adapter.graph.folded_batch_norms, "the BN after the conv should be folded"
    assert all(layer.op_type != "BatchNormalization" for layer in adapter.graph.layers)
    assert adapter.framework in ("torch", "onnx", "keras") and isinstance(adapter.unquantized_hint, str)


def test_implements_the_contract_and_is_found_by_the_registry(setup):
    from qa.adapters import adapter_class
    from qa.adapters._base import Adapter

    adapter, _, _ = setup
    assert isinstance(adapter, Adapter)
    assert adapter_class(adapter.test_original) is type(adapter)
    assert not type(adapter).is_model(object())


def test_float_run_equals_the_original_model(setup):
    from qa.adapters._base import FLOAT

    adapter, inputs, reference = setup
    adapter.activate(FLOAT)
    np.testing.assert_allclose(_output(adapter.run(inputs)), reference(), rtol=1e-4, atol=1e-5)


def test_weights_observing_capturing_and_switching(setup):
    from qa.adapters._base import FLOAT

    adapter, inputs, reference = setup
    weights = list(adapter.weights())
    assert weights and all(w.dtype == np.float32 and tuple(w.shape) == tuple(q.shape) for q, w in weights)
    activations = [q for q in adapter.graph.quantizers() if not q.is_param]

    seen = {}

    class Counter:
        def __init__(self, name):
            self.name = name

        def update(self, x):
            seen[self.name] = seen.get(self.name, 0) + np.asarray(x).size

    with adapter.observing({q.name: Counter(q.name) for q in activations}):
        adapter.run(inputs)
    assert set(seen) == {q.name for q in activations} and all(seen.values())

    captured = {}
    with adapter.capturing(lambda layer, i, arr: captured.setdefault(layer, np.asarray(arr).shape)):
        adapter.run(inputs)
    # every layer with an output quantizer is captured (pure data movement may be skipped)
    with_outputs = {q.layer for q in activations if q.kind == "output"}
    assert with_outputs <= set(captured) <= {layer.name for layer in adapter.graph.layers}

    on = _everything_on(adapter)
    adapter.activate(on)
    assert adapter.active is on
    quantized = _output(adapter.run(inputs))
    adapter.activate(FLOAT)
    fp32 = _output(adapter.run(inputs))
    assert not np.allclose(quantized, fp32, atol=1e-3), "switching quantizers on changed nothing"
    np.testing.assert_allclose(fp32, reference(), rtol=1e-4, atol=1e-5)  # and off again restores FP32
    adapter.activate(on)
    np.testing.assert_array_equal(_output(adapter.run(inputs)), quantized)  # and on again is the same


def test_weights_only_and_activations_only_differ_from_both_ends(setup):
    from qa.adapters._base import ActiveSet, FLOAT

    adapter, inputs, _ = setup
    on = _everything_on(adapter)
    runs = {}
    for label, active in {"fp32": FLOAT, "all": on,
                          "weights": ActiveSet(on.weights, {}, on.chain),
                          "acts": ActiveSet({}, on.activations, on.chain)}.items():
        adapter.activate(active)
        runs[label] = _output(adapter.run(inputs))
    for part in ("weights", "acts"):
        assert not np.array_equal(runs[part], runs["fp32"]) and not np.array_equal(runs[part], runs["all"]), part


def test_two_prepared_sets_never_interfere(setup):
    """What two simulations of one analyzer do: each prepares its own set; activating one never
    changes what the other runs."""
    from qa import kernels
    from qa.adapters._base import ActiveSet

    adapter, inputs, _ = setup

    def prepared(scale, bits):
        enc = kernels.Encoding(-128 * scale, 127 * scale, scale, -128, 8)
        weights = {q.name: adapter.prepare_weight(q, kernels.fake_quantize(w, scale, -2 ** (bits - 1), bits))
                   for q, w in adapter.weights()}
        acts = {q.name: adapter.prepare_activation(q, enc, "half_even")
                for q in adapter.graph.quantizers() if not q.is_param}
        return ActiveSet(weights, acts, chain=frozenset(acts))

    fine, coarse = prepared(1 / 64, 8), prepared(1 / 4, 3)
    adapter.activate(fine)
    first = _output(adapter.run(inputs))
    adapter.activate(coarse)
    other = _output(adapter.run(inputs))
    adapter.activate(fine)
    again = _output(adapter.run(inputs))
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(first, again)
