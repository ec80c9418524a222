"""Row-streamed execution (backends/cmsis/stream.py, issue 15).

* Three chains in one graph (residual block with stride 2 and padding in
  cache mode, pointwise / depthwise / padded max pool / requantize in
  recompute mode, a dilated conv and a padded average pool ending in a global
  average pool, cache mode with 2-row bands), affine int8 and Qm.n 8/16 bits:
  the streamed C on the host (sanitizers) equals the integer simulator bit
  for bit, and (int8) the whole-tensor C byte for byte.
* The replay check (every band call finds exactly the rows it reads where the
  plan put them) passes on the planner's plans and catches a buffer moved
  onto a live one or a wrong row pointer.
* Ratchets on the arena (input and output included, int8, Cortex-M4):
  ResNet-8 <= 20,000 B, DS-CNN <= 5,000 B, MobileNetV1-0.25 96x96x3 <= 32,000 B,
  the FC autoencoder 768 B; ``max_recompute=0`` keeps the whole-tensor plans.
* ``--max-recompute`` on the command line; the C is deterministic.

The streamed MLPerf Tiny models also run on the host and in QEMU (Cortex-M4)
bit-exact with TensorFlow Lite Micro in test_backend_s8.py (streaming is the default).
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from qcc.backends.cmsis import generate
from qcc.backends.cmsis.plan import PlanError, check_plan, make_plan, memory_report
from qcc.backends.cmsis.stream import Call, replay_chain
from qcc.ir.types import TensorType
from qcc.sim.s8 import quantize_multiplier

from test_backend_cmsis import Builder, compile_and_compare, random_inputs
from test_backend_s8 import S8Builder, random_inputs as s8_random_inputs

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")

# (first step, last step, halo mode, band rows) of the three chains of the graphs below
CHAINS = [(0, 4, "cache", 1), (5, 8, "recompute", 2), (9, 11, "cache", 2)]


def s8_chain_graph(seed: int = 3):
    b = S8Builder(seed)
    g = b.g
    x = b.typed(g.add_op("q.quantize", [g.add_input("x", TensorType((1, 14, 9, 4)))],
                         result_types=[TensorType((1, 14, 9, 4))]), 5)
    c0 = b.conv(x, 8, 3, "c0", pads=(1, 1, 1, 1), relu=True)
    c1 = b.conv(c0, 8, 3, "c1", strides=(2, 2), pads=(0, 1, 1, 1), relu=True)
    c2 = b.conv(c1, 8, 3, "c2", pads=(1, 1, 1, 1))
    sk = b.conv(c0, 8, 1, "skip", strides=(2, 2))
    ma, sa = quantize_multiplier(0.5)
    mb, sb = quantize_multiplier(0.8)
    mo, so = quantize_multiplier(1.1 / (1 << 20))
    add = b.typed(g.add_op("s8.add", [c2, sk], dict(
        input_zp=[c2.type.quant.zero_point, sk.type.quant.zero_point], output_zp=3, left_shift=20,
        input_multiplier=[ma, mb], input_shift=[sa, sb], multiplier=[mo], shift=[so], act_min=3, act_max=127),
        name="add"), 3)
    pw = b.conv(add, 8, 1, "pw", relu=True)
    dw = b.conv(pw, 8, 3, "dw", group=8, pads=(1, 1, 1, 1))
    mp = b.typed(g.add_op("s8.maxpool", [dw], dict(kernel=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1],
                                                    act_min=-128, act_max=127), name="mp"), dw.type.quant.zero_point)
    m, sh = quantize_multiplier(1.3)
    rq = b.typed(g.add_op("s8.requantize", [mp], dict(input_zp=mp.type.quant.zero_point, output_zp=-4,
                                                      multiplier=[m], shift=[sh], act_min=-120, act_max=127),
                          name="rq"), -4)
    c3 = b.conv(rq, 8, 3, "dil", pads=(2, 2, 2, 2), dil=(2, 2))
    ap = b.typed(g.add_op("s8.avgpool", [c3], dict(kernel=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
                                                    act_min=-128, act_max=127), name="ap"), c3.type.quant.zero_point)
    gp = b.typed(g.add_op("s8.avgpool", [ap], dict(kernel=list(ap.shape[1:3]), strides=[1, 1], pads=[0, 0, 0, 0],
                                                    act_min=-128, act_max=127), name="gap"), ap.type.quant.zero_point)
    outs = [g.add_op("q.dequantize", [v], result_types=[TensorType(v.shape)]).result for v in (gp,)]
    g.set_outputs(outs, ["y"])
    g.verify()
    return g


def qmn_chain_graph(bits: int, seed: int = 5):
    b = Builder(f"stream{bits}", bits, seed)
    lo, hi = b.lo, b.hi
    x = b.input("x", (1, 14, 9, 4), 5)
    c0 = b.conv(x, 8, 3, "c0", pads=(1, 1, 1, 1), relu=True)
    c1 = b.conv(c0, 8, 3, "c1", strides=(2, 2), pads=(0, 1, 1, 1), relu=True, per_channel=True)
    c2 = b.conv(c1, 8, 3, "c2", pads=(1, 1, 1, 1))
    sk = b.conv(c0, 8, 1, "skip", strides=(2, 2))
    add = b.op("qnn.add", [c2, sk], {"a_shift": 1, "b_shift": 0, "out_shift": [1], "act_min": 0, "act_max": hi}, "add")
    pw = b.conv(add, 8, 1, "pw", relu=True)
    dw = b.conv(pw, 8, 3, "dw", group=8, pads=(1, 1, 1, 1), per_channel=True)
    mp = b.op("qnn.maxpool", [dw], {"kernel": [2, 2], "strides": [2, 2], "pads": [0, 0, 1, 1],
                                    "act_min": lo, "act_max": hi}, "mp")
    rq = b.op("qnn.requantize", [mp], {"out_shift": [1], "act_min": lo, "act_max": hi}, "rq")
    c3 = b.conv(rq, 8, 3, "dil", pads=(2, 2, 2, 2), dil=(2, 2))
    ap = b.op("qnn.avgpool", [c3], {"kernel": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1],
                                    "count_include_pad": True, "out_shift": 0, "act_min": lo, "act_max": hi}, "ap")
    gp = b.op("qnn.avgpool", [ap], {"kernel": list(ap.shape[1:3]), "strides": [1, 1], "pads": [0, 0, 0, 0],
                                    "count_include_pad": False, "out_shift": -1, "act_min": lo, "act_max": hi}, "gap")
    return b.graph([gp], ["y"])


def _assert_streamed(plan):
    chains = [s.chain for s in plan.steps if s.chain is not None]
    assert [(c.mode, c.band, len(c.ops)) for c in chains] == [("cache", 1, 5), ("recompute", 2, 4), ("cache", 2, 3)]
    assert chains[-1].acc is not None                       # the global pool streams as a sum of rows
    assert chains[1].extra_macs() > 0 == chains[0].extra_macs()   # recompute repeats halo MACs, cache does not


@needs_gcc
def test_s8_streamed_chains_are_bit_exact(tmp_path):
    g = s8_chain_graph()
    samples = s8_random_inputs(g, 6, 2)
    gen, got = compile_and_compare(g, tmp_path / "streamed", samples, chains=CHAINS)
    _assert_streamed(gen.plan)
    c = gen.files["net.c"].decode()
    assert "memmove(" in c and "for (int k = 0;" in c and "_rowsum(" in c
    whole, want = compile_and_compare(g, tmp_path / "whole", samples, max_recompute=0)
    assert not any(s.chain for s in whole.plan.steps)
    for a, b in zip(got.quantized, want.quantized):
        assert a.tobytes() == b.tobytes()
    assert len(np.unique(got.quantized[0])) > 4            # not a saturated, constant output


@needs_gcc
@pytest.mark.parametrize("bits", [8, 16])
def test_qmn_streamed_chains_are_bit_exact(tmp_path, bits):
    g = qmn_chain_graph(bits)
    gen, got = compile_and_compare(g, tmp_path, random_inputs(g, 5, bits), chains=CHAINS)
    _assert_streamed(gen.plan)
    assert len(np.unique(got.quantized[0])) > 4


def test_replay_passes_planned_chains_and_catches_clobbers():
    g = s8_chain_graph()
    plan = make_plan(g, chains=CHAINS)
    check_plan(plan)                                       # runs replay_chain on every chain
    offset = lambda v: plan.where(v)[1]                    # noqa: E731
    chain = plan.steps[0].chain
    replay_chain(chain, offset, plan.arena_size)
    # a wrong row pointer: the second band of the first layer claims its input window starts a row lower
    act = next(a for band in chain.bands[1:] for a in band if isinstance(a, Call) and a.layer == 1)
    act.in_lo[0] += 1
    with pytest.raises(AssertionError, match="do not hold those rows"):
        replay_chain(chain, offset, plan.arena_size)
    act.in_lo[0] -= 1
    # a band buffer moved onto another one that is live at the same time
    plan = make_plan(g, chains=CHAINS)
    bufs = [b for b in plan.buffers if b.spans is not None and any(b.root is op.result for op in chain.ops)]
    chain = plan.steps[0].chain
    kept = [b for b in plan.buffers if any(b.root is op.result and chain.kept.get(j)
                                           for j, op in enumerate(chain.ops))]
    assert len(kept) >= 2 and bufs is not None
    kept[1].offset = kept[0].offset
    plan.location[id(kept[1].root)] = ("arena", kept[0].offset)
    with pytest.raises(PlanError):
        check_plan(plan)


def test_planner_streams_when_it_pays_and_reports_it():
    g = s8_chain_graph()
    whole = make_plan(g, max_recompute=0)
    plan = make_plan(g)
    report = memory_report(plan)["streaming"]
    assert plan.arena_size < whole.arena_size == report["arena_without_streaming"]
    assert report["chains"] and report["extra_mac_ratio"] <= 0.10
    assert memory_report(whole)["streaming"]["chains"] == []
    layers = memory_report(plan)["layers"]
    assert any(e["streamed"] for e in layers) and max(e["live_bytes"] for e in layers) == plan.lower_bound


def _lowered(name: str):
    import qcc
    import qcc.passes  # noqa: F401  (registers the int8 pipeline)
    from test_backend_s8 import _model_path
    g = qcc.load_onnx(_model_path(name))
    qcc.PassManager.parse("int8").run(g)
    return g


@pytest.mark.parametrize("name,goal,whole", [("ic_resnet8", 20000, 33360), ("kws_dscnn", 5000, 8460)])
def test_mlperf_tiny_arenas(name, goal, whole):
    """Issue 15's targets (int8, input and output in the arena); the whole-tensor plans are unchanged."""
    g = _lowered(name)
    plan = make_plan(g)
    check_plan(plan)
    report = memory_report(plan)["streaming"]
    assert plan.arena_size <= goal and report["extra_mac_ratio"] <= 0.10, (name, plan.arena_size)
    assert make_plan(g, max_recompute=0).arena_size == whole


