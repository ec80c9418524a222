"""Pass registry, pipeline parsing, PassManager verification and printing, plugins, rewriter."""
from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from typing import List, Literal

import numpy as np
import pytest

import qcc
from qcc.transforms import passmanager as pm
from qcc.errors import InputError, IRError, PassError, QccError, UnsupportedModelError
from qcc.ir.parser import parse
from qcc.transforms.passmanager import Pass, PassManager, PassResult, PipelineError, register_pass, register_pipeline
from qcc.ir.printer import print_graph
from qcc.transforms.rewriter import (PatternPass, RewritePattern, Rewriter, apply_patterns_greedily, pattern)
from qcc.ir.types import TensorType

SIMPLE = """\
qcc.graph @f(%x: tensor<2xf32>) -> (tensor<2xf32> {name = "y"}) {
  %0 = qcc.const dense<[0.0, 0.0]> : tensor<2xf32>
  %1 = nn.add %x, %0 : tensor<2xf32>
  %2 = nn.relu %1 : tensor<2xf32>
  %3 = nn.tanh %x : tensor<2xf32>
  qcc.return %2 : tensor<2xf32>
}
"""


@pytest.fixture(autouse=True)
def clean_registry():
    """Passes, pipelines and plugins registered by a test are removed after it."""
    with pm.scoped_registry():
        yield


def graph():
    return parse(SIMPLE)


# ---------------------------------------------------------------- registry
def test_builtin_passes_are_registered_with_docstrings():
    passes = pm.registered_passes()
    for name in ("dce", "const-fold", "canonicalize"):
        assert name in passes
        doc = passes[name].__doc__
        assert "Before" in doc and "After" in doc, f"{name} needs a before/after example"


def test_duplicate_pass_name_is_rejected():
    with pytest.raises(PipelineError, match="'dce'.*already registered"):
        @register_pass
        class Another(Pass):
            """Another dce."""
            name = "dce"


def test_pass_name_must_be_kebab_case():
    with pytest.raises(TypeError, match="kebab-case"):
        @register_pass
        class Bad(Pass):
            name = "Bad_Name"


def test_register_pass_makes_a_dataclass():
    @register_pass
    class Opts(Pass):
        """Has options."""
        name = "test-opts"
        count: int = 3

    assert Opts(count=5).spec() == "test-opts{count=5}"
    assert Opts().spec() == "test-opts"


# ---------------------------------------------------------------- pipeline text
@pytest.fixture
def typed_pass():
    @register_pass
    @dataclass
    class Typed(Pass):
        """Every option type."""
        name = "test-typed"
        n: int = 1
        p: float = 0.5
        flag: bool = False
        method: Literal["minmax", "percentile"] = "minmax"
        label: str = ""
        sizes: List[int] = None

        def run(self, graph):
            return PassResult(False)
    return Typed


def test_options_are_typed_from_the_fields(typed_pass):
    [p] = PassManager.parse("test-typed{n=4,p=99.99,flag=true,method=percentile,label=\"a,b\",sizes=[1,2,3]}").passes
    assert (p.n, p.p, p.flag, p.method, p.label, p.sizes) == (4, 99.99, True, "percentile", "a,b", [1, 2, 3])
    assert p.spec() == 'test-typed{n=4,p=99.99,flag=true,method=percentile,label="a,b",sizes=[1,2,3]}'
    assert PassManager.parse(p.spec()).passes[0] == p  # a spec parses back to the same pass


def test_kebab_option_names_map_to_fields():
    [p] = PassManager.parse("const-fold{max-elements=7}").passes
    assert p.max_elements == 7


@pytest.mark.parametrize("text, message", [
    ("test-typed{m=1}", "has no option 'm'; valid options: n \\(int\\), p \\(float\\), flag \\(bool\\)"),
    ("test-typed{n=x}", "option 'n' of pass 'test-typed' takes an integer, got 'x'"),
    ("test-typed{p=fast}", "takes a number"),
    ("test-typed{flag=maybe}", "takes true or false"),
    ("test-typed{method=median}", "must be one of minmax, percentile"),
    ("test-typed{sizes=3}", "takes a list"),
    ("test-typed{n}", "needs a value"),
    ("test-typed{n=1,n=2}", "given twice"),
    ("test-typed{n=1", "unclosed"),
    ("dce,,dce", "empty element"),
    ("dce}", "unbalanced"),
    ("dce{x=1}", "pass 'dce' has no option 'x'; it takes no options"),
])
def test_bad_pipelines_say_what_is_wrong(typed_pass, text, message):
    with pytest.raises(PipelineError, match=message):
        PassManager.parse(text)


