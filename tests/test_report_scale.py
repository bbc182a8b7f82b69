"""The report of a large model: hundreds of layers stay readable.

A transformer analysed op by op has hundreds of layers (``encoder.layer.3.attention.self/matmul_1``).
The dashboard's table groups them by module (a block per collapsible group, a summary row each,
a culprit's group open), charts show the top of a ranking with every layer one click away (heights
stay bounded), and the local error of a layer (summary.json's ``per_layer_local_sqnr_db``) tells
"bad on its own" from "errors accumulate here". Small models look as they always did.
"""

import html
import json
import re
import warnings
from pathlib import Path

import pytest

pytest.importorskip("altair")
pytest.importorskip("vl_convert")

from qa import ranking  # noqa: E402
from qa.report import ResultsDir, build_html  # noqa: E402
from qa.report._groups import GROUP_FROM, components, group_layers  # noqa: E402
from test_report import _Text, check_page_is_offline_and_safe, write_results  # noqa: E402

from test_report_browser import browser  # noqa: E402,F401  (one browser fixture)

# ---- a 12-block transformer's layer names, as each framework writes them ----------------------

BLOCK = (["attention.self.query", "attention.self.key", "attention.self.value"]
         + [f"attention.self/{op}" for op in ("matmul", "div", "add", "softmax", "matmul_1")]
         + ["attention.output.dense", "attention.output/add", "attention.output.LayerNorm", "intermediate.dense",
            "intermediate/gelu", "output.dense", "output/add", "output.LayerNorm"]
         + [f"attention.self/mul_{k}" for k in range(32)])  # 48 layers a block
HEAD = ["embeddings.word_embeddings", "embeddings.position_embeddings", "embeddings/add",
        "embeddings.token_type_embeddings", "embeddings/add_1", "embeddings.LayerNorm", "rsub", "mul"]
TAIL = ["pooler.dense", "pooler/tanh", "classifier"]
IMG = "<img src=x onerror=alert(1)>"
SCRIPT = "</script><script>alert(2)</script>"


def torch_names(blocks=12):
    return HEAD + [f"encoder.layer.{b}.{op}" for b in range(blocks) for op in BLOCK] + TAIL


def onnx_name(name):
    """encoder.layer.3.attention.self/matmul -> /encoder/layer.3/attention/self/Matmul (as torch.onnx names)."""
    module, _, op = name.partition("/")
    parts, out = module.split("."), []
    while parts:
        p = parts.pop(0)
        out.append(f"{p}.{parts.pop(0)}" if p == "layer" and parts and parts[0].isdigit() else p)
    return "/" + "/".join(out) + "/" + (op[:1].upper() + op[1:] if op else "MatMul")


OWN = "encoder.layer.1.attention.self/softmax"  # bad on its own: its own error is most of its output's
INHERITED = "encoder.layer.8.output.dense"  # cheap alone, costly with the rest: its error comes from before
LATE = "encoder.layer.10.attention.output.dense"  # a culprit by its gain only: far down the "alone" ranking


def write_transformer(root, names, *, local=True, hostile=True):
    """A results folder of a 12-block transformer: three culprits, every other layer free of cost."""
    names = list(names)
    if hostile:  # module names are input too: two groups whose prefix is markup
        at = len(names) - len(TAIL)
        names[at:at] = [f"{IMG}.{k}" for k in range(10)] + [f"{SCRIPT}.part.{k}" for k in range(10)]
    out = ResultsDir(root)
    layers, enabled, disabled, mse, sqnr, lmse, lsqnr, weights, acts = [], {}, {}, {}, {}, {}, {}, {}, {}
    level = 40.0
    for i, name in enumerate(names):
        enabled[name], disabled[name] = 90.0, 71.0
        level -= 0.02
        own_gap = 20.0 + (i % 7)  # dB above the accumulated SQNR: the error comes from before
        if name == OWN:
            enabled[name], disabled[name], own_gap = 80.0, 79.0, 0.5
            level -= 10.0
        elif name == INHERITED:
            enabled[name], disabled[name], own_gap = 88.0, 77.0, 15.0
        elif name == LATE:
            disabled[name] = 74.0
        sqnr[name] = level
        mse[name] = 10 ** (-level / 10)
        lsqnr[name] = level + own_gap
        lmse[name] = 10 ** (-lsqnr[name] / 10)
        quantizers = [f"{name}_output_0"]
        acts[f"{name}_output_0"] = [-1.0 - (i % 5), 1.0 + (i % 3)]
        if "/" not in name:
            quantizers.append(f"{name}_weight")
            weights[f"{name}_weight"] = [-0.5, 0.5]
        layers.append({"name": name, "type": "Linear" if "/" not in name else name.rsplit("/", 1)[1],
                       "quantizers": quantizers})
    summary = {"schema_version": 1, "quant_scheme": "tf", "default_param_bw": 8, "default_output_bw": 8,
               "fp32_score": 90.0, "weight_quantized_score": 80.0, "activation_quantized_score": 75.0,
               "quantized_score": 71.0, "per_layer_quant_enabled": enabled, "per_layer_quant_disabled": disabled,
               "per_layer_mse": mse, "per_layer_sqnr_db": sqnr, "weight_ranges": weights,
               "activation_ranges": acts, "layers": layers, "status": "complete"}
    if local:
        summary["per_layer_local_mse"] = lmse
        summary["per_layer_local_sqnr_db"] = lsqnr
    out.write_json(summary, "summary.json")
    return out.root, names


