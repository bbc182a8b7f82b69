"""Plain-language evidence and suggestions for the dashboard: why a layer hurts and what to try.

When the numbers mean something (rules that hold for any metric eval_callback returns):

* Percentages of the FP32 score are given only when FP32 and the fully quantized score have the
  same sign and |FP32| is at least half the spread of all scores (the four configurations and
  both per-layer sweeps). Otherwise the score sits near 0 on its own scale (a negative MSE, a
  log-likelihood), and "7.7e-07 is 1114136574750% of FP32" says nothing.
* A loss (the total drop, or a culprit's cost or gain) matters, with meaningful percentages,
  from 1% of |FP32| (``MATERIAL``): below that the report shows the numbers and the ranking but
  suggests no change. Without meaningful percentages the metric's scale is unknown: the report
  says so and words every suggestion as "if a loss of X matters for this metric, try". A NaN or
  infinite score always matters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set

from ._load import LayerView, QuantizerView, Results, num

# Thresholds for calling something out; they decide wording only, never numbers shown.
CLIPPED_NOTABLE = 0.01  # share of values outside the encoding range
OUTLIER_NOTABLE = 4.0  # largest |x| over the 99th percentile of |x|
ZERO_NOTABLE = 0.25  # share of weights that quantize to 0
SPREAD_NOTABLE = 4.0  # widest channel range over the median channel range
MATERIAL = 0.01  # a loss matters from 1% of |FP32| (when percentages are meaningful)
MANY = 10  # at most this many layers with a NaN score are named one by one
OWN_SHARE = 0.5  # a layer's own (FP32-input) error is at least this share of its output's error: bad on its own
INHERITED_SHARE = 0.2  # under this share: the error at its output accumulates from the layers before it
INF = float("inf")


def fmt(v: Optional[float]) -> str:
    """A score or statistic for people: about four significant digits."""
    if v is None:
        return "n/a"
    if v != v:
        return "NaN"
    if abs(v) == INF:
        return "\u221e" if v > 0 else "\u2212\u221e"
    v = v + 0.0  # no "-0"
    a = abs(v)
    if a >= 1e7:
        return f"{v:.4g}"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a != 0 and a < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4g}"


def signed(v: Optional[float]) -> str:
    if v is None:
        return "n/a"
    return ("+" if v > 0 else "\u2212" if v < 0 else "\u00b1") + fmt(abs(v))


def pct(v: Optional[float]) -> str:
    if v is None or v != v or abs(v) == INF:
        return "n/a"
    if 0 < v < 0.001:
        return "<0.1%"
    return f"{100 * v:.1f}%"


def _times(ratio: float) -> str:
    """"4.2\u00d7": one decimal for the ratios people compare, fmt's digits for absurd ones."""
    return (f"{ratio:.1f}" if abs(ratio) < 1000 else fmt(ratio)) + "\u00d7"


def _word(reason: Optional[str]) -> str:
    return {"nan": "NaN", "inf": "infinite", "-inf": "minus infinity"}.get(reason or "nan", str(reason))


def _range(q: QuantizerView) -> str:
    r = q.tensor_range()
    return f"[{fmt(r[0])}, {fmt(r[1])}]" if r else "n/a"


def _describe(q: QuantizerView) -> str:
    bits = f"{q.bitwidth}-bit" if q.bitwidth else "quantized"
    how = "per channel" if q.per_channel else "per tensor"
    return f"{bits} {how}" if q.is_param else bits


