"""QuantAnalyzer: AIMET's analyses for any supported framework, on one engine, written to results_dir."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import numbers
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple, Union

from ._progress import Progress
from .errors import QACallbackError, QAError, QAValueError
from .executors import Executor, evaluate_layer, resolve_executor
from .graph import PARAM
from .observers import ErrorStats, Histogram
from .adapters import adapter_class
from .adapters._base import FLOAT
from ._runs import SCORE_KEYS, PreviousRun, fingerprint, nonfinite_scores
from .ranking import Impact, culprits, impacts
from .report import SUMMARY_SCHEMA_VERSION, ResultsDir, histogram_record
from .sim import CallbackFunc, QuantScheme, QuantSim, as_callback, call_user

__all__ = ["QuantAnalyzer", "AnalysisResult"]

log = logging.getLogger("qa")

#: The default of ``enable_per_layer_mse_loss(mse_memory_budget=...)``: at most this many bytes
#: of FP32 layer outputs are held at once while the per-layer MSE is computed.
MSE_MEMORY_BUDGET = 256 << 20


def _make_adapter(model: Any, dummy_input: Any, modules_to_ignore: Any) -> Any:
    """The registered adapter that takes this model, wrapped around a private copy of it."""
    return adapter_class(model)(model, dummy_input, modules_to_ignore=modules_to_ignore)


DEFAULT_MEMO_BUDGET = 1 << 30  # bytes of remembered tensors in memoized sweeps


@dataclass
class AnalysisResult:
    """Everything one ``analyze`` run found, as written to ``results_dir``.

    Scores are what ``eval_callback`` returned. Per-layer dictionaries are keyed by layer name
    in execution order; ``per_layer_mse`` and ``per_layer_sqnr_db`` (the cumulative error: FP32
    model against the fully quantized one) and ``per_layer_local_mse`` and
    ``per_layer_local_sqnr_db`` (the local error: only the layer's own quantizers on, everything
    upstream in FP32; same keys and order) are empty unless ``enable_per_layer_mse_loss`` was
    called (the local ones also when it was called with ``local_mse=False``).
    """

    results_dir: Path
    quant_scheme: str
    default_param_bw: int
    default_output_bw: int
    fp32_score: Optional[float] = None
    weight_quantized_score: Optional[float] = None
    activation_quantized_score: Optional[float] = None
    quantized_score: Optional[float] = None
    per_layer_quant_enabled: Dict[str, float] = field(default_factory=dict)
    per_layer_quant_disabled: Dict[str, float] = field(default_factory=dict)
    weight_ranges: Dict[str, Any] = field(default_factory=dict)
    activation_ranges: Dict[str, Any] = field(default_factory=dict)
    per_layer_mse: Dict[str, float] = field(default_factory=dict)
    per_layer_sqnr_db: Dict[str, float] = field(default_factory=dict)
    per_layer_local_mse: Dict[str, float] = field(default_factory=dict)
    per_layer_local_sqnr_db: Dict[str, float] = field(default_factory=dict)
    layers: List[Dict[str, Any]] = field(default_factory=list)
    unquantized_ops: List[str] = field(default_factory=list)
    folded_batch_norms: List[Tuple[str, str]] = field(default_factory=list)
    unfolded_batch_norms: List[Tuple[str, str, str]] = field(default_factory=list)  # (bn, layer, why not)
    unused_quantizers: List[str] = field(default_factory=list)
    nonfinite_quantizers: List[str] = field(default_factory=list)
    sentinel_quantizers: Dict[str, str] = field(default_factory=dict)  # quantizer -> sentinel values, what was done
    active_quantizers: int = 0
    problems: List[str] = field(default_factory=list)
    encodings: Dict[str, Any] = field(default_factory=dict)
    files: List[Path] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    status: str = "running"
    error: Optional[str] = None
    fingerprint: Optional[str] = None
    reused_evaluations: int = 0
    aimet_compat: bool = False  # AIMET 2.x's numbers (analyze(aimet_compat=True))
    recommendation: Optional[Any] = field(default=None, repr=False)  # a qa.recommend.Recommendation

    def most_sensitive_layers(self, k: int = 3) -> List[str]:
        """Layers whose quantization costs the most: the larger of the loss when only the layer is
        quantized and the recovery when only it stays in float (:mod:`qa.ranking`, the ranking
        the dashboard and the CLI use, with the same filters)."""
        return [i.name for i in culprits(self.layer_impacts(), k)]

    def layer_impacts(self) -> List[Impact]:
        """Every swept layer's cost and gain, in execution order."""
        return impacts(list(self.per_layer_quant_enabled), self.fp32_score, self.quantized_score,
                       self.per_layer_quant_enabled, self.per_layer_quant_disabled)

    def summary(self) -> Dict[str, Any]:
        """Everything, as ``summary.json`` stores it (NaN/inf scores: null, with the reason in
        ``nonfinite_scores``; ``files``: exactly this run's files, relative to the folder)."""
        data = asdict(self)
        data["schema_version"] = SUMMARY_SCHEMA_VERSION
        data["recommendation"] = self.recommendation.brief() if self.recommendation is not None else None
        data["most_sensitive_layers"] = self.most_sensitive_layers(5)
        data["nonfinite_scores"] = nonfinite_scores(self)
        data["files"] = sorted({p.relative_to(self.results_dir).as_posix() for p in self.files} | {"summary.json"})
        return data


