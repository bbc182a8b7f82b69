"""keras.ops calls in Functional models and the insides of MultiHeadAttention are quantized as a
deployed integer graph would be: each computing operation gets an output quantizer (shape-only
ones none), the attention projections their own weights, the attention core its MatMuls; what
stays in float is listed (real Keras 3, torch backend, CPU)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")

import qa  # noqa: E402
from qa.adapters.keras import KerasAdapter  # noqa: E402

L = keras.layers


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _batches(shape, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype("float32") for _ in range(n)]


def _analyzer(model, batches):
    refs = [_np(model(b)) for b in batches]

    def score(m):
        return -float(np.mean([np.mean((_np(m(b, training=False)) - r) ** 2) for b, r in zip(batches, refs)]))

    def calibrate(m):
        for b in batches:
            m(b, training=False)
    return qa.QuantAnalyzer(model, None, calibrate, score, progress=False)


def ops_net(seed=0):
    """d1 -> add(d1, x) -> matmul(s, transpose(s)) -> softmax -> reshape -> head, all keras.ops but the Dense layers."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((4, 8))
    h = L.Dense(8, name="d1")(x)
    s = keras.ops.add(h, x)
    scores = keras.ops.matmul(s, keras.ops.transpose(s, (0, 2, 1)))
    probs = keras.ops.softmax(scores * 0.5)
    flat = keras.ops.reshape(probs, (-1, 16))
    model = keras.Model(x, L.Dense(3, name="head")(flat))
    return model, scores


def _by_type(graph, op_type):
    found = [layer for layer in graph.layers if layer.op_type == op_type]
    assert len(found) == 1, (op_type, [(la.name, la.op_type) for la in graph.layers])
    return found[0]


def test_keras_ops_calls_are_layers_with_output_quantizers(tmp_path):
    model, scores = ops_net()
    user_ops = [op for op in model.operations if not isinstance(op, L.Layer)]
    nodes_before = [len(op._inbound_nodes) for op in user_ops]
    batches = _batches((5, 4, 8))
    analyzer = _analyzer(model, batches)
    graph = analyzer.adapter.graph
    assert graph.unquantized_ops == []
    assert [layer.op_type for layer in graph.layers] == ["Gemm", "Add", "Transpose", "MatMul", "Mul", "Softmax",
                                                         "Reshape", "Gemm"]
    add, matmul, softmax = _by_type(graph, "Add"), _by_type(graph, "MatMul"), _by_type(graph, "Softmax")
    transpose, reshape = _by_type(graph, "Transpose"), _by_type(graph, "Reshape")
    assert add.inputs == ["d1"] and sorted(matmul.inputs) == sorted([add.name, transpose.name])
    assert [q.name for q in add.quantizers] == [f"{add.name}_input_1", f"{add.name}_output_0"]  # x is argument 1
    # the user's operations are not the clone's: building the clone left their graph alone
    assert [len(op._inbound_nodes) for op in user_ops] == nodes_before
    assert all(op is not analyzer.adapter.model.operations[i] for i, op in enumerate(model.operations))
    for b in batches:
        np.testing.assert_array_equal(_np(analyzer.adapter.run(b)), _np(model(b)))
    result = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    for layer in (add, matmul, softmax):
        assert f"{layer.name}_output_0" in result.encodings, layer.name
    # shape-only operations get no output quantizer (data movement)
    assert not any(k.startswith((transpose.name, reshape.name)) for k in result.encodings)
    assert matmul.name in result.per_layer_quant_enabled and reshape.name not in result.per_layer_quant_enabled

    # only the matmul's output quantizer on: the model computes softmax(0.5 * fake_quant(matmul)) ...
    sim = analyzer.create_quantsim("tf", 8, 8)
    q = sim.quantizers[f"{matmul.name}_output_0"]
    probe = keras.Model(model.inputs, scores)
    b = batches[0]
    expected = keras.ops.softmax(keras.ops.convert_to_tensor(q.encoding.fake_quantize(_np(probe(b)))) * 0.5)
    expected = _np(model.get_layer("head")(keras.ops.reshape(expected, (-1, 16))))
    sim.set_active({q.name})
    got = _np(analyzer.adapter.run(b))
    sim.set_active(())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, _np(model(b)), rtol=0, atol=1e-7)