def quantizer_evidence(q: QuantizerView) -> str:
    """One line on what the encoding of q does to its values."""
    s = q.stats
    parts = [f"{q.name}: {_describe(q)}, range {_range(q)}"]
    if q.is_param and q.scale:
        parts[0] += f", step {fmt(q.scale)}"
    if q.is_param and s.get("zero_fraction") is not None:
        parts.append(f"{pct(s['zero_fraction'])} of the weights round to 0")
    if s.get("clipped_fraction") is not None:
        parts.append(f"{pct(s['clipped_fraction'])} clipped")
    if s.get("outlier_ratio"):
        parts.append(f"largest |{'w' if q.is_param else 'x'}| is {_times(s['outlier_ratio'])} the 99th percentile")
    spread = q.channel_spread()
    if spread:
        parts.append(f"widest channel range {_times(spread)} the median")
    return "; ".join(parts)


def own_share(layer: LayerView) -> Optional[float]:
    """The share of the error at a layer's output (fully quantized model) that its own quantization
    explains: local MSE over accumulated MSE (fed FP32 inputs vs fed quantized ones), or the same
    from the two SQNRs. None without both; may exceed 1 (errors that cancel downstream of others)."""
    if layer.local_mse is not None and layer.mse is not None and layer.mse > 0 and layer.local_mse >= 0:
        return layer.local_mse / layer.mse
    if layer.local_sqnr_db is not None and layer.sqnr_db is not None:
        gap = layer.sqnr_db - layer.local_sqnr_db  # dB; the noise power ratio local/accumulated is 10^(gap/10)
        return 10 ** (min(max(gap, -300.0), 300.0) / 10)
    return None


def local_kind(layer: LayerView) -> Optional[str]:
    """"own" (bad on its own), "inherited" (the error accumulates from earlier layers), "both", or
    None without the local and accumulated error of the layer."""
    share = own_share(layer)
    if share is None:
        return None
    if share >= OWN_SHARE:
        return "own"
    if share < INHERITED_SHARE:
        return "inherited"
    return "both"


def _share_text(share: float) -> str:
    return "nearly all" if share >= 0.9 else f"about {pct(share)}"


def local_evidence(layer: LayerView) -> Optional[str]:
    """One line: whether this layer is bad on its own or where errors accumulate (local vs accumulated error)."""
    if layer.local_sqnr_db is None and layer.local_mse is None:
        return None
    own = (f"{fmt(layer.local_sqnr_db)} dB" if layer.local_sqnr_db is not None else f"MSE {fmt(layer.local_mse)}")
    acc = (f"{fmt(layer.sqnr_db)} dB" if layer.local_sqnr_db is not None and layer.sqnr_db is not None
           else f"MSE {fmt(layer.mse)}")
    kind, share = local_kind(layer), own_share(layer)
    if kind is None or share is None:
        return f"On its own (only this layer quantized, fed FP32 inputs) its output keeps {own}"
    if kind == "own":
        return (f"Bad on its own: with only this layer quantized and FP32 inputs its output keeps {own}, "
                f"{_share_text(share)} of the error at its output in the fully quantized model ({acc})")
    if kind == "inherited":
        return (f"Errors accumulate here: on its own (FP32 inputs) this layer keeps {own}; the error at its output "
                f"in the fully quantized model ({acc}) comes mostly from the layers before it (its own part: "
                f"{pct(share)})")
    return (f"Partly its own: on its own (FP32 inputs) it keeps {own} against {acc} in the fully quantized model: "
            f"{_share_text(share)} of the error at its output is its own")


def upstream_sources(r: Results, layer: LayerView, k: int = 3) -> List[LayerView]:
    """The layers before this one with the lowest SQNR on their own (FP32 inputs), worst first."""
    before = [x for x in r.layers[:layer.index] if x.local_sqnr_db is not None]
    return sorted(before, key=lambda x: (x.local_sqnr_db, x.index))[:k]


