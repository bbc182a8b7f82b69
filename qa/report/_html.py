"""Every HTML page of a results folder, built from its JSON files alone (needs altair, vl-convert and Jinja2)."""

from __future__ import annotations

import functools
import json
import logging
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

import jinja2
import markupsafe
import numpy as np
import vl_convert

from .._version import __version__
from ..errors import QAError
from . import ResultsDir, _charts
from ._advice import (alerts, bits, fmt, headline, layer_evidence, layer_suggestions, local_kind, matters,
                      measured_tips, pct, quantizer_evidence, signed, try_label, verified_fixes)
from ._assets import CSS, JS
from ._groups import GROUP_FROM, Block, group_layers
from ._load import LIMIT, MAX_BITWIDTH, HistogramView, QuantizerView, Results, load_results, num, validate

log = logging.getLogger("qa")

STATIC = PurePosixPath("_static")
BUNDLE, STYLESHEET, SCRIPT = STATIC / "qa_vega.js", STATIC / "qa.css", STATIC / "qa.js"
MANIFEST = STATIC / "pages.json"  # the pages and images the last build wrote, so the next removes what it does not
INDEX = PurePosixPath("index.html")
ENABLED, DISABLED = PurePosixPath("per_layer_quant_enabled.html"), PurePosixPath("per_layer_quant_disabled.html")
MSE = PurePosixPath("per_layer_mse_loss.html")
WEIGHT_RANGES = PurePosixPath("min_max_ranges/weights.html")
ACTIVATION_RANGES = PurePosixPath("min_max_ranges/activations.html")
EXPORTS = "charts"  # PNG/SVG exports: charts/<page path>_<chart>.png
HIST_BINS, CHANNEL_BINS = 256, 96
TOP_SORTED = 25  # the per-layer pages' ranked chart: this many layers (and the culprits)
TOP = 30  # charts of a large model show this many rows of a ranking; the rest is one click away
SMALL = GROUP_FROM  # at most this many layers: every chart shows every layer, the table is not grouped
# Paths the report writes (and only those): a stale one in the manifest is removed, nothing else ever is.
OWN_FILES = re.compile(r"(index|per_layer_quant_enabled|per_layer_quant_disabled|per_layer_mse_loss)\.html"
                       r"|(min_max_ranges|activations_pdf)/\w+\.html|weights_pdf/\w+/\w+\.html"
                       r"|charts/(\w+/){0,2}\w+\.(png|svg)")
DESCRIBED = {ENABLED: "score with only one layer quantized, per layer",
             DISABLED: "score with all but one layer quantized, per layer",
             MSE: "output MSE and SQNR of every layer",
             WEIGHT_RANGES: "encoding range of every weight",
             ACTIVATION_RANGES: "encoding range of every activation"}


def script_json(data: Any) -> markupsafe.Markup:
    """JSON that is safe inside <script type="application/json">: no '<', '>' or '&' survives, so
    nothing in it (a layer named '</script>' for instance) can close the element.

    The one Markup of the report: HTML-escaping would corrupt the JSON (a script's text is not
    unescaped), and the escapes above already make it inert.
    """
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch in "&<>\u2028\u2029":
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return markupsafe.Markup(text)


