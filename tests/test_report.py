"""The HTML report (qa.report): every page, offline, rebuilt from JSON alone, safe with hostile names."""

import html
import json
import logging
import re
import shutil
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("altair")
pytest.importorskip("vl_convert")

import qa.report  # noqa: E402
from qa.cli import main as qa_main  # noqa: E402
from qa.errors import QAError  # noqa: E402
from qa.report import ResultsDir, build_html, sanitize, try_build_html  # noqa: E402

BUNDLE = "_static/qa_vega.js"
HOSTILE = ["<script>alert(1)</script>", 'say "hi" & <b>bold</b>', "../../escaped", "..", "/etc/passwd",
           "卷积层\u2028ü", "</script><script>alert(2)</script>", "normal.layer"]
TAGS = {"html", "head", "meta", "title", "link", "script", "body", "nav", "a", "main", "h1", "h2", "h3", "p",
        "div", "span", "figure", "figcaption", "ul", "ol", "li", "b", "br", "code", "table", "thead", "tbody",
        "tr", "th", "td", "details", "summary", "footer", "button"}


# ---- a results folder written the way analyze writes it, without needing torch --------------

def _hist(lo, hi, n, rng, emin, emax, bins=2048):
    counts = np.histogram(np.clip(rng.normal((lo + hi) / 2, (hi - lo) / 6, n), lo, hi), bins=bins, range=(lo, hi))[0]
    edges = np.linspace(lo, hi, bins + 1)
    mids = (edges[:-1] + edges[1:]) / 2
    clipped = counts[(mids < emin) | (mids > emax)].sum() / counts.sum()
    return {"edges": edges, "counts": counts, "encoding_min": emin, "encoding_max": emax, "clipped_fraction": clipped}


def write_results(root, names, *, culprit=None, channels=4, seed=0):
    """A complete results folder: per-tensor and per-channel weights, activations, MSE, histograms."""
    rng = np.random.default_rng(seed)
    out = ResultsDir(root)
    culprit = culprit or names[0]
    layers, enabled, disabled, mse, sqnr, weights, acts, encodings = [], {}, {}, {}, {}, {}, {}, {}
    for i, name in enumerate(names):
        w, a = f"{name}_weight", f"{name}_output_0"
        layers.append({"name": name, "type": "Conv2d", "op_type": "Conv", "quantizers": [a, w]})
        bad = name == culprit
        enabled[name] = 70.0 if bad else 89.5 - 0.1 * i
        disabled[name] = 80.0 if bad else 71.0 + 0.1 * i
        mse[name] = 0.5 if bad else 0.01 * (i + 1)
        sqnr[name] = 3.0 if bad else 20.0 - i
        if i % 2:  # per channel
            lo = -np.abs(rng.normal(1, 0.3, channels))
            hi = np.abs(rng.normal(1, 0.3, channels))
            weights[w] = {f"{w}_{c}": [float(x), float(y)] for c, (x, y) in enumerate(zip(lo, hi))}
            encodings[w] = [{"min": float(x), "max": float(y), "scale": float((y - x) / 15), "offset": -8,
                             "bitwidth": 4, "is_symmetric": "True"} for x, y in zip(lo, hi)]
            record = {"channels": [_hist(x * 1.2, y * 1.2, 300, rng, x, y) for x, y in zip(lo, hi)]}
        else:
            weights[w] = [-1.0, 0.875]
            encodings[w] = {"min": -1.0, "max": 0.875, "scale": 0.125, "offset": -8, "bitwidth": 4,
                            "is_symmetric": "True"}
            record = _hist(-1.3, 1.2, 500, rng, -1.0, 0.875)
        out.write_json(record, "weights_pdf", name, "weight.json")
        acts[a] = [0.0, 6.0]
        encodings[a] = {"min": 0.0, "max": 6.0, "scale": 6 / 255, "offset": 0, "bitwidth": 8, "is_symmetric": "False"}
        out.write_json(_hist(0.0, 9.0, 5000, rng, 0.0, 6.0), "activations_pdf", f"{a}.json")
    summary = {"schema_version": 1, "quant_scheme": "tf_enhanced", "default_param_bw": 4, "default_output_bw": 8,
               "fp32_score": 90.0, "weight_quantized_score": 72.0, "activation_quantized_score": 89.0,
               "quantized_score": 71.0, "per_layer_quant_enabled": enabled, "per_layer_quant_disabled": disabled,
               "weight_ranges": weights, "activation_ranges": acts, "per_layer_mse": mse, "per_layer_sqnr_db": sqnr,
               "layers": layers, "encodings": encodings, "unquantized_ops": ["add <b>"],
               "folded_batch_norms": [["bn</script>", names[0]]], "status": "complete", "error": None,
               "seconds": {"calibration": 0.5}}
    out.write_json(summary, "summary.json")
    out.write_json(enabled, "per_layer_quant_enabled.json")
    out.write_json(disabled, "per_layer_quant_disabled.json")
    out.write_json(mse, "per_layer_mse_loss.json")
    out.write_json(weights, "min_max_ranges", "weights.json")
    out.write_json(acts, "min_max_ranges", "activations.json")
    return out.root


