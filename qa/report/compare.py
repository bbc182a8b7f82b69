"""Two results folders side by side (``qa compare RUN_A RUN_B``): before and after a fix, W8 vs W4,
a PyTorch model vs its ONNX export.

Like ``qa report``, this reads result files only (``summary.json`` and the per-analysis JSON,
checked against the schema) and never the engine. It compares:

* the four scores (FP32, weights only, activations only, fully quantized), A, B and B - A;
* every layer in both runs: its score in both per-layer sweeps, its output MSE and SQNR, and its
  own (local) SQNR when the runs have it; the layers with the largest changes first;
* the settings that differ: framework, qa version (when recorded), scheme, default bitwidths,
  and what the config made of the quantizers (per channel, symmetric, bitwidths in use);
* the culprit rankings (:mod:`qa.ranking`) of both runs side by side.

Layer matching (``MATCHING`` says it for the page):

1. Same name: a layer of A and a layer of B with the same name are one layer.
2. When one run is ONNX and the other is not (the framework summary.json records, else inferred
   from the layer names and types), the ONNX side's remaining names are read as torch.onnx's
   exporter writes them, ``/scope/.../Op_N``, and translated to qa's PyTorch names:

   * the module path is the scope parts joined with ``.``, where a part that already spells the
     path so far (``layer1.0`` after ``layer1``: the exporter's own form) replaces it:
     ``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``, ``/attn/q/MatMul`` -> ``attn.q``;
   * a module's second call: ``/layer1/layer1.0/relu_1/Relu`` -> ``layer1.0.relu/call_1``;
   * an op of a module's forward: the op type lower-cased with the same counter under the module
     path: ``/attn/MatMul_1`` -> ``attn/matmul_1``, ``/Add`` -> ``add``; when that is no layer, a
     few op types whose torch function is named otherwise are tried (Conv -> conv2d, ReduceMean ->
     mean, LayerNormalization -> layer_norm, ...).

   A translated name pairs two layers only when the other run has a layer of that name that
   nothing matched yet and the op types agree (Gemm and MatMul count as one: how ``nn.Linear``
   exports). Several ONNX layers in the scope of one PyTorch layer (a GELU written out as Erf, Div,
   Mul) pair only the one whose op type is the PyTorch layer's, else none.

Everything not matched is listed as present in one run only, with the reason when a candidate
was refused: no pair is ever made silently.

Where the page goes: ``RUN_B/compare.html`` by default (B is the run under study: "what changed
in B"), or ``DIR/compare.html`` with ``out=DIR``. Beside it, ``_static/`` gets the report's Vega
bundle, stylesheet and script when they are missing or differ (the same files ``qa report``
writes there). Nothing else is written: RUN_A is only read (it may be a colleague's baseline, or
read-only), and nothing goes outside the folder named.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import QAError
from . import ResultsDir, _folder
from ._load import LayerView, Results, load_results

__all__ = ["compare", "write_page", "text_table", "Comparison", "Match", "Change", "Metric", "METRICS",
           "match_layers", "onnx_candidates", "framework_of", "MATCHING", "PAGE", "DEFAULT_TOP"]

log = logging.getLogger("qa")

PAGE = "compare.html"
DEFAULT_TOP = 10
MATCHING = (
    "Layers are matched by exact name. When one run is ONNX and the other is not, the ONNX node names "
    "(/scope/.../Op_N, as torch.onnx writes them) are translated to PyTorch layer names: the scope parts joined "
    "with '.' (a part that already spells the path so far, such as layer1.0 after layer1, replaces it) name a "
    "module layer (/layer1/layer1.0/conv1/Conv is layer1.0.conv1); a scope part relu_1 is the module's second "
    "call (relu/call_1); an op of a module's forward is its op type lower-cased with the same counter under the "
    "module path (/attn/MatMul_1 is attn/matmul_1, /Add is add), or, failing that, the torch function of a few "
    "op types named otherwise (Conv: conv2d, ReduceMean: mean, LayerNormalization: layer_norm, ...). A "
    "translated name pairs two layers only when the other run has that layer, nothing matched it yet and the op "
    "types agree (Gemm and MatMul count as one); several ONNX layers in the scope of one PyTorch layer pair only "
    "the one of its op type, else none. Everything else is listed as present in one run only.")

# ONNX op type -> torch function names (qa's PyTorch op layer names) tried after the lower-cased op type.
_OP_ALIASES: Dict[str, Tuple[str, ...]] = {
    "Conv": ("conv2d", "conv1d", "conv3d"),
    "ConvTranspose": ("conv_transpose2d", "conv_transpose1d", "conv_transpose3d"),
    "Gemm": ("linear",), "MatMul": ("bmm", "linear"), "ReduceMean": ("mean",), "ReduceSum": ("sum",),
    "ReduceMax": ("amax", "max"), "ReduceMin": ("amin", "min"), "LayerNormalization": ("layer_norm",),
    "BatchNormalization": ("batch_norm",), "InstanceNormalization": ("instance_norm",),
    "GroupNormalization": ("group_norm",), "Clip": ("relu6", "clamp", "hardtanh"), "Concat": ("cat",),
    "LeakyRelu": ("leaky_relu",), "HardSigmoid": ("hardsigmoid",), "HardSwish": ("hardswish",),
    "LogSoftmax": ("log_softmax",), "AveragePool": ("avg_pool2d", "avg_pool1d"),
    "MaxPool": ("max_pool2d", "max_pool1d"), "GlobalAveragePool": ("adaptive_avg_pool2d",), "Div": ("truediv",),
}
_SAME_OP = ({"Gemm", "MatMul"},)  # op types that are one layer in the other framework (nn.Linear exports as either)
_NODE_OP = re.compile(r"(?P<op>[A-Za-z][A-Za-z0-9]*)(?:_(?P<n>\d+))?")
_CALL = re.compile(r"(?P<base>.+)_(?P<n>[1-9]\d*)")


# ---- reading --------------------------------------------------------------------------------------

class _ReadOnlyDir(ResultsDir):
    """A results folder opened for reading only: no write probe, and every write refused."""

    def __init__(self, path: Union[str, os.PathLike]) -> None:  # noqa: D107 (no super: it probes by writing)
        self.root = _folder(path)
        if not self.root.is_dir():
            raise QAError(f"no qa results in {self.root}: there is no such folder")
        self.written: List[Path] = []
        self._known: set = set()

    def write_bytes(self, data: bytes, target: Union[str, os.PathLike]) -> None:
        raise QAError(f"internal: {self.root} is open for reading only")

    def remove(self, rel: Union[str, os.PathLike]) -> bool:
        raise QAError(f"internal: {self.root} is open for reading only")


def _resolve(path: Union[str, os.PathLike], label: str) -> Path:
    """The absolute folder path of RUN_A/RUN_B/--out, or a QAError in one line."""
    try:
        return _folder(path)
    except QAError as e:  # QAValueError: not a path, NUL in it, a file
        text = str(e).replace("results_dir", label, 1)
        raise QAError(text) from None


def _open(path: Union[str, os.PathLike], label: str) -> Results:
    root = _resolve(path, label)
    if not root.is_dir():
        raise QAError(f"{label}: no qa results in {root}: there is no such folder")
    out = _ReadOnlyDir(root)

    def json_rel(*parts: str) -> PurePosixPath:
        return PurePosixPath(out.path(*parts).relative_to(out.root).as_posix())

    try:
        return load_results(out, json_rel)
    except ImportError as e:  # jsonschema comes with the report extra
        raise QAError(f"qa compare needs the report extra ({e}): pip install 'qa-quant[report]'") from e
    except QAError as e:
        text = str(e)
        raise QAError(f"{label}: {text}" if str(root) in text else f"{label} ({root}): {text}") from None


# ---- what a run is ----------------------------------------------------------------------------------

_TORCH_TYPES = {"Linear", "Embedding", "LayerNorm", "GroupNorm", "ReLU", "ReLU6", "GELU", "SiLU", "Hardswish",
                "Softmax", "MultiheadAttention", "LSTM", "GRU", "Identity", "Flatten", "Dropout"}
_KERAS_TYPES = {"Dense", "EinsumDense", "Activation", "Rescaling", "Normalization", "LayerNormalization",
                "MultiHeadAttention", "Softmax", "ReLU", "Add", "Multiply", "Concatenate", "Embedding"}


def framework_of(r: Results) -> Tuple[str, bool]:
    """(framework, inferred): what summary.json records, else a guess from the layer names and types.

    ONNX: node names as torch.onnx writes them (``/conv1/Conv``), or types that are the op types.
    PyTorch: lower-case function layers (``add``, ``matmul``), module types such as ``Conv2d``.
    Keras: types such as ``Conv2D``, ``Dense``. "unknown" when nothing tells.
    """
    recorded = r.summary.get("framework")
    if isinstance(recorded, str) and recorded.strip():
        return recorded.strip().lower(), False
    votes: Counter = Counter()
    for layer in r.layers:
        name, kind, op = layer.name, layer.type, layer.op_type
        if name.startswith("/"):
            votes["onnx"] += 2
        if not kind:
            continue
        if kind[:1].islower():
            votes["torch"] += 1
        elif re.search(r"[123]d$", kind) or (kind in _TORCH_TYPES and kind not in _KERAS_TYPES):
            votes["torch"] += 1
        elif re.search(r"[123]D$", kind) or (kind in _KERAS_TYPES and kind not in _TORCH_TYPES):
            votes["keras"] += 1
        elif op and (kind == op or kind.startswith(op + "+")):
            votes["onnx"] += 1
    if not votes:
        return "unknown", True
    (best, n), *rest = votes.most_common()
    return (best if not rest or rest[0][1] < n else "unknown"), True


def _has_data(layer: LayerView) -> bool:
    return bool(layer.quantizers) or any(v is not None for v in (
        layer.enabled, layer.disabled, layer.mse, layer.sqnr_db, layer.local_sqnr_db, layer.enabled_nonfinite,
        layer.disabled_nonfinite))


# ---- matching layers ----------------------------------------------------------------------------------

def _module_path(scope: Sequence[str]) -> str:
    """torch.onnx scope parts as a module path: ``layer1``, ``layer1.0``, ``conv1`` -> ``layer1.0.conv1``."""
    path = ""
    for part in scope:
        if path and part.startswith(path + "."):
            path = part  # the exporter spelled the path so far itself
        else:
            path = f"{path}.{part}" if path else part
    return path


def onnx_candidates(name: str) -> Tuple[List[str], List[str]]:
    """The PyTorch layer names an ONNX node name may stand for: (module layers, op layers), best first.

    Example:
        >>> onnx_candidates("/layer1/layer1.0/conv1/Conv")[0]
        ['layer1.0.conv1']
        >>> onnx_candidates("/layer1/layer1.0/relu_1/Relu")[0]
        ['layer1.0.relu_1', 'layer1.0.relu/call_1']
        >>> onnx_candidates("/attn/MatMul_1")[1]
        ['attn/matmul_1', 'attn/bmm_1', 'attn/linear_1']
        >>> onnx_candidates("/Add"), onnx_candidates("conv1")
        (([], ['add']), ([], []))
    """
    if not name.startswith("/"):
        return [], []
    parts = [p for p in name.split("/") if p]
    if not parts:
        return [], []
    *scope, last = parts
    node = _NODE_OP.fullmatch(last)
    if node is None:
        return [], []
    op, n = node.group("op"), node.group("n")
    path = _module_path(scope)
    modules: List[str] = []
    if path:
        modules.append(path)
        head, dot, tail = path.rpartition(".")
        call = _CALL.fullmatch(tail)
        if call:
            modules.append(f"{head}{dot}{call.group('base')}/call_{int(call.group('n'))}")
    functions = [op.lower()] + [f for f in _OP_ALIASES.get(op, ()) if f != op.lower()]
    suffix = f"_{n}" if n else ""
    ops = [f"{path}/{f}{suffix}" if path else f"{f}{suffix}" for f in functions]
    return modules, ops


def _compatible(x: str, y: str, strict: bool = False) -> bool:
    """Whether two op types can be one layer (an unknown op type is compatible unless strict)."""
    if not x or not y:
        return not strict
    return x == y or any(x in g and y in g for g in _SAME_OP)


@dataclass
class Match:
    """A layer in both runs (``a`` and ``b``), or in one of them (the other is None)."""

    a: Optional[LayerView]
    b: Optional[LayerView]
    how: str = ""  # "name" (the same name), "rule" (the ONNX name rule), "" (one run only)
    note: str = ""  # why a candidate was refused (one run only), or a type that changed

    @property
    def name(self) -> str:
        """The layer's name in B (the run under study), else in A."""
        layer = self.b if self.b is not None else self.a
        assert layer is not None
        return layer.name

    @property
    def index(self) -> int:
        layer = self.b if self.b is not None else self.a
        assert layer is not None
        return layer.index


