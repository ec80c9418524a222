"""Affine int8 recurrent ops ``s8.lstm`` and ``s8.gru``: TFLite's integer LSTM (CMSIS-NN
``arm_lstm_unidirectional_s8``), bit for bit, and a GRU built from the same pieces.

Operands mirror ``nn.lstm`` / ``nn.gru`` (batch 1, forward, ONNX gate order), with
int8 data and weights, int32 biases and an int16 cell state:

    s8.lstm(x, w, r, b, h0, c0) -> (y, h, c)
        x i8 [T, I]  (input_zp)      w i8 [4H, I]   r i8 [4H, H]   b i32 [4H]
        h0 i8 [1, H] (output_zp)     c0 i16 [1, H]  (scale 2^cell_scale_power)
        y i8 [T, H], h i8 [1, H] (= y[T-1], or h0 when T = 0), c i16 [1, H]
        gates stacked i, o, f, c (ONNX); per gate k the attributes hold
        input_multiplier[k]/input_shift[k] = s_x s_w / 2^-12 and
        recurrent_multiplier[k]/recurrent_shift[k] = s_h s_r / 2^-12.
    s8.gru(x, w, r, b, h0) -> (y, h)
        w i8 [3H, I], r i8 [3H, H], b i32 [6H] (input-path biases, then recurrent-path biases),
        gates z, r, n (ONNX); ``linear_before_reset`` 0 or 1.

``requant`` is qcc/ir/ops/qnn_s8.py's (double rounding, CMSIS-NN ``arm_nn_requantize``);
``sat16(v) = clamp(v, -32768, 32767)``. The fixed-point activations take Q3.12 int16
and give Q0.15 int16 (CMSIS-NN ``arm_nn_activation_s16``, TFLite's int16 LUT
logistic/tanh: a 256-entry table of sigmoid(i/24) in 0.16 with linear interpolation;
``qcc.sim.s8_recurrent`` states it):

    sigmoid16(x), tanh16(x, left_shift)   (left_shift = 0 for gates, cell_scale_power + 12
                                            for the cell state, which rescales it to Q3.12)

LSTM, per step t (all per element j of the H outputs; gate k of {i, o, f, c}):

    pre_k = sat16(sat16(requant(b_k + sum((x_t - input_zp) * w_k), input_mult_k, input_shift_k))
                  + requant(sum((h - output_zp) * r_k), recurrent_mult_k, recurrent_shift_k))
    f = sigmoid16(pre_f)
    c = sat16(requant(f * c, forget_multiplier, forget_shift))
    i = sigmoid16(pre_i); g = tanh16(pre_c, 0)
    c = clamp(requant(i * g, input_to_cell_multiplier, input_to_cell_shift) + c, -cell_clip, cell_clip)
    o = sigmoid16(pre_o)
    h = y_t = clamp(requant(o * tanh16(c, cell_scale_power + 12), output_multiplier, output_shift)
                    + output_zp, -128, 127)

(``cell_clip`` in [1, 32767]; TFLite's converter uses 32767 when the model has no clip.)
Peepholes (optional operand p, i16 [3H] in the order i, o, f, each gate's vector symmetric at
its own scale s_p[k]; TFLite's ``cell_to_gate_weights`` through
``VectorBatchVectorCwiseProductAccumulate``): after the two products, i and f add the
previous cell state's term and o, computed after the cell update, the new one's:

    pre_k = sat16(pre_k + requant(p_k * c, peephole_multiplier[k], peephole_shift[k]))  k = i, o, f

with ``peephole_multiplier/shift[k]`` = s_p[k] 2^cell_scale_power / 2^-12 (both lists empty without p).
With the recurrent weights' zero point folded as ``-output_zp * sum(r_k)``, this is
``arm_nn_lstm_step_s8`` exactly, including its first step without a hidden state
(h0 = output_zp: the recurrent term is requant(0) = 0).

GRU (no TFLite/CMSIS-NN kernel exists; the same pieces), per step:

    px_k = requant(bx_k + sum((x_t - input_zp) * w_k), input_mult_k, input_shift_k)     Q3.12
    ph_k = requant(bh_k + sum((h - output_zp) * r_k), recurrent_mult_k, recurrent_shift_k)  Q3.12
    z = sigmoid16(sat16(sat16(px_z) + ph_z));  rg = sigmoid16(sat16(sat16(px_r) + ph_r))
    linear_before_reset = 1:
        n = tanh16(sat16(sat16(px_n) + sat16(rdiv_pot(rg * sat16(ph_n), 15))), 0)
    linear_before_reset = 0:  (r * (h - zp) at the hidden scale, an int16, feeds the n matmul)
        rh = rdiv_pot(rg * (h - output_zp), 15)
        n = tanh16(sat16(sat16(px_n) + requant(bh_n + sum(rh * r_n), recurrent_mult_n, recurrent_shift_n)), 0)
    h = clamp(output_zp + requant((32768 - z) * n, output_multiplier, output_shift)
              + rdiv_pot(z * (h - output_zp), 15), -128, 127)

where ``output_multiplier``/``output_shift`` encode 2^-30 / s_h (Q0.30 to the hidden
scale) and the last term is z * h at the hidden scale. Every accumulator is an int32
(the simulator refuses one that leaves it).
"""
from __future__ import annotations

from qcc.ir.types import TensorType
from qcc.ir.registry import OpDef, OpError, attr, attrs, register_op


