"""Read a results folder (summary.json and the per-analysis JSON files) into what the pages show.

Every file is checked against the JSON schema shipped with qa (``schema/summary.schema.json``)
before it is used: a wrong type is a QAError naming the file and the field. Values of the right
type that no real result reaches (beyond +-1e100, bitwidths outside 1..64) are left out with a
note rather than drawn, so a hand-edited folder gives a report, or one clear error.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import math
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import numpy as np

from .. import ranking
from ..errors import QAError
from . import ResultsDir, sanitize

log = logging.getLogger("qa")

_ACTIVATION_KEY = re.compile(r"_(output|input)_\d+$")
RECOMMENDATION_FILE = "recommendation.json"  # qa.recommend's measured candidates and plan (optional)
RESULT_FILES = ("summary.json", "per_layer_quant_enabled.json", "per_layer_quant_disabled.json",
                "per_layer_mse_loss.json", "min_max_ranges/weights.json", "min_max_ranges/activations.json")
LIMIT = 1e100  # no score, range, MSE or histogram edge of a real run comes near (float32 tops out at 3.4e38)
MAX_BITWIDTH = 64
MAX_COUNT = 2.0 ** 53  # a histogram bin counts values; beyond this a count is not a count
NONFINITE = {"nan": "nan", "inf": "inf", "-inf": "-inf", "+inf": "inf", "infinity": "inf", "-infinity": "-inf"}
SCORE_KEYS = {"fp32": "fp32_score", "weights": "weight_quantized_score",
              "activations": "activation_quantized_score", "quantized": "quantized_score"}


def num(value: Any) -> Optional[float]:
    """A finite float within +-LIMIT, or None (missing, non-numeric, NaN/inf, absurdly large)."""
    try:
        v = ranking.finite(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return v if v is not None and abs(v) <= LIMIT else None


def reason(value: Any) -> Optional[str]:
    """"nan", "inf" or "-inf" for a value stored as such (a float, or a string as qa < 0.2 wrote it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return NONFINITE.get(value.strip().lower())
    return None


# ---- the schema ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _validator(definition: Optional[str]) -> Any:
    """A Draft 2020-12 validator for summary.json (None) or one of its $defs (the other files)."""
    import jsonschema  # with altair (which needs it): only the report reads files back

    text = importlib.resources.files("qa.report").joinpath("schema").joinpath("summary.schema.json").read_text("utf-8")
    schema = json.loads(text)
    if definition is not None:
        schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    return jsonschema.Draft202012Validator(schema)


@functools.lru_cache(maxsize=1)
def _recommendation_validator() -> Any:
    """A Draft 2020-12 validator for recommendation.json (``schema/recommendation.schema.json``)."""
    import jsonschema

    text = importlib.resources.files("qa.report").joinpath("schema").joinpath(
        "recommendation.schema.json").read_text("utf-8")
    return jsonschema.Draft202012Validator(json.loads(text))


def validate_recommendation(data: Any, file: str = RECOMMENDATION_FILE) -> None:
    """Raise QAError("recommendation.json: <field>: <what is wrong>") unless data fits its schema."""
    import jsonschema

    try:
        error = jsonschema.exceptions.best_match(_recommendation_validator().iter_errors(data))
    except RecursionError:
        raise QAError(f"{file}: nested too deeply to be a qa result file") from None
    if error is not None:
        where = _where(error.absolute_path)
        raise QAError(f"{file}: {where + ': ' if where else ''}{_message(error)}")


def _where(path: Any) -> str:
    """A field's place for people: layers[3].name, per_layer_quant_enabled["conv1.0"]."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_]\w*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)[:80]}]"
    return out


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 60, 60, 40, 4, 4, 3


def _message(error: Any) -> str:
    """jsonschema's message in a line of reasonable length, in words for qa's few forms."""
    shown = _REPR.repr(error.instance)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator in ("type", "pattern") and str(schema.get("pattern", "")).startswith("^(nan"):
        return f"{shown} is not a number"
    if error.validator == "anyOf" and schema.get("description"):
        return f"{shown} is not {schema['description']}"
    text = error.message.replace(repr(error.instance), shown, 1)
    return text if len(text) <= 200 else text[:190] + " ..."


def _fast_number(v: Any) -> bool:
    return v is None or type(v) is float or type(v) is int  # not bool: type(True) is bool


def _fast_pair(p: Any) -> bool:
    return type(p) is list and len(p) == 2 and _fast_number(p[0]) and _fast_number(p[1])


def _fast_encoding(e: Any) -> bool:
    if type(e) is not dict:
        return False
    for k, v in e.items():
        if k == "bitwidth":
            if not (v is None or type(v) is int):
                return False
        elif k == "is_symmetric":
            if not (v is None or type(v) is str or type(v) is bool):
                return False
        elif k in ("min", "max", "scale", "offset") and not _fast_number(v):
            return False
    return True


def _reduced(data: Any, definition: Optional[str]) -> Any:
    """A copy for validation whose per-channel lists and dicts are cut to their first entry when every
    entry passes a strict check that accepts a subset of what the schema does.

    jsonschema takes ~80 us per encoding dict: seconds for a large model's per-channel encodings;
    the schema still decides everything (an entry failing the strict check keeps the whole file,
    so its error names the exact field).
    """
    def ranges(d: Any) -> Any:
        if type(d) is not dict:
            return d
        out = {}
        for k, v in d.items():
            if type(v) is dict and len(v) > 1 and all(_fast_pair(p) for p in v.values()):
                first = next(iter(v))
                v = {first: v[first]}
            out[k] = v
        return out

    if definition == "ranges":
        return ranges(data)
    if definition is not None or type(data) is not dict:
        return data
    data = dict(data)
    for key in ("weight_ranges", "activation_ranges"):
        if key in data:
            data[key] = ranges(data[key])
    encodings = data.get("encodings")
    if type(encodings) is dict:
        data["encodings"] = {k: v[:1] if type(v) is list and len(v) > 1 and all(_fast_encoding(e) for e in v) else v
                             for k, v in encodings.items()}
    return data


def validate(data: Any, file: str, definition: Optional[str] = None) -> None:
    """Raise QAError("<file>: <field>: <what is wrong>") unless data fits the schema.

    Args:
        data: the file's JSON.
        file: its path in the results folder, for the message.
        definition: None for summary.json, else the $defs entry ("scores", "ranges", "histogram").
    """
    import jsonschema

    try:
        error = jsonschema.exceptions.best_match(_validator(definition).iter_errors(_reduced(data, definition)))
    except RecursionError:
        raise QAError(f"{file}: nested too deeply to be a qa result file") from None
    if error is not None:
        where = _where(error.absolute_path)
        raise QAError(f"{file}: {where + ': ' if where else ''}{_message(error)}")


def read_checked(out: ResultsDir, rel: str, definition: Optional[str]) -> Any:
    """A result file's JSON, checked against the schema; None when there is no such file."""
    data = out.read_json(rel)
    if data is not None:
        validate(data, rel, definition)
    return data


# ---- views --------------------------------------------------------------------------------------

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
        """Raises ValueError (saying what) for anything that is not a drawable histogram."""
        if not isinstance(record, dict) or not isinstance(record.get("counts"), list):
            raise ValueError("no list of counts")
        counts = np.asarray(record["counts"], dtype=np.float64)
        if "edges" in record:  # an explicit edge list (as other tools write it)
            edges = np.asarray(record["edges"], dtype=np.float64)
        else:  # qa's compact form: lo and width of the bins
            lo, width = num(record.get("lo")), num(record.get("width"))
            if lo is None or width is None or width <= 0:
                raise ValueError("lo and width must be numbers within +-1e100, width > 0")
            edges = lo + width * np.arange(counts.size + 1)
        if counts.ndim != 1 or edges.shape != (counts.size + 1,):
            raise ValueError(f"{counts.size} counts need {counts.size + 1} edges, got {edges.size}")
        if not np.all(np.isfinite(edges)) or np.any(np.abs(edges) > LIMIT) or np.any(np.diff(edges) <= 0):
            raise ValueError("the bin edges must increase and stay within +-1e100")
        counts = np.where(np.isfinite(counts) & (counts > 0), counts, 0.0)
        if counts.sum() > MAX_COUNT:
            raise ValueError(f"the counts add up to {counts.sum():.3g}, more values than any calibration sees")
        clipped = num(record.get("clipped_fraction"))
        return cls(edges, counts, num(record.get("encoding_min")), num(record.get("encoding_max")),
                   None if clipped is None else min(max(clipped, 0.0), 1.0))

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
    histogram_json: Optional[PurePosixPath] = None  # relative to the results folder, when the file exists
    histogram_page: Optional[PurePosixPath] = None  # relative, set once the page is written
    ranges_page: Optional[PurePosixPath] = None  # per-channel ranges page, weights only
    stats: Dict[str, Any] = field(default_factory=dict)  # from the histogram, once read

    @property
    def per_channel(self) -> bool:
        return isinstance(self.encoding, list) or isinstance(self.range, dict)

    @property
    def bitwidth(self) -> Optional[int]:
        """The bitwidth, when it is one a quantizer can have (1..64)."""
        enc = self.encoding[0] if isinstance(self.encoding, list) and self.encoding else self.encoding
        bw = num(enc.get("bitwidth")) if isinstance(enc, dict) else None
        return int(bw) if bw is not None and 1 <= bw <= MAX_BITWIDTH else None

    @property
    def scale(self) -> Optional[float]:
        """The (largest, when per channel) quantization step."""
        encs = self.encoding if isinstance(self.encoding, list) else [self.encoding]
        scales = [num(e.get("scale")) for e in encs if isinstance(e, dict)]
        scales = [s for s in scales if s and s > 0]
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
    enabled_nonfinite: Optional[str] = None  # "nan" / "inf" / "-inf" when that score was one
    disabled_nonfinite: Optional[str] = None
    mse: Optional[float] = None
    sqnr_db: Optional[float] = None
    sqnr_jump_db: Optional[float] = None  # SQNR change from the previous layer (negative: lost here)
    previous: Optional[str] = None  # the layer the jump is measured from
    local_mse: Optional[float] = None  # output MSE with only this layer quantized, fed FP32 inputs
    local_sqnr_db: Optional[float] = None  # the same as an SQNR: the error this layer adds on its own
    cost: Optional[float] = None  # FP32 score - enabled score (qa.ranking.impacts); inf: a NaN score
    gain: Optional[float] = None  # disabled score - fully quantized score

    @property
    def weights(self) -> List[QuantizerView]:
        return [q for q in self.quantizers if q.is_param]

    @property
    def activations(self) -> List[QuantizerView]:
        return [q for q in self.quantizers if not q.is_param]

    @property
    def impact(self) -> float:
        return max(self.cost or 0.0, self.gain or 0.0)


@dataclass
class Results:
    """A results folder, read back: scores, layers in execution order, quantizers."""

    out: ResultsDir
    summary: Dict[str, Any]
    layers: List[LayerView]
    quantizers: Dict[str, QuantizerView]
    enabled: Dict[str, Optional[float]]
    disabled: Dict[str, Optional[float]]
    mse: Dict[str, Optional[float]]
    sqnr: Dict[str, Optional[float]]
    scores: Dict[str, Optional[float]]  # fp32, weights, activations, quantized
    impacts: List[ranking.Impact]  # one per layer, same order
    nonfinite: Dict[str, str] = field(default_factory=dict)  # fp32/weights/activations/quantized -> "nan"...
    notes: List[str] = field(default_factory=list)  # values left out (out of range for display)
    files: Optional[Set[str]] = None  # summary.json's list of this run's files; None: read what is there
    _by_name: Dict[str, LayerView] = field(default_factory=dict, repr=False)
    recommendation: Optional[Dict[str, Any]] = None  # recommendation.json (qa.recommend), checked; None: none

    @property
    def root(self) -> Any:
        return self.out.root

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

    @property
    def active_quantizers(self) -> Optional[int]:
        v = self.summary.get("active_quantizers")
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    @property
    def problems(self) -> List[str]:
        return [p for p in self.summary.get("problems") or [] if isinstance(p, str)]

    def text(self, key: str, default: str = "") -> str:
        v = self.summary.get(key)
        return default if v is None else str(v)

    def layer(self, name: str) -> Optional[LayerView]:
        if len(self._by_name) != len(self.layers):
            self._by_name = {}
            for layer in self.layers:
                self._by_name.setdefault(layer.name, layer)
        return self._by_name.get(name)

    @property
    def has_local(self) -> bool:
        """Whether summary.json has the local (own, FP32-input) error of any layer."""
        return any(layer.local_sqnr_db is not None or layer.local_mse is not None for layer in self.layers)

    def culprits(self, k: int = 5) -> List[LayerView]:
        """The layers qa.ranking calls culprits, biggest first: the ranking and filters of
        summary.json's most_sensitive_layers and of the CLI."""
        return [self.layers[i.index] for i in ranking.culprits(self.impacts, k)]

    def readable(self, rel: PurePosixPath) -> bool:
        """Whether rel is one of this run's files (when the summary lists them) and is there."""
        return (self.files is None or rel.as_posix() in self.files) and self.out.exists(rel)

    def all_scores(self) -> List[float]:
        """Every finite score: the four configurations and both per-layer sweeps."""
        values = [*self.scores.values(), *self.enabled.values(), *self.disabled.values()]
        return [v for v in values if v is not None]


def _owner(key: str, layer_names: List[str]) -> str:
    """The layer a quantizer key belongs to: the longest layer name that prefixes ``key + '_'``."""
    best = ""
    for name in layer_names:
        if key.startswith(name + "_") and len(name) > len(best):
            best = name
    if best:
        return best
    return _ACTIVATION_KEY.sub("", key) if _ACTIVATION_KEY.search(key) else key.rsplit("_", 1)[0]


def _aimet_name(name: str) -> str:
    return re.sub(r"\W+", "_", name)


class _Reader:
    """Reads the folder's files (only those listed in summary.json's "files" when it has one) and
    notes every value it leaves out."""

    def __init__(self, out: ResultsDir) -> None:
        self.out = out
        self.notes: List[str] = []
        self.files: Optional[Set[str]] = None

    def listed(self, rel: str) -> bool:
        return self.files is None or rel in self.files

    def file(self, rel: str, definition: Optional[str]) -> Any:
        return read_checked(self.out, rel, definition) if self.listed(rel) else None

    def number(self, value: Any, where: str) -> Optional[float]:
        v = num(value)
        if v is None and reason(value) is None and value is not None:
            self.notes.append(f"{where} = {_short(value)} is beyond \u00b11e100 and is left out")
        return v

    def scores(self, data: Any, where: str) -> Dict[str, Optional[float]]:
        if not isinstance(data, dict):
            return {}
        return {str(k): self.number(v, f"{where}[{json.dumps(str(k))[:60]}]") for k, v in data.items()}


def _short(value: Any) -> str:
    try:
        text = f"{float(value):.3g}"
    except (TypeError, ValueError, OverflowError):
        text = "an integer of many digits" if isinstance(value, int) else repr(value)
    return text[:40]


def histogram_file(r: Results, json_path: Callable[..., PurePosixPath],
                   parts: Tuple[str, ...]) -> Optional[PurePosixPath]:
    """Where a quantizer's histogram JSON is: qa's name for it (``sanitize``), or in a folder
    without a file list, AIMET's name (``re.sub(r'\\W+', '_', name)``) when that is a plain name."""
    rel = json_path(*parts)
    if r.readable(rel):
        return rel
    if r.files is None:
        *dirs, leaf = parts
        legacy = [_aimet_name(p) for p in dirs] + [_aimet_name(leaf[:-5]) + ".json"]
        if all(sanitize(p) == p for p in legacy[:-1]) and sanitize(legacy[-1][:-5]) == legacy[-1][:-5]:
            alt = PurePosixPath(*legacy)
            if alt != rel and r.readable(alt):
                return alt
    return None


def load_results(out: ResultsDir, json_path: Callable[..., PurePosixPath]) -> Results:
    """Read what there is: summary.json when present, else the AIMET-style files alone.

    ``json_path(*parts)`` maps a file to its place in the folder exactly as the writer did. When
    summary.json lists this run's files, only those are read: a folder reused by several runs
    shows the last run only.
    """
    reader = _Reader(out)
    summary = read_checked(out, "summary.json", None)
    if summary is None and not any(out.exists(f) for f in RESULT_FILES):
        raise QAError(f"no qa results in {out.root}: none of {', '.join(RESULT_FILES)} is there")
    if summary is None:
        summary = {}
    if isinstance(summary.get("files"), list):
        reader.files = {f for f in summary["files"] if isinstance(f, str)} | {"summary.json"}
    version = summary.get("schema_version")
    if isinstance(version, int) and version > 1:
        log.warning("summary.json has schema version %d, newer than this qa reads (1); the report may miss some of it",
                    version)

    def part(key: str, file: str, definition: str) -> Any:
        data = summary.get(key)
        if not data:  # partial runs and AIMET folders: the file may hold what the summary lacks
            data = reader.file(file, definition)
        return data if isinstance(data, dict) else {}

    raw_enabled = part("per_layer_quant_enabled", "per_layer_quant_enabled.json", "scores")
    raw_disabled = part("per_layer_quant_disabled", "per_layer_quant_disabled.json", "scores")
    enabled = reader.scores(raw_enabled, "per_layer_quant_enabled")
    disabled = reader.scores(raw_disabled, "per_layer_quant_disabled")
    mse = reader.scores(part("per_layer_mse", "per_layer_mse_loss.json", "scores"), "per_layer_mse")
    sqnr = reader.scores(summary.get("per_layer_sqnr_db"), "per_layer_sqnr_db")
    local_mse = reader.scores(part("per_layer_local_mse", "per_layer_local_mse_loss.json", "scores"),
                              "per_layer_local_mse")
    local_sqnr = reader.scores(summary.get("per_layer_local_sqnr_db"), "per_layer_local_sqnr_db")
    weight_ranges = part("weight_ranges", "min_max_ranges/weights.json", "ranges")
    activation_ranges = part("activation_ranges", "min_max_ranges/activations.json", "ranges")
    encodings = summary.get("encodings") if isinstance(summary.get("encodings"), dict) else {}

    # NaN/inf scores: JSON has null there and nonfinite_scores says which (qa < 0.2 wrote "nan").
    stored = summary.get("nonfinite_scores") if isinstance(summary.get("nonfinite_scores"), dict) else {}

    def nonfinite(group: str, raw: Dict[str, Any]) -> Dict[str, str]:
        named = stored.get(group) if isinstance(stored.get(group), dict) else {}
        out_ = {str(k): reason(v) for k, v in raw.items() if reason(v)}
        out_.update({str(k): NONFINITE[v] for k, v in named.items() if v in NONFINITE})
        return out_

    score_reasons = {short: why for short, key in SCORE_KEYS.items()
                     for why in [nonfinite("scores", {key: summary.get(key)}).get(key)] if why}
    enabled_reasons = nonfinite("per_layer_quant_enabled", raw_enabled)
    disabled_reasons = nonfinite("per_layer_quant_disabled", raw_disabled)

    layers: List[LayerView] = []
    for entry in summary.get("layers") or []:
        layers.append(LayerView(entry["name"], len(layers), entry.get("type") or "", entry.get("op_type") or ""))
    listed = {layer.name for layer in layers}
    for name in [*enabled, *disabled, *mse]:  # no summary (an AIMET folder, a partial run): keys give the order
        if name not in listed:
            layers.append(LayerView(name, len(layers)))
            listed.add(name)
    by_name = {layer.name: layer for layer in layers}
    names = [layer.name for layer in layers]

    owners: Dict[str, str] = {}
    for entry in summary.get("layers") or []:
        for q in entry.get("quantizers") or []:
            owners[q] = entry["name"]
    scores = {short: reader.number(summary.get(key), key) for short, key in SCORE_KEYS.items()}
    results = Results(out, summary, layers, {}, enabled, disabled, mse, sqnr, scores, [], score_reasons,
                      reader.notes, reader.files)
    quantizers = results.quantizers
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
        q.histogram_json = histogram_file(results, json_path, parts)
        quantizers[key] = q
        if layer not in by_name:
            by_name[layer] = LayerView(layer, len(layers))
            layers.append(by_name[layer])
        by_name[layer].quantizers.append(q)

    # Files with AIMET's names (a folder qa did not write): two names that differ only in
    # punctuation share one; it is shown for neither. qa's own names are unique per quantizer.
    claims: Dict[PurePosixPath, List[str]] = {}
    for q in quantizers.values():
        if q.histogram_json is not None:
            claims.setdefault(q.histogram_json, []).append(q.name)
    for rel, owners_of in claims.items():
        if len(owners_of) > 1:
            log.warning("quantizers %s share the histogram file %s (their names differ only in punctuation); "
                        "it is shown for none of them", ", ".join(map(repr, owners_of)), rel.as_posix())
            for n in owners_of:
                quantizers[n].histogram_json = None

    # Cost and gain come from qa.ranking, so the dashboard ranks as summary.json and the CLI do;
    # a NaN score goes in as NaN (an infinite cost or gain: the worst finding, ranked first).
    def as_ranked(values: Dict[str, Optional[float]], reasons: Dict[str, str]) -> Dict[str, Any]:
        return {**values, **{k: float(v) for k, v in reasons.items()}}

    fp32_in = float(score_reasons["fp32"]) if "fp32" in score_reasons else scores["fp32"]
    quantized_in = float(score_reasons["quantized"]) if "quantized" in score_reasons else scores["quantized"]
    results.impacts = ranking.impacts(names, fp32_in, quantized_in, as_ranked(enabled, enabled_reasons),
                                      as_ranked(disabled, disabled_reasons))
    if reader.listed(RECOMMENDATION_FILE):
        rec = out.read_json(RECOMMENDATION_FILE)
        if rec is not None:
            validate_recommendation(rec)
            results.recommendation = rec
    previous: Optional[LayerView] = None
    for layer, impact in zip(layers, results.impacts):
        layer.enabled, layer.disabled = enabled.get(layer.name), disabled.get(layer.name)
        layer.enabled_nonfinite = enabled_reasons.get(layer.name)
        layer.disabled_nonfinite = disabled_reasons.get(layer.name)
        layer.mse, layer.sqnr_db = mse.get(layer.name), sqnr.get(layer.name)
        layer.local_mse, layer.local_sqnr_db = local_mse.get(layer.name), local_sqnr.get(layer.name)
        layer.cost, layer.gain = impact.cost, impact.gain
        if layer.sqnr_db is not None:
            if previous is not None and previous.sqnr_db is not None:
                layer.sqnr_jump_db, layer.previous = layer.sqnr_db - previous.sqnr_db, previous.name
            previous = layer
    return results
