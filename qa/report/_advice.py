"""Plain-language evidence and suggestions for the dashboard: why a layer hurts and what to try."""

from __future__ import annotations

from typing import List, Optional, Tuple

from ._load import LayerView, QuantizerView, Results

# Thresholds for calling something out; they decide wording only, never numbers shown.
CLIPPED_NOTABLE = 0.01  # share of values outside the encoding range
OUTLIER_NOTABLE = 4.0  # largest |x| over the 99th percentile of |x|
ZERO_NOTABLE = 0.25  # share of weights that quantize to 0
SPREAD_NOTABLE = 4.0  # widest channel range over the median channel range
SMALL_DROP = 0.01  # a loss within 1% of |FP32| counts as small


def fmt(v: Optional[float]) -> str:
    """A score or statistic for people: about four significant digits."""
    if v is None:
        return "n/a"
    v = v + 0.0  # no "-0"
    a = abs(v)
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
    if v is None:
        return "n/a"
    if 0 < v < 0.001:
        return "<0.1%"
    return f"{100 * v:.1f}%"


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
        parts.append(f"largest |{'w' if q.is_param else 'x'}| is {s['outlier_ratio']:.1f}\u00d7 the 99th percentile")
    spread = q.channel_spread()
    if spread:
        parts.append(f"widest channel range {spread:.1f}\u00d7 the median")
    return "; ".join(parts)


def layer_evidence(r: Results, layer: LayerView) -> List[str]:
    lines = []
    if layer.enabled is not None:
        cost = signed(-layer.cost if layer.cost is not None else None)
        lines.append(f"Only this layer quantized: {fmt(layer.enabled)} ({cost} vs FP32 {fmt(r.fp32)})")
    if layer.disabled is not None:
        lines.append(f"All but this layer quantized: {fmt(layer.disabled)} ({signed(layer.gain)} vs fully quantized "
                     f"{fmt(r.quantized)})")
    if layer.sqnr_db is not None:
        line = f"Output SQNR {fmt(layer.sqnr_db)} dB, MSE {fmt(layer.mse)}"
        if layer.sqnr_jump_db is not None:
            line += f"; {signed(layer.sqnr_jump_db)} dB vs the previous layer ({layer.previous})"
        lines.append(line)
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
    if _weights_are_the_problem(r, layer):
        # Biases are tiny and have no channel axis to split: advise on the weights proper.
        for q in [q for q in layer.weights if q.param != "bias"] or layer.weights:
            s = q.stats
            if not q.per_channel:
                out.append(f"Quantize {q.name} per channel (per_channel_quantization in the quantsim config): "
                           "one scale per output channel instead of one for the whole tensor.")
            if q.bitwidth and q.bitwidth < 8:
                out.append(f"Or keep {q.name} at 8 bits (an op_type or params override of the bitwidth in the config).")
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
            out.append(f"Rare large values stretch {q.name} ({ratio:.1f}\u00d7 the 99th percentile): check the "
                       "activation outliers; 'tf_enhanced' or 'percentile' clip them, 16-bit activations keep them.")
    if not out or not any("float" in s or "16-bit" in s for s in out):
        out.append("If that is not enough: keep this layer in 16-bit or float (mixed precision, or "
                   "modules_to_ignore).")
    return out


def headline(r: Results) -> Tuple[str, List[str]]:
    """The verdict and the next steps, for someone who reads nothing else."""
    drop = r.total_drop
    steps: List[str] = []
    if drop is None:
        status = r.text("status", "unknown")
        return (f"The analysis did not report both the FP32 and the fully quantized score (status: {status}).",
                ["Check the error shown above, fix the callback or model, and run the analysis again."])
    rel = abs(drop) / abs(r.fp32) if r.fp32 else abs(drop)
    culprits = r.culprits(3)
    if drop <= 0 or rel < SMALL_DROP:
        title = (f"Quantization costs little: {fmt(r.fp32)} in FP32, {fmt(r.quantized)} fully quantized "
                 f"({signed(-drop)}).")
        steps.append("This model quantizes well with these settings; the per-layer pages show what little is left.")
        if culprits:
            steps.append(f"The most sensitive layer is {culprits[0].name} ({signed(-(culprits[0].cost or 0))} "
                         "when quantized alone).")
        return title, steps
    title = f"Quantization costs {fmt(drop)} ({pct(rel)}): {fmt(r.fp32)} in FP32, {fmt(r.quantized)} fully quantized."
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
        return title, steps
    top = culprits[0]
    share = ""
    if top.cost is not None and drop > 0:
        share = f" Quantizing it alone costs {fmt(top.cost)}, {pct(min(top.cost / drop, 9.99))} of the total loss."
    steps.append(f"Start with {top.name} ({top.type or 'layer'}).{share}")
    first = layer_suggestions(r, top)[0]
    steps.append(f"Try: {first}")
    if top.gain is not None and top.gain > 0:
        steps.append(f"Leaving only {top.name} in float recovers {fmt(top.gain)} of the {fmt(drop)}.")
    if len(culprits) > 1:
        steps.append("Next: " + ", ".join(c.name for c in culprits[1:]) + " (details below).")
    steps.append("Then run the analysis again and compare.")
    return title, steps
