"""lower-qdq: QDQ islands -> affine int8 ``s8.*`` ops (TFLite Micro / CMSIS-NN numerics).

A QDQ model computes each layer in float between dequantize and quantize:

    y_q = Q(act(op(DQ(x_q), DQ(w_q), DQ(b_q))), s_out, zp_out)

This pass replaces every such island by one ``s8`` op whose integer
arithmetic is TFLite's (``qcc/ir/ops/qnn_s8.py`` states it). The parameters come
from the scales exactly as TFLite Micro derives them (float64 arithmetic on the
float32 scales, then ``QuantizeMultiplier``):

    conv, per-channel dense:  m[c] = s_in * s_w[c] / s_out
    per-tensor dense:         m    = f64(f32(s_in * s_w)) / s_out      (GetQuantizedConvolutionMultipler)
    add, sub:                 t = 2 max(s_a, s_b); m_a = s_a / t; m_b = s_b / t; m = t / (2^20 s_out)
    softmax:                  PreprocessSoftmaxScaling(1, s_in, 5), diff_min = -CalculateInputRadius(5, shift);
                              an output other than (1/256, -128) (onnxruntime: 1/255) is an s8.requantize
                              after it with m = (1/256) / s_out
    mul, broadcasting add/sub, concat, LeakyReLU / sigmoid / tanh / hard swish tables, global max
    pool, Q(relu(DQ x)):      passes/_lower_qdq_elementwise.py states their parameters
    dense, asymmetric weights: weight_zp = z_w, acc = b + sum((x - zp_in) * (w - z_w)) (uint8 weights)
    pools whose output parameters differ from the input's (a QDQ model's choice, e.g. onnxruntime's
                              GlobalAveragePool; TFLite's pools keep them): the pool on the input's
                              parameters, then s8.requantize (TFLite QUANTIZE) with m = s_in / s_out
    scale_shift (a batchnorm onnxruntime left between DQ and Q): a depthwise 1x1 conv with
                              w[c] = 127 sign(s[c]) at s_w[c] = |s[c]| / 127 (exact), bias t[c] as int32

Biases stay the given int32 values; a float constant bias (NNCF) becomes
int32 at s_in * s_w[c], rounded half away from zero. A ReLU / ReLU6 / Clip (separate op or fused
``act``) becomes the clamp: [max(-128, zp + round(lo / s)), min(127, zp + round(hi / s))].
NCHW float ops are lowered to NHWC ``s8`` ops between ``nn.transpose`` ops; transposes
sink through ``s8.add`` and a transpose that only moves unit dimensions becomes a
reshape, so ``canonicalize`` afterwards removes the layout round trips.

Before::

    %1 = q.dequantize %x : tensor<1x8x8x4xf32>
    %2 = q.dequantize %w : tensor<8x1x1x4xf32>
    %3 = nn.conv2d %1, %2 {layout = "NHWC", act = "relu"} : tensor<1x8x8x8xf32>
    %4 = q.quantize %3 : tensor<1x8x8x8x!q.uniform<i8:f32, 0.05:-128>>

After ``-p lower-qdq``::

    %1 = s8.conv2d %x, %w {act_max = 127, act_min = -128, input_zp = 3, multiplier = [...],
                           output_zp = -128, shift = [...], ...} : tensor<1x8x8x8x!q.uniform<i8:f32, 0.05:-128>>
"""
from __future__ import annotations

from typing import List, Literal, Optional

import numpy as np

from qcc.ir.graph import Op, Value
from qcc.transforms.passmanager import register_pass, register_pipeline
from qcc.transforms.rewriter import PatternPass, RewritePattern, Rewriter
from qcc.sim.s8 import quantize_multiplier, softmax16_params, softmax_params
from qcc.ir.types import PerAxisQuant, TensorType, UniformQuant

from ._lower_qdq_elementwise import (ElementwiseLowerings, SinkTransposeThroughConcat, SinkTransposeThroughPointwise,
                                     broadcast_shape as _broadcast_shape, multipliers as _multipliers)

NCHW_TO_NHWC, NHWC_TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
SOFTMAX_QUANT = UniformQuant(1.0 / 256, -128)  # TFLite's int8 softmax output
SOFTMAX16_QUANT = UniformQuant(1.0 / 32768, 0)  # TFLite's int16 softmax output


def _round_away(x: float) -> int:
    return int(np.sign(x) * np.floor(abs(x) + 0.5))


