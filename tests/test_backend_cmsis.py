"""cmsis backend on hand-built lowered graphs: emitted C (host gcc, sanitizers) == simulator, bit for bit.

Random graphs cover every op kind the backend compiles (conv2d plain / strided /
asymmetric padding / dilated / depthwise / grouped, per-tensor and per-channel
shifts, biases with bias_shift, ReLU clamps, dense, add with shifts, requantize
with left and right shifts, max/avg pool with padding and out_shift, lut,
lut_interp, softmax, pad, transpose, concat, reshape/flatten aliases), in q7
and q15, with two inputs and two outputs. Plus: every target compiles with
-Werror, output is deterministic, hostile names give valid C, writes are
all-or-nothing, and the qcc command's errors.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qcc.backends.cmsis import TARGETS, generate, harness
from qcc.fileio import write_files
from qcc.ir.graph import Graph
from qcc.ir.ops.qnn_softmax import lut_interp_table, lut_table, softmax_table, softmax_table_shift
from qcc.ir.types import FixedPoint, TensorType

REPO = Path(__file__).resolve().parents[1]
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc not installed")


class Builder:
    """Builds a lowered graph op by op with random integer parameters."""

    def __init__(self, name: str, bits: int, seed: int):
        self.g = Graph(name)
        self.rng = np.random.default_rng(seed)
        self.dtype = "i8" if bits == 8 else "i16"
        self.np = np.int8 if bits == 8 else np.int16
        self.lo, self.hi = (-128, 127) if bits == 8 else (-32768, 32767)
        self.wmax = 127 if bits == 8 else 300  # keeps q15 accumulators inside int32

    def t(self, shape, frac=4):
        return TensorType(tuple(shape), self.dtype, FixedPoint(frac))

    def input(self, name, shape, frac):
        x = self.g.add_input(name, TensorType(tuple(shape)))
        return self.g.add_op("q.quantize", [x], result_types=[self.t(shape, frac)]).result

    def op(self, opname, operands, attrs, name="", frac=4):
        op = self.g.add_op(opname, operands, attrs, name=name)
        op.result.type = op.result.type.with_quant(self.dtype, FixedPoint(frac))
        return op.result

    def weights(self, shape):
        return self.g.add_const(self.rng.integers(-self.wmax, self.wmax + 1, shape).astype(self.np))

    def shifts(self, n, per_channel, lo=4, hi=12):
        return [int(s) for s in self.rng.integers(lo, hi + 1, n if per_channel else 1)]

    def conv(self, x, cout, k, name, group=1, strides=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1), bias=True,
             per_channel=False, relu=False):
        cin = x.shape[3]
        w = self.weights((cout, k, k, cin // group))
        operands = [x, w]
        if bias:
            operands.append(self.g.add_const(self.rng.integers(-2000, 2000, cout).astype(np.int32)))
        attrs = {"strides": list(strides), "pads": list(pads), "dilations": list(dil), "group": group,
                 "bias_shift": self.shifts(cout, per_channel, 0, 3), "out_shift": self.shifts(cout, per_channel, 6, 12),
                 "act_min": 0 if relu else self.lo, "act_max": self.hi}
        return self.op("qnn.conv2d", operands, attrs, name)

    def graph(self, outputs, names):
        outs = [self.g.add_op("q.dequantize", [v], result_types=[TensorType(v.shape)]).result for v in outputs]
        self.g.set_outputs(outs, names)
        self.g.verify()
        return self.g


def random_graph(bits: int, seed: int) -> Graph:
    b = Builder(f"rand{bits}_{seed}", bits, seed)
    g, lo, hi = b.g, b.lo, b.hi
    x = b.input("image", (1, 9, 9, 4), 5)
    side = b.input("side", (1, 5, 5, 2), 3)
    c1 = b.conv(x, 8, 3, "conv1", pads=(1, 1, 1, 1), per_channel=True, relu=True)
    dw = b.conv(c1, 8, 3, "dw", group=8, strides=(2, 2), pads=(1, 0, 1, 1), per_channel=True)
    grouped = b.conv(dw, 8, 1, "grouped", group=2, bias=False)
    dil = b.conv(c1, 6, 3, "dilated", dil=(2, 2), strides=(1, 1), pads=(0, 1, 0, 1))
    rq = b.op("qnn.requantize", [grouped], {"out_shift": [-1], "act_min": lo, "act_max": hi}, "rq_left")
    added = b.op("qnn.add", [grouped, rq], {"a_shift": 3, "b_shift": 2, "out_shift": [4], "act_min": lo // 2,
                                           "act_max": hi // 2}, "add")
    mp = b.op("qnn.maxpool", [dil], {"kernel": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                    "act_min": lo, "act_max": hi}, "maxpool")
    ap = b.op("qnn.avgpool", [added], {"kernel": [2, 2], "strides": [2, 2], "pads": [1, 1, 0, 0],
                                      "count_include_pad": False, "out_shift": -1, "act_min": lo, "act_max": hi},
              "avgpool")
    ap2 = b.op("qnn.avgpool", [mp], {"kernel": [2, 2], "strides": [1, 1], "count_include_pad": True,
                                    "out_shift": 1, "act_min": lo, "act_max": hi}, "avgpool_pad")
    if bits == 8:
        table = lut_table(np.tanh, 4, 7)
        act = b.op("qnn.lut", [ap], {"table": table}, "tanh", frac=7)
    else:
        act = b.op("qnn.lut_interp", [ap], {"table": lut_interp_table(np.tanh, 12, 15)}, "tanh", frac=15)
    padded = b.op("nn.pad", [side], {"pads": [0, 0, 1, 0, 0, 1, 0, 1], "value": 3.0}, "pad")
    sq = b.op("nn.transpose", [padded], {"perm": [0, 2, 1, 3]}, "transpose")  # [1, 6, 6, 3]
    cat = b.op("nn.concat", [sq, sq], {"axis": 3}, "concat")  # [1, 6, 6, 6]
    mixed = b.conv(cat, 4, 3, "mixed", strides=(2, 2), pads=(0, 0, 1, 1))  # [1, 3, 3, 4]
    flat = b.op("nn.flatten", [mixed], {"axis": 1}, "flatten")
    flat2 = b.op("nn.reshape", [act], {"shape": [1, -1]}, "reshape")
    flat3 = b.op("nn.flatten", [ap2], {"axis": 1}, "flatten2")
    joined = b.op("nn.concat", [flat, flat2, flat3], {"axis": 1}, "join")
    k = joined.shape[1]
    dense = b.op("qnn.dense", [joined, b.weights((10, k)), g.add_const(b.rng.integers(-500, 500, 10).astype(np.int32))],
                 {"bias_shift": [2], "out_shift": b.shifts(10, True, 8, 12), "act_min": lo, "act_max": hi}, "fc",
                 frac=3)
    ts = softmax_table_shift(b.dtype, 3)
    sm_type = TensorType(dense.shape, b.dtype, FixedPoint(7 if bits == 8 else 15))
    sm = g.add_op("qnn.softmax", [dense], {"table": softmax_table(3, ts), "table_shift": ts},
                  result_types=[sm_type], name="softmax").result
    return b.graph([sm, dense], ["probs", "logits"])


def random_inputs(graph: Graph, count: int, seed: int):
    rng = np.random.default_rng(seed)
    out = {}
    for v in graph.inputs:
        x = rng.normal(0, 2.0, (count,) + v.shape).astype(np.float32)
        x[0].flat[:4] = [np.float32(0.5 / 32), -np.float32(0.5 / 32), 1e9, -1e9]  # ties and saturation
        out[v.name] = x
    return out


def compile_and_compare(graph: Graph, folder: Path, samples, name="net", float_output=False, **options):
    gen = generate(graph, name, "cortex-m4", float_output=float_output, **options)
    write_files({folder / k: v for k, v in gen.files.items()})
    count = harness.write_samples(folder / "in.bin", graph, samples)
    exe = harness.build_host(folder, gen.name)
    harness.run_host(exe, folder / "in.bin", folder / "out.bin")
    got = harness.read_outputs(folder / "out.bin", gen, count)
    assert_same_outputs(got, harness.simulate(graph, gen, samples))
    return gen, got


def compare_on_qemu(graph: Graph, folder: Path, samples, target="cortex-m4", name="net", **options):
    """The firmware for ``target`` under QEMU gives the simulator's outputs bit for bit."""
    gen = generate(graph, name, target, **options)
    write_files({folder / k: v for k, v in gen.files.items()})
    count = harness.write_samples(folder / "in.bin", graph, samples)
    harness.run_qemu(folder, folder / "in.bin", folder / "out.bin")
    got = harness.read_outputs(folder / "out.bin", gen, count)
    assert_same_outputs(got, harness.simulate(graph, gen, samples))
    return gen, got


