"""CMSIS-NN's s8 unit-test vectors (TFLite reference outputs): simulator and emitted C, bit for bit.

Each ``Tests/UnitTest/TestCases/TestData/<name>/`` folder of a CMSIS-NN checkout
(``CMSIS_NN_DIR``; skipped when unset) holds a layer's parameters (``config_data.h``
#defines) and its int8 input, weights, bias, per-channel multipliers/shifts and the
output TensorFlow Lite's reference kernel computed. Every s8 folder of the kinds
conv, depthwise, fully connected (with and without a weight offset), pooling,
softmax, add and mul becomes the equivalent qcc ``s8.*`` op; the simulator and the
C (host gcc with ASan/UBSan, all cases of a kind in one program; all cases in one
firmware on QEMU Cortex-M4 and Cortex-M55) must give ``output_ref`` exactly.
Folders qcc's ops cannot express are listed in ``NOT_EXPRESSIBLE`` with the
reason; any other folder of these kinds must pass (67 of 149 at 99f736a6).

CMSIS-NN conventions mapped onto qcc's ops (``qcc/ir/ops/qnn_s8.py``):
input_offset = -input_zp, output_offset = +output_zp, filter_offset = -weight_zp;
conv filters are [Cout, KH, KW, Cin/groups] in both; a depthwise filter
[1, KH, KW, Cin * ch_mult] becomes a conv with group = Cin and weights
[Cout, KH, KW, 1] (output channel c reads input channel c // ch_mult in both);
only the top/left pad is given, the bottom/right pad follows from the output size;
a bias of all zeros is the NULL bias (the op then has no bias operand).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest

import qcc.sim.s8  # noqa: F401  (registers the s8 kernels)
from qcc.backend_registry import get_backend
from qcc.backends.cmsis import harness
from qcc.ir.graph import Graph
from qcc.ir.types import TensorType, UniformQuant

from test_backend_s8 import _run_and_compare, needs_gcc, needs_qemu

CMSIS_NN_DIR = os.environ.get("CMSIS_NN_DIR", "")
TEST_DATA = Path(CMSIS_NN_DIR) / "Tests" / "UnitTest" / "TestCases" / "TestData"
pytestmark = pytest.mark.skipif(
    not CMSIS_NN_DIR or not TEST_DATA.is_dir(),
    reason="CMSIS_NN_DIR is not set to a CMSIS-NN source tree with Tests/ (github.com/ARM-software/CMSIS-NN)")

# Folder names per kind. Float folders (``*_f16``/``*_f32``, ``*match*``) are not s8 and are not counted.
KIND_PATTERNS = {
    "conv": r"(conv_.*|kernel1x1.*|stride2pad1.*|basic.*|grouped_conv.*|in_ch_one_out_ch_larger_one|int16xint8.*)",
    "depthwise": r"(depthwise_.*|dw_int16xint8.*)",
    "fully_connected": r"(fully_connected.*|fc_per_ch|fc_int16.*)",
    "pooling": r"(avgpooling.*|maxpooling.*|maxpool_int16.*)",
    "softmax": r"softmax.*",
    "add": r"add.*",
    "mul": r"mul.*",
}
FLOAT_FOLDER = re.compile(r"(_f16|_f32)(_|$)|match")

_INT4 = "int4 weights (two per byte): qcc's s8 ops take int8 weights"
_S16 = "int16 activations: tests/test_cmsis_nn_s16_vectors.py runs them (the 16x8 mode)"
# Every s8-family folder of the kinds above that qcc's ops cannot express, and why.
NOT_EXPRESSIBLE: Dict[str, str] = {
    **{name: _INT4 for name in [
        "basic_int4", "basic_2_int4", "conv_1_x_n_1_int4", "conv_1_x_n_2_int4", "conv_1_x_n_3_int4",
        "conv_1_x_n_4_int4", "conv_1_x_n_5_int4", "conv_2_int4", "conv_3_int4", "conv_4_int4", "conv_5_int4",
        "conv_2x2_dilation_int4", "conv_2x2_dilation_5x5_input_int4", "conv_2x3_dilation_int4",
        "conv_3x2_dilation_int4", "conv_3x3_dilation_5x5_input_int4", "conv_dilation_golden_int4",
        "conv_out_activation_int4", "kernel1x1_int4", "kernel1x1_int4_2", "kernel1x1_int4_3",
        "kernel1x1_stride_x_int4", "kernel1x1_stride_x_y_int4", "kernel1x1_stride_x_y_1_int4",
        "kernel1x1_stride_x_y_2_int4", "stride2pad1_int4", "depthwise_int4_1", "depthwise_int4_2",
        "depthwise_int4_3", "depthwise_int4_4", "depthwise_int4_generic", "depthwise_int4_generic_2",
        "depthwise_int4_generic_3", "depthwise_int4_generic_4", "depthwise_int4_generic_5",
        "depthwise_int4_generic_6", "fully_connected_int4", "fully_connected_int4_2", "fully_connected_int4_3",
        "fully_connected_int4_4", "fully_connected_int4_5", "fully_connected_int4_6"]},
    **{name: _S16 for name in [
        "fully_connected_int16", "fully_connected_int16_big", "avgpooling_int16", "avgpooling_int16_1",
        "avgpooling_int16_2", "avgpooling_int16_3", "maxpool_int16", "maxpool_int16_1", "maxpool_int16_2",
        "add_s16", "add_s16_spill", "mul_s16", "mul_s16_spill",
        "softmax_s16", "fc_int16_slow", "int16xint8", "int16xint8_dilation_1", "int16xint8_dilation_2",
        "int16xint8_dilation_3", "int16xint8_spill", "int16xint8_spill2", "int16xint8xint32_1",
        "int16xint8xint32_2", "int16xint8xint32_3", "int16xint8xint32_4", "int16xint8xint32_5",
        "int16xint8xint32_6", "dw_int16xint8", "dw_int16xint8_dilation", "dw_int16xint8_fast",
        "dw_int16xint8_fast_multiple_batches_uneven_buffers",
        "dw_int16xint8_fast_multiple_batches_uneven_buffers_null_bias", "dw_int16xint8_fast_null_bias",
        "dw_int16xint8_fast_spill", "dw_int16xint8_fast_spill_null_bias", "dw_int16xint8_fast_stride",
        "dw_int16xint8_fast_stride_null_bias", "dw_int16xint8_fast_test_bias", "dw_int16xint8_mult4"]},
    "softmax_s8_s16": "int16 output (arm_softmax_s8_s16): qcc's s8.softmax writes int8",
}


@dataclass
class Vector:
    name: str
    defines: Dict[str, str]
    arrays: Dict[str, np.ndarray]

    def d(self, key: str, default=None) -> int:
        if key not in self.defines:
            if default is None:
                raise KeyError(f"{self.name}: no #define {self.name.upper()}_{key}")
            return default
        return int(self.defines[key])

    def a(self, *keys: str) -> np.ndarray:
        for k in keys:
            if k in self.arrays:
                return self.arrays[k]
        raise KeyError(f"{self.name}: none of the arrays {keys}")


def load_vector(name: str) -> Vector:
    """The #defines and arrays of the headers ``test_data.h`` includes (aliases followed, NULL dropped)."""
    folder = TEST_DATA / name
    headers = re.findall(r'#include "(\w+\.h)"', (folder / "test_data.h").read_text())
    text = "\n".join((folder / h).read_text() for h in headers)
    prefix = name.upper() + "_"
    defines = {k[len(prefix):]: v for k, v in re.findall(r"#define\s+(\w+)\s+(\S+)\s*$", text, re.M)
               if k.startswith(prefix)}
    raw = {k: np.array([int(t) for t in re.findall(r"-?\d+", body)], np.int64)
           for k, body in re.findall(r"const u?int\d+_t (\w+)\[\w*\]\s*=\s*\{([^}]*)\}", text)}
    for alias, target in re.findall(r"const \w+ \*const (\w+) = (\w+);", text):
        if target in raw:
            raw[alias] = raw[target]
    arrays = {k[len(name) + 1:]: v for k, v in raw.items() if k.startswith(name + "_")}
    return Vector(name, defines, arrays)


