"""The elementwise half of lower-qdq: mul, add/sub, concat, requantize, global max pool, pointwise tables.

``ElementwiseLowerings`` is mixed into lower-qdq's ``LowerQuantizedIsland``: each
``_nn_<op>`` lowers one island Q(act(op(DQ ...))) to an ``s8`` op with TFLite's
parameters (``qcc/ir/ops/qnn_s8.py`` states the arithmetic). From the float32
scales, in float64, then ``QuantizeMultiplier``:

    add, sub:   t = 2 max(s_a, s_b); m_a = s_a / t; m_b = s_b / t; m = t / (2^20 s_out)   (left shift 20)
    mul:        m = s_a * s_b / s_out
    concat:     each input with other parameters -> s8.requantize, m = s_in / s_out; then nn.concat
    Q(act(DQ)): s8.requantize, m = s_in / s_out, the relu / clip as its clamp (TFLite RELU, RELU6,
                RELU_N1_TO_1, QUANTIZE)
    global max: s8.maxpool over the whole H x W window
    pad:        nn.pad on the int8 tensor, value -> zp + round_half_away(value / s) (TFLite PAD)
    leaky_relu, sigmoid, tanh, hard_swish: s8.lut, TFLite Micro's kernel on all 256 codes
                (qcc/sim/s8_lut.py); TFLite fixes the sigmoid output at (1/256, -128) and tanh at
                (1/128, 0): other output parameters (a QDQ model's) add TFLite's QUANTIZE, folded
                into the same table. hard_sigmoid (no TFLite kernel): the real function per code.
                On int16 (16x8): sigmoid, tanh, leaky_relu -> s8.activation16 (passes/_lower_activation16.py).

add, sub and mul broadcast (TFLite's 4-D slow paths). The two patterns here move
the transposes an NCHW model's lowering leaves through concat and per-element
ops so that ``canonicalize`` cancels them.
"""
from __future__ import annotations

import numpy as np

from qcc.ir.graph import Value
from qcc.ir.types import TensorType, UniformQuant
from qcc.sim import s8_lut
from qcc.passes._lower_activation16 import lower_activation16
from qcc.sim.s8 import quantize_multiplier
from qcc.transforms.rewriter import RewritePattern


def broadcast_shape(a: Value, b: Value):
    """numpy's broadcast of the two operand shapes (TFLite's 4-D broadcast), or None."""
    try:
        return tuple(np.broadcast_shapes(a.shape, b.shape))
    except ValueError:
        return None


def multipliers(reals, rounding: str):
    """TFLite QuantizeMultiplier of each real multiplier: ([mult], [shift])."""
    pairs = [quantize_multiplier(float(m), rounding) for m in reals]
    return [p[0] for p in pairs], [p[1] for p in pairs]


