"""The build decides whether qa's CUDA kernels are compiled, and says so in one status line.

Only CMake's configure step runs (seconds, nothing is compiled), with the defines scikit-build-core
passes. AUTO builds the kernels when nvcc is found and this machine has a GPU; a machine without
one must not spend minutes in nvcc. pybind11 is a build requirement that pip installs into the
isolated build environment only, so without it a stand-in package of one function is used (the
configure step creates targets, it compiles nothing). Skipped only when cmake is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

import pytest

CMAKE = shutil.which("cmake")
pytestmark = pytest.mark.skipif(CMAKE is None, reason="cmake is not installed")

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = "qa: CUDA kernels OFF: nvcc found but no GPU detected (set QA_CUDA=ON to build them anyway)"
NO_NVCC = "qa: CUDA kernels OFF: nvcc not found (QA_CUDA=AUTO"
FORCED_OFF = "qa: CUDA kernels OFF (QA_CUDA=OFF)"
AUTO_ON = "qa: CUDA kernels ON (QA_CUDA=AUTO: nvcc found and a GPU detected)"
MISSING = "/nonexistent/cuda/bin/nvcc"

STUB = """# A stand-in for pybind11's CMake package (tests/test_build.py: configure only, nothing is compiled).
set(pybind11_FOUND TRUE)
set(pybind11_VERSION 0.0)
function(pybind11_add_module name)
  add_library(${name} MODULE ${ARGN})
