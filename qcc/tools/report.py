"""Per-layer quantization report: the float graph against its lowered integer twin.

Layers are matched by op name: ``lower-quantized`` names each integer op
after the float op it replaces. For every integer layer with a fixed-point
result and a float op of the same name, over the given samples::

    y_q    = q * 2^-n                         (the simulator's output, dequantized)
    SQNR   = 10 log10(sum y_f^2 / sum (y_f - y_q)^2)   dB (inf when equal)
    maxerr = max |y_f - y_q|
    sat    = count of y_f outside the format's range [min * 2^-n, max * 2^-n]

    stats = layer_report(float_graph, quant_graph, samples)
    Path("report.md").write_text(format_report(stats))
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence

import numpy as np

from qcc.ir.graph import Graph
from qcc.ir.types import FixedPoint, UniformQuant, storage_range


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

    @property
    def qformat(self) -> str:
        """Qm.n with m integer bits (sign excluded): Q3.4 for i8 with n = 4; scale:zp when affine."""
        if self.scale:
            return f"{self.scale:.4g}:{self.zero_point}"
        return f"Q{int(self.dtype[1:]) - 1 - self.frac_bits}.{self.frac_bits}"


def _collect(graph: Graph, samples: Sequence[Mapping[str, np.ndarray]]):
    from qcc.sim.interpreter import run_graph_all
    from qcc.sim import qmn, s8  # noqa: F401  (integer kernels)
    values: Dict[int, List[np.ndarray]] = {}
    for s in samples:
        for v, a in run_graph_all(graph, s).items():
            values.setdefault(id(v), []).append(a)
    return values


def layer_report(float_graph: Graph, quant_graph: Graph, samples: Sequence[Mapping[str, np.ndarray]]
                 ) -> List[LayerStats]:
    """Statistics per integer layer of ``quant_graph`` (see the module docstring)."""
    fvals, qvals = _collect(float_graph, samples), _collect(quant_graph, samples)
    float_by_name = {op.name: op for op in float_graph.ops if op.name}
    stats = []
    for op in quant_graph.ops:
        if not op.opname.startswith(("qnn.", "s8.")) or op.name not in float_by_name:
            continue
        fop = float_by_name[op.name]
        t = op.results[0].type
        if not isinstance(t.quant, (FixedPoint, UniformQuant)) or fop.results[0].shape != t.shape and \
                fop.results[0].type.size != t.size:
            continue
        n = t.quant.frac_bits if isinstance(t.quant, FixedPoint) else 0
        scale, zp = float(t.quant.scale), int(t.quant.zero_point)
        ref = np.stack(fvals[id(fop.results[0])]).astype(np.float64)
        got = (np.stack(qvals[id(op.results[0])]).astype(np.float64) - zp) * scale
        if ref.shape != got.shape:  # an NCHW float op against its NHWC integer twin
            ref = np.moveaxis(ref, 2, -1) if ref.ndim == 5 else ref.reshape(got.shape)
        noise = float(np.sum((ref - got) ** 2))
        signal = float(np.sum(ref ** 2))
        sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
        lo, hi = storage_range(t.dtype)
        sat = int(np.sum((ref > (hi - zp) * scale) | (ref < (lo - zp) * scale)))
        affine = isinstance(t.quant, UniformQuant)
        stats.append(LayerStats(op.name, op.opname, t.dtype, n, float(ref.min()), float(ref.max()), sqnr,
                                float(np.abs(ref - got).max()), sat, int(ref.size),
                                scale if affine else 0.0, zp))
    return stats


def format_report(stats: Sequence[LayerStats], title: str = "Quantization report") -> str:
    """A Markdown table, one row per layer."""
    lines = [f"# {title}", "", f"{len(stats)} integer layers; SQNR of each layer's output against the float "
             "model (errors accumulate from the input).", "",
             "| layer | op | format | float range | SQNR dB | max abs error | saturated |",
             "|---|---|---|---|---:|---:|---:|"]
    for s in stats:
        lines.append(f"| `{s.name}` | {s.opname} | {s.qformat} ({s.dtype}) | [{s.real_min:.4g}, {s.real_max:.4g}] "
                     f"| {s.sqnr_db:.1f} | {s.max_abs_error:.4g} | {s.saturated} / {s.elements} |")
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


def quantization_report(float_graph: Graph, quant_graph: Graph, calib: str, samples: int = 16,
                        title: str = "Quantization report") -> str:
    """The Markdown per-layer table over the first ``samples`` calibration inputs."""
    from qcc.quant.calibration_data import CalibrationData
    inputs: List[Dict[str, np.ndarray]] = []
    for batch in CalibrationData(calib, float_graph).batches(samples):
        count = next(iter(batch.values())).shape[0]
        inputs += [{k: a[i] for k, a in batch.items()} for i in range(count)]
        break
    return format_report(layer_report(float_graph, quant_graph, inputs), title)
