"""insert-qdq: turn calibrated ranges into fake-quant (quantize/dequantize) pairs.

For every ``q.range %x {min, max}`` the pass inserts ``q.quantize`` to
``!q.fixed<iW, n>`` and ``q.dequantize`` back to f32, with the provisional
``n = W-1 - ceil(log2(max(|min|, |max|)))``; every former user of the range
reads the dequantized value. Weights of ``nn.conv2d`` / ``nn.dense`` are
fake-quantized too, per output channel (axis 0) with power-of-two scales
``2^-n_c``, ``n_c = Ww-1 - ceil(log2(max|w_c|))`` (or one n for the tensor
with ``per_channel=false``), and biases as i32 at the accumulator precision
``n_x + n_c``. ``assign-qmn`` later settles every n; the graph runs in the
float interpreter at every step (the fake-quant reference).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcc.ir.graph import Graph, Op, Value
from qcc.transforms.passmanager import Pass, PassResult, register_pass
from qcc.transforms.pipeline_text import check_option
from qcc.transforms.rewriter import Rewriter
from qcc.ir.types import TensorType

from qcc.quant.weights import describe_degenerate, safe_channel_max_abs

from ._qmn_util import (WEIGHTED, channel_frac_bits, dequantized_source, dtype_for_bits, fixed_type,
                        frac_bits_for, per_channel_type)


def weight_frac_bits(w: np.ndarray, bits: int, per_channel: bool):
    """Per-channel (or one shared) fractional bits of a weight tensor, output channels on axis 0.

    A degenerate (all near-zero) channel takes the format of the largest channel (qcc.quant.weights).
    """
    mags = safe_channel_max_abs(w)
    if per_channel:
        return [frac_bits_for(float(m), bits) for m in mags]
    return [frac_bits_for(float(mags.max(initial=0.0)), bits)] * w.shape[0]


def bias_type(shape, n_x: int, n_w, shifts=None) -> TensorType:
    shifts = shifts or [0] * len(n_w)
    return per_channel_type(shape, "i32", [n_x + n - s for n, s in zip(n_w, shifts)])


def fake_quant(rw: Rewriter, v: Value, qtype: TensorType, before: Op, name: str):
    """``dequantize(quantize(v))`` created just before ``before``; returns (quantize op, float value)."""
    q = rw.create_op("q.quantize", [v], {}, [qtype], name=name, before=before)
    d = rw.create_op("q.dequantize", [q.result], {}, [TensorType(v.type.shape)], name=name, before=before)
    return q, d.result


@register_pass
@dataclass
class InsertQDQ(Pass):
    """Insert fake-quant pairs at calibrated ranges and on conv/dense weights.

    Before::

        %0 = q.range %x {max = 3.0, min = -1.0} : tensor<1x4xf32>
        %1 = nn.relu %0 : tensor<1x4xf32>

    After ``-p insert-qdq``::

        %0 = q.range %x {max = 3.0, min = -1.0} : tensor<1x4xf32>
        %1 = q.quantize %0 : tensor<1x4x!q.fixed<i8, 5>>
        %2 = q.dequantize %1 : tensor<1x4xf32>
        %3 = nn.relu %2 : tensor<1x4xf32>
    """

    name = "insert-qdq"
    bits: int = 8
    weight_bits: int = 0  # 0: same as bits
    per_channel: bool = True

    def __post_init__(self):
        check_option(self.bits in (8, 16), "pass 'insert-qdq'", "bits", "8 or 16", self.bits)
        check_option(self.weight_bits in (0, 8, 16), "pass 'insert-qdq'", "weight_bits",
                     "0 (same as bits), 8 or 16", self.weight_bits)

    def run(self, graph: Graph) -> PassResult:
        dtype_for_bits(self.bits)
        wbits = self.weight_bits or self.bits
        dtype_for_bits(wbits)
        rw = Rewriter(graph)
        acts = weights = 0
        for r in graph.find("q.range"):
            users = graph.users(r.result)
            if any(u.opname == "q.quantize" for u in users):
                continue  # already fake-quantized
            n = frac_bits_for(max(abs(r.attrs["min"]), abs(r.attrs["max"])), self.bits)
            anchor = users[0] if users else r
            q, d = fake_quant(rw, r.result, fixed_type(r.result.shape, self.bits, n), anchor, r.name)
            for user, i in graph.uses(r.result):
                if user is not q:
                    graph.set_operand(user, i, d)
            graph.outputs[:] = [d if v is r.result else v for v in graph.outputs]
            acts += 1
        for op in graph.ops:
            if op.opname not in WEIGHTED or not op.operands[1].is_constant():
                continue
            w = op.operands[1]
            n_w = weight_frac_bits(np.asarray(w.constant(), np.float64), wbits, self.per_channel)
            graph.notes += describe_degenerate(graph.source_name(op), w.constant())
            _, dw = fake_quant(rw, w, per_channel_type(w.shape, dtype_for_bits(wbits), n_w), op, op.name)
            graph.set_operand(op, 1, dw)
            weights += 1
            if len(op.operands) > 2 and op.operands[2].is_constant():
                src = dequantized_source(op.operands[0])
                n_x = channel_frac_bits(src.result.type)[0] if src is not None else self.bits - 1
                b = op.operands[2]
                _, db = fake_quant(rw, b, bias_type(b.shape, n_x, n_w), op, op.name)
                graph.set_operand(op, 2, db)
        return PassResult(bool(acts or weights), {"activations": acts, "weights": weights})
