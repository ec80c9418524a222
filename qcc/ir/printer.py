"""The text-IR printer.

Rules that make the output deterministic and round-trippable:

* ops in topological order, ties broken by creation order; results renumbered
  ``%0, %1, ...``; graph arguments keep a sanitized form of their name;
* attributes sorted by key; floats in the shortest form that reads back to the
  same value (f32 data as f32, attributes as f64);
* per-axis quantized types get ``!qaN`` aliases in first-use order;
* a constant with more than ``elide_over`` elements prints as a named resource
  ``@name`` whose data lives in a sidecar ``.npz`` (``write_qir``); with
  ``elide_over=None`` every constant prints whole as ``dense<[...]>``.

``parse(print_graph(g))`` rebuilds an isomorphic graph, and printing that
again gives the same text.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from qcc.fileio import write_files
from qcc.ir.graph import Graph, Value
from qcc.ir.types import FixedPoint, PerAxisQuant, TensorType, UniformQuant, format_float, format_quant, format_type

DEFAULT_ELIDE_OVER = 16
_IDENT = re.compile(r"[^A-Za-z0-9_]")


def sanitize(name: str, fallback: str = "v") -> str:
    """An identifier made of [A-Za-z0-9_] from an untrusted name."""
    s = _IDENT.sub("_", name)
    return s or fallback


def _format_scalar(x, dtype: str) -> str:
    if dtype == "bool":
        return "true" if x else "false"
    if dtype == "f32":
        s = str(np.float32(x))  # numpy prints the shortest f32 round-trip form
        if s in ("inf", "-inf", "nan"):
            return s
        return s if any(c in s for c in ".e") else s + ".0"
    if dtype == "f64":
        return format_float(x)
    return str(int(x))


def format_dense(array: np.ndarray, dtype: str) -> str:
    flat = np.asarray(array).reshape(-1)
    if dtype in ("f32", "f64", "bool"):
        body = ", ".join(_format_scalar(x, dtype) for x in flat)
    else:
        body = ", ".join(map(str, flat.tolist()))
    return f"dense<[{body}]>"


def format_attr(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format_float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    if isinstance(value, np.ndarray):
        from qcc.ir.types import dtype_of_numpy
        dtype = dtype_of_numpy(value.dtype)
        return f"{format_dense(value, dtype)} : {format_type(TensorType(value.shape, dtype))}"
    raise TypeError(f"cannot print attribute value of type {type(value).__name__}")


class _Printer:
    def __init__(self, graph: Graph, elide_over: Optional[int]):
        self.g = graph
        self.elide_over = elide_over
        self.names: Dict[int, str] = {}
        self.aliases: Dict[str, str] = {}
        self.resources: Dict[str, np.ndarray] = {}

    def _alias_types(self, types):
        for t in types:
            if isinstance(t.quant, PerAxisQuant):
                text = format_quant(t.quant, t.dtype)
                if text not in self.aliases:
                    self.aliases[text] = f"!qa{len(self.aliases)}"

    def _type(self, t: TensorType) -> str:
        return format_type(t, self.aliases)

    def _resource_name(self, op) -> str:
        base = re.sub(r"[^A-Za-z0-9_.]", "_", op.name) if op.name else "cst"
        if not base[0].isalpha() and base[0] != "_":
            base = "_" + base
        name, i = base, 1
        while name in self.resources:
            name = f"{base}_{i}"
            i += 1
        return name

    def run(self) -> str:
        g = self.g
        ops = g.ops
        self._alias_types(v.type for v in g.inputs)
        for op in ops:
            self._alias_types(r.type for r in op.results)
        self._alias_types(v.type for v in g.outputs)

        taken = set()
        args = []
        for i, v in enumerate(g.inputs):
            name = sanitize(v.name, f"arg{i}")
            if name.isdigit() or name in taken:
                name = f"arg{i}"
                while name in taken:
                    name += "_"
            taken.add(name)
            self.names[id(v)] = "%" + name
            extra = f" {{name = {json.dumps(v.name, ensure_ascii=True)}}}" if name != v.name else ""
            args.append(f"%{name}: {self._type(v.type)}{extra}")
        results = [f"{self._type(v.type)} {{name = {json.dumps(n, ensure_ascii=True)}}}"
                   for v, n in zip(g.outputs, g.output_names)]

        lines = [f"{alias} = {text}" for text, alias in self.aliases.items()]
        lines.append(f"qcc.graph @{sanitize(g.name, 'main')}({', '.join(args)}) -> "
                     f"({', '.join(results)}) {{")
        counter = 0
        for op in ops:
            lhs = []
            for r in op.results:
                self.names[id(r)] = f"%{counter}"
                lhs.append(f"%{counter}")
                counter += 1
            lines.append("  " + self._op(op, lhs))
        if g.outputs:
            outs = ", ".join(self._name(v) for v in g.outputs)
            types = ", ".join(self._type(v.type) for v in g.outputs)
            lines.append(f"  qcc.return {outs} : {types}")
        else:
            lines.append("  qcc.return")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _name(self, v: Value) -> str:
        try:
            return self.names[id(v)]
        except KeyError:
            return "%<<undefined>>"

    def _op(self, op, lhs: List[str]) -> str:
        text = f"{', '.join(lhs)} = {op.opname}"
        attrs = dict(op.attrs)
        if op.opname == "qcc.const":
            value = attrs.pop("value")
            t = op.results[0].type
            if self.elide_over is not None and value.size > self.elide_over:
                rname = self._resource_name(op)
                self.resources[rname] = value
                text += f" @{rname}"
            else:
                text += " " + format_dense(value, t.dtype)
        elif op.operands:
            text += " " + ", ".join(self._name(v) for v in op.operands)
        if attrs:
            text += " {" + ", ".join(f"{k} = {format_attr(attrs[k])}" for k in sorted(attrs)) + "}"
        text += " : " + ", ".join(self._type(r.type) for r in op.results)
        if op.name:
            text += f" loc({json.dumps(op.name, ensure_ascii=True)})"
        return text


def print_graph_with_resources(graph: Graph, elide_over: Optional[int] = DEFAULT_ELIDE_OVER
                               ) -> Tuple[str, Dict[str, np.ndarray]]:
    """The text of ``graph`` and the arrays of the constants printed as resources."""
    p = _Printer(graph, elide_over)
    text = p.run()
    return text, p.resources


def print_graph(graph: Graph, elide_over: Optional[int] = DEFAULT_ELIDE_OVER) -> str:
    """The text IR of ``graph`` (large constants shown as ``@resource`` names)."""
    return print_graph_with_resources(graph, elide_over)[0]


def sidecar_path(path) -> Path:
    """Where the constants of ``net.qir`` live: ``net.npz`` beside it."""
    return Path(path).with_suffix(".npz")


def write_qir(graph: Graph, path, elide_over: Optional[int] = DEFAULT_ELIDE_OVER):
    """Write ``path`` and, when constants are elided, its sidecar ``.npz``, atomically."""
    text, resources = print_graph_with_resources(graph, elide_over)
    path = Path(path)
    files = [(path, text.encode())]
    if resources:
        import io
        buf = io.BytesIO()
        np.savez(buf, **resources)
        files.append((sidecar_path(path), buf.getvalue()))
    write_files(files)
