"""Golden tests: every tests/golden/*.qir and examples/**/golden/*.qir, case by case.

Each case runs the file's ``// RUN: qcc-opt %s ...`` line in-process and is
checked with the CHECK directives of that case (see golden_check.py), or must
fail with the message of its ``expected-error``. ``pytest --update-golden``
(or QCC_UPDATE_GOLDEN=1) rewrites a passing-or-failing case's CHECK lines from
the actual output instead; review the diff.

Every .qir file in the repository also round-trips: printing a parsed file and
parsing and printing that again gives the same text, and a file without a RUN
line (one the printer wrote) prints back exactly as it is.
"""
from __future__ import annotations

import contextlib
import textwrap
import io
import shlex
from pathlib import Path

import pytest

from golden_check import (CheckFailure, check_output, generate_checks, rewrite_case_checks, run_line,
                          split_cases, SEPARATOR)
from qcc.tools.cli import opt_main
from qcc.transforms.passmanager import scoped_registry

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_FILES = sorted((ROOT / "tests" / "golden").glob("*.qir")) + sorted((ROOT / "examples").glob("**/golden/*.qir"))
ALL_QIR = sorted(p for base in ("tests", "examples") for p in (ROOT / base).rglob("*.qir")
                 if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))

def _cases():
    for path in GOLDEN_FILES:
        for i, _ in enumerate(split_cases(path.read_text())):
            yield pytest.param(path, i, id=f"{path.relative_to(ROOT)}#{i}")