class ElementwiseLowerings:
    """Lowerings of the elementwise islands; the host class provides ``_input`` and ``_pool``."""

    def _binary_inputs(self, op):
        """((a, s_a), (b, s_b), broadcast shape) of an elementwise island, or the reason it does not lower."""
        (a, qa), (b, qb) = self._input(op.operands[0]), self._input(op.operands[1])
        if a is None or b is None:
            return "the operands are not dequantized per-tensor i8 tensors"
        shape = broadcast_shape(a, b)
        if shape is None:
            return f"the operand shapes {list(a.shape)} and {list(b.shape)} do not broadcast"
        return (a, qa), (b, qb), shape

    def _add_sub(self, kind, add, out_q, clamp, rewriter):
        inputs = self._binary_inputs(add)
        if isinstance(inputs, str):
            return inputs
        (a, qa), (b, qb), shape = inputs
        left_shift = 15 if self.act_dtype == "i16" else 20  # TFLite's add/sub: 20 for int8, 15 for int16
        twice_max = 2 * max(qa.scale, qb.scale)
        in_mult, in_shift = multipliers([qa.scale / twice_max, qb.scale / twice_max], "double")
        mult, shift = multipliers([twice_max / ((1 << left_shift) * out_q.scale)], "double")
        attrs = dict(input_zp=[qa.zero_point, qb.zero_point], output_zp=out_q.zero_point, left_shift=left_shift,
                     input_multiplier=in_mult, input_shift=in_shift, multiplier=mult, shift=shift,
                     act_min=clamp[0], act_max=clamp[1])
        return rewriter.create_op(kind, [a, b], attrs, [TensorType(shape, self.act_dtype, out_q)], name=add.name).result

    def _nn_sub(self, sub, q, out_q, clamp, rewriter):
        return self._add_sub("s8.sub", sub, out_q, clamp, rewriter)

    def _nn_mul(self, mul, q, out_q, clamp, rewriter):
        inputs = self._binary_inputs(mul)
        if isinstance(inputs, str):
            return inputs
        (a, qa), (b, qb), shape = inputs
        # TFLite MUL's prepare: m = (double)s_a * (double)s_b / (double)s_out.
        mult, shift = multipliers([qa.scale * qb.scale / out_q.scale], "double")
        attrs = dict(input_zp=[qa.zero_point, qb.zero_point], output_zp=out_q.zero_point, multiplier=mult,
                     shift=shift, act_min=clamp[0], act_max=clamp[1])
        return rewriter.create_op("s8.mul", [a, b], attrs, [TensorType(shape, self.act_dtype, out_q)], name=mul.name).result

    def _nn_concat(self, cat, q, out_q, clamp, rewriter):
        """TFLite gives a concat's inputs the output's parameters: inputs that differ are rescaled
        (s8.requantize, m = s_in / s_out), then the int8 tensors are concatenated."""
        if clamp != ((-128, 127) if self.act_dtype == "i8" else (-32768, 32767)):
            return "a clamp after a concat has no int8 lowering"
        stored = []
        for v in cat.operands:
            x, in_q = self._input(v)
            if x is None:
                return "the inputs are not dequantized per-tensor i8 tensors"
            if in_q != out_q:
                mult, shift = multipliers([in_q.scale / out_q.scale], "double")
                x = rewriter.create_op("s8.requantize", [x], dict(
                    input_zp=in_q.zero_point, output_zp=out_q.zero_point, multiplier=mult, shift=shift),
                    [TensorType(x.shape, self.act_dtype, out_q)], name=cat.name).result
            stored.append(x)
        return rewriter.create_op("nn.concat", stored, dict(cat.attrs), [TensorType(q.result.shape, self.act_dtype, out_q)],
                                  name=cat.name).result

    def _q_dequantize(self, dq, q, out_q, clamp, rewriter):
        """Q(act(DQ x)) with no layer between: TFLite's int8 RELU / RELU6 / RELU_N1_TO_1 (a clip) or QUANTIZE
        (no activation): y = clamp(requant(x - zp_in, s_in / s_out) + zp_out), i.e. s8.requantize."""
        x = dq.operands[0]
        # i8, or i16 with zero point 0, of either width (TFLite's QUANTIZE int8 <-> int16)
        in_q = x.type.quant if x.type.dtype in ("i8", "i16") and isinstance(x.type.quant, UniformQuant) \
            and (x.type.dtype == "i8" or x.type.quant.zero_point == 0) else None
        if in_q is None:
            return "quantizes a dequantized tensor that is not per-tensor i8"
        if in_q == out_q and x.type.dtype == self.act_dtype and clamp == ((-128, 127) if self.act_dtype == "i8" else (-32768, 32767)):
            return x
        mult, shift = multipliers([in_q.scale / out_q.scale], "double")
        return rewriter.create_op("s8.requantize", [x], dict(
            input_zp=in_q.zero_point, output_zp=out_q.zero_point, multiplier=mult, shift=shift, act_min=clamp[0],
            act_max=clamp[1]), [TensorType(x.shape, self.act_dtype, out_q)], name=q.name).result

    def _nn_global_maxpool(self, pool, q, out_q, clamp, rewriter):
        x = pool.operands[0]
        hw = list(x.shape[1:3]) if pool.attrs["layout"] == "NHWC" else list(x.shape[2:4])
        return self._pool("s8.maxpool", pool, q, out_q, clamp, rewriter, hw, hw, [0, 0, 0, 0])

    def _nn_pad(self, pad, q, out_q, clamp, rewriter):
        """TFLite PAD / PADV2: the int8 tensor padded with the pad value quantized (zp for 0.0); the
        parameters stay, so the island must keep them."""
        x, in_q = self._input(pad.operands[0])
        if x is None:
            return "the input is not a dequantized per-tensor i8 tensor"
        if in_q != out_q or clamp != (-128, 127):
            return "an int8 pad keeps its input's parameters and has no clamp"
        value = in_q.zero_point + int(np.sign(pad.attrs["value"] / in_q.scale)
                                      * np.floor(abs(pad.attrs["value"] / in_q.scale) + 0.5))
        if not -128 <= value <= 127:
            return f"the pad value {pad.attrs['value']} is outside the int8 range of the tensor"
        return rewriter.create_op("nn.pad", [x], dict(pad.attrs, value=float(value)),
                                  [TensorType(q.result.shape, self.act_dtype, out_q)], name=pad.name).result

    def _lut(self, op, out_q, clamp, rewriter, function, make_table):
        """A pointwise TFLite kernel as its 256-entry table (qcc.sim.s8_lut), the clamp folded into it."""
        x, in_q = self._input(op.operands[0])
        if x is None:
            return "the input is not a dequantized per-tensor i8 tensor"
        if self.act_dtype == "i16":   # TFLite Micro's int16 kernels, not tables (passes/_lower_activation16.py)
            return lower_activation16(op, x, in_q, out_q, clamp, rewriter, function)
        try:
            table = make_table(in_q)
        except ValueError as e:
            return str(e)
        table = np.clip(table.astype(np.int64), clamp[0], clamp[1])
        return rewriter.create_op("s8.lut", [x], dict(table=[int(t) for t in table], function=function),
                                  [TensorType(x.shape, self.act_dtype, out_q)], name=op.name).result

    def _nn_leaky_relu(self, op, q, out_q, clamp, rewriter):
        alpha = op.attrs["alpha"]
        return self._lut(op, out_q, clamp, rewriter, "leaky_relu", lambda i: s8_lut.leaky_relu_table(
            i.scale, i.zero_point, out_q.scale, out_q.zero_point, alpha))

    def _nn_sigmoid(self, op, q, out_q, clamp, rewriter):
        return self._lut(op, out_q, clamp, rewriter, "logistic", lambda i: s8_lut.requantized(
            s8_lut.logistic_table(i.scale, i.zero_point), s8_lut.LOGISTIC_OUT, out_q))

    def _nn_tanh(self, op, q, out_q, clamp, rewriter):
        return self._lut(op, out_q, clamp, rewriter, "tanh", lambda i: s8_lut.requantized(
            s8_lut.tanh_table(i.scale, i.zero_point), s8_lut.TANH_OUT, out_q))

    def _nn_hard_swish(self, op, q, out_q, clamp, rewriter):
        return self._lut(op, out_q, clamp, rewriter, "hard_swish", lambda i: s8_lut.hard_swish_table(
            i.scale, i.zero_point, out_q.scale, out_q.zero_point))

    def _nn_hard_sigmoid(self, op, q, out_q, clamp, rewriter):
        a = op.attrs
        return self._lut(op, out_q, clamp, rewriter, "hard_sigmoid", lambda i: s8_lut.hard_sigmoid_table(
            i.scale, i.zero_point, out_q.scale, out_q.zero_point, a["alpha"], a["beta"]))


