"""Real models end to end: ONNX -> `qcc` (qmn q7/q15) -> C -> host gcc and QEMU == simulator, bit for bit.

examples/digits runs all 360 test samples (host: q7 and q15; QEMU: q7 on
cortex-m3/m4/m7, q15 on m4) and its device accuracy must equal the
simulator's. The MLPerf Tiny models in ../shared/models run their 20 golden
inputs (skipped when that folder is absent). Each QEMU run is one firmware
run over the whole batch.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from qcc.backends.cmsis import generate, harness
from qcc.ir.parser import parse_file

from test_backend_cmsis import assert_same_outputs

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "examples" / "digits"
SHARED = REPO.parent / "shared" / "models"
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_qemu = pytest.mark.skipif(harness.tools_missing("arm-none-eabi-gcc", "qemu-system-arm", "make") is not None,
                                reason="arm-none-eabi-gcc, qemu-system-arm or make not installed")


def compile_onnx(tmp: Path, onnx: Path, calib: Path, bits: int, target: str = "cortex-m4"):
    """The `qcc` command on a float model; returns (lowered graph, GeneratedModel, folder)."""
    from qcc.tools.compile import main
    folder = tmp / f"{onnx.stem}_{bits}_{target}"
    rc = main([str(onnx), "-o", str(folder / "net.c"), "--target", target, "--calib", str(calib),
               "--bits", str(bits), "--emit-ir", str(folder / "net.qir")])
    assert rc == 0
    graph = parse_file(folder / "net.qir")
    gen = generate(graph, "net", target)
    assert gen.files["net.c"] == (folder / "net.c").read_bytes()  # the .qir round trip compiles the same
    return graph, gen, folder


def check(graph, gen, folder: Path, samples, run: str):
    count = harness.write_samples(folder / "in.bin", graph, samples)
    if run == "host":
        harness.run_host(harness.build_host(folder, gen.name), folder / "in.bin", folder / "out.bin")
    else:
        harness.run_qemu(folder, folder / "in.bin", folder / "out.bin")
    got = harness.read_outputs(folder / "out.bin", gen, count)
    want = harness.simulate(graph, gen, samples)
    assert_same_outputs(got, want)
    return got, want


@pytest.fixture(scope="module")
def digits_test():
    data = np.load(DIGITS / "test.npz")
    return {"input": data["input"]}, data["labels"]


def _digits_accuracy(outputs, labels) -> int:
    return int((outputs.quantized[0].reshape(len(labels), -1).argmax(axis=1) == labels).sum())


@needs_gcc
@pytest.mark.parametrize("bits", [8, 16])
def test_digits_host(tmp_path, digits_test, bits):
    samples, labels = digits_test
    graph, gen, folder = compile_onnx(tmp_path, DIGITS / "digits.onnx", DIGITS / "calib.npz", bits)
    got, want = check(graph, gen, folder, samples, "host")
    assert _digits_accuracy(got, labels) == _digits_accuracy(want, labels) >= 350


@needs_qemu
@pytest.mark.parametrize("bits,target", [(8, "cortex-m4"), (16, "cortex-m4"), (8, "cortex-m3"), (8, "cortex-m7")])
def test_digits_qemu(tmp_path, digits_test, bits, target):
    samples, labels = digits_test
    graph, gen, folder = compile_onnx(tmp_path, DIGITS / "digits.onnx", DIGITS / "calib.npz", bits, target)
    got, want = check(graph, gen, folder, samples, "qemu")
    assert _digits_accuracy(got, labels) == _digits_accuracy(want, labels) >= 350


MLPERF = [("ic_resnet8", "ic_resnet8_float.onnx", None), ("kws_dscnn", "kws_dscnn_float.onnx", "mfcc_real_float.npy")]


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("model,onnx,calib", MLPERF)
@pytest.mark.parametrize("run", ["host", "qemu"])
def test_mlperf_models(tmp_path, model, onnx, calib, bits, run):
    folder = SHARED / model
    if not (folder / onnx).exists():
        pytest.skip(f"{folder / onnx} is absent (the shared models folder is not next to the repository)")
    if run == "host" and shutil.which("gcc") is None:
        pytest.skip("host gcc not installed")
    if run == "qemu" and harness.tools_missing("arm-none-eabi-gcc", "qemu-system-arm", "make"):
        pytest.skip("arm-none-eabi-gcc, qemu-system-arm or make not installed")
    golden = np.load(folder / "golden_float.npz")["input"][:, None]  # [samples, 1, ...]: one batch-1 graph input each
    calib_path = tmp_path / "calib.npy"
    np.save(calib_path, np.load(folder / calib)[:, None] if calib else golden)
    graph, gen, out = compile_onnx(tmp_path, folder / onnx, calib_path, bits)
    check(graph, gen, out, {graph.inputs[0].name: golden}, run)
