"""TensorFlow Lite Micro's int16 pointwise kernels (16x8 mode): ``s8.activation16``.

LOGISTIC / TANH int16 (TFLM ``logistic_common.cc`` / ``tanh.cc`` Prepare, then
``reference_integer_ops::Logistic`` / ``Tanh`` on int16). Input and output zero
points are 0; the output scale is 2^-15. Prepare, from the float32 input scale s:

    POT:  CheckedLog2(s) -> (k, |log2 s - k| < 1e-3); ls = 12 + k;
          logistic: POT when ls == 0; tanh: POT when ls is 0 or 1    -> (multiplier 0, ls)
    else: m = f64(s) * 4096 * 3; ls = 0; while m <= 32767 / 2 and ls <= 30: ls += 1, m *= 2
          -> (int(m) truncated, ls)

Eval, per int16 x (int32 arithmetic, arithmetic right shift):

    multiplier 0 -> (3 << ls, 0);  v = (x * multiplier + (ls > 0 ? 2^(ls-1) : 0)) >> ls
    y = interpolate16(v): linear interpolation in the 256-entry uint16 table of sigmoid(i/24)
        (qcc/sim/s8_recurrent.py states it: the same arithmetic as CMSIS-NN's arm_nn_activation_s16)

LEAKY_RELU int16 (TFLM ``leaky_relu_common.cc`` Prepare, micro reference_ops::QuantizeLeakyRelu<int16_t>),
zero points 0, multipliers from the float32 scales and alpha in float64 arithmetic; a negative slope
multiplies by |alpha| and negates (TFLM keeps MultiplyByQuantizedMultiplier's multiplier >= 0):

    (m_id, e_id) = QuantizeMultiplier(f64(s_in) / f64(s_out))
    (m_a, e_a)   = QuantizeMultiplier(|f64(s_in) * f64(alpha) / f64(s_out)|)
    y = clamp16(x >= 0 ? mbqm(x, m_id, e_id) : sign(alpha) * mbqm(x, m_a, e_a))

(The PyPI interpreter's outputs pin these choices: float32 division or a signed alpha multiplier
each differ from it on some parameter sets, tests/test_activation16.py.) ``s8.activation16`` stores
the alpha multiplier with the slope's sign: -m_a for a negative alpha.

``s8.activation16`` carries (function, multiplier, shift) exactly as TFLM's OpData holds them, and a
clamp (a fused ReLU) applied last. HARD_SWISH has no int16 kernel in TFLM (its Eval refuses
"Unsupported type INT16"), so qcc refuses it in 16x8 rather than invent one.
"""
from __future__ import annotations

import math

import numpy as np

from qcc.sim.interpreter import kernel
from qcc.sim import s8_lut
from qcc.sim.s8_recurrent import interpolate16

OUTPUT_SCALE = 2.0 ** -15      # TFLite's fixed int16 sigmoid/tanh output scale (zero point 0)
MAX_MULTIPLIER = 32767         # x * multiplier + round stays inside int32 (TFLM DCHECKs the same bound)
MAX_SHIFT = 30
MAX_LEAKY_LEFT_SHIFT = 15  # x * 2^shift of an int16 x stays inside int32


def checked_log2(x: float):
    """TFLite CheckedLog2: (rounded log2, whether x is a power of two within 1e-3 in the exponent)."""
    l2 = math.log(x) / math.log(2.0)
    k = int(round(l2))   # std::round: half away from zero (never a tie for a real scale)
    return k, abs(l2 - k) < 1e-3


def logistic_tanh_params(s_in: float, function: str):
    """(multiplier, left shift) of TFLM's int16 LOGISTIC / TANH Prepare for float32 input scale ``s_in``;
    ValueError when TFLite's int32 arithmetic would overflow for this scale."""
    s = float(np.float32(s_in))
    k, pot = checked_log2(s)
    ls = 12 + k
    if pot and (ls == 0 or (function == "tanh" and ls == 1)):
        return 0, ls
    m = s * 4096.0 * 3.0
    ls = 0
    while m <= 32767.0 / 2.0 and ls <= 30:
        ls += 1
        m *= 2.0
    if m > MAX_MULTIPLIER or ls > MAX_SHIFT:
        raise ValueError(f"int16 {function}: input scale {s_in} is outside what TFLite's int16 kernel "
                         f"handles (multiplier {int(m)}, shift {ls}: its int32 product would overflow)")
    return int(m), ls


def leaky_relu_params(s_in: float, s_out: float, alpha: float):
    """([m_id, +-m_alpha], [e_id, e_alpha]) of TFLM's LEAKY_RELU Prepare (float64 arithmetic on the float32
    scales and alpha); the alpha multiplier carries the slope's sign."""
    (m_id, m_a), (e_id, e_a) = s8_lut.leaky_relu_params(s_in, s_out, alpha)
    if max(e_id, e_a) > MAX_LEAKY_LEFT_SHIFT:   # TFLite's x * 2^shift would leave int32
        raise ValueError(f"int16 leaky_relu: output scale {s_out} is more than 2^15 times finer than the "
                         f"input's {s_in} (TFLite's int32 left shift would overflow)")
    return [m_id, m_a], [e_id, e_a]


def logistic_tanh16(x, multiplier: int, left_shift: int, function: str) -> np.ndarray:
    x = np.asarray(x, np.int64)
    if multiplier == 0:
        multiplier, left_shift = 3 << left_shift, 0
    rnd = (1 << (left_shift - 1)) if left_shift > 0 else 0
    v = (x * multiplier + rnd) >> left_shift
    return interpolate16(v, "sigmoid" if function == "logistic" else "tanh")


def activation16(x, function: str, multipliers, shifts, act_min: int = -32768, act_max: int = 32767):
    """``s8.activation16`` on int16 codes ``x``."""
    if function == "leaky_relu":
        y = s8_lut.leaky_relu(x, multipliers, shifts)
    else:
        y = logistic_tanh16(x, multipliers[0], shifts[0], function)
    return np.clip(y, act_min, act_max).astype(np.int16)


@kernel("s8.activation16")
def _activation16(op, x):
    a = op.attrs
    return activation16(x, a["function"], a["multiplier"], a["shift"], a["act_min"], a["act_max"])
