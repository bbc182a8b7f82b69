"""qa compare: two results folders side by side (qa.report.compare and the CLI).

The folders come from real small analyses: a PyTorch network (nested blocks, a module called twice,
functional attention, a GELU) at 8-bit and 4-bit weights, and its ONNX export (opset 17, where the
GELU is written out in five ops); and a network whose layer names are HTML, script and terminal
payloads. The pages render in headless Chromium with no console error and no network.
"""

import doctest
import hashlib
import html
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("altair")
pytest.importorskip("vl_convert")
from torch import nn  # noqa: E402

import qa  # noqa: E402
import qa.report.compare as qc  # noqa: E402
from qa.cli import main  # noqa: E402
from qa.errors import QAError  # noqa: E402
from qa.report import build_html  # noqa: E402
from qa.report._advice import fmt  # noqa: E402
from qa.report._load import LayerView  # noqa: E402
from qa.report.compare import METRICS, compare, match_layers, onnx_candidates, text_table, write_page  # noqa: E402

M = {m.key: m for m in METRICS}
SUMMARY_KEY = {"enabled": "per_layer_quant_enabled", "disabled": "per_layer_quant_disabled",
               "sqnr": "per_layer_sqnr_db", "local_sqnr": "per_layer_local_sqnr_db", "mse": "per_layer_mse"}
SCORE_KEY = {"fp32": "fp32_score", "weights": "weight_quantized_score", "activations": "activation_quantized_score",
             "quantized": "quantized_score"}
PAYLOADS = ['<img src=x onerror=alert(1)>', '"</script><script>alert(2)</script>', "esc\x1b[31mred",
            "ünïcødé 層", "a'b&c{{7*7}}", "bidi\u202eevil"]
TAGS = {"html", "head", "meta", "title", "link", "script", "body", "nav", "a", "main", "h1", "h2", "h3", "p", "div",
        "span", "figure", "figcaption", "ul", "ol", "li", "b", "br", "code", "table", "thead", "tbody", "tr", "th",
        "td", "details", "summary", "footer"}


# ---- real runs ----------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        return torch.softmax(self.q(x) @ self.k(x).transpose(-2, -1), -1) @ self.v(x)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()  # called twice: relu and relu/call_1 (ONNX: relu and relu_1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.bn1(self.conv1(x)))) + x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(Block(8), Block(8))
        self.attn = Attention(8)
        self.fc1, self.gelu, self.fc = nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)

    def forward(self, x):
        x = self.layer1(self.stem(x))
        t = x.flatten(2).transpose(1, 2)
        t = self.attn(t) + t
        return self.fc(self.gelu(self.fc1(t.mean(1))))


def _net():
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        for block in net.layer1:
            block.bn1.running_mean.uniform_(-0.5, 0.5)
            block.bn1.running_var.uniform_(0.5, 2.0)
    return net


def _torch_run(net, x, out, param_bw, mse=True):
    ref = net(x).detach()

    def evaluate(m):  # minus the output MSE vs FP32: every layer costs something
        with torch.no_grad():
            return -float(((m(x) - ref) ** 2).mean())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analyzer = qa.QuantAnalyzer(net, x[:1], lambda m: m(x), evaluate, progress=False)
        if mse:
            analyzer.enable_per_layer_mse_loss([x[:8], x[8:]], 2)
        analyzer.analyze("tf_enhanced", param_bw, 8, results_dir=out)
    return Path(out)


