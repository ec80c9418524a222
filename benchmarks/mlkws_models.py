"""Stand-ins for Arm's ML-KWS keyword-spotting models (Hello Edge, Zhang et al. 2017), built without a trainer.

    python3 benchmarks/mlkws_models.py OUT_DIR          # writes dnn_s.onnx ... ds_cnn_l.onnx

Shapes follow the ML-KWS model zoo (input 49x10 MFCCs, 12 classes):

- DNN S/M/L: three fully connected layers of 144/256/436 units (ReLU) on the flattened 490 features;
- CNN S/M/L: conv 10x4 (28/64/60 ch), conv 10x4 stride 2x1 (30/48/76 ch), linear (16/16/32),
  fully connected 128, output;
- DS-CNN S/M/L: conv 10x4 stride 2x2 (64/172/276 ch), then 4/4/5 pairs of depthwise 3x3 and
  pointwise 1x1 (ReLU), average pool, output.

Weights are random but carry the statistics that make 8-bit fixed point hard on trained nets: each
layer's weights are Laplace-distributed and rescaled per output channel so that its pre-activation
on the real MFCC clips has a log-normal standard deviation (sigma 0.7) and a bias of up to half of
it, as BatchNorm folding leaves them; the first layer sees the raw MFCCs, whose c0 is ~20x larger than
the other coefficients, and in the DNNs (as after training) weighs each coefficient about inversely
to its spread. The last layer is fitted by ridge regression to the log-probabilities
the trained MLPerf Tiny DS-CNN gives on the 22 real clips, so the float argmax is not trivial.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MODELS = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "kws_dscnn"

DNN = {"s": (144, 144, 144), "m": (256, 256, 256), "l": (436, 436, 436)}
CNN = {"s": (28, 30, 16, 128), "m": (64, 48, 16, 128), "l": (60, 76, 32, 128)}
DSCNN = {"s": (64, 4), "m": (172, 4), "l": (276, 5)}


def _ort(model, x):
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: s[None]})[0] for s in x])


class Builder:
    """Adds layers one at a time; each is calibrated on the data as it is added."""

    def __init__(self, x: np.ndarray, seed: int):
        self.x = x.astype(np.float32)       # [N, 1, 49, 10]
        self.rng = np.random.default_rng(seed)
        self.nodes: List = []
        self.inits: Dict[str, np.ndarray] = {}
        self.cur = "input"
        self.k = 0

    def _model(self, out: str, nodes=None, inits=None):
        g = helper.make_graph(nodes or self.nodes, "mlkws",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 49, 10])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 12] if out == "output" else None)],
                              [numpy_helper.from_array(a, n) for n, a in (inits or self.inits).items()])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)

    def values(self) -> np.ndarray:
        return _ort(self._model(self.cur), self.x)

    def _layer(self, make, shape_w, axis_sum, relu=True):
        """Draw weights, measure the pre-activation, rescale per channel, set the bias."""
        k = self.k = self.k + 1
        w = self.rng.laplace(size=shape_w).astype(np.float32)
        if self.k == 1 and w.ndim == 2:
            # A trained first dense layer weighs each MFCC coefficient about inversely to its spread
            # (c0, the loudness, is ~50x wider than the rest). A conv kernel slides over the
            # coefficients and cannot.
            w = w * np.tile(1.0 / self.x.std(axis=(0, 1, 2)), w.shape[1] // 10).astype(np.float32)
        wn, bn, out = f"w{k}", f"b{k}", f"y{k}"
        self.inits[wn], self.inits[bn] = w, np.zeros(shape_w[0], np.float32)
        node = make(self.cur, wn, bn, out)
        y = _ort(self._model(out, self.nodes + [node]), self.x)
        red = tuple(i for i in range(y.ndim) if i != 1)
        std = y.std(axis=red) + 1e-6
        target = np.exp(self.rng.normal(0.0, 0.7, size=std.shape))
        scale = (target / std).astype(np.float32)
        self.inits[wn] = (w * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        mean = y.mean(axis=red) * scale
        self.inits[bn] = (-mean + self.rng.uniform(-0.5, 0.5, size=std.shape) * target).astype(np.float32)
        self.nodes.append(node)
        self.cur = out
        if relu:
            self.nodes.append(helper.make_node("Relu", [out], [f"r{k}"]))
            self.cur = f"r{k}"

    def conv(self, cout, kh, kw, stride=(1, 1), group=1, relu=True):
        cin = self.values().shape[1]
        pads = [(kh - 1) // 2, (kw - 1) // 2, kh // 2, kw // 2]
        self._layer(lambda x, w, b, y: helper.make_node("Conv", [x, w, b], [y], kernel_shape=[kh, kw],
                                                        strides=list(stride), pads=pads, group=group),
                    (cout, cin // group, kh, kw), None, relu)

    def flatten(self):
        self.nodes.append(helper.make_node("Flatten", [self.cur], [f"f{self.k}"], axis=1))
        self.cur = f"f{self.k}"

    def avgpool(self):
        self.nodes.append(helper.make_node("GlobalAveragePool", [self.cur], [f"p{self.k}"]))
        self.nodes.append(helper.make_node("Flatten", [f"p{self.k}"], [f"f{self.k}"], axis=1))
        self.cur = f"f{self.k}"

    def fc(self, n, relu=True):
        d = self.values().shape[1]
        self._layer(lambda x, w, b, y: helper.make_node("Gemm", [x, w, b], [y], transB=1), (n, d), None, relu)

    def output(self, targets: np.ndarray, ridge: float = 1e-2) -> onnx.ModelProto:
        """Fit the last layer to ``targets`` (centred log-probabilities) by ridge regression; add softmax."""
        f = self.values().astype(np.float64)
        a = np.hstack([f, np.ones((len(f), 1))])
        lam = ridge * np.trace(a.T @ a) / a.shape[1]
        sol = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ targets)
        k = self.k = self.k + 1
        self.inits[f"w{k}"] = sol[:-1].T.astype(np.float32)
        self.inits[f"b{k}"] = sol[-1].astype(np.float32)
        self.nodes.append(helper.make_node("Gemm", [self.cur, f"w{k}", f"b{k}"], [f"logits"], transB=1))
        self.nodes.append(helper.make_node("Softmax", ["logits"], ["output"], axis=1))
        model = onnx.shape_inference.infer_shapes(self._model("output"))
        onnx.checker.check_model(model)
        return model


def targets(x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(MODELS / "kws_dscnn_float.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    p = np.concatenate([sess.run(None, {name: s.reshape(1, 49, 10, 1)})[0] for s in x])
    lp = np.log(np.maximum(p, 1e-6))
    return lp - lp.mean(axis=1, keepdims=True)


def build_all(out: Path, x: np.ndarray = None) -> Dict[str, Path]:
    x = np.load(MODELS / "mfcc_real_float.npy") if x is None else x
    xin = x.reshape(len(x), 1, 49, 10).astype(np.float32)
    t = targets(x)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for size, seed in (("s", 1), ("m", 2), ("l", 3)):
        b = Builder(xin, seed)
        b.flatten()
        for n in DNN[size]:
            b.fc(n)
        paths[f"dnn_{size}"] = b.output(t)
        b = Builder(xin, seed + 10)
        c1, c2, lin, fc = CNN[size]
        b.conv(c1, 10, 4)
        b.conv(c2, 10, 4, stride=(2, 1))
        b.flatten()
        b.fc(lin, relu=False)
        b.fc(fc)
        paths[f"cnn_{size}"] = b.output(t)
        b = Builder(xin, seed + 20)
        ch, blocks = DSCNN[size]
        b.conv(ch, 10, 4, stride=(2, 2))
        for _ in range(blocks):
            b.conv(ch, 3, 3, group=ch)
            b.conv(ch, 1, 1)
        b.avgpool()
        paths[f"ds_cnn_{size}"] = b.output(t)
    for name, model in list(paths.items()):
        p = out / f"{name}.onnx"
        onnx.save(model, str(p))
        paths[name] = p
    return paths


if __name__ == "__main__":
    for name, p in build_all(Path(sys.argv[1] if len(sys.argv) > 1 else "mlkws")).items():
        print(name, p)
