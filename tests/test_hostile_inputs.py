"""Hostile inputs against the real entry points (``qcc``, ``qcc-opt``, ``qcc-sim``, in process).

Issue 17: no traceback, no bad input accepted. Every case is built here in a
tmp folder (nothing is stored) and asserts the exit code, a message that names
the offender (ONNX node, option, tensor or ``file:line:col``), no "Traceback"
on stderr and no file left in the output folder. Besides the corpus:

* depth: a 500-layer Conv3x3+ReLU network compiles under qmn and int8 (with
  ``--report``, which copies the graph) and its C equals the simulator on the host;
* extreme floats: NaN, +-Inf, +-1e30 and mixed inputs quantize the same in C
  and in the simulator (NaN to the zero point, the rest saturating);
* silent wrong output: an int8 layer whose bias cannot fit its int32
  accumulator is refused, naming the layer.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcc.backends.cmsis import harness
from qcc.ir.parser import parse_file
from qcc.tools.cli import opt_main, sim_main
from qcc.tools.compile import main as qcc_main

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")


# ---------------------------------------------------------------- model builders
def _model(nodes, inputs, outputs, inits=(), opset=13, name="hostile") -> onnx.ModelProto:
    """A model from (name, elem type, shape) inputs/outputs; no checker, no shape inference."""
    graph = helper.make_graph(
        list(nodes), name,
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def conv_chain(layers: int, channels: int = 2, size: int = 4, seed: int = 0, weight_scale: float = 0.3,
               bias_scale: float = 0.1, conv_attrs: Optional[dict] = None) -> onnx.ModelProto:
    """``layers`` x (Conv3x3 'same' + ReLU) on a 1 x channels x size x size input."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((channels, channels, 3, 3)) * weight_scale).astype(np.float32)
        b = (rng.standard_normal(channels) * bias_scale).astype(np.float32)
        inits += [(f"w{i}", w), (f"b{i}", b)]
        attrs = conv_attrs if conv_attrs is not None else {"pads": [1, 1, 1, 1]}
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", **attrs))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        prev = f"r{i}"
    shape = [1, channels, size, size]
    return _model(nodes, [("x", TensorProto.FLOAT, shape)], [(prev, TensorProto.FLOAT, shape)], inits)


def calib_for(path: Path, shape, count: int = 8, seed: int = 1) -> Path:
    data = np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)
    np.savez(path, x=data)
    return path


# ---------------------------------------------------------------- running the tools
TOOLS: Dict[str, Callable] = {"qcc": qcc_main, "qcc-opt": opt_main, "qcc-sim": sim_main}


