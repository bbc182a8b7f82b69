"""`qa demo`, the README's main job: real torch, the shipped model and images, end to end; it says
what it is doing from its first second on, and refuses a bad argument before PyTorch loads."""

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import qa
from qa import cli

OUTSIDE = Path(__file__).anchor  # not the checkout: `-m` would import qa from the source tree
FIRST_LINE = "qa demo: loading PyTorch and the demo CNN..."
FAST = 2.0  # seconds: an argument error, or the first line of a good run (torch takes longer to import)


def _lines(proc: subprocess.Popen) -> "queue.Queue":
    """stdout lines as they come, each with the time it arrived; None at the end."""
    lines: "queue.Queue" = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put((time.monotonic(), line.rstrip("\n")))
        lines.put((time.monotonic(), None))

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_qa_demo_reports_the_accuracy_drop_and_its_culprit(tmp_path):
    """The one full run: its first line comes at once, then a line per step, then the results."""
    pytest.importorskip("torch")
    out = tmp_path / "results"
    # The command as a user runs it, plus an audit hook that prints a marker on stdout when an
    # import statement first asks for torch (importlib.util.find_spec raises no such event).
    code = ("import sys\n"
            "def hook(event, args):\n"
            "    if event == 'import' and args[0] == 'torch' and 'torch' not in sys.modules:\n"
            "        print('<torch import starts>', flush=True)\n"
            "sys.addaudithook(hook)\n"
            "from qa.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", code, "demo", "--out", str(out), "--no-progress", "--recommend",
                             "--target", "0.03"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=OUTSIDE)
    try:
        lines = _lines(proc)
        arrived, first = lines.get(timeout=60)
        assert first == FIRST_LINE, first
        assert arrived - start < FAST, f"the first line took {arrived - start:.1f} s"
        stdout = [first]
        while True:
            _, line = lines.get(timeout=600)
            if line is None:
                break
            stdout.append(line)
        stderr = proc.stderr.read()
        assert proc.wait(timeout=60) == 0, "\n".join(stdout) + stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert stdout[1] == "<torch import starts>", stdout[:3]  # the first line came before torch loaded
    assert "Warning" not in stderr, stderr  # no spurious "not quantized" warnings for this CNN
    steps = ["calibrating the quantizers on 500 images", "evaluating on 2,000 images",
             "per-layer MSE and SQNR on 4 batches of 64 images, then the HTML report", "  FP32 accuracy"]
    at = [next((i for i, line in enumerate(stdout) if steps_line.strip() in line), None) for steps_line in steps]
    assert None not in at and at == sorted(at), (at, stdout)  # each step announced, in order, before results
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
    text = "\n".join(stdout)
    assert f"{summary['fp32_score']:6.2f} %" in text and "dwconv" in text and str(out) in text
    # --recommend: the per-channel fix the dashboard used to only advise, measured; the plan confirmed
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["target"] == {"relative": 0.03} and rec["evaluations"] > 3
    per_channel = next(c for c in rec["candidates"] if c["layer"] == "dwconv" and c["change"] == "per_channel")
    assert "dwconv_weight per channel" in text and f"{per_channel['score']:6.2f} %" in text
    plan = next(line for line in stdout if line.startswith("plan (*): "))
    assert ("target reached" in plan) == rec["plan"]["reached"] and f"{rec['plan']['score']:6.2f}".strip() in plan
    assert (out / "recommended_config.json").is_file() and (out / "recommended_config_aimet.json").is_file()


def _refused(*args):
    """`qa demo ARGS` under -X importtime: (seconds, stdout, the stderr lines that are not import times,
    the modules imported)."""
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "qa", "demo", *map(str, args)],
                         capture_output=True, text=True, timeout=60, cwd=OUTSIDE)
    seconds = time.monotonic() - start
    timed = [line for line in run.stderr.splitlines() if line.startswith("import time:")]
    modules = {line.split("|")[-1].strip() for line in timed}
    other = [line for line in run.stderr.splitlines() if not line.startswith("import time:")]
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr[-2000:])
    return seconds, run.stdout, other, modules


def _unwritable(tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root may write into any folder")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


@pytest.mark.parametrize("case, needle", [
    ("param-bw", "argument --param-bw: a bitwidth must be from 2 to 32, got 1"),
    ("output-bw", "argument --output-bw: a bitwidth must be from 2 to 32, got 33"),
    ("scheme", "argument --scheme: invalid choice: 'tf_enhance'"),
    ("mse-batches", "--mse-batches 9: the demo has 500 calibration images, 8 batches of 64; use 1 to 8"),
    ("target", "--target goes with --recommend"),
    ("target value", "argument --target: expected a number >= 0 such as 0.01 or abs=0.5, got '-1'"),
    ("out is a file", "is a file, not a folder"),
    ("out under a file", "cannot create the folder"),
    ("out not writable", "the folder is not writable"),
    ("out cannot be created", "cannot create the folder"),
])
def test_bad_arguments_fail_fast_before_torch_loads(tmp_path, case, needle):
    out = tmp_path / "out"
    args = {"param-bw": ["--param-bw", "1"], "output-bw": ["--output-bw", "33"],
            "scheme": ["--scheme", "tf_enhance"], "mse-batches": ["--mse-batches", "9"],
            "target": ["--target", "0.01"], "target value": ["--recommend", "--target=-1"]}.get(case, [])
    if case == "out is a file":
        out.write_text("a file")
    elif case == "out under a file":
        (tmp_path / "file").write_text("a file")
        out = tmp_path / "file" / "results"
    elif case == "out not writable":
        out = _unwritable(tmp_path)
    elif case == "out cannot be created":
        out = _unwritable(tmp_path) / "new" / "results"
    seconds, stdout, errors, modules = _refused("--out", out, *args)
    assert len(errors) == 1 and errors[0].startswith("qa demo: ") and needle in errors[0], errors
    assert stdout == ""  # refused before the first line: nothing started
    assert "torch" not in modules, sorted(m for m in modules if "torch" in m)
    assert seconds < FAST, f"refused after {seconds:.1f} s"
    if case in ("param-bw", "output-bw", "scheme", "mse-batches", "target", "target value"):
        assert not out.exists()  # nothing created


def test_the_limits_the_cli_checks_match_the_shipped_data():
    """`qa demo` knows the demo's data sizes without loading torch; they must be the shipped ones."""
    data = Path(qa.__file__).resolve().parent / "demo" / "data" / "fashion_mnist_subset.npz"
    with np.load(data, allow_pickle=False) as arrays:
        assert len(arrays["calibration_images"]) == cli.DEMO_CALIBRATION_IMAGES
    assert cli.DEMO_MSE_BATCHES * cli.DEMO_MSE_BATCH >= cli.DEMO_CALIBRATION_IMAGES
    assert (cli.DEMO_MSE_BATCHES - 1) * cli.DEMO_MSE_BATCH < cli.DEMO_CALIBRATION_IMAGES


@pytest.mark.parametrize("existing", [True, False])
def test_an_unwritable_out_is_refused_also_for_root(tmp_path, monkeypatch, capsys, existing):
    """Root writes anywhere, so the subprocess cases above skip for root; here os.access says no."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw))
    out = locked if existing else locked / "new" / "results"
    assert cli.main(["demo", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    want = (f"qa demo: --out {out}: the folder is not writable" if existing
            else f"qa demo: --out {out}: cannot create the folder, {locked} is not writable")
    assert captured.err.strip() == want
    assert not (locked / "new").exists()
