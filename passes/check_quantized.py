"""check-quantized: legality of a lowered graph, Qm.n or affine int8 (the C code must never overflow).

For each integer layer:

* shifts: ``out_shift`` in [-31, 31], ``bias_shift`` in [0, 31] (a left shift),
  ``a_shift``/``b_shift`` in [0, 24];
* int32 accumulator of conv/dense, per output channel c, for the worst input
  (every x at its storage extreme ``xmax = 2^(W-1)``, signs matching w)::

      bound[c] = xmax * sum_k |w[c, k]| + |bias[c] << bias_shift[c]| + 2^(out_shift[c]-1)  <  2^31

  (< 2^62 for a layer with an ``i64`` bias: its accumulator is int64);

* add: ``xmax_a << a_shift + xmax_b << b_shift + rounding < 2^31``;
* affine int8 conv/dense (``s8.*``), per output channel c, with the input's
  worst offset value ``dmax = max(|-128 - zp_in|, |127 - zp_in|)``::

      bound[c] = dmax * sum_k |w[c, k]| + |bias[c]|           <  2^31
      bound[c] * 2^max(shift[c], 0)                           <  2^31   (the requantize's left shift)

  and no bias at the int32 limits (a float bias too large for its scale
  s_in * s_w[c] saturates there when quantized: the layer's output would
  silently be wrong); on int16 inputs (16x8) ``dmax`` is 32768, and with
  rounding "s64" the bounds are ``bound[c] < 2^47`` (no bias at +-2^47) and
  ``(bound[c] * reduced_mult[c]) >> (15 - shift[c]) < 2^31``;
  silently be wrong);
* s8.lstm / s8.gru: the same bound for each gate row's input and recurrent products
  (the hidden state's zero point in place of the input's), and no left shift after
  the Q0.15 gate products (each up to 2^30);
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
LIMIT_S64 = 1 << 47   # TFLite's int16 (16x8) accumulator bound
LIMIT_WIDE = 1 << 62  # a qnn conv/dense with an i64 bias (int64 accumulator)
INTEGER_SHAPE_OPS = ("nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze", "nn.transpose", "nn.concat",
                     "nn.pad", "nn.gather")


def s8_accumulator_bound(op: Op) -> np.ndarray:
    """Worst-case |acc| per output channel of an s8.conv2d / s8.dense (see module doc; int16 inputs in 16x8)."""
    zp = int(op.attrs["input_zp"])
    lo, hi = storage_range(op.operands[0].type.dtype)
    dmax = max(abs(lo - zp), abs(hi - zp))
    w = np.abs(np.asarray(op.operands[1].constant(), np.int64)).reshape(op.operands[1].shape[0], -1)
    bound = dmax * w.sum(axis=1)
    if len(op.operands) > 2:
        bound = bound + np.abs(np.asarray(op.operands[2].constant(), np.int64)).reshape(-1)
    return bound


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
            elif op.opname in ("s8.conv2d", "s8.dense"):
                self._s8_accumulator(op)
                layers += 1
            elif op.opname in ("s8.lstm", "s8.gru"):
                self._s8_recurrent(op)
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
        if len(op.operands) > 2 and op.operands[2].type.dtype == "i64":  # an int64 accumulator
            if bound[c] >= LIMIT_WIDE:
                raise PassError(f"{op.describe()}: int64 accumulator can reach 2^62 in output channel {c} "
                                f"(worst case {int(bound[c])})")
            return
        if bound[c] >= LIMIT:
            raise PassError(
                f"{op.describe()}: int32 accumulator can overflow in output channel {c}: worst-case "
                f"|acc| = {int(bound[c])} >= 2^31 = {LIMIT} (inputs at their {op.operands[0].type.dtype} "
                f"extremes). Use fewer weight or input fractional bits for this layer (e.g. a larger "
                f"--act-max for its input) or 8-bit activations")

    def _s8_accumulator(self, op: Op):
        if not op.operands[1].is_constant() or (len(op.operands) > 2 and not op.operands[2].is_constant()):
            raise PassError(f"{op.describe()}: weights and bias must be constants")
        wide = op.attrs.get("rounding") == "s64"   # 16x8: int64 bias and accumulator, bounded by 2^47
        limit = LIMIT_S64 if wide else LIMIT
        if len(op.operands) > 2:
            bias = np.asarray(op.operands[2].constant(), np.int64).reshape(-1)
            at_limit = np.flatnonzero((bias >= limit - 1) | (bias <= -limit))
            if at_limit.size:
                c = int(at_limit[0])
                raise PassError(
                    f"{op.describe()}: the bias of output channel {c} does not fit {'2^47' if wide else 'int32'} at its scale "
                    f"(input scale x weight scale): quantized it saturates at {int(bias[c])}, so the layer's "
                    f"output would be wrong. The bias is too large for the weights' and input's scales; "
                    f"rescale this layer (e.g. fold the bias into a following layer) or use --scheme qmn")
        bound = s8_accumulator_bound(op)
        shift = np.broadcast_to(np.asarray(op.attrs["shift"], np.int64), bound.shape)
        if wide:
            self._s64_accumulator(op, bound, shift)
            return
        if op.attrs.get("rounding", "double") == "single":  # int64(acc) * mult: no int32 left shift
            shift = np.zeros_like(shift)
        scaled = bound << np.maximum(shift, 0)
        c = int(np.argmax(scaled))
        if scaled[c] >= LIMIT:
            shifted = f" shifted left by {int(shift[c])}" if shift[c] > 0 else ""
            raise PassError(
                f"{op.describe()}: int32 accumulator can overflow in output channel {c}: worst-case "
                f"|acc|{shifted} = {int(scaled[c])} >= 2^31 = {LIMIT} (inputs at their {op.operands[0].type.dtype} extremes, "
                f"input zero point {op.attrs['input_zp']}). The C code would wrap; this layer's weights or "
                f"bias are too large for {op.operands[0].type.dtype} inputs at these scales")

    @staticmethod
    def _s64_accumulator(op: Op, bound: np.ndarray, shift: np.ndarray):
        """16x8 (rounding "s64"): |acc| < 2^47 (TFLite's bound) and the requantized value inside int32."""
        c = int(np.argmax(bound))
        if bound[c] >= LIMIT_S64:
            raise PassError(f"{op.describe()}: int64 accumulator can reach 2^47 in output channel {c} (worst case "
                            f"{int(bound[c])}, inputs at their int16 extremes), past TFLite's 16x8 bound")
        mult = np.broadcast_to(np.asarray(op.attrs["multiplier"], np.int64), bound.shape)
        reduced = np.where(mult < 0x7FFF0000, (mult + (1 << 15)) >> 16, 0x7FFF)
        scaled = (bound * reduced) >> (15 - shift)
        c = int(np.argmax(scaled))
        if scaled[c] >= LIMIT:
            raise PassError(f"{op.describe()}: the requantized accumulator of output channel {c} can leave int32 "
                            f"(worst case {int(scaled[c])}); its multiplier is too large for int16 inputs")

    def _s8_recurrent(self, op: Op):
        """s8.lstm / s8.gru: both gate products per row, and the Q0.15 products' requantizations."""
        a = op.attrs
        h = a["hidden_size"]
        gates = 4 if op.opname == "s8.lstm" else 3
        if not all(v.is_constant() for v in op.operands[1:4]):   # initial states may be streamed (qcc.state)
            raise PassError(f"{op.describe()}: weights and bias must be constants")
        b = np.abs(np.asarray(op.operands[3].constant(), np.int64))
        paths = [("input", op.operands[1], a["input_zp"], b[:gates * h]),
                 ("recurrent", op.operands[2], a["output_zp"], b[gates * h:] if gates == 3 else 0)]
        for what, w, zp, bias in paths:
            dmax = max(abs(-128 - zp), abs(127 - zp))
            bound = dmax * np.abs(np.asarray(w.constant(), np.int64)).sum(axis=1) + bias
            shift = np.repeat(np.maximum(np.asarray(a[what + "_shift"], np.int64), 0), h)
            scaled = bound << shift
            j = int(np.argmax(scaled))
            if scaled[j] >= LIMIT:
                raise PassError(f"{op.describe()}: the {what}-to-gate int32 accumulator of gate row {j} can "
                                f"overflow: worst case {int(scaled[j])} >= 2^31 (the C code would wrap)")
        # Q0.15 x Q0.15 (or Q0.15 x the int16 cell) products reach 2^30: no left shift may follow them.
        keys = ["output"] + (["forget", "input_to_cell"] if gates == 4 else [])
        for key in keys:
            if a[key + "_shift"] > 0:
                raise PassError(f"{op.describe()}: '{key}_shift' {a[key + '_shift']} > 0 would shift a 2^30 "
                                f"product out of int32 (the hidden-state scale is too small for the gates)")
        for k, s in enumerate(a.get("peephole_shift", [])):   # int16 peephole x int16 cell: also up to 2^30
            if s > 0:
                raise PassError(f"{op.describe()}: 'peephole_shift'[{k}] {s} > 0 would shift a 2^30 product "
                                f"out of int32")

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
                            f"(between q.dequantize and q.quantize): the quantizing pipeline has no integer lowering for it "
                            f"under this scheme")
