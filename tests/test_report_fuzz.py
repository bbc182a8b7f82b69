"""`qa report` on a damaged or hostile results folder: a report, or one line and exit status 2.

A real results folder (a tiny torch model through QuantAnalyzer) is mutated at random: JSON
values replaced by wrong types, huge or NaN-ish numbers, deep nesting, markup and template
syntax; files deleted, truncated, or replaced by links to files outside the folder. Whatever the
mutation, `qa report DIR` must exit 0, or 2 with one line on stderr and no traceback; write
nothing outside the folder; and put no injected markup into a page.
"""

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("altair")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import qa  # noqa: E402
from qa.cli import main as qa_main  # noqa: E402

SECRET = "SECRET-OUTSIDE-MARKER"
PAYLOAD = "</script><script>alert(1)</script>"
HOSTILE = [PAYLOAD, "{{7*7}}", "<img src=x onerror=alert(2)>", 5, -1, 0, 1e308, -1e308, 1e300, 10 ** 30, 10 ** 400,
           "nan", "inf", "-Infinity", "x", "", True, None, [], {}, [1, 2], {"a": 1}, [[[[[[[[]]]]]]]],
           {"name": PAYLOAD, "quantizers": [PAYLOAD]}, 2.5, 4.0, "True", ["a", "b", "c"]]
# The scripts a page may have: the Vega bundle, qa.js, and inert JSON chart specs.
ALLOWED_SCRIPT = re.compile(r'<script src="[^"]*_static/qa(_vega)?\.js"( defer)?>|<script type="application/json" '
                            r'id="qa-spec-\d+">')


@pytest.fixture(scope="module")
def real_results(tmp_path_factory):
    """One small but complete results folder: histograms (per channel too), ranges, MSE, pages."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(),
                        nn.Linear(64, 3)).eval()
    x = torch.randn(8, 3, 8, 8)
    ref = net(x).detach()

    def score(model):
        with torch.no_grad():
            return 90.0 - 1e3 * float(((model(x) - ref) ** 2).mean())

    analyzer = qa.QuantAnalyzer(net, x[:1], lambda m: m(x), score, progress=False)
    analyzer.enable_per_layer_mse_loss([x[:4], x[4:]], 2)
    config = {"defaults": {"ops": {"is_output_quantized": "True"}, "params": {"is_symmetric": "True"},
                           "per_channel_quantization": "True"}, "params": {"bias": {"is_quantized": "False"}}}
    root = tmp_path_factory.mktemp("fuzz") / "results"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = analyzer.analyze("tf_enhanced", 4, 8, config_file=config, results_dir=root)
    assert result.status == "complete"
    return root


def _json_files(root):
    inside = root.resolve()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.json")
                  if inside in p.resolve().parents and not p.relative_to(root).as_posix().startswith("_static/"))


def _paths(value, path=()):
    """Every place in a JSON value: (path, value)."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:40]):  # histogram counts are long; their first places are enough
            yield from _paths(v, path + (i,))


def _set(doc, path, value):
    if not path:
        return value
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def _deep(depth):
    return "[" * depth + "]" * depth


@st.composite
def mutations(draw):
    """A list of (kind, file index, place index, hostile value index) to apply in order."""
    kinds = st.sampled_from(["value", "value", "value", "value", "key", "delete", "truncate", "link", "deep",
                             "garbage", "link_dir", "plant", "unsummarized"])
    steps = draw(st.lists(st.tuples(kinds, st.integers(0, 10 ** 6), st.integers(0, 10 ** 6),
                                    st.integers(0, len(HOSTILE) - 1)), min_size=1, max_size=4))
    return steps