def test_unknown_pass_lists_passes_and_pipelines():
    register_pipeline("test-cleanup", lambda o: ["dce"], "just dce")
    with pytest.raises(PipelineError) as e:
        PassManager.parse("dce,no-such-pass")
    msg = str(e.value)
    assert "unknown pass 'no-such-pass'" in msg
    listed = msg.split("registered passes: ")[1].split(";")[0].split(", ")
    assert {"canonicalize", "const-fold", "dce"} <= set(listed) and listed == sorted(listed)
    assert "test-cleanup" in msg.split("; pipelines: ")[1].split(", ")
    assert isinstance(e.value, QccError)


def test_named_pipeline_expands_with_typed_options():
    seen = {}

    def build(options):
        seen.update(options)
        return ["canonicalize", f"const-fold{{max_elements={options.get('limit', 10)}}}", "dce"]

    register_pipeline("test-cleanup", build, "canonicalize and clean", {"limit": int})
    manager = PassManager.parse("test-cleanup{limit=5}")
    assert [p.spec() for p in manager.passes] == ["canonicalize", "const-fold{max_elements=5}", "dce"]
    assert seen == {"limit": 5}
    with pytest.raises(PipelineError, match="pipeline 'test-cleanup' has no option 'bits'; valid options: limit"):
        PassManager.parse("test-cleanup{bits=8}")


def test_pipeline_cannot_shadow_a_pass():
    with pytest.raises(PipelineError, match="already registered"):
        register_pipeline("dce", lambda o: [], "oops")


# ---------------------------------------------------------------- running
def test_run_applies_passes_and_reports():
    g = graph()
    report = PassManager.parse("canonicalize,dce").run(g)
    assert report.modified
    assert [r.pass_.name for r in report.records] == ["canonicalize", "dce"]
    assert report.records[0].result.stats["applied.RemoveNeutralOperand"] == 1
    assert report.records[1].result.stats == {"erased": 1}
    assert [op.opname for op in g.ops] == ["nn.relu"]
    assert "canonicalize" in report.format_timing()


@pytest.fixture
def breaking_passes():
    @register_pass
    class BreakGraph(Pass):
        """Leaves a result with a shape its op's shape rule disagrees with."""
        name = "test-break-graph"

        def run(self, graph):
            op = graph.find("nn.relu")[0]
            op.results[0].type = TensorType((3,), "f32")  # bypasses the API on purpose
            return PassResult(True)

    @register_pass
    class Unsupported(Pass):
        """Refuses the model."""
        name = "test-unsupported"

        def run(self, graph):
            raise UnsupportedModelError("node 'n1': op Foo is not supported")

    @register_pass
    class Buggy(Pass):
        """Has a bug."""
        name = "test-buggy"

        def run(self, graph):
            return {}["missing"]

    @register_pass
    class NoResult(Pass):
        """Forgets to return."""
        name = "test-no-result"

        def run(self, graph):
            pass


def test_verify_failure_names_the_pass_and_those_before(breaking_passes):
    with pytest.raises(PassError) as e:
        PassManager.parse("canonicalize,dce,test-break-graph,const-fold").run(graph())
    msg = str(e.value)
    assert "pass 'test-break-graph' left an invalid graph (after canonicalize, dce)" in msg
    assert "'nn.relu' op" in msg and "shape rule gives [2]" in msg


def test_first_pass_failure_says_it_ran_first(breaking_passes):
    with pytest.raises(PassError, match=r"pass 'test-break-graph' left an invalid graph \(it ran first\)"):
        PassManager.parse("test-break-graph").run(graph())


def test_pass_errors_keep_their_exit_code(breaking_passes):
    with pytest.raises(PassError) as e:
        PassManager.parse("dce,test-unsupported").run(graph())
    assert "pass 'test-unsupported' failed (after dce): node 'n1'" in str(e.value)
    assert e.value.exit_code == 2


