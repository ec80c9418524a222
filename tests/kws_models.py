"""Float ONNX models with the shapes of Arm's ML-KWS ("Hello Edge") DNN and CNN keyword spotters.

Input ``input_1`` 1x49x10x1 (49 frames of 10 MFCCs, like the MLPerf Tiny DS-CNN), output
``probs`` 1x12 (softmax). Trained weights are not available here, so weights are drawn with
the statistics of trained layers: He-scaled, heavy-tailed (Student-t, 4 degrees of freedom:
a few large weights per channel), per-output-channel gains spread log-normally (what folded
batch norm leaves), small biases. Deterministic for a seed.

    dnn(width)  flatten 490 -> 3 x (FC width + ReLU) -> FC 12 -> softmax   (DNN-S/M/L: 144/256/436)
    cnn()       conv 28 x 10x4 + ReLU -> conv 30 x 10x4 stride 2x1 + ReLU -> flatten 1920
                -> FC 16 (linear) -> FC 128 + ReLU -> FC 12 -> softmax        (ML-KWS CNN)
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from onnx_builders import build


def _weights(rng, shape, fan_in):
    w = rng.standard_t(4, shape) / np.sqrt(2.0) * np.sqrt(2.0 / fan_in)
    gain = np.exp(rng.normal(0.0, 0.35, (shape[0],) + (1,) * (len(shape) - 1)))
    return (w * gain).astype(np.float32)


def _bias(rng, n):
    return rng.normal(0.0, 0.05, n).astype(np.float32)


def _fc(nodes, inits, rng, x, n_in, n_out, name, relu=True):
    inits[f"{name}_w"] = _weights(rng, (n_out, n_in), n_in)
    inits[f"{name}_b"] = _bias(rng, n_out)
    out = f"{name}_y"
    nodes.append(helper.make_node("Gemm", [x, f"{name}_w", f"{name}_b"], [out], name=name, transB=1))
    if relu:
        nodes.append(helper.make_node("Relu", [out], [f"{name}_r"], name=f"{name}_relu"))
        out = f"{name}_r"
    return out


def dnn(width: int = 144, seed: int = 0):
    rng = np.random.default_rng(seed)
    inits = {"flat_shape": np.array([1, 490], np.int64)}
    nodes = [helper.make_node("Reshape", ["input_1", "flat_shape"], ["flat"], name="flatten")]
    x, n = "flat", 490
    for i in range(3):
        x = _fc(nodes, inits, rng, x, n, width, f"fc{i + 1}")
        n = width
    x = _fc(nodes, inits, rng, x, n, 12, "fc4", relu=False)
    nodes.append(helper.make_node("Softmax", [x], ["probs"], name="softmax", axis=-1))
    return build(nodes, {"input_1": [1, 49, 10, 1]}, ["probs"], inits)


def cnn(seed: int = 0):
    rng = np.random.default_rng(seed)
    inits = {"nchw": np.array([1, 1, 49, 10], np.int64), "flat_shape": np.array([1, 1920], np.int64)}
    nodes = [helper.make_node("Reshape", ["input_1", "nchw"], ["x0"], name="to_nchw")]
    x = "x0"
    for i, (cin, cout, stride) in enumerate([(1, 28, [1, 1]), (28, 30, [2, 1])]):
        name = f"conv{i + 1}"
        inits[f"{name}_w"] = _weights(rng, (cout, cin, 10, 4), cin * 40)
        inits[f"{name}_b"] = _bias(rng, cout)
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_y"], name=name,
                                      kernel_shape=[10, 4], strides=stride))
        nodes.append(helper.make_node("Relu", [f"{name}_y"], [f"{name}_r"], name=f"{name}_relu"))
        x = f"{name}_r"
    nodes.append(helper.make_node("Reshape", [x, "flat_shape"], ["flat"], name="flatten"))
    x = _fc(nodes, inits, rng, "flat", 1920, 16, "linear", relu=False)
    x = _fc(nodes, inits, rng, x, 16, 128, "fc1")
    x = _fc(nodes, inits, rng, x, 128, 12, "fc2", relu=False)
    nodes.append(helper.make_node("Softmax", [x], ["probs"], name="softmax", axis=-1))
    return build(nodes, {"input_1": [1, 49, 10, 1]}, ["probs"], inits)
