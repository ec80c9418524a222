"""Numeric and structural tests of the float graph passes fold-batchnorm, fuse-activation, to-nhwc.

Every rewrite must leave the float interpreter's outputs unchanged (up to
float32 rounding of the folded constants): each golden case, small ONNX
models built with onnx.helper, and the real models with the pipeline
``fold-batchnorm,canonicalize,fuse-activation,to-nhwc``.
"""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcc
from conftest import REPO_ROOT, shared_model_path
from qcc.tools.diagnostics import split_input
from qcc.sim.interpreter import run_graph
from qcc.ir.parser import parse
from qcc.transforms.passmanager import PassManager

PIPELINE = "fold-batchnorm,canonicalize,fuse-activation,to-nhwc"
RTOL, ATOL = 1e-5, 1e-5


def random_inputs(g, seed=0):
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal(v.shape).astype(v.type.np_dtype) for v in g.inputs}


def run_and_compare(g, pipeline, feeds_list, rtol=RTOL, atol=ATOL):
    """Run ``pipeline`` on ``g``; assert outputs are unchanged on every feed; return (stats, max error)."""
    before = [run_graph(g, feeds) for feeds in feeds_list]
    report = PassManager.parse(pipeline).run(g)
    worst = 0.0
    for feeds, ref in zip(feeds_list, before):
        out = run_graph(g, feeds)
        for name, want in ref.items():
            np.testing.assert_allclose(out[name], want, rtol=rtol, atol=atol, err_msg=f"output {name}")
            worst = max(worst, float(np.max(np.abs(out[name].astype(np.float64) - want))))
    return report, worst


def last_stats(report):
    return list(report.stats().values())[-1]


def op_counts(g):
    return collections.Counter(op.opname for op in g.ops)


# ---------------------------------------------------------------- golden cases keep their numbers
GOLDEN = {"fold-batchnorm": "fold-batchnorm.qir", "fuse-activation": "fuse-activation.qir", "to-nhwc": "to-nhwc.qir"}


def _golden_cases():
    for pass_name, file in GOLDEN.items():
        path = REPO_ROOT / "tests" / "golden" / file
        for i, case in enumerate(split_input(path.read_text(), split=True)):
            yield pytest.param(pass_name, case.text, id=f"{pass_name}#{i}")


@pytest.mark.parametrize("pass_name, text", list(_golden_cases()))
def test_golden_case_numerics(pass_name, text):
    g = parse(text, filename=pass_name)
    run_and_compare(g, pass_name, [random_inputs(g, s) for s in range(3)], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- small ONNX models
def make_model(nodes, inputs, outputs, inits):
    arrays = {n: np.asarray(a) for n, a in inits.items()}
    arrays = {n: a.astype(np.float32) if a.dtype.kind == "f" else a for n, a in arrays.items()}
    graph = helper.make_graph(nodes, "m", inputs, outputs,
                              [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def bn_params(prefix, c, rng):
    return {f"{prefix}.g": rng.uniform(0.5, 2, c), f"{prefix}.b": rng.standard_normal(c),
            f"{prefix}.m": rng.standard_normal(c), f"{prefix}.v": rng.uniform(0.1, 2, c)}


def bn_node(prefix, x, y, eps=1e-3):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}.{k}" for k in "gbmv"], [y], epsilon=eps)


def conv_bn_model(rng):
    """NHWC input -> Transpose -> Conv(bias) BN Relu -> depthwise Conv(no bias) BN Clip(0,6)
    -> Conv BN LeakyRelu -> Add (residual) Relu -> MaxPool -> Flatten (H, W > 1) -> Gemm BN."""
    inits = {"w1": rng.standard_normal((4, 3, 3, 3)), "b1": rng.standard_normal(4),
             "w2": rng.standard_normal((4, 1, 3, 3)), "w3": rng.standard_normal((4, 4, 1, 1)),
             "six": np.float32(6.0), "zero": np.float32(0.0),
             "fc": rng.standard_normal((5, 16)), "fcb": rng.standard_normal(5)}
    for p in ("bn1", "bn2", "bn3"):
        inits.update(bn_params(p, 4, rng))
    inits.update(bn_params("bn4", 5, rng))
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        bn_node("bn1", "c1", "n1"), helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=4),
        bn_node("bn2", "c2", "n2"), helper.make_node("Clip", ["n2", "zero", "six"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"]),
        bn_node("bn3", "c3", "n3"), helper.make_node("LeakyRelu", ["n3"], ["r3"], alpha=0.1),
        helper.make_node("Add", ["r1", "r3"], ["a"]), helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("MaxPool", ["ra"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["g"], transB=1),
        bn_node("bn4", "g", "y"),
    ]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 3])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)


