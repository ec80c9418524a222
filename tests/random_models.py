"""Random float ONNX models for differential tests: hypothesis strategies and an ONNX builder.

A model is a ``ModelSpec``: an NCHW input shape, a chain of ``Layer`` records
and a weight seed. ``model_specs()`` draws one whose shapes are valid at every
layer (every spatial size stays >= 1, pads stay below the window, ceil_mode
pools never start a window inside the end padding); ``build_model(spec)``
turns it into an opset-13 ONNX model with random weights drawn from the seed.
Layer kinds:

    conv        Conv: random kernel (incl. 1xN / Nx1), strides, pads, dilations, groups, bias
    depthwise   Conv with group == channels and a channel multiplier
    bn          BatchNormalization (after a conv, or alone)
    act         Relu, Clip(0, 6) (relu6) or LeakyRelu
    maxpool     MaxPool / AveragePool (count_include_pad), ceil_mode 0 or 1
    avgpool
    gpool       GlobalAveragePool / GlobalMaxPool
    residual    x + act(conv_same(x))  (Add of two branches, then an optional Relu)
    concat      Concat of two conv branches along channels
    dense       Flatten, then Gemm (the rest of the chain is dense/act/softmax)
    softmax     Softmax over the features (last layer only)

Everything is deterministic in the spec: the same spec gives the same bytes.
The spec's ``repr`` is valid Python (``eval`` it with ``Layer`` and
``ModelSpec`` in scope), so a failing example is reproduced from its printout
as well as from the saved .onnx file.
"""
from __future__ import annotations

import contextlib
import io
import os
import shlex
import traceback
from dataclasses import dataclass
from pathlib import Path
from collections import defaultdict
from typing import Dict, FrozenSet, List, Sequence, Set, Tuple

import numpy as np
from hypothesis import strategies as st
import onnx
from onnx import TensorProto, helper, numpy_helper

MAX_CHANNELS = 12
MAX_SIDE = 12


@dataclass(frozen=True)
class Layer:
    kind: str
    params: Tuple[Tuple[str, object], ...] = ()

    def get(self, key, default=None):
        return dict(self.params).get(key, default)

    def __repr__(self):
        return f"Layer({self.kind!r}, {self.params!r})"


@dataclass(frozen=True)
class ModelSpec:
    shape: Tuple[int, int, int, int]   # NCHW input
    layers: Tuple[Layer, ...]
    seed: int

    def kinds(self) -> List[str]:
        return [layer.kind for layer in self.layers]


def _layer(kind, **params) -> Layer:
    return Layer(kind, tuple(sorted(params.items())))


