"""Qm.n recurrent ops ``qnn.lstm`` and ``qnn.gru``: the integer cell, stated exactly.

Formats: x is i8/i16 Q.n_x with weights w Q.n_w (same storage); the hidden
state h (results y and h, operand h0) is i8/i16 Q.n_h with recurrent weights r
Q.n_r (same storage); gate pre-activations are int16 Q3.12 (sigmoid and tanh
are flat beyond +-8, so saturating there costs at most 3.4e-4); gate outputs
are int16 Q0.15; the LSTM cell state (result c, operand c0) is int16
Q.``cell_frac`` with ``cell_frac`` <= 12 (Q3.12 or wider, from the calibrated
range over every step). The bias b is int32 Q.12. ``x_shift = n_x + n_w - 12``
and ``h_shift = n_h + n_r - 12`` bring the two accumulators to Q.12.
``rs`` is qcc/ir/ops/qnn.py's rshift_round (a left shift for s <= 0), sums of
rs terms are exact (64-bit), ``sat16`` clamps to int16, ``sat_h`` to h's storage.
``sig``/``tanh`` are ``qnn.lut_interp`` with the fixed tables ``SIGMOID_Q12`` and
``TANH_Q12`` (Q3.12 in, Q0.15 out; qcc/ir/ops/qnn_softmax.py).

``qnn.lstm(x, w, r, b, h0, c0) -> (y, h, c)``, rows of w, r, b in ONNX order
(i, o, f, c), h = h0 and c = c0 at t = 0; for each step t and unit j, every
dot product reading the previous step's h::

    pre_k = sat16(rs(x_t . w[kH+j], x_shift) + rs(h . r[kH+j], h_shift) + b[kH+j])   k = i, o, f, g
    i, o, f = sig(pre_i), sig(pre_o), sig(pre_f);  g = tanh(pre_g)
    c[j] = sat16(rs(f * c[j], 15) + rs(i * g, 30 - cell_frac))
    y[t][j] = sat_h(rs(o * tanh(sat16(c[j] << (12 - cell_frac))), 30 - n_h))

and h = y[T-1] at the end. With the optional peepholes p (operand 6: int16 Q.n_p, [3H] in
the order i, o, f) the i and f pre-activations add ``rs(p_k[j] * c[j], p_shift)`` with the
previous c, and o adds it with the new c, inside the sat16; ``p_shift = n_p + cell_frac - 12``
brings the product to the gate's Q.12.

``qnn.gru(x, w, r, b, h0) -> (y, h)``, rows (z, r, h); b has 4H entries
[Wb_z + Rb_z, Wb_r + Rb_r, Wb_h, Rb_h]::

    z, rr = sig(pre_z), sig(pre_r)                                  (as the LSTM's gates)
    lbr 0:  rh = sat_h(rs(rr * h, 15)) for every unit, then
            pre_n = sat16(rs(x_t . w_h[j], x_shift) + rs(rh . r_h[j], h_shift) + b_xn[j] + b_hn[j])
    lbr 1:  hn = rs(h . r_h[j], h_shift) + b_hn[j]
            pre_n = sat16(rs(x_t . w_h[j], x_shift) + b_xn[j] + rs(rr * hn, 15))
    y[t][j] = sat_h(rs((32768 - z) * tanh(pre_n), 30 - n_h) + rs(z * h[j], 15))

All dot products are int32 accumulators (check-quantized proves they fit).
"""
from __future__ import annotations

import numpy as np

from qcc.ir.types import TensorType
from qcc.ir.registry import OpDef, OpError, attr, attrs, register_op
from qcc.ir.ops.nn_recurrent import check_peepholes
from qcc.ir.ops.qnn_softmax import lut_interp_table

GATE_FRAC = 12
SIGMOID_Q12 = lut_interp_table(lambda v: 1.0 / (1.0 + np.exp(-v)), GATE_FRAC, 15)
TANH_Q12 = lut_interp_table(np.tanh, GATE_FRAC, 15)


def _frac(v) -> int:
    q = v.type.quant
    if q is None or not hasattr(q, "frac_bits"):
        raise OpError(f"operand/result of type {v.type} needs a fixed-point (Qm.n) format")
    return q.frac_bits


