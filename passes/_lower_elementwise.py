"""Handlers of lower-quantized for per-channel affine, elementwise and piecewise ops (a mixin).

    scale_shift  y = x * s[c] + t[c] as a depthwise 1x1 qnn.conv2d (group = C, weights [C, 1, 1, 1],
                 bias t): out_shift[c] = n_x + n_s[c] - n_y, bias_shift[c] = n_x + n_s[c] - n_t[c].
                 Channels on axis 3 of a 4-D tensor go straight in, axis 1 through NHWC transposes,
                 the last axis of any other rank through a reshape to [1, M, 1, C].
    mul          qnn.mul, out_shift = n_a + n_b - n_y (tensor * tensor, equal shapes)
    sub          qnn.sub, aligned like qnn.add: n_c = max(n_a, n_b), out_shift = n_c - n_y
    hard_swish   i16: t = clamp(x/6 + 1/2, 0, 1) in Q1.14 (depthwise 1x1 conv), y = qnn.mul(x, t)
    leaky_relu, hard_sigmoid, hard_swish (i8)
                 qnn.lut (i8) / qnn.lut_interp (i16) from the input format n_x to the output
                 format n_y of the fake-quant pair after the op: table[q] = round(f(q * 2^-n_x) * 2^n_y)

Arithmetic with constants reaches here as scale_shift (``legalize-qmn``, part of the ``qmn`` pipeline).
"""
from __future__ import annotations

import numpy as np

from qcc.errors import UnsupportedModelError
from qcc.ir.graph import Op, Value
from qcc.ir.ops.qnn_softmax import lut_interp_table, lut_table

from qcc.ir.types import storage_range

from ._qmn_util import fixed_type, frac_bits, per_channel_type


def leaky_relu(alpha: float):
    return lambda x: np.where(x >= 0, x, alpha * x)


def hard_sigmoid(alpha: float, beta: float):
    return lambda x: np.clip(alpha * x + beta, 0.0, 1.0)


def hard_swish(x):
    return x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)


