"""mixed-bits-affine: choose int8 or int16 activations per layer (affine, TFLite's 8x8 / 16x8).

Runs on the calibrated float graph (``q.range`` ops) between ``calibrate`` and
``quantize-affine`` (``int8-calibrated{mixed=true}``; ``qcc --scheme int8 --bits mixed``).
A unit is one layer: the op producing a ``q.range`` (conv, depthwise, dense, add, pools,
softmax, ...), or a graph input's range. Promoting it makes the layer 16x8 (int16 input and
output, int8 weights, int64 bias), and the layers producing its inputs too: a layer reading a
narrower tensor gains nothing (measured on MLPerf's DS-CNN: promoted one at a time, no conv
gained, while the input with the first conv gained 8 dB). ``quantize-affine`` converts every input of the
other width, ``Q_w(DQ x)``, which ``lower-qdq`` lowers to an ``s8.requantize`` between
widths (TFLite's QUANTIZE int8 <-> int16, an exact requantization). A layer with no 16x8
kernel (``check_legal.INT16X8_MISSING``: table activations, LSTM/GRU) is never promoted.

The search is ``mixed-bits``'s lazy greedy one (``passes/mixed_bits.py``): start all-8, promote
the unit removing the most output noise power per extra byte until the SQNR target
(default: the all-16 SQNR minus 1 dB) or no unit fits the budgets. A choice is scored by
running ``quantize-affine`` with those widths on a copy and the fake-quant graph on the
calibration samples::

    SQNR = 10 log10(sum y_float^2 / sum (y_float - y_fakequant)^2)

Bytes of a promotion: one per element of the layer's output and of its inputs (int16 instead of
int8) and four per output channel of its bias (int64 instead of int32). Budgets::

    flash = int8 weight bytes + bias bytes (4, or 8 when promoted, per channel) + code estimate
    ram   = the largest sum of activation tensors alive at once (1 or 2 bytes per element)

Before (``calibrate``)::

    %2 = nn.conv2d %1, %w, %b : tensor<1x8x8x4xf32> loc("conv1")
    %3 = q.range %2 {max = 2.0, min = -1.0} : tensor<1x8x8x4xf32>

After ``-p mixed-bits-affine`` nothing in the IR changes: the choice goes to the
pipeline context (``affine_widths``: q.range seq -> 8 or 16) for ``quantize-affine``, and
the summary to ``context["mixed_bits"]`` for the report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet, List

import numpy as np

from qcc.ir.graph import Graph, Op
from qcc.transforms.passmanager import register_pass

from .check_legal import why_illegal
from .mixed_bits import CODE_BYTES, CODE_BYTES_FIXED, MixedBits, noise_power
from .quantize_affine import INTEGER_SHAPE_OPS, QuantizeAffine

# Layers whose q.range is a unit; a q.range after an integer shape op follows its input's width.
_MOVES = INTEGER_SHAPE_OPS | {"nn.identity", "nn.dropout"}


class _AffineUnits:
    """One unit per q.range on a layer's result (or on a graph input) whose layer has a 16x8 kernel."""

    def __init__(self, graph: Graph):
        self.ranges: List[Op] = []
        self.names: List[str] = []
        self.weight_elems: List[int] = []   # extra bias bytes (int64 vs int32) of promoting the unit
        self.act_elems: List[int] = []      # extra activation bytes (one per element)
        self.layers: List[Op] = []          # weighted layers (flash)
        self.follows = []                   # (range after a move, the range it moved)
        for op in graph.ops:
            if op.opname == "nn.conv2d" or op.opname == "nn.dense":
                self.layers.append(op)
            if op.opname != "q.range":
                continue
            p = op.operands[0].producer
            if p is not None and p.opname in _MOVES:
                # A moved tensor keeps its source's width (no conversion around a reshape).
                src = p.operands[0].producer
                if src is not None and src.opname == "q.range":
                    self.follows.append((op, src))
                continue
            if p is not None and why_illegal(p, "int8", 16) is not None:
                continue
            self.ranges.append(op)
            name = p.name if p is not None else op.operands[0].name
            self.names.append(name or op.name or "?")
            bias = p.operands[2].shape[0] * 4 if p is not None and p.opname in ("nn.conv2d", "nn.dense") \
                and len(p.operands) > 2 else 0
            self.weight_elems.append(int(bias))
            self.act_elems.append(int(op.result.type.size))
        self.count = len(self.ranges)
        # A layer gains from int16 only when it reads int16 too (a narrower input is converted, and a
        # wider output than its reader's is rounded again), so promoting unit k also promotes the units
        # of the tensors it reads: its own bytes count theirs.
        index = {id(r): k for k, r in enumerate(self.ranges)}
        moved = {id(r): src for r, src in self.follows}
        self.inputs: List[List[int]] = []
        for k, r in enumerate(self.ranges):
            p = r.operands[0].producer
            feeds = []
            for v in (p.operands if p is not None else []):
                src = v.producer
                while src is not None and src.opname in _MOVES:   # through integer moves
                    src = src.operands[0].producer
                while src is not None and id(src) in moved:        # a range after a move: its source's
                    src = moved[id(src)]
                if src is not None and id(src) in index and index[id(src)] not in feeds:
                    feeds.append(index[id(src)])
            self.inputs.append(feeds)
            self.act_elems[k] += sum(self.act_elems[j] for j in feeds if j < k)


