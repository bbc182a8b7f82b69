"""The report in a real browser: headless Debian Chromium opens every page of a real analysis.

Each page must draw its charts (Vega's SVG or canvas), log no console error, and make no
request that leaves the machine. A model whose layer names carry HTML/script payloads must
show them as text and never run them. Chromium is installed by .ci/run (apt); where it is
missing these tests skip, unless QA_REQUIRE_BROWSER=1 (as in CI) makes that a failure.
"""

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("altair")
from torch import nn  # noqa: E402

import qa  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = [what for what, ok in (("chromium", CHROMIUM), ("playwright", sync_playwright)) if not ok]
    if missing:
        message = f"{' and '.join(missing)} not installed (apt-get install chromium; pip install playwright)"
        if os.environ.get("QA_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


PAYLOADS = ['<img src=x onerror=alert(1)>', '"</script><script>alert(2)</script>', "/tmp/evil\\x",
            "ünïcødé 層", "a'b&c"]


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x)) + x


def make_model(names=None) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), Block(8), nn.Conv2d(8, 8, 1),
              nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)]
    net = nn.Sequential()
    for i, layer in enumerate(layers):
        net.add_module(names[i] if names and i < len(names) else str(i), layer)
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def analyse(model: nn.Module, out: Path, per_channel: bool = True) -> qa.AnalysisResult:
    x = torch.randn(32, 3, 12, 12)
    ref = model(x).detach()

    def evaluate(m):  # minus the output MSE vs FP32: every layer costs something, so there are culprits to name
        with torch.no_grad():
            return -float(((m(x) - ref) ** 2).mean())

    analyzer = qa.QuantAnalyzer(model, x[:1], lambda m: m(x), evaluate, progress=False)
    analyzer.enable_per_layer_mse_loss([x[:16], x[16:]], 2)
    config = {"defaults": {"ops": {"is_output_quantized": "True"},
                           "params": {"is_quantized": "True", "is_symmetric": "True"},
                           "per_channel_quantization": "True" if per_channel else "False"}}
    return analyzer.analyze("tf_enhanced", 4, 8, config_file=config, results_dir=out)


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def assert_draws_cleanly(browser, path: Path) -> None:
    """The page draws at least one chart with no console error, outside request or dialog."""
    page, errors, outside, dialogs = open_page(browser, path)
    try:
        assert charts_drawn(page) >= 1, path
        assert not errors and not outside and not dialogs, (path.name, errors, outside)
    finally:
        page.close()