def _culprits(root):
    summary = json.loads((Path(root) / "summary.json").read_text(encoding="utf-8"))
    names = [layer["name"] for layer in summary["layers"]]
    ranked = ranking.culprits(ranking.impacts(names, summary["fp32_score"], summary["quantized_score"],
                                              summary["per_layer_quant_enabled"], summary["per_layer_quant_disabled"]))
    return [i.name for i in ranked]


def _specs(page):
    """[(spec, inside a closed <details>)] of a page, in order."""
    text = Path(page).read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r'<script type="application/json" id="[^"]+">(.*?)</script>', text, re.S):
        before = text[:m.start()]
        hidden = before.rfind('<details class="more">') > before.rfind("</details>")
        out.append((json.loads(m.group(1)), hidden))
    return out


def _rows(spec):
    (rows,) = [v for k, v in spec["datasets"].items() if k in ("layers", "mse", "ranges")]
    return rows


def _filters(spec):
    return re.findall(r'"filter": ?"([^"]+)"', json.dumps(spec))


def _groups_of(index_html):
    """[(tbody tag, the group's rows' layer ids)] of the dashboard's grouped table."""
    out = []
    for m in re.finditer(r'(<tbody class="grp[^"]*"[^>]*>)(.*?)</tbody>', index_html, re.S):
        out.append((m.group(1), [int(x) for x in re.findall(r'<tr id="layer-(\d+)"', m.group(2))]))
    return out


# ---- grouping names: torch, ONNX, Keras -----------------------------------------------------

def test_torch_and_onnx_names_group_into_the_blocks_of_the_model():
    for names, block in ((torch_names(), "encoder.layer.{}"), ([onnx_name(n) for n in torch_names()],
                                                               "/encoder/layer.{}")):
        blocks = group_layers(names)
        labels = [b.label for b in blocks if b.grouped]
        assert labels == [labels[0]] + [block.format(i) for i in range(12)] + [labels[-1]], labels
        assert labels[0].endswith("embeddings") and labels[-1].endswith("pooler")
        assert all(len(b.members) == 48 for b in blocks if b.label and "layer" in b.label)
        members = [m for b in blocks for m in b.members]
        assert sorted(members) == list(range(len(names)))  # every layer exactly once
        assert [b.members[0] for b in blocks] == sorted(b.members[0] for b in blocks)  # execution order
        assert {names[b.members[0]] for b in blocks if not b.grouped} == {
            names[i] for i in range(len(names)) if names[i].lstrip("/").split("/")[0] in ("rsub", "mul", "classifier")}
        for b in blocks:  # a group's prefix is how its names begin, in that framework's spelling
            assert all(names[m].startswith(b.label) for m in b.members if b.grouped)
    assert [c for c, _ in components("/encoder/layer.3/attention/self/MatMul_1")] == \
        [c for c, _ in components("encoder.layer.3.attention.self/MatMul_1")]


