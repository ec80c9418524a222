"""qcc: a quantizing compiler for microcontrollers.

    import qcc
    g = qcc.parse_file("model.qir")            # or qcc.load_onnx("model.onnx")
    qcc.PassManager.parse("dce,canonicalize").run(g)
    print(qcc.print_graph(g))
"""
from qcc.errors import QccError, IRError, OpError, ParseError, PassError, UnsupportedModelError, InputError
from qcc.ir import (AttrSpec, FixedPoint, Graph, Op, OpDef, PerAxisQuant, TensorType, UniformQuant, Value, get_op,
                    register_op, registered_ops)

__version__ = "0.1.0"
__all__ = ["QccError", "IRError", "OpError", "ParseError", "PassError", "UnsupportedModelError", "InputError",
           "TensorType", "UniformQuant", "PerAxisQuant", "FixedPoint", "Graph", "Op", "Value",
           "OpDef", "AttrSpec", "register_op", "get_op", "registered_ops",
           "print_graph", "parse", "parse_file", "write_qir", "load_onnx", "load_model",
           "PassManager", "Pass", "PassResult", "register_pass", "Rewriter", "RewritePattern"]


def __getattr__(name):
    # Heavier layers load on first use so `import qcc` stays quick.
    lazy = {
        "print_graph": ("ir.printer", "print_graph"),
        "parse": ("ir.parser", "parse"),
        "parse_file": ("ir.parser", "parse_file"),
        "write_qir": ("ir.printer", "write_qir"),
        "load_onnx": ("frontend.loader", "load_onnx"),
        "load_model": ("frontend.loader", "load_model"),
        "PassManager": ("transforms.passmanager", "PassManager"),
        "Pass": ("transforms.passmanager", "Pass"),
        "PassResult": ("transforms.passmanager", "PassResult"),
        "register_pass": ("transforms.passmanager", "register_pass"),
        "Rewriter": ("transforms.rewriter", "Rewriter"),
        "RewritePattern": ("transforms.rewriter", "RewritePattern"),
    }
    if name in lazy:
        import importlib
        module, attr = lazy[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'qcc' has no attribute '{name}'")
