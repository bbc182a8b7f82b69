"""Per-layer MSE under a memory budget (groups of layers, same results bit for bit, bounded held
bytes) and the local error per layer (only the layer's own quantizers on) on PyTorch, ONNX and Keras."""

from __future__ import annotations

import json
import logging
import math
import os
import tracemalloc
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")

import qa  # noqa: E402
from qa.errors import QAValueError  # noqa: E402

WIDTH = 256  # every layer of the wide MLP outputs (batch, WIDTH) float32


def wide_mlp(depth=6, seed=0):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers).eval()


def outlier_mlp(seed=0):
    """fc '2' has a weight of 1000 on an input that is always 0: FP32 outputs are unaffected, but its
    quantization grid is ruined. fc '4' downstream is harmless on its own."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 8)).eval()
    with torch.no_grad():
        net[0].weight[0] = 0.0  # unit 0 of layer '0' is always 0
        net[0].bias[0] = 0.0
        net[2].weight[:, 0] = 0.0
        net[2].weight[0, 0] = 1000.0
    return net


def analyzer_for(net, batches):
    def calibrate(model):
        with torch.no_grad():
            for x in batches:
                model(x)
    return qa.QuantAnalyzer(net, batches[0][:1], calibrate, lambda model: 0.0, progress=False)


def mse_run(analyzer, sim, batches, folder, **kwargs):
    """(cumulative MSE, SQNR, local MSE, local SQNR, peak held bytes, passes) of one export."""
    analyzer.enable_per_layer_mse_loss(batches, len(batches), **kwargs)
    mse = analyzer.export_per_layer_mse_loss(sim, folder)
    return (mse, dict(analyzer._sqnr), dict(analyzer._local_mse), dict(analyzer._local_sqnr),
            analyzer.mse_peak_bytes, dict(analyzer.mse_passes))


def bits(d):
    """The exact bits of every value (== on floats would let -0.0 equal 0.0)."""
    return {k: np.float64(v).tobytes() for k, v in d.items()}


# ---- the memory budget ----------------------------------------------------------------------------

def test_small_budget_holds_under_it_and_gives_identical_results(tmp_path):
    net = wide_mlp()
    batches = [torch.randn(n, WIDTH) for n in (16, 64, 32)]  # a later batch larger than the first
    analyzer = analyzer_for(net, batches)
    sim = analyzer.create_quantsim("tf", 8, 8)
    layers = len(sim.graph.layers)
    full = mse_run(analyzer, sim, batches, tmp_path / "full")
    largest = 64 * WIDTH * 4  # one layer's output for the largest batch
    assert full[4] == layers * largest  # all of a batch's outputs held at once
    assert full[5] == {"fp32": 3, "quantized": 3, "local": 3 * layers}

    budget = int(2.5 * largest)  # two layers of the largest batch, five of the smallest
    small = mse_run(analyzer, sim, batches, tmp_path / "small", mse_memory_budget=budget)
    assert 2 * largest <= small[4] <= budget
    for a, b in zip(full[:4], small[:4]):
        assert list(a) == list(b) and bits(a) == bits(b)
    # groups of 12 layers: 16 rows, 10 fit (2 groups); 64 rows, 2 fit (6); 32 rows, 5 fit (3); 2 passes each
    assert layers == 12 and small[5] == {"fp32": 11, "quantized": 11, "local": 3 * layers}
    on_disk = json.loads((tmp_path / "small" / "per_layer_local_mse_loss.json").read_text())
    assert on_disk == json.loads((tmp_path / "full" / "per_layer_local_mse_loss.json").read_text())


def test_a_layer_larger_than_the_budget_is_held_alone_and_logged(tmp_path, caplog):
    net = wide_mlp(depth=2)
    batches = [torch.randn(32, WIDTH) for _ in range(2)]
    analyzer = analyzer_for(net, batches)
    sim = analyzer.create_quantsim("tf_enhanced", 8, 8)
    layers = len(sim.graph.layers)
    full = mse_run(analyzer, sim, batches, tmp_path / "a")
    with caplog.at_level(logging.INFO, logger="qa"):
        tiny = mse_run(analyzer, sim, batches, tmp_path / "b", mse_memory_budget=1)
    assert all(bits(a) == bits(b) for a, b in zip(full[:4], tiny[:4]))
    assert tiny[4] == 32 * WIDTH * 4  # one layer at a time
    assert tiny[5] == {"fp32": 2 * layers, "quantized": 2 * layers, "local": 2 * layers}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{layers} layer(s) exceed mse_memory_budget" in m and "held alone" in m for m in warned)
    assert any(f"{2 * layers} pass(es) for the local error" in r.getMessage() for r in caplog.records)


def test_memory_actually_allocated_follows_the_budget(tmp_path):
    """tracemalloc sees numpy's allocations: the copies of the FP32 outputs and the quantized ones."""
    net = wide_mlp(depth=8)
    batches = [torch.randn(256, WIDTH) for _ in range(2)]
    analyzer = analyzer_for(net, batches)
    sim = analyzer.create_quantsim("tf", 8, 8)
    one = 256 * WIDTH * 4  # 256 KiB per layer, 16 layers: 4 MiB held at once without a budget

    def traced_peak(**kwargs):
        analyzer.enable_per_layer_mse_loss(batches, 2, local_mse=False, **kwargs)
        tracemalloc.start()
        try:
            analyzer.export_per_layer_mse_loss(sim, tmp_path)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    unbounded, bounded = traced_peak(), traced_peak(mse_memory_budget=2 * one)
    assert unbounded > 16 * one
    assert bounded < 2 * one + 6 * one  # the budget plus a few transient outputs
    assert bounded < unbounded / 2


