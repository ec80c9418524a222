"""The integer simulator on hand-computed cases: the contract the C back end must match."""
import numpy as np
import pytest

import qcc.sim.qmn as sim
from qcc.ir.graph import Graph
from qcc.sim.interpreter import run_graph
from qcc.ir.ops.qnn_softmax import lut_interp_table, lut_table, softmax_table, softmax_table_shift
from qcc.ir.types import FixedPoint, PerAxisQuant, TensorType, UniformQuant


def fx(shape, n, dtype="i8"):
    return TensorType(shape, dtype, FixedPoint(n))


def run1(opname, x, attrs, out_type, *consts, in_type=None):
    """Build ``opname(x, *consts)`` and run it on x."""
    g = Graph("t")
    xv = g.add_input("x", in_type or TensorType(x.shape, "i8", FixedPoint(0)))
    cs = [g.add_const(c) for c in consts]
    op = g.add_op(opname, [xv, *cs], attrs, [out_type])
    g.set_outputs([op.result], ["y"])
    g.verify()
    return run_graph(g, {"x": x})["y"]


# ---------------------------------------------------------------- helpers
def test_round_half_away_ties_and_negatives():
    x = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997, 1.2, -1.7])
    assert sim.round_half_away(x).tolist() == [1, -1, 2, -2, 3, -3, 0, 0, 1, -2]


def test_rshift_round_ties_go_up_and_negative_shift_is_left():
    a = np.array([5, -5, 6, -6, 7, -7, -1])
    assert sim.rshift_round(a, 1).tolist() == [3, -2, 3, -3, 4, -3, 0]
    assert sim.rshift_round(np.array([-3, 3]), -2).tolist() == [-12, 12]
    assert sim.rshift_round(np.array([9, 9]), 0).tolist() == [9, 9]
    # per-channel shifts along the last axis
    assert sim.rshift_round(np.array([[10, 10, 10]]), np.array([2, 0, -1])).tolist() == [[3, 10, 20]]


def test_div_round_away():
    assert sim.div_round_away(np.array([5, -5, 7, -7, 4, 1, -1]), 2).tolist() == [3, -3, 4, -4, 2, 1, -1]
    assert sim.div_round_away(np.array([4, -4, 5]), 3).tolist() == [1, -1, 2]


# ---------------------------------------------------------------- boundary ops
def test_quantize_fixed_rounds_away_and_saturates():
    g = Graph("q")
    x = g.add_input("x", TensorType((6,)))
    q = g.add_op("q.quantize", [x], {}, [fx((6,), 2)]).result
    d = g.add_op("q.dequantize", [q], {}, [TensorType((6,))]).result
    g.set_outputs([q, d], ["q", "d"])
    out = run_graph(g, {"x": np.array([0.125, -0.125, 0.375, -0.375, 100.0, -100.0], np.float32)})
    assert out["q"].dtype == np.int8
    assert out["q"].tolist() == [1, -1, 2, -2, 127, -128]
    assert out["d"].tolist() == [0.25, -0.25, 0.5, -0.5, 31.75, -32.0]


def test_quantize_uniform_and_per_axis():
    assert sim.quantize_array(np.array([0.3, -0.3]), UniformQuant(0.2, 3), np.int8).tolist() == [5, 1]
    q = sim.quantize_array(np.array([[1.0, 1.0], [-1.0, -1.0]]), PerAxisQuant(0, (0.5, 0.25), (0, 0)), np.int8)
    assert q.tolist() == [[2, 2], [-4, -4]]