def attention_net(seed=0, layer=None, **call_kwargs):
    keras.utils.set_random_seed(seed)
    x = keras.Input((5, 8))
    mha = layer or L.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")
    y = mha(x, x, **call_kwargs)
    y = L.GlobalAveragePooling1D(name="gap")(y)
    return keras.Model(x, L.Dense(3, name="head")(y))


def test_multi_head_attention_projections_and_core_are_quantized(tmp_path):
    model = attention_net()
    batches = _batches((4, 5, 8))
    analyzer = _analyzer(model, batches)
    graph = analyzer.adapter.graph
    names = [layer.name for layer in graph.layers]
    softmax = names[4]
    assert names == ["mha/query", "mha/key", "mha/value", "mha/attention_scores", softmax, "mha/attention_context",
                     "mha/attention_output", "gap", "head"]
    assert softmax.startswith("mha/") and graph[softmax].op_type == "Softmax"
    assert [graph[n].op_type for n in names[:7]] == ["MatMul"] * 4 + ["Softmax"] + ["MatMul"] * 2
    assert graph["mha/attention_scores"].inputs == ["mha/query", "mha/key"]
    assert graph[softmax].inputs == ["mha/attention_scores"]
    assert graph["mha/attention_context"].inputs == [softmax, "mha/value"]
    assert graph["mha/attention_output"].inputs == ["mha/attention_context"]
    assert graph["gap"].inputs == ["mha/attention_output"]
    assert graph["mha/query"].model_input and graph["mha/value"].model_input
    assert graph.unquantized_ops == []
    # four projections, a kernel and a bias each: eight quantizers, none dropped
    params = [q.name for q, _ in analyzer.adapter.weights()]
    assert params[:8] == [f"mha/{p}_{w}" for p in ("query", "key", "value", "attention_output")
                          for w in ("weight", "bias")]
    assert len(params) == len(model.weights)
    for b in batches:  # the non-fused attention path the analysis runs computes the same
        np.testing.assert_allclose(_np(analyzer.adapter.run(b)), _np(model(b)), atol=1e-5, rtol=1e-5)

    sim = analyzer.create_quantsim("tf", 8, 4)
    assert sim.unused == []
    seen = {}

    def sink(layer, i, array):
        seen[layer] = array

    b = batches[0]
    with analyzer.adapter.capturing(sink):
        sim.set_active(())
        analyzer.adapter.run(b)
        q, k = seen["mha/query"], seen["mha/key"]
        float_scores = seen["mha/attention_scores"]
        sim.set_active({"mha/attention_scores_output_0"})
        quantized_run = _np(analyzer.adapter.run(b))
        quantized_scores = seen["mha/attention_scores"]
    sim.set_active(())
    # the scores are query . key / sqrt(key_dim), per head: [batch, heads, target, source]
    np.testing.assert_allclose(float_scores, np.einsum("btnh,bsnh->bnts", q, k) / 2.0, rtol=1e-5, atol=1e-5)
    assert len(np.unique(quantized_scores)) <= 16 < len(np.unique(float_scores))
    assert not np.allclose(quantized_run, _np(model(b)), atol=1e-6)
    result = analyzer.analyze(quant_scheme="tf", results_dir=tmp_path)
    assert {"mha/attention_scores_output_0", "mha/attention_context_output_0",
            "mha/attention_output_weight"} <= set(result.encodings)


