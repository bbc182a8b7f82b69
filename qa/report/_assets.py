"""The report's shared stylesheet and page script, written once per results folder into _static/."""

CSS = """\
/* qa report: one stylesheet for every page. */
:root { --ink: #1f2328; --muted: #5b636d; --line: #e3e6ea; --bg: #f6f7f9; --card: #fff;
        --bad: #c8423b; --good: #2f7fb8; --warn: #b7791f; --accent: #4c78a8; }
* { box-sizing: border-box; }
html { background: var(--bg); }
body { margin: 0; color: var(--ink); font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.92em; }
nav.top { background: #20252b; color: #dfe3e8; padding: 0.55rem 1.5rem; display: flex; flex-wrap: wrap; gap: 0.3rem 1.2rem;
          align-items: baseline; position: sticky; top: 0; z-index: 10; }
nav.top a { color: #dfe3e8; font-size: 0.92rem; }
nav.top a.home { color: #fff; font-weight: 700; font-size: 1rem; margin-right: 0.6rem; }
nav.top a.here { color: #fff; border-bottom: 2px solid #8fb4dd; }
main { max-width: 1240px; margin: 0 auto; padding: 1.4rem 1.5rem 3rem; }
h1 { font-size: 1.55rem; margin: 0.2rem 0 0.2rem; overflow-wrap: anywhere; }
h2 { font-size: 1.2rem; margin: 2rem 0 0.6rem; padding-bottom: 0.25rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 0 0 0.4rem; overflow-wrap: anywhere; }
p.meta { color: var(--muted); margin: 0 0 1rem; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 1rem 1.2rem; margin: 0.8rem 0; }
.verdict { border-left: 5px solid var(--bad); }
.verdict.ok { border-left-color: var(--good); }
.verdict .title { font-size: 1.2rem; font-weight: 650; margin: 0 0 0.4rem; }
.verdict ol { margin: 0.3rem 0 0; padding-left: 1.4rem; }
.verdict li { margin: 0.2rem 0; }
.banner { border-radius: 8px; padding: 0.7rem 1rem; margin: 0.8rem 0; }
.banner.error { background: #fdecea; border: 1px solid #f5c2bd; }
.banner.warn { background: #fff7e6; border: 1px solid #f3d9a4; }
.banner.info { background: #eef5fc; border: 1px solid #cfe0f3; }
.chart { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 0.8rem; margin: 0.8rem 0;
         overflow-x: auto; min-height: 60px; }
.chart .vega-embed { display: block; }
.chart .chart-wrapper { display: flex; flex-direction: column; align-items: flex-start; }
.chart .chart-wrapper .vega-bindings { order: -1; margin: 0 0 0.5rem; }
.chart-error { color: var(--bad); font-weight: 600; }
figcaption { color: var(--muted); font-size: 0.9rem; margin-top: 0.3rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 0.8rem; }
.culprit h3 .rank { color: var(--muted); font-weight: 500; margin-right: 0.3rem; }
.culprit .type { color: var(--muted); font-weight: 500; font-size: 0.9rem; }
.badges { margin: 0.2rem 0 0.5rem; }
.badge { display: inline-block; border-radius: 999px; padding: 0.05rem 0.6rem; font-size: 0.82rem; font-weight: 600;
         margin: 0 0.3rem 0.25rem 0; background: #eef0f3; color: var(--ink); }
.badge.bad { background: #fbe3e1; color: #9b2c25; }
.badge.good { background: #e2eef8; color: #1d5d8c; }
.culprit ul { margin: 0.2rem 0 0.4rem; padding-left: 1.2rem; }
.culprit li { margin: 0.15rem 0; overflow-wrap: anywhere; }
.culprit .try { background: #f3f8f1; border-radius: 6px; padding: 0.4rem 0.7rem; margin-top: 0.4rem; }
.culprit .try b { color: #2d6a2d; }
.links { display: flex; flex-wrap: wrap; gap: 0.2rem 0.9rem; margin: 0.5rem 0 0; }
.links a { overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; background: var(--card); font-size: 0.9rem; }
th, td { text-align: left; padding: 0.3rem 0.55rem; border-bottom: 1px solid var(--line); vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.name { overflow-wrap: anywhere; max-width: 28rem; }
thead th { position: sticky; top: 2.6rem; background: #eef0f3; z-index: 1; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th:after { content: " \\2195"; color: #aab; font-size: 0.8em; }
tr.culprit-row td { background: #fff5f4; }
td.bad { color: var(--bad); font-weight: 600; }
td.good { color: var(--good); font-weight: 600; }
details > summary { cursor: pointer; font-weight: 600; margin: 0.4rem 0; }
.pages { columns: 3 16rem; }
.pages li { break-inside: avoid; }
footer { color: var(--muted); font-size: 0.85rem; margin-top: 2.5rem; border-top: 1px solid var(--line); padding-top: 0.6rem; }
.vega-bindings { font-weight: 600; }
.vega-bindings input[type=range] { width: 28rem; max-width: 70vw; vertical-align: middle; }
"""

JS = """\
// qa report: draws every chart of a page from its embedded Vega-Lite spec with the
// Vega bundle stored next to the report (no network), and makes tables sortable.
(function () {
  "use strict";
  var OPTIONS = { mode: "vega-lite", renderer: "canvas",
                  actions: { export: true, source: false, compiled: false, editor: false } };

  function fail(el, message) {
    var p = document.createElement("p");
    p.className = "chart-error";
    p.textContent = message;
    el.appendChild(p);
  }

  function drawCharts() {
    var charts = document.querySelectorAll("[data-qa-spec]");
    for (var i = 0; i < charts.length; i++) {
      var el = charts[i];
      if (typeof window.vegaEmbed !== "function") {
        fail(el, "Charts need _static/qa_vega.js from the results folder; it did not load.");
        continue;
      }
      var source = document.getElementById(el.getAttribute("data-qa-spec"));
      var spec;
      try { spec = JSON.parse(source.textContent); } catch (e) { fail(el, "Unreadable chart data: " + e); continue; }
      (function (target) {
        window.vegaEmbed(target, spec, OPTIONS).catch(function (e) { fail(target, "Chart failed: " + e); });
      })(el);
    }
  }

  function sortKey(cell) {
    var v = cell.getAttribute("data-v");
    if (v === null) return cell.textContent.trim().toLowerCase();
    var n = parseFloat(v);
    return isNaN(n) ? -Infinity : n;
  }

  function makeSortable(table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    for (var c = 0; c < heads.length; c++) {
      (function (col, th) {
        th.addEventListener("click", function () {
          var body = table.tBodies[0];
          var rows = Array.prototype.slice.call(body.rows);
          var asc = th.getAttribute("data-dir") !== "asc";
          for (var k = 0; k < heads.length; k++) heads[k].removeAttribute("data-dir");
          th.setAttribute("data-dir", asc ? "asc" : "desc");
          rows.sort(function (a, b) {
            var x = sortKey(a.cells[col]), y = sortKey(b.cells[col]);
            return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
          });
          for (var r = 0; r < rows.length; r++) body.appendChild(rows[r]);
        });
      })(c, heads[c]);
    }
  }

  function start() {
    drawCharts();
    var tables = document.querySelectorAll("table.sortable");
    for (var t = 0; t < tables.length; t++) makeSortable(tables[t]);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
"""
