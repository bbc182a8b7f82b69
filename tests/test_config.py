"""AIMET-style quantsim config: loading (values, warnings, errors) and applying it to hand-built graphs."""

import json
import warnings

import pytest

from qa.config import apply_config, dump_config, load_config
from qa.errors import QAValueError
from qa.graph import INPUT, OUTPUT, PARAM, Layer, QuantGraph, Quantizer

# AIMET 2.x's default config ("default", what config_file=None means there: per-channel weights for
# Conv, ConvTranspose, Gemm, MatMul and PRelu), written out as AIMET writes it (booleans as strings).
AIMET_DEFAULT_JSON = """
{
  "defaults": {
    "ops": {"is_output_quantized": "True"},
    "params": {"is_quantized": "True", "is_symmetric": "True"},
    "strict_symmetric": "False",
    "per_channel_quantization": "False"
  },
  "params": {"bias": {"is_quantized": "False"}},
  "op_type": {
    "Conv": {"per_channel_quantization": "True"},
    "ConvTranspose": {"per_channel_quantization": "True"},
    "Gemm": {"per_channel_quantization": "True"},
    "MatMul": {"per_channel_quantization": "True"},
    "PRelu": {"per_channel_quantization": "True"},
    "BatchNormalization": {"params": {"running_mean": {"is_quantized": "False"},
                                      "running_var": {"is_quantized": "False"}}},
    "Cast": {"is_output_quantized": "False"}
  },
  "supergroup_pass_list": ["MatmulAdd"],
  "supergroups": [
    {"op_list": ["Conv", "Relu"]},
    {"op_list": ["Conv", "Clip"]},
    {"op_list": ["ConvTranspose", "Relu"]},
    {"op_list": ["Add", "Relu"]},
    {"op_list": ["Gemm", "Relu"]}
  ],
  "model_input": {"is_input_quantized": "True"},
  "model_output": {}
}
"""


def make_layer(name, op_type, inputs=(), *, weight=False, bias=False, axis=0, model_input=False,
               model_output=False, extra_input=False):
    """A layer with an output quantizer, optional weight/bias quantizers and input quantizers."""
    qs = []
    if weight:
        qs.append(Quantizer(f"{name}_weight", name, PARAM, param="weight", shape=(4, 3), axis=axis))
    if bias:
        qs.append(Quantizer(f"{name}_bias", name, PARAM, param="bias", shape=(4,), axis=0))
    if model_input or extra_input:
        qs.append(Quantizer(f"{name}_input_0", name, INPUT))
    qs.append(Quantizer(f"{name}_output_0", name, OUTPUT))
    return Layer(name, op_type, op_type, qs, inputs=list(inputs), model_input=model_input,
                 model_output=model_output)


def q(graph, name):
    return next(x for x in graph.quantizers() if x.name == name)


def applied(layers, config=None, param_bw=8, output_bw=8):
    graph = QuantGraph(layers)
    apply_config(graph, load_config(config), param_bw=param_bw, output_bw=output_bw)
    return graph


def cfg(**sections):
    """A config dict with AIMET's required-looking skeleton and the given sections."""
    base = {"defaults": {"ops": {}, "params": {}}, "params": {}, "op_type": {}, "supergroups": [],
            "model_input": {}, "model_output": {}}
    base.update(sections)
    return base


# --------------------------------------------------------------------------- loading


def test_default_config_equals_aimet_default_file(tmp_path):
    path = tmp_path / "default_config.json"
    path.write_text(AIMET_DEFAULT_JSON)
    assert load_config(None) == load_config(path) == load_config(str(path))


def test_string_and_json_booleans_are_the_same():
    strings = json.loads(AIMET_DEFAULT_JSON)
    booleans = json.loads(AIMET_DEFAULT_JSON.replace('"True"', "true").replace('"False"', "false"))
    assert load_config(strings) == load_config(booleans) == load_config(None)


def test_loaded_config_passes_through():
    config = load_config(None)
    assert load_config(config) is config