def assert_same_outputs(got, want):
    """Device (or host C) outputs equal the simulator's bit for bit: integers, and floats by their bits."""
    for a, b in zip(got.quantized, want.quantized):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(got.floats, want.floats):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@needs_gcc
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_graph_matches_simulator(tmp_path, bits, seed):
    g = random_graph(bits, seed)
    gen, got = compile_and_compare(g, tmp_path, random_inputs(g, 12, seed))
    kinds = {s.kind for s in gen.plan.steps}
    assert {"qnn.conv2d", "qnn.dense", "qnn.add", "qnn.requantize", "qnn.maxpool", "qnn.avgpool", "qnn.softmax",
            "nn.pad", "nn.transpose", "nn.concat"} <= kinds
    assert ("qnn.lut" if bits == 8 else "qnn.lut_interp") in kinds
    # Outputs are not all saturated: the graph exercises real arithmetic.
    assert len(np.unique(got.quantized[1])) > 5


@needs_gcc
def test_float_output_api(tmp_path):
    g = random_graph(8, 3)
    gen, got = compile_and_compare(g, tmp_path, random_inputs(g, 4, 3), float_output=True)
    assert "float *out0" in gen.files["net.h"].decode()


def test_memory_plan_reuses_and_respects_lifetimes():
    g = random_graph(8, 0)
    from qcc.backends.cmsis.plan import make_plan
    plan = make_plan(g, inplace=False)  # without in-place layers: never below the lower bound
    assert plan.lower_bound <= plan.arena_size < sum(b.size for b in plan.buffers)
    for a in plan.buffers:
        assert a.offset % 8 == 0
        for b in plan.buffers:
            if a is not b and a.start <= b.end and b.start <= a.end:  # live together: disjoint bytes
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset
    # with in-place layers, overlaps are only the checked in-place pairs (tests/test_memory_plan.py)
    assert generate(g, "net", "cortex-m4").plan.arena_size <= plan.arena_size


