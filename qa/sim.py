"""The quantization simulation: calibrate once, compute encodings once, toggle quantizers in O(1)."""

from __future__ import annotations

import contextlib
import copy
import enum
import inspect
import logging
import math
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Mapping, Optional, Set, Union

import numpy as np

from ._arrays import check_bitwidth
from .config import apply_config, load_config
from .encodings import Encoding, compute_encoding, encoding_from_range
from .errors import QACallbackError, QAError, QAValueError
from .graph import INPUT, OUTPUT, PARAM, QuantGraph, Quantizer
from .observers import Histogram, RunningMinMax, find_sentinels
from .adapters._base import FLOAT, ActiveSet

__all__ = ["QuantScheme", "CallbackFunc", "QuantSim", "SENTINEL_MODES"]

log = logging.getLogger("qa")

#: What QuantSim does with an activation quantizer whose data holds sentinel values
#: (attention-mask fill values, see qa.observers.find_sentinels).
SENTINEL_MODES = ("float", "quantize")


class QuantScheme(str, enum.Enum):
    """How encodings are computed from statistics (AIMET's names; plain strings work too).

    Example:
        >>> QuantScheme.parse("tf_enhanced") is QuantScheme.post_training_tf_enhanced
        True
    """

    post_training_tf = "tf"
    post_training_tf_enhanced = "tf_enhanced"
    post_training_percentile = "percentile"

    @classmethod
    def parse(cls, value: Union["QuantScheme", str]) -> "QuantScheme":
        if isinstance(value, cls):
            return value
        text = str(getattr(value, "name", value)).lower()
        for scheme in cls:
            if text in (scheme.value, scheme.name, f"quantscheme.{scheme.name}"):
                return scheme
        raise QAValueError(f"unknown quant_scheme {value!r}; use one of tf, tf_enhanced, percentile")


class CallbackFunc:
    """A user function and its extra argument, called as ``func(model, func_callback_args)``.

    Example:
        >>> cb = CallbackFunc(lambda model, n: n * 2, 21)
        >>> cb(None)
        42
    """

    def __init__(self, func: Callable[..., Any], func_callback_args: Any = None) -> None:
        if not callable(func):
            raise QAValueError(f"CallbackFunc needs a callable, got {type(func).__name__}")
        self.func = func
        self.args = func_callback_args

    def __call__(self, model: Any) -> Any:
        return self.func(model, self.args)

    def __repr__(self) -> str:
        return f"CallbackFunc({getattr(self.func, '__name__', self.func)!r})"


def _required_positional(fn: Any) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in kinds and p.default is inspect.Parameter.empty)


def as_callback(fn: Any, what: str) -> CallbackFunc:
    """A CallbackFunc, or a plain callable: ``func(model)``, or ``func(model, args)`` called with None."""
    if isinstance(fn, CallbackFunc):
        return fn
    if callable(fn):
        if _required_positional(fn) >= 2:  # an AIMET-style func(model, args) passed bare
            return CallbackFunc(fn, None)
        return CallbackFunc(lambda model, _args: fn(model))
    raise QAValueError(f"{what} must be a qa.CallbackFunc or a callable taking the model, got {type(fn).__name__}")


def call_user(fn: CallbackFunc, model: Any, what: str) -> Any:
    """Run a user callback; its exception becomes a QACallbackError that says where it happened."""
    try:
        return fn(model)
    except QAError:
        raise
    except Exception as e:
        raise QACallbackError(f"{what} failed: {type(e).__name__}: {e}") from e


def as_score(value: Any, what: str) -> float:
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        score = float(value.item() if hasattr(value, "item") else value)
    except OverflowError:
        raise QACallbackError(f"{what} returned a number too large for a float ({type(value).__name__} with "
                              f"{len(hex(int(value))) - 2} hex digits)") from None
    except Exception:
        shape = getattr(value, "shape", None)
        detail = f" of shape {tuple(shape)}" if shape is not None else ""
        raise QACallbackError(f"{what} must return a number (or a one-element tensor/array), "
                              f"got {type(value).__name__}{detail}") from None
    if not math.isfinite(score):
        log.warning("%s returned %s", what, score)
    return score