def test_missing_sections_take_aimet_builtin_values():
    graph = applied([make_layer("conv", "Conv", weight=True, bias=True, model_input=True)], {})
    w, b, i, o = graph["conv"].quantizers
    assert (w.enabled, w.symmetric, b.enabled, i.enabled, o.enabled, o.symmetric) == (
        True, True, True, False, True, False)
    assert all(not x.strict and x.unsigned_symmetric and not x.per_channel for x in (w, b, i, o))


# --------------------------------------------------------------------------- defaults


def test_default_config_on_a_small_network():
    layers = [
        make_layer("conv", "Conv", weight=True, bias=True, model_input=True),
        make_layer("relu", "Relu", ["conv"]),
        make_layer("squeeze", "Squeeze", ["relu"]),
        make_layer("fc", "Gemm", ["squeeze"], weight=True, bias=True, model_output=True),
    ]
    graph = applied(layers, None, param_bw=4, output_bw=16)
    w, b = q(graph, "conv_weight"), q(graph, "conv_bias")
    assert (w.enabled, w.symmetric, w.per_channel, w.bitwidth) == (True, True, True, 4)  # AIMET 2.x: per channel
    assert not b.enabled
    assert q(graph, "conv_input_0").enabled and q(graph, "conv_input_0").bitwidth == 16
    assert not q(graph, "conv_output_0").enabled  # Conv+Relu supergroup
    relu = q(graph, "relu_output_0")
    assert (relu.enabled, relu.symmetric, relu.bitwidth) == (True, False, 16)
    assert not q(graph, "squeeze_output_0").enabled
    assert q(graph, "fc_output_0").enabled
    assert all(not x.strict and x.unsigned_symmetric for x in graph.quantizers())


@pytest.mark.parametrize("op_type", ["Cast", "Dropout", "Expand", "Squeeze", "Pad", "Gather", "MaxPool", "TopK"])
def test_shape_only_ops_have_no_output_quantizer_by_default(op_type):
    assert not q(applied([make_layer("x", op_type)]), "x_output_0").enabled


@pytest.mark.parametrize("op_type", ["Reshape", "Flatten", "Transpose", "Unsqueeze", "Identity", "Slice", "Split",
                                     "Tile", "DepthToSpace", "SpaceToDepth"])
def test_data_movement_has_no_output_quantizer_under_any_config(op_type):
    """One policy for every framework: ops that only move values keep their input's grid."""
    assert not q(applied([make_layer("x", op_type)]), "x_output_0").enabled
    assert not q(applied([make_layer("x", op_type)], cfg()), "x_output_0").enabled  # a config that says nothing
    forced = cfg(op_type={op_type: {"is_output_quantized": "True"}})
    assert q(applied([make_layer("x", op_type)], forced), "x_output_0").enabled  # but a config can ask for it


@pytest.mark.parametrize("op_type", ["AveragePool", "Mean", "Softmax", "Gelu", "Concat", "Add"])
def test_computing_ops_keep_their_output_quantizer(op_type):
    assert q(applied([make_layer("x", op_type)]), "x_output_0").enabled
    assert not q(applied([make_layer("x", op_type)], cfg(op_type={op_type: {"is_output_quantized": False}})),
                 "x_output_0").enabled


def test_defaults_keys():
    config = cfg(defaults={
        "ops": {"is_output_quantized": False, "is_input_quantized": "True", "is_symmetric": "True"},
        "params": {"is_quantized": "False", "is_symmetric": False},
        "strict_symmetric": "True", "unsigned_symmetric": "False", "per_channel_quantization": "True",
        "hw_version": "V73",
    })
    graph = applied([make_layer("conv", "Conv", weight=True, bias=True, extra_input=True)], config)
    w, b, i, o = graph["conv"].quantizers
    assert not w.enabled and not w.symmetric and w.per_channel
    assert not b.per_channel  # per-channel applies to weights only
    assert i.enabled and i.symmetric and not o.enabled and o.symmetric
    assert all(x.strict and not x.unsigned_symmetric for x in (w, b, i, o))


def test_per_channel_needs_an_axis():
    config = cfg(defaults={"ops": {}, "params": {}, "per_channel_quantization": "True"})
    graph = applied([make_layer("a", "Conv", weight=True), make_layer("b", "Gemm", weight=True, axis=None)],
                    config)
    assert q(graph, "a_weight").per_channel and not q(graph, "b_weight").per_channel


