"""Affine int8 (s8.*): TFLite multiplier encoding, requantization, softmax, and the
QDQ models lowered with the ``int8`` pipeline, bit for bit against TFLite Micro."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import qcc
import qcc.sim.s8 as s8
from qcc.errors import QccError
from qcc.ir.graph import Graph
from qcc.sim.interpreter import run_batched, run_graph
from qcc.ir.types import TensorType, UniformQuant

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


# ---------------------------------------------------------------- scalar references (C semantics, Python ints)
def _c_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def ref_srdhm(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    p = a * b
    return _c_div(p + ((1 << 30) if p >= 0 else 1 - (1 << 30)), 1 << 31)


def ref_rdiv_pot(x: int, e: int) -> int:
    mask = (1 << e) - 1
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if (x & mask) > threshold else 0)


def ref_requant(acc: int, mult: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier (double rounding)."""
    return ref_rdiv_pot(ref_srdhm(acc * (1 << max(shift, 0)), mult), max(-shift, 0))


# ---------------------------------------------------------------- multiplier encoding
@pytest.mark.parametrize("m, expected", [
    (0.25, (1 << 30, -1)), (1.0, (1 << 30, 1)), (0.0, (0, 0)), (3.0, (3 << 29, 2)),
    (1.0 - 2.0 ** -40, (1 << 30, 1)),      # rounds up to 2^31: halved, shift + 1
    (2.0 ** -40, (0, 0)),                   # below 2^-31: flushed to zero
])
def test_quantize_multiplier(m, expected):
    assert s8.quantize_multiplier(m) == expected


def test_quantize_multiplier_round_trip():
    rng = np.random.default_rng(0)
    for m in rng.uniform(1e-6, 4.0, 200):
        mult, shift = s8.quantize_multiplier(float(m))
        assert 2 ** 30 <= mult < 2 ** 31
        assert abs(mult * 2.0 ** (shift - 31) - m) <= 2.0 ** (shift - 32)


def test_softmax_params_match_tflite_formula():
    mult, shift, diff_min = s8.softmax_params(0.17185351252555847)
    real = 0.17185351252555847 * 2 ** 26
    assert (mult, shift) == s8.quantize_multiplier(real)
    assert diff_min == -math.floor(31 * 2 ** 26 / 2 ** shift)


# ---------------------------------------------------------------- requantization
class _Op:
    def describe(self):
        return "test op"


def test_requantize_matches_scalar_reference():
    rng = np.random.default_rng(1)
    acc = np.concatenate([rng.integers(-(1 << 20), 1 << 20, 2000), [0, 1, -1, 3, -3, 1 << 19, -(1 << 19)]])
    for mult, shift in [(1 << 30, -1), (1 << 30, -3), (1552512742, -5), (2 ** 31 - 1, -31), (1242405367, 0),
                        (1476210432, 2)]:
        a = acc if shift <= 0 else acc >> 3
        got = s8.requantize(a, mult, shift, _Op())
        want = [ref_requant(int(v), mult, shift) for v in a]
        assert got.tolist() == want, (mult, shift)


def test_requantize_double_and_single_rounding():
    # mult = 2^30 is 0.5 exactly and shift -1 halves again: acc / 4. Ties round away
    # from zero; double rounding rounds 1/4 twice (0.5 up to 1, then 0.5 away to 1).
    acc = np.array([2, -2, 6, -6, 1, -1])
    assert s8.requantize(acc, 1 << 30, -1, _Op()).tolist() == [1, -1, 2, -2, 1, 0]
    assert s8.requantize(acc, 1 << 30, -1, _Op(), "single").tolist() == [1, 0, 2, -1, 0, 0]


def test_srdhm_saturates_int32_min_squared():
    assert s8.srdhm(INT32_MIN, INT32_MIN) == INT32_MAX
    rng = np.random.default_rng(2)
    a, b = rng.integers(INT32_MIN, INT32_MAX, 500), rng.integers(INT32_MIN, INT32_MAX, 500)
    assert s8.srdhm(a, b).tolist() == [ref_srdhm(int(x), int(y)) for x, y in zip(a, b)]


def test_requantize_left_shift_overflow_is_an_error():
    with pytest.raises(QccError, match="overflows"):
        s8.requantize(np.array([1 << 29]), 1 << 30, 4, _Op())


# ---------------------------------------------------------------- single ops
def _graph_with(opname, x_type, attrs, out_type, *consts):
    g = Graph("t")
    x = g.add_input("x", x_type)
    operands = [x] + [g.add_const(c) for c in consts]
    y = g.add_op(opname, operands, attrs, [out_type]).result
    g.set_outputs([y], ["y"])
    g.verify()
    return g