# ---------------------------------------------------------------- conv / dense
def test_dense_per_channel_shift_bias_and_clamp():
    x = np.array([[3, -2]], np.int8)
    w = np.array([[1, 2], [-3, 1], [4, 4]], np.int8)  # acc = -1, -11, 4
    b = np.array([1, 0, -2], np.int32)                 # << bias_shift 1: 2, 0, -4
    attrs = {"bias_shift": [1], "out_shift": [1, 0, -2], "act_min": -128, "act_max": 127}
    y = run1("qnn.dense", x, attrs, fx((1, 3), 0), w, b)
    # acc = 1, -11, 0 -> rshift_round: (1+1)>>1 = 1; -11; 0 << 2 = 0
    assert y.tolist() == [[1, -11, 0]]
    attrs.update(out_shift=[0], act_min=0, act_max=5)   # fused ReLU-style clamp
    assert run1("qnn.dense", x, attrs, fx((1, 3), 0), w, b).tolist() == [[1, 0, 0]]


def test_conv2d_zero_padding_and_rounding_of_negatives():
    x = np.arange(1, 10, dtype=np.int8).reshape(1, 3, 3, 1)
    w = np.ones((1, 3, 3, 1), np.int8)
    attrs = {"pads": [1, 1, 1, 1], "out_shift": [2], "act_min": -128, "act_max": 127}
    y = run1("qnn.conv2d", x, attrs, fx((1, 3, 3, 1), 0), w)
    sums = np.array([[12, 21, 16], [27, 45, 33], [24, 39, 28]])
    assert y[0, :, :, 0].tolist() == ((sums + 2) >> 2).tolist()
    yn = run1("qnn.conv2d", -x, attrs, fx((1, 3, 3, 1), 0), w)
    assert yn[0, :, :, 0].tolist() == ((-sums + 2) >> 2).tolist()  # -12 -> -3 (tie -3.0), -21 -> -5
    assert yn[0, 0, 0, 0] == -3 and yn[0, 0, 1, 0] == -5


def test_conv2d_depthwise_strides_dilations_match_float():
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (1, 7, 6, 4)).astype(np.int8)
    w = rng.integers(-128, 128, (4, 3, 3, 1)).astype(np.int8)
    b = rng.integers(-1000, 1000, (4,)).astype(np.int32)
    attrs = {"group": 4, "strides": [2, 1], "dilations": [1, 2], "pads": [1, 2, 0, 1],
             "out_shift": [0], "act_min": -128, "act_max": 127}
    g = Graph("t")
    xv = g.add_input("x", fx(x.shape, 0))
    op = g.add_op("qnn.conv2d", [xv, g.add_const(w), g.add_const(b)], attrs, [fx((1, 3, 5, 4), 0, "i32")])
    acc = sim.conv2d_acc(op, x, w, b)
    # float reference: the NHWC float conv of the interpreter, exact on these small integers
    fg = Graph("f")
    fx_ = fg.add_input("x", TensorType(x.shape))
    fop = fg.add_op("nn.conv2d", [fx_, fg.add_const(w.astype(np.float32)), fg.add_const(b.astype(np.float32))],
                    {"layout": "NHWC", "group": 4, "strides": [2, 1], "dilations": [1, 2], "pads": [1, 2, 0, 1]})
    fg.set_outputs([fop.result], ["y"])
    ref = run_graph(fg, {"x": x.astype(np.float32)})["y"]
    assert acc.shape == ref.shape == (1, 3, 5, 4)
    assert np.array_equal(acc, ref.astype(np.int64))


def test_accumulator_overflow_is_an_error():
    x = np.full((1, 4096), 127, np.int8)
    w = np.full((1, 4096), 127, np.int8)
    b = np.array([(1 << 31) - 1000], np.int32)
    attrs = {"out_shift": [8], "act_min": -128, "act_max": 127}
    with pytest.raises(sim.AccumulatorOverflowError, match="overflows"):
        run1("qnn.dense", x, attrs, fx((1, 1), 0), w, b)


