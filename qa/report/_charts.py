"""The Altair (Vega-Lite) charts of the report, each returned as a JSON-ready Vega-Lite spec."""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import altair as alt

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
COST, GAIN, FP32, QUANT, NEUTRAL, MUTED = "#c8423b", "#2f7fb8", "#2b2b2b", "#c8423b", "#4c78a8", "#9aa5b1"
WIDTH = 760
T_TITLE, T_SUBTITLE = "\x00title", "\x00subtitle"  # placeholders in cached templates
CONFIG: Dict[str, Any] = {
    "font": FONT,
    "background": "white",
    "view": {"stroke": None},
    "axis": {"labelFontSize": 11, "titleFontSize": 12, "titleFontWeight": "normal", "titleColor": "#333",
             "gridColor": "#ececec", "domainColor": "#999", "tickColor": "#999", "labelColor": "#333"},
    "title": {"fontSize": 14, "fontWeight": 600, "anchor": "start", "subtitleFontSize": 12,
              "subtitleColor": "#555", "offset": 10},
    "legend": {"labelFontSize": 11, "titleFontSize": 11, "orient": "top", "symbolStrokeWidth": 2},
    "bar": {"cornerRadiusEnd": 1},
}


def vegalite_version() -> str:
    """The Vega-Lite version Altair writes, as vl-convert names it (e.g. '6.4')."""
    return ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])


LIMIT = 1e100  # beyond this no value is drawn (as _load.LIMIT): Vega's domains and sums overflow near 1e308


def _clean(value: Any, dropped: List[int]) -> Any:
    """JSON for a browser: floats keep 7 significant digits; NaN, inf and values beyond +-LIMIT
    become null (Vega leaves them out) and are counted in ``dropped[0]``."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is dict:
        return {k: _clean(v, dropped) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_clean(v, dropped) for v in value]
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    except OverflowError:  # an int of hundreds of digits
        v = math.inf
    if math.isfinite(v) and abs(v) <= LIMIT:
        return value if kind is int else float(f"{v:.7g}")
    dropped[0] += 1
    return None


def _datasets(datasets: Dict[str, Sequence[Dict[str, Any]]]) -> Tuple[Dict[str, Any], int]:
    dropped = [0]
    return {k: _clean(list(v), dropped) for k, v in datasets.items()}, dropped[0]


def left_out(spec: Dict[str, Any]) -> int:
    """How many values of the chart's data were NaN, infinite or too large to draw (left out)."""
    return int(spec.get("usermeta", {}).get("qa_left_out", 0))


def _x_axis(title: str, rows: int, **kwargs: Any) -> alt.Axis:
    """Tall charts (many layers) carry their value axis on top, where the reader starts."""
    return alt.Axis(title=title, orient="top" if rows > 40 else "bottom", **kwargs)