def test_hw_version_is_ignored_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(cfg(defaults={"ops": {}, "params": {}, "hw_version": "V75"}))


# --------------------------------------------------------------------------- params and op_type


def test_params_section_and_its_precedence():
    config = cfg(
        defaults={"ops": {}, "params": {"is_quantized": "True", "is_symmetric": "True"}},
        params={"weight": {"is_symmetric": "False"}, "bias": {"is_quantized": "False"}},
        op_type={"Conv": {"params": {"weight": {"is_symmetric": "True"}, "bias": {"is_quantized": True}}}},
    )
    graph = applied([make_layer("conv", "Conv", weight=True, bias=True),
                     make_layer("fc", "Gemm", ["conv"], weight=True, bias=True)], config)
    assert q(graph, "conv_weight").symmetric and q(graph, "conv_bias").enabled  # op_type.params wins
    assert not q(graph, "fc_weight").symmetric and not q(graph, "fc_bias").enabled  # params beats defaults


def test_op_type_settings_beat_defaults():
    config = cfg(
        defaults={"ops": {"is_output_quantized": "True", "is_symmetric": "False"}, "params": {},
                  "per_channel_quantization": "True"},
        op_type={
            "Gemm": {"is_output_quantized": "False", "is_symmetric": "True", "per_channel_quantization": "False"},
            "MatMul": {"is_input_quantized": "True"},
        },
    )
    graph = applied([make_layer("conv", "Conv", weight=True),
                     make_layer("fc", "Gemm", ["conv"], weight=True),
                     make_layer("mm", "MatMul", ["fc"], extra_input=True)], config)
    assert q(graph, "conv_weight").per_channel and q(graph, "conv_output_0").enabled
    fc_out = q(graph, "fc_output_0")
    assert not q(graph, "fc_weight").per_channel and not fc_out.enabled and fc_out.symmetric
    assert q(graph, "fc_weight").symmetric  # op-level is_symmetric is for activations only
    assert q(graph, "mm_input_0").enabled and not q(graph, "conv_output_0").symmetric


def test_op_type_per_channel_turns_on_and_per_param_extension():
    config = cfg(op_type={"Gemm": {"per_channel_quantization": "True"},
                          "Conv": {"params": {"bias": {"per_channel_quantization": "True"},
                                              "weight": {"per_channel_quantization": "False"}}}},
                 defaults={"ops": {}, "params": {}, "per_channel_quantization": "True"})
    graph = applied([make_layer("fc", "Gemm", weight=True, bias=True),
                     make_layer("conv", "Conv", ["fc"], weight=True, bias=True)], config)
    assert q(graph, "fc_weight").per_channel and not q(graph, "fc_bias").per_channel
    assert not q(graph, "conv_weight").per_channel and q(graph, "conv_bias").per_channel


def test_supported_kernels_set_bitwidths():
    def kernel(act, par, dtype="int"):
        return {"activation": {"bitwidth": act, "dtype": dtype}, "param": {"bitwidth": par, "dtype": dtype}}

    config = cfg(
        defaults={"ops": {}, "params": {}, "supported_kernels": [kernel(16, 8), kernel(8, 8)]},
        op_type={"Conv": {"supported_kernels": [kernel(16, 16, "float"), kernel(8, 4)]},
                 "Gemm": {"supported_kernels": [kernel(32, 32, "float")]}},
    )
    def layers():
        return [make_layer("conv", "Conv", weight=True), make_layer("fc", "Gemm", ["conv"], weight=True),
                make_layer("relu", "Relu", ["fc"])]
    # 8/8 is a listed kernel: kept; Conv only has int 8/4 (float skipped); Gemm only float: kept.
    graph = applied(layers(), config, param_bw=8, output_bw=8)
    assert (q(graph, "conv_weight").bitwidth, q(graph, "conv_output_0").bitwidth) == (4, 8)
    assert (q(graph, "fc_weight").bitwidth, q(graph, "fc_output_0").bitwidth) == (8, 8)
    assert q(graph, "relu_output_0").bitwidth == 8
    # 4/4 is not listed: the first default kernel (act 16, param 8) is taken.
    graph = applied(layers(), config, param_bw=4, output_bw=4)
    assert (q(graph, "fc_weight").bitwidth, q(graph, "relu_output_0").bitwidth) == (8, 16)
    assert (q(graph, "conv_weight").bitwidth, q(graph, "conv_output_0").bitwidth) == (4, 8)


