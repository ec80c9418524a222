"""Calibrated affine int8 for float models: quantize-affine + the int8-calibrated pipeline.

The TFLite parameter rules are checked on scalars here and in the golden test
tests/golden/quantize-affine.qir; the digits model checks the whole flow:
float ONNX -> calibrate -> QDQ form -> lower-qdq -> all-integer s8 graph whose
simulated accuracy stays within half a point of float.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import qcc
from qcc.sim.interpreter import run_batched
from qcc.ir.types import UniformQuant

from qcc.passes.quantize_affine import asymmetric_params, symmetric_weights

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"


@pytest.mark.parametrize("lo, hi, expected", [
    (0.0, 1.0, UniformQuant(float(np.float32(1 / 255)), -128)),
    (0.5, 1.0, UniformQuant(float(np.float32(1 / 255)), -128)),      # widened to include 0
    (-2.0, -0.5, UniformQuant(float(np.float32(2 / 255)), 127)),     # widened to max = 0
    (-1.0, 2.0, UniformQuant(float(np.float32(3 / 255)), -43)),
    (-4.0, 4.0, UniformQuant(float(np.float32(8 / 255)), -1)),       # -0.5 rounds away from zero
    (0.0, 0.0, UniformQuant(1.0, 0)),
])
def test_asymmetric_params_follow_tflite(lo, hi, expected):
    got = asymmetric_params(lo, hi)
    assert got.zero_point == expected.zero_point
    assert got.scale == pytest.approx(expected.scale, rel=1e-7)


def test_asymmetric_params_represent_zero_and_cover_the_range():
    rng = np.random.default_rng(0)
    for lo, hi in rng.normal(0, 5, (200, 2)):
        lo, hi = min(lo, hi), max(lo, hi)
        q = asymmetric_params(lo, hi)
        assert -128 <= q.zero_point <= 127
        # the real range of the int8 grid contains [min(lo, 0), max(hi, 0)] up to one step
        assert (-128 - q.zero_point) * q.scale <= min(lo, 0) + q.scale
        assert (127 - q.zero_point) * q.scale >= max(hi, 0) - q.scale


def test_symmetric_weights_per_channel_round_half_away():
    w = np.array([[1.27, -0.635, 0.0], [0.0, 0.0, 0.0], [-0.1, 0.05, 0.025]], np.float32)
    q, s = symmetric_weights(w, per_channel=True)
    assert s.tolist() == pytest.approx([0.01, 0.01, 0.1 / 127])
    assert q[0].tolist() == [127, -64, 0]          # -63.5 -> -64
    assert q[1].tolist() == [0, 0, 0]              # an all-zero channel gets the largest channel's scale
    assert q[2].tolist() == [-127, 64, 32]         # 63.5 -> 64, 31.75 -> 32
    q1, s1 = symmetric_weights(w, per_channel=False)
    assert np.all(s1 == np.float32(0.01)) and q1[2].tolist() == [-10, 5, 3]  # 2.5 -> 3


def _digits():
    if not (DIGITS / "digits.onnx").is_file():
        pytest.skip("examples/digits is absent")
    return qcc.load_onnx(DIGITS / "digits.onnx"), np.load(DIGITS / "test.npz")


def _accuracy(g, test):
    out = run_batched(g, {g.inputs[0].name: test["input"]})[g.output_names[0]]
    return int((out.reshape(len(out), -1).argmax(axis=1) == test["labels"]).sum())


@pytest.fixture(scope="module")
def digits_int8():
    g, test = _digits()
    qcc.PassManager.parse(f"int8-calibrated{{data={DIGITS / 'calib.npz'}}}").run(g)
    return g, test


def test_digits_lowers_to_integer_ops_between_quantize_and_dequantize(digits_int8):
    g, _ = digits_int8
    ops = [op.opname for op in g.ops if op.opname != "qcc.const"]
    assert ops[0] == "q.quantize" and ops[-1] == "q.dequantize"
    assert ops.count("q.quantize") == 1 and ops.count("q.dequantize") == 1, ops
    assert set(ops[1:-1]) <= {"s8.conv2d", "s8.maxpool", "s8.avgpool", "s8.dense", "s8.add", "s8.softmax",
                              "nn.reshape"}, ops
    for op in g.ops:
        if op.opname not in ("qcc.const", "q.dequantize"):
            assert all(r.type.dtype == "i8" for r in op.results), op.describe()
        if op.opname == "qcc.const":
            assert op.result.type.dtype in ("i8", "i32"), op.describe()


def test_digits_int8_accuracy_is_within_half_a_point_of_float(digits_int8):
    g, test = digits_int8
    f, _ = _digits()
    float_correct = _accuracy(f, test)
    int8_correct = _accuracy(g, test)
    assert float_correct == 357
    assert int8_correct >= float_correct - 0.005 * len(test["labels"])  # >= 355.2, i.e. >= 356 of 360


def test_pooling_and_reshape_share_the_producer_quantization(digits_int8):
    g, _ = digits_int8
    for op in g.ops:
        if op.opname in ("s8.maxpool", "s8.avgpool", "nn.reshape"):
            assert op.result.type.quant == op.operands[0].type.quant, op.describe()


def test_per_tensor_weights_also_lower():
    g, test = _digits()
    qcc.PassManager.parse(f"int8-calibrated{{data={DIGITS / 'calib.npz'},per_channel=false}}").run(g)
    assert not any(op.opname.startswith("nn.") and op.opname != "nn.reshape" for op in g.ops)
    assert _accuracy(g, test) >= 350


def test_pipeline_takes_calibration_data_from_the_driver_context_and_rejects_other_bit_widths():
    g, test = _digits()
    pm = qcc.PassManager.parse("int8-calibrated{bits=8}")
    context = {"calib": str(DIGITS / "calib.npz"), "act_max": {}}
    for p in pm.passes:
        p.context = context
    pm.run(g)
    assert _accuracy(g, test) >= 356
    with pytest.raises(qcc.errors.QccError, match="8 or 16 bits"):
        qcc.PassManager.parse("int8-calibrated{bits=12}")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
def test_digits_int8_c_on_the_host_equals_the_simulator(digits_int8, tmp_path):
    import qcc.sim.s8  # noqa: F401  (registers the s8 kernels)
    from qcc.backends.cmsis import generate, harness
    from qcc.fileio import write_files
    g, test = digits_int8
    gen = generate(g, "digits")
    write_files({tmp_path / k: v for k, v in gen.files.items()})
    samples = {g.inputs[0].name: test["input"][:64]}
    n = harness.write_samples(tmp_path / "in.bin", g, samples)
    exe = harness.build_host(tmp_path, gen.name)
    harness.run_host(exe, tmp_path / "in.bin", tmp_path / "out.bin")
    got = harness.read_outputs(tmp_path / "out.bin", gen, n).quantized[0]
    want = harness.simulate(g, gen, samples).quantized[0]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


CONCAT_GRAPH = """
qcc.graph @cat(%x: tensor<1x4x4x2xf32>) -> (tensor<1x4x4x5xf32> {name = "y"}) {
  %0 = qcc.const dense<[0.5, -1.0, 0.25, 0.75, -0.5, 1.0]> : tensor<3x1x1x2xf32> loc("wa")
  %1 = qcc.const dense<[3.0, -2.0, 1.0, 0.5]> : tensor<2x1x1x2xf32> loc("wb")
  %2 = nn.conv2d %x, %0 {layout = "NHWC", act = "relu"} : tensor<1x4x4x3xf32> loc("a")
  %3 = nn.conv2d %x, %1 {layout = "NHWC"} : tensor<1x4x4x2xf32> loc("b")
  %4 = nn.concat %2, %3 {axis = 3} : tensor<1x4x4x5xf32> loc("cat")
  qcc.return %4 : tensor<1x4x4x5xf32>
}
"""


def test_concat_becomes_integer_with_inputs_requantized_to_the_output(tmp_path):
    from qcc.sim.interpreter import run_graph
    from qcc.ir.parser import parse
    rng = np.random.default_rng(0)
    data = rng.normal(0, 1, (64, 1, 4, 4, 2)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=data)
    f = parse(CONCAT_GRAPH, "cat.qir")
    g = parse(CONCAT_GRAPH, "cat.qir")
    qcc.PassManager.parse(f"int8-calibrated{{data={tmp_path / 'calib.npz'}}}").run(g)
    ops = [op.opname for op in g.ops if op.opname != "qcc.const"]
    # the concat range is the union of its inputs', so at least the relu branch [0, max_a] is rescaled
    assert set(ops) == {"q.quantize", "s8.conv2d", "s8.requantize", "nn.concat", "q.dequantize"}, ops
    assert ops.count("s8.conv2d") == 2 and 1 <= ops.count("s8.requantize") <= 2
    out_q = g.outputs[0].producer.operands[0].type.quant
    for x in data[:16]:
        want = run_graph(f, {"x": x})["y"]
        got = run_graph(g, {"x": x})["y"]
        # input, weight and output rounding: a few output steps at most
        assert np.abs(got - want).max() <= 3 * out_q.scale
