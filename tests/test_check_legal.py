"""check-legal: every op a scheme cannot lower is refused before calibration, in the model's terms.

The tables in passes/check_legal.py are checked against the lowering passes'
handlers, so a kernel added or removed without updating the table fails here.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
import pytest
from onnx import helper

import qcc
from qcc.ir.registry import registered_ops
from qcc.passes.check_legal import INT8_LEGAL, NEVER, QMN_LEGAL, SHAPE_OPS, why_illegal
from qcc.passes.lower_qdq import LowerQuantizedIsland
from qcc.passes.lower_quantized import LowerQuantized
from qcc.tools.compile import main as qcc_main
from onnx_builders import build, rand

# Ops const-fold or the import's shape logic removes: never reach a lowering with a run-time operand.
SHAPE_COMPUTATION = {"nn.cast", "nn.slice", "nn.shape"}
# Passed through by lower-quantized without a handler (canonicalize removes them in int8).
PASS_THROUGH = {"nn.identity", "nn.dropout"}
# Lowered by quantize-affine (integer shape ops, the integer concat) or as lower-qdq's clamp.
INT8_OUTSIDE_LOWER_QDQ = set(SHAPE_OPS) | {"nn.relu", "nn.clip", "nn.gather"} | {"nn.lstm", "nn.gru"}  # quantize-recurrent


def _handlers(cls) -> set:
    return {"nn." + name[4:] for name in dir(cls) if name.startswith("_nn_")}


def test_every_float_op_is_classified_for_both_schemes():
    float_ops = {n for n in registered_ops() if n.startswith("nn.")}
    for table in (QMN_LEGAL, INT8_LEGAL):
        unknown = float_ops - set(table) - set(NEVER) - SHAPE_COMPUTATION
        assert not unknown, f"float ops without a legality entry: {sorted(unknown)}"


def test_qmn_table_matches_lower_quantized_handlers():
    handlers = _handlers(LowerQuantized)
    legal = set(QMN_LEGAL) - PASS_THROUGH
    assert legal - handlers == set(), "legal in qmn but lower-quantized has no handler"
    # nn.div has a handler that only explains the refusal (division by a tensor)
    assert handlers - legal == {"nn.div"}, "lower-quantized lowers ops the qmn table refuses"


def test_int8_table_matches_lower_qdq_handlers():
    handlers = _handlers(LowerQuantizedIsland)
    legal = set(INT8_LEGAL) - INT8_OUTSIDE_LOWER_QDQ
    assert legal - handlers == set(), "legal in int8 but lower-qdq has no handler"
    # Handlers for QDQ models only: in a float model canonicalize has made every constant matmul/gemm a
    # dense, fold-batchnorm has folded what folds, and quantize-affine has moved concat/pad to the integers.
    extra = handlers - legal - {"nn.matmul", "nn.gemm", "nn.scale_shift", "nn.concat", "nn.pad"}
    assert not extra, f"lower-qdq now lowers {sorted(extra)}: add them to INT8_LEGAL"


# One small NHWC graph per legal op class: the whole pipeline (calibration included) must lower it.
LEGAL_GRAPHS = {
    "conv_pool_dense_softmax": """
qcc.graph @g(%x: tensor<1x6x6x2xf32>) -> (tensor<1x3xf32> {name = "y"}) {
  %w = qcc.const dense<[0.5, -1.0, 0.25, 0.75, -0.5, 1.0, 0.3, -0.2]> : tensor<4x1x1x2xf32>
  %0 = nn.conv2d %x, %w {act = "relu6", layout = "NHWC"} : tensor<1x6x6x4xf32>
  %1 = nn.maxpool %0 {kernel = [2, 2], layout = "NHWC", strides = [2, 2]} : tensor<1x3x3x4xf32>
  %2 = nn.avgpool %1 {kernel = [3, 3], layout = "NHWC", pads = [1, 1, 1, 1], count_include_pad = true, ceil_mode = true, strides = [2, 2]} : tensor<1x2x2x4xf32>
  %3 = nn.global_avgpool %2 {layout = "NHWC"} : tensor<1x1x1x4xf32>
  %4 = nn.reshape %3 {shape = [1, 4]} : tensor<1x4xf32>
  %v = qcc.const dense<[0.5, -1.0, 0.25, 0.75, -0.5, 1.0, 0.3, -0.2, 0.1, 0.2, 0.3, 0.4]> : tensor<3x4xf32>
  %5 = nn.dense %4, %v : tensor<1x3xf32>
  %6 = nn.softmax %5 {axis = 1} : tensor<1x3xf32>
  qcc.return %6 : tensor<1x3xf32>
}""",
    "residual_concat_pad_relu": """