def _calibrated(model, shape):
    import qcc
    import qcc.passes  # noqa: F401
    from stream_models import calibration
    import tempfile, os
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        import onnx
        onnx.save(model, path)
        np.savez(os.path.join(d, "c.npz"), x=calibration(shape, 4)[:, None])
        g = qcc.load_onnx(path)
        pm = qcc.PassManager.parse("int8-calibrated")
        for p in pm.passes:
            p.context = {"calib": os.path.join(d, "c.npz")}
        pm.run(g)
    return g


def test_mobilenet_v1_and_autoencoder_arenas():
    from stream_models import fc_autoencoder, mobilenet_v1_025
    g = _calibrated(mobilenet_v1_025(), (96, 96, 3))
    plan = make_plan(g)
    assert g.inputs[0].shape == (1, 96, 96, 3) and plan.inputs[0].value.shape == (1, 96, 96, 3)
    assert plan.arena_size <= 32000 < make_plan(g, max_recompute=0).arena_size, plan.arena_size
    ae = make_plan(_calibrated(fc_autoencoder(), (640,)))
    assert ae.arena_size == 768   # 640 in + 128 out of the first layer: nothing else is live with them


def test_streamed_c_is_deterministic():
    a = generate(s8_chain_graph(), "net", "cortex-m4")
    b = generate(s8_chain_graph(), "net", "cortex-m4")
    assert any(s.chain for s in a.plan.steps) and a.files == b.files