ACT_RANGES = {"i8": (-128, 127), "i16": (-32768, 32767)}


def _quant_i8(v: Value) -> Optional[UniformQuant]:
    """The per-tensor quantization of an i8 activation, or of an i16 one with zero point 0 (16x8 mode)."""
    t = v.type
    if not isinstance(t.quant, UniformQuant):
        return None
    return t.quant if t.dtype == "i8" or (t.dtype == "i16" and t.quant.zero_point == 0) else None


def _dequantized(v: Value) -> Optional[Value]:
    """The stored tensor behind ``q.dequantize``, or None."""
    return v.producer.operands[0] if v.producer is not None and v.producer.opname == "q.dequantize" else None


def _scales(q) -> np.ndarray:
    return np.asarray(q.scales if isinstance(q, PerAxisQuant) else [q.scale], np.float64)


def _zero_points(q) -> np.ndarray:
    return np.asarray(q.zero_points if isinstance(q, PerAxisQuant) else [q.zero_point], np.int64)


def _sole_user(v: Value, graph) -> Optional[Op]:
    users = graph.users(v)
    return users[0] if len(users) == 1 and not graph.is_output(v) else None


def _clamp(act: str, lo: float, hi: float, out: UniformQuant, dtype: str = "i8"):
    """TFLite CalculateActivationRangeQuantized: bounds quantized with f32 division, rounded away."""
    if act == "relu":
        lo, hi = max(lo, 0.0), hi
    elif act == "relu6":
        lo, hi = max(lo, 0.0), min(hi, 6.0)
    amin, amax = ACT_RANGES[dtype]
    if np.isfinite(lo):
        amin = max(amin, out.zero_point + _round_away(float(np.float32(lo) / np.float32(out.scale))))
    if np.isfinite(hi):
        amax = min(amax, out.zero_point + _round_away(float(np.float32(hi) / np.float32(out.scale))))
    return amin, amax


def _const(rewriter: Rewriter, w: np.ndarray, scales, zero_point: int = 0) -> Value:
    """An i8 weight constant typed with its per-output-channel (axis 0) scales."""
    quant = PerAxisQuant(0, tuple(float(s) for s in scales), (zero_point,) * len(scales))
    return rewriter.create_op("qcc.const", [], {"value": w}, [TensorType(w.shape, "i8", quant)]).result


def _float_bias(b: np.ndarray, product_scales: np.ndarray, rewriter: Rewriter, wide: bool = False) -> Value:
    """A float bias (NNCF leaves biases unquantized) as int32 (int64 in the 16x8 mode) at s_in * s_w[c],
    rounded half away from zero as TFLite's converter does: at most half an accumulator step from the float one."""
    bits = 47 if wide else 31
    q = np.clip(np.sign(b) * np.floor(np.abs(b) / product_scales + 0.5), -(1 << bits), (1 << bits) - 1)
    quant = PerAxisQuant(0, tuple(float(s) for s in product_scales), (0,) * len(b))
    dtype = "i64" if wide else "i32"
    return rewriter.create_op("qcc.const", [], {"value": q.astype(np.int64 if wide else np.int32)},
                              [TensorType((len(b),), dtype, quant)]).result