def _unique(layers: Sequence[LayerView]) -> List[LayerView]:
    seen: Dict[str, LayerView] = {}
    for layer in layers:
        seen.setdefault(layer.name, layer)
    return list(seen.values())


def match_layers(a: Sequence[LayerView], b: Sequence[LayerView], onnx_side: Optional[str] = None
                 ) -> Tuple[List[Match], List[Match], List[Match]]:
    """Pair the layers of two runs: (matched, only in A, only in B), each in execution order.

    Args:
        a, b: the layers of each run, in execution order.
        onnx_side: "a" or "b" when that run is ONNX and the other is not: its names not found in the
            other run are then translated with :func:`onnx_candidates` (the rule in ``MATCHING``).
    """
    a, b = _unique(a), _unique(b)
    by_a = {layer.name: layer for layer in a}
    by_b = {layer.name: layer for layer in b}
    pairs: Dict[str, Tuple[LayerView, LayerView, str]] = {}  # B name -> (a, b, how)
    notes: Dict[Tuple[str, str], str] = {}  # (side, name) -> why it stayed alone
    for layer in b:
        if layer.name in by_a:
            pairs[layer.name] = (by_a[layer.name], layer, "name")
    if onnx_side in ("a", "b"):
        onnx, other = (a, by_b) if onnx_side == "a" else (b, by_a)
        claimed = {other_name for other_name in other if other_name in (by_a if onnx_side == "a" else by_b)}
        left = [layer for layer in onnx if layer.name not in other]

        def pair(x: LayerView, y: LayerView) -> None:
            claimed.add(y.name)
            ab = (x, y) if onnx_side == "a" else (y, x)
            pairs[ab[1].name] = (ab[0], ab[1], "rule")

        # Module layers first, all of a scope at once: several ONNX layers in one PyTorch layer's scope
        # (a module written out in several ops) pair only the one of its op type.
        scopes: Dict[str, List[LayerView]] = {}
        for layer in left:
            modules, _ = onnx_candidates(layer.name)
            target = next((m for m in modules if m in other and m not in claimed), None)
            if target is not None:
                scopes.setdefault(target, []).append(layer)
        done = set()
        for target, members in scopes.items():
            want = other[target].op_type
            if len(members) == 1:
                fits = members if _compatible(members[0].op_type, want) else []
            else:
                fits = [m for m in members if _compatible(m.op_type, want, strict=True)]
            if len(fits) == 1:
                pair(fits[0], other[target])
                done.add(fits[0].name)
            other_side = "b" if onnx_side == "a" else "a"
            for m in members:
                if m.name in done:
                    continue
                if len(members) == 1:
                    why = f"op types differ ({m.op_type or '?'} vs {want or '?'})"
                else:
                    why = (f"one of {len(members)} ONNX layers in the scope of that layer"
                           + (f", {len(fits)} of its op type" if fits else ""))
                notes[(onnx_side, m.name)] = f"not paired with {target} of the other run: {why}"
            if len(fits) != 1:
                names = ", ".join(m.name for m in members[:5]) + (", ..." if len(members) > 5 else "")
                if len(members) == 1:
                    why = f"not paired with {names} of the other run: op types differ"
                else:
                    why = (f"written out as {len(members)} layers in the other run ({names}), "
                           + (f"{len(fits)} of its op type" if fits else "none of its op type"))
                notes[(other_side, target)] = why
        for layer in left:  # then op layers
            if layer.name in done:
                continue
            _, ops = onnx_candidates(layer.name)
            for candidate in ops:
                if candidate in other and candidate not in claimed:
                    if _compatible(layer.op_type, other[candidate].op_type):
                        pair(layer, other[candidate])
                        done.add(layer.name)
                        notes.pop((onnx_side, layer.name), None)
                        break
                    notes.setdefault((onnx_side, layer.name), f"not paired with {candidate} of the other run: op "
                                                              f"types differ ({layer.op_type or '?'} vs "
                                                              f"{other[candidate].op_type or '?'})")
    matched = []
    for name in sorted(pairs, key=lambda n: by_b[n].index):
        x, y, how = pairs[name]
        note = ""
        if how == "name":
            kind_a, kind_b = x.type or x.op_type, y.type or y.op_type
            if kind_a and kind_b and kind_a != kind_b:
                note = f"type {kind_a} in A, {kind_b} in B"
        else:
            note = f"{x.name} in A"
        matched.append(Match(x, y, how, note))
    paired_a = {m.a.name for m in matched if m.a is not None}
    only_a = [Match(layer, None, "", notes.get(("a", layer.name), "")) for layer in a if layer.name not in paired_a]
    only_b = [Match(None, layer, "", notes.get(("b", layer.name), "")) for layer in b if layer.name not in pairs]
    return matched, only_a, only_b