def _onnx_run(net, x, out):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x[:1],), buf, dynamo=False, opset_version=17, input_names=["input"],
                          dynamic_axes={"input": {0: "batch"}})
        proto = onnx.load_from_string(buf.getvalue())
        data, ref = x.numpy(), net(x).detach().numpy()

        def evaluate(session):
            return -float(((session.run(None, {"input": data})[0] - ref) ** 2).mean())

        analyzer = qa.QuantAnalyzer(proto, {"input": data[:1]}, lambda s: s.run(None, {"input": data}), evaluate,
                                    progress=False)
        analyzer.enable_per_layer_mse_loss([{"input": data[:8]}, {"input": data[8:]}], 2)
        analyzer.analyze("tf_enhanced", 8, 8, results_dir=out)
    return Path(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    net = _net()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return SimpleNamespace(w8=_torch_run(net, x, base / "w8", 8), w4=_torch_run(net, x, base / "w4", 4),
                           onnx=_onnx_run(net, x, base / "onnx"))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Two runs (8- and 4-bit weights) of a network whose module names are payloads."""
    base = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
              nn.Flatten(), nn.Linear(6, 3)]
    names = [PAYLOADS[0], PAYLOADS[2], PAYLOADS[1], PAYLOADS[3], "pool", "flat", PAYLOADS[4]]
    net = nn.Sequential()
    for name, layer in zip(names, layers):
        net.add_module(name, layer)
    net.add_module(PAYLOADS[5], nn.ReLU())
    net = net.eval()
    x = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    return SimpleNamespace(base=base, a=_torch_run(net, x, base / "a", 8, mse=False),
                           b=_torch_run(net, x, base / "b", 4, mse=False))


# ---- helpers ------------------------------------------------------------------------------------

def summary(root):
    return json.loads((Path(root) / "summary.json").read_text(encoding="utf-8"))


def tree(root):
    """Every file and folder under root: content hash (files) and modification time (both)."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        st = os.lstat(p)
        digest = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else None
        out[p.relative_to(root).as_posix()] = (digest, st.st_mtime_ns)
    out["."] = (None, os.lstat(root).st_mtime_ns)  # a write probe (create + delete) changes this
    return out


def ascii_signed(v):
    from qa.report._advice import signed
    return signed(v).replace("\u2212", "-").replace("\u00b1", "")


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.urls, self.text, self.specs, self._in = [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        self._in = tag if tag == "script" and attrs.get("type") == "application/json" else None
        for key in ("href", "src"):
            if key in attrs:
                self.urls.append(attrs[key])

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        (self.specs if self._in == "script" else self.text).append(data)


def check_page(page, allowed_roots):
    """Offline, safe markup: known tags, no event handlers, the bundle first by a relative path, every
    link relative and to a file inside one of allowed_roots. Returns the parsed page."""
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    parsed = _Tags()
    parsed.feed(text)
    for tag, attrs in parsed.tags:
        assert tag in TAGS, tag
        assert not any(a.startswith("on") for a in attrs), (tag, attrs)
    scripts = [a for t, a in parsed.tags if t == "script"]
    assert scripts[0].get("src", "").endswith("_static/qa_vega.js")
    assert all("src" in s or s.get("type") == "application/json" for s in scripts)
    assert text.count("<script") == text.count("</script>") == len(scripts)
    roots = [Path(r).resolve() for r in allowed_roots]
    for url in parsed.urls:
        assert not re.match(r"^[a-z]+:|^/", url), url
        target = (page.parent / unquote(url.split("#")[0])).resolve()
        assert target.is_file() and any(target == r or r in target.parents for r in roots), url
    return parsed


def _qa(*args):
    probe = ("import sys\nfrom qa.cli import main\ntry:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    code = e.code\nsys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", probe, *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).anchor)


def one_line_error(run, *needles):
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qa compare: "), run.stderr
    assert "Traceback" not in run.stderr and not run.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---- the comparison ---------------------------------------------------------------------------------

def test_same_network_at_two_bitwidths_lines_up_every_layer_by_name(runs):
    c = compare(runs.w8, runs.w4)
    sa, sb = summary(runs.w8), summary(runs.w4)
    assert c.onnx_side is None and c.by_rule == 0 and not c.only_a and not c.only_b
    assert [m.name for m in c.matched] == [layer["name"] for layer in sb["layers"]]
    assert all(m.how == "name" and m.a.name == m.b.name for m in c.matched)
    for row in c.scores:  # the four scores: A, B and B - A, as the files have them
        a, b = sa[SCORE_KEY[row.key]], sb[SCORE_KEY[row.key]]
        assert (row.a, row.b) == (a, b) and row.delta == pytest.approx(b - a)
    assert c.scores[1].delta < 0 and c.scores[3].delta < 0  # 4-bit weights lose
    assert c.scores[0].delta == 0 and c.scores[2].delta == 0  # FP32 and activations only: the same model
    order = {layer["name"]: i for i, layer in enumerate(sb["layers"])}
    for key, field in SUMMARY_KEY.items():
        metric = M[key]
        assert sb[field], field
        got = {ch.match.name: ch for ch in c.changes(metric)}
        expected = {}
        for name, b in sb[field].items():
            a = sa[field][name]
            expected[name] = 10 * math.log10(b / a) if metric.log else b - a
            assert got[name].delta == pytest.approx(expected[name], rel=1e-9, abs=1e-300), (key, name)
            assert (got[name].a, got[name].b) == (a, b)
        ranked = sorted((n for n, d in expected.items() if d), key=lambda n: (-abs(expected[n]), order[n]))
        assert [ch.match.name for ch in c.top(metric, 3)] == ranked[:3], key
    differ = {s.what: (s.a, s.b) for s in c.settings if s.differs}
    assert differ == {"default weight bitwidth": ("8", "4"), "weight bitwidths in use": ("8", "4")}


def test_culprit_rankings_side_by_side(runs, tmp_path):
    page = write_page(compare(runs.w8, runs.w4), tmp_path / "out", top=3)
    text = page.read_text(encoding="utf-8")
    for run, label in ((runs.w8, "a"), (runs.w4, "b")):
        card = text[text.index(f'class="card culprits-{label}"'):]
        card = card[:card.index("</table>")]
        names = [html.unescape(n) for n in re.findall(r'<td class="name mono"><a [^>]*>([^<]*)</a>', card)]
        assert names == summary(run)["most_sensitive_layers"][:3], label  # qa.ranking's order, as summary.json


def test_torch_against_its_onnx_export(runs):
    c = compare(runs.w8, runs.onnx)
    assert c.frameworks == ("torch", "onnx") and c.inferred == (True, True) and c.onnx_side == "b"
    pairs = {m.a.name: m.b.name for m in c.matched}
    assert pairs == {
        "stem": "/stem/Conv", "layer1.0.conv1": "/layer1/layer1.0/conv1/Conv",
        "layer1.0.relu": "/layer1/layer1.0/relu/Relu", "layer1.0.conv2": "/layer1/layer1.0/conv2/Conv",
        "layer1.0/add": "/layer1/layer1.0/Add", "layer1.0.relu/call_1": "/layer1/layer1.0/relu_1/Relu",
        "layer1.1.conv1": "/layer1/layer1.1/conv1/Conv", "layer1.1.relu": "/layer1/layer1.1/relu/Relu",
        "layer1.1.conv2": "/layer1/layer1.1/conv2/Conv", "layer1.1/add": "/layer1/layer1.1/Add",
        "layer1.1.relu/call_1": "/layer1/layer1.1/relu_1/Relu", "attn.q": "/attn/q/MatMul", "attn.k": "/attn/k/MatMul",
        "attn/matmul": "/attn/MatMul", "attn/softmax": "/attn/Softmax", "attn.v": "/attn/v/MatMul",
        "attn/matmul_1": "/attn/MatMul_1", "add": "/Add", "mean": "/ReduceMean", "fc1": "/fc1/Gemm", "fc": "/fc/Gemm"}
    assert all(m.how == "rule" for m in c.matched)
    # The GELU, written out by the exporter as five ops, is not paired with any of them: listed, with why.
    assert [m.a.name for m in c.only_a] == ["gelu"]
    assert "written out as 5 layers" in c.only_a[0].note and "none of its op type" in c.only_a[0].note
    only_b = {m.b.name: m.note for m in c.only_b}
    gelu = ["/gelu/Div", "/gelu/Erf", "/gelu/Add", "/gelu/Mul", "/gelu/Mul_1"]
    assert set(only_b) == {"/Reshape", "/Transpose", "/attn/Transpose", *gelu}
    assert all(only_b[n].startswith("not paired with gelu of the other run: one of 5") for n in gelu)
    assert not any(only_b[n] for n in ("/Reshape", "/Transpose", "/attn/Transpose"))
    # The same network: the weights-only score and every layer's score alone agree (float rounding only).
    scale = max(abs(r.a) for r in c.scores)
    assert abs(c.scores[1].delta) <= 1e-3 * scale
    changes = c.changes(M["enabled"])
    assert len(changes) == 19 and all(abs(ch.delta) <= 1e-3 * scale for ch in changes)  # swept: all but the adds
    framework = next(s for s in c.settings if s.what == "framework")
    assert framework.differs and (framework.a, framework.b) == ("torch", "onnx") and "inferred" in framework.note
    # Either order: the same pairs.
    r = compare(runs.onnx, runs.w8)
    assert r.onnx_side == "a" and {m.b.name: m.a.name for m in r.matched} == pairs
    assert [m.b.name for m in r.only_b] == ["gelu"] and {m.a.name for m in r.only_a} == set(only_b)


def test_the_onnx_rule_never_pairs_silently():
    def layers(*spec):
        return [LayerView(name, i, op, op) for i, (name, op) in enumerate(spec)]

    torch_side = layers(("conv", "Conv"), ("attn/matmul", "MatMul"), ("add", "Add"), ("block.gelu", "Gelu"),
                        ("fc", "Gemm"), ("head", "Gemm"))
    onnx_side = layers(("/conv/Relu", "Relu"),  # op types differ
                       ("/attn/MatMul_1", "MatMul"),  # the counter differs: attn/matmul_1 is no layer
                       ("/Add", "Add"), ("/Add_1", "Add"),  # one add only
                       ("/block/gelu/Mul", "Mul"), ("/block/gelu/Gelu", "Gelu"),  # one of its op type: that one
                       ("/fc/MatMul", "MatMul"),  # nn.Linear as MatMul+Add: Gemm and MatMul are one
                       ("/head/Relu", "Relu"), ("/head/Gemm", "Gemm"))
    matched, only_a, only_b = match_layers(torch_side, onnx_side, "b")
    assert {m.a.name: m.b.name for m in matched} == {"add": "/Add", "block.gelu": "/block/gelu/Gelu",
                                                      "fc": "/fc/MatMul", "head": "/head/Gemm"}
    assert {m.a.name for m in only_a} == {"conv", "attn/matmul"}
    notes = {m.b.name: m.note for m in only_b}
    assert set(notes) == {"/conv/Relu", "/attn/MatMul_1", "/Add_1", "/block/gelu/Mul", "/head/Relu"}
    assert notes["/conv/Relu"] == "not paired with conv of the other run: op types differ (Relu vs Conv)"
    assert "one of 2 ONNX layers" in notes["/block/gelu/Mul"]
    assert next(m for m in only_a if m.a.name == "conv").note.endswith("op types differ")
    # The same framework on both sides: exact names only, whatever the names look like.
    matched, only_a, only_b = match_layers(torch_side, onnx_side, None)
    assert not matched and len(only_a) == len(torch_side) and len(only_b) == len(onnx_side)
    # Exact names come first, and a layer is paired at most once.
    matched, _, only_b = match_layers(layers(("add", "Add")), layers(("add", "Add"), ("/Add", "Add")), "b")
    assert [(m.a.name, m.b.name, m.how) for m in matched] == [("add", "add", "name")]
    assert [m.b.name for m in only_b] == ["/Add"]
    assert onnx_candidates("/bert/encoder/layer.0/attention/self/query/MatMul")[0] == [
        "bert.encoder.layer.0.attention.self.query"]
    assert onnx_candidates("/features/features.0/features.0.1/Conv_2") == (
        ["features.0.1"], ["features.0.1/conv_2", "features.0.1/conv2d_2", "features.0.1/conv1d_2",
                           "features.0.1/conv3d_2"])


def test_docstring_examples():
    result = doctest.testmod(qc, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_a_nan_score_in_one_run_is_the_largest_change(runs, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(runs.w4, b)
    s = summary(b)
    name = list(s["per_layer_quant_enabled"])[3]
    s["per_layer_quant_enabled"][name] = None
    s["nonfinite_scores"] = {"per_layer_quant_enabled": {name: "nan"}, "scores": {"quantized_score": "nan"}}
    s["quantized_score"] = None
    (b / "summary.json").write_text(json.dumps(s), encoding="utf-8")
    c = compare(runs.w8, b)
    first = c.top(M["enabled"], 3)[0]
    assert first.match.name == name and first.flag == "NaN in B" and first.delta is None
    assert c.scores[3].b is None and c.scores[3].b_reason == "nan" and c.scores[3].delta is None
    table = text_table(c, 3)
    assert re.search(rf"^  {re.escape(name)} +\S+ +NaN +NaN in B$", table, re.M), table
    assert re.search(r"^  fully quantized +\S+ +NaN +n/a$", table, re.M), table
    text = write_page(c, tmp_path / "out").read_text(encoding="utf-8")
    assert f"Not drawn: {html.escape(name)} (NaN in B)" in text


def test_identical_runs_say_nothing_changed(runs, tmp_path):
    b = tmp_path / "copy"
    shutil.copytree(runs.w8, b)
    c = compare(runs.w8, b)
    assert not any(s.differs for s in c.settings) and all(r.delta == 0 for r in c.scores)
    assert all(not c.top(m, 10) for m in METRICS)
    table = text_table(c)
    assert "settings: the same" in table and "no change in the score with only this layer quantized" in table
    text = write_page(c).read_text(encoding="utf-8")
    assert text.count("No layer in both runs changed here") == 5


# ---- the command line --------------------------------------------------------------------------------

def test_cli_prints_the_table_and_writes_only_compare_html_into_run_b(runs, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs.w8, a)
    shutil.copytree(runs.w4, b)
    before_a, before_b, around = tree(a), tree(b), set(tmp_path.iterdir())
    assert main(["compare", str(a), str(b), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert tree(a) == before_a  # RUN_A is only read: not even a write probe touched its folder
    after = tree(b)
    assert set(after) - set(before_b) == {"compare.html"}
    assert all(after[k][0] == v[0] for k, v in before_b.items() if k != ".")  # _static/ was the same already
    assert set(tmp_path.iterdir()) == around
    lines = out.splitlines()
    c = compare(a, b)
    for row in c.scores:  # the four scores: A, B, B - A
        line = next(line for line in lines if line.strip().startswith(row.what))
        assert line.split()[-3:] == [fmt(row.a), fmt(row.b), ascii_signed(row.delta) or "0"], line
    for metric, head in ((M["enabled"], "score with only this layer quantized (top 3; A, B, B - A):"),
                         (M["disabled"], "score with all but this layer quantized (top 3; A, B, B - A):")):
        i = next(k for k, line in enumerate(lines) if line.endswith(head))
        top = c.top(metric, 3)
        assert len(top) == 3
        for line, ch in zip(lines[i + 1:i + 4], top):
            assert line.split() == [ch.match.name, fmt(ch.a), fmt(ch.b), ascii_signed(ch.delta)]
    assert "settings that differ: default weight bitwidth 8 vs 4; weight bitwidths in use 8 vs 4" in out
    assert "layers: 22 in both (22 by name); only in A: 0; only in B: 0" in out
    assert lines[-1] == f"open {b.resolve() / 'compare.html'} in a browser (works offline)"
    assert out.isascii()  # any terminal: no U+2212 minus, no other symbols but the layer names'
    check_page(b / "compare.html", [b, a])


def test_out_folder_gets_the_page_and_the_shared_static_files(runs, tmp_path):
    out = tmp_path / "reports" / "w8_vs_w4"
    before = tree(runs.w8), tree(runs.w4)
    assert main(["compare", str(runs.w8), str(runs.w4), "--out", str(out)]) == 0
    assert (tree(runs.w8), tree(runs.w4)) == before  # neither run is touched
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "_static/qa.css", "_static/qa.js", "_static/qa_vega.js", "compare.html"]
    assert (out / "_static/qa_vega.js").read_bytes() == (runs.w4 / "_static/qa_vega.js").read_bytes()
    parsed = check_page(out / "compare.html", [out, runs.w8, runs.w4])
    dashboards = {(out / unquote(u.split("#")[0])).resolve() for u in parsed.urls if "index.html" in u}
    assert dashboards == {runs.w8.resolve() / "index.html", runs.w4.resolve() / "index.html"}
    # A layer links to its row on its run's dashboard.
    assert any(u.endswith("w4/index.html#layer-0") for u in parsed.urls)


def test_the_report_leaves_the_comparison_page_alone(runs, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(runs.w4, b)
    page = write_page(compare(runs.w8, b))
    text = page.read_bytes()
    build_html(b)  # qa report: rewrites its own pages only
    assert page.read_bytes() == text


@pytest.mark.parametrize("case", ["missing_a", "missing_b", "file", "empty", "damaged", "not_json", "same",
                                  "same_via_link", "out_is_file", "top"])
def test_errors_are_one_line_and_write_nothing(runs, tmp_path, case):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs.w8, a)
    shutil.copytree(runs.w4, b)
    args, needles = [a, b], []
    if case == "missing_a":
        missing = tmp_path / "nope"
        args, needles = [missing, b], [f"RUN_A: no qa results in {missing}: there is no such folder"]
    elif case == "missing_b":
        args, needles = [a, tmp_path / "nope"], ["RUN_B: no qa results in", "no such folder"]
    elif case == "file":
        args, needles = [a, b / "summary.json"], ["RUN_B", "is a file, not a folder"]
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        args, needles = [tmp_path / "empty", b], ["RUN_A: no qa results in", "none of summary.json"]
    elif case == "damaged":
        s = summary(b)
        s["layers"] = 5
        (b / "summary.json").write_text(json.dumps(s))
        needles = [f"RUN_B ({b}): summary.json: layers: 5 is not of type 'array'"]
    elif case == "not_json":
        (a / "summary.json").write_text('{"layers": [')
        needles = [f"RUN_A ({a}): summary.json: not valid JSON"]
    elif case == "same":
        args, needles = [a, f"{a}/."], [f"RUN_A and RUN_B are the same folder ({a})"]
    elif case == "same_via_link":
        (tmp_path / "link").symlink_to(a, target_is_directory=True)
        args, needles = [tmp_path / "link", a], ["are the same folder"]
    elif case == "out_is_file":
        (tmp_path / "file").write_text("x")
        args, needles = [a, b, "--out", tmp_path / "file"], ["--out", "is a file, not a folder"]
    elif case == "top":
        args, needles = [a, b, "--top", "0"], ["argument --top: must be from 1 to 1000, got 0"]
    before = tree(tmp_path)
    one_line_error(_qa("compare", *args), *needles)
    assert tree(tmp_path) == before  # nothing written, nothing created (not even the missing folder)


def test_the_python_api_raises_qaerror(tmp_path):
    with pytest.raises(QAError, match="RUN_A: no qa results"):
        compare(tmp_path / "missing", tmp_path)


# ---- hostile names ---------------------------------------------------------------------------------

def test_hostile_names_stay_text_and_data(hostile, capsys):
    names = [layer["name"] for layer in summary(hostile.b)["layers"]]
    for payload in (PAYLOADS[0], PAYLOADS[1], PAYLOADS[2], PAYLOADS[5]):
        assert payload in names
    before = set(hostile.base.rglob("*"))
    assert main(["compare", str(hostile.a), str(hostile.b), "--top", "8"]) == 0
    out = capsys.readouterr().out
    assert set(hostile.base.rglob("*")) - before == {hostile.b / "compare.html"}
    # The terminal gets no escape sequence or bidi override: control characters are written out.
    assert "\x1b" not in out and "\u202e" not in out
    assert "esc\\x1b[31mred" in out and "bidi\\u202eevil" in out
    page = hostile.b / "compare.html"
    source = page.read_text(encoding="utf-8")
    parsed = check_page(page, [hostile.a, hostile.b])
    assert "<img" not in source and "<script>alert" not in source and "{{7*7}}" in html.unescape(source)
    assert "&lt;img src=x onerror=alert(1)&gt;" in source
    for tag, attrs in parsed.tags:  # names only in text and chart data, never in markup
        for value in attrs.values():
            assert not any(p in html.unescape(value or "") for p in PAYLOADS[:2]), (tag, attrs)
    text = "".join(parsed.text)
    assert PAYLOADS[0] in text and PAYLOADS[1] in text and PAYLOADS[4] in text
    data = json.dumps([json.loads(s) for s in parsed.specs], ensure_ascii=False)
    assert json.dumps(PAYLOADS[0])[1:-1] in data and json.dumps(PAYLOADS[1])[1:-1] in data


# ---- in a browser ------------------------------------------------------------------------------------

from test_report_browser import browser  # noqa: E402,F401  (one browser fixture)


def open_page(browser, path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    seen = SimpleNamespace(errors=[], outside=[], dialogs=[])
    page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.errors.append(str(e)))
    page.on("dialog", lambda d: (seen.dialogs.append(d.message), d.dismiss()))

    def route(r):
        if r.request.url.startswith(("file://", "data:", "blob:", "about:")):
            r.continue_()
        else:
            seen.outside.append(r.request.url)
            r.abort()
    page.route("**/*", route)
    page.goto(Path(path).as_uri())
    page.wait_for_load_state("load")
    return page, seen


def drawn(page, at_least):
    page.wait_for_function(f"document.querySelectorAll('svg.marks, canvas.marks').length >= {at_least}",
                           timeout=20000)
    return page.locator("svg.marks, canvas.marks").count()


def test_pages_draw_offline_and_the_rest_is_one_click_away(browser, runs, tmp_path):
    for b, name in ((runs.w4, "bitwidths"), (runs.onnx, "onnx")):
        out = tmp_path / name
        page_path = write_page(compare(runs.w8, b), out, top=3)
        page, seen = open_page(browser, page_path)
        try:
            closed = page.locator("details.more").count()
            assert closed == 5  # each measure: every layer behind one click
            first = drawn(page, 6)  # the scores and the top changes of five measures
            assert first == 6
            page.locator("details.more > summary").first.click()
            assert drawn(page, 7) == 7
            # The table sorts by a change: the largest first after two clicks (descending).
            header = page.locator("table.layers thead th").nth(2)
            header.click()
            header.click()
            values = [float(v) for v in page.locator("table.layers tbody tr td:nth-child(3)").evaluate_all(
                "cells => cells.map(c => c.getAttribute('data-v')).filter(v => v !== null)")]
            assert values == sorted(values, reverse=True) and len(values) >= 18
            assert not seen.errors and not seen.outside and not seen.dialogs, vars(seen)
        finally:
            page.close()


def test_hostile_names_do_not_run_in_the_browser(browser, hostile, tmp_path):
    page_path = write_page(compare(hostile.a, hostile.b), tmp_path / "out")
    page, seen = open_page(browser, page_path)
    try:
        drawn(page, 3)
        page.locator("details.more > summary").first.click()
        page.wait_for_timeout(300)
        assert page.locator("img[src=x]").count() == 0
        body = page.inner_text("body")
        assert PAYLOADS[0] in body and PAYLOADS[1] in body
        assert not seen.dialogs and not seen.errors and not seen.outside, vars(seen)
    finally:
        page.close()