class SinkTransposeThroughPointwise(RewritePattern):
    """s8.lut / s8.requantize (transpose(x, p)) -> transpose(op(x), p): a per-element map commutes with any
    layout, so the transposes a lowered NCHW model leaves meet and cancel (canonicalize)."""

    op_names = ("s8.lut", "s8.requantize", "s8.activation16")

    def match_and_rewrite(self, op, rewriter):
        t = op.operands[0].producer
        if t is None or t.opname != "nn.transpose":
            return rewriter.notify_match_failure(op, "the operand is not a transpose")
        if rewriter.graph.users(t.result) != [op] or rewriter.graph.is_output(t.result):
            return rewriter.notify_match_failure(op, "the transpose has other users")
        x = t.operands[0]
        rewriter.anchor = op
        moved = rewriter.create_op(op.opname, [x], dict(op.attrs), [op.result.type.with_shape(x.shape)],
                                   name=op.name)
        y = rewriter.create_op("nn.transpose", [moved.result], {"perm": t.attrs["perm"]}, [op.result.type])
        rewriter.replace_op(op, y)
        return True


class SinkTransposeThroughConcat(RewritePattern):
    """concat(transpose(x_i, p), axis) of int8 tensors -> transpose(concat(x_i, p[axis]), p)."""

    op_names = ("nn.concat",)

    def match_and_rewrite(self, op, rewriter):
        ts = [v.producer for v in op.operands]
        if op.result.type.is_float:
            return rewriter.notify_match_failure(op, "float concats are left to to-nhwc")
        if not all(t is not None and t.opname == "nn.transpose" for t in ts):
            return rewriter.notify_match_failure(op, "the operands are not all transposes")
        perm = ts[0].attrs["perm"]
        if any(t.attrs["perm"] != perm for t in ts):
            return rewriter.notify_match_failure(op, "the operands are transposed differently")
        axis = perm[op.attrs["axis"] % len(perm)]
        xs = [t.operands[0] for t in ts]
        shape = list(xs[0].shape)
        shape[axis] = sum(x.shape[axis] for x in xs)
        rewriter.anchor = op
        cat = rewriter.create_op("nn.concat", xs, {"axis": axis}, [op.result.type.with_shape(tuple(shape))],
                                 name=op.name)
        t = rewriter.create_op("nn.transpose", [cat.result], {"perm": perm}, [op.result.type])
        rewriter.replace_op(op, t)
        return True
