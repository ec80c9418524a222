"""legalize-affine: float rewrites that give the int8 (affine) lowering one TFLite op per tensor.

Exact float identities, run before ``calibrate`` in ``int8-calibrated``:

* ``act = "leaky_relu"`` on conv/dense/add is split back into the layer and an
  ``nn.leaky_relu``: TFLite has no fused LeakyReLU, its int8 ``LEAKY_RELU``
  reads the layer's own int8 output (s_in, zp_in) and rescales it by two
  multipliers, ``s_in / s_out`` and ``alpha * s_in / s_out``, so the
  pre-activation tensor needs its own calibrated range;
* ``reduce_mean`` over the two spatial axes of a 4-D tensor becomes
  ``global_avgpool`` (the int8 average pool);
* ``x / k`` with a constant ``k`` becomes ``x * (1 / k)`` (TFLite has no int8
  DIV; its converter multiplies by the reciprocal). Not exact: ``1 / k`` is
  rounded to float32, a relative change below 2^-24, far under one int8 step;
* ``scale_shift(x, s, t)`` on the channel axis of a 4-D tensor (a BatchNormalization
  that follows no conv, or a per-channel constant Mul/Add) becomes a depthwise 1x1
  conv with ``w[c] = s[c]`` and bias ``t[c]``: the same float arithmetic, and an int8
  layer TFLite has (DEPTHWISE_CONV_2D). Its per-channel symmetric weight scale
  ``|s[c]| / 127`` stores each weight as +-127 exactly.

The first two patterns are legalize-qmn's (passes/legalize_qmn.py); the Qm.n-only ones
(constant arithmetic to ``scale_shift``) are not applied here: in int8 a
constant operand of an add/mul is quantized as a tensor (quantize-affine).
"""
from __future__ import annotations

from typing import List

import numpy as np

from qcc.ir.graph import Op
from qcc.transforms.passmanager import register_pass
from qcc.transforms.rewriter import PatternPass, RewritePattern, Rewriter

from qcc.passes.legalize_qmn import SpatialMeanToGlobalAvgPool, SplitLeakyRelu


class DivideByConstantToMul(RewritePattern):
    """x / k with a constant k (no zero) -> x * (1 / k), the reciprocal in float32."""

    op_names = ("nn.div",)

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        k = op.operands[1]
        c = k.constant()
        if c is None or not k.type.is_float:
            return rewriter.notify_match_failure(op, "the divisor is not a float constant")
        c = np.asarray(c, np.float64)
        if np.any(c == 0) or not np.all(np.isfinite(c)):
            return rewriter.notify_match_failure(op, "the divisor holds zero or a non-finite value")
        rewriter.anchor = op
        recip = rewriter.create_const((1.0 / c).astype(np.float32), like=k)
        mul = rewriter.create_op("nn.mul", [op.operands[0], recip], dict(op.attrs), [op.result.type], name=op.name)
        rewriter.replace_op(op, mul)
        return True


class ScaleShiftToDepthwise(RewritePattern):
    """scale_shift(x, s, t) over the channels of a 4-D tensor -> depthwise 1x1 conv2d(x, s, t)."""

    op_names = ("nn.scale_shift",)

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        x, s, t = op.operands
        if s.constant() is None or t.constant() is None:
            return rewriter.notify_match_failure(op, "the scale or the shift is not a constant")
        rank = x.type.rank
        axis = op.attrs["axis"] % rank if rank else 0
        if rank != 4 or axis not in (1, 3):
            return rewriter.notify_match_failure(op, "not the channel axis of a 4-D tensor")
        channels = x.shape[axis]
        scale = np.broadcast_to(np.asarray(s.constant(), np.float32).reshape(-1), (channels,))
        shift = np.broadcast_to(np.asarray(t.constant(), np.float32).reshape(-1), (channels,))
        rewriter.anchor = op
        w = rewriter.create_const(np.ascontiguousarray(scale).reshape(channels, 1, 1, 1), name=f"{op.name}.weight")
        b = rewriter.create_const(np.ascontiguousarray(shift), name=f"{op.name}.bias")
        conv = rewriter.create_op("nn.conv2d", [x, w, b], {"group": channels, "layout": "NCHW" if axis == 1 else "NHWC"},
                                  [op.result.type], name=op.name)
        rewriter.replace_op(op, conv)
        return True


def populate_legalize_affine_patterns() -> List[RewritePattern]:
    return [SplitLeakyRelu(), SpatialMeanToGlobalAvgPool(), DivideByConstantToMul(), ScaleShiftToDepthwise()]


@register_pass
class LegalizeAffine(PatternPass):
    """Split fused leaky_relu off conv/dense/add; spatial means to global pools; x / k to x * (1 / k);
    channel scale_shifts to depthwise 1x1 convs.

    Before::

        %1 = nn.conv2d %x, %w {act = "leaky_relu", act_alpha = 0.1, ...} : tensor<1x8x8x4xf32>

    After ``-p legalize-affine``::

        %1 = nn.conv2d %x, %w {act = "none", act_alpha = 0.0, ...} : tensor<1x8x8x4xf32>
        %2 = nn.leaky_relu %1 {alpha = 0.1} : tensor<1x8x8x4xf32>

    Statistics: ``applied.<pattern>`` per rewrite; reasons in ``match_failures``.
    """

    name = "legalize-affine"

    def patterns(self):
        return populate_legalize_affine_patterns()
