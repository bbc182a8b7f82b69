"""qa: find where a neural network loses accuracy when quantized, and show it.

``import qa`` needs only numpy; PyTorch, Keras and onnxruntime are imported by their
adapters (``qa.adapters.torch|keras|onnx``) only when a model of theirs is analysed.

Example:
    >>> import qa
    >>> qa.QuantScheme.parse("tf_enhanced").value
    'tf_enhanced'
"""

import importlib
from typing import Any

from ._version import __version__
from .errors import QACallbackError, QAError, QAValueError

__all__ = ["__version__", "QuantAnalyzer", "CallbackFunc", "QuantScheme", "AnalysisResult", "QuantSim",
           "QAError", "QAValueError", "QACallbackError", "RayExecutor", "kernels"]

_LAZY = {"QuantAnalyzer": ".analyzer", "AnalysisResult": ".analyzer", "CallbackFunc": ".sim",
         "QuantScheme": ".sim", "QuantSim": ".sim", "RayExecutor": ".executors"}


def __getattr__(name: str) -> Any:
    # Submodules load the C++ extension; import them on first use (qa.executors imports Ray
    # only when a RayExecutor is made).
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    if name == "kernels":
        return importlib.import_module(".kernels", __name__)
    raise AttributeError(f"module 'qa' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
