"""Text IR: printer/parser round trips, a property test, and parse errors."""
import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import qcc
from qcc.ir.parser import parse, parse_file
from qcc.ir.printer import print_graph, print_graph_with_resources, write_qir


def _sample_graph():
    g = qcc.Graph("sample")
    x = g.add_input("input 1", qcc.TensorType((1, 4)))
    c = g.add_const(np.array([[1.0, 0.1, -2.5e-8, np.inf]], np.float32), "c")
    g.add_const(np.arange(40, dtype=np.int8).reshape(2, 20), "w.1",
                quant=qcc.PerAxisQuant(0, [0.1, 0.2], [0, 0]), dtype="i8")
    g.add_const(np.arange(4, dtype=np.int16).reshape(1, 4), "fx", quant=qcc.FixedPoint(11), dtype="i16")
    a = g.add_op("nn.add", [x, c], name='add "1" */ \\ \n é')
    r = g.add_op("nn.relu", [a.result])
    g.set_outputs([r.result], ["y"])
    return g


def test_print_parse_print_is_identity():
    g = _sample_graph()
    text, res = print_graph_with_resources(g)
    assert "@w.1" in text  # 40 elements > the elision threshold
    again = print_graph(parse(text, resources=res))
    assert again == text


def test_whole_constants_round_trip():
    g = _sample_graph()
    text = print_graph(g, elide_over=None)
    assert "qcc.const @" not in text and "dense<[0, 1, 2, 3, 4," in text
    assert print_graph(parse(text), elide_over=None) == text


def test_write_qir_sidecar(tmp_path):
    g = _sample_graph()
    path = tmp_path / "m.qir"
    write_qir(g, path)
    assert (tmp_path / "m.npz").exists()
    g2 = parse_file(path)
    np.testing.assert_array_equal(g2.ops[1].attrs["value"], np.arange(40, dtype=np.int8).reshape(2, 20))
    assert print_graph(g2) == print_graph(g)


def test_names_survive_escaping():
    g = parse(print_graph(_sample_graph(), elide_over=None))
    assert g.inputs[0].name == "input 1"
    assert any(op.name == 'add "1" */ \\ \n é' for op in g.ops)
    assert g.output_names == ["y"]


def test_float32_shortest_round_trip():
    vals = np.array([0.1, 1 / 3, 1e-30, -7.006e-39, 3.4028235e38, -0.0], np.float32)
    g = qcc.Graph("f")
    g.set_outputs([g.add_const(vals, "v")], ["v"])
    g2 = parse(print_graph(g))
    np.testing.assert_array_equal(g2.outputs[0].constant().view(np.uint32), vals.view(np.uint32))


# ----------------------------------------------------------------- property test
_UNARY = ["nn.relu", "nn.sigmoid", "nn.tanh", "nn.identity"]
_BINARY = ["nn.add", "nn.sub", "nn.mul"]


@st.composite
def random_graphs(draw):
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    g = qcc.Graph(draw(st.sampled_from(["g", "net", "m_1"])))
    values = [g.add_input(f"in{i}", qcc.TensorType(shape)) for i in range(draw(st.integers(1, 2)))]
    for i in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["unary", "binary", "const"]))
        name = draw(st.sampled_from(["", f"op{i}", f"op {i}\"x\"", f"é{i}"]))
        if kind == "const":
            n = int(np.prod(shape))
            data = np.array(draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=n, max_size=n)),
                            np.float32).reshape(shape)
            values.append(g.add_const(data, name))
        elif kind == "unary":
            v = draw(st.sampled_from(values))
            values.append(g.add_op(draw(st.sampled_from(_UNARY)), [v], name=name).result)
        else:
            a, b = draw(st.sampled_from(values)), draw(st.sampled_from(values))
            act = draw(st.sampled_from(["none", "relu"]))
            values.append(g.add_op(draw(st.sampled_from(_BINARY)), [a, b], {"act": act}, name=name).result)
    outs = draw(st.lists(st.sampled_from(values), min_size=1, max_size=2))
    g.set_outputs(outs, [f"out{i}" for i in range(len(outs))])
    return g


