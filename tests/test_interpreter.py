"""The float reference interpreter: real models against onnxruntime, layouts, registry and batching."""
from __future__ import annotations

import numpy as np
import pytest

from qcc.errors import InputError
from qcc.frontend import load_onnx
from qcc.ir.graph import Graph
from qcc.sim.interpreter import KERNELS, MissingKernelError, kernel, run_batched, run_graph, run_graph_all
from qcc.ir.registry import OpDef, register_op, same_as_operand, is_registered
from qcc.ir.types import TensorType

from onnx_builders import rand, run_ort

RTOL, ATOL = 1e-4, 1e-5


@pytest.mark.parametrize("name", ["ic_resnet8", "kws_dscnn"])
def test_real_model_matches_onnxruntime(shared_models, name):
    path = shared_models / name / f"{name}_float.onnx"
    data = np.load(shared_models / name / "golden_float.npz")
    x = data["input"].astype(np.float32)  # 20 samples
    g = load_onnx(path)
    got = run_batched(g, {g.inputs[0].name: x[:, None]})[g.output_names[0]][:, 0]

    import onnx
    model = onnx.load(str(path))
    want = np.concatenate([run_ort(model, {g.inputs[0].name: xi[None]})[g.output_names[0]] for xi in x])
    err_ort = np.abs(got - want).max()
    err_npz = np.abs(got - data["onnx_output"].reshape(got.shape)).max()
    print(f"{name}: worst |qcc - onnxruntime| = {err_ort:.3g}, worst |qcc - npz onnx_output| = {err_npz:.3g}")
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got, data["onnx_output"].reshape(got.shape), rtol=RTOL, atol=ATOL)
    assert (got.argmax(-1) == want.argmax(-1)).all()


def _single(opname, x, attrs, *consts, result_shape=None):
    g = Graph("t")
    v = g.add_input("x", TensorType(x.shape))
    operands = [v] + [g.add_const(c, name=f"c{i}") for i, c in enumerate(consts)]
    op = g.add_op(opname, operands, attrs)
    g.set_outputs([op.result], ["y"])
    g.verify()
    return run_graph(g, {"x": x})["y"]


def _nhwc(a):
    return a.transpose(0, 2, 3, 1)


@pytest.mark.parametrize("attrs", [
    dict(strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2], group=1),
    dict(strides=[1, 1], pads=[1, 1, 1, 1], group=4),      # depthwise
    dict(strides=[2, 2], pads=[0, 1, 0, 1], group=2, act="relu6"),
    dict(act="leaky_relu", act_alpha=0.2),
])
def test_conv_nchw_and_nhwc_agree(attrs):
    x = rand(1, 4, 9, 8) * 4
    w = rand(8, 4 // attrs.get("group", 1), 3, 3, seed=1)
    b = rand(8, seed=2)
    nchw = _single("nn.conv2d", x, attrs, w, b)
    nhwc = _single("nn.conv2d", _nhwc(x).copy(), {**attrs, "layout": "NHWC"}, w.transpose(0, 2, 3, 1).copy(), b)
    np.testing.assert_allclose(_nhwc(nchw), nhwc, rtol=1e-5, atol=1e-5)
    if attrs.get("act") == "relu6":
        assert nchw.min() >= 0 and nchw.max() <= 6


@pytest.mark.parametrize("opname,attrs", [
    ("nn.maxpool", dict(kernel=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1], dilations=[1, 2], ceil_mode=True)),
    ("nn.avgpool", dict(kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=True)),
    ("nn.avgpool", dict(kernel=[2, 3], strides=[2, 2], ceil_mode=True)),
    ("nn.global_avgpool", {}),
    ("nn.global_maxpool", {}),
])
def test_pools_nchw_and_nhwc_agree(opname, attrs):
    x = rand(2, 3, 9, 8)
    nchw = _single(opname, x, attrs)
    nhwc = _single(opname, _nhwc(x).copy(), {**attrs, "layout": "NHWC"})
    np.testing.assert_allclose(_nhwc(nchw), nhwc, rtol=1e-6, atol=1e-6)


def test_dense_scale_shift_and_fused_activations():
    x, w, b = rand(3, 5), rand(4, 5, seed=1), rand(4, seed=2)
    y = _single("nn.dense", x, {"act": "relu"}, w, b)
    np.testing.assert_allclose(y, np.maximum(x @ w.T + b, 0), rtol=1e-6, atol=1e-6)
    y = _single("nn.add", x, {"act": "leaky_relu", "act_alpha": 0.1}, rand(5, seed=3))
    s = x + rand(5, seed=3)
    np.testing.assert_allclose(y, np.where(s >= 0, s, 0.1 * s), rtol=1e-6)
    x4 = rand(1, 3, 2, 2)
    y = _single("nn.scale_shift", x4, {"axis": 1}, np.float32([1, 2, 3]), np.float32([0, 1, -1]))
    np.testing.assert_allclose(y, x4 * np.float32([1, 2, 3]).reshape(1, 3, 1, 1)
                               + np.float32([0, 1, -1]).reshape(1, 3, 1, 1), rtol=1e-6)


def test_all_values_and_keep():
    x, w = rand(2, 5), rand(4, 5, seed=1)
    g = Graph("t")
    v = g.add_input("x", TensorType(x.shape))
    h = g.add_op("nn.dense", [v, g.add_const(w, name="w")], {}).result
    y = g.add_op("nn.relu", [h], {}).result
    g.set_outputs([y], ["out"])
    every = run_graph_all(g, {"x": x})
    assert set(every) >= {v, h, y}
    np.testing.assert_allclose(every[h], x @ w.T, rtol=1e-6)
    kept = run_graph(g, {"x": x}, keep=True)
    assert kept["out"] is kept[y] and h in kept


def test_missing_kernel_names_the_op():
    if not is_registered("test.no_kernel"):
        register_op(OpDef("test.no_kernel", operands=["x"], infer=same_as_operand(0)))
    g = Graph("t")
    v = g.add_input("x", TensorType((2,)))
    g.set_outputs([g.add_op("test.no_kernel", [v], {}, name="mystery").result])
    with pytest.raises(MissingKernelError, match="no kernel for 'test.no_kernel' op \"mystery\""):
        run_graph(g, {"x": np.zeros(2, np.float32)})
    kernel("test.no_kernel")(lambda op, x: x * 2)
    try:
        assert run_graph(g, {"x": np.ones(2, np.float32)})["output_0"].tolist() == [2, 2]
    finally:
        del KERNELS["test.no_kernel"]


def test_run_batched_and_input_errors():
    g = Graph("t")
    v = g.add_input("x", TensorType((1, 3)))
    g.set_outputs([g.add_op("nn.softmax", [v], {"axis": 1}).result], ["p"])
    xs = rand(5, 1, 3)
    out = run_batched(g, {"x": xs})["p"]
    assert out.shape == (5, 1, 3)
    np.testing.assert_allclose(out[3], run_graph(g, {"x": xs[3]})["p"])
    assert run_batched(g, [xs[0]])["p"].shape == (1, 3)
    with pytest.raises(InputError, match="stack them on an extra leading axis: \\[5, 1, 3\\]"):
        run_graph(g, {"x": rand(5, 3)})
    with pytest.raises(InputError, match="missing value for graph input 'x'"):
        run_graph(g, {})
    with pytest.raises(InputError, match="no input named y"):
        run_graph(g, {"x": xs[0], "y": xs[0]})
