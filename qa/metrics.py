"""Scores for a model run on fixed evaluation batches: label-free ones against the FP32 model's own
outputs, and accuracy against labels. Every score is higher-is-better, as QuantAnalyzer assumes.

=============  =====  =======================================================================
kind           unit   what
=============  =====  =======================================================================
``agreement``  %      top-1 agreement: the share of samples whose arg-max class (first output,
                      shape [N, C], C > 1) is the FP32 model's; 100 for the FP32 model itself
``sqnr``       dB     output SQNR: 10 log10(sum ref^2 / sum (ref - out)^2) over every output
                      and sample; outputs identical to FP32 score :data:`SQNR_CEILING_DB`
``cosine``            mean over samples of the cosine similarity between the sample's outputs
                      (all outputs, flattened) and the FP32 ones; 1 for the FP32 model itself
``accuracy``   %      top-1 accuracy of the first output against the labels
=============  =====  =======================================================================

Without labels, a classifier (its first output is [N, C] with C > 1) is scored by agreement,
anything else by SQNR (:func:`default_metric`).

Example:
    >>> import numpy as np
    >>> ref = [[np.array([[2.0, 1.0], [0.0, 3.0]])]]        # one batch, one output, two samples
    >>> score = Scorer("agreement", ref)
    >>> score([[np.array([[1.0, 2.0], [0.0, 3.0]])]])       # the first sample's class changed
    50.0
    >>> Scorer("sqnr", ref)(ref)                             # identical outputs
    150.0
"""

from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence

import numpy as np

from .errors import QAValueError

__all__ = ["METRICS", "SQNR_CEILING_DB", "is_classifier", "default_metric", "Scorer"]

#: kind -> (unit, label-free, what it measures)
METRICS = {
    "agreement": ("%", True, "top-1 agreement with the FP32 model's predictions"),
    "sqnr": ("dB", True, "output SQNR against the FP32 model's outputs"),
    "cosine": ("", True, "mean cosine similarity to the FP32 model's outputs"),
    "accuracy": ("%", False, "top-1 accuracy against the labels"),
}

#: The SQNR of outputs identical to the FP32 ones (an infinite SQNR would make the FP32 score
#: non-finite): a little above what float32 itself resolves (6.02 * 24 + 1.76 = 146 dB).
SQNR_CEILING_DB = 150.0


def is_classifier(outputs: Sequence[np.ndarray]) -> bool:
    """True when the first output is class scores: shape [N, C] with C > 1.

    Example:
        >>> is_classifier([np.zeros((4, 10))]), is_classifier([np.zeros((4, 1))]), is_classifier([np.zeros((4, 3, 8))])
        (True, False, False)
    """
    return bool(outputs) and outputs[0].ndim == 2 and outputs[0].shape[1] > 1


def default_metric(outputs: Sequence[np.ndarray], labels: bool) -> str:
    """``accuracy`` with labels; else ``agreement`` for a classifier, ``sqnr`` otherwise.

    Example:
        >>> default_metric([np.zeros((4, 10))], labels=False), default_metric([np.zeros((4, 3, 8, 8))], labels=False)
        ('agreement', 'sqnr')
    """
    if labels:
        return "accuracy"
    return "agreement" if is_classifier(outputs) else "sqnr"


