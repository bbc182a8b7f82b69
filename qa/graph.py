"""The framework-agnostic model of what gets quantized: layers in execution order and their quantizers."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from .encodings import Encoding

__all__ = ["Quantizer", "Layer", "QuantGraph", "PARAM", "OUTPUT", "INPUT", "call_name"]

PARAM, OUTPUT, INPUT = "param", "output", "input"


def call_name(name: str, k: int) -> str:
    """The layer name of the k-th call (from 0) of a module or layer that runs several times in one
    forward pass: the first call keeps the module's name (AIMET's key), later ones are ``<name>/call_<k>``.

    Example:
        >>> call_name("act", 0), call_name("act", 2)
        ('act', 'act/call_2')
    """
    return name if k == 0 else f"{name}/call_{k}"


@dataclass
class Quantizer:
    """One place where a tensor is quantized.

    ``name`` is AIMET's key: ``<layer>_weight`` / ``<layer>_bias`` for parameters,
    ``<layer>_output_<i>`` and ``<layer>_input_<i>`` for activations. A parameter used by several
    layers (tied weights, a module called twice) is one quantizer, named after and owned by
    (``layer``) the first layer that uses it, and listed by every layer that uses it.
    ``enabled`` says whether the quantization config quantizes it at all; analyses toggle
    quantizers on top of that, never turning on one the config left off.
    """

    name: str
    layer: str
    kind: str  # PARAM, OUTPUT or INPUT
    index: int = 0  # output / input position
    param: Optional[str] = None  # "weight", "bias", ... for PARAM quantizers
    shape: Optional[Tuple[int, ...]] = None  # parameter shape (activations: unknown until run)
    enabled: bool = True
    bitwidth: int = 8
    symmetric: bool = False
    strict: bool = False
    unsigned_symmetric: bool = False
    per_channel: bool = False
    axis: Optional[int] = None  # channel axis of a parameter, for per-channel quantization
    encoding: Optional[Encoding] = None
    # this quantizer's encoding scheme ("tf", "tf_enhanced", "percentile") when it is not the
    # simulation's (a quantsim config's ``layers.<name>.quant_scheme``); None: the simulation's
    scheme: Optional[str] = None
    # a quantsim config's ``encoding_constraints`` for this output: fixed (min, max); None on a side
    # means that side comes from calibration (AIMET's encoding_min_max_fixed_vals)
    fixed_range: Optional[Tuple[Optional[float], Optional[float]]] = None

    @property
    def is_param(self) -> bool:
        return self.kind == PARAM


@dataclass
class Layer:
    """A quantizable layer (a leaf module, Keras layer or ONNX node), in execution order.

    ``op_type`` uses ONNX operator names (Conv, Gemm, Relu, ...) because AIMET quantsim
    configs do; ``type_name`` is the framework's own name for display (Conv2d, Dense, ...).
    ``inputs`` names the layers whose outputs feed this one (data flow), and
    ``model_input`` / ``model_output`` say whether it reads a model input / makes a model output.

    A module (Keras layer) that runs several times in one forward pass is one layer per call
    (:func:`call_name`), each with its own activation quantizers; ``calls`` is how many times the
    module runs and ``call`` which of those runs this layer is (0: the first). Parameter
    quantizers of such a module are shared by its call layers.
    """

    name: str
    op_type: str
    type_name: str
    quantizers: List[Quantizer] = field(default_factory=list)
    inputs: List[str] = field(default_factory=list)
    model_input: bool = False
    model_output: bool = False
    calls: int = 1
    call: int = 0

    def quantizer(self, kind: str, key: object = 0) -> Optional[Quantizer]:
        for q in self.quantizers:
            if q.kind == kind and (q.param == key if kind == PARAM else q.index == key):
                return q
        return None

    @property
    def params(self) -> List[Quantizer]:
        return [q for q in self.quantizers if q.kind == PARAM]


@dataclass
class QuantGraph:
    """All layers of a model in execution order, plus what could not be quantized."""

    layers: List[Layer]
    # Operations that run outside quantizable layers (e.g. `x + y` in a torch forward) and so
    # stay in float: listed so that nobody mistakes them for quantized.
    unquantized_ops: List[str] = field(default_factory=list)
    folded_batch_norms: List[Tuple[str, str]] = field(default_factory=list)  # (bn, into layer)
    # Batch norms that could have been folded but were not, and why: (bn, layer, reason), e.g.
    # ("bn", "fc", "its weight is shared with emb"). They stay layers of their own.
    unfolded_batch_norms: List[Tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_name: Dict[str, Layer] = {layer.name: layer for layer in self.layers}

    def __getitem__(self, name: str) -> Layer:
        return self._by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def quantizers(self) -> Iterator[Quantizer]:
        """Every quantizer once, in layer order (a shared parameter quantizer is listed by
        several layers and yielded at its first)."""
        seen = set()
        for layer in self.layers:
            for q in layer.quantizers:
                if q.name not in seen:
                    seen.add(q.name)
                    yield q

    def copy(self) -> "QuantGraph":
        """An independent copy: a simulation sets its own quantizer settings and encodings on it."""
        return copy.deepcopy(self)
