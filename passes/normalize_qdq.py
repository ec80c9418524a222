"""normalize-qdq: put QDQ graphs from any quantizer into the form ``lower-qdq`` matches.

Quantizers (onnxruntime's ``quantize_static``, NNCF, tf2onnx) write the same
arithmetic in different shapes. This pass rewrites the differences away, each
step exact on the stored integers:

* uint8 -> int8, as TFLite's converter does: a ``u8`` per-tensor or per-axis
  type with zero point ``z`` becomes ``i8`` with zero point ``z - 128`` and
  the same scale; stored constants move by -128. Exact, since
  ``clamp(round(x/s) + z, 0, 255) - 128 = clamp(round(x/s) + z - 128, -128, 127)``
  and ``s * (q - z) = s * ((q - 128) - (z - 128))``. Graph inputs and outputs
  keep their types (they are the C API).
* int16 activations with a nonzero zero point (onnxruntime's asymmetric
  default) get the symmetric scale covering their range (``symmetric_int16``):
  not exact, at most one bit coarser, and said in a note.
* A per-tensor quantize commutes with layout ops (elementwise rounding):
  ``Q(layout(x)) -> layout(Q(x))`` for Transpose / Reshape / Flatten /
  Squeeze / Unsqueeze whose only user is the quantize. A float input that
  reaches its QuantizeLinear through a Transpose then is quantized first, and
  ``DQ -> Reshape -> Q`` pairs become ``Reshape`` on the integers.
* Likewise ``layout(DQ(x)) -> DQ(layout(x))`` for a per-tensor dequantize, so a
  float layer sits right behind its dequantize (tf2onnx's DQ -> Transpose -> Conv).
* Batchnorm parameters behind DequantizeLinear (onnxruntime quantizes gamma and
  beta of a batchnorm it did not fold) become the float constants they dequantize
  to, so ``fold-batchnorm`` folds them or makes the batchnorm a scale_shift, which
  ``lower-qdq`` lowers to a depthwise 1x1 ``s8.conv2d``.
* ``Q(DQ(x))`` with the same storage type and parameters is ``x``; with other
  per-tensor i8 parameters it is ``s8.requantize`` (m = s_in / s_out, TFLite's
  requantize rounding, so it is not bit-exact with a float QDQ run).

Before::

    %0 = nn.transpose %x {perm = [0, 3, 1, 2]} : tensor<1x3x8x8xf32>
    %1 = q.quantize %0 : tensor<1x3x8x8x!q.uniform<u8:f32, 0.02:128>>
    %2 = q.dequantize %1 : tensor<1x3x8x8xf32>
    %3 = nn.reshape %2 {shape = [1, 192]} : tensor<1x192xf32>
    %4 = q.quantize %3 : tensor<1x192x!q.uniform<u8:f32, 0.02:128>>

After ``-p normalize-qdq``::

    %0 = q.quantize %x : tensor<1x8x8x3x!q.uniform<i8:f32, 0.02:0>>
    %1 = nn.transpose %0 {perm = [0, 3, 1, 2]} : tensor<1x3x8x8x!q.uniform<i8:f32, 0.02:0>>
    %2 = nn.reshape %1 {shape = [1, 192]} : tensor<1x192x!q.uniform<i8:f32, 0.02:0>>
"""
from __future__ import annotations

import dataclasses
from typing import List

import numpy as np

from qcc.ir.graph import Graph
from qcc.ir.types import PerAxisQuant, TensorType, UniformQuant
from qcc.sim.qmn import dequantize_array
from qcc.sim.s8 import quantize_multiplier
from qcc.transforms.passmanager import PassResult, register_pass
from qcc.transforms.rewriter import PatternPass, RewritePattern

LAYOUT_OPS = ("nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze", "nn.transpose")


# Unsigned storage -> the signed type of the same width: zero point and stored values move by half the range.
RECENTER = {"u8": ("i8", 128, np.int8), "u16": ("i16", 32768, np.int16)}


def recenter_uint8(graph: Graph) -> int:
    """Retype every u8 (u16) quantized op result as i8 (i16): zero point - 128 (- 32768), constants
    likewise, the same reals exactly; returns the count. A u16 tensor with zero point 32768 becomes
    the symmetric int16 of TFLite's 16x8 mode."""
    count = 0
    for op in graph.ops:
        for v in op.results:
            t = v.type
            if t.dtype not in RECENTER or t.quant is None or graph.is_output(v):
                continue
            dtype, half, np_type = RECENTER[t.dtype]
            q = t.quant
            if isinstance(q, UniformQuant):
                quant = UniformQuant(q.scale, q.zero_point - half)
            elif isinstance(q, PerAxisQuant):
                quant = PerAxisQuant(q.axis, q.scales, tuple(z - half for z in q.zero_points))
            else:
                continue
            if op.opname == "qcc.const":
                op.attrs["value"] = (np.asarray(op.attrs["value"], np.int64) - half).astype(np_type)
            v.type = TensorType(t.shape, dtype, quant)
            count += 1
    return count