def test_keras_names_group_by_nested_layer_or_block_never_by_type():
    nested = [f"transformer_layer_{i}/{op}" for i in range(6) for op in
              ("self_attention/query", "self_attention/key", "self_attention/value", "self_attention/softmax",
               "self_attention/output", "add", "layer_norm", "ffn/dense1", "ffn/dense2", "add_1")]
    assert [(b.label, len(b.members)) for b in group_layers(nested)] == [(f"transformer_layer_{i}", 10)
                                                                         for i in range(6)]
    resnet = ["conv1_conv", "conv1_relu", "pool1_pool"]
    for stage in (2, 3, 4):
        for k in (1, 2, 3):
            resnet += [f"conv{stage}_block{k}_{j}_{t}" for j in (1, 2, 3) for t in ("conv", "relu")]
            resnet += [f"conv{stage}_block{k}_add", f"conv{stage}_block{k}_out"]
    labels = [b.label for b in group_layers(resnet) if b.grouped]
    assert {"conv2", "conv3", "conv4"} <= set(labels) or {f"conv2_block{k}" for k in (1, 2, 3)} <= set(labels), labels
    # Keras's automatic names count layers of one type: not modules, so no groups
    auto = [n for i in range(30) for n in (f"conv2d_{i}" if i else "conv2d", f"max_pooling2d_{i}" if i else
                                           "max_pooling2d")]
    assert group_layers(auto) is None
    assert group_layers([f"dense_{i}" for i in range(60)]) is None


def test_small_flat_or_scattered_models_are_not_grouped():
    names = torch_names(1)[:GROUP_FROM]
    assert len(names) == GROUP_FROM and group_layers(names) is None  # up to 40 layers: as always
    assert group_layers(torch_names(1)[:GROUP_FROM + 1]) is not None
    assert group_layers([f"features.{i}" for i in range(80)]) is None  # one group of everything is no grouping
    # a module called at the start and at the end (a tied embedding) is no group: its calls are far apart
    scattered = ["wte"] + [f"h.{i}.{op}" for i in range(6) for op in "abcdefgh"] + ["wte/call_1"]
    blocks = group_layers(scattered)
    assert not any(b.grouped and b.label == "wte" for b in blocks)
    hostile = ["..", "/etc/passwd", "<script>", "a" * 1000, "", "./.", "卷积层\u2028"] * 10
    blocks = group_layers(hostile)  # no crash; every layer once
    assert blocks is None or sorted(m for b in blocks for m in b.members) == list(range(len(hostile)))


# ---- the pages of a 600-layer transformer ----------------------------------------------------

@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root, names = write_transformer(tmp_path_factory.mktemp("big") / "results", torch_names())
    build_html(root)
    return root, names


def test_the_dashboard_table_groups_blocks_and_opens_the_culprits_groups(big):
    root, names = big
    assert len(names) > 580
    culprits = _culprits(root)
    assert culprits[:3] == [OWN, INHERITED, LATE]
    index = (root / "index.html").read_text(encoding="utf-8")
    check_page_is_offline_and_safe(root, root / "index.html")
    groups = _groups_of(index)
    assert len(groups) == 1 + 12 + 2 + 1  # embeddings, the blocks, two hostile modules, pooler
    grouped = sorted(i for _, rows in groups for i in rows)
    assert sorted(grouped + [names.index(n) for n in ("rsub", "mul", "classifier")]) == list(range(len(names)))
    ids = [int(x) for x in re.findall(r'<tr id="layer-(\d+)"', index)]
    assert sorted(ids) == list(range(len(names)))  # every layer has its row, once
    for tag, rows in groups:
        inside = {names[i] for i in rows}
        assert ("collapsed" not in tag) == bool(inside & set(culprits)), (tag, sorted(inside)[:2])
    opened = [rows for tag, rows in groups if "collapsed" not in tag]
    assert len(opened) == 3  # encoder.layer.1, .8 and .10
    # the summary row: the label, how many, the culprits inside, the worst value of each column
    block = re.search(r'<tbody class="grp"[^>]*>(.*?)</tbody>', index, re.S).group(1)
    head = block[:block.index("</tr>")]
    assert "encoder.layer.1</span></button>" in head and "48 layers" in head and "culprit #1" in head
    assert 'data-v="80"' in head and "80 (−10)" in head  # the worst "only this quantized" score of the block
    assert "worst: " in head and ".attention.self/softmax" in head
    text = _Text()
    text.feed(index)
    shown = "".join(text.text)
    assert "in 16 groups by module" in shown and "Expand all" in shown


