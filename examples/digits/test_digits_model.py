"""Checks the committed digits example: graph interface, op set, data files, and
that onnxruntime reproduces exactly the test accuracy train.py recorded."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

HERE = Path(__file__).resolve().parent
METRICS = json.loads((HERE / "metrics.json").read_text())


def _dims(value_info):
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def model():
    return onnx.load(str(HERE / "digits.onnx"))


def test_model_is_valid_opset13_batch1(model):
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [13]
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert (inp.name, _dims(inp)) == (METRICS["input"]["name"], [1, 8, 8, 1])
    assert (out.name, _dims(out)) == (METRICS["output"]["name"], [1, 10])


def test_graph_keeps_layout_transpose_and_batchnorm(model):
    ops = [n.op_type for n in model.graph.node]
    # The NHWC input feeds a Transpose to NCHW (to-nhwc removes it), and BN is
    # still a node so fold-batchnorm has work to do.
    first = model.graph.node[0]
    assert first.op_type == "Transpose" and list(first.input) == ["input"]
    assert list(first.attribute[0].ints) == [0, 3, 1, 2]
    assert ops.count("BatchNormalization") == 2
    assert ops.count("Conv") == 2 and ops.count("Relu") == 2
    assert {"MaxPool", "Gemm"} <= set(ops)
    assert sorted(set(ops)) == METRICS["onnx_ops"]
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)


def test_data_files_match_graph_input():
    calib = np.load(HERE / "calib.npz")
    test = np.load(HERE / "test.npz")
    name = METRICS["input"]["name"]
    assert calib[name].shape == (METRICS["calib_samples"], 1, 8, 8, 1)
    assert test[name].shape == (METRICS["test_samples"], 1, 8, 8, 1)
    assert test["labels"].shape == (METRICS["test_samples"],)
    assert test["labels"].dtype == np.int64
    for x in (calib[name], test[name]):
        assert x.dtype == np.float32
        # pixel / 16 with pixel in 0..16: exact multiples of 1/16 in [0, 1]
        assert np.array_equal(x * 16, np.round(x * 16)) and x.min() >= 0 and x.max() <= 1


def test_float_accuracy_matches_recorded():
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(HERE / "digits.onnx"), providers=["CPUExecutionProvider"])
    test = np.load(HERE / "test.npz")
    name = METRICS["input"]["name"]
    predictions = np.array([sess.run(None, {name: x})[0].argmax() for x in test[name]])
    correct = int((predictions == test["labels"]).sum())
    assert correct == METRICS["test_correct"]
    assert correct / len(predictions) >= 0.97
