"""The examples in public docstrings run and print what they claim (doctest on the installed qa)."""

import doctest
import importlib

import pytest

MODULES = ["qa", "qa.kernels", "qa.encodings", "qa.observers", "qa.sim", "qa.config", "qa.report", "qa.analyzer"]
TORCH_MODULES = ["qa.adapters.torch"]


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
