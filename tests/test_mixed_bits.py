"""Mixed 8/16-bit Qm.n (``qcc --bits mixed``, the mixed-bits pass).

Kernels: conv2d (every path: 3x3 gemm, few-channel im2col, 1x1, depthwise, grouped) and dense
with input, weights and output each i8 or i16 (all eight combinations the search can produce),
and i8 <-> i16 requantize: emitted C == simulator bit for bit on the host (sanitizers) and in one
QEMU Cortex-M4 run. The search: a budget gives a real mix whose C equals the simulator, budgets
are respected, results are deterministic (same C twice), and bad options are refused cleanly.
"""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from qcc.backends.cmsis import generate, harness
from qcc.ir.graph import Graph
from qcc.ir.types import FixedPoint, TensorType
from qcc.tools.compile import compile_model, main as qcc_main

from onnx_builders import build
from test_backend_cmsis import assert_same_outputs, compare_on_qemu, compile_and_compare

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_qemu = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                                reason="arm-none-eabi-gcc or qemu-system-arm not installed")

FRAC = {8: 4, 16: 12}            # activations: Q3.4 and Q3.12
WFRAC = {8: 6, 16: 9}            # weights
# (x, w, y) widths along each chain: every one of the eight combinations once.
CHAIN = [(8, 8, 8), (8, 8, 16), (16, 8, 16), (16, 8, 8), (8, 16, 8), (8, 16, 16), (16, 16, 16), (16, 16, 8)]


def _t(shape, bits, frac):
    return TensorType(tuple(shape), f"i{bits}", FixedPoint(frac))