def test_references_hold_whole_layers_and_match_outputs_by_call():
    """A layer whose second output stops fitting is left whole for a later pass; outputs are matched
    by (layer, output, call), so a layer that emits an output twice is compared call by call."""
    from qa.analyzer import _References
    from qa.observers import ErrorStats

    ten = np.zeros(10, np.float32)  # 40 bytes
    refs = _References({"a", "b", "c"}, budget=100)
    refs.new_batch()
    for layer, i in (("a", 0), ("b", 0), ("a", 1), ("z", 0), ("c", 0)):
        refs.store(layer, i, ten + len(layer))
    assert dict(refs.held) == {"b": 40, "c": 40} and refs.left == {"a"} and refs.bytes == 80 == refs.peak
    refs.next_group()
    assert refs.done == {"b", "c"}
    for layer, i, value in (("b", 0, 0), ("a", 0, 0), ("c", 0, 0), ("a", 1, 1), ("a", 1, 5)):  # a: output 1 twice
        refs.store(layer, i, ten + value)
    assert dict(refs.held) == {"a": 120} and not refs.left and list(refs.oversized) == ["a"] and refs.peak == 120
    stats = {}
    compare = refs.comparer(stats)
    for i, value in ((0, 0), (1, 1), (1, 6)):  # against 0, 1 and 5: errors 0, 0 and 1 per element
        compare("a", i, ten + value)
    assert stats["a"].count == 30 and stats["a"].mse == pytest.approx(10 / 30)
    assert isinstance(stats["a"], ErrorStats) and "b" not in stats


@pytest.mark.parametrize("budget", [0, -5, True, "1 GiB", float("inf"), None])
def test_budget_must_be_a_positive_number_of_bytes(budget):
    analyzer = analyzer_for(wide_mlp(depth=1), [torch.randn(2, WIDTH)])
    with pytest.raises(QAValueError, match="mse_memory_budget"):
        analyzer.enable_per_layer_mse_loss([torch.randn(2, WIDTH)], 1, mse_memory_budget=budget)


# ---- the local error ------------------------------------------------------------------------------

def test_local_error_separates_the_bad_layer_from_the_layers_it_hurts(tmp_path):
    net = outlier_mlp()
    batches = [torch.randn(64, 16) for _ in range(3)]
    analyzer = analyzer_for(net, batches)
    sim = analyzer.create_quantsim("tf", 8, 8, "per_tensor")  # per channel, the outlier would hurt less
    mse, sqnr, local, local_sqnr, _, passes = mse_run(analyzer, sim, batches, tmp_path)
    assert list(local) == list(mse) == ["0", "1", "2", "3", "4"]
    assert passes == {"fp32": 3, "quantized": 3, "local": 15}
    # the bad layer: large error on its own, most of the noise it passes on
    assert local_sqnr["2"] < 5 and local["2"] == mse["2"]  # nothing upstream of it matters much
    # the last layer only inherits: large cumulative error, small local error
    assert sqnr["4"] < 15 < 35 < local_sqnr["4"]
    assert mse["4"] > 1000 * local["4"]
    # the first layer reads the model input: only its own quantizers decide its output
    assert bits({"0": local["0"]}) == bits({"0": mse["0"]}) and local_sqnr["0"] == sqnr["0"]
    # the last layer's local error from the model's output, with only its quantizers on
    want = []
    with torch.no_grad():
        for x in batches:
            sim.set_active(())
            ref = sim.model(x).double()
            sim.set_active(sim.layer_quantizers("4"))
            want.append(float((sim.model(x).double() - ref).pow(2).mean()))
    assert local["4"] == pytest.approx(np.mean(want), rel=1e-6)


