"""Integer softmax and the interpolated 16-bit table: ops, algorithms, table builders.

``qnn.softmax`` (over the last axis; input i8 or i16 Qm.n with ``n_in``
fractional bits; output Q0.7 in i8 or Q0.15 in i16). An exp table replaces
CMSIS-NN's base-2 ``arm_softmax_q7`` trick (which treats the input as an
integer exponent and ignores its format). ``table`` has 257 entries,
``table[k] = round_half_away(2^15 * exp(-k * 2^(table_shift - n_in)))``
(Q0.15, table[0] = 32768), and per row::

    d[i]   = max(x) - x[i]                                  (>= 0)
    k, f   = d[i] >> table_shift, d[i] & (2^table_shift - 1)
    e[i]   = 0                                              if k >= 256
           = table[k] + rshift_round((table[k+1] - table[k]) * f, table_shift)   otherwise
    sum    = sum_i e[i]                                     (>= 32768: the max has d = 0)
    y[i]   = clamp(div_round_away(e[i] << out_frac, sum), 0, storage_max)

with ``out_frac`` = 7 (i8) or 15 (i16). For i8 inputs ``table_shift`` = 0 and
the 256 first entries cover every difference exactly (no interpolation). For
i16 inputs ``table_shift = max(0, n_in - 4)`` makes the table span at least 16
real units (exp(-16) * 2^15 < 0.5). Everything fits int32: e <= 2^15,
e << 15 <= 2^30 and the sum stays below 2^31 for rows of up to 65535 entries.

``qnn.lut_interp`` (i16 -> i16 pointwise map such as sigmoid/tanh; the i8
case uses ``qnn.lut``). ``table`` has 257 entries, the map sampled at
``x = -32768 + 256 * k`` and stored in the output format, and::

    u = x + 32768;  k, f = u >> 8, u & 255
    y = table[k] + rshift_round((table[k+1] - table[k]) * f, 8)
"""
from __future__ import annotations

import math

import numpy as np

from qcc.ir.registry import OpDef, OpError, attr, attrs, register_op, same_as_operand

SOFTMAX_TABLE_SIZE = 257


def _verify_softmax(op):
    x, y = op.operands[0].type, op.results[0].type
    if x.dtype not in ("i8", "i16") or y.dtype not in ("i8", "i16"):
        raise OpError(f"takes and returns i8/i16 tensors, got {x.dtype} -> {y.dtype}")
    if op.attrs["axis"] not in (-1, x.rank - 1):
        raise OpError(f"integer softmax runs over the last axis only, got axis {op.attrs['axis']}")
    if len(op.attrs["table"]) != SOFTMAX_TABLE_SIZE:
        raise OpError(f"table must have {SOFTMAX_TABLE_SIZE} entries, got {len(op.attrs['table'])}")
    if not 0 <= op.attrs["table_shift"] <= 16:
        raise OpError(f"table_shift must lie in [0, 16], got {op.attrs['table_shift']}")
    if x.shape and x.shape[-1] > 65535:
        raise OpError(f"rows of {x.shape[-1]} entries would overflow the int32 sum")


register_op(OpDef(
    "qnn.softmax", operands=["x"],
    attrs=attrs(attr("axis", "int", -1), attr("table", "ints"), attr("table_shift", "int", 0)),
    infer=lambda op: [op.operands[0].type.with_quant(op.results[0].type.dtype if op.results else "i8", None)],
    verify_fn=_verify_softmax,
    summary="Integer softmax over the last axis with an exp table; output Q0.7 (i8) or Q0.15 (i16)."))


def _verify_lut_interp(op):
    if op.operands[0].type.dtype != "i16" or op.results[0].type.dtype != "i16":
        raise OpError("interpolated table maps i16 to i16")
    if len(op.attrs["table"]) != 257:
        raise OpError(f"table must have 257 entries, got {len(op.attrs['table'])}")


register_op(OpDef(
    "qnn.lut_interp", operands=["x"], attrs=attrs(attr("table", "ints")), infer=same_as_operand(0),
    verify_fn=_verify_lut_interp,
    summary="i16 pointwise map by a 257-entry table with linear interpolation (sigmoid/tanh on i16)."))


# ---------------------------------------------------------------- table builders
def _round_away(v: float) -> int:
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def softmax_table_shift(in_dtype: str, in_frac: int) -> int:
    return 0 if in_dtype == "i8" else max(0, in_frac - 4)


def softmax_table(in_frac: int, table_shift: int):
    step = 2.0 ** (table_shift - in_frac)
    return [_round_away(32768.0 * math.exp(-k * step)) for k in range(SOFTMAX_TABLE_SIZE)]


def lut_table(fn, in_frac: int, out_frac: int, lo: int = -128, hi: int = 127):
    """256-entry i8 table of ``fn`` (a float -> float map) for Q.in_frac -> Q.out_frac."""
    xs = np.arange(-128, 128, dtype=np.float64) * 2.0 ** -in_frac
    return [int(np.clip(_round_away(float(v) * 2.0 ** out_frac), lo, hi)) for v in fn(xs)]


def lut_interp_table(fn, in_frac: int, out_frac: int):
    """257-entry i16 table of ``fn`` sampled every 256 input steps (the last sample past the end)."""
    xs = (np.arange(257, dtype=np.float64) * 256 - 32768) * 2.0 ** -in_frac
    return [int(np.clip(_round_away(float(v) * 2.0 ** out_frac), -32768, 32767)) for v in fn(xs)]
