"""Framework adapters (installed as qa.adapters): PyTorch, Keras 3 and ONNX behind one contract.

Each adapter is one module named after the framework it serves (``qa.adapters.torch`` for
``torch``), whose adapter class registers itself with :func:`register`. To pick an adapter for
a model, qa imports the adapter modules whose framework the user has imported already (a
framework is never imported just to test a model against it, as einops does) and asks each
registered adapter's ``is_model`` in turn. A model given as a file path names its framework
by its suffix (:data:`FILE_SUFFIXES`). A fourth framework is one new file here.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from typing import Any, Dict, List, Type

from ..errors import QAError, QAValueError

__all__ = ["register", "adapter_class", "registered", "FILE_SUFFIXES", "load_file"]

# A model file's suffix -> the framework (and adapter module) that reads it.
FILE_SUFFIXES: Dict[str, str] = {".onnx": "onnx", ".keras": "keras", ".h5": "keras", ".pt2": "torch"}
# the module of each framework's adapter with its ``load_file`` (qa analyze's model files)
_FILE_READERS = {"onnx": "onnx.files", "keras": "keras", "torch": "torch.files"}

_REGISTRY: List[Type[Any]] = []


def register(cls: Type[Any]) -> Type[Any]:
    """Class decorator: make an adapter class known to :func:`adapter_class`."""
    if cls not in _REGISTRY:
        _REGISTRY.append(cls)
        _REGISTRY.sort(key=lambda c: c.priority)
    return cls


def registered() -> List[Type[Any]]:
    """The adapter classes imported so far, in the order they are asked."""
    return list(_REGISTRY)


def _adapter_modules() -> List[str]:
    return [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]


def _import(name: str) -> None:
    try:
        importlib.import_module(f"{__name__}.{name}")
    except ImportError as e:
        raise QAError(f"analysing {name} models needs {name} and its runtime ({e}); "
                      f"pip install 'qa-quant[{name}]'") from e


def adapter_class(model: Any) -> Type[Any]:
    """The adapter class for ``model``.

    Raises:
        QAValueError: no adapter takes the model.
        QAError: the model is a file whose framework is not installed.

    Example:
        >>> adapter_class(42)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        qa.errors.QAValueError: unsupported model type builtins.int: ...
    """
    for name in _adapter_modules():
        if name in sys.modules:  # the user imported the framework: its models may be here
            _import(name)
    if isinstance(model, (str, os.PathLike)):
        framework = FILE_SUFFIXES.get(os.path.splitext(os.fspath(model))[1].lower())
        if framework is not None:
            _import(framework)
    for cls in _REGISTRY:
        if cls.is_model(model):
            return cls
    raise QAValueError(f"unsupported model type {type(model).__module__}.{type(model).__name__}: qa analyses "
                       f"torch.nn.Module models, Keras 3 keras.Model models (Functional or Sequential) "
                       f"and ONNX models (an onnx.ModelProto or the path of a .onnx file)")


def load_file(path: "os.PathLike[str]") -> Any:
    """The model file at ``path`` as a :class:`qa.data.ModelFile`, read by the adapter of the framework
    its suffix names (:data:`FILE_SUFFIXES`): the one way a framework reads a file in qa.

    Raises:
        QAValueError: a suffix no adapter reads.
        QAError: the framework is not installed.

    Example:
        >>> load_file("model.tflite")
        Traceback (most recent call last):
        ...
        qa.errors.QAValueError: model.tflite: no adapter reads '.tflite' files (.onnx, .keras, .h5, .pt2)
    """
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    framework = FILE_SUFFIXES.get(suffix)
    if framework is None:
        raise QAValueError(f"{os.fspath(path)}: no adapter reads '{suffix}' files ({', '.join(FILE_SUFFIXES)})")
    _import(framework)
    module = importlib.import_module(f"{__name__}.{_FILE_READERS[framework]}")
    return module.load_file(path)
