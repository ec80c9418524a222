"""`--float-layers`: chosen layers stay float32 between an exact dequantize and a quantize.

The contract (ARCHITECTURE.md, numerics contract):

- integer layers stay bit-exact with the simulator; in particular every
  integer tensor computed before the first float layer is equal in C;
- q.dequantize into a float layer is exact, q.quantize out of one rounds and
  saturates as the simulator does (bit-exact given the same float input);
- the float layers themselves are float32 loops in C whose summation order
  differs from numpy's (BLAS, pairwise sums), so they agree with the float
  interpreter within a tolerance, not bit for bit: per output tensor,
  |C - interpreter| <= RTOL * max|y| + one step of the output format.

The kernel tests read float results through an i32 quantize with a step of
about max|y| * 2^-29 (below float32's own rounding), so the comparison sees
the float32 values the C computed.
"""
from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from qcc.backends.cmsis import generate, harness
from qcc.errors import QccError
from qcc.fileio import write_files
from qcc.frontend import load_onnx
from qcc.ir.graph import Graph
from qcc.ir.printer import print_graph
from qcc.ir.parser import parse
from qcc.ir.types import FixedPoint, TensorType
from qcc.sim.interpreter import run_graph
from qcc.tools.compile import main as qcc_main
from qcc.transforms.passmanager import PassManager

from onnx_builders import build, rand

KWS = Path(__file__).resolve().parents[2] / "shared" / "models" / "kws_dscnn"
# float32 C vs the numpy interpreter, relative to the tensor's largest magnitude. Measured: 6.0e-7
# over every kernel case below (conv sums of up to 45 products); 1e-5 leaves room for longer sums.
RTOL = 1e-5
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("make") is None,
                               reason="arm-none-eabi-gcc or make not installed")
needs_qemu = pytest.mark.skipif(harness.tools_missing("arm-none-eabi-gcc", "qemu-system-arm", "make") is not None,
                                reason="arm-none-eabi-gcc, qemu-system-arm or make not installed")
needs_kws = pytest.mark.skipif(not (KWS / "kws_dscnn_float.onnx").exists(), reason="../shared/models/kws_dscnn is absent")

NHWC = {"layout": "NHWC"}
INF = math.inf


def _conv(cout, k, cin_g, **attrs):
    return ("f32.conv2d", {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1, **NHWC, **attrs},
            (cout, k, k, cin_g))