def folders_of(kind: str, patterns: Optional[Dict[str, str]] = None) -> List[str]:
    """The vector folders of ``kind`` (its regex in ``patterns``, default this file's s8 table)."""
    pattern = re.compile((patterns or KIND_PATTERNS)[kind] + "$")
    return sorted(p.name for p in TEST_DATA.iterdir()
                  if p.is_dir() and pattern.match(p.name) and not FLOAT_FOLDER.search(p.name))


def expressible(kind: str, patterns: Optional[Dict[str, str]] = None,
                excluded: Optional[Dict[str, str]] = None) -> List[str]:
    excluded = NOT_EXPRESSIBLE if excluded is None else excluded
    return [n for n in folders_of(kind, patterns) if n not in excluded]


# ---------------------------------------------------------------- one case -> ops in a shared graph
def _input(g: Graph, feeds: Dict[str, np.ndarray], name: str, data: np.ndarray, shape, zp: int):
    """A float graph input quantized with scale 1 and zero point ``zp``; its sample ``data - zp`` gives
    the stored int8 ``data`` back exactly."""
    x = g.add_input(name, TensorType(tuple(shape)))
    feeds[name] = (data - zp).astype(np.float32).reshape((1,) + tuple(shape))
    return g.add_op("q.quantize", [x], result_types=[TensorType(tuple(shape), "i8", UniformQuant(1.0, zp))]).result