def test_deterministic_output():
    a = generate(random_graph(16, 0), "net", "cortex-m7").files
    b = generate(random_graph(16, 0), "net", "cortex-m7").files
    assert a == b


def hostile_graph() -> Graph:
    evil = 'conv */ "q\\" \\\n x\u00e9\u4e2d ??/'
    b = Builder("bad */ name\n\u00e9", 8, 5)
    x = b.input("in */put\"\\\n\u00e9", (1, 4, 4, 2), 4)
    c = b.conv(x, 3, 3, evil, pads=(1, 1, 1, 1))
    c2 = b.conv(c, 3, 1, evil)  # the same name twice
    f = b.op("nn.flatten", [c2], {"axis": 1}, "1" + evil)
    return b.graph([f], ["out */\u00e9"])


@needs_gcc
def test_hostile_names_give_valid_c(tmp_path):
    g = hostile_graph()
    gen, _ = compile_and_compare(g, tmp_path, random_inputs(g, 3, 0), name="9 bad*/name")
    assert gen.name == "model_9_bad_name"
    for text in gen.files.values():
        text.decode("ascii")


def test_names_sanitized():
    from qcc.backends.cmsis.naming import c_comment, c_identifier
    assert c_identifier("int") == "int_"
    assert c_identifier("__x") == "x"
    assert c_identifier("") == "model"
    s = c_comment("a*/b/*c\nd??/\u00e9")
    assert "*/" not in s and "/*" not in s and "\n" not in s and "??" not in s and s.isascii()


