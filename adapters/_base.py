"""The one contract every framework adapter implements, and the mechanics the adapters share.

An adapter wraps a private copy of the user's model and *executes* what it is handed; it owns
no quantization state. The engine (``qa.sim.QuantSim``) owns the settings, the encodings and
the quantized weights; it asks the adapter once to convert each quantized weight and each
activation quantizer into the adapter's own form (``prepare_weight`` / ``prepare_activation``),
keeps those, and hands the adapter an :class:`ActiveSet` whenever the set of quantizers that
are on changes. Two simulations of one adapter therefore never interfere: whichever activates
last is what runs.

The verbs, the same for every framework:

=====================  ==================================================================
``is_model(model)``    class method: does this adapter take this model?
``graph``              the layers in execution order and their quantizers (definitions only)
``model``              what the user's callbacks receive (a module, a session look-alike)
``weights()``          each parameter quantizer with its float32 (batch-norm folded) values
``prepare_weight``     a quantized weight in the adapter's own form (made once per sim)
``prepare_activation`` an activation quantizer in the adapter's own form (made once per sim)
``activate(active)``   run from now on with exactly these quantizers on (O(1) per change)
``run(inputs)``        one forward pass on model inputs
``observing(obs)``     within the block, stream every activation into its observer
``capturing(sink)``    within the block, pass every layer output to ``sink(layer, i, array)``
``memoized(budget)``   within one sweep, evaluations may replay what cannot have changed
``close()``            undo hooks and patches, free sessions
=====================  ==================================================================
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from typing import (Any, Callable, ClassVar, Dict, FrozenSet, Iterable, Iterator, List, Mapping, Optional, Sequence,
                    Tuple)

import numpy as np

from ..errors import QAValueError
from ..graph import QuantGraph, Quantizer

__all__ = ["Adapter", "ActiveSet", "FLOAT", "Observer", "Sink", "check_ignored"]

Sink = Callable[[str, int, np.ndarray], None]


class Observer:  # pragma: no cover - the protocol qa.observers implement
    def update(self, x: np.ndarray) -> None: ...


@dataclass(frozen=True)
class ActiveSet:
    """What an adapter executes: the quantizers that are on, each with its prepared form.

    ``weights`` maps parameter quantizers to what ``prepare_weight`` returned, ``activations``
    activation quantizers to what ``prepare_activation`` returned. ``chain`` names every
    activation quantizer the simulation can ever turn on (graph-building adapters build them
    all in once and switch them through inputs); ``rounding`` is ``half_even`` or ``half_away``.
    """

    weights: Mapping[str, Any] = field(default_factory=dict)
    activations: Mapping[str, Any] = field(default_factory=dict)
    chain: FrozenSet[str] = frozenset()
    rounding: str = "half_even"

    @property
    def names(self) -> FrozenSet[str]:
        return frozenset(self.weights) | frozenset(self.activations)


FLOAT = ActiveSet()  # nothing quantized


def check_ignored(names: Iterable[str], valid: Sequence[str], what: str) -> None:
    """Raise QAValueError when ``modules_to_ignore`` names something the model does not have: a
    misspelt name would otherwise leave its layer quantized without a word. ``valid`` lists the
    names that work, in the model's order; ``what`` says what they name ("a module of the model")."""
    known = set(valid)
    unknown = sorted({n for n in names if n not in known})
    if not unknown:
        return
    listed = ", ".join(repr(n) for n in unknown)
    verb = "is not" if len(unknown) == 1 else "are not"
    if not valid:
        raise QAValueError(f"modules_to_ignore: {listed} {verb} {what}: the model has no layers")
    shown = ", ".join(repr(n) for n in list(valid)[:8]) + (f" and {len(valid) - 8} more" if len(valid) > 8 else "")
    raise QAValueError(f"modules_to_ignore: {listed} {verb} {what}; valid names are {shown}")


