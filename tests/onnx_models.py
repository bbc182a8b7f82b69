"""Small ONNX models built with onnx.helper for the ONNX adapter tests (no exporter involved)."""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT

# The IR version each opset needs (onnx.helper's default may be newer than onnxruntime reads).
_IR = {11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}


def model(nodes, inputs, outputs, initializers=(), opset: int = 17, name: str = "g") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=_IR.get(opset, 8))
    onnx.checker.check_model(m)
    return m


def constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    """A Constant node (some exporters put weights there instead of in initializers)."""
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _bn_params(prefix: str, c: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    return {f"{prefix}_scale": rng.uniform(0.5, 1.5, c).astype(np.float32),
            f"{prefix}_bias": rng.uniform(-0.3, 0.3, c).astype(np.float32),
            f"{prefix}_mean": rng.uniform(-0.5, 0.5, c).astype(np.float32),
            f"{prefix}_var": rng.uniform(0.5, 2.0, c).astype(np.float32)}


def conv_bn_constants(opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """Conv -> BN -> Relu -> Conv -> BN -> Add(residual) -> BN -> Relu -> GAP -> Flatten -> Gemm.

    Weights of the first conv, every BN and the Gemm are Constant nodes; the second conv's are
    initializers. The first two BNs fold; the third follows an Add and stays a layer.
    Nodes are unnamed except the convs (names are generated from the op type and position).
    """
    rng = _rng(seed)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    b1 = rng.uniform(-0.1, 0.1, 8).astype(np.float32)
    w2 = (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32)
    wf = (rng.standard_normal((10, 8)) * 0.5).astype(np.float32)
    bf = rng.uniform(-0.1, 0.1, 10).astype(np.float32)
    bn = {**_bn_params("bn1", 8, rng), **_bn_params("bn2", 8, rng), **_bn_params("bn3", 8, rng)}
    nodes = [constant("w1", w1), constant("b1", b1)]
    nodes += [constant(k, v) for k, v in bn.items()]
    nodes += [constant("wf", wf), constant("bf", bf)]
    nodes += [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1_scale", "bn1_bias", "bn1_mean", "bn1_var"], ["n1"],
                         epsilon=1e-5),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "bn2_scale", "bn2_bias", "bn2_mean", "bn2_var"], ["n2"]),
        helper.make_node("Add", ["n2", "r1"], ["s"]),
        helper.make_node("BatchNormalization", ["s", "bn3_scale", "bn3_bias", "bn3_mean", "bn3_var"], ["n3"]),
        helper.make_node("Relu", ["n3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1),
    ]
    return model(nodes, [helper.make_tensor_value_info("image", FLOAT, ["batch", 3, 8, 8])],
                 [helper.make_tensor_value_info("logits", FLOAT, ["batch", 10])],
                 [numpy_helper.from_array(w2, "w2")], opset=opset, name="conv_bn")


def mlp(opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """Gemm(transB) -> Relu -> MatMul + Add -> Softmax, inputs [batch, 6]."""
    rng = _rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((12, 6)) * 0.5).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.uniform(-0.2, 0.2, 12).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((12, 5)) * 0.5).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.uniform(-0.2, 0.2, 5).astype(np.float32), "b2")]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["m"], name="fc2"),
             helper.make_node("Add", ["m", "b2"], ["a"], name="fc2_bias"),
             helper.make_node("Softmax", ["a"], ["probs"], name="softmax", axis=1)]
    return model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["batch", 6])],
                 [helper.make_tensor_value_info("probs", FLOAT, ["batch", 5])], inits, opset=opset, name="mlp")