# ---- the comparison ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """A per-layer measure compared between the runs."""

    key: str
    title: str  # a heading
    short: str  # a column
    unit: str
    attr: str  # the LayerView field
    nonfinite: Optional[str] = None  # the LayerView field naming a NaN/inf score
    higher_better: bool = True
    log: bool = False  # the change is 10 log10(B / A) dB (MSE), not B - A

    def value(self, layer: Optional[LayerView]) -> Optional[float]:
        return None if layer is None else getattr(layer, self.attr)

    def reason(self, layer: Optional[LayerView]) -> Optional[str]:
        return None if layer is None or self.nonfinite is None else getattr(layer, self.nonfinite)

    def delta(self, a: Optional[float], b: Optional[float]) -> Optional[float]:
        if a is None or b is None:
            return None
        if not self.log:
            d = b - a
            return d if math.isfinite(d) else None
        if a == b:
            return 0.0
        if a <= 0 or b <= 0:
            return None
        return 10.0 * math.log10(b / a)


METRICS = (
    Metric("enabled", "Score with only this layer quantized", "only this quantized", "score", "enabled",
           "enabled_nonfinite"),
    Metric("disabled", "Score with all but this layer quantized", "all but this", "score", "disabled",
           "disabled_nonfinite"),
    Metric("sqnr", "Output SQNR, fully quantized", "SQNR dB", "dB", "sqnr_db"),
    Metric("local_sqnr", "Own SQNR (only this layer quantized, FP32 inputs)", "own SQNR dB", "dB", "local_sqnr_db"),
    Metric("mse", "Output MSE, fully quantized", "MSE", "dB", "mse", higher_better=False, log=True),
)
SWEEPS = METRICS[:2]
SCORES = (("fp32", "FP32"), ("weights", "weights quantized only"), ("activations", "activations quantized only"),
          ("quantized", "fully quantized"))
