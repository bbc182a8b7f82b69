"""Verified fixes: try the remedies the diagnosis suggests, measure each, and plan the fewest that meet a target.

After ``analyze`` has ranked the culprit layers (:mod:`qa.ranking`), :func:`recommend` measures,
for each of the top few, what every remedy the dashboard used to only suggest actually does. Each
candidate is ONE evaluation of the fully quantized model with only that change:

=================  ====================================================================  ========
kind               the change                                                             cost
=================  ====================================================================  ========
``per_channel``    a per-tensor weight (with a channel axis) quantized per channel        0 bits
``param_bw``       the layer's weights at 8, then 16 bits (each step above the analysis)  weights
``output_bw``      the layer's activations at 8, then 16 bits                             values
``scheme``         its encodings with the other scheme (tf <-> tf_enhanced;                0 bits
                   percentile -> tf_enhanced)
``float``          the layer left in float (the disabling sweep measured this already:    both
                   its score is reused, no evaluation)
=================  ====================================================================  ========

A candidate is a :meth:`qa.sim.QuantSim.derive` of the analysis's calibrated simulation: a copy
of the quantizer settings with that change, in which only the changed encodings are recomputed
(weights re-observed from the float weights, activations from the calibration statistics the
simulation kept: calibration observes the float model, so nothing is run again). Every other
quantizer keeps its encoding, and neither the user's model nor qa's copy of it is modified.
Evaluations go through ``QuantSim.evaluate(analyzer.eval_callback, ...)``: a failing callback is a
:class:`~qa.errors.QACallbackError` naming the candidate, as in the sweeps.

Then the plan: scores are higher-is-better, and the target says how close to FP32 the fully
quantized model must come (``target=0.01`` or ``{"relative": 0.01}``: within 1% of |FP32|, the
default; ``{"absolute": 0.5}``: within 0.5 of FP32 in the metric's own units). Layers are taken in
order of their best measured gain (ties: the sweeps' ranking); for each, the cheapest candidate
(in bits) that closes the remaining gap on its own is chosen, else the cheapest of those within
90% of its best gain, assuming gains add up. Changes that the others make unnecessary are then
dropped or swapped for cheaper ones. The combination is confirmed by ONE final evaluation (a plan
of one change was already measured as that candidate); the confirmed score, not the prediction,
says whether the target is reached, and a miss is reported as one.

Output (through :class:`qa.report.ResultsDir`):

* ``recommended_config.json``: the analysis's quantsim config with the plan as per-layer
  overrides in qa's ``layers`` section (:mod:`qa.config`), written with AIMET's own keys
  (``supported_kernels`` for bitwidths, ``is_output_quantized`` / ``params.<name>.is_quantized``
  for float, plus qa's ``params.<name>.per_channel_quantization`` and ``quant_scheme``).
  ``analyzer.create_quantsim(scheme, param_bw, output_bw, config_file="recommended_config.json")``
  computes exactly the confirmed score.
* ``recommended_config_aimet.json``: the same plan in AIMET's format alone (it passes the schema
  AIMET validates configs against: ``qa/report/schema/aimet_quantsim_config.schema.json``). AIMET
  configs have no per-layer section, so a planned layer's entry moves to its ``op_type`` when that
  changes no other layer (checked); the layers for which it cannot (a depthwise conv among other
  Convs, a per-layer scheme) are listed in ``recommendation.json`` under ``aimet.per_layer``, to
  be set in code on AIMET's QuantizationSimModel (README: "Using a plan in AIMET").
* ``recommendation.json``: every candidate tried (layer, change, measured score, its gain over
  the fully quantized model, its cost: extra weight bits, extra activation bits per forward pass
  on ``dummy_input``, extra encodings), the plan, its predicted and confirmed score, whether the
  target is reached, and the number of evaluations (schema:
  ``qa/report/schema/recommendation.schema.json``).
* the dashboard's "Verified fixes" section, built from those files.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ._progress import Progress
from .adapters._base import FLOAT
from .config import apply_config, dump_config, load_config
from .errors import QAError, QAValueError
from .executors import evaluate_variant, resolve_executor
from .graph import OUTPUT, Quantizer
from .ranking import culprits, finite
from .report import ResultsDir
from .sim import QuantSim

__all__ = ["recommend", "Recommendation", "Candidate", "Change", "Target", "parse_target", "CHANGE_KINDS",
           "RECOMMENDATION_FILE", "CONFIG_FILE", "AIMET_CONFIG_FILE", "RECOMMENDATION_SCHEMA_VERSION", "aimet_plan_config"]

log = logging.getLogger("qa")

#: Every kind of change, in the order tried (and preferred when costs tie).
CHANGE_KINDS = ("per_channel", "scheme", "param_bw", "output_bw", "float")
LADDER = (8, 16)  # the bitwidths tried above the analysis's
FLOAT_BITS = 32
OTHER_SCHEME = {"tf": "tf_enhanced", "tf_enhanced": "tf", "percentile": "tf_enhanced"}
DEFAULT_TARGET = 0.01
NEAR = 0.9  # a candidate with at least this share of its layer's best gain counts as good as the best
RECOMMENDATION_FILE = "recommendation.json"
CONFIG_FILE = "recommended_config.json"
AIMET_CONFIG_FILE = "recommended_config_aimet.json"
AIMET_BITWIDTHS = (4, 8, 16, 32)  # the kernel bitwidths AIMET's config schema allows
RECOMMENDATION_SCHEMA_VERSION = 1


# --------------------------------------------------------------------------- the target

@dataclass(frozen=True)
class Target:
    """How close to FP32 the fully quantized score must come (scores: higher is better).

    ``relative``: within ``value`` x |FP32| of FP32; ``absolute``: within ``value`` of FP32.

    Example:
        >>> Target("relative", 0.01).goal(87.4)
        86.526
        >>> Target("absolute", 0.5).goal(87.4)
        86.9
    """

    kind: str
    value: float

    def goal(self, fp32: float) -> float:
        """The lowest score that meets the target."""
        margin = self.value * abs(fp32) if self.kind == "relative" else self.value
        return round(fp32 - margin, 12)

    def to_dict(self) -> Dict[str, float]:
        return {self.kind: self.value}

    def describe(self) -> str:
        return f"within {self.value:.4g}" + (" of FP32" if self.kind == "absolute" else " x |FP32| of FP32")


def parse_target(target: Any) -> Target:
    """A :class:`Target` from what ``recommend(target=...)`` takes.

    Args:
        target: None (the default, ``{"relative": 0.01}``: within 1% of FP32), a number (relative),
            ``{"relative": r}`` or ``{"absolute": a}``, or a Target. Values are finite and >= 0.

    Raises:
        QAValueError: anything else.

    Example:
        >>> parse_target(None), parse_target(0.02), parse_target({"absolute": 0.5})
        (Target(kind='relative', value=0.01), Target(kind='relative', value=0.02), Target(kind='absolute', value=0.5))
    """
    if isinstance(target, Target):
        return target
    if target is None:
        return Target("relative", DEFAULT_TARGET)
    if isinstance(target, Mapping):
        if len(target) != 1 or next(iter(target)) not in ("relative", "absolute"):
            raise QAValueError(f"target must be {{'relative': r}} or {{'absolute': a}}, got {dict(target)!r:.120}")
        kind, value = next(iter(target.items()))
    else:
        kind, value = "relative", target
    v = finite(value)
    if v is None or isinstance(value, str) or v < 0:
        raise QAValueError(f"target: the {kind} margin must be a finite number >= 0, got {value!r:.80}")
    return Target(kind, v)


# --------------------------------------------------------------------------- changes and candidates

@dataclass
class Change:
    """One change to one layer's quantization, as settings of :meth:`QuantSim.derive`.

    ``kind`` is one of :data:`CHANGE_KINDS`; ``value``: True (per_channel), a bitwidth
    (param_bw, output_bw), a scheme name (scheme) or None (float). Costs: ``extra_weight_bits``
    (bits added to the stored weights), ``extra_activation_bits`` (bits added to the layer's
    quantized activations in one forward pass on ``dummy_input``; None when unknown),
    ``extra_encodings`` (scale/offset pairs added).
    """

    layer: str
    kind: str
    value: Any
    description: str
    settings: Dict[str, Dict[str, Any]]
    extra_weight_bits: int = 0
    extra_activation_bits: Optional[int] = 0
    extra_encodings: int = 0
    config: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # layer -> its ``layers`` config entry

    @property
    def bits(self) -> float:
        """Weight plus activation bits (unknown activation bits count as none): what the plan minimizes."""
        return float(self.extra_weight_bits + (self.extra_activation_bits or 0))

    def to_dict(self) -> Dict[str, Any]:
        return {"layer": self.layer, "change": self.kind, "value": self.value, "description": self.description,
                "quantizers": sorted(self.settings), "extra_weight_bits": self.extra_weight_bits,
                "extra_activation_bits": self.extra_activation_bits, "extra_encodings": self.extra_encodings}


@dataclass
class Candidate:
    """A change and what it measured: ``score`` (fully quantized but for the change), ``delta``
    (score - fully quantized score), ``source`` ("evaluated", or "sweep": the disabling sweep's score)."""

    change: Change
    score: Optional[float]
    delta: Optional[float]
    source: str = "evaluated"
    in_plan: bool = False

    @property
    def gain(self) -> float:
        """delta when it is a finite number, else 0 (a NaN score helps nothing)."""
        return self.delta if self.delta is not None and math.isfinite(self.delta) else 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {**self.change.to_dict(), "score": self.score, "delta": self.delta, "source": self.source,
                "in_plan": self.in_plan}


@dataclass
class Recommendation:
    """What :func:`recommend` measured and plans (written to ``recommendation.json``).

    ``score`` is the confirmed score of the plan (the fully quantized score when the plan is
    empty), ``reached`` whether it meets ``goal``, ``status`` "reached", "missed" or "met" (the
    fully quantized model met the target already: nothing to change). ``evaluations`` counts the
    calls of eval_callback made here (sweep scores reused are not counted).
    """

    target: Target
    goal: float
    fp32_score: float
    quantized_score: float
    quant_scheme: str
    default_param_bw: int
    default_output_bw: int
    layers: List[str] = field(default_factory=list)
    candidates: List[Candidate] = field(default_factory=list)
    plan: List[Change] = field(default_factory=list)
    predicted_score: Optional[float] = None
    score: Optional[float] = None
    plan_evaluated: str = "none"  # "final" (one evaluation), "candidate" (a one-change plan), "none"
    reached: bool = False
    status: str = "missed"
    evaluations: int = 0
    config: Dict[str, Any] = field(default_factory=dict)
    aimet_config: Dict[str, Any] = field(default_factory=dict)
    aimet_per_layer: List[str] = field(default_factory=list)  # planned layers AIMET's format cannot hold
    files: List[Path] = field(default_factory=list)
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """``recommendation.json``."""
        plan_weight = sum(c.extra_weight_bits for c in self.plan)
        acts = [c.extra_activation_bits for c in self.plan]
        return {
            "schema_version": RECOMMENDATION_SCHEMA_VERSION, "quant_scheme": self.quant_scheme,
            "default_param_bw": self.default_param_bw, "default_output_bw": self.default_output_bw,
            "fp32_score": self.fp32_score, "quantized_score": self.quantized_score, "target": self.target.to_dict(),
            "target_score": self.goal, "layers": list(self.layers),
            "candidates": [c.to_dict() for c in self.candidates],
            "plan": {"changes": [c.to_dict() for c in self.plan], "predicted_score": self.predicted_score,
                     "score": self.score, "delta": None if self.score is None else self.score - self.quantized_score,
                     "evaluated": self.plan_evaluated, "reached": self.reached, "status": self.status,
                     "extra_weight_bits": plan_weight,
                     "extra_activation_bits": None if None in acts else sum(acts)},
            "evaluations": self.evaluations, "config_file": CONFIG_FILE,
            "aimet": {"config_file": AIMET_CONFIG_FILE,
                      "per_layer": [c.to_dict() for c in self.plan if c.layer in self.aimet_per_layer]},
            "seconds": round(self.seconds, 4),
            "notes": list(self.notes)}

    def brief(self) -> Dict[str, Any]:
        """A few lines for summary.json: the plan, its confirmed score and the evaluations."""
        return {"status": self.status, "reached": self.reached, "target": self.target.to_dict(),
                "target_score": self.goal, "score": self.score, "evaluations": self.evaluations,
                "plan": [f"{c.layer}: {c.description}" for c in self.plan], "file": RECOMMENDATION_FILE}


# --------------------------------------------------------------------------- building candidates

def _numel(q: Quantizer) -> int:
    return int(np.prod(q.shape)) if q.shape else 0


def _activation_sizes(sim: QuantSim) -> Dict[str, int]:
    """Values per forward pass on dummy_input of each activation quantizer: layer outputs are counted
    in one float pass on dummy_input; the others (model inputs) from the calibration histograms,
    in proportion. Empty when the adapter has no dummy_input or the pass fails."""
    adapter = sim.adapter
    dummy = getattr(adapter, "dummy_input", None)
    if dummy is None:
        return {}
    seen: Dict[Tuple[str, int], int] = {}

    def sink(layer: str, i: int, array: Any) -> None:
        seen.setdefault((layer, i), int(np.prod(np.shape(array))))
    try:
        adapter.activate(FLOAT)
        with adapter.capturing(sink):
            adapter.run(dummy)
    except Exception as e:  # a cost left unknown, never a failure
        log.debug("recommend: could not count activation values on dummy_input (%s: %s)", type(e).__name__, e)
        return {}
    sizes = {q.name: seen[(q.layer, q.index)] for q in sim.quantizers.values()
             if q.kind == OUTPUT and (q.layer, q.index) in seen}
    ratios = [sizes[n] / sim.stats[n].total for n in sizes
              if hasattr(sim.stats.get(n), "total") and np.ndim(sim.stats[n].total) == 0 and sim.stats[n].total]
    if ratios:
        ratio = float(np.median(ratios))
        for name, obs in sim.stats.items():
            q = sim.quantizers[name]
            if name not in sizes and not q.is_param and np.ndim(getattr(obs, "total", None)) == 0:
                sizes[name] = int(round(obs.total * ratio))
    return sizes


def _kernel(act_bw: int, par_bw: int) -> List[Dict[str, Any]]:
    return [{"activation": {"bitwidth": int(act_bw), "dtype": "int"},
             "param": {"bitwidth": int(par_bw), "dtype": "int"}}]


class _Layer:
    """One culprit layer's quantizers in the simulation, and the changes that can be made to it."""

    def __init__(self, sim: QuantSim, name: str, sizes: Mapping[str, int]) -> None:
        self.sim, self.name, self.sizes = sim, name, sizes
        layer = sim.graph[name]
        enabled = sim.enabled
        self.owned = [q for q in layer.quantizers if q.is_param and q.layer == name]
        self.params = [q for q in self.owned if q.name in enabled]
        self.acts = [q for q in layer.quantizers if not q.is_param and q.name in enabled]
        self.all_acts = [q for q in layer.quantizers if not q.is_param]
        self.on = sorted(sim.layer_quantizers(name))
        # the bitwidths a per-layer kernel must state (apply_config gives every one of them one value)
        self.act_bw = self.all_acts[0].bitwidth if self.all_acts else sim.output_bw
        self.par_bw = self.owned[0].bitwidth if self.owned else sim.param_bw

    def _act_bits(self, quantizers: Iterable[Quantizer], bits: int) -> Optional[int]:
        total = 0
        for q in quantizers:
            if q.name not in self.sizes:
                return None
            total += (bits - q.bitwidth) * self.sizes[q.name]
        return total

    def changes(self, kinds: Sequence[str]) -> List[Change]:
        out: List[Change] = []
        for kind in kinds:
            out += getattr(self, f"_{kind}")()
        return out

    def _per_channel(self) -> List[Change]:
        out = []
        for q in self.params:
            if q.param == "bias" or q.axis is None or q.per_channel or not q.shape:
                continue
            out.append(Change(self.name, "per_channel", True, f"{q.name} per channel", {q.name: {"per_channel": True}},
                              extra_encodings=int(q.shape[q.axis]) - 1,
                              config={q.layer: {"params": {q.param: {"per_channel_quantization": "True"}}}}))
        return out

    def _param_bw(self) -> List[Change]:
        if not self.params:
            return []
        current = max(q.bitwidth for q in self.params)
        return [Change(self.name, "param_bw", bw, f"weights at {bw} bits (from {current})",
                       {q.name: {"bitwidth": bw} for q in self.params},
                       extra_weight_bits=sum((bw - q.bitwidth) * _numel(q) for q in self.params),
                       config={self.name: {"supported_kernels": _kernel(self.act_bw, bw)}})
                for bw in LADDER if bw > current]

    def _output_bw(self) -> List[Change]:
        if not self.acts:
            return []
        current = max(q.bitwidth for q in self.acts)
        return [Change(self.name, "output_bw", bw, f"activations at {bw} bits (from {current})",
                       {q.name: {"bitwidth": bw} for q in self.acts},
                       extra_activation_bits=self._act_bits(self.acts, bw),
                       config={self.name: {"supported_kernels": _kernel(bw, self.par_bw)}})
                for bw in LADDER if bw > current]

    def _scheme(self) -> List[Change]:
        quantizers = self.params + self.acts
        if not quantizers:
            return []
        current = self.sim.scheme_of(quantizers[0]).value
        other = OTHER_SCHEME[current]
        return [Change(self.name, "scheme", other, f"{other} encodings (from {current})",
                       {q.name: {"scheme": other} for q in quantizers},
                       config={self.name: {"quant_scheme": other}})]

    def _float(self) -> List[Change]:
        if not self.on:
            return []
        qs = [self.sim.quantizers[n] for n in self.on]
        config: Dict[str, Dict[str, Any]] = {self.name: {"is_output_quantized": "False", "is_input_quantized": "False"}}
        for q in qs:
            if q.is_param:  # read from the entry of the layer that owns it (a tied weight: another layer)
                config.setdefault(q.layer, {}).setdefault("params", {})[q.param] = {"is_quantized": "False"}
        acts = [q for q in qs if not q.is_param]
        return [Change(self.name, "float", None, "in float", {q.name: {"enabled": False} for q in qs},
                       extra_weight_bits=sum((FLOAT_BITS - q.bitwidth) * _numel(q) for q in qs if q.is_param),
                       extra_activation_bits=self._act_bits(acts, FLOAT_BITS), config=config)]


def _kinds(candidates_per_layer: Any) -> Tuple[Tuple[str, ...], Optional[int]]:
    """(kinds to try, at most this many candidates per layer)."""
    if candidates_per_layer is None:
        return CHANGE_KINDS, None
    if isinstance(candidates_per_layer, (int, np.integer)) and not isinstance(candidates_per_layer, bool):
        if candidates_per_layer < 1:
            raise QAValueError(f"candidates_per_layer must be >= 1, got {candidates_per_layer}")
        return CHANGE_KINDS, int(candidates_per_layer)
    if isinstance(candidates_per_layer, str):
        candidates_per_layer = (candidates_per_layer,)
    kinds = tuple(candidates_per_layer)
    bad = [k for k in kinds if k not in CHANGE_KINDS]
    if bad or not kinds:
        raise QAValueError(f"candidates_per_layer: unknown change kind(s) {bad or kinds}; use an int or some of "
                           f"{', '.join(CHANGE_KINDS)}")
    return kinds, None


# --------------------------------------------------------------------------- merging and the plan

def merged_settings(changes: Iterable[Change]) -> Dict[str, Dict[str, Any]]:
    """The settings of several changes together (a quantizer left in float stays in float).

    Example:
        >>> a = Change("fc", "param_bw", 8, "", {"fc_weight": {"bitwidth": 8}})
        >>> b = Change("fc", "float", None, "", {"fc_weight": {"enabled": False}})
        >>> merged_settings([a, b])
        {'fc_weight': {'enabled': False}}
    """
    out: Dict[str, Dict[str, Any]] = {}
    for change in changes:
        for name, values in change.settings.items():
            if out.get(name, {}).get("enabled") is False:
                continue
            out[name] = {"enabled": False} if values.get("enabled") is False else {**out.get(name, {}), **values}
    return out


def merged_config(base: Mapping[str, Any], changes: Iterable[Change]) -> Dict[str, Any]:
    """``base`` (a dumped quantsim config) with the changes' per-layer entries in its ``layers`` section.

    Example:
        >>> weights = Change("fc", "param_bw", 8, "", {}, config={"fc": {"supported_kernels": _kernel(8, 8)}})
        >>> acts = Change("fc", "output_bw", 16, "", {}, config={"fc": {"supported_kernels": _kernel(16, 4)}})
        >>> merged_config({"defaults": {}}, [weights, acts])["layers"]["fc"]["supported_kernels"]
        [{'activation': {'bitwidth': 16, 'dtype': 'int'}, 'param': {'bitwidth': 8, 'dtype': 'int'}}]
    """
    out = dict(base)
    layers: Dict[str, Any] = {k: dict(v) for k, v in (base.get("layers") or {}).items()}
    kernels: Dict[str, Dict[str, int]] = {}
    for change in changes:
        for layer, entry in change.config.items():
            target = layers.setdefault(layer, {})
            for key, value in entry.items():
                if key == "params":
                    params = target.setdefault("params", {})
                    for pname, flags in value.items():
                        params[pname] = {**params.get(pname, {}), **flags}
                elif key == "supported_kernels":  # a param and an activation change of one layer: one kernel
                    k = kernels.setdefault(layer, {side: value[0][side]["bitwidth"]
                                                   for side in ("activation", "param")})
                    side = "param" if change.kind == "param_bw" else "activation"
                    k[side] = value[0][side]["bitwidth"]
                    target[key] = _kernel(k["activation"], k["param"])
                else:
                    target[key] = value
    if layers:
        out["layers"] = layers
    return out


def plan_changes(candidates: Sequence[Candidate], quantized: float, goal: float,
                 order: Sequence[str] = ()) -> List[Candidate]:
    """The fewest candidates whose measured gains, added up, bring ``quantized`` to ``goal``; the
    best the candidates allow when they cannot. At most one candidate per layer.

    Layers go in order of their best gain (ties: their place in ``order``, the sweeps' ranking);
    each takes its cheapest candidate that closes the remaining gap alone, else its cheapest one
    that gains at least :data:`NEAR` (90%) of its best gain.
    Then a chosen candidate the others make unnecessary is dropped, and each is swapped for a
    cheaper one of its layer while the sum still reaches the goal.

    Example:
        >>> ch = lambda layer, kind, bits: Change(layer, kind, None, kind, {}, extra_weight_bits=bits)
        >>> cands = [Candidate(ch("dw", "per_channel", 0), 80.0, 10.0), Candidate(ch("dw", "float", 900), 85.0, 15.0),
        ...          Candidate(ch("fc", "float", 300), 76.0, 6.0)]
        >>> [(c.change.layer, c.change.kind) for c in plan_changes(cands, 70.0, 79.0)]
        [('dw', 'per_channel')]
        >>> [(c.change.layer, c.change.kind) for c in plan_changes(cands, 70.0, 90.0)]
        [('dw', 'float'), ('fc', 'float')]
    """
    rank = {name: i for i, name in enumerate(order)}
    by_layer: Dict[str, List[Candidate]] = {}
    for c in candidates:
        if c.gain > 0:
            by_layer.setdefault(c.change.layer, []).append(c)
    if not by_layer or quantized >= goal:
        return []

    def cheap(c: Candidate) -> Tuple[float, int, float]:
        return (c.change.bits, CHANGE_KINDS.index(c.change.kind), -c.gain)

    layers = sorted(by_layer, key=lambda n: (-max(c.gain for c in by_layer[n]), rank.get(n, len(rank)), n))
    chosen: List[Candidate] = []
    need = goal - quantized
    for name in layers:
        if need <= 0:
            break
        options = by_layer[name]
        enough = [c for c in options if c.gain >= need]
        best = max(c.gain for c in options)
        pick = min(enough or [c for c in options if c.gain >= NEAR * best], key=cheap)
        chosen.append(pick)
        need -= pick.gain
    if need > 0:
        return chosen  # the goal is out of reach of these candidates: the most they give
    total = sum(c.gain for c in chosen)
    for c in sorted(chosen, key=lambda c: (c.gain, -c.change.bits)):  # drop what the others make unnecessary
        if total - c.gain >= goal - quantized:
            chosen.remove(c)
            total -= c.gain
    for i, c in enumerate(chosen):  # and make each as cheap as the others allow
        for alt in sorted(by_layer[c.change.layer], key=cheap):
            if cheap(alt) < cheap(c) and total - c.gain + alt.gain >= goal - quantized:
                total += alt.gain - c.gain
                chosen[i] = alt
                break
    return chosen


# --------------------------------------------------------------------------- recommend

def _config_mismatch(sim: QuantSim, variant: QuantSim, config: Mapping[str, Any]) -> List[str]:
    """Quantizers whose settings the written config would not reproduce (a check without evaluations)."""
    graph = sim.adapter.graph.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        apply_config(graph, load_config(dict(config)), param_bw=sim.param_bw, output_bw=sim.output_bw)
    out = []
    for q in graph.quantizers():
        v = variant.quantizers[q.name]
        settings = (q.bitwidth, q.per_channel, q.symmetric, variant.scheme_of(q))
        if q.enabled != v.enabled or (q.enabled and settings != (v.bitwidth, v.per_channel, v.symmetric,
                                                                 variant.scheme_of(v))):
            out.append(q.name)
    return out


def aimet_plan_config(sim: QuantSim, variant: QuantSim, config: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """The plan in AIMET's own config format, and the layers whose changes it cannot hold.

    AIMET's quantsim config has no per-layer section and its schema refuses unknown keys: qa's
    extensions (``layers``, ``quant_scheme``, ``params.<name>.per_channel_quantization``) are left
    out, and each planned layer's entry is moved into ``op_type.<its op type>`` when that changes
    no other layer (checked by applying the config, as :func:`_config_mismatch` does): then AIMET
    computes that layer's plan from the file alone. The layers returned must be changed in code
    there (``recommendation.json`` lists them, with the settings).

    Args:
        sim: the analysis's calibrated simulation; variant: the plan's (``sim.derive``).
        config: :func:`merged_config`'s output (qa's form).

    Returns:
        (the AIMET config dict, the names of the layers left per-layer).
    """
    base = {k: copy.deepcopy(v) for k, v in config.items() if k != "layers"}
    for entry in list(base.get("params", {}).values()) + [
            p for op in base.get("op_type", {}).values() for p in op.get("params", {}).values()]:
        entry.pop("per_channel_quantization", None)
    for op in base.get("op_type", {}).values():
        op.pop("quant_scheme", None)
    changed = set(_config_mismatch(sim, variant, base))
    left: List[str] = []
    for name, entry in (config.get("layers") or {}).items():
        own = {q.name for q in variant.graph[name].quantizers} if name in variant.graph else set()
        lifted = _as_op_type_entry(entry)
        if lifted is None or name not in variant.graph:
            left.append(name)
            continue
        trial = copy.deepcopy(base)
        target = trial.setdefault("op_type", {}).setdefault(variant.graph[name].op_type, {})
        for key, value in lifted.items():
            target[key] = value
        now = set(_config_mismatch(sim, variant, trial))
        if now <= changed and not (now & own):  # this layer is right and no other layer got worse
            base, changed = trial, now
        else:
            left.append(name)
    return base, left


def _as_op_type_entry(entry: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """A ``layers`` entry written with AIMET's op_type keys only; None when it needs qa's extensions
    (a per-layer encoding scheme, per-channel for one parameter other than the weight)."""
    if "quant_scheme" in entry:
        return None
    kernels = entry.get("supported_kernels") or []
    if any(k[side]["bitwidth"] not in AIMET_BITWIDTHS for k in kernels for side in ("activation", "param")):
        return None
    out = {k: copy.deepcopy(v) for k, v in entry.items() if k != "params"}
    params: Dict[str, Any] = {}
    for pname, flags in (entry.get("params") or {}).items():
        flags = dict(flags)
        if "per_channel_quantization" in flags:
            if pname != "weight":
                return None
            out["per_channel_quantization"] = flags.pop("per_channel_quantization")
        if flags:
            params[pname] = flags
    if params:
        out["params"] = params
    return out


def recommend(analyzer: Any, sim: QuantSim, result: Any, *, target: Any = None, layers: int = 3,
              candidates_per_layer: Union[None, int, Sequence[str]] = None,
              results: Union[None, str, Path, ResultsDir] = None, report: bool = True,
              executor: Any = None) -> Recommendation:
    """Measure the remedies for the culprit layers and plan the fewest that meet ``target``.

    Args:
        analyzer: the QuantAnalyzer (its ``eval_callback`` scores every candidate).
        sim: the calibrated QuantSim the analysis used (``analyzer.create_quantsim`` with the same
            arguments gives the same one: calibration is deterministic).
        result: the AnalysisResult of that analysis, with both per-layer sweeps.
        target: how close to FP32 the plan must bring the score: None (within 1% of |FP32|), a
            number (relative), ``{"relative": r}`` or ``{"absolute": a}`` (:func:`parse_target`).
        layers: how many culprit layers to try remedies on (the top of :func:`qa.ranking.culprits`).
        candidates_per_layer: None for every kind of change in :data:`CHANGE_KINDS`; a list of
            kinds to try only those; an int to try at most that many per layer (in that order).
        results: the results folder to write to (default ``result.results_dir``); analyze passes
            its own ResultsDir, so the files are listed in summary.json.
        report: also list the files in the folder's summary.json and rebuild the HTML report
            (analyze passes False: it does both itself).
        executor: None (evaluate here, memoized when ``analyzer.memoize``: what runs before a
            candidate's first changed quantizer is replayed from the fully quantized model), "ray"
            or a :class:`qa.RayExecutor` (the candidates spread over its workers; analyze passes
            the executor of its sweeps, whose workers are reused).

    Returns:
        A :class:`Recommendation`; ``files`` are the paths written.

    Raises:
        QAError: the analysis has no finite FP32 and fully quantized score.
        QAValueError: a bad target or candidates_per_layer, or a sim of other settings than the result's.
        QACallbackError: eval_callback failed on a candidate (the message names it).

    Example:
        >>> import tempfile, torch, qa
        >>> from qa.recommend import recommend
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
        >>> x = torch.randn(256, 8)
        >>> labels = net(x).argmax(1)
        >>> accuracy = lambda m: float((m(x).argmax(1) == labels).float().mean() * 100)
        >>> analyzer = qa.QuantAnalyzer(net, x[:1], lambda m: m(x), accuracy, progress=False)
        >>> out = tempfile.mkdtemp()
        >>> result = analyzer.analyze("tf", default_param_bw=3, results_dir=out)
        >>> rec = recommend(analyzer, analyzer.create_quantsim("tf", 3, 8), result, target={"absolute": 5.0},
        ...                 results=out, report=False)
        >>> rec.status in ("reached", "met", "missed"), [p.name for p in rec.files]
        (True, ['recommended_config.json', 'recommended_config_aimet.json', 'recommendation.json'])
    """
    t0 = time.perf_counter()
    goal_target = parse_target(target)
    made_here = isinstance(executor, str)  # an executor made here from its name is closed here
    executor = resolve_executor(executor)
    kinds, most = _kinds(candidates_per_layer)
    if isinstance(layers, bool) or not isinstance(layers, (int, np.integer)) or layers < 1:
        raise QAValueError(f"layers must be a positive integer, got {layers!r:.80}")
    fp32, quantized = finite(result.fp32_score), finite(result.quantized_score)
    if fp32 is None or quantized is None:
        raise QAError("recommend needs the analysis's FP32 and fully quantized scores as numbers; got "
                      f"{result.fp32_score!r} and {result.quantized_score!r}")
    if not sim.calibrated:
        raise QAValueError("recommend needs the calibrated QuantSim of the analysis")
    if (sim.scheme.value, sim.param_bw, sim.output_bw) != (result.quant_scheme, result.default_param_bw,
                                                            result.default_output_bw):
        raise QAValueError(f"the sim ({sim.scheme.value}, {sim.param_bw}/{sim.output_bw} bits) is not the analysis's "
                           f"({result.quant_scheme}, {result.default_param_bw}/{result.default_output_bw} bits)")
    out = results if isinstance(results, ResultsDir) else ResultsDir(results if results is not None
                                                                      else result.results_dir)
    rec = Recommendation(goal_target, goal_target.goal(fp32), fp32, quantized, sim.scheme.value, sim.param_bw,
                         sim.output_bw)
    if sim.aimet_compat:
        rec.notes.append("aimet_compat: a candidate recomputes only the encodings it changes; AIMET calibrates with the "
                         "weights quantized, so it would also move the activation ranges after a weight change")
        log.info("recommend: %s", rec.notes[-1])
    if result.encodings and result.encodings != sim.encodings():
        rec.notes.append("the simulation's encodings differ from the analysis's: the candidates are compared with "
                         "a fully quantized score measured on another calibration")
        log.warning("recommend: %s", rec.notes[-1])

    ranked = culprits(result.layer_impacts(), layers)
    rec.layers = [i.name for i in ranked if i.name in sim.graph]
    sizes = _activation_sizes(sim) if rec.layers else {}
    disabled = result.per_layer_quant_disabled or {}
    jobs: Dict[str, Tuple[Candidate, QuantSim]] = {}  # label -> the candidate to measure and its simulation
    for name in rec.layers:
        for change in _Layer(sim, name, sizes).changes(kinds)[:most]:
            swept = finite(disabled.get(name)) if change.kind == "float" else None
            candidate = Candidate(change, swept, None if swept is None else swept - quantized,
                                  "sweep" if swept is not None else "evaluated")
            rec.candidates.append(candidate)
            if swept is None:
                jobs[f"layer {name!r}, {change.description}"] = (candidate, sim.derive(change.settings))
            else:
                log.info("recommend: %s, %s: %.4f (%+.4g vs fully quantized, from the sweep)", name,
                         change.description, swept, swept - quantized)
    position = {layer.name: i for i, layer in enumerate(sim.graph.layers)}

    def first(label: str) -> int:  # where the candidate's change first acts: memoized runs go front to back
        return min(position.get(sim.quantizers[n].layer, 0) for n in jobs[label][0].change.settings)

    def measured(label: str, score: float) -> None:
        candidate = jobs[label][0]
        candidate.score = score if math.isfinite(score) else None
        candidate.delta = score - quantized if math.isfinite(score) else None
        log.info("recommend: %s, %s: %.4f (%+.4g vs fully quantized)", candidate.change.layer,
                 candidate.change.description, score, candidate.delta if candidate.delta is not None else math.nan)

    try:
        order = sorted(jobs, key=first)
        rec.evaluations += len(order)
        _evaluate_variants(analyzer, sim, [(label, jobs[label][1], jobs[label][0].change.settings) for label in order],
                           measured, executor)
        chosen = [] if quantized >= rec.goal else plan_changes(rec.candidates, quantized, rec.goal, rec.layers)
        for c in chosen:
            c.in_plan = True
        rec.plan = [c.change for c in chosen]
        rec.predicted_score = quantized + sum(c.gain for c in chosen)
        plan_sim = sim.derive(merged_settings(rec.plan)) if rec.plan else None
        if len(chosen) == 1:
            rec.score, rec.plan_evaluated = chosen[0].score, "candidate"
        elif chosen:
            described = "; ".join(f"{c.layer}: {c.description}" for c in rec.plan)
            rec.evaluations += 1
            final: Dict[str, float] = {}
            _evaluate_variants(analyzer, sim, [(f"the plan ({described})", plan_sim, merged_settings(rec.plan))],
                               lambda label, score: final.setdefault("score", score), executor)
            score = final["score"]
            rec.score, rec.plan_evaluated = (score if math.isfinite(score) else None), "final"
        else:
            rec.score = quantized
    finally:
        if made_here and executor is not None:
            executor.close()
        sim.activate()  # the analysis's simulation runs again, as it was
    rec.reached = rec.score is not None and rec.score >= rec.goal
    rec.status = "met" if quantized >= rec.goal else ("reached" if rec.reached else "missed")
    rec.config = merged_config(dump_config(sim.config), rec.plan)
    if plan_sim is not None:
        wrong = _config_mismatch(sim, plan_sim, rec.config)
        if wrong:  # never expected: the config would not compute the confirmed score
            rec.notes.append(f"the written config does not reproduce the plan for {', '.join(wrong[:10])}")
            log.warning("recommend: %s", rec.notes[-1])
    _log_plan(rec)
    rec.seconds = time.perf_counter() - t0
    # without a plan: the analysis's config in AIMET's form (its qa extensions left out too)
    rec.aimet_config, rec.aimet_per_layer = aimet_plan_config(sim, plan_sim or sim, rec.config)
    rec.files = [out.write_json(rec.config, CONFIG_FILE), out.write_json(rec.aimet_config, AIMET_CONFIG_FILE)]
    rec.files.append(out.write_json(rec.to_dict(), RECOMMENDATION_FILE))
    if report:
        _register(out, rec.files)
    return rec


def _evaluate_variants(analyzer: Any, sim: QuantSim, variants: List[Tuple[str, QuantSim, Mapping[str, Any]]],
                       finished: Callable[[str, float], None], executor: Any = None) -> None:
    """Score each (label, variant, the quantizers it changes): on the executor's workers when it
    takes variants, else here, in one memoized block against the fully quantized model (the
    variants differ from it only in their changed quantizers: what runs before the first of them
    is replayed), in the order given."""
    if not variants:
        return
    if executor is not None and executor.variants(analyzer, sim, [(label, v) for label, v, _ in variants], finished):
        return
    memo = (analyzer.adapter.memoized(analyzer.memo_memory_budget) if getattr(analyzer, "memoize", False)
            else contextlib.nullcontext())
    with Progress(len(variants), "recommendation", getattr(analyzer, "progress", None)) as bar, memo as focus:
        for label, variant, settings in variants:
            finished(label, evaluate_variant(variant, analyzer.eval_callback, label, focus, settings))
            bar.update()


def _log_plan(rec: Recommendation) -> None:
    if rec.status == "met":
        log.info("recommend: the fully quantized score %.4f meets the target (>= %.4f); nothing to change",
                 rec.quantized_score, rec.goal)
        return
    plan = "; ".join(f"{c.layer}: {c.description}" for c in rec.plan) or "no change helps"
    verb = "reaches" if rec.reached else "MISSES"
    log.info("recommend: plan %s -> %s, which %s the target (>= %.4f, %s) [%d evaluation(s)]", plan,
             "n/a" if rec.score is None else f"{rec.score:.4f}", verb, rec.goal, rec.target.describe(),
             rec.evaluations)


def _register(out: ResultsDir, files: List[Path]) -> None:
    """List the files in the folder's summary.json (so the report reads them) and rebuild the pages;
    a folder without an analysis's summary.json keeps the files alone."""
    summary = out.read_json("summary.json")
    if not isinstance(summary, dict):
        log.info("recommend: no summary.json in %s: no report to add the verified fixes to", out.root)
        return
    if isinstance(summary.get("files"), list):
        listed = {f for f in summary["files"] if isinstance(f, str)}
        summary["files"] = sorted(listed | {p.relative_to(out.root).as_posix() for p in files})
        out.write_json(summary, "summary.json")
    from .report import try_build_html

    try_build_html(out.root)