# (name, input shape(s), opname, attributes, weight shape or None, bias)
KERNEL_CASES = [
    ("conv_same_relu", [(1, 6, 7, 3)], *_conv(5, 3, 3, pads=[1, 1, 1, 1], act="relu"), True),
    ("conv_strided_dilated_leaky", [(1, 9, 8, 4)],
     *_conv(6, 3, 4, strides=[2, 1], pads=[2, 0, 1, 2], dilations=[2, 2], act="leaky_relu", act_alpha=0.1), True),
    ("depthwise_relu6", [(1, 7, 6, 8)], *_conv(8, 3, 1, group=8, strides=[2, 2], pads=[1, 0, 1, 1], act="relu6"),
     True),
    ("grouped_no_bias", [(1, 5, 5, 6)], *_conv(4, 1, 3, group=2), False),
    ("dense_relu", [(2, 24)], "f32.dense", {"act": "relu"}, (7, 24), True),
    ("dense_no_bias", [(1, 45)], "f32.dense", {}, (12, 45), False),
    ("add_relu", [(1, 4, 3, 5), (1, 4, 3, 5)], "f32.add", {"act": "relu"}, None, False),
    ("sub", [(1, 30), (1, 30)], "f32.sub", {}, None, False),
    ("mul", [(2, 3, 4), (2, 3, 4)], "f32.mul", {}, None, False),
    ("relu", [(1, 40)], "f32.relu", {}, None, False),
    ("clip", [(1, 40)], "f32.clip", {"min": -0.5, "max": 1.25}, None, False),
    ("clip_upper_only", [(1, 40)], "f32.clip", {"min": -INF, "max": 0.3}, None, False),
    ("leaky_relu", [(1, 40)], "f32.leaky_relu", {"alpha": 0.2}, None, False),
    ("sigmoid", [(1, 40)], "f32.sigmoid", {}, None, False),
    ("tanh", [(1, 40)], "f32.tanh", {}, None, False),
    ("softmax_last", [(1, 3, 4, 5)], "f32.softmax", {"axis": -1}, None, False),
    ("softmax_axis1", [(2, 6, 3)], "f32.softmax", {"axis": 1}, None, False),
    ("maxpool_ceil", [(1, 7, 6, 3)], "f32.maxpool",
     {"kernel": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": True, "dilations": [1, 1], **NHWC},
     None, False),
    ("maxpool_dilated", [(1, 8, 8, 2)], "f32.maxpool",
     {"kernel": [2, 2], "strides": [1, 2], "pads": [0, 1, 0, 1], "dilations": [2, 2], **NHWC}, None, False),
    ("avgpool_include_pad", [(1, 7, 5, 4)], "f32.avgpool",
     {"kernel": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": True, **NHWC}, None, False),
    ("avgpool_ceil_exclude_pad", [(1, 6, 7, 3)], "f32.avgpool",
     {"kernel": [3, 2], "strides": [2, 2], "pads": [1, 0, 0, 1], "ceil_mode": True, **NHWC}, None, False),
    ("global_avgpool", [(1, 5, 4, 6)], "f32.global_avgpool", dict(NHWC), None, False),
    ("global_maxpool", [(1, 5, 4, 6)], "f32.global_maxpool", dict(NHWC), None, False),
]


def kernel_graph(seed: int = 0):
    """One graph, one input and one output per case: quantize (i8, Q2.5) -> dequantize -> float layer ->
    quantize to a fine i32 format -> dequantize. Returns (graph, samples, {output name: float layer result})."""
    rng = np.random.default_rng(seed)
    g = Graph("float_kernels")
    samples, layer_out = {}, []
    for name, shapes, opname, attrs, wshape, bias in KERNEL_CASES:
        operands = []
        for k, shape in enumerate(shapes):
            x = g.add_input(f"{name}_x{k}", TensorType(tuple(shape)))
            q = g.add_op("q.quantize", [x], result_types=[TensorType(tuple(shape), "i8", FixedPoint(5))]).result
            operands.append(g.add_op("q.dequantize", [q], result_types=[TensorType(tuple(shape))]).result)
            xs = rng.normal(0, 1.2, (6, *shape)).astype(np.float32)
            xs[0].flat[:3] = [1e9, -np.inf, np.nan]   # saturate / NaN at the integer input: defined
            samples[x.name] = xs
        if wshape is not None:
            operands.append(g.add_const(rng.normal(0, 0.5, wshape).astype(np.float32), name=f"{name}_w"))
            if bias:
                operands.append(g.add_const(rng.normal(0, 0.3, wshape[0]).astype(np.float32), name=f"{name}_b"))
        layer_out.append(g.add_op(opname, operands, attrs, name=name).result)
    # A float chain: a dequantize read by two float layers and a float result read by a float layer and a
    # quantize stay separate steps (float buffers); the others fuse into the layers' kernels.
    x = g.add_input("chain_x0", TensorType((2, 10)))
    samples[x.name] = rng.normal(0, 1.5, (6, 2, 10)).astype(np.float32)
    q = g.add_op("q.quantize", [x], result_types=[TensorType((2, 10), "i16", FixedPoint(12))]).result
    d = g.add_op("q.dequantize", [q], result_types=[TensorType((2, 10))]).result
    both = g.add_op("f32.add", [g.add_op("f32.sigmoid", [d], name="chain_sigmoid").result,
                                g.add_op("f32.tanh", [d], name="chain_tanh").result], name="chain_add").result
    layer_out += [both, g.add_op("f32.softmax", [both], {"axis": 1}, name="chain_softmax").result]
    names = [c[0] for c in KERNEL_CASES] + ["chain_add", "chain_softmax"]
    g.set_outputs(layer_out, names)
    ref = [run_graph(g, {k: v[i] for k, v in samples.items()}) for i in range(6)]
    outs = []
    for v, name in zip(layer_out, names):
        top = max(float(np.max(np.abs(r[name]))) for r in ref)
        n = int(math.floor(math.log2(5e8 / top)))   # |y| * 2^n < 1e9: the quantize never clamps
        q = g.add_op("q.quantize", [v], result_types=[TensorType(v.shape, "i32", FixedPoint(n))]).result
        outs.append(g.add_op("q.dequantize", [q], result_types=[TensorType(v.shape)]).result)
    g.set_outputs(outs, names)
    g.verify()
    return g, samples


def assert_within_tolerance(got, want, graph):
    """Per output: |C - simulator| <= RTOL * max|y| + one output step; returns the worst relative error."""
    worst = 0.0
    for io, a, b in zip(graph_outputs(graph), got.quantized, want.quantized):
        step = 2.0 ** -io.type.quant.frac_bits
        top = float(np.max(np.abs(b.astype(np.float64)))) * step
        err = float(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64)))) * step
        assert err <= RTOL * top + step, (io, err, top)
        worst = max(worst, err / top if top else 0.0)
    return worst


