"""Every HTML page of a results folder, built from its JSON files alone (needs altair and vl-convert)."""

from __future__ import annotations

import functools
import html
import json
import logging
import posixpath
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote

import numpy as np
import vl_convert

from .._version import __version__
from ..errors import QAError
from . import ResultsDir, _charts
from ._advice import fmt, headline, layer_evidence, layer_suggestions, pct, quantizer_evidence, signed
from ._assets import CSS, JS
from ._load import Histogram, Layer, Quantizer, Results, load_results, read_json

log = logging.getLogger("qa")

STATIC = PurePosixPath("_static")
BUNDLE, STYLESHEET, SCRIPT = STATIC / "qa_vega.js", STATIC / "qa.css", STATIC / "qa.js"
INDEX = PurePosixPath("index.html")
ENABLED, DISABLED = PurePosixPath("per_layer_quant_enabled.html"), PurePosixPath("per_layer_quant_disabled.html")
MSE = PurePosixPath("per_layer_mse_loss.html")
WEIGHT_RANGES = PurePosixPath("min_max_ranges/weights.html")
ACTIVATION_RANGES = PurePosixPath("min_max_ranges/activations.html")
EXPORTS = "charts"  # PNG/SVG exports: charts/<page path>_<chart>.png
HIST_BINS, CHANNEL_BINS = 256, 96
TOP_SORTED = 25


def esc(value: Any) -> str:
    """Text for HTML, attributes included."""
    return html.escape(str(value), quote=True)


def script_json(data: Any) -> str:
    """JSON that is safe inside <script type="application/json">: no '<', '>' or '&' survives, so
    nothing in it (a layer named '</script>' for instance) can close the element."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch in "&<>\u2028\u2029":
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return text


@functools.lru_cache(maxsize=4)
def vega_bundle(vl_version: str) -> str:
    """Vega, Vega-Lite and vega-embed in one classic script that defines window.vegaEmbed (~900 kB)."""
    versions = vl_convert.get_vegalite_versions()
    js = vl_convert.javascript_bundle(vl_version=vl_version if vl_version in versions else None)
    return (f"/* qa report: Vega {vl_convert.get_vega_version()}, Vega-Lite {vl_version}, vega-embed "
            f"{vl_convert.get_vega_embed_version()}, bundled by vl-convert {vl_convert.__version__} */\n{js}")


def _grid(q: Quantizer, most_levels: int = 64) -> List[float]:
    """The values a per-tensor encoding can represent, when there are few enough to draw."""
    enc = q.encoding
    if not isinstance(enc, dict):
        return []
    scale, offset, bw = enc.get("scale"), enc.get("offset"), enc.get("bitwidth")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (scale, offset, bw)):
        return []
    if not 0 < scale < float("inf") or not 1 <= bw or 2 ** bw > most_levels:
        return []
    return [(offset + k) * scale for k in range(2 ** int(bw))]


def _bins(total: float, most: int) -> int:
    """Display bins: about 2 sqrt(n), so that a small tensor is not a comb of empty bins."""
    return int(min(most, max(16, 2 * np.sqrt(max(total, 0.0)))))


class Page:
    """One HTML page: escaped text, charts embedded as JSON, links relative to the page."""

    def __init__(self, rel: PurePosixPath, title: str) -> None:
        self.rel, self.title = rel, title
        self.parts: List[str] = []
        self.charts: List[Tuple[str, Dict[str, Any]]] = []

    def url(self, target: PurePosixPath, anchor: str = "") -> str:
        """The relative URL of target from this page (names are sanitized, quoted all the same)."""
        rel = posixpath.relpath(str(target), str(self.rel.parent) or ".")
        return quote(rel) + (f"#{quote(anchor)}" if anchor else "")

    def href(self, target: PurePosixPath, anchor: str = "") -> str:
        return esc(self.url(target, anchor))

    def link(self, target: Optional[PurePosixPath], text: str, anchor: str = "") -> str:
        if target is None:
            return esc(text)
        return f'<a href="{self.href(target, anchor)}">{esc(text)}</a>'

    def add(self, *parts: str) -> None:
        self.parts.extend(parts)

    def chart(self, key: str, spec: Dict[str, Any], caption: str = "") -> None:
        n = len(self.charts)
        self.charts.append((key, spec))
        cap = f"<figcaption>{caption}</figcaption>" if caption else ""
        self.add(f'<figure class="chart"><div data-qa-spec="qa-spec-{n}"></div>{cap}</figure>',
                 f'<script type="application/json" id="qa-spec-{n}">{script_json(spec)}</script>')

    def render(self, nav: Sequence[Tuple[PurePosixPath, str]]) -> str:
        items = [f'<a class="home" href="{self.href(INDEX)}">qa report</a>']
        for target, label in nav:
            here = ' class="here"' if target == self.rel else ""
            items.append(f'<a{here} href="{self.href(target)}">{esc(label)}</a>')
        body = "\n".join(self.parts)
        nav_html = " ".join(items)
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="qa {esc(__version__)}">
<title>{esc(self.title)} \u2014 qa report</title>
<link rel="stylesheet" href="{self.href(STYLESHEET)}">
<script src="{self.href(BUNDLE)}"></script>
<script src="{self.href(SCRIPT)}" defer></script>
</head>
<body>
<nav class="top">{nav_html}</nav>
<main>
{body}
<footer>Made by qa {esc(__version__)} from the JSON files in this folder (<code>qa report</code> rebuilds these pages).
Charts are drawn offline with the Vega libraries stored in <code>_static/</code>.</footer>
</main>
</body>
</html>
"""