def test_attention_called_twice_and_causal_is_one_layer_per_call():
    keras.utils.set_random_seed(1)
    x = keras.Input((4, 6))
    mha = L.MultiHeadAttention(num_heads=2, key_dim=3, name="mha")
    y = mha(x, x, use_causal_mask=True)
    y = mha(y, x, use_causal_mask=True)
    model = keras.Model(x, y)
    adapter = KerasAdapter(model)
    graph = adapter.graph
    assert graph["mha/attention_scores/call_1"].inputs == ["mha/query/call_1", "mha/key/call_1"]
    assert graph["mha/query/call_1"].inputs == ["mha/attention_output"]
    assert [q.name for q in graph["mha/query/call_1"].params] == ["mha/query_weight", "mha/query_bias"]
    assert graph["mha/query"].calls == 2
    b = _batches((3, 4, 6), 1)[0]
    np.testing.assert_allclose(_np(adapter.run(b)), _np(model(b)), atol=1e-5, rtol=1e-5)
    adapter.close()
    clone = adapter.model.get_layer("mha")
    assert "_compute_attention" not in vars(clone) and "call" not in vars(clone)


class CustomAttention(L.MultiHeadAttention):
    """An attention whose core qa cannot see (its own _compute_attention)."""

    def _compute_attention(self, *args, **kwargs):
        return super()._compute_attention(*args, **kwargs)


def test_an_attention_core_left_in_float_is_listed():
    model = attention_net(layer=CustomAttention(num_heads=2, key_dim=4, name="mha"))
    with pytest.warns(UserWarning, match="attention core"):
        analyzer = _analyzer(model, _batches((2, 5, 8), 1))
    graph = analyzer.adapter.graph
    assert graph.unquantized_ops == [
        "mha: the attention core of CustomAttention (scores MatMul + Softmax + weighted-sum MatMul)"]
    assert [layer.name for layer in graph.layers][:4] == ["mha/query", "mha/key", "mha/value", "mha/attention_output"]
    assert graph["mha/attention_output"].inputs == []  # made by the float core
    assert len([q for q, _ in analyzer.adapter.weights()]) == len(model.weights)