def run_opt(args, stdin_text=None):
    """Run qcc-opt in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with scoped_registry(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = opt_main(list(args))  # plugins a RUN line loads are unloaded afterwards
    return code, out.getvalue(), err.getvalue()


def run_case(path: Path, case, tmp_path: Path):
    command = run_line(path.read_text())
    argv = shlex.split(command)
    if not argv or argv[0] != "qcc-opt":
        raise CheckFailure(f"{path}: RUN line must start with qcc-opt, got {command!r}")
    case_file = tmp_path / path.name
    case_file.write_text(case.text)
    args = [str(case_file) if a == "%s" else a.replace("%S", str(path.parent)) for a in argv[1:]]
    return run_opt(args)


@pytest.mark.parametrize("path, index", list(_cases()))
def test_golden_case(path, index, tmp_path, update_golden):
    case = split_cases(path.read_text())[index]
    code, out, err = run_case(path, case, tmp_path)
    rel = path.relative_to(ROOT)
    if case.errors:
        assert code != 0, f"{rel}:{case.first_line}: expected an error, qcc-opt succeeded:\n{out}"
        for line, text in case.errors:
            assert text in err, f"{rel}:{case.first_line}: expected error {text!r}, got:\n{err}"
            if line is not None:
                assert f":{line}:" in err, f"{rel}: expected the error at line {line}, got:\n{err}"
        return
    assert code == 0, f"{rel}:{case.first_line}: qcc-opt failed (exit {code}):\n{err}"
    if update_golden:
        _rewrite(path, index, out)
        return
    if not case.checks:
        pytest.fail(f"{rel}:{case.first_line}: the case has no CHECK lines (run pytest --update-golden)")
    check_output(case.checks, out, str(rel))


def _rewrite(path: Path, index: int, output: str):
    lines = path.read_text().splitlines()
    bounds = [-1] + [i for i, line in enumerate(lines) if SEPARATOR.match(line)] + [len(lines)]
    start, end = bounds[index] + 1, bounds[index + 1]
    new = rewrite_case_checks(lines[start:end], generate_checks(output))
    if index + 1 < len(bounds) - 1:
        new.append("")  # a blank line before the next separator
    path.write_text("\n".join(lines[:start] + new + lines[end:]) + "\n")


@pytest.mark.parametrize("path", ALL_QIR, ids=lambda p: str(p.relative_to(ROOT)))
def test_qir_round_trips(path):
    from qcc.ir.parser import parse, parse_file
    from qcc.ir.printer import print_graph
    text = path.read_text()
    if "RUN:" not in text:
        assert print_graph(parse_file(path)) == text, f"{path} does not print back as written"
        return
    for case in split_cases(text):
        body = "\n".join(line for line in case.text.splitlines() if not line.lstrip().startswith("//"))
        if case.errors or not body.strip():
            continue
        first = print_graph(parse(case.text, filename=str(path)), elide_over=None)
        again = print_graph(parse(first, filename=f"{path} (printed)"), elide_over=None)
        assert again == first, f"{path}:{case.first_line}: printing is not a fixpoint"


# ---------------------------------------------------------------- numerics of float rewrites
FLOAT_EXACT_PASSES = {"dce", "const-fold", "canonicalize"}


def _numeric_cases():
    for path in GOLDEN_FILES:
        text = path.read_text()
        argv = shlex.split(run_line(text))
        pipeline = argv[argv.index("-p") + 1] if "-p" in argv else ""
        names = {item.split("{")[0] for item in pipeline.split(",") if item}
        if names and names <= FLOAT_EXACT_PASSES:
            for i, case in enumerate(split_cases(text)):
                if not case.errors:
                    yield pytest.param(path, i, pipeline, id=f"{path.relative_to(ROOT)}#{i}")


@pytest.mark.parametrize("path, index, pipeline", list(_numeric_cases()))
def test_golden_rewrites_preserve_numerics(path, index, pipeline):
    """The float interpreter gives the same outputs before and after the pipeline."""
    import numpy as np
    from qcc.sim.interpreter import run_graph
    from qcc.ir.parser import parse
    from qcc.transforms.passmanager import PassManager
    case = split_cases(path.read_text())[index]
    before = parse(case.text, filename=str(path))
    after = parse(case.text, filename=str(path))
    PassManager.parse(pipeline).run(after)
    rng = np.random.default_rng(index)
    inputs = {v.name: rng.standard_normal(v.shape).astype(v.type.np_dtype) for v in before.inputs}
    want, got = run_graph(before, inputs), run_graph(after, inputs)
    assert list(want) == list(got)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=name)


# ---------------------------------------------------------------- the matcher itself
OUTPUT = """qcc.graph @f(%x: tensor<2xf32>) -> (tensor<2xf32> {name = "y"}) {
  %0 = nn.relu %x : tensor<2xf32>
  %1 = nn.tanh %0 : tensor<2xf32>
  qcc.return %1 : tensor<2xf32>
}
"""


def _checks(text):
    from golden_check import parse_checks
    return parse_checks(textwrap.dedent(text))


@pytest.mark.parametrize("checks", [
    "// CHECK-LABEL: @f\n// CHECK-NEXT: nn.relu\n// CHECK-SAME: tensor<2xf32>\n// CHECK-NEXT: nn.tanh",
    "// CHECK: nn.relu\n// CHECK-NOT: nn.sigmoid\n// CHECK: qcc.return",
    "// CHECK: %[[R:\\d+]] = nn.relu\n// CHECK: nn.tanh %[[R]]",
    "// CHECK: nn.{{[a-z]+}}   %x",
    "// CHECK: qcc.return\n// CHECK-NOT: nn.",
])
def test_matcher_accepts(checks):
    check_output(_checks(checks), OUTPUT)


@pytest.mark.parametrize("checks, message", [
    ("// CHECK: nn.sigmoid", "CHECK: pattern not found"),
    ("// CHECK: nn.relu\n// CHECK-NEXT: qcc.return", "not found on the next line"),
    ("// CHECK: nn.relu\n// CHECK-NOT: nn.tanh\n// CHECK: qcc.return", "excluded pattern found"),
    ("// CHECK: nn.tanh\n// CHECK: nn.relu", "pattern not found"),
    ("// CHECK: %[[R:\\d+]] = nn.tanh\n// CHECK: nn.relu %[[R]]", "pattern not found"),
    ("// CHECK: nn.relu\n// CHECK-EMPTY:", "not empty"),
])
def test_matcher_rejects(checks, message):
    with pytest.raises(CheckFailure, match=message):
        check_output(_checks(checks), OUTPUT)


def test_generated_checks_match_their_output():
    from golden_check import parse_checks
    generated = "\n".join(generate_checks(OUTPUT))
    assert generated.startswith("// CHECK-LABEL: qcc.graph @f(")
    check_output(parse_checks(generated), OUTPUT)
    tricky = OUTPUT.replace("%1 = nn.tanh", "%1 = nn.tanh {{x}} [[y]]")
    check_output(parse_checks("\n".join(generate_checks(tricky))), tricky)


def test_split_cases_keeps_file_line_numbers():
    text = "// RUN: x\nA\n// -----\nB\n// expected-error@+1 {{boom}}\nC\n"
    cases = split_cases(text)
    assert [c.first_line for c in cases] == [1, 4]
    assert cases[1].text.splitlines()[3] == "B"  # line 4 of the file is line 4 of the case
    assert cases[1].errors == [(6, "boom")]
