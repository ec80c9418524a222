"""Models of issue 15's memory targets, built with onnx.helper (random weights, trained-like statistics).

* ``mobilenet_v1_025``: MobileNetV1 width 0.25 at 96x96x3 (the MLPerf Tiny Visual Wake Words shape),
  exported from TensorFlow as tf2onnx does: an NHWC input and a Transpose to NCHW; conv 3x3 s2 8 + BN + ReLU, then 13 depthwise-separable blocks (depthwise 3x3 + BN + ReLU, pointwise
  1x1 + BN + ReLU) with channels 16, 32, 32, 64, 64, 128 x6, 256, 256 and stride 2 at the 2nd, 4th,
  6th and 12th, global average pool, Flatten, Gemm 2.
* ``fc_autoencoder``: MLPerf Tiny anomaly detection's dense autoencoder, 640 -> 128 x4 -> 8 -> 128 x4
  -> 640, every hidden Gemm followed by BN and ReLU.

Kept apart from the zoo (zoo_models.BUILDERS) so the zoo's tests do not grow.
"""
from __future__ import annotations

import numpy as np
import onnx

from zoo_models import _Net


def mobilenet_v1_025(seed: int = 15) -> onnx.ModelProto:
    n = _Net(seed)
    x = n.node("Transpose", ["x"], "nchw", perm=[0, 3, 1, 2])
    x = n.relu(n.bn(n.conv(x, 3, 8, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), bias=False), 8))
    c = 8
    for cout, s in ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (128, 1), (128, 1),
                    (128, 1), (128, 1), (256, 2), (256, 1)):
        x = n.relu(n.bn(n.conv(x, c, c, (3, 3), strides=(s, s), pads=(1, 1, 1, 1), group=c, bias=False), c))
        x = n.relu(n.bn(n.conv(x, c, cout, (1, 1), bias=False), cout))
        c = cout
    x = n.node("GlobalAveragePool", [x], "gap")
    x = n.node("Flatten", [x], "flatten", axis=1)
    return n.model((96, 96, 3), n.classifier(x, c, 2))


def fc_autoencoder(seed: int = 16) -> onnx.ModelProto:
    n = _Net(seed)
    x, c = "x", 640
    for width in (128, 128, 128, 128, 8, 128, 128, 128, 128):
        x = n.relu(n.bn(n.gemm(x, c, width), width))
        c = width
    return n._assemble((640,), n.gemm(x, c, 640, gain=1.0))


def calibration(shape, count: int = 8, seed: int = 0) -> np.ndarray:
    from zoo_models import sample_inputs
    return sample_inputs(shape, count, np.random.default_rng(seed)).astype(np.float32)
