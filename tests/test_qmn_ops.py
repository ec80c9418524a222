"""Qm.n lowering of mul/sub/div, scale_shift, leaky_relu, hard_sigmoid/hard_swish, reduce_mean (issue 4).

Each op: ONNX model -> ``qmn`` pipeline -> integer simulator, compared with the
fake-quant float graph (within 1 LSB on almost every output) and the float
model (SQNR); the new integer ops qnn.mul / qnn.sub also run as emitted C on
the host (gcc, sanitizers) and must equal the simulator bit for bit.
"""
from __future__ import annotations

import copy
import math
import shutil
import zlib

import numpy as np
import pytest
from onnx import helper

import qcc
import qcc.sim.qmn  # noqa: F401
from qcc.errors import PassError
from qcc.sim.interpreter import run_graph
from qcc.passes.legalize_qmn import LegalizeQmn
from qcc.transforms.passmanager import PassManager

from onnx_builders import build
from test_backend_cmsis import Builder, compile_and_compare, random_inputs
from test_qmn import layer_local_agreement, quantize as quantize_with

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def _weights_per_test(request):
    """Each test draws its own weights, whatever ran before it (xdist spreads tests over workers)."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(request.node.name.encode()))


def _w(*shape, scale=0.3):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def conv_model(tail, inits, opset=13, out="y"):
    """x [1,3,8,8] -> two 3x3 convs c1, c2 (4 channels) -> ``tail`` nodes -> ``out``."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Conv", ["x", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2")] + tail
    return build(nodes, {"x": [1, 3, 8, 8]}, [out], {"w1": _w(4, 3, 3, 3), "w2": _w(4, 3, 3, 3), **inits},
                 opset=opset)


def quantize(model, tmp_path, pipeline="qmn", samples=32):
    """(float graph, fake-quant graph, lowered graph)."""
    path = tmp_path / "model.onnx"
    import onnx
    onnx.save(model, path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).standard_normal((samples, 1, 3, 8, 8)).astype(np.float32))
    return quantize_with(path, pipeline, calib)


def run_all(graph, xs):
    out = graph.output_names[0]
    return np.stack([run_graph(graph, {"x": x})[out] for x in xs])


def sqnr_db(ref, got):
    noise = np.sum((ref.astype(np.float64) - got) ** 2)
    return math.inf if noise == 0 else 10 * math.log10(np.sum(ref.astype(np.float64) ** 2) / noise)


def check_numerics(model, tmp_path, want_ops, pipeline="qmn", min_sqnr=25.0, min_within=0.98):
    """Every integer layer within 1 LSB of its fake-quant float op on the same inputs (on at least
    ``min_within`` of its outputs; end to end, 1-LSB tie differences get amplified by later scales),
    and the whole graph's SQNR against the float model above ``min_sqnr``."""
    fl, fake, q = quantize(model, tmp_path, pipeline)
    ops = {op.opname for op in q.ops}
    assert set(want_ops) <= ops, ops
    assert not {o for o in ops if o.startswith("nn.") and o not in
                ("nn.reshape", "nn.transpose", "nn.concat", "nn.pad", "nn.flatten")}, ops
    xs = np.random.default_rng(2).standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    for x in xs[:4]:
        local = layer_local_agreement(fake, q, {"x": x})
        checked = {op.opname for op in q.ops if op.name in local}
        assert set(want_ops) <= checked, (checked, local)
        assert min(local.values()) >= min_within, local
    ref, got = run_all(fl, xs), run_all(q, xs)
    assert sqnr_db(ref, got) > min_sqnr, sqnr_db(ref, got)
    return q


