"""Handlers of lower-quantized for ``nn.lstm`` / ``nn.gru`` -> ``qnn.lstm`` / ``qnn.gru`` (a mixin).

Why one integer op per cell and not a decomposition into qnn.dense, qnn.lut_interp,
qnn.mul and qnn.add: unrolled over T steps that is ~12 T ops, T copies of the
call sequence in C and a buffer per gate per step; as one op the C is one loop
over time with no gate buffers (the LSTM reads the previous step's h from y; the
GRU with linear_before_reset = 0 needs z and r * h for one step), and the
recurrent state can be kept between calls (``qcc --stream-state``).

Formats (qcc/ir/ops/qnn_recurrent.py states the integer math):

    x        the input's twin, Q.n_x in i8 (q7) or i16 (q15)
    h, y     Q0.7 / Q0.15 in x's storage: |h| < 1 always (o * tanh(c), or a convex mix of tanh and h0)
    w, r     one format per matrix, n = W-1 - ceil(log2 max|w|), lowered until every row's
             worst case sum |w_q| * 2^(W-1) fits int32 (q15 needs it, q7 never)
    b        int32 Q.12: Wb + Rb per gate (GRU: the candidate's Wb_h and Rb_h apart)
    gates    Q3.12 in, Q0.15 out
    c        int16 Q.n_c, n_c = min(12, 15 - ceil(log2 max|c|)) from the calibrated range of the
             cell result, which ``calibrate-recurrent`` widens to every step's cell state
    h0, c0   constants quantized to the state formats; run-time values requantized to them
    p        the LSTM's peepholes: int16 Q.n_p from max|p| (the product with c shifted to Q.12)

The y, h, c results then meet their own fake-quant formats through qnn.requantize
where those differ (``_quantize``).
"""
from __future__ import annotations

import math
from typing import List

import numpy as np

from qcc.errors import UnsupportedModelError
from qcc.ir.graph import Op, Value
from qcc.ir.ops.qnn_recurrent import GATE_FRAC
from qcc.ir.types import TensorType, storage_range
from qcc.sim.qmn import round_half_away

from ._qmn_util import bits_of, fixed_type, frac_bits, frac_bits_for

INT32_MAX = (1 << 31) - 1


def matrix_frac_bits(m: np.ndarray, bits: int, operand_max: int) -> int:
    """One format for a weight matrix whose dot products with operands up to ``operand_max`` fit int32."""
    n = frac_bits_for(float(np.abs(m).max(initial=0.0)), bits)
    lo, hi = storage_range(f"i{bits}")
    while n > -16:
        q = np.clip(round_half_away(m.astype(np.float64) * 2.0 ** n), lo, hi)
        if np.abs(q).sum(axis=1).max(initial=0) * operand_max <= INT32_MAX:
            break
        n -= 1
    return n


def cell_frac_bits(max_abs: float) -> int:
    if not max_abs > 0 or not math.isfinite(max_abs):
        return GATE_FRAC
    return int(max(0, min(GATE_FRAC, 15 - math.ceil(math.log2(max_abs)))))


