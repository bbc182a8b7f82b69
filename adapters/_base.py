"""What every framework adapter shares: the observe and capture modes the engine switches on."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, Optional


class AdapterBase:
    """Mode switches common to all adapters.

    Subclasses set ``self._observers``, ``self._capture`` and ``self._quantize_fn`` to None in
    their constructor, implement ``set_active(names, quantize, rounding=...)``, and consult the
    two modes wherever a quantizer's tensor passes (a hook, an extra graph output).
    """

    _observers: Optional[Dict[str, Any]]
    _capture: Optional[Callable[[str, int, Any], None]]
    _quantize_fn: Optional[Callable[..., Any]]

    def set_active(self, names, quantize, rounding: str = "half_even") -> None:  # pragma: no cover
        raise NotImplementedError

    @contextlib.contextmanager
    def observing(self, observers: Dict[str, Any]) -> Iterator[None]:
        """Within the block, runs stream every quantizer's tensor into its observer (nothing quantized)."""
        self.set_active(set(), self._quantize_fn)
        self._observers = observers
        try:
            yield
        finally:
            self._observers = None

    @contextlib.contextmanager
    def capturing(self, sink: Callable[[str, int, Any], None]) -> Iterator[None]:
        """Within the block, every layer output (after its quantizer) is passed to sink(layer, i, array)."""
        self._capture = sink
        try:
            yield
        finally:
            self._capture = None
