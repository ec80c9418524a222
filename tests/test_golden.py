"""Golden tests: lit runs every tests/golden/*.qir and examples/**/golden/*.qir.

Each golden file's `// RUN:` line is a shell command that lit executes as
written (`qcc-opt %s --split-input-file -p PASS | filecheck %s`), so a
failing case can be pasted into a shell. `python3 tests/update_golden.py`
regenerates CHECK lines from actual output (review the diff).

Also here: every .qir file in the repository round-trips through the printer,
and the float rewrites of the golden files keep the interpreter's numbers.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qcc.tools.diagnostics import expected_errors, split_input

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIRS = [ROOT / "tests" / "golden"] + sorted(p for p in (ROOT / "examples").glob("**/golden") if p.is_dir())
GOLDEN_FILES = sorted(p for d in GOLDEN_DIRS for p in d.glob("*.qir"))
ALL_QIR = sorted(p for base in ("tests", "examples") for p in (ROOT / base).rglob("*.qir")
                 if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))


def _lit(*paths, cwd=ROOT):
    bin_dir = str(Path(sys.executable).parent)  # qcc-opt and filecheck of the running environment
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run([sys.executable, "-c", "from lit.main import main; main()", "-v", *map(str, paths)], capture_output=True, text=True,
                          cwd=cwd, env=env)


def test_lit_runs_every_golden_file():
    done = _lit(*GOLDEN_DIRS)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert f"Passed: {len(GOLDEN_FILES)} " in done.stdout, done.stdout[-2000:]


def test_a_wrong_expectation_fails(tmp_path):
    """The harness can fail: a golden file with one CHECK changed is reported by lit."""
    src = ROOT / "tests" / "golden" / "dce.qir"
    shutil.copy(ROOT / "tests" / "golden" / "lit.cfg.py", tmp_path / "lit.cfg.py")
    text = src.read_text()
    assert "CHECK-NEXT: %0 = nn.relu %x" in text
    (tmp_path / "dce.qir").write_text(text.replace("CHECK-NEXT: %0 = nn.relu %x", "CHECK-NEXT: %0 = nn.tanh %x", 1))
    done = _lit(tmp_path)
    assert done.returncode != 0 and "Failed: 1" in done.stdout, done.stdout[-3000:]


def test_run_lines_are_shell_commands_into_filecheck():
    for path in GOLDEN_FILES:
        runs = [line.split("RUN:", 1)[1].strip() for line in path.read_text().splitlines() if "RUN:" in line]
        assert runs, f"{path} has no RUN line"
        for run in runs:
            first, _, rest = run.partition("|")
            assert shlex.split(first)[0] == "qcc-opt" and rest.split()[0] == "filecheck", f"{path}: {run}"
            if len(path.read_text().split("\n// -----\n")) > 1:
                assert "--split-input-file" in first, f"{path}: several cases need --split-input-file"


# ---------------------------------------------------------------- qcc-opt --split-input-file / --verify-diagnostics
def _opt(*args, stdin=None):
    from qcc.tools.cli import opt_main
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = opt_main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


CASES = """\
qcc.graph @a(%x: tensor<2xf32>) -> (tensor<2xf32> {name = "y"}) {
  %0 = nn.relu %x : tensor<2xf32>
  %1 = nn.tanh %x : tensor<2xf32>
  qcc.return %0 : tensor<2xf32>
}
// -----
qcc.graph @b(%x: tensor<2xf32>) -> (tensor<2xf32> {name = "y"}) {
  // expected-error@+1 {{result 0 has shape [3], the shape rule gives [2]}}
  %0 = nn.relu %x : tensor<3xf32>
  qcc.return %0 : tensor<3xf32>
}
"""


def test_split_input_file_runs_each_case_and_joins_outputs(tmp_path):
    path = tmp_path / "cases.qir"
    path.write_text(CASES.replace("tensor<3xf32>", "tensor<2xf32>").replace("@b(", "@b(")
                    .replace("  // expected-error@+1 {{result 0 has shape [3], the shape rule gives [2]}}\n", ""))
    code, out, err = _opt(path, "--split-input-file", "-p", "dce")
    assert code == 0, err
    first, second = out.split("// -----\n")
    assert "@a(" in first and "nn.tanh" not in first and "@b(" in second


def test_without_verify_diagnostics_an_error_case_fails_with_its_file_line(tmp_path):
    path = tmp_path / "cases.qir"
    path.write_text(CASES)
    code, out, err = _opt(path, "--split-input-file", "-p", "dce")
    assert code == 1 and f"{path}:9:" in err and "@a(" in out


def test_verify_diagnostics_accepts_the_expected_error_and_rejects_others(tmp_path):
    path = tmp_path / "cases.qir"
    path.write_text(CASES)
    assert _opt(path, "--split-input-file", "--verify-diagnostics", "-p", "dce")[0] == 0
    path.write_text(CASES.replace("the shape rule gives [2]", "the shape rule gives [7]"))
    code, _, err = _opt(path, "--split-input-file", "--verify-diagnostics", "-p", "dce")
    assert code == 1 and "expected error at line 9" in err
    path.write_text(CASES.replace("@+1 {{", "@+2 {{"))
    assert _opt(path, "--split-input-file", "--verify-diagnostics", "-p", "dce")[0] == 1
    path.write_text(CASES.replace("tensor<3xf32>", "tensor<2xf32>"))  # the case now succeeds
    code, _, err = _opt(path, "--split-input-file", "--verify-diagnostics", "-p", "dce")
    assert code == 1 and "was not produced" in err


def test_split_keeps_file_line_numbers():
    pieces = split_input("// RUN: x\nA\n// -----\nB\n// expected-error@+1 {{boom}}\nC\n", split=True)
    assert [p.first_line for p in pieces] == [1, 4]
    assert pieces[1].text.split("\n")[3] == "B"
    assert [(e.line, e.text) for e in expected_errors(pieces[1])] == [(6, "boom")]


# ---------------------------------------------------------------- printer round trip
@pytest.mark.parametrize("path", ALL_QIR, ids=lambda p: str(p.relative_to(ROOT)))
def test_qir_round_trips(path):
    from qcc.ir.parser import parse, parse_file
    from qcc.ir.printer import print_graph
    text = path.read_text()
    if "RUN:" not in text:
        assert print_graph(parse_file(path)) == text, f"{path} does not print back as written"
        return
    for piece in split_input(text, split=True):
        body = "\n".join(line for line in piece.text.splitlines() if not line.lstrip().startswith("//"))
        if expected_errors(piece) or not body.strip():
            continue
        first = print_graph(parse(piece.text, filename=str(path)), elide_over=None)
        again = print_graph(parse(first, filename=f"{path} (printed)"), elide_over=None)
        assert again == first, f"{path}:{piece.first_line}: printing is not a fixpoint"


# ---------------------------------------------------------------- numerics of float rewrites
FLOAT_EXACT_PASSES = {"dce", "const-fold", "canonicalize"}


def _pipeline(path: Path) -> str:
    run = next(line.split("RUN:", 1)[1] for line in path.read_text().splitlines() if "RUN:" in line)
    argv = shlex.split(run.split("|")[0])
    return argv[argv.index("-p") + 1] if "-p" in argv else ""


def _numeric_cases():
    for path in GOLDEN_FILES:
        pipeline = _pipeline(path)
        names = {item.split("{")[0] for item in pipeline.split(",") if item}
        if names and names <= FLOAT_EXACT_PASSES:
            for i, piece in enumerate(split_input(path.read_text(), split=True)):
                if not expected_errors(piece):
                    yield pytest.param(path, i, pipeline, id=f"{path.relative_to(ROOT)}#{i}")


@pytest.mark.parametrize("path, index, pipeline", list(_numeric_cases()))
def test_golden_rewrites_preserve_numerics(path, index, pipeline):
    """The float interpreter gives the same outputs before and after the pipeline."""
    import numpy as np
    from qcc.ir.parser import parse
    from qcc.sim.interpreter import run_graph
    from qcc.transforms.passmanager import PassManager
    piece = split_input(path.read_text(), split=True)[index]
    before = parse(piece.text, filename=str(path))
    after = parse(piece.text, filename=str(path))
    PassManager.parse(pipeline).run(after)
    rng = np.random.default_rng(index)
    inputs = {v.name: rng.standard_normal(v.shape).astype(v.type.np_dtype) for v in before.inputs}
    want, got = run_graph(before, inputs), run_graph(after, inputs)
    assert list(want) == list(got)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=name)