# ---------------------------------------------------------------- add / requantize / pools / tables
def test_add_aligns_and_requantizes():
    g = Graph("t")
    a = g.add_input("a", fx((4,), 4))
    b = g.add_input("b", fx((4,), 2))
    op = g.add_op("qnn.add", [a, b], {"a_shift": 0, "b_shift": 2, "out_shift": [1], "act_min": -128,
                                       "act_max": 127}, [fx((4,), 3)])
    g.set_outputs([op.result], ["y"])
    y = run_graph(g, {"a": np.array([16, -16, 3, 100], np.int8), "b": np.array([4, -4, -1, 100], np.int8)})["y"]
    # (16 + 16) >> 1 = 16; (-32 + 1) >> 1 = -16; (3 - 4 + 1) >> 1 = 0; (100 + 400 + 1) >> 1 = 250 -> 127
    assert y.tolist() == [16, -16, 0, 127]


def test_requantize_i16_to_i8():
    y = run1("qnn.requantize", np.array([300, -300, 2, -2], np.int16),
             {"out_shift": [2], "act_min": -128, "act_max": 127}, fx((4,), 0), in_type=fx((4,), 2, "i16"))
    assert y.tolist() == [75, -75, 1, 0]


def test_maxpool_padding_never_wins_and_clamp():
    x = np.array([-5, -7, -9, -3], np.int8).reshape(1, 2, 2, 1)
    y = run1("qnn.maxpool", x, {"kernel": [2, 2], "strides": [1, 1], "pads": [1, 1, 0, 0],
                               "act_min": -128, "act_max": 127}, fx((1, 2, 2, 1), 0))
    assert y[0, :, :, 0].tolist() == [[-5, -5], [-5, -3]]
    y = run1("qnn.maxpool", x, {"kernel": [2, 2], "act_min": -4, "act_max": 127}, fx((1, 1, 1, 1), 0))
    assert y.ravel().tolist() == [-3]


def test_avgpool_rounds_half_away_and_counts_in_bounds():
    x = np.array([1, 2, -3, -4], np.int8).reshape(1, 2, 2, 1)
    y = run1("qnn.avgpool", x, {"kernel": [2, 2], "act_min": -128, "act_max": 127}, fx((1, 1, 1, 1), 0))
    assert y.ravel().tolist() == [-1]  # -4 / 4 = -1
    x = np.array([1, 2, 3, 5], np.int8).reshape(1, 2, 2, 1)
    y = run1("qnn.avgpool", x, {"kernel": [2, 2], "pads": [1, 1, 0, 0], "act_min": -128, "act_max": 127},
             fx((1, 2, 2, 1), 0))
    # windows (in-bounds cells): [1] 1, [1,2] 1.5 -> 2, [1,3] 2, [1,2,3,5] 2.75 -> 3
    assert y[0, :, :, 0].tolist() == [[1, 2], [2, 3]]
    x = np.array([-1, -2, -3, -4], np.int8).reshape(1, 2, 2, 1)
    y = run1("qnn.avgpool", x, {"kernel": [2, 2], "pads": [1, 1, 0, 0], "act_min": -128, "act_max": 127},
             fx((1, 2, 2, 1), 0))
    assert y[0, :, :, 0].tolist() == [[-1, -2], [-2, -3]]  # -1.5 -> -2, -2.5 -> -3


def test_lut_and_interpolated_lut():
    table = lut_table(np.tanh, 5, 7)
    x = np.array([-128, -1, 0, 1, 127], np.int8)
    y = run1("qnn.lut", x, {"table": table}, fx((5,), 7), in_type=fx((5,), 5))
    assert y.tolist() == [table[0], table[127], 0, table[129], table[255]]
    assert y[-1] == 127 and y[0] == -128  # tanh(-4) * 128 = -127.9 rounds to -128; +127.9 saturates
    t16 = lut_interp_table(np.tanh, 12, 15)
    x16 = np.array([-32768, -256 * 100 + 128, 0, 255, 32767], np.int16)
    y16 = run1("qnn.lut_interp", x16, {"table": t16}, fx((5,), 15, "i16"), in_type=fx((5,), 12, "i16"))
    k = (x16.astype(np.int64) + 32768) >> 8
    f = (x16.astype(np.int64) + 32768) & 255
    t = np.array(t16)
    expect = t[k] + ((t[k + 1] - t[k]) * f + 128 >> 8)
    assert y16.tolist() == expect.tolist()
    assert np.max(np.abs(y16 / 32768 - np.tanh(x16 / 4096))) < 2e-3


