"""A results folder across runs: the fingerprint that says two runs compute the same thing, what a
previous run left there, and which of its finished evaluations a new run may reuse (resume).

A run owns its folder's contents: it removes what the previous run listed in ``summary.json``
(and the fixed AIMET result names), after taking what it can reuse. Reuse needs the same
fingerprint: qa's version, the folded float weights, every quantizer's settings and encoding,
and the analysis settings. Encodings come from calibration, so a different calibration set or
model gives a different fingerprint; the evaluation data cannot be fingerprinted, so a run
with different eval data in the same folder should pass ``resume=False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional

import numpy as np

from ._version import __version__

log = logging.getLogger("qa")

SCORE_KEYS = ("fp32_score", "weight_quantized_score", "activation_quantized_score", "quantized_score")
SWEEP_FILES = {"per_layer_quant_enabled": "per_layer_quant_enabled.json",
               "per_layer_quant_disabled": "per_layer_quant_disabled.json"}
# Names qa writes in every run, removed even when a killed run could not list them yet.
FIXED_FILES = ("summary.json", *SWEEP_FILES.values(), "per_layer_mse_loss.json", "per_layer_local_mse_loss.json",
               "min_max_ranges/weights.json",
               "min_max_ranges/activations.json")


def fingerprint(weights: Iterable[Any], quantizers: Iterable[Any], settings: Mapping[str, Any]) -> str:
    """A short hash of everything that decides what an evaluation computes (callbacks aside).

    Args:
        weights: (quantizer, float32 array) pairs, as ``adapter.weights()`` yields them.
        quantizers: the simulation's quantizers (settings and encodings).
        settings: the analysis arguments (scheme, bitwidths, rounding, ...).
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(f"qa {__version__}\n".encode())
    h.update(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    for q, values in weights:
        arr = np.ascontiguousarray(values, dtype=np.float32)
        h.update(f"{q.name}{arr.shape}".encode())
        h.update(memoryview(arr).cast("B"))
    for q in quantizers:
        enc = q.encoding.to_dict() if q.encoding is not None else None
        h.update(json.dumps([q.name, q.layer, q.kind, q.enabled, q.bitwidth, q.symmetric, q.strict,
                             q.unsigned_symmetric, q.per_channel, q.axis, enc], default=str).encode())
    return h.hexdigest()


def _score(value: Any, reason: Optional[str]) -> Optional[float]:
    """A stored score: a number, or null with its reason ("nan", "inf", "-inf")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if value is None and reason in ("nan", "inf", "-inf"):
        return float(reason)
    return None


@dataclass
class PreviousRun:
    """What a previous run in the folder left: its files, and the scores a same-fingerprint run reuses."""

    files: List[str] = field(default_factory=list)
    fingerprint: Optional[str] = None
    scores: Dict[str, float] = field(default_factory=dict)
    sweeps: Dict[str, Dict[str, float]] = field(default_factory=dict)

    @classmethod
    def read(cls, results: Any) -> "PreviousRun":
        """The previous run in ``results`` (a ResultsDir); empty when there is none or it is unreadable."""
        try:
            summary = results.read_json("summary.json")
        except Exception as e:  # a corrupt summary: nothing to reuse, and the files it lists are unknown
            log.warning("%s: the previous run's summary.json is unreadable (%s); nothing is reused", results.root, e)
            return cls(files=list(FIXED_FILES))
        if not isinstance(summary, dict):
            return cls()
        files = [f for f in summary.get("files") or [] if isinstance(f, str)]
        run = cls(files=sorted(set(files) | set(FIXED_FILES)), fingerprint=summary.get("fingerprint"))
        reasons = summary.get("nonfinite_scores") if isinstance(summary.get("nonfinite_scores"), dict) else {}
        score_reasons = reasons.get("scores") if isinstance(reasons.get("scores"), dict) else {}
        for key in SCORE_KEYS:
            value = _score(summary.get(key), score_reasons.get(key))
            if value is not None:
                run.scores[key] = value
        for key, file in SWEEP_FILES.items():
            try:
                data = results.read_json(file)
            except Exception:
                data = None
            layer_reasons = reasons.get(key) if isinstance(reasons.get(key), dict) else {}
            if isinstance(data, dict):
                done = {str(k): _score(v, layer_reasons.get(k)) for k, v in data.items()}
                run.sweeps[key] = {k: v for k, v in done.items() if v is not None}
        return run

    def reusable(self, fingerprint: str) -> "PreviousRun":
        """Its scores when the fingerprint matches, else nothing."""
        if self.fingerprint != fingerprint:
            return PreviousRun()
        return self

    @property
    def evaluations(self) -> int:
        return len(self.scores) + sum(len(v) for v in self.sweeps.values())


def nonfinite_scores(result: Any) -> Dict[str, Dict[str, str]]:
    """Where a score is NaN or infinite (JSON stores null): {"scores" | sweep: {name: "nan" | "inf" | "-inf"}}."""
    out: Dict[str, Dict[str, str]] = {}

    def note(group: str, name: str, value: Any) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            out.setdefault(group, {})[name] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")

    for key in SCORE_KEYS:
        note("scores", key, getattr(result, key))
    for key in SWEEP_FILES:
        for name, value in getattr(result, key).items():
            note(key, name, value)
    return out