class QuantSim:
    """A calibrated simulation of one model under one quantization setting; it owns its state.

    Built by ``QuantAnalyzer.create_quantsim``. The simulation holds its own copy of the
    quantizer graph (settings from the config, encodings), the fake-quantized weights and the
    activation quantizers, each prepared once in the adapter's own form. Switching quantizers
    hands the adapter an :class:`~qa.adapters._base.ActiveSet`; the adapter only executes it, so
    several simulations of one analyzer never interfere.

    Sentinel values: an activation whose calibration data holds attention-mask fill values
    (finfo.min, -1e9, -10000, -inf added to scores; the rule is
    :func:`qa.observers.find_sentinels`) would get a grid spanning [-3.4e38, max] on which every
    real value is one code. ``sentinels="float"`` (the default) keeps such a quantizer in float,
    as deployment toolchains keep the mask path in float, so the scores say what the deployed
    graph loses; ``sentinels="quantize"`` quantizes it like any other (AIMET's behaviour: the
    collapse shows, and ``problems()`` names it). Excluding the sentinels from the range instead
    would need each adapter to pass them through its fake quantization unchanged; clamped to an
    integer grid fitted to the real values, a mask stops masking. Either way
    ``sentinel_quantizers`` says what was found and done.
    """

    def __init__(self, adapter: Any, *, quant_scheme: Union[QuantScheme, str], default_param_bw: int,
                 default_output_bw: int, config_file: Any = None, percentile: Optional[float] = None,
                 rounding: str = "half_even", bins: int = 2048, sentinels: str = "float",
                 aimet_compat: bool = False) -> None:
        self.adapter = adapter
        self.scheme = QuantScheme.parse(quant_scheme)
        self.param_bw = check_bitwidth(default_param_bw, "default_param_bw")
        self.output_bw = check_bitwidth(default_output_bw, "default_output_bw")
        self.aimet_compat = bool(aimet_compat)
        # AIMET's percentile default is 100 (the histogram's ends); qa's 99.99 clips the rarest outliers
        self.percentile = (AIMET_PERCENTILE if aimet_compat else QA_PERCENTILE) if percentile is None else percentile
        self.rounding = _rounding(rounding)
        self.bins = bins
        self.sentinel_mode = _sentinel_mode(sentinels)
        self.config = load_config(config_file)
        self.graph: QuantGraph = adapter.graph.copy()  # this simulation's settings and encodings
        apply_config(self.graph, self.config, param_bw=self.param_bw, output_bw=self.output_bw)
        self.quantizers: Dict[str, Quantizer] = {q.name: q for q in self.graph.quantizers()}
        if self.aimet_compat:
            self._aimet_modes()
        self.stats: Dict[str, Any] = {}  # quantizer name -> the observer that saw its data
        self.unused: List[str] = []  # activation quantizers that saw no data during calibration
        self.nonfinite: Dict[str, int] = {}  # quantizer -> NaN/inf values it saw (weights and activations)
        self.nonfinite_only: List[str] = []  # quantizers that saw only NaN/inf: no encoding
        self.sentinel_quantizers: Dict[str, str] = {}  # quantizer -> its sentinel values and what was done
        self._neginf_masks: Dict[str, int] = {}  # -inf sentinels of quantizers kept in float: no problem
        self._prepared: Dict[str, Any] = {}  # quantizer name -> its quantized form, in the adapter's terms
        self._unprotected: Dict[str, Encoding] = {}  # aimet_compat: weights' encodings before AIMET's protection
        self._chain: FrozenSet[str] = frozenset()
        self._active: Set[str] = set()
        self.calibrated = False

    # -- calibration --

    def scheme_of(self, q: Quantizer) -> "QuantScheme":
        """The scheme that encodes ``q``: its own (a config's ``layers.<name>.quant_scheme``) or the simulation's."""
        return QuantScheme.parse(q.scheme) if q.scheme else self.scheme

    def _aimet_modes(self) -> None:
        """AIMET 2.x knows two grids only (unsigned asymmetric, signed symmetric): a config's strict or
        unsigned symmetric settings, which AIMET 2.x refuses, are dropped with a warning."""
        asked = sorted({k for q in self.quantizers.values() for k, on in (("strict_symmetric", q.strict),
                        ("unsigned_symmetric", q.unsigned_symmetric and q.symmetric)) if on})
        for q in self.quantizers.values():
            q.strict = q.unsigned_symmetric = False
        if asked and (self.config.strict_symmetric or self.config.unsigned_symmetric):
            log.warning("aimet_compat: AIMET 2.x supports neither %s (its quantsim refuses them); they are off",
                        " nor ".join(asked))

    def _observer(self, q: Quantizer) -> Any:
        """Activations get a histogram under every scheme (find_sentinels reads it; ``tf`` encodes
        from its exact min/max); ``tf`` weights keep plain min/max."""
        axis = q.axis if (q.is_param and q.per_channel) else None
        if self.scheme_of(q) is QuantScheme.post_training_tf and q.is_param:
            inner: Any = RunningMinMax(axis=axis, name=q.name)
        else:
            inner = Histogram(self.bins, axis=axis, name=q.name)
        if not self.aimet_compat:
            return inner
        from .aimet_compat import AimetObserver

        # a fixed output range (encoding_constraints) makes AIMET encode that quantizer with min-max
        scheme = "tf" if q.fixed_range is not None else self.scheme_of(q).value
        return AimetObserver(scheme, inner, axis=axis, name=q.name)

    def _encode(self, q: Quantizer, obs: Any) -> Encoding:
        if self.aimet_compat:
            from .aimet_compat import aimet_encoding

            return aimet_encoding(obs, q.bitwidth, q.symmetric, self.percentile, fixed=q.fixed_range)
        enc = compute_encoding(obs, self.scheme_of(q).value, q.bitwidth, symmetric=q.symmetric, strict=q.strict,
                               unsigned_symmetric=q.unsigned_symmetric, percentile=self.percentile)
        if q.fixed_range is None:
            return enc
        lo, hi = q.fixed_range  # a config's encoding_constraints: the fixed sides replace the calibrated ones
        lo = float(enc.min) if lo is None else lo
        hi = float(enc.max) if hi is None else hi
        symmetric = q.symmetric or (q.fixed_range[0] is not None and q.fixed_range[1] is not None
                                    and math.isclose(lo, -hi))
        return encoding_from_range(lo, hi, q.bitwidth, symmetric=symmetric, strict=q.strict and symmetric,
                                   unsigned_symmetric=q.unsigned_symmetric, name=q.name)

    def compute_encodings(self, forward_pass_callback: CallbackFunc) -> None:
        """Observe weights directly and activations during one run of the calibration callback."""
        for definition, values in self.adapter.weights():
            q = self.quantizers[definition.name]
            if not q.enabled:
                continue
            obs = self._observer(q)
            obs.update(values)
            self._count_nonfinite(q.name, obs)
            if not obs.seen_finite:  # nothing to encode: the weight stays float, and problems() says why
                self.nonfinite_only.append(q.name)
                continue
            q.encoding = self._encode_weight(q, obs, values)
            self.stats[q.name] = obs
            self._prepare_weight(definition, values, q.encoding)
        observers = {q.name: self._observer(q) for q in self.quantizers.values() if q.enabled and not q.is_param}
        # qa observes the FP32 model; AIMET 2.x calibrates with the quantized weights (activations pass through)
        running = (ActiveSet({n: v for n, v in self._prepared.items() if self.quantizers[n].is_param},
                             rounding=self.rounding) if self.aimet_compat else FLOAT)
        with self.adapter.observing(observers, running):
            call_user(forward_pass_callback, self.adapter.model, "forward_pass_callback (calibration)")
        for name, obs in observers.items():
            self._encode_activation(self.quantizers[name], obs)
        if self.aimet_compat:
            self._protect_weights()
        self._log_sentinels()
        if self.unused:
            log.warning("%d activation quantizer(s) saw no data during calibration (their layers never ran) and "
                        "stay off: %s", len(self.unused), ", ".join(self.unused[:10]))
        if self.nonfinite_only:
            log.warning("%d activation quantizer(s) saw only NaN/inf values during calibration and stay off: %s",
                        len(self.nonfinite_only), ", ".join(self.nonfinite_only[:10]))
        self._chain = frozenset(n for n in self.enabled if not self.quantizers[n].is_param)
        self.calibrated = True

    def _prepare_weight(self, definition: Quantizer, values: np.ndarray, encoding: Encoding) -> None:
        """A weight's quantized form in the adapter's terms, from its float values and encoding."""
        self._prepared[definition.name] = self.adapter.prepare_weight(
            definition, encoding.fake_quantize(values, rounding=self.rounding))

    def _encode_weight(self, q: Quantizer, obs: Any, values: np.ndarray) -> Encoding:
        """A weight's encoding; AIMET 2.x first tries to read a symmetric weight as integer codes
        times one scale (a weight quantized already keeps its grid)."""
        if self.aimet_compat and q.symmetric:
            from .aimet_compat import decompose_weight

            found = decompose_weight(values, q.bitwidth, q.axis if q.per_channel else None)
            if found is not None:
                return found
        return self._encode(q, obs)

    def _protect_weights(self) -> None:
        """AIMET 2.x's last calibration step for Conv, ConvTranspose and Linear (Gemm) weights: their
        scale grows where the integer bias or the requantization would overflow (needs the layer's
        input encoding: its own input quantizer, or the output quantizer upstream)."""
        from .aimet_compat import protect_weight

        weights = {d.name: (d, v) for d, v in self.adapter.weights()}
        for layer in self.graph.layers:
            if layer.op_type not in _PROTECTED:
                continue
            weight = next((q for q in layer.quantizers if q.is_param and q.param == "weight" and q.layer == layer.name
                           and q.enabled and q.encoding is not None), None)
            if weight is None:
                continue
            bias = next((weights[q.name][1] for q in layer.quantizers if q.is_param and q.param == "bias"
                         and q.name in weights), None)
            out = next((q.encoding for q in layer.quantizers if q.kind == OUTPUT and q.enabled), None)
            protected = protect_weight(weight.encoding, bias, self._input_encoding(layer), out)
            if protected is not weight.encoding:
                self._unprotected[weight.name] = weight.encoding
                weight.encoding = protected
                self._prepare_weight(*weights[weight.name], protected)

    @contextlib.contextmanager
    def aimet_unprotected_weights(self) -> Iterator[None]:
        """Within the block, the weights AIMET's overflow protection changed run with their encodings
        from before it: what AIMET's QuantAnalyzer leaves in its simulation after its histogram
        stage (which observes every weight again) and so what its per-layer MSE runs on.
        ``aimet_compat`` analyses wrap their MSE stage in it; afterwards the protected weights are back."""
        if not self._unprotected:
            yield
            return
        weights = {d.name: (d, v) for d, v in self.adapter.weights()}
        kept = {n: (self.quantizers[n].encoding, self._prepared[n]) for n in self._unprotected}
        try:
            for name, encoding in self._unprotected.items():
                self.quantizers[name].encoding = encoding
                self._prepare_weight(*weights[name], encoding)
            self.activate()
            yield
        finally:
            for name, (encoding, prepared) in kept.items():
                self.quantizers[name].encoding, self._prepared[name] = encoding, prepared
            self.activate()

    def _input_encoding(self, layer: Any) -> Optional[Encoding]:
        """The encoding AIMET sees on what ``layer`` reads: its own input quantizer's, else the output
        quantizer's of the layer feeding it directly (an encoding does not travel through a MaxPool
        or Flatten in AIMET: the golden model's fc gets none)."""
        own = next((q.encoding for q in layer.quantizers if q.kind == INPUT and q.enabled), None)
        if own is not None or len(layer.inputs) != 1 or layer.inputs[0] not in self.graph:
            return own
        feeding = self.graph[layer.inputs[0]]
        return next((q.encoding for q in feeding.quantizers if q.kind == OUTPUT and q.enabled), None)

    def _encode_activation(self, q: Quantizer, obs: Any) -> None:
        """The encoding and prepared form of one activation quantizer from what it observed."""
        self._count_nonfinite(q.name, obs)
        q.encoding = None
        if not obs.seen_finite:
            (self.nonfinite_only if q.name in self.nonfinite else self.unused).append(q.name)
            return
        self.stats[q.name] = obs
        if self._keeps_float(q.name, obs):
            return
        q.encoding = self._encode(q, obs)
        self._prepared[q.name] = self.adapter.prepare_activation(q, q.encoding, self.rounding)

    def _keeps_float(self, name: str, obs: Any) -> bool:
        """Record the sentinel values ``name`` saw; True when it stays in float for them."""
        found = find_sentinels(obs)
        if found is None:
            return False
        if self.sentinel_mode == "float":
            self.sentinel_quantizers[name] = f"{found.describe()}: kept in float"
            self._neginf_masks[name] = found.neginf
            return True
        effect = "-inf clamps to the grid's lowest value" if not found.count else "the other values share a few codes"
        self.sentinel_quantizers[name] = f"{found.describe()}: quantized with them (sentinels='quantize'; {effect})"
        return False

    def _log_sentinels(self) -> None:
        """One log line for every quantizer whose data held sentinel values."""
        if not self.sentinel_quantizers:
            return
        listed = "; ".join(f"{n}: {d}" for n, d in list(self.sentinel_quantizers.items())[:10])
        more = f" and {len(self.sentinel_quantizers) - 10} more" if len(self.sentinel_quantizers) > 10 else ""
        if self.sentinel_mode == "float":
            log.info("%d activation quantizer(s) saw attention-mask sentinel values and stay in float, as deployed "
                     "graphs keep the mask path (sentinels='float'): %s%s", len(self.sentinel_quantizers), listed, more)
        else:
            log.warning("%d activation quantizer(s) saw attention-mask sentinel values and are quantized with them "
                        "(sentinels='quantize'): %s%s", len(self.sentinel_quantizers), listed, more)

    def _count_nonfinite(self, name: str, obs: Any) -> None:
        count = int(np.sum(obs.n_nan) + np.sum(obs.n_posinf) + np.sum(obs.n_neginf))
        if count:
            self.nonfinite[name] = count

    def problems(self) -> List[str]:
        """What went wrong with the data the quantizers saw, in plain words."""
        out = []
        for name, count in self.nonfinite.items():
            count -= self._neginf_masks.get(name, 0)  # -inf masks kept in float are expected
            if count <= 0:
                continue
            q = self.quantizers[name]
            what = f"the weight of {name}" if q.is_param else f"the activation {name}"
            tail = " (it saw nothing else, so it stays off)" if name in self.nonfinite_only else ""
            out.append(f"{what} contains {count} NaN/inf value(s){tail}")
        if self.sentinel_mode == "quantize":
            out += [f"the activation {name} holds {d}" for name, d in self.sentinel_quantizers.items()]
        if not self.enabled:
            out.append("no quantizer is active: nothing was quantized" + (
                f" ({len(self.unused)} quantizer(s) never saw data)" if self.unused else ""))
        return out

    # -- toggling and running --

    @property
    def enabled(self) -> Set[str]:
        """Quantizers the config turns on that have an encoding."""
        return {n for n, q in self.quantizers.items() if q.enabled and q.encoding is not None}

    def set_active(self, names: Iterable[str]) -> None:
        """Turn on exactly these quantizers (those the config left off stay off)."""
        if not self.calibrated:
            raise QAError("compute_encodings must run before quantizers can be switched on")
        self._active = set(names) & self.enabled
        self.activate()

    def activate(self) -> None:
        """Hand the adapter this simulation's current setting (after another simulation ran)."""
        weights = {n: self._prepared[n] for n in self._active if self.quantizers[n].is_param}
        activations = {n: self._prepared[n] for n in self._active if not self.quantizers[n].is_param}
        self.adapter.activate(ActiveSet(weights, activations, self._chain, self.rounding))

    @property
    def active(self) -> Set[str]:
        """The quantizers on now."""
        return set(self._active)

    def layer_quantizers(self, layer: str) -> Set[str]:
        return {q.name for q in self.graph[layer].quantizers} & self.enabled

    def param_quantizers(self) -> Set[str]:
        return {n for n in self.enabled if self.quantizers[n].kind == PARAM}

    def activation_quantizers(self) -> Set[str]:
        return {n for n in self.enabled if self.quantizers[n].kind != PARAM}

    @property
    def model(self) -> Any:
        """The model the callbacks receive: the analysis copy, quantized as currently set."""
        return self.adapter.model

    def evaluate(self, eval_callback: CallbackFunc, what: str) -> float:
        """Run ``eval_callback`` under this simulation's setting (re-handed to the adapter first)."""
        self.activate()
        return as_score(call_user(eval_callback, self.adapter.model, what), what)

    def encodings(self) -> Dict[str, Dict[str, Any]]:
        """AIMET-style encodings of every quantizer that has one."""
        return {n: q.encoding.to_dict() for n, q in self.quantizers.items() if q.encoding is not None}

    def derive(self, settings: Mapping[str, Mapping[str, Any]]) -> "QuantSim":
        """A copy of this calibrated simulation with some quantizers' settings changed.

        Only the changed quantizers get new encodings, computed as ``compute_encodings`` would
        have: a weight is observed again from the adapter's float (folded) values, an activation
        is encoded from the statistics kept from calibration (calibration observes the float
        model, so no other statistic depends on the change and nothing is run). Every other
        quantizer keeps its encoding and prepared form (the very objects). So the copy computes
        what a simulation calibrated from a config that makes the same settings computes (with
        ``aimet_compat``, calibration saw the quantized weights: there a weight change would also
        move downstream activation ranges, which the copy keeps). This
        simulation, the adapter's model and the user's model are not changed; nothing is active
        in the copy until ``set_active``.

        Args:
            settings: quantizer name -> the settings to change: ``enabled`` (False keeps it in
                float; an activation quantizer can only be turned on when it saw data during
                calibration), ``bitwidth``, ``per_channel`` (weights with a channel axis),
                ``symmetric``, ``scheme`` ("tf", "tf_enhanced", "percentile", or None for the
                simulation's).

        Returns:
            The new, calibrated QuantSim (sharing the adapter).

        Raises:
            QAValueError: an unknown quantizer or setting, or a value it cannot take.

        Example:
            >>> import torch, qa
            >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
            >>> x = torch.randn(8, 1, 6, 6)
            >>> analyzer = qa.QuantAnalyzer(net, x[:1], lambda m: m(x), lambda m: 0.0, progress=False)
            >>> sim = analyzer.create_quantsim("tf", default_param_bw=4)
            >>> wide = sim.derive({"0_weight": {"bitwidth": 8, "per_channel": True}})
            >>> wide.quantizers["0_weight"].encoding.bitwidth, sim.quantizers["0_weight"].encoding.bitwidth
            (8, 4)
            >>> wide.quantizers["1_output_0"].encoding is sim.quantizers["1_output_0"].encoding
            True
        """
        new = self._copy("derived")
        weights: Set[str] = set()
        for name, changes in settings.items():
            q = new.quantizers.get(name)
            if q is None:
                raise QAValueError(f"derive: no quantizer named {name!r}")
            for key, value in changes.items():
                _set_setting(q, key, value)
            q.encoding = None
            new._prepared.pop(name, None)
            if q.is_param:
                new.stats.pop(name, None)
                weights.add(name)
            elif q.enabled:
                obs = self.stats.get(name)
                if obs is None:
                    raise QAValueError(f"derive: the activation {name!r} saw no data during calibration and "
                                       f"cannot be encoded")
                if name not in self.sentinel_quantizers or self.sentinel_mode != "float":
                    q.encoding = new._encode(q, obs)
                    new._prepared[name] = self.adapter.prepare_activation(q, q.encoding, self.rounding)
        for definition, values in (self.adapter.weights() if weights else ()):
            q = new.quantizers[definition.name]
            if definition.name not in weights or not q.enabled:
                continue
            obs = new._observer(q)
            obs.update(values)
            if obs.seen_finite:  # as in compute_encodings
                q.encoding = new._encode(q, obs)
                new.stats[q.name] = obs
                new._prepare_weight(definition, values, q.encoding)
        return new

    def adopt(self, states: Mapping[str, Quantizer]) -> "QuantSim":
        """A copy of this calibrated simulation in which the quantizers in ``states`` take the
        settings and encodings of the given quantizers as they are: nothing is observed or
        encoded again (unlike :meth:`derive`), only their quantized forms are prepared. How a
        variant computed elsewhere (a :meth:`derive` on the driver of a Ray cluster) is rebuilt
        on a worker that holds the same calibrated simulation.

        Args:
            states: quantizer name -> a Quantizer (e.g. of another simulation's ``quantizers``)
                whose settings and encoding to take.

        Returns:
            The new, calibrated QuantSim (sharing the adapter); this one is unchanged.

        Raises:
            QAValueError: a name that is no quantizer of this simulation.

        Example:
            >>> import torch, qa
            >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).eval()
            >>> x = torch.randn(8, 4)
            >>> analyzer = qa.QuantAnalyzer(net, x[:1], lambda m: m(x), lambda m: 0.0, progress=False)
            >>> sim = analyzer.create_quantsim("tf", default_param_bw=4)
            >>> wide = sim.derive({"0_weight": {"bitwidth": 8}})
            >>> sim.adopt({"0_weight": wide.quantizers["0_weight"]}).encodings() == wide.encodings()
            True
        """
        new = self._copy("adopted")
        unknown = [n for n in states if n not in new.quantizers]
        if unknown:
            raise QAValueError(f"adopt: no quantizer named {unknown[0]!r}")
        new._install(states)
        return new

    def _copy(self, what: str) -> "QuantSim":
        """A shallow copy with its own graph, quantizers and bookkeeping (encodings and prepared forms shared)."""
        if not self.calibrated:
            raise QAError(f"compute_encodings must run before a simulation can be {what}")
        new = copy.copy(self)
        new.graph = self.graph.copy()
        new.quantizers = {q.name: q for q in new.graph.quantizers()}
        for name, q in new.quantizers.items():  # the copy shares the (immutable) encodings
            q.encoding = self.quantizers[name].encoding
        new.stats, new._prepared = dict(self.stats), dict(self._prepared)
        new.unused, new.nonfinite_only = list(self.unused), list(self.nonfinite_only)
        new.nonfinite, new.sentinel_quantizers = dict(self.nonfinite), dict(self.sentinel_quantizers)
        new._neginf_masks, new._active = dict(self._neginf_masks), set()
        new._unprotected = dict(self._unprotected)
        return new

    def _install(self, states: Mapping[str, Quantizer]) -> None:
        """Give the quantizers in ``states`` those quantizers' settings and encodings, and prepare the
        quantized forms of those that are on and encoded (weights from the adapter's float values)."""
        for name, source in states.items():
            q = self.quantizers[name]
            for f in QUANTIZER_STATE:
                setattr(q, f, getattr(source, f))
            self._prepared.pop(name, None)
            if q.is_param:
                self.stats.pop(name, None)
        ready = {n for n in states if self.quantizers[n].enabled and self.quantizers[n].encoding is not None}
        weights = {n for n in ready if self.quantizers[n].is_param}
        for definition, values in (self.adapter.weights() if weights else ()):
            q = self.quantizers[definition.name]
            if q.name in weights:
                self._prepare_weight(definition, values, q.encoding)
        for name in ready - weights:
            q = self.quantizers[name]
            self._prepared[name] = self.adapter.prepare_activation(q, q.encoding, self.rounding)


