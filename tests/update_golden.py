#!/usr/bin/env python3
"""Regenerate the CHECK lines of golden .qir files from qcc-opt's actual output.

    python3 tests/update_golden.py                         # every golden file
    python3 tests/update_golden.py tests/golden/dce.qir    # some of them

Like MLIR's generate-test-checks.py: each file's `// RUN:` command (the part
before `| filecheck`) runs with %s/%S substituted; its output is split at the
`// -----` lines, and every case that succeeds (one without `expected-error`)
gets its CHECK lines replaced by a CHECK-LABEL for the graph and a
CHECK-NEXT for each further line. Review the result with `git diff`: the
expectations are only as right as the person who accepts them.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEPARATOR = re.compile(r"^//\s*-----\s*$")
DIRECTIVE = re.compile(r"//\s*CHECK(?:-NEXT|-SAME|-NOT|-LABEL|-EMPTY)?:")


def golden_files():
    return sorted((ROOT / "tests" / "golden").glob("*.qir")) + sorted((ROOT / "examples").glob("**/golden/*.qir"))


def escape_for_check(line: str) -> str:
    """A literal output line as a FileCheck pattern ({{ and [[ in it escaped as regexes)."""
    return re.sub(r"\{\{|\[\[", lambda m: "{{" + re.escape(m.group(0)) + "}}", line.strip())


def generate_checks(output: str):
    checks = []
    for line in output.splitlines():
        if line.strip():
            kind = "CHECK-LABEL" if line.startswith("qcc.graph ") else ("CHECK-NEXT" if checks else "CHECK")
            checks.append(f"// {kind}: {escape_for_check(line)}")
    return checks


def run_command(path: Path) -> str:
    run = next((line.split("RUN:", 1)[1] for line in path.read_text().splitlines() if "RUN:" in line), None)
    if run is None:
        raise SystemExit(f"{path}: no RUN line")
    command = run.split("| filecheck")[0].replace("%s", str(path)).replace("%S", str(path.parent))
    done = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{path}: `{command}` failed:\n{done.stderr}")
    return done.stdout


def update(path: Path) -> bool:
    lines = path.read_text().split("\n")
    bounds = [-1] + [i for i, line in enumerate(lines) if SEPARATOR.match(line)] + [len(lines)]
    cases = [lines[a + 1:b] for a, b in zip(bounds, bounds[1:])]
    outputs = [o for o in re.split(r"^// -----\n", run_command(path), flags=re.M)]
    succeeding = [i for i, case in enumerate(cases) if not any("expected-error" in line for line in case)]
    if len(outputs) != len(succeeding) and not (not succeeding and outputs == [""]):
        raise SystemExit(f"{path}: {len(outputs)} outputs for {len(succeeding)} succeeding cases")
    for i, output in zip(succeeding, outputs):
        kept = [line for line in cases[i] if not DIRECTIVE.search(line)]
        trailing_blank = bool(kept) and not kept[-1].strip() and i + 1 < len(cases)
        while kept and not kept[-1].strip():
            kept.pop()
        cases[i] = kept + generate_checks(output) + ([""] if trailing_blank or i + 1 < len(cases) else [])
    text = "\n".join("\n// -----\n".join("\n".join(c) for c in cases).split("\n"))
    if not text.endswith("\n"):
        text += "\n"
    changed = text != path.read_text()
    path.write_text(text)
    return changed


if __name__ == "__main__":
    paths = [Path(p).resolve() for p in sys.argv[1:]] or golden_files()
    for p in paths:
        if update(p):
            print(f"updated {p.relative_to(ROOT)}")
