"""Read a results folder (summary.json and the per-analysis JSON files) into what the pages show."""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import ranking
from ..errors import QAError

log = logging.getLogger("qa")

_ACTIVATION_KEY = re.compile(r"_(output|input)_\d+$")
RESULT_FILES = ("summary.json", "per_layer_quant_enabled.json", "per_layer_quant_disabled.json",
                "per_layer_mse_loss.json", "min_max_ranges/weights.json", "min_max_ranges/activations.json")


num = ranking.finite  # a finite float, or None (missing, non-numeric, NaN/inf, which JSON stores as strings)


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise QAError(f"cannot read {path}: {e}") from e


def _score_dict(data: Any) -> Dict[str, Optional[float]]:
    return {str(k): num(v) for k, v in data.items()} if isinstance(data, dict) else {}


@dataclass
class HistogramView:
    """One histogram file read back (``histogram_record``'s form): uniform bins, the encoding, the clipped share."""

    edges: np.ndarray
    counts: np.ndarray
    encoding_min: Optional[float]
    encoding_max: Optional[float]
    clipped_fraction: Optional[float]

    @classmethod
    def from_record(cls, record: Any) -> "HistogramView":
        counts = np.asarray(record["counts"], dtype=np.float64)
        if "edges" in record:  # an explicit edge list (as other tools write it)
            edges = np.asarray(record["edges"], dtype=np.float64)
        else:  # qa's compact form: lo and width of the bins
            edges = float(record["lo"]) + float(record["width"]) * np.arange(counts.size + 1)
        if counts.ndim != 1 or edges.shape != (counts.size + 1,) or not np.all(np.isfinite(edges)):
            raise ValueError(f"{counts.size} counts need {counts.size + 1} finite edges, got {edges.size}")
        counts = np.where(np.isfinite(counts) & (counts > 0), counts, 0.0)
        return cls(edges, counts, num(record.get("encoding_min")), num(record.get("encoding_max")),
                   num(record.get("clipped_fraction")))

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def observed(self) -> Tuple[float, float]:
        """Low edge of the first and high edge of the last non-empty bin."""
        nz = np.flatnonzero(self.counts)
        if nz.size == 0:
            return float(self.edges[0]), float(self.edges[-1])
        return float(self.edges[nz[0]]), float(self.edges[nz[-1] + 1])

    def abs_quantile(self, q: float) -> float:
        """The q-quantile of |x|, to within a bin."""
        mids = np.abs((self.edges[:-1] + self.edges[1:]) / 2)
        order = np.argsort(mids)
        cdf = np.cumsum(self.counts[order])
        if cdf.size == 0 or cdf[-1] <= 0:
            return 0.0
        return float(mids[order][min(np.searchsorted(cdf, q * cdf[-1]), cdf.size - 1)])

    def share_rounding_to_zero(self, scale: Optional[float]) -> Optional[float]:
        """Share of values that quantize to exactly 0 (|x| < scale / 2; zero is always on the grid)."""
        if not scale or self.total <= 0:
            return None
        mids = (self.edges[:-1] + self.edges[1:]) / 2
        return float(self.counts[np.abs(mids) < scale / 2].sum() / self.total)

    def stats(self, scale: Optional[float]) -> Dict[str, Optional[float]]:
        lo, hi = self.observed()
        peak = max(abs(lo), abs(hi))
        p99 = self.abs_quantile(0.99)
        return {"observed_min": lo, "observed_max": hi, "abs_p99": p99,
                "outlier_ratio": peak / p99 if p99 > 0 else None,
                "clipped_fraction": self.clipped_fraction,
                "zero_fraction": self.share_rounding_to_zero(scale)}

    def display(self, max_bins: int) -> Tuple[float, float, np.ndarray]:
        """(low edge, bin width, counts): empty tails trimmed, then neighbouring bins merged to at most max_bins."""
        nz = np.flatnonzero(self.counts)
        first, last = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, self.counts.size)
        counts = self.counts[first:last]
        width = float(self.edges[1] - self.edges[0]) if self.counts.size else 1.0
        k = max(1, math.ceil(counts.size / max_bins))
        if k > 1:
            counts = np.pad(counts, (0, (-counts.size) % k)).reshape(-1, k).sum(axis=1)
        return float(self.edges[first]), width * k, counts