@functools.lru_cache(maxsize=1)
def templates() -> jinja2.Environment:
    """The page templates (qa/report/templates, found through the package as installed).

    Everything is escaped unless a filter says otherwise (only ``script_json`` does), and a
    misspelt variable is an error rather than an empty string.
    """
    env = jinja2.Environment(loader=jinja2.PackageLoader("qa.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update(script_json=script_json, fmt=fmt, pct=pct, signed=signed, bits=bits)
    env.globals.update(version=__version__, INDEX=INDEX, STYLESHEET=STYLESHEET, BUNDLE=BUNDLE, SCRIPT=SCRIPT,
                       DESCRIBED=DESCRIBED, inf=float("inf"))
    return env


@functools.lru_cache(maxsize=4)
def vega_bundle(vl_version: str) -> str:
    """Vega, Vega-Lite and vega-embed in one classic script that defines window.vegaEmbed (~900 kB)."""
    versions = vl_convert.get_vegalite_versions()
    js = vl_convert.javascript_bundle(vl_version=vl_version if vl_version in versions else None)
    return (f"/* qa report: Vega {vl_convert.get_vega_version()}, Vega-Lite {vl_version}, vega-embed "
            f"{vl_convert.get_vega_embed_version()}, bundled by vl-convert {vl_convert.__version__} */\n{js}")


def _grid(q: QuantizerView, most_levels: int = 64) -> List[float]:
    """The values a per-tensor encoding can represent, when there are few enough to draw."""
    enc = q.encoding
    if not isinstance(enc, dict):
        return []
    scale, offset, bw = num(enc.get("scale")), num(enc.get("offset")), q.bitwidth  # bw: 1..64 or None
    if scale is None or offset is None or bw is None or not scale > 0 or 2 ** bw > most_levels:
        return []
    grid = [(offset + k) * scale for k in range(2 ** bw)]
    return grid if all(abs(g) <= LIMIT for g in grid) else []


def _bins(total: float, most: int) -> int:
    """Display bins: about 2 sqrt(n), so that a small tensor is not a comb of empty bins."""
    return int(min(most, max(16, 2 * np.sqrt(max(total, 0.0)))))


@dataclass
class Chart:
    """One chart of a page: a Vega-Lite spec embedded as JSON, drawn in the browser by _static/qa.js."""

    key: str  # names the exported PNG/SVG
    id: str  # of the <script type="application/json"> holding the spec
    spec: Dict[str, Any]
    caption: str = ""
    more: str = ""  # set: the chart sits in a closed <details> with this summary, drawn when opened


class Page:
    """One HTML page: where it goes, its title, its charts; links are made relative to it."""

    def __init__(self, rel: PurePosixPath, title: str) -> None:
        self.rel, self.title = rel, title
        self.charts: List[Chart] = []

    def url(self, target: PurePosixPath, anchor: str = "") -> str:
        """The relative URL of target from this page (names are sanitized, quoted all the same)."""
        rel = posixpath.relpath(str(target), str(self.rel.parent) or ".")
        return quote(rel) + (f"#{quote(anchor)}" if anchor else "")

    def chart(self, key: str, spec: Dict[str, Any], caption: str = "", more: str = "") -> Chart:
        n = _charts.left_out(spec)
        if n:  # said, not hidden: NaN, inf or absurd values in the files
            note = f"{n} value{'s' if n > 1 else ''} NaN, infinite or beyond \u00b11e100: left out of this chart."
            caption = f"{caption} {note}" if caption else note
        chart = Chart(key, f"qa-spec-{len(self.charts)}", spec, caption, more)
        self.charts.append(chart)
        return chart


class _Builder:
    def __init__(self, results_dir: Any, png: bool, svg: bool) -> None:
        self.out = ResultsDir(results_dir, create=False)  # qa report on a missing folder creates nothing
        self.root = self.out.root
        self.png, self.svg = png, svg
        self.r: Results = load_results(self.out, self.json_rel)
        self.culprit_rank: Dict[str, int] = {layer.name: k for k, layer in enumerate(self.r.culprits(5), 1)}
        self.blocks: Optional[List[Block]] = group_layers([layer.name for layer in self.r.layers])
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
        self._write(self.target(rel), text.encode("utf-8"))

    def _write(self, path: Path, data: bytes) -> None:
        self.out.write_bytes(data, path)
        if path not in self.written:
            self.written.append(path)

    def data_link(self, rel: PurePosixPath) -> Optional[PurePosixPath]:
        """rel when the page may link to it: one of this run's files, and there."""
        return rel if self.r.readable(rel) else None

    def write_page(self, page: Page, template: str, **context: Any) -> None:
        """Render one page template; every page template extends base.html.j2."""
        text = templates().get_template(template).render(page=page, nav=self.nav, **context)
        self.write_text(page.rel, text)
        if self.png or self.svg:
            for chart in page.charts:
                self.export(page.rel, chart.key, chart.spec)

    def export(self, rel: PurePosixPath, key: str, spec: Dict[str, Any]) -> None:
        stem = f"{rel.stem}_{key}"
        folder = (EXPORTS, *rel.parent.parts)
        for suffix, enabled in (("png", self.png), ("svg", self.svg)):
            if not enabled:
                continue
            try:
                if suffix == "png":
                    data = vl_convert.vegalite_to_png(spec, vl_version=self.vl_version, scale=2)
                else:
                    data = vl_convert.vegalite_to_svg(spec, vl_version=self.vl_version).encode("utf-8")
            except (ValueError, RuntimeError) as e:  # vl-convert reports bad specs as ValueError
                log.warning("could not export the chart %s of %s: %s", key, rel, e)
                continue
            self._write(self.out.path(*folder, f"{stem}.{suffix}"), data)

    def write_static(self) -> None:
        self.write_text(BUNDLE, vega_bundle(self.vl_version))
        self.write_text(STYLESHEET, CSS)
        self.write_text(SCRIPT, JS)

    # -- the pages --

    def previous_build(self) -> List[str]:
        """The pages and images the last build in this folder wrote (its manifest), if it left one."""
        try:
            data = self.out.read_json(MANIFEST)
        except QAError as e:
            log.warning("ignoring the report's manifest: %s", e)
            return []
        files = data.get("files") if isinstance(data, dict) else None
        return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []

    def remove_stale(self, before: List[str]) -> None:
        """Remove what the last build wrote and this one did not: only paths the report writes."""
        now = {p.relative_to(self.root).as_posix() for p in self.written}
        for rel in before:
            if rel not in now and OWN_FILES.fullmatch(rel):
                self.out.remove(rel)

    def build(self) -> List[Path]:
        before = self.previous_build()
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
        self.remove_stale(before)
        own = sorted(p.relative_to(self.root).as_posix() for p in self.written
                     if OWN_FILES.fullmatch(p.relative_to(self.root).as_posix()))
        self._write(self.target(MANIFEST), json.dumps({"files": own}, indent=1).encode("utf-8"))
        return self.written

    def histogram_page(self, q: QuantizerView) -> None:
        assert q.histogram_json is not None
        try:
            record = self.out.read_json(q.histogram_json)
            validate(record, q.histogram_json.as_posix(), "histogram")
            if isinstance(record, dict) and isinstance(record.get("channels"), list):
                hists = [HistogramView.from_record(c) for c in record["channels"]]
            else:
                hists = [HistogramView.from_record(record)]
        except Exception as e:  # one unreadable file must not stop the others
            log.warning("skipped the histogram page of %r: %s is not a qa histogram (%s)", q.name,
                        q.histogram_json.as_posix(), e)
            return
        if not hists:
            return
        rel = q.histogram_json.with_suffix(".html")
        what = "Weight" if q.is_param else "Activation"
        page = Page(rel, f"{what} histogram: {q.name}")
        if len(hists) == 1:
            shown = self._histogram(page, q, hists[0])
        else:
            shown = self._channel_histograms(page, q, hists)
        q.histogram_page = rel
        self.write_page(page, "histogram.html.j2", q=q, what=what, layer=self.r.layer(q.layer),
                        scheme=self.r.text("quant_scheme"), evidence=quantizer_evidence(q), **shown)

    def _histogram(self, page: Page, q: QuantizerView, h: HistogramView) -> Dict[str, Any]:
        q.stats = h.stats(q.scale)
        lo, width, counts = h.display(_bins(h.total, HIST_BINS))
        rows = [{"x0": lo + i * width, "x1": lo + (i + 1) * width, "n": float(c)} for i, c in enumerate(counts)]
        markers = [{"what": "encoding min", "x": h.encoding_min}, {"what": "encoding max", "x": h.encoding_max}]
        grid = _grid(q)
        chart = page.chart("histogram", _charts.histogram(
            rows, [m for m in markers if m["x"] is not None], f"What {q.name} saw",
            f"{int(h.total):,} values in {len(counts)} bins; dashed: encoding min and max"
            + (f"; grey: the {len(grid)} levels values round to" if grid else ""), grid))
        return {"single": h, "channels": None, "chart": chart}

    def _channel_histograms(self, page: Page, q: QuantizerView, hists: List[HistogramView]) -> Dict[str, Any]:
        scales = [num(e.get("scale")) if isinstance(e, dict) else None for e in q.encoding] \
            if isinstance(q.encoding, list) else []
        per = [h.stats(s if s and s > 0 else None) for h, s in zip(hists, scales + [None] * len(hists))]
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
        chart = page.chart("histogram", _charts.channel_histogram(
            rows, default, f"What {q.name} saw, per channel", "dashed: the chosen channel's encoding min and max"))
        channels = {"count": len(hists), "default": default, "worst": worst_clip,
                    "worst_clipped": per[worst_clip]["clipped_fraction"]}
        return {"single": None, "channels": channels, "chart": chart}

    def channel_ranges_page(self, q: QuantizerView) -> None:
        rel = self.json_rel("min_max_ranges", f"{q.name}.html")
        if rel in (WEIGHT_RANGES, ACTIVATION_RANGES):
            rel = self.json_rel("min_max_ranges", f"{q.name}_channels.html")
        pairs = q.channel_ranges()
        page = Page(rel, f"Per-channel ranges: {q.name}")
        rows = [{"c": c, "min": a, "max": b, "width": b - a} for c, (a, b) in enumerate(pairs)]
        spread = q.channel_spread()
        chart = page.chart("ranges", _charts.channel_ranges(rows, f"Encoding range per channel: {q.name}"))
        q.ranges_page = rel
        self.write_page(page, "channel_ranges.html.j2", q=q, layer=self.r.layer(q.layer), channels=len(pairs),
                        spread=fmt(spread) if spread else "n/a", chart=chart)

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
        charts = []
        if rows:
            sub = ("a range far wider than its neighbours' often means outliers" if not weights else
                   "orange: per-channel weights, drawn as the envelope of their channels")
            if len(rows) <= SMALL:
                charts.append(page.chart("ranges", _charts.ranges(rows, f"{what.capitalize()} encoding ranges", sub)))
            else:  # the widest ranges and the culprits' quantizers; every range one click away
                culprit = [row for row in rows if row["layer"] in self.culprit_rank]
                rest = sorted((row for row in rows if row["layer"] not in self.culprit_rank),
                              key=lambda row: (-(row["max"] - row["min"]), row["i"]))
                for row in culprit + rest[:max(TOP - len(culprit), 0)]:
                    row["top"] = True
                k = sum(1 for row in rows if row.get("top"))
                title = f"The {k} widest of {len(rows)} {what} encoding ranges"
                if culprit:
                    title = f"The {k} of {len(rows)} {what} encoding ranges: the widest and the culprit layers'"
                charts.append(page.chart("ranges", _charts.ranges(rows, title, sub + "; in execution order",
                                                                  shown=True)))
                charts.append(page.chart("ranges_all", _charts.ranges(
                    rows, f"Every {what} encoding range ({len(rows)})", sub),
                    more=f"Show all {len(rows)} {what} ranges (a tall chart)"))
        self.write_page(page, "ranges.html.j2", weights=weights, what=what, scheme=self.r.text("quant_scheme"),
                        data=self.data_link(rel.with_suffix(".json")), charts=charts,
                        per_channel=[q for q in qs if q.ranges_page])

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
            culprit = self.culprit_rank.get(row["layer"])
            row["culprit"] = f"#{culprit}" if culprit else None
            row["top"] = rank <= TOP_SORTED or culprit is not None
        return rows

    def per_layer_page(self, enabled: bool) -> None:
        r = self.r
        rel = ENABLED if enabled else DISABLED
        page = Page(rel, "Per-layer analysis: " + ("only one layer quantized" if enabled else "all but one layer"))
        rows = self._layer_rows(enabled)
        refs = [{"what": "FP32", "score": r.fp32}, {"what": "fully quantized", "score": r.quantized}]
        refs = [x for x in refs if x["score"] is not None]
        shown = sum(1 for row in rows if row["top"])
        top = min(TOP_SORTED, len(rows))
        extra = shown - top  # culprits below the top of this sweep's ranking
        what = "only this layer quantized" if enabled else "all but this layer quantized"
        if shown == len(rows):
            title = f"All {len(rows)} layers, " + ("costliest first" if enabled else "biggest recovery first")
        else:
            title = (f"The {top} of {len(rows)} layers that " + ("cost the most" if enabled else "win back the most")
                     + (f", and {extra} more culprit{'s' if extra > 1 else ''}" if extra > 0 else ""))
        sorted_chart = page.chart("sorted", _charts.per_layer_scores(
            rows, refs, ref_label="FP32" if enabled else "fully quantized", sort_field="rank", title=title,
            subtitle=f"score with {what}; sorted, {'worst' if enabled else 'biggest recovery'} first", top=shown))
        many = len(rows) > SMALL
        order_chart = page.chart("order", _charts.per_layer_scores(
            rows, refs, ref_label="", sort_field="i", title=f"Every layer in execution order ({len(rows)})",
            subtitle=f"score with {what}; lines: FP32 and fully quantized scores"),
            more=f"Show all {len(rows)} layers in execution order (a tall chart)" if many else "")
        broken = [(layer, layer.enabled_nonfinite if enabled else layer.disabled_nonfinite) for layer in r.layers]
        self.write_page(page, "per_layer.html.j2", enabled=enabled, data=self.data_link(rel.with_suffix(".json")),
                        charts=[sorted_chart, order_chart], broken=[(layer, why) for layer, why in broken if why])

    def _mse_rows(self) -> List[Dict[str, Any]]:
        return [{"i": layer.index, "layer": layer.name, "type": layer.type or layer.op_type, "mse": layer.mse,
                 "sqnr": layer.sqnr_db, "jump": layer.sqnr_jump_db, "local": layer.local_sqnr_db,
                 "local_mse": layer.local_mse}
                for layer in self.r.layers if layer.mse is not None or layer.sqnr_db is not None]

    def _bands(self, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """The module groups as shaded spans of a chart over execution order (x: the layer index)."""
        if not self.blocks:
            return []
        drawn = {row["i"] for row in rows}
        bands = []
        for block in self.blocks:
            members = [m for m in block.members if m in drawn]
            if block.grouped and members:
                bands.append({"x0": min(members) - 0.5, "x1": max(members) + 0.5, "label": block.label,
                              "k": len(bands)})
        return bands

    def _entry_order(self, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """The MSE rows ranked by how much error enters at the layer, worst first: the lowest SQNR on
        its own (FP32 inputs) when summary.json has it, else the largest SQNR drop (or MSE rise) from the
        previous layer."""
        def key(row: Dict[str, Any]) -> Tuple[int, float, int]:
            if row.get("local") is not None:
                return 0, row["local"], row["i"]
            if row.get("jump") is not None:
                return 1, row["jump"], row["i"]
            return 2, -(row["mse"] or 0.0), row["i"]
        return sorted(rows, key=key)

    def mse_page(self) -> None:
        page = Page(MSE, "Per-layer MSE and SQNR")
        drops = sorted((layer for layer in self.r.layers if layer.sqnr_jump_db is not None and layer.sqnr_jump_db < 0),
                       key=lambda layer: layer.sqnr_jump_db)[:5]
        rows = self._mse_rows()
        local = any(row["local"] is not None or row["local_mse"] is not None for row in rows)
        charts = []
        if len(rows) <= SMALL:
            charts.append(page.chart("mse_sqnr", _charts.mse_sqnr(rows, local=local)))
        else:
            if any(row["sqnr"] is not None for row in rows):
                profile = [dict(row, culprit=row["layer"] in self.culprit_rank) for row in rows
                           if row["sqnr"] is not None]
                charts.append(page.chart("sqnr", _charts.sqnr_profile(
                    profile, self._bands(profile), local=local, title=f"SQNR along the network ({len(rows)} layers)")))
            culprit = [row for row in rows if row["layer"] in self.culprit_rank]
            ranked = [row for row in self._entry_order(rows) if row["layer"] not in self.culprit_rank]
            for row in culprit + ranked[:max(TOP - len(culprit), 0)]:
                row["top"] = True
            k = sum(1 for row in rows if row.get("top"))
            how = ("the lowest SQNR on their own (FP32 inputs)" if local else
                   "the largest SQNR drops from the previous layer" if any(row["jump"] is not None for row in rows)
                   else "the largest MSE")
            charts.append(page.chart("mse_sqnr", _charts.mse_sqnr(
                rows, shown=True, local=local, title=f"The {k} of {len(rows)} layers where the most error enters",
                subtitle=f"{how}{' and the culprit layers' if culprit else ''}, in execution order")))
            charts.append(page.chart("mse_sqnr_all", _charts.mse_sqnr(
                rows, local=local, title=f"Every layer ({len(rows)})"),
                more=f"Show all {len(rows)} layers (a tall chart)"))
        self.write_page(page, "mse.html.j2", data=self.data_link(MSE.with_suffix(".json")), drops=drops,
                        has_sqnr=bool(self.r.sqnr), charts=charts, local=local,
                        local_data=self.data_link(PurePosixPath("per_layer_local_mse_loss.json")) if local else None)

    # -- the dashboard --

    def index_page(self) -> None:
        r = self.r
        page = Page(INDEX, "Dashboard")
        s = r.summary
        meta = [r.text("quant_scheme", "scheme unknown")]
        for key, what in (("default_param_bw", "weights"), ("default_output_bw", "activations")):
            bw = num(s.get(key))
            if bw is not None and 1 <= bw <= MAX_BITWIDTH:
                meta.append(f"{what} {int(bw)}-bit")
        if s.get("aimet_compat") is True:
            meta.append("AIMET-compatible numbers")
        meta += [f"{len(r.layers)} layers", f"{len(r.quantizers)} quantizers"]
        if r.active_quantizers is not None and r.active_quantizers != len(r.quantizers):
            meta.append(f"{r.active_quantizers} active")
        seconds = s.get("seconds") if isinstance(s.get("seconds"), dict) else {}
        took = sum(num(v) or 0.0 for v in seconds.values())
        if 0 < took <= LIMIT:
            meta.append(f"analysis took {took:.1f} s")
        status = r.text("status", "")
        verdict = headline(r)

        rows = [{"what": w, "score": v} for w, v in (("FP32", r.fp32), ("weights quantized only", r.scores["weights"]),
                                                     ("activations quantized only", r.scores["activations"]),
                                                     ("fully quantized", r.quantized)) if v is not None]
        for row in rows:
            row["delta"] = None if r.fp32 is None else row["score"] - r.fp32
            row["label"] = fmt(row["score"]) + ("" if row["what"] == "FP32" or row["delta"] is None
                                                 else f"  ({signed(row['delta'])})")
        sensitivity = page.chart("sensitivity", _charts.sensitivity(rows, r.fp32), "Weights only: every activation "
                                 "quantizer off; activations only: every weight quantizer off.") if rows else None

        culprits = r.culprits(5)
        culprits_chart = None
        if culprits:
            bars, nan = [], []
            for rank, layer in enumerate(culprits, 1):
                for measure, value, score in (("cost: only this layer quantized", layer.cost, layer.enabled),
                                              ("gain: only this layer in float", layer.gain, layer.disabled)):
                    if value == float("inf"):  # a NaN score: no bar is long enough; said in the caption
                        nan.append(layer.name)
                    elif value is not None:
                        bars.append({"layer": layer.name, "rank": rank, "measure": measure, "value": value,
                                     "score": score, "type": layer.type})
            caption = (f"Not drawn: {', '.join(dict.fromkeys(nan))} (a NaN or infinite score, worse than any bar)."
                       if nan else "")
            culprits_chart = page.chart("culprits", _charts.culprits(bars), caption)
        cards = []
        for rank, layer in enumerate(culprits, 1):
            material = matters(r, layer.impact)
            measured = measured_tips(r, layer)  # recommendation.json's facts replace the unverified advice
            cards.append({"rank": rank, "layer": layer, "evidence": layer_evidence(r, layer),
                          "local": local_kind(layer),
                          "tips": measured or (layer_suggestions(r, layer) if material else []),
                          "label": "Measured (verified fixes, best first):" if measured else try_label(r, layer.impact),
                          "note": "" if material else f"Its effect ({fmt(layer.impact)}) is under 1% of the FP32 "
                                                      "score: nothing needs to change for it."})
        names = {layer.name for layer in culprits}
        sqnr_chart = None
        if any(layer.sqnr_db is not None for layer in r.layers):
            sqnr_rows = [dict(row, culprit=row["layer"] in names)
                         for row in self._mse_rows() if row["sqnr"] is not None]
            local = any(row["local"] is not None for row in sqnr_rows)
            sqnr_chart = page.chart("sqnr", _charts.sqnr_profile(sqnr_rows, self._bands(sqnr_rows), local=local),
                                    "Shaded: the module groups of the table below." if self.blocks else "")

        folded = [f for f in s.get("folded_batch_norms") or [] if isinstance(f, (list, tuple)) and len(f) == 2]
        unfolded = [f for f in s.get("unfolded_batch_norms") or [] if isinstance(f, (list, tuple)) and len(f) == 3]
        sentinels = s.get("sentinel_quantizers") if isinstance(s.get("sentinel_quantizers"), dict) else {}
        sentinels = [(q, what) for q, what in sentinels.items() if isinstance(what, str)]
        self.write_page(
            page, "dashboard.html.j2", r=r, meta=meta, status=status, error=r.text("error", ""), verdict=verdict.title,
            steps=verdict.steps, ok=verdict.ok, alerts=alerts(r, verdict.quoted), left_out=r.notes,
            unquantized_ops=s.get("unquantized_ops") or [], sensitivity=sensitivity,
            culprits_chart=culprits_chart, cards=cards, sqnr_chart=sqnr_chart, histograms=self._histogram_counts(),
            scheme=r.text("quant_scheme"), summary_link=self.data_link(PurePosixPath("summary.json")), folded=folded, unfolded=unfolded,
            unused=s.get("unused_quantizers") or [], sentinels=sentinels, table=self._layer_table(),
            fixes=verified_fixes(r), config_link=self.data_link(PurePosixPath("recommended_config.json")),
            recommendation_link=self.data_link(PurePosixPath("recommendation.json")),
            aimet_compat=s.get("aimet_compat") if isinstance(s.get("aimet_compat"), bool) else None)

    def _histogram_counts(self) -> Dict[str, int]:
        """How many histogram and channel-range pages there are, for the dashboard's list of pages."""
        qs = self.r.quantizers.values()
        return {"activations": sum(1 for q in qs if q.histogram_page and not q.is_param),
                "weights": sum(1 for q in qs if q.histogram_page and q.is_param),
                "channels": sum(1 for q in qs if q.ranges_page)}

    def _layer_table(self) -> Dict[str, Any]:
        """The dashboard's table of every layer: one row per layer (the layer, its largest clipped
        share, its culprit rank), in blocks: the module groups of a large model, each with a summary
        row, or (a small model) one block of every row."""
        r = self.r
        rows = []
        for layer in r.layers:
            clips = [q.stats.get("clipped_fraction") for q in layer.quantizers]
            rank = self.culprit_rank.get(layer.name)
            rows.append({"layer": layer, "clip": max((c for c in clips if c is not None), default=None),
                         "culprit": rank is not None, "rank": rank, "rest": layer.name, "local": local_kind(layer),
                         "quantizers": [(q, q.name) for q in layer.quantizers]})
        table: Dict[str, Any] = {"count": len(rows), "local": r.has_local, "grouped": False, "groups": 0,
                                 "example": "", "blocks": [{"group": None, "rows": rows}]}
        if not self.blocks:
            return table
        blocks = []
        for block in self.blocks:
            members = [rows[i] for i in block.members]
            if not block.grouped:
                blocks.append({"group": None, "rows": members})
                continue
            for row in members:  # inside a group: names without the group's prefix, quantizers without the layer's
                name = row["layer"].name
                row["rest"] = block.rest(name)
                row["quantizers"] = [(q, q.name[len(name) + 1:] if q.name.startswith(name + "_") and
                                      len(q.name) > len(name) + 1 else q.name) for q in row["layer"].quantizers]
            blocks.append({"group": self._group_summary(block, members), "rows": members})
        groups = [b["group"] for b in blocks if b["group"]]
        biggest = max(groups, key=lambda g: g["count"])
        table.update(grouped=True, groups=len(groups), example=biggest["label"], blocks=blocks)
        return table

    def _group_summary(self, block: Block, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
        """A group's summary row: how many layers, the worst value of each column, its culprits."""
        r = self.r
        layers = [row["layer"] for row in rows]

        def worst(values: List[Optional[float]], pick: Any) -> Optional[float]:
            present = [v for v in values if v is not None]
            return pick(present) if present else None

        enabled = worst([x.enabled for x in layers], min)
        disabled = worst([x.disabled for x in layers], max)
        nan_alone = next((x.enabled_nonfinite for x in layers if x.enabled_nonfinite), None)
        nan_float = next((x.disabled_nonfinite for x in layers if x.disabled_nonfinite), None)

        def with_delta(score: Optional[float], ref: Optional[float]) -> str:
            if score is None:
                return ""
            return fmt(score) + ("" if ref is None else f" ({signed(score - ref)})")

        top = max(layers, key=lambda x: (x.impact, -x.index))
        worst_text = ""
        if top.impact > 0:
            if top.cost is not None and top.cost >= (top.gain or 0.0):
                worst_text = "score NaN alone" if top.cost == float("inf") else f"{signed(-top.cost)} alone"
            else:
                worst_text = "back to a number in float" if top.gain == float("inf") else f"{signed(top.gain)} in float"
        types: Dict[str, int] = {}
        for x in layers:
            kind = x.type or x.op_type
            if kind:
                types[kind] = types.get(kind, 0) + 1
        common = sorted(types.items(), key=lambda kv: (-kv[1], kv[0]))
        type_text = ", ".join(f"{k} \u00d7{n}" if n > 1 else k for k, n in common[:3])
        if len(common) > 3:
            type_text += ", \u2026"
        culprits = sorted((row["rank"], row["layer"]) for row in rows if row["culprit"])
        return {"label": block.label, "count": len(layers), "first": min(x.index for x in layers),
                "last": max(x.index for x in layers), "quantizers": sum(len(x.quantizers) for x in layers),
                "types": type_text, "enabled": enabled, "disabled": disabled,
                "enabled_text": fmt(float(nan_alone)) if nan_alone else with_delta(enabled, r.fp32),
                "disabled_text": fmt(float(nan_float)) if nan_float else with_delta(disabled, r.quantized),
                "mse": worst([x.mse for x in layers], max), "sqnr": worst([x.sqnr_db for x in layers], min),
                "jump": worst([x.sqnr_jump_db for x in layers], min),
                "local": worst([x.local_sqnr_db for x in layers], min),
                "clip": worst([row["clip"] for row in rows], max),
                "worst": top if top.impact > 0 else None, "worst_text": worst_text, "worst_rest": block.rest(top.name),
                "culprits": culprits, "open": bool(culprits)}


def build(results_dir: Any, *, png: bool = False, svg: bool = False) -> List[Path]:
    return _Builder(results_dir, png, svg).build()