def test_conv_bn_model_full_pipeline():
    rng = np.random.default_rng(1)
    g = qcc.load_onnx(conv_bn_model(rng))
    assert op_counts(g)["nn.batchnorm"] == 4
    report, err = run_and_compare(g, PIPELINE, [random_inputs(g, s) for s in range(4)])
    stats = report.stats()
    assert stats["0:fold-batchnorm"]["applied.FoldBatchNormIntoLayer"] == 4
    assert stats["2:fuse-activation"]["applied.FuseActivationIntoProducer"] == 4  # relu, relu6, leaky, add+relu
    counts = op_counts(g)
    for gone in ("nn.batchnorm", "nn.relu", "nn.clip", "nn.leaky_relu", "nn.transpose", "nn.scale_shift"):
        assert counts[gone] == 0, (gone, counts)
    acts = sorted(op.attrs["act"] for op in g.ops if "act" in op.attrs)
    assert acts == ["leaky_relu", "none", "relu", "relu", "relu6"]
    assert all(op.attrs["layout"] == "NHWC" for op in g.find("nn.conv2d") + g.find("nn.maxpool"))
    assert last_stats(report)["applied.SinkTransposeThroughFlatten"] == 1  # the 2x2 flatten permuted fc


def test_fold_batchnorm_failures_explain_themselves():
    """A batchnorm whose conv has another user stays as scale_shift, and says why."""
    rng = np.random.default_rng(2)
    inits = {"w": rng.standard_normal((3, 2, 1, 1)), **bn_params("bn", 3, rng)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), bn_node("bn", "c", "n"),
             helper.make_node("Add", ["c", "n"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 3, 3])], inits)
    g = qcc.load_onnx(model)
    report, _ = run_and_compare(g, "fold-batchnorm", [random_inputs(g)])
    stats = last_stats(report)
    assert stats.get("applied.FoldBatchNormIntoLayer", 0) == 0
    assert stats["applied.BatchNormToScaleShift"] == 1
    reasons = [f.reason for f in stats["match_failures"]]
    assert "the nn.conv2d result has other users" in reasons


def test_fuse_activation_keeps_unfusable():
    rng = np.random.default_rng(3)
    inits = {"w": rng.standard_normal((2, 2)), "lo": np.float32(-1), "hi": np.float32(1)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Clip", ["m", "lo", "hi"], ["y"]),
             helper.make_node("Relu", ["m"], ["z"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2]),
                        helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2])], inits)
    g = qcc.load_onnx(model)
    report, _ = run_and_compare(g, "canonicalize,fuse-activation", [random_inputs(g)])
    assert report.modified  # canonicalize made the dense
    assert op_counts(g)["nn.clip"] == 1 and op_counts(g)["nn.relu"] == 1
    reasons = {f.reason for f in last_stats(report)["match_failures"]}
    assert any("clip bounds [-1, 1]" in r for r in reasons)
    assert "the nn.dense result has other users" in reasons


def nchw_model(rng):
    """NCHW input and output, per-channel Add of a [C,1,1] constant, Concat, Softmax(axis=1), Pad,
    ReduceMean: every op converts; only the two boundary transposes stay."""
    inits = {"w": rng.standard_normal((3, 2, 3, 3)), "c": rng.standard_normal((3, 1, 1)),
             "pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "c"], ["a"]),
        helper.make_node("Concat", ["a", "c1"], ["cat"], axis=1),
        helper.make_node("Softmax", ["cat"], ["s"], axis=1),
        helper.make_node("Pad", ["s", "pads"], ["p"]),
        helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[2, 2]),
        helper.make_node("ReduceMean", ["p"], ["z"], axes=[2, 3], keepdims=0),
    ]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 7, 6]),
                        helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 6])], inits)
    return model


