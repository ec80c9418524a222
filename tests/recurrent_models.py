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


def torch_style_model(kind: str = "LSTM", steps: int = 49, features: int = 10, hidden: int = 16,
                      classes: int = 12, seed: int = 0):
    """What torch.onnx.export makes of ``out, _ = rnn(x); fc(out[:, -1, :])`` with batch_first=True:
    Transpose -> LSTM/GRU (zero initial states as Constant nodes) -> Squeeze(direction) -> Transpose
    -> Gather(time, -1) -> Gemm."""
    w, r, b = cell_weights(kind, features, hidden, seed)
    rng = np.random.default_rng(seed + 5)
    fc_w = (rng.uniform(-1, 1, (classes, hidden)) * 3 / np.sqrt(hidden)).astype(np.float32)
    zeros = helper.make_tensor("z", 1, [1, 1, hidden], [0.0] * hidden)
    states = ["h0", "c0"] if kind == "LSTM" else ["h0"]
    outs = ["Y", "Y_h", "Y_c"] if kind == "LSTM" else ["Y", "Y_h"]
    attrs = {"hidden_size": hidden, **({"linear_before_reset": 1} if kind == "GRU" else {})}
    nodes = [helper.make_node("Constant", [], [s], value=zeros, name=f"/{s}") for s in states]
    nodes += [helper.make_node("Transpose", ["input"], ["xt"], perm=[1, 0, 2], name="/rnn/Transpose"),
              helper.make_node(kind, ["xt", "W", "R", "B", ""] + states, outs, name=f"/rnn/{kind}", **attrs),
              helper.make_node("Squeeze", ["Y", "one"], ["ys"], name="/rnn/Squeeze"),
              helper.make_node("Transpose", ["ys"], ["yb"], perm=[1, 0, 2], name="/rnn/Transpose_1"),
              helper.make_node("Gather", ["yb", "last"], ["h"], axis=1, name="/Gather"),
              helper.make_node("Gemm", ["h", "fc_w", "fc_b"], ["logits"], transB=1, name="/fc/Gemm")]
    inits = {"W": w, "R": r, "B": b, "one": np.array([1], np.int64), "last": np.array(-1, np.int64),
             "fc_w": fc_w, "fc_b": np.zeros(classes, np.float32)}
    return build(nodes, {"input": [1, steps, features]}, ["logits"], inits, opset=14)


def crnn_model(cells=(("GRU", 0),), hidden: int = 32, classes: int = 12, seed: int = 0):
    """ML-KWS CRNN: input [1, 1, 49, 10] -> Conv 10x4 stride 2x1 (16 ch) + ReLU -> [20 steps, 16 x 7]
    -> the recurrent ``cells`` ((kind, linear_before_reset) each, one feeding the next) -> last h -> Gemm."""
    rng = np.random.default_rng(seed)
    conv_w = (rng.standard_normal((16, 1, 10, 4)) / np.sqrt(40) / 30).astype(np.float32)
    conv_b = (rng.standard_normal(16) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], kernel_shape=[10, 4], strides=[2, 1],
                              name="conv"),
             helper.make_node("Relu", ["c"], ["cr"], name="relu"),
             helper.make_node("Transpose", ["cr"], ["ct"], perm=[2, 0, 1, 3], name="to_time_major"),
             helper.make_node("Reshape", ["ct", "seq_shape"], ["seq0"], name="to_sequence")]
    inits = {"conv_w": conv_w, "conv_b": conv_b, "seq_shape": np.array([20, 1, 16 * 7], np.int64),
             "axes0": np.array([0], np.int64), "axes1": np.array([1], np.int64)}
    size = 16 * 7
    for k, (kind, lbr) in enumerate(cells):
        w, r, b = cell_weights(kind, size, hidden, seed + k)
        attrs = {"hidden_size": hidden, **({"linear_before_reset": lbr} if kind == "GRU" else {})}
        nodes += [helper.make_node(kind, [f"seq{k}", f"W{k}", f"R{k}", f"B{k}"], [f"Y{k}", f"Y{k}_h"],
                                   name=f"rnn{k}", **attrs),
                  helper.make_node("Squeeze", [f"Y{k}", "axes1"], [f"seq{k + 1}"], name=f"squeeze{k}")]
        inits.update({f"W{k}": w, f"R{k}": r, f"B{k}": b})
        size = hidden
    fc_w = (rng.uniform(-1, 1, (classes, hidden)) * 3 / np.sqrt(hidden)).astype(np.float32)
    nodes += [helper.make_node("Squeeze", [f"Y{len(cells) - 1}_h", "axes0"], ["h"], name="squeeze"),
              helper.make_node("Gemm", ["h", "fc_w", "fc_b"], ["logits"], transB=1, name="fc")]
    inits.update({"fc_w": fc_w, "fc_b": np.zeros(classes, np.float32)})
    return build(nodes, {"input": [1, 1, 49, 10]}, ["logits"], inits, opset=14)


GOLDEN_INPUTS = {  # tests/golden/inputs/<name>.onnx, imported by tests/golden/import-recurrent.qir
    "lstm": lambda: recurrent_node_model("LSTM", steps=3, inputs=2, hidden=2),
    "lstm-states": lambda: recurrent_node_model("LSTM", steps=3, inputs=2, hidden=2, initial="input", layout=1,
                                                outputs=("Y", "Y_h")),
    "gru": lambda: recurrent_node_model("GRU", steps=3, inputs=2, hidden=2, with_bias=False),
    "gru-lbr": lambda: recurrent_node_model("GRU", steps=3, inputs=2, hidden=2, initial="const",
                                            extra_attrs={"linear_before_reset": 1}),
}


if __name__ == "__main__":  # python tests/recurrent_models.py: (re)writes the golden inputs
    from pathlib import Path

    import onnx

    folder = Path(__file__).resolve().parent / "golden" / "inputs"
    folder.mkdir(exist_ok=True)
    for name, make in GOLDEN_INPUTS.items():
        onnx.save(make(), folder / f"{name}.onnx")
