"""qcc-eval: float (onnxruntime), simulator and QEMU device on a labeled data set; its input errors."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from qcc.backends.cmsis import harness
from qcc.tools.eval import main as eval_main

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"
BASE = [str(DIGITS / "digits.onnx"), "--calib", str(DIGITS / "calib.npz"), "--data", str(DIGITS / "test.npz")]


def _row(out: str, label: str):
    line = next(line for line in out.splitlines() if line.startswith(label))
    return re.findall(r"(\d+)/(\d+) = [\d.]+ %", line), line


def test_eval_prints_simulator_and_qemu_accuracy_and_they_agree(capsys):
    if harness.tools_missing("arm-none-eabi-gcc", "qemu-system-arm", "make"):
        pytest.skip("arm-none-eabi-gcc, make or qemu-system-arm not installed")
    code = eval_main(BASE + ["--labels", "labels", "--limit", "40", "--target", "cortex-m4", "--device", "qemu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "40 of 360 samples" in err
    (fl_acc,), _ = _row(out, "float: onnxruntime")
    (sim_acc, sim_top1), _ = _row(out, "simulator (qmn q7)")
    (dev_acc, dev_top1, dev_exact), line = _row(out, "device (qemu cortex-m4)")
    assert sim_acc == dev_acc and sim_top1 == dev_top1 and sim_acc[1] == "40"
    assert dev_exact == ("40", "40")
    # Accuracy recomputed from the data: the float model gets these 40 samples right but a few.
    labels = np.load(DIGITS / "test.npz")["labels"][:40]
    assert int(fl_acc[0]) >= 38 and int(sim_acc[0]) >= 38 and len(labels) == 40
    assert re.search(r"\d+\.\d dB", line)


def test_eval_input_errors(capsys, tmp_path):
    assert eval_main(BASE + ["--labels", "nope", "--limit", "2"]) == 1
    assert "--labels: " in (err := capsys.readouterr().err) and "no array 'nope' (it holds: input, labels)" in err
    assert eval_main(BASE + ["--labels", "input", "--limit", "2"]) == 1
    assert "expected 360 integer class indices" in capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", input=np.zeros((5, 8, 9, 1), np.float32))
    assert eval_main(BASE[:3] + ["--data", str(tmp_path / "bad.npz")]) == 1
    err = capsys.readouterr().err
    assert "has shape [5, 8, 9, 1], but graph input 'input' has shape [1, 8, 8, 1]" in err
    assert "expected [N, 1, 8, 8, 1] or [N, 8, 8, 1]" in err and "Traceback" not in err
    np.savez(tmp_path / "other.npz", x=np.zeros((5, 8, 8, 1), np.float32))
    assert eval_main(BASE[:3] + ["--data", str(tmp_path / "other.npz"), "--input-key", "y"]) == 1
    assert "has no array 'y' (it holds: x)" in capsys.readouterr().err
    assert eval_main(BASE[:3] + ["--data", str(tmp_path / "other.npz"), "--input-key", "x", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "simulator (qmn q7)" in out and "3/3 = 100.00 %" in out  # all-zero images: top-1 equals float
