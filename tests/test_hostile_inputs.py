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
