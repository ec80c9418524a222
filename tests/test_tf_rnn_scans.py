"""tf2onnx's dynamic_rnn Scans, as in ARM's ML-KWS models (tests/recurrent_models.py:tf2onnx_rnn_model):
BasicLSTMCell, LSTMCell with peepholes (with and without a projection), GRUCell, and a CRNN (conv + two stacked
GRUCells in one Scan), each with tf2onnx's int32 time counter as a state and outer-scope weights.

The import matches onnxruntime; the TF cells are recognised as one nn.lstm / nn.gru each
(qcc/frontend/tf_cells.py) and anything else stays unrolled; every form compiles under int8, q15 and
q7, with host C (sanitizers) == simulator bit for bit.
"""
from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from onnx import helper

import qcc
from qcc.tools.compile import lower

from onnx_builders import check_against_ort, run_ort
from recurrent_models import tf2onnx_rnn_model
from test_backend_cmsis import compile_and_compare, needs_gcc

# cell -> the recurrent ops its Scan becomes
FUSED = {"basic_lstm": {"nn.lstm": 1}, "peephole_lstm": {"nn.lstm": 1}, "gru": {"nn.gru": 1}, "crnn": {"nn.gru": 2},
         "lstm": {}}
SMALL = {"steps": 8, "hidden": 8, "proj": 4}


def _inputs(model, n: int, seed: int = 0) -> np.ndarray:
    size = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    # MFCC-like: a few units of spread, smooth across features
    return (np.random.default_rng(seed).standard_normal((n, 1, size)) * 2).astype(np.float32)


def _counts(graph):
    return collections.Counter(op.opname for op in graph.ops)


@pytest.mark.parametrize("cell", sorted(FUSED))
def test_import_matches_onnxruntime_and_recognises_cells(cell):
    model = tf2onnx_rnn_model(cell, seed=3)
    x = _inputs(model, 1, seed=1)[0]
    graph = check_against_ort(model, {"Reshape:0": x}, rtol=1e-4, atol=1e-6)
    counts = _counts(graph)
    assert {k: counts[k] for k in ("nn.lstm", "nn.gru") if counts[k]} == FUSED[cell]
    if cell == "peephole_lstm":  # TF's w_i, w_f, w_o diagonals as ONNX P (i, o, f)
        assert len(graph.find("nn.lstm")[0].operands) == 7
    if FUSED[cell]:  # nothing of the cell is left per step; the time counter is gone
        assert not counts["nn.sigmoid"] and not counts["nn.tanh"]
        assert not [op for op in graph.ops if op.results[0].type.dtype == "i32"]
    else:  # a projection: unrolled, 3 sigmoids per step
        assert counts["nn.sigmoid"] == 3 * 12


def _with_scan_output(model, body_value: str):
    """The model with one more Scan output (the per-step ``body_value``) read as a graph output."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    scan = next(n for n in model.graph.node if n.op_type == "Scan")
    body = scan.attribute[0].g
    body.node.append(helper.make_node("Identity", [body_value], ["y_t"], name="y"))
    body.output.append(helper.make_tensor_value_info("y_t", onnx.TensorProto.FLOAT, None))
    scan.output.append("Y")
    model.graph.output.append(helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None))
    return model


@pytest.mark.parametrize("cell, value, fused", [("basic_lstm", "h_out", True), ("gru", "h0_out", True),
                                                ("gru", "rnn/while/multi_rnn_cell/cell_0/gru_cell/u", False)])
def test_scan_outputs(cell, value, fused):
    """A stacked per-step h is the fused op's y; a gate read outside the cell keeps the Scan unrolled.
    Both match onnxruntime."""
    model = _with_scan_output(tf2onnx_rnn_model(cell, **SMALL), value)
    x = _inputs(model, 1, seed=2)[0]
    graph = check_against_ort(model, {"Reshape:0": x}, rtol=1e-4, atol=1e-6)
    counts = _counts(graph)
    assert bool(counts["nn.lstm"] + counts["nn.gru"]) == fused
    assert run_ort(model, {"Reshape:0": x})["Y"].shape == (8, 1, 8)


def test_read_counter_keeps_the_scan_unrolled():
    """A state no cell computes (the time counter) read by the model: not fused, still correct."""
    model = tf2onnx_rnn_model("gru", **SMALL)
    model.graph.node.append(helper.make_node("Cast", ["t_last"], ["t_float"], to=onnx.TensorProto.FLOAT,
                                             name="count"))
    model.graph.node.append(helper.make_node("Mul", ["labels_softmax:0", "t_float"], ["scaled"], name="scale"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("scaled", onnx.TensorProto.FLOAT, None))
    graph = check_against_ort(model, {"Reshape:0": _inputs(model, 1)[0]}, rtol=1e-4, atol=1e-6)
    assert not _counts(graph)["nn.gru"] and _counts(graph)["nn.sigmoid"] == 8


@needs_gcc
@pytest.mark.parametrize("cell", sorted(FUSED))
@pytest.mark.parametrize("scheme, bits", [("int8", 8), ("qmn", 16), ("qmn", 8)])
def test_compiles_and_c_matches_simulator(tmp_path, cell, scheme, bits):
    """Each form under int8, q15 and q7: the fused cells become s8/qnn lstm/gru kernels, the output
    follows float (top-1 on most of 16 random MFCC-like inputs), host C == simulator."""
    model = tf2onnx_rnn_model(cell, **dict(SMALL, steps=4 if cell == "lstm" else 8))  # unrolled: kept short
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    xs = _inputs(model, 16)
    np.save(tmp_path / "calib.npy", xs)
    graph = qcc.load_onnx(path)
    lower(graph, calib=str(tmp_path / "calib.npy"), bits=bits, scheme=scheme, act_max={}, model_path=str(path))
    kinds = _counts(graph)
    prefix = "s8." if scheme == "int8" else "qnn."
    for op, n in FUSED[cell].items():
        assert kinds[prefix + op[3:]] == n, kinds
    assert not [k for k in kinds if k.startswith("nn.") and k not in
                ("nn.reshape", "nn.gather", "nn.concat", "nn.squeeze", "nn.unsqueeze", "nn.transpose")], kinds
    want = np.concatenate([run_ort(model, {"Reshape:0": x})["labels_softmax:0"] for x in xs])
    got = np.concatenate([qcc.sim.interpreter.run_graph(graph, {"Reshape:0": x})["labels_softmax:0"] for x in xs])
    assert np.mean(want.argmax(-1) == got.argmax(-1)) >= (0.6 if bits == 8 and not FUSED[cell] else 0.8)
    compile_and_compare(graph, tmp_path / "c", {"Reshape:0": xs[:3]})


@pytest.mark.parametrize("form", ["lstm", "gru"])
def test_concat_with_h_first(form):
    """[h, x] instead of [x, h] before the gate product: the kernel's rows split the other way."""
    from recurrent_models import scan_gru_model, scan_lstm_model
    model = scan_lstm_model(steps=5, inputs=3, hidden=4) if form == "lstm" else scan_gru_model(steps=5, inputs=3,
                                                                                                hidden=4)
    for node in model.graph.node[0].attribute[0].g.node:
        if node.op_type == "Concat":
            parts = list(node.input)
            del node.input[:]
            node.input.extend(parts[::-1])
    x = np.random.default_rng(0).standard_normal((5, 1, 3)).astype(np.float32)
    graph = check_against_ort(model, {"input": x}, rtol=1e-4, atol=1e-5)
    assert len(graph.find("nn." + form)) == 1


