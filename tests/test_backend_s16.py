"""The 16x8 kernels (s8 ops on int16 activations) in C equal the simulator, on random graphs of every variant.

Beside the CMSIS-NN vectors (tests/test_cmsis_nn_s16_vectors.py, TFLite's own outputs), these graphs
reach the corners the vectors do not: padding on every side, strides with dilation, grouped (not
depthwise) convolutions with an int32 bias, channel multipliers, window dots longer than the 256-term
int32 partial sums, int64 biases near the 2^47 accumulator bound, requantization with a multiplier
above 1, broadcasting add/mul, padded pools, the int16 softmax, full-range int16 inputs and the
quantizer's saturation. Host gcc with ASan/UBSan, Cortex-M3 (portable loops) and Cortex-M4 (SMLAD)
under QEMU in one firmware each.
"""
from __future__ import annotations

import numpy as np
import pytest

import qcc.sim.s8  # noqa: F401  (registers the s8 kernels)
from qcc.backends.cmsis.generate import generate
from qcc.ir.graph import Graph
from qcc.ir.types import TensorType, UniformQuant
from qcc.sim.s8 import quantize_multiplier, softmax16_params

from qcc.backends.cmsis.inplace import max_displacement, min_displacement_reversed

from test_backend_s8 import _run_and_compare, needs_gcc, needs_qemu
from test_memory_plan import CASES, _clobbers

SCALE = 1.0 / 256   # power-of-two scales keep the float boundary exact; the integer ops never read them
FULL = dict(act_min=-32768, act_max=32767)   # the clamp attributes default to int8's range: 16x8 ops state theirs