def combo_graph(seed: int) -> Graph:
    """Chains of conv2d (five kernel paths) and dense layers through all eight (x, w, y) width combinations."""
    rng = np.random.default_rng(seed)
    g = Graph("mixed")
    outs, names = [], []

    def quantized_input(name, shape):
        x = g.add_input(name, TensorType(shape))
        return g.add_op("q.quantize", [x], result_types=[_t(shape, 8, FRAC[8])]).result

    def weights(shape, bits, fan_in):
        hi = (1 << (bits - 1)) - 1
        w = np.clip(np.round(rng.normal(0, 2.0 ** WFRAC[bits] / np.sqrt(fan_in), shape)), -hi, hi)
        return g.add_const(w.astype(np.int8 if bits == 8 else np.int16))

    def requant(v, xb, yb, name):
        lo, hi = -(1 << (yb - 1)), (1 << (yb - 1)) - 1
        return g.add_op("qnn.requantize", [v], {"out_shift": [FRAC[xb] - FRAC[yb]], "act_min": lo, "act_max": hi},
                        result_types=[_t(v.shape, yb, FRAC[yb])], name=name).result

    def layer(opname, v, w_shape, fan_in, xb, wb, yb, attrs, out_shape, name):
        lo, hi = -(1 << (yb - 1)), (1 << (yb - 1)) - 1
        w = weights(w_shape, wb, fan_in)
        b = g.add_const(rng.integers(-200, 200, w_shape[0]).astype(np.int32))
        shifts = [FRAC[xb] + WFRAC[wb] - FRAC[yb] + int(s) for s in rng.integers(-1, 2, w_shape[0])]
        a = {"bias_shift": [2], "out_shift": shifts, "act_min": 0 if "relu" in name else lo, "act_max": hi, **attrs}
        return g.add_op(opname, [v, w, b], a, result_types=[_t(out_shape, yb, FRAC[yb])], name=name).result

    paths = [("gemm", 8, 3, 1, 1), ("im2col", 2, 3, 1, 1), ("pointwise", 8, 1, 1, 0), ("depthwise", 8, 3, 8, 1),
             ("grouped", 8, 3, 2, 1)]
    for path, c, k, group, pad in paths:
        v = quantized_input(path, (1, 6, 5, c))
        for i, (xb, wb, yb) in enumerate(CHAIN):
            if v.type.dtype != f"i{xb}":
                v = requant(v, 24 - xb, xb, f"{path}_rq{i}")
            attrs = {"strides": [1, 1], "pads": [pad] * 4, "dilations": [1, 1], "group": group}
            v = layer("qnn.conv2d", v, (c, k, k, c // group), k * k * c // group, xb, wb, yb, attrs,
                      (1, 6, 5, c), f"{path}{i}_x{xb}w{wb}y{yb}" + ("_relu" if i % 3 == 0 else ""))
        outs.append(v)
        names.append(path)
    v = g.add_op("nn.flatten", [quantized_input("fc", (1, 2, 3, 4))], {"axis": 1}, name="flatten").result
    for i, (xb, wb, yb) in enumerate(CHAIN):
        if v.type.dtype != f"i{xb}":
            v = requant(v, 24 - xb, xb, f"fc_rq{i}")
        v = layer("qnn.dense", v, (24, 24), 24, xb, wb, yb, {}, (1, 24), f"fc{i}_x{xb}w{wb}y{yb}")
    v = requant(requant(v, 8, 16, "widen"), 16, 8, "narrow")  # the boundaries between units, both ways
    outs.append(v)
    names.append("fc")
    deq = [g.add_op("q.dequantize", [v], result_types=[TensorType(v.shape)]).result for v in outs]
    g.set_outputs(deq, names)
    g.verify()
    return g


def combo_inputs(graph: Graph, count: int, seed: int):
    rng = np.random.default_rng(seed)
    return {v.name: rng.normal(0, 2.5, (count,) + v.shape).astype(np.float32) for v in graph.inputs}


def test_combo_graph_has_every_width_combination():
    g = combo_graph(0)
    for opname in ("qnn.conv2d", "qnn.dense"):
        seen = {(op.operands[0].type.dtype, op.operands[1].type.dtype, op.result.type.dtype)
                for op in g.ops if op.opname == opname}
        assert seen == set(itertools.product(("i8", "i16"), repeat=3))
    rq = {(op.operands[0].type.dtype, op.result.type.dtype) for op in g.ops if op.opname == "qnn.requantize"}
    assert rq == {("i8", "i16"), ("i16", "i8")}


@needs_gcc
def test_every_width_combination_matches_simulator_on_host(tmp_path):
    g = combo_graph(0)
    gen, got = compile_and_compare(g, tmp_path, combo_inputs(g, 8, 0))
    for q in got.quantized:  # real arithmetic, not saturated constants
        assert len(np.unique(q)) > 20


@needs_qemu
def test_every_width_combination_on_qemu_m4(tmp_path):
    g = combo_graph(1)
    compare_on_qemu(g, tmp_path, combo_inputs(g, 3, 1))


# ---------------------------------------------------------------- the search, end to end
def small_kws(seed: int = 0) -> onnx.ModelProto:
    """conv 3x3 + ReLU, depthwise 3x3 + ReLU, pointwise + ReLU, global average pool, FC, softmax."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_t(4, shape) * np.sqrt(1.0 / fan_in) * np.exp(rng.normal(0, 0.3, (shape[0],) + (1,) * (len(shape) - 1)))).astype(np.float32)

    inits = {"w1": w(8, 1, 3, 3), "b1": rng.normal(0, 0.1, 8).astype(np.float32),
             "w2": w(8, 1, 3, 3), "b2": rng.normal(0, 0.1, 8).astype(np.float32),
             "w3": w(16, 8, 1, 1), "b3": rng.normal(0, 0.1, 16).astype(np.float32),
             "w4": w(5, 16), "b4": rng.normal(0, 0.1, 5).astype(np.float32),
             "shape": np.array([1, 16], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="pw"),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             helper.make_node("GlobalAveragePool", ["r3"], ["gp"], name="pool"),
             helper.make_node("Reshape", ["gp", "shape"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "w4", "b4"], ["logits"], name="fc", transB=1),
             helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1)]
    return build(nodes, {"x": [1, 1, 12, 6]}, ["probs"], inits)


@pytest.fixture(scope="module")
def kws(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kws")
    onnx.save(small_kws(), folder / "kws.onnx")
    x = np.random.default_rng(5).normal(0, 1.5, (12, 1, 1, 12, 6)).astype(np.float32)
    np.save(folder / "calib.npy", x)
    return folder / "kws.onnx", folder / "calib.npy"


def _compile(kws, out: Path, **options):
    model, calib = kws
    return compile_model(str(model), str(out / "net.c"), "cortex-m4", calib=str(calib), bits="mixed",
                         emit_ir=str(out / "net.qir"), **options)


@pytest.fixture(scope="module")
def budget(kws, tmp_path_factory):
    """A flash budget between the all-8 and all-16 estimates, and the unconstrained (default target) choice."""
    m = _compile(kws, tmp_path_factory.mktemp("full")).mixed_bits
    return (m["all16_flash_bytes"] + m["all8_flash_bytes"]) // 2, m


@pytest.fixture(scope="module")
def mixed_build(kws, budget, tmp_path_factory):
    """The budget build through the qcc command, with a report and the lowered IR."""
    out = tmp_path_factory.mktemp("mixed")
    model, calib = kws
    code = qcc_main([str(model), "-o", str(out / "net.c"), "--target", "cortex-m4", "--calib", str(calib),
                     "--bits", "mixed", "--max-flash", str(budget[0]), "--report", str(out / "r.md"),
                     "--emit-ir", str(out / "net.qir")])
    assert code == 0
    return out


def test_default_stops_at_the_knee(budget):
    """No target, no budget: promotions continue while they remove more output noise per byte than the
    all-8 -> all-16 average, and stop at the first that does not (or within 1 dB of all-16)."""
    m = budget[1]
    average = m["knee_noise_per_byte"]
    assert average > 0 and m["steps"]
    assert all(step["noise_per_byte"] >= average for step in m["steps"])
    if m["stopped_by"] == "knee":
        assert m["stop_noise_per_byte"] < average and m["sqnr_db"] < m["target_sqnr_db"]
    else:
        assert m["stopped_by"] == "target" and m["sqnr_db"] >= m["all16_sqnr_db"] - 1.0
    assert m["target_sqnr_db"] == pytest.approx(m["all16_sqnr_db"] - 1.0, abs=0.01)
    # A trade-off, not all-16: less flash, and the integer simulator confirms the gain over all-8.
    assert m["flash_bytes"] < m["all16_flash_bytes"]
    assert m["verified_sqnr_db"] > m["all8_sqnr_db"] + 3


@needs_gcc
def test_budget_gives_a_mix_whose_c_matches_simulator(kws, budget, mixed_build):
    from qcc.ir.parser import parse_file
    graph = parse_file(str(mixed_build / "net.qir"))
    combos = {tuple(v.type.dtype for v in (op.operands[0], op.operands[1], op.result))
              for op in graph.ops if op.opname in ("qnn.conv2d", "qnn.dense")}
    assert len(combos) >= 2 and {"i8", "i16"} <= {d for c in combos for d in c}, combos
    gen = generate(graph, "net", "cortex-m4")  # the same C, from the graph read back (the simulator runs it)
    assert gen.files["net.c"] == (mixed_build / "net.c").read_bytes()
    samples = {"x": np.random.default_rng(9).normal(0, 1.5, (6, 1, 1, 12, 6)).astype(np.float32)}
    count = harness.write_samples(mixed_build / "in.bin", graph, samples)
    harness.run_host(harness.build_host(mixed_build, "net"), mixed_build / "in.bin", mixed_build / "out.bin")
    assert_same_outputs(harness.read_outputs(mixed_build / "out.bin", gen, count), harness.simulate(graph, gen, samples))


def test_budget_is_respected_and_reported(budget, mixed_build):
    limit, full = budget
    text = (mixed_build / "r.md").read_text()
    assert "## Mixed precision (--bits mixed)" in text
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines()
            if line.startswith("| ") and line.count("|") == 7 and "---" not in line}
    for name in ("conv1 (weights)", "dw (weights)", "pw (weights)", "fc (weights)", "tensor x"):
        assert rows[name] in ("8", "16"), name
    assert set(rows.values()) >= {"8", "16"}
    flash = int(text.split("Flash estimate ")[1].split(" B")[0].replace(",", ""))
    assert flash <= limit < full["all16_flash_bytes"]
    sqnr = float(text.split("Output SQNR ")[1].split(" dB")[0])
    assert full["all8_sqnr_db"] < sqnr <= full["all16_sqnr_db"] + 0.01


def test_same_inputs_give_identical_c(kws, budget, mixed_build, tmp_path):
    _compile(kws, tmp_path, max_flash=budget[0], report=str(tmp_path / "r.html"))
    for f in ("net.c", "net_weights.c", "net.h", "net.qir"):
        assert (tmp_path / f).read_bytes() == (mixed_build / f).read_bytes()
    assert "--bits mixed: " in (tmp_path / "r.html").read_text()  # the HTML report states the choice too


@pytest.mark.parametrize("args, message, code", [
    (["--max-flash", "100"], "--max-flash 100 bytes cannot be met: the all-8-bit build already needs about", 1),
    (["--max-ram", "10"], "--max-ram 10 bytes cannot be met", 1),
    (["--target-sqnr", "400"], "--target-sqnr 400 dB cannot be met: the best reachable is", 1),
    (["--target-sqnr", "-3"], "--target-sqnr takes a positive number of dB, got -3", 1),
    (["--max-flash", "0"], "--max-flash takes a positive number of bytes, got 0", 1),
    (["--target-sqnr", "nan"], "--target-sqnr takes a positive number of dB, got nan", 1),
])
def test_bad_mixed_options_are_refused(kws, tmp_path, capsys, args, message, code):
    model, calib = kws
    out = tmp_path / "out"
    rc = qcc_main([str(model), "-o", str(out / "net.c"), "--target", "cortex-m4", "--calib", str(calib),
                   "--bits", "mixed", *args])
    err = capsys.readouterr().err
    assert rc == code and message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--bits", "8", "--target-sqnr", "30"], "--target-sqnr steers the per-layer bit choice: it needs --bits mixed"),
    (["--max-ram", "4000"], "--max-ram steers the per-layer bit choice: it needs --bits mixed"),
])
def test_mixed_options_need_bits_mixed(kws, tmp_path, capsys, args, message):
    model, calib = kws
    rc = qcc_main([str(model), "-o", str(tmp_path / "out" / "net.c"), "--target", "cortex-m4", "--calib", str(calib),
                   *args])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bits_value_checked_by_argparse(kws, tmp_path, capsys):
    model, calib = kws
    with pytest.raises(SystemExit) as e:
        qcc_main([str(model), "-o", str(tmp_path / "net.c"), "--target", "cortex-m4", "--calib", str(calib),
                  "--bits", "12"])
    assert e.value.code == 2 and "invalid choice: '12'" in capsys.readouterr().err


def test_pipeline_option_checks():
    from qcc.transforms.passmanager import PassManager
    from qcc.transforms.pipeline_text import PipelineError
    with pytest.raises(PipelineError, match="option 'mixed' of pipeline 'qmn'"):
        PassManager.parse("qmn{mixed=true,bits=16}")
    with pytest.raises(PipelineError, match="option 'max_flash' of pass 'mixed-bits'"):
        PassManager.parse("mixed-bits{max_flash=-1}")


def test_ram_budget_holds_for_the_planned_arena(kws, budget, tmp_path):
    full = budget[1]
    limit = (full["all8_ram_bytes"] + full["all16_ram_bytes"]) // 2
    m = _compile(kws, tmp_path, max_ram=limit).mixed_bits
    assert m["ram_bytes"] <= limit and m["arena_bytes"] <= limit
    assert any(layer["bits"] == 16 for layer in m["layers"])


def test_qdq_model_refuses_bits_mixed(tmp_path, capsys):
    from conftest import shared_model_path
    model = shared_model_path("kws_dscnn", "kws_dscnn_int8_qdq.onnx")
    rc = qcc_main([str(model), "-o", str(tmp_path / "out" / "net.c"), "--target", "cortex-m4", "--bits", "mixed"])
    err = capsys.readouterr().err
    assert rc == 1 and "--bits mixed does not apply" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_search_without_data_is_refused():
    from qcc.errors import InputError
    from qcc.passes.mixed_bits import MixedBits
    with pytest.raises(InputError, match="mixed-bits needs calibration data"):
        MixedBits().run(combo_graph(0))


def test_layer_units_promote_weights_with_their_output(kws):
    """unit=layer: a layer's weights and the tensor it writes always share a width."""
    from qcc.frontend.loader import load_model
    from qcc.transforms.passmanager import PassManager
    model, calib = kws
    graph = load_model(str(model))
    context = {"calib": str(calib)}
    pm = PassManager.parse("qmn{mixed=true,mixed_unit=layer,max_ram=900}")
    for p in pm.passes:
        p.context = context
    pm.run(graph)
    layers = [op for op in graph.ops if op.opname in ("qnn.conv2d", "qnn.dense")]
    assert len(layers) == 4
    for op in layers:
        assert op.operands[1].type.dtype == op.result.type.dtype, op.describe()
    m = context["mixed_bits"]
    assert {layer["bits"] for layer in m["layers"]} == {8, 16} and m["ram_bytes"] <= 900
    assert not any("(weights)" in layer["layer"] for layer in m["layers"])


def repeated_dw(seed: int = 1) -> onnx.ModelProto:
    """conv, then two depthwise 3x3 + pointwise blocks of one shape, global average pool, FC."""
    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) * np.sqrt(1.0 / np.prod(s[1:]))).astype(np.float32)  # noqa: E731
    inits = {"w0": w(8, 1, 3, 3), "dw1": w(8, 1, 3, 3), "pw1": w(8, 8, 1, 1), "dw2": w(8, 1, 3, 3),
             "pw2": w(8, 8, 1, 1), "fc": w(4, 8), "shape": np.array([1, 8], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0")]
    v = "r0"
    for k in (1, 2):
        nodes += [helper.make_node("Conv", [v, f"dw{k}"], [f"d{k}"], name=f"dw{k}", pads=[1, 1, 1, 1], group=8),
                  helper.make_node("Relu", [f"d{k}"], [f"rd{k}"], name=f"relu_d{k}"),
                  helper.make_node("Conv", [f"rd{k}", f"pw{k}"], [f"p{k}"], name=f"pw{k}"),
                  helper.make_node("Relu", [f"p{k}"], [f"rp{k}"], name=f"relu_p{k}")]
        v = f"rp{k}"
    nodes += [helper.make_node("GlobalAveragePool", [v], ["gp"], name="pool"),
              helper.make_node("Reshape", ["gp", "shape"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="fc", transB=1)]
    return build(nodes, {"x": [1, 1, 10, 6]}, ["logits"], inits)


@needs_gcc
def test_same_shape_depthwise_layers_are_promoted_together(tmp_path):
    """Depthwise layers of one shape share one C function while their widths agree (share.py), so the
    search ties their weights, their inputs and their outputs: whatever it promotes, the two stay one
    function, and the C equals the simulator."""
    onnx.save(repeated_dw(), tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", np.random.default_rng(2).normal(0, 1, (10, 1, 1, 10, 6)).astype(np.float32))
    gen = compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "o" / "net.c"), "cortex-m4",
                        calib=str(tmp_path / "c.npy"), bits="mixed", target_sqnr=60.0,
                        emit_ir=str(tmp_path / "net.qir"))
    names = [u["layer"] for u in gen.mixed_bits["layers"]]
    assert "dw1 (weights), dw2 (weights)" in names
    bits = {u["layer"]: u["bits"] for u in gen.mixed_bits["layers"]}
    assert sum(b == 16 for b in bits.values()) >= 2          # the 60 dB target promotes across units
    assert "/* The code of 2 layers" in gen.files["net.c"].decode()
    from qcc.ir.parser import parse_file
    g = parse_file(tmp_path / "net.qir")
    dws = [op for op in g.ops if op.opname == "qnn.conv2d" and op.attrs["group"] > 1]
    assert len(dws) == 2 and len({(op.operands[0].type.dtype, op.operands[1].type.dtype, op.result.type.dtype)
                                  for op in dws}) == 1
    compile_and_compare(g, tmp_path / "host", combo_inputs(g, 3, 3))
