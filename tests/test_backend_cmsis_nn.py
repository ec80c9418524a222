"""``--kernels cmsis-nn``: the s8 layers call the real CMSIS-NN library, bit-exact with TFLite Micro.

Without CMSIS-NN (the CI case) only the generated text is checked. With
``CMSIS_NN_DIR`` set to a CMSIS-NN source tree (github.com/ARM-software/CMSIS-NN,
kept outside this repository), the two QDQ models compile with
``--kernels cmsis-nn``, build on the host (gcc, ASan/UBSan, the library's
portable C) and under QEMU (Cortex-M4 with the DSP paths, via the generated
Makefile's ``make run``), and every golden sample equals TFLite Micro's output;
and qcc's scratch-size formulas (cmsis_nn.py) equal the library's own
``*_get_buffer_size`` functions for the no-extension, DSP and MVE variants.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import qcc
from qcc.backends.cmsis import generate, harness
from qcc.backends.cmsis import cmsis_nn
from qcc.backends.cmsis.plan import make_plan
from qcc.fileio import write_files
from qcc.ir.graph import Graph
from qcc.ir.types import TensorType, UniformQuant

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
MODEL_CASES = ["kws_dscnn", "ic_resnet8"]
CMSIS_NN_DIR = os.environ.get("CMSIS_NN_DIR", "")
needs_cmsis_nn = pytest.mark.skipif(
    not CMSIS_NN_DIR or not (Path(CMSIS_NN_DIR) / "Include" / "arm_nnfunctions.h").is_file(),
    reason="CMSIS_NN_DIR is not set to a CMSIS-NN source tree (github.com/ARM-software/CMSIS-NN)")
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_qemu = pytest.mark.skipif(harness.tools_missing("arm-none-eabi-gcc", "qemu-system-arm", "make") is not None,
                                reason="arm-none-eabi-gcc, make or qemu-system-arm not installed")


def _lowered(name: str) -> Graph:
    import qcc.passes  # noqa: F401  (registers the int8 pipeline)
    path = MODELS / name / f"{name}_int8_qdq.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared models folder is not checked out)")
    g = qcc.load_onnx(path)
    qcc.PassManager.parse("int8").run(g)
    return g


# ---------------------------------------------------------------- generated text (no CMSIS-NN needed)
@pytest.mark.parametrize("name", MODEL_CASES)
def test_cmsis_nn_calls_and_scratch(name):
    g = _lowered(name)
    own = generate(g, "net", "cortex-m4")
    gen = generate(g, "net", "cortex-m4", kernels="cmsis-nn")
    c = gen.files["net.c"].decode()
    assert '#include "arm_nnfunctions.h"' in c and "arm_convolve_wrapper_s8(" in c
    assert "arm_fully_connected_s8(" in c and "arm_softmax_s8(" in c and "arm_avgpool_s8(" in c
    assert "qcc_dot_s8_s8" not in c  # no qcc s8 kernel left
    assert not gen.warnings and gen.kernels == "cmsis-nn"
    # The scratch region follows the tensors: the arena grows by at most the scratch (plus alignment) over
    # qcc's out-of-place plan (CMSIS-NN layers never run in place; qcc's own kernels do, below that).
    assert gen.scratch_bytes > 0
    plain = make_plan(g, inplace=False).arena_size
    assert own.plan.arena_size < plain < gen.plan.arena_size <= plain + gen.scratch_bytes + 7
    assert f"#define NET_ARENA_SIZE {gen.plan.arena_size}" in gen.files["net.h"].decode()
    assert not any(gen.plan.is_inplace(s) for s in gen.plan.steps)
    make = gen.files["Makefile"].decode()
    assert "CMSIS_NN_DIR" in make and "CMSIS_NN_DIR" not in own.files["Makefile"].decode()
    if name == "kws_dscnn":
        assert "arm_depthwise_conv_wrapper_s8(" in c
    else:
        assert "arm_elementwise_add_s8(" in c


def test_single_rounding_and_requantize_stay_on_qcc_kernels():
    g = Graph("mix")
    x = g.add_input("x", TensorType((1, 4, 4, 8), "i8", UniformQuant(0.05, 3)))
    w = g.add_const(np.ones((8, 1, 1, 8), np.int8))
    conv = g.add_op("s8.conv2d", [x, w], dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1,
                                              input_zp=3, output_zp=0, multiplier=[1 << 30], shift=[-3],
                                              rounding="single", act_min=-128, act_max=127), name="conv")
    conv.result.type = conv.result.type.with_quant("i8", UniformQuant(0.05, 0))
    req = g.add_op("s8.requantize", [conv.result], dict(input_zp=0, output_zp=1, multiplier=[1 << 30], shift=[0],
                                                        act_min=-128, act_max=127), name="req")
    req.result.type = req.result.type.with_quant("i8", UniformQuant(0.1, 1))
    g.set_outputs([req.result])
    gen = generate(g, "mix", "cortex-m4", kernels="cmsis-nn")
    assert len(gen.warnings) == 2 and all("qcc's kernel" in w for w in gen.warnings)
    assert "arm_convolve_wrapper_s8" not in gen.files["mix.c"].decode()


def test_qcc_command_takes_kernels(tmp_path):
    from qcc.tools.compile import main
    path = MODELS / "kws_dscnn" / "kws_dscnn_int8_qdq.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    assert main([str(path), "-o", str(tmp_path / "kws.c"), "--target", "cortex-m7", "--kernels", "cmsis-nn"]) == 0
    assert "arm_convolve_wrapper_s8(" in (tmp_path / "kws.c").read_text()
    assert "CMSIS_NN_DIR" in (tmp_path / "Makefile").read_text()


# ---------------------------------------------------------------- the scratch formulas vs the library's
class Dims(ctypes.Structure):
    _fields_ = [("n", ctypes.c_int32), ("h", ctypes.c_int32), ("w", ctypes.c_int32), ("c", ctypes.c_int32)]


class Tile(ctypes.Structure):
    _fields_ = [("w", ctypes.c_int32), ("h", ctypes.c_int32)]


class Act(ctypes.Structure):
    _fields_ = [("min", ctypes.c_int32), ("max", ctypes.c_int32)]


class ConvParams(ctypes.Structure):
    _fields_ = [("input_offset", ctypes.c_int32), ("output_offset", ctypes.c_int32), ("stride", Tile),
                ("padding", Tile), ("dilation", Tile), ("activation", Act)]


class DwParams(ctypes.Structure):
    _fields_ = [("input_offset", ctypes.c_int32), ("output_offset", ctypes.c_int32), ("ch_mult", ctypes.c_int32),
                ("stride", Tile), ("padding", Tile), ("dilation", Tile), ("activation", Act)]


@pytest.fixture(scope="module")
def sizes_lib(tmp_path_factory):
    """The library's get_buffer_size sources as a host shared library (no extension; _dsp/_mve by name)."""
    src = Path(CMSIS_NN_DIR) / "Source"
    files = [src / "ConvolutionFunctions" / "arm_convolve_get_buffer_sizes_s8.c",
             src / "ConvolutionFunctions" / "arm_depthwise_conv_get_buffer_sizes_s8.c",
             src / "PoolingFunctions" / "arm_avgpool_get_buffer_sizes_s8.c"]
    so = tmp_path_factory.mktemp("nnsizes") / "libsizes.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-I", str(Path(CMSIS_NN_DIR) / "Include"), *map(str, files),
                    "-o", str(so)], check=True, capture_output=True)
    return ctypes.CDLL(str(so))


