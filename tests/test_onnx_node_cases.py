"""The ONNX backend node test cases shipped with the onnx package, for every op qcc lifts.

Each case is lifted with ``load_onnx`` and run by the float interpreter; the
outputs must match the case's expected outputs within the case's tolerances.
Inputs that qcc requires to be constants (Clip bounds, Reshape targets, Slice
parameters, ...) are graph inputs in some cases; they are frozen into
initializers with the case's data, since qcc compiles static graphs. Cases that
use attributes or element types qcc does not support are skipped with the
reason the frontend gives.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

from qcc.errors import UnsupportedModelError
from qcc.frontend import load_onnx
from qcc.frontend.lifters import LIFTERS
from qcc.sim.interpreter import run_graph

# Inputs after the first must be constants for these ops.
_CONST_INPUT_OPS = {"Clip", "Pad", "Reshape", "Slice", "Squeeze", "Unsqueeze", "ReduceMean", "Dropout", "Resize",
                    "ConvTranspose"}


def _cases():
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    picked = []
    for case in cases:
        if case.model is None:
            continue
        ops = {n.op_type for n in case.model.graph.node}
        if ops and ops <= set(LIFTERS) and ops != {"Constant"}:
            picked.append(case)
    return sorted(picked, key=lambda c: c.name)


CASES = _cases()


def _freeze(model: onnx.ModelProto, inputs) -> tuple:
    """Move inputs that must be constants into initializers; returns (model, remaining feeds)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    frozen = set()
    for node in model.graph.node:
        if node.op_type in _CONST_INPUT_OPS:
            frozen.update(n for n in node.input[1:] if n)
    feeds = {}
    keep = []
    for vi, array in zip(model.graph.input, inputs):
        if vi.name in frozen:
            model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), vi.name))
        else:
            feeds[vi.name] = array
            keep.append(vi)
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model, feeds


def test_cases_were_collected():
    assert len(CASES) > 100


def _array(x):
    return onnx.numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else np.asarray(x)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_case(case):
    for inputs, expected in case.data_sets:
        model, feeds = _freeze(case.model, [_array(x) for x in inputs])
        try:
            graph = load_onnx(model)
        except UnsupportedModelError as e:
            pytest.skip(f"unsupported by qcc: {str(e).splitlines()[-1].strip()}")
        got = run_graph(graph, feeds)
        for name, want in zip(graph.output_names, expected):
            want = _array(want)
            assert got[name].dtype == want.dtype, name
            np.testing.assert_allclose(got[name], want, rtol=case.rtol, atol=case.atol, err_msg=name)
