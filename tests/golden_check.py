"""A small FileCheck for golden .qir tests, and the golden-file format.

Directives (LLVM FileCheck semantics, the subset the golden files use):

* ``CHECK: pat``        pat occurs at or after the end of the previous match;
* ``CHECK-NEXT: pat``   pat occurs on the line after the previous match;
* ``CHECK-SAME: pat``   pat occurs later on the line of the previous match;
* ``CHECK-EMPTY:``      the line after the previous match is empty;
* ``CHECK-NOT: pat``    pat does not occur between the surrounding matches;
* ``CHECK-LABEL: pat``  like CHECK (anchors a graph; CHECK-NOT ranges stop at it).

A pattern is literal text (runs of blanks match any run of blanks) with
``{{regex}}`` pieces, ``[[NAME:regex]]`` captures and ``[[NAME]]`` uses.

A golden file starts with ``// RUN: qcc-opt %s <options>`` (``%S`` is the
file's folder). Cases are separated by ``// -----`` lines. A case with
``// expected-error {{text}}`` must fail with a message containing ``text``;
``expected-error@+N`` / ``@-N`` also pins the reported line to the comment's
line plus N.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

DIRECTIVE = re.compile(r"//\s*(CHECK(?:-NEXT|-SAME|-NOT|-LABEL|-EMPTY)?):(.*)$")
EXPECTED_ERROR = re.compile(r"//\s*expected-error(?:@([+-]\d+))?\s*\{\{(.*)\}\}\s*$")
SEPARATOR = re.compile(r"^//\s*-----\s*$")


class CheckFailure(AssertionError):
    pass


@dataclass
class Check:
    kind: str
    pattern: str
    lineno: int  # 1-based line of the directive in the golden file


@dataclass
class Case:
    """One ``// -----`` section of a golden file."""

    text: str  # the section's lines, padded with blank lines so line numbers match the file
    first_line: int  # 1-based
    last_line: int
    checks: List[Check] = field(default_factory=list)
    errors: List[Tuple[Optional[int], str]] = field(default_factory=list)  # (line or None, text)


def parse_checks(text: str, first_line: int = 1) -> List[Check]:
    checks = []
    for i, line in enumerate(text.splitlines()):
        m = DIRECTIVE.search(line)
        if m:
            checks.append(Check(m.group(1), m.group(2).strip(), first_line + i))
    return checks


def split_cases(text: str) -> List[Case]:
    lines = text.splitlines()
    cases, start = [], 0
    bounds = [i for i, line in enumerate(lines) if SEPARATOR.match(line)] + [len(lines)]
    for end in bounds:
        body = lines[start:end]
        padded = "\n" * start + "\n".join(body) + "\n"
        case = Case(padded, start + 1, end)
        case.checks = parse_checks("\n".join(body), start + 1)
        for j, line in enumerate(body):
            m = EXPECTED_ERROR.search(line)
            if m:
                line_no = start + 1 + j + int(m.group(1)) if m.group(1) else None
                case.errors.append((line_no, m.group(2)))
        cases.append(case)
        start = end + 1
    return cases


def run_line(text: str) -> str:
    for line in text.splitlines():
        m = re.search(r"//\s*RUN:\s*(.*)$", line)
        if m:
            return m.group(1).strip()
    raise CheckFailure("golden file has no '// RUN:' line")


def _compile(pattern: str, variables: Dict[str, str]) -> "re.Pattern[str]":
    out, pos = [], 0
    for m in re.finditer(r"\{\{(.*?)\}\}|\[\[([A-Za-z_]\w*)(?::(.*?))?\]\]", pattern):
        out.append(_literal(pattern[pos:m.start()]))
        if m.group(1) is not None:
            out.append(f"(?:{m.group(1)})")
        elif m.group(3) is not None:
            out.append(f"(?P<{m.group(2)}>{m.group(3)})")
        elif m.group(2) in variables:
            out.append(re.escape(variables[m.group(2)]))
        else:
            raise CheckFailure(f"variable [[{m.group(2)}]] is used before it is defined")
        pos = m.end()
    out.append(_literal(pattern[pos:]))
    return re.compile("".join(out))