def pages(root):
    return sorted(p for p in Path(root).rglob("*.html"))


def rel(root, paths):
    return sorted(str(p.relative_to(root).as_posix()) for p in paths)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self.urls = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "script":
            self.scripts.append(attrs)
        for key in ("href", "src"):
            if key in attrs:
                self.urls.append(attrs[key])


def parse(page):
    p = _Tags()
    p.feed(page.read_text(encoding="utf-8"))
    return p


def check_page_is_offline_and_safe(root, page):
    """The checks every page must pass; returns the parsed page."""
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text, page
    parsed = parse(page)
    for tag, attrs in parsed.tags:
        assert tag in TAGS, (page, tag)
        assert not any(a.startswith("on") for a in attrs), (page, tag, attrs)
    srcs = [s["src"] for s in parsed.scripts if "src" in s]
    assert srcs and srcs[0].endswith(BUNDLE), page  # the bundle, by a relative path, first
    for s in parsed.scripts:
        assert "src" in s or s.get("type") == "application/json", (page, s)
    for url in parsed.urls:  # every link and script is relative and names a file inside results_dir
        assert not re.match(r"^[a-z]+:|^/", url), (page, url)
        target = (page.parent / url.split("#")[0]).resolve()
        assert target.is_file() and root.resolve() in target.parents, (page, url)
    assert text.count("<script") == text.count("</script>") == len(parsed.scripts), page
    assert len(text) < 2_000_000 and "vegaEmbed=" not in text.replace(" ", ""), page  # the bundle is not inlined
    return parsed


# ---- the tests --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    (base / "outside").mkdir()
    root = write_results(base / "results", HOSTILE, culprit=HOSTILE[2])
    before = {p for p in base.rglob("*")}
    files = build_html(root)
    return base, root, files, before


def test_every_page_is_written(hostile):
    base, root, files, _ = hostile
    written = rel(root, [f for f in files if f.suffix == ".html"])
    assert written == rel(root, pages(root))
    expected = {"index.html", "per_layer_quant_enabled.html", "per_layer_quant_disabled.html",
                "per_layer_mse_loss.html", "min_max_ranges/weights.html", "min_max_ranges/activations.html"}
    for name in HOSTILE:  # a histogram page beside every histogram JSON
        expected.add(f"weights_pdf/{sanitize(name)}/weight.html")
        expected.add(f"activations_pdf/{sanitize(name + '_output_0')}.html")
    for i, name in enumerate(HOSTILE):
        if i % 2:
            expected.add(f"min_max_ranges/{sanitize(name + '_weight')}.html")
    assert set(written) == expected
    assert (root / BUNDLE).stat().st_size > 100_000
    assert len(list(root.rglob("*.js"))) == 2  # the Vega bundle and the page script, once per folder


def test_hostile_names_stay_inside_results_dir_and_escaped(hostile):
    base, root, files, before = hostile
    new = {p for p in base.rglob("*")} - before
    assert new and all(root in p.parents for p in new)
    assert not any((base / "outside").iterdir())
    for p in root.rglob("*"):
        assert re.fullmatch(r"[A-Za-z0-9_.]+", p.name), p
    for page in pages(root):
        text = page.read_text(encoding="utf-8")
        parsed = check_page_is_offline_and_safe(root, page)
        assert "<script>alert" not in text and "<b>bold" not in text and "<b>\"" not in text, page
        assert 'say "hi"' not in text, page  # a raw quote could end an attribute
        for tag, attrs in parsed.tags:  # no name leaked into markup, only into text and JSON data
            for value in attrs.values():
                assert not any(n in (value or "") for n in HOSTILE if len(n) > 2), (page, tag, value)
    # The names survive intact in the data: HTML-escaped in text, JSON-escaped in the chart specs.
    index = (root / "index.html").read_text(encoding="utf-8")
    # (Jinja2 escapes '"' as &#34;, as html.escape's &quot; before it: the same character)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index and "say &#34;hi&#34; &amp; &lt;b&gt;bold" in index
    specs = re.findall(r'<script type="application/json" id="[^"]+">(.*?)</script>', index, re.S)
    shown = set()

    def strings(v):
        if isinstance(v, dict):
            for x in v.values():
                yield from strings(x)
        elif isinstance(v, list):
            for x in v:
                yield from strings(x)
        elif isinstance(v, str):
            yield v

    for spec in specs:
        shown |= set(strings(json.loads(spec)))
    assert HOSTILE[0] in shown and "../../escaped" in shown and "卷积层\u2028ü" in shown


