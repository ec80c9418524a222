"""lower-qdq's 16x8 activations: Q(sigmoid|tanh|leaky_relu(DQ x)) on int16 -> ``s8.activation16``.

TFLite Micro's int16 kernels (qcc/sim/s16_activation.py states them), parameters from its Prepare:

    sigmoid, tanh:  (m, ls) = int16 LOGISTIC / TANH Prepare(s_in); output fixed at (2^-15, 0). An output
                    scale TFLite's CheckedLog2 reads as 2^-15 (|log2 s + 15| < 1e-3, e.g. onnxruntime's
                    1/32767) is taken as it, like TFLite; any other adds TFLite's QUANTIZE int16 -> int16
                    (s8.requantize, m = 2^-15 / s_out) carrying the clamp.
    leaky_relu:     (m_id, e_id), (m_alpha, e_alpha) = LEAKY_RELU Prepare(s_in, s_out, alpha)

HardSwish (TFLM has no int16 HARD_SWISH) and HardSigmoid (no TFLite kernel at all) stay refused.
"""
from __future__ import annotations

from qcc.ir.types import TensorType, UniformQuant
from qcc.sim import s16_activation
from qcc.sim.s8 import quantize_multiplier

REFUSED = {"hard_swish": "TFLite Micro has no int16 HARD_SWISH kernel (its Eval refuses int16); give it int8 "
                         "activations (--bits 8)",
           "hard_sigmoid": "TFLite has no HardSigmoid kernel to follow on int16 (its int8 table is qcc's own); give it "
                           "int8 activations (--bits 8)"}
FULL16 = (-32768, 32767)


def lower_activation16(op, x, in_q, out_q, clamp, rewriter, function: str):
    """The int16 value replacing the island, or why it does not lower."""
    if function in REFUSED:
        return f"{function} on int16: {REFUSED[function]}"
    if in_q.zero_point or out_q.zero_point:
        return f"{function} on int16 needs zero points 0 (TFLite's 16x8 mode)"
    try:
        if function == "leaky_relu":
            mult, shift = s16_activation.leaky_relu_params(in_q.scale, out_q.scale, op.attrs["alpha"])
            return _activation(rewriter, op, x, function, mult, shift, clamp, out_q)
        m, ls = s16_activation.logistic_tanh_params(in_q.scale, function)
    except ValueError as e:
        return str(e)
    if s16_activation.checked_log2(out_q.scale) == (-15, True):
        return _activation(rewriter, op, x, function, [m], [ls], clamp, out_q)
    y = _activation(rewriter, op, x, function, [m], [ls], FULL16, UniformQuant(s16_activation.OUTPUT_SCALE, 0))
    rm, rs = quantize_multiplier(s16_activation.OUTPUT_SCALE / out_q.scale)
    return rewriter.create_op("s8.requantize", [y], dict(multiplier=[rm], shift=[rs], act_min=clamp[0],
                                                         act_max=clamp[1]),
                              [TensorType(x.shape, "i16", out_q)], name=op.name).result


def _activation(rewriter, op, x, function, mult, shift, clamp, quant):
    return rewriter.create_op("s8.activation16", [x], dict(function=function, multiplier=[int(v) for v in mult],
                                                          shift=[int(v) for v in shift], act_min=clamp[0],
                                                          act_max=clamp[1]),
                              [TensorType(x.shape, "i16", quant)], name=op.name).result