def layer_evidence(r: Results, layer: LayerView) -> List[str]:
    lines = []
    if layer.enabled_nonfinite:
        lines.append(f"Only this layer quantized: the score is {_word(layer.enabled_nonfinite)} (FP32 {fmt(r.fp32)})")
    elif layer.enabled is not None:
        cost = signed(-layer.cost if layer.cost is not None else None)
        lines.append(f"Only this layer quantized: {fmt(layer.enabled)} ({cost} vs FP32 {fmt(r.fp32)})")
    if layer.disabled_nonfinite:
        lines.append(f"All but this layer quantized: the score is {_word(layer.disabled_nonfinite)}")
    elif layer.disabled is not None:
        if "quantized" in r.nonfinite:
            lines.append(f"All but this layer quantized: {fmt(layer.disabled)} (fully quantized: "
                         f"{_word(r.nonfinite['quantized'])})")
        else:
            lines.append(f"All but this layer quantized: {fmt(layer.disabled)} ({signed(layer.gain)} vs fully "
                         f"quantized {fmt(r.quantized)})")
    if layer.sqnr_db is not None:
        line = f"Output SQNR {fmt(layer.sqnr_db)} dB, MSE {fmt(layer.mse)}"
        if layer.sqnr_jump_db is not None:
            line += f"; {signed(layer.sqnr_jump_db)} dB vs the previous layer ({layer.previous})"
        lines.append(line)
    local = local_evidence(layer)
    if local:
        lines.append(local)
    lines.extend(quantizer_evidence(q) for q in layer.quantizers)
    return lines


def _weights_are_the_problem(r: Results, layer: LayerView) -> bool:
    if not layer.weights:
        return False
    if not layer.activations:
        return True
    w, a = r.scores["weights"], r.scores["activations"]
    if r.fp32 is not None and w is not None and a is not None:
        return (r.fp32 - w) >= (r.fp32 - a)
    return True


def layer_suggestions(r: Results, layer: LayerView) -> List[str]:
    """What to try for one culprit layer, most promising first."""
    out: List[str] = []
    if layer.enabled_nonfinite:
        out.append(f"Keep {layer.name} in float (modules_to_ignore, or is_quantized False for its weights and "
                   f"outputs in the config): quantizing it makes the score {_word(layer.enabled_nonfinite)}; then "
                   "look at its ranges below for the reason (a range of 0, NaN weights, an overflow).")
    if _weights_are_the_problem(r, layer):
        # Biases are tiny and have no channel axis to split: advise on the weights proper.
        for q in [q for q in layer.weights if q.param != "bias"] or layer.weights:
            s = q.stats
            if not q.per_channel:
                out.append(f"Quantize {q.name} per channel (per_channel_quantization in the quantsim config): "
                           "one scale per output channel instead of one for the whole tensor.")
            if q.bitwidth and q.bitwidth < 8:
                out.append(f"{'Or keep' if out else 'Keep'} {q.name} at 8 bits (an op_type or params override of "
                           "the bitwidth in the config).")
            elif q.per_channel:
                out.append(f"Keep {q.name} at a higher bitwidth (16-bit) or in float, or try AdaRound.")
            if (s.get("outlier_ratio") or 0) >= OUTLIER_NOTABLE or (q.channel_spread() or 0) >= SPREAD_NOTABLE:
                out.append("A few large weights or channels set the range: cross-layer equalization (CLE) evens "
                           "them out before quantization.")
    for q in layer.activations:
        s = q.stats
        clipped, ratio = s.get("clipped_fraction") or 0.0, s.get("outlier_ratio") or 0.0
        if clipped >= CLIPPED_NOTABLE:
            out.append(f"{pct(clipped)} of {q.name} is clipped: calibrate with more representative data, or use "
                       "'tf' (min-max) or a higher percentile for this range.")
        elif ratio >= OUTLIER_NOTABLE:
            out.append(f"Rare large values stretch {q.name} ({_times(ratio)} the 99th percentile): check the "
                       "activation outliers; 'tf_enhanced' or 'percentile' clip them, 16-bit activations keep them.")
    share = own_share(layer)
    if local_kind(layer) == "inherited" and share is not None and (layer.cost or 0.0) < 0.5 * (layer.gain or 0.0):
        # cheap alone, costly with the rest quantized, and little of its output's error is its own:
        # the error it passes on starts earlier
        sources = upstream_sources(r, layer)
        if sources:
            out.append("Look first at the layers before it that are bad on their own (the lowest SQNR with FP32 "
                       "inputs): " + ", ".join(f"{x.name} ({fmt(x.local_sqnr_db)} dB)" for x in sources)
                       + f"; the error at its output comes mostly from them (its own part: {pct(share)}).")
    if not out or not any("float" in s or "16-bit" in s for s in out):
        out.append("If that is not enough: keep this layer in 16-bit or float (mixed precision, or "
                   "modules_to_ignore).")
    return out