qcc.graph @g(%x: tensor<1x4x4x2xf32>) -> (tensor<1x6x6x4xf32> {name = "y"}) {
  %w = qcc.const dense<[0.5, -1.0, 0.25, 0.75]> : tensor<2x1x1x2xf32>
  %0 = nn.conv2d %x, %w {layout = "NHWC"} : tensor<1x4x4x2xf32>
  %1 = nn.conv2d %0, %w {layout = "NHWC"} : tensor<1x4x4x2xf32>
  %2 = nn.add %0, %1 : tensor<1x4x4x2xf32>
  %3 = nn.relu %2 : tensor<1x4x4x2xf32>
  %4 = nn.concat %3, %0 {axis = 3} : tensor<1x4x4x4xf32>
  %5 = nn.pad %4 {pads = [0, 1, 1, 0, 0, 1, 1, 0]} : tensor<1x6x6x4xf32>
  qcc.return %5 : tensor<1x6x6x4xf32>
}""",
}


@pytest.mark.parametrize("scheme", ["qmn", "int8"])
@pytest.mark.parametrize("case", sorted(LEGAL_GRAPHS))
def test_what_check_legal_accepts_lowers_completely(case, scheme, tmp_path):
    from qcc.ir.parser import parse
    from qcc.tools.compile import is_lowered
    g = parse(LEGAL_GRAPHS[case], f"{case}.qir")
    x = g.inputs[0]
    np.savez(tmp_path / "calib.npz", **{x.name: rand(8, *x.shape, seed=1)})
    pipeline = "qmn" if scheme == "qmn" else "int8-calibrated"
    qcc.PassManager.parse(f"{pipeline}{{data={tmp_path / 'calib.npz'}}}").run(g)
    assert is_lowered(g), [op.opname for op in g.ops]


def _bad_model():
    w = rand(4, 3, 3, 3, seed=1) * 0.3
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("LeakyRelu", ["c"], ["r"], name="lrelu", alpha=0.1),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool1", kernel_shape=[3, 3], dilations=[2, 2]),
             helper.make_node("BatchNormalization", ["p", "g", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Sigmoid", ["n"], ["s"], name="sig"),
             helper.make_node("Div", ["s", "s"], ["y"], name="div")]
    bn = {"g": rand(4, seed=2) + 2, "b": rand(4, seed=3), "m": rand(4, seed=4), "v": np.abs(rand(4, seed=5)) + 1}
    return build(nodes, {"x": [1, 3, 10, 10]}, ["y"], {"w": w, **bn})


def _qcc(args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = qcc_main([str(a) for a in args])
    return code, err.getvalue()


@pytest.mark.parametrize("scheme, nodes", [
    ("qmn", ['node "pool1" (MaxPool): dilations [2, 2]', 'node "div" (Div): only division by a constant']),
    ("int8", ['node "pool1" (MaxPool): dilations [2, 2]', 'node "div" (Div): only division by a constant']),
])
def test_unsupported_ops_are_listed_in_onnx_terms_before_calibration(tmp_path, scheme, nodes):
    onnx.save(_bad_model(), tmp_path / "bad.onnx")
    # Calibration data that would fail calibration (wrong input name): the legality error must come first.
    np.savez(tmp_path / "calib.npz", not_an_input=rand(4, 3, seed=0))
    code, err = _qcc([tmp_path / "bad.onnx", "-o", tmp_path / "out" / "net.c", "--target", "cortex-m4",
                      "--calib", tmp_path / "calib.npz", "--scheme", scheme])
    assert code == 2, err
    assert f"{len(nodes)} op{'s' if len(nodes) > 1 else ''} cannot be compiled with --scheme {scheme}" in err
    for text in nodes:
        assert text in err
    assert "Traceback" not in err and "calibrat" not in err.split("cannot be compiled")[0].split("check-legal")[1]
    assert not (tmp_path / "out").exists()


def test_ceil_mode_pools_are_accepted_by_both_schemes():
    from qcc.ir.parser import parse
    g = parse(LEGAL_GRAPHS["conv_pool_dense_softmax"], "g.qir")
    pool = next(op for op in g.ops if op.opname == "nn.avgpool")
    assert why_illegal(pool, "int8") is not None  # before legalize-pool: ceil_mode left
    qcc.PassManager.parse("legalize-pool").run(g)
    for op in g.ops:
        if op.opname in ("nn.avgpool", "nn.maxpool"):
            assert why_illegal(op, "qmn") is None and why_illegal(op, "int8") is None


def test_constant_add_is_legal_in_both_schemes():
    """Qm.n lowers x + k as a depthwise 1x1 conv (legalize-qmn); int8 quantizes k per tensor (TFLite ADD)."""
    from qcc.ir.parser import parse
    text = """
qcc.graph @g(%x: tensor<1x4xf32>) -> (tensor<1x4xf32> {name = "y"}) {
  %k = qcc.const dense<[0.5]> : tensor<1xf32>
  %0 = nn.add %x, %k : tensor<1x4xf32> loc("bias")
  qcc.return %0 : tensor<1x4xf32>
}"""
    qcc.PassManager.parse("legalize-qmn,check-legal{scheme=qmn}").run(parse(text, "g.qir"))
    qcc.PassManager.parse("check-legal{scheme=int8}").run(parse(text, "g.qir"))
