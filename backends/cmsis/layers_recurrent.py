"""Template contexts of the Qm.n recurrent cells ``qnn.lstm`` / ``qnn.gru`` (templates/ops/lstm.j2, gru.j2).

The kernels take every operand as a pointer (weights and constant initial
states are constant arrays, a streamed state is an arena buffer), then the
results (y, h[, c]) and, for a GRU without linear_before_reset, the step's
scratch buffer (plan.scratch_bytes). The sigmoid and tanh tables
(``SIGMOID_Q12`` / ``TANH_Q12``) are emitted once per model.
"""
from __future__ import annotations

from qcc.ir.graph import Op
from qcc.ir.ops.qnn_recurrent import SIGMOID_Q12, TANH_Q12, peephole_shift

RECURRENT_HANDLED_ATTRS = {
    "qnn.lstm": {"hidden_size", "x_shift", "h_shift", "cell_frac"},
    "qnn.gru": {"hidden_size", "x_shift", "h_shift", "linear_before_reset"},
}
SHORT = {"i8": "s8", "i16": "s16"}
C_TYPES = {"i8": "int8_t", "i16": "int16_t"}


def _tables(builder) -> tuple:
    sig, tanh = f"{builder.prefix}_sigmoid_q12", f"{builder.prefix}_tanh_q12"
    if not any(c.symbol == sig for c in builder.consts):
        builder.add_const(sig, "i16", SIGMOID_Q12, "sigmoid, Q3.12 -> Q0.15, every 256 input steps")
        builder.add_const(tanh, "i16", TANH_Q12, "tanh, Q3.12 -> Q0.15, every 256 input steps")
    return sig, tanh


def build_recurrent(builder, op: Op, fn: str) -> dict:
    x, h0 = op.operands[0], op.operands[4]
    steps, inputs = x.shape
    xs, hs = SHORT[x.type.dtype], SHORT[h0.type.dtype]
    builder.dots.update({(xs, xs), (hs, hs)})
    sig, tanh = _tables(builder)
    info_lo, info_hi = (-128, 127) if h0.type.dtype == "i8" else (-32768, 32767)
    a = op.attrs
    return {"steps": steps, "inputs": inputs, "hidden": a["hidden_size"], "xs": xs, "hs": hs,
            "xt": C_TYPES[x.type.dtype], "ht": C_TYPES[h0.type.dtype], "x_shift": a["x_shift"],
            "h_shift": a["h_shift"], "cell_frac": a.get("cell_frac", 12), "lbr": a.get("linear_before_reset", 0),
            "h_frac": h0.type.quant.frac_bits, "hmin": info_lo, "hmax": info_hi, "sig": sig, "tanh": tanh,
            "peep": len(op.operands) > 6, "p_shift": peephole_shift(op) if len(op.operands) > 6 else 0}
