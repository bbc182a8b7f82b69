"""The ONNX adapter's graph passes, each on its own on small graphs built with onnx.helper: names,
order, constants, types, linear units, batch-norm folding (values against numpy), quantizer
insertion and pruning."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import qa  # noqa: E402
from qa.adapters.onnx.linear import find_linear_units, fold_batch_norms  # noqa: E402
from qa.adapters.onnx.passes import (PASSES, classify_constants, infer_types, name_nodes,  # noqa: E402
                                     prepare, prune_dead_nodes, sort_nodes)
from qa.adapters.onnx.quantizers import insert_quantizers  # noqa: E402
from qa.adapters.onnx.work import Work  # noqa: E402

import onnx_models as om  # noqa: E402

FLOAT = TensorProto.FLOAT


def vi(name, shape=None, elem=FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def node(op, ins, outs, name="", **attrs):
    return helper.make_node(op, ins, outs, name=name, **attrs)


def model_of(nodes, inputs, outputs, initializers=(), opset=17):
    """A model as written (not run through onnx's checker, which refuses unsorted graphs)."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def run_until(model, last, ignored=()):
    """A Work on ``model`` after every pass up to and including ``last``."""
    work = Work.start(model, "test model", ignored)
    for step in PASSES[:PASSES.index(last) + 1]:
        step(work)
    return work


def bn_params(prefix, c, seed=0):
    rng = np.random.default_rng(seed)
    return {f"{prefix}_scale": rng.uniform(0.5, 1.5, c).astype(np.float32),
            f"{prefix}_bias": rng.uniform(-0.3, 0.3, c).astype(np.float32),
            f"{prefix}_mean": rng.uniform(-0.5, 0.5, c).astype(np.float32),
            f"{prefix}_var": rng.uniform(0.5, 2.0, c).astype(np.float32)}


def folded_reference(w, b, bn, eps, axis):
    """W * s and (b - mean) * s + beta in float32 step by step (as AIMET folds), s = gamma / sqrt(var + eps)."""
    f = np.float32
    s = bn["bn_scale"].astype(f) / np.sqrt(bn["bn_var"].astype(f) + f(eps))
    shape = [1] * w.ndim
    shape[axis] = -1
    b = np.zeros(len(s), f) if b is None else b.astype(f)
    return w.astype(f) * s.reshape(shape), (b - bn["bn_mean"].astype(f)) * s + bn["bn_bias"].astype(f)


# ---- name_nodes -----------------------------------------------------------------------------------

def test_name_nodes_names_unnamed_nodes_by_type_and_index_and_copies_them():
    model = model_of([node("Relu", ["x"], ["a"]), node("Relu", ["a"], ["b"], name="Relu_0"),
                      node("Sigmoid", ["b"], ["c"], name="act"), node("Tanh", ["c"], ["d"], name="act")],
                     [vi("x", [2])], [vi("d", [2])])
    work = Work.start(model)
    name_nodes(work)
    # an unnamed node never takes a name the file gives another node; repeated names get a suffix
    assert [n.name for n in work.nodes] == ["Relu_0_1", "Relu_0", "act", "act_1"]
    assert [n.name for n in model.graph.node] == ["", "Relu_0", "act", "act"]  # the user's nodes: untouched
    work.nodes[0].op_type = "Elu"
    assert model.graph.node[0].op_type == "Relu"


# ---- sort_nodes -------------------------------------------------------------------------------------

def _sorted_names(nodes, inputs=("x",), outputs=("z",)):
    model = model_of(nodes, [vi(i, [2]) for i in inputs], [vi(o, [2]) for o in outputs])
    work = Work.start(model)
    name_nodes(work)
    sort_nodes(work)
    return [n.name for n in work.nodes]


def test_sort_nodes_keeps_a_valid_order_and_fixes_an_invalid_one_stably():
    valid = [node("Relu", ["x"], ["a"], name="a"), node("Neg", ["x"], ["b"], name="b"),
             node("Add", ["a", "b"], ["z"], name="z")]
    assert _sorted_names(valid) == ["a", "b", "z"]
    # z first (it needs a and b), b before a in the file: the earliest ready node goes first
    shuffled = [node("Add", ["a", "b"], ["z"], name="z"), node("Neg", ["x"], ["b"], name="b"),
                node("Relu", ["x"], ["a"], name="a")]
    assert _sorted_names(shuffled) == ["b", "a", "z"]
    # a chain written backwards
    backwards = [node("Neg", ["b"], ["z"], name="n3"), node("Neg", ["a"], ["b"], name="n2"),
                 node("Neg", ["x"], ["a"], name="n1")]
    assert _sorted_names(backwards) == ["n1", "n2", "n3"]


def test_sort_nodes_puts_a_subgraph_after_what_it_reads_from_the_outer_graph():
    branch = helper.make_graph([node("Identity", ["late"], ["o"], name="inner")], "b", [], [vi("o")])
    nodes = [node("If", ["cond"], ["z"], name="if", then_branch=branch, else_branch=branch),
             node("Relu", ["x"], ["late"], name="producer")]
    assert _sorted_names(nodes, inputs=("x", "cond")) == ["producer", "if"]


def test_sort_nodes_rejects_undefined_tensors_and_cycles():
    with pytest.raises(qa.QAValueError, match="'n' reads 'ghost', which nothing defines"):
        _sorted_names([node("Add", ["x", "ghost"], ["z"], name="n")])
    with pytest.raises(qa.QAValueError, match="cycle"):
        _sorted_names([node("Add", ["x", "b"], ["a"], name="p"), node("Relu", ["a"], ["b"], name="q"),
                       node("Relu", ["a"], ["z"], name="r")])


# ---- classify_constants --------------------------------------------------------------------------

def test_classify_constants_evaluates_weight_plumbing_and_finds_runtime_tensors():
    w = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    nodes = [om.constant("w", w),
             node("Transpose", ["w"], ["wt"], name="t", perm=[2, 0, 1]),
             node("Reshape", ["wt", "shape"], ["wr"], name="r"),
             node("Unsqueeze", ["wr", "axes"], ["wu"], name="u"),
             node("Squeeze", ["wu", "axes"], ["ws"], name="s"),
             node("Flatten", ["wt"], ["wf"], name="f", axis=2),
             node("Cast", ["wr"], ["wc"], name="c", to=TensorProto.FLOAT16),
             node("Mul", ["wr", "wr"], ["w2"], name="m"),  # an op on constants that is not evaluated
             node("RandomNormal", [], ["noise"], name="rn", shape=[4, 6]),
             node("MatMul", ["x", "wr"], ["y"], name="mm"),
             node("Add", ["y", "noise"], ["z"], name="add")]
    model = model_of(nodes, [vi("x", [1, 4])], [vi("z", [1, 6])],
                     [init("shape", np.array([0, -1], np.int64)), init("axes", np.array([0], np.int64))])
    work = run_until(model, classify_constants)
    arrays = work.consts.arrays
    np.testing.assert_array_equal(arrays["wt"], w.transpose(2, 0, 1))
    np.testing.assert_array_equal(arrays["wr"], w.transpose(2, 0, 1).reshape(4, 6))
    np.testing.assert_array_equal(arrays["wu"], w.transpose(2, 0, 1).reshape(1, 4, 6))
    np.testing.assert_array_equal(arrays["ws"], arrays["wr"])
    np.testing.assert_array_equal(arrays["wf"], w.transpose(2, 0, 1).reshape(8, 3))
    assert arrays["wc"].dtype == np.float16 and arrays["wt"].flags["C_CONTIGUOUS"]
    assert "w2" not in arrays
    assert work.constant_nodes == {"Constant_0", "t", "r", "u", "s", "f", "c", "m"}
    assert {"x", "noise", "y", "z"} <= work.runtime and not {"wr", "w2"} & work.runtime
    assert work.const_float("wr") and not work.const_float("y") and not work.const_float("shape")


def test_classify_constants_follows_the_models_opset():
    """Squeeze takes its axes as an attribute before opset 13 and as an input from 13."""
    w = np.ones((1, 3), np.float32)
    old = model_of([om.constant("w", w), node("Squeeze", ["w"], ["ws"], name="s", axes=[0]),
                    node("Mul", ["x", "ws"], ["z"], name="m")], [vi("x", [3])], [vi("z", [3])], opset=11)
    assert run_until(old, classify_constants).consts.arrays["ws"].shape == (3,)


# ---- infer_types -----------------------------------------------------------------------------------

def test_infer_types_gives_types_and_ranks():
    nodes = [node("Cast", ["x"], ["xd"], name="c", to=TensorProto.DOUBLE), node("Shape", ["xd"], ["s"], name="sh"),
             om.constant("k", np.float32(2.0)), node("Mul", ["x", "k"], ["z"], name="m")]
    model = model_of(nodes, [vi("x", ["n", 3])], [vi("z", None), vi("s", None, TensorProto.INT64)])
    work = run_until(model, infer_types)
    assert work.types["xd"] == TensorProto.DOUBLE and work.types["s"] == TensorProto.INT64
    assert work.types["k"] == FLOAT and work.types["z"] == FLOAT
    assert work.ranks["xd"] == 2 and work.ranks["s"] == 1
    assert work.is_float("xd") and not work.is_float("s")


def test_infer_types_asks_onnxruntime_about_what_shape_inference_cannot_type():
    """com.microsoft.Gelu: onnx does not know it, onnxruntime does."""
    nodes = [node("Gelu", ["x"], ["g"], name="gelu", domain="com.microsoft"), node("Relu", ["g"], ["z"], name="r")]
    graph = helper.make_graph(nodes, "g", [vi("x", [2, 3])], [vi("z", None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)], ir_version=8)
    work = run_until(model, infer_types)
    assert work.types["g"] == FLOAT and work.types["z"] == FLOAT


# ---- find_linear_units ------------------------------------------------------------------------------

def test_find_linear_units_weight_axes_and_matmul_add_pairs():
    rng = np.random.default_rng(0)
    w_conv, w_gemm, w_mm = (rng.standard_normal(s).astype(np.float32) for s in ((4, 2, 3, 3), (5, 4), (5, 6)))
    nodes = [node("Conv", ["x", "wc", "bc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             node("GlobalAveragePool", ["c"], ["p"], name="pool"), node("Flatten", ["p"], ["f"], name="flat"),
             node("Gemm", ["f", "wg"], ["g"], name="gemm", transB=1),
             node("MatMul", ["g", "wm"], ["m"], name="fc"), node("Add", ["bm", "m"], ["a"], name="bias"),
             node("MatMul", ["a", "wm2"], ["m2"], name="fc2"), node("Add", ["m2", "m2"], ["z"], name="twice")]
    model = model_of(nodes, [vi("x", [1, 2, 4, 4])], [vi("z", [1, 6])],
                     [init("wc", w_conv), init("bc", np.zeros(4, np.float32)), init("wg", w_gemm),
                      init("wm", w_mm), init("bm", np.ones(6, np.float32)), init("wm2", np.eye(6, dtype=np.float32))])
    work = run_until(model, find_linear_units)
    assert set(work.units) == {"conv", "gemm", "fc", "fc2"}
    assert [work.units[n].weight_axis for n in ("conv", "gemm", "fc", "fc2")] == [0, 0, 1, 1]
    fc = work.units["fc"]
    assert fc.bias_node.name == "bias" and fc.bias_slot == 0 and work.absorbed == {"bias"}
    np.testing.assert_array_equal(fc.bias, np.ones(6, np.float32))
    assert work.units["fc2"].bias_node is None  # its output is read twice: the Add is a layer of its own
    np.testing.assert_array_equal(work.units["conv"].bias, np.zeros(4, np.float32))


def test_find_linear_units_skips_ignored_runtime_weights_and_grouped_deconv_axes():
    w = np.ones((4, 1, 3, 3), np.float32)
    nodes = [node("ConvTranspose", ["x", "w"], ["d"], name="deconv", group=4),
             node("Conv", ["d", "w"], ["c"], name="ignored", group=4, pads=[1, 1, 1, 1]),
             node("MatMul", ["c", "c"], ["z"], name="mm")]  # a run-time weight: not a unit
    model = model_of(nodes, [vi("x", [1, 4, 3, 3])], [vi("z", None)], [init("w", w)])
    work = run_until(model, find_linear_units, ignored=["ignored"])
    assert list(work.units) == ["deconv"] and work.units["deconv"].weight_axis is None


# ---- fold_batch_norms --------------------------------------------------------------------------------

def _bn_node(x, out, name="bn", eps=1e-3, **attrs):
    return node("BatchNormalization", [x, "bn_scale", "bn_bias", "bn_mean", "bn_var"], [out], name=name,
                epsilon=eps, **attrs)


def test_fold_batch_norms_into_conv_values_equal_numpy():
    rng = np.random.default_rng(1)
    w, b, bn = rng.standard_normal((4, 2, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32), \
        bn_params("bn", 4)
    nodes = [node("Conv", ["x", "w", "b"], ["c"], name="conv"), _bn_node("c", "y"), node("Relu", ["y"], ["z"])]
    model = model_of(nodes, [vi("x", [1, 2, 5, 5])], [vi("z", None)],
                     [init("w", w), init("b", b)] + [init(k, v) for k, v in bn.items()])
    work = run_until(model, fold_batch_norms)
    assert work.folded == [("bn", "conv")]
    assert [n.op_type for n in work.nodes] == ["Conv", "Relu"] and work.nodes[0].output[0] == "y"
    expect_w, expect_b = folded_reference(w, b, bn, 1e-3, axis=0)
    unit = work.units["conv"]
    np.testing.assert_array_equal(unit.weight, expect_w)
    np.testing.assert_array_equal(unit.bias, expect_b)
    assert unit.weight.dtype == np.float32 and unit.bias.dtype == np.float32


def test_fold_batch_norms_into_gemm_folds_beta_and_gives_a_biasless_conv_a_bias():
    rng = np.random.default_rng(2)
    wg, bg, wc = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(3).astype(np.float32), \
        rng.standard_normal((3, 3, 1, 1)).astype(np.float32)
    bn = bn_params("bn", 3)
    nodes = [node("Gemm", ["x", "wg", "bg"], ["g"], name="gemm", transB=1, beta=0.5), _bn_node("g", "y", eps=1e-5),
             node("Unsqueeze", ["y", "axes"], ["y4"], name="u"),
             node("Conv", ["y4", "wc"], ["c"], name="conv"), _bn_node("c", "z", name="bn2")]
    model = model_of(nodes, [vi("x", [2, 4])], [vi("z", None)],
                     [init("wg", wg), init("bg", bg), init("wc", wc), init("axes", np.array([2, 3], np.int64))]
                     + [init(k, v) for k, v in bn.items()])
    work = run_until(model, fold_batch_norms)
    assert work.folded == [("bn", "gemm"), ("bn2", "conv")]
    gemm = work.units["gemm"]
    expect_w, expect_b = folded_reference(wg, bg * np.float64(0.5), bn, 1e-5, axis=0)
    np.testing.assert_array_equal(gemm.weight, expect_w)
    np.testing.assert_array_equal(gemm.bias, expect_b)
    assert helper.get_attribute_value(next(a for a in gemm.node.attribute if a.name == "beta")) == 1.0
    conv = work.units["conv"]
    assert conv.node.input[2] == "qa::conv::bias"  # it had none: folding gives it one
    np.testing.assert_array_equal(conv.bias, folded_reference(wc, None, bn, 1e-3, axis=0)[1])


def test_fold_batch_norms_after_matmul_adds_a_bias_add():
    rng = np.random.default_rng(3)
    w, bn = rng.standard_normal((6, 4)).astype(np.float32), bn_params("bn", 4)
    model = model_of([node("MatMul", ["x", "w"], ["m"], name="fc"), _bn_node("m", "y")],
                     [vi("x", ["batch", 6])], [vi("y", ["batch", 4])], [init("w", w)] + [init(k, v) for k, v in bn.items()])
    work = run_until(model, fold_batch_norms)
    assert [(n.name, list(n.input), list(n.output)) for n in work.nodes] == [
        ("fc", ["x", "w"], ["qa::fc::matmul"]), ("fc/bias_add", ["qa::fc::matmul", "qa::fc::bias"], ["y"])]
    assert work.absorbed == {"fc/bias_add"} and work.types["qa::fc::matmul"] == FLOAT
    expect_w, expect_b = folded_reference(w, None, bn, 1e-3, axis=1)
    np.testing.assert_array_equal(work.units["fc"].weight, expect_w)
    np.testing.assert_array_equal(work.units["fc"].bias, expect_b)


def test_fold_batch_norms_leaves_what_cannot_fold():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 2, 1, 1)).astype(np.float32)
    bn = bn_params("bn", 4)
    nodes = [node("Conv", ["x", "w"], ["c1"], name="read_twice"), _bn_node("c1", "y1", name="bn1"),
             node("Relu", ["c1"], ["r"], name="r"),
             node("Conv", ["x", "w"], ["c2"], name="conv2"), _bn_node("c2", "y2", name="ignored"),
             node("Conv", ["x", "w"], ["c3"], name="conv3"),
             node("BatchNormalization", ["c3", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["y3", "rm", "rv"],
                  name="training", training_mode=1),
             node("Sum", ["y1", "r", "y2", "y3"], ["z"], name="sum")]
    model = model_of(nodes, [vi("x", [1, 2, 3, 3])], [vi("z", None)], [init("w", w)] + [init(k, v) for k, v in bn.items()],
                     opset=15)
    work = run_until(model, fold_batch_norms, ignored=["ignored"])
    assert work.folded == [] and sum(n.op_type == "BatchNormalization" for n in work.nodes) == 3
    np.testing.assert_array_equal(work.units["conv2"].weight, w)


def test_fold_batch_norms_refuses_a_unit_whose_weight_other_nodes_read():
    """A tied weight (one initializer, two convs) keeps its values: the batch norm after the second
    conv stays a node, and the reason is recorded."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((2, 2, 1, 1)).astype(np.float32)
    bn = bn_params("bn", 2)
    nodes = [node("Conv", ["x", "w"], ["c1"], name="conv1"), node("Relu", ["c1"], ["r"], name="relu"),
             node("Conv", ["r", "w"], ["c2"], name="conv2"), _bn_node("c2", "y", name="bn")]
    model = model_of(nodes, [vi("x", [1, 2, 3, 3])], [vi("y", None)],
                     [init("w", w)] + [init(k, v) for k, v in bn.items()])
    work = run_until(model, fold_batch_norms)
    assert work.folded == []
    assert work.unfolded == [("bn", "conv2", "its weight 'w' is shared with conv1")]
    assert not work.units["conv2"].folded
    np.testing.assert_array_equal(work.units["conv2"].weight, w)


@pytest.mark.parametrize("kind", ["ConvTranspose", "Conv", "Gemm", "MatMul"])
def test_fold_batch_norms_through_a_bias_add_keeps_the_fp32_outputs(kind):
    """A linear op whose bias is a separate Add of a per-channel constant, then a batch norm: the
    bias and the batch norm fold into the op (the Add and the batch norm go), the outputs stay."""
    model = om.bias_add_bn(kind)
    work = run_until(model, fold_batch_norms)
    assert work.folded == [("bn", "linear")]
    assert [n.op_type for n in work.nodes if n.name not in work.absorbed] == [kind, "Relu"]
    unit = work.units["linear"]
    w, b = om.onnx_weight(model, "w"), om.onnx_weight(model, "b").reshape(-1)
    bn = {k: om.onnx_weight(model, k) for k in ("bn_scale", "bn_bias", "bn_mean", "bn_var")}
    expect_w, expect_b = folded_reference(w, b, bn, 1e-3, axis=unit.weight_axis)
    np.testing.assert_allclose(unit.weight, expect_w, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(unit.bias.reshape(-1), expect_b, rtol=1e-6, atol=1e-6)
    shape = [3, 4, 5, 5] if kind.startswith("Conv") else [3, 4]
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    adapter = qa.adapters.onnx.OnnxAdapter(model, {"x": x})
    assert adapter.graph.folded_batch_norms == [("bn", "linear")]
    assert [layer.name for layer in adapter.graph.layers] == ["linear", "relu"]
    np.testing.assert_allclose(adapter.run({"x": x})[0], om.plain_run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_fold_batch_norms_through_a_bias_add_leaves_what_cannot_fold():
    """The Add's constant is not one value per channel, or the linear op's output is read twice:
    nothing folds and the graph stays as it was."""
    model = om.bias_add_bn("Conv")
    for t in model.graph.initializer:
        if t.name == "b":  # one value per column: not a per-channel bias
            t.CopyFrom(numpy_helper.from_array(np.linspace(-1, 1, 5, dtype=np.float32), "b"))
    work = run_until(model, fold_batch_norms)
    assert work.folded == [] and [n.op_type for n in work.nodes] == ["Conv", "Add", "BatchNormalization", "Relu"]
    model = om.bias_add_bn("ConvTranspose")
    model.graph.node.append(node("Neg", ["y"], ["neg"], name="second_reader"))
    model.graph.output.append(vi("neg"))
    work = run_until(model, fold_batch_norms)
    assert work.folded == [] and "bias_add" in [n.name for n in work.nodes]


# ---- insert_quantizers ------------------------------------------------------------------------------

def test_insert_quantizers_layers_parameters_and_points():
    rng = np.random.default_rng(5)
    w, b = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    branch = helper.make_graph([node("Identity", ["r"], ["o"], name="inner")], "b", [], [vi("o")])
    nodes = [node("MatMul", ["x", "w"], ["m"], name="fc"), node("Add", ["m", "b"], ["a"], name="fc_bias"),
             node("Relu", ["a"], ["r"], name="relu"), node("Reshape", ["r", "shape"], ["s"], name="reshape"),
             node("LayerNormalization", ["s", "g", "beta"], ["ln"], name="ln", axis=-1),
             node("Shape", ["ln"], ["shp"], name="shape_of"),  # no float output: not a layer
             node("Neg", ["ln"], ["neg"], name="skip"),
             node("If", ["cond"], ["iff"], name="choose", then_branch=branch, else_branch=branch),
             node("Add", ["neg", "iff"], ["z"], name="out")]
    model = model_of(nodes, [vi("x", ["n", 6]), vi("cond", [], TensorProto.BOOL)],
                     [vi("z", None), vi("shp", None, TensorProto.INT64)],
                     [init("w", w), init("b", b), init("shape", np.array([-1, 4], np.int64)),
                      init("g", np.ones(4, np.float32)), init("beta", np.zeros(4, np.float32))])
    work = run_until(model, insert_quantizers, ignored=["skip"])
    layers = {layer.name: layer for layer in work.layers}
    assert list(layers) == ["fc", "relu", "reshape", "ln", "out"]
    assert layers["fc"].type_name == "MatMul+Add" and layers["fc"].model_input
    assert [q.name for q in layers["fc"].quantizers] == ["fc_weight", "fc_bias", "fc_input_0", "fc_output_0"]
    assert [q.name for q in layers["reshape"].quantizers] == ["reshape_output_0"]  # data movement too
    assert [q.name for q in layers["ln"].params] == ["ln_weight", "ln_bias"]
    assert layers["out"].inputs == [] and layers["out"].model_output  # 'skip' and the If are no layers
    assert work.unquantized == ["If 'choose' (with its subgraphs)"]
    # parameters read graph inputs carrying the (unfolded) values; quantizer points rewire tensors
    assert list(work.params) == ["fc_weight", "fc_bias", "ln_weight", "ln_bias"]
    np.testing.assert_array_equal(work.params["fc_weight"].original, w)
    fc, bias_add = work.nodes[0], work.nodes[1]
    assert list(fc.input) == ["qa::fc_input_0", "qa::fc_weight"]
    assert list(bias_add.input) == ["m", "qa::fc_bias"] and list(bias_add.output) == ["qa::fc_output_0::raw"]
    points = {p.quantizer: p for p in work.points}
    assert (points["fc_input_0"].src, points["fc_input_0"].dst, points["fc_input_0"].is_input) == \
        ("x", "qa::fc_input_0", True)
    out = points["fc_output_0"]
    assert (out.src, out.dst, out.node, out.slot) == ("qa::fc_output_0::raw", "a", "fc_bias", 0)
    assert out.inputs == tuple(f"qa::fc_output_0::{s}" for s in ("inv", "scale", "lo", "hi", "on"))


def test_insert_quantizers_shares_a_tensor_read_by_several_layers():
    """One initializer read as the weight of two MatMuls and as data by an Add: one graph input, one
    quantizer named after the first layer and listed by both, and the Add reads the same input."""
    w = np.arange(16, dtype=np.float32).reshape(4, 4) / 16
    nodes = [node("MatMul", ["x", "w"], ["m1"], name="fc1"), node("MatMul", ["m1", "w"], ["m2"], name="fc2"),
             node("Add", ["m2", "w"], ["z"], name="plus_w")]
    model = model_of(nodes, [vi("x", [4, 4])], [vi("z", None)], [init("w", w)])
    work = run_until(model, insert_quantizers)
    layers = {layer.name: layer for layer in work.layers}
    assert [q.name for q in layers["fc1"].params] == ["fc1_weight"]
    assert layers["fc2"].params == layers["fc1"].params and layers["fc2"].params[0] is layers["fc1"].params[0]
    assert layers["plus_w"].params == []
    assert list(work.params) == ["fc1_weight"]
    assert [list(n.input)[1] for n in work.nodes] == ["qa::fc1_weight"] * 3
    assert prune_dead_nodes(work) == []  # nothing reads the initializer any more


def test_insert_quantizers_ties_a_tensor_read_through_weight_plumbing():
    """Layers that read one stored table directly and through Transpose / Identity + Cast: one
    graph input on the stored values; the plumbing stays and reads it; the table goes."""
    model = om.tied_through_plumbing()
    work = run_until(model, insert_quantizers)
    layers = {layer.name: layer for layer in work.layers}
    assert [q.name for q in layers["embed"].params] == ["embed_weight"]
    assert layers["head"].params == layers["embed"].params == layers["back"].params
    np.testing.assert_array_equal(work.params["embed_weight"].original, om.onnx_weight(model, "table"))
    inputs = {n.name: list(n.input) for n in work.nodes}
    assert inputs["embed"][0] == inputs["head_t"][0] == inputs["alias"][0] == "qa::embed_weight"
    assert inputs["head"][1] == "table_t" and inputs["back"][1] == "table_c"  # read through the plumbing
    assert [t.name for t in prune_dead_nodes(work)] == ["bn_mean", "bn_var"]  # the batch norm's (unfolded)
    assert {"head_t", "alias", "as_float"} <= {n.name for n in work.nodes}


# ---- prune_dead_nodes and prepare ------------------------------------------------------------------

def test_prune_dead_nodes_drops_rewired_weight_plumbing_and_unused_initializers():
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    nodes = [node("Transpose", ["w_stored"], ["w"], name="wt", perm=[1, 0]),
             node("MatMul", ["x", "w"], ["m"], name="fc"),
             node("Reshape", ["m", "shape"], ["z"], name="reshape")]  # 'shape' stays: something reads it
    model = model_of(nodes, [vi("x", [2, 3])], [vi("z", [8])],
                     [init("w_stored", w), init("shape", np.array([-1], np.int64))])
    work = run_until(model, insert_quantizers)
    np.testing.assert_array_equal(work.params["fc_weight"].original, w.T)
    initializers = prune_dead_nodes(work)
    assert [n.name for n in work.nodes] == ["fc", "reshape"]
    assert [t.name for t in initializers] == ["shape"]


def test_prepare_runs_every_pass_and_leaves_the_model_alone():
    assert PASSES == (name_nodes, sort_nodes, classify_constants, infer_types, find_linear_units, fold_batch_norms,
                      insert_quantizers)
    model = om.conv_bn_constants()
    before = model.SerializeToString()
    graph, prepared = prepare(model, "test model")
    assert model.SerializeToString() == before
    assert graph.folded_batch_norms == [("BatchNormalization_17", "conv1"), ("BatchNormalization_20", "conv2")]
    assert [layer.name for layer in graph.layers][:3] == ["conv1", "Relu_18", "conv2"]
    # the weight plumbing went, but for the statistics of the batch norm that stays a layer
    assert [n.output[0] for n in prepared.nodes if n.op_type == "Constant"] == ["bn3_mean", "bn3_var"]
    assert not prepared.initializers
    assert {p.quantizer for p in prepared.points} == {q.name for q in graph.quantizers() if not q.is_param}