class LowerQuantizedIsland(ElementwiseLowerings, RewritePattern):
    """Q(act(op(DQ ...))) -> one s8 op; anchored on the closing q.quantize."""

    op_names = ("q.quantize",)

    def __init__(self, fc_rounding: str = "double"):
        self.fc_rounding = fc_rounding

    def match_and_rewrite(self, op, rewriter):
        out_q = _quant_i8(op.result)
        t = op.result.type
        if t.dtype == "i16" and isinstance(t.quant, UniformQuant) and t.quant.zero_point != 0:
            return rewriter.notify_match_failure(op, (
                f"int16 zero point {t.quant.zero_point}: int16 activations need zero point 0 (TFLite's 16x8 mode); "
                "quantize them symmetrically (onnxruntime: extra_options={'ActivationSymmetric': True})"))
        if out_q is None:
            return rewriter.notify_match_failure(op, "the result is not a per-tensor i8 (or i16, zero point 0) type")
        # i8, or i16 (TFLite's 16x8 mode: the same s8 ops on int16, int64 biases); one type per island.
        self.act_dtype = op.result.type.dtype
        g = rewriter.graph
        lo, hi = -np.inf, np.inf
        core = op.operands[0].producer
        chain = [op]
        # A separate ReLU / Clip between the layer and the quantize becomes the clamp.
        while core is not None and core.opname in ("nn.relu", "nn.clip"):
            if _sole_user(core.result, g) is not chain[-1]:
                return rewriter.notify_match_failure(op, "the activation has other users")
            if core.opname == "nn.relu":
                lo = max(lo, 0.0)
            else:
                lo, hi = max(lo, core.attrs["min"]), min(hi, core.attrs["max"])
            chain.append(core)
            core = core.operands[0].producer
        if core is None:
            return rewriter.notify_match_failure(op, "quantizes a graph input (no layer to lower)")
        if _sole_user(core.result, g) is not chain[-1]:
            return rewriter.notify_match_failure(op, f"the float result of {core.describe()} has other users")
        stored = core.operands[:1] if core.opname == "q.dequantize" else list(map(_dequantized, core.operands))
        mixed = {x.type.dtype for x in stored
                 if x is not None and not x.is_constant() and x.type.dtype in ACT_RANGES} - {self.act_dtype}
        if mixed and core.opname != "q.dequantize":  # Q_i16(DQ x_i8) is the width change itself
            return rewriter.notify_match_failure(op, (
                f"reads {'/'.join(sorted(mixed))} activations but writes {self.act_dtype}: a layer computes at one "
                "width; convert its inputs first (a DequantizeLinear -> QuantizeLinear pair to its width, which "
                "qcc lowers to an int8 <-> int16 requantization)"))
        lower = getattr(self, "_" + core.opname.replace(".", "_"), None)
        if lower is None:
            return rewriter.notify_match_failure(op, f"no int8 lowering for {core.describe()}")
        act = core.attrs.get("act", "none")
        if act not in ("none", "relu", "relu6"):
            return rewriter.notify_match_failure(op, f"fused activation '{act}' has no int8 clamp")
        rewriter.anchor = op
        new = lower(core, op, out_q, _clamp(act, lo, hi, out_q, self.act_dtype), rewriter)
        if isinstance(new, str):
            return rewriter.notify_match_failure(op, new)
        rewriter.replace_op(op, new)
        return True

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _relayout(x: Value, layout: str, perm, rewriter: Rewriter) -> Value:
        """``x`` transposed by ``perm`` when the float op was NCHW; unchanged when it was NHWC."""
        if layout == "NHWC":
            return x
        shape = tuple(x.shape[i] for i in perm)
        return rewriter.create_op("nn.transpose", [x], {"perm": list(perm)},
                                  [TensorType(shape, x.type.dtype, x.type.quant)]).result

    def _to_nhwc(self, x: Value, layout: str, rewriter: Rewriter) -> Value:
        return self._relayout(x, layout, NCHW_TO_NHWC, rewriter)

    def _from_nhwc(self, y: Value, layout: str, rewriter: Rewriter) -> Value:
        return self._relayout(y, layout, NHWC_TO_NCHW, rewriter)

    @staticmethod
    def _weights(v: Value, axis_of_channels: int, weight_zp: Optional[list] = None):
        """(int8 array, per-channel scales) of a dequantized constant with symmetric quantization.

        A dense layer passes ``weight_zp`` (a list) to accept one zero point for the whole
        tensor (asymmetric weights, e.g. uint8 re-centred to int8); it receives that value.
        """
        w = _dequantized(v)
        if w is None or w.constant() is None or w.type.dtype != "i8":
            return None, "the weights are not a dequantized i8 constant"
        q = w.type.quant
        if isinstance(q, PerAxisQuant) and q.axis != axis_of_channels:
            return None, f"the weights are quantized along axis {q.axis}, not the output channels"
        zps = _zero_points(q)
        array = np.asarray(w.constant(), np.int64)
        if np.any(zps != 0):
            shape = [1] * array.ndim
            if isinstance(q, PerAxisQuant):
                shape[q.axis] = -1
            centred = array - zps.reshape(shape)
            if centred.min() >= -128 and centred.max() <= 127:
                # (w - z) fits int8: the same reals as symmetric weights, exactly.
                array, zps = centred, np.zeros_like(zps)
        if weight_zp is not None:
            if np.any(zps != zps[0]):
                return None, "the weights have a zero point per channel; the int8 dense kernel takes one"
            weight_zp.append(int(zps[0]))
        elif np.any(zps != 0):
            return None, ("the weights are asymmetric (zero point != 0), which int8 convolutions do not take "
                          "(the dense kernel does); quantize the weights symmetrically "
                          "(onnxruntime: weight_type=QInt8)")
        return (array.astype(np.int8), _scales(q)), None

    @staticmethod
    def _bias(v: Optional[Value], product_scales: np.ndarray, out_q: UniformQuant, rewriter, n: int,
              wide: bool = False):
        if v is None:
            return None, None
        if v.constant() is not None and v.type.is_float:
            b = np.asarray(v.constant(), np.float64).reshape(-1)
            if b.size != n:
                return None, f"the bias has {b.size} values, not one per output channel ({n})"
            return _float_bias(b, product_scales, rewriter, wide), None
        b = _dequantized(v)
        if b is not None and b.constant() is not None and b.type.dtype in ("i8", "i16") and b.type.size == n:
            # An int8 bias with its own scale: its reals (the QDQ model's float32 dequantize), then as a float bias.
            real = (np.float32(b.constant().reshape(-1)) - np.float32(_zero_points(b.type.quant))) * \
                np.float32(_scales(b.type.quant))
            return _float_bias(real.astype(np.float64), product_scales, rewriter, wide), None
        if b is None or b.constant() is None or b.type.dtype not in (("i32", "i64") if wide else ("i32",)):
            return None, "the bias is not a dequantized i32 (i64 with int16 activations), i8 or float constant"
        q = b.type.quant
        if np.any(_zero_points(q) != 0):
            return None, "the bias zero point is not 0"
        if np.any(np.abs(_scales(q) - product_scales) > 1e-5 * product_scales):
            # Stored at another scale than s_in * s_w (normalize-qdq made an asymmetric int16 input
            # symmetric, or the quantizer chose its own): its reals, requantized as a float bias.
            real = np.float32(b.constant().reshape(-1)) * np.float32(_scales(q))
            return _float_bias(real.astype(np.float64), product_scales, rewriter, wide), None
        if wide:  # the 16x8 mode's int64 bias holds the int32 one exactly
            return rewriter.create_op("qcc.const", [], {"value": np.asarray(b.constant(), np.int64).reshape(n)},
                                      [TensorType((n,), "i64", q)]).result, None
        return rewriter.create_const(np.asarray(b.constant(), np.int32).reshape(n), like=b), None

    def _input(self, v: Value):
        x = _dequantized(v)
        ok = x is not None and _quant_i8(x) is not None and x.type.dtype == self.act_dtype
        return (x, _quant_i8(x)) if ok else (None, None)

    # ------------------------------------------------------------ layers
    def _nn_conv2d(self, conv, q, out_q, clamp, rewriter):
        x, in_q = self._input(conv.operands[0])
        if x is None:
            return "the input is not a dequantized per-tensor i8 tensor"
        layout = conv.attrs["layout"]
        wq, why = self._weights(conv.operands[1], 0)
        if why:
            return why
        w, s_w = wq
        if layout == "NCHW":
            w = np.ascontiguousarray(w.transpose(0, 2, 3, 1))
        cout = w.shape[0]
        s_w = np.broadcast_to(s_w, (cout,))
        wide = self.act_dtype == "i16"
        bias, why = self._bias(conv.operands[2] if len(conv.operands) > 2 else None,
                               in_q.scale * s_w, out_q, rewriter, cout, wide)
        if why:
            return why
        mult, shift = _multipliers([in_q.scale * s / out_q.scale for s in s_w], "double")
        a = conv.attrs
        attrs = dict(strides=a["strides"], pads=a["pads"], dilations=a["dilations"], group=a["group"],
                     input_zp=in_q.zero_point, output_zp=out_q.zero_point, multiplier=mult, shift=shift,
                     rounding="s64" if wide else "double", act_min=clamp[0], act_max=clamp[1])
        wv = _const(rewriter, w, s_w)
        operands = [self._to_nhwc(x, layout, rewriter), wv] + ([bias] if bias is not None else [])
        shape = tuple(q.result.shape[i] for i in NCHW_TO_NHWC) if layout == "NCHW" else q.result.shape
        y = rewriter.create_op("s8.conv2d", operands, attrs, [TensorType(shape, self.act_dtype, out_q)], name=conv.name)
        return self._from_nhwc(y.result, layout, rewriter)

    def _nn_scale_shift(self, op, q, out_q, clamp, rewriter):
        """y = x * s[c] + t[c] (a BatchNormalization between its own DQ and Q, as onnxruntime leaves
        one that was not folded) -> a depthwise 1x1 s8.conv2d. Each s[c] is exact as the weight
        127 * sign(s[c]) at scale |s[c]| / 127; t[c] becomes the int32 bias at s_in * s_w[c]."""
        x, in_q = self._input(op.operands[0])
        s, t = op.operands[1].constant(), op.operands[2].constant()
        if x is None or s is None or t is None:
            return "the input is not a dequantized per-tensor i8 tensor, or scale/shift are not constants"
        if len(x.shape) != 4 or op.attrs["axis"] not in (1, 3):
            return "only a per-channel scale of a 4-D tensor lowers to a depthwise s8.conv2d"
        layout = "NCHW" if op.attrs["axis"] == 1 else "NHWC"
        c = x.shape[op.attrs["axis"]]
        s = np.broadcast_to(np.asarray(s, np.float64).reshape(-1), (c,))
        t = np.broadcast_to(np.asarray(t, np.float64).reshape(-1), (c,))
        w = (127 * np.sign(s)).astype(np.int8).reshape(c, 1, 1, 1)
        s_w = np.where(s != 0, np.abs(s) / 127, 1.0)
        bias = _float_bias(t, in_q.scale * s_w, rewriter)
        mult, shift = _multipliers([in_q.scale * sw / out_q.scale for sw in s_w], "double")
        attrs = dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=c, input_zp=in_q.zero_point,
                     output_zp=out_q.zero_point, multiplier=mult, shift=shift, act_min=clamp[0], act_max=clamp[1])
        xh = self._to_nhwc(x, layout, rewriter)
        y = rewriter.create_op("s8.conv2d", [xh, _const(rewriter, w, s_w), bias], attrs,
                               [TensorType(xh.shape, self.act_dtype, out_q)], name=op.name)
        return self._from_nhwc(y.result, layout, rewriter)

    def _dense_common(self, x_v, w_v, b_v, w_axis, transpose, q, out_q, clamp, rewriter, name):
        x, in_q = self._input(x_v)
        if x is None:
            return "the input is not a dequantized per-tensor i8 tensor"
        weight_zp: list = []
        wq, why = self._weights(w_v, w_axis, weight_zp)
        if why:
            return why
        w, s_w = wq
        w = np.ascontiguousarray(w.T) if transpose else w
        n = w.shape[0]
        if s_w.size == 1:  # TFLite multiplies the float32 scales in float32 here
            product = float(np.float32(in_q.scale) * np.float32(s_w[0]))
            reals = [product / out_q.scale]
            products = np.full(n, product)
        else:
            reals = [in_q.scale * s / out_q.scale for s in s_w]
            products = in_q.scale * s_w
        wide = self.act_dtype == "i16"
        if wide and weight_zp[0] != 0:
            return "int16 activations take symmetric int8 weights (weight zero point 0)"
        bias, why = self._bias(b_v, products, out_q, rewriter, n, wide)
        if why:
            return why
        rounding = "s64" if wide else self.fc_rounding
        mult, shift = _multipliers(reals, "double" if wide else self.fc_rounding)
        wv = _const(rewriter, w, np.broadcast_to(s_w, (n,)), weight_zp[0])
        attrs = dict(input_zp=in_q.zero_point, output_zp=out_q.zero_point, multiplier=mult, shift=shift,
                     rounding=rounding, act_min=clamp[0], act_max=clamp[1], weight_zp=weight_zp[0])
        return rewriter.create_op("s8.dense", [x, wv] + ([bias] if bias is not None else []), attrs,
                                  [TensorType(q.result.shape, self.act_dtype, out_q)], name=name).result

    def _nn_dense(self, dense, q, out_q, clamp, rewriter):
        b = dense.operands[2] if len(dense.operands) > 2 else None
        return self._dense_common(dense.operands[0], dense.operands[1], b, 0, False, q, out_q, clamp,
                                  rewriter, dense.name)

    def _nn_gemm(self, gemm, q, out_q, clamp, rewriter):
        a = gemm.attrs
        if a["alpha"] != 1.0 or a["beta"] != 1.0 or a["trans_a"]:
            return "only Gemm with alpha = beta = 1 and no transA lowers to s8.dense"
        b = gemm.operands[2] if len(gemm.operands) > 2 else None
        trans_b = a["trans_b"]
        return self._dense_common(gemm.operands[0], gemm.operands[1], b, 0 if trans_b else 1, not trans_b, q, out_q,
                                  clamp, rewriter, gemm.name)

    def _nn_matmul(self, mm, q, out_q, clamp, rewriter):
        if len(mm.operands[1].shape) != 2:
            return "only a 2-D constant right operand lowers to s8.dense"
        return self._dense_common(mm.operands[0], mm.operands[1], None, 1, True, q, out_q, clamp, rewriter, mm.name)

    def _nn_add(self, add, q, out_q, clamp, rewriter):
        # matmul + bias add (an ONNX MatMul followed by Add of a dequantized i32 bias, or a float one: NNCF)
        for i in (0, 1):
            mm = add.operands[i].producer
            bias = add.operands[1 - i]
            if mm is not None and mm.opname == "nn.matmul" and (
                    (_dequantized(bias) is not None and _dequantized(bias).type.dtype == "i32")
                    or (bias.constant() is not None and bias.type.is_float)):
                if _sole_user(mm.result, rewriter.graph) is not add:
                    return "the matmul result has other users"
                return self._dense_common(mm.operands[0], mm.operands[1], add.operands[1 - i], 1, True, q, out_q,
                                          clamp, rewriter, mm.name)
        return self._add_sub("s8.add", add, out_q, clamp, rewriter)

    def _pool(self, kind, pool, q, out_q, clamp, rewriter, kernel, strides, pads):
        x, in_q = self._input(pool.operands[0])
        if x is None:
            return "the input is not a dequantized per-tensor i8 tensor"
        layout = pool.attrs["layout"]
        shape = tuple(q.result.shape[i] for i in NCHW_TO_NHWC) if layout == "NCHW" else q.result.shape
        same = in_q == out_q
        pool_clamp = clamp if same else ACT_RANGES[self.act_dtype]
        attrs = dict(kernel=kernel, strides=strides, pads=pads, act_min=pool_clamp[0], act_max=pool_clamp[1])
        y = rewriter.create_op(kind, [self._to_nhwc(x, layout, rewriter)], attrs,
                               [TensorType(shape, self.act_dtype, in_q)], name=pool.name).result
        if not same:
            # TFLite pools keep their input's parameters; onnxruntime gives GlobalAveragePool its own:
            # pool on the input's, then requantize (m = s_in / s_out).
            mult, shift = quantize_multiplier(in_q.scale / out_q.scale)
            y = rewriter.create_op("s8.requantize", [y], dict(
                input_zp=in_q.zero_point, output_zp=out_q.zero_point, multiplier=[mult], shift=[shift],
                act_min=clamp[0], act_max=clamp[1]), [TensorType(shape, self.act_dtype, out_q)], name=pool.name).result
        return self._from_nhwc(y, layout, rewriter)

    def _nn_avgpool(self, pool, q, out_q, clamp, rewriter):
        a = pool.attrs
        if a["ceil_mode"] or (a["count_include_pad"] and any(a["pads"])):
            return "ceil_mode and count_include_pad with padding have no int8 lowering"
        return self._pool("s8.avgpool", pool, q, out_q, clamp, rewriter, a["kernel"], a["strides"], a["pads"])

    def _nn_maxpool(self, pool, q, out_q, clamp, rewriter):
        a = pool.attrs
        if a["ceil_mode"] or a.get("dilations", [1, 1]) != [1, 1]:
            return "ceil_mode and dilations have no int8 lowering"
        return self._pool("s8.maxpool", pool, q, out_q, clamp, rewriter, a["kernel"], a["strides"], a["pads"])

    def _nn_global_avgpool(self, pool, q, out_q, clamp, rewriter):
        x = pool.operands[0]
        hw = list(x.shape[1:3]) if pool.attrs["layout"] == "NHWC" else list(x.shape[2:4])
        return self._pool("s8.avgpool", pool, q, out_q, clamp, rewriter, hw, hw, [0, 0, 0, 0])

    def _nn_softmax(self, sm, q, out_q, clamp, rewriter):
        x, in_q = self._input(sm.operands[0])
        if x is None:
            return "the input is not a dequantized per-tensor i8 tensor"
        if sm.attrs["axis"] % len(x.shape) != len(x.shape) - 1:
            return "int8 softmax works on the last axis"
        if self.act_dtype == "i16":
            fixed = SOFTMAX16_QUANT
            mult, shift = softmax16_params(in_q.scale)
            if shift > 15:
                return f"int16 softmax input scale {in_q.scale} is too large (scaled differences overflow int32)"
            attrs = dict(multiplier=mult, shift=shift, diff_min=0)
        else:
            fixed = SOFTMAX_QUANT
            mult, shift, diff_min = softmax_params(in_q.scale)
            attrs = dict(multiplier=mult, shift=shift, diff_min=diff_min)
        y = rewriter.create_op("s8.softmax", [x], attrs, [TensorType(x.shape, self.act_dtype, fixed)],
                               name=sm.name).result
        if out_q == fixed:
            return y
        # Other quantizers pick their own softmax output (onnxruntime: 1/255 with zero point 0 or -128,
        # 1/32767 for int16): TFLite's softmax to 1/256 (1/32768), then a requantize to the model's parameters.
        mult, shift = quantize_multiplier(fixed.scale / out_q.scale)
        return rewriter.create_op("s8.requantize", [y], dict(
            input_zp=fixed.zero_point, output_zp=out_q.zero_point, multiplier=[mult], shift=[shift],
            act_min=clamp[0], act_max=clamp[1]), [TensorType(x.shape, self.act_dtype, out_q)], name=sm.name).result