class Scorer:
    """A score of one kind (:data:`METRICS`) over fixed evaluation batches.

    Args:
        kind: ``agreement``, ``sqnr``, ``cosine`` or ``accuracy``.
        reference: the FP32 model's outputs, per batch a list of arrays (not needed for accuracy).
        labels: per batch, the class index of each sample (accuracy only).

    Calling the scorer with the outputs of the model under test, batch by batch in the same
    order (any iterable: a generator computes them one at a time), returns the score.
    """

    def __init__(self, kind: str, reference: Optional[Sequence[Sequence[np.ndarray]]] = None,
                 labels: Optional[Sequence[np.ndarray]] = None) -> None:
        if kind not in METRICS:
            raise QAValueError(f"unknown metric {kind!r}; use one of {', '.join(METRICS)}")
        self.kind = kind
        self.unit, self.label_free, self.what = METRICS[kind]
        if kind == "accuracy":
            if labels is None:
                raise QAValueError("the accuracy metric needs labels")
            self._targets: List[np.ndarray] = [np.asarray(t).reshape(-1) for t in labels]
        else:
            if reference is None:
                raise QAValueError(f"the {kind} metric needs the FP32 model's outputs")
            if kind == "agreement":
                for batch in reference:
                    _check_classes(batch, "agreement")
                self._targets = [np.argmax(batch[0], axis=1) for batch in reference]
            else:
                self._reference = [[np.asarray(a) for a in batch] for batch in reference]

    def describe(self) -> str:
        """What the score measures, in words, saying whether it is label-free."""
        return f"{self.what} ({'label-free' if self.label_free else 'labelled'}; higher is better)"

    def __call__(self, outputs: Iterable[Sequence[np.ndarray]]) -> float:
        if self.kind in ("agreement", "accuracy"):
            return self._top1(outputs)
        return self._sqnr(outputs) if self.kind == "sqnr" else self._cosine(outputs)

    def _top1(self, outputs: Iterable[Sequence[np.ndarray]]) -> float:
        hits = total = 0
        for i, batch in enumerate(outputs):
            _check_classes(batch, self.kind)
            target = self._targets[i]
            if len(batch[0]) != len(target):
                raise QAValueError(f"batch {i}: {len(batch[0])} predictions for {len(target)} samples")
            hits += int(np.count_nonzero(np.argmax(batch[0], axis=1) == target))
            total += len(target)
        return 100.0 * hits / total if total else math.nan

    def _pairs(self, outputs: Iterable[Sequence[np.ndarray]]):
        for i, batch in enumerate(outputs):
            ref = self._reference[i]
            if len(batch) != len(ref) or any(np.shape(a) != r.shape for a, r in zip(batch, ref)):
                raise QAValueError(f"batch {i}: output shapes {[list(np.shape(a)) for a in batch]} differ from the FP32 "
                                   f"model's {[list(r.shape) for r in ref]}")
            yield ref, [np.asarray(a) for a in batch]

    def _sqnr(self, outputs: Iterable[Sequence[np.ndarray]]) -> float:
        signal = noise = 0.0
        for ref, out in self._pairs(outputs):
            for r, o in zip(ref, out):
                r64 = r.astype(np.float64, copy=False)
                signal += float(np.sum(r64 * r64))
                diff = r64 - o.astype(np.float64, copy=False)
                noise += float(np.sum(diff * diff))
        if math.isnan(noise) or math.isnan(signal):
            return math.nan
        if noise == 0.0:
            return SQNR_CEILING_DB
        if signal == 0.0:
            return -math.inf if math.isfinite(noise) else math.nan
        return min(SQNR_CEILING_DB, 10.0 * math.log10(signal / noise))

    def _cosine(self, outputs: Iterable[Sequence[np.ndarray]]) -> float:
        total, count = 0.0, 0
        for ref, out in self._pairs(outputs):
            n = len(ref[0]) if ref and ref[0].ndim else 1
            r = np.concatenate([a.reshape(n, -1) for a in ref], axis=1).astype(np.float64)
            o = np.concatenate([a.reshape(n, -1) for a in out], axis=1).astype(np.float64)
            dot = np.sum(r * o, axis=1)
            norms = np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1)
            both_zero = (np.linalg.norm(r, axis=1) == 0) & (np.linalg.norm(o, axis=1) == 0)
            with np.errstate(invalid="ignore", divide="ignore"):
                cos = np.where(both_zero, 1.0, np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0))
            cos = np.where(np.isfinite(dot) & np.isfinite(norms), cos, np.nan)
            total += float(np.sum(np.clip(cos, -1.0, 1.0)))
            count += n
        return total / count if count else math.nan


def _check_classes(batch: Sequence[np.ndarray], kind: str) -> None:
    if not is_classifier(batch):
        shape = list(np.shape(batch[0])) if batch else []
        raise QAValueError(f"the {kind} metric needs class scores, a first output of shape [N, C] with C > 1; this "
                           f"model's first output is {shape}: use --metric sqnr or cosine")