class ElementwiseLowerings:
    """Mixed into LowerQuantized; uses its helpers (_x, _out_type, _create, _weighted, _to_nhwc, ...)."""

    def _nn_scale_shift(self, op: Op) -> Value:
        out_t = self._out_type(op)
        x = self._x(op)
        rank = x.type.rank
        axis = op.attrs["axis"] % rank
        c = x.shape[axis]
        if rank == 4 and axis == 3:
            xin = x
        elif rank == 4 and axis == 1:
            xin = self._to_nhwc(x, op)
        elif axis == rank - 1:
            m = int(np.prod(x.shape[:-1], dtype=np.int64))
            xin = self._create("nn.reshape", [x], {"shape": [1, m, 1, c]}, x.type.with_shape((1, m, 1, c)), op)
        else:
            raise UnsupportedModelError(f"lower-quantized: {op.describe()} scales axis {axis} of a rank-{rank} "
                                        f"tensor; only the channel axis (1 or 3 of NCHW/NHWC, or the last) lowers")
        operands, attrs = self._weighted(op, xin, out_t)
        s = operands[1]
        operands[1] = self.rw.create_const(np.asarray(s.constant()).reshape(c, 1, 1, 1), s.producer.name,
                                           like=s, before=op)
        attrs.update(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=c)
        y = self._create("qnn.conv2d", operands, attrs, out_t.with_shape(xin.shape), op)
        if xin is x:
            return y
        if rank == 4 and axis == 1:
            return self._from_nhwc(y, op)
        return self._create("nn.reshape", [y], {"shape": list(op.result.shape)}, out_t.with_shape(op.result.shape),
                            op)

    def _tensor_pair(self, op: Op):
        for i, v in enumerate(op.operands):
            if v.is_constant() or id(v) not in self.twin:
                raise UnsupportedModelError(
                    f"lower-quantized: operand {i} of {op.describe()} is a constant or not quantized; only a "
                    f"scalar or per-channel constant lowers (legalize-qmn turns it into nn.scale_shift)")
        a, b = self._x(op, 0), self._x(op, 1)
        if a.shape != b.shape:
            raise UnsupportedModelError(f"lower-quantized: {op.describe()} broadcasts {list(a.shape)} with "
                                        f"{list(b.shape)}; integer elementwise ops need equal shapes")
        return a, b

    def _nn_mul(self, op: Op) -> Value:
        a, b = self._tensor_pair(op)
        out_t = self._out_type(op)
        lo, hi = self._clamp(op, out_t)
        shift = frac_bits(a.type) + frac_bits(b.type) - frac_bits(out_t)
        return self._create("qnn.mul", [a, b], {"out_shift": [shift], "act_min": lo, "act_max": hi},
                            out_t.with_shape(op.result.shape), op)

    def _nn_sub(self, op: Op) -> Value:
        a, b = self._tensor_pair(op)
        return self._aligned_pair("qnn.sub", a, b, op)

    def _aligned_pair(self, opname: str, a: Value, b: Value, op: Op) -> Value:
        """qnn.add / qnn.sub: both inputs left-aligned to the finer format n_c, then requantized."""
        out_t = self._out_type(op)
        n_a, n_b, n_y = frac_bits(a.type), frac_bits(b.type), frac_bits(out_t)
        n_c = max(n_a, n_b)
        lo, hi = self._clamp(op, out_t)
        return self._create(opname, [a, b], {"a_shift": n_c - n_a, "b_shift": n_c - n_b,
                                              "out_shift": [n_c - n_y], "act_min": lo, "act_max": hi},
                            out_t.with_shape(op.result.shape), op)

    def _nn_div(self, op: Op) -> Value:
        raise UnsupportedModelError(f"lower-quantized: {op.describe()} divides by a tensor; only division by a "
                                    f"scalar or per-channel constant lowers (legalize-qmn makes it a scale_shift)")

    def _table_op(self, op: Op, fn) -> Value:
        """A pointwise function as a table from the input format to the op's own output format."""
        x = self._x(op)
        out_t = self._out_type(op).with_shape(op.result.shape)
        if out_t.dtype != x.type.dtype:
            raise UnsupportedModelError(f"lower-quantized: {op.describe()} changes the storage type "
                                        f"({x.type.dtype} -> {out_t.dtype}); tables keep it")
        n_x, n_y = frac_bits(x.type), frac_bits(out_t)
        if x.type.dtype == "i8":
            return self._create("qnn.lut", [x], {"table": lut_table(fn, n_x, n_y)}, out_t, op)
        return self._create("qnn.lut_interp", [x], {"table": lut_interp_table(fn, n_x, n_y)}, out_t, op)

    def _nn_leaky_relu(self, op: Op) -> Value:
        return self._table_op(op, leaky_relu(op.attrs["alpha"]))

    def _nn_hard_sigmoid(self, op: Op) -> Value:
        return self._table_op(op, hard_sigmoid(op.attrs["alpha"], op.attrs["beta"]))

    def _nn_hard_swish(self, op: Op) -> Value:
        x = self._x(op)
        if x.type.dtype == "i8" or x.type.rank != 4:
            return self._table_op(op, hard_swish)
        # i16: a 257-entry interpolated table misses the parabola by (256 * 2^-n_x)^2 / 24, several
        # LSBs for wide inputs. Exactly: t = clamp(x/6 + 1/2, 0, 1) in Q1.14 by a depthwise 1x1 conv
        # (weight 1/6 in, bias 1/2), then y = qnn.mul(x, t), out_shift = n_x + 14 - n_y.
        out_t = self._out_type(op).with_shape(op.result.shape)
        xin = self._to_nhwc(x, op) if op.attrs.get("layout", "NHWC") == "NCHW" else x
        n_x, n_w, n_t, c = frac_bits(x.type), 17, 14, xin.shape[3]
        w = self.rw.create_const(np.full((c, 1, 1, 1), round(2.0 ** n_w / 6.0), np.int16), f"{op.name}.sixth",
                                 before=op)
        b = self.rw.create_const(np.full((c,), 1 << (n_x + n_w - 1), np.int32), f"{op.name}.half", before=op)
        w.type = per_channel_type(w.shape, "i16", [n_w] * c)
        b.type = per_channel_type(b.shape, "i32", [n_x + n_w] * c)
        t_t = fixed_type(xin.shape, "i16", n_t)
        t = self.rw.create_op("qnn.conv2d", [xin, w, b], {
            "strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": c, "bias_shift": [0],
            "out_shift": [n_x + n_w - n_t], "act_min": 0, "act_max": 1 << n_t}, [t_t],
            name=f"{op.name}.gate" if op.name else "", before=op).result
        lo, hi = storage_range(out_t.dtype)
        return self._create("qnn.mul", [x, t if xin is x else self._from_nhwc(t, op)], {
            "out_shift": [n_x + n_t - frac_bits(out_t)], "act_min": lo, "act_max": hi}, out_t, op)