class SinkTransposeThroughAdd(RewritePattern):
    """s8.add / s8.sub / s8.mul (transpose(a, p), transpose(b, p)) -> transpose(the op (a, b), p)."""

    op_names = ("s8.add", "s8.sub", "s8.mul")

    def match_and_rewrite(self, op, rewriter):
        ta, tb = (v.producer for v in op.operands)
        if not all(t is not None and t.opname == "nn.transpose" for t in (ta, tb)):
            return rewriter.notify_match_failure(op, "the operands are not both transposes")
        if ta.attrs["perm"] != tb.attrs["perm"]:
            return rewriter.notify_match_failure(op, "the operands are transposed differently")
        a, b = ta.operands[0], tb.operands[0]
        rewriter.anchor = op
        add = rewriter.create_op(op.opname, [a, b], dict(op.attrs),
                                 [op.result.type.with_shape(_broadcast_shape(a, b))], name=op.name)
        t = rewriter.create_op("nn.transpose", [add.result], {"perm": ta.attrs["perm"]}, [op.result.type])
        rewriter.replace_op(op, t)
        return True


class UnitTransposeToReshape(RewritePattern):
    """A transpose of an integer tensor that only moves size-1 dimensions is a reshape."""

    op_names = ("nn.transpose",)

    def match_and_rewrite(self, op, rewriter):
        x = op.operands[0]
        if x.type.is_float:
            return rewriter.notify_match_failure(op, "float transposes are left to to-nhwc")
        moved = [p for p in op.attrs["perm"] if x.shape[p] != 1]
        if moved != sorted(moved):
            return rewriter.notify_match_failure(op, "moves a dimension larger than 1")
        rewriter.anchor = op
        r = rewriter.create_op("nn.reshape", [x], {"shape": list(op.result.shape)}, [op.result.type])
        rewriter.replace_op(op, r)
        return True