_WORD = {"nan": "NaN", "inf": "inf", "-inf": "-inf"}


@dataclass
class Change:
    """One matched layer's change in one measure."""

    match: Match
    metric: Metric
    a: Optional[float]
    b: Optional[float]
    delta: Optional[float]
    flag: str = ""  # "NaN in B": a number in one run, not in the other (ranks first)

    @property
    def size(self) -> float:
        return math.inf if self.flag else abs(self.delta or 0.0)

    @property
    def better(self) -> Optional[bool]:
        if self.delta is None or self.delta == 0:
            return None
        return (self.delta > 0) == self.metric.higher_better


@dataclass
class Setting:
    what: str
    a: str
    b: str
    differs: bool
    note: str = ""  # how the values were found, when not recorded as such


@dataclass
class ScoreRow:
    key: str
    what: str
    a: Optional[float]
    b: Optional[float]
    a_reason: Optional[str] = None  # "nan" / "inf" / "-inf"
    b_reason: Optional[str] = None

    @property
    def delta(self) -> Optional[float]:
        if self.a is None or self.b is None:
            return None
        d = self.b - self.a
        return d if math.isfinite(d) else None


@dataclass
class Comparison:
    """Two runs read back and lined up. ``a`` is the baseline, ``b`` the run under study: every change is B - A."""

    a: Results
    b: Results
    frameworks: Tuple[str, str]
    inferred: Tuple[bool, bool]
    onnx_side: Optional[str]  # "a"/"b": that run's names were translated by the ONNX rule
    matched: List[Match]
    only_a: List[Match]
    only_b: List[Match]
    settings: List[Setting] = field(default_factory=list)
    scores: List[ScoreRow] = field(default_factory=list)

    def changes(self, metric: Metric) -> List[Change]:
        """Every matched layer whose measure changed or can be compared, largest change first
        (a value that is a number in one run and NaN in the other first of all)."""
        out = []
        for m in self.matched:
            a, b = metric.value(m.a), metric.value(m.b)
            ra, rb = metric.reason(m.a), metric.reason(m.b)
            if rb and ra is None and a is not None:  # a number in A, NaN in B: the largest change there is
                out.append(Change(m, metric, a, b, None, f"{_WORD.get(rb, 'NaN')} in B"))
                continue
            if ra and rb is None and b is not None:
                out.append(Change(m, metric, a, b, None, f"{_WORD.get(ra, 'NaN')} in A"))
                continue
            d = metric.delta(a, b)
            if d is not None:
                out.append(Change(m, metric, a, b, d))
        out.sort(key=lambda c: (-c.size, c.match.index))
        return out

    def top(self, metric: Metric, n: int) -> List[Change]:
        """The ``n`` largest changes (nonzero only)."""
        return [c for c in self.changes(metric) if c.flag or c.delta][:n]

    def has(self, metric: Metric) -> bool:
        return any(metric.value(m.a) is not None or metric.value(m.b) is not None or metric.reason(m.a)
                   or metric.reason(m.b) for m in self.matched)

    @property
    def by_name(self) -> int:
        return sum(1 for m in self.matched if m.how == "name")

    @property
    def by_rule(self) -> int:
        return sum(1 for m in self.matched if m.how == "rule")


def _text(value: Any) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    else:
        text = str(value)
    return text if len(text) <= 200 else text[:199] + "\u2026"


