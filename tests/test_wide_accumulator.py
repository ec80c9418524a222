"""qnn conv/dense with an int64 accumulator (an ``i64`` bias; qcc/ir/ops/qnn.py).

16-bit layers whose worst-case sum leaves int32 (a 16-bit input and 16-bit weights over a long dot
product) keep their weight formats and accumulate in int64, instead of giving up weight bits until
int32 fits (which held Arm's ML-KWS CNNs at ~38 dB under --bits 16; now 65 dB). Checked here: the
emitted C equals the simulator bit for bit on the host (sanitizers) and in one QEMU Cortex-M4 run
(SMLALD path), on every conv shape the wide kernel meets, with sums far beyond int32; assign-qmn
picks the wide form only where int32 would cost more than 6 bits of a 16-bit weight format; and
check-quantized bounds the int64 sum.
"""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import helper

import qcc
from qcc.backends.cmsis import generate
from qcc.fileio import write_files
from qcc.ir.graph import Graph
from qcc.ir.types import FixedPoint, TensorType
from qcc.sim.qmn import conv2d_acc, dense_acc
from qcc.tools.compile import main as qcc_main

from onnx_builders import build
from test_backend_cmsis import compare_on_qemu, compile_and_compare

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_qemu = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                                reason="arm-none-eabi-gcc or qemu-system-arm not installed")

# name, input channels, kernel, group, pads, strides, dilations, weight bits
CONVS = [("row3x3", 6, 3, 1, 1, 1, 1, 16), ("pointwise", 16, 1, 1, 0, 1, 1, 16),
         ("strided", 5, 3, 1, 1, 2, 1, 16), ("grouped", 8, 3, 2, 1, 1, 1, 16),
         ("depthwise", 8, 3, 8, 1, 1, 1, 16), ("dilated", 4, 3, 1, 2, 1, 2, 16), ("w8", 12, 3, 1, 1, 1, 1, 8)]


def wide_graph(seed: int) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph("wide")
    outs, names = [], []

    def quantized_input(name, shape):
        x = g.add_input(name, TensorType(shape))
        return g.add_op("q.quantize", [x], result_types=[TensorType(shape, "i16", FixedPoint(12))]).result

    def layer(opname, x, w_shape, wbits, attrs, out_shape, name):
        hi = (1 << (wbits - 1)) - 1
        w = g.add_const(rng.integers(-hi, hi + 1, w_shape).astype(np.int16 if wbits == 16 else np.int8))
        big = 1 << (32 if wbits == 16 else 24)
        b = g.add_const(rng.integers(-big, big, w_shape[0]).astype(np.int64))
        shift = 20 if wbits == 16 else 11
        a = {"bias_shift": [0], "out_shift": [shift + int(s) for s in rng.integers(-2, 3, w_shape[0])],
             "act_min": 0 if "relu" in name else -32768, "act_max": 32767, **attrs}
        return g.add_op(opname, [x, w, b], a, result_types=[TensorType(out_shape, "i16", FixedPoint(10))],
                        name=name).result

    for name, c, k, group, pad, stride, dil, wbits in CONVS:
        x = quantized_input(name, (1, 7, 6, c))
        oh = (7 + 2 * pad - dil * (k - 1) - 1) // stride + 1
        ow = (6 + 2 * pad - dil * (k - 1) - 1) // stride + 1
        cout = c if group > 1 else c + 2
        attrs = {"strides": [stride, stride], "pads": [pad] * 4, "dilations": [dil, dil], "group": group}
        outs.append(layer("qnn.conv2d", x, (cout, k, k, c // group), wbits, attrs, (1, oh, ow, cout),
                          name + ("_relu" if name == "strided" else "")))
        names.append(name)
    x = quantized_input("fc", (1, 300))
    outs.append(layer("qnn.dense", x, (9, 300), 16, {}, (1, 9), "fc"))
    names.append("fc")
    g.set_outputs([g.add_op("q.dequantize", [v], result_types=[TensorType(v.shape)]).result for v in outs], names)
    g.verify()
    return g


def wide_inputs(graph: Graph, count: int, seed: int):
    rng = np.random.default_rng(seed)
    return {v.name: rng.normal(0, 4.0, (count,) + v.shape).astype(np.float32) for v in graph.inputs}


def test_sums_leave_int32():
    """The point of the test graph: the 16x16 layers' accumulators really leave int32 (the 16x8 one
    checks the int16 x int8 helper only)."""
    from qcc.sim.interpreter import run_graph
    import qcc.sim.qmn  # noqa: F401
    g = wide_graph(0)
    sample = {k: v[0] for k, v in wide_inputs(g, 1, 0).items()}
    env = run_graph(g, sample, keep=True)
    for op in g.ops:
        if op.opname in ("qnn.conv2d", "qnn.dense") and op.operands[1].type.dtype == "i16":
            x, w, b = (env[v] if v in env else v.constant() for v in op.operands)
            acc = (conv2d_acc if op.opname == "qnn.conv2d" else dense_acc)(op, x, w, b)
            assert np.abs(acc).max() > 1 << 32, op.name  # twice the int32 range at least


@needs_gcc
def test_wide_layers_match_simulator_on_host(tmp_path):
    g = wide_graph(0)
    gen, got = compile_and_compare(g, tmp_path, wide_inputs(g, 6, 0))
    for q in got.quantized:  # real arithmetic, not saturated constants
        assert len(np.unique(q)) > 8


@needs_qemu
def test_wide_layers_on_qemu_m4(tmp_path):
    g = wide_graph(1)
    compare_on_qemu(g, tmp_path, wide_inputs(g, 3, 1))


def test_verifier_and_check_quantized():
    from qcc.errors import PassError
    from qcc.transforms.passmanager import PassManager
    g = wide_graph(2)
    PassManager.parse("check-quantized").run(g)  # int64 sums of these layers are far below 2^62
    op = next(op for op in g.ops if op.opname == "qnn.dense")
    bias = op.operands[2]
    bias.producer.attrs["value"] = np.full(bias.shape, 1 << 62, np.int64)
    with pytest.raises(PassError, match="int64 accumulator can reach 2"):
        PassManager.parse("check-quantized").run(g)
    bias.producer.attrs["value"] = np.zeros(bias.shape, np.int16)
    bias.type = TensorType(bias.shape, "i16")
    with pytest.raises(qcc.QccError, match="bias must be i32"):
        g.verify()


def _long_dense(tmp_path, k: int):
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((10, k)) / np.sqrt(k)).astype(np.float32)
    model = build([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)], {"x": [1, k]}, ["y"],
                  {"w": w, "b": (rng.standard_normal(10) * 0.1).astype(np.float32)})
    onnx.save(model, str(tmp_path / "fc.onnx"))
    np.save(tmp_path / "calib.npy", rng.standard_normal((16, 1, k)).astype(np.float32))
    return tmp_path / "fc.onnx", tmp_path / "calib.npy"


