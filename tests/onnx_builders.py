"""Helpers for tests: build small ONNX models and compare qcc's interpreter with onnxruntime."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcc.frontend import load_onnx
from qcc.sim.interpreter import run_graph

RTOL, ATOL = 1e-5, 1e-6


def build(nodes: Sequence[onnx.NodeProto], inputs: Dict[str, Sequence], outputs: Sequence[str],
          inits: Optional[Dict[str, np.ndarray]] = None, opset: int = 13,
          out_types: Optional[Dict[str, int]] = None, in_types: Optional[Dict[str, int]] = None,
          out_shapes: Optional[Dict[str, Sequence]] = None) -> onnx.ModelProto:
    """A model whose inputs have the given shapes (None/str dims are dynamic) and untyped-shape outputs."""
    graph = helper.make_graph(
        list(nodes), "test",
        [helper.make_tensor_value_info(n, (in_types or {}).get(n, TensorProto.FLOAT), s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, (out_types or {}).get(n, TensorProto.FLOAT), (out_shapes or {}).get(n))
         for n in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    # The checker wants output shapes; ONNX shape inference fills them in.
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def run_ort(model: onnx.ModelProto, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def check_against_ort(model: onnx.ModelProto, feeds: Dict[str, np.ndarray], rtol=RTOL, atol=ATOL):
    """Lift ``model``, run both, assert closeness; returns the graph."""
    graph = load_onnx(model)
    got = run_graph(graph, feeds)
    want = run_ort(model, feeds)
    for name, w in want.items():
        assert got[name].shape == w.shape, (name, got[name].shape, w.shape)
        assert got[name].dtype == w.dtype, (name, got[name].dtype, w.dtype)
        np.testing.assert_allclose(got[name], w, rtol=rtol, atol=atol, err_msg=name)
    return graph


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
