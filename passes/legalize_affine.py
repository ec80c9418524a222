"""legalize-affine: float rewrites that give the int8 (affine) lowering one TFLite op per tensor.

Exact float identities, run before ``calibrate`` in ``int8-calibrated``:

* ``act = "leaky_relu"`` on conv/dense/add is split back into the layer and an
  ``nn.leaky_relu``: TFLite has no fused LeakyReLU, its int8 ``LEAKY_RELU``
  reads the layer's own int8 output (s_in, zp_in) and rescales it by two
  multipliers, ``s_in / s_out`` and ``alpha * s_in / s_out``, so the
  pre-activation tensor needs its own calibrated range;
* ``reduce_mean`` over the two spatial axes of a 4-D tensor becomes
  ``global_avgpool`` (the int8 average pool).

Both patterns are legalize-qmn's (passes/legalize_qmn.py); the Qm.n-only ones
(constant arithmetic to ``scale_shift``) are not applied here: in int8 a
constant operand of an add/mul is quantized as a tensor (quantize-affine).
"""
from __future__ import annotations

from typing import List

from qcc.transforms.passmanager import register_pass
from qcc.transforms.rewriter import PatternPass, RewritePattern

from qcc.passes.legalize_qmn import SpatialMeanToGlobalAvgPool, SplitLeakyRelu


def populate_legalize_affine_patterns() -> List[RewritePattern]:
    return [SplitLeakyRelu(), SpatialMeanToGlobalAvgPool()]


@register_pass
class LegalizeAffine(PatternPass):
    """Split fused leaky_relu off conv/dense/add and make spatial means global average pools.

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
