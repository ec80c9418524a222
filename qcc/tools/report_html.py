"""``qcc --report FILE.html``: one self-contained page with plots, for people.

Summary first (input and output formats, arena, flash, MACs, the worst
layers, advice), then plots drawn by matplotlib and embedded as SVG data URIs
(no file beside the page, no script, no network):

* per-layer SQNR, accumulated and the layer's own (``qcc.tools.report``);
* activation histograms of the float model's values, the quantized format's
  real range marked (values outside it saturate);
* per-channel weight ranges (real values), channels whose quantized weights
  are all zero flagged as dead;
* the RAM timeline: bytes live at each step of the backend's memory plan,
  against the arena and the lower bound;
* MACs per layer.

Layers carry short names, the ONNX op type and the step index (``Conv1``),
with the full name on hover and in the layer table. The page states how many
calibration samples it evaluated out of how many were given.

Advice rules (each names the option to try):

* an input or layer whose float values saturate the chosen range on more
  than ``SATURATION_ADVICE`` of its values: ``--act-max NAME=M`` with M the
  largest magnitude seen;
* a layer whose own SQNR is below ``LOW_SQNR_DB``: 16 bits (``--bits 16``)
  for Qm.n, per-channel affine (``--scheme int8``) otherwise;
* dead channels: retrain or prune them (they cost MACs and give zeros).
"""
from __future__ import annotations

import base64
import html
import io
import math
import shlex
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from qcc.errors import InputError
from qcc.ir.graph import Graph
from qcc.ir.types import FixedPoint