@needs_gcc
@pytest.mark.parametrize("k, wide", [(2000, True), (8, False)])
def test_bits16_widens_only_long_dot_products(tmp_path, k, wide):
    """--bits 16: a 2000-long dot product would lose ~7 weight bits to int32 (wide); an 8-long one none."""
    from qcc.ir.parser import parse_file
    from qcc.sim.interpreter import run_graph
    model, calib = _long_dense(tmp_path, k)
    assert qcc_main([str(model), "-o", str(tmp_path / "c" / "net.c"), "--target", "cortex-m4", "--calib", str(calib),
                     "--bits", "16", "--emit-ir", str(tmp_path / "net.qir")]) == 0
    g = parse_file(str(tmp_path / "net.qir"))
    dense = next(op for op in g.ops if op.opname == "qnn.dense")
    assert dense.operands[2].type.dtype == ("i64" if wide else "i32")
    # 16-bit weights keep (nearly) their full format: the largest |w_q| of each row is near 2^15
    w = np.abs(dense.operands[1].constant()).max(axis=1)
    assert w.min() >= (1 << 14 if wide else 1 << 11)
    x = np.load(calib)
    ref = x[:, 0] @ onnx.numpy_helper.to_array(onnx.load(str(model)).graph.initializer[0]).T
    ref += onnx.numpy_helper.to_array(onnx.load(str(model)).graph.initializer[1])
    got = np.stack([run_graph(g, {g.inputs[0].name: s})[g.output_names[0]].reshape(-1) for s in x])
    sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))
    assert sqnr > 60, sqnr
    gen, _ = compile_and_compare(g, tmp_path / "host", {g.inputs[0].name: x})


@needs_qemu
def test_wide_layers_build_warning_free_on_every_core_class(tmp_path):
    """The Makefile's -Wall -Wextra -Werror on M0+ (portable loop) and M55 (DSP + MVE): SMLALD only on the M55."""
    import subprocess
    for target, smlald in (("cortex-m0plus", False), ("cortex-m55", True)):
        gen = generate(wide_graph(0), "net", target)
        write_files({tmp_path / target / k: v for k, v in gen.files.items()})
        subprocess.run(["make", "-s", "-C", str(tmp_path / target), "all"], check=True, capture_output=True)
        dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(tmp_path / target / "libnet.a")], check=True,
                             capture_output=True, text=True).stdout
        assert ("smlald" in dis) == smlald, target


def test_qdq_round_trip_keeps_the_int64_accumulator(tmp_path):
    """--emit-onnx of a wide layer, compiled back with --scheme qmn: the same C (qdq-to-qmn widens the bias)."""
    model, calib = _long_dense(tmp_path, 2000)
    assert qcc_main([str(model), "-o", str(tmp_path / "a" / "net.c"), "--target", "cortex-m4", "--calib", str(calib),
                     "--bits", "16", "--emit-onnx", str(tmp_path / "q.onnx")]) == 0
    assert qcc_main([str(tmp_path / "q.onnx"), "-o", str(tmp_path / "b" / "net.c"), "--target", "cortex-m4",
                     "--scheme", "qmn"]) == 0
    assert "int64_t acc" in (tmp_path / "a" / "net.c").read_text()
    for f in ("net.c", "net_weights.c"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