def open_page(browser, path: Path):
    """Load a page from disk; returns (page, console errors, outside requests, dialogs)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors, outside, dialogs = [], [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    def route(r):
        if r.request.url.startswith(("file://", "data:", "blob:", "about:")):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()
    page.route("**/*", route)
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, errors, outside, dialogs


def charts_drawn(page) -> int:
    """Number of rendered Vega views (an SVG or canvas with marks), after they finish."""
    page.wait_for_function("document.querySelectorAll('svg.marks, canvas.marks').length > 0", timeout=15000)
    return page.locator("svg.marks, canvas.marks").count()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "results"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        analyse(make_model(), out)
    return out


def test_every_page_draws_its_charts_offline_without_errors(browser, results):
    pages = sorted(results.rglob("*.html"))
    names = {p.relative_to(results).as_posix() for p in pages}
    for expected in ("index.html", "per_layer_quant_enabled.html", "per_layer_quant_disabled.html",
                     "per_layer_mse_loss.html", "min_max_ranges/weights.html", "min_max_ranges/activations.html"):
        assert expected in names, sorted(names)
    assert any(n.startswith("activations_pdf/") for n in names) and any(n.startswith("weights_pdf/") for n in names)
    for path in pages:
        page, errors, outside, dialogs = open_page(browser, path)
        try:
            assert charts_drawn(page) >= 1, path
            assert not errors, f"{path.name}: console errors {errors}"
            assert not outside, f"{path.name}: requests leaving the machine {outside}"
            assert not dialogs
        finally:
            page.close()


def _links(path: Path) -> set:
    """Local pages an HTML file links to (parsed from the file; no browser needed)."""
    import re
    hrefs = re.findall(r'href="([^"#]+)', path.read_text(encoding="utf-8"))
    return {(path.parent / h).resolve() for h in hrefs if not h.startswith(("http:", "https:", "mailto:"))}


def test_dashboard_reaches_every_page_and_names_the_culprit(browser, results):
    page, errors, outside, _ = open_page(browser, results / "index.html")
    try:
        charts_drawn(page)
        summary = json.loads((results / "summary.json").read_text())
        worst = summary["most_sensitive_layers"][0]
        assert worst in page.inner_text("body")
        assert not errors and not outside
    finally:
        page.close()
    # Every page is reachable from index.html by following links, and no link is broken.
    seen, todo = set(), [(results / "index.html").resolve()]
    while todo:
        path = todo.pop()
        if path in seen or path.suffix != ".html":
            continue
        seen.add(path)
        for target in _links(path):
            assert target.is_file(), f"{path.name} links to missing {target}"
            todo.append(target)
    pages = {p.resolve() for p in results.rglob("*.html")}
    assert pages <= seen, sorted(str(p.relative_to(results.resolve())) for p in pages - seen)


def test_layer_names_with_html_and_script_payloads_stay_text(browser, tmp_path):
    names = [PAYLOADS[0], "1", PAYLOADS[1], PAYLOADS[3], PAYLOADS[2], "5", "6", "7", PAYLOADS[4]]
    out = tmp_path / "results"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        analyse(make_model(names), out, per_channel=False)
    root = out.resolve()
    for path in tmp_path.rglob("*"):  # nothing written outside results_dir
        assert path == out or root in path.resolve().parents, path
    for path in sorted(out.rglob("*.html")):
        page, errors, outside, dialogs = open_page(browser, path)
        try:
            charts_drawn(page)
            assert not dialogs, f"{path.name}: a payload ran: {dialogs}"
            assert not outside, f"{path.name}: {outside}"
            assert not errors, f"{path.name}: {errors}"
            assert page.locator("img[src=x]").count() == 0
            if path.name == "index.html":
                text = page.inner_text("body")
                assert PAYLOADS[0] in text or PAYLOADS[2] in text  # shown, as text
        finally:
            page.close()


def test_pages_of_an_onnx_analysis_render(browser, tmp_path):
    """The same report, from the ONNX analyzer (the model exported from PyTorch here)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import io

    import numpy as np

    net = make_model()
    x = torch.randn(32, 3, 12, 12)
    buf = io.BytesIO()
    torch.onnx.export(net, (x[:1],), buf, dynamo=False, opset_version=17, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    data = x.numpy()
    labels = net(x).argmax(1).numpy()

    def evaluate(session):
        return float((session.run(None, {"input": data})[0].argmax(1) == labels).mean() * 100)

    analyzer = qa.QuantAnalyzer(proto, {"input": data[:1]}, lambda s: s.run(None, {"input": data}), evaluate,
                                progress=False)
    analyzer.enable_per_layer_mse_loss([{"input": data[:16]}, {"input": data[16:]}], 2)
    out = tmp_path / "onnx_results"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = analyzer.analyze("tf_enhanced", 4, 8, results_dir=out)
    assert result.per_layer_mse and np.isfinite(list(result.per_layer_mse.values())).all()
    pages = sorted(out.rglob("*.html"))
    assert {"index.html", "per_layer_mse_loss.html"} <= {p.name for p in pages}
    for path in pages:
        assert_draws_cleanly(browser, path)


def test_pages_with_nan_and_absurd_values_still_draw(browser, results, tmp_path):
    """NaN scores (null + nonfinite_scores), +-1e308 and huge bitwidths: the charts leave them out
    with a note, and Vega draws the rest without an error."""
    from qa.report import build_html

    root = tmp_path / "results"
    shutil.copytree(results, root)
    summary = json.loads((root / "summary.json").read_text())
    names = list(summary["per_layer_quant_enabled"])
    summary["per_layer_quant_enabled"][names[0]] = None
    summary["nonfinite_scores"] = {"per_layer_quant_enabled": {names[0]: "nan"}}
    summary["per_layer_quant_disabled"][names[1]] = 1e308
    summary["per_layer_mse"][names[-1]] = 1e308
    summary["per_layer_sqnr_db"][names[-1]] = -1e308
    summary["problems"] = ["weights of 0 contain 12 NaN values"]
    for enc in summary["encodings"].values():
        for e in enc if isinstance(enc, list) else [enc]:
            e["bitwidth"] = 10 ** 300
    (root / "summary.json").write_text(json.dumps(summary))
    build_html(root)
    index = (root / "index.html").read_text(encoding="utf-8")
    assert f"Quantizing layer {names[0]} alone makes the score NaN" in index and "Left out of this report" in index
    for path in [root / "index.html", root / "per_layer_quant_enabled.html", root / "per_layer_quant_disabled.html",
                 root / "per_layer_mse_loss.html", root / "min_max_ranges" / "activations.html"]:
        assert_draws_cleanly(browser, path)
