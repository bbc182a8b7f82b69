"""The one ranking of culprit layers, shared by the result object, the CLI and the dashboard.

A layer's *cost* is what quantizing it alone loses (FP32 score - score with only it
quantized); its *gain* is what leaving it alone in float recovers (score with all but it
quantized - fully quantized score). Its impact is the larger of the two. Culprits are the
layers with a positive impact, biggest first, dropping effects a hundred times smaller than
the top one (noise, not culprits). Everything here works on plain numbers, so the engine
(from an ``AnalysisResult``) and the report (from the JSON files) rank alike.

A non-finite score is the worst finding there is: a layer whose quantization alone makes the
score NaN or infinite gets an infinite cost, and one whose float alone brings a non-finite
fully quantized score back to a number gets an infinite gain; both rank first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

__all__ = ["Impact", "impacts", "culprits", "impact_order", "finite", "NOISE_RATIO"]

NOISE_RATIO = 0.01  # an impact under 1% of the top one is noise


def finite(value: Any) -> Optional[float]:
    """A finite float, or None (missing, non-numeric, NaN or inf).

    Example:
        >>> finite("nan"), finite(True), finite("0.5")
        (None, None, 0.5)
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class Impact:
    """One layer's effect on the score: ``cost`` (only it quantized) and ``gain`` (only it in float)."""

    name: str
    index: int  # execution order
    cost: Optional[float] = None
    gain: Optional[float] = None

    @property
    def impact(self) -> float:
        return max(self.cost or 0.0, self.gain or 0.0)


def impact_order(cost: Optional[float], gain: Optional[float], index: int) -> Tuple[float, float, int]:
    """The sort key: the larger of cost and gain, then the cost, then execution order."""
    return (-max(cost or 0.0, gain or 0.0), -(cost or 0.0), index)


def impacts(layers: Sequence[str], fp32: Any, quantized: Any, enabled: Mapping[str, Any],
            disabled: Mapping[str, Any]) -> List[Impact]:
    """Each layer's cost and gain from the scores (missing or non-finite scores give None).

    Example:
        >>> [i.cost for i in impacts(["a", "b"], 1.0, 0.5, {"a": 0.9, "b": 0.6}, {"a": 0.55})]
        [0.09999999999999998, 0.4]
    """
    quantized_broken = _broken(quantized)
    fp32, quantized = finite(fp32), finite(quantized)
    out = []
    for index, name in enumerate(layers):
        on, off = finite(enabled.get(name)), finite(disabled.get(name))
        cost = gain = None
        if fp32 is not None:
            cost = math.inf if _broken(enabled.get(name)) else (fp32 - on if on is not None else None)
        if off is not None:
            gain = math.inf if quantized_broken else (off - quantized if quantized is not None else None)
        out.append(Impact(name, index, cost, gain))
    return out


def _broken(score: Any) -> bool:
    """A score that was computed but is NaN or infinite (not one that is missing)."""
    if isinstance(score, str):
        return score.strip().lower() in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity")
    return isinstance(score, (int, float)) and not isinstance(score, bool) and not math.isfinite(score)


def culprits(layers: Sequence[Impact], k: int = 5) -> List[Impact]:
    """The at most ``k`` layers whose quantization costs the most, biggest first.

    Example:
        >>> ranked = culprits([Impact("a", 0, 0.001, 0.0), Impact("b", 1, 0.3, 0.2), Impact("c", 2, 0.0, 0.0)])
        >>> [i.name for i in ranked]   # 'a' is under 1% of 'b': noise; 'c' has no effect
        ['b']
        >>> [i.name for i in culprits(impacts(["a", "b"], 1.0, 0.5, {"a": float("nan"), "b": 0.2}, {}))]
        ['a', 'b']
    """
    ranked = sorted((layer for layer in layers if layer.impact > 0),
                    key=lambda layer: impact_order(layer.cost, layer.gain, layer.index))
    top = max((layer.impact for layer in ranked if math.isfinite(layer.impact)), default=0.0)
    return [layer for layer in ranked[:k] if layer.impact >= NOISE_RATIO * top]
