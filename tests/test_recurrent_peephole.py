"""LSTM peepholes (ONNX LSTM input P = [p_i, p_o, p_f]): i and f add p * c_{t-1}, o adds p * c_t.

* float: nn.lstm's ``peepholes`` attribute, the interpreter against onnxruntime;
* Qm.n: qnn.lstm's int16 peepholes, the product with the cell state shifted into the gate's Q3.12;
  close to float, the C equal to the simulator (host gcc with sanitizers);
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from qcc.sim.interpreter import run_graph

from onnx_builders import build, check_against_ort, rand
from recurrent_models import cell_weights

STEPS, INPUTS = 12, 5


def peephole_model(hidden: int = 6, seed: int = 0, outputs=("Y", "Y_h", "Y_c"), peep_scale: float = 0.5,
                   initial: bool = False):
    """One LSTM node with random peepholes (|p| <= peep_scale), optionally constant initial states."""
    w, r, b = cell_weights("LSTM", INPUTS, hidden, seed)
    rng = np.random.default_rng(seed + 5)
    inits = {"W": w, "R": r, "B": b, "P": rng.uniform(-peep_scale, peep_scale, (1, 3 * hidden)).astype(np.float32)}
    names = ["X", "W", "R", "B", "", "", "", "P"]
    if initial:
        inits["h0"] = rng.uniform(-0.5, 0.5, (1, 1, hidden)).astype(np.float32)
        inits["c0"] = rng.uniform(-1, 1, (1, 1, hidden)).astype(np.float32)
        names[5:7] = ["h0", "c0"]
    node = helper.make_node("LSTM", names, list(outputs), hidden_size=hidden, name="lstm_p")
    return build([node], {"X": [STEPS, 1, INPUTS]}, list(outputs), inits, opset=14)


# ---------------------------------------------------------------- float
@pytest.mark.parametrize("initial", [False, True])
def test_float_peepholes_match_onnxruntime(initial):
    model = peephole_model(initial=initial, peep_scale=1.5)
    g = check_against_ort(model, {"X": rand(STEPS, 1, INPUTS, seed=3)})
    (op,) = g.find("nn.lstm")
    assert op.operands[6].shape == (18,)
    # the peepholes change the numbers (a test of nothing otherwise)
    plain = [i for i in model.graph.initializer if i.name == "P"][0]
    plain.CopyFrom(onnx.numpy_helper.from_array(np.zeros((1, 18), np.float32), "P"))
    from qcc.frontend import load_onnx
    x = rand(STEPS, 1, INPUTS, seed=3)
    assert np.abs(run_graph(load_onnx(model), {"X": x})["Y"] - run_graph(g, {"X": x})["Y"]).max() > 1e-2
