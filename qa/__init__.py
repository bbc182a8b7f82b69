"""qa: find where a neural network loses accuracy when quantized, and show it.

``import qa`` needs only numpy; PyTorch, Keras and onnxruntime are imported by their
adapters (``qa.adapters.torch|keras|onnx``) only when used.

Example:
    >>> import qa
    >>> qa.__version__ >= "0.1"
    True
"""

from ._version import __version__
from .errors import QACallbackError, QAError, QAValueError

__all__ = ["__version__", "QAError", "QAValueError", "QACallbackError", "kernels"]


def __getattr__(name: str):
    # qa.kernels loads the C++ extension; import it on first use.
    if name == "kernels":
        import importlib

        return importlib.import_module(".kernels", __name__)
    raise AttributeError(f"module 'qa' has no attribute {name!r}")