# ---- verified fixes (recommendation.json, written by qa.recommend) -------------------------------

def bits(v: Optional[float]) -> str:
    """A number of extra bits for people: "0", "+512", "+1.2M", "n/a" (unknown)."""
    if v is None:
        return "n/a"
    if v == 0:
        return "0"
    a = abs(v)
    text = f"{a / 1e6:.3g}M" if a >= 1e6 else f"{a / 1e3:.3g}k" if a >= 1e4 else f"{a:.0f}"
    return ("+" if v > 0 else "\u2212") + text


def _candidates(r: Results) -> List[Dict[str, Any]]:
    rec = r.recommendation or {}
    return [c for c in rec.get("candidates") or [] if isinstance(c, dict) and isinstance(c.get("layer"), str)]


def measured_layers(r: Results) -> Set[str]:
    """The layers qa.recommend measured remedies for: their unverified suggestions are replaced."""
    return {c["layer"] for c in _candidates(r)}


def _fix_line(c: Dict[str, Any]) -> str:
    score, delta = num(c.get("score")), num(c.get("delta"))
    measured = "the score is NaN or infinite" if score is None else f"{fmt(score)} ({signed(delta)} vs fully quantized)"
    cost = (f"{bits(num(c.get('extra_weight_bits')))} weight bits, "
            f"{bits(num(c.get('extra_activation_bits')))} activation bits")
    source = "; measured by the per-layer sweep" if c.get("source") == "sweep" else ""
    plan = "; in the plan" if c.get("in_plan") else ""
    return f"{c.get('description') or c.get('change')}: {measured}, {cost}{source}{plan}"


def measured_tips(r: Results, layer: LayerView) -> List[str]:
    """What each remedy tried for ``layer`` measured, best first (empty when none was tried).

    Example:
        >>> from qa.report._load import Results, LayerView
        >>> r = Results(None, {}, [], {}, {}, {}, {}, {}, {"fp32": 1.0, "quantized": 0.5}, [],
        ...             recommendation={"candidates": [
        ...                 {"layer": "fc", "change": "float", "description": "in float", "score": 0.9, "delta": 0.4,
        ...                  "extra_weight_bits": 1792, "extra_activation_bits": None, "in_plan": True}]})
        >>> measured_tips(r, LayerView("fc", 0))
        ['in float: 0.9 (+0.4 vs fully quantized), +1792 weight bits, n/a activation bits; in the plan']
    """
    mine = [c for c in _candidates(r) if c["layer"] == layer.name]
    mine.sort(key=lambda c: -(num(c.get("delta")) if num(c.get("delta")) is not None else -INF))
    return [_fix_line(c) for c in mine]


def plan_text(r: Results) -> Optional[str]:
    """One sentence on the verified plan and whether its confirmed score meets the target."""
    rec = r.recommendation
    plan = rec.get("plan") if isinstance(rec, dict) else None
    if not isinstance(plan, dict):
        return None
    goal, score = num(rec.get("target_score")), num(plan.get("score"))
    changes = [c for c in plan.get("changes") or [] if isinstance(c, dict)]
    what = "; ".join(f"{c.get('layer')}: {c.get('description') or c.get('change')}" for c in changes)
    target = f"the target (\u2265 {fmt(goal)})"
    if plan.get("status") == "met":
        return f"The fully quantized score {fmt(r.quantized)} already meets {target}: nothing needs to change."
    if not changes:
        return f"Verified fixes: no change measured helps; {target} is missed (fully quantized {fmt(r.quantized)})."
    verb = "reaches" if plan.get("reached") is True else "MISSES"
    return f"Verified plan ({what}): confirmed score {fmt(score)}, which {verb} {target}."


