"""Finished work survives a kill: a real analysis process killed mid-sweep resumes to the same result."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

SCRIPT = textwrap.dedent('''
    import sys, time, torch, qa
    results, counter, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 8), torch.nn.Sigmoid(), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(64, 6)
    ref = net(x).detach()

    def evaluate(model):
        with open(counter, "a") as f:
            f.write("x")
        time.sleep(delay)
        with torch.no_grad():
            return -float((model(x) - ref).pow(2).mean())

    analyzer = qa.QuantAnalyzer(net, x[:1], lambda m: m(x), evaluate, progress=False)
    analyzer.analyze(quant_scheme="tf_enhanced", default_param_bw=4, default_output_bw=8, results_dir=results)
''')


def _run(tmp_path, results, counter, delay=0.0):
    script = tmp_path / "analysis.py"
    script.write_text(SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(results), str(counter), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def _read(path):
    return json.loads(Path(path).read_text())


def _evaluations(counter):
    return len(Path(counter).read_text()) if Path(counter).exists() else 0


def _wait(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out, err


def test_a_killed_analysis_resumes_to_the_same_result(tmp_path):
    # The uninterrupted reference run.
    _wait(_run(tmp_path, tmp_path / "full", tmp_path / "full.count"))
    full_evaluations = _evaluations(tmp_path / "full.count")

    # A run killed (SIGKILL: no cleanup, no finally) once the enabling sweep has finished three layers.
    results, counter = tmp_path / "killed", tmp_path / "killed.count"
    process = _run(tmp_path, results, counter, delay=0.25)
    sweep = results / "per_layer_quant_enabled.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if sweep.is_file() and len(_read(sweep)) >= 3:
            break
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.05)
    else:
        pytest.fail("the sweep never started")
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = _evaluations(counter)
    assert 4 + 3 <= killed_at < full_evaluations
    assert _read(results / "summary.json")["status"] == "running"  # what a killed run leaves

    # The re-run reuses what was finished and ends where the uninterrupted run ended.
    os.remove(counter)
    _wait(_run(tmp_path, results, counter))
    resumed_evaluations = _evaluations(counter)
    summary = _read(results / "summary.json")
    assert summary["status"] == "complete"
    assert summary["reused_evaluations"] >= 7
    assert resumed_evaluations == full_evaluations - summary["reused_evaluations"]
    reference = _read(tmp_path / "full" / "summary.json")
    for key in ("fp32_score", "weight_quantized_score", "activation_quantized_score", "quantized_score",
                "per_layer_quant_enabled", "per_layer_quant_disabled", "encodings", "fingerprint"):
        assert summary[key] == reference[key], key
    for name in ("per_layer_quant_enabled.json", "per_layer_quant_disabled.json", "min_max_ranges/weights.json"):
        assert _read(results / name) == _read(tmp_path / "full" / name), name
