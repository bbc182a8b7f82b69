"""Per-layer sweeps on Ray (qa.RayExecutor, analyze(executor="ray")), on a real local Ray cluster.

Every case runs the same analysis locally and through Ray workers and compares the scores of both
sweeps exactly: the workers hold their own copies of the model with the driver's encodings, so
nothing may differ by even one bit. The callbacks record which process ran each evaluation (a file
per run), which shows that the sweeps really ran on the workers.

The test module's models and callbacks are sent to the workers by value (cloudpickle), as a user
script's are: the workers cannot import this module.
"""

from __future__ import annotations

import doctest
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
ray = pytest.importorskip("ray")
from torch import nn  # noqa: E402

import qa  # noqa: E402
import qa.executors  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SWEEPS = ("per_layer_quant_enabled", "per_layer_quant_disabled")


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    # as RayExecutor starts Ray: the workers import the installed qa, not the source checkout this
    # test suite runs in (Ray puts the driver's current directory first on the workers' path)
    from qa.executors import _init_with_installed_qa_first

    _init_with_installed_qa_first(ray, None, dict(num_cpus=2, include_dashboard=False, log_to_driver=False,
                                                  logging_level=logging.WARNING))
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


# ---- models and callbacks -----------------------------------------------------------------------

class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(16, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = self.pool(x).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNetTiny(nn.Module):
    """Residual branches: an identity shortcut and a projected one."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block1 = Block(8, 8, 1)
        self.block2 = Block(8, 16, 2)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.block2(self.block1(torch.relu(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


def _randomize_batch_norms(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def _model(kind):
    torch.manual_seed(0)
    model = SmallCNN() if kind == "cnn" else ResNetTiny()
    return _randomize_batch_norms(model).eval()


def _data():
    return torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def _score(model, data, record=None, delay=0.0, die_once=None, fail_on_workers=False):
    """The evaluation: closeness to the FP32 outputs. ``record``: a file each evaluation appends its
    process id to; ``die_once``: a marker file: the first worker to reach its second evaluation
    creates it and kills its own process (os._exit, no cleanup); ``fail_on_workers``: raise on any
    worker (and on the driver from the first sweep evaluation on)."""
    with torch.no_grad():
        reference = model(data)
    driver = os.getpid()
    state = {"n": 0}

    def score(m):
        state["n"] += 1
        if record is not None:
            with open(record, "a") as f:
                f.write(f"{os.getpid()}\n")
        if die_once is not None and os.getpid() != driver and state["n"] >= 2:
            try:
                fd = os.open(die_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os._exit(1)
        if fail_on_workers and (os.getpid() != driver or state["n"] > 4):
            raise ValueError("the evaluation data is gone")
        if delay:
            time.sleep(delay)
        with torch.no_grad():
            return -float((m(data) - reference).pow(2).mean())
    return score


def _analyze(kind, results_dir, executor=None, analyze_kwargs=None, **score_kwargs):
    model, data = _model(kind), _data()
    analyzer = qa.QuantAnalyzer(model, data[:1], lambda m: m(data), _score(model, data, **score_kwargs),
                                progress=False)
    return analyzer.analyze("tf_enhanced", default_param_bw=4, default_output_bw=8, results_dir=results_dir,
                            executor=executor, **(analyze_kwargs or {}))


def _pids(record):
    return [int(line) for line in Path(record).read_text().split()]


def _read(path):
    return json.loads(Path(path).read_text())


def _same_results(result, reference):
    assert result.status == "complete"
    for key in SWEEPS:
        got, want = getattr(result, key), getattr(reference, key)
        assert list(got) == list(want), key  # the same layers, in execution order
        assert got == want, key  # the same scores, bit for bit
        assert _read(result.results_dir / f"{key}.json") == _read(reference.results_dir / f"{key}.json")
    assert result.quantized_score == reference.quantized_score
    assert result.encodings == reference.encodings
    assert result.fingerprint == reference.fingerprint


# ---- without Ray, and what stays light ----------------------------------------------------------

def test_import_qa_never_imports_ray():
    code = textwrap.dedent("""
        import sys
        import qa, qa.analyzer, qa.executors
        qa.RayExecutor  # the lazy export resolves without importing Ray
        print("ray" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).anchor)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_executor_ray_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as when it is not installed
    model, data = _model("cnn"), _data()
    calibrations = []
    analyzer = qa.QuantAnalyzer(model, data[:1], lambda m: calibrations.append(m(data)), _score(model, data),
                                progress=False)
    with pytest.raises(qa.QAError, match=re.escape("pip install qa-quant[ray]")):
        analyzer.analyze("tf", results_dir=tmp_path, executor="ray")
    assert calibrations == []  # it fails before any work
    with pytest.raises(qa.QAError, match=re.escape("pip install qa-quant[ray]")):
        qa.RayExecutor(num_workers=2)


