"""Two MLPerf Tiny model shapes qcc's shared models folder lacks, built with seeded random weights.

    python3 benchmarks/tiny_models.py OUTDIR      # writes NAME.onnx and NAME_calib.npy for both

- ``vww_mobilenet``: MobileNetV1 with width 0.25 on a 96x96x3 image, 2 classes (the visual wake words
  shape): conv 3x3/2 to 8 channels, 13 depthwise-separable blocks (depthwise 3x3 + pointwise 1x1, each
  followed by ReLU6; channels 16, 32, 32, 64, 64, 128 x 6, 256, 256; stride 2 at blocks 2, 4, 6, 12),
  global average pool, a 256 -> 2 dense layer, softmax. Batch norm is folded into the conv biases.
- ``ad_autoencoder``: the anomaly detection autoencoder, dense 640-128-128-128-128-8-128-128-128-128-640,
  every layer but the last followed by (folded) batch norm and ReLU.

Weights are He-scaled normals from a fixed seed, biases small, so activations stay in a sensible range
and the int8 calibration (qcc --scheme int8 --calib NAME_calib.npy) sees real spread. The files are
the same on every run (the instruction counts measured on them are repeatable); the models are for
measuring speed and size, their outputs mean nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

MOBILENET_BLOCKS = [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (128, 1), (128, 1),
                    (128, 1), (128, 1), (256, 2), (256, 1)]  # (pointwise output channels, depthwise stride)
AUTOENCODER_UNITS = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]


class _Net:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: List = []
        self.inits: Dict[str, np.ndarray] = {}
        self.count = 0

    def name(self, what: str) -> str:
        self.count += 1
        return f"{what}_{self.count}"

    def const(self, what: str, array: np.ndarray) -> str:
        n = self.name(what)
        self.inits[n] = array.astype(np.float32)
        return n

    def node(self, op: str, inputs: List[str], **attrs) -> str:
        from onnx import helper
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int, group: int = 1) -> str:
        fan_in = k * k * cin // group
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (cout, cin // group, k, k))
        b = self.rng.normal(0.0, 0.05, cout)
        pad = k // 2
        # TensorFlow's "same" padding for stride 2 on an even size pads bottom/right only.
        pads = [pad, pad, pad, pad] if stride == 1 else [0, 0, pad, pad]
        return self.node("Conv", [x, self.const("w", w), self.const("b", b)], kernel_shape=[k, k],
                         strides=[stride, stride], pads=pads, group=group)

    def relu6(self, x: str) -> str:
        return self.node("Clip", [x, self.const("lo", np.array(0.0)), self.const("hi", np.array(6.0))])

    def dense(self, x: str, k: int, n: int, gain: float = 2.0) -> str:
        w = self.rng.normal(0.0, np.sqrt(gain / k), (k, n))
        b = self.rng.normal(0.0, 0.05, n)
        return self.node("Gemm", [x, self.const("w", w), self.const("b", b)])

    def model(self, x_shape, out: str, out_shape):
        import onnx
        from onnx import TensorProto, helper, numpy_helper
        graph = helper.make_graph(
            self.nodes, "net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(x_shape))],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_shape))],
            [numpy_helper.from_array(a, n) for n, a in self.inits.items()])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        onnx.checker.check_model(m)
        return m


def vww_mobilenet(seed: int = 1):
    """MobileNetV1-0.25, 96x96x3 -> 2 (NCHW, as ONNX exporters write it)."""
    net = _Net(seed)
    x = net.relu6(net.conv("input", 3, 8, 3, 2))
    c = 8
    for cout, stride in MOBILENET_BLOCKS:
        x = net.relu6(net.conv(x, c, c, 3, stride, group=c))
        x = net.relu6(net.conv(x, c, cout, 1, 1))
        c = cout
    x = net.node("GlobalAveragePool", [x])
    x = net.node("Flatten", [x], axis=1)
    x = net.dense(x, c, 2, gain=1.0)
    y = net.node("Softmax", [x], axis=1)
    return net.model((1, 3, 96, 96), y, (1, 2))


def ad_autoencoder(seed: int = 2):
    """The MLPerf Tiny anomaly detection autoencoder, [1, 640] -> [1, 640]."""
    net = _Net(seed)
    x = "input"
    units = AUTOENCODER_UNITS
    for i, (k, n) in enumerate(zip(units[:-1], units[1:])):
        x = net.dense(x, k, n)
        if i < len(units) - 2:
            x = net.node("Relu", [x])
    return net.model((1, units[0]), x, (1, units[-1]))


def calibration(name: str, count: int = 16, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if name == "vww_mobilenet":
        return rng.uniform(-1.0, 1.0, (count, 3, 96, 96)).astype(np.float32)
    return rng.normal(0.0, 1.0, (count, AUTOENCODER_UNITS[0])).astype(np.float32)


MODELS = {"vww_mobilenet": vww_mobilenet, "ad_autoencoder": ad_autoencoder}


def write(outdir: Path) -> Dict[str, Tuple[Path, Path]]:
    """NAME.onnx and NAME_calib.npy of both models in outdir; {name: (model, calib)}."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, build in MODELS.items():
        model, calib = outdir / f"{name}.onnx", outdir / f"{name}_calib.npy"
        model.write_bytes(build().SerializeToString())
        np.save(calib, calibration(name))
        paths[name] = (model, calib)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 benchmarks/tiny_models.py OUTDIR")
    for name, (model, calib) in write(Path(sys.argv[1])).items():
        print(f"{name}: {model}, {calib}")