@needs_arm
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_target_compiles_with_werror(tmp_path, target):
    g = random_graph(8, 0) if target != "cortex-m7" else random_graph(16, 0)
    gen = generate(g, "net", target)
    write_files({tmp_path / k: v for k, v in gen.files.items()})
    proc = subprocess.run(["make", "-s", "-C", str(tmp_path), "all", "net.elf"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(tmp_path / "build" / "net.o")],
                         capture_output=True, text=True).stdout
    # M55: the MVE dot products come ahead of SMLAD (helpers.j2; tests/test_backend_mve.py checks VMLADAVA).
    assert ("smlad" in dis) == TARGETS[target].has_dsp or target == "cortex-m55"


@needs_arm
@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm not installed")
@pytest.mark.parametrize("bits", [8, 16])
def test_random_graph_on_qemu_m4(tmp_path, bits):
    g = random_graph(bits, 7)
    compare_on_qemu(g, tmp_path, random_inputs(g, 8, 7))


def test_backend_handles_every_qnn_attribute():
    from qcc.backends.cmsis.layers import HANDLED_ATTRS
    from qcc.ir.registry import get_op, registered_ops
    for name in registered_ops():
        if name.startswith("qnn."):
            assert name in HANDLED_ATTRS, f"{name} has no cmsis kernel"
            assert set(get_op(name).attrs) == HANDLED_ATTRS[name], name


def test_targets_agree_with_firmware():
    import importlib.util
    import sys
    path = REPO / "examples" / "firmware" / "targets.py"
    if not path.exists():
        pytest.skip("examples/firmware is absent")
    spec = importlib.util.spec_from_file_location("qcc_firmware_targets", path)
    fw = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = fw  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(fw)
    finally:
        del sys.modules[spec.name]
    for name, t in TARGETS.items():
        f = fw.TARGETS[name]
        assert (t.cpu_flags, t.qemu_machine, t.linker_script) == (f.cpu_flags, f.qemu_machine, f.linker_script)


# ---------------------------------------------------------------- the qcc command
def _write_qir(graph: Graph, path: Path):
    from qcc.ir.printer import write_qir
    write_qir(graph, path)


def test_qcc_command_lowered_qir(tmp_path):
    from qcc.tools.compile import main
    _write_qir(random_graph(8, 0), tmp_path / "net.qir")
    out = tmp_path / "out" / "my-net.c"
    assert main([str(tmp_path / "net.qir"), "-o", str(out), "--target", "cortex-m0plus",
                 "--report", str(tmp_path / "r.json")]) == 0
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["Makefile", "firmware", "my_net.c", "my_net.h", "my_net_weights.c"]
    import json
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["arena_bytes"] > 0 and report["macs"] > 0


def test_qcc_command_errors_leave_nothing(tmp_path, capsys):
    from qcc.tools.compile import main
    onnx_model = REPO / "examples" / "digits" / "digits.onnx"
    out = tmp_path / "out" / "net.c"
    # A float model without calibration data: a clear message, no files.
    assert main([str(onnx_model), "-o", str(out), "--target", "cortex-m4"]) == 1
    assert "--calib" in capsys.readouterr().err
    assert not out.parent.exists()
    # An unsupported op in a lowered graph: exit code 2, no files.
    g = random_graph(8, 0)
    q = g.inputs[0]
    g.add_op("nn.relu", [q])
    _write_qir(g, tmp_path / "bad.qir")
    assert main([str(tmp_path / "bad.qir"), "-o", str(out), "--target", "cortex-m4"]) in (1, 2)
    assert not out.parent.exists()


def test_write_files_is_all_or_nothing(tmp_path):
    (tmp_path / "keep.h").write_text("old")
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "x").write_text("")
    # The last file cannot be written (its folder is a file): nothing changes.
    (tmp_path / "afile").write_text("")
    with pytest.raises(Exception):
        write_files({tmp_path / "keep.h": b"new", tmp_path / "new.c": b"x", tmp_path / "afile" / "z.c": b"y"})
    assert (tmp_path / "keep.h").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "blocker", "keep.h"]
    write_files({tmp_path / "keep.h": b"new", tmp_path / "sub" / "new.c": b"x"})
    assert (tmp_path / "keep.h").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "blocker", "keep.h", "sub"]