class _Builder:
    def __init__(self, results_dir: Any, png: bool, svg: bool) -> None:
        self.out = ResultsDir(results_dir)
        self.root = self.out.root
        self.png, self.svg = png, svg
        self.r: Results = load_results(self.root, self.json_rel)
        self.written: List[Path] = []
        self.vl_version = _charts.vegalite_version()
        self.nav: List[Tuple[PurePosixPath, str]] = [(INDEX, "Dashboard")]
        if self.r.enabled:
            self.nav.append((ENABLED, "One layer quantized"))
        if self.r.disabled:
            self.nav.append((DISABLED, "All but one layer"))
        if self.r.mse:
            self.nav.append((MSE, "MSE / SQNR"))
        if any(q.is_param for q in self.r.quantizers.values()):
            self.nav.append((WEIGHT_RANGES, "Weight ranges"))
        if any(not q.is_param for q in self.r.quantizers.values()):
            self.nav.append((ACTIVATION_RANGES, "Activation ranges"))

    # -- files --

    def json_rel(self, *parts: str) -> PurePosixPath:
        return PurePosixPath(self.out.path(*parts).relative_to(self.root).as_posix())

    def target(self, rel: PurePosixPath) -> Path:
        path = self.out.path(*rel.parts)  # sanitized again and checked to stay inside results_dir
        if path != self.root.joinpath(*rel.parts):  # links are made from rel: they must name this file
            raise QAError(f"internal: page path {rel} is not a sanitized path")
        return path

    def write_text(self, rel: PurePosixPath, text: str) -> None:
        path = self.target(rel)
        self.out.write_text(text, path)
        self.written.append(path)

    def write_page(self, page: Page) -> None:
        self.write_text(page.rel, page.render(self.nav))
        if self.png or self.svg:
            for key, spec in page.charts:
                self.export(page.rel, key, spec)

    def export(self, rel: PurePosixPath, key: str, spec: Dict[str, Any]) -> None:
        stem = f"{rel.stem}_{key}"
        folder = (EXPORTS, *rel.parent.parts)
        try:
            if self.png:
                path = self.out.path(*folder, f"{stem}.png")
                data = vl_convert.vegalite_to_png(spec, vl_version=self.vl_version, scale=2)
                self._write_bytes(path, data)
            if self.svg:
                path = self.out.path(*folder, f"{stem}.svg")
                self.out.write_text(vl_convert.vegalite_to_svg(spec, vl_version=self.vl_version), path)
                self.written.append(path)
        except (ValueError, RuntimeError) as e:  # vl-convert reports bad specs as ValueError
            log.warning("could not export the chart %s of %s: %s", key, rel, e)

    def _write_bytes(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        self.written.append(path)

    def write_static(self) -> None:
        self.write_text(BUNDLE, vega_bundle(self.vl_version))
        self.write_text(STYLESHEET, CSS)
        self.write_text(SCRIPT, JS)

    # -- the pages --

    def build(self) -> List[Path]:
        self.write_static()
        for q in self.r.quantizers.values():
            if q.histogram_json is not None:
                self.histogram_page(q)
        for q in self.r.quantizers.values():
            if q.is_param and len(q.channel_ranges()) > 1:
                self.channel_ranges_page(q)
        if any(q.is_param for q in self.r.quantizers.values()):
            self.ranges_page(True)
        if any(not q.is_param for q in self.r.quantizers.values()):
            self.ranges_page(False)
        if self.r.enabled:
            self.per_layer_page(True)
        if self.r.disabled:
            self.per_layer_page(False)
        if self.r.mse:
            self.mse_page()
        self.index_page()
        return self.written

    def _layer_line(self, page: Page, q: Quantizer) -> str:
        layer = self.r.layer(q.layer)
        kind = f" ({esc(layer.type)})" if layer and layer.type else ""
        anchor = f"layer-{layer.index}" if layer else ""
        return f"Layer {page.link(INDEX, q.layer, anchor)}{kind}"

    def histogram_page(self, q: Quantizer) -> None:
        assert q.histogram_json is not None
        try:
            record = read_json(self.root / q.histogram_json)
            if isinstance(record, dict) and isinstance(record.get("channels"), list):
                hists = [Histogram.from_record(c) for c in record["channels"]]
            else:
                hists = [Histogram.from_record(record)]
        except Exception as e:  # one unreadable file must not stop the others
            log.warning("skipped the histogram page of %r: %s is not a qa histogram (%s)", q.name,
                        q.histogram_json.as_posix(), e)
            return
        if not hists:
            return
        rel = q.histogram_json.with_suffix(".html")
        what = "Weight" if q.is_param else "Activation"
        page = Page(rel, f"{what} histogram: {q.name}")
        page.add(f"<h1>{esc(what)} histogram: <span class=\"mono\">{esc(q.name)}</span></h1>",
                 f'<p class="meta">{self._layer_line(page, q)} \u00b7 {esc(self.r.text("quant_scheme"))} \u00b7 '
                 f'data: {page.link(q.histogram_json, q.histogram_json.name)}</p>')
        if len(hists) == 1:
            h = hists[0]
            q.stats = h.stats(q.scale)
            lo, width, counts = h.display(_bins(h.total, HIST_BINS))
            rows = [{"x0": lo + i * width, "x1": lo + (i + 1) * width, "n": float(c)} for i, c in enumerate(counts)]
            emin, emax = h.encoding_min, h.encoding_max
            markers = [{"what": "encoding min", "x": emin}, {"what": "encoding max", "x": emax}]
            page.add(f'<div class="card">{esc(quantizer_evidence(q))}.<br>'
                     f"<b>{esc(pct(h.clipped_fraction))}</b> of the values seen fall outside the encoding range "
                     f"[{esc(fmt(emin))}, {esc(fmt(emax))}] and are clipped to it; the dashed lines mark that "
                     "range.</div>")
            grid = _grid(q)
            page.chart("histogram", _charts.histogram(
                rows, [m for m in markers if m["x"] is not None], f"What {q.name} saw",
                f"{int(h.total):,} values in {len(counts)} bins; dashed: encoding min and max"
                + (f"; grey: the {len(grid)} levels values round to" if grid else ""), grid))
        else:
            self._channel_histograms(page, q, hists)
        q.histogram_page = rel
        self.write_page(page)

    def _channel_histograms(self, page: Page, q: Quantizer, hists: List[Histogram]) -> None:
        scales = [e.get("scale") for e in q.encoding] if isinstance(q.encoding, list) else [None] * len(hists)
        per = [h.stats(s if isinstance(s, (int, float)) else None) for h, s in zip(hists, scales + [None] * len(hists))]
        totals = np.array([h.total for h in hists])
        weight = totals / totals.sum() if totals.sum() > 0 else np.full(len(hists), 1 / len(hists))

        def mean(key: str) -> Optional[float]:
            vals = [s[key] for s in per]
            return float(np.dot(weight, vals)) if all(v is not None for v in vals) else None

        worst_clip = max(range(len(per)), key=lambda c: per[c]["clipped_fraction"] or 0.0)
        q.stats = {"clipped_fraction": mean("clipped_fraction"), "zero_fraction": mean("zero_fraction"),
                   "worst_channel_clipped": per[worst_clip]["clipped_fraction"], "worst_channel": worst_clip}
        rows = []
        for c, h in enumerate(hists):
            lo, width, counts = h.display(_bins(h.total, CHANNEL_BINS))
            rows.append({"c": c, "lo": lo, "w": width, "n": [int(round(v)) for v in counts],
                         "emin": h.encoding_min, "emax": h.encoding_max, "clip": h.clipped_fraction})
        widths = [(r["emax"] - r["emin"]) if r["emin"] is not None and r["emax"] is not None else 0.0 for r in rows]
        default = int(np.argmax(widths))
        page.add(f'<div class="card">{esc(quantizer_evidence(q))}.<br>{len(hists)} channels, each with its own '
                 f"encoding. Pick a channel with the slider; it starts at channel {default}, the one with the widest "
                 f"range. The most clipped channel is {worst_clip} ({esc(pct(per[worst_clip]['clipped_fraction']))})."
                 "</div>")
        page.chart("histogram", _charts.channel_histogram(
            rows, default, f"What {q.name} saw, per channel",
            "dashed: the chosen channel's encoding min and max"))

    def channel_ranges_page(self, q: Quantizer) -> None:
        rel = self.json_rel("min_max_ranges", f"{q.name}.html")
        if rel in (WEIGHT_RANGES, ACTIVATION_RANGES):
            rel = self.json_rel("min_max_ranges", f"{q.name}_channels.html")
        pairs = q.channel_ranges()
        page = Page(rel, f"Per-channel ranges: {q.name}")
        rows = [{"c": c, "min": a, "max": b, "width": b - a} for c, (a, b) in enumerate(pairs)]
        spread = q.channel_spread()
        hist = f" \u00b7 histograms: {page.link(q.histogram_page, 'per channel')}" if q.histogram_page else ""
        page.add(f"<h1>Per-channel ranges: <span class=\"mono\">{esc(q.name)}</span></h1>",
                 f'<p class="meta">{self._layer_line(page, q)}{hist}</p>',
                 f'<div class="card">{len(pairs)} channels. The widest range is '
                 f"{esc(f'{spread:.1f}' if spread else 'n/a')}\u00d7 the median one: per-channel quantization gives "
                 "each channel its own step, which is why it helps when this ratio is large.</div>")
        page.chart("ranges", _charts.channel_ranges(rows, f"Encoding range per channel: {q.name}"))
        q.ranges_page = rel
        self.write_page(page)

    def ranges_page(self, weights: bool) -> None:
        rel = WEIGHT_RANGES if weights else ACTIVATION_RANGES
        page = Page(rel, "Weight ranges" if weights else "Activation ranges")
        order = {layer.name: layer.index for layer in self.r.layers}
        rows = []
        qs = [q for q in self.r.quantizers.values() if q.is_param == weights]
        for n, q in enumerate(sorted(qs, key=lambda q: (order.get(q.layer, 1 << 30), q.name))):
            rng = q.tensor_range()
            if rng is None:
                continue
            target = q.ranges_page or q.histogram_page
            rows.append({"i": n, "name": q.name, "layer": q.layer, "min": rng[0], "max": rng[1],
                         "kind": "per channel (envelope)" if q.per_channel else "per tensor",
                         "bitwidth": q.bitwidth, "scale": q.scale, "clipped": q.stats.get("clipped_fraction"),
                         "href": page.url(target) if target else None,
                         "link": ("opens the per-channel ranges" if q.ranges_page else "opens the histogram")
                         if target else "no histogram (scheme tf)"})
        what = "weight" if weights else "activation"
        page.add(f"<h1>{'Weight' if weights else 'Activation'} ranges</h1>",
                 f'<p class="meta">The encoding [min, max] of every {what} quantizer, in execution order '
                 f"({esc(self.r.text('quant_scheme'))}). Click a bar for its "
                 f"{'per-channel ranges or ' if weights else ''}histogram. Data: "
                 f"{page.link(rel.with_suffix('.json'), rel.with_suffix('.json').name)}</p>")
        if rows:
            sub = ("a range far wider than its neighbours' often means outliers" if not weights else
                   "orange: per-channel weights, drawn as the envelope of their channels")
            page.chart("ranges", _charts.ranges(rows, f"{what.capitalize()} encoding ranges", sub))
        pc = [q for q in qs if q.ranges_page]
        if pc:
            page.add("<h2>Per-channel weights</h2><ul class=\"pages\">" + "".join(
                f"<li>{page.link(q.ranges_page, q.name)}</li>" for q in pc) + "</ul>")
        self.write_page(page)

    def _layer_rows(self, enabled: bool) -> List[Dict[str, Any]]:
        r = self.r
        rows = []
        for layer in r.layers:
            score = layer.enabled if enabled else layer.disabled
            if score is None:
                continue
            ref = r.fp32 if enabled else r.quantized
            ref = score if ref is None else ref
            rows.append({"i": layer.index, "layer": layer.name, "type": layer.type or layer.op_type,
                         "quantizers": ", ".join(q.name for q in layer.quantizers), "score": score, "ref": ref,
                         "delta": score - ref,
                         "vs_fp32": None if r.fp32 is None else score - r.fp32,
                         "vs_quantized": None if r.quantized is None else score - r.quantized})
        ranked = sorted(rows, key=lambda row: (row["score"] if enabled else -row["score"], row["i"]))
        for rank, row in enumerate(ranked, 1):
            row["rank"] = rank
        return rows

    def per_layer_page(self, enabled: bool) -> None:
        r = self.r
        rel = ENABLED if enabled else DISABLED
        page = Page(rel, "Per-layer analysis: " + ("only one layer quantized" if enabled else "all but one layer"))
        rows = self._layer_rows(enabled)
        refs = [{"what": "FP32", "score": r.fp32}, {"what": "fully quantized", "score": r.quantized}]
        refs = [x for x in refs if x["score"] is not None]
        data = rel.with_suffix(".json")
        if enabled:
            page.add("<h1>Only one layer quantized</h1>",
                     '<p class="meta">Each layer\'s score with only its quantizers on (its weights, inputs and '
                     "outputs) and everything else in float, drawn from the FP32 score: a long red bar is a layer "
                     f"that costs accuracy by itself. Data: {page.link(data, data.name)}</p>")
        else:
            page.add("<h1>All but one layer quantized</h1>",
                     '<p class="meta">Each layer\'s score with every quantizer on except its own, drawn from the '
                     "fully quantized score: a long blue bar is a layer whose float version wins the most back. "
                     f"Data: {page.link(data, data.name)}</p>")
        top = min(TOP_SORTED, len(rows))
        what = "only this layer quantized" if enabled else "all but this layer quantized"
        page.chart("sorted", _charts.per_layer_scores(
            rows, refs, ref_label="FP32" if enabled else "fully quantized", sort_field="rank",
            title=(f"All {top} layers, " + ("costliest first" if enabled else "biggest recovery first"))
            if top == len(rows) else f"The {top} of {len(rows)} layers that "
            + ("cost the most" if enabled else "win back the most"),
            subtitle=f"score with {what}; sorted, {'worst' if enabled else 'biggest recovery'} first", top=top))
        page.chart("order", _charts.per_layer_scores(
            rows, refs, ref_label="", sort_field="i", title="Every layer in execution order",
            subtitle=f"score with {what}; lines: FP32 and fully quantized scores"))
        self.write_page(page)

    def _mse_rows(self) -> List[Dict[str, Any]]:
        return [{"i": layer.index, "layer": layer.name, "type": layer.type or layer.op_type, "mse": layer.mse,
                 "sqnr": layer.sqnr_db, "jump": layer.sqnr_jump_db}
                for layer in self.r.layers if layer.mse is not None or layer.sqnr_db is not None]

    def mse_page(self) -> None:
        page = Page(MSE, "Per-layer MSE and SQNR")
        data = MSE.with_suffix(".json")
        page.add("<h1>Per-layer MSE and SQNR</h1>",
                 '<p class="meta">How far each layer\'s output in the fully quantized model is from the same '
                 "output in the FP32 model (the error accumulates along the network). SQNR = 10 log10(signal power "
                 f"/ error power): higher is better, a sudden drop marks a layer that adds error. Data: "
                 f"{page.link(data, data.name)}</p>")
        rows = self._mse_rows()
        drops = sorted((layer for layer in self.r.layers if layer.sqnr_jump_db is not None and layer.sqnr_jump_db < 0),
                       key=lambda layer: layer.sqnr_jump_db)[:5]
        if drops:
            page.add('<div class="card"><b>Largest SQNR drops:</b> ' + ", ".join(
                f"{page.link(INDEX, d.name, f'layer-{d.index}')} ({esc(signed(d.sqnr_jump_db))} dB)" for d in drops)
                + "</div>")
        if not self.r.sqnr:
            page.add('<div class="banner info">This folder has MSE only (no SQNR in summary.json).</div>')
        page.chart("mse_sqnr", _charts.mse_sqnr(rows))
        self.write_page(page)

    # -- the dashboard --

    def index_page(self) -> None:
        r = self.r
        page = Page(INDEX, "Dashboard")
        s = r.summary
        n_q = len(r.quantizers)
        bits = []
        if s.get("default_param_bw") is not None:
            bits.append(f"weights {esc(s['default_param_bw'])}-bit")
        if s.get("default_output_bw") is not None:
            bits.append(f"activations {esc(s['default_output_bw'])}-bit")
        seconds = s.get("seconds") if isinstance(s.get("seconds"), dict) else {}
        took = sum(v for v in seconds.values() if isinstance(v, (int, float)))
        meta = [esc(r.text("quant_scheme", "scheme unknown")), *bits, f"{len(r.layers)} layers", f"{n_q} quantizers"]
        if took:
            meta.append(f"analysis took {took:.1f} s")
        page.add("<h1>Where does this model lose accuracy when quantized?</h1>",
                 '<p class="meta">' + " \u00b7 ".join(meta) + "</p>")
        status = r.text("status", "")
        if status and status != "complete":
            err = r.text("error", "")
            page.add(f'<div class="banner error"><b>This analysis did not finish</b> (status: {esc(status)})'
                     f'{": " + esc(err) if err else ""}. The pages show what finished.</div>')
        title, steps = headline(r)
        drop = r.total_drop
        ok = drop is not None and (drop <= 0 or (r.fp32 and abs(drop) / abs(r.fp32) < 0.01))
        page.add(f'<div class="card verdict{" ok" if ok else ""}"><p class="title">{esc(title)}</p><ol>'
                 + "".join(f"<li>{esc(step)}</li>" for step in steps) + "</ol></div>")
        if r.summary.get("unquantized_ops"):
            ops = ", ".join(f"<code>{esc(o)}</code>" for o in r.summary["unquantized_ops"])
            page.add(f'<div class="banner warn"><b>Not quantized:</b> these operations run outside quantizable '
                     f"layers and stay in float, so the fully quantized score does not include them: {ops}.</div>")

        rows = [{"what": w, "score": v} for w, v in (("FP32", r.fp32), ("weights quantized only", r.scores["weights"]),
                                                     ("activations quantized only", r.scores["activations"]),
                                                     ("fully quantized", r.quantized)) if v is not None]
        for row in rows:
            row["delta"] = None if r.fp32 is None else row["score"] - r.fp32
            row["label"] = fmt(row["score"]) + ("" if row["what"] == "FP32" or row["delta"] is None
                                                 else f"  ({signed(row['delta'])})")
        if rows:
            page.chart("sensitivity", _charts.sensitivity(rows, r.fp32),
                       "Weights only: every activation quantizer off; activations only: every weight quantizer off.")

        culprits = r.culprits(5)
        page.add("<h2>Culprit layers</h2>")
        if culprits:
            bars = []
            for rank, layer in enumerate(culprits, 1):
                for measure, value, score in (("cost: only this layer quantized", layer.cost, layer.enabled),
                                              ("gain: only this layer in float", layer.gain, layer.disabled)):
                    if value is not None:
                        bars.append({"layer": layer.name, "rank": rank, "measure": measure, "value": value,
                                     "score": score, "type": layer.type})
            page.chart("culprits", _charts.culprits(bars))
            page.add('<div class="grid">' + "".join(self._culprit_card(page, rank, layer)
                                                    for rank, layer in enumerate(culprits, 1)) + "</div>")
        else:
            page.add('<p>No layer costs anything measurable on its own, and none wins anything back when left in float'
                     + ("" if r.enabled else " (the per-layer analyses are missing from this folder)") + ".</p>")
        if any(layer.sqnr_db is not None for layer in r.layers):
            names = {layer.name for layer in culprits}
            rows = [dict(row, culprit=row["layer"] in names) for row in self._mse_rows() if row["sqnr"] is not None]
            page.chart("sqnr", _charts.sqnr_profile(rows))

        page.add("<h2>Pages</h2>", self._page_list(page))
        notes = self._notes(page)
        if notes:
            page.add("<h2>Notes</h2>", notes)
        page.add("<h2>All layers</h2>", self._layer_table(page, culprits))
        self.write_page(page)

    def _culprit_card(self, page: Page, rank: int, layer: Layer) -> str:
        badges = []
        if layer.cost is not None:
            badges.append(f'<span class="badge bad" title="score change when only this layer is quantized">'
                          f"alone {esc(signed(-layer.cost))}</span>")
        if layer.gain is not None:
            badges.append(f'<span class="badge good" title="score change when only this layer stays in float">'
                          f"in float {esc(signed(layer.gain))}</span>")
        if layer.sqnr_db is not None:
            jump = f" ({esc(signed(layer.sqnr_jump_db))})" if layer.sqnr_jump_db is not None else ""
            badges.append(f'<span class="badge">SQNR {esc(fmt(layer.sqnr_db))} dB{jump}</span>')
        evidence = "".join(f"<li>{esc(line)}</li>" for line in layer_evidence(self.r, layer))
        tips = layer_suggestions(self.r, layer)
        more = "".join(f"<li>{esc(t)}</li>" for t in tips[1:])
        links = []
        for q in layer.quantizers:
            if q.histogram_page:
                links.append(page.link(q.histogram_page, f"{q.name} histogram"))
            if q.ranges_page:
                links.append(page.link(q.ranges_page, f"{q.name} channel ranges"))
        type_ = f' <span class="type">{esc(layer.type)}</span>' if layer.type else ""
        more_html = f"<ul>{more}</ul>" if more else ""
        links_html = '<p class="links">' + "".join(links) + "</p>" if links else ""
        name = page.link(INDEX, layer.name, f"layer-{layer.index}")
        return (f'<div class="card culprit" id="culprit-{rank}"><h3><span class="rank">#{rank}</span>{name}{type_}</h3>'
                f'<div class="badges">{"".join(badges)}</div><ul>{evidence}</ul>'
                f'<div class="try"><b>Try:</b> {esc(tips[0])}{more_html}</div>{links_html}</div>')

    def _page_list(self, page: Page) -> str:
        items = []
        described = {ENABLED: "score with only one layer quantized, per layer",
                     DISABLED: "score with all but one layer quantized, per layer",
                     MSE: "output MSE and SQNR of every layer",
                     WEIGHT_RANGES: "encoding range of every weight",
                     ACTIVATION_RANGES: "encoding range of every activation"}
        for target, label in self.nav[1:]:
            items.append(f"<li>{page.link(target, label)}: {esc(described.get(target, ''))}</li>")
        acts = sum(1 for q in self.r.quantizers.values() if q.histogram_page and not q.is_param)
        weights = sum(1 for q in self.r.quantizers.values() if q.histogram_page and q.is_param)
        channels = sum(1 for q in self.r.quantizers.values() if q.ranges_page)
        if acts or weights:
            items.append(f"<li>Histograms: {acts} activation and {weights} weight pages, linked from the table "
                         "below</li>")
        elif self.r.text("quant_scheme") == "tf":
            items.append("<li>No histograms: the tf (min-max) scheme keeps no histogram.</li>")
        if channels:
            items.append(f"<li>Per-channel ranges: {channels} weight pages, linked from the table below</li>")
        items.append(f"<li>Everything machine-readable: {page.link(PurePosixPath('summary.json'), 'summary.json')}"
                     "</li>" if (self.root / "summary.json").is_file() else "")
        return "<ul>" + "".join(items) + "</ul>"

    def _notes(self, page: Page) -> str:
        s = self.r.summary
        out = []
        folded = [f for f in s.get("folded_batch_norms") or [] if isinstance(f, (list, tuple)) and len(f) == 2]
        if folded:
            out.append("<li>Batch norms folded before the analysis: " + ", ".join(
                f"<code>{esc(bn)}</code> \u2192 <code>{esc(into)}</code>" for bn, into in folded) + ".</li>")
        unused = s.get("unused_quantizers") or []
        if unused:
            out.append("<li>Quantizers that saw no data during calibration (their layers never ran): " + ", ".join(
                f"<code>{esc(u)}</code>" for u in unused) + ".</li>")
        out.append("<li>Scores are what <code>eval_callback</code> returned; higher is better.</li>")
        return "<ul>" + "".join(out) + "</ul>"

    def _layer_table(self, page: Page, culprits: List[Layer]) -> str:
        r = self.r
        names = {layer.name for layer in culprits}
        head = ("<thead><tr><th class=\"num\">#</th><th>layer</th><th>type</th><th>quantizers (histograms)</th>"
                "<th class=\"num\">only this quantized</th><th class=\"num\">all but this</th>"
                "<th class=\"num\">MSE</th><th class=\"num\">SQNR dB</th><th class=\"num\">\u0394 SQNR</th>"
                "<th class=\"num\">clipped</th></tr></thead>")

        def cell(value: Optional[float], text: str, cls: str = "") -> str:
            v = "" if value is None else f' data-v="{value:.9g}"'
            return f'<td class="num {cls}"{v}>{esc(text)}</td>'

        body = []
        for layer in r.layers:
            qs = []
            for q in layer.quantizers:
                target = q.histogram_page or q.ranges_page
                qs.append(page.link(target, q.name) if target else esc(q.name))
            clips = [q.stats.get("clipped_fraction") for q in layer.quantizers]
            clip = max((c for c in clips if c is not None), default=None)
            cost_cls = "bad" if layer.cost is not None and layer.cost > 0 and layer.name in names else ""
            gain_cls = "good" if layer.gain is not None and layer.gain > 0 and layer.name in names else ""
            row_cls = ' class="culprit-row"' if layer.name in names else ""
            body.append(
                f'<tr id="layer-{layer.index}"{row_cls}><td class="num" data-v="{layer.index}">{layer.index}</td>'
                f'<td class="name mono">{esc(layer.name)}</td><td>{esc(layer.type or layer.op_type)}</td>'
                f'<td class="name">{", ".join(qs) or "<span class=meta>none</span>"}</td>'
                + cell(layer.enabled, _with_delta(layer.enabled, None if layer.cost is None else -layer.cost), cost_cls)
                + cell(layer.disabled, _with_delta(layer.disabled, layer.gain), gain_cls)
                + cell(layer.mse, fmt(layer.mse) if layer.mse is not None else "")
                + cell(layer.sqnr_db, fmt(layer.sqnr_db) if layer.sqnr_db is not None else "")
                + cell(layer.sqnr_jump_db, signed(layer.sqnr_jump_db) if layer.sqnr_jump_db is not None else "")
                + cell(clip, pct(clip) if clip is not None else "") + "</tr>")
        table = f'<table class="sortable">{head}<tbody>{"".join(body)}</tbody></table>'
        opened = " open" if len(r.layers) <= 80 else ""
        return (f"<details{opened}><summary>{len(r.layers)} layers in execution order (click a column to sort)"
                f"</summary>{table}</details>")


def _with_delta(score: Optional[float], delta: Optional[float]) -> str:
    if score is None:
        return ""
    return fmt(score) + (f" ({signed(delta)})" if delta is not None else "")


def build(results_dir: Any, *, png: bool = False, svg: bool = False) -> List[Path]:
    return _Builder(results_dir, png, svg).build()
