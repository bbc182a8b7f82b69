"""The installed package: layout, version, command line, and that `import qa` needs no framework."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import qa

FRAMEWORKS = ("torch", "keras", "tensorflow", "jax", "onnx", "onnxruntime", "altair", "vl_convert")


def run_python(code: str, cwd=None) -> subprocess.CompletedProcess:
    # Run outside the source tree by default, so `python -c` cannot import from the checkout.
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd=cwd or Path(__file__).anchor)


def test_import_qa_works_with_every_framework_missing():
    # A meta-path hook makes every framework import fail, as on a machine without them.
    result = run_python(f"""
        import sys
        BLOCKED = {FRAMEWORKS!r}
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked for the test: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        import qa, qa.kernels, qa.adapters
        x = np.linspace(-1, 1, 1000, dtype=np.float32)
        h = qa.kernels.Histogram(); h.update(x)
        enc = qa.kernels.compute_encoding(h, "tf_enhanced", 8)
        y = enc.fake_quantize(x)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("loaded:", loaded, "levels:", len(np.unique(y)))
    """)
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout
    levels = int(result.stdout.split("levels:")[1])
    assert 100 < levels <= 256


def _editable_install() -> bool:
    return any(m.startswith("_editable_skbc_qa") for m in sys.modules)


def test_adapters_are_installed_inside_qa():
    import qa.adapters

    assert qa.adapters.__name__ == "qa.adapters"
    assert Path(qa.adapters.__file__).parent.name == "adapters"
    if _editable_install():
        # scikit-build-core's editable finder serves qa.adapters from the checkout's adapters/.
        assert Path(qa.adapters.__file__).resolve().parent.parent == Path(qa.__file__).resolve().parent.parent
    else:
        # A wheel puts adapters/ inside the qa package and never at top level (taken on PyPI).
        assert Path(qa.adapters.__file__).parent.parent == Path(qa.__file__).parent
        found = run_python("import importlib.util; print(importlib.util.find_spec('adapters') is None)")
        assert found.stdout.strip() == "True", found.stderr


def test_extension_and_stub_are_installed():
    from qa import _core

    assert _core.__name__ == "qa._core" and callable(_core.fake_quant_per_tensor)
    assert (Path(qa.__file__).parent / "_core.pyi").exists()


def test_version_is_consistent():
    from importlib.metadata import version

    assert qa.__version__ == version("qa-quant")


def test_cli_version_and_selfcheck():
    outside = Path(__file__).anchor  # not the checkout: `-m` would import qa from the source tree
    out = subprocess.run([sys.executable, "-m", "qa", "--version"], capture_output=True, text=True, timeout=60,
                         cwd=outside)
    assert out.returncode == 0 and out.stdout.strip() == f"qa {qa.__version__}"
    out = subprocess.run([sys.executable, "-m", "qa", "selfcheck", "--elements", "200000"], capture_output=True,
                         text=True, timeout=120, cwd=outside)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all checks passed" in out.stdout
    assert "FAIL" not in out.stdout


def test_public_errors_are_value_errors():
    from qa import kernels

    with pytest.raises(qa.QAValueError) as info:
        kernels.fake_quantize([1.0], scale=0.0, offset=0, bitwidth=8, name="conv1.weight")
    assert isinstance(info.value, ValueError) and isinstance(info.value, qa.QAError)
    assert "conv1.weight" in str(info.value) and "scale" in str(info.value)