def test_bugs_keep_their_traceback_with_a_note(breaking_passes):
    with pytest.raises(KeyError) as e:
        PassManager.parse("dce,test-buggy").run(graph())
    assert "while running pass 'test-buggy' (after dce)" in "".join(e.value.__notes__)


def test_a_pass_must_return_a_pass_result(breaking_passes):
    with pytest.raises(PassError, match="returned NoneType, expected a PassResult"):
        PassManager.parse("test-no-result").run(graph())


def test_invalid_input_graph_is_reported_before_any_pass():
    g = graph()
    g.find("nn.relu")[0].results[0].type = TensorType((5,), "f32")
    with pytest.raises(PassError, match="invalid before any pass ran"):
        PassManager.parse("dce").run(g)


def test_print_ir_after_all():
    stream = io.StringIO()
    PassManager.parse("canonicalize,dce", print_ir_after_all=True, stream=stream).run(graph())
    text = stream.getvalue()
    first = "// -----// IR after canonicalize //----- //\n"
    second = "// -----// IR after dce //----- //\n"
    assert text.startswith(first) and second in text
    after_canon = text[len(first):text.index(second)]
    assert "nn.tanh" in after_canon and "nn.add" not in after_canon  # dce has not run yet
    assert "nn.tanh" not in text[text.index(second):]
    parse(after_canon)  # each dump is valid IR


def test_print_ir_after_selected_pass_only():
    stream = io.StringIO()
    PassManager.parse("canonicalize,dce", print_ir_after=["dce"], stream=stream).run(graph())
    assert stream.getvalue().count("// -----// IR after") == 1
    assert "IR after dce" in stream.getvalue()
    with pytest.raises(PipelineError, match="--print-ir-after names unknown pass 'nope'"):
        PassManager.parse("dce", print_ir_after=["nope"])


# ---------------------------------------------------------------- plugins
PLUGIN = '''
from qcc.transforms.passmanager import Pass, PassResult, register_pass

@register_pass
class CountOps(Pass):
    """Counts ops."""
    name = "test-count-ops"
    def run(self, graph):
        return PassResult(False, {"ops": len(graph)})
'''


def test_load_pass_plugin_from_a_file(tmp_path):
    path = tmp_path / "count_ops.py"
    path.write_text(PLUGIN)
    assert pm.load_pass_plugin(path) == ["test-count-ops"]
    assert pm.load_pass_plugin(path) == ["test-count-ops"]  # loaded once
    report = PassManager.parse("test-count-ops").run(graph())
    assert report.records[0].result.stats == {"ops": 4}