def test_stacked_basic_lstm_cells():
    """MultiRNNCell of two BasicLSTMCells in one Scan (states c0, h0, c1, h1, then the counter): two
    nn.lstm, the second reading the first's y."""
    from recurrent_models import _tf_lstm_body
    vi = helper.make_tensor_value_info
    steps, features, hidden = 6, 5, 4
    rng = np.random.default_rng(7)
    body_nodes, inits, x = [], {}, "x_t"
    for layer in range(2):
        p = f"cell_{layer}/"
        size = features if layer == 0 else hidden
        inits.update({p + "kernel": rng.uniform(-0.5, 0.5, (size + hidden, 4 * hidden)).astype(np.float32),
                      p + "bias": rng.uniform(-0.1, 0.1, 4 * hidden).astype(np.float32),
                      p + "forget_bias": np.array(1.0, np.float32)})
        body_nodes += _tf_lstm_body(p, x, f"h{layer}_in", f"c{layer}_in", f"h{layer}_out", f"c{layer}_out",
                                    False, False)
        x = f"h{layer}_out"
    body_nodes.append(helper.make_node("Add", ["t_in", "one_step"], ["t_out"], name="while/add"))
    states = [(f"{s}{layer}", hidden) for layer in range(2) for s in ("c", "h")]
    body = helper.make_graph(body_nodes, "body",
                             [vi(f"{s}_in", 1, [1, n]) for s, n in states] + [vi("t_in", 6, []),
                                                                               vi("x_t", 1, [1, features])],
                             [vi(f"{s}_out", 1, [1, n]) for s, n in states] + [vi("t_out", 6, [])])
    inits.update({"zeros": np.zeros((1, hidden), np.float32), "time": np.array(0, np.int32),
                  "one_step": np.array(1, np.int32)})
    from onnx_builders import build
    scan = helper.make_node("Scan", ["zeros"] * 4 + ["time", "input"], ["c0", "h0", "c1", "h1", "t"], body=body,
                            num_scan_inputs=1, name="rnn")
    model = build([scan], {"input": [steps, 1, features]}, ["h1", "c0"], inits, opset=13)
    x = np.random.default_rng(1).standard_normal((steps, 1, features)).astype(np.float32)
    graph = check_against_ort(model, {"input": x}, rtol=1e-4, atol=1e-5)
    cells = graph.find("nn.lstm")
    assert len(cells) == 2 and cells[1].operands[0] is cells[0].results[0]


def test_assign_qmn_search_budget(tmp_path, monkeypatch):
    """Past SEARCH_BUDGET (8-bit groups x ops; an unrolled 25-step LSTMCell is ~1.25 M) assign-qmn scores
    each group by its own values instead of the quadratic consumer/output searches, and says so."""
    import qcc.passes.assign_qmn as assign_qmn
    model = tf2onnx_rnn_model("gru", **SMALL)
    onnx.save(model, tmp_path / "model.onnx")
    np.save(tmp_path / "calib.npy", _inputs(model, 8))
    whys, default = {}, assign_qmn.SEARCH_BUDGET
    for budget in (default, 10):
        monkeypatch.setattr(assign_qmn, "SEARCH_BUDGET", budget)
        graph = qcc.load_onnx(tmp_path / "model.onnx")
        lower(graph, calib=str(tmp_path / "calib.npy"), bits=8, scheme="qmn", act_max={},
              model_path=str(tmp_path / "model.onnx"))
        whys[budget] = [c["why"] for c in graph.qmn_choices if c["bits"] == 8 and not c["why"].startswith("pinned")]
    assert whys[10] and all("search skipped" in w for w in whys[10])
    assert whys[default] and not any("search skipped" in w for w in whys[default])