def test_to_nhwc_keeps_boundary_transposes():
    g = qcc.load_onnx(nchw_model(np.random.default_rng(4)))
    report, _ = run_and_compare(g, "to-nhwc", [random_inputs(g, s) for s in range(3)])
    stats = last_stats(report)
    transposes = g.find("nn.transpose")
    assert sorted(t.attrs["perm"] for t in transposes) == [[0, 2, 3, 1], [0, 3, 1, 2]]
    assert stats["transposes_left"] == 2
    assert any("graph input 'x'" in k for k in stats["kept_transposes"])
    assert any("graph output" in k for k in stats["kept_transposes"])
    add = g.find("nn.add")[0]
    assert add.operands[1].shape == (3,)  # the [3, 1, 1] bias became per-channel on the last axis
    assert g.find("nn.softmax")[0].attrs["axis"] == 3 and g.find("nn.concat")[0].attrs["axis"] == 3
    assert g.find("nn.reduce_mean")[0].attrs["axes"] == [1, 2]


def test_to_nhwc_is_idempotent():
    g = qcc.load_onnx(conv_bn_model(np.random.default_rng(5)))
    PassManager.parse(PIPELINE).run(g)
    report = PassManager.parse("to-nhwc").run(g)
    assert not report.modified


# ---------------------------------------------------------------- real models
def _digits():
    path = REPO_ROOT / "examples" / "digits" / "digits.onnx"
    data = np.load(REPO_ROOT / "examples" / "digits" / "test.npz")
    return path, data["input"][:4]


def _shared(folder, file):
    def load():
        path = shared_model_path(folder, file)
        return path, np.load(path.parent / "golden_float.npz")["input"][:3]
    return load


REAL_MODELS = {
    "ic_resnet8": _shared("ic_resnet8", "ic_resnet8_float.onnx"),
    "kws_dscnn": _shared("kws_dscnn", "kws_dscnn_float.onnx"),
    "digits": _digits,
}


@pytest.mark.parametrize("model", list(REAL_MODELS))
def test_real_model_pipeline(model):
    path, samples = REAL_MODELS[model]()
    g = qcc.load_onnx(path)
    name, shape = g.inputs[0].name, g.inputs[0].shape
    feeds = [{name: s.reshape(shape).astype(np.float32)} for s in samples]
    report, err = run_and_compare(g, PIPELINE, feeds, rtol=1e-4, atol=1e-5)
    counts = op_counts(g)
    for gone in ("nn.relu", "nn.transpose", "nn.batchnorm", "nn.scale_shift", "nn.matmul", "nn.gemm"):
        assert counts[gone] == 0, f"{model}: {gone} remains ({dict(counts)})"
    assert all(op.attrs["layout"] == "NHWC" for op in g.ops if "layout" in op.attrs)
    assert last_stats(report)["transposes_left"] == 0


@pytest.mark.parametrize("layer", ["MatMul", "Gemm", "Gemm_transB"])
def test_to_nhwc_permutes_flattened_weights_of_matmul_and_gemm(layer):
    """to-nhwc alone (no canonicalize): a [1, 3, 2, 2] flatten feeding MatMul / Gemm keeps its numbers."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((12, 5))
    inits = {"w": w.T if layer == "Gemm_transB" else w}
    node = (helper.make_node("MatMul", ["f", "w"], ["y"]) if layer == "MatMul" else
            helper.make_node("Gemm", ["f", "w"], ["y"], transB=int(layer == "Gemm_transB")))
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("MaxPool", ["t"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]), node]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    g = qcc.load_onnx(model)
    report, _ = run_and_compare(g, "to-nhwc", [random_inputs(g, s) for s in range(3)])
    assert op_counts(g)["nn.transpose"] == 0
    assert last_stats(report)["applied.SinkTransposeThroughFlatten"] == 1


def test_to_nhwc_concat_with_constant_keeps_its_rank():
    text = """qcc.graph @f(%x: tensor<1x2x2x1xf32>) -> (tensor<1x2x2x2xf32> {name = "y"}) {
  %0 = nn.transpose %x {perm = [0, 3, 1, 2]} : tensor<1x1x2x2xf32>
  %c = qcc.const dense<[1.0, 2.0, 3.0, 4.0]> : tensor<1x1x2x2xf32>
  %1 = nn.concat %0, %c {axis = 1} : tensor<1x2x2x2xf32>
  %2 = nn.sub %c, %1 : tensor<1x2x2x2xf32>
  %3 = nn.transpose %2 {perm = [0, 2, 3, 1]} : tensor<1x2x2x2xf32>
  qcc.return %3 : tensor<1x2x2x2xf32>
}
"""
    g = parse(text, filename="concat")
    run_and_compare(g, "to-nhwc", [random_inputs(g, s) for s in range(2)], rtol=0, atol=0)
    assert op_counts(g)["nn.transpose"] == 0
    assert g.find("nn.concat")[0].attrs["axis"] == 3