def _mutate(root, outside, steps):
    for kind, fi, pi, hi in steps:
        files = _json_files(root)
        if not files:
            return
        # summary.json a third of the time: it holds most of what the pages show
        rel = "summary.json" if fi % 3 == 0 and "summary.json" in files else files[fi // 3 % len(files)]
        path = root / rel
        if kind == "delete":
            path.unlink()
        elif kind == "truncate":
            text = path.read_bytes()
            path.write_bytes(text[: pi % max(len(text), 1)])
        elif kind == "link":  # the file becomes a link to a file outside the folder
            path.unlink()
            path.symlink_to(outside / "secret.json")
        elif kind == "link_dir":  # a subfolder becomes a link to a folder outside
            folder = path.parent
            if folder != root:
                shutil.rmtree(folder)
                folder.symlink_to(outside, target_is_directory=True)
        elif kind == "plant":  # links where qa writes: the old temp name, and a page
            page = path.with_suffix(".html")
            for planted in (path.with_name(f".{page.name}.tmp"), page):
                if planted.is_symlink() or planted.exists():
                    planted.unlink()
                planted.symlink_to(outside / "victim.html")
        elif kind == "unsummarized":  # the summary loses its copy of a file's data: the file is read
            try:
                doc = json.loads((root / "summary.json").read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError, RecursionError):
                continue
            keys = [k for k in ("per_layer_quant_enabled", "per_layer_quant_disabled", "per_layer_mse",
                                "weight_ranges", "activation_ranges") if isinstance(doc, dict) and k in doc]
            if keys:
                doc.pop(keys[pi % len(keys)])
                (root / "summary.json").write_text(json.dumps(doc), encoding="utf-8")
        elif kind == "deep":
            path.write_text(_deep(200_000 if pi % 2 else 900))
        elif kind == "garbage":
            path.write_bytes(bytes([pi % 256]) * 50 + b"\xff\xfe{")
        else:
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError):
                continue
            # a depth first, then a place at that depth: top-level keys are hit as often as deep ones
            by_depth = {}
            for where, _ in _paths(doc):
                by_depth.setdefault(len(where), []).append(where)
            depths = sorted(by_depth)
            level = by_depth[depths[pi % len(depths)]]
            where = level[pi // len(depths) % len(level)]
            if kind == "key" and where:  # a hostile key in place of an existing one
                parent = doc
                for key in where[:-1]:
                    parent = parent[key]
                if isinstance(parent, dict):
                    parent[str(HOSTILE[hi])] = parent.pop(where[-1])
            else:
                doc = _set(doc, where, HOSTILE[hi])
            path.write_text(json.dumps(doc), encoding="utf-8")


def _snapshot(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_pages(root):
    for page in root.rglob("*.html"):
        if page.is_symlink():  # a planted link qa refused to write through, untouched
            continue
        text = page.read_text(encoding="utf-8")
        assert SECRET not in text, page
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert ALLOWED_SCRIPT.fullmatch(tag), (page, tag)
        assert "<img" not in text and "<script>alert" not in text, page


def _run(root):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = qa_main(["report", str(root)])
    return code, err.getvalue()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    base = tmp_path_factory.mktemp("sandbox")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text(json.dumps({"conv": 1.0, SECRET: [0.0, 1.0]}))
    (outside / "victim.html").write_text("victim: must stay as it is")
    return base, outside


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=mutations())
def test_qa_report_on_a_mutated_folder_reports_or_fails_in_one_line(real_results, sandbox, steps):
    base, outside = sandbox
    root = base / "results"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(real_results, root, symlinks=True)
    _mutate(root, outside, steps)
    before = _snapshot(outside)
    code, err = _run(root)
    assert code in (0, 2), (code, err, steps)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("qa report: "), (err, steps)
    assert "Traceback" not in err
    assert _snapshot(outside) == before, steps  # nothing written outside the folder
    assert sorted(p.name for p in base.iterdir()) == ["outside", "results"]
    _check_pages(root)


def test_a_hostile_folder_in_a_real_process_fails_in_one_line(real_results, tmp_path):
    """The same as the command line runs it: a subprocess, exit status 2, one line, no traceback."""
    root = tmp_path / "results"
    shutil.copytree(real_results, root)
    summary = json.loads((root / "summary.json").read_text())
    summary["layers"] = 5
    (root / "summary.json").write_text(json.dumps(summary))
    run = subprocess.run([sys.executable, "-m", "qa", "report", str(root)], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).anchor)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.strip() == "qa report: summary.json: layers: 5 is not of type 'array'"
    (root / "summary.json").write_text(_deep(200_000))
    run = subprocess.run([sys.executable, "-m", "qa", "report", str(root)], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).anchor)
    assert run.returncode == 2 and run.stderr.strip() == "qa report: summary.json: nested too deeply to be a qa " \
                                                         "result file", run.stderr
    summary["layers"] = [{"name": PAYLOAD, "quantizers": []}]
    summary["problems"] = [PAYLOAD]
    (root / "summary.json").write_text(json.dumps(summary))
    run = subprocess.run([sys.executable, "-m", "qa", "report", str(root)], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).anchor)
    assert run.returncode == 0, run.stderr
    _check_pages(root)
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in (root / "index.html").read_text(encoding="utf-8")
