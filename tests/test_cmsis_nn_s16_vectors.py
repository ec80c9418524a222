"""CMSIS-NN's s16 unit-test vectors (TFLite's 16x8 reference outputs): simulator and emitted C, bit for bit.

The 16x8 mode of qcc's ``s8.*`` ops (int16 activations, int8 weights; ``qcc/ir/ops/qnn_s8.py``)
against every int16 folder of the kinds conv (``int16xint8*``: int64 bias, or int32 bias for
``int16xint8xint32_*``), depthwise (``dw_int16xint8*``), fully connected (``fully_connected_int16*``,
``fc_int16_slow``), add, mul, average and max pooling in ``CMSIS_NN_DIR``'s
``Tests/UnitTest/TestCases/TestData`` (skipped when unset). The simulator and the C (host gcc with
ASan/UBSan per kind; every case in one firmware on QEMU Cortex-M4) must give ``output_ref``
exactly. Folders qcc cannot express are in ``NOT_EXPRESSIBLE`` with the reason.

Conventions are those of tests/test_cmsis_nn_vectors.py (whose loader this file reuses); all
int16 offsets are 0 in TFLite's 16x8 mode, and the tests check that they are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

import qcc.sim.s8  # noqa: F401  (registers the s8 kernels)
from qcc.ir.graph import Graph
from qcc.ir.types import TensorType, UniformQuant
from qcc.sim.interpreter import run_graph

from test_backend_s8 import needs_gcc, needs_qemu
from test_cmsis_nn_vectors import (
    FLOAT_FOLDER, TEST_DATA, Vector, _bottom_right_pad, _mismatches, load_vector, pytestmark)  # noqa: F401
from test_cmsis_nn_vectors import _run as run_vectors
import test_cmsis_nn_vectors as s8_vectors

KIND_PATTERNS = {
    "conv": r"int16xint8(_.*|xint32_\d+)?",
    "depthwise": r"dw_int16xint8.*",
    "fully_connected": r"(fully_connected_int16.*|fc_int16_slow)",
    "pooling": r"(avgpooling_int16.*|maxpool_int16.*)",
    "add": r"add_s16.*",
    "mul": r"mul_s16.*",
    "softmax": r"softmax_s16",
}

# Every int16 folder of the kinds above that qcc cannot express, and why.
NOT_EXPRESSIBLE: Dict[str, str] = {}


def folders_of(kind: str) -> List[str]:
    return s8_vectors.folders_of(kind, KIND_PATTERNS)


def expressible(kind: str) -> List[str]:
    return s8_vectors.expressible(kind, KIND_PATTERNS, NOT_EXPRESSIBLE)


def _input(g: Graph, feeds, name: str, data: np.ndarray, shape):
    """A float input quantized to int16 with scale 1, zero point 0: the sample gives ``data`` back exactly."""
    x = g.add_input(name, TensorType(tuple(shape)))
    feeds[name] = data.astype(np.float32).reshape((1,) + tuple(shape))
    return g.add_op("q.quantize", [x], result_types=[TensorType(tuple(shape), "i16", UniformQuant(1.0, 0))]).result


def _output(g: Graph, op):
    y = op.result
    y.type = y.type.with_quant("i16", UniformQuant(1.0, 0))
    return g.add_op("q.dequantize", [y], result_types=[TensorType(y.shape)]).result


def _zero_offsets(v: Vector, *keys: str):
    for k in keys:
        assert v.d(k, 0) == 0, f"{v.name}: {k} = {v.d(k)}; TFLite's 16x8 mode has zero offsets"


def _bias(g: Graph, v: Vector, wide: bool):
    """The bias operand: int64 (rounding "s64"), or int32 for the int16xint8xint32 cases; none when NULL/zero."""
    bias = v.arrays.get("biases", v.arrays.get("bias"))
    if bias is None or not bias.any():
        return []
    return [g.add_const(bias.astype(np.int64 if wide else np.int32))]


def _conv(g: Graph, feeds, v: Vector, depthwise: bool):
    n, h, w, cin, cout = (v.d(k) for k in ("INPUT_BATCHES", "INPUT_H", "INPUT_W", "IN_CH", "OUT_CH"))
    kh, kw, sh, sw = v.d("FILTER_Y"), v.d("FILTER_X"), v.d("STRIDE_Y"), v.d("STRIDE_X")
    dh, dw = v.d("DILATION_Y", 1), v.d("DILATION_X", 1)
    oh, ow = v.d("OUTPUT_H"), v.d("OUTPUT_W")
    pt, pl = v.d("PAD_Y"), v.d("PAD_X")
    _zero_offsets(v, "INPUT_OFFSET", "OUTPUT_OFFSET")
    pads = [pt, pl, _bottom_right_pad(h, oh, kh, sh, dh, pt), _bottom_right_pad(w, ow, kw, sw, dw, pl)]
    weights = v.a("weights")
    if depthwise:
        group = cin
        weights = weights.reshape(kh, kw, cout).transpose(2, 0, 1)[..., None]
    else:
        group = 1
        weights = weights.reshape(cout, kh, kw, cin)
    wide = "xint32" not in v.name
    q = _input(g, feeds, v.name, v.a("input"), (n, h, w, cin))
    operands = [q, g.add_const(weights.astype(np.int8))] + _bias(g, v, wide)
    attrs = dict(strides=[sh, sw], pads=pads, dilations=[dh, dw], group=group,
                 multiplier=[int(m) for m in v.a("output_mult")], shift=[int(s) for s in v.a("output_shift")],
                 rounding="s64" if wide else "double",
                 act_min=v.d("OUT_ACTIVATION_MIN"), act_max=v.d("OUT_ACTIVATION_MAX"))
    op = g.add_op("s8.conv2d", operands, attrs, name=v.name)
    assert op.result.shape == (n, oh, ow, cout), (v.name, op.result.shape)
    return _output(g, op)


def _fully_connected(g: Graph, feeds, v: Vector):
    n, cout = v.d("INPUT_BATCHES"), v.d("OUT_CH")
    depth = v.d("ACCUMULATION_DEPTH", v.d("IN_CH") * v.d("INPUT_W", 1) * v.d("INPUT_H", 1))
    _zero_offsets(v, "INPUT_OFFSET", "OUTPUT_OFFSET", "FILTER_OFFSET")
    q = _input(g, feeds, v.name, v.a("input"), (n, depth))
    operands = [q, g.add_const(v.a("weights").reshape(cout, depth).astype(np.int8))] + _bias(g, v, True)
    attrs = dict(multiplier=[v.d("OUTPUT_MULTIPLIER")], shift=[v.d("OUTPUT_SHIFT")], rounding="s64",
                 act_min=v.d("OUT_ACTIVATION_MIN"), act_max=v.d("OUT_ACTIVATION_MAX"))
    return _output(g, g.add_op("s8.dense", operands, attrs, name=v.name))


def _pool(g: Graph, feeds, v: Vector):
    n, h, w, c = v.d("BATCH_SIZE"), v.d("INPUT_H"), v.d("INPUT_W"), v.d("INPUT_C")
    kh, kw, sh, sw = v.d("FILTER_H"), v.d("FILTER_W"), v.d("STRIDE_H"), v.d("STRIDE_W")
    oh, ow = v.d("OUTPUT_H"), v.d("OUTPUT_W")
    pt, pl = v.d("PADDING_H"), v.d("PADDING_W")
    pads = [pt, pl, _bottom_right_pad(h, oh, kh, sh, 1, pt), _bottom_right_pad(w, ow, kw, sw, 1, pl)]
    q = _input(g, feeds, v.name, v.a("input_tensor", "input"), (n, h, w, c))
    kind = "s8.avgpool" if v.name.startswith("avg") else "s8.maxpool"
    op = g.add_op(kind, [q], dict(kernel=[kh, kw], strides=[sh, sw], pads=pads, act_min=v.d("ACTIVATION_MIN"),
                                  act_max=v.d("ACTIVATION_MAX")), name=v.name)
    assert op.result.shape == (n, oh, ow, v.d("OUTPUT_C")), (v.name, op.result.shape)
    return _output(g, op)


def _elementwise(g: Graph, feeds, v: Vector, kind: str):
    size = len(v.a("input1"))
    _zero_offsets(v, "INPUT1_OFFSET", "INPUT2_OFFSET", "OUTPUT_OFFSET")
    qa = _input(g, feeds, v.name + "_a", v.a("input1"), (1, size))
    qb = _input(g, feeds, v.name + "_b", v.a("input2"), (1, size))
    attrs = dict(input_zp=[0, 0], multiplier=[v.d("OUTPUT_MULT")], shift=[v.d("OUTPUT_SHIFT")],
                 act_min=v.d("OUT_ACTIVATION_MIN"), act_max=v.d("OUT_ACTIVATION_MAX"))
    if kind == "add":
        attrs.update(left_shift=v.d("LEFT_SHIFT"), input_multiplier=[v.d("INPUT1_MULT"), v.d("INPUT2_MULT")],
                     input_shift=[v.d("INPUT1_SHIFT"), v.d("INPUT2_SHIFT")])
    return _output(g, g.add_op(f"s8.{kind}", [qa, qb], attrs, name=v.name))


def _softmax(g: Graph, feeds, v: Vector):
    """arm_softmax_s16 with TFLite's exp and 1/(1+x) tables, which qcc builds itself (none are in the folder)."""
    q = _input(g, feeds, v.name, v.a("input"), (v.d("NUM_ROWS"), v.d("ROW_SIZE")))
    op = g.add_op("s8.softmax", [q], dict(multiplier=v.d("INPUT_MULT"), shift=v.d("INPUT_LEFT_SHIFT"), diff_min=0),
                  name=v.name)
    return _output(g, op)


