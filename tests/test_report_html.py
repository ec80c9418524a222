"""qcc --report FILE.html: a self-contained page with plots; --report-samples; qcc --emit-onnx."""
from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from qcc.tools.compile import main as qcc_main

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"


@pytest.fixture(scope="module")
def digits_html(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    code = qcc_main([str(DIGITS / "digits.onnx"), "-o", str(tmp / "out" / "digits.c"), "--target", "cortex-m4",
                     "--calib", str(DIGITS / "calib.npz"), "--report", str(tmp / "r.html"),
                     "--report-samples", "40", "--emit-onnx", str(tmp / "q.onnx")])
    assert code == 0
    return tmp


def test_html_report_has_plots_the_input_format_and_the_sample_count(digits_html):
    text = (digits_html / "r.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text
    plots = re.findall(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(plots) >= 3  # SQNR, histograms, weights, RAM, MACs
    svgs = [base64.b64decode(p).decode() for p in plots]
    assert all(s.lstrip().startswith("<?xml") and "<svg" in s for s in svgs)
    assert any("Per-layer SQNR" in s for s in svgs) and any("RAM timeline" in s for s in svgs)
    assert any("input 'input'" in s for s in svgs)  # the input's histogram, against its format
    # The summary comes first and shows the input's quantization format (Qm.n of the q.quantize).
    summary = text.split("<h2>Summary</h2>", 1)[1].split("</table>", 1)[0]
    row = re.search(r"<tr><th>input <code>input</code></th><td>\[1, 8, 8, 1\] &rarr; Q(\d)\.(\d) fixed point "
                    r"\(i8", summary)
    assert row and int(row.group(1)) + int(row.group(2)) == 7
    assert "Evaluated on 40 of the 200 calibration samples provided" in summary
    assert "arena (peak RAM" in summary and "worst layers" in summary
    assert text.index("<h2>Summary</h2>") < text.index("<h2>Advice</h2>") < text.index("<img")
    # Short names (ONNX op type + step) with the full name on hover.
    for short, full in (("Conv0", "conv1"), ("Conv1", "conv2"), ("Gemm4", "dense")):
        assert f'<td title="{full}">{short}</td>' in text
    own = re.findall(r'<td class="n">([\d.]+)</td><td class="n">[\d,]+</td><td class="n">[\d,]+</td><td>', text)
    assert len(own) == 5 and all(20 < float(x) < 80 for x in own)  # every layer's own SQNR, in dB


def test_emit_onnx_writes_a_qdq_model_that_runs(digits_html):
    ort = pytest.importorskip("onnxruntime")
    model = onnx.load(str(digits_html / "q.onnx"))
    onnx.checker.check_model(model)
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    sess = ort.InferenceSession(str(digits_html / "q.onnx"), providers=["CPUExecutionProvider"])
    x = np.load(DIGITS / "test.npz")["input"][:20]
    labels = np.load(DIGITS / "test.npz")["labels"][:20]
    name = sess.get_inputs()[0].name
    pred = [int(np.argmax(sess.run(None, {name: s})[0])) for s in x]
    assert sum(p == y for p, y in zip(pred, labels)) >= 19


def test_report_options_are_checked(tmp_path, capsys):
    base = [str(DIGITS / "digits.onnx"), "-o", str(tmp_path / "o" / "d.c"), "--target", "cortex-m4",
            "--calib", str(DIGITS / "calib.npz")]
    assert qcc_main(base + ["--report", str(tmp_path / "r.pdf")]) == 1
    assert "HTML (.html), Markdown (.md) or JSON (.json)" in capsys.readouterr().err
    assert qcc_main(base + ["--report", str(tmp_path / "r.html"), "--report-samples", "-3"]) == 1
    assert "--report-samples takes a number" in capsys.readouterr().err
    assert qcc_main(base + ["--emit-onnx", str(tmp_path / "q.txt")]) == 1
    assert "--emit-onnx takes the path of an .onnx file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "r.html").exists()
