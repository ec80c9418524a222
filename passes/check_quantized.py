"""check-quantized: legality of a lowered Qm.n graph (the C code must never overflow).

For each integer layer:

* shifts: ``out_shift`` in [-31, 31], ``bias_shift`` in [0, 31] (a left shift),
  ``a_shift``/``b_shift`` in [0, 24];
* int32 accumulator of conv/dense, per output channel c, for the worst input
  (every x at its storage extreme ``xmax = 2^(W-1)``, signs matching w)::

      bound[c] = xmax * sum_k |w[c, k]| + |bias[c] << bias_shift[c]| + 2^(out_shift[c]-1)  <  2^31

* add: ``xmax_a << a_shift + xmax_b << b_shift + rounding < 2^31``;
* softmax rows of at most 65535 entries;
* no float compute op (conv, dense, add, pool, ...) left between quantize and
  dequantize: everything in the integer region is ``qnn.*``, an integer shape
  op or a constant.

A violation raises ``PassError`` naming the layer and, for overflow, the bound.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcc.errors import PassError
from qcc.ir.graph import Graph, Op
from qcc.transforms.passmanager import Pass, PassResult, register_pass
from qcc.ir.types import storage_range

LIMIT = 1 << 31
INTEGER_SHAPE_OPS = ("nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze", "nn.transpose", "nn.concat",
                     "nn.pad", "nn.gather")


def accumulator_bound(op: Op) -> np.ndarray:
    """Worst-case |acc| per output channel of a qnn.conv2d / qnn.dense (see module doc)."""
    x = op.operands[0].type
    xmax = max(abs(v) for v in storage_range(x.dtype))
    w = np.abs(np.asarray(op.operands[1].constant(), np.int64)).reshape(op.operands[1].shape[0], -1)
    bound = xmax * w.sum(axis=1)
    cout = w.shape[0]
    if len(op.operands) > 2:
        b = np.abs(np.asarray(op.operands[2].constant(), np.int64)).reshape(-1)
        bshift = np.broadcast_to(np.asarray(op.attrs["bias_shift"], np.int64), (cout,))
        bound = bound + (b << np.maximum(bshift, 0))
    oshift = np.broadcast_to(np.asarray(op.attrs["out_shift"], np.int64), (cout,))
    return bound + np.where(oshift > 0, np.left_shift(1, np.maximum(oshift - 1, 0)), 0)


@register_pass
@dataclass
class CheckQuantized(Pass):
    """Check that a lowered Qm.n graph cannot overflow int32 and uses legal shifts.

    On a legal graph nothing changes. For a dense layer whose worst-case sum
    does not fit::

        error: pass 'check-quantized' failed: 'qnn.dense' op "fc": int32 accumulator can
        overflow in output channel 0: worst-case |acc| = 2214592512 >= 2^31 ...
    """

    name = "check-quantized"

    def run(self, graph: Graph) -> PassResult:
        layers = 0
        for op in graph.ops:
            if op.opname in ("qnn.conv2d", "qnn.dense"):
                self._shifts(op)
                self._accumulator(op)
                layers += 1
            elif op.opname == "qnn.add":
                self._add(op)
                layers += 1
            elif op.opname in ("qnn.requantize",):
                self._shifts(op)
            elif op.opname.startswith("nn.") and op.opname not in INTEGER_SHAPE_OPS:
                self._float_op(graph, op)
        return PassResult(False, {"layers": layers})

    def _shifts(self, op: Op):
        if any(not -31 <= s <= 31 for s in op.attrs["out_shift"]):
            raise PassError(f"{op.describe()}: out_shift {op.attrs['out_shift']} leaves [-31, 31]")
        if any(not 0 <= s <= 31 for s in op.attrs.get("bias_shift", [0])):
            raise PassError(f"{op.describe()}: bias_shift {op.attrs['bias_shift']} must lie in [0, 31] "
                            f"(the bias is shifted left to the accumulator precision)")

    def _accumulator(self, op: Op):
        if not op.operands[1].is_constant() or (len(op.operands) > 2 and not op.operands[2].is_constant()):
            raise PassError(f"{op.describe()}: weights and bias must be constants")
        bound = accumulator_bound(op)
        c = int(np.argmax(bound))
        if bound[c] >= LIMIT:
            raise PassError(
                f"{op.describe()}: int32 accumulator can overflow in output channel {c}: worst-case "
                f"|acc| = {int(bound[c])} >= 2^31 = {LIMIT} (inputs at their {op.operands[0].type.dtype} "
                f"extremes). Use fewer weight or input fractional bits for this layer (e.g. a larger "
                f"--act-max for its input) or 8-bit activations")

    def _add(self, op: Op):
        a, b = op.operands[0].type, op.operands[1].type
        amax = max(abs(v) for v in storage_range(a.dtype))
        bmax = max(abs(v) for v in storage_range(b.dtype))
        s = op.attrs["out_shift"][0]
        bound = (amax << op.attrs["a_shift"]) + (bmax << op.attrs["b_shift"]) + ((1 << (s - 1)) if s > 0 else 0)
        if bound >= LIMIT:
            raise PassError(f"{op.describe()}: int32 sum can overflow: worst case {bound} >= 2^31 "
                            f"(a_shift {op.attrs['a_shift']}, b_shift {op.attrs['b_shift']})")
        if not -31 <= s <= 31:
            raise PassError(f"{op.describe()}: out_shift {s} leaves [-31, 31]")

    def _float_op(self, graph: Graph, op: Op):
        """A float op may run before the input quantize or after the output dequantize, not between."""
        def reaches(v, opname, forward):
            seen, work = set(), [v]
            while work:
                cur = work.pop()
                if id(cur) in seen:
                    continue
                seen.add(id(cur))
                if forward:
                    for u in graph.users(cur):
                        if u.opname == opname:
                            return True
                        work.extend(u.results)
                elif cur.producer is not None:
                    if cur.producer.opname == opname:
                        return True
                    work.extend(cur.producer.operands)
            return False
        if reaches(op.results[0], "q.quantize", True) and any(reaches(v, "q.dequantize", False)
                                                               for v in op.operands):
            raise PassError(f"{op.describe()} is still a float op inside the quantized region "
                            f"(between q.dequantize and q.quantize); lower-quantized could not lower it")