def symmetric_int16(graph: Graph) -> List[str]:
    """Give every i16 activation with a nonzero zero point the symmetric scale covering its range.

    onnxruntime's ``quantize_static`` quantizes int16 activations asymmetrically by default (a ReLU
    output gets zero point -32768); TFLite's 16x8 mode, CMSIS-NN's s16 kernels and qcc's take zero point 0.
    A quantize ``s, z`` covers the reals ``s * ([-32768, 32767] - z)``; it becomes ``s' = s * max(32768 + z,
    32767 - z) / 32767, 0``, which covers them all, at most one bit coarser. Zero point -32768 (a range
    starting at 0: onnxruntime folds a ReLU into it and removes the node) gets an ``nn.relu`` in front,
    the clamp it made; other ranges are not clamped below the symmetric one (values outside the
    calibrated range saturate later, not wrongly). Layout ops and dequantizes follow their operand. This changes the model's rounding (by less than one step of ``s'``), so it is
    not bit-exact with onnxruntime's run of the QDQ model; the returned names go in a note to the user.
    An int16 constant with a zero point is requantized likewise, at the symmetric scale of its largest
    magnitude (rounded half away from zero). Graph inputs and outputs keep their types (the C API).
    """
    changed: List[str] = []
    for op in graph.ops:
        for v in op.results:
            t = v.type
            if t.dtype != "i16" or not isinstance(t.quant, UniformQuant) or t.quant.zero_point == 0 \
                    or graph.is_output(v):
                continue
            if op.opname == "q.quantize":
                z, s = t.quant.zero_point, np.float32(t.quant.scale)
                scale = float(s * np.float32(max(32768 + z, 32767 - z)) / np.float32(32767))
                changed.append(op.name or v.name or "?")
                x = op.operands[0]
                if z == -32768 and x.producer is not None and x.producer.opname not in ("q.dequantize",) + LAYOUT_OPS:
                    # The range starts at 0: a ReLU the quantizer folded into the zero point (onnxruntime
                    # removes it) is explicit again, and becomes the layer's clamp.
                    relu = graph.add_op("nn.relu", [x], {}, [x.type], name=f"{op.name}_relu" if op.name else "")
                    graph.move_after_seq(relu, x.producer)
                    graph.set_operand(op, 0, relu.result)
            elif op.opname == "qcc.const":
                # an int16 constant (onnxruntime quantizes an Add's constant operand like an activation):
                # its reals again, at the symmetric scale of their largest magnitude
                z, s = t.quant.zero_point, np.float32(t.quant.scale)
                real = (np.asarray(op.attrs["value"], np.float32) - np.float32(z)) * s
                top = float(np.abs(real).max(initial=0.0))
                scale = float(np.float32(top) / np.float32(32767)) if top > 0 else float(s)
                q = np.sign(real) * np.floor(np.abs(real) / np.float32(scale) + np.float32(0.5))
                op.attrs["value"] = np.clip(q, -32767, 32767).astype(np.int16)
                changed.append(op.name or v.name or "?")
            elif op.opname in LAYOUT_OPS and op.operands[0].type.dtype == "i16" \
                    and isinstance(op.operands[0].type.quant, UniformQuant) \
                    and op.operands[0].type.quant.zero_point == 0:
                scale = op.operands[0].type.quant.scale
            else:
                continue
            v.type = TensorType(t.shape, t.dtype, UniformQuant(scale, 0))
    return changed


class QuantizeBeforeLayout(RewritePattern):
    """Q(layout(x)) -> layout(Q(x)) for a per-tensor quantize (rounding commutes with moving elements)."""

    op_names = ("q.quantize",)

    def match_and_rewrite(self, op, rewriter):
        layout = op.operands[0].producer
        if layout is None or layout.opname not in LAYOUT_OPS:
            return rewriter.notify_match_failure(op, "the operand is not a layout op")
        if not isinstance(op.result.type.quant, UniformQuant):
            return rewriter.notify_match_failure(op, "only a per-tensor quantize commutes with a layout op")
        g = rewriter.graph
        if g.users(layout.result) != [op] or g.is_output(layout.result):
            return rewriter.notify_match_failure(op, f"{layout.describe()} has other users")
        x = layout.operands[0]
        t = op.result.type
        rewriter.anchor = op
        q = rewriter.create_op("q.quantize", [x], {}, [TensorType(x.shape, t.dtype, t.quant)], name=op.name)
        moved = rewriter.create_op(layout.opname, [q.result], dict(layout.attrs), [t], name=layout.name)
        rewriter.replace_op(op, moved)
        return True


