"""The one error hierarchy of qa: every error qa raises is a QAError."""

from __future__ import annotations

__all__ = ["QAError", "QAValueError", "QACallbackError"]


class QAError(Exception):
    """Base class of every error qa raises on purpose."""


class QAValueError(QAError, ValueError):
    """A bad argument: wrong dtype, shape, axis, bitwidth, scale, or data qa cannot use."""


class QACallbackError(QAError, RuntimeError):
    """A user callback (calibration, evaluation, forward function) raised an exception."""