def test_softmax_of_equal_inputs_is_uniform():
    mult, shift, diff_min = s8.softmax_params(0.1)
    t = TensorType((1, 4), "i8", UniformQuant(0.1, 0))
    g = _graph_with("s8.softmax", t, dict(multiplier=mult, shift=shift, diff_min=diff_min),
                    TensorType((1, 4), "i8", UniformQuant(1 / 256, -128)))
    y = run_graph(g, {"x": np.full((1, 4), 7, np.int8)})["y"]
    assert y.tolist() == [[-64] * 4]  # 0.25 * 256 - 128


def test_softmax_is_close_to_float_softmax():
    scale = 0.17
    mult, shift, diff_min = s8.softmax_params(scale)
    t = TensorType((1, 10), "i8", UniformQuant(scale, 0))
    g = _graph_with("s8.softmax", t, dict(multiplier=mult, shift=shift, diff_min=diff_min),
                    TensorType((1, 10), "i8", UniformQuant(1 / 256, -128)))
    x = np.random.default_rng(3).integers(-128, 128, (1, 10)).astype(np.int8)
    y = run_graph(g, {"x": x})["y"].astype(np.int64)
    e = np.exp(scale * (x.astype(np.int64) - x.max()))
    assert np.abs((y + 128) - 256 * e / e.sum()).max() <= 1.0


def test_avgpool_rounds_half_away_from_zero():
    t = TensorType((1, 1, 2, 2), "i8", UniformQuant(1.0, 0))
    g = _graph_with("s8.avgpool", t, dict(kernel=[1, 2], strides=[1, 2]), TensorType((1, 1, 1, 2), "i8"))
    y = run_graph(g, {"x": np.array([[[[1, -1], [2, -2]]]], np.int8)})["y"]
    # windows (1, 2) -> 1.5 -> 2 and (-1, -2) -> -1.5 -> -2
    assert y.tolist() == [[[[2, -2]]]]


def test_conv_pads_with_the_input_zero_point():
    t = TensorType((1, 1, 1, 1), "i8", UniformQuant(1.0, 5))
    w = np.ones((1, 3, 3, 1), np.int8)
    g = _graph_with("s8.conv2d", t, dict(pads=[1, 1, 1, 1], input_zp=5, multiplier=[1 << 30], shift=[1]),
                    TensorType((1, 1, 1, 1), "i8"), w)
    assert run_graph(g, {"x": np.array([[[[9]]]], np.int8)})["y"].tolist() == [[[[4]]]]


def test_verifier_rejects_bad_requant_parameters():
    t = TensorType((1, 4), "i8")
    with pytest.raises(QccError, match="multiplier"):
        _graph_with("s8.requantize", t, dict(multiplier=[1 << 31], shift=[0]), t)
    with pytest.raises(QccError, match="shift"):
        _graph_with("s8.requantize", t, dict(multiplier=[1 << 30], shift=[31]), t)


# ---------------------------------------------------------------- real QDQ models vs TFLite Micro
MODEL_CASES = [("ic_resnet8", "ic_resnet8_int8_qdq.onnx"), ("kws_dscnn", "kws_dscnn_int8_qdq.onnx")]


def _lowered(folder, filename, pipeline="int8"):
    path = MODELS / folder / filename
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared models folder is not checked out)")
    g = qcc.load_onnx(path)
    qcc.PassManager.parse(pipeline).run(g)
    return g, np.load(MODELS / folder / "golden_int8.npz")


def _run(g, x):
    return run_batched(g, {g.inputs[0].name: x[:, None]})[g.output_names[0]][:, 0]


@pytest.mark.parametrize("folder, filename", MODEL_CASES)
def test_qdq_model_is_bit_exact_with_tflite_micro(folder, filename):
    g, gold = _lowered(folder, filename)
    ops = {op.opname for op in g.ops}
    assert ops <= {"qcc.const", "nn.reshape", "s8.conv2d", "s8.add", "s8.avgpool", "s8.dense", "s8.softmax"}, ops
    assert g.inputs[0].type.dtype == "i8" and g.outputs[0].type.dtype == "i8"
    np.testing.assert_array_equal(_run(g, gold["input"]), gold["output_tflm"])
    np.testing.assert_array_equal(_run(g, gold["input_random"]), gold["output_random_tflm"])


@pytest.mark.parametrize("folder, filename", MODEL_CASES)
def test_single_rounding_fully_connected_reproduces_tflite_reference(folder, filename):
    g, gold = _lowered(folder, filename, "int8{fc_rounding=single}")
    np.testing.assert_array_equal(_run(g, gold["input"]), gold["output"])
    np.testing.assert_array_equal(_run(g, gold["input_random"]), gold["output_random"])