def _labelled(g):
    """The dataflow graph with each node's object as a node attribute, for isomorphism."""
    h = nx.MultiDiGraph()
    for n in g.networkx().nodes:
        h.add_node(id(n), obj=n)
    for u, v, k in g.networkx().edges(keys=True):
        h.add_edge(id(u), id(v), key=k, port=k)
    return h


def _node_match(da, db):
    a, b = da["obj"], db["obj"]
    if isinstance(a, qcc.Value) or isinstance(b, qcc.Value):
        return isinstance(a, qcc.Value) and isinstance(b, qcc.Value) and a.type == b.type
    if (a.opname, a.name) != (b.opname, b.name) or set(a.attrs) != set(b.attrs):
        return False
    for k in a.attrs:
        x, y = a.attrs[k], b.attrs[k]
        if isinstance(x, np.ndarray):
            if not np.array_equal(x.view(np.uint8), y.view(np.uint8)):
                return False
        elif x != y:
            return False
    return True


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs(), st.sampled_from([None, 4]))
def test_random_graphs_round_trip(g, elide):
    g.verify()
    text, res = print_graph_with_resources(g, elide)
    g2 = parse(text, resources=res)
    assert print_graph(g2, elide) == text
    assert nx.is_isomorphic(_labelled(g), _labelled(g2), node_match=_node_match,
                            edge_match=lambda e1, e2: sorted(d["port"] for d in e1.values())
                            == sorted(d["port"] for d in e2.values()))


# ----------------------------------------------------------------- errors
_GOOD = """qcc.graph @a(%x: tensor<2xf32>) -> (tensor<2xf32> {name = "y"}) {
  %0 = nn.relu %x : tensor<2xf32> loc("r")
  qcc.return %0 : tensor<2xf32>
}
"""


@pytest.mark.parametrize("old,new,where,message", [
    ("nn.relu", "nn.rel", (2, 8), "unknown op 'nn.rel'"),
    ("relu %x", "relu %z", (2, 16), "use of undefined value '%z'"),
    ("tensor<2xf32> loc", "tensor<3xf32> loc", (2, 8), "shape rule gives [2]"),
    ("xf32> loc", "xf33> loc", (2, 30), "unexpected 'f33'"),
    ("%0 : tensor<2xf32>\n}", "%0 : tensor<2xf32>\n", (3, 31), "unexpected end of input"),
    ('loc("r")', 'loc("r\\q")', (2, 39), "bad string literal"),
    ("%0 = nn.relu %x :", "%0 = nn.relu %x {alpha = 1} :", (2, 8), "no attribute 'alpha'"),
    ("%0 = nn.relu", "%0 = qcc.const @w : tensor<2xf32>\n  %1 = nn.relu", (2, 18), "constant @w has no data"),
    ("(%x: tensor<2xf32>)", "(%x: tensor<2x!q.fixed<f32, 3>>)", (1, 36), "integer"),
])
def test_parse_errors_have_locations(old, new, where, message):
    text = _GOOD.replace(old, new)
    assert text != _GOOD
    with pytest.raises(qcc.ParseError) as info:
        parse(text, "bad.qir")
    err = info.value
    assert (err.line, err.column) == where, str(err)
    assert message in err.message
    rendered = str(err)
    assert rendered.startswith(f"bad.qir:{where[0]}:{where[1]}: error: ")
    assert rendered.splitlines()[-1].index("^") == where[1] - 1


def test_verify_names_the_op():
    g = qcc.Graph("v")
    x = g.add_input("x", qcc.TensorType((2,)))
    op = g.add_op("nn.relu", [x], name="r1")
    g.set_outputs([op.result])
    op.results[0].type = qcc.TensorType((3,))
    with pytest.raises(qcc.IRError, match="'nn.relu' op \"r1\".*shape"):
        g.verify()


def test_erase_used_op_is_an_error():
    g = qcc.Graph("e")
    x = g.add_input("x", qcc.TensorType((2,)))
    r = g.add_op("nn.relu", [x], name="a")
    s = g.add_op("nn.relu", [r.result], name="b")
    g.set_outputs([s.result])
    with pytest.raises(qcc.IRError, match="still used by 'nn.relu' op \"b\""):
        g.erase_op(r)