def verified_fixes(r: Results) -> Optional[Dict[str, Any]]:
    """The dashboard's "Verified fixes" section: one row per candidate (layer, change, measured
    score, its change vs the fully quantized score, its cost in bits), the plan and its verdict.
    None without recommendation.json."""
    rec = r.recommendation
    if not isinstance(rec, dict):
        return None
    plan = rec.get("plan") if isinstance(rec.get("plan"), dict) else {}
    order = {name: i for i, name in enumerate(rec.get("layers") or []) if isinstance(name, str)}
    rows = []
    for c in _candidates(r):
        layer = r.layer(c["layer"])
        delta = num(c.get("delta"))
        rows.append({"layer": c["layer"], "index": layer.index if layer else None,
                     "change": c.get("description") or str(c.get("change")), "kind": str(c.get("change")),
                     "score": num(c.get("score")), "delta": delta,
                     "weight_bits": num(c.get("extra_weight_bits")),
                     "activation_bits": num(c.get("extra_activation_bits")),
                     "encodings": num(c.get("extra_encodings")), "sweep": c.get("source") == "sweep",
                     "in_plan": c.get("in_plan") is True, "_key": (order.get(c["layer"], len(order)),
                                                                   -(delta if delta is not None else -INF))})
    rows.sort(key=lambda row: row.pop("_key"))
    target = rec.get("target") if isinstance(rec.get("target"), dict) else {}
    kind, value = next(iter(target.items()), ("relative", None))
    margin = (f"within {pct(num(value))} of FP32" if kind == "relative" and num(value) is not None
              else f"within {fmt(num(value))} of FP32")
    status = plan.get("status") if plan.get("status") in ("reached", "missed", "met") else "missed"
    return {"rows": rows, "status": status, "reached": plan.get("reached") is True, "text": plan_text(r),
            "goal": num(rec.get("target_score")), "margin": margin, "score": num(plan.get("score")),
            "predicted": num(plan.get("predicted_score")), "evaluated": plan.get("evaluated"),
            "weight_bits": num(plan.get("extra_weight_bits")),
            "activation_bits": num(plan.get("extra_activation_bits")),
            "evaluations": num(rec.get("evaluations")),
            "notes": [n for n in rec.get("notes") or [] if isinstance(n, str)]}


def spread(r: Results) -> float:
    """Largest minus smallest of every finite score."""
    values = r.all_scores()
    return max(values) - min(values) if values else 0.0


def percent_meaningful(r: Results) -> bool:
    """Whether a loss as a share of |FP32| means anything (the first rule above)."""
    fp32, q = r.fp32, r.quantized
    return fp32 is not None and q is not None and fp32 != 0 and fp32 * q >= 0 and abs(fp32) >= spread(r) / 2


def matters(r: Results, loss: Optional[float]) -> bool:
    """Whether a loss is worth a suggestion (the second rule above); True where the scale is unknown."""
    if loss is None or not loss > 0:
        return False
    if loss == INF or not percent_meaningful(r):
        return True
    return loss >= MATERIAL * abs(r.fp32 or 0.0)


def try_label(r: Results, loss: Optional[float]) -> str:
    """"Try:", or where the metric's scale is unknown, "If a loss of X matters for this metric, try:"."""
    if loss is None or loss == INF or percent_meaningful(r):
        return "Try:"
    return f"If a loss of {fmt(loss)} matters for this metric, try:"