_PROTECTED = ("Conv", "ConvTranspose", "Gemm")  # AIMET's QuantizedConv*, QuantizedConvTranspose*, QuantizedLinear
QA_PERCENTILE = 99.99
AIMET_PERCENTILE = 100.0

#: What a quantizer's setting and encoding consist of (what :meth:`QuantSim.adopt` takes over).
QUANTIZER_STATE = ("enabled", "bitwidth", "symmetric", "strict", "unsigned_symmetric", "per_channel", "axis",
                   "scheme", "fixed_range", "encoding")


_SETTINGS = ("enabled", "bitwidth", "per_channel", "symmetric", "scheme")


def _set_setting(q: Quantizer, key: str, value: Any) -> None:
    """One setting of ``QuantSim.derive``, checked."""
    if key not in _SETTINGS:
        raise QAValueError(f"derive: {q.name}: unknown setting {key!r}; use one of {', '.join(_SETTINGS)}")
    if key == "bitwidth":
        value = check_bitwidth(value, f"{q.name} bitwidth")
    elif key == "scheme":
        value = None if value is None else QuantScheme.parse(value).value
    elif not isinstance(value, (bool, np.bool_)):
        raise QAValueError(f"derive: {q.name}: {key} must be True or False, got {value!r:.80}")
    else:
        value = bool(value)
    if key == "per_channel" and value and (not q.is_param or q.axis is None):
        raise QAValueError(f"derive: {q.name} has no channel axis to quantize per channel")
    setattr(q, key, value)


def _sentinel_mode(value: Any) -> str:
    if isinstance(value, str) and value in SENTINEL_MODES:
        return value
    raise QAValueError(f"sentinels must be one of {', '.join(repr(m) for m in SENTINEL_MODES)}, got {value!r:.80}")


def _rounding(value: str) -> str:
    if value in ("half_away", "half_away_from_zero"):
        return "half_away"
    if value == "half_even":
        return value
    raise QAValueError(f"rounding must be 'half_even' or 'half_away', got {value!r}")