# ---------------------------------------------------------------- shapes
def window_out(size: int, k: int, s: int, d: int, pb: int, pe: int, ceil: bool = False) -> int:
    span = (k - 1) * d + 1
    num = size + pb + pe - span
    return (-(-num // s) if ceil else num // s) + 1


def pool_shape_ok(size: int, k: int, s: int, pb: int, pe: int, ceil: bool) -> bool:
    """The window fits, and with ceil_mode the last window starts inside input + begin padding
    (where ONNX and onnxruntime agree on the output size)."""
    if size + pb + pe < k:
        return False
    if ceil:
        out = window_out(size, k, s, 1, pb, pe, True)
        return (out - 1) * s < size + pb
    return True


# ---------------------------------------------------------------- strategies
@st.composite
def _conv_params(draw, c: int, h: int, w: int, depthwise: bool):
    if depthwise:
        mult = draw(st.integers(1, 3))
        cout, group = c * mult, c
    else:
        group = draw(st.sampled_from([g for g in (1, 2, 3) if c % g == 0]))
        cout = group * draw(st.integers(1, max(1, MAX_CHANNELS // group)))
    kh = draw(st.integers(1, min(5, h + 2)))
    kw = draw(st.integers(1, min(5, w + 2)))
    dh = draw(st.integers(1, 2)) if kh > 1 else 1
    dw = draw(st.integers(1, 2)) if kw > 1 else 1
    pads = [draw(st.integers(0, k - 1)) for k in (kh, kw, kh, kw)]
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    oh = window_out(h, kh, sh, dh, pads[0], pads[2])
    ow = window_out(w, kw, sw, dw, pads[1], pads[3])
    if oh < 1 or ow < 1:  # fall back to a pointwise conv that always fits
        kh = kw = dh = dw = sh = sw = 1
        pads = [0, 0, 0, 0]
        oh, ow = h, w
    params = dict(cout=cout, group=group, kernel=(kh, kw), strides=(sh, sw), dilations=(dh, dw), pads=tuple(pads),
                  bias=draw(st.booleans()))
    return params, (cout, oh, ow)


@st.composite
def _pool_params(draw, h: int, w: int, kind: str, avoid: FrozenSet[str]):
    kh, kw = draw(st.integers(1, min(4, h + 1))), draw(st.integers(1, min(4, w + 1)))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = tuple(draw(st.integers(0, k - 1)) for k in (kh, kw, kh, kw))
    ceil = CEIL_MODE_POOL not in avoid and draw(st.booleans())
    if not (pool_shape_ok(h, kh, sh, pads[0], pads[2], ceil) and pool_shape_ok(w, kw, sw, pads[1], pads[3], ceil)):
        kh = kw = sh = sw = 1
        pads, ceil = (0, 0, 0, 0), False
    params = dict(kernel=(kh, kw), strides=(sh, sw), pads=pads, ceil_mode=ceil)
    if kind == "avgpool":
        params["count_include_pad"] = (AVGPOOL_PAD_COUNTED not in avoid or not any(pads)) and draw(st.booleans())
    oh = window_out(h, kh, sh, 1, pads[0], pads[2], ceil)
    ow = window_out(w, kw, sw, 1, pads[1], pads[3], ceil)
    return params, (oh, ow)


ACTIVATIONS = ("relu", "relu6", "leaky_relu")

# Features a scheme may refuse (node_features finds them in an ONNX graph; model_specs can leave them out).
CEIL_MODE_POOL = "ceil_mode pool"
LEAKY_RELU = "leaky relu"
GLOBAL_MAX_POOL = "global max pool"
LONE_RELU = "relu not after conv/dense"
LONE_BATCHNORM = "batchnorm not after conv"
AVGPOOL_PAD_COUNTED = "avgpool count_include_pad over padding"
FEATURES = (CEIL_MODE_POOL, LEAKY_RELU, GLOBAL_MAX_POOL, LONE_RELU, LONE_BATCHNORM, AVGPOOL_PAD_COUNTED)


@st.composite
def model_specs(draw, max_layers: int = 5, avoid: FrozenSet[str] = frozenset()):
    """A random valid ModelSpec: 1..max_layers spatial layers, then maybe a dense tail; without the
    ``avoid``ed FEATURES."""
    unknown = set(avoid) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)}; known: {FEATURES}")
    acts = tuple(a for a in ACTIVATIONS if not (a == "leaky_relu" and LEAKY_RELU in avoid))
    c = draw(st.integers(1, 8))
    h = draw(st.integers(1, MAX_SIDE))
    w = draw(st.integers(1, MAX_SIDE))
    shape = (1, c, h, w)
    layers: List[Layer] = []
    spatial = [k for k in ("conv", "depthwise", "bn", "act", "maxpool", "avgpool", "gpool", "residual", "concat")
               if not (k == "bn" and LONE_BATCHNORM in avoid or k == "act" and LONE_RELU in avoid)]
    for _ in range(draw(st.integers(1, max_layers))):
        kind = draw(st.sampled_from(spatial))
        if kind in ("conv", "depthwise"):
            if kind == "depthwise" and c * 3 > 2 * MAX_CHANNELS:
                kind = "conv"
            params, (c, h, w) = draw(_conv_params(c, h, w, kind == "depthwise"))
            params["act"] = draw(st.sampled_from((None,) + acts))
            params["bn"] = draw(st.booleans())
            layers.append(_layer(kind, **params))
        elif kind == "bn":
            layers.append(_layer("bn"))
        elif kind == "act":
            layers.append(_layer("act", act=draw(st.sampled_from(acts))))
        elif kind in ("maxpool", "avgpool"):
            params, (h, w) = draw(_pool_params(h, w, kind, avoid))
            layers.append(_layer(kind, **params))
        elif kind == "gpool":
            layers.append(_layer("gpool", op=draw(st.sampled_from(("avg",) if GLOBAL_MAX_POOL in avoid else ("avg", "max")))))
            h = w = 1
        elif kind == "residual":
            kh = draw(st.sampled_from([k for k in (1, 3, 5) if k <= max(h, w) + 2]))
            layers.append(_layer("residual", kernel=kh, relu=LONE_RELU not in avoid and draw(st.booleans())))
        elif kind == "concat":
            c2 = draw(st.integers(1, max(1, MAX_CHANNELS - c)))
            c1 = draw(st.integers(1, max(1, MAX_CHANNELS - c2)))
            layers.append(_layer("concat", c1=c1, c2=c2))
            c = c1 + c2
    if draw(st.booleans()):
        units = draw(st.integers(1, 16))
        layers.append(_layer("dense", units=units, act=draw(st.sampled_from((None, "relu", "relu6")))))
        if draw(st.booleans()):
            layers.append(_layer("dense", units=draw(st.integers(2, 12)), act=None))
        if draw(st.booleans()):
            layers.append(_layer("softmax"))
    return ModelSpec(shape, tuple(layers), draw(st.integers(0, 2 ** 31 - 1)))


# ---------------------------------------------------------------- ONNX
class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def const(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs, kind: str, **attrs) -> str:
        name = self.name(kind)
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    def conv(self, x: str, cin: int, cout: int, kernel, group=1, strides=(1, 1), pads=(0, 0, 0, 0),
             dilations=(1, 1), bias=True, kind="conv") -> str:
        kh, kw = kernel
        fan_in = kh * kw * cin // group
        wgt = (self.rng.standard_normal((cout, cin // group, kh, kw)) / np.sqrt(fan_in)).astype(np.float32)
        inputs = [x, self.const(self.name("w"), wgt)]
        if bias:
            inputs.append(self.const(self.name("b"), (0.1 * self.rng.standard_normal(cout)).astype(np.float32)))
        return self.node("Conv", inputs, kind, kernel_shape=list(kernel), strides=list(strides), pads=list(pads),
                         dilations=list(dilations), group=group)

    def batchnorm(self, x: str, c: int) -> str:
        r = self.rng
        args = [(1 + 0.3 * r.standard_normal(c)), 0.2 * r.standard_normal(c), 0.2 * r.standard_normal(c),
                r.uniform(0.5, 2.0, c)]
        names = [self.const(self.name(k), a.astype(np.float32)) for k, a in zip(("gamma", "beta", "mean", "var"), args)]
        return self.node("BatchNormalization", [x, *names], "bn", epsilon=1e-5)

    def act(self, x: str, act) -> str:
        if act == "relu":
            return self.node("Relu", [x], "relu")
        if act == "relu6":
            return self.node("Clip", [x, self.const(self.name("lo"), np.float32(0)),
                                      self.const(self.name("hi"), np.float32(6))], "relu6")
        if act == "leaky_relu":
            return self.node("LeakyRelu", [x], "leaky", alpha=float(self.rng.choice([0.1, 0.2, 0.01])))
        return x


def build_model(spec: ModelSpec):
    """The ONNX model of ``spec`` (opset 13, one float input ``x``, one output ``y``)."""
    b = _Builder(spec.seed)
    _, c, h, w = spec.shape
    x = "x"
    flat = False
    for layer in spec.layers:
        p = dict(layer.params)
        k = layer.kind
        if k in ("conv", "depthwise"):
            x = b.conv(x, c, p["cout"], p["kernel"], p["group"], p["strides"], p["pads"], p["dilations"], p["bias"],
                       kind=k)
            c = p["cout"]
            if p["bn"]:
                x = b.batchnorm(x, c)
            x = b.act(x, p["act"])
        elif k == "bn":
            x = b.batchnorm(x, c)
        elif k == "act":
            x = b.act(x, p["act"])
        elif k == "maxpool":
            x = b.node("MaxPool", [x], k, kernel_shape=list(p["kernel"]), strides=list(p["strides"]),
                       pads=list(p["pads"]), ceil_mode=int(p["ceil_mode"]))
        elif k == "avgpool":
            x = b.node("AveragePool", [x], k, kernel_shape=list(p["kernel"]), strides=list(p["strides"]),
                       pads=list(p["pads"]), ceil_mode=int(p["ceil_mode"]),
                       count_include_pad=int(p["count_include_pad"]))
        elif k == "gpool":
            x = b.node("GlobalAveragePool" if p["op"] == "avg" else "GlobalMaxPool", [x], "gpool")
        elif k == "residual":
            kk = p["kernel"]
            branch = b.act(b.conv(x, c, c, (kk, kk), pads=(kk // 2,) * 4), "relu")
            x = b.node("Add", [x, branch], "add")
            if p["relu"]:
                x = b.act(x, "relu")
        elif k == "concat":
            one = b.conv(x, c, p["c1"], (1, 1))
            three = b.act(b.conv(x, c, p["c2"], (3, 3), pads=(1, 1, 1, 1)), "relu")
            x = b.node("Concat", [one, three], "concat", axis=1)
            c = p["c1"] + p["c2"]
        elif k == "dense":
            if not flat:
                x = b.node("Flatten", [x], "flatten", axis=1)
                c, flat = c * h * w, True
            wgt = (b.rng.standard_normal((p["units"], c)) / np.sqrt(c)).astype(np.float32)
            bias = (0.1 * b.rng.standard_normal(p["units"])).astype(np.float32)
            x = b.node("Gemm", [x, b.const(b.name("w"), wgt), b.const(b.name("b"), bias)], "fc", transB=1)
            c = p["units"]
            x = b.act(x, p["act"])
        elif k == "softmax":
            x = b.node("Softmax", [x], "softmax", axis=-1)
        else:
            raise ValueError(f"unknown layer kind {k!r}")
        if k in ("conv", "depthwise", "maxpool", "avgpool"):
            h, w = _spatial_after(layer, h, w)
        elif k == "gpool":
            h = w = 1
    b.nodes.append(helper.make_node("Identity", [x], ["y"], name="output"))
    graph = helper.make_graph(b.nodes, "random", [helper.make_tensor_value_info("x", TensorProto.FLOAT, spec.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


def _spatial_after(layer: Layer, h: int, w: int) -> Tuple[int, int]:
    p = dict(layer.params)
    kh, kw = p["kernel"]
    sh, sw = p["strides"]
    dh, dw = p.get("dilations", (1, 1))
    pads = p["pads"]
    ceil = p.get("ceil_mode", False)
    return window_out(h, kh, sh, dh, pads[0], pads[2], ceil), window_out(w, kw, sw, dw, pads[1], pads[3], ceil)


# ---------------------------------------------------------------- features of a model
def node_features(model: onnx.ModelProto) -> Dict[str, Set[str]]:
    """The FEATURES of each ONNX node (by name). A conv, dense or add also carries the features of
    the batchnorm/activation chain it absorbs: a refusal of the fused layer names that node."""
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers = defaultdict(list)
    for n in nodes:
        for i in n.input:
            consumers[i].append(n)

    def attr(n, name, default=0):
        return next((helper.get_attribute_value(a) for a in n.attribute if a.name == name), default)

    def after_conv(n) -> bool:
        p = producer.get(n.input[0])
        while p is not None and p.op_type == "BatchNormalization":
            p = producer.get(p.input[0])
        return p is not None and p.op_type in ("Conv", "Gemm") and len(consumers[p.output[0]]) == 1

    feats: Dict[str, Set[str]] = {}
    for n in nodes:
        f = set()
        if n.op_type in ("MaxPool", "AveragePool") and attr(n, "ceil_mode"):
            f.add(CEIL_MODE_POOL)
        if n.op_type == "AveragePool" and attr(n, "count_include_pad") and any(attr(n, "pads", [0])):
            f.add(AVGPOOL_PAD_COUNTED)
        if n.op_type == "GlobalMaxPool":
            f.add(GLOBAL_MAX_POOL)
        if n.op_type == "LeakyRelu":
            f.add(LEAKY_RELU)
        if n.op_type in ("Relu", "Clip") and not after_conv(n):
            f.add(LONE_RELU)
        if n.op_type == "BatchNormalization" and not after_conv(n):
            f.add(LONE_BATCHNORM)
        feats[n.name] = f
    for n in nodes:
        if n.op_type in ("Conv", "Gemm", "Add"):
            nxt = consumers[n.output[0]]
            while len(nxt) == 1 and nxt[0].op_type in ("BatchNormalization", "Relu", "Clip", "LeakyRelu"):
                feats[n.name] |= feats[nxt[0].name]
                nxt = consumers[nxt[0].output[0]]
    return feats


# ---------------------------------------------------------------- the qcc command
def qcc_command(argv: Sequence[str]) -> str:
    return "qcc " + " ".join(shlex.quote(a) for a in argv)


def run_qcc(folder: Path, argv: Sequence[str], where: str = "") -> Tuple[int, str]:
    """``qcc ARGV`` run in ``folder`` through the command's entry point (its error policy
    included); returns (exit code, stderr). A traceback fails the calling test: it is a bug."""
    import pytest
    from qcc.tools.compile import main
    err = io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(folder)
        with contextlib.redirect_stderr(err):
            rc = main(list(argv))
    except BaseException:  # whatever escapes main is a crash
        pytest.fail(f"qcc crashed:\n{traceback.format_exc()}{where}")
    finally:
        os.chdir(cwd)
    message = err.getvalue()
    assert "Traceback" not in message, message + where
    return rc, message
