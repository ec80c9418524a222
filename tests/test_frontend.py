"""The ONNX frontend: every lifted op and attribute variant against onnxruntime, names, and errors."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import qcc
from qcc.errors import InputError, UnsupportedModelError
from qcc.frontend import load_onnx
from qcc.frontend.lifters import resolve_pads
from qcc.sim.interpreter import run_graph
from qcc.frontend.loader import load_model

from onnx_builders import build, check_against_ort, rand

N = helper.make_node
X4 = {"x": [1, 4, 9, 10]}


def _conv_case(opset=13, **attrs):
    group = attrs.get("group", 1)
    w = rand(6, 4 // group, 3, 3, seed=1)
    b = rand(6, seed=2)
    return build([N("Conv", ["x", "w", "b"], ["y"], **attrs)], X4, ["y"], {"w": w, "b": b}, opset)


def _pool_case(op, **attrs):
    return build([N(op, ["x"], ["y"], **attrs)], X4, ["y"])


CASES = {
    "conv_pads": _conv_case(pads=[1, 0, 2, 1]),
    "conv_strides_dil": _conv_case(strides=[2, 1], dilations=[2, 3], pads=[2, 3, 2, 3]),
    "conv_same_upper": _conv_case(auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv_same_lower": _conv_case(auto_pad="SAME_LOWER", strides=[2, 2]),
    "conv_valid": _conv_case(auto_pad="VALID", strides=[2, 3]),
    "conv_grouped": _conv_case(group=2, pads=[1, 1, 1, 1]),
    "conv_depthwise": build([N("Conv", ["x", "w"], ["y"], group=4, pads=[1, 1, 1, 1])], X4, ["y"],
                            {"w": rand(8, 1, 3, 3, seed=3)}),
    "conv_opset11": _conv_case(opset=11, auto_pad="SAME_UPPER"),
    "gemm": build([N("Gemm", ["a", "b", "c"], ["y"], alpha=0.5, beta=2.0, transA=1, transB=1)],
                  {"a": [5, 3]}, ["y"], {"b": rand(4, 5), "c": rand(4)}),
    "gemm_no_c": build([N("Gemm", ["a", "b"], ["y"])], {"a": [3, 5]}, ["y"], {"b": rand(5, 4)}),
    "matmul_add": build([N("MatMul", ["a", "w"], ["m"]), N("Add", ["m", "b"], ["y"])],
                        {"a": [2, 3, 5]}, ["y"], {"w": rand(5, 4), "b": rand(4)}),
    "arith": build([N("Sub", ["x", "c"], ["s"]), N("Mul", ["s", "x"], ["m"]), N("Div", ["m", "d"], ["y"])],
                   X4, ["y"], {"c": rand(1, 4, 1, 1), "d": np.full((10,), 1.7, np.float32)}),
    "batchnorm": build([N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)], X4, ["y"],
                       {"s": rand(4), "b": rand(4, seed=1), "m": rand(4, seed=2),
                        "v": np.abs(rand(4, seed=3)) + 0.1}),
    "activations": build([N("Relu", ["x"], ["a"]), N("LeakyRelu", ["x"], ["b"], alpha=0.3),
                          N("Sigmoid", ["x"], ["c"]), N("Tanh", ["x"], ["d"]),
                          N("HardSigmoid", ["x"], ["e"], alpha=0.3, beta=0.4), N("HardSwish", ["x"], ["f"]),
                          N("Identity", ["x"], ["g"]), N("Dropout", ["x"], ["h"])],
                         X4, list("abcdefgh"), opset=14),
    "clip_both": build([N("Clip", ["x", "lo", "hi"], ["y"])], X4, ["y"],
                       {"lo": np.float32(-0.5), "hi": np.float32(0.7)}, opset=13),
    "clip_min_only": build([N("Clip", ["x", "lo"], ["y"])], X4, ["y"], {"lo": np.float32(0)}, opset=11),
    "clip_max_only": build([N("Clip", ["x", "", "hi"], ["y"])], X4, ["y"], {"hi": np.float32(6)}, opset=12),
    "clip_none": build([N("Clip", ["x"], ["y"])], X4, ["y"]),
    "clip_constant_node": build([N("Constant", [], ["six"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [0.5])),
                                 N("Clip", ["x", "", "six"], ["y"])], X4, ["y"]),
    "softmax13": build([N("Softmax", ["x"], ["y"], axis=1)], X4, ["y"], opset=13),
    "softmax11_coerced": build([N("Softmax", ["x"], ["y"], axis=1)], X4, ["y"], opset=11),
    "softmax11_last": build([N("Softmax", ["x"], ["y"])], {"x": [3, 7]}, ["y"], opset=11),
    "maxpool": _pool_case("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "maxpool_ceil_dil": _pool_case("MaxPool", kernel_shape=[2, 3], strides=[2, 2], dilations=[2, 1], ceil_mode=1),
    "maxpool_same_lower": _pool_case("MaxPool", kernel_shape=[3, 2], strides=[2, 3], auto_pad="SAME_LOWER"),
    "avgpool_include_pad": _pool_case("AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                      count_include_pad=1),
    "avgpool_exclude_pad": _pool_case("AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "avgpool_ceil_include": _pool_case("AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 0],
                                       ceil_mode=1, count_include_pad=1),
    "avgpool_ceil_exclude": _pool_case("AveragePool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "avgpool_same_upper": _pool_case("AveragePool", kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    "global_pools": build([N("GlobalAveragePool", ["x"], ["a"]), N("GlobalMaxPool", ["x"], ["b"])], X4, ["a", "b"]),
    "reduce_mean13": build([N("ReduceMean", ["x"], ["y"], axes=[2, -1], keepdims=0)], X4, ["y"], opset=13),
    "reduce_mean18": build([N("ReduceMean", ["x", "ax"], ["y"])], X4, ["y"], {"ax": np.array([1], np.int64)},
                           opset=18),
    "reduce_mean18_all": build([N("ReduceMean", ["x"], ["y"], keepdims=0)], X4, ["y"], opset=18),
    "reshape_flatten": build([N("Reshape", ["x", "s"], ["r"]), N("Flatten", ["r"], ["y"], axis=-1)], X4, ["y"],
                             {"s": np.array([0, -1, 5], np.int64)}),
    "reshape_shape_chain": build([N("Shape", ["x"], ["sh"]), N("Gather", ["sh", "i"], ["n"], axis=0),
                                  N("Concat", ["n", "m1"], ["t"], axis=0), N("Reshape", ["x", "t"], ["y"])],
                                 X4, ["y"], {"i": np.array([0], np.int64), "m1": np.array([-1], np.int64)},
                                 out_shapes={"y": ["N", "M"]}),  # ONNX cannot infer it; qcc evaluates the chain
    "squeeze_unsqueeze11": build([N("Unsqueeze", ["x"], ["u"], axes=[0, -1]), N("Squeeze", ["u"], ["y"], axes=[0])],
                                 X4, ["y"], opset=11),
    "squeeze_unsqueeze13": build([N("Unsqueeze", ["x", "a"], ["u"]), N("Squeeze", ["u"], ["y"])],
                                 X4, ["y"], {"a": np.array([0, 5], np.int64)}, opset=13),
    "transpose_concat": build([N("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), N("Transpose", ["x"], ["d"]),
                               N("Concat", ["t", "t"], ["y"], axis=-1)], X4, ["y", "d"]),
    "pad11": build([N("Pad", ["x", "p", "v"], ["y"])], X4, ["y"],
                   {"p": np.array([0, 0, 1, 2, 0, 0, 3, 0], np.int64), "v": np.float32(1.5)}, opset=11),
    "pad18_axes": build([N("Pad", ["x", "p", "", "ax"], ["y"])], X4, ["y"],
                        {"p": np.array([1, 2, -1, 0], np.int64), "ax": np.array([-1, 2], np.int64)}, opset=18),
    "slice": build([N("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], X4, ["y"],
                   {"st": np.array([-1, 1], np.int64), "en": np.array([-100, 8], np.int64),
                    "ax": np.array([3, 2], np.int64), "sp": np.array([-2, 3], np.int64)}),
    "cast_roundtrip": build([N("Cast", ["x"], ["i"], to=TensorProto.INT32), N("Cast", ["i"], ["y"], to=TensorProto.FLOAT)],
                            X4, ["y"]),
    "shape_start_end": build([N("Shape", ["x"], ["y"], start=1, end=-1)], X4, ["y"], opset=15,
                             out_types={"y": TensorProto.INT64}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_onnxruntime(name):
    model = CASES[name]
    feeds = {i.name: rand(*[d.dim_value for d in i.type.tensor_type.shape.dim]) * 3 for i in model.graph.input}
    check_against_ort(model, feeds)


def test_resolve_pads_modes():
    # H: 10 -> 5 outputs needs 1 pad pixel; W: 9 -> 5 needs 2 (with dilation 2 and k=2: 2 as well).
    assert resolve_pads({"auto_pad": "SAME_UPPER"}, [10, 9], [3, 3], [2, 2], [1, 1]) == [0, 1, 1, 1]
    assert resolve_pads({"auto_pad": "SAME_LOWER"}, [10, 9], [3, 3], [2, 2], [1, 1]) == [1, 1, 0, 1]
    assert resolve_pads({"auto_pad": "SAME_UPPER"}, [7, 7], [2, 2], [1, 1], [2, 2]) == [1, 1, 1, 1]
    assert resolve_pads({"auto_pad": "VALID", "pads": [1, 1, 1, 1]}, [9, 10], [3, 3], [1, 1], [1, 1]) == [0] * 4
    assert resolve_pads({"pads": [1, 2, 3, 4]}, [9, 10], [3, 3], [1, 1], [1, 1]) == [1, 2, 3, 4]


def test_lifted_forms_and_names():
    g = load_onnx(CASES["conv_same_upper"])
    (conv,) = g.find("nn.conv2d")
    assert conv.name == "Conv_0"  # unnamed ONNX node: op type and node index
    assert conv.attrs["pads"] == [1, 0, 1, 1] and conv.attrs["layout"] == "NCHW"
    assert [v.name for v in conv.operands] == ["x", "w", "b"]
    assert {op.name for op in g.find("qcc.const")} == {"w", "b"}
    assert conv.result.name == "y" and g.output_names == ["y"]

    g = load_onnx(CASES["clip_constant_node"])
    assert g.find("nn.clip")[0].attrs == {"min": -np.inf, "max": 0.5}
    assert not g.find("qcc.const")  # the bound became an attribute; no dead constant

    g = load_onnx(CASES["reshape_flatten"])
    assert g.find("nn.reshape")[0].attrs["shape"] == [1, 72, 5]
    assert len(g.find("nn.reshape")[0].operands) == 1

    g = load_onnx(CASES["reshape_shape_chain"])
    (r,) = g.find("nn.reshape")
    assert r.attrs["shape"] == [] and len(r.operands) == 2 and r.result.shape == (1, 360)

    g = load_onnx(CASES["softmax11_coerced"])
    assert [op.opname for op in g.ops] == ["nn.reshape", "nn.softmax", "nn.reshape"]
    assert g.find("nn.softmax")[0].attrs["axis"] == 1


def test_gemm_and_matmul_lift_to_their_own_ops():
    g = load_onnx(CASES["gemm"])
    assert g.find("nn.gemm")[0].attrs == {"alpha": 0.5, "beta": 2.0, "trans_a": True, "trans_b": True}
    assert [op.opname for op in load_onnx(CASES["matmul_add"]).ops if op.opname != "qcc.const"] == \
        ["nn.matmul", "nn.add"]


def test_named_nodes_keep_their_names():
    m = build([N("Relu", ["x"], ["y"], name="stem/relu"), N("Relu", ["y"], ["z"])], X4, ["z"])
    assert [op.name for op in load_onnx(m).ops] == ["stem/relu", "Relu_1"]


def test_all_unsupported_nodes_reported_at_once():
    m = build([N("Relu", ["x"], ["a"]), N("Erf", ["a"], ["b"], name="erf1"), N("Pad", ["b", "p"], ["c"], mode="wrap"),
               N("Conv", ["c", "w"], ["d"], name="conv3d"), N("LpNormalization", ["d"], ["y"])],
              {"x": [1, 3, 4, 4, 4]}, ["y"], {"p": np.zeros(10, np.int64), "w": rand(2, 3, 3, 3, 3)})
    with pytest.raises(UnsupportedModelError) as e:
        load_onnx(m)
    msg = str(e.value)
    assert "4 unsupported nodes" in msg
    for part in ('"erf1" (Erf)', "(Pad): Pad mode 'wrap'", '"conv3d" (Conv)', "(LpNormalization)"):
        assert part in msg
    assert e.value.exit_code == 2


def test_dynamic_batch_becomes_one_and_other_dims_need_a_shape():
    m = build([N("Relu", ["x"], ["y"])], {"x": ["N", 49, 10, 1]}, ["y"])
    g = load_onnx(m)
    assert g.inputs[0].shape == (1, 49, 10, 1) and g.outputs[0].shape == (1, 49, 10, 1)

    m = build([N("Relu", ["x"], ["y"])], {"x": ["N", "T", 10, 1]}, ["y"])
    with pytest.raises(InputError, match=r"input 'x' has a dynamic dimension.*--input-shape x=1x49x10x1"):
        load_onnx(m)
    g = load_onnx(m, input_shapes={"x": (2, 49, 10, 1)})
    assert g.outputs[0].shape == (2, 49, 10, 1)
    with pytest.raises(InputError, match="inputs are x"):
        load_onnx(m, input_shapes={"nope": (1,)})


def test_malformed_files_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage\xff" * 10)
    with pytest.raises(InputError, match="bad.onnx: not a readable ONNX model"):
        load_onnx(bad)
    with pytest.raises(InputError, match="no such file"):
        load_onnx(tmp_path / "missing.onnx")
    broken = build([N("Relu", ["undefined"], ["y"])], X4, ["y"])
    with pytest.raises(InputError, match="checker"):
        load_onnx(broken)
    with pytest.raises(UnsupportedModelError, match="opset 9"):
        load_onnx(build([N("Relu", ["x"], ["y"])], X4, ["y"], opset=9))


def test_loader_dispatches_on_suffix(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(CASES["softmax13"], str(path))
    assert qcc.load_model(path).find("nn.softmax")
    with pytest.raises(InputError, match="unknown model format '.tflite'"):
        load_model(tmp_path / "m.tflite")


def test_loader_reads_qir(tmp_path):
    printer = pytest.importorskip("qcc.ir.printer")
    pytest.importorskip("qcc.ir.parser")
    g = load_onnx(CASES["maxpool"])
    path = tmp_path / "m.qir"
    path.write_text(printer.print_graph(g))
    g2 = load_model(path)
    x = rand(1, 4, 9, 10)
    np.testing.assert_array_equal(run_graph(g, {"x": x})["y"], run_graph(g2, {"x": x})[g2.output_names[0]])


def test_shared_models_lift(shared_models):
    for name, ops in [("ic_resnet8", {"nn.conv2d": 9, "nn.add": 4, "nn.matmul": 1, "nn.softmax": 1}),
                      ("kws_dscnn", {"nn.conv2d": 9, "nn.avgpool": 1, "nn.reshape": 2})]:
        g = load_onnx(shared_models / name / f"{name}_float.onnx")
        for opname, count in ops.items():
            assert len(g.find(opname)) == count, (name, opname)
    depthwise = [op for op in g.find("nn.conv2d") if op.attrs["group"] > 1]
    assert len(depthwise) == 4 and all(op.attrs["group"] == 64 for op in depthwise)


@pytest.mark.parametrize("name", sorted(CASES))
def test_lifted_graph_round_trips_through_text(name):
    printer = pytest.importorskip("qcc.ir.printer")
    parser = pytest.importorskip("qcc.ir.parser")
    g = load_onnx(CASES[name])
    text = printer.print_graph(g, elide_over=None)
    g2 = parser.parse(text)
    assert printer.print_graph(g2, elide_over=None) == text
    feeds = {v.name: rand(*v.shape) for v in g.inputs}
    for k, want in run_graph(g, feeds).items():
        np.testing.assert_array_equal(run_graph(g2, feeds)[k], want)