def token_model(opset: int = 17, seed: int = 0, vocab: int = 20, dim: int = 8) -> onnx.ModelProto:
    """int64 token ids [batch, seq] -> embedding Gather -> MatMul + Add -> Relu -> mean over seq -> MatMul."""
    rng = _rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(np.float32), "embedding"),
             numpy_helper.from_array((rng.standard_normal((dim, dim)) * 0.4).astype(np.float32), "w"),
             numpy_helper.from_array(rng.uniform(-0.1, 0.1, dim).astype(np.float32), "b"),
             numpy_helper.from_array((rng.standard_normal((dim, 3)) * 0.4).astype(np.float32), "head")]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
        mean = helper.make_node("ReduceMean", ["r", "axes"], ["pooled"], name="pool", keepdims=0)
    else:
        mean = helper.make_node("ReduceMean", ["r"], ["pooled"], name="pool", axes=[1], keepdims=0)
    nodes = [helper.make_node("Gather", ["embedding", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["m"], name="proj"),
             helper.make_node("Add", ["m", "b"], ["a"], name="proj_bias"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             mean,
             helper.make_node("MatMul", ["pooled", "head"], ["logits"], name="head")]
    return model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
                 [helper.make_tensor_value_info("logits", FLOAT, ["batch", 3])], inits, opset=opset, name="tokens")


def if_model(opset: int = 17) -> onnx.ModelProto:
    """Relu -> If(max > 0: x * 2 else -x) -> Sigmoid; the branches read the outer tensor 'r'."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    then_g = helper.make_graph([helper.make_node("Mul", ["r", "two"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", FLOAT, ["batch", 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["r"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", FLOAT, ["batch", 4])])
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("ReduceMax", ["r"], ["mx"], name="max", keepdims=0),
             helper.make_node("Greater", ["mx", "zero"], ["cond"], name="cond"),
             helper.make_node("If", ["cond"], ["branch"], name="choose", then_branch=then_g, else_branch=else_g),
             helper.make_node("Sigmoid", ["branch"], ["y"], name="sigmoid")]
    return model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["batch", 4])],
                 [helper.make_tensor_value_info("y", FLOAT, ["batch", 4])], [two, zero], opset=opset, name="branchy")


def prequantized(opset: int = 13) -> onnx.ModelProto:
    """QuantizeLinear -> DequantizeLinear -> Conv: a graph that is quantized already."""
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint8), "z"),
             numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("Conv", ["dq", "w"], ["y"])]
    return model(nodes, [helper.make_tensor_value_info("x", FLOAT, [1, 1, 4, 4])],
                 [helper.make_tensor_value_info("y", FLOAT, [1, 2, 4, 4])], inits, opset=opset, name="quantized")


def plain_run(m: onnx.ModelProto, feeds: Dict[str, np.ndarray], outputs: Optional[List[str]] = None):
    """The model's outputs from a plain onnxruntime session (the FP32 reference)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(outputs, feeds)


def deconv_gemm_bn(opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """ConvTranspose -> BN -> Relu -> GAP -> Flatten -> Gemm(transB=0, no bias) -> BN: both BNs fold."""
    rng = _rng(seed)
    bn = {**_bn_params("bn1", 6, rng), **_bn_params("bn2", 5, rng)}
    inits = [numpy_helper.from_array((rng.standard_normal((4, 6, 3, 3)) * 0.3).astype(np.float32), "wt"),
             numpy_helper.from_array(rng.uniform(-0.1, 0.1, 6).astype(np.float32), "bt"),
             numpy_helper.from_array((rng.standard_normal((6, 5)) * 0.5).astype(np.float32), "wg")]
    inits += [numpy_helper.from_array(v, k) for k, v in bn.items()]
    nodes = [helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["d"], name="deconv", strides=[2, 2]),
             helper.make_node("BatchNormalization", ["d", "bn1_scale", "bn1_bias", "bn1_mean", "bn1_var"], ["n1"],
                              name="bn1"),
             helper.make_node("Relu", ["n1"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wg"], ["g"], name="fc", alpha=0.5),
             helper.make_node("BatchNormalization", ["g", "bn2_scale", "bn2_bias", "bn2_mean", "bn2_var"], ["y"],
                              name="bn2")]
    return model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["batch", 4, 5, 5])],
                 [helper.make_tensor_value_info("y", FLOAT, ["batch", 5])], inits, opset=opset, name="deconv")


def scalar_inputs(opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """x [batch, 4] -> Gemm -> Relu, times a scalar float input 'gain' (shape ()), divided by the
    scalar int64 input 'sr' (shape (), a sample rate as in silero-vad) cast to float."""
    rng = _rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((3, 4)) * 0.5).astype(np.float32), "w"),
             numpy_helper.from_array(rng.uniform(-0.2, 0.2, 3).astype(np.float32), "b")]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "gain"], ["g"], name="scale"),
             helper.make_node("Cast", ["sr"], ["srf"], name="sr_float", to=FLOAT),
             helper.make_node("Div", ["g", "srf"], ["y"], name="per_sample")]
    return model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["batch", 4]),
                         helper.make_tensor_value_info("gain", FLOAT, []),
                         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                 [helper.make_tensor_value_info("y", FLOAT, ["batch", 3])], inits, opset=opset, name="scalars")


def tied_weights(opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """Two layers read one initializer as their weight (a tied weight) and a batch norm follows the
    second: Gemm(x, w, transB) -> Relu -> Gemm(r, w, transB) -> BatchNormalization -> y, w [4, 4]."""
    rng = _rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 4)) * 0.6).astype(np.float32), "w"),
             numpy_helper.from_array(rng.uniform(-0.2, 0.2, 4).astype(np.float32), "b1")]
    inits += [numpy_helper.from_array(v, k) for k, v in _bn_params("bn", 4, rng).items()]
    nodes = [helper.make_node("Gemm", ["x", "w", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w"], ["h2"], name="fc2", transB=1),
             helper.make_node("BatchNormalization", ["h2", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["y"],
                              name="bn")]
    return model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["batch", 4])],
                 [helper.make_tensor_value_info("y", FLOAT, ["batch", 4])], inits, opset=opset, name="tied")


