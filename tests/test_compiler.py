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


def test_int8_scheme_with_16_bits_is_16x8(tmp_path):
    """--scheme int8 --bits 16: TFLite's 16x8 mode, every s8 layer on int16 activations."""
    code, folder = _qcc(tmp_path, "--scheme", "int8", "--bits", "16", "--report", tmp_path / "r.json")
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert {layer["op"] for layer in report["layers"]} <= {"s8.conv2d", "s8.maxpool", "s8.avgpool", "s8.dense"}
    text = (folder / "digits.c").read_text()
    assert "const int16_t *restrict x" in text and "int64_t acc" in text


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


@pytest.mark.parametrize("scheme", ["qmn", "int8"])
def test_method_and_per_tensor_reach_the_pipeline(tmp_path, scheme):
    """qcc --method / --per-tensor: the calibration method and one weight format per tensor."""
    from qcc.ir.parser import parse_file
    from qcc.ir.types import PerAxisQuant, UniformQuant
    from qcc.tools.compile import main as qcc_main
    digits = Path(__file__).resolve().parents[1] / "examples" / "digits"
    runs = {}
    for tag, extra in (("default", []), ("tuned", ["--method", "minmax", "--per-tensor"])):
        out = tmp_path / tag
        assert qcc_main([str(digits / "digits.onnx"), "-o", str(out / "net.c"), "--target", "cortex-m4",
                         "--calib", str(digits / "calib.npz"), "--scheme", scheme,
                         "--emit-ir", str(out / "net.qir"), *extra]) == 0
        runs[tag] = parse_file(out / "net.qir")
    def weight_scales(g):
        """The distinct scales of each constant weight tensor (one per output channel, or one)."""
        out = []
        for op in g.ops:
            t = op.result.type
            if op.opname == "qcc.const" and t.dtype == "i8" and t.rank >= 2:
                q = t.quant
                out.append(set(q.scales) if isinstance(q, PerAxisQuant) else
                           {q.scale if isinstance(q, UniformQuant) else q.frac_bits})
        return out

    tuned, default = weight_scales(runs["tuned"]), weight_scales(runs["default"])
    assert tuned and all(len(s) == 1 for s in tuned)        # one scale (format) per weight tensor
    assert any(len(s) > 1 for s in default)                 # per output channel by default


def test_unknown_method_is_a_usage_error(tmp_path, capsys):
    from qcc.tools.compile import main as qcc_main
    digits = Path(__file__).resolve().parents[1] / "examples" / "digits"
    with pytest.raises(SystemExit) as e:
        qcc_main([str(digits / "digits.onnx"), "-o", str(tmp_path / "net.c"), "--target", "cortex-m4",
                  "--calib", str(digits / "calib.npz"), "--method", "median"])
    assert e.value.code == 2 and "--method" in capsys.readouterr().err
    assert not (tmp_path / "net.c").exists()