def _literal(text: str) -> str:
    return r"[ \t]+".join(re.escape(part) for part in re.split(r"[ \t]+", text))


def check_output(checks: List[Check], output: str, source: str = "golden file") -> None:
    """Raise CheckFailure with a readable message unless ``output`` satisfies ``checks``."""
    lines = output.splitlines()
    variables: Dict[str, str] = {}
    cur_line, cur_col, last_line = 0, 0, -1
    pending_not: List[Check] = []

    def fail(c: Check, what: str, near: int):
        snippet = "\n".join(f"  {i + 1:4}| {lines[i]}" for i in range(max(near, 0), min(near + 6, len(lines))))
        raise CheckFailure(f"{source}:{c.lineno}: {c.kind}: {what}\n  pattern: {c.pattern!r}\n"
                           f"output near line {near + 1}:\n{snippet or '  (end of output)'}")

    def search(c: Check, line_idx: int, col: int):
        if line_idx >= len(lines):
            return None
        m = _compile(c.pattern, variables).search(lines[line_idx], col)
        return m

    def check_nots(end_line: int, end_col: int):
        for n in pending_not:
            rx = _compile(n.pattern, variables)
            for i in range(cur_line, min(end_line + 1, len(lines))):
                start = cur_col if i == cur_line else 0
                stop = end_col if i == end_line else len(lines[i])
                m = rx.search(lines[i], start)
                if m and m.end() <= stop:
                    fail(n, "excluded pattern found", i)
        pending_not.clear()

    for c in checks:
        if c.kind == "CHECK-NOT":
            pending_not.append(c)
            continue
        found = None
        if c.kind in ("CHECK", "CHECK-LABEL"):
            for i in range(cur_line, len(lines)):
                m = search(c, i, cur_col if i == cur_line else 0)
                if m:
                    found = (i, m)
                    break
            if not found:
                fail(c, "pattern not found", cur_line)
        elif c.kind == "CHECK-NEXT":
            if last_line < 0:
                fail(c, "CHECK-NEXT cannot be the first directive", 0)
            m = search(c, last_line + 1, 0)
            if not m:
                fail(c, "pattern not found on the next line", last_line + 1)
            found = (last_line + 1, m)
        elif c.kind == "CHECK-SAME":
            if last_line < 0:
                fail(c, "CHECK-SAME cannot be the first directive", 0)
            m = search(c, last_line, cur_col)
            if not m:
                fail(c, "pattern not found on the same line", last_line)
            found = (last_line, m)
        elif c.kind == "CHECK-EMPTY":
            i = last_line + 1
            if i >= len(lines) or lines[i].strip():
                fail(c, "the next line is not empty", i)
            check_nots(i, 0)
            cur_line, cur_col, last_line = i, 0, i
            continue
        i, m = found
        check_nots(i, m.start())
        variables.update({k: v for k, v in m.groupdict().items() if v is not None})
        cur_line, cur_col, last_line = i, m.end(), i
    check_nots(len(lines) - 1, len(lines[-1]) if lines else 0)


def escape_for_check(line: str) -> str:
    """A literal output line as a CHECK pattern (``{{``/``[[`` in it escaped)."""
    return re.sub(r"\{\{|\[\[", lambda m: "{{" + re.escape(m.group(0)) + "}}", line.strip())


def generate_checks(output: str) -> List[str]:
    """CHECK lines for ``output``: a CHECK-LABEL per graph, then CHECK-NEXT for every line."""
    out = []
    for line in output.splitlines():
        if not line.strip():
            continue
        kind = "CHECK-LABEL" if line.startswith("qcc.graph ") else "CHECK-NEXT"
        if not out and kind != "CHECK-LABEL":
            kind = "CHECK"
        out.append(f"// {kind}: {escape_for_check(line)}")
    return out


def rewrite_case_checks(case_lines: List[str], new_checks: List[str]) -> List[str]:
    """The case's lines with its CHECK directives replaced by ``new_checks`` (placed after the IR)."""
    kept = [line for line in case_lines if not DIRECTIVE.search(line)]
    while kept and not kept[-1].strip():
        kept.pop()
    return kept + new_checks