SATURATION_ADVICE = 0.001   # 0.1 % of a tensor's values
LOW_SQNR_DB = 20.0
MAX_PANELS = 16             # histogram / weight panels per figure

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.advice li{margin:.3em 0}.bad{color:#b00020;font-weight:600}.note{color:#666}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
code{background:#f4f4f4;padding:0 .2em}
"""


# ---------------------------------------------------------------- plots
def _svg(fig) -> str:
    """An <img> holding ``fig`` as an SVG data URI (same figure, same bytes)."""
    import matplotlib
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "qcc", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/svg+xml;base64,{data}">'


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    except ImportError:
        raise InputError("--report FILE.html draws its plots with matplotlib, which is not installed "
                         "(pip install matplotlib), or write FILE.md") from None
    return Figure(figsize=(width, height), dpi=100)


def _panel_axes(count: int, cols: int, width: float, height: float):
    """A figure with ``count`` small panels, ``cols`` per row, and their axes."""
    cols = min(cols, count)
    rows = -(-count // cols)
    fig = _figure(width * cols, height * rows)
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(count)]


def _clip_db(x: float) -> float:
    return 100.0 if math.isinf(x) and x > 0 else (0.0 if not math.isfinite(x) else x)


def sqnr_plot(names: List[str], acc: List[float], own: List[float]) -> str:
    fig = _figure(max(6, 0.55 * len(names) + 2), 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.bar(x - 0.2, [_clip_db(v) for v in acc], 0.4, label="accumulated (integer inputs)", color="#4c72b0")
    ax.bar(x + 0.2, [_clip_db(v) for v in own], 0.4, label="own (float inputs, quantized)", color="#dd8452")
    ax.axhline(LOW_SQNR_DB, color="#b00020", lw=0.8, ls="--", label=f"{LOW_SQNR_DB:.0f} dB")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("SQNR vs float (dB)")
    ax.set_title("Per-layer SQNR (higher is better; inf shown as 100)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig)


def histogram_plot(panels: List[dict]) -> str:
    """One panel per tensor: float values, the format's real range as red lines."""
    panels = panels[:MAX_PANELS]
    fig, axes = _panel_axes(len(panels), 4, 3.2, 2.4)
    for ax, p in zip(axes, panels):
        v = np.asarray(p["values"], np.float64)
        lo, hi = p["range"]
        edges = np.linspace(min(v.min(initial=lo), lo), max(v.max(initial=hi), hi), 61)
        ax.hist(v, bins=edges, color="#4c72b0", log=True)
        for x in (lo, hi):
            ax.axvline(x, color="#b00020", lw=1)
        ax.set_title(f"{p['short']}: {p['format']}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Activation histograms (float model; red: the format's range, values beyond it saturate)",
                 fontsize=9)
    fig.tight_layout()
    return _svg(fig)


def weight_plot(panels: List[dict]) -> str:
    panels = panels[:MAX_PANELS]
    fig, axes = _panel_axes(len(panels), 3, 4.2, 2.5)
    for ax, p in zip(axes, panels):
        c = np.arange(len(p["min"]))
        dead = np.asarray(p["dead"], bool)
        ax.vlines(c[~dead], np.asarray(p["min"])[~dead], np.asarray(p["max"])[~dead], color="#4c72b0", lw=2)
        if dead.any():
            ax.plot(c[dead], np.zeros(int(dead.sum())), "x", color="#b00020", label="dead (all zero)")
            ax.legend(fontsize=7)
        ax.axhline(0, color="#999", lw=0.5)
        ax.set_title(f"{p['short']}: {len(c)} channels", fontsize=8)
        ax.set_xlabel("output channel", fontsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle("Weight range per output channel (real values after quantization)", fontsize=9)
    fig.tight_layout()
    return _svg(fig)


def ram_plot(names: List[str], live: List[int], arena: int, lower: int) -> str:
    fig = _figure(max(6, 0.55 * len(names) + 2), 3.0)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    # live_bytes counts every live tensor apart; in-place layers share, so the arena may be lower.
    ax.bar(x, live, color="#55a868", label="live tensors at this step (no in-place sharing)")
    ax.axhline(arena, color="#b00020", lw=1, label=f"arena {arena:,} B")
    ax.axhline(lower, color="#666", lw=1, ls="--", label=f"lower bound {lower:,} B")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("bytes")
    ax.set_title("RAM timeline (memory plan)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig)


def macs_plot(names: List[str], macs: List[int]) -> str:
    fig = _figure(max(6, 0.55 * len(names) + 2), 3.0)
    ax = fig.add_subplot()
    ax.bar(np.arange(len(names)), macs, color="#8172b3")
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("MACs")
    ax.set_title(f"MACs per layer (total {sum(macs):,})")
    return _svg(fig)


# ---------------------------------------------------------------- data
def _onnx_types(model: str) -> Dict[str, str]:
    """ONNX node name -> op type, for short layer names (empty for a .qir or an unreadable file)."""
    if Path(model).suffix != ".onnx":
        return {}
    try:
        import onnx
        return {n.name: n.op_type for n in onnx.load(model, load_external_data=False).graph.node}
    except Exception:  # short names fall back to the IR op kind
        return {}


def _short_names(layers: List[dict], model: str) -> List[str]:
    types = _onnx_types(model)
    out = []
    for i, layer in enumerate(layers):
        kind = types.get(layer["name"]) or layer["op"].split(".", 1)[-1].title().replace("_", "")
        out.append(f"{kind}{i}")
    return out


def _format_label(entry: dict) -> str:
    """An API input/output of ``make_report``: its quantization format in words."""
    dtype = entry["dtype"]
    if entry.get("frac_bits") is not None:
        n = entry["frac_bits"]
        return f"Q{int(dtype[1:]) - 1 - n}.{n} fixed point ({dtype}, real = q &middot; 2<sup>{-n}</sup>)"
    if dtype.startswith("f"):
        return f"float ({dtype})"
    return (f"affine {dtype}: real = {entry['scale']:.6g} &middot; (q &minus; {entry['zero_point']})")


def _input_panels(float_graph: Graph, quant_graph: Graph, samples: List[dict]) -> List[dict]:
    """Histogram panels of each graph input against the format it is quantized to."""
    from qcc.tools.report import format_of, real_range
    panels = []
    for v in quant_graph.inputs:
        users = quant_graph.users(v)
        t = users[0].result.type if users and users[0].opname == "q.quantize" else v.type
        if t.quant is None or t.is_float or not samples:
            continue
        vals = np.concatenate([np.asarray(s[v.name], np.float32).ravel() for s in samples])
        lo, hi = real_range(t)
        panels.append({"short": f"input '{v.name}'", "name": v.name, "values": vals, "range": (lo, hi),
                       "format": format_of(t)[3], "dtype": t.dtype,
                       "fixed": isinstance(t.quant, FixedPoint),
                       "saturated": float(np.mean((vals < lo) | (vals > hi))) if vals.size else 0.0,
                       "absmax": float(np.abs(vals).max()) if vals.size else 0.0})
    return panels


def _weight_panels(quant_graph: Graph, short_by_name: Dict[str, str]) -> List[dict]:
    from qcc.sim.qmn import dequantize_array
    panels = []
    for op in quant_graph.ops:
        if op.opname not in ("qnn.conv2d", "s8.conv2d", "qnn.dense", "s8.dense") or len(op.operands) < 2:
            continue
        w = op.operands[1]
        q = w.constant()
        if q is None or w.type.quant is None:
            continue
        real = dequantize_array(q, w.type.quant).reshape(q.shape[0], -1)
        ints = np.asarray(q).reshape(q.shape[0], -1)
        panels.append({"short": short_by_name.get(op.name, op.name), "name": op.name,
                       "min": real.min(axis=1).tolist(), "max": real.max(axis=1).tolist(),
                       "dead": (ints == 0).all(axis=1).tolist()})
    return panels


def _fmt_db(x: float) -> str:
    return "-" if math.isnan(x) else ("inf" if math.isinf(x) and x > 0 else f"{x:.1f}")


def _suggest(m: float, dtype: str, fixed_point: bool) -> str:
    """An --act-max value whose format holds ``m``.

    Affine: ``m`` itself, rounded up to 3 digits. Qm.n: the range rule gives
    ``n = W-1 - ceil(log2 M)``, whose largest value is ``2^ceil(log2 M) (1 - 2^(1-W))``;
    the smallest power of two ``M`` for which that reaches ``m``.
    """
    if m <= 0:
        return "1"
    if fixed_point:
        bits = int(dtype[1:]) if dtype[1:].isdigit() else 8
        k = math.ceil(math.log2(m))
        while 2.0 ** k * (1 - 2.0 ** (1 - bits)) < m:
            k += 1
        return f"{2.0 ** k:g}"
    digits = 2 - int(math.floor(math.log10(m)))
    return f"{math.ceil(m * 10 ** digits) / 10 ** digits:g}"


def _act_max_arg(name: str, m: float, dtype: str, fixed_point: bool) -> str:
    """``NAME=M`` quoted for a shell (ONNX names may hold ';' and other specials)."""
    return shlex.quote(f"{name}={_suggest(m, dtype, fixed_point)}")


# ---------------------------------------------------------------- the page
def html_report(summary: dict, float_graph: Optional[Graph], graph: Graph, calib: Optional[str],
                samples: Optional[int] = None) -> str:
    """The --report FILE.html page (see the module docstring)."""
    from qcc.tools.report import layer_report, report_samples, samples_note
    e = html.escape
    layers = summary["layers"]
    names = _short_names(layers, summary["model"])
    short_by_name = {layer["name"]: s for layer, s in zip(layers, names)}
    memory = summary.get("memory") or {}
    scheme = "affine int8" if any(layer["op"].startswith("s8.") for layer in layers) else "Qm.n fixed point"

    stats, inputs, note = [], [], ""
    if float_graph is not None and calib:
        inputs, provided = report_samples(float_graph, calib, samples)
        stats = layer_report(float_graph, graph, inputs)
        note = samples_note(len(inputs), provided, samples)
    elif float_graph is None:
        note = ("The model came already quantized (its scales are its own): there is no float reference, "
                "so no per-layer error or histograms.")
    stat_by_name = {s.name: s for s in stats}
    in_panels = _input_panels(float_graph, graph, inputs) if float_graph is not None else []
    w_panels = _weight_panels(graph, short_by_name)

    # ---- advice
    advice: List[str] = []
    mixed = summary.get("mixed_bits")
    if mixed:  # qcc --bits mixed: what the search chose (the Markdown report has the table per tensor)
        wide = [m["layer"] for m in mixed["layers"] if m["bits"] == 16]
        advice.append(f"--bits mixed: {len(wide)} of {len(mixed['layers'])} tensors/layers at 16 bits "
                      f"({e(', '.join(wide)) or 'none'}); output SQNR {mixed['sqnr_db']} dB (all-8-bit "
                      f"{mixed['all8_sqnr_db']}, all-16-bit {mixed['all16_sqnr_db']}, target {mixed['target_sqnr_db']})")
    # Qm.n formats come from an error search that may prefer clipping rare outliers to losing resolution.
    search_note = " (the Qm.n format search may still prefer clipping; check the SQNR after)" \
        if scheme.startswith("Qm.n") else ""
    for p in in_panels:
        if p["saturated"] > 0:
            lo, hi = p["range"]
            advice.append(f"input <code>{e(p['name'])}</code> clipped at [{lo:.4g}, {hi:.4g}]: "
                          f"{100 * p['saturated']:.2f}% of values saturate (largest magnitude {p['absmax']:.4g}); "
                          f"try <code>--act-max {e(_act_max_arg(p['name'], p['absmax'], p['dtype'], p['fixed']))}"
                          f"</code>{search_note}")
    for s in stats:
        if s.saturated_fraction > SATURATION_ADVICE:
            m = max(abs(s.real_min), abs(s.real_max))
            advice.append(f"layer <code>{e(short_by_name.get(s.name, s.name))}</code> ({e(s.name)}) clips "
                          f"{100 * s.saturated_fraction:.2f}% of its values at [{s.range_lo:.4g}, {s.range_hi:.4g}]; "
                          f"try <code>--act-max {e(_act_max_arg(s.name, m, s.dtype, not s.scale))}</code>{search_note}")
        if not math.isnan(s.own_sqnr_db) and s.own_sqnr_db < LOW_SQNR_DB:
            fix = "--bits 16" if scheme.startswith("Qm.n") and s.dtype == "i8" else "--scheme int8"
            advice.append(f"layer <code>{e(short_by_name.get(s.name, s.name))}</code> loses precision on its own "
                          f"(own SQNR {s.own_sqnr_db:.1f} dB &lt; {LOW_SQNR_DB:.0f} dB); try <code>{fix}</code>")
    for p in w_panels:
        dead = [i for i, d in enumerate(p["dead"]) if d]
        if dead:
            advice.append(f"layer <code>{e(p['short'])}</code> ({e(p['name'])}) has {len(dead)} dead output "
                          f"channel(s) (all weights quantize to zero: {', '.join(map(str, dead[:12]))}"
                          f"{' ...' if len(dead) > 12 else ''}); prune or retrain them")
    if not advice:
        advice.append("nothing to flag: no input or layer saturates beyond "
                      f"{100 * SATURATION_ADVICE:.1f}%, every layer's own SQNR is at least {LOW_SQNR_DB:.0f} dB, "
                      "no dead channels")

    worst = sorted(stats, key=lambda s: s.sqnr_db)[:3]
    worst_own = sorted((s for s in stats if not math.isnan(s.own_sqnr_db)), key=lambda s: s.own_sqnr_db)[:3]

    # ---- page
    out = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>{e(summary['name'])}: qcc report</title><style>{STYLE}</style></head><body>",
           f"<h1>{e(summary['name'])}: compile report</h1>",
           f"<p>model <code>{e(summary['model'])}</code>, target {e(summary['target'])}, {scheme}</p>",
           "<h2>Summary</h2><table>"]

    def kv(k, v):
        out.append(f"<tr><th>{k}</th><td>{v}</td></tr>")
    for io_ in summary["inputs"]:
        kv(f"input <code>{e(io_['name'])}</code>", f"{io_['shape']} &rarr; {_format_label(io_)}")
    for io_ in summary["outputs"]:
        kv(f"output <code>{e(io_['name'])}</code>", f"{io_['shape']}: {_format_label(io_)}")
    kv("arena (peak RAM, input and output included)", f"{summary['arena_bytes']:,} B")
    kv("lower bound (largest live set, no in-place)", f"{summary['arena_lower_bound_bytes']:,} B")
    kv("flash: weights, biases, tables", f"{summary['weight_bytes']:,} B")
    kv("MACs per inference", f"{summary['macs']:,}")
    kv("layers", f"{len(layers)}")
    kv("samples", e(note) if note else "no calibration data: no per-layer error")
    for label, rows, key in (("worst layers, accumulated SQNR (errors from the input on)", worst, "sqnr_db"),
                             ("worst layers, own SQNR (the layer alone: where to act)", worst_own, "own_sqnr_db")):
        if rows:
            kv(label, ", ".join(f"<span title=\"{e(s.name)}\">{e(short_by_name.get(s.name, s.name))}</span> "
                                f"{_fmt_db(getattr(s, key))} dB" for s in rows))
    out.append("</table><h2>Advice</h2><ul class=\"advice\">")
    out += [f"<li>{a}</li>" for a in advice]
    out.append("</ul>")

    if stats:
        out.append("<h2>Per-layer SQNR</h2>")
        order = [s for s in stats]
        out.append(sqnr_plot([short_by_name.get(s.name, s.name) for s in order], [s.sqnr_db for s in order],
                             [s.own_sqnr_db for s in order]))
    out.append("<h2>Layers</h2><table><tr><th>layer</th><th>op</th><th>format</th><th>float range</th>"
               "<th>saturated</th><th>SQNR dB</th><th>own SQNR dB</th><th>MACs</th><th>RAM live B</th>"
               "<th>full name</th></tr>")
    mem_layers = [m for m in memory.get("layers", []) if not str(m.get("name", "")).startswith("output")]
    live_by_name = {m["name"]: m["live_bytes"] for m in mem_layers}
    for layer, short in zip(layers, names):
        s = stat_by_name.get(layer["name"])
        fmt = f"{s.qformat} ({s.dtype})" if s else "-"
        rng = f"[{s.real_min:.4g}, {s.real_max:.4g}]" if s else "-"
        sat = f"{100 * s.saturated_fraction:.2f}%" if s else "-"
        cls = ' class="n bad"' if s and s.saturated_fraction > SATURATION_ADVICE else ' class="n"'
        out.append(f"<tr><td title=\"{e(layer['name'])}\">{e(short)}</td><td>{e(layer['op'])}</td><td>{e(fmt)}</td>"
                   f"<td>{rng}</td><td{cls}>{sat}</td><td class=\"n\">{_fmt_db(s.sqnr_db) if s else '-'}</td>"
                   f"<td class=\"n\">{_fmt_db(s.own_sqnr_db) if s else '-'}</td><td class=\"n\">{layer['macs']:,}</td>"
                   f"<td class=\"n\">{live_by_name.get(layer['name'], 0):,}</td><td>{e(layer['name'])}</td></tr>")
    out.append("</table>")

    hist = list(in_panels) + [{"short": short_by_name.get(s.name, s.name), "values": s.values,
                               "range": (s.range_lo, s.range_hi), "format": f"{s.qformat} ({s.dtype})"}
                              for s in stats if s.values is not None and s.values.size]
    if hist:
        out.append("<h2>Activation histograms</h2>")
        if len(hist) > MAX_PANELS:
            out.append(f"<p class=\"note\">the first {MAX_PANELS} of {len(hist)} tensors</p>")
        out.append(histogram_plot(hist))
    if w_panels:
        out.append("<h2>Weight ranges per channel</h2>")
        if len(w_panels) > MAX_PANELS:
            out.append(f"<p class=\"note\">the first {MAX_PANELS} of {len(w_panels)} layers</p>")
        out.append(weight_plot(w_panels))
    if mem_layers:
        out.append("<h2>RAM timeline</h2>")
        out.append(ram_plot([short_by_name.get(m["name"], m["name"]) for m in mem_layers],
                            [m["live_bytes"] for m in mem_layers], summary["arena_bytes"],
                            summary["arena_lower_bound_bytes"]))
    out.append("<h2>MACs per layer</h2>")
    out.append(macs_plot(names, [layer["macs"] for layer in layers]))
    if summary.get("warnings"):
        out.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{e(w)}</li>" for w in summary["warnings"]) + "</ul>")
    out.append(f"<p class=\"note\">qcc {e(_version())}</p></body></html>\n")
    return "\n".join(out)


def _version() -> str:
    from qcc import __version__
    return __version__