def test_dashboard_names_the_culprit_and_what_to_try(hostile):
    _, root, _, _ = hostile
    index = (root / "index.html").read_text(encoding="utf-8")
    verdict = index[index.index('class="card verdict'):index.index("</ol>")]
    assert "Quantization costs 19" in verdict and "Weights cause it" in verdict
    assert "Start with ../../escaped" in verdict and "per channel" in verdict
    assert 'id="culprit-1"' in index and "alone \u221220" in index and "in float +9" in index
    assert "SQNR 3 dB" in index  # the evidence: its SQNR and the jump from the previous layer
    assert "Not quantized" in index and "add &lt;b&gt;" in index  # unquantized ops are called out
    for link in ("per_layer_quant_enabled.html", "per_layer_quant_disabled.html", "per_layer_mse_loss.html",
                 "min_max_ranges/weights.html", "min_max_ranges/activations.html", "summary.json"):
        assert f'href="{link}"' in index, link


def test_charts_have_tooltips_and_embed_valid_vega_lite(hostile):
    _, root, _, _ = hostile
    for page in [root / "index.html", root / "per_layer_quant_enabled.html", root / "per_layer_mse_loss.html",
                 root / "min_max_ranges" / "weights.html", *sorted((root / "weights_pdf").rglob("*.html"))[:2]]:
        specs = re.findall(r'<script type="application/json" id="[^"]+">(.*?)</script>', page.read_text("utf-8"), re.S)
        assert specs, page
        for text in specs:
            assert '"tooltip"' in text, page
            spec = json.loads(text)
            assert "$schema" not in spec and spec["datasets"], page


def test_qa_report_rebuilds_a_copied_folder_from_json_alone(hostile, tmp_path, capsys):
    _, root, _, _ = hostile
    copy = tmp_path / "elsewhere"
    shutil.copytree(root, copy)
    for p in pages(copy):
        p.unlink()
    shutil.rmtree(copy / "_static")
    assert qa_main(["report", str(copy)]) == 0
    assert "open" in capsys.readouterr().out
    assert rel(copy, pages(copy)) == rel(root, pages(root))
    for page in pages(copy):
        assert page.read_bytes() == (root / page.relative_to(copy)).read_bytes(), page  # deterministic
        check_page_is_offline_and_safe(copy, page)


def test_png_and_svg_export(tmp_path):
    root = write_results(tmp_path / "r", ["conv1", "conv2"], culprit="conv2")
    files = build_html(root, png=True, svg=True)
    png = [f for f in files if f.suffix == ".png"]
    svg = [f for f in files if f.suffix == ".svg"]
    assert (root / "charts" / "index_culprits.png") in png and (root / "charts" / "index_sensitivity.svg") in svg
    assert len(png) == len(svg) >= 10
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in png)
    assert all(f.read_text(encoding="utf-8").lstrip().startswith("<svg") for f in svg)


def test_aimet_style_folder_without_summary(tmp_path):
    out = ResultsDir(tmp_path)
    out.write_json({"conv1": 0.9, "fc": 0.5}, "per_layer_quant_enabled.json")
    out.write_json({"conv1_weight": [-1, 1], "fc_weight": {"fc_weight_0": [-1, 1], "fc_weight_1": [-2, 2]}},
                   "min_max_ranges", "weights.json")
    files = build_html(tmp_path)
    assert {"index.html", "per_layer_quant_enabled.html", "min_max_ranges/weights.html",
            "min_max_ranges/fc_weight.html"} <= set(rel(tmp_path, files))
    for page in pages(tmp_path):
        check_page_is_offline_and_safe(tmp_path, page)


def test_no_results_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(QAError, match="no qa results"):
        build_html(tmp_path)
    assert qa_main(["report", str(tmp_path)]) == 2
    assert "no qa results" in capsys.readouterr().err


def test_a_bad_histogram_file_skips_only_its_page(tmp_path, caplog):
    root = write_results(tmp_path / "r", ["a", "b"])
    (root / "activations_pdf" / "a_output_0.json").write_text('{"edges": [1], "counts": [1, 2]}')
    with caplog.at_level(logging.WARNING, logger="qa"):
        files = build_html(root)
    assert "a_output_0" in caplog.text
    assert (root / "index.html") in files and (root / "activations_pdf" / "b_output_0.html") in files
    assert not (root / "activations_pdf" / "a_output_0.html").exists()