def test_executor_values(tmp_path):
    assert qa.executors.resolve_executor("local") is None
    with pytest.raises(qa.QAValueError, match="executor must be"):
        _analyze("cnn", tmp_path, executor="dask")
    for bad in ({"num_workers": 0}, {"num_workers": 1.5}, {"num_gpus_per_worker": -1}, {"max_worker_restarts": -1}):
        with pytest.raises(qa.QAValueError):
            qa.RayExecutor(**bad)


def test_docstring_examples():
    result = doctest.testmod(qa.executors, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ---- on the cluster -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cnn", "residual"])
def test_ray_sweeps_equal_local_sweeps(kind, cluster, tmp_path, caplog):
    local = _analyze(kind, tmp_path / "local", record=tmp_path / "local.pids")
    with caplog.at_level(logging.INFO, logger="qa"):
        executor = "ray" if kind == "cnn" else qa.RayExecutor(num_workers=2)
        remote = _analyze(kind, tmp_path / "ray", executor=executor, record=tmp_path / "ray.pids", delay=0.05)
    _same_results(remote, local)

    layers = len(local.per_layer_quant_enabled)
    assert layers >= 7
    pids = _pids(tmp_path / "ray.pids")
    driver = [p for p in pids if p == os.getpid()]
    workers = [p for p in pids if p != os.getpid()]
    assert len(driver) == 4  # FP32, weights-, activations-, fully quantized scores
    assert len(workers) == 2 * layers  # every sweep evaluation ran on a worker, once
    assert len(set(workers)) == 2
    assert remote.seconds["per_layer_enabled"] > 0 and remote.seconds["per_layer_disabled"] > 0
    text = caplog.text
    assert re.search(rf"per-layer enabling on Ray: {layers} evaluation\(s\) on [12] worker\(s\)", text)
    assert re.search(rf"per-layer disabling on Ray: {layers} evaluation\(s\) on [12] worker\(s\)", text)
    assert len(re.findall(r"Ray: worker \d \[.* pid \d+[^\]]*\] ready in", text)) == 2
    # each worker's memoized sweep ran (its statistics come back to the driver's log)
    assert re.search(r"Ray worker \d: memoized sweep: \d+ of \d+ calls replayed", text)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records if r.name == "qa")
    assert ray.is_initialized()  # the executor leaves a Ray it did not start running


def test_recommendation_candidates_run_on_the_workers_with_the_local_scores(cluster, tmp_path, caplog):
    """analyze(recommend=True, executor=...): the candidate fixes are derived on the driver, sent as
    the quantizers they change, rebuilt on the workers of the sweeps and scored there, bit for bit
    as locally (a target out of reach: several changes, so the combined plan is evaluated too)."""
    options = {"recommend": True, "target": {"absolute": 0.0}}
    local = _analyze("residual", tmp_path / "local", analyze_kwargs=options)
    with caplog.at_level(logging.INFO, logger="qa"):
        remote = _analyze("residual", tmp_path / "ray", executor=qa.RayExecutor(num_workers=2),
                          analyze_kwargs=options, record=tmp_path / "ray.pids")
    _same_results(remote, local)
    want, got = local.recommendation, remote.recommendation
    assert [(c.change.layer, c.change.kind, c.change.value, c.score) for c in got.candidates] == \
        [(c.change.layer, c.change.kind, c.change.value, c.score) for c in want.candidates]
    assert (got.score, got.plan_evaluated, got.evaluations) == (want.score, want.plan_evaluated, want.evaluations)
    assert want.plan_evaluated == "final" and want.evaluations > 3
    pids = _pids(tmp_path / "ray.pids")
    layers = len(local.per_layer_quant_enabled)
    assert len([p for p in pids if p != os.getpid()]) == 2 * layers + want.evaluations  # all on the workers
    assert re.search(rf"candidate evaluations on Ray: {want.evaluations - 1} evaluation\(s\)", caplog.text)
    assert _read(remote.results_dir / "recommended_config.json") == _read(local.results_dir / "recommended_config.json")


@pytest.mark.parametrize("restarts", [None, 0])
def test_a_worker_that_dies_has_its_layers_redone(restarts, cluster, tmp_path, caplog):
    local = _analyze("residual", tmp_path / "local")
    marker = tmp_path / "died"
    with caplog.at_level(logging.INFO, logger="qa"):
        # slow enough evaluations that a replacement worker is set up before the run ends
        remote = _analyze("residual", tmp_path / "ray", record=tmp_path / "ray.pids", die_once=marker,
                          delay=0.3 if restarts is None else 0.0,
                          executor=qa.RayExecutor(num_workers=2, max_worker_restarts=restarts))
    assert marker.exists()  # a worker really died mid-sweep
    _same_results(remote, local)
    died = [r for r in caplog.records if r.levelno == logging.WARNING and " died (" in r.getMessage()]
    assert len(died) == 1
    message = died[0].getMessage()
    assert re.search(r"its [1-9]\d* unfinished layer\(s\) are redone", message)
    if restarts == 0:
        assert "the other workers take over" in message
        assert len(set(_pids(tmp_path / "ray.pids")) - {os.getpid()}) == 2
    else:
        assert "a new worker (2) takes over" in message
        assert re.search(r"Ray: worker 2 \[.*\] ready in", caplog.text)
        assert len(set(_pids(tmp_path / "ray.pids")) - {os.getpid()}) == 3  # the replacement evaluated, too