def test_max_recompute_option(tmp_path, capsys):
    from qcc.tools.compile import main, parse_max_recompute
    assert parse_max_recompute("10%") == pytest.approx(0.1) and parse_max_recompute("0") == 0
    assert parse_max_recompute(None) is None
    model = str(pytest.importorskip("test_backend_s8")._model_path("kws_dscnn"))
    for bad in ("-5%", "lots", "nan"):
        assert main([model, "-o", str(tmp_path / bad / "net.c"), "--target", "cortex-m4",
                     f"--max-recompute={bad}"]) == 1
        assert "--max-recompute" in capsys.readouterr().err and not (tmp_path / bad).exists()
    out = tmp_path / "off" / "net.c"
    assert main([model, "-o", str(out), "--target", "cortex-m4", "--max-recompute", "0",
                 "--report", str(tmp_path / "off.md")]) == 0
    assert "#define NET_ARENA_SIZE 8460" in (out.parent / "net.h").read_text()
    assert "No streamed chain: off (--max-recompute 0)" in (tmp_path / "off.md").read_text()


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc not installed")
@pytest.mark.parametrize("name,ratio", [("kws_dscnn", 1.25), ("ic_resnet8", 1.6)])
def test_streamed_convolutions_keep_one_kernel_each(tmp_path, name, ratio):
    """A streamed convolution is its whole-tensor kernel called per band with the rows as arguments
    (ops/band.j2), not one specialized copy per band shape: DS-CNN defines no more kernels than the
    whole-tensor C, and the streamed code (Cortex-M4 .text, -O3) stays within ``ratio`` of the
    whole-tensor code (measured: DS-CNN 17.0 KB against 17.3 KB, ResNet-8 23.6 KB against 15.6 KB;
    with a kernel per band shape they were 34.2 KB and 38.8 KB)."""
    from elftools.elf.elffile import ELFFile
    from qcc.backends.cmsis.profile import build_bare_elf
    from qcc.fileio import write_files
    g = _lowered(name)
    text, kernels = {}, {}
    for mode, options in (("streamed", {}), ("whole", {"max_recompute": 0})):
        gen = generate(g, "net", "cortex-m4", **options)
        assert any(s.chain for s in gen.plan.steps) == (mode == "streamed")
        folder = tmp_path / mode
        write_files({folder / k: v for k, v in gen.files.items()})
        with open(build_bare_elf(folder, "net", "cortex-m4"), "rb") as f:
            text[mode] = ELFFile(f).get_section_by_name(".text")["sh_size"]
        c = gen.files["net.c"].decode()
        kernels[mode] = c.count("static QCC_NOINLINE void ")
        if mode == "streamed":
            assert "int r0, int oy0, int oy1)" in c
    assert text["streamed"] <= ratio * text["whole"], text
    if name == "kws_dscnn":
        assert kernels["streamed"] <= kernels["whole"], kernels
