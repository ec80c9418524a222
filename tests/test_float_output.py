"""`qcc --float-output`: float outputs, and a trailing softmax/sigmoid/tanh run in float C.

With ``--float-output`` the qmn pipeline keeps a trailing nn.softmax /
nn.sigmoid / nn.tanh in float after the final q.dequantize, and the cmsis
backend runs it in float C on the dequantized outputs (the float epilogue).
The contract has two parts:

- the integer graph up to the q.dequantize stays bit-exact with the simulator
  (checked by compiling the same lowered graph without float outputs: its
  quantized and dequantized logits must equal the simulator's bit for bit);
- the float epilogue is not part of the integer contract: C's expf and
  summation order differ from numpy's in the last bits, so its outputs match
  the interpreter within rtol 1e-5 / atol 1e-6, and the argmax is identical.

A model without a trailing float op (examples/digits) only gets its outputs
dequantized in C, which stays bit-exact. ``--scheme int8`` on a float model
(``int8-calibrated{float_output=true}``) keeps the trailing softmax in float the
same way, after the s8 layers; a QDQ model keeps its own s8 softmax (its scales
are the user's), so there the flag only dequantizes.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qcc.backends.cmsis import generate, harness
from qcc.tools.compile import is_lowered, main
from qcc.errors import InputError
from qcc.fileio import write_files
from qcc.ir.graph import Graph
from qcc.ir.parser import parse_file
from qcc.ir.types import FixedPoint, TensorType

from test_backend_cmsis import Builder, assert_same_outputs

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "examples" / "digits"
KWS = REPO.parent / "shared" / "models" / "kws_dscnn"
RTOL, ATOL = 1e-5, 1e-6
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("make") is None,
                               reason="arm-none-eabi-gcc or make not installed")
needs_qemu = pytest.mark.skipif(harness.tools_missing("arm-none-eabi-gcc", "qemu-system-arm", "make") is not None,
                                reason="arm-none-eabi-gcc, qemu-system-arm or make not installed")
needs_kws = pytest.mark.skipif(not (KWS / "kws_dscnn_float.onnx").exists(),
                               reason="../shared/models/kws_dscnn is absent")


def qcc(folder: Path, model: Path, *args: str) -> Graph:
    """Run `qcc ... --float-output --emit-ir`; returns the lowered graph it emitted."""
    rc = main([str(model), "-o", str(folder / "net.c"), "--target", "cortex-m4", "--float-output",
               "--emit-ir", str(folder / "net.qir"), *args])
    assert rc == 0
    return parse_file(folder / "net.qir")


def run(graph: Graph, gen, folder: Path, samples, where: str):
    write_files({folder / k: v for k, v in gen.files.items()})
    count = harness.write_samples(folder / "in.bin", graph, samples)
    if where == "host":
        harness.run_host(harness.build_host(folder, gen.name), folder / "in.bin", folder / "out.bin")
    else:
        harness.run_qemu(folder, folder / "in.bin", folder / "out.bin")
    return harness.read_outputs(folder / "out.bin", gen, count), harness.simulate(graph, gen, samples)


def assert_epilogue_close(got, want):
    """Float epilogue outputs: within tolerance of the interpreter, same argmax per sample."""
    for a, b in zip(got.floats, want.floats):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
        n = len(a)
        np.testing.assert_array_equal(a.reshape(n, -1).argmax(axis=1), b.reshape(n, -1).argmax(axis=1))
    return max(float(np.max(np.abs(a - b))) for a, b in zip(got.floats, want.floats))


# ---------------------------------------------------------------- kws_dscnn: trailing softmax
@pytest.fixture(scope="module")
def kws(tmp_path_factory):
    if not (KWS / "kws_dscnn_float.onnx").exists():
        pytest.skip("../shared/models/kws_dscnn is absent")
    folder = tmp_path_factory.mktemp("kws")
    graph = qcc(folder / "compiled", KWS / "kws_dscnn_float.onnx", "--calib", str(KWS / "mfcc_real_float.npy"))
    golden = np.load(KWS / "golden_float.npz")["input"][:, None]  # [20, 1, 49, 10, 1]
    return graph, folder, {graph.inputs[0].name: golden}


@needs_kws
def test_kws_keeps_trailing_softmax_in_float(kws):
    graph, folder, _ = kws
    out = graph.outputs[0]
    assert out.producer.opname == "nn.softmax" and out.type.is_float
    assert out.producer.operands[0].producer.opname == "q.dequantize"
    assert not graph.find("qnn.softmax") and is_lowered(graph)
    gen = generate(graph, "net", "cortex-m4", float_output=True)
    files = {k: (folder / "compiled" / k).read_bytes() for k in gen.files}
    assert gen.files == files  # the emitted .qir compiles to the same bytes
    c, h = files["net.c"].decode(), files["net.h"].decode()
    assert "expf(" in c and "#include <math.h>" in c and "net_epilogue_output0(out0);" in c
    assert "int net_run(const int8_t *in0, float *out0);" in h and "not part of the integer contract" in h
    assert "LDLIBS       := -lm" in files["Makefile"].decode()


@needs_kws
def test_kws_without_float_output_flag_is_refused(kws, tmp_path):
    _, folder, _ = kws
    with pytest.raises(InputError, match="--float-output"):
        from qcc.tools.compile import compile_model
        compile_model(str(folder / "compiled" / "net.qir"), str(tmp_path / "x.c"), "cortex-m4")


@needs_kws
@pytest.mark.parametrize("where", [pytest.param("host", marks=needs_gcc), pytest.param("qemu", marks=needs_qemu)])
def test_kws_float_softmax_matches_simulator(kws, where):
    graph, folder, samples = kws
    # Integer part: the same graph without float outputs stops at the quantized logits, bit-exact.
    logits = generate(graph, "net", "cortex-m4")
    assert any("nn.softmax" in w for w in logits.warnings)
    got_q, want_q = run(graph, logits, folder / f"logits_{where}", samples, where)
    assert_same_outputs(got_q, want_q)
    # Float epilogue on top: within tolerance, same argmax on every sample.
    gen = generate(graph, "net", "cortex-m4", float_output=True)
    got, want = run(graph, gen, folder / f"probs_{where}", samples, where)
    worst = assert_epilogue_close(got, want)
    probs = got.floats[0].reshape(len(got.floats[0]), -1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # The C softmax reads exactly the bit-exact dequantized logits.
    x = got_q.floats[0].reshape(probs.shape)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(axis=1, keepdims=True), rtol=RTOL, atol=ATOL)
    print(f"kws {where}: max |C - simulator| softmax = {worst:.3g}, "
          f"max rel = {float(np.max(np.abs(got.floats[0] - want.floats[0]) / want.floats[0])):.3g}")


@needs_kws
@needs_arm
@pytest.mark.parametrize("target", ["cortex-m0plus", "cortex-m3"])
def test_kws_soft_float_targets_build_with_werror(kws, target):
    graph, folder, _ = kws
    gen = generate(graph, "net", target, float_output=True)
    out = folder / target
    write_files({out / k: v for k, v in gen.files.items()})
    proc = subprocess.run(["make", "-s", "-C", str(out), "net.elf"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nm = subprocess.run(["arm-none-eabi-nm", str(out / "net.elf")], capture_output=True, text=True)
    assert " expf" in nm.stdout  # newlib's soft-float expf linked through -lm


@needs_kws
@needs_qemu
def test_kws_soft_float_m3_runs_in_qemu(kws):
    graph, folder, samples = kws
    gen = generate(graph, "net", "cortex-m3", float_output=True)
    got, want = run(graph, gen, folder / "m3_qemu", samples, "qemu")
    print(f"kws cortex-m3 qemu: max |C - simulator| softmax = {assert_epilogue_close(got, want):.3g}")


@needs_kws
@needs_gcc
def test_kws_int8_float_output_keeps_softmax_in_float(tmp_path, kws):
    _, _, samples = kws
    graph = qcc(tmp_path, KWS / "kws_dscnn_float.onnx", "--calib", str(KWS / "mfcc_real_float.npy"),
                "--scheme", "int8")
    out = graph.outputs[0]
    assert out.producer.opname == "nn.softmax" and out.type.is_float
    logits = out.producer.operands[0].producer
    assert logits.opname == "q.dequantize" and logits.operands[0].producer.opname == "s8.dense"
    assert not graph.find("s8.softmax") and graph.find("s8.conv2d") and is_lowered(graph)
    # Integer part: without float outputs the C stops at the s8 logits, bit-exact with the simulator.
    got_q, want_q = run(graph, generate(graph, "net", "cortex-m4"), tmp_path / "logits", samples, "host")
    assert_same_outputs(got_q, want_q)
    # Float softmax on top: within tolerance of the interpreter, same argmax on every sample.
    gen = generate(graph, "net", "cortex-m4", float_output=True)
    assert "expf(" in gen.files["net.c"].decode()
    got, want = run(graph, gen, tmp_path / "probs", samples, "host")
    worst = assert_epilogue_close(got, want)
    probs = got.floats[0].reshape(len(got.floats[0]), -1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    print(f"kws int8 host: max |C - simulator| softmax = {worst:.3g}")


@needs_kws
def test_kws_qdq_float_output_keeps_its_s8_softmax(tmp_path):
    """A QDQ model's softmax scales are the user's: --float-output only dequantizes (no float epilogue)."""
    if not (KWS / "kws_dscnn_int8_qdq.onnx").exists():
        pytest.skip("kws_dscnn_int8_qdq.onnx is absent")
    graph = qcc(tmp_path, KWS / "kws_dscnn_int8_qdq.onnx")
    assert graph.outputs[0].producer.opname == "s8.softmax" and not graph.find("nn.softmax")
    gen = generate(graph, "net", "cortex-m4", float_output=True)
    assert b"expf" not in gen.files["net.c"] and b"-lm" not in gen.files["Makefile"]


# ---------------------------------------------------------------- digits: no trailing float op
@needs_gcc
def test_digits_float_output_is_bit_exact(tmp_path):
    graph = qcc(tmp_path, DIGITS / "digits.onnx", "--calib", str(DIGITS / "calib.npz"))
    assert not any(op.opname.startswith("nn.") and op.result.type.is_float for op in graph.ops)
    gen = generate(graph, "net", "cortex-m4", float_output=True)
    assert b"expf" not in gen.files["net.c"] and b"-lm" not in gen.files["Makefile"]
    data = np.load(DIGITS / "test.npz")
    got, want = run(graph, gen, tmp_path / "run", {"input": data["input"]}, "host")
    assert_same_outputs(got, want)  # floats compared by their bits
    correct = int((got.floats[0].reshape(len(data["labels"]), -1).argmax(axis=1) == data["labels"]).sum())
    assert correct >= 350


# ---------------------------------------------------------------- hand-built epilogues
def epilogue_graph() -> Graph:
    """conv -> q.dequantize, shared by three outputs: softmax over axis 1 (strided), sigmoid -> tanh, itself."""
    b = Builder("epilogue", 8, 7)
    x = b.input("x", (1, 5, 6, 3), 5)
    c = b.conv(x, 4, 3, "conv", pads=(1, 1, 1, 1), per_channel=True)
    g = b.g
    d = g.add_op("q.dequantize", [c], result_types=[TensorType(c.shape)]).result
    sm = g.add_op("nn.softmax", [d], {"axis": 1}, name="softmax").result
    sg = g.add_op("nn.sigmoid", [d], name="sigmoid").result
    th = g.add_op("nn.tanh", [sg], name="tanh").result
    g.set_outputs([sm, th, d], ["probs", "squashed", "raw"])
    g.verify()
    return g


def test_is_lowered_accepts_only_trailing_float_ops():
    g = epilogue_graph()
    assert is_lowered(g)
    # a float op before the final dequantize (here: its result quantized again) is not an epilogue
    b = Builder("mid", 8, 1)
    x = b.input("x", (1, 4), 5)
    d = b.g.add_op("q.dequantize", [x], result_types=[TensorType(x.shape)]).result
    s = b.g.add_op("nn.sigmoid", [d]).result
    q = b.g.add_op("q.quantize", [s], result_types=[TensorType(x.shape, "i8", FixedPoint(7))]).result
    b.graph([q], ["y"])
    assert not is_lowered(b.g)


@needs_gcc
def test_hand_built_epilogues_match_interpreter(tmp_path):
    g = epilogue_graph()
    rng = np.random.default_rng(0)
    samples = {"x": rng.normal(0, 1.5, (16, 1, 5, 6, 3)).astype(np.float32)}
    gen = generate(g, "net", "cortex-m4", float_output=True)
    assert [len(io.epilogue) for io in gen.plan.outputs] == [1, 2, 0]
    got, want = run(g, gen, tmp_path, samples, "host")
    np.testing.assert_array_equal(got.floats[2].view(np.uint32), want.floats[2].view(np.uint32))  # no epilogue
    for what, a, b in zip(("softmax", "sigmoid->tanh"), got.floats[:2], want.floats[:2]):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
        print(f"hand-built {what}: max |C - interpreter| = {float(np.max(np.abs(a - b))):.3g}")
    np.testing.assert_allclose(got.floats[0].sum(axis=2), 1.0, rtol=1e-5)  # softmax over axis 1 of [1,5,6,4]
