"""assign-qmn never saturates the calibrated maximum of a softmax's input (the logits).

The largest logits decide the top-1 class. A format chosen by the error after the softmax alone
may trade the top of the range for resolution when only a few calibration samples reach it (the
others' error shrinks, the few clipped ones barely move after the exponential); on unseen inputs
with large logits that clipping ties the leading classes. Seen on Arm's ML-KWS CNN (logits in
[-41, 19.5], chosen Q4.3, top clipped at 16). The low end may still be clipped: classes far below
the top have probability ~0 either way.
"""
import numpy as np
import onnx
import pytest
from onnx import helper

import qcc
from onnx_builders import build
from qcc.passes import qmn_pipeline
from qcc.passes._qmn_util import fixed_type
from qcc.passes.assign_qmn import AssignQmn
from qcc.transforms.passmanager import PassManager, make_pass


def _logits_model(tmp_path):
    """x -> identity dense (the logits are the input) -> softmax; calibration logits mostly below 14
    with two close leaders, two confident samples with a top logit near 19.5, the rest near -30."""
    rng = np.random.default_rng(3)
    k = 12
    model = build([helper.make_node("Gemm", ["x", "w", "b"], ["logits"], name="fc", transB=1),
                   helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1)],
                  {"x": [1, k]}, ["probs"], {"w": np.eye(k, dtype=np.float32), "b": np.zeros(k, np.float32)})
    path = tmp_path / "logits.onnx"
    onnx.save(model, str(path))
    x = np.clip(rng.normal(-30.0, 5.0, (44, 1, k)), -40.0, -20.0)
    top = rng.uniform(8.0, 14.0, 44)
    x[np.arange(44), 0, 0] = top               # a leading class and a close second: resolution matters
    x[np.arange(44), 0, 1] = top - rng.uniform(0.0, 0.5, 44)
    x[7, 0, :2], x[30, 0, :2] = (19.5, 2.0), (19.2, 1.0)   # two confident samples reach the top
    np.save(tmp_path / "calib.npy", x.astype(np.float32))
    return path, tmp_path / "calib.npy"


def _fake_quant_graph(path, calib, bits: int, input_bits: int):
    """The qmn pipeline up to assign-qmn, the input quantized at ``input_bits`` (as mixed-bits may leave
    it: at 16 bits the logits' own format is what limits their resolution)."""
    g = qcc.load_onnx(str(path))
    names = [p if isinstance(p, str) else p.name for p in qmn_pipeline._build({"bits": bits})]
    pm = PassManager([make_pass(n, {"bits": str(bits)} if n in ("calibrate", "insert-qdq") else {})
                      if isinstance(n, str) else n for n in names[:names.index("assign-qmn")]])
    for p in pm.passes:
        p.context = {"calib": str(calib)}
    pm.run(g)
    q = next(op for op in g.ops if op.opname == "q.quantize" and not op.operands[0].is_constant())
    q.result.type = fixed_type(q.result.shape, input_bits, input_bits - 7)
    return g


@pytest.mark.parametrize("objective, bits, input_bits", [("tensor", 8, 16), ("output", 8, 16), ("output", 8, 8),
                                                         ("tensor", 16, 16)])
def test_logits_format_holds_the_largest_calibrated_logit(tmp_path, objective, bits, input_bits):
    path, calib = _logits_model(tmp_path)
    g = _fake_quant_graph(path, calib, bits, input_bits)
    assign = AssignQmn(objective=objective)
    assign.context = {"calib": str(calib)}
    assign.run(g)
    choice = next(c for c in g.qmn_choices if c["tensors"] == ["fc"])
    top = ((1 << (bits - 1)) - 1) * 2.0 ** -choice["n"]
    assert top >= 19.2, (choice, top)
    assert "largest calibrated logit" in choice["why"]
