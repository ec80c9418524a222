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

from test_backend_cmsis import Builder, compile_and_compare, random_inputs

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")


def _window_reads(op):
    """Input flat indices each output reads, in the templates' loop order (n, oy, ox, channel)."""
    x, y = op.operands[0], op.result
    n, h, w, c = x.shape
    _, oh, ow, cout = y.shape
    if op.opname == "qnn.conv2d":
        _, kh, kw, cg = op.operands[1].shape
        (sh, sw), (dh, dw), cog = op.attrs["strides"], op.attrs["dilations"], cout // op.attrs["group"]
    else:
        (kh, kw), (sh, sw), dh, dw, cg, cog = op.attrs["kernel"], op.attrs["strides"], 1, 1, 1, 1
    pt, pl = op.attrs["pads"][:2]
    for b, oy, ox, oc in itertools.product(range(n), range(oh), range(ow), range(cout)):
        c0 = (oc // cog) * cg if op.opname == "qnn.conv2d" else oc
        reads = []
        for ky, kx in itertools.product(range(kh), range(kw)):
            iy, ix = oy * sh - pt + ky * dh, ox * sw - pl + kx * dw
            if 0 <= iy < h and 0 <= ix < w:
                reads += [((b * h + iy) * w + ix) * c + ch for ch in range(c0, c0 + cg)]
        yield reads


def _clobbers(op, d: int, reverse: bool = False) -> bool:
    """True when, with the output at byte offset d from the input, a store hits a byte read later.

    ``reverse``: the kernel computes its outputs last to first (conv2d.j2 with L.reverse).
    """
    si, so = op.operands[0].type.np_dtype.itemsize, op.result.type.np_dtype.itemsize
    written = set()
    order = list(enumerate(_window_reads(op)))
    for o, reads in (reversed(order) if reverse else order):
        for r in reads:
            if any(b in written for b in range(r * si, (r + 1) * si)):
                return True
        written.update(range(d + o * so, d + (o + 1) * so))
    return False


CASES = [  # (input shape, cout, k, group, strides, pads, dilations)
    ((1, 5, 6, 4), 4, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 5, 6, 4), 4, 3, 4, (1, 1), (1, 1, 1, 1), (1, 1)),      # depthwise
    ((1, 4, 4, 6), 6, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),      # pointwise
    ((1, 7, 5, 3), 6, 3, 1, (2, 2), (1, 0, 1, 1), (1, 1)),      # strided, grows channels
    ((1, 7, 7, 2), 2, 3, 1, (1, 1), (0, 2, 1, 0), (2, 2)),      # dilated, asymmetric pads
    ((2, 3, 3, 4), 4, 3, 2, (1, 1), (1, 1, 1, 1), (1, 1)),      # grouped, batch 2
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
    assert not _clobbers(op, d)
    assert _clobbers(op, d + 1)
    r = min_displacement_reversed(op, 0)
    assert not _clobbers(op, r, reverse=True)
    assert _clobbers(op, r - 1, reverse=True)


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
    plan = make_plan(g)
    inplace = [s.op.name for s in plan.steps if plan.is_inplace(s)]
    assert {"dw", "pw", "rq", "residual"} <= set(inplace), inplace
    assert any(plan.is_reversed(s) for s in plan.steps)  # the conv chain alternates directions  # "same" reads the skip c1: not dying
    assert plan.arena_size < plan.lower_bound == make_plan(g, inplace=False).lower_bound
    check_plan(plan)
    gen, _ = compile_and_compare(g, tmp_path, random_inputs(g, 5, 1))  # even samples _run, odd _invoke
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
    plan = make_plan(g)
    out = next(b for b in plan.buffers if id(b) in plan.inplace)
    link = plan.inplace[id(out)]
    out.offset = link.src.offset + link.limit + (-8 if link.reverse else 8)  # past what the kernel allows
    with pytest.raises(PlanError):
        check_plan(plan)


def test_plan_memory_pass_reports_without_changing_the_graph():
    import qcc.passes  # noqa: F401  (registers plan-memory)
    from qcc.passmanager import PassManager
    from qcc.printer import print_graph
    g = inplace_graph(8)
    before = print_graph(g)
    stats = PassManager.parse("plan-memory").run(g).stats()["0:plan-memory"]
    plain = PassManager.parse("plan-memory{inplace=false}").run(g).stats()["0:plan-memory{inplace=false}"]
    assert print_graph(g) == before
    assert stats["arena_bytes"] == make_plan(g).arena_size < stats["lower_bound_bytes"] == plain["arena_bytes"]
    assert stats["in_place_layers"] >= 4 and plain["in_place_layers"] == 0
    assert max(stats["live_bytes"]) == stats["lower_bound_bytes"]