def test_a_callback_error_on_a_worker_is_the_local_error(cluster, tmp_path):
    with pytest.raises(qa.QACallbackError) as local:
        _analyze("cnn", tmp_path / "local", fail_on_workers=True)
    with pytest.raises(qa.QACallbackError) as remote:
        _analyze("cnn", tmp_path / "ray", executor=qa.RayExecutor(num_workers=2), fail_on_workers=True)
    assert type(remote.value) is qa.QACallbackError  # not a Ray error type
    pattern = (r"eval_callback \(per-layer analysis by enabling quantizers, layer '([^']+)'\) failed: "
               r"ValueError: the evaluation data is gone")
    first = re.fullmatch(pattern, str(local.value)).group(1)
    layer = re.fullmatch(pattern, str(remote.value)).group(1)
    assert str(remote.value) == str(local.value).replace(repr(first), repr(layer))
    summary = _read(tmp_path / "ray" / "summary.json")
    assert summary["status"] == "failed" and "the evaluation data is gone" in summary["error"]
    assert ray.is_initialized()


SCRIPT = textwrap.dedent('''
    import sys, time, torch, qa
    results, counter, address, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
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

    executor = None if address == "local" else qa.RayExecutor(address=address, num_workers=2)
    analyzer = qa.QuantAnalyzer(net, x[:1], lambda m: m(x), evaluate, progress=False)
    analyzer.analyze(quant_scheme="tf_enhanced", default_param_bw=4, default_output_bw=8, results_dir=results,
                     executor=executor)
''')


def _start(tmp_path, results, counter, address, delay=0.0):
    script = tmp_path / "analysis.py"
    script.write_text(SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(results), str(counter), address, str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def _finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return err


def _count(counter):
    return len(Path(counter).read_text()) if Path(counter).exists() else 0


def test_a_killed_ray_run_resumes_from_what_it_wrote(cluster, tmp_path):
    _finish(_start(tmp_path, tmp_path / "full", tmp_path / "full.count", "local"))
    full_evaluations = _count(tmp_path / "full.count")

    # A driver on the cluster, killed (SIGKILL) once three layers of the enabling sweep are on disk.
    results = tmp_path / "killed"
    process = _start(tmp_path, results, tmp_path / "killed.count", cluster, delay=0.3)
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
    written = _read(sweep)
    assert 3 <= len(written) < 7
    assert _read(results / "summary.json")["status"] == "running"

    # Resumed through Ray again: the written layers are not evaluated again.
    _finish(_start(tmp_path, results, tmp_path / "resumed.count", cluster))
    summary = _read(results / "summary.json")
    assert summary["status"] == "complete"
    assert summary["reused_evaluations"] >= 4 + len(written)
    assert _count(tmp_path / "resumed.count") == full_evaluations - summary["reused_evaluations"]
    reference = _read(tmp_path / "full" / "summary.json")
    for key in ("per_layer_quant_enabled", "per_layer_quant_disabled", "quantized_score", "encodings", "fingerprint"):
        assert summary[key] == reference[key], key
    for key in SWEEPS:
        assert _read(results / f"{key}.json") == _read(tmp_path / "full" / f"{key}.json")


def test_onnx_model_through_ray(cluster, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    np = pytest.importorskip("numpy")
    import onnx_models as om

    proto = om.conv_bn_constants()
    path = tmp_path / "model.onnx"
    onnx.save(proto, str(path))
    name = proto.graph.input[0].name
    shape = [d.dim_value or 2 for d in proto.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
    session = ort.InferenceSession(proto.SerializeToString())
    refs = [session.run(None, {name: x})[0] for x in xs]

    def calibrate(s):
        for x in xs:
            s.run(None, {name: x})

    def score(s):
        return -float(sum(np.mean((s.run(None, {name: x})[0] - r) ** 2) for x, r in zip(xs, refs)))

    runs = {}
    for key, model, executor in (("local", proto, None), ("proto", proto, "ray"), ("path", str(path), "ray")):
        analyzer = qa.QuantAnalyzer(model, {name: xs[0]}, calibrate, score, progress=False)
        runs[key] = analyzer.analyze("tf_enhanced", default_param_bw=4, results_dir=tmp_path / key,
                                     executor=executor, resume=False)
    assert len(runs["local"].per_layer_quant_enabled) >= 5
    _same_results(runs["proto"], runs["local"])
    _same_results(runs["path"], runs["local"])
