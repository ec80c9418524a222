"""Layers whose kernels are the same code share one function (repeated blocks: DS-CNN, MobileNet).

Every kernel is specialized for its layer (shapes, paddings, per-channel literals),
and it names its own weight, bias and shift tables. Two single-function kernels
whose C differs only in those table names compute with the same instructions:
the first becomes ``<fn>_k(..., const T0 *t0, ...)`` with the tables as arguments,
and each layer keeps its own function, now a call of the shared one with its
tables, so per-layer names (reports, cycle attribution) stay as they were and
the arithmetic is untouched (the same statements, other addresses).

Kernels with helper functions (the gemm paths' ``_pair``/``_one``/``_col``,
which name the tables themselves) and ones that differ in any literal are left
alone.
"""
from __future__ import annotations

import re
from typing import Dict, List, Sequence, Tuple

_SIGNATURE = re.compile(r"^static QCC_NOINLINE void (\w+)\(([^)]*)\)$", re.M)
_STATIC_LINE = re.compile(r"^static\b", re.M)
_IDENTIFIER = re.compile(r"\b[A-Za-z_]\w*\b")


def _split(text: str):
    """(comment, function name, parameters, body from the signature on) of a single-function kernel, or None."""
    if len(_STATIC_LINE.findall(text)) != 1:
        return None
    m = _SIGNATURE.search(text)
    if m is None:
        return None
    return text[:m.start()], m.group(1), m.group(2), text[m.start():]


def share_kernels(texts: Sequence[str], tables: Dict[str, str]) -> Tuple[List[str], int]:
    """``texts`` with equal kernels merged; ``tables`` maps each constant table symbol to its C type.

    Returns the new texts (in the old order, a shared body where its first layer was) and how many
    kernels now call another's code.
    """
    def table_names(body: str) -> List[str]:
        """The table symbols ``body`` reads, in order of first appearance."""
        return list(dict.fromkeys(t for t in _IDENTIFIER.findall(body) if t in tables))
    keys: List[object] = []
    groups: Dict[object, List[int]] = {}
    parts = []
    for i, text in enumerate(texts):
        split = _split(text) if tables else None
        parts.append(split)
        if split is None:
            keys.append(None)
            continue
        _, fn, params, body = split
        symbols = table_names(body)
        canon = re.sub(rf"\b{re.escape(fn)}\b", "@FN@", body)
        for k, s in enumerate(symbols):
            canon = re.sub(rf"\b{re.escape(s)}\b", f"@T{k}@", canon)
        key = (canon, tuple(tables[s] for s in symbols))
        keys.append(key)
        groups.setdefault(key, []).append(i)
    out, shared = [], 0
    for i, text in enumerate(texts):
        key = keys[i]
        members = groups.get(key, []) if key is not None else []
        if len(members) < 2:
            out.append(text)
            continue
        comment, fn, params, body = parts[i]
        symbols = table_names(body)
        first = parts[members[0]][1]
        kernel = f"{first}_k"
        names = [re.search(r"(\w+)\s*$", p).group(1) for p in params.split(",")]
        args = ", ".join(names + symbols)
        wrapper = f"{comment}static QCC_NOINLINE void {fn}({params})\n{{\n    {kernel}({args});\n}}"
        if i == members[0]:
            extra = ", ".join(f"const {key[1][k]} *restrict t{k}" for k in range(len(symbols)))
            code = re.sub(rf"\b{re.escape(fn)}\b", kernel, body)
            for k, s in enumerate(symbols):
                code = re.sub(rf"\b{re.escape(s)}\b", f"t{k}", code)
            if extra:
                code = code.replace(f"void {kernel}({params})", f"void {kernel}({params}, {extra})", 1)
            layers = ", ".join(parts[j][1] for j in members)
            out.append(f"/* The code of {len(members)} layers ({layers}): their tables are arguments. */\n"
                       f"{code}\n\n{wrapper}")
        else:
            out.append(wrapper)
            shared += 1
    return out, shared