def test_analyze_writes_the_local_error(tmp_path):
    net = outlier_mlp()
    batches = [torch.randn(32, 16) for _ in range(2)]
    analyzer = analyzer_for(net, batches)
    analyzer.enable_per_layer_mse_loss(batches, 2)
    result = analyzer.analyze("tf", 8, 8, results_dir=tmp_path)
    assert list(result.per_layer_local_mse) == list(result.per_layer_local_sqnr_db) == list(result.per_layer_mse)
    assert max(result.per_layer_local_mse, key=result.per_layer_local_mse.get) == "2"
    on_disk = json.loads((tmp_path / "per_layer_local_mse_loss.json").read_text())
    assert on_disk == pytest.approx(result.per_layer_local_mse, rel=1e-12)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "per_layer_local_mse_loss.json" in summary["files"]
    assert tmp_path / "per_layer_local_mse_loss.json" in result.files
    assert summary["per_layer_local_mse"] == on_disk
    assert list(summary["per_layer_local_sqnr_db"]) == list(result.per_layer_mse)
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(qa.__file__).parent / "report" / "schema" / "summary.schema.json").read_text())
    jsonschema.validate(summary, schema)
    for key in ("per_layer_local_mse", "per_layer_local_sqnr_db"):
        assert schema["properties"][key] == {"$ref": "#/$defs/scores"}


def test_local_error_can_be_turned_off(tmp_path):
    batches = [torch.randn(8, 16) for _ in range(2)]
    analyzer = analyzer_for(outlier_mlp(), batches)
    analyzer.enable_per_layer_mse_loss(batches, 2, local_mse=False)
    result = analyzer.analyze("tf", 8, 8, results_dir=tmp_path)
    assert result.per_layer_mse and result.per_layer_local_mse == {} == result.per_layer_local_sqnr_db
    assert analyzer.mse_passes == {"fp32": 2, "quantized": 2, "local": 0}
    assert not (tmp_path / "per_layer_local_mse_loss.json").exists()


def _finite_and_keyed(result):
    assert result.per_layer_mse and list(result.per_layer_local_mse) == list(result.per_layer_mse)
    assert list(result.per_layer_local_sqnr_db) == list(result.per_layer_mse)
    assert all(math.isfinite(v) and v >= 0 for v in result.per_layer_local_mse.values())
    assert all(not math.isnan(v) for v in result.per_layer_local_sqnr_db.values())
    assert sum(result.per_layer_local_mse.values()) > 0  # 4-bit weights: some layer has an error of its own


def test_onnx_local_error_and_budget(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)
             for name, shape in (("w1", (8, 16)), ("b1", (16,)), ("w2", (16, 4)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    data = [{"x": rng.normal(size=(16, 8)).astype(np.float32)} for _ in range(2)]

    def calibrate(session):
        for feeds in data:
            session.run(None, feeds)

    analyzer = qa.QuantAnalyzer(model, data[0], calibrate, lambda session: 0.0, progress=False)
    analyzer.enable_per_layer_mse_loss(data, 2)
    result = analyzer.analyze("tf", 4, 8, results_dir=tmp_path / "a")
    _finite_and_keyed(result)
    first = next(iter(result.per_layer_mse))
    assert result.per_layer_local_mse[first] == result.per_layer_mse[first]
    analyzer.enable_per_layer_mse_loss(data, 2, mse_memory_budget=1)
    small = analyzer.analyze("tf", 4, 8, results_dir=tmp_path / "b")
    assert bits(small.per_layer_mse) == bits(result.per_layer_mse)
    assert bits(small.per_layer_local_mse) == bits(result.per_layer_local_mse)
    assert analyzer.mse_passes["fp32"] == 2 * len(result.per_layer_mse)


def test_keras_local_error_and_budget(tmp_path):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 6, 3))
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(x)
    y = keras.layers.Flatten(name="flat")(y)
    y = keras.layers.Dense(5, name="head")(y)
    model = keras.Model(x, y)
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(4, 6, 6, 3)).astype(np.float32) for _ in range(2)]

    def calibrate(m):
        for b in batches:
            m(b, training=False)

    analyzer = qa.QuantAnalyzer(model, None, calibrate, lambda m: 0.0, progress=False)
    analyzer.enable_per_layer_mse_loss(batches, 2)
    result = analyzer.analyze("tf", 4, 8, results_dir=tmp_path / "a")
    _finite_and_keyed(result)
    assert result.per_layer_local_mse["conv"] == result.per_layer_mse["conv"]
    assert result.per_layer_local_mse["head"] < result.per_layer_mse["head"]
    analyzer.enable_per_layer_mse_loss(batches, 2, mse_memory_budget=1)
    small = analyzer.analyze("tf", 4, 8, results_dir=tmp_path / "b")
    assert bits(small.per_layer_mse) == bits(result.per_layer_mse)
    assert bits(small.per_layer_local_mse) == bits(result.per_layer_local_mse)
