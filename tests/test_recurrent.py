"""Recurrent ops (nn.lstm, nn.gru): shape rules, ONNX import and refusals, float kernels vs onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from qcc.errors import OpError, UnsupportedModelError
from qcc.frontend import load_onnx
from qcc.ir.graph import Graph
from qcc.ir.parser import parse
from qcc.ir.printer import print_graph
from qcc.ir.types import TensorType
from qcc.sim.interpreter import run_graph
from qcc.sim.recurrent import gru_float, lstm_float

from onnx_builders import build, check_against_ort, rand, run_ort
from recurrent_models import (GOLDEN_INPUTS, cell_weights, classifier_model, recurrent_node_model, scan_lstm_model,
                              unrolled_lstm_model)


def _feeds(model, seed=3):
    feeds = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = rand(*shape, seed=seed) * (1.0 if i.name == "X" else 0.5)
    return feeds


@pytest.mark.parametrize("kind, steps, inputs, hidden, initial, lbr", [
    ("LSTM", 1, 3, 4, "absent", 0), ("LSTM", 7, 5, 3, "input", 0), ("LSTM", 4, 1, 8, "const", 0),
    ("GRU", 1, 3, 4, "absent", 0), ("GRU", 6, 5, 3, "input", 0), ("GRU", 6, 5, 3, "input", 1),
    ("GRU", 4, 2, 8, "const", 1)])
def test_float_matches_onnxruntime(kind, steps, inputs, hidden, initial, lbr):
    extra = {"linear_before_reset": lbr} if kind == "GRU" else None
    model = recurrent_node_model(kind, steps, inputs, hidden, initial=initial, extra_attrs=extra, seed=steps)
    graph = check_against_ort(model, _feeds(model), rtol=1e-5, atol=2e-6)
    assert len(graph.find("nn." + kind.lower())) == 1


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_batch_first_layout_gives_the_time_major_numbers(kind):
    """onnxruntime has no layout = 1 kernel; with batch 1 both layouts hold the same numbers."""
    seq = recurrent_node_model(kind, 5, 3, 4, layout=0)
    bf = recurrent_node_model(kind, 5, 3, 4, layout=1)
    x = rand(5, 1, 3, seed=9)
    want = run_ort(seq, {"X": x})
    got = run_graph(load_onnx(bf), {"X": x.reshape(1, 5, 3)})
    np.testing.assert_allclose(got["Y"].reshape(-1), want["Y"].reshape(-1), rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(got["Y_h"], want["Y_h"], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_classifier_matches_onnxruntime(kind):
    model = classifier_model(kind, steps=49, features=10, hidden=16)
    check_against_ort(model, {"input": rand(1, 49, 10, seed=2)}, rtol=1e-4, atol=1e-5)


def test_trace_records_gates_and_cell():
    w, r, b = cell_weights("LSTM", 3, 4)
    trace = {}
    x = rand(6, 3)
    y, h, c = lstm_float(x, w[0], r[0], b[0], np.zeros((1, 4)), np.zeros((1, 4)), trace=trace)
    assert trace["c"].shape == (6, 4) and set("iofg") <= set(trace)
    np.testing.assert_array_equal(trace["c"][-1], c[0])
    np.testing.assert_allclose(trace["o"] * np.tanh(trace["c"]), y, rtol=1e-6)
    w, r, b = cell_weights("GRU", 3, 4)
    trace = {}
    y, h = gru_float(x, w[0], r[0], b[0], np.zeros((1, 4)), 1, trace=trace)
    assert trace["z"].shape == (6, 4) and "hn" in trace
    np.testing.assert_allclose((1 - trace["z"][0]) * trace["n"][0], y[0], rtol=1e-6)


# ---------------------------------------------------------------- IR: shape rule, verifier, text
def test_shape_rule_and_verifier():
    g = Graph("g")
    x = g.add_input("x", TensorType((5, 3)))
    w = g.add_const(np.zeros((16, 3), np.float32))
    r = g.add_const(np.zeros((16, 4), np.float32))
    b = g.add_const(np.zeros(32, np.float32))
    h0 = g.add_const(np.zeros((1, 4), np.float32))
    op = g.add_op("nn.lstm", [x, w, r, b, h0, h0], {"hidden_size": 4})
    assert [v.shape for v in op.results] == [(5, 4), (1, 4), (1, 4)]
    g.set_outputs(list(op.results), ["y", "h", "c"])
    g.verify()
    text = print_graph(g, elide_over=None)
    assert print_graph(parse(text), elide_over=None) == text
    with pytest.raises(OpError, match="operand 'r' must have shape"):
        g.add_op("nn.lstm", [x, w, w, b, h0, h0], {"hidden_size": 4})
    with pytest.raises(OpError, match="expects 5 operands"):
        g.add_op("nn.gru", [x, w, r, b], {"hidden_size": 4})
    with pytest.raises(Exception, match="operand 'w' must have shape"):
        parse(text.replace("{hidden_size = 4}", "{hidden_size = 3}")).verify()
    w3, r3, b3 = (g.add_const(np.zeros(s, np.float32)) for s in ((12, 3), (12, 4), (24,)))
    gru = g.add_op("nn.gru", [x, w3, r3, b3, h0], {"hidden_size": 4, "linear_before_reset": 1})
    assert [v.shape for v in gru.results] == [(5, 4), (1, 4)]
    gru.attrs["linear_before_reset"] = 2
    with pytest.raises(OpError, match="linear_before_reset must be 0 or 1"):
        gru.opdef.verify(gru)


# ---------------------------------------------------------------- refusals name the node
def _refused(model, match):
    with pytest.raises(UnsupportedModelError) as e:
        load_onnx(model)
    text = str(e.value)
    assert "lstm1" in text or "gru1" in text, text
    assert match in text, text


@pytest.mark.parametrize("kind, extra, match", [
    ("LSTM", {"direction": "reverse"}, "direction 'reverse'"),
    ("GRU", {"direction": "bidirectional"}, "direction 'bidirectional'"),
    ("LSTM", {"clip": 3.0}, "clip"),
    ("LSTM", {"input_forget": 1}, "input_forget"),
    ("LSTM", {"activations": ["Sigmoid", "Relu", "Tanh"]}, "activations"),
    ("GRU", {"activations": ["HardSigmoid", "Tanh"]}, "activations"),
])
def test_unsupported_attributes_are_refused(kind, extra, match):
    model = recurrent_node_model(kind, 3, 2, 2, extra_attrs=extra)
    _refused(model, match)


def test_batch_sequence_lens_and_run_time_peepholes_are_refused():
    w, r, b = cell_weights("LSTM", 2, 2)
    inits = {"W": w, "R": r, "B": b}
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=2, name="lstm1")
    _refused(build([node], {"X": [3, 2, 2]}, ["Y"], inits, opset=14), "batch size 2")
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "lens"], ["Y"], hidden_size=2, name="lstm1")
    _refused(build([node], {"X": [3, 1, 2], "lens": [1]}, ["Y"], inits, opset=14,
                   in_types={"lens": 6}), "sequence_lens")
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "", "", "P"], ["Y"], hidden_size=2, name="lstm1")
    _refused(build([node], {"X": [3, 1, 2], "P": [1, 6]}, ["Y"], inits, opset=14),
             "peephole weights P ('P') must be a constant")
    node = helper.make_node("LSTM", ["X", "Wx", "R", "B"], ["Y"], hidden_size=2, name="lstm1")
    _refused(build([node], {"X": [3, 1, 2], "Wx": [1, 8, 2]}, ["Y"], inits, opset=14), "must be a constant")


def test_constant_full_sequence_lens_and_zero_peepholes_are_accepted():
    w, r, b = cell_weights("LSTM", 2, 2)
    inits = {"W": w, "R": r, "B": b, "lens": np.array([3], np.int32), "P": np.zeros((1, 6), np.float32)}
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "lens", "", "", "P"], ["Y"], hidden_size=2, name="lstm1")
    model = build([node], {"X": [3, 1, 2]}, ["Y"], inits, opset=14)
    check_against_ort(model, {"X": rand(3, 1, 2)})


@pytest.mark.parametrize("name", sorted(GOLDEN_INPUTS))
def test_golden_inputs_are_the_builders_models(name):
    """tests/golden/inputs/*.onnx (imported by golden/import-recurrent.qir) are what the builder makes."""
    import onnx
    from pathlib import Path
    path = Path(__file__).resolve().parent / "golden" / "inputs" / f"{name}.onnx"
    assert onnx.load(path).SerializeToString() == GOLDEN_INPUTS[name]().SerializeToString()


# ---------------------------------------------------------------- tf2onnx forms: Scan, unrolled cells
@pytest.mark.parametrize("proj", [0, 6])
def test_scan_lstm_cell_matches_onnxruntime(proj):
    """dynamic_rnn over an LSTMCell as a Scan: without a projection the cell is recognised as one nn.lstm
    (qcc/frontend/tf_cells.py); with num_proj 6 it is unrolled at import, per step ops."""
    model = scan_lstm_model(steps=12, inputs=5, hidden=8, proj=proj)
    graph = check_against_ort(model, {"input": rand(12, 1, 5, seed=4) * 0.5}, rtol=1e-4, atol=1e-5)
    if proj:
        assert len(graph.find("nn.sigmoid")) == 12 * 3 and len(graph.find("nn.gather")) == 12 * 5
        assert not graph.find("nn.lstm")
    else:
        assert len(graph.find("nn.lstm")) == 1 and not graph.find("nn.sigmoid")


def test_unrolled_lstm_cell_matches_onnxruntime():
    graph = check_against_ort(unrolled_lstm_model(steps=6, inputs=5, hidden=8),
                              {"input": rand(1, 6, 5, seed=5) * 0.5}, rtol=1e-4, atol=1e-5)
    assert len(graph.find("nn.tanh")) == 12


def test_scan_refusals_name_the_node():
    model = scan_lstm_model(steps=4, inputs=3, hidden=4)
    scan = model.graph.node[0]
    scan.attribute.append(helper.make_attribute("scan_input_directions", [1]))
    with pytest.raises(UnsupportedModelError, match=r'"rnn/scan" \(Scan\): reverse scan directions'):
        load_onnx(model)
    model = scan_lstm_model(steps=4, inputs=3, hidden=4)
    body = model.graph.node[0].attribute[0].g
    body.node[5].op_type = "Erf"  # an op qcc does not lift, inside the body
    with pytest.raises(UnsupportedModelError, match=r'"rnn/scan" \(Scan\): body node "cell/sig_f" \(Erf\)'):
        load_onnx(model)
    with pytest.raises(UnsupportedModelError, match=r'"rnn/scan" \(Scan\): unrolling it would make more than'):
        load_onnx(scan_lstm_model(steps=30000, inputs=3, hidden=4))  # a hostile trip count: refused at once
