"""Memory plan of the cmsis backend: in-arena inputs/outputs, best fit, in-place layers, the checker.

* ``max_displacement`` is checked against a brute-force replay of each
  kernel's loop order (reads of every output element, then its store): at the
  displacement it returns no store hits a byte read later, one byte further
  one does (the bound is tight).
* A graph built to chain in-place layers (elementwise, residual add, "same"
  and depthwise and 1x1 convolutions, pools) runs on the host bit-exact with
  the simulator through both API paths (``_run`` and ``_invoke``), with an
  arena below the no-in-place lower bound.
* ``check_plan`` rejects overlapping live buffers and over-displaced in-place outputs.
"""
from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest

from qcc.backends.cmsis import generate
from qcc.backends.cmsis.inplace import max_displacement, min_displacement_reversed
from qcc.backends.cmsis.plan import PlanError, check_plan, make_plan, memory_report

from qcc.ir.graph import Graph
from qcc.ir.types import TensorType, UniformQuant

from test_backend_cmsis import Builder, compile_and_compare, random_inputs
from test_backend_s8 import S8Builder, random_inputs as s8_random_inputs

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")


def _window_reads(op, operand: int = 0, per_output: bool = False):
    """Blocks of (outputs, input flat indices they read), in the templates' loop order; a block's stores
    follow all of its reads.

    Windowed kernels run (n, oy, ox, channel), one output per block, except s8_conv2d.j2's depthwise paths,
    which read a pixel's whole window for every channel, then store the pixel's Cout outputs (a pixel
    buffer); and the ungrouped convolutions of conv2d.j2 and s8_conv2d.j2 (gemm paths), whose blocks are a
    pair of consecutive pixels of a row (all channels; an odd row ends with one pixel; a 1x1 stride-1
    unpadded conv is one row of N*H*W pixels); and conv2d.j2's depthwise path (qnn), 4 channels of a pixel
    (then single channels). ``per_output``: the order inplace.py's bound is derived for, one output per
    block except the s8 depthwise pixels (inplace.store_block); the other blocks are runs of consecutive
    outputs, which only relax it. Elementwise kernels (requantize, add) read index i of every operand,
    then store y[i].
    """
    blocks = list(_window_reads_per_output(op, operand))
    if per_output or op.opname not in ("qnn.conv2d", "s8.conv2d"):
        yield from blocks
        return
    x, y = op.operands[operand], op.result
    _, oh, ow, cout = y.shape
    _, kh, kw, cg = op.operands[1].shape
    group = op.attrs["group"]
    if group == 1:
        if kh == kw == 1 and tuple(op.attrs["strides"]) == (1, 1) and not any(op.attrs["pads"]):
            oh, ow = 1, y.type.size // cout
        sizes = [2 * cout] * (ow // 2) + [cout] * (ow % 2)
        sizes = sizes * (y.type.size // (ow * cout))
    elif op.opname == "qnn.conv2d" and cg == 1 and cout == x.shape[-1]:
        sizes = ([4] * (cout // 4) + [1] * (cout % 4)) * (y.type.size // cout)
    else:
        sizes = [1] * len(blocks)  # one output, or (s8 depthwise) one pixel, per block already
    i = 0
    for size in sizes:
        group_blocks = blocks[i:i + size]
        i += size
        yield [o for outs, _ in group_blocks for o in outs], [r for _, reads in group_blocks for r in reads]


def _window_reads_per_output(op, operand: int = 0):
    x, y = op.operands[operand], op.result
    if op.opname.endswith(("add", "requantize")):
        for i in range(y.type.size):
            yield [i], [i]
        return
    n, h, w, c = x.shape
    _, oh, ow, cout = y.shape
    conv = op.opname.endswith("conv2d")
    if conv:
        _, kh, kw, cg = op.operands[1].shape
        (sh, sw), (dh, dw), cog = op.attrs["strides"], op.attrs["dilations"], cout // op.attrs["group"]
    else:
        (kh, kw), (sh, sw), dh, dw, cg, cog = op.attrs["kernel"], op.attrs["strides"], 1, 1, 1, 1
    pt, pl = op.attrs["pads"][:2]
    pixel_block = op.opname == "s8.conv2d" and cg == 1 and op.attrs["group"] == c
    for b, oy, ox in itertools.product(range(n), range(oh), range(ow)):
        first = ((b * oh + oy) * ow + ox) * cout
        block_outs, block_reads = [], []
        for oc in range(cout):
            c0 = (oc // cog) * cg if conv else oc
            reads = []
            for ky, kx in itertools.product(range(kh), range(kw)):
                iy, ix = oy * sh - pt + ky * dh, ox * sw - pl + kx * dw
                if 0 <= iy < h and 0 <= ix < w:
                    reads += [((b * h + iy) * w + ix) * c + ch for ch in range(c0, c0 + cg)]
            if pixel_block:
                block_outs.append(first + oc)
                block_reads += reads
            else:
                yield [first + oc], reads
        if pixel_block:
            yield block_outs, block_reads


def _clobbers(op, d: int, reverse: bool = False, operand: int = 0, per_output: bool = False) -> bool:
    """True when, with the output at byte offset d from operand ``operand``, a store hits a byte read later.

    ``reverse``: the kernel computes its outputs last to first (conv2d.j2 / s8_conv2d.j2 with L.reverse).
    ``per_output``: replay one store per output right after its reads (see _window_reads).
    """
    si, so = op.operands[operand].type.np_dtype.itemsize, op.result.type.np_dtype.itemsize
    written = set()
    order = list(_window_reads(op, operand, per_output))
    for outs, reads in (reversed(order) if reverse else order):
        for r in reads:
            if any(b in written for b in range(r * si, (r + 1) * si)):
                return True
        for o in outs:
            written.update(range(d + o * so, d + (o + 1) * so))
    return False


CASES = [  # (input shape, cout, k, group, strides, pads, dilations)
    ((1, 5, 6, 4), 4, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 5, 6, 4), 4, 3, 4, (1, 1), (1, 1, 1, 1), (1, 1)),      # depthwise
    ((1, 4, 4, 6), 6, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),      # pointwise
    ((1, 7, 5, 3), 6, 3, 1, (2, 2), (1, 0, 1, 1), (1, 1)),      # strided, grows channels
    ((1, 7, 7, 2), 2, 3, 1, (1, 1), (0, 2, 1, 0), (2, 2)),      # dilated, asymmetric pads
    ((2, 3, 3, 4), 4, 3, 2, (1, 1), (1, 1, 1, 1), (1, 1)),      # grouped, batch 2
    ((1, 5, 6, 4), 8, 3, 4, (1, 2), (1, 0, 1, 1), (1, 1)),      # depthwise, channel multiplier 2
]


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("case", CASES)
def test_conv_displacement_is_safe_and_tight(case, bits):
    shape, cout, k, group, strides, pads, dil = case
    b = Builder("disp", bits, 0)
    x = b.input("x", shape, 4)
    y = b.conv(x, cout, k, "c", group=group, strides=strides, pads=pads, dil=dil)
    op = y.producer
    d = max_displacement(op, 0)
    # Safe for the kernel's blocked order; tight for one store per output, the order the bound is
    # derived for (conv2d.j2's blocks of consecutive outputs may leave slack).
    assert not _clobbers(op, d) and not _clobbers(op, d, per_output=True)
    assert _clobbers(op, d + 1, per_output=True)
    r = min_displacement_reversed(op, 0)
    assert not _clobbers(op, r, reverse=True) and not _clobbers(op, r, reverse=True, per_output=True)
    assert _clobbers(op, r - 1, reverse=True, per_output=True)


@pytest.mark.parametrize("opname", ["qnn.maxpool", "qnn.avgpool"])
def test_pool_displacement_is_safe_and_tight(opname):
    b = Builder("pool", 8, 0)
    x = b.input("x", (1, 6, 5, 3), 4)
    attrs = {"kernel": [3, 2], "strides": [1, 2], "pads": [1, 0, 1, 1], "act_min": -128, "act_max": 127}
    if opname == "qnn.avgpool":
        attrs.update(count_include_pad=False, out_shift=0)
    op = b.op(opname, [x], attrs, "p").producer
    d = max_displacement(op, 0)
    assert not _clobbers(op, d) and _clobbers(op, d + 1)


def _s8_input(b: S8Builder, shape, zp=7):
    x = b.g.add_input("x", TensorType(shape))
    return b.g.add_op("q.quantize", [x], result_types=[TensorType(shape, "i8", UniformQuant(0.0625, zp))]).result


@pytest.mark.parametrize("case", CASES)
def test_s8_conv_displacement_is_safe_and_tight(case):
    shape, cout, k, group, strides, pads, dil = case
    b = S8Builder(0)
    op = b.conv(_s8_input(b, shape), cout, k, "c", group=group, strides=strides, pads=pads, dil=dil).producer
    d = max_displacement(op, 0)
    # Safe for the kernel's blocked order (gemm pixel pairs); tight for the order the bound is derived for.
    assert not _clobbers(op, d) and not _clobbers(op, d, per_output=True)
    assert _clobbers(op, d + 1, per_output=True)
    r = min_displacement_reversed(op, 0)
    assert not _clobbers(op, r, reverse=True) and not _clobbers(op, r, reverse=True, per_output=True)
    assert _clobbers(op, r - 1, reverse=True, per_output=True)


def test_s8_depthwise_stores_a_pixel_after_its_whole_window():
    # acc[Cout] per pixel: a 3x3 "same" depthwise layer gets exactly the classic W + 1 pixel row buffer.
    b = S8Builder(1)
    x = _s8_input(b, (1, 6, 5, 4))
    same = b.conv(x, 4, 3, "dw", group=4, pads=(1, 1, 1, 1)).producer
    assert max_displacement(same, 0) == -(5 + 1) * 4
    # A channel multiplier of 2 (1x1): pixel p's 8 outputs end at 8(p+1) and pixel p+1 reads from 4(p+1),
    # so the last of the 30 pixels binds: 4*29 - 8*29. A per-output order would give one byte less
    # (channel 1 of the last pixel still reads the byte channel 0 is stored over).
    mult = b.conv(x, 8, 1, "dw2", group=4).producer
    assert max_displacement(mult, 0) == 4 * 29 - 8 * 29
    assert not _clobbers(mult, -116) and _clobbers(mult, -115)


@pytest.mark.parametrize("opname", ["s8.maxpool", "s8.avgpool"])
def test_s8_pool_displacement_is_safe_and_tight(opname):
    b = S8Builder(2)
    x = _s8_input(b, (1, 6, 5, 3))
    attrs = {"kernel": [3, 2], "strides": [1, 2], "pads": [1, 0, 1, 1], "act_min": -128, "act_max": 127}
    op = b.typed(b.g.add_op(opname, [x], attrs, name="p"), 7).producer
    d = max_displacement(op, 0)
    assert not _clobbers(op, d) and _clobbers(op, d + 1)
    assert min_displacement_reversed(op, 0) is None  # no reversed pool loops


def test_s8_elementwise_run_in_place_at_displacement_zero():
    from qcc.sim.s8 import quantize_multiplier
    b = S8Builder(3)
    x = _s8_input(b, (1, 4, 3, 5))
    m, sh = quantize_multiplier(0.7)
    rq = b.typed(b.g.add_op("s8.requantize", [x], dict(input_zp=7, output_zp=-2, multiplier=[m], shift=[sh],
                                                       act_min=-128, act_max=127), name="rq"), -2)
    add = b.g.add_op("s8.add", [x, rq], dict(input_zp=[7, -2], output_zp=1, left_shift=20, input_multiplier=[m, m],
                                            input_shift=[sh, sh], multiplier=[m], shift=[sh - 20], act_min=-128,
                                            act_max=127), name="add")
    for op, operand in ((rq.producer, 0), (add, 0), (add, 1)):
        assert max_displacement(op, operand) == 0
        assert not _clobbers(op, 0, operand=operand) and _clobbers(op, 1, operand=operand)
        assert min_displacement_reversed(op, operand) is None


def s8_inplace_graph(seed: int = 4) -> Graph:
    """Every s8 kernel that runs in place, chained: convs (both directions), depthwise, requantize,
    a residual add whose skip dies there, pools; dense and softmax stay out of place."""
    from qcc.sim.s8 import quantize_multiplier
    b = S8Builder(seed)
    g = b.g
    x = _s8_input(b, (1, 10, 9, 4), 5)
    c1 = b.conv(x, 8, 3, "grow", pads=(1, 1, 1, 1), relu=True)
    c2 = b.conv(c1, 8, 3, "same", pads=(1, 1, 1, 1))
    dw = b.conv(c2, 8, 3, "dw", group=8, pads=(1, 1, 1, 1))
    pw = b.conv(dw, 8, 1, "pw", per_channel=False, rounding="single")
    m, sh = quantize_multiplier(1.7)
    rq = b.typed(g.add_op("s8.requantize", [pw], dict(input_zp=pw.type.quant.zero_point, output_zp=-4,
                                                      multiplier=[m], shift=[sh], act_min=-120, act_max=127),
                          name="rq"), -4)
    ma, sa = quantize_multiplier(0.5)
    mb, sb = quantize_multiplier(0.8)
    mo, so = quantize_multiplier(1.1 / (1 << 20))
    add = b.typed(g.add_op("s8.add", [rq, c1], dict(
        input_zp=[-4, c1.type.quant.zero_point], output_zp=3, left_shift=20, input_multiplier=[ma, mb],
        input_shift=[sa, sb], multiplier=[mo], shift=[so], act_min=3, act_max=127), name="residual"), 3)
    mp = b.typed(g.add_op("s8.maxpool", [add], dict(kernel=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1],
                                                     act_min=-128, act_max=127), name="pool"), 3)
    ap = b.typed(g.add_op("s8.avgpool", [mp], dict(kernel=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
                                                    act_min=-128, act_max=127), name="avg"), 3)
    out = g.add_op("q.dequantize", [ap], result_types=[TensorType(ap.shape)]).result
    g.set_outputs([out], ["y"])
    g.verify()
    return g


@needs_gcc
def test_s8_inplace_layers_are_bit_exact(tmp_path):
    g = s8_inplace_graph()
    plan = make_plan(g, max_recompute=0)   # whole-tensor layers (streaming: test_streaming.py)
    inplace = {s.op.name for s in plan.steps if plan.is_inplace(s)}
    assert {"dw", "pw", "rq", "residual", "avg"} <= inplace, inplace
    assert any(plan.is_reversed(s) for s in plan.steps)
    assert plan.arena_size < plan.lower_bound
    check_plan(plan)
    gen, got = compile_and_compare(g, tmp_path, s8_random_inputs(g, 6, 4), max_recompute=0)
    c = gen.files["net.c"].decode()
    assert "for (int p = 44; p >= 0; p--)" in c  # a reversed s8 convolution (1x1: 90 pixels in pairs)
    assert len(np.unique(got.quantized[0])) > 4


def test_s8_model_arenas_drop_with_inplace_layers():
    """The int8 QDQ models: in-place s8 layers bring the arenas to the Qm.n figures (issue: <= 34,000 / 9,500)."""
    import qcc
    import qcc.passes  # noqa: F401  (registers the int8 pipeline)
    from test_backend_s8 import _model_path
    for name, goal in (("ic_resnet8", 34000), ("kws_dscnn", 9500)):
        g = qcc.load_onnx(_model_path(name))
        qcc.PassManager.parse("int8").run(g)
        plan = make_plan(g, max_recompute=0)
        check_plan(plan)
        assert plan.arena_size <= goal < make_plan(g, inplace=False, max_recompute=0).arena_size, (name, plan.arena_size)


def inplace_graph(bits: int):
    b = Builder(f"inplace{bits}", bits, 7)
    lo, hi = b.lo, b.hi
    x = b.input("x", (1, 10, 9, 4), 5)
    c1 = b.conv(x, 8, 3, "grow", pads=(1, 1, 1, 1), relu=True)
    c2 = b.conv(c1, 8, 3, "same", pads=(1, 1, 1, 1), per_channel=True)
    dw = b.conv(c2, 8, 3, "dw", group=8, pads=(1, 1, 1, 1), per_channel=True)
    pw = b.conv(dw, 8, 1, "pw")
    rq = b.op("qnn.requantize", [pw], {"out_shift": [1], "act_min": lo, "act_max": hi}, "rq")
    add = b.op("qnn.add", [rq, c1], {"a_shift": 1, "b_shift": 0, "out_shift": [1], "act_min": 0, "act_max": hi},
               "residual")  # c1 (the skip) dies here
    mp = b.op("qnn.maxpool", [add], {"kernel": [2, 2], "strides": [2, 2], "pads": [0, 0, 1, 1],
                                     "act_min": lo, "act_max": hi}, "pool")
    ap = b.op("qnn.avgpool", [mp], {"kernel": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1],
                                    "count_include_pad": False, "out_shift": 0, "act_min": lo, "act_max": hi}, "avg")
    return b.graph([ap], ["y"])


@needs_gcc
@pytest.mark.parametrize("bits", [8, 16])
def test_inplace_layers_are_bit_exact(tmp_path, bits):
    g = inplace_graph(bits)
    plan = make_plan(g, max_recompute=0)   # whole-tensor layers (streaming: test_streaming.py)
    inplace = [s.op.name for s in plan.steps if plan.is_inplace(s)]
    assert {"dw", "pw", "rq", "residual"} <= set(inplace), inplace
    assert any(plan.is_reversed(s) for s in plan.steps)  # the conv chain alternates directions  # "same" reads the skip c1: not dying
    assert plan.arena_size < plan.lower_bound == make_plan(g, inplace=False).lower_bound
    check_plan(plan)
    gen, _ = compile_and_compare(g, tmp_path, random_inputs(g, 5, 1), max_recompute=0)  # even: _run, odd: _invoke
    c = gen.files["net.c"].decode()
    assert "int net_invoke(void)" in c and "int8_t *net_input(void)" in c or "int16_t *net_input(void)" in c
    assert f"#define NET_ARENA_SIZE {plan.arena_size}" in gen.files["net.h"].decode()
    report = memory_report(plan)
    assert report["arena_bytes"] == plan.arena_size and len(report["layers"]) == len(plan.steps)
    assert max(e["live_bytes"] for e in report["layers"]) == plan.lower_bound


def test_arena_holds_inputs_and_outputs():
    g = inplace_graph(8)
    plan = make_plan(g, inplace=False)
    bufs = {id(b.root): b for b in plan.buffers}
    x = bufs[id(plan.inputs[0].value)]
    y = bufs[id(plan.outputs[0].value)]
    assert x.start == 0 and y.end == len(plan.steps)          # caller writes before, reads after
    assert plan.input_offsets == [x.offset] and plan.output_offsets == [y.offset]
    assert plan.lower_bound >= x.size + plan.buffers[1].size  # the first layer holds its input and output


def test_checker_rejects_overlaps():
    g = inplace_graph(8)
    plan = make_plan(g, inplace=False)
    check_plan(plan)
    a, b = plan.buffers[0], plan.buffers[1]   # the input and the first layer's output: live together
    b.offset = a.offset
    with pytest.raises(PlanError, match="overlap"):
        check_plan(plan)
    plan = make_plan(g, max_recompute=0)
    out = next(b for b in plan.buffers if id(b) in plan.inplace)
    link = plan.inplace[id(out)]
    out.offset = link.src.offset + link.limit + (-8 if link.reverse else 8)  # past what the kernel allows
    with pytest.raises(PlanError):
        check_plan(plan)


def test_plan_memory_pass_reports_without_changing_the_graph():
    import qcc.passes  # noqa: F401  (registers plan-memory)
    from qcc.transforms.passmanager import PassManager
    from qcc.ir.printer import print_graph
    g = inplace_graph(8)
    before = print_graph(g)
    stats = PassManager.parse("plan-memory{max_recompute=0}").run(g).stats()["0:plan-memory{max_recompute=0.0}"]
    plain = PassManager.parse("plan-memory{inplace=false}").run(g).stats()["0:plan-memory{inplace=false}"]
    streamed = PassManager.parse("plan-memory").run(g).stats()["0:plan-memory"]
    assert print_graph(g) == before
    assert stats["arena_bytes"] == make_plan(g, max_recompute=0).arena_size < stats["lower_bound_bytes"] \
        == plain["arena_bytes"]
    assert streamed["arena_bytes"] == make_plan(g).arena_size < stats["arena_bytes"]   # row streaming helps here
    assert streamed["streamed_chains"] >= 1 and stats["streamed_chains"] == plain["streamed_chains"] == 0
    assert stats["in_place_layers"] >= 4 and plain["in_place_layers"] == 0
    assert max(stats["live_bytes"]) == stats["lower_bound_bytes"]