class Adapter(abc.ABC):
    """The contract (see the module docstring) plus the observe / quantize / capture mechanics.

    Subclasses call ``super().__init__()`` before anything runs the model, set ``graph`` and
    ``model``, and implement the abstract verbs. Hook-based adapters route every activation
    tensor through :meth:`_activation` (as numpy) and every layer's outputs through
    :meth:`_layer_outputs`; parameter binding goes through :meth:`_bind_weights`, which calls
    :meth:`_bind_weight` only for parameters whose value changes.
    """

    framework: ClassVar[str] = ""
    #: how to get operations that stay in float quantized, in this framework's words
    unquantized_hint: ClassVar[str] = ""
    #: adapters are asked in ascending priority (Keras before torch: on the torch backend a
    #: keras.Model is also a torch.nn.Module)
    priority: ClassVar[int] = 100

    graph: QuantGraph
    model: Any
    dummy_input: Any

    def __init__(self) -> None:
        self._observers: Optional[Mapping[str, Any]] = None
        self._capture: Optional[Sink] = None
        self._active: ActiveSet = FLOAT
        self._bound: Dict[str, Any] = {}  # parameter quantizer -> the prepared weight bound now

    # -- the contract --

    @classmethod
    @abc.abstractmethod
    def is_model(cls, model: Any) -> bool:
        """True when this adapter analyses ``model``."""

    @abc.abstractmethod
    def weights(self) -> Iterator[Tuple[Quantizer, np.ndarray]]:
        """Each parameter quantizer with its float32 values (batch norms folded)."""

    @abc.abstractmethod
    def prepare_weight(self, quantizer: Quantizer, values: np.ndarray) -> Any:
        """The fake-quantized ``values`` of a parameter in this adapter's own form."""

    def prepare_activation(self, quantizer: Quantizer, encoding: Any, rounding: str) -> Any:
        """An activation quantizer in this adapter's own form; by default a numpy function."""
        def quantize(x: np.ndarray) -> np.ndarray:
            return encoding.fake_quantize(x, rounding=rounding)
        return quantize

    @abc.abstractmethod
    def activate(self, active: ActiveSet) -> None:
        """Run from now on with exactly the quantizers in ``active`` on."""

    @abc.abstractmethod
    def run(self, inputs: Any) -> Any:
        """One forward pass of the analysis copy on model inputs."""

    def close(self) -> None:
        """Undo what the adapter installed; the default has nothing to undo."""

    @property
    def active(self) -> ActiveSet:
        return self._active

    @contextlib.contextmanager
    def observing(self, observers: Mapping[str, Any], running: Optional[ActiveSet] = None) -> Iterator[None]:
        """Within the block, runs stream every quantizer's tensor into its observer; nothing is
        quantized but what ``running`` names (AIMET-compatible calibration: the quantized weights)."""
        previous = self._active
        self.activate(FLOAT if running is None else running)
        self._observers = observers
        try:
            yield
        finally:
            self._observers = None
            self.activate(previous)

    @contextlib.contextmanager
    def memoized(self, budget: int) -> Iterator[Optional[Callable[[Iterable[str]], None]]]:
        """Within the block (the evaluations of one sweep, all against one reference: nothing on, or
        everything on), an adapter that can may skip recomputing what the quantizers that differ
        from the reference cannot have changed; the engine calls the yielded function with those
        quantizers before each evaluation. Results must equal full evaluations bit for bit. The
        default yields None: every evaluation runs in full."""
        yield None

    @contextlib.contextmanager
    def capturing(self, sink: Sink) -> Iterator[None]:
        """Within the block, every layer output (after its quantizer) is passed to sink(layer, i, array)."""
        self._capture = sink
        try:
            yield
        finally:
            self._capture = None

    # -- shared mechanics --

    def _bind_weight(self, name: str, value: Any) -> None:  # pragma: no cover - adapters with weights
        """Bind a prepared weight (None: the float original) to parameter quantizer ``name``."""
        raise NotImplementedError

    def _bind_weights(self, weights: Mapping[str, Any], names: Sequence[str]) -> None:
        """Bind each parameter in ``names`` to its prepared weight in ``weights`` or its original,
        touching only those whose value changes."""
        for name in names:
            value = weights.get(name)
            if self._bound.get(name) is not value:
                self._bind_weight(name, value)
                if value is None:
                    self._bound.pop(name, None)
                else:
                    self._bound[name] = value

    def _activation(self, name: str, array: Callable[[], np.ndarray]) -> Optional[np.ndarray]:
        """Observe or quantize one activation, as the current mode says: returns the quantized
        numpy array, or None when the tensor passes unchanged. ``array`` converts lazily."""
        if self._observers is not None:
            obs = self._observers.get(name)
            if obs is not None:
                obs.update(array())
            return None
        quantize = self._active.activations.get(name)
        return None if quantize is None else quantize(array())

    def _layer_outputs(self, layer: str, tensors: Sequence[Any], quantizers: Sequence[Quantizer],
                       is_float: Callable[[Any], bool], to_numpy: Callable[[Any], np.ndarray],
                       from_numpy: Callable[[np.ndarray, Any], Any]) -> List[Any]:
        """A layer's outputs after its output quantizers (the k-th float output gets the k-th
        quantizer), each float output then passed to the capture sink when one is set."""
        result: List[Any] = []
        k = 0
        for t in tensors:
            if is_float(t) and k < len(quantizers):
                quantized = self._activation(quantizers[k].name, lambda t=t: to_numpy(t))
                if quantized is not None:
                    t = from_numpy(quantized, t)
                k += 1
            result.append(t)
        if self._capture is not None:
            for i, t in enumerate(x for x in result if is_float(x)):
                self._capture(layer, i, to_numpy(t))
        return result
