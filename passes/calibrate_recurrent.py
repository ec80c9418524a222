"""calibrate-recurrent: widen a recurrent cell's state range to every time step.

``calibrate`` ranges each op result, but the cell state result ``c`` of
``nn.lstm`` is only the last step's; the integer cell stores every step's cell
state in one format (``cell_frac``, passes/_lower_recurrent.py), so it needs
max |c_t| over all steps. This pass runs the float graph on the calibration
samples, re-runs each ``nn.lstm`` with ``qcc.sim.recurrent.lstm_float(...,
trace=...)`` on the operands it saw, and widens the ``q.range`` of the ``c``
result to the largest |c_t| (ranges only grow; the largest value, not a
percentile: a saturated cell state stays wrong for the rest of the sequence).

Before (``-p calibrate-recurrent``, data from ``--calib``)::

    %3, %4, %5 = nn.lstm %x, %w, %r, %b, %h0, %c0 {hidden_size = 8} : ...
    %6 = q.range %5 {max = 1.5, min = -1.2} : tensor<1x8xf32>

After::

    %6 = q.range %5 {max = 3.75, min = -3.75} : tensor<1x8xf32>
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcc.errors import InputError
from qcc.ir.graph import Graph
from qcc.quant.calibration_data import iter_calibration_batches
from qcc.sim.interpreter import run_graph_all
from qcc.sim.recurrent import lstm_float
from qcc.transforms.passmanager import Pass, PassResult, register_pass


@register_pass
@dataclass
class CalibrateRecurrent(Pass):
    """Widen each LSTM cell-state range (its c result's q.range) to max |c_t| over all steps."""

    name = "calibrate-recurrent"
    data: str = ""
    samples: int = 256

    def run(self, graph: Graph) -> PassResult:
        cells = [op for op in graph.find("nn.lstm")
                 if any(u.opname == "q.range" for u in graph.users(op.results[2]))]
        if not cells:
            return PassResult(False, {"cells": 0})
        context = {**(getattr(graph, "context", None) or {}), **(getattr(self, "context", None) or {})}
        data = self.data or context.get("calib") or ""
        if not data:
            raise InputError("calibrate-recurrent needs calibration data (--calib or calibrate-recurrent{data=PATH})")
        peak = {id(op): 0.0 for op in cells}
        seen = 0
        for batch in iter_calibration_batches(data, graph, batch_size=16):
            count = len(next(iter(batch.values())))
            for k in range(count):
                if seen >= self.samples:
                    break
                env = run_graph_all(graph, {name: a[k] for name, a in batch.items()})
                for op in cells:
                    trace = {}
                    lstm_float(*(env[v] for v in op.operands), trace=trace)
                    peak[id(op)] = max(peak[id(op)], float(np.abs(trace["c"]).max(initial=0.0)))
                seen += 1
        widened = 0
        for op in cells:
            rng = next(u for u in graph.users(op.results[2]) if u.opname == "q.range")
            m = peak[id(op)]
            if m > max(abs(rng.attrs["min"]), abs(rng.attrs["max"])):
                rng.attrs["min"], rng.attrs["max"] = min(rng.attrs["min"], -m), max(rng.attrs["max"], m)
                widened += 1
        return PassResult(bool(widened), {"cells": len(cells), "widened": widened, "samples": seen})