# --------------------------------------------------------------------------- supergroups


def test_supergroup_chain_keeps_only_the_last_output():
    config = cfg(supergroups=[{"op_list": ["Conv", "BatchNormalization", "Relu"]},
                              {"op_list": ["Add", "Relu"]}])
    graph = applied([make_layer("conv", "Conv", weight=True),
                     make_layer("bn", "BatchNormalization", ["conv"]),
                     make_layer("relu", "Relu", ["bn"]),
                     make_layer("add", "Add", ["relu", "conv2"]),
                     make_layer("relu2", "Relu", ["add"])], config)
    assert [q(graph, f"{n}_output_0").enabled for n in ("conv", "bn", "relu", "add", "relu2")] == [
        False, False, True, False, True]
    assert q(graph, "conv_weight").enabled  # only outputs are fused away


def test_no_fusion_when_the_first_layer_feeds_two_layers():
    graph = applied([make_layer("conv", "Conv"), make_layer("relu", "Relu", ["conv"]),
                     make_layer("pool", "AveragePool", ["conv"])])
    assert all(q(graph, f"{n}_output_0").enabled for n in ("conv", "relu", "pool"))


def test_no_fusion_when_the_second_layer_reads_another_input_or_is_another_type():
    graph = applied([make_layer("conv", "Conv"), make_layer("relu", "Relu", ["conv", "other"]),
                     make_layer("gemm", "Gemm"), make_layer("clip", "Clip", ["gemm"])])
    assert q(graph, "conv_output_0").enabled and q(graph, "gemm_output_0").enabled


@pytest.mark.parametrize("pair", [("Conv", "Relu"), ("ConvTranspose", "Relu"), ("Conv", "Clip"),
                                  ("Add", "Relu"), ("Gemm", "Relu")])
def test_default_supergroups(pair):
    graph = applied([make_layer("a", pair[0]), make_layer("b", pair[1], ["a"])])
    assert not q(graph, "a_output_0").enabled and q(graph, "b_output_0").enabled


# --------------------------------------------------------------------------- model input and output


def test_model_input_and_other_inputs():
    def layers():
        return [make_layer("conv", "Conv", model_input=True),
                make_layer("mm", "MatMul", ["conv"], extra_input=True)]
    graph = applied(layers(), cfg(model_input={"is_input_quantized": "False"},
                                  op_type={"Conv": {"is_input_quantized": "True"}}))
    assert not q(graph, "conv_input_0").enabled and not q(graph, "mm_input_0").enabled
    graph = applied(layers(), cfg(model_input={"is_input_quantized": True},
                                  op_type={"MatMul": {"is_input_quantized": True}}))
    assert q(graph, "conv_input_0").enabled and q(graph, "mm_input_0").enabled
    graph = applied(layers(), cfg(op_type={"Conv": {"is_input_quantized": "True"}}))  # model_input: {}
    assert q(graph, "conv_input_0").enabled and not q(graph, "mm_input_0").enabled


def test_model_output_overrides_op_type_and_supergroups():
    def layers():
        return [make_layer("conv", "Conv", model_output=True), make_layer("relu", "Relu", ["conv"]),
                make_layer("sq", "Squeeze", ["relu"], model_output=True)]
    config = json.loads(AIMET_DEFAULT_JSON)
    graph = applied(layers(), config)
    assert [q(graph, f"{n}_output_0").enabled for n in ("conv", "relu", "sq")] == [False, True, False]
    config["model_output"] = {"is_output_quantized": "True"}
    graph = applied(layers(), config)
    assert [q(graph, f"{n}_output_0").enabled for n in ("conv", "relu", "sq")] == [True, True, True]
    config["model_output"] = {"is_output_quantized": False}
    graph = applied(layers(), config)
    assert [q(graph, f"{n}_output_0").enabled for n in ("conv", "relu", "sq")] == [False, True, False]