def _quantizer_facts(r: Results) -> Dict[str, str]:
    """What the config made of the quantizers, from the encodings: counts, per channel, symmetric, bitwidths."""
    facts: Dict[str, str] = {}
    for is_param, what in ((True, "weight"), (False, "activation")):
        qs = [q for q in r.quantizers.values() if q.is_param == is_param]
        if not qs:
            facts[f"{what} quantizers"] = "none"
            continue
        per_channel = sum(1 for q in qs if q.per_channel)
        symmetric = 0
        for q in qs:
            enc = q.encoding[0] if isinstance(q.encoding, list) and q.encoding else q.encoding
            if isinstance(enc, dict) and str(enc.get("is_symmetric", "")).lower() == "true":
                symmetric += 1
        text = f"{len(qs)}"
        if is_param:
            text += f", {per_channel} per channel"
        text += f", {symmetric} symmetric"
        facts[f"{what} quantizers"] = text
        bws = sorted({q.bitwidth for q in qs if q.bitwidth is not None})
        facts[f"{what} bitwidths in use"] = ", ".join(map(str, bws)) if bws else "not recorded"
    return facts


def _settings(a: Results, b: Results, frameworks: Tuple[str, str], inferred: Tuple[bool, bool]) -> List[Setting]:
    rows: List[Setting] = []

    def add(what: str, x: Any, y: Any, note: str = "") -> None:
        rows.append(Setting(what, _text(x), _text(y), x != y, note))

    guessed = " and ".join(run for run, guess in zip("AB", inferred) if guess)
    add("framework", frameworks[0], frameworks[1],
        f"inferred from the layer names and types for {guessed} (summary.json does not record it)" if guessed else "")
    for key, what in (("qa_version", "qa version"), ("quant_scheme", "quantization scheme"),
                      ("default_param_bw", "default weight bitwidth"),
                      ("default_output_bw", "default activation bitwidth")):
        add(what, a.summary.get(key), b.summary.get(key))
    for key, what in (("config", "config"), ("config_file", "config file"), ("rounding", "rounding"),
                      ("percentile", "percentile"), ("sentinels", "attention-mask sentinels")):
        if key in a.summary or key in b.summary:  # newer or other writers record these
            add(what, a.summary.get(key), b.summary.get(key))
    fa, fb = _quantizer_facts(a), _quantizer_facts(b)
    for key in dict.fromkeys([*fa, *fb]):
        add(key, fa.get(key), fb.get(key))
    add("active quantizers", a.active_quantizers, b.active_quantizers)
    add("layers", len(a.layers), len(b.layers))
    add("layers in the per-layer sweeps", len(a.enabled), len(b.enabled))
    for key, what in (("folded_batch_norms", "folded batch norms"), ("unquantized_ops", "ops left in float"),
                      ("sentinel_quantizers", "quantizers kept in float (mask values)")):
        x, y = a.summary.get(key), b.summary.get(key)
        nx = len(x) if isinstance(x, (list, dict)) else 0
        ny = len(y) if isinstance(y, (list, dict)) else 0
        if nx or ny:
            add(what, nx, ny)
    add("status", a.summary.get("status"), b.summary.get("status"))
    return rows


def compare(run_a: Union[str, os.PathLike], run_b: Union[str, os.PathLike]) -> Comparison:
    """Read two results folders and line them up (nothing is written).

    Args:
        run_a: the baseline results folder (only read).
        run_b: the results folder under study; every change is B - A.

    Raises:
        QAError: in one line, naming RUN_A or RUN_B: a missing folder, a file, a folder without qa
            results, a damaged result file (the file and field), the same folder twice.

    Example:
        >>> import tempfile
        >>> compare(tempfile.mkdtemp(), tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        qa.errors.QAError: RUN_A: no qa results in ...
    """
    root_a, root_b = _resolve(run_a, "RUN_A"), _resolve(run_b, "RUN_B")
    for root, label in ((root_a, "RUN_A"), (root_b, "RUN_B")):
        if not root.is_dir():
            raise QAError(f"{label}: no qa results in {root}: there is no such folder")
    if root_a == root_b or os.path.samefile(root_a, root_b):
        raise QAError(f"RUN_A and RUN_B are the same folder ({root_b}): compare two different runs")
    a, b = _open(root_a, "RUN_A"), _open(root_b, "RUN_B")
    (fw_a, guess_a), (fw_b, guess_b) = framework_of(a), framework_of(b)
    onnx_side = None
    if (fw_a == "onnx") != (fw_b == "onnx"):
        onnx_side = "a" if fw_a == "onnx" else "b"
    matched, only_a, only_b = match_layers(a.layers, b.layers, onnx_side)
    result = Comparison(a, b, (fw_a, fw_b), (guess_a, guess_b), onnx_side, matched, only_a, only_b)
    result.settings = _settings(a, b, result.frameworks, result.inferred)
    for key, what in SCORES:
        result.scores.append(ScoreRow(key, what, a.scores.get(key), b.scores.get(key), a.nonfinite.get(key),
                                      b.nonfinite.get(key)))
    log.info("compared %s (A) with %s (B): %d layers matched (%d by name, %d by the ONNX name rule), %d only in A, "
             "%d only in B", root_a, root_b, len(matched), result.by_name, result.by_rule, len(only_a), len(only_b))
    return result


# ---- the terminal ---------------------------------------------------------------------------------