def test_plugin_errors_are_messages(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    with pytest.raises(InputError, match=r"cannot load pass plugin '.*bad.py:1': SyntaxError"):
        pm.load_pass_plugin(bad)
    with pytest.raises(InputError, match="does not exist"):
        pm.load_pass_plugin(tmp_path / "missing.py")
    clash = tmp_path / "clash.py"
    clash.write_text(PLUGIN.replace("test-count-ops", "dce"))
    with pytest.raises(InputError, match="'dce'.*already registered"):
        pm.load_pass_plugin(clash)


def test_entry_point_plugins(tmp_path, monkeypatch):
    (tmp_path / "qcc_test_ep_plugin.py").write_text(PLUGIN.replace("test-count-ops", "test-ep-pass"))
    (tmp_path / "qcc_test_ep_class.py").write_text(textwrap.dedent('''
        from qcc.transforms.passmanager import Pass, PassResult
        class Noop(Pass):
            """Does nothing."""
            name = "test-ep-class"
            def run(self, graph):
                return PassResult(False)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [EntryPoint("count", "qcc_test_ep_plugin", "qcc.passes"),
           EntryPoint("noop", "qcc_test_ep_class:Noop", "qcc.passes")]
    import importlib.metadata
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [e for e in eps if e.group == group])
    monkeypatch.setattr(pm, "_entry_points_loaded", False)
    assert "test-ep-pass" in pm.registered_passes() and "test-ep-class" in pm.registered_passes()
    assert pm.load_entry_point_plugins() == []  # the group loads once
    PassManager.parse("test-ep-pass,test-ep-class").run(graph())


def test_broken_entry_point_names_itself(monkeypatch):
    broken = EntryPoint("broken", "qcc_no_such_module_xyz", "qcc.passes")
    with pytest.raises(PipelineError, match="entry point 'broken = qcc_no_such_module_xyz'.*ModuleNotFoundError"):
        pm.load_entry_point_plugins([broken])


# ---------------------------------------------------------------- rewriter
def test_rewriter_counts_and_keeps_print_order():
    g = graph()
    rw = Rewriter(g)
    relu = g.find("nn.relu")[0]
    rw.anchor = relu
    sig = rw.create_op("nn.sigmoid", [relu.operands[0]])
    rw.replace_op(relu, sig)
    assert dict(rw.stats) == {"inserted": 1, "erased": 0, "replaced": 1, "updated": 0}
    text = print_graph(g)
    assert text.index("nn.add") < text.index("nn.sigmoid") < text.index("nn.tanh")
    assert rw.erase_dead() == 0  # the add still feeds the sigmoid
    tanh = g.find("nn.tanh")[0]
    rw.erase_op(tanh)
    assert rw.stats["erased"] == 1
    with pytest.raises(IRError, match="still used"):
        rw.erase_op(g.find("nn.add")[0])


def test_replace_op_checks_shapes():
    g = graph()
    rw = Rewriter(g)
    c = rw.create_const(np.zeros(3, np.float32))
    with pytest.raises(IRError, match="shape \\[3\\] differs from \\[2\\]"):
        rw.replace_op(g.find("nn.relu")[0], c)


def test_match_failures_are_recorded_and_queryable():
    g = parse(SIMPLE.replace("dense<[0.0, 0.0]>", "dense<[0.0, 1.0]>"))
    from qcc.passes.canonicalize import populate_canonicalize_patterns
    rw = Rewriter(g)
    result = apply_patterns_greedily(g, populate_canonicalize_patterns(), rewriter=rw)
    assert not result.modified and result.converged
    add = g.find("nn.add")[0]
    assert rw.why(add) == ["RemoveNeutralOperand: no operand is a constant that is all 0",
                           "DenseAddBias: no operand is made by nn.dense"]


def test_greedy_driver_removes_ops_it_made_dead_only():
    g = graph()
    result = apply_patterns_greedily(g, [RemoveRelu()])
    assert result.converged and result.applied == {"RemoveRelu": 1}
    # The add fed only the relu, so it and its constant go; the pre-existing dead tanh stays.
    assert [op.opname for op in g.ops] == ["nn.tanh"]
    assert result.stats["erased"] == 2 and result.stats["replaced"] == 1


class RemoveRelu(RewritePattern):
    op_names = ("nn.relu",)

    def match_and_rewrite(self, op, rewriter):
        rewriter.replace_op(op, op.operands[0].producer.operands[0])
        return True


def test_pattern_pass_that_never_converges_is_an_error():
    @pattern("nn.relu")
    def flip(op, rewriter):
        rewriter.update_attrs(op)  # claims a change every time
        return True

    @register_pass
    class Flip(PatternPass):
        """Never settles."""
        name = "test-flip"
        max_iterations = 3

        def patterns(self):
            return [flip]

    with pytest.raises(PassError, match="pass 'test-flip' failed .*did not reach a fixpoint in 3 sweeps.*flip"):
        PassManager.parse("test-flip").run(graph())


def test_qcc_top_level_exports():
    assert qcc.PassManager is PassManager and qcc.Rewriter is Rewriter and qcc.Pass is Pass


def test_before_pass_hook_sees_each_pass_input():
    g = parse(textwrap.dedent("""\
        qcc.graph @h(%x: tensor<2xf32>) -> (tensor<2xf32> {name = "y"}) {
          %0 = nn.identity %x : tensor<2xf32>
          %1 = nn.relu %0 : tensor<2xf32>
          qcc.return %1 : tensor<2xf32>
        }
        """))
    seen = []
    pm.PassManager.parse("canonicalize,dce").run(g, before_pass=lambda p, graph: seen.append(
        (p.name, sorted(op.opname for op in graph.ops))))
    assert seen == [("canonicalize", ["nn.identity", "nn.relu"]), ("dce", ["nn.relu"])]