def test_missing_altair_is_one_warning_and_the_json_stays(tmp_path, monkeypatch, caplog):
    root = write_results(tmp_path / "r", ["a"])
    before = {p: p.read_bytes() for p in root.rglob("*.json")}
    monkeypatch.setitem(sys.modules, "qa.report._html", None)  # import fails as without altair
    monkeypatch.delattr(qa.report, "_html", raising=False)
    with caplog.at_level(logging.WARNING, logger="qa"):
        assert try_build_html(root) == []
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "qa-quant[report]" in warnings[0].getMessage()
    assert {p: p.read_bytes() for p in root.rglob("*.json")} == before and not pages(root)
    with pytest.raises(QAError, match="altair"):
        build_html(root)


def test_a_failing_page_build_is_a_warning(tmp_path, monkeypatch, caplog):
    from qa.report import _html

    root = write_results(tmp_path / "r", ["a"])

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(_html, "build", broken)
    with caplog.at_level(logging.WARNING, logger="qa"):
        assert try_build_html(root) == []
    assert "boom" in caplog.text and (root / "summary.json").is_file()


def test_import_qa_report_does_not_import_altair():
    code = textwrap.dedent("""
        import sys, qa, qa.report, qa.analyzer
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("altair", "vl_convert", "jinja2")))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).anchor)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


class _Text(HTMLParser):
    """What a browser shows as text (entities decoded), and the JSON of the chart specs."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.text, self.specs, self._in_script = [], [], False

    def handle_starttag(self, tag, attrs):
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        (self.specs if self._in_script else self.text).append(data)


def test_names_with_markup_or_template_syntax_stay_literal_text(tmp_path):
    img, jinja = "<img src=x onerror=alert(1)>", "{{7*7}}"
    names = ["c0", img, "c2", jinja]  # odd places: per-channel weights; img is the culprit, both lose SQNR
    root = write_results(tmp_path / "r", names, culprit=img)
    build_html(root)
    img_html, jinja_html = "&lt;img src=x onerror=alert(1)&gt;", "{{7*7}}"
    kinds = {"index.html": (img, jinja), "per_layer_quant_enabled.html": (), "per_layer_quant_disabled.html": (),
             "per_layer_mse_loss.html": (img, jinja), "min_max_ranges/weights.html": (img, jinja),
             "min_max_ranges/activations.html": ()}
    for name in (img, jinja):  # the pages of one quantizer name it in their title and heading
        for page in (f"weights_pdf/{sanitize(name)}/weight.html", f"activations_pdf/{sanitize(name + '_output_0')}.html",
                     f"min_max_ranges/{sanitize(name + '_weight')}.html"):
            kinds[page] = (name,)
    assert set(kinds) <= set(rel(root, pages(root)))
    for page, shown in kinds.items():
        source = (root / page).read_text(encoding="utf-8")
        parsed = check_page_is_offline_and_safe(root, root / page)
        assert not any(tag == "img" for tag, _ in parsed.tags), page
        assert "<img" not in source, page
        reader = _Text()
        reader.feed(source)
        text = "".join(reader.text)
        for name in shown:  # shown as itself: escaped in the source, literal on screen
            assert name in text, (page, name)
            assert (img_html if name == img else jinja_html) in source, (page, name)
        if "per_layer" in page or "activations.html" in page:  # names only in the chart data
            strings = json.dumps([json.loads(s) for s in reader.specs if s.strip()], ensure_ascii=False)
            assert json.dumps(img)[1:-1] in strings and json.dumps(jinja)[1:-1] in strings, page


def culprit_cards(root):
    """The layer names of the dashboard's culprit cards, in their order."""
    index = (Path(root) / "index.html").read_text(encoding="utf-8")
    return [html.unescape(n) for n in re.findall(
        r'<div class="card culprit" id="culprit-\d+"><h3><span class="rank">#\d+</span><a [^>]*>([^<]*)</a>', index)]


def test_dashboard_ranks_culprits_with_qa_ranking(tmp_path):
    from qa import ranking

    names = [f"conv{i}" for i in range(8)]
    root = write_results(tmp_path / "r", names, culprit="conv5")
    summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    summary["per_layer_quant_enabled"].update(conv2=89.999, conv6=85.0)  # conv2: noise next to the top one
    summary["per_layer_quant_disabled"].update(conv2=71.0001, conv6=79.0)
    (root / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    build_html(root)
    expected = ranking.culprits(ranking.impacts(names, summary["fp32_score"], summary["quantized_score"],
                                                summary["per_layer_quant_enabled"],
                                                summary["per_layer_quant_disabled"]), 5)
    assert culprit_cards(root) == [i.name for i in expected]
    assert culprit_cards(root)[:2] == ["conv5", "conv6"] and "conv2" not in culprit_cards(root)


def test_sanitize_is_stable_and_keeps_unicode_names_apart():
    assert sanitize("conv1_weight") == "conv1_weight"  # a safe name stays as it is
    assert sanitize("layer1.0/conv..</script>") == "layer1_0_conv_script_8281d6b216"
    assert sanitize("卷积1") == "1_abd55bd0c0"  # a stable hash: the same in every process
    assert sanitize("卷积1") != sanitize("池化1") and sanitize("...") != sanitize("..")
    assert len(sanitize("x" * 1000)) <= 120 and sanitize("x" * 1000) != sanitize("x" * 1001)


def test_names_differing_only_in_punctuation_keep_their_own_histogram(tmp_path):
    """a-b, a.b and a_b used to share one file (a_b.json): the last written won for all three."""
    names = ["a-b", "a.b", "a_b"]
    assert len({sanitize(n) for n in names}) == 3 and sanitize("a_b") == "a_b"
    root = write_results(tmp_path / "r", names)
    files = {p.relative_to(root).as_posix() for p in root.rglob("*.json")}
    assert {f"activations_pdf/{sanitize(n + '_output_0')}.json" for n in names} <= files
    build_html(root)
    for n in names:  # each page shows its own quantizer
        page = (root / "activations_pdf" / f"{sanitize(n + '_output_0')}.html").read_text(encoding="utf-8")
        assert f"Activation histogram: {n}_output_0" in page


@pytest.mark.torch
def test_analyze_writes_the_html_of_a_real_model(tmp_path):
    torch = pytest.importorskip("torch")
    from torch import nn

    import qa

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential()
            self.body.add_module("<script>alert(1)</script>", nn.Conv2d(3, 6, 3))
            self.body.add_module('q"uote', nn.ReLU())
            self.body.add_module("卷积/x", nn.Conv2d(6, 6, 3, groups=6))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))

        def forward(self, x):
            return self.head(self.body(x))

    torch.manual_seed(0)
    net = Net().eval()
    data = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    with torch.no_grad():
        ref = [net(d) for d in data]

    def calibrate(model):
        with torch.no_grad():
            for d in data:
                model(d)

    def score(model):
        with torch.no_grad():
            return -float(sum(((model(d) - r) ** 2).mean() for d, r in zip(data, ref)))

    config = {"defaults": {"ops": {"is_output_quantized": "True"}, "params": {"is_symmetric": "True"},
                           "per_channel_quantization": "True"},
              "params": {"bias": {"is_quantized": "False"}}}
    analyzer = qa.QuantAnalyzer(net, data[0], calibrate, score, progress=False)
    analyzer.enable_per_layer_mse_loss(data, 2)
    root = tmp_path / "results"
    result = analyzer.analyze(default_param_bw=4, config_file=config, results_dir=root)
    assert result.status == "complete"
    html = [f for f in result.files if f.suffix == ".html"]
    assert (root / "index.html") in html
    for json_file in [*root.glob("activations_pdf/*.json"), *root.glob("weights_pdf/*/*.json")]:
        assert json_file.with_suffix(".html") in html, json_file
    for name in result.weight_ranges:  # per-channel weights get their channel-range page
        assert (root / "min_max_ranges" / f"{sanitize(name)}.html") in html, name
    assert {p for p in tmp_path.rglob("*") if p.is_file()} <= {p for p in root.rglob("*")}
    for page in pages(root):
        check_page_is_offline_and_safe(root, page)
        assert "<script>alert" not in page.read_text(encoding="utf-8")
    assert culprit_cards(root) == result.most_sensitive_layers(5)  # one ranking: summary, CLI, dashboard


