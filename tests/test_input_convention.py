"""One input convention: real values in the model's units by default, --raw for stored integers, one
reader for every tool; qcc-data converts between .npz and the firmware's record files."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_model_path
from qcc.backends.cmsis import harness
from qcc.tools.cli import sim_main
from qcc.tools.compile import main as qcc_main
from qcc.tools.data import main as data_main

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"


@pytest.mark.parametrize("pipeline", [["-p", "int8"], []], ids=["-p int8", "default"])
def test_sim_takes_floats_for_a_qdq_model_and_matches_tflite_micro(tmp_path, capsys, pipeline):
    """With or without -p int8: a QDQ model is simulated as qcc compiles it (its int8 lowering)."""
    model = shared_model_path("kws_dscnn", "kws_dscnn_int8_qdq.onnx")
    gold_int8 = np.load(shared_model_path("kws_dscnn", "golden_int8.npz"))
    floats = np.load(shared_model_path("kws_dscnn", "golden_float.npz"))["input"]
    tflm = gold_int8["output_tflm"]
    np.savez(tmp_path / "f.npz", input_1=floats)
    # Real MFCC values in: quantized with the model's own scale 0.5847 and zero point 83, then int8 kernels.
    assert sim_main([str(model), *pipeline, "--inputs", str(tmp_path / "f.npz"), "-o", str(tmp_path / "y.npz")]) == 0
    y = np.load(tmp_path / "y.npz")["Identity"].reshape(tflm.shape)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, (tflm.astype(np.float32) + 128) / 256)  # output scale 1/256, zp -128
    # The same with the golden file's own key, and the stored integers both ways (--raw).
    assert sim_main([str(model), *pipeline, "--inputs", str(shared_model_path("kws_dscnn", "golden_int8.npz")),
                     "--input-key", "input", "--raw", "-o", str(tmp_path / "q.npz")]) == 0
    q = np.load(tmp_path / "q.npz")["Identity"].reshape(tflm.shape)
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, tflm)
    # Floats given where stored integers are announced: a message, not a silent cast.
    assert sim_main([str(model), *pipeline, "--inputs", str(tmp_path / "f.npz"), "--raw"]) == 1
    assert "needs an integer (stored values, --raw) array" in capsys.readouterr().err


def test_sample_layouts_are_the_same_for_every_tool(tmp_path, capsys):
    x = np.load(DIGITS / "test.npz")["input"][:6]                # [6, 1, 8, 8, 1]
    np.save(tmp_path / "flat.npy", x[:, 0])                      # [6, 8, 8, 1]: no batch axis
    np.save(tmp_path / "one.npy", x[0])                          # one sample, shaped like the input
    model = [str(DIGITS / "digits.onnx"), "-p", "qmn", "--calib", str(tmp_path / "flat.npy")]
    assert sim_main(model + ["--inputs", str(tmp_path / "flat.npy"), "-o", str(tmp_path / "a.npz")]) == 0
    assert sim_main(model + ["--inputs", str(DIGITS / "test.npz"), "-o", str(tmp_path / "b.npz")]) == 0
    assert sim_main(model + ["--inputs", str(tmp_path / "one.npy"), "-o", str(tmp_path / "c.npz")]) == 0
    a, b, c = (np.load(tmp_path / f"{k}.npz")["logits"] for k in "abc")
    assert a.shape == (6, 1, 10) and c.shape == (1, 10)
    np.testing.assert_array_equal(a, b[:6])
    np.testing.assert_array_equal(c, a[0])
    np.save(tmp_path / "bad.npy", x[:, 0, :7])
    assert sim_main(model + ["--inputs", str(tmp_path / "bad.npy")]) == 1
    assert "expected [N, 1, 8, 8, 1] or [N, 8, 8, 1] (N samples)" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
def test_data_pack_unpack_round_trip_through_the_firmware_harness(tmp_path):
    out = tmp_path / "build"
    assert qcc_main([str(DIGITS / "digits.onnx"), "-o", str(out / "digits.c"), "--target", "cortex-m4",
                     "--calib", str(DIGITS / "calib.npz"), "--emit-ir", str(out / "digits.qir")]) == 0
    qir = str(out / "digits.qir")
    assert data_main(["pack", qir, str(DIGITS / "test.npz"), "-o", str(out / "in.bin"), "--limit", "12"]) == 0
    assert (out / "in.bin").stat().st_size == 12 * 64 * 4
    # Input records back to arrays: the same samples.
    assert data_main(["unpack", qir, str(out / "in.bin"), "-o", str(tmp_path / "back.npz"), "--records", "inputs"]) == 0
    x = np.load(DIGITS / "test.npz")["input"][:12]
    np.testing.assert_array_equal(np.load(tmp_path / "back.npz")["input"], x)
    # The firmware main (host build, sanitizers on) writes output records; unpacked they equal qcc-sim's.
    harness.run_host(harness.build_host(out, "digits"), out / "in.bin", out / "out.bin")
    assert data_main(["unpack", qir, str(out / "out.bin"), "-o", str(tmp_path / "y.npz")]) == 0
    assert data_main(["unpack", qir, str(out / "out.bin"), "-o", str(tmp_path / "q.npz"), "--raw"]) == 0
    np.savez(tmp_path / "x.npz", input=x)
    assert sim_main([qir, "--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / "sim.npz")]) == 0
    assert sim_main([qir, "--inputs", str(tmp_path / "x.npz"), "--raw", "-o", str(tmp_path / "simq.npz")]) == 1
    np.testing.assert_array_equal(np.load(tmp_path / "y.npz")["logits"], np.load(tmp_path / "sim.npz")["logits"])
    q = np.load(tmp_path / "q.npz")["logits"]
    assert q.dtype == np.int8 and q.shape == (12, 1, 10)
    y = np.load(tmp_path / "y.npz")["logits"]
    ratio = y[q != 0] / q[q != 0]  # Qm.n: real = q * 2^-n, one n for the output
    assert ratio.size > 50 and np.all(ratio == ratio[0]) and float(np.log2(ratio[0])).is_integer()
    np.testing.assert_array_equal(q.astype(np.float32) * ratio[0], y)
    # Repacking the unpacked inputs gives the same bytes; a record file of the wrong size is refused.
    assert data_main(["pack", qir, str(tmp_path / "back.npz"), "-o", str(tmp_path / "again.bin")]) == 0
    assert (tmp_path / "again.bin").read_bytes() == (out / "in.bin").read_bytes()
    assert data_main(["unpack", qir, str(out / "in.bin"), "-o", str(tmp_path / "z.npz")]) == 1
    assert not (tmp_path / "z.npz").exists()