endfunction()
"""


def _nvcc_here() -> bool:
    """Whether CMakeLists.txt will find nvcc (the places it looks)."""
    if os.environ.get("CUDACXX"):
        return shutil.which(os.environ["CUDACXX"]) is not None or Path(os.environ["CUDACXX"]).is_file()
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    return shutil.which("nvcc") is not None or any(h and (Path(h) / "bin" / "nvcc").is_file() for h in homes)


def _gpu_here() -> bool:
    if Path("/dev/nvidia0").exists():
        return True
    smi = shutil.which("nvidia-smi") or ("/usr/lib/wsl/lib/nvidia-smi" if Path("/usr/lib/wsl/lib/nvidia-smi").exists()
                                         else None)
    if smi is None:
        return False
    try:
        run = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return run.returncode == 0 and "GPU " in run.stdout


NVCC, GPU = _nvcc_here(), _gpu_here()


def _fake_smi(folder: Path, lists_gpu: bool) -> Path:
    """An nvidia-smi that lists one GPU, or fails as it does on a machine whose driver sees none."""
    folder.mkdir()
    script = folder / "nvidia-smi"
    if lists_gpu:
        script.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)'\n")
    else:
        script.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the "
                          "NVIDIA driver.'\nexit 9\n")
    script.chmod(0o755)
    return folder


class Configured:
    def __init__(self, run: subprocess.CompletedProcess, build: Path) -> None:
        self.returncode, self.build = run.returncode, build
        self.stdout, self.stderr = run.stdout, run.stderr
        self.qa_lines = [line[3:] for line in run.stdout.splitlines() if line.startswith("-- qa: ")]
        self.error = " ".join(run.stderr.split())  # CMake wraps long error messages

    def __repr__(self) -> str:
        return f"exit {self.returncode}\n{self.stdout[-3000:]}\n{self.stderr[-3000:]}"


def _configure(build: Path, qa_cuda: str, pybind11_dir: str, env: Optional[Dict[str, str]] = None) -> Configured:
    cmd: List[str] = [CMAKE, "-S", str(ROOT), "-B", str(build), f"-DQA_CUDA={qa_cuda}",
                      f"-Dpybind11_DIR={pybind11_dir}", "-DSKBUILD=2", "-DCMAKE_BUILD_TYPE=Release",
                      f"-DPython_EXECUTABLE={sys.executable}", f"-DPython3_EXECUTABLE={sys.executable}",
                      "-DPython_FIND_REGISTRY=NEVER"]
    if shutil.which("ninja"):
        cmd += ["-G", "Ninja"]
    full_env = {k: v for k, v in os.environ.items() if k not in ("CMAKE_GENERATOR",)}
    full_env.update(env or {})
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=full_env)
    return Configured(run, build)


@pytest.fixture(scope="module")
def configured(tmp_path_factory) -> Dict[str, Configured]:
    """Every configure this module checks, run side by side (each takes a few seconds)."""
    tmp = tmp_path_factory.mktemp("cmake")
    try:
        import pybind11

        pybind11_dir = pybind11.get_cmake_dir()
    except ImportError:
        stub = tmp / "pybind11_stub"
        stub.mkdir()
        (stub / "pybind11Config.cmake").write_text(STUB)
        pybind11_dir = str(stub)
    path = os.environ.get("PATH", "")
    cases = {
        "auto": ("AUTO", {}),
        "off": ("OFF", {}),
        "auto, no nvcc": ("AUTO", {"CUDACXX": MISSING}),
        "on, no nvcc": ("ON", {"CUDACXX": MISSING}),
        "bad value": ("MAYBE", {}),
    }
    if NVCC and os.name != "nt":
        cases["auto, nvidia-smi lists a GPU"] = (
            "auto", {"PATH": f"{_fake_smi(tmp / 'smi_gpu', True)}{os.pathsep}{path}"})
        if not GPU:
            cases["auto, nvidia-smi fails"] = (
                "AUTO", {"PATH": f"{_fake_smi(tmp / 'smi_fails', False)}{os.pathsep}{path}"})
    with ThreadPoolExecutor(min(len(cases), os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(_configure, tmp / f"build{i}", mode, pybind11_dir, env)
                   for i, (name, (mode, env)) in enumerate(cases.items())}
        return {name: f.result() for name, f in futures.items()}


def _cuda_enabled(c: Configured) -> bool:
    return "The CUDA compiler identification" in c.stdout


def test_auto_builds_the_kernels_only_with_nvcc_and_a_gpu(configured):
    c = configured["auto"]
    assert c.returncode == 0, c
    decision = [line for line in c.qa_lines if line.startswith("qa: CUDA kernels")]
    assert len(decision) == 1, c
    if not NVCC:
        assert decision[0].startswith(NO_NVCC), c
    elif not GPU:  # this machine: nvcc, no GPU
        assert decision[0] == NO_GPU, c
        checks = [line for line in c.qa_lines if line.startswith("qa: GPU checks: ")]
        assert len(checks) == 1 and "no /dev/nvidia0" in checks[0] and "the device query says" in checks[0], c
    else:
        assert decision[0].startswith(AUTO_ON), c
    assert _cuda_enabled(c) == (NVCC and GPU), c  # without a GPU, CUDA is not even enabled: no nvcc at build time


def test_off_is_off_without_looking_for_nvcc_or_a_gpu(configured):
    c = configured["off"]
    assert c.returncode == 0, c
    assert c.qa_lines == [FORCED_OFF], c
    assert not _cuda_enabled(c) and not (c.build / "qa_gpu_probe").exists(), c


def test_auto_without_nvcc_says_so(configured):
    c = configured["auto, no nvcc"]
    assert c.returncode == 0, c
    assert c.qa_lines == [f"{NO_NVCC}; CUDACXX={MISSING} does not exist)"], c
    assert not _cuda_enabled(c), c


@pytest.mark.parametrize("case, message", [
    ("on, no nvcc", "qa: QA_CUDA=ON but no CUDA compiler (nvcc) was found (set CUDACXX or QA_CUDA=OFF)"),
    ("bad value", "qa: QA_CUDA must be AUTO, ON or OFF, got 'MAYBE'"),
])
def test_configure_errors(configured, case, message):
    c = configured[case]
    assert c.returncode != 0 and message in c.error, c


@pytest.mark.skipif(not NVCC or os.name == "nt", reason="needs nvcc (and a POSIX shell for a fake nvidia-smi)")
def test_auto_with_a_gpu_builds_the_kernels(configured):
    """A GPU that nvidia-smi lists turns AUTO on (the value is case-insensitive): CUDA is enabled."""
    c = configured["auto, nvidia-smi lists a GPU"]
    assert c.returncode == 0, c
    assert [line for line in c.qa_lines if line.startswith("qa: CUDA kernels")][0].startswith(AUTO_ON), c
    if not Path("/dev/nvidia0").exists():
        assert "qa: GPU checks: nvidia-smi -L lists a GPU" in c.qa_lines, c
    assert _cuda_enabled(c), c


@pytest.mark.skipif(not NVCC or GPU or os.name == "nt", reason="needs nvcc, no GPU, a POSIX shell")
def test_a_failing_nvidia_smi_is_no_gpu(configured):
    """Driver tools without a driver (or without a GPU): nvidia-smi fails, the device query agrees."""
    c = configured["auto, nvidia-smi fails"]
    assert c.returncode == 0, c
    assert NO_GPU in c.qa_lines, c
    checks = [line for line in c.qa_lines if line.startswith("qa: GPU checks: ")]
    assert checks and "nvidia-smi -L found no GPU" in checks[0], c
    assert not _cuda_enabled(c), c
