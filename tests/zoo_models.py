"""Replicas of the architectures MCU users deploy, built with onnx.helper (issue 11's model zoo).

The real trained models are not available offline, so each builder makes the
same graph (layer kinds, kernel sizes, strides, channel counts, the ONNX forms
a PyTorch or TensorFlow export produces) with random weights scaled so that
activations keep a stable range through the depth:

* conv / Gemm weights: He init, w ~ N(0, 2 / fan_in), so a ReLU layer keeps the
  second moment of its input (E[y^2] = E[x^2]); a linear layer uses 1 / fan_in;
* BatchNormalization: gamma ~ U(0.8, 1.2), beta ~ N(0, 0.1), running mean
  ~ N(0, 0.1), running var ~ U(0.8, 1.2): near the statistics of a trained net
  on whitened input, so no channel blows up or dies;
* the classifier (the last Gemm, or SqueezeNet's last conv) is standardised
  over the input distribution (``_standardise``): each class's pre-activation
  gets mean 0 (+ an offset before a Relu) and standard deviation
  ``LOGIT_GAIN`` over 64 inputs of ``sample_inputs``. Random weights behind a global
  average pool otherwise give nearly input-independent logits (one class wins
  for every input) and top-1 agreement would test nothing; standardised, the
  winner changes with the input and the logits are well separated.

Every model has one float input ``x`` (the sample shape ``SHAPES[name]``,
batch 1) and one output ``y``; opset 13.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from random_models import _Builder

LOGIT_GAIN = 3.0


class _Net(_Builder):
    """The random-model builder's bookkeeping; constants here are named by kind and a counter."""

    def const(self, kind: str, array) -> str:
        return super().const(self.name(kind), array)

    def node(self, op: str, inputs: Sequence[str], kind: str, **attrs) -> str:
        name = self.name(kind)
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    def he(self, shape, fan_in: int, gain: float = 2.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * np.sqrt(gain / fan_in)).astype(np.float32)

    def conv(self, x: str, cin: int, cout: int, kernel: Sequence[int], strides=None, pads=None, group: int = 1,
             bias: bool = True, gain: float = 2.0) -> str:
        kernel = list(kernel)
        fan_in = int(np.prod(kernel)) * cin // group
        inputs = [x, self.const("w", self.he([cout, cin // group, *kernel], fan_in, gain))]
        if bias:
            inputs.append(self.const("b", (0.05 * self.rng.standard_normal(cout)).astype(np.float32)))
        return self.node("Conv", inputs, "conv", kernel_shape=kernel, strides=list(strides or [1] * len(kernel)),
                         pads=list(pads or [0] * 2 * len(kernel)), group=group)

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        args = [r.uniform(0.8, 1.2, c), 0.1 * r.standard_normal(c), 0.1 * r.standard_normal(c), r.uniform(0.8, 1.2, c)]
        names = [self.const(k, a.astype(np.float32)) for k, a in zip(("gamma", "beta", "mean", "var"), args)]
        return self.node("BatchNormalization", [x, *names], "bn", epsilon=1e-5)

    def relu(self, x: str) -> str:
        return self.node("Relu", [x], "relu")

    def relu6(self, x: str) -> str:
        return self.node("Clip", [x, self.const("lo", np.float32(0)), self.const("hi", np.float32(6))], "relu6")

    def gemm(self, x: str, cin: int, cout: int, gain: float = 2.0, trans_b: bool = False) -> str:
        w = self.he((cin, cout), cin, gain)
        b = (0.05 * self.rng.standard_normal(cout)).astype(np.float32)
        attrs = {"transB": 1} if trans_b else {}
        return self.node("Gemm", [x, self.const("w", w.T.copy() if trans_b else w), self.const("b", b)], "gemm",
                         **attrs)

    def classifier(self, x: str, cin: int, classes: int, **kw) -> str:
        return self.gemm(x, cin, classes, **kw)

    def model(self, shape: Sequence[int], y: str, head: str = "", relu_head: bool = False) -> onnx.ModelProto:
        model = self._assemble(shape, y)
        return _standardise(model, head or y, shape, relu_head)

    def _assemble(self, shape: Sequence[int], y: str) -> onnx.ModelProto:
        self.nodes[-1].output[0] = "y"   # the node keeps its name ``y``
        graph = helper.make_graph(self.nodes, "zoo", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                    [1, *shape])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
        return model


def _standardise(model: onnx.ModelProto, head: str, shape: Sequence[int], relu_head: bool) -> onnx.ModelProto:
    """Rescale the weights and bias of the node producing ``head`` (a Gemm or a Conv; its output
    channels on axis 1) so that each channel's output over N(0, 1) inputs has mean 0 (0.5 * gain before
    a Relu, so most of it passes) and standard deviation ``LOGIT_GAIN``."""
    import onnxruntime as ort
    head_name = "y" if not any(o == head for n in model.graph.node for o in n.output) else head
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    if head_name != "y":
        probe.graph.output.append(helper.make_tensor_value_info(head_name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    xs = sample_inputs(shape, 64, np.random.default_rng(1234))[:, None]
    out = np.stack([sess.run([head_name], {"x": x})[0] for x in xs])[:, 0]   # [samples, C, ...]
    axes = tuple(i for i in range(out.ndim) if i != 1)
    mean, std = out.mean(axes), out.std(axes) + 1e-6
    node = next(n for n in model.graph.node if head_name in n.output)
    inits = {i.name: i for i in model.graph.initializer}
    w = numpy_helper.to_array(inits[node.input[1]]).copy()
    b = numpy_helper.to_array(inits[node.input[2]]).copy()
    scale = LOGIT_GAIN / std
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    if node.op_type == "Gemm" and not trans_b:
        w = w * scale[None, :]
    else:
        w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    b = (b - mean) * scale + (0.5 * LOGIT_GAIN if relu_head else 0.0)
    inits[node.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), node.input[1]))
    inits[node.input[2]].CopyFrom(numpy_helper.from_array(b.astype(np.float32), node.input[2]))
    return model


def sample_inputs(shape: Sequence[int], count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` inputs of ``shape``: a per-sample, per-channel offset N(0, 1) (a colour cast, a loudness)
    plus a smooth random field (N(0, 1) on a grid 8 times coarser in each spatial dimension, repeated
    up) plus 0.5 * N(0, 1) pixel noise. White noise alone averages out in a global pool, leaving
    features that hardly depend on the input (the standardised classifier then needs huge weights
    with a cancelling bias: ill-conditioned, unlike a trained one); the offset and the smooth field,
    like the low-frequency content of real images and spectrograms, survive it."""
    shape = tuple(shape)
    spatial = shape[1:] if len(shape) > 1 else shape
    coarse = [-(-d // 8) for d in spatial]
    field = rng.standard_normal((count, *(shape[:1] if len(shape) > 1 else ()), *coarse))
    for axis, d in enumerate(spatial):
        ax = field.ndim - len(spatial) + axis
        field = np.repeat(field, 8, axis=ax).take(range(d), axis=ax)
    offset = rng.standard_normal((count, *(shape[:1] if len(shape) > 1 else ()), *([1] * len(spatial))))
    return (offset + field + 0.5 * rng.standard_normal((count, *shape))).astype(np.float32)


# ---------------------------------------------------------------- ML-KWS (Arm, "Hello Edge")
def kws_dnn(seed: int = 1) -> onnx.ModelProto:
    """ML-KWS DNN: 250 MFCC features (49 frames x ~5) -> 3 x (Gemm 144 + Relu) -> Gemm 12."""
    n = _Net(seed)
    x, c = "x", 250
    for _ in range(3):
        x, c = n.relu(n.gemm(x, c, 144)), 144
    return n.model(SHAPES["kws_dnn"], n.classifier(x, c, 12))


def kws_cnn(seed: int = 2) -> onnx.ModelProto:
    """ML-KWS CNN: 1x49x10 -> Conv 10x4 28 s1 + Relu -> Conv 10x4 30 s2 + Relu -> Flatten -> Gemm 16 (linear)
    -> Gemm 128 + Relu -> Gemm 12 (valid padding: 40x7 then 16x2)."""
    n = _Net(seed)
    x = n.relu(n.conv("x", 1, 28, (10, 4)))
    x = n.relu(n.conv(x, 28, 30, (10, 4), strides=(2, 2)))
    x = n.node("Flatten", [x], "flatten", axis=1)
    c = 30 * 16 * 2
    x = n.gemm(x, c, 16, gain=1.0)
    x = n.relu(n.gemm(x, 16, 128))
    return n.model(SHAPES["kws_cnn"], n.classifier(x, 128, 12))


def kws_dscnn_s(seed: int = 3) -> onnx.ModelProto:
    """ML-KWS DS-CNN-S: Conv 10x4 s2 64 + BN + Relu, 4 x (depthwise 3x3 + BN + Relu + pointwise 1x1 + BN + Relu),
    AveragePool over the whole map, Flatten, Gemm 12."""
    n = _Net(seed)
    x = n.relu(n.bn(n.conv("x", 1, 64, (10, 4), strides=(2, 2), pads=(4, 1, 5, 2), bias=False), 64))
    for _ in range(4):
        x = n.relu(n.bn(n.conv(x, 64, 64, (3, 3), pads=(1, 1, 1, 1), group=64, bias=False), 64))
        x = n.relu(n.bn(n.conv(x, 64, 64, (1, 1), bias=False), 64))
    x = n.node("AveragePool", [x], "avgpool", kernel_shape=[25, 5])
    x = n.node("Flatten", [x], "flatten", axis=1)
    return n.model(SHAPES["kws_dscnn_s"], n.classifier(x, 64, 12))


# ---------------------------------------------------------------- MobileNetV2
def _inverted_residual(n: _Net, x: str, cin: int, cout: int, stride: int, expand: int) -> str:
    hidden = cin * expand
    y = x
    if expand != 1:
        y = n.relu6(n.bn(n.conv(y, cin, hidden, (1, 1), bias=False), hidden))
    y = n.relu6(n.bn(n.conv(y, hidden, hidden, (3, 3), strides=(stride, stride), pads=(1, 1, 1, 1), group=hidden,
                            bias=False), hidden))
    # The linear bottleneck: BN, no activation; a smaller gain keeps the residual sum's range.
    y = n.bn(n.conv(y, hidden, cout, (1, 1), bias=False, gain=1.0), cout)
    if stride == 1 and cin == cout:
        y = n.node("Add", [x, y], "add")
    return y


def mobilenet_v2(seed: int = 4) -> onnx.ModelProto:
    """MobileNetV2 width 0.35 at 96x96 (the Visual Wake Words size) with fewer blocks, every kind kept:
    conv 3x3 s2 16 + BN + ReLU6 (Clip 0..6); inverted residual blocks (t, c, n, s) = (1, 8, 1, 1) (no
    expansion), (6, 8, 2, 2), (6, 16, 2, 2), (6, 24, 1, 2) (width 0.35's channels of the first stages):
    expansion 1x1 + BN + ReLU6, depthwise 3x3 + BN + ReLU6, linear bottleneck 1x1 + BN, residual Add
    where stride 1 and same channels; 1x1 conv to 1280 (kept at 1280 below width 1.0, as in the paper)
    + BN + ReLU6, GlobalAveragePool, Flatten, Gemm 10."""
    n = _Net(seed)
    x = n.relu6(n.bn(n.conv("x", 3, 16, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), bias=False), 16))
    c = 16
    for t, cout, reps, s in ((1, 8, 1, 1), (6, 8, 2, 2), (6, 16, 2, 2), (6, 24, 1, 2)):
        for i in range(reps):
            x = _inverted_residual(n, x, c, cout, s if i == 0 else 1, t)
            c = cout
    x = n.relu6(n.bn(n.conv(x, c, 1280, (1, 1), bias=False), 1280))
    x = n.node("GlobalAveragePool", [x], "gap")
    x = n.node("Flatten", [x], "flatten", axis=1)
    return n.model(SHAPES["mobilenet_v2"], n.classifier(x, 1280, 10))


# ---------------------------------------------------------------- SqueezeNet 1.1
def _fire(n: _Net, x: str, cin: int, squeeze: int, expand: int) -> Tuple[str, int]:
    s = n.relu(n.conv(x, cin, squeeze, (1, 1)))
    e1 = n.relu(n.conv(s, squeeze, expand, (1, 1)))
    e3 = n.relu(n.conv(s, squeeze, expand, (3, 3), pads=(1, 1, 1, 1)))
    return n.node("Concat", [e1, e3], "concat", axis=1), 2 * expand


def squeezenet(seed: int = 5) -> onnx.ModelProto:
    """SqueezeNet 1.1 at 64x64, channels halved: conv 3x3 s2 32 + Relu, MaxPool 3x3 s2 ceil, fire(8, 32) x2,
    MaxPool ceil, fire(16, 64) x2, MaxPool ceil, fire(24, 96), Dropout, conv 1x1 to 10 + Relu,
    GlobalAveragePool, Flatten."""
    n = _Net(seed)
    x = n.relu(n.conv("x", 3, 32, (3, 3), strides=(2, 2)))
    c = 32

    def pool(x):
        return n.node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    x = pool(x)
    for sq, ex in ((8, 32), (8, 32)):
        x, c = _fire(n, x, c, sq, ex)
    x = pool(x)
    for sq, ex in ((16, 64), (16, 64)):
        x, c = _fire(n, x, c, sq, ex)
    x = pool(x)
    x, c = _fire(n, x, c, 24, 96)
    x = n.node("Dropout", [x], "dropout")
    head = n.conv(x, c, 10, (1, 1))
    x = n.relu(head)
    x = n.node("GlobalAveragePool", [x], "gap")
    x = n.node("Flatten", [x], "flatten", axis=1)
    return n.model(SHAPES["squeezenet"], x, head=head, relu_head=True)


# ---------------------------------------------------------------- 1-D conv net
def conv1d_net(seed: int = 6) -> onnx.ModelProto:
    """A 1-D conv net for audio / sensor series: 8 x 128 -> Conv1d k5 32 + BN1d + Relu -> MaxPool1d 2 ->
    Conv1d k5 32 + BN1d + Relu -> MaxPool1d 2 -> Conv1d k3 64 + Relu -> GlobalAveragePool -> Flatten -> Gemm 6."""
    n = _Net(seed)
    x = n.relu(n.bn(n.conv("x", 8, 32, (5,), pads=(2, 2)), 32))
    x = n.node("MaxPool", [x], "maxpool", kernel_shape=[2], strides=[2])
    x = n.relu(n.bn(n.conv(x, 32, 32, (5,), pads=(2, 2)), 32))
    x = n.node("MaxPool", [x], "maxpool", kernel_shape=[2], strides=[2])
    x = n.relu(n.conv(x, 32, 64, (3,), pads=(1, 1)))
    x = n.node("GlobalAveragePool", [x], "gap")
    x = n.node("Flatten", [x], "flatten", axis=1)
    return n.model(SHAPES["conv1d"], n.classifier(x, 64, 6))


# ---------------------------------------------------------------- torch-style export
def kws_cnn_torch(seed: int = 7) -> onnx.ModelProto:
    """The ML-KWS CNN as torch.onnx.export writes it: Reshape with a shape constant instead of Flatten, Gemm
    with transB=1 (nn.Linear's [out, in] weights), BatchNorm1d after a Linear as BatchNormalization on a
    2-D tensor, then Relu."""
    n = _Net(seed)
    x = n.relu(n.conv("x", 1, 28, (10, 4)))
    x = n.relu(n.conv(x, 28, 30, (10, 4), strides=(2, 2)))
    x = n.node("Reshape", [x, n.const("shape", np.array([1, -1], np.int64))], "reshape")
    c = 30 * 16 * 2
    x = n.gemm(x, c, 16, gain=1.0, trans_b=True)
    x = n.relu(n.bn(n.gemm(x, 16, 128, trans_b=True), 128))
    return n.model(SHAPES["kws_cnn_torch"], n.classifier(x, 128, 12, trans_b=True))


SHAPES: Dict[str, Tuple[int, ...]] = {
    "kws_dnn": (250,), "kws_cnn": (1, 49, 10), "kws_dscnn_s": (1, 49, 10), "mobilenet_v2": (3, 96, 96),
    "squeezenet": (3, 64, 64), "conv1d": (8, 128), "kws_cnn_torch": (1, 49, 10)}
BUILDERS: Dict[str, Callable[[], onnx.ModelProto]] = {
    "kws_dnn": kws_dnn, "kws_cnn": kws_cnn, "kws_dscnn_s": kws_dscnn_s, "mobilenet_v2": mobilenet_v2,
    "squeezenet": squeezenet, "conv1d": conv1d_net, "kws_cnn_torch": kws_cnn_torch}
