"""``qcc-opt --split-input-file`` and ``--verify-diagnostics``, as ``mlir-opt`` has them.

``--split-input-file`` cuts the input at lines that are exactly ``// -----``
and runs the pipeline on each piece on its own; the printed results are joined
by ``// -----`` lines, so one FileCheck run checks every case of a file. Each
piece keeps its line numbers in the whole file (the text before it becomes
blank lines), so messages point at the real line.

``--verify-diagnostics`` turns error cases into passing tests. A comment

    // expected-error {{text}}          any error whose message contains text
    // expected-error@+1 {{text}}       ... reported at this comment's line + 1
    // expected-error@-2 {{text}}       ... reported two lines above

states the error that the piece must produce. A piece with expectations must
fail with a message containing each text (at the stated line); a piece
without them must succeed. Mismatches are reported as ``file:line: error:``
and make the exit code 1; expected errors are not printed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional

SEPARATOR = re.compile(r"^//\s*-----\s*$")
EXPECTED_ERROR = re.compile(r"//\s*expected-error(?:@([+-]\d+))?\s*\{\{(.*)\}\}\s*$")


@dataclass
class Piece:
    """One ``// -----`` separated part of an input file, padded so line numbers match the file."""

    text: str
    first_line: int  # 1-based line of the piece in the file


@dataclass
class ExpectedError:
    text: str
    line: Optional[int]  # None: any line
    comment_line: int


def split_input(text: str, split: bool) -> List[Piece]:
    if not split:
        return [Piece(text, 1)]
    lines = text.split("\n")
    pieces, start = [], 0
    for i, line in enumerate(lines + [None]):
        if line is None or SEPARATOR.match(line):
            pieces.append(Piece("\n" * start + "\n".join(lines[start:i]), start + 1))
            start = i + 1
    return pieces


def expected_errors(piece: Piece) -> List[ExpectedError]:
    found = []
    for i, line in enumerate(piece.text.split("\n")):
        m = EXPECTED_ERROR.search(line)
        if m:
            found.append(ExpectedError(m.group(2), i + 1 + int(m.group(1)) if m.group(1) else None, i + 1))
    return found


def unmet_expectations(filename: str, expected: List[ExpectedError], message: Optional[str]) -> List[str]:
    """Messages for every way ``message`` (None: the piece succeeded) misses ``expected``."""
    if not expected:
        return [] if message is None else [f"{filename}: unexpected error: {message}"]
    problems = []
    for e in expected:
        where = f" at line {e.line}" if e.line is not None else ""
        if message is None:
            problems.append(f"{filename}:{e.comment_line}: error: expected error{where} "
                            f"{{{{{e.text}}}}} was not produced")
        elif e.text not in message or (e.line is not None and f":{e.line}:" not in message):
            problems.append(f"{filename}:{e.comment_line}: error: expected error{where} {{{{{e.text}}}}}, "
                            f"got: {message}")
    return problems