def graph_outputs(graph):
    return [v.producer.operands[0] for v in graph.outputs]


def host_run(graph, folder: Path, samples, target="cortex-m4"):
    gen = generate(graph, "net", target)
    write_files({folder / k: v for k, v in gen.files.items()})
    count = harness.write_samples(folder / "in.bin", graph, samples)
    exe = harness.build_host(folder, gen.name)
    harness.run_host(exe, folder / "in.bin", folder / "out.bin")
    return gen, harness.read_outputs(folder / "out.bin", gen, count)


@needs_gcc
def test_float_kernels_match_interpreter_on_host(tmp_path):
    g, samples = kernel_graph()
    gen, got = host_run(g, tmp_path, samples)
    want = harness.simulate(g, gen, samples)
    worst = assert_within_tolerance(got, want, g)
    kinds = [s.kind for s in gen.plan.steps]
    assert set(kinds) >= {op for _, _, op, *_ in KERNEL_CASES}
    # only the chain's shared edges are steps of their own; the rest run inside the float kernels
    assert kinds.count("q.dequantize") == 1 and kinds.count("q.quantize") == 1
    print(f"float kernels: worst |C - interpreter| / max|y| = {worst:.2g}")
    # The exact edges: the integer inputs (quantize) feed exact dequantizes, so a layer that only moves
    # values (relu, clip, max pools) is bit-exact in C too.
    for k, (name, _, opname, *_r) in enumerate(KERNEL_CASES):
        if opname in ("f32.relu", "f32.clip", "f32.maxpool", "f32.global_maxpool", "f32.leaky_relu"):
            np.testing.assert_array_equal(got.quantized[k], want.quantized[k], err_msg=name)


@needs_qemu
def test_float_kernels_on_qemu_m4(tmp_path):
    """One batched firmware with every float kernel, hard-float cortex-m4 (FPv4-SP)."""
    g, samples = kernel_graph(seed=1)
    gen = generate(g, "net", "cortex-m4")
    write_files({tmp_path / k: v for k, v in gen.files.items()})
    count = harness.write_samples(tmp_path / "in.bin", g, samples)
    harness.run_qemu(tmp_path, tmp_path / "in.bin", tmp_path / "out.bin")
    got = harness.read_outputs(tmp_path / "out.bin", gen, count)
    worst = assert_within_tolerance(got, harness.simulate(g, gen, samples), g)
    print(f"float kernels on QEMU cortex-m4: worst |C - interpreter| / max|y| = {worst:.2g}")