class S16Builder:
    def __init__(self, seed: int):
        self.g = Graph(f"s16rand{seed}")
        self.rng = np.random.default_rng(seed)

    def typed(self, op):
        op.result.type = op.result.type.with_quant("i16", UniformQuant(SCALE, 0))
        return op.result

    def multipliers(self, count: int, scale: float):
        pairs = [quantize_multiplier(float(scale * self.rng.uniform(0.5, 2.0))) for _ in range(count)]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def conv(self, x, cout, k, name, group=1, strides=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1), wide=True,
             per_channel=True, relu=False, bias=True, big_bias=False):
        cin = x.shape[3]
        kh, kw = (k, k) if isinstance(k, int) else k
        w = self.g.add_const(self.rng.integers(-127, 128, (cout, kh, kw, cin // group)).astype(np.int8))
        taps = kh * kw * cin // group
        operands = [x, w]
        span = (1 << 45) if big_bias else 3 << 20
        if bias:
            b = self.rng.integers(-span, span, cout)
            operands.append(self.g.add_const(b.astype(np.int64 if wide else np.int32)))
        # outputs spread over int16: the window sum, or (big_bias) a bias near TFLite's 2^47 bound, to ~+-20000
        scale = 20000.0 / span if big_bias else 12000.0 / (np.sqrt(taps) * 127 * 9000)
        mult, shift = self.multipliers(cout if per_channel else 1, scale)
        attrs = dict(strides=list(strides), pads=list(pads), dilations=list(dil), group=group, multiplier=mult,
                     shift=shift, rounding="s64" if wide else "double",
                     act_min=0 if relu else -32768, act_max=20000 if relu else 32767)
        return self.typed(self.g.add_op("s8.conv2d", operands, attrs, name=name))


def random_s16_graph(seed: int) -> Graph:
    b = S16Builder(seed)
    g = b.g
    x_in = g.add_input("image", TensorType((1, 9, 8, 8)))
    x = g.add_op("q.quantize", [x_in], result_types=[TensorType((1, 9, 8, 8), "i16", UniformQuant(SCALE, 0))]).result
    c1 = b.conv(x, 8, 3, "conv_pad", pads=(1, 1, 1, 1), relu=True)
    c2 = b.conv(c1, 6, (2, 3), "strided", strides=(2, 2), pads=(0, 1, 1, 2), per_channel=False)
    c2 = b.conv(c2, 7, 1, "pointwise_odd")   # 1x1: the 2x2-blocked matrix product, odd pixels and channels
    c3 = b.conv(c1, 8, 3, "dilated", dil=(2, 2), pads=(2, 1, 2, 1), big_bias=True)
    c4 = b.conv(c1, 8, 1, "grouped_i32_bias", group=2, wide=False)
    dw = b.conv(c1, 16, 3, "depthwise_x2", group=8, strides=(1, 2), pads=(1, 0, 1, 1), bias=False)
    dw1 = b.conv(c1, 8, 3, "depthwise", group=8, dil=(1, 2), pads=(1, 2, 1, 1))   # s16_conv2d.j2's depthwise path
    m_up, s_up = quantize_multiplier(2.7)    # a positive shift: left shift before the high multiply
    up = b.typed(g.add_op("s8.requantize", [c4], dict(multiplier=[m_up], shift=[s_up], act_min=-30000,
                                                      act_max=29000), name="requant_up"))
    ma, sa = quantize_multiplier(0.5)
    mb, sb = quantize_multiplier(0.37)
    m, s = quantize_multiplier(1.3 / (1 << 15))
    hw = list(c4.shape[1:3])
    gate = g.add_op("s8.avgpool", [c4], dict(kernel=hw, strides=hw, **FULL), name="gap")   # Nx1x1xC
    gate = b.typed(gate)
    added = b.typed(g.add_op("s8.add", [up, gate], dict(
        input_zp=[0, 0], left_shift=15, input_multiplier=[ma, mb], input_shift=[sa, sb], multiplier=[m], shift=[s],
        act_min=-32000, act_max=32000), name="add_broadcast"))
    mm, ms = quantize_multiplier(1.0 / 9000)
    mul = b.typed(g.add_op("s8.mul", [added, gate], dict(input_zp=[0, 0], multiplier=[mm], shift=[ms], **FULL),
                           name="mul_broadcast"))
    mp = b.typed(g.add_op("s8.maxpool", [mul], dict(kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                                    act_min=-20000, act_max=32767), name="maxpool"))
    ap = b.typed(g.add_op("s8.avgpool", [dw], dict(kernel=[2, 3], strides=[2, 1], pads=[1, 1, 0, 1], **FULL),
                          name="avgpool"))
    flat = g.add_op("nn.reshape", [c1], {"shape": [1, -1]}, name="flat").result   # K = 576: chunked dots
    k = flat.shape[1]
    wd = g.add_const(b.rng.integers(-127, 128, (12, k)).astype(np.int8))
    bd = g.add_const(b.rng.integers(-(1 << 22), 1 << 22, 12).astype(np.int64))
    dm, ds = b.multipliers(1, 12000.0 / (np.sqrt(k) * 127 * 9000))
    fc = b.typed(g.add_op("s8.dense", [flat, wd, bd], dict(multiplier=dm, shift=ds, rounding="s64", **FULL),
                          name="fc"))
    rows = g.add_op("nn.reshape", [fc], {"shape": [2, 6]}, name="rows").result
    sm_mult, sm_shift = softmax16_params(SCALE / 64)
    sm = g.add_op("s8.softmax", [rows], dict(multiplier=sm_mult, shift=sm_shift, diff_min=0), name="softmax")
    sm.result.type = sm.result.type.with_quant("i16", UniformQuant(1.0 / 32768, 0))
    outs = [g.add_op("q.dequantize", [v], result_types=[TensorType(v.shape)]).result
            for v in (sm.result, ap, c2, mp, dw1, c3)]
    g.set_outputs(outs, ["probs", "pooled", "strided", "gated", "depthwise", "dilated"])
    g.verify()
    return g


def random_inputs(graph: Graph, count: int, seed: int):
    rng = np.random.default_rng(seed)
    v = graph.inputs[0]
    x = (rng.integers(-32768, 32768, (count,) + v.shape) * SCALE).astype(np.float32)
    x[0].flat[:3] = [1e9, -1e9, np.inf]  # saturation at the quantizer
    return {v.name: x}


@needs_gcc
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_s16_graph_on_host_matches_simulator(tmp_path, seed):
    g = random_s16_graph(seed)
    gen = generate(g, "net", "cortex-m4")
    assert {s.kind for s in gen.plan.steps} >= {"s8.conv2d", "s8.requantize", "s8.add", "s8.mul", "s8.maxpool",
                                                  "s8.avgpool", "s8.dense", "s8.softmax"}
    got = _run_and_compare(tmp_path, g, random_inputs(g, 8, seed), "cortex-m4", "host")
    for q in got.quantized[:5]:  # real arithmetic, not a saturated constant ("dilated" is bias-dominated)
        assert len(np.unique(q)) > 8


@needs_qemu
@pytest.mark.parametrize("target", ["cortex-m3", "cortex-m4"])  # portable loops, and SMLAD
def test_random_s16_graph_on_qemu_matches_simulator(tmp_path, target):
    g = random_s16_graph(3)
    _run_and_compare(tmp_path, g, random_inputs(g, 4, 3), target, "qemu")


@pytest.mark.parametrize("case", CASES)
def test_s16_conv_in_place_displacement_is_safe(case):
    """The in-place bound of a 16x8 conv holds for s16_conv2d.j2's order (depthwise: a pixel's outputs after
    its window; otherwise each output after its reads), replayed byte by byte; it never runs reversed."""
    shape, cout, k, group, strides, pads, dil = case
    b = S16Builder(0)
    x = b.g.add_input("x", TensorType(shape))
    x = b.g.add_op("q.quantize", [x], result_types=[TensorType(shape, "i16", UniformQuant(SCALE, 0))]).result
    op = b.conv(x, cout, k, "c", group=group, strides=strides, pads=list(pads), dil=dil).producer
    d = max_displacement(op, 0)
    assert not _clobbers(op, d) and not _clobbers(op, d, per_output=True)
    if not (group == shape[-1] and cout != group):   # (the replay takes a multiplier-2 depthwise as pixel-blocked)
        assert _clobbers(op, d + 2, per_output=True)   # tight to one int16 element
    assert min_displacement_reversed(op, 0) is None


@pytest.mark.parametrize("case, message", [
    ("bias", r"does not fit 2\^47"),                     # an int64 bias saturated at TFLite's bound
    ("multiplier", "requantized accumulator"),           # (acc * reduced multiplier) leaves int32
])
def test_check_quantized_bounds_16x8_layers(case, message):
    from qcc.errors import PassError
    from qcc.transforms.passmanager import PassManager
    b = S16Builder(0)
    x = b.g.add_input("x", TensorType((1, 4, 4, 8)))
    x = b.g.add_op("q.quantize", [x], result_types=[TensorType((1, 4, 4, 8), "i16", UniformQuant(SCALE, 0))]).result
    y = b.conv(x, 2, 3, "c", pads=(1, 1, 1, 1))
    op = y.producer
    b.g.set_outputs([b.g.add_op("q.dequantize", [y], result_types=[TensorType(y.shape)]).result], ["y"])
    PassManager.parse("check-quantized").run(b.g)   # as built: accepted
    if case == "bias":
        op.operands[2].producer.attrs["value"] = np.array([(1 << 47) - 1, 0], np.int64)
    else:
        op.attrs.update(multiplier=[1 << 30] * 2, shift=[7] * 2)
    with pytest.raises(PassError, match=message):
        PassManager.parse("check-quantized").run(b.g)