def test_softmax_i8_hand_computed_and_close_to_float():
    table = softmax_table(4, 0)
    assert table[0] == 32768 and table[16] == round(32768 * np.exp(-1))
    x = np.array([[16, 0, -16]], np.int8)  # Q3.4: 1.0, 0.0, -1.0
    y = run1("qnn.softmax", x, {"table": table, "table_shift": 0}, fx((1, 3), 7), in_type=fx((1, 3), 4))
    e = np.array([32768, table[16], table[32]])
    assert y.tolist() == [((e * 128 * 2 + e.sum()) // (2 * e.sum())).tolist()]
    ref = np.exp([1.0, 0, -1]) / np.exp([1.0, 0, -1]).sum()
    assert np.max(np.abs(y[0] / 128 - ref)) <= 1 / 256 + 1e-9
    # one dominant logit saturates at 127 (1.0 is not representable in Q0.7)
    y = run1("qnn.softmax", np.array([[127, -128]], np.int8), {"table": table, "table_shift": 0},
             fx((1, 2), 7), in_type=fx((1, 2), 4))
    assert y.tolist() == [[127, 0]]


def test_softmax_i16_interpolated():
    n = 11
    ts = softmax_table_shift("i16", n)
    rng = np.random.default_rng(1)
    xf = rng.normal(0, 3, (4, 10))
    x = np.round(xf * 2 ** n).astype(np.int16)
    y = run1("qnn.softmax", x, {"table": softmax_table(n, ts), "table_shift": ts}, fx((4, 10), 15, "i16"),
             in_type=fx((4, 10), n, "i16"))
    xr = x / 2 ** n
    ref = np.exp(xr - xr.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    assert np.max(np.abs(y / 32768 - ref)) < 3e-4


def test_integer_shape_ops_keep_integers():
    g = Graph("t")
    x = g.add_input("x", fx((1, 2, 2, 3), 4))
    r = g.add_op("nn.transpose", [x], {"perm": [0, 3, 1, 2]}, [fx((1, 3, 2, 2), 4)]).result
    f = g.add_op("nn.flatten", [r], {"axis": 1}, [fx((1, 12), 4)]).result
    c = g.add_op("nn.concat", [f, f], {"axis": 1}, [fx((1, 24), 4)]).result
    p = g.add_op("nn.pad", [c], {"pads": [0, 1, 0, 1], "value": 0.0}, [fx((1, 26), 4)]).result
    s = g.add_op("nn.reshape", [p], {"shape": [2, 13]}, [fx((2, 13), 4)]).result
    g.set_outputs([s], ["y"])
    xv = np.arange(12, dtype=np.int8).reshape(1, 2, 2, 3) - 6
    y = run_graph(g, {"x": xv})["y"]
    assert y.dtype == np.int8
    flat = xv.transpose(0, 3, 1, 2).ravel()
    assert y.ravel().tolist() == [0] + flat.tolist() + flat.tolist() + [0]


def test_avgpool_out_shift_changes_format_in_one_rounding():
    x = np.array([1, 2, 3, 5], np.int8).reshape(1, 2, 2, 1)  # sum 11, count 4
    base = {"kernel": [2, 2], "act_min": -128, "act_max": 127}
    y = run1("qnn.avgpool", x, {**base, "out_shift": -2}, fx((1, 1, 1, 1), 2))
    assert y.ravel().tolist() == [11]                          # 11 * 4 / 4
    y = run1("qnn.avgpool", x, {**base, "out_shift": 1}, fx((1, 1, 1, 1), -1))
    assert y.ravel().tolist() == [1]                           # 11 / 8 = 1.375 -> 1
    y = run1("qnn.avgpool", -x, {**base, "out_shift": 2}, fx((1, 1, 1, 1), -2))
    assert y.ravel().tolist() == [-1]                          # -11 / 16 = -0.6875 -> -1
