"""ONNX ``Loop`` with a trip count known at import, unrolled by qcc/frontend/loop_lifters.py.

Hand-built Loop graphs in the forms tf2onnx writes for TF while loops: an RNN cell whose body reads
its input with a Gather on the iteration number and stops by a counter compare; an accumulating
loop whose trip count comes from the input's shape; a loop nested in a loop, both reading
outer-scope values. Each matches onnxruntime in the float interpreter; the RNN loop compiles under
int8 and Qm.n (integer from input to output, close to float, host C == simulator); a dynamic trip
count or a data-dependent condition is refused with the node's name.
"""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from qcc.errors import UnsupportedModelError
from qcc.frontend import load_onnx
from qcc.sim.interpreter import run_graph

from onnx_builders import build, check_against_ort, rand, run_ort
from test_backend_s8 import needs_gcc

T, I, H = 6, 3, 4


def _vi(name, elem=TP.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def rnn_loop_model(steps: int = T, cond: str = "counter", trip_count: bool = True):
    """h_t = tanh(x_t W + h R + b) over X [T, 1, I] as a Loop: x_t = Gather(X, iteration), W/R/b and the
    limit read from the outer scope, a counter carried from 0 and ``Less(counter + 1, limit)`` as the
    condition (``cond="counter"``), or the condition a copy of the input one (``"identity"``), or
    ``Less`` on the data (``"data"``: refused). ``trip_count=False`` is tf2onnx's while loop: no M, the
    initial condition a ``Less`` of two constants in the outer graph. Outputs the final h and the
    stacked h sequence."""
    cond_nodes = {
        "counter": [helper.make_node("Less", ["k2", "limit"], ["c2"], name="cond/less")],
        "identity": [helper.make_node("Identity", ["c"], ["c2"], name="cond/copy")],
        "data": [helper.make_node("ReduceMax", ["h2"], ["hmax"], keepdims=0, name="cond/max"),
                 helper.make_node("Less", ["hmax", "half"], ["c2"], name="cond/less")],
    }[cond]
    body = helper.make_graph(
        [helper.make_node("Gather", ["X", "i"], ["x_t"], axis=0, name="read"),
         helper.make_node("MatMul", ["x_t", "W"], ["xw"], name="xw"),
         helper.make_node("MatMul", ["h", "R"], ["hr"], name="hr"),
         helper.make_node("Add", ["xw", "hr"], ["s"], name="sum"),
         helper.make_node("Add", ["s", "b"], ["s2"], name="bias"),
         helper.make_node("Tanh", ["s2"], ["h2"], name="tanh"),
         helper.make_node("Add", ["k", "one"], ["k2"], name="count"),
         *cond_nodes,
         helper.make_node("Identity", ["h2"], ["y"], name="write")],
        "body", [_vi("i", TP.INT64, []), _vi("c", TP.BOOL, []), _vi("h"), _vi("k", TP.INT64, [])],
        [_vi("c2", TP.BOOL, []), _vi("h2"), _vi("k2", TP.INT64, []), _vi("y")],
        [numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(np.array(0.5, np.float32),
                                                                                         "half")])
    inits = {"W": rand(I, H, seed=1), "R": rand(H, H, seed=2) * 0.5, "b": rand(1, H, seed=3),
             "h0": np.zeros((1, H), np.float32), "k0": np.array(0, np.int64), "limit": np.array(steps, np.int64),
             "M": np.array(steps, np.int64), "cond": np.array(True)}
    nodes = [helper.make_node("Loop", ["M", "cond", "h0", "k0"], ["hT", "kT", "Y"], body=body, name="rnn/while")]
    if not trip_count:
        nodes = [helper.make_node("Less", ["k0", "limit"], ["go"], name="rnn/cond")] + nodes
        nodes[1].input[:2] = ["", "go"]
    return build(nodes, {"X": [steps, 1, I]}, ["hT", "Y"], inits, opset=13)


def accumulate_loop_model():
    """acc += x_i * scale for i < X.shape[0], the trip count Gather(Shape(X), 0) and no condition input;
    the second scan output is the iteration number as float (folded: a constant)."""
    body = helper.make_graph(
        [helper.make_node("Gather", ["X", "i"], ["x_i"], axis=0, name="read"),
         helper.make_node("Mul", ["x_i", "scale"], ["sx"], name="scale"),
         helper.make_node("Add", ["acc", "sx"], ["acc2"], name="accumulate"),
         helper.make_node("Cast", ["i"], ["fi"], to=TP.FLOAT, name="index"),
         helper.make_node("Identity", ["c"], ["c2"], name="cond")],
        "body", [_vi("i", TP.INT64, []), _vi("c", TP.BOOL, []), _vi("acc")],
        [_vi("c2", TP.BOOL, []), _vi("acc2"), _vi("acc2"), _vi("fi", TP.FLOAT, [])])
    nodes = [helper.make_node("Shape", ["X"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0, name="length"),
             helper.make_node("Loop", ["n", "", "acc0"], ["total", "partial", "index"], body=body, name="sum")]
    inits = {"zero": np.array(0, np.int64), "scale": rand(1, 5, seed=4), "acc0": np.ones((1, 5), np.float32)}
    return build(nodes, {"X": [7, 1, 5]}, ["total", "partial", "index"], inits, opset=13)


def nested_loop_model():
    """For each row r of X [3, 2, 4]: inner loop over its 2 parts adding (part + i + j) * W; the inner
    body reads the outer body's row and iteration number and the main graph's W."""
    inner = helper.make_graph(
        [helper.make_node("Gather", ["row", "j"], ["part"], axis=0, name="part"),
         helper.make_node("Add", ["i", "j"], ["ij"], name="ij"),
         helper.make_node("Cast", ["ij"], ["fij"], to=TP.FLOAT, name="fij"),
         helper.make_node("Add", ["part", "fij"], ["p2"], name="shift"),
         helper.make_node("Mul", ["p2", "W"], ["pw"], name="weigh"),
         helper.make_node("Add", ["s", "pw"], ["s2"], name="add"),
         helper.make_node("Identity", ["cj"], ["cj2"], name="cond")],
        "inner", [_vi("j", TP.INT64, []), _vi("cj", TP.BOOL, []), _vi("s")], [_vi("cj2", TP.BOOL, []), _vi("s2")])
    outer = helper.make_graph(
        [helper.make_node("Gather", ["X", "i"], ["row"], axis=0, name="row"),
         helper.make_node("Loop", ["two", "true", "zeros"], ["rowsum"], body=inner, name="parts"),
         helper.make_node("Relu", ["rowsum"], ["y"], name="relu"),
         helper.make_node("Identity", ["c"], ["c2"], name="cond")],
        "outer", [_vi("i", TP.INT64, []), _vi("c", TP.BOOL, [])], [_vi("c2", TP.BOOL, []), _vi("y")])
    inits = {"W": rand(4, seed=6), "two": np.array(2, np.int64), "true": np.array(True),
             "zeros": np.zeros(4, np.float32), "three": np.array(3, np.int64)}
    nodes = [helper.make_node("Loop", ["three", "true"], ["Y"], body=outer, name="rows")]
    return build(nodes, {"X": [3, 2, 4]}, ["Y"], inits, opset=13)


def strided_read_loop_model():
    """tf2onnx's while loop over x[i] (a TF strided slice): no M, the condition And(Less(i + 1, n), ...)
    carried with the counter; x itself carried unchanged; x[i] read by Slice with computed bounds."""
    body = helper.make_graph(
        [helper.make_node("Unsqueeze", ["k", "axes0"], ["start"], name="start"),
         helper.make_node("Add", ["start", "one1"], ["end"], name="end"),
         helper.make_node("Slice", ["x", "start", "end", "axes0"], ["xs"], name="read"),
         helper.make_node("Squeeze", ["xs", "axes0"], ["x_k"], name="squeeze"),
         helper.make_node("Mul", ["acc", "half"], ["decay"], name="decay"),
         helper.make_node("Add", ["decay", "x_k"], ["acc2"], name="accumulate"),
         helper.make_node("Add", ["k", "one"], ["k2"], name="count"),
         helper.make_node("Less", ["k2", "n"], ["more"], name="less"),
         helper.make_node("Less", ["i", "big"], ["sane"], name="guard"),
         helper.make_node("And", ["more", "sane"], ["c2"], name="and")],
        "body", [_vi("i", TP.INT64, []), _vi("c", TP.BOOL, []), _vi("k", TP.INT64, []), _vi("acc"), _vi("x")],
        [_vi("c2", TP.BOOL, []), _vi("k2", TP.INT64, []), _vi("acc2"), _vi("x")],
        [numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(np.array([1], np.int64), "one1"),
         numpy_helper.from_array(np.array([0], np.int64), "axes0"), numpy_helper.from_array(np.array(0.5, np.float32),
                                                                                             "half"),
         numpy_helper.from_array(np.array(1000, np.int64), "big")])
    inits = {"zero": np.array(0, np.int64), "n": np.array(5, np.int64), "acc0": np.zeros((1, 3), np.float32)}
    nodes = [helper.make_node("Less", ["zero", "n"], ["go"], name="while/cond"),
             helper.make_node("Loop", ["", "go", "zero", "acc0", "X"], ["k_end", "acc", "x_end"], body=body,
                              name="while")]
    return build(nodes, {"X": [5, 1, 3]}, ["acc"], inits, opset=13)


# ---------------------------------------------------------------- float: onnxruntime
@pytest.mark.parametrize("cond, trip_count", [("counter", True), ("identity", True), ("counter", False)])
def test_rnn_loop_matches_onnxruntime(cond, trip_count):
    g = check_against_ort(rnn_loop_model(cond=cond, trip_count=trip_count), {"X": rand(T, 1, I, seed=5)})
    kinds = [op.opname for op in g.ops]
    # one cell per iteration; the counter, the compare and the condition folded away
    assert kinds.count("nn.tanh") == T and kinds.count("nn.gather") == T
    assert not [k for k in kinds if k not in ("qcc.const", "nn.gather", "nn.matmul", "nn.add", "nn.tanh",
                                              "nn.identity", "nn.unsqueeze", "nn.concat")]


def test_condition_stops_the_loop_before_the_trip_count():
    """M = 10 but the counter compare (limit 4) ends it after 4 iterations, as onnxruntime does."""
    m = rnn_loop_model(steps=T)
    m.graph.initializer[[i.name for i in m.graph.initializer].index("limit")].CopyFrom(
        numpy_helper.from_array(np.array(4, np.int64), "limit"))
    m.graph.initializer[[i.name for i in m.graph.initializer].index("M")].CopyFrom(
        numpy_helper.from_array(np.array(10, np.int64), "M"))
    x = rand(T, 1, I, seed=7)
    g = load_onnx(m)
    got, want = run_graph(g, {"X": x}), run_ort(m, {"X": x})
    assert got["Y"].shape == want["Y"].shape == (4, 1, H)
    np.testing.assert_allclose(got["Y"], want["Y"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["hT"], want["hT"], rtol=1e-5, atol=1e-6)


def test_accumulating_loop_with_a_trip_count_from_the_shape():
    g = check_against_ort(accumulate_loop_model(), {"X": rand(7, 1, 5, seed=8)})
    assert [op.opname for op in g.ops].count("nn.add") == 7
    index = next(op for op in g.ops if op.opname == "qcc.const" and op.results[0].shape == (7,))
    np.testing.assert_array_equal(index.results[0].constant(), np.arange(7, dtype=np.float32))


def test_tf2onnx_strided_read_loop_matches_onnxruntime():
    g = check_against_ort(strided_read_loop_model(), {"X": rand(5, 1, 3, seed=12)})
    kinds = [op.opname for op in g.ops]
    # one read per iteration; the first decay of the constant initial sum folds away
    assert kinds.count("nn.slice") == 5 and kinds.count("nn.mul") == 4


def test_nested_loops_read_outer_scopes():
    g = check_against_ort(nested_loop_model(), {"X": rand(3, 2, 4, seed=9)})
    assert [op.opname for op in g.ops].count("nn.relu") == 3 and [op.opname for op in g.ops].count("nn.mul") == 6


# ---------------------------------------------------------------- refusals
def _dynamic_trip_count():
    m = rnn_loop_model()
    inits = [i for i in m.graph.initializer if i.name != "M"]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    m.graph.input.append(_vi("M", TP.INT64, []))
    return m


@pytest.mark.parametrize("make, match", [
    (_dynamic_trip_count, "the trip count 'M' is computed from run-time data (a dynamic trip count)"),
    (lambda: rnn_loop_model(cond="data"), "the body's condition 'c2' depends on run-time data (a data-dependent"),
    (lambda: rnn_loop_model(cond="identity", trip_count=False), "its condition stays true past 22222 iterations"),
])
def test_refusals_name_the_node(tmp_path, capsys, make, match):
    with pytest.raises(UnsupportedModelError, match=re.escape('node "rnn/while" (Loop): ' + match)):
        load_onnx(make())
    if make is not _dynamic_trip_count:
        return  # the command line once is enough
    from qcc.tools.compile import main as qcc_main
    onnx.save(make(), tmp_path / "m.onnx")
    code = qcc_main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out" / "net.c"), "--target", "cortex-m4"])
    err = capsys.readouterr().err
    assert code == 2 and "rnn/while" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- quantized: int8 and Qm.n
def _sqnr(ref, got) -> float:
    return 10 * np.log10((ref.astype(np.float64) ** 2).sum() / ((ref - got.astype(np.float64)) ** 2).sum())


def _assert_integer(g):
    """Integer from the input's quantize to the outputs' dequantize: no float op in between."""
    floats = [op.opname for op in g.ops if op.opname not in ("q.quantize", "q.dequantize")
              and any(r.type.dtype.startswith("f") for r in op.results)]
    assert not floats, floats
    assert {op.opname.split(".")[0] for op in g.ops} & {"s8", "qnn"}


@needs_gcc
def test_rnn_loop_compiles_under_int8(tmp_path):
    import qcc
    from test_backend_s8 import _run_and_compare
    xs = np.stack([rand(T, 1, I, seed=20 + k) for k in range(24)])
    onnx.save(rnn_loop_model(), tmp_path / "loop.onnx")
    np.save(tmp_path / "calib.npy", xs)
    g = qcc.load_onnx(tmp_path / "loop.onnx")
    qcc.PassManager.parse(f"int8-calibrated{{data={tmp_path / 'calib.npy'}}}").run(g)
    fg = qcc.load_onnx(tmp_path / "loop.onnx")
    _assert_integer(g)
    for name in g.output_names:
        fl = np.stack([run_graph(fg, {"X": x})[name] for x in xs])
        qt = np.stack([run_graph(g, {"X": x})[name] for x in xs])
        assert _sqnr(fl, qt) > 25.0, name
    _run_and_compare(tmp_path, g, {"X": xs[:4]}, "cortex-m4", "host")


@needs_gcc
@pytest.mark.parametrize("bits", [8, 16])
def test_rnn_loop_compiles_under_qmn(tmp_path, bits):
    from test_backend_cmsis import compile_and_compare
    from test_qmn import quantize
    xs = np.stack([rand(T, 1, I, seed=40 + k) for k in range(24)])
    onnx.save(rnn_loop_model(), tmp_path / "loop.onnx")
    np.savez(tmp_path / "calib.npz", X=xs)
    fl, _, q = quantize(tmp_path / "loop.onnx", f"qmn{{bits={bits}}}", tmp_path / "calib.npz")
    _assert_integer(q)
    for name in q.output_names:
        want = np.stack([run_graph(fl, {"X": x})[name] for x in xs])
        got = np.stack([run_graph(q, {"X": x})[name] for x in xs])
        assert _sqnr(want, got) > (25.0 if bits == 8 else 50.0), name
    compile_and_compare(q, tmp_path, {"X": xs[:4]})


def test_a_false_initial_condition_runs_no_iteration():
    """cond = false: the carried values come out as they went in (onnxruntime agrees)."""
    m = rnn_loop_model()
    m.graph.initializer[[i.name for i in m.graph.initializer].index("cond")].CopyFrom(
        numpy_helper.from_array(np.array(False), "cond"))
    del m.graph.output[1]   # Y would be empty; nothing reads it
    g = check_against_ort(m, {"X": rand(T, 1, I, seed=11)})
    assert not [op for op in g.ops if op.opname == "nn.tanh"]


def test_a_boolean_of_run_time_data_is_refused():
    node = helper.make_node("Less", ["X", "zero"], ["neg"], name="sign")
    model = build([node, helper.make_node("Cast", ["neg"], ["y"], to=TP.FLOAT, name="to_float")],
                  {"X": [2, 3]}, ["y"], {"zero": np.zeros((2, 3), np.float32)})
    with pytest.raises(UnsupportedModelError, match=r'node "sign" \(Less\): it computes a boolean from run-time'):
        load_onnx(model)