def spec(chart: alt.TopLevelMixin, **datasets: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The chart as a dict with its data inlined under ``datasets`` (Altair is slow with big inline data,
    so charts name their data and the rows are added here)."""
    # No jsonschema validation at run time (about half the time of a build): the charts are
    # fixed code, validated and rendered in Chromium by the tests.
    out = chart.to_dict(validate=False)
    out.pop("$schema", None)  # a URL; vega-embed is told the mode instead
    out["config"] = {**CONFIG, **out.get("config", {})}
    data, dropped = _datasets(datasets)
    out.setdefault("datasets", {}).update(data)
    if dropped:
        out["usermeta"] = {"qa_left_out": dropped}
    return out


def _data(name: str) -> alt.Data:
    return alt.Data(name=name)


def _tip(field: str, title: str, kind: str = "N", fmt: Optional[str] = None) -> alt.Tooltip:
    return alt.Tooltip(f"{field}:{kind}", title=title, **({"format": fmt} if fmt else {}))


NUM = ".4~g"


def _diverging(rows: List[Dict[str, Any]], key: str) -> alt.Scale:
    """Red for negative, blue for positive, white at 0, symmetric so that small gains stay pale."""
    m = max([abs(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and abs(r[key]) <= LIMIT] + [1e-9])
    return alt.Scale(scheme="redblue", domain=[-m, m], clamp=True)


def sensitivity(rows: List[Dict[str, Any]], fp32: Optional[float]) -> Dict[str, Any]:
    """Dot per configuration (FP32, weights only, activations only, all), a line from FP32 to it."""
    for r in rows:
        r["fp32"] = fp32 if fp32 is not None else r["score"]
    order = [r["what"] for r in rows]
    base = alt.Chart(_data("scores")).encode(
        y=alt.Y("what:N", sort=order, title=None, axis=alt.Axis(labelFontSize=12, labelLimit=220)),
        tooltip=[_tip("what", "model"), _tip("score", "score", "Q", NUM), _tip("delta", "vs FP32", "Q", "+.4~g")])
    line = base.mark_rule(strokeWidth=3, color=COST, opacity=0.6).encode(x="fp32:Q", x2="score:Q")
    dot = base.mark_circle(size=140, opacity=1).encode(
        x=alt.X("score:Q", title="score (eval_callback)", scale=alt.Scale(zero=False, nice=True, padding=50)),
        color=alt.Color("what:N", sort=order, legend=None,
                        scale=alt.Scale(domain=order, range=[FP32, NEUTRAL, "#8c6bb1", QUANT][:len(order)])))
    label = base.mark_text(align="center", dy=-14, fontSize=12, fontWeight=600).encode(x="score:Q", text="label:N")
    title = alt.Title("Score by what is quantized", subtitle="higher is better; the line is the loss from FP32")
    chart = alt.layer(line, dot, label).properties(width=WIDTH, height=alt.Step(44), title=title)
    return spec(chart, scores=rows)


def culprits(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per culprit layer: the cost when only it is quantized, the gain when only it stays in float."""
    measures = ["cost: only this layer quantized", "gain: only this layer in float"]
    order = sorted({r["layer"]: r["rank"] for r in rows}, key=lambda k: {r["layer"]: r["rank"] for r in rows}[k])
    bars = alt.Chart(_data("culprits")).mark_bar(height={"band": 0.85}).encode(
        y=alt.Y("layer:N", sort=order, title=None, axis=alt.Axis(labelLimit=240, labelFontSize=12)),
        yOffset=alt.YOffset("measure:N", sort=measures),
        x=alt.X("value:Q", title="score points"),
        color=alt.Color("measure:N", sort=measures, title=None, scale=alt.Scale(domain=measures, range=[COST, GAIN]),
                        legend=alt.Legend(labelLimit=400)),
        tooltip=[_tip("layer", "layer"), _tip("type", "type"), _tip("measure", "measure"),
                 _tip("value", "points", "Q", NUM), _tip("score", "score", "Q", NUM)])
    zero = alt.Chart(_data("culprits")).mark_rule(color="#999").encode(x=alt.datum(0))
    chart = alt.layer(bars, zero).properties(
        width=WIDTH, height=alt.Step(30),
        title=alt.Title("Top culprit layers", subtitle="red: the loss when only this layer is quantized; "
                                                       "blue: what leaving only it in float wins back"))
    return spec(chart, culprits=rows)


def sqnr_profile(rows: List[Dict[str, Any]], bands: Sequence[Dict[str, Any]] = (), local: bool = False,
                 title: str = "Where the error enters") -> Dict[str, Any]:
    """Output SQNR of every layer in execution order; culprits marked. With ``local``, the SQNR each
    layer keeps on its own (only it quantized, FP32 inputs) as a second line; ``bands`` shade the
    module groups (x0, x1, label) so that the blocks of a large model can be told apart."""
    x = alt.X("i:Q", title="layer (execution order)", axis=alt.Axis(tickMinStep=1, format="d"),
              scale=alt.Scale(nice=False, zero=False))
    tooltip = [_tip("layer", "layer"), _tip("type", "type"), _tip("sqnr", "SQNR (dB)", "Q", ".3~f"),
               _tip("jump", "vs previous layer (dB)", "Q", "+.3~f"), _tip("mse", "MSE", "Q", ".3~e")]
    if local:
        tooltip.append(_tip("local", "own SQNR, FP32 inputs (dB)", "Q", ".3~f"))
    base = alt.Chart(_data("sqnr")).encode(x=x, y=alt.Y("sqnr:Q", title="output SQNR (dB)"), tooltip=tooltip)
    layers: List[Any] = []
    if bands:
        layers.append(alt.Chart(_data("bands")).mark_rect(color="#e9edf2").transform_filter("datum.k % 2 == 0").encode(
            x="x0:Q", x2="x1:Q", tooltip=[_tip("label", "module")]))
    if local:
        series = ["accumulated (fully quantized)", "own (only this layer, FP32 inputs)"]
        layers.append(alt.Chart(_data("sqnr")).transform_fold(["sqnr", "local"], as_=["key", "db"]).transform_filter(
            "isValid(datum.db)").transform_calculate(
            series=f"datum.key == 'sqnr' ? '{series[0]}' : '{series[1]}'").mark_line(strokeWidth=1.5).encode(
            x=x, y=alt.Y("db:Q", title="output SQNR (dB)"),
            color=alt.Color("series:N", title=None, scale=alt.Scale(domain=series, range=[MUTED, "#e39c37"]),
                            legend=alt.Legend(labelLimit=400)),
            strokeDash=alt.StrokeDash("series:N", legend=None,
                                      scale=alt.Scale(domain=series, range=[[1, 0], [4, 2]])),
            tooltip=tooltip))
    else:
        layers.append(base.mark_line(color=MUTED, strokeWidth=1.5))
    few = len(rows) <= 150  # hundreds of layers: faint points, so that the line shows
    points = base.transform_filter("isValid(datum.sqnr)").mark_circle().encode(
        color=alt.condition("datum.culprit", alt.value(COST), alt.value(NEUTRAL)),
        opacity=alt.condition("datum.culprit", alt.value(1), alt.value(1 if few else 0.3)),
        size=alt.condition("datum.culprit", alt.value(110), alt.value(40 if few else 12)))
    labels = base.transform_filter("datum.culprit").mark_text(dy=-12, fontSize=11, color=COST, fontWeight=600).encode(
        text="layer:N")
    subtitle = ("SQNR of each layer's output, fully quantized vs FP32; a drop marks a layer that adds error "
                "(culprits in red)")
    if local:
        subtitle += "; orange: what the layer keeps on its own"
    chart = alt.layer(*layers, points, labels).properties(
        width=WIDTH + 220, height=200, title=alt.Title(title, subtitle=subtitle))
    return spec(chart, sqnr=rows, bands=list(bands))


def per_layer_scores(rows: List[Dict[str, Any]], refs: List[Dict[str, Any]], *, ref_label: str,
                     sort_field: str, title: str, subtitle: str, top: Optional[int] = None) -> Dict[str, Any]:
    """One row per layer: a bar from the reference score to the layer's score, FP32 and quantized lines."""
    base = alt.Chart(_data("layers"))
    if top is not None:  # the top of the ranking (and the culprits): rows with "top" true
        base = base.transform_filter("datum.top")
    y = alt.Y("layer:N", sort=alt.EncodingSortField(field=sort_field, op="min", order="ascending"), title=None,
              axis=alt.Axis(labelLimit=300, labelFontSize=11))
    tooltip = [_tip("i", "#", "Q"), _tip("layer", "layer"), _tip("type", "type"), _tip("quantizers", "quantizers"),
               _tip("score", "score", "Q", NUM), _tip("vs_fp32", "vs FP32", "Q", "+.4~g"),
               _tip("vs_quantized", "vs fully quantized", "Q", "+.4~g"), _tip("rank", "rank", "Q"),
               _tip("culprit", "culprit")]
    bars = base.mark_bar(height={"band": 0.7}).encode(
        y=y, x=alt.X("ref:Q", axis=_x_axis("score (eval_callback)", top or len(rows)),
                     scale=alt.Scale(zero=False, nice=True)), x2="score:Q",
        color=alt.Color("delta:Q", legend=None, scale=_diverging(rows, "delta")), tooltip=tooltip)
    dots = base.mark_tick(thickness=2, size=12, color="#222").encode(
        y=y, x="score:Q", tooltip=tooltip)
    lines = alt.Chart(_data("refs")).mark_rule(strokeWidth=1.5).encode(
        x="score:Q",
        color=alt.Color("what:N", title=None, scale=alt.Scale(domain=[r["what"] for r in refs],
                                                              range=[FP32, QUANT][:len(refs)])),
        strokeDash=alt.StrokeDash("what:N", legend=None, scale=alt.Scale(domain=[r["what"] for r in refs],
                                                                          range=[[1, 0], [5, 3]][:len(refs)])),
        tooltip=[_tip("what", "reference"), _tip("score", "score", "Q", NUM)])
    chart = alt.layer(bars, dots, lines).properties(width=WIDTH, height=alt.Step(17),
                                                    title=alt.Title(title, subtitle=subtitle))
    return spec(chart, layers=rows, refs=refs)


def mse_sqnr(rows: List[Dict[str, Any]], *, title: str = "", subtitle: str = "", shown: bool = False,
             local: bool = False) -> Dict[str, Any]:
    """MSE (log scale) and SQNR per layer output, layers in execution order, sharing one axis.

    ``shown``: only the rows whose "top" is true (the top of a ranking); ``local``: the SQNR each
    layer keeps on its own (only it quantized, FP32 inputs) as a tick on its SQNR bar."""
    y = alt.Y("layer:N", sort=alt.EncodingSortField(field="i", op="min", order="ascending"), title=None,
              axis=alt.Axis(labelLimit=300, labelFontSize=11))
    tooltip = [_tip("i", "#", "Q"), _tip("layer", "layer"), _tip("type", "type"), _tip("mse", "MSE", "Q", ".4~e"),
               _tip("sqnr", "SQNR (dB)", "Q", ".3~f"), _tip("jump", "SQNR vs previous layer (dB)", "Q", "+.3~f")]
    if local:
        tooltip += [_tip("local", "own SQNR, FP32 inputs (dB)", "Q", ".3~f"),
                    _tip("local_mse", "own MSE, FP32 inputs", "Q", ".4~e")]
    base = alt.Chart(_data("mse"))
    if shown:
        base = base.transform_filter("datum.top")
    drawn = [r for r in rows if r.get("top")] if shown else rows
    positive = [r["mse"] for r in rows if r.get("mse") is not None and r["mse"] > 0]
    floor = min(positive) / 2 if positive else 1e-12
    many = len(drawn)
    mse_shown = base.transform_filter("datum.mse > 0")
    stem = mse_shown.mark_rule(strokeWidth=5, color=NEUTRAL, opacity=0.55).encode(
        y=y, x=alt.X("mse:Q", axis=_x_axis("MSE (log scale)", many), scale=alt.Scale(type="log")),
        x2=alt.datum(floor), tooltip=tooltip)
    head = mse_shown.mark_circle(size=60, color=NEUTRAL, opacity=1).encode(y=y, x="mse:Q", tooltip=tooltip)
    mse = alt.layer(stem, head).properties(width=380, height=alt.Step(17),
                                           title=alt.Title("MSE", subtitle="FP32 vs fully quantized output"))
    y2 = alt.Y("layer:N", sort=alt.EncodingSortField(field="i", op="min", order="ascending"), axis=None)
    sqnr_bars = base.transform_filter("isValid(datum.sqnr)").mark_bar(height={"band": 0.7}).encode(
        y=y2, x=alt.X("sqnr:Q", axis=_x_axis("SQNR (dB)", many)),
        color=alt.Color("jump0:Q", title="dB vs previous layer",
                        scale=_diverging(rows, "jump"), legend=alt.Legend(orient="right")),
        tooltip=tooltip)
    sqnr_layers = [sqnr_bars]
    sqnr_sub = "red: this layer loses SQNR vs the previous one"
    if local:
        sqnr_layers.append(base.transform_filter("isValid(datum.local)").mark_tick(
            thickness=3, size=13, color="#e39c37").encode(y=y2, x="local:Q", tooltip=tooltip))
        sqnr_sub += "; orange tick: its SQNR on its own (FP32 inputs)"
    sqnr = alt.layer(*sqnr_layers).properties(width=320, height=alt.Step(17),
                                              title=alt.Title("SQNR", subtitle=sqnr_sub))
    chart = alt.hconcat(mse, sqnr, spacing=8).resolve_scale(y="shared", color="independent")
    if title:
        chart = chart.properties(title=alt.Title(title, subtitle=subtitle or alt.Undefined))
    return spec(chart, mse=[dict(r, jump0=r.get("jump") or 0.0) for r in rows])


def ranges(rows: List[Dict[str, Any]], title: str, subtitle: str, shown: bool = False) -> Dict[str, Any]:
    """Encoding [min, max] of every quantizer, one bar each, execution order; a click opens its details.
    ``shown``: only the rows whose "top" is true."""
    y = alt.Y("name:N", sort=alt.EncodingSortField(field="i", op="min", order="ascending"), title=None,
              axis=alt.Axis(labelLimit=320, labelFontSize=11))
    kinds = ["per tensor", "per channel (envelope)"]
    data = alt.Chart(_data("ranges"))
    if shown:
        data = data.transform_filter("datum.top")
    bars = data.mark_bar(height={"band": 0.7}).encode(
        y=y, x=alt.X("min:Q", axis=_x_axis("encoding range", sum(1 for r in rows if r.get("top")) if shown
                                           else len(rows))), x2="max:Q",
        color=alt.Color("kind:N", title=None, scale=alt.Scale(domain=kinds, range=[NEUTRAL, "#e39c37"])),
        href="href:N",
        tooltip=[_tip("name", "quantizer"), _tip("layer", "layer"), _tip("kind", "granularity"),
                 _tip("min", "min", "Q", NUM), _tip("max", "max", "Q", NUM), _tip("bitwidth", "bitwidth", "Q"),
                 _tip("scale", "step", "Q", NUM), _tip("clipped", "clipped share", "Q", ".2%"),
                 _tip("link", "click")])
    zero = data.mark_rule(color="#999").encode(x=alt.datum(0))
    chart = alt.layer(bars, zero).properties(width=WIDTH, height=alt.Step(17),
                                             title=alt.Title(title, subtitle=subtitle))
    return spec(chart, ranges=rows)


def channel_ranges(rows: List[Dict[str, Any]], title: str) -> Dict[str, Any]:
    """Per-channel encoding [min, max] of one weight."""
    width = max(WIDTH, min(1100, 8 * len(rows)))
    return _filled(_channel_ranges_template(len(rows) > 160, width), {T_TITLE: title}, channels=rows)


@functools.lru_cache(maxsize=None)
def _channel_ranges_template(many: bool, width: int) -> Dict[str, Any]:
    x = alt.X("c:Q" if many else "c:O", title="output channel",
              axis=alt.Axis(labelAngle=0, labelOverlap=True, **({"format": "d"} if many else {})))
    base = alt.Chart(_data("channels")).encode(
        x=x, tooltip=[_tip("c", "channel", "Q"), _tip("min", "min", "Q", NUM), _tip("max", "max", "Q", NUM),
                      _tip("width", "max \u2212 min", "Q", NUM)])
    marks = base.mark_rule(strokeWidth=2, color=NEUTRAL) if many else base.mark_bar(color=NEUTRAL, width={"band": 0.8})
    bars = marks.encode(y=alt.Y("min:Q", title="encoding range"), y2="max:Q")
    zero = alt.Chart(_data("channels")).mark_rule(color="#999").encode(y=alt.datum(0))
    chart = alt.layer(bars, zero).properties(width=width, height=300,
                                             title=alt.Title(T_TITLE, subtitle="one bar per output channel"))
    return spec(chart)


def _filled(template: Dict[str, Any], texts: Dict[str, str], **datasets: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """A copy of a cached spec with its placeholder texts replaced and its data added."""
    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return texts.get(v, v) if isinstance(v, str) else v

    out = walk(template)
    out["datasets"], dropped = _datasets(datasets)
    if dropped:
        out["usermeta"] = {"qa_left_out": dropped}
    return out


def histogram(rows: List[Dict[str, Any]], markers: List[Dict[str, Any]], title: str, subtitle: str,
              grid: Sequence[float] = ()) -> Dict[str, Any]:
    """The histogram a quantizer saw (linear and log counts) with the encoding min and max marked, and
    the quantization grid when it is coarse enough to see."""
    return _filled(_histogram_template(bool(grid)), {T_TITLE: title, T_SUBTITLE: subtitle},
                   bins=rows, markers=markers, grid=[{"x": g} for g in grid])


@functools.lru_cache(maxsize=None)
def _histogram_template(with_grid: bool) -> Dict[str, Any]:
    # Pages of one kind differ only in data and titles: building and validating a chart with Altair
    # costs tens of milliseconds, too much for thousands of quantizers, so each kind is built once.
    x = alt.X("x0:Q", title="value", scale=alt.Scale(zero=False, nice=False, padding=14))
    tip = [_tip("x0", "from", "Q", NUM), _tip("x1", "to", "Q", NUM), _tip("n", "count", "Q", ",.0f")]

    def panel(scale: alt.Scale, height: int, sub_title: Optional[str]) -> alt.LayerChart:
        bars = alt.Chart(_data("bins")).mark_bar(color=NEUTRAL, binSpacing=0).encode(
            x=x, x2="x1:Q", y=alt.Y("n:Q", title="count (log)" if scale.type == "symlog" else "count", scale=scale),
            y2=alt.datum(0), tooltip=tip)
        levels = alt.Chart(_data("grid")).mark_rule(color="#2b2b2b", opacity=0.35, strokeWidth=1).encode(
            x="x:Q", tooltip=[_tip("x", "quantization level", "Q", NUM)])
        markers = alt.Chart(_data("markers")).mark_rule(strokeWidth=2, strokeDash=[5, 3], color=COST).encode(
            x="x:Q", tooltip=[_tip("what", "marker"), _tip("x", "value", "Q", NUM)])
        layered = alt.layer(*([levels] if with_grid else []), bars, markers).properties(
            width=WIDTH + 160, height=height)
        return layered.properties(title=alt.Title(sub_title)) if sub_title else layered

    chart = alt.vconcat(panel(alt.Scale(), 260, None), panel(alt.Scale(type="symlog"), 110,
                                                              "log counts: rare values far from the bulk"),
                        spacing=14).properties(title=alt.Title(T_TITLE, subtitle=T_SUBTITLE))
    return spec(chart)


def channel_histogram(rows: List[Dict[str, Any]], default: int, title: str, subtitle: str) -> Dict[str, Any]:
    """Per-channel histograms of one weight: a channel selector, the chosen channel's histogram with its
    encoding min/max, and every channel's range with the chosen one highlighted."""
    out = _filled(_channel_histogram_template(len(rows) <= 200), {T_TITLE: title, T_SUBTITLE: subtitle},
                  channels=rows)
    (pick,) = [p for p in out["params"] if p["name"] == "channel"]
    pick["value"], pick["bind"]["max"] = int(default), max(len(rows) - 1, 0)
    return out


@functools.lru_cache(maxsize=None)
def _channel_histogram_template(few: bool) -> Dict[str, Any]:
    pick = alt.param(name="channel", value=0, bind=alt.binding_range(min=0, max=1, step=1, name="channel "))
    chosen = alt.Chart(_data("channels")).transform_filter("datum.c == channel")
    bins = chosen.transform_flatten(["n"]).transform_window(k="row_number()").transform_calculate(
        x0="datum.lo + (datum.k - 1) * datum.w", x1="datum.lo + datum.k * datum.w")
    bars = bins.mark_bar(color=NEUTRAL, binSpacing=0).encode(
        x=alt.X("x0:Q", title="weight value", scale=alt.Scale(zero=False, nice=False, padding=14)), x2="x1:Q",
        y=alt.Y("n:Q", title="count"), y2=alt.datum(0),
        tooltip=[_tip("x0", "from", "Q", NUM), _tip("x1", "to", "Q", NUM), _tip("n", "count", "Q", ",.0f")])
    marks = chosen.transform_fold(["emin", "emax"], as_=["what", "x"]).mark_rule(
        strokeWidth=2, strokeDash=[5, 3], color=COST).encode(
        x="x:Q", tooltip=[_tip("what", "marker"), _tip("x", "value", "Q", NUM)])
    note = chosen.transform_calculate(
        label="'channel ' + datum.c + ': encoding [' + format(datum.emin, '.4~g') + ', ' + format(datum.emax, '.4~g')"
              " + '], ' + format(datum.clip, '.2%') + ' clipped'").mark_text(
        align="left", baseline="top", fontSize=12, fontWeight=600, color="#333").encode(
        x=alt.value(4), y=alt.value(-18), text="label:N")
    hist = alt.layer(bars, marks, note).properties(width=WIDTH + 160, height=260)
    overview = alt.Chart(_data("channels")).mark_rule(strokeWidth=3 if few else 1).encode(
        x=alt.X("c:Q", title="output channel", axis=alt.Axis(format="d", tickMinStep=1)),
        y=alt.Y("emin:Q", title="encoding range"), y2="emax:Q",
        color=alt.condition("datum.c == channel", alt.value(COST), alt.value(MUTED)),
        tooltip=[_tip("c", "channel", "Q"), _tip("emin", "min", "Q", NUM), _tip("emax", "max", "Q", NUM),
                 _tip("clip", "clipped share", "Q", ".2%")]).properties(
        width=WIDTH + 160, height=120, title=alt.Title("Every channel's encoding range (the chosen one in red)"))
    chart = alt.vconcat(hist, overview, spacing=20).add_params(pick).properties(
        title=alt.Title(T_TITLE, subtitle=T_SUBTITLE))
    return spec(chart)