def _rule(gates: int, states: int):
    def rule(op):
        hidden = op.attrs["hidden_size"]
        x, w, r, b, h0 = op.operands[:5]
        if len(x.shape) != 2:
            raise OpError(f"input must be [T, I], got {list(x.shape)}")
        want = {1: (gates * hidden, x.shape[1]), 2: (gates * hidden, hidden), 3: ((gates + (gates == 3)) * hidden,)}
        for i, shape in want.items():
            if op.operands[i].shape != shape:
                raise OpError(f"operand {i} must have shape {list(shape)}, got {list(op.operands[i].shape)}")
        for i in range(4, 4 + states):
            if op.operands[i].shape != (1, hidden):
                raise OpError(f"state operand {i} must have shape [1, {hidden}], got {list(op.operands[i].shape)}")
        ht = h0.type
        out = [ht.with_shape((x.shape[0], hidden)), ht]
        if states == 2:
            out.append(op.operands[5].type)
        return out
    return rule


def _verify(op):
    x, w, r, b, h0 = op.operands[:5]
    for v, kinds in ((x, ("i8", "i16")), (h0, ("i8", "i16")), (b, ("i32",))):
        if v.type.dtype not in kinds:
            raise OpError(f"expects {'/'.join(kinds)} for operand '{v.name or v.type}', got {v.type.dtype}")
    if w.type.dtype != x.type.dtype or r.type.dtype != h0.type.dtype:
        raise OpError("w must have x's storage type and r the hidden state's (the dot products pair them)")
    for v in list(op.operands) + list(op.results):
        _frac(v)
    if _frac(b) != GATE_FRAC:
        raise OpError(f"bias must be Q.{GATE_FRAC} (the gate format)")
    if op.results[0].type != h0.type.with_shape(op.results[0].shape):
        raise OpError("y and h keep h0's type (the state format)")
    n_h = _frac(h0)
    if not 0 <= n_h <= 29:
        raise OpError(f"hidden state fractional bits {n_h} outside [0, 29]")
    for key in ("x_shift", "h_shift"):
        if not -31 <= op.attrs[key] <= 31:
            raise OpError(f"'{key}' must lie in [-31, 31], got {op.attrs[key]}")
    if op.opname == "qnn.lstm" and len(op.operands) > 6:
        check_peepholes(op)
        p = op.operands[6]
        if p.type.dtype != "i16" or not -31 <= peephole_shift(op) <= 31:
            raise OpError("peepholes p must be i16 with n_p + cell_frac - 12 in [-31, 31]")
    if op.opname == "qnn.lstm":
        c0 = op.operands[5]
        if c0.type.dtype != "i16" or not 0 <= op.attrs["cell_frac"] <= GATE_FRAC or _frac(c0) != op.attrs["cell_frac"]:
            raise OpError(f"the cell state must be i16 Q.cell_frac with cell_frac in [0, {GATE_FRAC}]")
    elif op.attrs["linear_before_reset"] not in (0, 1):
        raise OpError("linear_before_reset must be 0 or 1")


def peephole_shift(op) -> int:
    """The right shift that brings p * c (Q.n_p times Q.cell_frac) to the gates' Q.12."""
    return _frac(op.operands[6]) + op.attrs["cell_frac"] - GATE_FRAC


_COMMON = (attr("hidden_size", "int"), attr("x_shift", "int"), attr("h_shift", "int"))
register_op(OpDef("qnn.lstm", operands=["x", "w", "r", "b", "h0", "c0", "p?"],
                  attrs=attrs(*_COMMON, attr("cell_frac", "int")), infer=_rule(4, 2), verify_fn=_verify,
                  num_results=3, summary="Qm.n LSTM over a sequence: (y, h, c); see qcc/ir/ops/qnn_recurrent.py"))
register_op(OpDef("qnn.gru", operands=["x", "w", "r", "b", "h0"],
                  attrs=attrs(*_COMMON, attr("linear_before_reset", "int", 0)), infer=_rule(3, 1),
                  verify_fn=_verify, num_results=2,
                  summary="Qm.n GRU over a sequence: (y, h); see qcc/ir/ops/qnn_recurrent.py"))
