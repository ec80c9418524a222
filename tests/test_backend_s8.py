"""cmsis backend, affine int8 ``s8.*`` kernels: emitted C == simulator == TensorFlow Lite Micro, bit for bit.

- The two QDQ models (ic_resnet8, kws_dscnn) lowered by the ``int8`` pipeline:
  all 20 golden inputs and 10 stress inputs on the host (gcc, ASan/UBSan) and
  in QEMU (Cortex-M4, one firmware run per model) against TFLite Micro's
  outputs and the simulator.
- A random s8 graph with every kernel variant the models do not reach
  (grouped, dilated, depthwise with a channel multiplier, positive shifts,
  single rounding, per-tensor multipliers, max pooling, padded average
  pooling, requantize, multi-row softmax) against the simulator, on the host
  and in QEMU on a core with and one without the DSP extension.
- The ``qcc`` command compiles a QDQ model with no calibration data.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import qcc
import qcc.sim.s8  # noqa: F401  (registers the s8 kernels)
from qcc.backends.cmsis import generate, harness
from qcc.fileio import write_files
from qcc.ir.graph import Graph
from qcc.sim.interpreter import run_batched
from qcc.sim.s8 import quantize_multiplier, softmax_params
from qcc.ir.types import TensorType, UniformQuant

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
MODEL_CASES = ["kws_dscnn", "ic_resnet8"]
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_qemu = pytest.mark.skipif(harness.tools_missing("arm-none-eabi-gcc", "qemu-system-arm", "make") is not None,
                                reason="arm-none-eabi-gcc, make or qemu-system-arm not installed")


# ---------------------------------------------------------------- the QDQ models
def _model_path(name: str) -> Path:
    path = MODELS / name / f"{name}_int8_qdq.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared models folder is not checked out)")
    return path


class CompiledModel:
    """A QDQ model lowered to s8 ops, its C written to a folder, and its golden samples."""

    def __init__(self, name: str, folder: Path):
        import qcc.passes  # noqa: F401  (registers the int8 pipeline)
        self.name = name
        self.graph = qcc.load_onnx(_model_path(name))
        qcc.PassManager.parse("int8").run(self.graph)
        gold = np.load(MODELS / name / "golden_int8.npz")
        self.inputs = np.concatenate([gold["input"], gold["input_random"]])
        self.tflm = np.concatenate([gold["output_tflm"], gold["output_random_tflm"]])
        self.folder = folder
        self.gen = generate(self.graph, "net", "cortex-m4")
        write_files({folder / k: v for k, v in self.gen.files.items()})
        # The harness takes float records and quantizes them in C: (q - zp) * scale comes back as q exactly.
        q = self.graph.inputs[0].type.quant
        floats = (self.inputs.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)
        self.count = harness.write_samples(folder / "in.bin", self.graph, {self.graph.inputs[0].name: floats})

    def outputs(self, path: Path) -> np.ndarray:
        got = harness.read_outputs(path, self.gen, self.count).quantized[0]
        return got.reshape(self.tflm.shape)

    def simulated(self) -> np.ndarray:
        name = self.graph.inputs[0].name
        out = run_batched(self.graph, {name: self.inputs[:, None]})[self.graph.output_names[0]]
        return out.reshape(self.tflm.shape)


@pytest.fixture(scope="module", params=MODEL_CASES)
def model(request, tmp_path_factory):
    return CompiledModel(request.param, tmp_path_factory.mktemp(request.param))


def _assert_bit_exact(got: np.ndarray, want: np.ndarray, what: str):
    same = int((got == want).all(axis=1).sum())
    assert same == len(want), f"{what}: {same}/{len(want)} samples bit-exact\n{got}\n!=\n{want}"


def test_s8_model_plan_and_kernels(model):
    kinds = {s.kind for s in model.gen.plan.steps}
    assert kinds <= {"s8.conv2d", "s8.add", "s8.avgpool", "s8.dense", "s8.softmax", "stream"}, kinds
    assert model.gen.plan.inputs[0].value.type.dtype == "i8" and model.gen.plan.outputs[0].value.type.dtype == "i8"
    # TFLite Micro's own activation planner needs 16,000 (kws) / 49,152 (resnet) bytes.
    assert model.gen.plan.arena_size <= {"kws_dscnn": 16000, "ic_resnet8": 49152}[model.name]


@needs_gcc
def test_s8_model_on_host_matches_tflite_micro(model):
    exe = harness.build_host(model.folder, model.gen.name)
    harness.run_host(exe, model.folder / "in.bin", model.folder / "host_out.bin")
    got = model.outputs(model.folder / "host_out.bin")
    _assert_bit_exact(model.simulated(), model.tflm, "simulator vs TFLite Micro")
    _assert_bit_exact(got, model.tflm, "host C vs TFLite Micro")


@needs_qemu
def test_s8_model_on_qemu_m4_matches_tflite_micro(model):
    harness.run_qemu(model.folder, model.folder / "in.bin", model.folder / "qemu_out.bin")
    _assert_bit_exact(model.outputs(model.folder / "qemu_out.bin"), model.tflm, "QEMU Cortex-M4 vs TFLite Micro")
    dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(model.folder / "build" / "net.o")],
                         capture_output=True, text=True).stdout
    assert "smlad" in dis  # the DSP dot product is what ran


# ---------------------------------------------------------------- a random graph of every kernel variant
class S8Builder:
    """A lowered graph: float input -> q.quantize -> s8 ops with random parameters -> q.dequantize."""

    def __init__(self, seed: int):
        self.g = Graph(f"s8rand{seed}")
        self.rng = np.random.default_rng(seed)

    def zp(self) -> int:
        return int(self.rng.integers(-60, 61))

    def typed(self, op, zp: int):
        # Power-of-two scales keep the float boundary exact; the s8 arithmetic never reads them.
        op.result.type = op.result.type.with_quant("i8", UniformQuant(0.0625, zp))
        return op.result

    def multipliers(self, count: int, scale: float, rounding="double"):
        pairs = [quantize_multiplier(float(scale * self.rng.uniform(0.5, 2.0)), rounding) for _ in range(count)]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def conv(self, x, cout, k, name, group=1, strides=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1), per_channel=True,
             rounding="double", relu=False, bias=True, gain=1.0):
        cin = x.shape[3]
        kh, kw = (k, k) if isinstance(k, int) else k
        w = self.g.add_const(self.rng.integers(-127, 128, (cout, kh, kw, cin // group)).astype(np.int8))
        taps = kh * kw * cin // group
        operands = [x, w]
        if bias:
            operands.append(self.g.add_const(self.rng.integers(-3000, 3000, cout).astype(np.int32)))
        mult, shift = self.multipliers(cout if per_channel else 1, gain * 25.0 / (np.sqrt(taps) * 60 * 73), rounding)
        zp = self.zp()
        attrs = dict(strides=list(strides), pads=list(pads), dilations=list(dil), group=group,
                     input_zp=x.type.quant.zero_point, output_zp=zp, multiplier=mult, shift=shift,
                     rounding=rounding, act_min=zp if relu else -128, act_max=127)
        return self.typed(self.g.add_op("s8.conv2d", operands, attrs, name=name), zp)


def random_s8_graph(seed: int) -> Graph:
    b = S8Builder(seed)
    g = b.g
    x_in = g.add_input("image", TensorType((1, 9, 8, 4)))
    x = g.add_op("q.quantize", [x_in], result_types=[TensorType((1, 9, 8, 4), "i8", UniformQuant(0.0625, 7))]).result
    c1 = b.conv(x, 8, 3, "conv_pad", pads=(1, 1, 1, 1), relu=True)                  # row dots, padding fix-up
    c2 = b.conv(c1, 6, (2, 3), "strided", strides=(2, 2), pads=(0, 1, 1, 2), per_channel=False)
    c3 = b.conv(c1, 8, 3, "dilated", dil=(2, 2), pads=(2, 1, 2, 1))
    c4 = b.conv(c3, 8, 1, "grouped", group=2, bias=False, rounding="single")
    dw = b.conv(c1, 16, 3, "depthwise_x2", group=8, strides=(1, 2), pads=(1, 0, 1, 1))  # channel multiplier 2
    # Positive shifts: a multiplier above 1 (left shift before the high multiply).
    up = g.add_op("s8.requantize", [c4], dict(input_zp=c4.type.quant.zero_point, output_zp=-3,
                                              multiplier=[quantize_multiplier(2.7)[0]], shift=[quantize_multiplier(2.7)[1]],
                                              act_min=-100, act_max=90), name="requant_up")
    up = b.typed(up, -3)
    ma, sa = quantize_multiplier(0.5)
    mb, sb = quantize_multiplier(0.37)
    m, s = quantize_multiplier(1.3 / (1 << 20))
    added = b.typed(g.add_op("s8.add", [c4, up], dict(
        input_zp=[c4.type.quant.zero_point, -3], output_zp=5, left_shift=20, input_multiplier=[ma, mb],
        input_shift=[sa, sb], multiplier=[m], shift=[s], act_min=-120, act_max=120), name="add"), 5)
    mp = b.typed(g.add_op("s8.maxpool", [added], dict(kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                                       act_min=-50, act_max=127), name="maxpool"), 5)
    ap = b.typed(g.add_op("s8.avgpool", [dw], dict(kernel=[2, 3], strides=[2, 1], pads=[1, 1, 0, 1]),
                          name="avgpool"), dw.type.quant.zero_point)
    flat_mp = g.add_op("nn.reshape", [mp], {"shape": [1, -1]}, name="flat").result
    k = flat_mp.shape[1]
    wd = g.add_const(b.rng.integers(-127, 128, (12, k)).astype(np.int8))
    bd = g.add_const(b.rng.integers(-2000, 2000, 12).astype(np.int32))
    dm, ds = b.multipliers(12, 40.0 / (np.sqrt(k) * 60 * 73))
    fc = b.typed(g.add_op("s8.dense", [flat_mp, wd, bd], dict(input_zp=5, output_zp=-10, multiplier=dm, shift=ds),
                          name="fc"), -10)
    rows = g.add_op("nn.reshape", [fc], {"shape": [2, 6]}, name="rows").result
    sm_mult, sm_shift, diff_min = softmax_params(0.25)
    sm = b.typed(g.add_op("s8.softmax", [rows], dict(multiplier=sm_mult, shift=sm_shift, diff_min=diff_min),
                          name="softmax"), -128)
    outs = [g.add_op("q.dequantize", [v], result_types=[TensorType(v.shape)]).result for v in (sm, ap, c2)]
    g.set_outputs(outs, ["probs", "pooled", "strided"])
    g.verify()
    return g


def random_inputs(graph: Graph, count: int, seed: int):
    rng = np.random.default_rng(seed)
    v = graph.inputs[0]
    x = (rng.integers(-128, 128, (count,) + v.shape) * 0.0625 - 7 * 0.0625).astype(np.float32)
    x[0].flat[:2] = [1e9, -1e9]  # saturation at the quantizer
    return {v.name: x}


def _compare(gen, graph, got_path, samples, count):
    got = harness.read_outputs(got_path, gen, count)
    want = harness.simulate(graph, gen, samples)
    for a, b in zip(got.quantized + got.floats, want.quantized + want.floats):
        np.testing.assert_array_equal(a, b)
    return got


def _run_and_compare(folder, graph, samples, target, where):
    """Compile ``graph``, run ``samples`` on the host (gcc + sanitizers) or in QEMU, compare with the simulator."""
    gen = generate(graph, "net", target)
    write_files({folder / k: v for k, v in gen.files.items()})
    count = harness.write_samples(folder / "in.bin", graph, samples)
    if where == "host":
        harness.run_host(harness.build_host(folder, gen.name), folder / "in.bin", folder / "out.bin")
    else:
        harness.run_qemu(folder, folder / "in.bin", folder / "out.bin")
    return _compare(gen, graph, folder / "out.bin", samples, count)


@needs_gcc
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_s8_graph_on_host_matches_simulator(tmp_path, seed):
    g = random_s8_graph(seed)
    samples = random_inputs(g, 10, seed)
    gen = generate(g, "net", "cortex-m4")
    kinds = {s.kind for s in gen.plan.steps} | {op.opname for s in gen.plan.steps if s.chain for op in s.chain.ops}
    assert kinds >= {"s8.conv2d", "s8.requantize", "s8.add", "s8.maxpool", "s8.avgpool", "s8.dense", "s8.softmax"}
    write_files({tmp_path / k: v for k, v in gen.files.items()})
    count = harness.write_samples(tmp_path / "in.bin", g, samples)
    harness.run_host(harness.build_host(tmp_path, gen.name), tmp_path / "in.bin", tmp_path / "out.bin")
    got = _compare(gen, g, tmp_path / "out.bin", samples, count)
    for q in got.quantized:  # real arithmetic, not a saturated constant
        assert len(np.unique(q)) > 4


@needs_qemu
@pytest.mark.parametrize("target", ["cortex-m3", "cortex-m4"])  # portable loops, and SMLAD
def test_random_s8_graph_on_qemu_matches_simulator(tmp_path, target):
    g = random_s8_graph(3)
    _run_and_compare(tmp_path, g, random_inputs(g, 6, 3), target, "qemu")


def conv_edge_case_graph(seed: int) -> Graph:
    """Shapes the models do not reach: depthwise channel tails, asymmetric padding,
    odd channel counts and widths, shifts >= 0 that take the general requantization."""
    b = S8Builder(seed)
    g = b.g
    xi = g.add_input("image", TensorType((1, 7, 6, 6)))
    x = g.add_op("q.quantize", [xi], result_types=[TensorType((1, 7, 6, 6), "i8", UniformQuant(0.0625, -9))]).result
    d1 = b.conv(x, 6, 3, "dw6", group=6, pads=(1, 1, 1, 1), relu=True)
    d2 = b.conv(d1, 6, 3, "dw6s", group=6, strides=(2, 2), pads=(0, 1, 1, 0), gain=3000.0)
    c1 = b.conv(d1, 5, (3, 2), "odd", pads=(1, 0, 1, 1), gain=9000.0)
    c2 = b.conv(c1, 8, 1, "pw", strides=(2, 1))
    d3 = b.conv(c2, 8, 3, "dw_nopad", group=8)
    outs = [g.add_op("q.dequantize", [v], result_types=[TensorType(v.shape)]).result for v in (d2, d3, c1)]
    g.set_outputs(outs, ["a", "b", "c"])
    g.verify()
    return g


@needs_gcc
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_edge_cases_on_host_match_simulator(tmp_path, seed):
    g = conv_edge_case_graph(seed)
    assert any(s >= 0 for op in g.ops if op.opname == "s8.conv2d" for s in op.attrs["shift"])
    _run_and_compare(tmp_path, g, random_inputs(g, 5, seed), "cortex-m4", "host")


@needs_qemu
@pytest.mark.parametrize("target", ["cortex-m3", "cortex-m4"])
def test_conv_edge_cases_on_qemu_match_simulator(tmp_path, target):
    g = conv_edge_case_graph(1)
    _run_and_compare(tmp_path, g, random_inputs(g, 5, 1), target, "qemu")


def zero_zp_padding_graph(seed: int) -> Graph:
    """Ungrouped convs (the gemm path, rows too long for im2col) over an input with zero point 0 next to
    padding: the padding taps are skipped (no input_zp row), which once crashed the template; and a
    depthwise conv with 3 channels next to padding (no 4-channel block reads the packed zero point)."""
    b = S8Builder(seed)
    g = b.g
    xi = g.add_input("image", TensorType((1, 6, 5, 8)))
    x = g.add_op("q.quantize", [xi], result_types=[TensorType((1, 6, 5, 8), "i8", UniformQuant(0.0625, 0))]).result
    c1 = b.conv(x, 5, 3, "pad_zp0", pads=(1, 1, 1, 1))
    c2 = b.conv(x, 3, (1, 4), "row_zp0", pads=(0, 2, 0, 1), strides=(1, 2))
    c3 = b.conv(c1, 3, 1, "to3")
    dw = b.conv(c3, 3, 3, "dw3", group=3, pads=(1, 0, 1, 1))
    outs = [g.add_op("q.dequantize", [v], result_types=[TensorType(v.shape)]).result for v in (c2, dw)]
    g.set_outputs(outs, ["row", "dw"])
    g.verify()
    return g


@pytest.mark.parametrize("where", ["host", pytest.param("qemu", marks=needs_qemu)])
@needs_gcc
def test_zero_zp_padding_convs_match_simulator(tmp_path, where):
    g = zero_zp_padding_graph(4)
    got = _run_and_compare(tmp_path, g, random_inputs(g, 6, 4), "cortex-m4", where)
    for q in got.quantized:  # real arithmetic, not a saturated constant
        assert len(np.unique(q)) > 4


def test_backend_handles_every_s8_attribute():
    from qcc.backends.cmsis.layers import HANDLED_ATTRS
    from qcc.ir.registry import get_op, registered_ops
    for name in registered_ops():
        if name.startswith("s8."):
            assert set(get_op(name).attrs) == HANDLED_ATTRS[name], name


# ---------------------------------------------------------------- the qcc command on a QDQ model
@needs_gcc
def test_qcc_command_compiles_qdq_model_without_calibration(tmp_path):
    from qcc.tools.compile import main
    path = _model_path("kws_dscnn")
    out = tmp_path / "out" / "kws.c"
    assert main([str(path), "-o", str(out), "--target", "cortex-m4"]) == 0
    text = out.read_text()
    assert "qcc_s8_requant" in text and "qcc_dot_s8_s8" in text
    # Same C as the explicit scheme; an affine QDQ model (zero points, scales not 2^-n) refuses the Qm.n
    # scheme as an unsupported model, naming the tensor (power-of-two QDQ models compile: test_qat_roundtrip).
    assert main([str(path), "-o", str(tmp_path / "b" / "kws.c"), "--target", "cortex-m4", "--scheme", "int8"]) == 0
    assert (tmp_path / "b" / "kws.c").read_bytes() == out.read_bytes()
    assert main([str(path), "-o", str(tmp_path / "c" / "kws.c"), "--target", "cortex-m4", "--scheme", "qmn"]) == 2
    assert not (tmp_path / "c").exists()


def test_qcc_command_int8_scheme_on_a_float_model_needs_calibration(tmp_path, capsys):
    from qcc.tools.compile import main
    digits = Path(__file__).resolve().parents[1] / "examples" / "digits" / "digits.onnx"
    assert main([str(digits), "-o", str(tmp_path / "d.c"), "--target", "cortex-m4", "--scheme", "int8"]) == 1
    assert "--calib" in capsys.readouterr().err
    assert not (tmp_path / "d.c").exists()