# ---- trust: stale files, NaN scores, numbers that mean something, damaged folders ------------

def _edit_summary(root, **changes):
    path = Path(root) / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8"))
    summary.update(changes)
    path.write_text(json.dumps(summary), encoding="utf-8")
    return summary


def _verdict(root):
    """The dashboard's problems banner and verdict, as text."""
    index = (Path(root) / "index.html").read_text(encoding="utf-8")
    start = index.index("<h1>")
    reader = _Text()
    reader.feed(index[start:index.index("</ol>", start)])
    return " ".join("".join(reader.text).split())


def _strict_specs(page):
    """Every chart spec of a page, parsed as strict JSON (no NaN/Infinity), and all its numbers."""
    def refuse(token):
        raise AssertionError(f"{page}: {token} in a chart spec")

    numbers = []

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            numbers.append(v)

    text = Path(page).read_text(encoding="utf-8")
    specs = [json.loads(s, parse_constant=refuse)
             for s in re.findall(r'<script type="application/json" id="[^"]+">(.*?)</script>', text, re.S)]
    walk(specs)
    return specs, numbers


def test_only_the_files_summary_lists_are_read(tmp_path):
    """A folder reused by a second run: the first run's files are not this run's results."""
    root = write_results(tmp_path / "r", ["a", "b"])
    summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    del summary["per_layer_mse"]  # this run has no MSE: the file on disk is the first run's
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.json"))
    files = [f for f in files if f not in ("per_layer_mse_loss.json", "activations_pdf/a_output_0.json")]
    summary["files"] = files
    (root / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    written = rel(root, build_html(root))
    assert "per_layer_mse_loss.html" not in written and "activations_pdf/a_output_0.html" not in written
    assert "activations_pdf/b_output_0.html" in written
    assert 'href="per_layer_mse_loss.html"' not in (root / "index.html").read_text(encoding="utf-8")


def test_a_rebuild_removes_the_pages_of_the_last_build_only(tmp_path):
    root = write_results(tmp_path / "r", ["a", "b", "gone"])
    first = set(rel(root, build_html(root, png=True)))
    assert "activations_pdf/gone_output_0.html" in first and "charts/index_culprits.png" in first
    mine = {"notes.html": "mine", "weights_pdf/gone/readme.txt": "mine", "charts/mine.txt": "mine",
            "activations_pdf/mine.html.bak": "mine"}
    for name, text in mine.items():
        (root / name).write_text(text)
    summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    summary["layers"] = summary["layers"][:2]
    for key in ("per_layer_quant_enabled", "per_layer_quant_disabled", "per_layer_mse", "per_layer_sqnr_db"):
        summary[key].pop("gone")
    for key in ("weight_ranges", "encodings", "activation_ranges"):
        for name in ("gone_weight", "gone_output_0"):
            summary[key].pop(name, None)
    (root / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    for f in ("per_layer_quant_enabled.json", "per_layer_quant_disabled.json", "per_layer_mse_loss.json"):
        (root / f).unlink()
    before = {p: p.stat().st_ino for p in root.rglob("*") if p.is_file()}
    second = build_html(root)  # no --png this time
    assert not (root / "activations_pdf" / "gone_output_0.html").exists()
    assert not (root / "weights_pdf" / "gone" / "weight.html").exists()
    assert not (root / "charts" / "index_culprits.png").exists()
    assert (root / "activations_pdf" / "gone_output_0.json").is_file()  # JSON is the analyzer's, never the report's
    for name, text in mine.items():
        assert (root / name).read_text() == text, name
    # build_html returns exactly the files it wrote (every write is a new file renamed into place)
    changed = {p for p in root.rglob("*") if p.is_file() and before.get(p) != p.stat().st_ino}
    assert set(second) == changed and len(second) == len(set(second))
    assert (root / "_static" / "pages.json") in second


def test_nan_scores_are_null_in_json_and_named_first_on_the_dashboard(tmp_path):
    assert qa.report._plain([float("nan"), np.float32("inf"), -np.inf, 1.5]) == [None, None, None, 1.5]
    out = ResultsDir(tmp_path / "plain")
    out.write_json({"a": float("nan")}, "x.json")
    assert (tmp_path / "plain" / "x.json").read_text() == '{\n    "a": null\n}'
    names = [f"conv{i}" for i in range(5)]
    root = write_results(tmp_path / "r", names, culprit="conv1")
    summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    summary["per_layer_quant_enabled"]["conv3"] = None
    summary["nonfinite_scores"] = {"per_layer_quant_enabled": {"conv3": "nan"}}
    (root / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    build_html(root)
    verdict = _verdict(root)
    assert "Quantizing layer conv3 alone makes the score NaN: it is the worst layer." in verdict
    assert culprit_cards(root)[:2] == ["conv3", "conv1"]  # the NaN layer ranks first
    index = (root / "index.html").read_text(encoding="utf-8")
    assert "alone: score NaN" in index and "Not drawn: conv3" in index
    for page in pages(root):
        _strict_specs(page)
    assert "conv3</a> (NaN)" in (root / "per_layer_quant_enabled.html").read_text(encoding="utf-8")
    _edit_summary(root, fp32_score=None, nonfinite_scores={"scores": {"fp32_score": "nan"}})
    build_html(root)
    assert "The FP32 score is NaN: check the model and eval_callback." in _verdict(root)


def test_problems_and_nothing_quantized_are_said_at_the_top(tmp_path):
    root = write_results(tmp_path / "r", ["a", "b"])
    same = {"a": 90.0, "b": 90.0}
    _edit_summary(root, weight_quantized_score=90.0, activation_quantized_score=90.0, quantized_score=90.0,
                  per_layer_quant_enabled=same, per_layer_quant_disabled=same, active_quantizers=0,
                  problems=["no quantizer is active: nothing was quantized", "weights of a contain 12 NaN values"])
    build_html(root)
    verdict = _verdict(root)
    assert "Nothing was quantized" in verdict and "quantizes well" not in verdict and "costs little" not in verdict
    assert "Why: no quantizer is active: nothing was quantized" in verdict
    assert "weights of a contain 12 NaN values" in verdict  # the problems banner, above the verdict


def _scores(root, fp32, w, a, q, enabled, disabled):
    names = list(enabled)
    _edit_summary(root, fp32_score=fp32, weight_quantized_score=w, activation_quantized_score=a, quantized_score=q,
                  per_layer_quant_enabled=enabled, per_layer_quant_disabled=disabled,
                  layers=[{"name": n, "type": "Conv2d", "quantizers": [f"{n}_output_0", f"{n}_weight"]} for n in names])
    build_html(root)
    return _verdict(root), (Path(root) / "index.html").read_text(encoding="utf-8")


def test_scores_near_zero_get_no_percentage_and_conditional_advice(tmp_path):
    """An eval returning a negative MSE: -1e-9 in FP32, -7.7e-7 quantized (was: '1114136574750.6%')."""
    root = write_results(tmp_path / "r", ["a", "b"])
    verdict, index = _scores(root, -1e-9, -5e-7, -3e-7, -7.7e-7, {"a": -6e-7, "b": -5e-8}, {"a": -2e-7, "b": -7e-7})
    assert "Quantization costs 7.69e-07: -1.00e-09 in FP32, -7.70e-07 fully quantized." in verdict
    assert "%" not in verdict.split("Start with")[0] and "no percentage is given" in verdict
    assert "If a loss of 5.99e-07 matters for this metric, try:" in verdict  # advice, conditional on the metric
    assert "Try:</b>" not in index


def test_accuracy_in_percent_and_in_fractions_get_the_same_verdict(tmp_path):
    for scale, text in ((1.0, "Quantization costs 15.9 (18.2%): 87.4 in FP32, 71.5 fully quantized."),
                        (0.01, "Quantization costs 0.159 (18.2%): 0.874 in FP32, 0.715 fully quantized.")):
        root = write_results(tmp_path / str(scale), ["a", "b"])
        verdict, index = _scores(root, *(v * scale for v in (87.4, 72.0, 87.0, 71.5)),
                                 {"a": 72.3 * scale, "b": 87.2 * scale}, {"a": 86.9 * scale, "b": 71.6 * scale})
        assert text in verdict and "Start with a" in verdict and "Try: " in verdict
        assert "Try:</b>" in index and "no percentage" not in verdict


def test_a_loss_under_one_percent_suggests_no_change(tmp_path):
    root = write_results(tmp_path / "r", ["a", "b"])
    verdict, index = _scores(root, 87.4, 87.35, 87.4, 87.3, {"a": 87.32, "b": 87.39}, {"a": 87.38, "b": 87.3})
    assert "Quantization costs little" in verdict and "Try:" not in index
    assert "nothing needs to change for it" in index


@pytest.mark.parametrize("change, message", [
    ({"layers": 5}, "summary.json: layers: 5 is not of type 'array'"),
    ({"per_layer_quant_enabled": [1, 2]}, "summary.json: per_layer_quant_enabled: [1, 2] is not of type 'object'"),
    ({"fp32_score": "87.4"}, "summary.json: fp32_score: '87.4' is not a number"),
    ({"layers": [{"name": 5}]}, "summary.json: layers[0].name: 5 is not of type 'string'"),
    ({"per_layer_quant_disabled": {"a.b": "x"}}, 'summary.json: per_layer_quant_disabled["a.b"]: \'x\' is not a number'),
    ({"folded_batch_norms": "bn"}, "summary.json: folded_batch_norms: 'bn' is not of type 'array'"),
])
def test_a_wrong_type_names_the_file_and_field(tmp_path, capsys, change, message):
    root = write_results(tmp_path / "r", ["a", "b"])
    _edit_summary(root, **change)
    with pytest.raises(QAError) as info:
        build_html(root)
    assert str(info.value) == message
    assert qa_main(["report", str(root)]) == 2
    assert capsys.readouterr().err == f"qa report: {message}\n"


def test_absurd_values_are_left_out_with_a_note_not_a_crash(tmp_path, caplog):
    root = write_results(tmp_path / "r", ["a", "b", "c"])
    summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    summary["fp32_score"] = 1e308
    summary["quantized_score"] = -1e308
    summary["per_layer_quant_enabled"]["b"] = 10 ** 400
    summary["per_layer_mse"]["c"] = 1e308
    summary["encodings"]["a_weight"]["bitwidth"] = 1e300  # was an OverflowError (or a hang for a huge int)
    summary["encodings"]["a_output_0"]["bitwidth"] = 10 ** 300
    summary["default_param_bw"] = 10 ** 300
    summary["seconds"] = {"a": 1e308, "b": 1e308}
    (root / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    record = json.loads((root / "activations_pdf" / "b_output_0.json").read_text())
    record["counts"][3] = 1e308
    (root / "activations_pdf" / "b_output_0.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="qa"):
        files = rel(root, build_html(root))
    assert "index.html" in files and "activations_pdf/b_output_0.html" not in files
    assert "b_output_0" in caplog.text  # the damaged histogram: one warning, its page skipped
    index = (root / "index.html").read_text(encoding="utf-8")
    assert "Left out of this report" in index and "fp32_score = 1e+308 is beyond" in index
    for page in pages(root):  # every chart is strict JSON with numbers Vega can scale
        _, numbers = _strict_specs(page)
        assert all(abs(x) <= 1e100 for x in numbers), page
    assert "1e+300-bit" not in index and "inf" not in _verdict(root).lower()


def test_deep_nesting_and_huge_files_are_clear_errors(tmp_path, monkeypatch):
    root = write_results(tmp_path / "r", ["a"])
    (root / "summary.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(QAError, match=r"^summary.json: nested too deeply"):
        build_html(root)
    (root / "summary.json").write_text('{"layers": ' + "[" * 900 + "]" * 900 + "}")
    with pytest.raises(QAError, match=r"^summary.json: "):
        build_html(root)
    (root / "summary.json").write_text("{}")
    monkeypatch.setattr(qa.report, "MAX_READ_BYTES", 10)
    with pytest.raises(QAError, match=r"^per_layer_quant_enabled.json is \d+ bytes; qa reads result files of up to 10 "
                                      r"bytes$"):
        build_html(root)


def test_qa_report_reads_no_file_through_a_link(tmp_path, capsys):
    """A results folder received as a tarball: its JSON files may be links to private files."""
    secret = tmp_path / "private.json"
    secret.write_text(json.dumps({"SECRET_LAYER_NAME": 0.5}))
    root = tmp_path / "r"
    out = ResultsDir(root)
    out.write_json({"conv1": 0.9}, "per_layer_quant_disabled.json")
    (root / "per_layer_quant_enabled.json").symlink_to(secret)
    assert qa_main(["report", str(root)]) == 2
    assert capsys.readouterr().err == ("qa report: per_layer_quant_enabled.json is a symbolic link; qa reads only "
                                       "regular files inside the results folder\n")
    assert not any("SECRET_LAYER_NAME" in p.read_text(encoding="utf-8") for p in pages(root))
    (root / "per_layer_quant_enabled.json").unlink()
    (root / "min_max_ranges").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "weights.json").write_text(json.dumps({"SECRET_LAYER_NAME_weight": [-1, 1]}))
    assert qa_main(["report", str(root)]) == 2
    assert "min_max_ranges: it is a symbolic link" in capsys.readouterr().err
    assert not any("SECRET_LAYER_NAME" in p.read_text(encoding="utf-8") for p in pages(root))


def test_qa_report_on_a_missing_folder_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "no" / "such"
    assert qa_main(["report", str(missing)]) == 2
    assert capsys.readouterr().err == f"qa report: no qa results in {missing}: there is no such folder\n"
    assert not (tmp_path / "no").exists()
    with pytest.raises(QAError, match="there is no such folder"):
        build_html(missing)
    assert not (tmp_path / "no").exists()


def test_aimet_named_histograms_are_still_found(tmp_path):
    """A folder another tool wrote, with AIMET's file names (re.sub(r'\\W+', '_', name))."""
    out = ResultsDir(tmp_path)
    out.write_json({"layer1.conv": 0.9}, "per_layer_quant_enabled.json")
    out.write_json({"layer1.conv_output_0": [0.0, 6.0]}, "min_max_ranges", "activations.json")
    counts = [1, 5, 9, 5, 1]
    (tmp_path / "activations_pdf").mkdir()
    (tmp_path / "activations_pdf" / "layer1_conv_output_0.json").write_text(
        json.dumps({"lo": 0.0, "width": 1.5, "counts": counts, "encoding_min": 0.0, "encoding_max": 6.0}))
    files = rel(tmp_path, build_html(tmp_path))
    assert "activations_pdf/layer1_conv_output_0.html" in files