def test_charts_show_the_top_of_the_ranking_and_every_layer_one_click_away(big):
    root, names = big
    culprits = set(_culprits(root))
    for page, limit in (("per_layer_quant_enabled.html", 30), ("per_layer_quant_disabled.html", 30),
                        ("per_layer_mse_loss.html", 30), ("min_max_ranges/activations.html", 30),
                        ("min_max_ranges/weights.html", 30)):
        specs = _specs(root / page)
        visible = [s for s, hidden in specs if not hidden]
        hidden = [s for s, hidden in specs if hidden]
        assert len(hidden) == 1, page  # every layer: one chart, in a closed <details>
        full = hidden[0]
        assert not any("datum.top" in f for f in _filters(full)), page
        tops = [s for s in visible if any("datum.top" in f for f in _filters(s))]
        assert len(tops) == 1, page
        rows = [r for r in _rows(tops[0]) if r.get("top")]
        assert 10 <= len(rows) <= limit, (page, len(rows))  # a bounded chart: at most 30 bars of 17 px
        every = _rows(full)
        assert len(every) == (sum("/" not in n for n in names) if "weights" in page else len(names)), page
        drawn = {r.get("layer") for r in rows}
        expected = culprits & {r.get("layer") for r in every}  # (weights: the culprits with a weight)
        assert expected and expected <= drawn, (page, expected - drawn)  # culprits always shown
        summary = Path(root / page).read_text(encoding="utf-8")
        assert re.search(r'<details class="more"><summary>Show all \d+ ', summary), page
    enabled = _specs(root / "per_layer_quant_enabled.html")[0][0]
    assert "and 1 more culprit" in json.dumps(enabled["title"])  # LATE: by its gain, far down this ranking
    # the dashboard's charts are bounded too: a row per score or culprit, one SQNR line of fixed height
    for spec, hidden in _specs(root / "index.html"):
        assert not hidden
        height = spec.get("height")
        if isinstance(height, dict):  # a step per row: few rows
            assert all(len(rows) <= 10 for rows in spec["datasets"].values()), list(spec["datasets"])
        else:
            assert height == 200, height


def test_local_sqnr_tells_bad_on_its_own_from_accumulated_error(big, tmp_path):
    root, names = big
    index = (root / "index.html").read_text(encoding="utf-8")
    reader = _Text()
    reader.feed(index)
    text = " ".join("".join(reader.text).split())
    cards = {m.group(1): m.group(0) for m in re.finditer(
        r'<div class="card culprit" id="culprit-(\d)">.*?(?=<div class="card culprit"|</div>\s*<figure|<h2>)', index,
        re.S)}
    assert "bad on its own" in cards["1"]
    assert "Bad on its own: with only this layer quantized" in html.unescape(cards["1"])
    assert "errors accumulate here" in cards["2"] and "Errors accumulate here" in cards["2"]
    assert "own SQNR" in cards["1"] and "own SQNR" in cards["2"]
    # the accumulated case points at the layers before it that are bad on their own
    assert f"Look first at the layers before it that are bad on their own (the lowest SQNR with FP32 inputs): {OWN}" \
        in text
    assert "own SQNR dB</th>" in index  # the table's column
    row = re.search(r'<tr id="layer-%d"[^>]*>(.*?)</tr>' % names.index(OWN), index, re.S).group(1)
    assert row.count('<td class="num') == 8  # #, two scores, MSE, SQNR, its change, own SQNR, clipped
    mse_page = (root / "per_layer_mse_loss.html").read_text(encoding="utf-8")
    assert "the lowest SQNR on their own" in mse_page and '"local"' in mse_page
    # without the local error in summary.json nothing of it shows
    plain, _ = write_transformer(tmp_path / "plain", torch_names(), local=False)
    build_html(plain)
    for page in ("index.html", "per_layer_mse_loss.html"):
        source = (plain / page).read_text(encoding="utf-8")
        assert "own SQNR" not in source and "on its own" not in source.lower(), page
        assert "Errors accumulate" not in source, page


def test_hostile_module_names_stay_text_in_group_rows(big):
    root, names = big
    index = (root / "index.html").read_text(encoding="utf-8")
    assert "<img" not in index and "<script>alert" not in index
    assert html.escape(IMG, quote=False) in index.replace("&#34;", '"').replace("&#39;", "'")
    reader = _Text()
    reader.feed(index)
    shown = "".join(reader.text)
    assert IMG in shown and "alert(2)" in shown
    for page in sorted(root.rglob("*.html")):
        parsed = check_page_is_offline_and_safe(root, page)
        for tag, attrs in parsed.tags:
            assert not any("alert" in (v or "") for v in attrs.values()), (page, tag, attrs)