def build(cases: List[tuple]):
    g = Graph("cmsis_nn_s16_vectors")
    vectors, outputs, feeds = [], [], {}
    for kind, name in cases:
        v = load_vector(name)
        if kind in ("conv", "depthwise"):
            y = _conv(g, feeds, v, kind == "depthwise")
        elif kind == "fully_connected":
            y = _fully_connected(g, feeds, v)
        elif kind == "pooling":
            y = _pool(g, feeds, v)
        elif kind == "softmax":
            y = _softmax(g, feeds, v)
        else:
            y = _elementwise(g, feeds, v, kind)
        vectors.append(v)
        outputs.append(y)
    g.set_outputs(outputs, [v.name + "_y" for v in vectors])
    g.verify()
    return g, vectors, feeds


def _run(tmp_path: Path, cases: List[tuple], target: str, where: str):
    return run_vectors(tmp_path, cases, target, where, build)


def test_every_s16_folder_runs_or_is_listed():
    """The table names real folders, and each kind has cases (the counts at 99f736a6 are the floor)."""
    seen = {n for kind in KIND_PATTERNS for n in folders_of(kind)}
    assert set(NOT_EXPRESSIBLE) <= seen, sorted(set(NOT_EXPRESSIBLE) - seen)
    counts = {kind: len(expressible(kind)) for kind in KIND_PATTERNS}
    assert counts["conv"] >= 12 and counts["depthwise"] >= 12 and counts["fully_connected"] >= 3, counts
    assert counts["pooling"] >= 7 and counts["add"] >= 2 and counts["mul"] >= 2 and counts["softmax"] == 1, counts