class DequantizeAfterLayout(RewritePattern):
    """layout(DQ(x)) -> DQ(layout(x)) for a per-tensor dequantize (tf2onnx's DQ -> Transpose -> Conv)."""

    op_names = LAYOUT_OPS

    def match_and_rewrite(self, op, rewriter):
        dq = op.operands[0].producer
        if dq is None or dq.opname != "q.dequantize":
            return rewriter.notify_match_failure(op, "the operand is not a q.dequantize")
        x = dq.operands[0]
        if not isinstance(x.type.quant, UniformQuant):
            return rewriter.notify_match_failure(op, "only a per-tensor dequantize commutes with a layout op")
        rewriter.anchor = op
        moved = rewriter.create_op(op.opname, [x], dict(op.attrs),
                                   [TensorType(op.result.shape, x.type.dtype, x.type.quant)], name=op.name)
        new = rewriter.create_op("q.dequantize", [moved.result], {}, [op.result.type], name=dq.name)
        rewriter.replace_op(op, new)
        return True


class DequantizeBatchNormParameters(RewritePattern):
    """DQ(const) feeding only batchnorm parameters (onnxruntime quantizes gamma and beta) -> the
    float constant it computes, so ``fold-batchnorm`` sees constant parameters."""

    op_names = ("q.dequantize",)

    def match_and_rewrite(self, op, rewriter):
        stored = op.operands[0]
        if not stored.is_constant():
            return rewriter.notify_match_failure(op, "the operand is not a constant")
        uses = rewriter.graph.uses(op.result)
        if not uses or any(u.opname != "nn.batchnorm" or i == 0 for u, i in uses) or \
                rewriter.graph.is_output(op.result):
            return rewriter.notify_match_failure(op, "not only batchnorm parameters use it")
        value = dequantize_array(stored.constant(), stored.type.quant).astype(np.float32)
        rewriter.replace_op(op, rewriter.create_const(value, name=stored.producer.name))
        return True


class FoldDequantizeQuantize(RewritePattern):
    """Q(DQ(x)) -> x with equal parameters; -> s8.requantize between per-tensor i8 parameters."""

    op_names = ("q.quantize",)

    def match_and_rewrite(self, op, rewriter):
        dq = op.operands[0].producer
        if dq is None or dq.opname != "q.dequantize":
            return rewriter.notify_match_failure(op, "the operand is not a q.dequantize")
        x = dq.operands[0]
        t_in, t_out = x.type, op.result.type
        if t_in.dtype == t_out.dtype and t_in.quant == t_out.quant:
            rewriter.replace_op(op, x)
            return True
        q_in, q_out = t_in.quant, t_out.quant
        if not (t_in.dtype == t_out.dtype == "i8" and isinstance(q_in, UniformQuant)
                and isinstance(q_out, UniformQuant)):
            return rewriter.notify_match_failure(op, "a requantize needs per-tensor i8 on both sides")
        mult, shift = quantize_multiplier(q_in.scale / q_out.scale)
        rewriter.anchor = op
        r = rewriter.create_op("s8.requantize", [x], dict(
            input_zp=q_in.zero_point, output_zp=q_out.zero_point, multiplier=[mult], shift=[shift],
            act_min=-128, act_max=127), [t_out], name=op.name)
        rewriter.replace_op(op, r)
        return True


@register_pass
class NormalizeQDQ(PatternPass):
    """Normalize QDQ graphs: uint8 -> int8, layout ops onto the integer side, fold Q(DQ(x)).

    See the module docstring for the arithmetic and a before/after example.
    """

    name = "normalize-qdq"

    def patterns(self) -> List[RewritePattern]:
        return [QuantizeBeforeLayout(), DequantizeAfterLayout(), DequantizeBatchNormParameters(),
                FoldDequantizeQuantize()]

    def run(self, graph: Graph) -> PassResult:
        recentred = recenter_uint8(graph)
        symmetric = symmetric_int16(graph)
        if symmetric:
            graph.notes.append(
                f"{len(symmetric)} int16 activation(s) had a nonzero zero point (onnxruntime's default, "
                f"asymmetric): qcc's 16x8 kernels take zero point 0, so each became the symmetric scale "
                f"covering its range, at most 1 bit coarser ({', '.join(symmetric[:3])}"
                f"{', ...' if len(symmetric) > 3 else ''}); extra_options={{'ActivationSymmetric': True}} "
                f"in quantize_static avoids it")
        result = super().run(graph)
        return dataclasses.replace(result, modified=result.modified or recentred > 0 or bool(symmetric),
                                   stats={**result.stats, "recentred": recentred, "symmetric_int16": len(symmetric)})