def _samples(batch: Any) -> int:
    """How many samples a per-layer MSE batch holds: the leading size of its first array."""
    while isinstance(batch, (list, tuple, dict)) and batch:
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    shape = getattr(batch, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) else 1


def _with_batch_norms(mse: Dict[str, float], folded: Iterable[Tuple[str, str]]) -> Dict[str, float]:
    """AIMET keeps a folded batch norm as an identity module, listed after the layer it was folded
    into with that layer's value."""
    after: Dict[str, List[str]] = {}
    for bn, into in folded:
        after.setdefault(into, []).append(bn)
    out: Dict[str, float] = {}
    for name, value in mse.items():
        out[name] = value
        for bn in after.get(name, ()):
            out[bn] = value
    return out


def _results_dir(path: Any) -> ResultsDir:
    """The public methods take a folder path (as AIMET's) or the ResultsDir analyze already made."""
    return path if isinstance(path, ResultsDir) else ResultsDir(path)


def _model_inputs(batch: Any) -> Any:
    """AIMET's data convention: a batch is the inputs, or (inputs, label) when a tuple/list."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise QAValueError("an empty tuple/list batch has no inputs")
        return batch[0]
    return batch


def _score_problems(result: AnalysisResult) -> List[str]:
    """Scores that are NaN or infinite, in plain words (they rank first among the culprits)."""
    bad = nonfinite_scores(result)
    out = []
    scores = bad.get("scores", {})
    if len(scores) == len(SCORE_KEYS):
        out.append("every score is NaN or infinite: the model or eval_callback fails even in FP32")
    elif "fp32_score" in scores:
        out.append(f"the FP32 score is {scores['fp32_score']}: check the model and eval_callback")
    elif scores:
        out.append(", ".join(f"the {k.replace('_', ' ')} is {v}" for k, v in scores.items()))
    for key, text in (("per_layer_quant_enabled", "quantizing only {} makes the score {}"),
                      ("per_layer_quant_disabled", "with every layer but {} quantized, the score is {}")):
        layers = bad.get(key, {})
        named = [text.format(name, value) for name, value in list(layers.items())[:10]]
        if len(layers) > 10:
            named.append(f"and {len(layers) - 10} more layer(s)")
        out += named
    return out


def _bytes(n: float) -> str:
    """A byte count for people: 512 B, 34.0 KiB, 256.0 MiB."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class _References:
    """One batch's FP32 layer outputs, held for comparison, at most ``budget`` bytes of them.

    ``store`` is the capture sink of an FP32 pass. It holds the outputs of the layers in
    ``layers`` not yet compared in this batch while they fit; the first layer a pass holds is kept
    even when it alone exceeds the budget (it is named in ``oversized``), and a layer whose outputs
    stop fitting midway is dropped whole. The layers it could not hold are in ``left`` for a later
    pass. ``held`` (layer -> bytes, in the order met) is the group the passes that follow compare.
    """

    def __init__(self, layers: Set[str], budget: int) -> None:
        self.layers = layers
        self.budget = budget
        self.arrays: Dict[Tuple[str, int, int], Any] = {}  # (layer, output, call) -> FP32 output
        self.held: Dict[str, int] = {}
        self.left: Set[str] = set()
        self.done: Set[str] = set()  # layers compared in this batch already
        self.oversized: Dict[str, None] = {}  # layers held alone over the budget, in the order met
        self.bytes = 0
        self.peak = 0  # the most bytes held at once, over every batch
        self._calls: Dict[Tuple[str, int], int] = {}

    def new_batch(self) -> None:
        self.next_group()
        self.done.clear()

    def next_group(self) -> None:
        """Forget the group compared (done for this batch) and get ready for the next FP32 pass."""
        self.done.update(self.held)
        self.arrays.clear()
        self.held.clear()
        self.left.clear()
        self._calls.clear()
        self.bytes = 0

    def store(self, layer: str, i: int, array: Any) -> None:
        """The sink of an FP32 pass: hold ``array`` (output ``i`` of ``layer``) when it fits."""
        if layer not in self.layers or layer in self.done:
            return
        k = self._calls[(layer, i)] = self._calls.get((layer, i), -1) + 1
        if layer in self.left:
            return
        size = int(array.nbytes)
        if self.bytes + size > self.budget and self.held.keys() - {layer}:
            self._drop(layer)
            return
        # a copy: the model may reuse the memory (a CUDA tensor is cloned on its device)
        self.arrays[(layer, i, k)] = array.clone() if hasattr(array, "clone") else array.copy()
        self.held[layer] = self.held.get(layer, 0) + size
        self.bytes += size
        self.peak = max(self.peak, self.bytes)
        if self.held[layer] > self.budget:
            self.oversized[layer] = None

    def _drop(self, layer: str) -> None:
        """Leave ``layer`` for a later pass, letting go of what is held of it."""
        self.left.add(layer)
        self.bytes -= self.held.pop(layer, 0)
        for key in [key for key in self.arrays if key[0] == layer]:
            del self.arrays[key]

    def comparer(self, stats: Dict[str, ErrorStats], only: Optional[str] = None) -> Callable[[str, int, Any], None]:
        """The sink of a pass that compares the held layers (or only ``only``) into ``stats``."""
        calls: Dict[Tuple[str, int], int] = {}

        def compare(layer: str, i: int, array: Any) -> None:
            if layer not in self.held or (only is not None and layer != only):
                return
            k = calls[(layer, i)] = calls.get((layer, i), -1) + 1
            ref = self.arrays.get((layer, i, k))
            if ref is not None and ref.shape == array.shape:
                stats.setdefault(layer, ErrorStats(name=layer)).update(ref, array)
        return compare


