"""qcc: a quantizing compiler for microcontrollers.

    import qcc
    g = qcc.parse_file("model.qir")            # or qcc.load_onnx("model.onnx")
    qcc.PassManager.parse("dce,canonicalize").run(g)
    print(qcc.print_graph(g))
"""
from .errors import QccError, IRError, OpError, ParseError, PassError, UnsupportedModelError, InputError
from .types import TensorType, UniformQuant, PerAxisQuant, FixedPoint
from .graph import Graph, Op, Value
from .ops import OpDef, AttrSpec, register_op, get_op, registered_ops

__version__ = "0.1.0"
__all__ = ["QccError", "IRError", "OpError", "ParseError", "PassError", "UnsupportedModelError", "InputError",
           "TensorType", "UniformQuant", "PerAxisQuant", "FixedPoint", "Graph", "Op", "Value",
           "OpDef", "AttrSpec", "register_op", "get_op", "registered_ops",
           "print_graph", "parse", "parse_file", "write_qir", "load_onnx", "load_model",
           "PassManager", "Pass", "PassResult", "register_pass", "Rewriter", "RewritePattern"]


def __getattr__(name):
    # Heavier layers load on first use so `import qcc` stays quick.
    lazy = {
        "print_graph": ("printer", "print_graph"),
        "parse": ("parser", "parse"),
        "parse_file": ("parser", "parse_file"),
        "write_qir": ("printer", "write_qir"),
        "load_onnx": ("frontend", "load_onnx"),
        "load_model": ("loader", "load_model"),
        "PassManager": ("passmanager", "PassManager"),
        "Pass": ("passmanager", "Pass"),
        "PassResult": ("passmanager", "PassResult"),
        "register_pass": ("passmanager", "register_pass"),
        "Rewriter": ("rewriter", "Rewriter"),
        "RewritePattern": ("rewriter", "RewritePattern"),
    }
    if name in lazy:
        import importlib
        module, attr = lazy[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'qcc' has no attribute '{name}'")