@pytest.mark.parametrize("kind", list(KIND_PATTERNS))
def test_s16_vectors_bit_exact_in_simulator(kind):
    """The simulator alone (no compiler needed): each int16 result equals output_ref."""
    g, vectors, samples = build([(kind, n) for n in expressible(kind)])
    env = run_graph(g, {k: v[0] for k, v in samples.items()}, keep=True)
    got = [env[y.producer.operands[0]] for y in g.outputs]
    assert all(q.dtype == np.int16 for q in got)
    assert _mismatches(got, vectors) == []


@needs_gcc
@pytest.mark.parametrize("kind", list(KIND_PATTERNS))
def test_s16_vectors_bit_exact_on_host(tmp_path, kind):
    """Every expressible folder of ``kind`` in one program: simulator == host C == output_ref."""
    assert len(_run(tmp_path, [(kind, n) for n in expressible(kind)], "cortex-m4", "host")) == len(expressible(kind))


@needs_qemu
def test_s16_vectors_bit_exact_on_qemu_m4(tmp_path):
    """Every expressible folder in one firmware on Cortex-M4 (the SMLAD paths)."""
    cases = [(kind, n) for kind in KIND_PATTERNS for n in expressible(kind)]
    assert len(_run(tmp_path, cases, "cortex-m4", "qemu")) == len(cases)