@dataclass
class QuantizerView:
    """One quantizer as the result files describe it: its place, encoding, range and files."""

    name: str
    layer: str
    is_param: bool
    param: Optional[str] = None
    encoding: Any = None  # AIMET-style dict, or a list of them per channel
    range: Any = None  # [min, max], or {"<name>_<c>": [min, max]} per channel
    histogram_json: Optional[Path] = None  # relative to the results folder, when the file exists
    histogram_page: Optional[Path] = None  # relative, set once the page is written
    ranges_page: Optional[Path] = None  # per-channel ranges page, weights only
    stats: Dict[str, Any] = field(default_factory=dict)  # from the histogram, once read

    @property
    def per_channel(self) -> bool:
        return isinstance(self.encoding, list) or isinstance(self.range, dict)

    @property
    def bitwidth(self) -> Optional[int]:
        enc = self.encoding[0] if isinstance(self.encoding, list) and self.encoding else self.encoding
        return int(enc["bitwidth"]) if isinstance(enc, dict) and num(enc.get("bitwidth")) else None

    @property
    def scale(self) -> Optional[float]:
        """The (largest, when per channel) quantization step."""
        encs = self.encoding if isinstance(self.encoding, list) else [self.encoding]
        scales = [num(e.get("scale")) for e in encs if isinstance(e, dict)]
        scales = [s for s in scales if s]
        return max(scales) if scales else None

    def channel_ranges(self) -> List[Tuple[float, float]]:
        if isinstance(self.range, dict):
            pairs = list(self.range.values())
        elif isinstance(self.encoding, list):
            pairs = [[e.get("min"), e.get("max")] for e in self.encoding if isinstance(e, dict)]
        else:
            return []
        out = []
        for p in pairs:
            if isinstance(p, (list, tuple)) and len(p) == 2 and num(p[0]) is not None and num(p[1]) is not None:
                out.append((num(p[0]), num(p[1])))
        return out

    def tensor_range(self) -> Optional[Tuple[float, float]]:
        """[min, max] of the whole tensor (the envelope of the channels when per channel)."""
        if self.per_channel:
            ch = self.channel_ranges()
            return (min(a for a, _ in ch), max(b for _, b in ch)) if ch else None
        r = self.range if isinstance(self.range, (list, tuple)) else None
        if r is None and isinstance(self.encoding, dict):
            r = [self.encoding.get("min"), self.encoding.get("max")]
        if r and len(r) == 2 and num(r[0]) is not None and num(r[1]) is not None:
            return num(r[0]), num(r[1])
        return None

    def channel_spread(self) -> Optional[float]:
        """Widest channel range over the median channel range (per-channel weights)."""
        widths = np.array([b - a for a, b in self.channel_ranges()])
        if widths.size < 2:
            return None
        median = float(np.median(widths))
        return float(widths.max() / median) if median > 0 else None


@dataclass
class LayerView:
    """One layer as the result files describe it: its scores, errors and quantizers."""

    name: str
    index: int  # execution order: the position in Results.layers
    type: str = ""
    op_type: str = ""
    quantizers: List[QuantizerView] = field(default_factory=list)
    enabled: Optional[float] = None  # score with only this layer quantized
    disabled: Optional[float] = None  # score with all but this layer quantized
    mse: Optional[float] = None
    sqnr_db: Optional[float] = None
    sqnr_jump_db: Optional[float] = None  # SQNR change from the previous layer (negative: lost here)
    previous: Optional[str] = None  # the layer the jump is measured from
    cost: Optional[float] = None  # FP32 score - enabled score (qa.ranking.impacts)
    gain: Optional[float] = None  # disabled score - fully quantized score

    @property
    def weights(self) -> List[QuantizerView]:
        return [q for q in self.quantizers if q.is_param]

    @property
    def activations(self) -> List[QuantizerView]:
        return [q for q in self.quantizers if not q.is_param]


@dataclass
class Results:
    """A results folder, read back: scores, layers in execution order, quantizers."""

    root: Path
    summary: Dict[str, Any]
    layers: List[LayerView]
    quantizers: Dict[str, QuantizerView]
    enabled: Dict[str, Optional[float]]
    disabled: Dict[str, Optional[float]]
    mse: Dict[str, Optional[float]]
    sqnr: Dict[str, Optional[float]]
    scores: Dict[str, Optional[float]]  # fp32, weights, activations, quantized
    impacts: List[ranking.Impact]  # one per layer, same order

    @property
    def fp32(self) -> Optional[float]:
        return self.scores["fp32"]

    @property
    def quantized(self) -> Optional[float]:
        return self.scores["quantized"]

    @property
    def total_drop(self) -> Optional[float]:
        if self.fp32 is None or self.quantized is None:
            return None
        return self.fp32 - self.quantized

    def text(self, key: str, default: str = "") -> str:
        v = self.summary.get(key)
        return default if v is None else str(v)

    def layer(self, name: str) -> Optional[LayerView]:
        return next((layer for layer in self.layers if layer.name == name), None)

    def culprits(self, k: int = 5) -> List[LayerView]:
        """The layers qa.ranking calls culprits, biggest first: the ranking and filters of
        summary.json's most_sensitive_layers and of the CLI."""
        return [self.layers[i.index] for i in ranking.culprits(self.impacts, k)]


def _owner(key: str, layer_names: List[str]) -> str:
    """The layer a quantizer key belongs to: the longest layer name that prefixes ``key + '_'``."""
    best = ""
    for name in layer_names:
        if key.startswith(name + "_") and len(name) > len(best):
            best = name
    if best:
        return best
    return _ACTIVATION_KEY.sub("", key) if _ACTIVATION_KEY.search(key) else key.rsplit("_", 1)[0]