def _printable(text: str) -> str:
    """A name for a terminal: control characters (escape sequences, newlines, bidi overrides) escaped."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))


def _cells(text: str) -> int:
    """Terminal columns a text takes: wide (CJK) characters two, combining marks none."""
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(width - _cells(text), 0)


def _fmt(v: Optional[float], reason: Optional[str] = None) -> str:
    from ._advice import fmt
    return _WORD.get(reason or "", "") or fmt(v)


def _signed(v: Optional[float]) -> str:
    """B - A in ASCII for any terminal: +1.5, -0.25, 0."""
    from ._advice import signed
    return signed(v).replace("\u2212", "-").replace("\u00b1", "")


def text_table(c: Comparison, top: int = DEFAULT_TOP) -> str:
    """The short terminal summary: the four scores A, B, B - A; the settings that differ; the layers;
    the ``top`` largest changes in each per-layer sweep."""
    lines = [f"qa compare: A = {_printable(str(c.a.root))}", f"            B = {_printable(str(c.b.root))}"]
    differ = [s for s in c.settings if s.differs]
    if differ:
        lines.append("settings that differ: " + "; ".join(
            f"{_printable(s.what)} {_printable(s.a)} vs {_printable(s.b)}" + (" (inferred)" if s.note else "")
            for s in differ))
    else:
        lines.append("settings: the same")
    lines.append(f"  {'':<28}{'A':>12}{'B':>12}{'B - A':>12}")
    for row in c.scores:
        lines.append(f"  {row.what:<28}{_fmt(row.a, row.a_reason):>12}{_fmt(row.b, row.b_reason):>12}"
                     f"{_signed(row.delta):>12}")
    how = f"{c.by_name} by name"
    if c.onnx_side:
        how += f", {c.by_rule} by the ONNX name rule"
    quiet_a = sum(1 for m in c.only_a if not _has_data(m.a))  # type: ignore[arg-type]
    quiet_b = sum(1 for m in c.only_b if not _has_data(m.b))  # type: ignore[arg-type]
    lines.append(f"layers: {len(c.matched)} in both ({how}); only in A: {len(c.only_a)}"
                 + (f" ({quiet_a} without quantizers)" if quiet_a else "") + f"; only in B: {len(c.only_b)}"
                 + (f" ({quiet_b} without quantizers)" if quiet_b else ""))
    for metric in SWEEPS:
        changes = c.top(metric, top)
        if not c.has(metric):
            continue
        what = "only" if metric.key == "enabled" else "all but"
        lines.append(f"largest changes, score with {what} this layer quantized (top {top}; A, B, B - A):"
                     if changes else f"no change in the score with {what} this layer quantized")
        names = [_printable(ch.match.name) for ch in changes]
        width = min(max([_cells(n) for n in names] + [5]), 40)
        for ch, name in zip(changes, names):
            extra = f"  (A: {_printable(ch.match.a.name)})" if ch.match.how == "rule" and ch.match.a else ""
            delta = ch.flag if ch.flag else _signed(ch.delta)
            lines.append(f"  {_pad(name, width)} {_fmt(ch.a, metric.reason(ch.match.a)):>11} "
                         f"{_fmt(ch.b, metric.reason(ch.match.b)):>11} {delta:>11}{extra}")
    return "\n".join(lines)


# ---- the page -------------------------------------------------------------------------------------

def _delta_chart(rows: List[Dict[str, Any]], metric: Metric, title: str, subtitle: str, shown: bool) -> Dict[str, Any]:
    """Bars of B - A per layer: sorted by the size of the change (``shown``: the rows flagged top), or
    every layer in execution order."""
    import altair as alt

    from ._charts import COST, GAIN, MUTED, NUM, WIDTH, _data, _tip, _x_axis, spec

    effects = ["better in B", "worse in B", "unchanged"]
    unit = "dB, 10 log10(B/A)" if metric.log else metric.unit
    base = alt.Chart(_data("changes"))
    if shown:
        base = base.transform_filter("datum.top")
    count = sum(1 for r in rows if r.get("top")) if shown else len(rows)
    y = alt.Y("label:N", sort=alt.EncodingSortField(field="rank" if shown else "i", op="min", order="ascending"),
              title=None, axis=alt.Axis(labelLimit=320, labelFontSize=11))
    tooltip = [_tip("layer", "layer in B"), _tip("a_layer", "layer in A"), _tip("type", "type"),
               _tip("a", "A", "Q", ".4~e" if metric.log else NUM), _tip("b", "B", "Q", ".4~e" if metric.log else NUM),
               _tip("delta", f"change ({unit})", "Q", "+.4~g"), _tip("effect", "effect")]
    bars = base.mark_bar(height={"band": 0.7}).encode(
        y=y, x=alt.X("delta:Q", axis=_x_axis(f"B \u2212 A ({unit})", count, format=".3~g")),
        color=alt.Color("effect:N", title=None, scale=alt.Scale(domain=effects, range=[GAIN, COST, MUTED])),
        tooltip=tooltip)
    zero = alt.Chart(_data("zero")).mark_rule(color="#999").encode(x="x:Q")
    chart = alt.layer(bars, zero).properties(width=WIDTH, height=alt.Step(17),
                                            title=alt.Title(title, subtitle=subtitle))
    return spec(chart, changes=rows, zero=[{"x": 0}])


def _scores_chart(rows: List[ScoreRow]) -> Dict[str, Any]:
    """Per configuration: A's and B's score as dots, joined by a line."""
    import altair as alt

    from ._charts import MUTED, NEUTRAL, NUM, WIDTH, _data, _tip, spec

    order = [r.what for r in rows]
    dots = [{"what": r.what, "run": run, "score": v, "delta": r.delta}
            for r in rows for run, v in (("A", r.a), ("B", r.b)) if v is not None]
    links = [{"what": r.what, "a": r.a, "b": r.b} for r in rows if r.a is not None and r.b is not None]
    y = alt.Y("what:N", sort=order, title=None, axis=alt.Axis(labelFontSize=12, labelLimit=220))
    tooltip = [_tip("what", "model"), _tip("run", "run"), _tip("score", "score", "Q", NUM),
               _tip("delta", "B \u2212 A", "Q", "+.4~g")]
    x = alt.X("score:Q", title="score (eval_callback)", scale=alt.Scale(zero=False, nice=True, padding=40),
              axis=alt.Axis(format=".4~g"))
    line = alt.Chart(_data("links")).mark_rule(strokeWidth=3, color=MUTED, opacity=0.7).encode(y=y, x="a:Q", x2="b:Q")
    ring = alt.Chart(_data("dots")).transform_filter("datum.run == 'A'").mark_point(
        size=260, filled=False, strokeWidth=3, opacity=1).encode(
        y=y, x=x, color=alt.Color("run:N", title=None, scale=alt.Scale(domain=["A", "B"], range=[MUTED, NEUTRAL])),
        tooltip=tooltip)
    dot = alt.Chart(_data("dots")).transform_filter("datum.run == 'B'").mark_circle(size=110, opacity=1).encode(
        y=y, x=x, color=alt.Color("run:N", title=None, scale=alt.Scale(domain=["A", "B"], range=[MUTED, NEUTRAL])),
        tooltip=tooltip)
    chart = alt.layer(line, ring, dot).properties(width=WIDTH, height=alt.Step(44), title=alt.Title(
        "Scores, A and B", subtitle="grey ring: A (the baseline), blue dot: B; higher is better"))
    return spec(chart, dots=dots, links=links)


def _run_meta(r: Results, framework: str, inferred: bool) -> str:
    from ._load import MAX_BITWIDTH, num

    parts = [framework + ("?" if inferred and framework != "unknown" else "")]
    parts.append(r.text("quant_scheme", "scheme unknown"))
    for key, what in (("default_param_bw", "weights"), ("default_output_bw", "activations")):
        bw = num(r.summary.get(key))
        if bw is not None and 1 <= bw <= MAX_BITWIDTH:
            parts.append(f"{what} {int(bw)}-bit")
    parts.append(f"{len(r.layers)} layers")
    status = r.text("status", "")
    if status:
        parts.append(status)
    return " \u00b7 ".join(parts)


def write_page(c: Comparison, out: Optional[Union[str, os.PathLike]] = None, *, top: int = DEFAULT_TOP) -> Path:
    """Write the comparison page: ``RUN_B/compare.html``, or ``out/compare.html`` (``out`` is created
    when missing). Beside it, ``_static/`` gets the report's Vega bundle, stylesheet and script where
    they are missing or differ. Returns the page's path.

    Raises:
        QAError: the folder cannot be written (or is a file), or altair / vl-convert / Jinja2 are
            missing (``pip install 'qa-quant[report]'``).
    """
    try:
        from . import _html
        from ._assets import CSS, JS
        from ._charts import vegalite_version
    except ImportError as e:
        raise QAError(f"the comparison page needs altair, vl-convert-python and Jinja2 ({e}): "
                      "pip install 'qa-quant[report]'") from e
    if out is None:
        try:
            folder = ResultsDir(c.b.root, create=False)
        except QAError as e:
            raise QAError(f"cannot write {PAGE} into RUN_B: {e}; name another folder with --out") from None
    else:
        root = _resolve(out, "--out")
        try:
            folder = ResultsDir(root)
        except QAError as e:  # a parent that is a file, no permission
            raise QAError(str(e).replace("results_dir", "--out", 1)) from None
    page = _Page(folder.root, top)
    text = _Render(c, page, top, _html).render()
    for rel, content in ((_html.BUNDLE, _html.vega_bundle(vegalite_version())), (_html.STYLESHEET, CSS),
                         (_html.SCRIPT, JS)):
        data = content.encode("utf-8")
        try:
            same = folder.read_bytes(rel) == data
        except QAError:  # a link or something else planted there: replaced, never followed
            same = False
        if not same:
            folder.write_bytes(data, rel)
    target = folder.root / PAGE
    folder.write_text(text, target)
    log.info("comparison page: %s", target)
    return target


class _Page:
    """The comparison page for the report's templates: links relative to its folder, also to the
    dashboards of the two runs (absolute paths, made relative here)."""

    def __init__(self, root: Path, top: int) -> None:
        from . import _html

        self.root = root
        self.rel = PurePosixPath(PAGE)
        self.title = "Comparison"
        self.charts: List[Any] = []
        self._inner = _html.Page(self.rel, self.title)
        self.top = top

    def url(self, target: Any, anchor: str = "") -> str:
        from urllib.parse import quote

        from . import _html

        if isinstance(target, Path):  # a file of one of the runs
            rel = Path(os.path.relpath(target, self.root)).as_posix()
            return quote(rel) + (f"#{quote(anchor)}" if anchor else "")
        if target == _html.INDEX and not (self.root / "index.html").is_file():
            target = self.rel  # no dashboard beside the page (--out): the home link is the page itself
        return self._inner.url(target, anchor)

    def chart(self, key: str, spec: Dict[str, Any], caption: str = "", more: str = "") -> Any:
        chart = self._inner.chart(key, spec, caption, more)
        self.charts.append(chart)
        return chart


def _dashboard(r: Results, page_root: Path) -> Optional[Path]:
    """The run's index.html when it is a regular file there and a link to it can be relative."""
    path = r.root / "index.html"
    try:
        if not path.is_file() or path.is_symlink():
            return None
        os.path.relpath(path, page_root)  # other drive (Windows): no relative link
    except (OSError, ValueError):
        return None
    return path


