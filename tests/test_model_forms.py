"""Model forms real networks use, compiled end to end under q7, q15 and int8 (issue 11).

* pools with partial windows: ceil_mode MaxPool / AveragePool, count_include_pad;
* 1-D Conv / MaxPool / AveragePool / BatchNormalization / GlobalAveragePool (N x C x L);
* BatchNormalization after Gemm / MatMul as a BN node, Mul + Add, or Add + Mul;
* degenerate (near-zero) output channels;
* Pad modes reflect / edge, Resize (nearest), ConvTranspose;
* a QDQ model with ceil_mode pools.

Each float model is checked against onnxruntime, then compiled with ``qcc``
(``compile_model``) and its C run on the host (gcc, address + undefined
sanitizers; one case in QEMU on a Cortex-M4) must equal the integer simulator
bit for bit; the C's SQNR against the float model is checked too.
"""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import helper

import qcc
from qcc.backends.cmsis import generate, harness
from qcc.frontend import load_onnx
from qcc.ir.parser import parse_file
from qcc.sim.interpreter import run_graph
from qcc.tools.compile import compile_model
from onnx_builders import build, check_against_ort, rand
from test_backend_models import check

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_qemu = pytest.mark.skipif(harness.tools_missing("arm-none-eabi-gcc", "qemu-system-arm", "make") is not None,
                                reason="arm-none-eabi-gcc, make or qemu-system-arm not installed")
SCHEMES = [pytest.param("qmn", 8, id="q7"), pytest.param("qmn", 16, id="q15"), pytest.param("int8", 8, id="int8")]
N = helper.make_node


def _save(tmp_path, model, x_shape, seed=3):
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rand(16, *x_shape, seed=seed))
    return path, calib


def compile_and_compare(model_path, calib, folder, scheme, bits, count=8, where="host", **options):
    """qcc the model; run ``count`` samples in C (host or QEMU) and assert they equal the simulator.

    Returns (lowered graph, generated model, C outputs, samples).
    """
    out = folder / "net.c"
    gen = compile_model(str(model_path), str(out), "cortex-m4", calib=str(calib) if calib else None, scheme=scheme,
                        bits=bits,
                        emit_ir=str(folder / "net.qir"), **options)
    graph = parse_file(folder / "net.qir")
    # The simulator needs the backend's plan of this very graph: generate it again from the emitted IR;
    # it must give the same files qcc wrote.
    gen_again = generate(graph, gen.name, "cortex-m4")
    for rel, data in gen_again.files.items():
        assert (folder / rel).read_bytes() == data, rel
    gen_again.warnings = gen.warnings
    gen = gen_again
    x = graph.inputs[0]
    samples = {x.name: rand(count, *x.shape, seed=11)}
    samples[x.name][0].flat[:2] = [40.0, -40.0]  # saturation at the input quantizer
    got, _ = check(graph, gen, folder, samples, where)  # C (host or QEMU) == simulator, bit for bit
    return graph, gen, got, samples


def sqnr_db(model_path, samples, got) -> float:
    """SQNR of the C outputs (dequantized) against the float model, over samples 1.. (0 saturates)."""
    f = load_onnx(str(model_path))
    name = f.inputs[0].name
    ref = np.stack([run_graph(f, {name: s})[f.output_names[0]] for s in samples[name][1:]])
    err = got.floats[0][1:] - ref
    return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum(err ** 2), 1e-30)))


