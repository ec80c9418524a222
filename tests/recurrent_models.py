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
    """What torch.onnx.export (torch 2.13, opset 13/14) makes of ``out, _ = rnn(x); fc(out[:, -1, :])``
    with batch_first=True: Transpose -> LSTM/GRU -> Squeeze(direction) -> Transpose -> Gather(time, -1)
    -> Gemm. The zero initial states are a [1, 1, H] Constant Expanded to
    Concat([1], Unsqueeze(Gather(Shape(xt), 1)), [H]), the batch read off the input's shape."""
    w, r, b = cell_weights(kind, features, hidden, seed)
    rng = np.random.default_rng(seed + 5)
    fc_w = (rng.uniform(-1, 1, (classes, hidden)) * 3 / np.sqrt(hidden)).astype(np.float32)
    zeros = helper.make_tensor("z", 1, [1, 1, hidden], [0.0] * hidden)
    states = ["h0", "c0"] if kind == "LSTM" else ["h0"]
    outs = ["Y", "Y_h", "Y_c"] if kind == "LSTM" else ["Y", "Y_h"]
    attrs = {"hidden_size": hidden, **({"linear_before_reset": 1} if kind == "GRU" else {})}
    nodes = [helper.make_node("Transpose", ["input"], ["xt"], perm=[1, 0, 2], name="/rnn/Transpose"),
             helper.make_node("Constant", [], ["z"], value=zeros, name="/rnn/Constant"),
             helper.make_node("Shape", ["xt"], ["xt_shape"], name="/rnn/Shape"),
             helper.make_node("Gather", ["xt_shape", "batch_axis"], ["batch"], name="/rnn/Gather"),
             helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"], name="/rnn/Unsqueeze"),
             helper.make_node("Concat", ["one", "batch1", "hidden"], ["state_shape"], axis=0, name="/rnn/Concat")]
    nodes += [helper.make_node("Expand", ["z", "state_shape"], [s], name=f"/rnn/Expand_{i}")
              for i, s in enumerate(states)]
    nodes += [
              helper.make_node(kind, ["xt", "W", "R", "B", ""] + states, outs, name=f"/rnn/{kind}", **attrs),
              helper.make_node("Squeeze", ["Y", "one"], ["ys"], name="/rnn/Squeeze"),
              helper.make_node("Transpose", ["ys"], ["yb"], perm=[1, 0, 2], name="/rnn/Transpose_1"),
              helper.make_node("Gather", ["yb", "last"], ["h"], axis=1, name="/Gather"),
              helper.make_node("Gemm", ["h", "fc_w", "fc_b"], ["logits"], transB=1, name="/fc/Gemm")]
    inits = {"W": w, "R": r, "B": b, "one": np.array([1], np.int64), "last": np.array(-1, np.int64),
             "batch_axis": np.array(1, np.int64), "axes0": np.array([0], np.int64),
             "hidden": np.array([hidden], np.int64),
             "fc_w": fc_w, "fc_b": np.zeros(classes, np.float32)}
    return build(nodes, {"input": [1, steps, features]}, ["logits"], inits, opset=14)


def tf_lstm_cell_nodes(x: str, h: str, c: str, prefix: str, out_h: str, out_c: str, proj: bool = False):
    """A TF1 LSTMCell as tf2onnx writes it: [x, h] @ K + b, Split(i, j, f, o), c = c * sigmoid(f + 1)
    + sigmoid(i) * tanh(j), h = sigmoid(o) * tanh(c) (then h @ P with num_proj). Weights K, b, fb, P."""
    p = prefix
    nodes = [helper.make_node("Concat", [x, h], [p + "xh"], axis=1, name=p + "concat"),
             helper.make_node("MatMul", [p + "xh", "K"], [p + "mm"], name=p + "matmul"),
             helper.make_node("Add", [p + "mm", "b"], [p + "z"], name=p + "bias_add"),
             helper.make_node("Split", [p + "z"], [p + "i", p + "j", p + "f", p + "o"], axis=1, name=p + "split"),
             helper.make_node("Add", [p + "f", "fb"], [p + "f1"], name=p + "forget_bias"),
             helper.make_node("Sigmoid", [p + "f1"], [p + "sf"], name=p + "sig_f"),
             helper.make_node("Sigmoid", [p + "i"], [p + "si"], name=p + "sig_i"),
             helper.make_node("Tanh", [p + "j"], [p + "tj"], name=p + "tanh_j"),
             helper.make_node("Sigmoid", [p + "o"], [p + "so"], name=p + "sig_o"),
             helper.make_node("Mul", [c, p + "sf"], [p + "cf"], name=p + "mul_cf"),
             helper.make_node("Mul", [p + "si", p + "tj"], [p + "ij"], name=p + "mul_ij"),
             helper.make_node("Add", [p + "cf", p + "ij"], [out_c], name=p + "add_c"),
             helper.make_node("Tanh", [out_c], [p + "tc"], name=p + "tanh_c")]
    if proj:
        nodes += [helper.make_node("Mul", [p + "so", p + "tc"], [p + "hp"], name=p + "mul_h"),
                  helper.make_node("MatMul", [p + "hp", "P"], [out_h], name=p + "projection")]
    else:
        nodes.append(helper.make_node("Mul", [p + "so", p + "tc"], [out_h], name=p + "mul_h"))
    return nodes