class RecurrentLowerings:
    """``_nn_lstm`` / ``_nn_gru`` for LowerQuantized (needs its ``graph``, ``rw``, ``twin``, ``_x``)."""

    def _quant_const(self, arr: np.ndarray, t: TensorType, name: str, before: Op) -> Value:
        lo, hi = storage_range(t.dtype)
        q = np.clip(round_half_away(np.asarray(arr, np.float64) * 2.0 ** frac_bits(t)), lo, hi)
        return self.rw.create_op("qcc.const", [], {"value": q.astype(t.np_dtype)}, [t], name=name,
                                 before=before).result

    def _state(self, op: Op, i: int, t: TensorType) -> Value:
        """Operand ``i`` (an initial state) in format ``t``."""
        v = op.operands[i]
        if v.is_constant():
            return self._quant_const(v.constant().reshape(t.shape), t, f"{op.name}.{'hc'[i - 4]}0", op)
        src = self._x(op, i)
        if src.type == t:
            return src
        lo, hi = storage_range(t.dtype)
        return self.rw.create_op("qnn.requantize", [src], {
            "out_shift": [frac_bits(src.type) - frac_bits(t)], "act_min": lo, "act_max": hi}, [t],
            name=f"{op.name}/{'hc'[i - 4]}0", before=op).result

    def _cell_range(self, op: Op) -> float:
        for user in self.graph.users(op.results[2]):
            if user.opname == "q.range":
                return max(abs(user.attrs["min"]), abs(user.attrs["max"]))
        return 0.0

    def _recurrent(self, op: Op, gates: int) -> List[Value]:
        x = self._x(op, 0)
        for i in [1, 2, 3] + ([6] if len(op.operands) > 6 else []):
            if not op.operands[i].is_constant():
                raise UnsupportedModelError(f"lower-quantized: weights of {op.describe()} are not constant")
        bits = bits_of(x.type.dtype)
        hidden = op.attrs["hidden_size"]
        w, r, b = (np.asarray(op.operands[i].constant(), np.float64) for i in (1, 2, 3))
        n_x, n_h = frac_bits(x.type), bits - 1
        # The accumulators reach Q.12 by one shift in [-31, 31]: tiny weights give up their extra bits.
        n_w = min(matrix_frac_bits(w, bits, 1 << (bits - 1)), GATE_FRAC + 31 - n_x)
        n_r = min(matrix_frac_bits(r, bits, 1 << (bits - 1)), GATE_FRAC + 31 - n_h)
        if n_x + n_w - GATE_FRAC < -31:
            raise UnsupportedModelError(
                f"lower-quantized: {op.describe()}: its input range (Q.{n_x}) and weights (Q.{n_w}) are too "
                f"coarse to reach the gates' Q3.12 by a shift of at most 31 bits; rescale the input")
        ht = fixed_type((1, hidden), x.type.dtype, n_h)
        wb, rb = b[:gates * hidden], b[gates * hidden:]
        if gates == 4:
            bias = wb + rb
        else:  # z and r summed; the candidate's input and recurrent biases apart (linear_before_reset)
            bias = np.concatenate([(wb + rb)[:2 * hidden], wb[2 * hidden:], rb[2 * hidden:]])
        bt = fixed_type(bias.shape, "i32", GATE_FRAC)
        operands = [x,
                    self._quant_const(w, fixed_type(w.shape, x.type.dtype, n_w), f"{op.name}.w", op),
                    self._quant_const(r, fixed_type(r.shape, x.type.dtype, n_r), f"{op.name}.r", op),
                    self._quant_const(bias, bt, f"{op.name}.b", op),
                    self._state(op, 4, ht)]
        attrs = {"hidden_size": hidden, "x_shift": n_x + n_w - GATE_FRAC, "h_shift": n_h + n_r - GATE_FRAC}
        types = [ht.with_shape((x.shape[0], hidden)), ht]
        if gates == 4:
            ct = fixed_type((1, hidden), "i16", cell_frac_bits(self._cell_range(op)))
            operands.append(self._state(op, 5, ct))
            attrs["cell_frac"] = frac_bits(ct)
            types.append(ct)
            if len(op.operands) > 6:  # peepholes: int16, the shift to Q.12 kept inside [-31, 31]
                p = np.asarray(op.operands[6].constant(), np.float64)
                n_p = min(frac_bits_for(float(np.abs(p).max(initial=0.0)), 16), 31 + GATE_FRAC - frac_bits(ct))
                operands.append(self._quant_const(p, fixed_type(p.shape, "i16", n_p), f"{op.name}.p", op))
            opname = "qnn.lstm"
        else:
            attrs["linear_before_reset"] = op.attrs["linear_before_reset"]
            opname = "qnn.gru"
        new = self.rw.create_op(opname, operands, attrs, types, name=op.name, before=op)
        return list(new.results)

    def _nn_lstm(self, op: Op) -> List[Value]:
        return self._recurrent(op, 4)

    def _nn_gru(self, op: Op) -> List[Value]:
        return self._recurrent(op, 3)