class QuantAnalyzer:
    """Finds where a model loses accuracy when quantized (a drop-in for AIMET's QuantAnalyzer).

    Args:
        model: the FP32 model: a ``torch.nn.Module``, or an ``onnx.ModelProto`` / the path of a
            ``.onnx`` file. It is never modified: qa works on a copy.
        dummy_input: inputs the model accepts (torch: a tensor, a tuple of tensors, or a dict;
            ONNX: a dict of numpy arrays keyed by input name).
        forward_pass_callback: calibration, ``CallbackFunc(func, args)`` called as
            ``func(model, args)``, or a plain ``func(model)``. ``model`` is qa's quantization
            simulation: a torch module, or for ONNX a session with ``run(None, feeds)``.
        eval_callback: evaluation returning a score (higher is better), same calling convention.
        modules_to_ignore: modules (or their names) to leave unquantized.
        forward_fn: ``forward_fn(model, batch)`` runs one batch of the MSE data (models with
            several inputs); by default a batch is the inputs, or ``(inputs, label)``.
        progress: progress bars on stderr for long work: True, False, or None (default) for
            only when stderr is a terminal.

    Example:
        >>> import torch, qa
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
        >>> data = torch.randn(64, 4)
        >>> score = lambda m: -float((m(data) - net(data)).pow(2).mean().detach())  # closeness to FP32
        >>> analyzer = qa.QuantAnalyzer(net, data[:1], lambda m: m(data), score, progress=False)
        >>> import tempfile
        >>> result = analyzer.analyze(quant_scheme="tf", results_dir=tempfile.mkdtemp())
        >>> sorted(result.per_layer_quant_enabled)
        ['0', '1', '2']
    """

    def __init__(self, model: Any, dummy_input: Any = None, forward_pass_callback: Any = None,
                 eval_callback: Any = None, modules_to_ignore: Optional[Iterable[Any]] = None, *,
                 forward_fn: Optional[Callable[[Any, Any], Any]] = None, progress: Optional[bool] = None) -> None:
        if eval_callback is None and forward_pass_callback is not None and callable(dummy_input):
            # AIMET's Keras signature: QuantAnalyzer(model, forward_pass_callback, eval_callback)
            dummy_input, forward_pass_callback, eval_callback = None, dummy_input, forward_pass_callback
        if forward_pass_callback is None or eval_callback is None:
            raise QAValueError("QuantAnalyzer needs forward_pass_callback and eval_callback")
        self.forward_pass_callback = as_callback(forward_pass_callback, "forward_pass_callback")
        self.eval_callback = as_callback(eval_callback, "eval_callback")
        self.adapter = _make_adapter(model, dummy_input, modules_to_ignore)
        self._model_args = (model, dummy_input, modules_to_ignore)  # what analyze(executor="ray") ships to workers
        self.forward_fn = forward_fn
        self.progress = progress
        self.memoize = True  # per-layer sweeps replay what cannot have changed (analyze(memoize=...))
        self.memo_memory_budget = DEFAULT_MEMO_BUDGET
        self._mse_data: Optional[Iterable[Any]] = None
        self._mse_batches = 0
        self._mse_budget = MSE_MEMORY_BUDGET
        self._mse_local = True
        self._sqnr: Dict[str, float] = {}
        self._local_mse: Dict[str, float] = {}
        self._local_sqnr: Dict[str, float] = {}
        #: after export_per_layer_mse_loss: the most bytes of FP32 layer outputs held at once
        self.mse_peak_bytes = 0
        #: after export_per_layer_mse_loss: its forward passes, by kind (fp32, quantized, local)
        self.mse_passes: Dict[str, int] = {}
        if self.adapter.graph.unquantized_ops:
            warnings.warn(
                "these operations run outside quantizable layers and stay in float: "
                + ", ".join(self.adapter.graph.unquantized_ops)
                + f" ({self.adapter.unquantized_hint})", stacklevel=2)

    # -- setup --

    def enable_per_layer_mse_loss(self, unlabeled_dataset_iterable: Iterable[Any], num_batches: int, *,
                                  mse_memory_budget: int = MSE_MEMORY_BUDGET, local_mse: bool = True) -> None:
        """Also compute each layer's MSE/SQNR between FP32 and quantized outputs.

        Any iterable works (no ``len()`` needed); a batch is a tensor, ``(inputs, label)``, or a
        dict of keyword inputs; pass ``forward_fn(model, batch)`` to the constructor otherwise.

        Args:
            unlabeled_dataset_iterable: the batches.
            num_batches: how many batches to use.
            mse_memory_budget: at most this many bytes (default 256 MiB) of one batch's FP32
                layer outputs are held at once. When they all fit, a batch costs one FP32 and
                one quantized pass; otherwise the layers are taken in groups that fit, two passes
                per group (same results, bit for bit). A layer whose outputs alone exceed the
                budget is held alone (logged).
            local_mse: also compute each layer's local error (``per_layer_local_mse``): its
                output with only its own quantizers on, everything upstream in FP32, against
                FP32. It costs one more pass per layer per batch.
        """
        if num_batches is None or int(num_batches) < 1:
            raise QAValueError(f"num_batches must be a positive integer, got {num_batches!r}")
        if not hasattr(unlabeled_dataset_iterable, "__iter__"):
            raise QAValueError(f"unlabeled_dataset_iterable must be iterable, got {type(unlabeled_dataset_iterable).__name__}")
        if (isinstance(mse_memory_budget, bool) or not isinstance(mse_memory_budget, numbers.Real)
                or not 1 <= mse_memory_budget < math.inf):
            raise QAValueError(f"mse_memory_budget must be a positive number of bytes, got {mse_memory_budget!r:.80}")
        self._mse_data = unlabeled_dataset_iterable
        self._mse_batches = int(num_batches)
        self._mse_budget = int(mse_memory_budget)
        self._mse_local = bool(local_mse)

    def create_quantsim(self, quant_scheme: Union[QuantScheme, str] = QuantScheme.post_training_tf_enhanced,
                        default_param_bw: int = 8, default_output_bw: int = 8, config_file: Any = None,
                        *, percentile: Optional[float] = None, rounding: str = "half_even",
                        sentinels: str = "float", aimet_compat: bool = False) -> QuantSim:
        """Configure the quantizers and calibrate them once with forward_pass_callback
        (``aimet_compat``: as AIMET 2.x does, :mod:`qa.aimet_compat`)."""
        t = time.perf_counter()
        sim = QuantSim(self.adapter, quant_scheme=quant_scheme, default_param_bw=default_param_bw,
                       default_output_bw=default_output_bw, config_file=config_file, percentile=percentile,
                       rounding=rounding, sentinels=sentinels, aimet_compat=aimet_compat)
        sim.compute_encodings(self.forward_pass_callback)
        log.info("calibrated %d quantizers in %.2f s", len(sim.enabled), time.perf_counter() - t)
        return sim

    # -- the analyses (AIMET's public methods) --

    def check_model_sensitivity_to_quantization(self, sim: QuantSim) -> Tuple[float, float, float]:
        """(FP32, weight-quantized, activation-quantized) scores."""
        sim.set_active(())
        fp32 = sim.evaluate(self.eval_callback, "eval_callback (FP32 model)")
        sim.set_active(sim.param_quantizers())
        weights = sim.evaluate(self.eval_callback, "eval_callback (weight-quantized model)")
        sim.set_active(sim.activation_quantizers())
        acts = sim.evaluate(self.eval_callback, "eval_callback (activation-quantized model)")
        log.info("FP32 score %.4f, weight-quantized %.4f, activation-quantized %.4f", fp32, weights, acts)
        return fp32, weights, acts

    def _sweep(self, sim: QuantSim, results: Optional[ResultsDir], enable: bool,
               done: Optional[Dict[str, float]] = None, executor: Optional[Executor] = None) -> Dict[str, float]:
        """Score every layer with only its quantizers on (enable) or off; ``done`` holds scores a
        previous run of the same fingerprint finished. Each finished layer is written at once.
        ``executor`` evaluates the layers elsewhere (a Ray cluster): same scores, same files."""
        what = "enabling" if enable else "disabling"
        file = "per_layer_quant_enabled.json" if enable else "per_layer_quant_disabled.json"
        everything = sim.enabled
        layers = [layer.name for layer in sim.graph.layers if sim.layer_quantizers(layer.name)]
        done = done or {}
        scores: Dict[str, float] = {}
        if executor is not None:
            todo = [name for name in layers if name not in done]
            with Progress(len(layers), f"per-layer {what}", self.progress) as bar:
                bar.update(len(layers) - len(todo))

                def finished(name: str, score: float) -> None:  # in any order; written in layer order
                    scores[name] = score
                    if results is not None:
                        results.write_json({n: scores[n] if n in scores else done[n] for n in layers
                                            if n in scores or n in done}, file)
                    bar.update(note=name)
                executor.sweep(self, sim, todo, enable, finished)
            missing = [name for name in todo if name not in scores]
            if missing:
                raise QAError(f"the executor {executor!r} left {len(missing)} layer(s) unscored: {missing[:5]}")
            scores = {name: scores[name] if name in scores else done[name] for name in layers}
            if results is not None:
                results.write_json(scores, file)
            return scores
        memo = self.adapter.memoized(self.memo_memory_budget) if self.memoize else contextlib.nullcontext()
        with Progress(len(layers), f"per-layer {what}", self.progress) as bar, memo as focus:
            for name in layers:
                if name in done:
                    scores[name] = done[name]
                else:
                    scores[name] = evaluate_layer(sim, self.eval_callback, name, enable, focus, everything)
                    if results is not None:  # on disk as soon as it is known: a killed run keeps it
                        results.write_json(scores, file)
                bar.update(note=name)
        if results is not None:
            results.write_json(scores, file)
        return scores

    def perform_per_layer_analysis_by_enabling_quant_wrappers(self, sim: QuantSim, results_dir: Any) -> Dict[str, float]:
        """Score with only one layer's quantizers on, for every layer."""
        return self._sweep(sim, _results_dir(results_dir), True)

    def perform_per_layer_analysis_by_disabling_quant_wrappers(self, sim: QuantSim, results_dir: Any) -> Dict[str, float]:
        """Score with every quantizer on except one layer's, for every layer."""
        return self._sweep(sim, _results_dir(results_dir), False)

    def export_per_layer_encoding_min_max_range(self, sim: QuantSim, results_dir: Any) -> Tuple[Dict, Dict]:
        """Encoding min/max of every parameter and activation quantizer (per channel where on)."""
        results = _results_dir(results_dir)
        weights: Dict[str, Any] = {}
        activations: Dict[str, Any] = {}
        for name, q in sim.quantizers.items():
            enc = q.encoding
            if enc is None:
                continue
            if q.kind == PARAM:
                if enc.per_channel:
                    weights[name] = {f"{name}_{c}": [float(a), float(b)] for c, (a, b) in enumerate(zip(enc.min, enc.max))}
                else:
                    weights[name] = [enc.min, enc.max]
            else:
                activations[name] = [enc.min, enc.max]
        results.write_json(weights, "min_max_ranges", "weights.json")
        results.write_json(activations, "min_max_ranges", "activations.json")
        return weights, activations

    def export_per_layer_stats_histogram(self, sim: QuantSim, results_dir: Any) -> Dict[str, Any]:
        """The histogram each quantizer saw with its encoding (tf_enhanced/percentile only)."""
        results = _results_dir(results_dir)
        records: Dict[str, Any] = {}
        for name, q in sim.quantizers.items():
            stats = sim.stats.get(name)
            stats = getattr(stats, "inner", stats)  # aimet_compat: qa's own histogram beside AIMET's statistics
            if not isinstance(stats, Histogram) or q.encoding is None:
                continue
            record = histogram_record(stats, q.encoding)
            records[name] = record
            if q.kind == PARAM:
                # the file is named as the report finds it: the quantizer name after "<layer>_"
                results.write_json(record, "weights_pdf", q.layer, f"{q.name[len(q.layer) + 1:]}.json", compact=True)
            else:
                results.write_json(record, "activations_pdf", f"{name}.json", compact=True)
        return records

    def export_per_layer_mse_loss(self, sim: QuantSim, results_dir: Any) -> Dict[str, float]:
        """MSE between each layer's FP32 and quantized output (the error accumulated up to the
        layer), and unless ``local_mse=False`` its local error (only its own quantizers on), written
        to ``per_layer_mse_loss.json`` and ``per_layer_local_mse_loss.json``.

        Per batch, the FP32 outputs of as many layers as ``mse_memory_budget`` allows are held
        (all of them, usually): one FP32 pass holds them, one fully quantized pass compares them
        and, for the local error, one pass per layer with only that layer's quantizers on."""
        if self._mse_data is None:
            raise QAError("call enable_per_layer_mse_loss(data, num_batches) first")
        results = _results_dir(results_dir)
        # The layers the sweeps cover: those with a quantizer on (a layer that only moves values
        # would repeat its input's error); AIMET lists every layer.
        compat = sim.aimet_compat
        refs = _References({layer.name for layer in sim.graph.layers if compat or sim.layer_quantizers(layer.name)},
                           self._mse_budget)
        cumulative: Dict[str, ErrorStats] = {}
        local: Optional[Dict[str, ErrorStats]] = {} if self._mse_local else None
        passes = {"fp32": 0, "quantized": 0, "local": 0}
        batches = samples = 0
        batch_means: Dict[str, float] = {}  # aimet_compat: the sum over batches of each batch's MSE
        with Progress(self._mse_batches, "per-layer MSE", self.progress) as bar:
            for batch in itertools.islice(iter(self._mse_data), self._mse_batches):
                before = {n: e.totals() for n, e in cumulative.items()} if compat else {}
                self._mse_batch(sim, batch, refs, cumulative, local, passes)
                if compat:
                    for n, e in cumulative.items():
                        (sse0, n0), (sse, count) = before.get(n, (0.0, 0)), e.totals()
                        if count > n0:
                            batch_means[n] = batch_means.get(n, 0.0) + (sse - sse0) / (count - n0)
                    samples += _samples(batch)
                batches += 1
                bar.update()
        if batches == 0:
            raise QAValueError("the unlabeled dataset for per-layer MSE yielded no batches")
        sim.set_active(sim.enabled)
        self.mse_peak_bytes, self.mse_passes = refs.peak, passes
        self._log_mse_cost(refs, batches, passes)
        order = [layer.name for layer in sim.graph.layers if layer.name in cumulative]
        mse = {name: cumulative[name].mse for name in order}
        if compat:  # AIMET's convention (NOTES.md §10): scales with 1 / batch size
            mse = _with_batch_norms({name: batch_means[name] / max(samples, 1) for name in order},
                                    sim.graph.folded_batch_norms)
        self._sqnr = {name: cumulative[name].sqnr_db for name in order}
        results.write_json(mse, "per_layer_mse_loss.json")
        self._local_mse, self._local_sqnr = {}, {}
        if local is not None:
            self._local_mse = {name: local[name].mse if name in local else math.nan for name in order}
            self._local_sqnr = {name: local[name].sqnr_db if name in local else math.nan for name in order}
            results.write_json(self._local_mse, "per_layer_local_mse_loss.json")
        return mse

    def _mse_batch(self, sim: QuantSim, batch: Any, refs: _References, cumulative: Dict[str, ErrorStats],
                   local: Optional[Dict[str, ErrorStats]], passes: Dict[str, int]) -> None:
        """One batch of the MSE data, group by group of layers whose FP32 outputs fit ``refs``:
        an FP32 pass holding the group, a fully quantized pass comparing it into ``cumulative``,
        then (``local``) one pass per layer of the group with only that layer's quantizers on."""
        everything = sim.enabled
        refs.new_batch()
        while True:
            sim.set_active(())
            with sim.adapter.capturing(refs.store):
                self._mse_forward(sim, batch)
            passes["fp32"] += 1
            sim.set_active(everything)
            with sim.adapter.capturing(refs.comparer(cumulative)):
                self._mse_forward(sim, batch)
            passes["quantized"] += 1
            if local is not None:
                self._local_passes(sim, batch, list(refs.held), refs, local, passes)
            more = bool(refs.left)
            refs.next_group()
            if not more:
                return

    def _local_passes(self, sim: QuantSim, batch: Any, layers: List[str], refs: "_References",
                      local: Dict[str, ErrorStats], passes: Dict[str, int]) -> None:
        """One pass per layer with only its quantizers on, in execution order: like the enabling
        sweep, so memoized (everything before the layer's first call is FP32 and is replayed)."""
        memo = sim.adapter.memoized(self.memo_memory_budget) if self.memoize else contextlib.nullcontext()
        with memo as focus:
            for layer in layers:
                own = sim.layer_quantizers(layer)
                if focus is not None:
                    focus(own)
                sim.set_active(own)
                with sim.adapter.capturing(refs.comparer(local, only=layer)):
                    self._mse_forward(sim, batch)
                passes["local"] += 1

    def _log_mse_cost(self, refs: _References, batches: int, passes: Dict[str, int]) -> None:
        """What the per-layer MSE cost, in forward passes and held bytes."""
        log.info("per-layer MSE: %d batch(es), %d FP32 + %d quantized forward pass(es) for the cumulative error "
                 "(%d group(s) of layers per batch on average), %d pass(es) for the local error; FP32 outputs "
                 "held: at most %s (mse_memory_budget %s)", batches, passes["fp32"], passes["quantized"],
                 round(passes["fp32"] / batches), passes["local"], _bytes(refs.peak), _bytes(refs.budget))
        if refs.oversized:
            log.warning("per-layer MSE: the FP32 outputs of %d layer(s) exceed mse_memory_budget (%s) on their own "
                        "and were held alone: %s", len(refs.oversized), _bytes(refs.budget),
                        ", ".join(list(refs.oversized)[:10]))

    def _mse_forward(self, sim: QuantSim, batch: Any) -> None:
        """One batch of the MSE data through the simulation, as set."""
        if self.forward_fn is not None:
            call_user(CallbackFunc(self.forward_fn, batch), sim.model, "forward_fn")
            return
        try:
            sim.adapter.run(_model_inputs(batch))
        except QAError:
            raise
        except Exception as e:
            raise QACallbackError(
                f"per-layer MSE: the model failed on a batch of the unlabeled data ({type(e).__name__}: {e}); "
                f"a batch is the inputs or (inputs, label); pass forward_fn=fn(model, batch) for other "
                f"layouts") from e

    def _check_mse_data(self, sim: QuantSim) -> None:
        """Run one batch of the MSE data before the long work, so that empty or unusable data fails now."""
        data = self._mse_data
        it = iter(data)
        try:
            first = next(it)
        except StopIteration:
            raise QAValueError("the unlabeled dataset for per-layer MSE yielded no batches") from None
        if it is data:  # a one-shot iterator (a generator): keep the batch taken here
            self._mse_data = itertools.chain([first], it)
        sim.set_active(())
        self._mse_forward(sim, first)

    # -- everything --

    def analyze(self, quant_scheme: Union[QuantScheme, str] = QuantScheme.post_training_tf_enhanced,
                default_param_bw: int = 8, default_output_bw: Optional[int] = None, config_file: Any = None,
                results_dir: Union[str, Path] = "./tmp/", *, default_activation_bw: Optional[int] = None,
                percentile: Optional[float] = None, rounding: str = "half_even",
                rounding_mode: Optional[str] = None, resume: bool = True, sentinels: str = "float",
                memoize: bool = True, memo_memory_budget: int = DEFAULT_MEMO_BUDGET,
                executor: Union[None, str, Executor] = None, recommend: bool = False,
                target: Any = None, aimet_compat: bool = False) -> AnalysisResult:
        """Run every analysis and write the results (the files are listed in README's "The report").

        Args:
            quant_scheme: "tf", "tf_enhanced" or "percentile" (or a QuantScheme).
            default_param_bw: weight bitwidth (2 to 32).
            default_output_bw: activation bitwidth (``default_activation_bw`` is an alias).
            config_file: an AIMET quantsim config (path or dict), or None for AIMET's defaults.
            results_dir: where the JSON files go; created if missing.
            percentile: for the percentile scheme (default 99.99; with ``aimet_compat``, AIMET's 100).
            rounding: "half_even" (torch, AIMET v2) or "half_away" (AIMET v1).
            rounding_mode: AIMET Keras's name: "nearest" is round half to even; "stochastic"
                rounding is not simulated.
            resume: reuse the finished evaluations of an earlier run in ``results_dir`` (one that
                was killed, say) when its fingerprint (qa version, folded weights, quantizer
                settings and encodings, these arguments) matches; ``False`` evaluates everything
                (do that when only the evaluation data changed). Either way this run replaces
                the earlier run's files.
            sentinels: what to do with an activation whose calibration data holds attention-mask
                fill values (``finfo.min``, -1e9, -10000, -inf; :func:`qa.observers.find_sentinels`):
                "float" (default) keeps its quantizer in float, as deployment toolchains keep
                the mask path; "quantize" quantizes it like any other (AIMET; the collapse shows).
                ``result.sentinel_quantizers`` lists them either way.
            memoize: in the per-layer sweeps, remember per eval batch the tensors in front of
                the first call a layer's quantizers change and recompute only from there
                (bit-identical results; adapters that cannot, and batches never seen before,
                run in full). ``False`` evaluates everything in full.
            memo_memory_budget: bytes the remembered tensors may take (default 1 GiB); a batch
                that would exceed it is evaluated in full.
            recommend: after the sweeps, try the remedies for the top culprits (per-channel
                weights, higher bitwidths, the other scheme, float) and a smallest combined plan
                within ``target`` of FP32, each measured (:func:`qa.recommend.recommend`);
                writes ``recommendation.json`` and ``recommended_config.json`` (a quantsim
                config) and a "Verified fixes" dashboard section.
            target: how close to FP32 the plan must get: a float (relative, default 0.01),
                ``{"relative": r}`` or ``{"absolute": a}`` (scores: higher is better).
            executor: where the per-layer sweeps run: None or "local" (here), "ray", or a
                ``qa.RayExecutor(address=..., num_workers=..., num_gpus_per_worker=...)`` to spread
                the layers over a Ray cluster (same scores and files; :mod:`qa.executors`).
            aimet_compat: AIMET 2.x's numbers instead of qa's (:mod:`qa.aimet_compat`): its
                histograms, candidate grids and percentile default for the encodings, calibration
                with the weights quantized, its weight-scale adjustment, and its per-layer MSE
                convention (per-batch means summed, divided by the number of samples; every
                layer listed, folded batch norms too). README's "AIMET parity" lists each difference.

        Returns:
            An AnalysisResult with everything that was written.
        """
        if default_output_bw is not None and default_activation_bw is not None and default_output_bw != default_activation_bw:
            raise QAValueError("default_output_bw and default_activation_bw disagree; pass one of them")
        output_bw = default_output_bw if default_output_bw is not None else (default_activation_bw or 8)
        if rounding_mode is not None:
            if str(rounding_mode).lower() != "nearest":
                raise QAValueError(f"rounding_mode {rounding_mode!r} is not supported; use 'nearest' "
                                   f"(or rounding='half_even' / 'half_away')")
            rounding = "half_even"
        if int(memo_memory_budget) < 0:
            raise QAValueError(f"memo_memory_budget must be a number of bytes >= 0, got {memo_memory_budget!r}")
        self.memoize, self.memo_memory_budget = bool(memoize), int(memo_memory_budget)
        if recommend:
            from .recommend import parse_target, recommend as _recommend
            parse_target(target)  # a bad target fails here, before any work
        executor = resolve_executor(executor)  # executor="ray" without Ray fails here, before any work
        results = ResultsDir(results_dir)  # an unwritable folder fails here, before any work
        scheme = QuantScheme.parse(quant_scheme)
        result = AnalysisResult(results.root, scheme.value, int(default_param_bw), int(output_bw))
        graph = self.adapter.graph
        result.unquantized_ops = list(graph.unquantized_ops)
        result.folded_batch_norms = list(graph.folded_batch_norms)
        result.unfolded_batch_norms = list(graph.unfolded_batch_norms)
        previous = PreviousRun.read(results)

        def timed(label: str, fn: Callable[[], Any]) -> Any:
            t = time.perf_counter()
            try:
                return fn()
            finally:
                result.seconds[label] = round(time.perf_counter() - t, 4)

        failed = False
        try:
            sim = timed("calibration", lambda: self.create_quantsim(scheme, default_param_bw, output_bw, config_file,
                                                                     percentile=percentile, rounding=rounding,
                                                                     sentinels=sentinels, aimet_compat=aimet_compat))
            result.aimet_compat = sim.aimet_compat
            settings = {"scheme": scheme.value, "param_bw": result.default_param_bw, "output_bw": result.default_output_bw,
                        "percentile": sim.percentile, "rounding": sim.rounding, "framework": self.adapter.framework,
                        "sentinels": sim.sentinel_mode, "aimet_compat": sim.aimet_compat}
            result.fingerprint = fingerprint(self.adapter.weights(), sim.quantizers.values(), settings)
            reuse = previous.reusable(result.fingerprint) if resume else PreviousRun()
            for file in previous.files:  # this run owns the folder: the previous run's files go
                results.remove(file)
            self._describe(sim, result)
            self._write_summary(results, result)
            if self._mse_data is not None:
                self._check_mse_data(sim)
            timed("sensitivity", lambda: self._scores(sim, result, results, reuse))
            result.per_layer_quant_enabled = timed("per_layer_enabled", lambda: self._sweep(
                sim, results, True, reuse.sweeps.get("per_layer_quant_enabled"), executor))
            self._write_summary(results, result)
            result.per_layer_quant_disabled = timed("per_layer_disabled", lambda: self._sweep(
                sim, results, False, reuse.sweeps.get("per_layer_quant_disabled"), executor))
            result.reused_evaluations = reuse.evaluations
            if reuse.evaluations:
                log.info("resumed: %d finished evaluation(s) of an earlier run with the same model, settings and qa "
                         "version were reused from %s", reuse.evaluations, results.root)
            self._write_summary(results, result)
            result.weight_ranges, result.activation_ranges = timed(
                "min_max_ranges", lambda: self.export_per_layer_encoding_min_max_range(sim, results))
            if scheme is not QuantScheme.post_training_tf:
                timed("histograms", lambda: self.export_per_layer_stats_histogram(sim, results))
            if self._mse_data is not None:
                self._write_summary(results, result)
                # AIMET's histogram stage re-encodes its weights without their overflow protection; its MSE sees that
                aimet_mse = sim.aimet_compat and scheme is not QuantScheme.post_training_tf
                with sim.aimet_unprotected_weights() if aimet_mse else contextlib.nullcontext():
                    result.per_layer_mse = timed("per_layer_mse", lambda: self.export_per_layer_mse_loss(sim, results))
                result.per_layer_sqnr_db = dict(self._sqnr)
                result.per_layer_local_mse = dict(self._local_mse)
                result.per_layer_local_sqnr_db = dict(self._local_sqnr)
            if recommend:  # needs both sweeps' ranking; writes recommendation.json and the config
                result.recommendation = timed("recommendation", lambda: _recommend(
                    self, sim, result, target=target, results=results, report=False, executor=executor))
            result.problems += _score_problems(result)
            result.status = "complete"
        except BaseException as e:  # also KeyboardInterrupt: what finished is kept and said so
            failed = True
            result.status, result.error = "failed", f"{type(e).__name__}: {e}"
            raise
        finally:
            if executor is not None:
                executor.close()  # the workers go, however the run ends
            self.adapter.activate(FLOAT)  # leave the analysis copy in float
            try:
                self._write_summary(results, result)
            except Exception as e:
                if not failed:
                    raise
                log.error("could not record the failure in summary.json (%s)", e)  # never mask the first error
        from .report import try_build_html  # HTML from the JSON just written; a failure there is a warning

        pages = try_build_html(results.root)
        self._write_summary(results, result, pages)  # now listing the pages too
        self._log_summary(result)
        return result

    def _describe(self, sim: QuantSim, result: AnalysisResult) -> None:
        """What the simulation is: layers, quantizers, encodings and what went wrong with the data."""
        result.layers = [{"name": layer.name, "type": layer.type_name, "op_type": layer.op_type,
                          "quantizers": sorted(sim.layer_quantizers(layer.name))} for layer in sim.graph.layers]
        result.unused_quantizers = list(sim.unused)
        result.nonfinite_quantizers = list(sim.nonfinite_only)
        result.sentinel_quantizers = dict(sim.sentinel_quantizers)
        result.active_quantizers = len(sim.enabled)
        result.problems = sim.problems()
        result.encodings = sim.encodings()

    def _scores(self, sim: QuantSim, result: AnalysisResult, results: ResultsDir, reuse: PreviousRun) -> None:
        """FP32, weights-only, activations-only and fully quantized scores, each on disk once known."""
        plan = {"fp32_score": ((), "FP32 model"), "weight_quantized_score": (sim.param_quantizers(), "weight-quantized model"),
                "activation_quantized_score": (sim.activation_quantizers(), "activation-quantized model"),
                "quantized_score": (sim.enabled, "fully quantized model")}
        for key in SCORE_KEYS:
            active, what = plan[key]
            if key in reuse.scores:
                setattr(result, key, reuse.scores[key])
                continue
            sim.set_active(active)
            setattr(result, key, sim.evaluate(self.eval_callback, f"eval_callback ({what})"))
            self._write_summary(results, result)

    def _write_summary(self, results: ResultsDir, result: AnalysisResult, pages: Iterable[Path] = ()) -> None:
        """summary.json, listing exactly this run's files (``pages``: the HTML the report wrote)."""
        written = [p for p in results.written if p.is_file()]
        result.files = written + [p for p in pages if p not in set(written)]
        results.write_json(result.summary(), "summary.json")
        if results.root / "summary.json" not in result.files:
            result.files.append(results.root / "summary.json")

    def _log_summary(self, r: AnalysisResult) -> None:
        log.info("scores: FP32 %.4f | weights quantized %.4f | activations quantized %.4f | all quantized %.4f",
                 r.fp32_score, r.weight_quantized_score, r.activation_quantized_score, r.quantized_score)
        log.info("most sensitive layers: %s", ", ".join(r.most_sensitive_layers(3)))
        log.info("results in %s", r.results_dir)