def load_results(root: Path, json_path: Any) -> Results:
    """Read what there is: summary.json when present, else the AIMET-style files alone.

    ``json_path(*parts)`` maps a file to its place in the folder exactly as the writer did.
    """
    if not any((root / f).is_file() for f in RESULT_FILES):
        raise QAError(f"no qa results in {root}: none of {', '.join(RESULT_FILES)} is there")
    summary = read_json(root / "summary.json") if (root / "summary.json").is_file() else {}
    if not isinstance(summary, dict):
        raise QAError(f"{root / 'summary.json'} is not a JSON object")

    def part(key: str, file: str) -> Any:
        data = summary.get(key)
        if not data and (root / file).is_file():  # partial runs: the file may hold what the summary lacks
            data = read_json(root / file)
        return data if isinstance(data, dict) else {}

    enabled = _score_dict(part("per_layer_quant_enabled", "per_layer_quant_enabled.json"))
    disabled = _score_dict(part("per_layer_quant_disabled", "per_layer_quant_disabled.json"))
    mse = _score_dict(part("per_layer_mse", "per_layer_mse_loss.json"))
    sqnr = _score_dict(summary.get("per_layer_sqnr_db"))
    weight_ranges = part("weight_ranges", "min_max_ranges/weights.json")
    activation_ranges = part("activation_ranges", "min_max_ranges/activations.json")
    encodings = summary.get("encodings") if isinstance(summary.get("encodings"), dict) else {}

    layers: List[LayerView] = []
    for entry in summary.get("layers") or []:
        if isinstance(entry, dict) and "name" in entry:
            layers.append(LayerView(str(entry["name"]), len(layers), str(entry.get("type") or ""),
                                    str(entry.get("op_type") or "")))
    listed = {layer.name for layer in layers}
    for name in [*enabled, *disabled, *mse]:  # no summary (an AIMET folder, a partial run): keys give the order
        if name not in listed:
            layers.append(LayerView(name, len(layers)))
            listed.add(name)
    by_name = {layer.name: layer for layer in layers}
    names = [layer.name for layer in layers]

    owners: Dict[str, str] = {}
    for entry in summary.get("layers") or []:
        if isinstance(entry, dict):
            for q in entry.get("quantizers") or []:
                owners[str(q)] = str(entry.get("name"))
    quantizers: Dict[str, QuantizerView] = {}
    for key in [*owners, *weight_ranges, *activation_ranges, *encodings]:
        key = str(key)
        if key in quantizers:
            continue
        layer = owners.get(key) or _owner(key, names)
        if key in weight_ranges:
            is_param = True
        elif key in activation_ranges:
            is_param = False
        else:
            is_param = not _ACTIVATION_KEY.search(key)
        param = (key[len(layer) + 1:] if key.startswith(layer + "_") else key) if is_param else None
        q = QuantizerView(key, layer, is_param, param, encodings.get(key),
                      weight_ranges.get(key) if is_param else activation_ranges.get(key))
        if q.encoding is None and q.range is None and key not in owners:
            continue
        parts = ("weights_pdf", layer, f"{param}.json") if is_param else ("activations_pdf", f"{key}.json")
        rel = json_path(*parts)
        if rel is not None and (root / rel).is_file():
            q.histogram_json = rel
        quantizers[key] = q
        if layer not in by_name:
            by_name[layer] = LayerView(layer, len(layers))
            layers.append(by_name[layer])
        by_name[layer].quantizers.append(q)

    # Two names that sanitize to one file name share a histogram file: attribute it to neither.
    claims: Dict[Path, List[str]] = {}
    for q in quantizers.values():
        if q.histogram_json is not None:
            claims.setdefault(q.histogram_json, []).append(q.name)
    for rel, owners_of in claims.items():
        if len(owners_of) > 1:
            log.warning("quantizers %s share the histogram file %s (their names differ only in punctuation); "
                        "it is shown for none of them", ", ".join(map(repr, owners_of)), rel.as_posix())
            for n in owners_of:
                quantizers[n].histogram_json = None

    scores = {"fp32": num(summary.get("fp32_score")), "weights": num(summary.get("weight_quantized_score")),
              "activations": num(summary.get("activation_quantized_score")),
              "quantized": num(summary.get("quantized_score"))}
    # Cost and gain come from qa.ranking, so the dashboard ranks as summary.json and the CLI do.
    ranked = ranking.impacts([layer.name for layer in layers], scores["fp32"], scores["quantized"], enabled, disabled)
    previous: Optional[LayerView] = None
    for layer, impact in zip(layers, ranked):
        layer.enabled, layer.disabled = enabled.get(layer.name), disabled.get(layer.name)
        layer.mse, layer.sqnr_db = mse.get(layer.name), sqnr.get(layer.name)
        layer.cost, layer.gain = impact.cost, impact.gain
        if layer.sqnr_db is not None:
            if previous is not None:
                layer.sqnr_jump_db, layer.previous = layer.sqnr_db - previous.sqnr_db, previous.name
            previous = layer
    return Results(root, summary, layers, quantizers, enabled, disabled, mse, sqnr, scores, ranked)