CASES = {
    "mul_per_channel": ([helper.make_node("Add", ["c1", "c2"], ["a"]), helper.make_node("Mul", ["a", "k"], ["y"])],
                        {"k": _w(4, 1, 1, scale=1.0)}, ["qnn.conv2d"]),
    "div_scalar": ([helper.make_node("Add", ["c1", "c2"], ["a"]), helper.make_node("Div", ["a", "k"], ["y"])],
                   {"k": np.float32(2.5)}, ["qnn.conv2d"]),
    "const_minus_x": ([helper.make_node("Add", ["c1", "c2"], ["a"]), helper.make_node("Sub", ["k", "a"], ["y"])],
                      {"k": _w(1, 4, 1, 1)}, ["qnn.conv2d"]),
    "mul_tensors": ([helper.make_node("Mul", ["c1", "c2"], ["y"])], {}, ["qnn.mul"]),
    "sub_tensors": ([helper.make_node("Sub", ["c1", "c2"], ["y"])], {}, ["qnn.sub"]),
    "batchnorm_alone": ([helper.make_node("Add", ["c1", "c2"], ["a"]),
                         helper.make_node("BatchNormalization", ["a", "g", "b", "m", "v"], ["y"])],
                        {"g": _w(4, scale=1.0), "b": _w(4), "m": _w(4), "v": np.abs(_w(4)) + 0.2}, ["qnn.conv2d"]),
    "leaky_relu_fused": ([helper.make_node("LeakyRelu", ["c1"], ["y"], alpha=0.1)], {}, ["qnn.lut"]),
    "leaky_relu_alone": ([helper.make_node("Concat", ["c1", "c2"], ["a"], axis=1),
                          helper.make_node("LeakyRelu", ["a"], ["y"], alpha=0.2)], {}, ["qnn.lut"]),
    "hard_sigmoid": ([helper.make_node("HardSigmoid", ["c1"], ["y"], alpha=0.25)], {}, ["qnn.lut"]),
    "reduce_mean": ([helper.make_node("ReduceMean", ["c1"], ["y"], axes=[2, 3], keepdims=0)], {}, ["qnn.avgpool"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("bits", [8, 16])
def test_op_simulator_vs_fake_quant(tmp_path, name, bits):
    tail, inits, want = CASES[name]
    if bits == 16:
        want = ["qnn.lut_interp" if w == "qnn.lut" else w for w in want]
    check_numerics(conv_model(tail, inits), tmp_path, want, pipeline=f"qmn{{bits={bits}}}",
                   min_sqnr=25.0 if bits == 8 else 50.0)


@pytest.mark.parametrize("bits", [8, 16])
def test_hard_swish(tmp_path, bits):
    model = conv_model([helper.make_node("HardSwish", ["c1"], ["y"])], {}, opset=14)
    check_numerics(model, tmp_path, ["qnn.lut" if bits == 8 else "qnn.mul"], pipeline=f"qmn{{bits={bits}}}",
                   min_sqnr=25.0 if bits == 8 else 50.0)


def test_division_by_a_tensor_is_a_named_error(tmp_path):
    model = conv_model([helper.make_node("Div", ["c1", "c2"], ["y"])], {})
    # refused by check-legal before calibration, in ONNX terms
    with pytest.raises(PassError, match=r'node "Div_\d+" \(Div\): only division by a constant scalar'):
        quantize(model, tmp_path)


def test_legalize_merges_and_folds():
    """mul then sub by constants after an add collapse into one scale_shift; after a conv they fold away."""
    model = conv_model([helper.make_node("Add", ["c1", "c2"], ["a"]), helper.make_node("Mul", ["a", "k"], ["m"]),
                        helper.make_node("Sub", ["m", "t"], ["s"]), helper.make_node("Mul", ["c1", "k2"], ["y0"]),
                        helper.make_node("Add", ["s", "y0"], ["y"])],
                       {"k": _w(4, 1, 1, scale=1.0), "t": np.float32(0.5), "k2": np.float32(3.0)})
    g = qcc.load_onnx(model)
    ref = run_graph(copy.deepcopy(g), {"x": np.ones((1, 3, 8, 8), np.float32)})["y"]
    PassManager.parse("canonicalize,fold-batchnorm,fuse-activation,to-nhwc").run(g)
    res = LegalizeQmn().run(g)
    PassManager.parse("dce").run(g)
    # mul + sub after the add merge into one; c1 * 3 stays a scale_shift (conv1 has two users).
    assert [op.opname for op in g.ops].count("nn.scale_shift") == 2
    assert res.stats["applied.MergeScaleShifts"] == 1
    assert not g.find("nn.mul") and not g.find("nn.sub")
    got = run_graph(g, {"x": np.ones((1, 3, 8, 8), np.float32)})["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- C == simulator
def mul_sub_graph(bits: int, seed: int):
    b = Builder(f"mulsub{bits}_{seed}", bits, seed)
    lo, hi = b.lo, b.hi
    x = b.input("x", (1, 4, 4, 3), 5)
    y = b.input("y", (1, 4, 4, 3), 3)
    prod = b.op("qnn.mul", [x, y], {"out_shift": [6], "act_min": lo, "act_max": hi}, "mul", frac=2)
    sq = b.op("qnn.mul", [x, x], {"out_shift": [-1], "act_min": 0, "act_max": hi}, "square", frac=11)
    diff = b.op("qnn.sub", [prod, y], {"a_shift": 1, "b_shift": 0, "out_shift": [1], "act_min": lo // 2,
                                       "act_max": hi}, "sub", frac=2)
    return b.graph([diff, sq], ["diff", "square"])


@needs_gcc
@pytest.mark.parametrize("bits", [8, 16])
def test_mul_sub_c_matches_simulator(tmp_path, bits):
    g = mul_sub_graph(bits, bits)
    gen, got = compile_and_compare(g, tmp_path, random_inputs(g, 10, bits))
    assert {"qnn.mul", "qnn.sub"} <= {s.kind for s in gen.plan.steps}
    assert len(np.unique(got.quantized[0])) > 5


def e2e_model():
    """Conv -> Add -> BatchNormalization (cannot fold) -> LeakyRelu -> Mul k -> Sub k -> HardSwish
    -> GlobalMaxPool -> Flatten -> Gemm."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Conv", ["x", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Add", ["c1", "c2"], ["a"], name="add"),
             helper.make_node("BatchNormalization", ["a", "g", "b", "m", "v"], ["bn"], name="bn"),
             helper.make_node("LeakyRelu", ["bn"], ["lr"], alpha=0.1, name="leaky"),
             helper.make_node("Mul", ["lr", "k"], ["mu"], name="mul"),
             helper.make_node("Sub", ["mu", "t"], ["su"], name="sub"),
             helper.make_node("HardSwish", ["su"], ["hs"], name="hswish"),
             helper.make_node("GlobalMaxPool", ["hs"], ["gp"], name="gmax"),
             helper.make_node("Flatten", ["gp"], ["fl"], name="flatten"),
             helper.make_node("Gemm", ["fl", "fw", "fb"], ["y"], transB=1, name="fc")]
    inits = {"w1": _w(6, 3, 3, 3), "w2": _w(6, 3, 3, 3), "g": _w(6, scale=1.0), "b": _w(6), "m": _w(6),
             "v": np.abs(_w(6)) + 0.2, "k": _w(6, 1, 1, scale=1.5), "t": np.float32(0.25), "fw": _w(5, 6),
             "fb": _w(5)}
    return build(nodes, {"x": [1, 3, 8, 8]}, ["y"], inits, opset=14)


@needs_gcc
def test_end_to_end_model_q7_and_c_bit_exact(tmp_path):
    fl, fake, q = quantize(e2e_model(), tmp_path)
    ops = [op.opname for op in q.ops]
    assert {"qnn.conv2d", "qnn.add", "qnn.lut", "qnn.maxpool", "qnn.dense"} <= set(ops)
    xs = np.random.default_rng(3).standard_normal((32, 1, 3, 8, 8)).astype(np.float32)
    ref, got = run_all(fl, xs), run_all(q, xs)
    assert sqnr_db(ref, got) > 25.0, sqnr_db(ref, got)
    compile_and_compare(q, tmp_path / "c", {"x": xs})