def _output(g: Graph, op, zp: int):
    y = op.result
    y.type = y.type.with_quant("i8", UniformQuant(1.0, zp))
    return g.add_op("q.dequantize", [y], result_types=[TensorType(y.shape)]).result


def _bottom_right_pad(size: int, out: int, k: int, stride: int, dil: int, top: int) -> int:
    # CMSIS-NN passes only the top/left pad; TFLite's SAME padding puts any extra row/column at the end.
    return max(0, (out - 1) * stride + dil * (k - 1) + 1 - size - top)


def _conv(g: Graph, feeds: Dict[str, np.ndarray], v: Vector, depthwise: bool):
    n, h, w, cin, cout = (v.d(k) for k in ("INPUT_BATCHES", "INPUT_H", "INPUT_W", "IN_CH", "OUT_CH"))
    kh, kw, sh, sw = v.d("FILTER_Y"), v.d("FILTER_X"), v.d("STRIDE_Y"), v.d("STRIDE_X")
    dh, dw = v.d("DILATION_Y", 1), v.d("DILATION_X", 1)
    oh, ow = v.d("OUTPUT_H"), v.d("OUTPUT_W")
    pt, pl = v.d("PAD_Y"), v.d("PAD_X")
    pads = [pt, pl, _bottom_right_pad(h, oh, kh, sh, dh, pt), _bottom_right_pad(w, ow, kw, sw, dw, pl)]
    weights = v.a("weights")
    if depthwise:
        group = cin
        weights = weights.reshape(kh, kw, cout).transpose(2, 0, 1)[..., None]
    else:
        group = cin // v.d("FILTER_CH", cin)
        weights = weights.reshape(cout, kh, kw, cin // group)
    zp_in, zp_out = -v.d("INPUT_OFFSET"), v.d("OUTPUT_OFFSET")
    q = _input(g, feeds, v.name, v.a("input"), (n, h, w, cin), zp_in)
    operands = [q, g.add_const(weights.astype(np.int8))]
    bias = v.arrays.get("biases")
    if bias is not None and bias.any():
        operands.append(g.add_const(bias.astype(np.int32)))
    attrs = dict(strides=[sh, sw], pads=pads, dilations=[dh, dw], group=group, input_zp=zp_in, output_zp=zp_out,
                 multiplier=[int(m) for m in v.a("output_mult")], shift=[int(s) for s in v.a("output_shift")],
                 act_min=v.d("OUT_ACTIVATION_MIN"), act_max=v.d("OUT_ACTIVATION_MAX"))
    op = g.add_op("s8.conv2d", operands, attrs, name=v.name)
    assert op.result.shape == (n, oh, ow, cout), (v.name, op.result.shape)
    return _output(g, op, zp_out)


def _fully_connected(g: Graph, feeds: Dict[str, np.ndarray], v: Vector):
    n, cout = v.d("INPUT_BATCHES"), v.d("OUT_CH")
    depth = v.d("ACCUMULATION_DEPTH", v.d("IN_CH") * v.d("INPUT_W", 1) * v.d("INPUT_H", 1))
    zp_in, zp_out = -v.d("INPUT_OFFSET"), v.d("OUTPUT_OFFSET")
    q = _input(g, feeds, v.name, v.a("input"), (n, depth), zp_in)
    operands = [q, g.add_const(v.a("weights").reshape(cout, depth).astype(np.int8))]
    bias = v.arrays.get("biases")
    if bias is not None and bias.any():
        operands.append(g.add_const(bias.astype(np.int32)))
    if "output_mult" in v.arrays:   # per channel (fc_per_ch)
        mult, shift = [int(m) for m in v.a("output_mult")], [int(s) for s in v.a("output_shift")]
    else:
        mult, shift = [v.d("OUTPUT_MULTIPLIER")], [v.d("OUTPUT_SHIFT")]
    attrs = dict(input_zp=zp_in, output_zp=zp_out, weight_zp=-v.d("FILTER_OFFSET", 0), multiplier=mult,
                 shift=shift, act_min=v.d("OUT_ACTIVATION_MIN"), act_max=v.d("OUT_ACTIVATION_MAX"))
    return _output(g, g.add_op("s8.dense", operands, attrs, name=v.name), zp_out)


def _pool(g: Graph, feeds: Dict[str, np.ndarray], v: Vector):
    n, h, w, c = v.d("BATCH_SIZE"), v.d("INPUT_H"), v.d("INPUT_W"), v.d("INPUT_C")
    kh, kw, sh, sw = v.d("FILTER_H"), v.d("FILTER_W"), v.d("STRIDE_H"), v.d("STRIDE_W")
    oh, ow = v.d("OUTPUT_H"), v.d("OUTPUT_W")
    pt, pl = v.d("PADDING_H"), v.d("PADDING_W")
    pads = [pt, pl, _bottom_right_pad(h, oh, kh, sh, 1, pt), _bottom_right_pad(w, ow, kw, sw, 1, pl)]
    q = _input(g, feeds, v.name, v.a("input_tensor"), (n, h, w, c), 0)
    kind = "s8.avgpool" if v.name.startswith("avg") else "s8.maxpool"
    op = g.add_op(kind, [q], dict(kernel=[kh, kw], strides=[sh, sw], pads=pads, act_min=v.d("ACTIVATION_MIN"),
                                  act_max=v.d("ACTIVATION_MAX")), name=v.name)
    assert op.result.shape == (n, oh, ow, v.d("OUTPUT_C")), (v.name, op.result.shape)
    return _output(g, op, 0)


def _softmax(g: Graph, feeds: Dict[str, np.ndarray], v: Vector):
    q = _input(g, feeds, v.name, v.a("input"), (v.d("NUM_ROWS"), v.d("ROW_SIZE")), 0)
    op = g.add_op("s8.softmax", [q], dict(multiplier=v.d("INPUT_MULT"), shift=v.d("INPUT_LEFT_SHIFT"),
                                          diff_min=v.d("DIFF_MIN")), name=v.name)
    return _output(g, op, -128)


def _elementwise(g: Graph, feeds: Dict[str, np.ndarray], v: Vector, kind: str):
    """Two flat int8 operands, each its own graph input."""
    size = len(v.a("input1"))
    zps = [-v.d("INPUT1_OFFSET"), -v.d("INPUT2_OFFSET")]
    qa = _input(g, feeds, v.name + "_a", v.a("input1"), (1, size), zps[0])
    qb = _input(g, feeds, v.name + "_b", v.a("input2"), (1, size), zps[1])
    zp_out = v.d("OUTPUT_OFFSET")
    attrs = dict(input_zp=zps, output_zp=zp_out, multiplier=[v.d("OUTPUT_MULT")], shift=[v.d("OUTPUT_SHIFT")],
                 act_min=v.d("OUT_ACTIVATION_MIN"), act_max=v.d("OUT_ACTIVATION_MAX"))
    if kind == "add":
        attrs.update(left_shift=v.d("LEFT_SHIFT"), input_multiplier=[v.d("INPUT1_MULT"), v.d("INPUT2_MULT")],
                     input_shift=[v.d("INPUT1_SHIFT"), v.d("INPUT2_SHIFT")])
    return _output(g, g.add_op(f"s8.{kind}", [qa, qb], attrs, name=v.name), zp_out)


def _add_case(g: Graph, feeds: Dict[str, np.ndarray], kind: str, name: str):
    v = load_vector(name)
    if kind in ("conv", "depthwise"):
        return v, _conv(g, feeds, v, depthwise=kind == "depthwise")
    if kind == "fully_connected":
        return v, _fully_connected(g, feeds, v)
    if kind == "pooling":
        return v, _pool(g, feeds, v)
    if kind == "softmax":
        return v, _softmax(g, feeds, v)
    return v, _elementwise(g, feeds, v, kind)


def build(cases: List[tuple]) -> tuple:
    """A graph holding every (kind, folder) case side by side; returns it, the vectors and the samples."""
    g = Graph("cmsis_nn_vectors")
    vectors, outputs, feeds = [], [], {}
    for kind, name in cases:
        v, y = _add_case(g, feeds, kind, name)
        vectors.append(v)
        outputs.append(y)
    g.set_outputs(outputs, [v.name + "_y" for v in vectors])
    g.verify()
    return g, vectors, feeds


def _want(v: Vector) -> np.ndarray:
    return v.a("output_ref", "output")


def _mismatches(quantized: List[np.ndarray], vectors: List[Vector]) -> List[str]:
    bad = []
    for q, v in zip(quantized, vectors):
        got, want = np.asarray(q).reshape(-1).astype(np.int64), _want(v)
        if got.shape != want.shape or not np.array_equal(got, want):
            diff = int((got != want).sum()) if got.shape == want.shape else "shape"
            bad.append(f"{v.name}: {diff} of {want.size} outputs differ")
    return bad


def _run(tmp_path: Path, cases: List[tuple], target: str, where: str, build_cases=None):
    """The simulator against output_ref, then the C (host or QEMU) against the simulator (and so output_ref).
    ``build_cases`` makes the graph (default: this file's ``build``; the s16 vectors pass theirs)."""
    g, vectors, samples = (build_cases or build)(cases)
    sim = harness.simulate(g, get_backend("cmsis").generate(g, "net", target), samples)
    assert _mismatches(sim.quantized, vectors) == [], "simulator vs TFLite (CMSIS-NN output_ref)"
    got = _run_and_compare(tmp_path, g, samples, target, where)
    assert _mismatches(got.quantized, vectors) == [], f"{where} C ({target}) vs TFLite (CMSIS-NN output_ref)"
    return vectors


# ---------------------------------------------------------------- the tests
def test_every_folder_of_these_kinds_runs_or_is_listed():
    """The table names real folders only, and every s8-family folder of the kinds is either run or listed."""
    seen = {n for kind in KIND_PATTERNS for n in folders_of(kind)}
    assert set(NOT_EXPRESSIBLE) <= seen, sorted(set(NOT_EXPRESSIBLE) - seen)
    for name in NOT_EXPRESSIBLE:
        v = load_vector(name)
        assert "int4" in name or "INT4" in v.defines.values() or "16" in name, name
    runnable = {kind: expressible(kind) for kind in KIND_PATTERNS}
    assert all(runnable.values()), runnable
    assert "fully_connected_w_zp" in runnable["fully_connected"] and "fc_per_ch" in runnable["fully_connected"]
    assert load_vector("fully_connected_w_zp").d("FILTER_OFFSET") != 0  # the weight-offset case is real


@needs_gcc
@pytest.mark.parametrize("kind", list(KIND_PATTERNS))
def test_vectors_bit_exact_on_host(tmp_path, kind):
    """Every expressible folder of ``kind`` in one program: simulator == host C == output_ref."""
    vectors = _run(tmp_path, [(kind, n) for n in expressible(kind)], "cortex-m4", "host")
    assert len(vectors) == len(expressible(kind))


@needs_qemu
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55"])  # the DSP (SMLAD) paths, and MVE's core
def test_vectors_bit_exact_on_qemu(tmp_path, target):
    """Every expressible folder of every kind in one firmware (measured: about 5 s per target)."""
    cases = [(kind, name) for kind in KIND_PATTERNS for name in expressible(kind)]
    assert len(_run(tmp_path, cases, target, "qemu")) == len(cases)
