"""The examples in public docstrings run and print what they claim (doctest on the installed qa)."""

import doctest
import importlib
import os

import pytest

MODULES = ["qa", "qa.kernels", "qa.encodings", "qa.observers", "qa.sim", "qa.config", "qa.report", "qa.analyzer",
           "qa.ranking", "qa.folding", "qa.adapters"]
TORCH_MODULES = ["qa.adapters.torch"]
FRAMEWORK_MODULES = {"qa.adapters.keras": "keras", "qa.adapters.onnx": "onnxruntime"}


def _run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
    return result.attempted


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    _run(name)


@pytest.mark.parametrize("name", TORCH_MODULES)
def test_torch_docstring_examples(name):
    pytest.importorskip("torch")
    assert _run(name) > 0


@pytest.mark.parametrize("name", sorted(FRAMEWORK_MODULES))
def test_framework_docstring_examples(name):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip(FRAMEWORK_MODULES[name])
    assert _run(name) > 0