def run_tool(tool: str, argv: Sequence[str], capsys) -> tuple:
    """(exit code, stderr) of one in-process run; argparse's usage errors count as their exit code."""
    try:
        code = TOOLS[tool]([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.err


def _compile_and_compare(tmp_path: Path, model: Path, calib: Path, scheme: str, samples: Dict[str, np.ndarray],
                         capsys, extra: Sequence[str] = (), cflags: Sequence[str] = harness.HOST_CFLAGS):
    """qcc the model, build the C on the host (sanitizers on), and compare it with the simulator bit for bit."""
    out = tmp_path / f"out_{scheme}"
    code, err = run_tool("qcc", [model, "-o", out / "net.c", "--target", "cortex-m4", "--calib", calib,
                                 "--scheme", scheme, "--emit-ir", tmp_path / f"{scheme}.qir", *extra], capsys)
    assert code == 0, err
    graph = parse_file(tmp_path / f"{scheme}.qir")
    from qcc.backends.cmsis import generate
    gen = generate(graph, "net", "cortex-m4")
    assert gen.files["net.c"] == (out / "net.c").read_bytes()  # the IR written is the graph compiled
    count = harness.write_samples(tmp_path / "in.bin", graph, samples)
    exe = harness.build_host(out, "net", extra=cflags)
    harness.run_host(exe, tmp_path / "in.bin", tmp_path / "out.bin")
    got = harness.read_outputs(tmp_path / "out.bin", gen, count)
    want = harness.simulate(graph, gen, samples)
    for a, b in zip(got.quantized, want.quantized):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(got.floats, want.floats):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    return graph, got


# ---------------------------------------------------------------- 1. depth
@needs_gcc
@pytest.mark.parametrize("scheme", ["qmn", "int8"])
def test_500_layer_network_compiles_and_matches_the_simulator(tmp_path, capsys, scheme):
    onnx.save(conv_chain(500, channels=1, size=3), tmp_path / "deep.onnx")
    calib = calib_for(tmp_path / "calib.npz", (1, 1, 3, 3))
    samples = {"x": np.random.default_rng(2).standard_normal((2, 1, 1, 3, 3)).astype(np.float32)}
    # -O0: the sanitizers stay on, but gcc spends half the time on 500 specialized layers at -O1.
    cflags = tuple("-O0" if f.startswith("-O") else f for f in harness.HOST_CFLAGS)
    graph, _ = _compile_and_compare(tmp_path, tmp_path / "deep.onnx", calib, scheme, samples, capsys,
                                    extra=["--report", tmp_path / "report.md"], cflags=cflags)
    prefix = "qnn." if scheme == "qmn" else "s8."
    assert sum(op.opname == prefix + "conv2d" for op in graph.ops) == 500
    assert "conv499" in (tmp_path / "report.md").read_text()


# ---------------------------------------------------------------- 3. extreme float inputs
EXTREMES = {
    "nan": np.full(16, np.nan),
    "+inf": np.full(16, np.inf),
    "-inf": np.full(16, -np.inf),
    "+1e30": np.full(16, 1e30),
    "-1e30": np.full(16, -1e30),
    "mixed": np.array([np.nan, 1.0, -np.inf, 0.25, np.inf, -1e18, 1e18, np.nan, -0.5, 3e38, -3e38, 1e-45,
                       -np.nan, 0.0, -0.0, 2.0]),
}


@needs_gcc
@pytest.mark.parametrize("scheme", ["qmn", "int8"])
def test_extreme_inputs_quantize_alike_in_c_and_simulator(tmp_path, capsys, scheme):
    onnx.save(conv_chain(1, channels=1, size=4, conv_attrs={"pads": [1, 1, 1, 1]}), tmp_path / "m.onnx")
    calib = calib_for(tmp_path / "calib.npz", (1, 1, 4, 4))
    x = np.stack([a.astype(np.float32).reshape(1, 1, 4, 4) for a in EXTREMES.values()])
    graph, got = _compile_and_compare(tmp_path, tmp_path / "m.onnx", calib, scheme, {"x": x}, capsys)
    # The stated codes: NaN is the zero point, +-Inf and +-1e30 the storage limits.
    from qcc.sim.qmn import quantize_array
    t = graph.ops[0].result.type if graph.ops[0].opname == "q.quantize" else \
        next(op for op in graph.ops if op.opname == "q.quantize").result.type
    info = np.iinfo(t.np_dtype)
    zp = t.quant.zero_point
    q = {k: quantize_array(a.astype(np.float32), t.quant, t.np_dtype) for k, a in EXTREMES.items()}
    assert (q["nan"] == zp).all() and (q["+inf"] == info.max).all() and (q["-inf"] == info.min).all()
    assert (q["+1e30"] == info.max).all() and (q["-1e30"] == info.min).all()
    assert q["mixed"][0] == zp and q["mixed"][2] == info.min and q["mixed"][4] == info.max


@pytest.mark.skipif(harness.tools_missing("arm-none-eabi-gcc", "qemu-system-arm") is not None,
                    reason="arm-none-eabi-gcc or qemu-system-arm not installed")
@pytest.mark.parametrize("scheme", ["qmn", "int8"])
def test_extreme_inputs_on_qemu_m4_match_the_simulator(tmp_path, capsys, scheme):
    """The M4's FPU compares and converts NaN and Inf as the host does: the same codes in QEMU."""
    onnx.save(conv_chain(1, channels=1, size=4), tmp_path / "m.onnx")
    calib = calib_for(tmp_path / "calib.npz", (1, 1, 4, 4))
    out = tmp_path / "out"
    code, err = run_tool("qcc", [tmp_path / "m.onnx", "-o", out / "net.c", "--target", "cortex-m4", "--calib", calib,
                                 "--scheme", scheme, "--emit-ir", tmp_path / "m.qir"], capsys)
    assert code == 0, err
    graph = parse_file(tmp_path / "m.qir")
    from qcc.backends.cmsis import generate
    gen = generate(graph, "net", "cortex-m4")
    x = np.stack([a.astype(np.float32).reshape(1, 1, 4, 4) for a in EXTREMES.values()])
    count = harness.write_samples(out / "in.bin", graph, {"x": x})
    harness.run_qemu(out, out / "in.bin", out / "out.bin")
    got = harness.read_outputs(out / "out.bin", gen, count)
    want = harness.simulate(graph, gen, {"x": x})
    for a, b in zip(got.quantized, want.quantized):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(got.floats, want.floats):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


# ---------------------------------------------------------------- the corpus
F, U8 = TensorProto.FLOAT, TensorProto.UINT8


def _small(tmp: Path) -> Path:
    """A float Conv+ReLU model (input x: 1x2x4x4) and its calibration data (calib.npz)."""
    onnx.save(conv_chain(1), tmp / "small.onnx")
    calib_for(tmp / "calib.npz", (1, 2, 4, 4))
    return tmp / "small.onnx"


def _save(tmp: Path, model: onnx.ModelProto, name: str = "bad.onnx") -> Path:
    onnx.save(model, tmp / name)
    return tmp / name


def _relu_model(**kw) -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", F, [1, 4])], [("y", F, [1, 4])],
                  **kw)


def _qcc(tmp: Path, model, *extra, calib: Optional[str] = "calib.npz") -> list:
    args = [model, "-o", tmp / "out" / "net.c", "--target", "cortex-m4"]
    return args + (["--calib", tmp / calib] if calib else []) + list(extra)


class Evil:
    """Unpickling this touches a marker file: a tool that loads pickles would leave it behind."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickled(tmp: Path, suffix: str) -> Path:
    path = tmp / f"evil{suffix}"
    payload = np.array([Evil(tmp / "PWNED"), 1.0], dtype=object)
    if suffix == ".npy":
        np.save(path, payload, allow_pickle=True)
    else:
        np.savez(path, x=payload)
    return path


def _calib(tmp: Path, name: str, **arrays) -> Path:
    np.savez(tmp / name, **arrays)
    return tmp / name


def _ir(tmp: Path, text: str, name: str = "bad.qir") -> Path:
    (tmp / name).write_text(text)
    return tmp / name


def _nested_ir(depth: int) -> str:
    return ('qcc.graph @g(%x: tensor<2xf32> {a = ' + "[" * depth + "1" + "]" * depth + '}) -> (tensor<2xf32>) {\n'
            '  qcc.return %x : tensor<2xf32>\n}\n')


def _div_by_zero(tmp):
    m = _model([helper.make_node("Div", ["x", "d"], ["y"], name="scale_div")], [("x", F, [1, 4])],
               [("y", F, [1, 4])], [("d", np.array([[1, 0, 2, 3]], np.float32))])
    return _save(tmp, m)


def _conv_attr(tmp, **attrs):
    w = np.full((2, 2, 3, 3), 0.1, np.float32)
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv_bad", **attrs)], [("x", F, [1, 2, 4, 4])],
               [("y", F, None)], [("w", w)])
    return _save(tmp, m)


def _uint8_cast(tmp):
    m = _model([helper.make_node("Cast", ["img"], ["f"], name="to_float", to=F),
                helper.make_node("Relu", ["f"], ["y"], name="relu")], [("img", U8, [1, 4])], [("y", F, [1, 4])])
    return _save(tmp, m)


def _shapeless_output(tmp):
    m = _relu_model()
    m.graph.output[0].type.tensor_type.ClearField("shape")
    return _save(tmp, m)


def _untyped_output(tmp):
    m = _relu_model()
    m.graph.output[0].type.Clear()
    return _save(tmp, m)


def _huge_input(tmp):
    shape = [1, 100000, 100000]
    return _save(tmp, _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", F, shape)],
                             [("y", F, shape)]))


def _big_bias_int8(tmp):
    """Weights ~1e-6 and a bias of 1e4: the int32 bias cannot hold 1e4 at scale s_in * s_w."""
    m = conv_chain(1, weight_scale=1e-6, bias_scale=0.0)
    for init in m.graph.initializer:
        if init.name == "b0":
            init.CopyFrom(numpy_helper.from_array(np.array([1e4, -1e4], np.float32), "b0"))
    calib_for(tmp / "calib.npz", (1, 2, 4, 4))
    return _save(tmp, m)


def _nonfinite_weights(tmp):
    m = conv_chain(1)
    w = numpy_helper.to_array(m.graph.initializer[0]).copy()
    w.flat[3] = np.nan
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, m.graph.initializer[0].name))
    calib_for(tmp / "calib.npz", (1, 2, 4, 4))
    return _save(tmp, m)


# (id, tool, argv builder, exit code, words the message must hold)
CASES = [
    # files
    ("missing-model", "qcc", lambda t: _qcc(t, t / "nope.onnx"), 1, ["no such file", "nope.onnx"]),
    ("model-is-a-folder", "qcc", lambda t: _qcc(t, t), 1, ["directory"]),
    ("empty-onnx-file", "qcc", lambda t: _qcc(t, _ir(t, "", "empty.onnx")), 1, ["empty.onnx", "not an ONNX model"]),
    ("truncated-onnx", "qcc", lambda t: _qcc(t, _ir(t, "", "cut.onnx") and
                                             (t / "cut.onnx").write_bytes(_small(t).read_bytes()[:150]) and
                                             t / "cut.onnx"), 1, ["cut.onnx", "not a readable ONNX model"]),
    ("text-as-onnx", "qcc", lambda t: _qcc(t, _ir(t, "hello, I am not a model\n", "text.onnx")), 1,
     ["text.onnx"]),
    ("unknown-suffix", "qcc", lambda t: _qcc(t, _ir(t, "x", "model.tflite")), 1, ["model.tflite", ".onnx"]),
    ("pickled-npy-calib", "qcc", lambda t: _qcc(_small(t).parent, t / "small.onnx", calib=_pickled(t, ".npy").name),
     1, ["evil.npy"]),
    ("pickled-npz-calib", "qcc", lambda t: _qcc(_small(t).parent, t / "small.onnx", calib=_pickled(t, ".npz").name),
     1, ["evil.npz"]),
    ("pickled-npy-sim-inputs", "qcc-sim", lambda t: [_small(t), "--inputs", _pickled(t, ".npy"),
                                                      "-o", t / "out" / "y.npz"], 1, ["evil.npy"]),
    ("pickled-npz-sim-inputs", "qcc-sim", lambda t: [_small(t), "--inputs", _pickled(t, ".npz"),
                                                      "-o", t / "out" / "y.npz"], 1, ["evil.npz"]),
    ("empty-npz", "qcc", lambda t: _qcc(t, _small(t), calib=_ir(t, "", "e.npz").name), 1, ["e.npz"]),
    ("empty-qir", "qcc-opt", lambda t: [_ir(t, ""), "-o", t / "out" / "o.qir"], 1, ["bad.qir:"]),
    ("binary-qir", "qcc-opt", lambda t: [(t / "bin.qir").write_bytes(b"\xff\xfe\x00garbage") and t / "bin.qir",
                                         "-o", t / "out" / "o.qir"], 1, ["bin.qir"]),
    # calibration data
    ("calib-wrong-name", "qcc", lambda t: _qcc(t, _small(t), calib=_calib(
        t, "c.npz", z=np.zeros((4, 1, 2, 4, 4), np.float32)).name), 1, ["c.npz", "'x'"]),
    ("calib-wrong-shape", "qcc", lambda t: _qcc(t, _small(t), calib=_calib(
        t, "c.npz", x=np.zeros((4, 1, 3, 5, 5), np.float32)).name), 1, ["c.npz", "shape"]),
    ("calib-string-dtype", "qcc", lambda t: _qcc(t, _small(t), calib=_calib(
        t, "c.npz", x=np.array(["a", "b"])).name), 1, ["c.npz", "dtype"]),
    ("calib-complex-dtype", "qcc", lambda t: _qcc(t, _small(t), calib=_calib(
        t, "c.npz", x=np.zeros((4, 1, 2, 4, 4), np.complex64)).name), 1, ["c.npz", "complex64"]),
    ("calib-nan", "qcc", lambda t: _qcc(t, _small(t), calib=_calib(
        t, "c.npz", x=np.full((4, 1, 2, 4, 4), np.nan, np.float32)).name), 1, ["NaN", "'x'"]),
    ("calib-no-samples", "qcc", lambda t: _qcc(t, _small(t), calib=_calib(
        t, "c.npz", x=np.zeros((0, 1, 2, 4, 4), np.float32)).name), 1, ["c.npz", "no samples"]),
    ("sim-no-samples", "qcc-sim", lambda t: [_small(t), "--inputs", _calib(
        t, "c.npz", x=np.zeros((0, 1, 2, 4, 4), np.float32)), "-o", t / "out" / "y.npz"], 1, ["no samples"]),
    ("sim-complex-inputs", "qcc-sim", lambda t: [_small(t), "--inputs", _calib(
        t, "c.npz", x=np.zeros((1, 2, 4, 4), np.complex64)), "-o", t / "out" / "y.npz"], 1, ["'x'", "complex64"]),
    # flags
    ("jobs-negative", "qcc", lambda t: _qcc(t, _small(t), "--jobs", "-3"), 1, ["--jobs", "-3"]),
    ("opt-jobs-negative", "qcc-opt", lambda t: [_small(t), "-p", "qmn", "--calib", t / "calib.npz",
                                                "--jobs", "-3", "-o", t / "out" / "o.qir"], 1, ["--jobs", "-3"]),
    ("act-max-two-equals", "qcc", lambda t: _qcc(t, _small(t), "--act-max", "t=3=4"), 1, ["--act-max", "t=3=4"]),
    ("opt-act-max-two-equals", "qcc-opt", lambda t: [_small(t), "-p", "qmn", "--act-max", "t=3=4",
                                                     "-o", t / "out" / "o.qir"], 1, ["act-max", "t=3=4"]),
    ("act-max-not-a-number", "qcc", lambda t: _qcc(t, _small(t), "--act-max", "x=big"), 1, ["--act-max", "x=big"]),
    ("output-is-a-header", "qcc", lambda t: [_small(t), "-o", t / "out" / "net.h", "--target", "cortex-m4",
                                             "--calib", t / "calib.npz"], 1, ["-o", "net.h"]),
    ("emit-ir-on-the-c-file", "qcc", lambda t: _qcc(t, _small(t), "--emit-ir", t / "out" / "net.c"), 1,
     ["--emit-ir", "net.c"]),
    ("emit-ir-on-the-header", "qcc", lambda t: _qcc(t, _small(t), "--emit-ir", t / "out" / "net.h"), 1,
     ["--emit-ir", "net.h"]),
    ("emit-ir-on-the-report", "qcc", lambda t: _qcc(t, _small(t), "--emit-ir", t / "out" / "r.md",
                                                    "--report", t / "out" / "r.md"), 1, ["r.md"]),
    ("emit-ir-on-the-model", "qcc", lambda t: _qcc(t, _small(t), "--emit-ir", t / "small.onnx"), 1,
     ["--emit-ir", "model"]),
    ("report-bad-suffix", "qcc", lambda t: _qcc(t, _small(t), "--report", t / "out" / "r.txt"), 1, ["--report"]),
    ("opt-output-on-the-input", "qcc-opt", lambda t: [_ir(t, _nested_ir(1), "g.qir"), "-o", t / "g.qir"], 1,
     ["-o", "g.qir"]),
    ("qmn-bits-12", "qcc-opt", lambda t: [_small(t), "-p", "qmn{bits=12}", "--calib", t / "calib.npz",
                                          "-o", t / "out" / "o.qir"], 1, ["bits", "8 or 16", "12"]),
    ("qmn-weight-bits-4", "qcc-opt", lambda t: [_small(t), "-p", "qmn{weight_bits=4}", "--calib", t / "calib.npz",
                                                "-o", t / "out" / "o.qir"], 1, ["weight_bits", "4"]),
    ("calibrate-p-200", "qcc-opt", lambda t: [_small(t), "-p", "calibrate{p=200}", "--calib", t / "calib.npz",
                                              "-o", t / "out" / "o.qir"], 1, ["'p'", "calibrate", "200"]),
    ("qmn-p-nan", "qcc-sim", lambda t: [_small(t), "-p", "qmn{p=nan}", "--calib", t / "calib.npz", "--inputs",
                                        t / "calib.npz", "-o", t / "out" / "y.npz"], 1, ["'p'", "nan"]),
    ("calibrate-bins-0", "qcc-opt", lambda t: [_small(t), "-p", "calibrate{bins=0}", "--calib", t / "calib.npz",
                                               "-o", t / "out" / "o.qir"], 1, ["bins", "0"]),
    ("unknown-pass", "qcc-opt", lambda t: [_small(t), "-p", "no-such-pass", "-o", t / "out" / "o.qir"], 1,
     ["no-such-pass"]),
    ("bits-12", "qcc", lambda t: _qcc(t, _small(t), "--bits", "12"), 2, ["--bits", "12"]),
    ("unknown-target", "qcc", lambda t: [_small(t), "-o", t / "out" / "net.c", "--target", "cortex-z9"], 2,
     ["--target", "cortex-z9"]),
    ("input-shape-zero", "qcc", lambda t: _qcc(t, _small(t), "--input-shape", "x=1x0x4x4"), 1, ["--input-shape"]),
    # IR text
    ("ir-nested-50000", "qcc-opt", lambda t: [_ir(t, _nested_ir(50000)), "-o", t / "out" / "o.qir"], 1,
     ["bad.qir:1:", "nest"]),
    ("ir-unknown-op", "qcc-opt", lambda t: [_ir(t, 'qcc.graph @g(%x: tensor<2xf32>) -> (tensor<2xf32>) {\n'
                                                   '  %0 = nn.frobnicate %x : tensor<2xf32>\n'
                                                   '  qcc.return %0 : tensor<2xf32>\n}\n'),
                                            "-o", t / "out" / "o.qir"], 1, ["bad.qir:2:", "nn.frobnicate"]),
    ("ir-undefined-value", "qcc-opt", lambda t: [_ir(t, 'qcc.graph @g(%x: tensor<2xf32>) -> (tensor<2xf32>) {\n'
                                                        '  %0 = nn.relu %nope : tensor<2xf32>\n'
                                                        '  qcc.return %0 : tensor<2xf32>\n}\n'),
                                                 "-o", t / "out" / "o.qir"], 1, ["bad.qir:2:", "%nope"]),
    ("ir-huge-shape", "qcc", lambda t: [_ir(t, 'qcc.graph @g(%x: tensor<1x100000x100000xf32>) -> '
                                               '(tensor<1x100000x100000xf32>) {\n'
                                               '  %0 = q.quantize %x : tensor<1x100000x100000x!q.fixed<i8, 7>>\n'
                                               '  %1 = q.dequantize %0 : tensor<1x100000x100000xf32>\n'
                                               '  qcc.return %1 : tensor<1x100000x100000xf32>\n}\n'),
                                        "-o", t / "out" / "net.c", "--target", "cortex-m4"], 2,
     ["1x100000x100000", "RAM"]),
    ("ir-huge-pad-before-calibration", "qcc", lambda t: [
        _ir(t, 'qcc.graph @g(%x: tensor<1x4xf32>) -> (tensor<1x400000000004xf32> {name = "y"}) {\n'
               '  %0 = nn.pad %x {pads = [0, 0, 0, 400000000000], value = 0.0} : tensor<1x400000000004xf32>\n'
               '  qcc.return %0 : tensor<1x400000000004xf32>\n}\n'),
        "-o", t / "out" / "net.c", "--target", "cortex-m4", "--calib",
        _calib(t, "c.npz", x=np.zeros((2, 1, 4), np.float32))], 2, ["nn.pad", "400,000,000,004", "RAM"]),
    # models
    ("empty-graph", "qcc", lambda t: _qcc(t, _save(t, _model([], [], []))), 1, ["bad.onnx", "no nodes"]),
    ("no-outputs", "qcc", lambda t: _qcc(t, _save(t, _model([helper.make_node("Relu", ["x"], ["y"], name="r")],
                                                            [("x", F, [1, 4])], []))), 1, ["no outputs"]),
    ("opset-99", "qcc", lambda t: _qcc(t, _save(t, _relu_model(opset=99))), 2, ["opset 99"]),
    ("conv-strides-0", "qcc", lambda t: _qcc(t, _conv_attr(t, strides=[0, 0])), 1,
     ["conv_bad", "Conv", "strides"]),
    ("conv-negative-pads", "qcc", lambda t: _qcc(t, _conv_attr(t, pads=[-1, 0, 0, 0])), 1,
     ["conv_bad", "Conv", "pads"]),
    ("conv-dilations-0", "qcc", lambda t: _qcc(t, _conv_attr(t, dilations=[0, 1])), 1,
     ["conv_bad", "dilations"]),
    ("softmax-axis-out-of-range", "qcc", lambda t: _qcc(t, _save(t, _model(
        [helper.make_node("Softmax", ["x"], ["y"], name="probs", axis=5)], [("x", F, [1, 4])], [("y", F, [1, 4])]))),
     1, ["probs", "Softmax", "axis 5"]),
    ("zero-size-input", "qcc", lambda t: _qcc(t, _save(t, _model(
        [helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", F, [1, 0, 4])], [("y", F, [1, 0, 4])]))),
     1, ["'x'", "zero dimension"]),
    ("untyped-output", "qcc", lambda t: _qcc(t, _untyped_output(t)), 1, ["'y'", "no type"]),
    ("division-by-zero-constant", "qcc", lambda t: _qcc(t, _div_by_zero(t)), 2, ["scale_div", "Div", "0"]),
    ("uint8-input-cast-to-float", "qcc", lambda t: _qcc(t, _uint8_cast(t)), 2, ["to_float", "Cast", "img"]),
    ("nan-weights", "qcc", lambda t: _qcc(t, _nonfinite_weights(t)), 2, ["conv0", "NaN"]),
    ("input-larger-than-ram", "qcc", lambda t: _qcc(t, _huge_input(t), "--act-max", "x=1", "--act-max", "y=1",
                                                    calib=None), 2, ["1x100000x100000", "RAM"]),
    ("int8-pipeline-on-float-model", "qcc-opt", lambda t: [_small(t), "-p", "int8", "--calib", t / "calib.npz",
                                                           "-o", t / "out" / "o.qir"], 2,
     ["float model", "int8-calibrated"]),
    ("int8-bias-overflow", "qcc", lambda t: _qcc(t, _big_bias_int8(t), "--scheme", "int8"), 1,
     ["conv0", "bias", "int32"]),
    ("int8-bias-overflow-report", "qcc", lambda t: _qcc(t, _big_bias_int8(t), "--scheme", "int8",
                                                         "--report", t / "out" / "r.md"), 1, ["conv0", "bias"]),
    ("int8-bias-overflow-sim", "qcc-sim", lambda t: [_big_bias_int8(t), "-p", "int8-calibrated", "--calib",
                                                     t / "calib.npz", "--inputs", t / "calib.npz",
                                                     "-o", t / "out" / "y.npz"], 1,
     ["check-quantized", "conv0", "bias"]),
]


@pytest.mark.parametrize("case_id,tool,build,code,words", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_cleanly(tmp_path, capsys, case_id, tool, build, code, words):
    argv = build(tmp_path)
    got, err = run_tool(tool, argv, capsys)
    assert got != 0 and (code is None or got == code), (got, err)
    for word in words:
        assert word in err, (word, err)
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
    assert not (tmp_path / "PWNED").exists()  # no pickle was ever loaded
    assert not list(tmp_path.rglob("*.qcc-tmp")) and not list(tmp_path.rglob("*.qcc-old"))


# ---------------------------------------------------------------- hostile but valid: compiles
def _mul_relu_chain(tmp: Path, pairs: int = 35) -> Path:
    nodes, inits, prev = [], [], "x"
    for i in range(pairs):
        inits.append((f"k{i}", np.full((1, 4), 1.0 + 0.01 * (i % 3), np.float32)))
        nodes += [helper.make_node("Mul", [prev, f"k{i}"], [f"m{i}"], name=f"mul{i}"),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}")]
        prev = f"r{i}"
    calib_for(tmp / "calib.npz", (1, 4))
    return _save(tmp, _model(nodes, [("x", F, [1, 4])], [(prev, F, [1, 4])], inits), "mulrelu.onnx")


def _hostile_names(tmp: Path) -> Path:
    """Names that break naive C or IR: comment closers, quotes, newlines, unicode, 5000 characters,
    a C keyword, names equal after sanitizing (in-1 / in_1), an empty node name."""
    ins = ["in-1", "in_1"]
    names = ["*/ #include <stdio.h> /*", 'a\nb\\"', "ünïcödé", "n" * 5000, "int", ""]
    out = 'out put"*/'
    nodes = [helper.make_node("Add", ins, ["s"], name=names[0]),
             helper.make_node("Relu", ["s"], ["t"], name=names[1]),
             helper.make_node("Mul", ["t", "k"], ["u"], name=names[2]),
             helper.make_node("Relu", ["u"], ["main"], name=names[3]),
             helper.make_node("Sigmoid", ["main"], [out], name=names[4]),
             helper.make_node("Relu", ["main"], ["int"], name=names[5])]
    m = _model(nodes, [(n, F, [1, 4]) for n in ins], [(out, F, [1, 4]), ("int", F, [1, 4])],
               [("k", np.full((1, 4), 0.5, np.float32))], name="../evil graph */")
    np.savez(tmp / "calib.npz", **{n: np.random.default_rng(0).standard_normal((4, 1, 4)).astype(np.float32)
                                   for n in ins})
    return _save(tmp, m, "names.onnx")


def test_70_alternating_mul_relu_compiles(tmp_path, capsys):
    code, err = run_tool("qcc", _qcc(tmp_path, _mul_relu_chain(tmp_path), "--report", tmp_path / "r.md",
                                     "--emit-ir", tmp_path / "m.qir"), capsys)
    assert code == 0, err
    graph = parse_file(tmp_path / "m.qir")
    assert sum(op.opname.startswith("qnn.") for op in graph.ops) >= 35
    code, err = run_tool("qcc-opt", [tmp_path / "m.qir", "-p", "check-quantized,dce", "-o", tmp_path / "m2.qir"],
                         capsys)
    assert code == 0, err


@needs_gcc
def test_hostile_names_compile_to_valid_c(tmp_path, capsys):
    import subprocess
    code, err = run_tool("qcc", _qcc(tmp_path, _hostile_names(tmp_path), "--emit-ir", tmp_path / "n.qir",
                                     "--report", tmp_path / "r.md"), capsys)
    assert code == 0, err
    out = tmp_path / "out"
    for c in ("net.c", "net_weights.c"):
        proc = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-I", str(out),
                               str(out / c)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    graph = parse_file(tmp_path / "n.qir")
    assert sorted(v.name for v in graph.inputs) == ["in-1", "in_1"]
    assert "n" * 5000 in {op.name for op in graph.ops}


def test_shapeless_graph_output_is_typed_by_inference(tmp_path, capsys):
    code, err = run_tool("qcc", _qcc(tmp_path, _shapeless_output(tmp_path), "--act-max", "x=2", "--act-max",
                                     "y=2", calib=None), capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "net.c").exists()
