"""`qa demo`, the README's main job: real torch, the shipped model and images, end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")


def test_qa_demo_reports_the_accuracy_drop_and_its_culprit(tmp_path):
    out = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "qa", "demo", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=600, cwd=Path(__file__).anchor)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Warning" not in run.stderr, run.stderr  # no spurious "not quantized" warnings for this CNN
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["schema_version"] >= 1
    # A visible drop, caused mostly by the depthwise conv (qa/demo/README.md explains why).
    assert summary["fp32_score"] - summary["quantized_score"] > 5
    assert summary["most_sensitive_layers"][0] == "dwconv"
    enabled = json.loads((out / "per_layer_quant_enabled.json").read_text())
    assert min(enabled, key=enabled.get) == "dwconv"
    mse = json.loads((out / "per_layer_mse_loss.json").read_text())
    order = [layer["name"] for layer in summary["layers"]]
    assert list(mse) == [name for name in order if name in mse] and set(enabled) <= set(mse)  # execution order
    for name in ("min_max_ranges/weights.json", "min_max_ranges/activations.json",
                 "per_layer_quant_disabled.json", "weights_pdf/dwconv/weight.json"):
        assert (out / name).is_file(), name
    text = run.stdout
    assert f"{summary['fp32_score']:6.2f} %" in text and "dwconv" in text and str(out) in text
