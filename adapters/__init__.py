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

__all__ = ["register", "adapter_class", "registered", "FILE_SUFFIXES"]

# A model file's suffix -> the framework (and adapter module) that reads it.
FILE_SUFFIXES: Dict[str, str] = {".onnx": "onnx"}

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