# --------------------------------------------------------------------------- warnings and errors


def test_unknown_keys_warn_with_their_path():
    config = cfg(foo=1, op_type={"Conv": {"foo": "True", "params": {"weight": {"bar": 1}}}},
                 defaults={"ops": {"x": 1}, "params": {"per_channel_quantization": "True"}, "y": 2},
                 supergroups=[{"op_list": ["Conv", "Relu"], "z": 0}], model_output={"w": 1})
    with pytest.warns(UserWarning) as record:
        loaded = load_config(config)
    messages = " ".join(str(r.message) for r in record)
    for path in ("'foo'", "'op_type.Conv.foo'", "'op_type.Conv.params.weight.bar'", "'defaults.ops.x'",
                 "'defaults.params.per_channel_quantization'", "'defaults.y'", "'supergroups[0].z'",
                 "'model_output.w'"):
        assert path in messages
    assert len(record) == 8
    assert loaded.supergroups == [("Conv", "Relu")]


def test_unknown_key_warning_names_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"op_type": {"Conv": {"foo": 1}}}))
    with pytest.warns(UserWarning, match=r"c\.json.*op_type\.Conv\.foo"):
        load_config(path)


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "top level: expected an object"),
    ('{"op_type": []}', "op_type: expected an object"),
    ('{"op_type": {"Conv": {"is_output_quantized": "yes"}}}', "op_type.Conv.is_output_quantized"),
    ('{"defaults": {"ops": {}, "params": {"is_quantized": 1}}}', "defaults.params.is_quantized"),
    ('{"params": {"bias": "False"}}', "params.bias: expected an object"),
    ('{"supergroups": {"op_list": []}}', "supergroups: expected a list"),
    ('{"supergroups": [{"op_list": ["Conv"]}]}', r"supergroups\[0\].op_list"),
    ('{"supergroups": [{"ops": ["Conv", "Relu"]}]}', r"supergroups\[0\].op_list"),
    ('{"model_input": {"is_input_quantized": null}}', "model_input.is_input_quantized"),
    ('{"defaults": {"ops": {}, "params": {}, "supported_kernels": []}}', "defaults.supported_kernels"),
    ('{"op_type": {"Conv": {"supported_kernels": [{"activation": {"bitwidth": 64, "dtype": "int"},'
     ' "param": {"bitwidth": 8, "dtype": "int"}}]}}}', r"supported_kernels\[0\].activation.bitwidth"),
    ('{"op_type": {"Conv": {"supported_kernels": [{"activation": {"bitwidth": 8}}]}}}', "missing 'param'"),
])
def test_malformed_files_raise_naming_file_and_key(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(QAValueError, match=match) as info:
        load_config(path)
    assert "bad.json" in str(info.value) and isinstance(info.value, ValueError)


def test_missing_file_and_bad_argument_types(tmp_path):
    with pytest.raises(QAValueError, match="nope.json.*not found"):
        load_config(tmp_path / "nope.json")
    with pytest.raises(QAValueError, match="a dict or None"):
        load_config(42)


def test_apply_config_checks_bitwidths():
    graph = QuantGraph([make_layer("conv", "Conv")])
    with pytest.raises(QAValueError, match="param_bw"):
        apply_config(graph, load_config(None), param_bw=1, output_bw=8)


# --------------------------------------------------------------------------- shared parameters

def test_a_parameter_shared_by_two_layers_is_listed_once_and_set_by_its_owner():
    """A tied weight (an embedding and its head) is one quantizer listed by both layers: the graph
    yields it once, and the settings come from the layer that owns it, not from whichever comes last."""
    emb = make_layer("emb", "Gather", weight=True, axis=None)
    head = make_layer("head", "Gemm", ["emb"])
    head.quantizers.insert(0, emb.quantizers[0])  # the same Quantizer object, owned by emb
    config = cfg(op_type={"Gemm": {"params": {"weight": {"is_quantized": "False"}}},
                          "Gather": {"params": {"weight": {"is_symmetric": "False"}}}})
    graph = applied([emb, head], config)
    assert [x.name for x in graph.quantizers()] == ["emb_weight", "emb_output_0", "head_output_0"]
    w = q(graph, "emb_weight")
    assert w.enabled and not w.symmetric  # emb's op_type settings; head's Gemm entry does not apply
    # the simulation's copy keeps one object for both layers
    copied = graph.copy()
    assert copied["head"].quantizers[0] is copied["emb"].quantizers[0]


# --------------------------------------------------------------------------- AIMET's names and keys


@pytest.mark.parametrize("alias", ["default", "per_tensor", "htp_v66", "htp_v68", "htp_v69", "htp_v73", "htp_v75",
                                   "htp_v79", "htp_v81", "htp_v85", "enpu_v6", "enpu_v7"])
def test_aimet_config_names_load_with_every_key_understood(alias):
    """config_file accepts AIMET's names; each names a config whose every key qa reads (no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = load_config(alias)
    assert config == load_config(dump_config(config))  # and writes back unchanged


def test_the_default_is_aimet_2s_default_and_htp_v73_is_its_hardware_config():
    default, htp = load_config(None), load_config("htp_v73")
    assert default == load_config("default")
    assert {t for t, c in default.op_types.items() if c.per_channel_quantization} == {
        "Conv", "ConvTranspose", "Gemm", "MatMul", "PRelu"}
    assert load_config("per_tensor").op_types.get("Conv") is None
    assert htp.hw_version == "V73" and htp.unsigned_symmetric is False
    assert htp.op_types["Relu"].encoding_constraints == (0.0, None)
    assert htp.op_types["Tanh"].encoding_constraints == (-1.0, 1.0)
    assert htp.supergroup_passes == ("LayerNormalization", "RMSNormalization", "MatmulAdd")
    assert ("Conv", "BatchNormalization", "Relu") in htp.supergroups


def test_a_file_named_like_an_alias_wins_and_a_missing_name_lists_the_aliases(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").write_text(json.dumps(cfg(defaults={"ops": {}, "params": {"is_symmetric": "False"}})))
    assert load_config("default").default_params.is_symmetric is False
    with pytest.raises(QAValueError, match="htp_v73"):
        load_config("htp_v99")


def test_encoding_constraints_fix_an_output_range_and_only_outputs():
    config = cfg(op_type={"Sigmoid": {"encoding_constraints": {"min": 0.0, "max": 1.0}},
                          "Relu": {"encoding_constraints": {"min": 0.0}}})
    graph = applied([make_layer("s", "Sigmoid", extra_input=True), make_layer("r", "Relu", ["s"])], config)
    assert q(graph, "s_output_0").fixed_range == (0.0, 1.0) and q(graph, "s_input_0").fixed_range is None
    assert q(graph, "r_output_0").fixed_range == (0.0, None)
    for bad in ({"min": 1.0, "max": 0.0}, {}, {"min": "0"}, {"max": float("nan")}):
        with pytest.raises(QAValueError, match="encoding_constraints"):
            load_config(cfg(op_type={"Sigmoid": {"encoding_constraints": bad}}))


def test_supergroup_pass_matmul_add_fuses_a_matmul_into_its_bias_add():
    layers = [make_layer("mm", "MatMul", weight=True), make_layer("add", "Add", ["mm"])]
    attention = [make_layer("mm", "MatMul"), make_layer("add", "Add", ["mm"])]  # two activations: no Linear
    assert q(applied(attention, cfg(supergroup_pass_list=["MatmulAdd"])), "mm_output_0").enabled
    assert q(applied(layers, cfg()), "mm_output_0").enabled
    assert not q(applied(layers, cfg(supergroup_pass_list=["MatmulAdd"])), "mm_output_0").enabled
    residual = [make_layer("mm", "MatMul", weight=True), make_layer("add", "Add", ["mm", "x"])]  # not a bias add
    assert q(applied(residual, cfg(supergroup_pass_list=["MatmulAdd"])), "mm_output_0").enabled
    with pytest.warns(UserWarning, match="FuseAll"):
        load_config(cfg(supergroup_pass_list=["FuseAll"]))
