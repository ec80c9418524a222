"""CMSIS-NN's s8 LSTM unit-test vectors (TFLite Micro's integer LSTM): ``s8.lstm`` in the simulator
and in the emitted C, bit for bit.

Each folder (``CMSIS_NN_DIR``; skipped when unset) holds one layer: per gate (input, forget,
cell, output) int8 input and hidden weights, an int32 bias, the effective multipliers/shifts of
the input-to-gate and hidden-to-gate products, the forget/input-to-cell and hidden-output
multipliers, the cell state's power-of-two scale, the zero points, an int8 input sequence and the
reference output sequence. CMSIS-NN's ``input_offset`` (``INPUT_ZERO_POINT``) is ``-input_zp``;
its hidden kernel sums fold ``-OUTPUT_ZERO_POINT``, the hidden state's zero point. The gates stack
in ONNX order (i, o, f, c) as ``s8.lstm`` takes them; the state starts at h = zero point (CMSIS-NN's
NULL hidden state), c = 0.

``lstm_stateful_batch_major_multibatch`` holds two independent sequences (batch 2, batch major):
``s8.lstm`` has batch 1 (nn.lstm's spec), so each batch is its own ``s8.lstm`` op in the graph.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

import qcc.sim  # noqa: F401  (registers the s8 kernels)
from qcc.backend_registry import get_backend
from qcc.backends.cmsis import harness
from qcc.ir.graph import Graph

from test_backend_s8 import _run_and_compare, needs_gcc, needs_qemu
from test_cmsis_nn_vectors import Vector, _input, _mismatches, _output, load_vector, pytestmark  # noqa: F401 (skip)

FOLDERS = ["lstm_1", "lstm_2", "lstm_one_time_step", "lstm_stateful_batch_major_multibatch"]
ONNX_ORDER = ["input", "output", "forget", "cell"]   # s8.lstm's gate order (ONNX i, o, f, c)


def _lstm_ops(g: Graph, feeds: Dict[str, np.ndarray], v: Vector) -> List:
    """One s8.lstm per batch of the folder's sequence; returns the dequantized y of each."""
    t, n, i, h = v.d("TIME_STEPS"), v.d("BATCH_SIZE"), v.d("INPUT_SIZE"), v.d("HIDDEN_SIZE")
    zp_in, zp_out = -v.d("INPUT_ZERO_POINT"), v.d("OUTPUT_ZERO_POINT")
    data = v.a("input_tensor", "input").reshape(-1)
    if v.defines["TIME_MAJOR"] == "true":
        seqs = data.reshape(t, n, i).transpose(1, 0, 2)
    else:
        seqs = data.reshape(n, t, i)
    w = np.concatenate([v.a(f"{k}_gate_input_weights").reshape(h, i) for k in ONNX_ORDER]).astype(np.int8)
    r = np.concatenate([v.a(f"{k}_gate_hidden_weights").reshape(h, h) for k in ONNX_ORDER]).astype(np.int8)
    b = np.concatenate([v.a(f"{k}_gate_bias") for k in ONNX_ORDER]).astype(np.int32)
    attrs = dict(
        hidden_size=h, input_zp=zp_in, output_zp=zp_out,
        input_multiplier=[v.d(f"{k.upper()}_GATE_INPUT_MULTIPLIER") for k in ONNX_ORDER],
        input_shift=[v.d(f"{k.upper()}_GATE_INPUT_SHIFT") for k in ONNX_ORDER],
        recurrent_multiplier=[v.d(f"{k.upper()}_GATE_HIDDEN_MULTIPLIER") for k in ONNX_ORDER],
        recurrent_shift=[v.d(f"{k.upper()}_GATE_HIDDEN_SHIFT") for k in ONNX_ORDER],
        output_multiplier=v.d("OUTPUT_MULTIPLIER"), output_shift=v.d("OUTPUT_SHIFT"),
        cell_scale_power=v.d("CELL_SCALE_POWER"), cell_clip=v.d("CELL_CLIP"),
        forget_multiplier=v.d("FORGET_TO_CELL_MULTIPLIER"), forget_shift=v.d("FORGET_TO_CELL_SHIFT"),
        input_to_cell_multiplier=v.d("INPUT_TO_CELL_MULTIPLIER"), input_to_cell_shift=v.d("INPUT_TO_CELL_SHIFT"))
    ys = []
    for k in range(n):
        x = _input(g, feeds, f"{v.name}_b{k}", seqs[k], (t, i), zp_in)
        operands = [x, g.add_const(w), g.add_const(r), g.add_const(b),
                    g.add_const(np.full((1, h), zp_out, np.int8)), g.add_const(np.zeros((1, h), np.int16))]
        op = g.add_op("s8.lstm", operands, attrs, name=f"{v.name}_b{k}")
        ys.append(op)
    return ys


class _Y:
    """The y result of an s8.lstm under the ``op.result`` name _output expects."""

    def __init__(self, op):
        self.result = op.results[0]


def build(names: List[str]):
    g = Graph("cmsis_nn_lstm")
    feeds, outputs, vectors = {}, [], []
    for name in names:
        v = load_vector(name)
        ops = _lstm_ops(g, feeds, v)
        for op in ops:
            outputs.append(_output(g, _Y(op), v.d("OUTPUT_ZERO_POINT")))
        vectors.append((v, len(ops)))
    g.set_outputs(outputs, [f"y{j}" for j in range(len(outputs))])
    g.verify()
    return g, vectors, feeds


def _per_folder(quantized, vectors) -> List[np.ndarray]:
    """The graph's outputs joined back into each folder's [batch, time, hidden] order."""
    out, j = [], 0
    for v, n in vectors:
        ys = [np.asarray(q).reshape(v.d("TIME_STEPS"), v.d("HIDDEN_SIZE")) for q in quantized[j:j + n]]
        j += n
        seq = np.stack(ys)                                   # [batch, time, hidden]
        if v.defines["TIME_MAJOR"] == "true":
            seq = seq.transpose(1, 0, 2)
        out.append(seq)
    return out


def _check(quantized, vectors):
    return _mismatches(_per_folder(quantized, vectors), [v for v, _ in vectors])


def test_simulator_matches_tflite():
    """Every folder in the simulator against output_ref, and the outputs are not a constant."""
    import qcc.sim.interpreter as interp
    g, vectors, feeds = build(FOLDERS)
    outs = interp.run_graph(g, {k: a[0] for k, a in feeds.items()}, keep=True)
    quantized = [outs[op.results[0]] for op in g.ops if op.opname == "s8.lstm"]
    assert _check(quantized, vectors) == []
    assert [v.name for v, _ in vectors] == FOLDERS and sum(n for _, n in vectors) == 7  # 1 + 1 + 3 + 2 batches
    assert all(len(np.unique(seq)) > 5 for seq in _per_folder(quantized, vectors))  # real arithmetic


def _run(tmp_path: Path, target: str, where: str):
    g, vectors, feeds = build(FOLDERS)
    sim = harness.simulate(g, get_backend("cmsis").generate(g, "net", target), feeds)
    assert _check(sim.quantized, vectors) == [], "simulator vs TFLite (CMSIS-NN output_ref)"
    got = _run_and_compare(tmp_path, g, feeds, target, where)
    assert _check(got.quantized, vectors) == [], f"{where} C ({target}) vs TFLite (CMSIS-NN output_ref)"


@needs_gcc
def test_c_matches_tflite_on_host(tmp_path):
    _run(tmp_path, "cortex-m4", "host")


@needs_qemu
def test_c_matches_tflite_on_qemu_m4(tmp_path):
    _run(tmp_path, "cortex-m4", "qemu")
