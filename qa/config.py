"""AIMET-style quantsim configuration (the ``config_file=`` JSON): load it, then apply it to a QuantGraph.

The format is that of AIMET's ``default_config.json``; ``load_config(None)`` gives
:data:`DEFAULT_CONFIG`, AIMET's defaults::

    {"defaults": {"ops": {"is_output_quantized": "True"},
                  "params": {"is_quantized": "True", "is_symmetric": "True"},
                  "strict_symmetric": "False", "unsigned_symmetric": "True",
                  "per_channel_quantization": "False"},
     "params": {"bias": {"is_quantized": "False"}},
     "op_type": {"Squeeze": {"is_output_quantized": "False"}, ...},
     "supergroups": [{"op_list": ["Conv", "Relu"]}, ...],
     "model_input": {"is_input_quantized": "True"},
     "model_output": {}}

Booleans may be JSON booleans or AIMET's strings ``"True"`` / ``"False"``. Unknown keys
are warned about (``UserWarning`` naming e.g. ``op_type.Conv.foo``) and ignored;
``defaults.hw_version`` is ignored silently. Malformed input raises ``QAValueError``.

Precedence, applied in AIMET's order (a later, more specific setting wins):

1. ``defaults``: every quantizer. ``defaults.ops`` gives activation quantizers
   ``is_output_quantized`` / ``is_input_quantized`` / ``is_symmetric``; ``defaults.params``
   gives parameter quantizers ``is_quantized`` / ``is_symmetric``; ``strict_symmetric``,
   ``unsigned_symmetric`` are global; ``per_channel_quantization`` applies to weights.
   A key left out takes AIMET's built-in value: outputs on, inputs off, parameters on and
   symmetric, activations asymmetric, strict off, unsigned symmetric on, per-channel off.
2. ``params.<name>`` (e.g. ``bias``): the parameter quantizers of that name, in every op.
3. ``op_type.<T>``: layers whose ``op_type`` is T. Op-level keys (``is_*_quantized``,
   ``is_symmetric``) act on activation quantizers, ``per_channel_quantization`` on weights,
   and ``op_type.<T>.params.<name>`` on that parameter (beating ``params.<name>``).
4. ``supergroups``: in a chain matching an ``op_list`` along the data flow (each layer
   feeds only the next, which reads only it), only the last layer's outputs stay quantized.
5. ``model_input.is_input_quantized``: the input quantizers of layers that read a model input.
6. ``model_output.is_output_quantized``: the output quantizers of layers that make a model output.

A parameter quantizer listed by several layers (a tied weight, the weight of a module called
twice) takes its settings from the layer that owns it (``Quantizer.layer``, the first that uses it).

Per-channel quantization applies only to parameter quantizers that have a channel ``axis``,
and by default only to weights (every parameter but ``bias``). qa extension: a params entry
(``params.<name>`` or ``op_type.<T>.params.<name>``) may set ``per_channel_quantization``
for that parameter explicitly.

Bitwidths are ``param_bw`` / ``output_bw`` unless ``supported_kernels`` (in ``defaults``,
then in ``op_type.<T>``) says otherwise: if the (activation, param) pair in force is one of
the listed integer kernels it is kept, else the first integer kernel's bitwidths are taken
(AIMET's enforced-kernel rule; op-level kernels apply to that op's activations too, which
makes per-op low-bit experiments possible). Float kernels are not simulated and are skipped.

Per-layer overrides (qa extension): a top-level ``layers`` section maps a layer's name (as qa
names it: ``conv1``, ``layer1.0/add``, an ONNX node's name) to an entry of the same form as an
``op_type`` entry, which beats the ``op_type`` entry of that layer for every key it sets, and
whose ``is_output_quantized`` / ``is_input_quantized`` also beat supergroups, ``model_input`` and
``model_output``. Bitwidths are set AIMET's way, through ``supported_kernels``; an entry may also
set ``quant_scheme`` ("tf", "tf_enhanced", "percentile") for the layer's quantizers (its
activations and the parameters it owns). A parameter's settings are read from the entry of the
layer that owns it. A name that is no layer of the model is warned about. AIMET has no per-layer
section in its config files; :mod:`qa.recommend` writes its plans this way::

    {"layers": {"dwconv": {"params": {"weight": {"per_channel_quantization": "True"}}},
                "fc": {"supported_kernels": [{"activation": {"bitwidth": 8, "dtype": "int"},
                                              "param": {"bitwidth": 8, "dtype": "int"}}]},
                "conv2": {"is_output_quantized": "False", "params": {"weight": {"is_quantized": "False"}}}}}

:func:`dump_config` writes a parsed config back as such a dict.

Data movement, one policy for every framework: ops whose output holds (a subset or a
rearrangement of) the values of their input (:data:`GRID_PRESERVING`: Reshape, Transpose,
Flatten, Squeeze, Unsqueeze, Identity, Dropout, Expand, Slice, Split, Tile, DepthToSpace,
SpaceToDepth) get no output quantization: their input is quantized already, so a second
quantizer could only re-round the same values. This holds under any config; an
``op_type.<T>.is_output_quantized`` entry for such a type overrides it. :data:`DEFAULT_CONFIG`
also turns off AIMET's own list (Cast, Dropout, Expand, Gather, Mean, Pad, Squeeze), so that
results match AIMET's.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from ._aimet_configs import ALIASES, aimet_config, is_alias
from ._arrays import check_bitwidth
from .errors import QAValueError
from .graph import INPUT, OUTPUT, PARAM, Layer, QuantGraph

__all__ = ["DEFAULT_CONFIG", "GRID_PRESERVING", "ALIASES", "SUPERGROUP_PASSES", "ParamConfig", "OpConfig", "Kernel", "QuantsimConfig", "load_config",
           "apply_config", "dump_config", "SCHEMES"]

GRID_PRESERVING = frozenset({
    "Col2Im", "Compress", "DepthToSpace", "Dropout", "Expand", "Flatten", "Gather", "GatherElements", "GatherND",
    "Identity", "MaxPool", "MaxRoiPool", "NonZero", "Pad", "ReduceMax", "ReduceMin", "Reshape", "Slice",
    "SpaceToDepth", "Split", "SplitToSequence", "Squeeze", "Tile", "TopK", "Transpose", "Unsqueeze", "BatchToSpace",
    "SpaceToBatch"})
#: ``supergroup_pass_list`` entries: what each adds to the supergroups (the norm passes fuse the ops of
#: a LayerNorm / RMSNorm written out op by op in AIMET's ONNX flow; qa sees such a norm as one layer
#: whenever the framework has one op for it, which needs nothing more).
SUPERGROUP_PASSES: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    "MatmulAdd": (("MatMul", "Add"),), "LayerNormalization": (), "RMSNormalization": ()}

DEFAULT_CONFIG: Dict[str, Any] = aimet_config("default")  # AIMET 2.x's default (config_file=None there too)


@dataclass
class ParamConfig:
    """Settings for a parameter quantizer; None means "not set here"."""

    is_quantized: Optional[bool] = None
    is_symmetric: Optional[bool] = None
    per_channel_quantization: Optional[bool] = None  # qa extension


@dataclass(frozen=True)
class Kernel:
    """One ``supported_kernels`` entry: activation and parameter bitwidth and dtype."""

    activation_bw: int
    param_bw: int
    activation_dtype: str = "int"
    param_dtype: str = "int"


@dataclass
class OpConfig:
    """Settings for the quantizers of an op (``defaults`` or ``op_type.<T>``); None means "not set here"."""

    is_output_quantized: Optional[bool] = None
    is_input_quantized: Optional[bool] = None
    is_symmetric: Optional[bool] = None
    per_channel_quantization: Optional[bool] = None
    params: Dict[str, ParamConfig] = field(default_factory=dict)
    supported_kernels: Tuple[Kernel, ...] = ()
    quant_scheme: Optional[str] = None  # qa extension, ``layers`` entries only
    encoding_constraints: Optional[Tuple[Optional[float], Optional[float]]] = None  # fixed output (min, max)


@dataclass
class QuantsimConfig:
    """A parsed quantsim config. ``defaults`` holds ``defaults.ops`` plus the defaults'
    ``per_channel_quantization`` and ``supported_kernels``; ``param_types`` is the top-level
    ``params`` section and ``op_types`` the ``op_type`` section."""

    defaults: OpConfig = field(default_factory=OpConfig)
    default_params: ParamConfig = field(default_factory=ParamConfig)
    strict_symmetric: Optional[bool] = None
    unsigned_symmetric: Optional[bool] = None
    param_types: Dict[str, ParamConfig] = field(default_factory=dict)
    op_types: Dict[str, OpConfig] = field(default_factory=dict)
    supergroups: List[Tuple[str, ...]] = field(default_factory=list)
    model_input: Optional[bool] = None
    model_output: Optional[bool] = None
    layers: Dict[str, OpConfig] = field(default_factory=dict)  # qa extension: per-layer overrides
    supergroup_passes: Tuple[str, ...] = ()
    hw_version: Optional[str] = None


# --------------------------------------------------------------------------- loading

_TOP_KEYS = ("defaults", "params", "op_type", "supergroups", "supergroup_pass_list", "model_input", "model_output",
             "layers")
SCHEMES = ("tf", "tf_enhanced", "percentile")
_DEFAULTS_KEYS = ("ops", "params", "strict_symmetric", "unsigned_symmetric", "per_channel_quantization",
                  "supported_kernels", "hw_version")
_OP_FLAGS = ("is_output_quantized", "is_input_quantized", "is_symmetric", "per_channel_quantization")
_OP_KEYS = _OP_FLAGS + ("params", "supported_kernels", "encoding_constraints")
_PARAM_KEYS = ("is_quantized", "is_symmetric", "per_channel_quantization")  # the last: qa extension
_LAYER_KEYS = _OP_KEYS + ("quant_scheme",)  # qa extension


class _Parser:
    """Walks a config dict; errors name the source and the key path, unknown keys are collected."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.unknown: List[str] = []

    def fail(self, path: str, what: str) -> QAValueError:
        return QAValueError(f"quantsim config {self.source}: {path or 'top level'}: {what}")

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(path, f"expected an object, got {type(value).__name__}")
        return value

    def obj(self, value: Any, path: str, keys: Tuple[str, ...],
            silent: Tuple[str, ...] = ()) -> Mapping[str, Any]:
        value = self.mapping(value, path)
        self.unknown += [f"{path}.{k}" if path else str(k) for k in value if k not in keys + silent]
        return value

    def bool(self, value: Any, path: str) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise self.fail(path, f"expected \"True\", \"False\" or a boolean, got {value!r}")

    def bools(self, d: Mapping[str, Any], path: str, keys: Tuple[str, ...]) -> Dict[str, bool]:
        return {k: self.bool(d[k], f"{path}.{k}") for k in keys if k in d}

    def param(self, value: Any, path: str, keys: Tuple[str, ...] = _PARAM_KEYS) -> ParamConfig:
        return ParamConfig(**self.bools(self.obj(value, path, keys), path, keys))

    def params(self, value: Any, path: str) -> Dict[str, ParamConfig]:
        return {str(n): self.param(v, f"{path}.{n}") for n, v in self.mapping(value, path).items()}

    def kernels(self, value: Any, path: str) -> Tuple[Kernel, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(path, "expected a non-empty list of {activation, param} kernels")
        out = []
        for i, entry in enumerate(value):
            entry = self.obj(entry, f"{path}[{i}]", ("activation", "param"))
            (abw, adt), (pbw, pdt) = (self.kernel_side(entry, f"{path}[{i}]", side)
                                      for side in ("activation", "param"))
            out.append(Kernel(abw, pbw, adt, pdt))
        return tuple(out)

    def kernel_side(self, entry: Mapping[str, Any], path: str, side: str) -> Tuple[int, str]:
        if side not in entry:
            raise self.fail(path, f"missing '{side}'")
        spec = self.obj(entry[side], f"{path}.{side}", ("bitwidth", "dtype"))
        if "bitwidth" not in spec:
            raise self.fail(f"{path}.{side}", "missing 'bitwidth'")
        try:
            bw = check_bitwidth(spec["bitwidth"])
        except QAValueError as e:
            raise self.fail(f"{path}.{side}.bitwidth", str(e)) from None
        dtype = spec.get("dtype", "int")
        if dtype not in ("int", "float"):
            raise self.fail(f"{path}.{side}.dtype", f"expected \"int\" or \"float\", got {dtype!r}")
        return bw, dtype

    def op(self, d: Mapping[str, Any], path: str) -> OpConfig:
        cfg = OpConfig(**self.bools(d, path, _OP_FLAGS))
        if "params" in d:
            cfg.params = self.params(d["params"], f"{path}.params")
        if "supported_kernels" in d:
            cfg.supported_kernels = self.kernels(d["supported_kernels"], f"{path}.supported_kernels")
        if "encoding_constraints" in d:
            cfg.encoding_constraints = self.constraints(d["encoding_constraints"], f"{path}.encoding_constraints")
        return cfg

    def constraints(self, value: Any, path: str) -> Tuple[Optional[float], Optional[float]]:
        d = self.obj(value, path, ("min", "max"))
        bounds = []
        for key in ("min", "max"):
            v = d.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise self.fail(f"{path}.{key}", f"expected a finite number, got {v!r:.80}")
            bounds.append(None if v is None else float(v))
        if bounds[0] is None and bounds[1] is None:
            raise self.fail(path, "expected 'min' and/or 'max'")
        if bounds[0] is not None and bounds[1] is not None and not bounds[0] < bounds[1]:
            raise self.fail(path, f"min {bounds[0]} is not below max {bounds[1]}")
        return bounds[0], bounds[1]

    def config(self, value: Any) -> QuantsimConfig:
        d = self.obj(value, "", _TOP_KEYS)
        cfg = QuantsimConfig()
        if "defaults" in d:
            dd = self.obj(d["defaults"], "defaults", _DEFAULTS_KEYS)
            if "hw_version" in dd:
                if not isinstance(dd["hw_version"], str):
                    raise self.fail("defaults.hw_version", f"expected a string, got {dd['hw_version']!r:.80}")
                cfg.hw_version = dd["hw_version"]
            ops = self.obj(dd.get("ops", {}), "defaults.ops", _OP_FLAGS[:3])
            cfg.defaults = OpConfig(**self.bools(ops, "defaults.ops", _OP_FLAGS[:3]))
            cfg.defaults.per_channel_quantization = self.bools(
                dd, "defaults", ("per_channel_quantization",)).get("per_channel_quantization")
            if "supported_kernels" in dd:
                cfg.defaults.supported_kernels = self.kernels(dd["supported_kernels"],
                                                              "defaults.supported_kernels")
            cfg.default_params = self.param(dd.get("params", {}), "defaults.params", _PARAM_KEYS[:2])
            glob = self.bools(dd, "defaults", ("strict_symmetric", "unsigned_symmetric"))
            cfg.strict_symmetric = glob.get("strict_symmetric")
            cfg.unsigned_symmetric = glob.get("unsigned_symmetric")
        if "params" in d:
            cfg.param_types = self.params(d["params"], "params")
        if "op_type" in d:
            cfg.op_types = {
                str(t): self.op(self.obj(v, f"op_type.{t}", _OP_KEYS), f"op_type.{t}")
                for t, v in self.mapping(d["op_type"], "op_type").items()}
        if "supergroups" in d:
            if not isinstance(d["supergroups"], list):
                raise self.fail("supergroups", f"expected a list, got {type(d['supergroups']).__name__}")
            for i, group in enumerate(d["supergroups"]):
                ops = self.obj(group, f"supergroups[{i}]", ("op_list",)).get("op_list")
                if not isinstance(ops, list) or len(ops) < 2 or not all(isinstance(o, str) for o in ops):
                    raise self.fail(f"supergroups[{i}].op_list",
                                    f"expected a list of at least 2 op type names, got {ops!r}")
                cfg.supergroups.append(tuple(ops))
        if "supergroup_pass_list" in d:
            passes = d["supergroup_pass_list"]
            if not isinstance(passes, list) or not all(isinstance(p, str) for p in passes):
                raise self.fail("supergroup_pass_list", f"expected a list of pass names, got {passes!r:.80}")
            self.unknown += [f"supergroup_pass_list: {p!r} (known: {', '.join(SUPERGROUP_PASSES)})"
                             for p in passes if p not in SUPERGROUP_PASSES]
            cfg.supergroup_passes = tuple(passes)
        if "model_input" in d:
            mi = self.obj(d["model_input"], "model_input", ("is_input_quantized",))
            cfg.model_input = self.bools(mi, "model_input", ("is_input_quantized",)).get(
                "is_input_quantized")
        if "model_output" in d:
            mo = self.obj(d["model_output"], "model_output", ("is_output_quantized",))
            cfg.model_output = self.bools(mo, "model_output", ("is_output_quantized",)).get(
                "is_output_quantized")
        if "layers" in d:
            cfg.layers = {str(n): self.layer(v, f"layers[{json.dumps(str(n))}]")
                          for n, v in self.mapping(d["layers"], "layers").items()}
        return cfg

    def layer(self, value: Any, path: str) -> OpConfig:
        d = self.obj(value, path, _LAYER_KEYS)
        cfg = self.op(d, path)
        if "quant_scheme" in d:
            if d["quant_scheme"] not in SCHEMES:
                raise self.fail(f"{path}.quant_scheme", f"expected one of {', '.join(SCHEMES)}, "
                                                        f"got {d['quant_scheme']!r:.80}")
            cfg.quant_scheme = d["quant_scheme"]
        return cfg

    def parse(self, value: Any) -> QuantsimConfig:
        cfg = self.config(value)
        for key in self.unknown:
            # stacklevel 3: the warning points at the caller of load_config.
            warnings.warn(f"quantsim config {self.source}: unknown key '{key}' ignored", UserWarning,
                          stacklevel=3)
        return cfg


def load_config(
    config: Union[str, "os.PathLike[str]", Mapping[str, Any], QuantsimConfig, None],
) -> QuantsimConfig:
    """Read an AIMET quantsim config.

    Args:
        config: a path to a JSON file, the same content as a dict, None for AIMET's
            default config (:data:`DEFAULT_CONFIG`), or an already loaded QuantsimConfig
            (returned as is).

    Returns:
        The parsed config; keys the file leaves out are None (see the module docstring for
        what they default to).

    Raises:
        QAValueError: the file is missing or unreadable, is not JSON, or a value has the wrong type.

    Example:
        >>> cfg = load_config({"defaults": {"ops": {}, "params": {"is_symmetric": "False"}},
        ...                    "op_type": {"Gemm": {"per_channel_quantization": True}}})
        >>> cfg.default_params.is_symmetric, cfg.op_types["Gemm"].per_channel_quantization
        (False, True)
        >>> load_config(None).op_types["Conv"].per_channel_quantization  # AIMET 2.x's default
        True
        >>> load_config("htp_v73").op_types["Sigmoid"].encoding_constraints
        (0.0, 1.0)
    """
    if isinstance(config, QuantsimConfig):
        return config
    if config is None:
        return _Parser("(default)").parse(DEFAULT_CONFIG)
    if isinstance(config, Mapping):
        return _Parser("(dict)").parse(config)
    if not isinstance(config, (str, os.PathLike)):
        raise QAValueError(f"quantsim config must be a path, an alias ({', '.join(ALIASES)}), a dict or None, "
                           f"got {type(config).__name__}")
    path = os.fspath(config)
    if is_alias(path) and not os.path.exists(path):  # a file of that name wins, as in AIMET
        return _Parser(f"'{path}' (AIMET's named config)").parse(aimet_config(path))
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise QAValueError(f"quantsim config file '{path}' not found; a config is a JSON file or one of AIMET's "
                           f"names: {', '.join(ALIASES)}") from None
    except json.JSONDecodeError as e:
        raise QAValueError(f"quantsim config file '{path}' is not valid JSON: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise QAValueError(f"quantsim config file '{path}' cannot be read: {e}") from None
    return _Parser(f"'{path}'").parse(data)


# --------------------------------------------------------------------------- applying

_NO_OP = OpConfig()
_NO_PARAM = ParamConfig()


def _first(*values: Optional[bool]) -> bool:
    return next(v for v in values if v is not None)


def _pick_kernel(kernels: Tuple[Kernel, ...], bws: Tuple[int, int]) -> Tuple[int, int]:
    """(activation_bw, param_bw): kept if listed as an integer kernel, else the first integer kernel's."""
    ints = [(k.activation_bw, k.param_bw) for k in kernels
            if k.activation_dtype == "int" and k.param_dtype == "int"]
    return bws if not ints or bws in ints else ints[0]


def _supergroup_chains(graph: QuantGraph, supergroups: List[Tuple[str, ...]]) -> Iterator[List[Layer]]:
    consumers: Dict[str, List[Layer]] = {}
    for layer in graph.layers:
        for name in layer.inputs:
            consumers.setdefault(name, []).append(layer)
    for op_list in supergroups:
        for first in graph.layers:
            if first.op_type != op_list[0]:
                continue
            chain = [first]
            for op_type in op_list[1:]:
                prev = chain[-1]
                nxt = consumers.get(prev.name, [])
                if len(nxt) != 1 or nxt[0].op_type != op_type or nxt[0].inputs != [prev.name]:
                    break
                chain.append(nxt[0])
            else:
                yield chain


def _is_bias_add(chain: List[Layer]) -> bool:
    """MatmulAdd: a MatMul with a weight whose output only a constant is added to (a Linear written as
    MatMul + Add, as ONNX exports it for 3-D inputs) is fused like a Gemm; an attention MatMul of two
    activations, or an Add of a model input (a mask), is not."""
    matmul, add = chain
    return any(q.kind == PARAM for q in matmul.quantizers) and not add.model_input


def apply_config(graph: QuantGraph, config: QuantsimConfig, *, param_bw: int, output_bw: int) -> None:
    """Set every quantizer of ``graph`` (enabled, bitwidth, symmetric, strict,
    unsigned_symmetric, per_channel) from ``config``, in AIMET's order of precedence
    (see the module docstring). Encodings are left alone.

    Args:
        graph: the layers and quantizers to configure, changed in place.
        config: from :func:`load_config`.
        param_bw: bitwidth of parameter quantizers unless ``supported_kernels`` says otherwise.
        output_bw: bitwidth of activation (input and output) quantizers, likewise.

    Raises:
        QAValueError: a bitwidth is out of range.

    Example:
        >>> from qa.graph import Layer, Quantizer, QuantGraph, OUTPUT
        >>> conv = Layer("conv", "Conv", "Conv2d", [Quantizer("conv_output_0", "conv", OUTPUT)])
        >>> relu = Layer("relu", "Relu", "ReLU", [Quantizer("relu_output_0", "relu", OUTPUT)],
        ...              inputs=["conv"])
        >>> graph = QuantGraph([conv, relu])
        >>> apply_config(graph, load_config(None), param_bw=8, output_bw=8)
        >>> [q.enabled for q in graph.quantizers()]   # Conv+Relu is a supergroup
        [False, True]
    """
    param_bw = check_bitwidth(param_bw, "param_bw")
    output_bw = check_bitwidth(output_bw, "output_bw")
    defaults, dparams = config.defaults, config.default_params
    base = _pick_kernel(defaults.supported_kernels, (output_bw, param_bw))
    strict = _first(config.strict_symmetric, False)
    unsigned = _first(config.unsigned_symmetric, True)
    configured = set()  # a parameter shared by several layers is set once, by the layer that owns it
    unknown = [name for name in config.layers if name not in graph]
    if unknown:
        warnings.warn(f"quantsim config: layers: {', '.join(repr(n) for n in unknown[:10])} "
                      f"{'is no layer' if len(unknown) == 1 else 'are no layers'} of this model; ignored",
                      UserWarning, stacklevel=2)
    for layer in graph.layers:
        op = config.op_types.get(layer.op_type, _NO_OP)
        own = config.layers.get(layer.name, _NO_OP)  # qa extension: beats op_type
        act_bw, par_bw = _pick_kernel(own.supported_kernels or op.supported_kernels, base)
        weight_pc = _first(own.per_channel_quantization, op.per_channel_quantization,
                           defaults.per_channel_quantization, False)
        for q in layer.quantizers:
            if q.name in configured or (q.layer != layer.name and q.layer in graph):
                continue
            configured.add(q.name)
            q.strict, q.unsigned_symmetric = strict, unsigned
            q.scheme = own.quant_scheme
            if q.kind == PARAM:
                mine = own.params.get(q.param or "", _NO_PARAM)
                local = op.params.get(q.param or "", _NO_PARAM)
                glob = config.param_types.get(q.param or "", _NO_PARAM)
                q.bitwidth = par_bw
                q.enabled = _first(mine.is_quantized, local.is_quantized, glob.is_quantized, dparams.is_quantized,
                                   True)
                q.symmetric = _first(mine.is_symmetric, local.is_symmetric, glob.is_symmetric,
                                     dparams.is_symmetric, True)
                q.per_channel = q.axis is not None and _first(
                    mine.per_channel_quantization, local.per_channel_quantization, glob.per_channel_quantization,
                    weight_pc and q.param != "bias")
                continue
            q.bitwidth, q.per_channel = act_bw, False
            q.symmetric = _first(own.is_symmetric, op.is_symmetric, defaults.is_symmetric, False)
            q.fixed_range = None
            if q.kind == OUTPUT:
                q.fixed_range = (own.encoding_constraints if own.encoding_constraints is not None
                                 else op.encoding_constraints)
                moves_data = False if layer.op_type in GRID_PRESERVING else None
                q.enabled = _first(own.is_output_quantized, op.is_output_quantized, moves_data,
                                   defaults.is_output_quantized, True)
            else:
                q.enabled = _first(own.is_input_quantized, op.is_input_quantized, defaults.is_input_quantized, False)
                if layer.model_input and config.model_input is not None:
                    q.enabled = config.model_input
    passes = [g for p in config.supergroup_passes for g in SUPERGROUP_PASSES.get(p, ())]
    fused = list(_supergroup_chains(graph, config.supergroups))
    fused += [c for c in _supergroup_chains(graph, passes) if _is_bias_add(c)]
    for chain in fused:
        for layer in chain[:-1]:
            for q in layer.quantizers:
                if q.kind == OUTPUT:
                    q.enabled = False
    if config.model_output is not None:
        for layer in graph.layers:
            if layer.model_output:
                for q in layer.quantizers:
                    if q.kind == OUTPUT:
                        q.enabled = config.model_output
    for name, own in config.layers.items():  # a layer's own switches beat supergroups and model input/output
        if name not in graph:
            continue
        for q in graph[name].quantizers:
            if q.kind == OUTPUT and own.is_output_quantized is not None:
                q.enabled = own.is_output_quantized
            elif q.kind == INPUT and own.is_input_quantized is not None:
                q.enabled = own.is_input_quantized


def _flag(value: bool) -> str:
    return "True" if value else "False"


def _dump_flags(cfg: Any, keys: Tuple[str, ...]) -> Dict[str, Any]:
    return {k: _flag(getattr(cfg, k)) for k in keys if getattr(cfg, k) is not None}


def _dump_kernels(kernels: Tuple[Kernel, ...]) -> List[Dict[str, Any]]:
    return [{"activation": {"bitwidth": k.activation_bw, "dtype": k.activation_dtype},
             "param": {"bitwidth": k.param_bw, "dtype": k.param_dtype}} for k in kernels]


def _dump_op(cfg: OpConfig) -> Dict[str, Any]:
    out = _dump_flags(cfg, _OP_FLAGS)
    if cfg.params:
        out["params"] = {n: _dump_flags(p, _PARAM_KEYS) for n, p in cfg.params.items()}
    if cfg.supported_kernels:
        out["supported_kernels"] = _dump_kernels(cfg.supported_kernels)
    if cfg.encoding_constraints is not None:
        out["encoding_constraints"] = {k: v for k, v in zip(("min", "max"), cfg.encoding_constraints)
                                       if v is not None}
    if cfg.quant_scheme is not None:
        out["quant_scheme"] = cfg.quant_scheme
    return out


def dump_config(config: QuantsimConfig) -> Dict[str, Any]:
    """A parsed config as a JSON-ready dict in the quantsim config format: what ``load_config``
    reads back into an equal config (booleans as AIMET's "True" / "False" strings; keys that
    were not set are left out, so that they keep their defaults).

    Args:
        config: from :func:`load_config`.

    Returns:
        The config as a dict (``json.dump`` it to get a config file).

    Example:
        >>> cfg = load_config({"defaults": {"ops": {"is_output_quantized": "True"}, "params": {}},
        ...                    "layers": {"fc": {"quant_scheme": "tf", "params": {"weight": {"is_quantized": False}}}}})
        >>> dump_config(cfg)["layers"]
        {'fc': {'params': {'weight': {'is_quantized': 'False'}}, 'quant_scheme': 'tf'}}
        >>> load_config(dump_config(cfg)) == cfg
        True
    """
    defaults: Dict[str, Any] = {"ops": _dump_flags(config.defaults, _OP_FLAGS[:3]),
                                "params": _dump_flags(config.default_params, _PARAM_KEYS[:2])}
    for key, value in (("strict_symmetric", config.strict_symmetric),
                       ("unsigned_symmetric", config.unsigned_symmetric),
                       ("per_channel_quantization", config.defaults.per_channel_quantization)):
        if value is not None:
            defaults[key] = _flag(value)
    if config.defaults.supported_kernels:
        defaults["supported_kernels"] = _dump_kernels(config.defaults.supported_kernels)
    if config.hw_version is not None:
        defaults["hw_version"] = config.hw_version
    out: Dict[str, Any] = {"defaults": defaults,
                           "params": {n: _dump_flags(p, _PARAM_KEYS) for n, p in config.param_types.items()},
                           "op_type": {t: _dump_op(c) for t, c in config.op_types.items()},
                           "supergroups": [{"op_list": list(ops)} for ops in config.supergroups],
                           **({"supergroup_pass_list": list(config.supergroup_passes)}
                              if config.supergroup_passes else {}),
                           "model_input": ({} if config.model_input is None
                                           else {"is_input_quantized": _flag(config.model_input)}),
                           "model_output": ({} if config.model_output is None
                                            else {"is_output_quantized": _flag(config.model_output)})}
    if config.layers:
        out["layers"] = {n: _dump_op(c) for n, c in config.layers.items()}
    return out
