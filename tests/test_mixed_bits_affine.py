"""Mixed int8/int16 affine precision (``qcc --scheme int8 --bits mixed``, mixed-bits-affine).

A small graph under a forced width per layer has every boundary the search can produce: int8 ->
int16 and int16 -> int8 conversions (s8.requantize between widths, TFLite's QUANTIZE), an add
reading an int8 and an int16 tensor, a concat of both widths, pools, dense and softmax at either
width: emitted C == simulator bit for bit on the host (sanitizers) and in one QEMU Cortex-M4 run.
The search on a seeded ML-KWS-shaped CNN: more SQNR than all-int8, fewer bytes than all-int16.
"""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import helper

from qcc.backends.cmsis import generate, harness
from qcc.fileio import write_files
from qcc.frontend.loader import load_model
from qcc.tools.compile import compile_model, main as qcc_main
from qcc.transforms.passmanager import PassManager

from onnx_builders import build
from test_backend_cmsis import assert_same_outputs, compile_and_compare

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_qemu = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                                reason="arm-none-eabi-gcc or qemu-system-arm not installed")

# Forced widths by layer name: every boundary kind appears (see the module docstring).
WIDTHS = {"x": 8, "conv_a": 8, "conv_b": 16, "conv_c": 8, "add": 16, "concat": 8, "pool": 16, "gap": 8,
          "fc": 16, "softmax": 8}