@needs_cmsis_nn
@needs_gcc
def test_scratch_formulas_equal_the_library(sizes_lib):
    rng = np.random.default_rng(7)
    suffix = {"none": "", "dsp": "_dsp", "mve": "_mve"}
    checked = 0
    for _ in range(400):
        h, w = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        c = int(rng.choice([1, 2, 3, 4, 8, 16, 130]))
        kh, kw = int(rng.choice([1, 3, 5])) if h > 1 else 1, int(rng.choice([1, 2, 3, 4]))
        sh, sw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        ph, pw = int(rng.integers(0, 2)), int(rng.integers(0, 2))
        dh, dw = int(rng.choice([1, 1, 2])), int(rng.choice([1, 1, 2]))
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if oh < 1 or ow < 1:
            continue
        cout = int(rng.choice([c, 2 * c, 8]))
        args = ((1, h, w, c), (cout, kh, kw, c), (1, oh, ow, cout), (sw, sh), (pw, ph), (dw, dh))
        cp = ConvParams(0, 0, Tile(sw, sh), Tile(pw, ph), Tile(dw, dh), Act(-128, 127))
        dp = DwParams(0, 0, cout // c if cout % c == 0 else 1, Tile(sw, sh), Tile(pw, ph), Tile(dw, dh),
                      Act(-128, 127))
        ind, outd = Dims(1, h, w, c), Dims(1, oh, ow, cout)
        for feat in ("none", "dsp", "mve"):
            f = getattr(sizes_lib, "arm_convolve_wrapper_s8_get_buffer_size" + suffix[feat])
            want = f(ctypes.byref(cp), ctypes.byref(ind), ctypes.byref(Dims(cout, kh, kw, c)), ctypes.byref(outd))
            assert cmsis_nn.conv_wrapper_buffer(feat, *args) == want, (feat, args)
            if cout % c == 0 and feat != "none":  # the generic (host) depthwise function is the no-extension one
                f = getattr(sizes_lib, "arm_depthwise_conv_wrapper_s8_get_buffer_size" + suffix[feat])
                want = f(ctypes.byref(dp), ctypes.byref(ind), ctypes.byref(Dims(1, kh, kw, cout)), ctypes.byref(outd))
                got = cmsis_nn.depthwise_wrapper_buffer(feat, (1, h, w, c), (1, kh, kw, cout), (1, oh, ow, cout),
                                                        (sw, sh), (pw, ph), (dw, dh))
                assert got == want, ("dw", feat, args)
            f = getattr(sizes_lib, "arm_avgpool_s8_get_buffer_size" + suffix[feat])
            assert cmsis_nn.avgpool_buffer(feat, c) == f(ow, c)
            checked += 1
        if cout % c == 0:
            f = sizes_lib.arm_depthwise_conv_wrapper_s8_get_buffer_size
            want = f(ctypes.byref(dp), ctypes.byref(ind), ctypes.byref(Dims(1, kh, kw, cout)), ctypes.byref(outd))
            assert cmsis_nn.depthwise_wrapper_buffer("none", (1, h, w, c), (1, kh, kw, cout), (1, oh, ow, cout),
                                                     (sw, sh), (pw, ph), (dw, dh)) == want
    assert checked > 500