def onnx_weight(m: onnx.ModelProto, name: str) -> np.ndarray:
    """The values of initializer ``name``."""
    return next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == name)


def with_initializer(m: onnx.ModelProto, name: str, values: np.ndarray) -> onnx.ModelProto:
    """A copy of ``m`` with initializer ``name`` replaced by ``values`` (a model quantized by hand)."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for t in out.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(np.asarray(values, dtype=numpy_helper.to_array(t).dtype), name))
    return out


def bias_add_bn(kind: str, opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """A linear op without a bias, its bias as a separate Add of a constant, then a batch norm and
    a Relu, as some exporters write it: ``kind`` is ConvTranspose (bias [C, 1, 1]), Conv (bias
    [1, C, 1, 1]), Gemm (bias [C]) or MatMul (bias [1, C])."""
    rng = _rng(seed)
    c = 6
    bn = _bn_params("bn", c, rng)
    if kind == "ConvTranspose":
        w, bias, x = rng.standard_normal((4, c, 3, 3)) * 0.3, rng.uniform(-0.5, 0.5, (c, 1, 1)), ["batch", 4, 5, 5]
        op = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="linear", strides=[2, 2])
        out = ["batch", c, 11, 11]
    elif kind == "Conv":
        w, bias, x = rng.standard_normal((c, 4, 3, 3)) * 0.3, rng.uniform(-0.5, 0.5, (1, c, 1, 1)), ["batch", 4, 5, 5]
        op = helper.make_node("Conv", ["x", "w"], ["y"], name="linear", pads=[1, 1, 1, 1])
        out = ["batch", c, 5, 5]
    elif kind == "Gemm":
        w, bias, x = rng.standard_normal((c, 4)) * 0.5, rng.uniform(-0.5, 0.5, c), ["batch", 4]
        op = helper.make_node("Gemm", ["x", "w"], ["y"], name="linear", transB=1, alpha=0.5)
        out = ["batch", c]
    else:
        w, bias, x = rng.standard_normal((4, c)) * 0.5, rng.uniform(-0.5, 0.5, (1, c)), ["batch", 4]
        op = helper.make_node("MatMul", ["x", "w"], ["y"], name="linear")
        out = ["batch", c]
    inits = [numpy_helper.from_array(w.astype(np.float32), "w"), numpy_helper.from_array(bias.astype(np.float32), "b")]
    inits += [numpy_helper.from_array(v, k) for k, v in bn.items()]
    nodes = [op, helper.make_node("Add", ["y", "b"], ["biased"], name="bias_add"),
             helper.make_node("BatchNormalization", ["biased", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["n"],
                              name="bn", epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["out"], name="relu")]
    return model(nodes, [helper.make_tensor_value_info("x", FLOAT, x)],
                 [helper.make_tensor_value_info("out", FLOAT, out)], inits, opset=opset, name=f"{kind.lower()}_bias_add")


def tied_through_plumbing(opset: int = 17, seed: int = 0, vocab: int = 12, dim: int = 6) -> onnx.ModelProto:
    """A tied embedding and output head, as torch.onnx.export writes it without constant folding:
    ids -> Gather(table) -> Relu -> MatMul(Transpose(table)) -> BatchNormalization -> logits, plus a
    MatMul that reads the table through Cast(Identity(...)) ([vocab, dim] as stored)."""
    rng = _rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(np.float32), "table")]
    inits += [numpy_helper.from_array(v, k) for k, v in _bn_params("bn", vocab, rng).items()]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("Relu", ["e"], ["r"], name="relu"),
             helper.make_node("ReduceMean", ["r"], ["pooled"], name="pool", axes=[1], keepdims=0),
             helper.make_node("Transpose", ["table"], ["table_t"], name="head_t", perm=[1, 0]),
             helper.make_node("MatMul", ["pooled", "table_t"], ["h"], name="head"),
             helper.make_node("BatchNormalization", ["h", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["logits"],
                              name="bn"),
             helper.make_node("Identity", ["table"], ["table_i"], name="alias"),
             helper.make_node("Cast", ["table_i"], ["table_c"], name="as_float", to=FLOAT),
             helper.make_node("MatMul", ["logits", "table_c"], ["back"], name="back")]
    return model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
                 [helper.make_tensor_value_info("back", FLOAT, ["batch", dim])], inits, opset=opset,
                 name="tied_plumbing")