def boundary_model(seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.normal(0, 1, shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    inits = {"wa": w(6, 2, 3, 3), "ba": rng.normal(0, 0.1, 6).astype(np.float32),
             "wb": w(6, 6, 1, 1), "bb": rng.normal(0, 0.1, 6).astype(np.float32),
             "wc": w(6, 1, 3, 3), "bc": rng.normal(0, 0.1, 6).astype(np.float32),
             "wf": w(5, 12), "bf": rng.normal(0, 0.1, 5).astype(np.float32),
             "shape": np.array([1, 12], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"], name="relu_a"),
             helper.make_node("Conv", ["ar", "wb", "bb"], ["b"], name="conv_b"),
             helper.make_node("Conv", ["b", "wc", "bc"], ["c"], name="conv_c", pads=[1, 1, 1, 1], group=6),
             helper.make_node("Add", ["b", "c"], ["s"], name="add"),
             helper.make_node("Concat", ["s", "ar"], ["cat"], name="concat", axis=1),
             helper.make_node("MaxPool", ["cat"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
             helper.make_node("Reshape", ["g", "shape"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
             helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1)]
    return build(nodes, {"x": [1, 2, 8, 8]}, ["probs"], inits)


def forced_graph(tmp_path, seed: int, widths=WIDTHS, model=None, shape=(1, 2, 8, 8)):
    """The boundary model (or ``model``) through int8-calibrated with ``widths`` in place of the search's choice."""
    onnx.save(model or boundary_model(seed), tmp_path / "m.onnx")
    calib = np.random.default_rng(seed + 10).normal(0, 1, (16,) + shape).astype(np.float32)
    np.save(tmp_path / "calib.npy", calib)
    graph = load_model(str(tmp_path / "m.onnx"))
    pm = PassManager.parse("int8-calibrated")
    cut = [p.name for p in pm.passes].index("calibrate") + 1
    context = {"calib": str(tmp_path / "calib.npy"), "act_max": {}}
    for p in pm.passes:
        p.context = context
    head, tail = PassManager.parse("int8-calibrated"), pm
    head.passes, tail.passes = pm.passes[:cut], pm.passes[cut:]
    head.run(graph)
    chosen = {}
    for op in graph.ops:
        if op.opname == "q.range":
            p = op.operands[0].producer
            name = p.name if p is not None else op.operands[0].name
            if name in widths:
                chosen[op.seq] = widths[name]
    context["affine_widths"] = chosen
    tail.run(graph)
    return graph


def _samples(count: int, seed: int):
    return {"x": np.random.default_rng(seed).normal(0, 1.2, (count, 1, 2, 8, 8)).astype(np.float32)}


def _dtypes(op):
    return tuple(v.type.dtype for v in op.operands if not v.is_constant()), op.result.type.dtype


def test_forced_widths_produce_every_boundary(tmp_path):
    g = forced_graph(tmp_path, 0)
    kinds = {(op.opname,) + _dtypes(op) for op in g.ops if op.opname.startswith("s8.") or op.opname == "nn.concat"}
    assert ("s8.requantize", ("i8",), "i16") in kinds      # int8 -> int16
    assert ("s8.requantize", ("i16",), "i8") in kinds      # int16 -> int8
    assert ("s8.conv2d", ("i16",), "i16") in kinds and ("s8.conv2d", ("i8",), "i8") in kinds
    assert ("s8.add", ("i16", "i16"), "i16") in kinds      # one input converted from int8
    assert ("s8.dense", ("i16",), "i16") in kinds and ("s8.softmax", ("i8",), "i8") in kinds
    assert ("s8.maxpool", ("i16",), "i16") in kinds
    assert ("nn.concat", ("i8", "i8"), "i8") in kinds      # its int16 input requantized to int8
    add = next(op for op in g.ops if op.opname == "s8.add")
    sources = {v.producer.opname for v in add.operands}
    assert "s8.requantize" in sources                       # the int8 depthwise output, widened
    dense = next(op for op in g.ops if op.opname == "s8.dense")
    assert dense.operands[2].type.dtype == "i64" and dense.attrs["rounding"] == "s64"


@needs_gcc
@pytest.mark.parametrize("seed", [0, 1])
def test_forced_widths_match_simulator_on_host(tmp_path, seed):
    g = forced_graph(tmp_path, seed)
    gen, got = compile_and_compare(g, tmp_path, _samples(8, seed))
    assert len(np.unique(got.quantized[0])) > 10  # real arithmetic, not saturated outputs


@needs_gcc
def test_inverse_widths_match_simulator_on_host(tmp_path):
    """Every layer at the other width: the complementary boundaries (concat int16, add int8, ...)."""
    g = forced_graph(tmp_path, 2, {k: 24 - v for k, v in WIDTHS.items()})
    kinds = {(op.opname,) + _dtypes(op) for op in g.ops}
    assert ("nn.concat", ("i16", "i16"), "i16") in kinds and ("s8.add", ("i8", "i8"), "i8") in kinds
    compile_and_compare(g, tmp_path, _samples(8, 2))


@needs_qemu
def test_forced_widths_on_qemu_m4(tmp_path):
    g = forced_graph(tmp_path, 3)
    samples = _samples(4, 3)
    gen = generate(g, "net", "cortex-m4")
    write_files({tmp_path / k: v for k, v in gen.files.items()})
    count = harness.write_samples(tmp_path / "in.bin", g, samples)
    harness.run_qemu(tmp_path, tmp_path / "in.bin", tmp_path / "out.bin")
    assert_same_outputs(harness.read_outputs(tmp_path / "out.bin", gen, count), harness.simulate(g, gen, samples))


# ---------------------------------------------------------------- the search, end to end
@pytest.fixture(scope="module")
def dnn(tmp_path_factory):
    """ML-KWS's DNN-S shape (seeded weights) with calibration data, and its all-int8 / all-int16 builds."""
    from kws_models import dnn as kws_dnn
    folder = tmp_path_factory.mktemp("dnn")
    onnx.save(kws_dnn(144, seed=3), folder / "dnn.onnx")
    np.save(folder / "calib.npy", np.random.default_rng(1).normal(0, 1, (16, 1, 49, 10, 1)).astype(np.float32))
    model, calib = str(folder / "dnn.onnx"), str(folder / "calib.npy")
    builds = {bits: compile_model(model, str(folder / f"b{bits}" / "net.c"), "cortex-m4", calib=calib, scheme="int8",
                                  bits=bits, optimize="size") for bits in (8, 16)}
    full = compile_model(model, str(folder / "full" / "net.c"), "cortex-m4", calib=calib, scheme="int8", bits="mixed",
                         optimize="size").mixed_bits
    return model, calib, builds, full


def test_default_target_is_within_one_db_of_all16(dnn):
    m = dnn[3]
    assert m["sqnr_db"] >= m["all16_sqnr_db"] - 1.0 and m["target_sqnr_db"] == pytest.approx(m["all16_sqnr_db"] - 1)
    # measured: all-8 26.68 dB, all-16 28.59 dB, chosen (fc1 with its input) 28.16 dB (integer simulator 28.77)
    assert m["verified_sqnr_db"] > m["all8_sqnr_db"] + 0.5
    assert {layer["bits"] for layer in m["layers"]} == {8, 16}
    # Fewer weight/bias bytes than all-int16 (measured 118,056 vs 119,808; Cortex-M4 -O2 text+data
    # 120,700 vs 122,116): int32 biases where layers stay int8.
    assert m["weight_bytes"] < dnn[2][16].weight_bytes


@pytest.fixture(scope="module")
def ram_build(dnn, tmp_path_factory):
    model, calib, builds, full = dnn
    out = tmp_path_factory.mktemp("ram")
    budget = (full["all8_ram_bytes"] + full["all16_ram_bytes"]) // 2
    code = qcc_main([model, "-o", str(out / "net.c"), "--target", "cortex-m4", "--calib", calib, "--scheme", "int8",
                     "--bits", "mixed", "--max-ram", str(budget), "--optimize", "size", "--report", str(out / "r.json"),
                     "--emit-ir", str(out / "net.qir")])
    assert code == 0
    import json
    return out, budget, json.loads((out / "r.json").read_text())["mixed_bits"]


def test_ram_budget_buys_sqnr_for_less_than_all16(dnn, ram_build):
    _, _, builds, _ = dnn
    out, budget, m = ram_build
    # measured: 27.72 dB (all-8 26.68) in a 640-byte arena (all-16: 1,272), biases 576 bytes below all-16
    assert m["verified_sqnr_db"] > m["all8_sqnr_db"] + 0.5
    assert m["ram_bytes"] <= budget and m["arena_bytes"] <= budget < builds[16].plan.arena_size
    assert m["flash_bytes"] < m["all16_flash_bytes"]
    assert {layer["bits"] for layer in m["layers"]} == {8, 16}


@needs_gcc
def test_searched_mix_matches_simulator_on_host(ram_build):
    from qcc.ir.parser import parse_file
    out = ram_build[0]
    graph = parse_file(str(out / "net.qir"))
    widths = {op.result.type.dtype for op in graph.ops if op.opname in ("s8.dense", "s8.softmax")}
    assert widths == {"i8", "i16"}
    reported = {row["layer"]: row["bits"] for row in ram_build[2]["layers"]}
    for op in graph.ops:  # the report states each layer's width as built
        if op.opname == "s8.dense":
            assert reported[op.name] == (16 if op.result.type.dtype == "i16" else 8), op.name
    gen = generate(graph, "net", "cortex-m4", optimize="size")
    assert gen.files["net.c"] == (out / "net.c").read_bytes()
    samples = {"input_1": np.random.default_rng(4).normal(0, 1, (4, 1, 49, 10, 1)).astype(np.float32)}
    count = harness.write_samples(out / "in.bin", graph, samples)
    harness.run_host(harness.build_host(out, "net"), out / "in.bin", out / "out.bin")
    assert_same_outputs(harness.read_outputs(out / "out.bin", gen, count), harness.simulate(graph, gen, samples))


def test_same_inputs_give_identical_c(dnn, ram_build, tmp_path):
    model, calib, _, _ = dnn
    out, budget, _ = ram_build
    compile_model(model, str(tmp_path / "net.c"), "cortex-m4", calib=calib, scheme="int8", bits="mixed",
                  max_ram=budget, optimize="size")
    for f in ("net.c", "net_weights.c", "net.h"):
        assert (tmp_path / f).read_bytes() == (out / f).read_bytes()


def test_unreachable_target_is_refused(dnn, tmp_path, capsys):
    model, calib, _, _ = dnn
    out = tmp_path / "out"
    rc = qcc_main([model, "-o", str(out / "net.c"), "--target", "cortex-m4", "--calib", calib, "--scheme", "int8",
                   "--bits", "mixed", "--target-sqnr", "80"])
    err = capsys.readouterr().err
    assert rc == 1 and "--target-sqnr 80 dB cannot be met: the best reachable is" in err and "Traceback" not in err
    assert not out.exists()


@needs_gcc
def test_int16_layers_inside_a_streamed_chain(tmp_path):
    """int16 convs run only inside a row-streamed chain (int8 after it): the 16x8 helpers are emitted."""
    from test_mixed_bits import small_kws
    widths = {"x": 16, "conv1": 16, "dw": 16, "pw": 16, "pool": 8, "fc": 8, "softmax": 8}
    g = forced_graph(tmp_path, 0, widths, small_kws(0), (1, 1, 12, 6))
    gen = generate(g, "net", "cortex-m4")
    streamed = [op for s in gen.plan.steps if s.chain for op in s.chain.ops]
    assert any(op.opname == "s8.conv2d" and op.result.type.dtype == "i16" for op in streamed)
    assert not any(s.op is not None and s.op.opname == "s8.conv2d" and s.op.result.type.dtype == "i16"
                   for s in gen.plan.steps if not s.chain)
    samples = {"x": np.random.default_rng(6).normal(0, 1.2, (6, 1, 1, 12, 6)).astype(np.float32)}
    compile_and_compare(g, tmp_path, samples)


@needs_qemu
def test_forced_widths_build_with_werror_on_every_core(tmp_path):
    """The generated Makefile (-Wall -Wextra -Werror) builds the mixed graph for M0+, M4, M7 and M55."""
    import subprocess
    g = forced_graph(tmp_path, 0)
    for target in ("cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m55"):
        folder = tmp_path / target
        write_files({folder / k: v for k, v in generate(g, "net", target).files.items()})
        done = subprocess.run(["make", "-s", "-C", str(folder), "all"], capture_output=True, text=True)
        assert done.returncode == 0, f"{target}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        assert (folder / "libnet.a").stat().st_size > 0


def test_qcc_eval_runs_the_affine_mix(dnn, capsys):
    from qcc.tools.eval import main as eval_main
    model, calib, _, _ = dnn
    assert eval_main([model, "--data", calib, "--calib", calib, "--scheme", "int8", "--bits", "mixed"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("simulator (affine mixed int8/int16"))
    assert float(row.split(" dB")[0].split()[-1]) > 27.5   # measured 28.8 dB (all-int8 26.7)


WIDEN = """qcc.graph @widen(%x: tensor<1x4x!q.uniform<i8:f32, 0.02:-3>>) -> (tensor<1x4x!q.uniform<i16:f32, 0.0001:0>>) {
  %0 = s8.requantize %x {act_max = 32767, act_min = -32768, input_zp = -3, multiplier = [1677721600], output_zp = 0, rounding = "double", shift = [8]} : tensor<1x4x!q.uniform<i16:f32, 0.0001:0>>
  qcc.return %0 : tensor<1x4x!q.uniform<i16:f32, 0.0001:0>>
}
"""


def test_requantize_between_widths_round_trips_and_computes():
    from qcc.ir.parser import parse
    from qcc.ir.printer import print_graph
    from qcc.sim.interpreter import run_graph
    import qcc.sim.s8  # noqa: F401
    g = parse(WIDEN)
    g.verify()
    assert print_graph(g) == print_graph(parse(print_graph(g)))
    x = np.array([[-128, -3, 0, 127]], np.int8)
    y = run_graph(g, {"x": x})[g.output_names[0]]
    # m = 1677721600 * 2^8 / 2^31 = 200 = 0.02 / 0.0001: exact, the int8 codes times 200 after the zero point
    assert y.dtype == np.int16 and y.tolist() == [[(-128 + 3) * 200, 0, 600, 26000]]


@pytest.mark.parametrize("old, new, message", [
    ("output_zp = 0", "output_zp = 5", "'output_zp' 5 must be 0 for i16"),
    ("act_max = 32767", "act_max = 40000", "clamp [-32768, 40000] must be an ordered range inside [-32768, 32767]"),
])
def test_requantize_between_widths_verifier(old, new, message):
    import re
    from qcc.errors import QccError
    from qcc.ir.parser import parse
    with pytest.raises(QccError, match=re.escape(message)):
        parse(WIDEN.replace(old, new, 1)).verify()
