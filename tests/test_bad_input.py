"""Bad input never escapes as a traceback: every failure is a QccError with a location.

Mutated IR text must parse or raise ParseError (file:line:col); corrupted ONNX
bytes must load or raise a QccError. Anything else is a bug in qcc.
"""
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import qcc
from qcc.errors import ParseError, QccError
from qcc.ir.parser import parse
from qcc.ir.printer import print_graph

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits" / "digits.onnx"


@pytest.fixture(scope="module")
def valid_text():
    g = qcc.load_onnx(DIGITS)
    return print_graph(g, elide_over=None)


_PIECES = ["%", "@", "!", "<", ">", "{", "}", "[", "]", "(", ")", ",", ":", "=", "\"", "\\", "x", "0", "-1",
           "1e999", "nan", "tensor<", "!q.fixed<i8, 99>", "!q.uniform<i8:f32, -1.0:0>", "nn.conv2d", "qcc.const",
           "dense<[1]>", "loc(\"a\")", "\n", " ", "é", "\x00", "qcc.return", "//", "2x", "i4", "f16"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_ir_parses_or_reports_a_location(valid_text, data):
    lines = valid_text.splitlines(keepends=True)
    text = valid_text
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(text)))
        kind = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = data.draw(st.sampled_from(_PIECES))
        if kind == "insert":
            text = text[:pos] + piece + text[pos:]
        elif kind == "delete":
            text = text[:pos] + text[pos + data.draw(st.integers(1, 20)):]
        else:
            text = text[:pos] + piece + text[pos + len(piece):]
    try:
        g = parse(text, "fuzz.qir")
    except ParseError as e:
        assert e.filename == "fuzz.qir" and e.line >= 0 and e.column >= 0
        assert str(e).startswith("fuzz.qir:")
        return
    # Parsed: then it is a valid graph that prints and verifies.
    g.verify()
    print_graph(g)
    assert len(lines) > 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupted_onnx_loads_or_raises_a_message(tmp_path_factory, data):
    blob = bytearray(DIGITS.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    path = tmp_path_factory.mktemp("onnx") / "bad.onnx"
    path.write_bytes(bytes(blob))
    try:
        g = qcc.load_onnx(path)
    except QccError as e:
        assert str(e)
        return
    g.verify()


def _mutate_model(model, data):
    """One structural change an exporter bug or a hand edit could make."""
    import onnx
    from onnx import helper
    g = model.graph
    kind = data.draw(st.sampled_from(["attr", "dim", "drop_init", "op_type", "input_name", "dtype",
                                      "drop_node", "init_dims"]))
    node = g.node[data.draw(st.integers(0, len(g.node) - 1))]
    if kind == "attr" and node.attribute:
        a = node.attribute[data.draw(st.integers(0, len(node.attribute) - 1))]
        if a.type == onnx.AttributeProto.INTS and a.ints:
            a.ints[data.draw(st.integers(0, len(a.ints) - 1))] = data.draw(st.integers(-3, 40))
        elif a.type == onnx.AttributeProto.INT:
            a.i = data.draw(st.integers(-3, 40))
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = data.draw(st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 1e30]))
        elif a.type == onnx.AttributeProto.STRING:
            a.s = data.draw(st.sampled_from([b"", b"SAME_LOWER", b"VALID", b"bogus", b"\xff"]))
    elif kind == "dim":
        dims = g.input[0].type.tensor_type.shape.dim
        d = dims[data.draw(st.integers(0, len(dims) - 1))]
        d.dim_value = data.draw(st.integers(0, 9))
    elif kind == "drop_init" and g.initializer:
        del g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
    elif kind == "op_type":
        node.op_type = data.draw(st.sampled_from(["Conv", "Relu", "MaxPool", "Gemm", "Foo", "Add", "Reshape"]))
    elif kind == "input_name" and node.input:
        node.input[data.draw(st.integers(0, len(node.input) - 1))] = data.draw(st.sampled_from(["", "nope", "input"]))
    elif kind == "dtype" and g.initializer:
        init = g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
        init.data_type = data.draw(st.sampled_from([onnx.TensorProto.INT8, onnx.TensorProto.DOUBLE,
                                                    onnx.TensorProto.FLOAT16, onnx.TensorProto.STRING]))
    elif kind == "drop_node":
        del g.node[data.draw(st.integers(0, len(g.node) - 1))]
    elif kind == "init_dims" and g.initializer:
        init = g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
        if init.dims:
            init.dims[data.draw(st.integers(0, len(init.dims) - 1))] = data.draw(st.integers(0, 5))
    return helper


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_structurally_broken_onnx_loads_or_raises_a_message(data):
    import onnx
    model = onnx.load(str(DIGITS))
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate_model(model, data)
    try:
        g = qcc.load_onnx(model)
    except QccError as e:
        assert str(e)
        return
    g.verify()
