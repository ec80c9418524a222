"""What tf2onnx makes of small Keras recurrent classifiers, and of PyTorch's zero initial states.

- ``keras.layers.LSTM/GRU(H)`` on [1, T, F] then Dense: a Reshape to time-major, the ONNX
  LSTM/GRU op, Squeeze(direction), ``Slice(starts=-1, ends=INT_MAX, axes=0)`` (the last step,
  TF's strided_slice), Squeeze, Gemm. The Slice of a run-time value becomes a constant-index
  gather (canonicalize), so both integer schemes compile it.
- ``keras.layers.GRU(H, reset_after=False)`` is a while loop whose cell ends in
  ``Gemm(r * h, U_h, x_h)``: a Gemm whose C is computed at run time (a dense then an add).

Both forms are checked against the float model (onnxruntime-equal float interpreter) and
C == simulator on the host.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import helper

import qcc
import qcc.passes  # noqa: F401  (registers the pipelines)
from qcc.sim.interpreter import run_graph

from conftest import shared_model_path
from onnx_builders import build
from recurrent_models import cell_weights
from test_backend_s8 import _run_and_compare, needs_gcc

STEPS, FEATURES, CLASSES = 49, 10, 12


def keras_style_model(kind: str, hidden: int = 24, seed: int = 0):
    w, r, b = cell_weights(kind, FEATURES, hidden, seed)
    rng = np.random.default_rng(seed + 3)
    inits = {"W": w, "R": r, "B": b, "tm": np.array([STEPS, 1, FEATURES], np.int64),
             "dir_axis": np.array([1], np.int64), "starts": np.array([-1], np.int64),
             "ends": np.array([2 ** 31 - 1], np.int64), "axis0": np.array([0], np.int64),
             "fc_w": (rng.uniform(-1, 1, (hidden, CLASSES)) * 3 / np.sqrt(hidden)).astype(np.float32),
             "fc_b": rng.uniform(-0.1, 0.1, CLASSES).astype(np.float32)}
    attrs = {"hidden_size": hidden, **({"linear_before_reset": 1} if kind == "GRU" else {})}
    outs = ["Y", "Y_h", "Y_c"] if kind == "LSTM" else ["Y", "Y_h"]
    nodes = [helper.make_node("Reshape", ["input", "tm"], ["xt"], name="transpose"),
             helper.make_node(kind, ["xt", "W", "R", "B"], outs, name=f"{kind}__28", **attrs),
             helper.make_node("Squeeze", ["Y", "dir_axis"], ["ys"], name="Squeeze__32"),
             helper.make_node("Slice", ["ys", "starts", "ends", "axis0"], ["last"], name="strided_slice_2"),
             helper.make_node("Squeeze", ["last", "axis0"], ["h"], name="strided_slice_2__41"),
             helper.make_node("Gemm", ["h", "fc_w", "fc_b"], ["logits"], name="dense/MatMul_Gemm")]
    return build(nodes, {"input": [1, STEPS, FEATURES]}, ["logits"], inits, opset=13)


def keras_gru_reset_before_model(hidden: int = 16, steps: int = 12, seed: int = 1):
    """A GRU cell with reset before the recurrent matmul, unrolled the way tf2onnx writes its Loop body:
    z, r from (x W + b) + h U_zr, then hh = tanh(Gemm(r * h, U_h, x W_h + b_h))."""
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(hidden)
    inits = {"Wx": rng.uniform(-k, k, (FEATURES, 3 * hidden)).astype(np.float32),
             "bx": rng.uniform(-k, k, 3 * hidden).astype(np.float32),
             "Uzr": rng.uniform(-k, k, (hidden, 2 * hidden)).astype(np.float32),
             "Uh": rng.uniform(-k, k, (hidden, hidden)).astype(np.float32),
             "one": np.array(1.0, np.float32), "h0": np.zeros((1, hidden), np.float32),
             "fc_w": (rng.uniform(-1, 1, (hidden, CLASSES)) * 3 / np.sqrt(hidden)).astype(np.float32),
             "fc_b": np.zeros(CLASSES, np.float32)}
    nodes, h = [helper.make_node("Split", ["input"], [f"x{t}" for t in range(steps)], axis=1, name="frames")], "h0"
    for t in range(steps):
        p = f"t{t}/"
        nodes += [helper.make_node("Reshape", [f"x{t}", "rowshape"], [p + "x"], name=p + "row"),
                  helper.make_node("Gemm", [p + "x", "Wx", "bx"], [p + "xw"], name=p + "MatMul_Gemm"),
                  helper.make_node("Split", [p + "xw"], [p + "xz", p + "xr", p + "xh"], axis=1, name=p + "split"),
                  helper.make_node("MatMul", [h, "Uzr"], [p + "hu"], name=p + "MatMul_1"),
                  helper.make_node("Split", [p + "hu"], [p + "hz", p + "hr"], axis=1, name=p + "split_1"),
                  helper.make_node("Add", [p + "xz", p + "hz"], [p + "az"], name=p + "add"),
                  helper.make_node("Sigmoid", [p + "az"], [p + "z"], name=p + "Sigmoid"),
                  helper.make_node("Add", [p + "xr", p + "hr"], [p + "ar"], name=p + "add_1"),
                  helper.make_node("Sigmoid", [p + "ar"], [p + "r"], name=p + "Sigmoid_1"),
                  helper.make_node("Mul", [p + "r", h], [p + "rh"], name=p + "mul"),
                  helper.make_node("Gemm", [p + "rh", "Uh", p + "xh"], [p + "ah"], name=p + "MatMul_2_Gemm"),
                  helper.make_node("Tanh", [p + "ah"], [p + "hh"], name=p + "Tanh"),
                  helper.make_node("Mul", [p + "z", h], [p + "zh"], name=p + "mul_1"),
                  helper.make_node("Sub", ["one", p + "z"], [p + "1z"], name=p + "sub"),
                  helper.make_node("Mul", [p + "1z", p + "hh"], [p + "zhh"], name=p + "mul_2"),
                  helper.make_node("Add", [p + "zh", p + "zhh"], [p + "h"], name=p + "add_2")]
        h = p + "h"
    nodes.append(helper.make_node("Gemm", [h, "fc_w", "fc_b"], ["logits"], name="dense"))
    inits["rowshape"] = np.array([1, FEATURES], np.int64)
    return build(nodes, {"input": [1, steps, FEATURES]}, ["logits"], inits, opset=13)


@pytest.fixture(scope="module")
def mfcc():
    x = np.load(shared_model_path("kws_dscnn", "mfcc_real_float.npy")).reshape(22, 49, 10)
    return ((x - x.mean((0, 1))) / x.std((0, 1))).astype(np.float32)   # Keras models see normalised MFCCs


def _lower(tmp_path, model, pipeline, xs):
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "calib.npy", xs[:, None])
    g = qcc.load_onnx(path)
    qcc.PassManager.parse(pipeline.format(data=tmp_path / "calib.npy")).run(g)
    return qcc.load_onnx(path), g


def _sqnr(ref, got):
    return 10 * math.log10(np.sum(ref.astype(np.float64) ** 2) / max(np.sum((ref - got) ** 2), 1e-30))


PIPELINES = {"int8": "int8-calibrated{{data={data}}}", "q7": "qmn{{bits=8,data={data}}}",
             "q15": "qmn{{bits=16,data={data}}}"}


@needs_gcc
@pytest.mark.parametrize("scheme, min_db", [("int8", 25.0), ("q7", 25.0), ("q15", 45.0)])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_keras_last_step_classifier(tmp_path, mfcc, kind, scheme, min_db):
    """Measured: LSTM int8 34.5, q7 32.5, q15 58.3 dB; GRU int8 32.8, q7 32.3, q15 62.8 dB."""
    fg, g = _lower(tmp_path, keras_style_model(kind), PIPELINES[scheme], mfcc)
    kinds = {op.opname for op in g.ops}
    assert "nn.slice" not in kinds and any(k.endswith(kind.lower()) for k in kinds)
    xs = mfcc[:, None]
    fl = np.concatenate([run_graph(fg, {"input": x[None]})["logits"] for x in mfcc])
    qt = np.concatenate([run_graph(g, {"input": x[None]})["logits"] for x in mfcc])
    print(f"{kind} {scheme}: {_sqnr(fl, qt):.1f} dB")
    assert _sqnr(fl, qt) > min_db
    _run_and_compare(tmp_path, g, {"input": xs[:6]}, "cortex-m4", "host")


@needs_gcc
@pytest.mark.parametrize("scheme, min_db", [("int8", 25.0), ("q15", 45.0)])
def test_gemm_with_run_time_bias_compiles(tmp_path, mfcc, scheme, min_db):
    """Measured: int8 33.9 dB, q15 68.5 dB (the first step's h0 @ U folds: const-fold)."""
    xs = mfcc[:, :12]
    fg, g = _lower(tmp_path, keras_gru_reset_before_model(), PIPELINES[scheme], xs)
    fl = np.concatenate([run_graph(fg, {"input": x[None]})["logits"] for x in xs])
    qt = np.concatenate([run_graph(g, {"input": x[None]})["logits"] for x in xs])
    print(f"{scheme}: {_sqnr(fl, qt):.1f} dB")
    assert _sqnr(fl, qt) > min_db
    _run_and_compare(tmp_path, g, {"input": xs[:4, None]}, "cortex-m4", "host")
