"""AIMET's named quantsim configs (``config_file="default"``, ``"htp_v73"``, ...), written from their settings.

AIMET 2.x accepts these aliases for ``config_file`` (its ``None`` means ``"default"``). Each is
built here from the settings AIMET documents and ships (the per-version files of its
``quantsim_config`` folder): what differs between the versions is spelled out below, so that a
reader sees at a glance what e.g. HTP v75 adds to v73. :func:`aimet_config` returns a fresh dict
in the quantsim config format of :mod:`qa.config`.

=========  ================================================================================
alias      what it is
=========  ================================================================================
default    AIMET 2.x's default: per-channel weights for Conv, ConvTranspose, Gemm, MatMul, PRelu
per_tensor AIMET's per-tensor default config (``default_config.json``; not an AIMET alias)
htp_v66    Qualcomm HTP v66: per-tensor weights, unsigned symmetric off, output ranges fixed
           for Relu/Tanh/Sin/Cos
htp_v68    + per-channel Conv/ConvTranspose/PRelu weights, norm weights asymmetric
htp_v69    + per-channel Gemm/MatMul weights
htp_v73    as v69, with Sigmoid/Softmax ranges fixed to [0, 1] and GroupNorm bias quantized,
           and the Conv + BatchNorm + activation supergroups
htp_v75..  as v73
enpu_v6    eNPU v6: symmetric activations, per-tensor weights, model outputs quantized
enpu_v7    as v6, norm weights asymmetric
=========  ================================================================================
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Tuple

__all__ = ["ALIASES", "aimet_config", "is_alias"]

T, F = "True", "False"
_PER_CHANNEL_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "PRelu")
_NO_OUTPUT = {"is_output_quantized": F}
_BN_STATS_OFF = {"params": {"running_mean": {"is_quantized": F}, "running_var": {"is_quantized": F}}}
_ASYMMETRIC_WEIGHT = {"params": {"weight": {"is_symmetric": F}}}
_TRIG = {"Sin": (-1.0, 1.0), "Cos": (-1.0, 1.0), "Tanh": (-1.0, 1.0)}
_PROB = {"Sigmoid": (0.0, 1.0), "Softmax": (0.0, 1.0)}


def _constraint(lo: float, hi: float = None) -> Dict[str, Any]:
    c: Dict[str, Any] = {"min": lo}
    if hi is not None:
        c["max"] = hi
    return {"encoding_constraints": c}


def _groups(*chains: Tuple[str, ...]) -> List[Dict[str, List[str]]]:
    return [{"op_list": list(c)} for c in chains]


def _classic(per_channel: bool) -> Dict[str, Any]:
    op_type: Dict[str, Any] = {op: {"per_channel_quantization": T} for op in _PER_CHANNEL_OPS} if per_channel else {}
    op_type.update({"BatchNormalization": _BN_STATS_OFF, "Cast": _NO_OUTPUT})
    return {"defaults": {"ops": {"is_output_quantized": T}, "params": {"is_quantized": T, "is_symmetric": T},
                         "strict_symmetric": F, "per_channel_quantization": F},
            "params": {"bias": {"is_quantized": F}},
            "op_type": op_type,
            "supergroup_pass_list": ["MatmulAdd"],
            "supergroups": _groups(*((("Conv", "Relu"), ("Conv", "Clip"), ("ConvTranspose", "Relu")) if per_channel
                                     else (("Conv", "Relu"), ("ConvTranspose", "Relu"), ("Conv", "Clip"))),
                                   ("Add", "Relu"), ("Gemm", "Relu")),
            "model_input": {"is_input_quantized": T}, "model_output": {}}


_HTP_V73_GROUPS = _groups(
    ("Add", "Relu"), ("Conv", "BatchNormalization", "HardSwish"), ("Conv", "BatchNormalization", "PRelu"),
    ("Conv", "BatchNormalization", "LeakyRelu"), ("Conv", "BatchNormalization", "Relu"),
    ("Conv", "Transpose", "Relu"), ("Conv", "Transpose", "PRelu"), ("Conv", "Transpose", "LeakyRelu"),
    ("Conv", "Clip"), ("Conv", "PRelu"), ("Conv", "LeakyRelu"), ("Conv", "Relu"), ("ConvTranspose", "Relu"),
    ("Gemm", "Relu"))


def _htp(version: int) -> Dict[str, Any]:
    op_type: Dict[str, Any] = {}
    per_channel = () if version < 68 else ("Conv", "ConvTranspose", "PRelu") if version == 68 else _PER_CHANNEL_OPS
    op_type.update({op: {"per_channel_quantization": T} for op in per_channel})
    op_type.update({op: _NO_OUTPUT for op in ("Cast", "ChannelShuffle", "Gather", "NonMaxSuppression")})
    if version == 66:
        op_type["Flatten"] = _NO_OUTPUT
    if version >= 73:
        op_type["GroupNormalization"] = {"params": {"bias": {"is_quantized": T}}}
    norms = ("LayerNormalization",) if version == 66 else ("LayerNormalization", "InstanceNormalization",
                                                           "RMSNormalization")
    op_type.update({op: copy.deepcopy(_ASYMMETRIC_WEIGHT) for op in norms})
    op_type["BatchNormalization"] = _BN_STATS_OFF
    op_type["Relu"] = _constraint(0.0)
    for op, (lo, hi) in {**(_PROB if version >= 73 else {}), **_TRIG}.items():
        op_type[op] = _constraint(lo, hi)
    config: Dict[str, Any] = {
        "defaults": {"hw_version": f"V{version}", "ops": {"is_output_quantized": T},
                     "params": {"is_quantized": T, "is_symmetric": T}, "per_channel_quantization": F,
                     "strict_symmetric": F, "unsigned_symmetric": F},
        "params": {"bias": {"is_quantized": F}},
        "op_type": op_type,
        "supergroups": (_HTP_V73_GROUPS if version >= 73 else
                        _groups(("ConvTranspose", "Relu"), ("Add", "Relu"), ("Gemm", "Relu"))),
        "model_input": {"is_input_quantized": T}, "model_output": {}}
    if version >= 68:
        config["supergroup_pass_list"] = ["LayerNormalization", "RMSNormalization", "MatmulAdd"]
    return config


_ENPU_ACTIVATIONS = ("Relu", "Clip", "Sigmoid", "Tanh", "PRelu", "LeakyRelu", "HardSwish", "Gelu")
_ENPU_BN_ACTIVATIONS = ("Relu", "Clip", "Sigmoid", "Tanh", "HardSwish", "Gelu")


def _enpu(version: int) -> Dict[str, Any]:
    op_type: Dict[str, Any] = {"BatchNormalization": {"params": {
        name: {"is_quantized": F} for name in ("weight", "bias", "running_mean", "running_var")}}}
    op_type.update({op: {"per_channel_quantization": F} for op in ("Conv", "ConvTranspose", "Gemm", "MatMul")})
    for op, (lo, hi) in {**_PROB, **_TRIG}.items():
        op_type[op] = _constraint(lo, hi)
    if version >= 7:
        op_type.update({op: copy.deepcopy(_ASYMMETRIC_WEIGHT) for op in ("LayerNormalization", "RMSNormalization")})
    chains: List[Tuple[str, ...]] = []
    for producer in ("Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "MaxPool", "Add", "Sub", "Mul"):
        pooled = producer in ("Conv", "ConvTranspose", "AveragePool", "MaxPool")
        chains += [(producer, a) for a in _ENPU_ACTIVATIONS if pooled or a != "PRelu"]
        if pooled:  # these also fuse a following BatchNormalization, with or without an activation
            chains += [(producer, "BatchNormalization")]
            chains += [(producer, "BatchNormalization", a) for a in _ENPU_BN_ACTIVATIONS]
    if version >= 7:
        chains += [("BatchNormalization", a) for a in _ENPU_BN_ACTIVATIONS]
    return {"defaults": {"ops": {"is_output_quantized": T, "is_symmetric": T},
                         "params": {"is_quantized": T, "is_symmetric": T}, "per_channel_quantization": F,
                         "strict_symmetric": F, "unsigned_symmetric": F},
            "params": {"bias": {"is_quantized": F}},
            "op_type": op_type,
            "supergroup_pass_list": ["LayerNormalization", "RMSNormalization", "MatmulAdd"],
            "supergroups": _groups(*chains),
            "model_input": {"is_input_quantized": T}, "model_output": {"is_output_quantized": T}}


ALIASES = {
    "default": lambda: _classic(per_channel=True),
    "per_tensor": lambda: _classic(per_channel=False),
    **{f"htp_v{v}": (lambda v=v: _htp(v)) for v in (66, 68, 69, 73, 75, 79, 81, 85)},
    "enpu_v6": lambda: _enpu(6),
    "enpu_v7": lambda: _enpu(7),
}


def is_alias(name: Any) -> bool:
    """Whether ``name`` is one of :data:`ALIASES`."""
    return isinstance(name, str) and name in ALIASES


def aimet_config(name: str) -> Dict[str, Any]:
    """A fresh copy of the named config (see the module docstring).

    Example:
        >>> aimet_config("default")["op_type"]["Conv"]
        {'per_channel_quantization': 'True'}
        >>> aimet_config("htp_v73")["op_type"]["Sigmoid"]
        {'encoding_constraints': {'min': 0.0, 'max': 1.0}}
    """
    return ALIASES[name]()
