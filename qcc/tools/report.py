"""Per-layer quantization report: the float graph against its lowered integer twin.

Layers are matched by op name: ``lower-quantized`` names each integer op
after the float op it replaces. For every integer layer with a quantized
result and a float op of the same name, over the given samples::

    y_q    = (q - zp) * scale                 (the simulator's output, dequantized; Qm.n: scale 2^-n)
    SQNR   = 10 log10(sum y_f^2 / sum (y_f - y_q)^2)   dB (inf when equal)
    maxerr = max |y_f - y_q|
    sat    = count of y_f outside the format's range [(min - zp) * scale, (max - zp) * scale]

That SQNR is *accumulated*: the integer layer ran on integer inputs, so the
errors of every layer before it are in it. The layer's *own* SQNR runs the
same integer kernel on the float model's inputs to the layer, quantized to
the layer's input formats (``q = clamp(round_half_away(x_f / scale) + zp)``),
so only this layer's rounding and clipping count.

Statistics stream over the samples (memory is one sample's values plus a
capped sample of each layer's float values, ``HIST_VALUES``, for histograms).

    stats = layer_report(float_graph, quant_graph, samples)
    Path("report.md").write_text(format_report(stats))
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from qcc.ir.graph import Graph
from qcc.ir.types import FixedPoint, UniformQuant, storage_range

# The default cap on report samples (--report-samples): the report states how many it used.
REPORT_SAMPLES = 256
# Float values kept per layer for its histogram (a strided subset of each sample).
HIST_VALUES = 100_000


@dataclass
class LayerStats:
    name: str
    opname: str
    dtype: str
    frac_bits: int
    real_min: float
    real_max: float
    sqnr_db: float
    max_abs_error: float
    saturated: int
    elements: int

    scale: float = 0.0
    zero_point: int = 0
    own_sqnr_db: float = math.nan          # this layer's own error (float inputs, quantized); nan: not measurable
    range_lo: float = 0.0                  # the format's real range
    range_hi: float = 0.0
    values: Optional[np.ndarray] = field(default=None, repr=False)  # a sample of float values (histograms)

    @property
    def qformat(self) -> str:
        """Qm.n with m integer bits (sign excluded): Q3.4 for i8 with n = 4; scale:zp when affine."""
        if self.scale:
            return f"{self.scale:.4g}:{self.zero_point}"
        return f"Q{int(self.dtype[1:]) - 1 - self.frac_bits}.{self.frac_bits}"

    @property
    def saturated_fraction(self) -> float:
        return self.saturated / self.elements if self.elements else 0.0


def format_of(t) -> Tuple[float, int, int, str]:
    """(scale, zero point, frac bits or 0, label) of a per-tensor quantized type."""
    q = t.quant
    if isinstance(q, FixedPoint):
        n = q.frac_bits
        return 2.0 ** -n, 0, n, f"Q{int(t.dtype[1:]) - 1 - n}.{n} ({t.dtype})"
    scale, zp = float(q.scale), int(q.zero_point)
    return scale, zp, 0, f"scale {scale:.4g}, zero point {zp} ({t.dtype})"


def real_range(t) -> Tuple[float, float]:
    """The real values a per-tensor quantized type can hold."""
    scale, zp, _, _ = format_of(t)
    lo, hi = storage_range(t.dtype)
    return (lo - zp) * scale, (hi - zp) * scale


def _align(ref: np.ndarray, shape) -> Optional[np.ndarray]:
    """A float op's result laid out like its integer twin's (NCHW against NHWC), or None."""
    if ref.shape == tuple(shape):
        return ref
    if ref.ndim == 4 and len(shape) == 4 and (ref.shape[0], ref.shape[2], ref.shape[3], ref.shape[1]) == tuple(shape):
        return np.moveaxis(ref, 1, -1)
    return ref.reshape(shape) if ref.size == int(np.prod(shape)) else None


class _Accumulator:
    def __init__(self, t, per_sample: int):
        self.t = t
        self.lo, self.hi = real_range(t)
        self.signal = self.noise = self.own_signal = self.own_noise = 0.0
        self.own_ok = True
        self.maxerr, self.sat, self.n = 0.0, 0, 0
        self.vmin, self.vmax = math.inf, -math.inf
        self.kept: List[np.ndarray] = []
        self.per_sample = per_sample

    def add(self, ref: np.ndarray, got: np.ndarray, own: Optional[np.ndarray]):
        ref, got = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
        d = ref - got
        self.signal += float(np.dot(ref, ref))
        self.noise += float(np.dot(d, d))
        self.maxerr = max(self.maxerr, float(np.abs(d).max()) if d.size else 0.0)
        self.sat += int(np.sum((ref > self.hi) | (ref < self.lo)))
        self.n += ref.size
        if ref.size:
            self.vmin, self.vmax = min(self.vmin, float(ref.min())), max(self.vmax, float(ref.max()))
        step = max(1, -(-ref.size // max(self.per_sample, 1)))
        self.kept.append(ref[::step].astype(np.float32))
        if own is None:
            self.own_ok = False
        elif self.own_ok:
            e = ref - own.astype(np.float64).ravel()
            self.own_signal += float(np.dot(ref, ref))
            self.own_noise += float(np.dot(e, e))


def _sqnr(signal: float, noise: float) -> float:
    return math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)


def _own_inputs(op, fenv, float_by_name, quant_input_of) -> Optional[List[np.ndarray]]:
    """The operands of integer ``op`` made from the float model's values, quantized; None if unmappable."""
    from qcc.sim.qmn import quantize_array
    arrays = []
    for v in op.operands:
        c = v.constant()
        if c is not None:
            arrays.append(c)
            continue
        ref = quant_input_of(v, fenv, float_by_name)
        if ref is None or v.type.quant is None or v.type.is_float:
            return None
        ref = _align(ref, v.shape)
        if ref is None:
            return None
        arrays.append(quantize_array(ref.astype(np.float32), v.type.quant, v.type.np_dtype))
    return arrays