@register_pass
class LowerQDQ(PatternPass):
    """Lower QDQ islands (DQ -> conv/dense/add/sub/mul/pool/concat/softmax/pointwise -> Q) to affine int8 s8 ops.

    See the module docstring for the arithmetic and a before/after example.
    """

    name = "lower-qdq"
    fc_rounding: Literal["double", "single"] = "double"

    def patterns(self) -> List[RewritePattern]:
        return [LowerQuantizedIsland(self.fc_rounding), SinkTransposeThroughAdd(), SinkTransposeThroughConcat(),
                SinkTransposeThroughPointwise(), UnitTransposeToReshape()]


# Already-quantized (QDQ) models. lower-qdq runs before to-nhwc: it needs each
# float layer right behind its dequantize ops, and it converts layouts itself.
register_pipeline(
    "int8", lambda opts: ["check-qdq-model", "normalize-qdq", "fold-batchnorm", "canonicalize", "fuse-activation",
                          "legalize-pool{count_include_pad=false}",
                          f"lower-qdq{{fc_rounding={opts.get('fc_rounding', 'double')}}}",
                          "canonicalize", "to-nhwc", "const-fold", "dce", "check-quantized"],
    "Compile a QDQ int8 model (e.g. a converted .tflite) to s8 ops bit-exact with TFLite Micro",
    {"fc_rounding": str})
