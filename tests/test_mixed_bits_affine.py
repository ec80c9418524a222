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


def forced_graph(tmp_path, seed: int, widths=WIDTHS):
    """The boundary model through int8-calibrated with ``widths`` in place of the search's choice."""
    onnx.save(boundary_model(seed), tmp_path / "m.onnx")
    calib = np.random.default_rng(seed + 10).normal(0, 1, (16, 1, 2, 8, 8)).astype(np.float32)
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