def alerts(r: Results, quoted: Sequence[str] = ()) -> List[str]:
    """What the dashboard says before anything else: NaN/inf scores in plain words, then the
    problems the analysis found (summary.json's ``problems``) that the verdict does not quote."""
    out: List[str] = []
    if "fp32" in r.nonfinite:
        out.append(f"The FP32 score is {_word(r.nonfinite['fp32'])}: check the model and eval_callback.")
    for key, label in (("weights", "weights-only"), ("activations", "activations-only"),
                       ("quantized", "fully quantized")):
        if key in r.nonfinite:
            out.append(f"The {label} score is {_word(r.nonfinite[key])}.")
    alone = [layer for layer in r.layers if layer.enabled_nonfinite]
    for layer in alone[:MANY]:
        worst = ": it is the worst layer" if len(alone) == 1 else ""
        out.append(f"Quantizing layer {layer.name} alone makes the score {_word(layer.enabled_nonfinite)}{worst}.")
    if len(alone) > MANY:
        out.append(f"And {len(alone) - MANY} more layers whose quantization alone makes the score NaN or infinite.")
    but = [layer for layer in r.layers if layer.disabled_nonfinite]
    for layer in but[:MANY]:
        out.append(f"With every layer but {layer.name} quantized, the score is {_word(layer.disabled_nonfinite)}.")
    if len(but) > MANY:
        out.append(f"And {len(but) - MANY} more layers with a NaN or infinite score when all but them are quantized.")
    # The analysis words the same NaN scores as problems too; they are said above, from the data.
    said = bool(r.nonfinite or alone or but)
    out += [p for p in r.problems if not (said and "score" in p.lower()) and p not in quoted]
    return out


@dataclass
class Verdict:
    """What the dashboard says first: a title, the next steps, and whether it is good news."""

    title: str
    steps: List[str]
    ok: bool = False
    quoted: List[str] = field(default_factory=list)  # problems the steps already say


def headline(r: Results) -> Verdict:
    """The verdict and the next steps, for someone who reads nothing else."""
    if r.active_quantizers == 0:
        why = [p for p in r.problems if "quantiz" in p.lower()][:3]
        return Verdict("Nothing was quantized: no quantizer is active, so every score here is the FP32 model's.",
                       [*(f"Why: {p}" for p in why),
                        "Check the quantsim config (is_quantized, is_output_quantized, the op_type and params "
                        "overrides) and modules_to_ignore, then run the analysis again."], quoted=why)
    if "fp32" in r.nonfinite:
        return Verdict(f"The FP32 score is {_word(r.nonfinite['fp32'])}: check the model and eval_callback.",
                       ["Every comparison with FP32 is meaningless until the FP32 score is a number: run "
                        "eval_callback on the float model alone and fix what makes it fail."])
    culprits = r.culprits(3)
    drop = r.total_drop
    if drop is None and "quantized" in r.nonfinite:
        steps = []
        rescued = [c for c in culprits if c.gain == INF]
        if rescued:
            steps.append(f"Leaving only {rescued[0].name} in float brings the score back to a number "
                         f"({fmt(rescued[0].disabled)}).")
        steps += _culprit_steps(r, culprits, None)
        return Verdict(f"The fully quantized score is {_word(r.nonfinite['quantized'])} (FP32: {fmt(r.fp32)}).", steps)
    if drop is None:
        status = r.text("status", "unknown")
        return Verdict(f"The analysis did not report both the FP32 and the fully quantized score (status: {status}).",
                       ["Check the error shown above, fix the callback or model, and run the analysis again."])
    meaningful = percent_meaningful(r)
    rel = abs(drop) / abs(r.fp32) if meaningful and r.fp32 else None
    nan_first = [_nan_step(c) for c in culprits[:1] if c.enabled_nonfinite]
    if drop <= 0 or (rel is not None and rel < MATERIAL):
        title = (f"Quantization costs little: {fmt(r.fp32)} in FP32, {fmt(r.quantized)} fully quantized "
                 f"({signed(-drop)}).")
        steps = [*nan_first, "This model quantizes well with these settings; the per-layer pages show what little "
                 "is left."]
        if culprits and not nan_first:
            steps.append(f"The most sensitive layer is {culprits[0].name} ({signed(-(culprits[0].cost or 0))} "
                         "when quantized alone).")
        return Verdict(title, steps, ok=not nan_first)
    share = f" ({pct(rel)})" if rel is not None else ""
    title = f"Quantization costs {fmt(drop)}{share}: {fmt(r.fp32)} in FP32, {fmt(r.quantized)} fully quantized."
    steps = list(nan_first)
    if not meaningful:
        steps.append("The scores sit near 0 on their own scale (|FP32| is small next to their spread), so no "
                     "percentage is given: whether this loss matters depends on the metric.")
    w, a = r.scores["weights"], r.scores["activations"]
    if w is not None and a is not None and r.fp32 is not None:
        wd, ad = r.fp32 - w, r.fp32 - a
        if wd > 2 * max(ad, 0) and wd > 0:
            steps.append(f"Weights cause it: weights quantized alone give {fmt(w)} ({signed(-wd)}), "
                         f"activations alone {fmt(a)} ({signed(-ad)}).")
        elif ad > 2 * max(wd, 0) and ad > 0:
            steps.append(f"Activations cause it: activations quantized alone give {fmt(a)} ({signed(-ad)}), "
                         f"weights alone {fmt(w)} ({signed(-wd)}).")
        else:
            steps.append(f"Weights and activations both cost: weights alone {fmt(w)} ({signed(-wd)}), "
                         f"activations alone {fmt(a)} ({signed(-ad)}).")
    if not culprits:
        steps.append("No single layer stands out: the loss is spread over many layers. Try per-channel weights, "
                     "a higher bitwidth, or another quant scheme for the whole model.")
        return Verdict(title, steps)
    steps += _culprit_steps(r, culprits, drop, said=bool(nan_first))
    return Verdict(title, steps)


