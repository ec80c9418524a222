"""C identifiers and comments from untrusted model names.

ONNX node and tensor names can hold anything: ``*/``, quotes, backslashes,
newlines, non-ASCII. Identifiers keep ``[A-Za-z0-9_]`` (others become ``_``),
never start with a digit, never start with ``_`` (leading underscores are reserved
in C) and never equal a C keyword. Comment text is printable ASCII on one line
with ``*/`` and ``/*`` broken apart, so a name can never end a comment or
start a nested one.
"""
from __future__ import annotations

import re

C_KEYWORDS = frozenset("""
auto break case char const continue default do double else enum extern float for goto if inline int
long register restrict return short signed sizeof static struct switch typedef union unsigned void
volatile while _Bool _Complex _Imaginary main
""".split())


def c_identifier(name: str, fallback: str = "model", max_len: int = 40) -> str:
    """A valid, non-reserved C identifier made from ``name``."""
    ident = re.sub(r"[^A-Za-z0-9_]", "_", name or "")
    ident = re.sub(r"_+", "_", ident).strip("_")[:max_len].rstrip("_")
    if not ident:
        ident = fallback
    if ident[0].isdigit():
        ident = f"{fallback}_{ident}"
    if ident in C_KEYWORDS:
        ident += "_"
    return ident


def c_comment(text: str, max_len: int = 100) -> str:
    """``text`` made safe inside a ``/* ... */`` comment: ASCII, one line, no comment delimiters."""
    out = []
    for ch in str(text):
        if ch in "\r\n\t":
            out.append(" ")
        elif 32 <= ord(ch) < 127:
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    s = "".join(out)
    # '*/' ends a comment, '/*' triggers -Wcomment, and a trailing backslash would splice lines.
    # '??' could start a trigraph (C99 translates them even in comments).
    while "*/" in s or "/*" in s or "??" in s:
        s = s.replace("*/", "* /").replace("/*", "/ *").replace("??", "? ?")
    if len(s) > max_len:
        s = s[:max_len - 3] + "..."
    if s.endswith("\\"):
        s += " "
    return s
