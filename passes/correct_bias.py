"""correct-bias: fold the mean quantization error of each layer's output into its bias.

Rounding weights and inputs shifts the mean of a layer's output: per output
channel ``c``, over the calibration samples and output positions,

    e_c = E[ y_float_c - y_quant_c ]          (before the fused activation)

where ``y_float`` is the float model's pre-activation and ``y_quant`` the
fake-quant graph's (quantized inputs carrying every earlier layer's error,
quantized weights and bias). The pass sets ``b_c <- b_c + e_c`` (empirical bias
correction, as in Nagel et al. 2019, "Data-Free Quantization", sec. 4.2, with
the expectation measured instead of derived from BatchNorm statistics).
Layers are corrected in graph order, so each one sees the corrected layers
before it. The bias's format is then settled again exactly as assign-qmn does
(i32 at ``n_x + n_c``, coarser when it would not fit), so the accumulator
proof of check-quantized still holds.

Layers: nn.conv2d, nn.dense and nn.scale_shift (its shift is the bias) whose
bias is a fake-quantized constant. Without calibration data the pass does
nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from qcc.ir.graph import Graph, Op
from qcc.transforms.passmanager import Pass, PassResult, register_pass
from qcc.transforms.pipeline_text import check_option

from ._qmn_search import FakeQuantRun
from ._qmn_util import WEIGHTED, context_value, dequantized_source, load_samples
from .assign_qmn import AssignQmn


def _pre_activation(run: FakeQuantRun, op: Op, env) -> np.ndarray:
    """The layer's output before its fused activation, channels on the last axis."""
    bare = SimpleNamespace(attrs={**op.attrs, "act": "none"}, results=op.results, operands=op.operands,
                           opname=op.opname)
    y = np.asarray(run.kernels[op.opname](bare, *[env[id(v)] for v in op.operands]), np.float64)
    axis = op.attrs.get("axis", 1) if op.opname == "nn.scale_shift" else \
        (1 if op.opname == "nn.conv2d" and op.attrs.get("layout") == "NCHW" else -1)
    return np.moveaxis(y, axis, -1).reshape(-1, y.shape[axis])


@register_pass
@dataclass
class CorrectBias(Pass):
    """Add to each layer's bias the mean error of its quantized output over the calibration data.

    Before (``assign-qmn`` done; on the data, the quantized output of ``fc`` is
    0.02 lower than the float one on average in channel 0)::

        %2 = qcc.const dense<[0.5, -1.0]> : tensor<2xf32> loc("b")
        %7 = q.quantize %2 : tensor<2x!qa1> loc("fc")

    After ``-p correct-bias`` (a new constant; dce drops the old one)::

        %13 = qcc.const dense<[0.52, -1.0]> : tensor<2xf32> loc("b")
        %7 = q.quantize %13 : tensor<2x!qa1> loc("fc")
    """

    name = "correct-bias"
    data: str = ""
    samples: int = 64
    per_channel: bool = True
    search: bool = True

    def __post_init__(self):
        check_option(self.samples >= 1, "pass 'correct-bias'", "samples", ">= 1", self.samples)

    def run(self, graph: Graph) -> PassResult:
        path = self.data or context_value(self, graph, "calib")
        if not path:
            return PassResult(False, {"corrected": 0})
        run = FakeQuantRun(graph, load_samples(graph, path, self.samples))
        changes = []
        for i, op in enumerate(run.ops):
            if op.opname not in WEIGHTED or len(op.operands) < 3:
                continue
            qb = dequantized_source(op.operands[2])
            if qb is None or not qb.operands[0].is_constant():
                continue
            run.advance(i)
            ref = _pre_activation(run, op, run.ref)
            got = _pre_activation(run, op, run.cur)
            err = (ref - got).mean(axis=0)
            if not np.any(err):
                continue
            b = np.asarray(qb.operands[0].constant())
            new_b = (b.astype(np.float64) + err.reshape(b.shape)).astype(b.dtype)
            changes.append((op, qb, new_b, float(np.abs(err).mean())))
            # The rest of the run sees the corrected bias: rerun the bias's fake-quant ops.
            bias_ops = [p for p in run.ops[:i] if run.index[id(p)] >= run.index[id(qb)] and
                        any(v is qb.result or _from(v, qb) for v in p.operands)]
            run.cur[id(qb.operands[0])] = new_b
            for p in [qb] + bias_ops:
                run._run(p, run.cur)
        settle = AssignQmn(search=self.search, per_channel=self.per_channel)
        for op, qb, new_b, _ in changes:
            const = qb.operands[0]
            graph.set_operand(qb, 0, graph.add_const(new_b, name=const.producer.name))
            settle._weights(op)
        graph.bias_corrections = {op.name: mean for op, _, _, mean in changes}
        return PassResult(bool(changes), {"corrected": len(changes)})


def _from(v, qb: Op) -> bool:
    """Whether ``v`` is computed from ``qb``'s result by the ops that only move or dequantize it."""
    p = v.producer
    while p is not None and p is not qb:
        if not p.operands:
            return False
        p = p.operands[0].producer
    return p is qb