def _nan_step(layer: LayerView) -> str:
    return (f"Quantizing layer {layer.name} alone makes the score {_word(layer.enabled_nonfinite)}: it is the worst "
            "layer.")


def _culprit_steps(r: Results, culprits: List[LayerView], drop: Optional[float], said: bool = False) -> List[str]:
    """Where to start (the top culprit), what to try for it, and what comes next."""
    if not culprits:
        return []
    top, steps = culprits[0], []
    cost = top.cost if top.cost is not None and top.cost != INF and top.cost > 0 else None
    share = ""
    if cost is not None and drop is not None and drop > 0 and percent_meaningful(r):
        share = f" Quantizing it alone costs {fmt(cost)}, {pct(min(cost / drop, 9.99))} of the total loss."
    elif cost is not None:
        share = f" Quantizing it alone costs {fmt(cost)}."
    if not said:
        steps.append(f"Start with {top.name} ({top.type or 'layer'}).{share}")
    measured = measured_tips(r, top)
    if measured:  # facts replace the unverified advice
        steps.append(f"Measured for {top.name}, best first: {measured[0]}.")
    elif matters(r, top.impact):
        steps.append(f"{try_label(r, top.impact)} {layer_suggestions(r, top)[0]}")
    else:
        steps.append(f"Its effect ({fmt(top.impact)}) is under {pct(MATERIAL)} of the FP32 score: nothing needs to "
                     "change for it.")
    if top.gain is not None and 0 < top.gain < INF and drop is not None:
        steps.append(f"Leaving only {top.name} in float recovers {fmt(top.gain)} of the {fmt(drop)}.")
    if len(culprits) > 1:
        steps.append("Next: " + ", ".join(c.name for c in culprits[1:]) + " (details below).")
    plan = plan_text(r)
    steps.append(plan if plan else "Then run the analysis again and compare.")
    return steps
