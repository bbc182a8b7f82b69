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
main { max-width: 1360px; margin: 0 auto; padding: 1.4rem 1.5rem 3rem; }
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
details.more > summary { color: var(--accent); font-weight: 600; }
.table-tools button, .grp-toggle { font: inherit; cursor: pointer; }
.table-tools button { border: 1px solid var(--line); background: var(--card); border-radius: 6px;
                      padding: 0.1rem 0.6rem; color: var(--ink); margin-left: 0.3rem; }
.table-tools button[aria-pressed=true] { background: #e2eef8; border-color: #9dc1e3; }
tr.grp-head td { background: #f1f3f6; border-top: 2px solid #d5dae1; }
tr.grp-head.culprit-row td { background: #fbecea; }
.grp-toggle { border: 0; background: none; padding: 0; color: var(--ink); font-weight: 650; text-align: left; }
.grp-toggle:before { content: "\\25BE"; display: inline-block; width: 1.1em; color: var(--muted); }
.grp-toggle[aria-expanded=false]:before { content: "\\25B8"; }
tr.grp-head .count { color: var(--muted); font-size: 0.88em; }
tr.grp-head a { margin-left: 0.4rem; font-size: 0.88em; }
tr.grp-head .meta { color: var(--muted); font-size: 0.86em; }
tr.grp-head .meta a { margin-left: 0; }
tr.member td.name.mono { padding-left: 1.6rem; }
table.grouped td.name.mono, tr.grp-head td.name { min-width: 16rem; }
table.grouped td.qs { max-width: 10rem; }
table.layers thead th.num { white-space: normal; }
.pre { color: #8a939d; }
html.qa-js tbody.collapsed tr.member { display: none; }
table.flat tr.grp-head { display: none; }
table.flat tr.member td.name.mono { padding-left: 0.55rem; }
td .badge { font-size: 0.75rem; padding: 0 0.45rem; margin: 0 0 0 0.3rem; }
.pages { columns: 3 16rem; }
.pages li { break-inside: avoid; }
footer { color: var(--muted); font-size: 0.85rem; margin-top: 2.5rem; border-top: 1px solid var(--line); padding-top: 0.6rem; }
.vega-bindings { font-weight: 600; }
.vega-bindings input[type=range] { width: 28rem; max-width: 70vw; vertical-align: middle; }
"""

JS = """\
// qa report: draws every chart of a page from its embedded Vega-Lite spec with the
// Vega bundle stored next to the report (no network); charts in a closed <details> are drawn
// when it opens. Makes tables sortable, and the module groups of the layer table collapsible.
(function () {
  "use strict";
  var OPTIONS = { mode: "vega-lite", renderer: "canvas",
                  actions: { export: true, source: false, compiled: false, editor: false } };
  document.documentElement.classList.add("qa-js");

  function fail(el, message) {
    var p = document.createElement("p");
    p.className = "chart-error";
    p.textContent = message;
    el.appendChild(p);
  }

  function draw(el) {
    if (el.getAttribute("data-drawn")) return;
    el.setAttribute("data-drawn", "1");
    if (typeof window.vegaEmbed !== "function") {
      fail(el, "Charts need _static/qa_vega.js from the results folder; it did not load.");
      return;
    }
    var source = document.getElementById(el.getAttribute("data-qa-spec"));
    var spec;
    try { spec = JSON.parse(source.textContent); } catch (e) { fail(el, "Unreadable chart data: " + e); return; }
    window.vegaEmbed(el, spec, OPTIONS).catch(function (e) { fail(el, "Chart failed: " + e); });
  }

  function drawCharts(root) {
    var charts = root.querySelectorAll("[data-qa-spec]");
    for (var i = 0; i < charts.length; i++) {
      var closed = charts[i].parentElement.closest("details:not([open])");
      if (closed) { whenOpened(closed); continue; }
      draw(charts[i]);
    }
  }

  function whenOpened(details) {
    if (details.getAttribute("data-qa-watch")) return;
    details.setAttribute("data-qa-watch", "1");
    details.addEventListener("toggle", function () { if (details.open) drawCharts(details); });
  }

  function sortKey(cell) {
    if (!cell) return "";
    var v = cell.getAttribute("data-v");
    if (v === null) return cell.textContent.trim().toLowerCase();
    var n = parseFloat(v);
    return isNaN(n) ? -Infinity : n;
  }

  function compare(col, asc) {
    return function (a, b) {
      var x = sortKey(a.cells[col]), y = sortKey(b.cells[col]);
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    };
  }

  function members(body) {  // the rows of a tbody but its group's summary row
    return Array.prototype.filter.call(body.rows, function (r) { return !r.classList.contains("grp-head"); });
  }

  function visibleBodies(table) {
    return Array.prototype.filter.call(table.tBodies, function (b) { return !b.hidden; });
  }

  // Grouped: the rows inside each group, then the groups by their summary rows (a layer on its own
  // by its row). Flat, or not grouped: every row of the one tbody.
  function sortTable(table, col, asc) {
    var cmp = compare(col, asc);
    var bodies = visibleBodies(table);
    bodies.forEach(function (body) {
      var head = body.querySelector("tr.grp-head");
      var rows = members(body).sort(cmp);
      if (head) body.appendChild(head);
      rows.forEach(function (r) { body.appendChild(r); });
    });
    if (bodies.length > 1) {
      bodies.sort(function (a, b) { return cmp(a.rows[0], b.rows[0]); });
      bodies.forEach(function (b) { table.appendChild(b); });
    }
  }

  function makeSortable(table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    for (var c = 0; c < heads.length; c++) {
      (function (col, th) {
        th.addEventListener("click", function () {
          var asc = th.getAttribute("data-dir") !== "asc";
          for (var k = 0; k < heads.length; k++) heads[k].removeAttribute("data-dir");
          th.setAttribute("data-dir", asc ? "asc" : "desc");
          sortTable(table, col, asc);
        });
      })(c, heads[c]);
    }
  }

  function setOpen(body, open) {
    body.classList.toggle("collapsed", !open);
    var button = body.querySelector("button.grp-toggle");
    if (button) button.setAttribute("aria-expanded", open ? "true" : "false");
  }

  // Flat list: every row in one tbody, in execution order; back: each row to its group.
  function setFlat(table, flat) {
    var flatBody = table.querySelector("tbody.flat-rows");
    var groups = Array.prototype.filter.call(table.tBodies, function (b) {
      return !b.classList.contains("flat-rows");
    });
    if (flat) {
      if (!flatBody) {
        flatBody = document.createElement("tbody");
        flatBody.className = "flat-rows";
        table.appendChild(flatBody);
      }
      var rows = [];
      groups.forEach(function (body, g) {
        members(body).forEach(function (r) { r.setAttribute("data-home", String(g)); rows.push(r); });
        body.hidden = true;
      });
      rows.sort(function (a, b) { return sortKey(a.cells[0]) - sortKey(b.cells[0]); });
      rows.forEach(function (r) { flatBody.appendChild(r); });
      flatBody.hidden = false;
    } else if (flatBody) {
      var back = Array.prototype.slice.call(flatBody.rows);
      back.sort(function (a, b) { return sortKey(a.cells[0]) - sortKey(b.cells[0]); });
      back.forEach(function (r) { groups[parseInt(r.getAttribute("data-home"), 10)].appendChild(r); });
      groups.forEach(function (body) { body.hidden = false; });
      flatBody.hidden = true;
    }
    table.classList.toggle("flat", flat);
  }

  function makeGrouped(table) {
    var bodies = table.querySelectorAll("tbody.grp");
    for (var i = 0; i < bodies.length; i++) {
      (function (body) {
        var button = body.querySelector("button.grp-toggle");
        if (button) button.addEventListener("click", function () {
          setOpen(body, body.classList.contains("collapsed"));
        });
      })(bodies[i]);
    }
    var tools = table.parentElement.querySelector(".table-tools");
    if (!tools) return;
    var all = tools.querySelector(".qa-expand-all"), none = tools.querySelector(".qa-collapse-all");
    var flat = tools.querySelector(".qa-flat");
    function every(open) { return function () { for (var k = 0; k < bodies.length; k++) setOpen(bodies[k], open); }; }
    if (all) all.addEventListener("click", every(true));
    if (none) none.addEventListener("click", every(false));
    if (flat) flat.addEventListener("click", function () {
      var on = flat.getAttribute("aria-pressed") !== "true";
      flat.setAttribute("aria-pressed", on ? "true" : "false");
      setFlat(table, on);
    });
  }

  // A link to a row (index.html#layer-12) opens what hides it: its group and the table's <details>.
  function reveal() {
    var id = decodeURIComponent(window.location.hash.slice(1));
    var target = id && document.getElementById(id);
    if (!target) return;
    var body = target.closest("tbody.grp");
    if (body && target.classList.contains("member")) setOpen(body, true);
    for (var d = target.closest("details"); d; d = d.parentElement && d.parentElement.closest("details")) d.open = true;
    target.scrollIntoView({ block: "center" });
  }

  function start() {
    drawCharts(document);
    var tables = document.querySelectorAll("table.sortable");
    for (var t = 0; t < tables.length; t++) makeSortable(tables[t]);
    var grouped = document.querySelectorAll("table.grouped");
    for (var g = 0; g < grouped.length; g++) makeGrouped(grouped[g]);
    window.addEventListener("hashchange", reveal);
    if (window.location.hash) reveal();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
"""