# ---------------------------------------------------------------- pools with partial windows
def pool_model():
    """10x10 -> AvgPool k3 s2 p1 ceil count_include_pad (6x6, last window 1 past the padding) -> MaxPool k3 s2 ceil
    (3x3) -> AvgPool k2 s2 ceil (2x2, partial windows divide by in-bounds cells) -> AvgPool k3 p1 count_include_pad."""
    nodes = [N("Conv", ["x", "w", "b"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             N("Relu", ["c"], ["r"], name="relu1"),
             N("AveragePool", ["r"], ["p1"], name="avg_ceil_counted", kernel_shape=[3, 3], strides=[2, 2],
               pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1),
             N("MaxPool", ["p1"], ["p2"], name="max_ceil", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             N("AveragePool", ["p2"], ["p3"], name="avg_ceil", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
             N("AveragePool", ["p3"], ["y"], name="avg_counted", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
               count_include_pad=1)]
    inits = {"w": rand(4, 3, 3, 3, seed=1) * 0.3, "b": rand(4, seed=2) * 0.2}
    return build(nodes, {"x": [1, 3, 10, 10]}, ["y"], inits)


def test_partial_window_pools_match_onnxruntime_in_float():
    m = pool_model()
    g = check_against_ort(m, {"x": rand(1, 3, 10, 10, seed=5)})
    assert [op.result.shape for op in g.ops if op.opname.endswith("pool")] == \
        [(1, 4, 6, 6), (1, 4, 3, 3), (1, 4, 2, 2), (1, 4, 2, 2)]
    # the rewrite to in-bounds pools is exact in float
    x = rand(1, 3, 10, 10, seed=6)
    before = run_graph(g, {"x": x})["y"]
    result = qcc.PassManager.parse("legalize-pool").run(g)
    assert result.records[0].result.stats["applied.CeilModeToPadding"] == 2
    assert result.records[0].result.stats["applied.CountedPaddingToPad"] == 2
    assert not any(op.attrs.get("ceil_mode") or op.attrs.get("count_include_pad") for op in g.ops)
    np.testing.assert_allclose(run_graph(g, {"x": x})["y"], before, rtol=1e-6, atol=1e-6)


@needs_gcc
def test_ceil_mode_pools_of_a_qdq_model_compile(tmp_path):
    """A QDQ model (onnxruntime quantize_static) with ceil_mode pools: the int8 pipeline pads them too."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnx_builders import run_ort
    nodes = [N("Conv", ["x", "w", "b"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             N("Relu", ["c"], ["r"], name="relu1"),
             N("MaxPool", ["r"], ["p"], name="max_ceil", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             N("AveragePool", ["p"], ["y"], name="avg_ceil", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)]
    onnx.save(build(nodes, {"x": [1, 3, 10, 10]}, ["y"], {"w": rand(4, 3, 3, 3, seed=1) * 0.3,
                                                          "b": rand(4, seed=2) * 0.2}), tmp_path / "float.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"x": rand(1, 3, 10, 10, seed=s)} for s in range(8)])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    graph, _, got, samples = compile_and_compare(tmp_path / "qdq.onnx", None, tmp_path / "out", "int8", 8)
    assert [op.attrs["pads"] for op in graph.ops if op.opname in ("s8.maxpool", "s8.avgpool")] == \
        [[0, 0, 1, 1], [0, 0, 1, 1]]
    # onnxruntime's own int8 run of the QDQ model: within one output step (rounding inside its kernels)
    step = graph.outputs[0].producer.operands[0].type.quant.scale
    qdq = onnx.load(tmp_path / "qdq.onnx")
    for i in range(1, len(samples["x"])):
        want = run_ort(qdq, {"x": samples["x"][i]})["y"]
        assert np.abs(got.floats[0][i] - want).max() <= step * 1.01


@needs_qemu
def test_partial_window_pools_int8_on_qemu_m4_equal_simulator(tmp_path):
    path, calib = _save(tmp_path, pool_model(), (1, 3, 10, 10))
    compile_and_compare(path, calib, tmp_path / "out", "int8", 8, count=3, where="qemu")


# ---------------------------------------------------------------- 1-D layers
def conv1d_model():
    c = 6
    inits = {"w1": rand(c, 2, 5, seed=1) * 0.3, "b1": rand(c, seed=2) * 0.1,
             "g": np.abs(rand(c, seed=3)) + 0.5, "be": rand(c, seed=4) * 0.1, "m": rand(c, seed=5) * 0.1,
             "v": np.abs(rand(c, seed=6)) + 0.5, "w2": rand(c, 1, 3, seed=7) * 0.5}
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[2, 2], strides=[2]),
             N("BatchNormalization", ["c1", "g", "be", "m", "v"], ["bn"], name="bn1"),
             N("Relu", ["bn"], ["r1"], name="relu1"),
             N("Conv", ["r1", "w2"], ["c2"], name="dw", group=c, auto_pad="SAME_UPPER"),
             N("MaxPool", ["c2"], ["p1"], name="mp", kernel_shape=[3], strides=[2], ceil_mode=1),
             N("AveragePool", ["p1"], ["p2"], name="ap", kernel_shape=[3], pads=[1, 1], count_include_pad=1),
             N("GlobalAveragePool", ["p2"], ["y"], name="gap")]
    return build(nodes, {"x": [1, 2, 40]}, ["y"], inits)


def test_1d_layers_match_onnxruntime_and_batchnorm_folds():
    g = check_against_ort(conv1d_model(), {"x": rand(1, 2, 40, seed=9)})
    assert g.outputs[0].shape == (1, 6, 1)
    qcc.PassManager.parse("canonicalize,fold-batchnorm,canonicalize,fuse-activation").run(g)
    ops = [op.opname for op in g.ops if op.opname != "qcc.const"]
    assert "nn.batchnorm" not in ops and "nn.scale_shift" not in ops and "nn.relu" not in ops, ops
    assert [op.attrs["act"] for op in g.ops if op.opname == "nn.conv2d"] == ["relu", "none"]


# ---------------------------------------------------------------- BatchNormalization after a dense layer
def dense_bn_model():
    """Three exported forms of an inference BN after a dense layer, one per output:
    Gemm -> BatchNormalization, Gemm -> Mul -> Add, MatMul -> Add (bias) -> Add -> Mul."""
    k, n = 16, 5
    inits = {"w1": rand(n, k, seed=1) * 0.3, "b1": rand(n, seed=2) * 0.1,
             "g": np.abs(rand(n, seed=3)) + 0.5, "be": rand(n, seed=4) * 0.1, "m": rand(n, seed=5) * 0.1,
             "v": np.abs(rand(n, seed=6)) + 0.5,
             "w2": rand(n, k, seed=7) * 0.3, "b2": rand(n, seed=8) * 0.1, "s2": rand(n, seed=9), "t2": rand(n, seed=10),
             "w3": rand(k, n, seed=11) * 0.3, "b3": rand(n, seed=12) * 0.1, "t3": rand(1, n, seed=13),
             "s3": np.float32(1.5)}
    nodes = [N("Gemm", ["x", "w1", "b1"], ["d1"], name="fc_bn", transB=1),
             N("BatchNormalization", ["d1", "g", "be", "m", "v"], ["y1"], name="bn"),
             N("Gemm", ["x", "w2", "b2"], ["d2"], name="fc_muladd", transB=1),
             N("Mul", ["d2", "s2"], ["e2"], name="bn_mul"),
             N("Add", ["e2", "t2"], ["y2"], name="bn_add"),
             N("MatMul", ["x", "w3"], ["d3"], name="fc_addmul"),
             N("Add", ["d3", "b3"], ["e3"], name="fc_addmul_bias"),
             N("Add", ["t3", "e3"], ["f3"], name="bn_add2"),
             N("Mul", ["f3", "s3"], ["y3"], name="bn_mul2")]
    return build(nodes, {"x": [1, k]}, ["y1", "y2", "y3"], inits)


@pytest.mark.parametrize("cleanup", ["canonicalize,fold-batchnorm,canonicalize",  # qmn and int8-calibrated
                                     "fold-batchnorm,canonicalize"])               # fold-batchnorm first
def test_batchnorm_forms_after_dense_fold_into_it(cleanup):
    m = dense_bn_model()
    g = check_against_ort(m, {"x": rand(1, 16, seed=20)})
    xs = [rand(1, 16, seed=s) for s in range(21, 25)]
    before = [run_graph(g, {"x": x}) for x in xs]
    qcc.PassManager.parse(cleanup).run(g)
    assert [op.opname for op in g.ops if op.opname != "qcc.const"] == ["nn.dense"] * 3
    for x, want in zip(xs, before):
        got = run_graph(g, {"x": x})
        for name in ("y1", "y2", "y3"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


# ---------------------------------------------------------------- degenerate channels
def degenerate_model():
    w = rand(4, 3, 3, 3, seed=1) * 0.3
    w[2] = 1e-30 * rand(3, 3, 3, seed=5)        # a dead filter, as trained MobileNets keep them
    w2 = rand(5, 4 * 8 * 8, seed=3) * 0.1
    w2[1], w2[3] = 0.0, 1e-31
    nodes = [N("Conv", ["x", "w", "b"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             N("Relu", ["c"], ["r"], name="relu1"),
             N("Flatten", ["r"], ["f"], name="flat"),
             N("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1)]
    return build(nodes, {"x": [1, 3, 8, 8]}, ["y"],
                 {"w": w, "b": rand(4, seed=2) * 0.1 + 0.2, "w2": w2, "b2": rand(5, seed=4) * 0.1})


def test_degenerate_channels_take_the_coarsest_scale():
    from qcc.passes.quantize_affine import symmetric_weights
    from qcc.quant.weights import degenerate_channels
    w = np.array([[0.5, -0.25], [1e-30, -2e-30], [0.0, 0.0], [0.1, 0.05]], np.float32)
    assert degenerate_channels(w).tolist() == [False, True, True, False]
    q, s = symmetric_weights(w, per_channel=True)
    assert s[1] == s[2] == s[0] == np.float32(0.5 / 127) and not q[1:3].any()
    assert s[3] == np.float32(0.1 / 127) and q[3].tolist() == [127, 64]
    assert not degenerate_channels(np.zeros((3, 2))).any()  # all zero: each scheme's all-zero rule


@needs_gcc
@pytest.mark.parametrize("scheme, bits", SCHEMES)
def test_degenerate_channels_compile_the_same_with_and_without_report(tmp_path, scheme, bits):
    path, calib = _save(tmp_path, degenerate_model(), (1, 3, 8, 8))
    graph, gen, got, samples = compile_and_compare(path, calib, tmp_path / "a", scheme, bits)
    report = tmp_path / "b" / "report.md"
    gen_b = compile_model(str(path), str(tmp_path / "b" / "net.c"), "cortex-m4", calib=str(calib), scheme=scheme,
                          bits=bits, report=str(report))
    for f in ("net.c", "net.h", "net_weights.c"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    text = report.read_text()
    assert 'node "conv1" (Conv): output channel 2 (max |w| = ' in text
    assert 'node "fc" (Gemm): output channels 1 (max |w| = 0), 3 (max |w| = 1e-31)' in text
    assert gen_b.warnings == gen.warnings and any("conv1" in w for w in gen.warnings)
    conv = next(op for op in graph.ops if op.opname.endswith("conv2d"))
    if scheme == "int8":  # the dead channel requantizes like a live one: its output is the bias, not 0
        assert 0 not in conv.attrs["multiplier"]
        assert np.abs(conv.operands[2].constant()).max() < 2 ** 24
    else:
        assert max(conv.attrs["out_shift"]) <= 2 * bits
    assert sqnr_db(path, samples, got) > (40 if bits == 16 else 20)


# ---------------------------------------------------------------- Pad modes reflect and edge
def pad_model():
    inits = {"w1": rand(4, 3, 3, 3, seed=1) * 0.3, "b1": rand(4, seed=2) * 0.1, "w2": rand(4, 4, 3, 3, seed=3) * 0.2,
             "p1": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "p2": np.array([0, 0, 1, 1, 0, 0, 0, 2], np.int64)}
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
             N("Pad", ["c1", "p1"], ["q1"], name="pad_reflect", mode="reflect"),
             N("Conv", ["q1", "w2"], ["c2"], name="conv2"),
             N("Relu", ["c2"], ["r2"], name="relu2"),
             N("Pad", ["r2", "p2"], ["y"], name="pad_edge", mode="edge")]
    return build(nodes, {"x": [1, 3, 8, 8]}, ["y"], inits)


def test_reflect_and_edge_pads_match_onnxruntime():
    g = check_against_ort(pad_model(), {"x": rand(1, 3, 8, 8, seed=9)})
    assert [op.attrs["mode"] for op in g.ops if op.opname == "nn.pad"] == ["reflect", "edge"]


def test_reflect_padding_longer_than_the_axis_is_refused():
    from qcc.errors import QccError
    m = build([N("Pad", ["x", "p"], ["y"], mode="reflect")], {"x": [1, 3]}, ["y"],
              {"p": np.array([0, 3, 0, 0], np.int64)})
    with pytest.raises(QccError, match="reflect padding of 3 on axis 1 needs more than the 3 input elements"):
        load_onnx(m)


# ---------------------------------------------------------------- Resize (nearest)
@pytest.mark.parametrize("ctm", ["half_pixel", "pytorch_half_pixel", "asymmetric", "tf_half_pixel_for_nn",
                                 "align_corners"])
@pytest.mark.parametrize("nearest", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
def test_nearest_resize_matches_onnxruntime(ctm, nearest):
    """Up by 2 and 1.5, down to 3x4 (by sizes), odd factors: every coordinate mode and rounding."""
    for h, w, oh, ow, by_sizes in [(4, 5, 8, 10, False), (4, 6, 6, 9, True), (6, 9, 3, 4, True), (5, 5, 15, 10, False)]:
        if by_sizes:
            inits, ins = {"roi": np.zeros(0, np.float32), "scales": np.zeros(0, np.float32),
                          "sizes": np.array([1, 2, oh, ow], np.int64)}, ["x", "roi", "scales", "sizes"]
        else:
            inits, ins = {"roi": np.zeros(0, np.float32),
                          "scales": np.array([1, 1, oh / h, ow / w], np.float32)}, ["x", "roi", "scales"]
        m = build([N("Resize", ins, ["y"], mode="nearest", coordinate_transformation_mode=ctm, nearest_mode=nearest)],
                  {"x": [1, 2, h, w]}, ["y"], inits)
        g = check_against_ort(m, {"x": rand(1, 2, h, w, seed=1)})
        assert g.outputs[0].shape == (1, 2, oh, ow)
        assert {op.opname for op in g.ops} <= {"qcc.const", "nn.gather", "nn.reshape"}


def test_linear_resize_is_refused_by_name():
    from qcc.errors import UnsupportedModelError
    m = build([N("Resize", ["x", "", "s"], ["y"], name="up", mode="linear")], {"x": [1, 2, 4, 4]}, ["y"],
              {"s": np.array([1, 1, 2, 2], np.float32)})
    with pytest.raises(UnsupportedModelError, match=r'"up" \(Resize\): mode \'linear\' is not supported'):
        load_onnx(m)


def resize_model():
    """An upsampling block: conv -> nearest x2 (asymmetric, as Keras/TF export it) -> conv."""
    inits = {"w1": rand(4, 3, 3, 3, seed=1) * 0.3, "b1": rand(4, seed=2) * 0.1, "w2": rand(2, 4, 3, 3, seed=3) * 0.2,
             "s": np.array([1, 1, 2, 2], np.float32)}
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
             N("Relu", ["c1"], ["r1"], name="relu1"),
             N("Resize", ["r1", "", "s"], ["u"], name="up", mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             N("Conv", ["u", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    return build(nodes, {"x": [1, 3, 8, 8]}, ["y"], inits)


# ---------------------------------------------------------------- ConvTranspose
@pytest.mark.parametrize("k, s, p, out_pad, d, g", [
    (3, 2, 1, 1, 1, 1), (4, 2, 1, 0, 1, 1), (2, 2, 0, 0, 1, 1), (3, 1, 1, 0, 1, 1), (3, 2, 0, 0, 1, 2),
    (3, 3, 1, 2, 1, 1), (3, 2, 1, 1, 2, 1), (5, 2, 2, 1, 1, 4)])
def test_conv_transpose_matches_onnxruntime(k, s, p, out_pad, d, g):
    m = build([N("ConvTranspose", ["x", "w", "b"], ["y"], strides=[s, s], pads=[p, p, p, p],
                 output_padding=[out_pad, out_pad], dilations=[d, d], group=g)], {"x": [1, 4, 5, 6]}, ["y"],
              {"w": rand(4, 4 // g, k, k, seed=1), "b": rand(4, seed=2)})
    g_ = check_against_ort(m, {"x": rand(1, 4, 5, 6, seed=3)})
    assert [op.opname for op in g_.ops if op.opname == "nn.conv2d"] == ["nn.conv2d"]


def test_conv_transpose_that_crops_is_refused_by_name():
    from qcc.errors import UnsupportedModelError
    m = build([N("ConvTranspose", ["x", "w"], ["y"], name="up", pads=[2, 2, 2, 2])], {"x": [1, 2, 5, 5]}, ["y"],
              {"w": rand(2, 2, 2, 2, seed=1)})
    with pytest.raises(UnsupportedModelError, match=r'"up" \(ConvTranspose\): pads larger than the dilated kernel'):
        load_onnx(m)


def conv_transpose_model():
    """An encoder-decoder step: conv stride 2 -> ConvTranspose k3 s2 p1 output_padding 1 -> conv."""
    inits = {"w1": rand(4, 3, 3, 3, seed=1) * 0.3, "b1": rand(4, seed=2) * 0.1, "wt": rand(4, 4, 3, 3, seed=3) * 0.2,
             "bt": rand(4, seed=4) * 0.1, "w2": rand(2, 4, 3, 3, seed=5) * 0.2}
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], name="down", pads=[1, 1, 1, 1], strides=[2, 2]),
             N("Relu", ["c1"], ["r1"], name="relu1"),
             N("ConvTranspose", ["r1", "wt", "bt"], ["u"], name="up", strides=[2, 2], pads=[1, 1, 1, 1],
               output_padding=[1, 1]),
             N("Relu", ["u"], ["r2"], name="relu2"),
             N("Conv", ["r2", "w2"], ["y"], name="head", pads=[1, 1, 1, 1])]
    return build(nodes, {"x": [1, 3, 8, 8]}, ["y"], inits)


# ---------------------------------------------------------------- every form through qcc, C == simulator
def _lowered_ops(graph, scheme):
    """Op names of the lowered graph, the scheme's integer prefix (qnn. / s8.) dropped."""
    prefix = "s8" if scheme == "int8" else "qnn"
    return [op.opname.replace(prefix + ".", "") for op in graph.ops if op.opname not in ("qcc.const",)]


# model -> (builder, input shape, how many of these ops the lowered graph holds, in either scheme)
COMPILED = {
    "partial_window_pools": (pool_model, (1, 3, 10, 10), {"nn.pad": 2, "avgpool": 3, "maxpool": 1}),
    "1d_layers": (conv1d_model, (1, 2, 40), {"conv2d": 2, "maxpool": 1, "avgpool": 2, "nn.pad": 1}),
    "batchnorm_forms_after_dense": (dense_bn_model, (1, 16), {"dense": 3}),
    "reflect_and_edge_pads": (pad_model, (1, 3, 8, 8), {"nn.pad": 2, "conv2d": 2}),
    "nearest_resize": (resize_model, (1, 3, 8, 8), {"nn.gather": 2, "conv2d": 2}),
    "conv_transpose": (conv_transpose_model, (1, 3, 8, 8), {"conv2d": 3}),
}


@needs_gcc
@pytest.mark.parametrize("scheme, bits", SCHEMES)
@pytest.mark.parametrize("model", sorted(COMPILED))
def test_model_form_compiles_and_c_equals_simulator(tmp_path, model, scheme, bits):
    builder, shape, expected = COMPILED[model]
    check_against_ort(builder(), {"x": rand(*shape, seed=4)})
    path, calib = _save(tmp_path, builder(), shape)
    graph, _, got, samples = compile_and_compare(path, calib, tmp_path / "out", scheme, bits)
    ops = _lowered_ops(graph, scheme)
    assert {op: ops.count(op) for op in expected} == expected, ops
    # no float compute left: only the integer ops, shape ops and the boundary
    assert all(not op.startswith("nn.") or op in ("nn.pad", "nn.gather", "nn.reshape", "nn.transpose")
               for op in ops), ops
    assert sqnr_db(path, samples, got) > (40 if bits == 16 else 20)