@needs_arm
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m7", "cortex-m55", "cortex-m0plus"])
def test_float_kernels_build_with_werror(tmp_path, target):
    """FPU cores use hardware float; M0/M0+/M3 build the same C with soft-float (libgcc) as --float-output does."""
    g, _ = kernel_graph()
    gen = generate(g, "net", target)
    write_files({tmp_path / k: v for k, v in gen.files.items()})
    proc = subprocess.run(["make", "-s", "-C", str(tmp_path), "net.elf"],   # the Makefile's -Werror
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning" not in proc.stderr
    nm = subprocess.run(["arm-none-eabi-nm", str(tmp_path / "net.elf")], capture_output=True, text=True).stdout
    soft = "__aeabi_fmul" in nm
    assert soft == (target == "cortex-m0plus"), "soft-float helpers exactly on the core without an FPU"


def test_deterministic_and_round_trip():
    g, _ = kernel_graph()
    text = print_graph(g, elide_over=None)
    again = parse(text)
    assert print_graph(again, elide_over=None) == text
    a = generate(g, "net", "cortex-m4").files
    b = generate(again, "net", "cortex-m4").files
    assert a == b


# ---------------------------------------------------------------- the pipelines
def small_cnn():
    """conv -> relu -> depthwise conv -> relu -> + residual -> average pool -> flatten -> Gemm -> softmax,
    with the residual's integer input also a graph output (``early``)."""
    inits = {"w1": rand(8, 2, 3, 3, seed=1) * 0.4, "b1": rand(8, seed=2) * 0.1,
             "w2": rand(8, 1, 3, 3, seed=3) * 0.5, "b2": rand(8, seed=4) * 0.1,
             "wf": rand(8, 5, seed=5) * 0.5, "bf": rand(5, seed=6) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["early"], name="relu1"),
             helper.make_node("Conv", ["early", "w2", "b2"], ["c2"], name="dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Add", ["r2", "early"], ["s"], name="residual"),
             helper.make_node("GlobalAveragePool", ["s"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc"),
             helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1)]
    return build(nodes, {"x": [1, 2, 9, 8]}, ["y", "early"], inits)


def lower_small(tmp_path, scheme, bits, layers, seed=0):
    model = small_cnn()
    rng = np.random.default_rng(seed)
    calib = rng.normal(0, 1, (24, 1, 2, 9, 8)).astype(np.float32)
    np.save(tmp_path / "calib.npy", calib)
    graph = load_onnx(model)
    pipeline = "qmn" if scheme == "qmn" else "int8-calibrated"
    pm = PassManager.parse(f'{pipeline}{{bits={bits},float_layers="{layers}"}}')
    for p in pm.passes:
        p.context = {"calib": str(tmp_path / "calib.npy"), "act_max": {}}
    report = pm.run(graph)
    stats = next(r.result.stats for r in report.records if r.pass_.name == "float-layers")
    # test samples from the calibration set: no input beyond the calibrated range (no saturation)
    return load_onnx(model), graph, {"x": calib[:10]}, stats


@needs_gcc
@pytest.mark.parametrize("scheme,bits", [("qmn", 8), ("qmn", 16), ("int8", 8), ("int8", 16)])
def test_pipeline_keeps_layers_float_and_c_matches(tmp_path, scheme, bits):
    float_graph, graph, samples, stats = lower_small(tmp_path, scheme, bits, "dw,pool,fc")
    # three layers kept; one range removed (pool -> flatten -> fc chains in float)
    assert stats == {"float_layers": 3, "float_edges": 1}
    kinds = [op.opname for op in graph.ops]
    assert {k for k in kinds if k.startswith("f32.")} == {"f32.conv2d", "f32.global_avgpool", "f32.dense"}
    # the chain pool -> flatten -> fc stays float: no quantize between its layers
    pool = next(op for op in graph.ops if op.opname == "f32.global_avgpool")
    flat = graph.users(pool.result)[0]
    assert [u.opname for u in graph.users(flat.result)] == ["f32.dense"]
    # the depthwise reads an exact dequantize of the integer conv1 output; fc ends in a quantize
    dw = next(op for op in graph.ops if op.opname == "f32.conv2d")
    assert dw.operands[0].producer.opname == "q.dequantize"
    assert not any(op.opname.startswith("nn.") and op.result.type.is_float and op.opname != "nn.reshape"
                   for op in graph.ops)
    gen, got = host_run(graph, tmp_path / "c", samples)
    want = harness.simulate(graph, gen, samples)
    early = [i for i, io in enumerate(gen.plan.outputs) if io.name == "early"][0]
    # Integer tensors before the first float layer: bit-exact.
    np.testing.assert_array_equal(got.quantized[early], want.quantized[early])
    # After the float layers: the softmax output within one step of its format.
    final = 1 - early
    assert np.max(np.abs(got.quantized[final].astype(np.int64) - want.quantized[final].astype(np.int64))) <= 1
    agree = np.mean(got.floats[final].argmax(-1) == want.floats[final].argmax(-1))
    assert agree == 1.0


def _sqnr(ref, got):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return 10 * math.log10(np.sum(ref ** 2) / max(np.sum((ref - got) ** 2), 1e-30))


@pytest.mark.parametrize("scheme", ["qmn", "int8"])
def test_all_float_layers_track_the_float_model(tmp_path, scheme):
    """With every compute layer float, only the quantized input and output remain: the simulator's result is
    the float model's up to those two roundings (the float layers run the interpreter's float32 kernels)."""
    float_graph, graph, samples, stats = lower_small(tmp_path, scheme, 16, "conv1,dw,residual,pool,fc,softmax")
    assert stats["float_layers"] == 6
    assert not any(op.opname.startswith(("qnn.", "s8.")) for op in graph.ops)
    ref = [run_graph(float_graph, {"x": x})["y"] for x in samples["x"]]
    got = [run_graph(graph, {"x": x})["y"] for x in samples["x"]]
    assert _sqnr(ref, got) > 60.0   # 16-bit input and output quantization only


def test_unknown_name_lists_close_matches(tmp_path):
    with pytest.raises(QccError, match=r"no layer named 'dw2' \(close matches: 'dw'") as e:
        lower_small(tmp_path, "qmn", 8, "dw2")
    assert e.value.exit_code == 1


def test_fused_node_is_named_as_such(tmp_path):
    with pytest.raises(QccError, match=r'node "relu1" \(Relu\) is no longer a layer of its own') as e:
        lower_small(tmp_path, "int8", 8, "relu1")
    assert e.value.exit_code == 1


def test_unsupported_op_is_refused_naming_it(tmp_path):
    """A float layer needs a float C kernel: a Flatten (a reshape here) is no compute layer."""
    with pytest.raises(QccError, match=r'node "flatten" \(Flatten\) is nn.reshape, which has no float32 C kernel') as e:
        lower_small(tmp_path, "qmn", 8, "flatten")
    assert e.value.exit_code == 2


def test_qcc_command_and_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QCC_REPORT_CYCLES", "0")
    model = tmp_path / "m.onnx"
    model.write_bytes(small_cnn().SerializeToString())
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(0, 1, (8, 1, 2, 9, 8)).astype(np.float32))
    base = [str(model), "--target", "cortex-m4", "--calib", str(tmp_path / "calib.npy")]
    assert qcc_main(base + ["-o", str(tmp_path / "ok" / "net.c"), "--float-layers", "dw",
                            "--float-layers", "fc,softmax", "--report", str(tmp_path / "report.md")]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "Float layers (--float-layers" in report and "`dw` (f32.conv2d)" in report and "`fc` (f32.dense)" in report
    c = (tmp_path / "ok" / "net.c").read_text()
    assert "fused q.dequantize" in c and "fused q.quantize" in c and c.count("float32 (--float-layers") == 3
    assert qcc_main(base + ["-o", str(tmp_path / "bad" / "net.c"), "--float-layers", "nope"]) == 1
    assert "no layer named 'nope'" in capsys.readouterr().err
    assert qcc_main(base + ["-o", str(tmp_path / "bad" / "net.c"), "--float-layers", "flatten"]) == 2
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------- the real model
@needs_kws
@needs_gcc
def test_kws_worst_layer_in_float(tmp_path):
    """kws_dscnn q7 with its depthwise Conv__95 (the lowest own SQNR in the report) in float: C equals the
    simulator on the 22 real clips (the float conv's rounding never moves a quantized value there)."""
    out = tmp_path / "net.c"
    assert qcc_main([str(KWS / "kws_dscnn_float.onnx"), "-o", str(out), "--target", "cortex-m4",
                     "--calib", str(KWS / "mfcc_real_float.npy"), "--float-layers", "Conv__95",
                     "--emit-ir", str(tmp_path / "net.qir")]) == 0
    from qcc.ir.parser import parse_file
    graph = parse_file(tmp_path / "net.qir")
    assert [op.name for op in graph.ops if op.opname.startswith("f32.")] == ["Conv__95"]
    x = np.load(KWS / "mfcc_real_float.npy").astype(np.float32).reshape(-1, 1, 49, 10, 1)
    samples = {graph.inputs[0].name: x}
    gen, got = host_run(graph, tmp_path / "host", samples)
    want = harness.simulate(graph, gen, samples)
    diff = np.abs(got.quantized[0].astype(np.int64) - want.quantized[0].astype(np.int64))
    assert diff.max() <= 1
    assert np.mean(got.floats[0].argmax(-1) == want.floats[0].argmax(-1)) == 1.0
    # the float conv dequantizes as it loads and quantizes as it stores: no float buffer, the arena holds
    # its int8 input and output (the integer layers around it no longer stream through it)
    assert gen.plan.arena_size <= 2 * 25 * 5 * 64


def test_every_float_layer_op_has_a_kernel_honouring_its_attributes():
    """Each f32 op mirrors its nn op, has the interpreter's kernel, and the back end honours every attribute."""
    from qcc.backends.cmsis.layers import HANDLED_ATTRS
    from qcc.ir.ops.f32 import FLOAT_LAYER_OPS, f32_name
    from qcc.ir.registry import get_op, registered_ops
    from qcc.sim.interpreter import KERNELS
    f32_ops = sorted(n for n in registered_ops() if n.startswith("f32."))
    assert f32_ops == sorted(f32_name(n) for n in FLOAT_LAYER_OPS)
    for name in f32_ops:
        nn = "nn." + name[4:]
        assert get_op(name).attrs == get_op(nn).attrs and get_op(name).operands == get_op(nn).operands
        assert KERNELS[name] is KERNELS[nn]
        assert set(get_op(name).attrs) == HANDLED_ATTRS[name], name


def test_emit_onnx_exports_float_layers_as_float_ops(tmp_path, monkeypatch):
    """--emit-onnx writes a float layer as its float ONNX op between DequantizeLinear and QuantizeLinear;
    onnxruntime runs it."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx_builders import run_ort
    model = tmp_path / "m.onnx"
    model.write_bytes(small_cnn().SerializeToString())
    calib = np.random.default_rng(0).normal(0, 1, (8, 1, 2, 9, 8)).astype(np.float32)
    np.save(tmp_path / "calib.npy", calib)
    assert qcc_main([str(model), "--target", "cortex-m4", "--calib", str(tmp_path / "calib.npy"), "-o",
                     str(tmp_path / "c" / "net.c"), "--float-layers", "dw,fc", "--emit-onnx", str(tmp_path / "q.onnx"),
                     "--emit-ir", str(tmp_path / "net.qir")]) == 0
    exported = onnx.load(str(tmp_path / "q.onnx"))
    kinds = {n.name: n.op_type for n in exported.graph.node}
    assert kinds.get("dw") == "Conv" and kinds.get("fc") in ("Gemm", "MatMul")
    from qcc.ir.parser import parse_file
    graph = parse_file(tmp_path / "net.qir")
    for x in calib[:4]:
        got = run_ort(exported, {"x": x})["y"]
        want = run_graph(graph, {"x": x})["y"]
        assert np.argmax(got) == np.argmax(want)