@register_pass
@dataclass
class MixedBitsAffine(MixedBits):
    """Choose int8 or int16 activations per layer (affine scheme) by greedy SQNR gain per byte.

    Before (``calibrate``; all layers would be int8)::

        %3 = q.range %2 {max = 2.0, min = -1.0} : tensor<1x16xf32> loc("fc1")

    After ``-p mixed-bits-affine{target_sqnr=40}``: the IR is unchanged; ``context["affine_widths"]``
    holds ``{seq of %3: 16}`` when fc1 is promoted, and quantize-affine then writes::

        %4 = q.quantize %2 : tensor<1x16x!q.uniform<i16:f32, 6.1e-05:0>> loc("fc1")
    """

    name = "mixed-bits-affine"

    def _make_units(self, graph: Graph):
        return _AffineUnits(graph)

    def run(self, graph: Graph):
        result = super().run(graph)
        ctx = getattr(self, "context", None)
        if isinstance(ctx, dict) and "mixed_bits" in ctx:  # the report: each layer's width as built
            widths = ctx["affine_widths"]
            for row, r in zip(ctx["mixed_bits"]["layers"], self.units.ranges):
                row["bits"] = widths[r.seq]
        return result

    def _widths(self, chosen: FrozenSet[int]) -> Dict[int, int]:
        u = self.units
        wide = set(chosen) | {j for k in chosen for j in u.inputs[k]}
        widths = {r.seq: (16 if k in wide else 8) for k, r in enumerate(u.ranges)}
        for r, src in u.follows:  # graph order: a source's width is known before its followers'
            widths[r.seq] = widths.get(src.seq, 8)
        return widths

    def _score(self, chosen: FrozenSet[int]) -> float:
        if chosen not in self.scores:
            from qcc.sim.interpreter import run_graph
            import qcc.sim.qmn  # noqa: F401  (kernels of the q.* ops)
            g = self.graph.copy()
            qa = QuantizeAffine(per_channel=self.per_channel, bits=8)
            qa.context = {"affine_widths": self._widths(chosen)}
            qa.run(g)
            got = [run_graph(g, s)[n] for s in self.samples_in for n in g.output_names]
            self.scores[chosen] = noise_power(self.reference, got)
        return self.scores[chosen]

    def _float_outputs(self) -> List[np.ndarray]:
        from qcc.sim.interpreter import run_graph
        import qcc.sim.qmn  # noqa: F401  (q.range is the identity)
        return [run_graph(self.graph, s)[n] for s in self.samples_in for n in self.graph.output_names]

    def _apply(self, chosen: FrozenSet[int]) -> None:
        ctx = getattr(self, "context", None)
        if isinstance(ctx, dict):
            ctx["affine_widths"] = self._widths(chosen)

    # ------------------------------------------------------------ budgets
    def code(self, chosen: FrozenSet[int]) -> int:
        """Code is in ``flash``'s per-layer estimate; promotions are priced by their data bytes."""
        return 0

    def flash(self, chosen: FrozenSet[int]) -> int:
        u = self.units
        total = CODE_BYTES_FIXED + sum(u.weight_elems[k] for k in chosen)
        for layer in u.layers:
            w = layer.operands[1]
            total += int(w.type.size) + 4 * int(w.shape[0]) + CODE_BYTES[layer.opname]
        return total

    def ram(self, chosen: FrozenSet[int]) -> int:
        """Peak of the activation bytes alive at once, in graph order: each range's tensor until its last
        reader (through integer moves), and each width conversion's copy until the layer reading it."""
        ops = self.graph.ops
        pos = {id(op): i for i, op in enumerate(ops)}
        widths = self._widths(chosen)
        live = np.zeros(len(ops) + 1, np.int64)
        for r in (op for op in ops if op.opname == "q.range"):
            bits = widths.get(r.seq, 8)
            last = pos[id(r)]
            stack = [r.result]
            while stack:
                v = stack.pop()
                for user in self.graph.users(v):
                    last = max(last, pos[id(user)])
                    if user.opname in _MOVES:
                        stack.append(user.result)
                    elif self._layer_bits(user, widths) not in (None, bits):  # a converted copy
                        live[pos[id(r)]:pos[id(user)] + 1] += self._layer_bits(user, widths) // 8 * \
                            int(r.result.type.size)
                if self.graph.is_output(v):
                    last = len(ops)
            live[pos[id(r)]:last + 1] += bits // 8 * int(r.result.type.size)
        return int(live.max(initial=0))

    def _layer_bits(self, op: Op, widths: Dict[int, int]):
        """A layer's width (that of the range on its result), None for an op without one."""
        if not op.results or op.opname == "nn.concat":
            return None
        rng = next((u for u in self.graph.users(op.result) if u.opname == "q.range"), None)
        return None if rng is None else widths.get(rng.seq, 8)