def test_onnx_named_folder_groups_and_small_folder_stays_flat(tmp_path):
    root, names = write_transformer(tmp_path / "onnx", [onnx_name(n) for n in torch_names(4)], hostile=False)
    build_html(root)
    index = (root / "index.html").read_text(encoding="utf-8")
    assert "/encoder/layer.2</span></button>" in index and len(_groups_of(index)) >= 5
    small = write_results(tmp_path / "small", [f"block.{i // 4}.conv{i % 4}" for i in range(12)],
                          culprit="block.1.conv2")
    build_html(small)
    index = (small / "index.html").read_text(encoding="utf-8")
    assert 'class="grp' not in index and "table-tools" not in index and "<button" not in index
    assert '<details open id="all-layers">' in index
    for page in ("per_layer_quant_enabled.html", "per_layer_mse_loss.html", "min_max_ranges/weights.html"):
        assert '<details class="more">' not in (small / page).read_text(encoding="utf-8"), page


# ---- in a real browser ----------------------------------------------------------------------

class Opened:
    def __init__(self, browser, path, anchor=""):
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors, self.outside, self.dialogs = [], [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

        def route(r):
            if r.request.url.startswith(("file://", "data:", "blob:", "about:")):
                r.continue_()
            else:
                self.outside.append(r.request.url)
                r.abort()
        self.page.route("**/*", route)
        self.page.goto(Path(path).as_uri() + (f"#{anchor}" if anchor else ""))
        self.page.wait_for_load_state("load")
        self.page.wait_for_function("document.querySelectorAll('svg.marks, canvas.marks').length > 0",
                                    timeout=15000)

    def clean(self):
        assert not self.errors and not self.outside and not self.dialogs, (self.errors, self.outside, self.dialogs)

    def visible_rows(self):
        return self.page.evaluate("Array.from(document.querySelectorAll('table.layers tr[id^=layer-]'))"
                                  ".filter(r => r.offsetParent !== null).map(r => +r.id.slice(6))")

    def canvases(self):
        self.page.wait_for_timeout(300)
        return self.page.evaluate("Array.from(document.querySelectorAll('canvas.marks'))"
                                  ".map(c => c.getBoundingClientRect().height)")


def test_groups_collapse_expand_sort_and_reveal_in_the_browser(browser, big, tmp_path):
    root, names = big
    culprits = _culprits(root)
    groups = _groups_of((root / "index.html").read_text(encoding="utf-8"))
    open_rows = sorted(i for tag, rows in groups if "collapsed" not in tag for i in rows)
    grouped = {i for _, rows in groups for i in rows}
    solo = sorted(set(range(len(names))) - grouped)
    view = Opened(browser, root / "index.html")
    try:
        page = view.page
        assert sorted(view.visible_rows()) == sorted(open_rows + solo)  # collapsed groups show their summary only
        assert len(view.visible_rows()) < 200
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=False)
        # a collapsed group opens on a click and closes again
        closed = next(k for k, (tag, _) in enumerate(groups) if "collapsed" in tag)
        toggle = page.locator("tbody.grp").nth(closed).locator("button.grp-toggle")
        assert toggle.get_attribute("aria-expanded") == "false"
        toggle.click()
        assert set(groups[closed][1]) <= set(view.visible_rows())
        assert toggle.get_attribute("aria-expanded") == "true"
        toggle.click()
        assert not set(groups[closed][1]) & set(view.visible_rows())
        page.click("button.qa-expand-all")
        assert len(view.visible_rows()) == len(names)
        page.click("button.qa-collapse-all")
        assert sorted(view.visible_rows()) == solo
        # sorting by "only this quantized", ascending: the group of the worst layer comes first,
        # its worst layer first inside it
        page.click("button.qa-expand-all")
        page.locator("table.layers th", has_text="only this quantized").click()
        first = page.evaluate("document.querySelector('table.layers tbody tr.grp-head .grp-toggle').textContent")
        assert first.strip() == "encoder.layer.1"
        assert view.visible_rows()[0] == names.index(OWN)
        # the flat list: every row, no summary rows, sortable across groups; and back
        page.click("button.qa-flat")
        assert page.evaluate("Array.from(document.querySelectorAll('tr.grp-head')).every(r => r.offsetParent === null)")
        page.locator("table.layers th", has_text="#").first.click()
        assert view.visible_rows() == list(range(len(names)))
        page.locator("table.layers th", has_text="own SQNR").click()
        assert view.visible_rows()[0] == names.index(OWN)  # lowest own SQNR, across every group
        page.click("button.qa-flat")
        assert page.evaluate("Array.from(document.querySelectorAll('tr.grp-head')).every(r => r.offsetParent)")
        assert sorted(view.visible_rows()) == list(range(len(names)))
        view.clean()
    finally:
        view.page.close()
    # a link to a layer inside a collapsed group (the histogram pages' "Layer ..." link) opens it
    target = next(i for tag, rows in groups if "collapsed" in tag for i in rows[5:6])
    view = Opened(browser, root / "index.html", f"layer-{target}")
    try:
        assert view.page.locator(f"#layer-{target}").is_visible()
        assert view.page.evaluate(f"document.getElementById('layer-{target}').getBoundingClientRect().top") < 1000
        view.clean()
    finally:
        view.page.close()
    assert culprits