def _float_twin(v, fenv, float_by_name):
    """The float model's value for integer value ``v``: the same-named float op's result, through
    reshapes and the input quantize; None when there is none."""
    seen = 0
    while v.producer is not None and seen < 8:
        op = v.producer
        if op.name in float_by_name and op.opname != "q.quantize":
            return fenv.get(id(float_by_name[op.name].results[0]))
        if op.opname in ("q.quantize", "nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze"):
            v = op.operands[0]
            seen += 1
            continue
        return None
    return fenv.get(("input", v.name)) if v.producer is None else None


def layer_report(float_graph: Graph, quant_graph: Graph, samples: Sequence[Mapping[str, np.ndarray]],
                 hist_values: int = HIST_VALUES) -> List[LayerStats]:
    """Statistics per integer layer of ``quant_graph`` (see the module docstring)."""
    import qcc.sim  # noqa: F401  (the integer kernels)
    from qcc.sim.interpreter import run_graph_all, run_op
    float_by_name = {op.name: op for op in float_graph.ops if op.name}
    layers = []
    for op in quant_graph.ops:
        if not op.opname.startswith(("qnn.", "s8.")) or op.name not in float_by_name:
            continue
        t = op.results[0].type
        fres = float_by_name[op.name].results[0]
        if not isinstance(t.quant, (FixedPoint, UniformQuant)) or (fres.shape != t.shape and fres.type.size != t.size):
            continue
        layers.append(op)
    acc = {id(op): _Accumulator(op.results[0].type, max(1, hist_values // max(len(samples), 1))) for op in layers}
    for s in samples:
        fvals = run_graph_all(float_graph, s)
        qvals = run_graph_all(quant_graph, s)
        fenv = {id(v): a for v, a in fvals.items()}
        fenv.update({("input", v.name): fvals[v] for v in float_graph.inputs})
        for op in layers:
            t = op.results[0].type
            scale, zp, _, _ = format_of(t)
            ref = _align(fenv[id(float_by_name[op.name].results[0])], t.shape)
            got = (qvals[op.results[0]].astype(np.float64) - zp) * scale
            own_in = _own_inputs(op, fenv, float_by_name, _float_twin)
            own = None
            if own_in is not None:
                own = (run_op(op, own_in)[0].astype(np.float64) - zp) * scale
            acc[id(op)].add(ref, got, own)
    stats = []
    for op in layers:
        a = acc[id(op)]
        t = op.results[0].type
        scale, zp, n, _ = format_of(t)
        affine = isinstance(t.quant, UniformQuant)
        stats.append(LayerStats(op.name, op.opname, t.dtype, n, a.vmin, a.vmax, _sqnr(a.signal, a.noise),
                                a.maxerr, a.sat, a.n, scale if affine else 0.0, zp,
                                _sqnr(a.own_signal, a.own_noise) if a.own_ok and samples else math.nan,
                                a.lo, a.hi, np.concatenate(a.kept) if a.kept else None))
    return stats


def format_report(stats: Sequence[LayerStats], title: str = "Quantization report", samples_note: str = "") -> str:
    """A Markdown table, one row per layer."""
    lines = [f"# {title}", "", f"{len(stats)} integer layers; SQNR of each layer's output against the float "
             "model (errors accumulate from the input); own SQNR: the layer alone, on the float model's "
             "inputs to it." + (f" {samples_note}" if samples_note else ""), "",
             "| layer | op | format | float range | SQNR dB | max abs error | saturated | own SQNR dB |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for s in stats:
        own = "-" if math.isnan(s.own_sqnr_db) else f"{s.own_sqnr_db:.1f}"
        lines.append(f"| `{s.name}` | {s.opname} | {s.qformat} ({s.dtype}) | [{s.real_min:.4g}, {s.real_max:.4g}] "
                     f"| {s.sqnr_db:.1f} | {s.max_abs_error:.4g} | {s.saturated} / {s.elements} | {own} |")
    return "\n".join(lines) + "\n"


def format_choices(choices: Sequence[Mapping]) -> str:
    """The Markdown table of assign-qmn's activation format decisions (``graph.qmn_choices``): per group of
    tensors sharing a format, the range rule's n, the chosen n and why it won."""
    lines = ["## Qm.n format choices", "",
             "n = fractional bits (value = q * 2^-n). The range rule is n = W-1 - ceil(log2(max|x|)); the "
             "search scores nearby n by the relative error they leave at the consumers' outputs "
             "(SQNR there, errors of earlier layers included).", "",
             "| tensors | bits | range rule n | chosen n | why |", "|---|---:|---:|---:|---|"]
    for c in choices:
        names = ", ".join(c["tensors"])
        lines.append(f"| {names} | {c['bits']} | {c['rule_n']} | {c['n']} | {c['why']} |")
    return "\n".join(lines) + "\n"


def run_keeping_float(pm, graph: Graph):
    """Run ``pm`` on ``graph``; also return a copy of the graph as it was just before 'calibrate'.

    The copy is the float reference the report compares against: every float
    rewrite has run, no quantization has. None when the pipeline has no 'calibrate'.
    """
    snapshot: List[Graph] = []

    def keep(p, g):
        if p.name == "calibrate" and not snapshot:
            snapshot.append(g.copy())

    report = pm.run(graph, before_pass=keep)
    return report, (snapshot[0] if snapshot else None)


def report_samples(float_graph: Graph, calib: str, limit: Optional[int] = None
                   ) -> Tuple[List[Dict[str, np.ndarray]], int]:
    """The first ``limit`` samples of ``calib`` (default ``REPORT_SAMPLES``; 0 or less: all), one dict
    per sample, and how many the data holds."""
    from qcc.quant.calibration_data import CalibrationData
    data = CalibrationData(calib, float_graph)
    take = data.num_samples if limit is not None and limit <= 0 else min(limit or REPORT_SAMPLES, data.num_samples)
    arrays = data.read(take)
    return [{k: a[i] for k, a in arrays.items()} for i in range(take)], data.num_samples


def samples_note(used: int, provided: int, limit: Optional[int]) -> str:
    """The sentence a report states about the samples it evaluated."""
    text = f"Evaluated on {used} of the {provided} calibration samples provided"
    if used < provided:
        why = f"--report-samples {limit}" if limit else f"the default cap of {REPORT_SAMPLES}"
        return text + f" (the first {used}: {why}; --report-samples 0 takes all)."
    return text + "."


def quantization_report(float_graph: Graph, quant_graph: Graph, calib: str, samples: Optional[int] = None,
                        title: str = "Quantization report") -> str:
    """The Markdown per-layer table over the first ``samples`` calibration inputs (see ``report_samples``)."""
    inputs, provided = report_samples(float_graph, calib, samples)
    text = format_report(layer_report(float_graph, quant_graph, inputs), title,
                         samples_note(len(inputs), provided, samples))
    kept = [op for op in quant_graph.ops if op.opname.startswith("f32.")]
    if kept:  # --float-layers: float32 layers, not in the integer table
        text += ("\nFloat layers (--float-layers; float32 between an exact dequantize and a quantize, outside "
                 "the bit-exact contract): " + ", ".join(f"`{op.name}` ({op.opname})" for op in kept) + ".\n")
    return text


def output_sqnr(float_graph: Graph, quant_graph: Graph, calib: str, limit: Optional[int] = None) -> float:
    """SQNR in dB of the integer graph's outputs (dequantized) against the float graph's, over the first
    ``limit`` calibration samples (``report_samples``); capped at +-999 dB."""
    from qcc.sim.interpreter import run_graph
    import qcc.sim.qmn  # noqa: F401  (integer kernels)
    import qcc.sim.s8  # noqa: F401
    inputs, _ = report_samples(float_graph, calib, limit)
    signal = noise = 0.0
    for sample in inputs:
        ref, got = run_graph(float_graph, sample), run_graph(quant_graph, sample)
        for name in float_graph.output_names:
            r = ref[name].astype(np.float64)
            signal += float(np.sum(r * r))
            noise += float(np.sum((r - got[name].astype(np.float64)) ** 2))
    if noise == 0.0:
        return 999.0
    return max(-999.0, min(999.0, 10 * math.log10(signal / noise))) if signal > 0 else -999.0


def _cell(text: str) -> str:
    """A model-given name as one Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


STOPPED_BY = {"knee": " (stopped at the knee: the next promotion removed less output noise per byte than "
                       "the all-8 to all-16 average)",
              "budget": " (stopped by the flash/RAM budget)"}


def mixed_bits_report(m: dict) -> List[str]:
    """Markdown lines for ``qcc --bits mixed``: the bits per layer and what each promotion bought."""
    steps = {s["layer"]: s for s in m["steps"]}
    wide = sum(1 for layer in m["layers"] if layer["bits"] == 16)
    lines = ["## Mixed precision (--bits mixed)", "",
             f"{wide} of {len(m['layers'])} units at 16 bits. Output SQNR {m['sqnr_db']} dB in the fake-quant "
             f"search ({m.get('verified_sqnr_db', 'not measured')} dB by the integer simulator); all-8-bit "
             f"{m['all8_sqnr_db']} dB, all-16-bit {m['all16_sqnr_db']} dB, target {m['target_sqnr_db']} dB"
             + STOPPED_BY.get(m.get("stopped_by"), "") + ". "
             f"Flash estimate {m['flash_bytes']:,} B (all-16 {m['all16_flash_bytes']:,} B), RAM estimate "
             f"{m['ram_bytes']:,} B (all-16 {m['all16_ram_bytes']:,} B; planned arena "
             f"{m.get('arena_bytes', 0):,} B); {m['evaluations']} choices scored on {m['samples']} samples.", "",
             "| tensor or layer (unit of promotion) | bits | promoted as | SQNR after | gain | extra bytes |",
             "|---|---:|---:|---:|---:|---:|"]
    order = {s["layer"]: i + 1 for i, s in enumerate(m["steps"])}
    for layer in m["layers"]:
        s = steps.get(layer["layer"])
        lines.append(f"| {_cell(layer['layer'])} | {layer['bits']} | "
                     + (f"#{order[layer['layer']]} | {s['sqnr_db']} dB | {s['gain_db']:+} dB | {s['bytes']:,} |"
                        if s else "- | - | - | - |"))
    return lines