def test_a_constant_operand_of_a_matmul_is_a_weight_quantizer():
    """``keras.ops.matmul(x, W)`` with a constant W: W is the op's weight (one quantizer for both
    matmuls reading it), quantized when the op is on, W itself never modified."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 4)).astype("float32")
    x = keras.Input((8,))
    y = keras.ops.einsum("bi,ij->bj", keras.ops.relu(keras.ops.matmul(x, w)), np.ascontiguousarray(w.T))
    model = keras.Model(x, [y, keras.ops.matmul(x, w)])
    batches = _batches((4, 8), 2)
    analyzer = qa.QuantAnalyzer(model, None, lambda m: [m(b) for b in batches], lambda m: 0.0, progress=False)
    graph = analyzer.adapter.graph
    linear = [la for la in graph.layers if la.op_type in ("MatMul", "Einsum")]
    assert [la.op_type for la in linear] == ["MatMul", "Einsum", "MatMul"]
    first, einsum, second = linear
    weight = first.quantizer("param", "weight")
    assert weight.name == f"{first.name}_weight" and weight.axis == 1
    assert second.quantizer("param", "weight") is weight  # the same array: one quantizer
    assert einsum.quantizer("param", "weight").name == f"{einsum.name}_weight"
    sim = analyzer.create_quantsim("tf", 4, 8)
    wq = sim.quantizers[weight.name].encoding.fake_quantize(w)
    copy = w.copy()
    sim.set_active({weight.name})
    np.testing.assert_allclose(_np(analyzer.adapter.run(batches[0])[1]), batches[0] @ wq, rtol=1e-5, atol=1e-5)
    sim.set_active(())
    np.testing.assert_array_equal(_np(analyzer.adapter.run(batches[0])[1]), _np(model(batches[0])[1]))
    np.testing.assert_array_equal(w, copy)


def test_a_model_quantized_by_keras_is_refused():
    keras.utils.set_random_seed(0)
    x = keras.Input((8,))
    model = keras.Model(x, L.Dense(3, name="head")(L.Dense(4, name="fc")(x)))
    model.quantize("int8")  # its Dense layers run quantized_call: qa's quantizers would never run
    with pytest.raises(qa.QAValueError, match=r"quantized already.*fc \(int8\), head \(int8\)"):
        KerasAdapter(model)


def test_an_operation_reading_a_layer_variable_shares_its_quantizer():
    """``keras.ops.einsum(eq, h, emb.embeddings)`` reads the embedding layer's variable: the clone's
    operation reads the clone's copy (quantized with the layer's one quantizer), never the user's;
    a free ``keras.Variable`` operand of a matmul is a weight of its own."""
    keras.utils.set_random_seed(0)
    tokens = keras.Input((5,), dtype="int32")
    emb = L.Embedding(10, 4, name="emb")
    h = L.Dense(4, name="fc")(emb(tokens))
    free = keras.Variable(np.random.default_rng(1).normal(size=(4, 3)).astype("float32"), name="free")
    logits = keras.ops.einsum("btd,vd->btv", h, emb.embeddings)
    model = keras.Model(tokens, [logits, keras.ops.matmul(h, free)])
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 10, size=(3, 5)).astype("int32") for _ in range(2)]
    analyzer = qa.QuantAnalyzer(model, None, lambda m: [m(b) for b in batches], lambda m: 0.0, progress=False)
    graph = analyzer.adapter.graph
    einsum, matmul = _by_type(graph, "Einsum"), _by_type(graph, "MatMul")
    assert einsum.quantizer("param", "weight") is graph["emb"].quantizer("param", "weight")
    assert matmul.quantizer("param", "weight").name == f"{matmul.name}_weight"
    table, free_values = _np(emb.embeddings).copy(), _np(free).copy()
    sim = analyzer.create_quantsim("tf", 4, 8)
    b = batches[0]
    for name in ("emb_weight", f"{matmul.name}_weight"):
        sim.set_active({name})
        quantized = [_np(t) for t in analyzer.adapter.run(b)]
        sim.set_active(())
        float_run = [_np(t) for t in analyzer.adapter.run(b)]
        k = 2 if name == "emb_weight" else 1  # emb's table feeds both outputs; the free weight only the matmul
        assert sum(not np.allclose(q, f, atol=1e-7) for q, f in zip(quantized, float_run)) == k, name
    clone_emb = analyzer.adapter.model.get_layer("emb")
    sim.set_active(sim.layer_quantizers(einsum.name))  # the einsum's own quantizers include the shared table
    wq = sim.quantizers["emb_weight"].encoding.fake_quantize(table)
    np.testing.assert_array_equal(_np(clone_emb.embeddings), wq)
    seen = {}
    with analyzer.adapter.capturing(lambda layer, i, array: seen.setdefault(layer, array)):
        got = _np(analyzer.adapter.run(b)[0])
    want = np.einsum("btd,vd->btv", seen["fc"], wq).astype(np.float32)  # the einsum reads the quantized table
    np.testing.assert_allclose(got, sim.quantizers[f"{einsum.name}_output_0"].encoding.fake_quantize(want),
                               rtol=1e-5, atol=1e-5)
    sim.set_active(())
    np.testing.assert_array_equal(_np(emb.embeddings), table)  # the user's variables are never written
    np.testing.assert_array_equal(_np(free), free_values)


def test_sublayer_names_are_the_same_in_every_analysis():
    """Keras numbers automatic layer names per process (softmax_1, softmax_2, ...); qa names the
    sublayers of a layer so that two analyses of the same model name every layer the same."""
    import numpy as np

    import keras
    from qa.adapters.keras import KerasAdapter

    def make():
        i = keras.Input((5, 8))
        h = keras.layers.MultiHeadAttention(2, 4, name="mha")(i, i)
        return keras.Model(i, keras.layers.Dense(2, name="out")(h))

    names = [[layer.name for layer in KerasAdapter(make(), np.zeros((1, 5, 8), np.float32)).graph.layers]
             for _ in range(3)]
    assert names[0] == names[1] == names[2]
    assert "mha/softmax" in names[0]