def _check_pairs(op, key: str, count: int):
    mult, shift = op.attrs[key + "_multiplier"], op.attrs[key + "_shift"]
    if len(mult) != count or len(shift) != count:
        raise OpError(f"'{key}_multiplier' and '{key}_shift' need {count} entries (one per gate), "
                      f"got {len(mult)} and {len(shift)}")
    _check_mults(op, key, mult, shift)


def _check_mults(op, key, mult, shift):
    mult = mult if isinstance(mult, list) else [mult]
    shift = shift if isinstance(shift, list) else [shift]
    if any(not 0 <= m < 2 ** 31 for m in mult):
        raise OpError(f"'{key}_multiplier' entries must lie in [0, 2^31)")
    if any(not -31 <= s <= 30 for s in shift):
        raise OpError(f"'{key}_shift' entries must lie in [-31, 30], got {shift}")


def _expect(v, what: str, dtype: str, shape):
    if v.type.dtype != dtype or tuple(v.type.shape) != tuple(shape):
        raise OpError(f"{what} must be {dtype} {list(shape)}, got {v.type.dtype} {list(v.type.shape)}")


def _dims(op, gates: int):
    x = op.operands[0].type
    if x.rank != 2:
        raise OpError(f"x must be [T, I], got {list(x.shape)}")
    h = op.attrs["hidden_size"]
    if h < 1:
        raise OpError(f"hidden_size must be >= 1, got {h}")
    return x.shape[0], x.shape[1], h


def _verify_common(op, gates: int, bias_len: int):
    t, i, h = _dims(op, gates)
    x, w, r, b, h0 = op.operands[:5]
    _expect(x, "x", "i8", (t, i))
    _expect(w, "w", "i8", (gates * h, i))
    _expect(r, "r", "i8", (gates * h, h))
    _expect(b, "b", "i32", (bias_len,))
    _expect(h0, "h0", "i8", (1, h))
    for key in ("input_zp", "output_zp"):
        if not -128 <= op.attrs[key] <= 127:
            raise OpError(f"'{key}' {op.attrs[key]} lies outside the i8 range")
    _check_pairs(op, "input", gates)
    _check_pairs(op, "recurrent", gates)
    _check_mults(op, "output", op.attrs["output_multiplier"], op.attrs["output_shift"])


def _lstm_rule(op):
    t, _, h = _dims(op, 4)
    return [TensorType((t, h), "i8"), TensorType((1, h), "i8"), TensorType((1, h), "i16")]


def _verify_lstm(op):
    _verify_common(op, 4, 4 * op.attrs["hidden_size"])
    _expect(op.operands[5], "c0", "i16", (1, op.attrs["hidden_size"]))
    if len(op.operands) > 6:
        _expect(op.operands[6], "p", "i16", (3 * op.attrs["hidden_size"],))
        _check_pairs(op, "peephole", 3)
    elif op.attrs["peephole_multiplier"] or op.attrs["peephole_shift"]:
        raise OpError("'peephole_multiplier' / 'peephole_shift' are for an LSTM with peepholes (operand p)")
    for key in ("forget", "input_to_cell"):
        _check_mults(op, key, op.attrs[key + "_multiplier"], op.attrs[key + "_shift"])
    if not 1 <= op.attrs["cell_clip"] <= 32767:
        raise OpError(f"'cell_clip' must lie in [1, 32767], got {op.attrs['cell_clip']}")
    # tanh16's input rescale: 3 * 2^left_shift must keep an int16 times it inside int32
    if not -31 <= op.attrs["cell_scale_power"] + 12 <= 14:
        raise OpError(f"'cell_scale_power' {op.attrs['cell_scale_power']} must lie in [-43, 2]")


_COMMON = (attr("hidden_size", "int"), attr("input_zp", "int", 0), attr("output_zp", "int", 0),
           attr("input_multiplier", "ints"), attr("input_shift", "ints"),
           attr("recurrent_multiplier", "ints"), attr("recurrent_shift", "ints"),
           attr("output_multiplier", "int"), attr("output_shift", "int"))

register_op(OpDef(
    "s8.lstm", operands=["x", "w", "r", "b", "h0", "c0", "p?"],
    attrs=attrs(*_COMMON, attr("cell_scale_power", "int"), attr("cell_clip", "int", 32767),
                attr("forget_multiplier", "int"), attr("forget_shift", "int"),
                attr("input_to_cell_multiplier", "int"), attr("input_to_cell_shift", "int"),
                attr("peephole_multiplier", "ints", []), attr("peephole_shift", "ints", [])),
    infer=_lstm_rule, verify_fn=_verify_lstm, num_results=3,
    summary="Int8 LSTM (TFLite integer LSTM / CMSIS-NN arm_lstm_unidirectional_s8): int16 gates and cell."))


def _gru_rule(op):
    t, _, h = _dims(op, 3)
    return [TensorType((t, h), "i8"), TensorType((1, h), "i8")]


def _verify_gru(op):
    _verify_common(op, 3, 6 * op.attrs["hidden_size"])
    if op.attrs["linear_before_reset"] not in (0, 1):
        raise OpError(f"'linear_before_reset' must be 0 or 1, got {op.attrs['linear_before_reset']}")


register_op(OpDef(
    "s8.gru", operands=["x", "w", "r", "b", "h0"],
    attrs=attrs(*_COMMON, attr("linear_before_reset", "int", 0)),
    infer=_gru_rule, verify_fn=_verify_gru, num_results=2,
    summary="Int8 GRU from the integer LSTM's pieces (int16 Q3.12 gate inputs, Q0.15 gates)."))