def tf_lstm_weights(inputs: int, hidden: int, proj: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = hidden if not proj else proj
    k = 1 / np.sqrt(hidden)
    inits = {"K": rng.uniform(-k, k, (inputs + out, 4 * hidden)).astype(np.float32),
             "b": rng.uniform(-k, k, 4 * hidden).astype(np.float32), "fb": np.float32(1.0)}
    if proj:
        inits["P"] = rng.uniform(-k, k, (hidden, proj)).astype(np.float32)
    return inits


def _lstm_head(nodes, inits, h_last: str, hidden: int, classes: int, seed: int):
    rng = np.random.default_rng(seed + 9)
    inits["fc_w"] = (rng.uniform(-1, 1, (classes, hidden)) * 3 / np.sqrt(hidden)).astype(np.float32)
    inits["fc_b"] = np.zeros(classes, np.float32)
    nodes.append(helper.make_node("Gemm", [h_last, "fc_w", "fc_b"], ["logits"], transB=1, name="fc"))


def scan_lstm_model(steps: int = 49, inputs: int = 10, hidden: int = 16, proj: int = 0, classes: int = 12,
                    seed: int = 0):
    """tf2onnx's form of dynamic_rnn over an LSTMCell (optionally num_proj): a Scan over time whose body
    is the cell (tf_lstm_cell_nodes), then an FC on the final h. Input [T, 1, I] (time-major)."""
    out = proj or hidden
    body = helper.make_graph(
        tf_lstm_cell_nodes("x_t", "h_in", "c_in", "cell/", "h_out", "c_out", bool(proj))
        + [helper.make_node("Identity", ["h_out"], ["y_t"], name="cell/y")],
        "lstm_body",
        [helper.make_tensor_value_info("h_in", 1, [1, out]), helper.make_tensor_value_info("c_in", 1, [1, hidden]),
         helper.make_tensor_value_info("x_t", 1, [1, inputs])],
        [helper.make_tensor_value_info("h_out", 1, [1, out]), helper.make_tensor_value_info("c_out", 1, [1, hidden]),
         helper.make_tensor_value_info("y_t", 1, [1, out])])
    inits = tf_lstm_weights(inputs, hidden, proj, seed)
    inits.update({"h0": np.zeros((1, out), np.float32), "c0": np.zeros((1, hidden), np.float32)})
    nodes = [helper.make_node("Scan", ["h0", "c0", "input"], ["h_last", "c_last", "Y"], body=body,
                              num_scan_inputs=1, name="rnn/scan")]
    _lstm_head(nodes, inits, "h_last", out, classes, seed)
    return build(nodes, {"input": [steps, 1, inputs]}, ["logits"], inits, opset=14)


def unrolled_lstm_model(steps: int = 8, inputs: int = 10, hidden: int = 16, classes: int = 12, seed: int = 0):
    """The same cell unrolled per time step (tf2onnx on a static_rnn): Split of the [1, T, I] input into
    steps, Squeeze, then one copy of the cell per step."""
    inits = tf_lstm_weights(inputs, hidden, 0, seed)
    inits.update({"h0": np.zeros((1, hidden), np.float32), "c0": np.zeros((1, hidden), np.float32),
                  "axes1": np.array([1], np.int64)})
    nodes = [helper.make_node("Split", ["input"], [f"xs{t}" for t in range(steps)], axis=1, name="unstack")]
    h, c = "h0", "c0"
    for t in range(steps):
        nodes.append(helper.make_node("Squeeze", [f"xs{t}", "axes1"], [f"x{t}"], name=f"step{t}/squeeze"))
        nodes += tf_lstm_cell_nodes(f"x{t}", h, c, f"step{t}/", f"state_h{t}", f"state_c{t}")
        h, c = f"state_h{t}", f"state_c{t}"
    _lstm_head(nodes, inits, h, hidden, classes, seed)
    return build(nodes, {"input": [1, steps, inputs]}, ["logits"], inits, opset=14)


def scan_gru_model(steps: int = 20, inputs: int = 10, hidden: int = 16, classes: int = 12, seed: int = 0):
    """tf2onnx's form of dynamic_rnn over a TF1 GRUCell: a Scan whose body computes
    r, u = split(sigmoid([x, h] @ Wg + bg)); c = tanh([x, r * h] @ Wc + bc); h = u * h + (1 - u) * c."""
    nodes = [helper.make_node("Concat", ["x_t", "h_in"], ["xh"], axis=1, name="cell/concat"),
             helper.make_node("MatMul", ["xh", "Wg"], ["g0"], name="cell/gates/matmul"),
             helper.make_node("Add", ["g0", "bg"], ["g1"], name="cell/gates/bias_add"),
             helper.make_node("Sigmoid", ["g1"], ["g"], name="cell/gates/sigmoid"),
             helper.make_node("Split", ["g"], ["r", "u"], axis=1, name="cell/gates/split"),
             helper.make_node("Mul", ["r", "h_in"], ["rh"], name="cell/r_h"),
             helper.make_node("Concat", ["x_t", "rh"], ["xrh"], axis=1, name="cell/concat_1"),
             helper.make_node("MatMul", ["xrh", "Wc"], ["c0_"], name="cell/candidate/matmul"),
             helper.make_node("Add", ["c0_", "bc"], ["c1"], name="cell/candidate/bias_add"),
             helper.make_node("Tanh", ["c1"], ["c"], name="cell/candidate/tanh"),
             helper.make_node("Mul", ["u", "h_in"], ["uh"], name="cell/u_h"),
             helper.make_node("Sub", ["one", "u"], ["nu"], name="cell/one_minus_u"),
             helper.make_node("Mul", ["nu", "c"], ["nc"], name="cell/nu_c"),
             helper.make_node("Add", ["uh", "nc"], ["h_out"], name="cell/h"),
             helper.make_node("Identity", ["h_out"], ["y_t"], name="cell/y")]
    body = helper.make_graph(
        nodes, "gru_body",
        [helper.make_tensor_value_info("h_in", 1, [1, hidden]), helper.make_tensor_value_info("x_t", 1, [1, inputs])],
        [helper.make_tensor_value_info("h_out", 1, [1, hidden]), helper.make_tensor_value_info("y_t", 1, [1, hidden])])
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(hidden)
    inits = {"Wg": rng.uniform(-k, k, (inputs + hidden, 2 * hidden)).astype(np.float32),
             "bg": np.ones(2 * hidden, np.float32), "Wc": rng.uniform(-k, k, (inputs + hidden, hidden)).astype(np.float32),
             "bc": np.zeros(hidden, np.float32), "one": np.float32(1.0), "h0": np.zeros((1, hidden), np.float32)}
    graph_nodes = [helper.make_node("Scan", ["h0", "input"], ["h_last", "Y"], body=body, num_scan_inputs=1,
                                    name="rnn/scan")]
    _lstm_head(graph_nodes, inits, "h_last", hidden, classes, seed)
    return build(graph_nodes, {"input": [steps, 1, inputs]}, ["logits"], inits, opset=14)


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


# ---------------------------------------------------------------- tf2onnx's dynamic_rnn Scans (ML-KWS forms)
def _tf_lstm_body(p: str, x: str, h: str, c: str, h_out: str, c_out: str, peephole: bool, proj: bool):
    """The body nodes of a TF1 BasicLSTMCell (or LSTMCell with peepholes and a projection) as tf2onnx
    writes them: Concat -> Gemm -> Split(i, j, f, o), in the operand orders of ML-KWS's frozen graphs."""
    n = helper.make_node
    nodes = [n("Concat", [x, h], [p + "concat"], axis=1, name=p + "concat"),
             n("Gemm", [p + "concat", p + "kernel", p + "bias"], [p + "gates"], transA=0, transB=0,
               name=p + "MatMul_Gemm"),
             n("Split", [p + "gates"], [p + "i", p + "j", p + "f", p + "o"], axis=1, name=p + "split"),
             n("Add", [p + "f", p + "forget_bias"], [p + "f1"], name=p + "add"),
             n("Tanh", [p + "j"], [p + "tj"], name=p + "Tanh")]
    if peephole:
        nodes += [n("Mul", [c, p + "w_i_diag"], [p + "pi"], name=p + "mul_2"),
                  n("Mul", [c, p + "w_f_diag"], [p + "pf"], name=p + "mul"),
                  n("Add", [p + "i", p + "pi"], [p + "i1"], name=p + "add_2"),
                  n("Add", [p + "f1", p + "pf"], [p + "f2"], name=p + "add_1"),
                  n("Sigmoid", [p + "i1"], [p + "si"], name=p + "Sigmoid_1"),
                  n("Sigmoid", [p + "f2"], [p + "sf"], name=p + "Sigmoid"),
                  n("Mul", [p + "sf", c], [p + "cf"], name=p + "mul_1"),
                  n("Mul", [p + "si", p + "tj"], [p + "ij"], name=p + "mul_3"),
                  n("Add", [p + "cf", p + "ij"], [c_out], name=p + "add_3"),
                  n("Mul", [c_out, p + "w_o_diag"], [p + "po"], name=p + "mul_4"),
                  n("Add", [p + "o", p + "po"], [p + "o1"], name=p + "add_4"),
                  n("Sigmoid", [p + "o1"], [p + "so"], name=p + "Sigmoid_2")]
    else:
        nodes += [n("Sigmoid", [p + "f1"], [p + "sf"], name=p + "Sigmoid"),
                  n("Mul", [c, p + "sf"], [p + "cf"], name=p + "mul"),
                  n("Sigmoid", [p + "o"], [p + "so"], name=p + "Sigmoid_2"),
                  n("Sigmoid", [p + "i"], [p + "si"], name=p + "Sigmoid_1"),
                  n("Mul", [p + "si", p + "tj"], [p + "ij"], name=p + "mul_1"),
                  n("Add", [p + "cf", p + "ij"], [c_out], name=p + "add_1")]
    nodes.append(n("Tanh", [c_out], [p + "tc"], name=p + "Tanh_1"))
    if proj:
        nodes += [n("Mul", [p + "so", p + "tc"], [p + "m"], name=p + "mul_5"),
                  n("MatMul", [p + "m", p + "projection"], [h_out], name=p + "MatMul_1")]
    else:
        nodes.append(n("Mul", [p + "tc", p + "so"], [h_out], name=p + ("mul_5" if peephole else "mul_2")))
    return nodes


def _tf_gru_body(p: str, x: str, h: str, h_out: str):
    """A TF1 GRUCell as tf2onnx writes it: r, u = Split(sigmoid([x, h] @ Kg + bg));
    n = tanh([x, r * h] @ Kc + bc); h' = u * h + (1 - u) * n."""
    n = helper.make_node
    return [n("Concat", [x, h], [p + "concat"], axis=1, name=p + "concat"),
            n("Gemm", [p + "concat", p + "gates/kernel", p + "gates/bias"], [p + "g"], transA=0, transB=0,
              name=p + "MatMul_Gemm"),
            n("Sigmoid", [p + "g"], [p + "sg"], name=p + "Sigmoid"),
            n("Split", [p + "sg"], [p + "r", p + "u"], axis=1, name=p + "split"),
            n("Sub", [p + "one", p + "u"], [p + "nu"], name=p + "sub"),
            n("Mul", [p + "u", h], [p + "uh"], name=p + "mul_1"),
            n("Mul", [p + "r", h], [p + "rh"], name=p + "mul"),
            n("Concat", [x, p + "rh"], [p + "concat_1"], axis=1, name=p + "concat_1"),
            n("Gemm", [p + "concat_1", p + "candidate/kernel", p + "candidate/bias"], [p + "cg"], transA=0,
              transB=0, name=p + "MatMul_1_Gemm"),
            n("Tanh", [p + "cg"], [p + "cand"], name=p + "Tanh"),
            n("Mul", [p + "nu", p + "cand"], [p + "nc"], name=p + "mul_2"),
            n("Add", [p + "uh", p + "nc"], [h_out], name=p + "add")]


def tf2onnx_rnn_model(cell: str = "basic_lstm", steps: int = 12, features: int = 10, hidden: int = 16,
                      proj: int = 8, classes: int = 6, seed: int = 0):
    """What tf2onnx 1.17 makes of ARM ML-KWS's frozen graphs (input cut at the flat MFCCs):
    input [1, T*F] -> Reshape [T, 1, F] -> Scan(dynamic_rnn) -> last h -> Gemm -> Softmax.

    ``cell``: "basic_lstm" (BasicLSTMCell; one zero tensor feeds both states), "lstm" (LSTMCell with
    peepholes and num_proj; the body declares h as [1, unk__47]), "peephole_lstm" (the same without
    num_proj), "gru" (GRUCell in a MultiRNNCell), or
    "crnn" (Conv 10x4 stride 2x1 + ReLU over a [1, 1, 49, 10] image, then two stacked GRUCells in
    one Scan, Gemm + ReLU + Gemm; ``steps``/``features`` are ignored). Each body carries tf2onnx's int32
    time counter as a state (declared [], never read), and the cell weights are outer-scope
    initializers, as in the real files. Weights are random, scaled like trained ones (kernels
    +-1/sqrt(H), forget bias 1, peepholes +-0.3)."""
    rng = np.random.default_rng(seed)
    n, vi = helper.make_node, helper.make_tensor_value_info
    inits, nodes = {}, []
    u = lambda k, shape: rng.uniform(-k, k, shape).astype(np.float32)  # noqa: E731
    if cell == "crnn":
        steps, features, chans = 20, 16 * 7, 16
        inits.update({"conv_shape": np.array([1, 1, 49, 10], np.int64), "W": u(0.3, (chans, 1, 10, 4)),
                      "conv_b": u(0.1, chans), "seq_shape": np.array([steps, 1, features], np.int64)})
        nodes += [n("Reshape", ["Reshape:0", "conv_shape"], ["img"], name="Conv2D__25"),
                  n("Conv", ["img", "W", "conv_b"], ["conv"], kernel_shape=[10, 4], strides=[2, 1], name="Conv__28"),
                  n("Relu", ["conv"], ["relu"], name="Relu"),
                  n("Transpose", ["relu"], ["nhwc"], perm=[0, 2, 3, 1], name="Conv2D__26"),
                  n("Reshape", ["nhwc", "seq_shape"], ["seq"], name="transpose")]
        in_size = 490
    else:
        inits["seq_shape"] = np.array([steps, 1, features], np.int64)
        nodes.append(n("Reshape", ["Reshape:0", "seq_shape"], ["seq"], name="lstm/transpose"))
        in_size = steps * features
    inits.update({"time": np.array(0, np.int32), "one_step": np.array(1, np.int32)})
    counter = [n("Add", ["t_in", "one_step"], ["t_out"], name="rnn/while/add")]
    t_vi = (vi("t_in", 6, []), vi("t_out", 6, []))
    k = 1 / np.sqrt(hidden)
    if cell in ("basic_lstm", "lstm", "peephole_lstm"):
        p = "rnn/while/cell/"
        out = proj if cell == "lstm" else hidden
        inits.update({p + "kernel": u(k, (features + out, 4 * hidden)), p + "bias": u(0.1, 4 * hidden),
                      p + "forget_bias": np.array(1.0, np.float32)})
        if cell != "basic_lstm":
            inits.update({p + "w_i_diag": u(0.3, hidden), p + "w_f_diag": u(0.3, hidden),
                          p + "w_o_diag": u(0.3, hidden)})
        if cell == "lstm":
            inits[p + "projection"] = u(k, (hidden, proj))
        body_nodes = _tf_lstm_body(p, "x_t", "h_in", "c_in", "h_out", "c_out", cell != "basic_lstm", cell == "lstm")
        if cell == "basic_lstm":  # states (c, t, h) from one zero tensor, as BasicLSTMCellZeroState gives
            inits["zeros"] = np.zeros((1, hidden), np.float32)
            scan_in, outs, last = ["zeros", "time", "zeros", "seq"], ["c_last", "t_last", "h_last"], "h_last"
            body_in = [vi("c_in", 1, [1, hidden]), t_vi[0], vi("h_in", 1, [1, hidden]), vi("x_t", 1, [1, features])]
            body_out = [vi("c_out", 1, [1, hidden]), t_vi[1], vi("h_out", 1, [1, hidden])]
        else:  # states (h, t, c); h declared [1, ?] as tf2onnx writes it for num_proj
            inits.update({"zeros_h": np.zeros((1, out), np.float32), "zeros_c": np.zeros((1, hidden), np.float32)})
            scan_in, outs, last = ["zeros_h", "time", "zeros_c", "seq"], ["h_last", "t_last", "c_last"], "h_last"
            body_in = [vi("h_in", 1, [1, "unk__47"]), t_vi[0], vi("c_in", 1, [1, hidden]), vi("x_t", 1, [1, features])]
            body_out = [vi("h_out", 1, [1, out]), t_vi[1], vi("c_out", 1, [1, hidden])]
    else:
        layers = 2 if cell == "crnn" else 1
        body_nodes, size, x = [], features, "x_t"
        body_in, body_out = [], []
        for layer in range(layers):
            p = f"rnn/while/multi_rnn_cell/cell_{layer}/gru_cell/"
            inits.update({p + "gates/kernel": u(k, (size + hidden, 2 * hidden)),
                          p + "gates/bias": np.ones(2 * hidden, np.float32),
                          p + "candidate/kernel": u(k, (size + hidden, hidden)), p + "candidate/bias": u(0.1, hidden),
                          p + "one": np.array(1.0, np.float32)})
            body_nodes += _tf_gru_body(p, x, f"h{layer}_in", f"h{layer}_out")
            body_in.append(vi(f"h{layer}_in", 1, [1, hidden]))
            body_out.append(vi(f"h{layer}_out", 1, [1, hidden]))
            size, x = hidden, f"h{layer}_out"
        inits["zeros"] = np.zeros((1, hidden), np.float32)
        if cell == "gru":  # states (t, h)
            scan_in, outs, last = ["time", "zeros", "seq"], ["t_last", "h_last"], "h_last"
            body_in, body_out = [t_vi[0]] + body_in + [vi("x_t", 1, [1, features])], [t_vi[1]] + body_out
        else:  # states (h0, h1, t)
            scan_in, outs, last = ["zeros", "zeros", "time", "seq"], ["h0_last", "h_last", "t_last"], "h_last"
            body_in, body_out = body_in + [t_vi[0], vi("x_t", 1, [1, features])], body_out + [t_vi[1]]
        out = hidden
    body = helper.make_graph(counter + body_nodes, "body", body_in, body_out)
    nodes.append(n("Scan", scan_in, outs, body=body, num_scan_inputs=1, name="custom_rnn_scan_Scan"))
    inits.update({"W_o": u(3 / np.sqrt(out), (out, classes)), "b_o": u(0.1, classes)})
    if cell == "crnn":
        inits.update({"fcw": u(1 / np.sqrt(out), (out, 32)), "fcb": u(0.1, 32)})
        nodes += [n("Gemm", [last, "fcw", "fcb"], ["fc1"], name="MatMul_Gemm"),
                  n("Relu", ["fc1"], ["fc1r"], name="Relu_1")]
        inits["W_o"] = u(3 / np.sqrt(32), (32, classes))
        last = "fc1r"
    nodes += [n("Gemm", [last, "W_o", "b_o"], ["logits"], name="Output-Layer/MatMul_Gemm"),
              n("Softmax", ["logits"], ["labels_softmax:0"], axis=1, name="labels_softmax")]
    return build(nodes, {"Reshape:0": [1, in_size]}, ["labels_softmax:0"], inits, opset=13)


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
