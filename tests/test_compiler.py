"""The qcc driver: scheme selection, reports, input shapes (the C itself is tested in test_backend_*)."""
import json
from pathlib import Path

import pytest

from qcc.tools.compile import main

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"


def _qcc(tmp_path, *extra):
    out = tmp_path / "out" / "digits.c"
    code = main([str(DIGITS / "digits.onnx"), "-o", str(out), "--target", "cortex-m4",
                 "--calib", str(DIGITS / "calib.npz"), *map(str, extra)])
    return code, out.parent


def test_markdown_report_has_sizes_memory_and_per_layer_error(tmp_path):
    code, folder = _qcc(tmp_path, "--report", tmp_path / "r.md")
    assert code == 0
    text = (tmp_path / "r.md").read_text()
    assert "| arena (peak RAM, input and output included) |" in text
    assert "## Memory per layer" in text and "## Quantization per layer" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [r.split("|")[2].strip() for r in rows] == ["qnn.conv2d", "qnn.conv2d", "qnn.maxpool",
                                                       "qnn.avgpool", "qnn.dense"]
    assert all(float(r.split("|")[5]) > 20 for r in rows)  # SQNR dB of every q7 layer


def test_json_report_and_int8_scheme_for_a_float_model(tmp_path):
    code, folder = _qcc(tmp_path, "--scheme", "int8", "--report", tmp_path / "r.json")
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert {layer["op"] for layer in report["layers"]} <= {"s8.conv2d", "s8.maxpool", "s8.avgpool", "s8.dense"}
    assert report["macs"] == 78976
    assert "s8" in (folder / "digits.c").read_text()


def test_int8_scheme_is_8_bit_only(tmp_path, capsys):
    code, folder = _qcc(tmp_path, "--scheme", "int8", "--bits", "16")
    assert code == 1 and "8-bit only" in capsys.readouterr().err
    assert not folder.exists()


def test_report_suffix_and_input_shape_errors_leave_nothing(tmp_path, capsys):
    code, folder = _qcc(tmp_path, "--report", tmp_path / "r.txt")
    assert code == 1 and "Markdown (.md) or JSON (.json)" in capsys.readouterr().err
    code, folder = _qcc(tmp_path, "--input-shape", "input=1x8x8")
    assert code == 1 and "declares 4" in capsys.readouterr().err
    assert not folder.exists() and not (tmp_path / "r.txt").exists()


def test_parallel_calibration_gives_the_same_c(tmp_path):
    code, one = _qcc(tmp_path / "one")
    assert code == 0
    code, two = _qcc(tmp_path / "two", "--jobs", "2")
    assert code == 0
    for name in ("digits.c", "digits.h", "digits_weights.c"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_flags_that_do_not_apply_are_refused_or_reported(tmp_path, capsys):
    code, folder = _qcc(tmp_path, "--kernels", "cmsis-nn")
    assert code == 1 and "no s8 layer" in capsys.readouterr().err
    assert not folder.exists()
    lowered = tmp_path / "lowered.qir"
    code, folder = _qcc(tmp_path, "--emit-ir", lowered)
    assert code == 0
    capsys.readouterr()
    out = tmp_path / "again" / "digits.c"
    assert main([str(lowered), "-o", str(out), "--target", "cortex-m4", "--calib", str(DIGITS / "calib.npz")]) == 0
    assert "ignoring --calib" in capsys.readouterr().err
    assert out.read_bytes() == (folder / "digits.c").read_bytes()
