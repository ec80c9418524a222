"""The QAT example end to end: float training, qcc q7, fine-tuning with qcc's formats, QDQ export,
qcc again without calibration, 360 test digits on QEMU (Cortex-M4). Needs the ``train`` extra."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the QAT example needs PyTorch: pip install -e '.[train]'")
pytest.importorskip("sklearn", reason="the QAT example needs scikit-learn: pip install -e '.[train]'")

from qcc.backends.cmsis import harness  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


@pytest.mark.skipif(harness.tools_missing("arm-none-eabi-gcc", "qemu-system-arm", "make") is not None,
                    reason="needs arm-none-eabi-gcc, qemu-system-arm and make to run the firmware")
def test_fine_tuned_q7_is_at_least_as_accurate_on_qemu(tmp_path):
    import qat
    m = qat.main(tmp_path)
    ptq, tuned = m["ptq"], m["qat"]
    assert ptq["bit_exact"] == tuned["bit_exact"] == m["test_samples"] == 360
    assert ptq["qemu_accuracy"] == ptq["simulator_accuracy"] and tuned["qemu_accuracy"] == tuned["simulator_accuracy"]
    assert tuned["qemu_accuracy"] >= ptq["qemu_accuracy"]
    assert tuned["qemu_accuracy"] > 0.9
    # the fine-tuned model compiled from its own QDQ formats: no calibration data in that command
    assert (tmp_path / "qat" / "net.c").exists() and (tmp_path / "ptq.onnx.json").exists()
    # qcc compiled the fine-tuned model in exactly the formats it chose for the float one
    from qcc.ir.parser import parse_file

    def formats(folder):
        g = parse_file(tmp_path / folder / "net.qir")
        return sorted((op.opname, str(t.type)) for op in g.ops for t in op.operands + op.results
                      if t.type.quant is not None)
    assert formats("ptq") == formats("qat")
    assert ptq["arena_bytes"] == tuned["arena_bytes"] and ptq["weight_bytes"] == tuned["weight_bytes"]
    # the README states this run's numbers (seeded, single-threaded, torch pinned in the train extra)
    readme = (HERE / "README.md").read_text()
    for label, value in (("float", m["float_accuracy"]), ("post-training", ptq["qemu_accuracy"]),
                         ("fine-tuned", tuned["qemu_accuracy"])):
        row = re.search(rf"^\| q7 {label}.*$|^\| {label}.*$", readme, re.M)
        assert row is not None and f"{100 * value:.2f} %" in row.group(0), (label, value)
