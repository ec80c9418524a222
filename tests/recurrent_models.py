"""ONNX recurrent models for tests: LSTM / GRU nodes and classifiers shaped like ML-KWS's.

Weights are random but scaled like trained ones (uniform in +-1/sqrt(H), the
PyTorch initialisation), so gates and cell states cover realistic ranges.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from onnx import helper

from onnx_builders import build


def cell_weights(kind: str, inputs: int, hidden: int, seed: int = 0, scale: float = 1.0):
    gates = 4 if kind == "LSTM" else 3
    rng = np.random.default_rng(seed)
    k = scale / np.sqrt(hidden)
    w = rng.uniform(-k, k, (1, gates * hidden, inputs)).astype(np.float32)
    r = rng.uniform(-k, k, (1, gates * hidden, hidden)).astype(np.float32)
    b = rng.uniform(-k, k, (1, 2 * gates * hidden)).astype(np.float32)
    return w, r, b


def recurrent_node_model(kind: str = "LSTM", steps: int = 5, inputs: int = 3, hidden: int = 4, *,
                         seed: int = 0, layout: int = 0, with_bias: bool = True, initial: str = "absent",
                         outputs=("Y", "Y_h", "Y_c"), extra_attrs: Optional[dict] = None, scale: float = 1.0):
    """One LSTM/GRU node; ``initial`` is 'absent', 'input' (graph inputs h0/c0) or 'const'."""
    w, r, b = cell_weights(kind, inputs, hidden, seed, scale)
    inits = {"W": w, "R": r}
    if with_bias:
        inits["B"] = b
    ins = {"X": [steps, 1, inputs] if layout == 0 else [1, steps, inputs]}
    names = ["X", "W", "R", "B" if with_bias else "", ""]
    states = ["h0", "c0"] if kind == "LSTM" else ["h0"]
    rng = np.random.default_rng(seed + 1)
    for s in states:
        if initial == "absent":
            names.append("")
        elif initial == "input":
            ins[s] = [1, 1, hidden]
            names.append(s)
        else:
            inits[s] = rng.uniform(-0.5, 0.5, (1, 1, hidden)).astype(np.float32)
            names.append(s)
    while names and not names[-1]:
        names.pop()
    outs = list(outputs) if kind == "LSTM" else [o for o in outputs if o != "Y_c"]
    attrs = {"hidden_size": hidden, **({"layout": layout} if layout else {}), **(extra_attrs or {})}
    node = helper.make_node(kind, names, outs, name=f"{kind.lower()}1", **attrs)
    return build([node], ins, outs, inits, opset=14)


def classifier_model(kind: str = "LSTM", steps: int = 49, features: int = 10, hidden: int = 32,
                     classes: int = 12, seed: int = 0, linear_before_reset: int = 1):
    """input [1, T, F] -> LSTM/GRU (batch-first, as PyTorch exports with batch_first) -> last h -> Gemm."""
    w, r, b = cell_weights(kind, features, hidden, seed)
    rng = np.random.default_rng(seed + 7)
    fc_w = (rng.uniform(-1, 1, (classes, hidden)) * 3 / np.sqrt(hidden)).astype(np.float32)
    fc_b = rng.uniform(-0.1, 0.1, classes).astype(np.float32)
    attrs = {"hidden_size": hidden}
    if kind == "GRU":
        attrs["linear_before_reset"] = linear_before_reset
    nodes = [helper.make_node("Transpose", ["input"], ["xt"], perm=[1, 0, 2], name="to_time_major"),
             helper.make_node(kind, ["xt", "W", "R", "B"], ["Y", "Y_h"], name="rnn", **attrs),
             helper.make_node("Squeeze", ["Y_h", "axes0"], ["h"], name="squeeze"),
             helper.make_node("Gemm", ["h", "fc_w", "fc_b"], ["logits"], transB=1, name="fc")]
    inits = {"W": w, "R": r, "B": b, "axes0": np.array([0], np.int64), "fc_w": fc_w, "fc_b": fc_b}
    return build(nodes, {"input": [1, steps, features]}, ["logits"], inits, opset=14)


if __name__ == "__main__":  # for golden tests: python recurrent_models.py lstm|lstm-states|gru|gru-lbr
    import sys

    from qcc.frontend import load_onnx
    from qcc.ir.printer import print_graph

    models = {
        "lstm": lambda: recurrent_node_model("LSTM", steps=3, inputs=2, hidden=2),
        "lstm-states": lambda: recurrent_node_model("LSTM", steps=3, inputs=2, hidden=2, initial="input",
                                                    layout=1, outputs=("Y", "Y_h")),
        "gru": lambda: recurrent_node_model("GRU", steps=3, inputs=2, hidden=2, with_bias=False),
        "gru-lbr": lambda: recurrent_node_model("GRU", steps=3, inputs=2, hidden=2, initial="const",
                                                extra_attrs={"linear_before_reset": 1}),
    }
    # The imported IR as text (what `qcc-opt model.onnx` prints), without a file in the tree.
    sys.stdout.write(print_graph(load_onnx(models[sys.argv[1]]())))
