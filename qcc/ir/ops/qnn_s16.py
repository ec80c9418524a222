"""``s8.activation16``: TensorFlow Lite Micro's int16 LOGISTIC, TANH and LEAKY_RELU (the 16x8 mode).

    s8.activation16(x: i16) -> i16 {function, multiplier, shift, act_min, act_max}

``function`` "logistic" / "tanh": multiplier = [m], shift = [ls], TFLM's int16 Prepare output
(m = 0 marks its power-of-two form: 3 << ls); v = (x * m + 2^(ls-1)) >> ls, then linear
interpolation in the 256-entry table of sigmoid(i/24); output scale 2^-15, zero point 0.
``function`` "leaky_relu": multiplier = [m_id, +-m_alpha], shift = [e_id, e_alpha] (TFLite
QuantizeMultiplier pairs; -m_alpha marks a negative slope); y = mbqm(x, m_id, e_id) for x >= 0,
sign * mbqm(x, |m_alpha|, e_alpha) below (TFLM negates rather than multiply by a negative multiplier). Both end with clamp(y, act_min, act_max). qcc/sim/s16_activation.py states
the arithmetic and its source. Zero points are 0 throughout (TFLite's 16x8 mode).
"""
from __future__ import annotations

from qcc.ir.registry import OpDef, OpError, attr, attrs, register_op
from qcc.ir.types import TensorType

FUNCTIONS = ("logistic", "tanh", "leaky_relu")


def _verify(op):
    for v in list(op.operands) + list(op.results):
        if v.type.dtype != "i16":
            raise OpError(f"works on i16 tensors, got {v.type.dtype}")
    a = op.attrs
    if a["function"] not in FUNCTIONS:
        raise OpError(f"'function' must be one of {', '.join(FUNCTIONS)}, got '{a['function']}'")
    mult, shift = a["multiplier"], a["shift"]
    n = 2 if a["function"] == "leaky_relu" else 1
    if len(mult) != n or len(shift) != n:
        raise OpError(f"{a['function']} takes {n} multiplier/shift pair(s), got {len(mult)} and {len(shift)}")
    if n == 1:   # x * m + round must stay inside int32, as in TFLite's kernel
        if not 0 <= mult[0] <= 32767 or not 0 <= shift[0] <= 30:
            raise OpError(f"multiplier {mult[0]} must lie in [0, 32767] and shift {shift[0]} in [0, 30]")
        if mult[0] == 0 and shift[0] > 1:
            raise OpError(f"the power-of-two form (multiplier 0) takes shift 0 or 1, got {shift[0]}")
    else:
        if not 0 <= mult[0] < 2 ** 31 or not -2 ** 31 < mult[1] < 2 ** 31:
            raise OpError("leaky_relu multipliers must be int32 (the identity one >= 0; -m_alpha for a negative "
                          "slope, |m_alpha| < 2^31)")
        if any(not -31 <= s <= 15 for s in shift):   # x * 2^shift of an int16 x stays inside int32
            raise OpError(f"shifts must lie in [-31, 15], got {shift}")
    if not -32768 <= a["act_min"] <= a["act_max"] <= 32767:
        raise OpError(f"clamp [{a['act_min']}, {a['act_max']}] must be an ordered range inside [-32768, 32767]")


register_op(OpDef(
    "s8.activation16", operands=["x"],
    attrs=attrs(attr("function", "str"), attr("multiplier", "ints"), attr("shift", "ints"),
                attr("act_min", "int", -32768), attr("act_max", "int", 32767)),
    infer=lambda op: [TensorType(op.operands[0].type.shape, "i16")], verify_fn=_verify,
    summary="TFLite Micro's int16 logistic/tanh (sigmoid-table interpolation) or leaky ReLU, then a clamp."))