def test_chart_heights_stay_bounded_and_every_layer_draws_on_demand(browser, big, tmp_path):
    root, names = big
    for rel in ("index.html", "per_layer_quant_enabled.html", "per_layer_quant_disabled.html",
                "per_layer_mse_loss.html", "min_max_ranges/activations.html", "min_max_ranges/weights.html"):
        view = Opened(browser, root / rel)
        try:
            heights = view.canvases()
            assert heights and max(heights) < 1000, (rel, heights)  # no 600-bar chart by default
            more = view.page.locator("details.more > summary")
            if rel != "index.html":
                assert more.count() == 1, rel
                before = len(heights)
                more.click()
                view.page.wait_for_function(f"document.querySelectorAll('canvas.marks').length > {before}",
                                            timeout=20000)
                tall = view.canvases()
                assert max(tall) > 1500, (rel, tall)  # every layer (114 weights at least), once asked for
            view.page.screenshot(path=str(tmp_path / (rel.replace("/", "_") + ".png")))
            view.clean()
        finally:
            view.page.close()


@pytest.mark.torch
def test_a_real_transformer_analysis_groups_its_blocks(browser, tmp_path):
    """TinyBert (4 blocks) analysed op by op: 70-odd layers named by the PyTorch adapter."""
    torch = pytest.importorskip("torch")
    import torch_zoo as zoo

    import qa

    torch.manual_seed(0)
    model = zoo.TinyBert(layers=4).eval()
    batches = [zoo.bert_inputs(4, 8, seed=i) for i in range(2)]
    with torch.no_grad():
        ref = [model(**b)["last_hidden_state"] for b in batches]

    def calibrate(m):
        with torch.no_grad():
            for b in batches:
                m(**b)

    def score(m):
        with torch.no_grad():
            return -float(sum(((m(**b)["last_hidden_state"] - r) ** 2).mean() for b, r in zip(batches, ref)))

    analyzer = qa.QuantAnalyzer(model, batches[0], calibrate, score, progress=False)
    analyzer.enable_per_layer_mse_loss(batches, 2)
    root = tmp_path / "results"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = analyzer.analyze("tf", 8, 8, results_dir=root)
    assert result.status == "complete" and len(result.layers) > GROUP_FROM
    index = (root / "index.html").read_text(encoding="utf-8")
    labels = re.findall(r'<button type="button" class="grp-toggle"[^>]*>\s*<span class="mono">([^<]*)</span>', index)
    assert [f"encoder.layer.{i}" for i in range(4)] == [x for x in labels if x.startswith("encoder.")]
    culprit_groups = [tag for tag, rows in _groups_of(index) if "collapsed" not in tag]
    top = result.most_sensitive_layers(5)
    assert bool(culprit_groups) == any(n.startswith(("encoder.", "embeddings.")) for n in top)
    for rel in ("index.html", "per_layer_quant_enabled.html", "per_layer_mse_loss.html"):
        view = Opened(browser, root / rel)
        try:
            assert max(view.canvases()) < 1000, rel
            view.clean()
        finally:
            view.page.close()