# ---------------------------------------------------------------- the models on the host and in QEMU
class CompiledModel:
    def __init__(self, name: str, folder: Path):
        self.graph = _lowered(name)
        gold = np.load(MODELS / name / "golden_int8.npz")
        self.inputs = np.concatenate([gold["input"], gold["input_random"]])
        self.tflm = np.concatenate([gold["output_tflm"], gold["output_random_tflm"]])
        self.folder = folder
        self.gen = generate(self.graph, "net", "cortex-m4", kernels="cmsis-nn")
        write_files({folder / k: v for k, v in self.gen.files.items()})
        q = self.graph.inputs[0].type.quant  # (q - zp) * scale quantizes back to q exactly in C
        floats = (self.inputs.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)
        self.count = harness.write_samples(folder / "in.bin", self.graph, {self.graph.inputs[0].name: floats})

    def check(self, path: Path, what: str):
        got = harness.read_outputs(path, self.gen, self.count).quantized[0].reshape(self.tflm.shape)
        same = int((got == self.tflm).all(axis=1).sum())
        assert same == len(self.tflm), f"{what}: {same}/{len(self.tflm)} samples bit-exact with TFLite Micro"


@pytest.fixture(scope="module", params=MODEL_CASES)
def model(request, tmp_path_factory):
    return CompiledModel(request.param, tmp_path_factory.mktemp(f"nn_{request.param}"))


@pytest.fixture(scope="module")
def host_library(tmp_path_factory):
    """CMSIS-NN's integer sources compiled for this machine (portable C paths) with the sanitizers."""
    out = tmp_path_factory.mktemp("cmsis_nn_host")
    srcs = [str(p) for p in sorted((Path(CMSIS_NN_DIR) / "Source").glob("*/*.c"))
            if not p.stem.endswith(("_f16", "_f32"))]
    subprocess.run(["gcc", "-std=c99", "-O1", "-fsanitize=address,undefined", "-I",
                    str(Path(CMSIS_NN_DIR) / "Include"), "-c", *srcs], cwd=out, check=True, capture_output=True)
    return sorted(str(p) for p in out.glob("*.o"))


@needs_cmsis_nn
@needs_gcc
def test_cmsis_nn_model_on_host_matches_tflite_micro(model, host_library):
    extra = (*harness.HOST_CFLAGS, "-I", str(Path(CMSIS_NN_DIR) / "Include"))
    folder = model.folder
    exe = folder / "net_host"
    cmd = ["gcc", *extra, "-I", str(folder), "-I", str(folder / "firmware"), str(folder / "net.c"),
           str(folder / "net_weights.c"), str(folder / "firmware" / "net_main.c"),
           str(folder / "firmware" / "semihost_io.c"), *host_library, "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    harness.run_host(exe, folder / "in.bin", folder / "host_out.bin")
    model.check(folder / "host_out.bin", "host C + CMSIS-NN")


@needs_cmsis_nn
@needs_qemu
def test_cmsis_nn_model_on_qemu_m4_matches_tflite_micro(model):
    harness.run_qemu(model.folder, model.folder / "in.bin", model.folder / "qemu_out.bin",
                     make_vars=[f"CMSIS_NN_DIR={Path(CMSIS_NN_DIR).resolve()}"])
    model.check(model.folder / "qemu_out.bin", "QEMU Cortex-M4 + CMSIS-NN")
    dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(model.folder / "net.elf")],
                         capture_output=True, text=True).stdout
    assert "<arm_convolve_wrapper_s8>:" in dis and "smlad" in dis  # the library's DSP code is what ran