class _Render:
    def __init__(self, c: Comparison, page: _Page, top: int, html: Any) -> None:
        self.c, self.page, self.top, self.html = c, page, top, html

    def run(self, r: Results, label: str, framework: str, inferred: bool) -> Dict[str, Any]:
        return {"label": label, "path": str(r.root), "meta": _run_meta(r, framework, inferred),
                "dashboard": _dashboard(r, self.page.root), "problems": r.problems[:5],
                "status": r.text("status", ""), "error": r.text("error", ""), "culprits": []}

    def culprits(self, mine: Results, theirs: Results, side: str) -> List[Dict[str, Any]]:
        """A run's culprits, each with its counterpart's rank and numbers in the other run."""
        other_rank = {layer.name: k for k, layer in enumerate(theirs.culprits(self.top), 1)}
        pair: Dict[str, Optional[LayerView]] = {}
        for m in self.c.matched:
            x, y = (m.a, m.b) if side == "a" else (m.b, m.a)
            if x is not None:
                pair[x.name] = y
        rows = []
        for k, layer in enumerate(mine.culprits(self.top), 1):
            other = pair.get(layer.name)
            if other is None:
                there = "not in the other run"
            elif other.name in other_rank:
                there = f"#{other_rank[other.name]} there"
            else:
                there = "not a culprit there"
            rows.append({"rank": k, "layer": layer, "other": other, "there": there,
                         "moved": other is None or other_rank.get(other.name) != k})
        return rows

    def metric_rows(self, metric: Metric) -> Tuple[List[Dict[str, Any]], List[Change], List[Change]]:
        changes = self.c.changes(metric)
        top = [ch for ch in changes if ch.flag or ch.delta][:self.top]
        ranks = {id(ch): k for k, ch in enumerate(top, 1)}
        rows = []
        for ch in changes:
            if ch.flag:
                continue
            m = ch.match
            assert m.b is not None and m.a is not None
            better = ch.better
            rows.append({"i": m.index, "label": m.name, "layer": m.b.name, "a_layer": m.a.name,
                         "type": m.b.type or m.b.op_type, "a": ch.a, "b": ch.b, "delta": ch.delta,
                         "effect": "unchanged" if better is None else ("better in B" if better else "worse in B"),
                         "top": id(ch) in ranks, "rank": ranks.get(id(ch))})
        return rows, top, [ch for ch in changes if ch.flag]

    def section(self, metric: Metric) -> Optional[Dict[str, Any]]:
        if not self.c.has(metric):
            return None
        rows, top, flagged = self.metric_rows(metric)
        caption = ""
        if flagged:
            shown = ", ".join(f"{ch.match.name} ({ch.flag})" for ch in flagged[:10])
            caption = f"Not drawn: {shown}{' and more' if len(flagged) > 10 else ''}: a score that is a number in " \
                      f"one run only, the largest change there is."
        what = "B \u2212 A" if not metric.log else "10 log10(B/A): + is more error in B"
        section: Dict[str, Any] = {"metric": metric, "top": top, "flagged": flagged, "count": len(rows),
                                   "chart": None, "all": None, "unchanged": not top}
        drawn = sum(1 for r in rows if r["top"])
        if drawn:
            title = f"{metric.title}: the {drawn} largest change{'s' if drawn > 1 else ''} of {len(rows)}"
            section["chart"] = self.page.chart(f"{metric.key}_top", _delta_chart(
                rows, metric, title, f"{what}; blue: better in B, red: worse; largest first", shown=True), caption)
        if rows and len(rows) > drawn:
            section["all"] = self.page.chart(f"{metric.key}_all", _delta_chart(
                rows, metric, f"{metric.title}: every layer in both runs ({len(rows)})",
                f"{what}, in execution order (B)", shown=False),
                more=f"Show all {len(rows)} layers in execution order")
        return section

    def table(self) -> List[Dict[str, Any]]:
        rows = []
        metrics = [m for m in METRICS if self.c.has(m)]
        for m in self.c.matched:
            cells = []
            for metric in metrics:
                a, b = metric.value(m.a), metric.value(m.b)
                ra, rb = metric.reason(m.a), metric.reason(m.b)
                d = metric.delta(a, b)
                cells.append({"a": _fmt(a, ra) if (a is not None or ra) else "", "b": _fmt(b, rb)
                              if (b is not None or rb) else "", "delta": d, "better": None if not d else
                              (d > 0) == metric.higher_better, "log": metric.log})
            rows.append({"m": m, "cells": cells})
        return rows

    def render(self) -> str:
        c, page, html = self.c, self.page, self.html
        a = self.run(c.a, "A", c.frameworks[0], c.inferred[0])
        b = self.run(c.b, "B", c.frameworks[1], c.inferred[1])
        a["culprits"], b["culprits"] = self.culprits(c.a, c.b, "a"), self.culprits(c.b, c.a, "b")
        nav: List[Tuple[Any, str]] = [(page.rel, "Comparison")]
        for run in (a, b):
            if run["dashboard"] is not None:
                nav.append((run["dashboard"], f"{run['label']}: dashboard"))
        scores_chart = page.chart("scores", _scores_chart(c.scores)) if any(
            r.a is not None or r.b is not None for r in c.scores) else None
        sections = [s for s in (self.section(m) for m in METRICS) if s is not None]
        metrics = [m for m in METRICS if c.has(m)]
        return html.templates().get_template("compare.html.j2").render(
            page=page, nav=nav, c=c, a=a, b=b, top=self.top, scores_chart=scores_chart, sections=sections,
            metrics=metrics, table=self.table(), differ=[s for s in c.settings if s.differs],
            quiet_a=[m for m in c.only_a if not _has_data(m.a)], quiet_b=[m for m in c.only_b if not _has_data(m.b)],
            loud_a=[m for m in c.only_a if _has_data(m.a)], loud_b=[m for m in c.only_b if _has_data(m.b)],
            matching=MATCHING, small=len(c.matched) <= html.SMALL * 2)
