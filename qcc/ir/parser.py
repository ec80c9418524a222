"""The text-IR parser: Lark (LALR) over grammar/qir.lark, building IR directly.

Every error is a ``ParseError`` printed as ``file:line:col: error: message``
with the source line and a caret under the column.
"""
from __future__ import annotations

import functools
import json
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Dict, Optional

import lark
import numpy as np
from lark import Token, Transformer, v_args

from qcc.errors import OpError, ParseError, QccError
from qcc.ir.graph import Graph
from qcc.ir.registry import get_op, is_registered
from qcc.ir.types import FixedPoint, PerAxisQuant, TensorType, UniformQuant


@functools.lru_cache(maxsize=1)
def _lark_parser() -> lark.Lark:
    text = importlib_resources.files("qcc.grammar").joinpath("qir.lark").read_text()
    return lark.Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=True)


class _Fail(Exception):
    def __init__(self, message, token=None, line=None, column=None):
        self.message = message
        self.line = getattr(token, "line", None) if token is not None else line
        self.column = getattr(token, "column", None) if token is not None else column


def _parse_dense(token: Token, t: TensorType) -> np.ndarray:
    body = str(token)[len("dense<["):-len("]>")].strip()
    items = [s.strip() for s in body.split(",")] if body else []
    if len(items) != t.size:
        raise _Fail(f"dense constant has {len(items)} elements but type {t} needs {t.size}", token)
    try:
        if t.dtype == "bool":
            bad = [s for s in items if s not in ("true", "false")]
            if bad:
                raise ValueError(bad[0])
            arr = np.array([s == "true" for s in items], dtype=np.bool_)
        elif t.is_float:
            arr = np.array(items, dtype=np.float64).astype(t.np_dtype) if t.dtype == "f64" else \
                np.array(items, dtype=t.np_dtype)
        else:
            wide = np.array([int(s) for s in items], dtype=object)
            info = np.iinfo(t.np_dtype)
            if len(wide) and (wide.min() < info.min or wide.max() > info.max):
                raise _Fail(f"dense constant has values outside the range of {t.dtype}", token)
            arr = wide.astype(t.np_dtype)
    except (ValueError, TypeError) as e:
        raise _Fail(f"bad number in dense constant: {e}", token) from None
    return arr.reshape(t.shape)


@v_args(inline=True)
class _Builder(Transformer):
    def __init__(self, resources: Optional[Dict[str, np.ndarray]], sidecar: str):
        super().__init__()
        self.aliases: Dict[str, TensorType] = {}
        self.resources = resources
        self.sidecar = sidecar

    # ------------------------------------------------------------ types
    def scalar_type(self, tok):
        return ("scalar", str(tok), None, tok)

    def uniform_type(self, _kw, storage, expressed, scale, zp):
        return self._quant(storage, expressed, lambda: UniformQuant(float(scale), int(zp)))

    def per_axis_type(self, _kw, storage, expressed, axis, *pairs):
        return self._quant(storage, expressed, lambda: PerAxisQuant(
            int(axis), [p[0] for p in pairs], [p[1] for p in pairs]))

    def fixed_type(self, _kw, storage, bits):
        return self._quant(storage, None, lambda: FixedPoint(int(bits)))

    def _quant(self, storage, expressed, make):
        if expressed is not None and str(expressed) != "f32":
            raise _Fail(f"quantized types express f32, got '{expressed}'", expressed)
        if str(storage) not in ("i8", "i16", "i32", "i64", "u8", "u16"):
            raise _Fail(f"quantized storage must be an integer type, got '{storage}'", storage)
        try:
            return ("quant", str(storage), make(), storage)
        except ValueError as e:
            raise _Fail(str(e), storage) from None

    def scale_zp(self, scale, zp):
        return (float(scale), int(zp))

    def number(self, tok):
        return tok

    def alias_ref(self, tok):
        if str(tok) not in self.aliases:
            raise _Fail(f"undefined type alias '{tok}'", tok)
        return self.aliases[str(tok)]

    def alias_def(self, tok, elem):
        if str(tok) in self.aliases:
            raise _Fail(f"type alias '{tok}' defined twice", tok)
        self.aliases[str(tok)] = elem
        return None

    def tensor_type(self, shape, elem):
        dims = [int(d) for d in str(shape).split("x")[:-1]] if shape is not None else []
        _, dtype, quant, tok = elem
        try:
            return TensorType(tuple(dims), dtype, quant)
        except ValueError as e:
            raise _Fail(str(e), tok) from None

    def type_list(self, *types):
        return list(types)

    # ------------------------------------------------------------ attributes
    def int_value(self, tok):
        return int(tok)

    def float_value(self, tok):
        return float(tok)

    def string_value(self, tok):
        return _unquote(tok)

    def true_value(self):
        return True

    def false_value(self):
        return False

    def list_value(self, *items):
        return [] if items == (None,) else list(items)

    def array_value(self, dense, t):
        return _parse_dense(dense, t)

    def attr_entry(self, key, value):
        return (key, value)

    def attr_dict(self, *entries):
        out = {}
        for entry in entries:
            if entry is None:
                continue
            key, value = entry
            if str(key) in out:
                raise _Fail(f"attribute '{key}' given twice", key)
            out[str(key)] = value
        return out

    def loc(self, tok):
        return _unquote(tok)

    # ------------------------------------------------------------ ops and graph
    def value_list(self, *toks):
        return list(toks)

    def operands(self, *toks):
        return ("operands", list(toks))

    def dense_payload(self, tok):
        return ("dense", tok)

    def resource_payload(self, tok):
        return ("resource", tok)

    def op(self, lhs, name, args, attrs, types, loc):
        return ("op", lhs, name, args, attrs or {}, types, loc)

    def return_op(self, *items):
        items = [i for i in items if i is not None]
        if not items:
            return ("return", [], [])
        return ("return", items[:-1], items[-1])

    def arg(self, tok, t, attrs):
        return ("arg", tok, t, attrs or {})

    def result_sig(self, t, attrs):
        return ("sig", t, attrs or {})

    def graph(self, name, *rest):
        g = Graph(str(name)[1:])
        env: Dict[str, object] = {}
        items = [r for r in rest if r is not None]
        sigs = [r[1:] for r in items if r[0] == "sig"]
        for _, tok, t, attrs in (r for r in items if r[0] == "arg"):
            if str(tok) in env:
                raise _Fail(f"value '{tok}' defined twice", tok)
            env[str(tok)] = g.add_input(str(attrs.get("name", str(tok)[1:])), t)
        for item in items:
            if item[0] == "op":
                self._build_op(g, env, *item[1:])
            elif item[0] == "return":
                _, toks, types = item
                values = [self._lookup(env, t) for t in toks]
                if len(sigs) != len(values):
                    where = toks[0] if toks else name
                    raise _Fail(f"graph declares {len(sigs)} results but returns {len(values)}", where)
                for tok, v, t, (st, _) in zip(toks, values, types, sigs):
                    if v.type != t or v.type != st:
                        raise _Fail(f"returned value {tok} has type {v.type}, the return says {t} "
                                    f"and the signature {st}", tok)
                g.set_outputs(values, [str(a.get("name", f"output_{k}")) for k, (_, a) in enumerate(sigs)])
        return g

    def _lookup(self, env, tok):
        try:
            return env[str(tok)]
        except KeyError:
            raise _Fail(f"use of undefined value '{tok}'", tok) from None

    def _build_op(self, g, env, lhs, name, args, attrs, types, loc):
        opname = str(name)
        if not is_registered(opname):
            raise _Fail(f"unknown op '{opname}'", name)
        if len(lhs) != len(types):
            raise _Fail(f"'{opname}' defines {len(lhs)} values but lists {len(types)} result types", name)
        operands = []
        if args is not None:
            kind, payload = args
            if kind == "operands":
                operands = [self._lookup(env, t) for t in payload]
            elif opname != "qcc.const":
                raise _Fail(f"only 'qcc.const' takes a constant payload, not '{opname}'", name)
            elif kind == "dense":
                attrs = dict(attrs, value=_parse_dense(payload, types[0]))
            else:
                rname = str(payload)[1:]
                if self.resources is None or rname not in self.resources:
                    raise _Fail(f"constant @{rname} has no data: expected it in {self.sidecar}", payload)
                data = np.asarray(self.resources[rname])
                t = types[0]
                if data.shape != t.shape or data.dtype != t.np_dtype:
                    raise _Fail(f"resource @{rname} is {data.dtype}{list(data.shape)}, the type says {t}", payload)
                attrs = dict(attrs, value=data)
        try:
            op = g.add_op(opname, operands, attrs, types, name=loc or "")
            get_op(opname).verify(op)
        except OpError as e:
            raise _Fail(str(e), name) from None
        for tok, r in zip(lhs, op.results):
            if str(tok) in env:
                raise _Fail(f"value '{tok}' defined twice", tok)
            env[str(tok)] = r

    def start(self, *items):
        return items[-1]


def _unquote(tok) -> str:
    try:
        return json.loads(str(tok))
    except json.JSONDecodeError as e:
        raise _Fail(f"bad string literal: {e.msg}", tok) from None


_TERMINAL_NAMES = {
    "ALIAS": "a type alias", "FIXED": "'!q.fixed'", "UNIFORM": "'!q.uniform'",
    "SCALAR_TYPE": "an element type", "SHAPE": "a shape", "DENSE": "'dense<[...]>'",
    "SYMBOL": "an @name", "VALUE_ID": "a %value", "OP_NAME": "an op name", "KEY": "an attribute name",
    "FLOAT": "a number", "INT": "an integer", "STRING": "a string", "LBRACE": "'{'", "RBRACE": "'}'",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LESSTHAN": "'<'", "MORETHAN": "'>'",
    "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "__ANON_0": "'->'",
}


def _describe_unexpected(e: lark.exceptions.UnexpectedInput) -> str:
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        return f"unexpected character {e.char!r}"
    if isinstance(e, lark.exceptions.UnexpectedEOF):
        return "unexpected end of input"
    if isinstance(e, lark.exceptions.UnexpectedToken):
        tok = e.token
        if tok.type == "$END":
            return "unexpected end of input"
        expected = sorted({_TERMINAL_NAMES.get(t, f"'{t.lower()}'" if t.isupper() else t)
                           for t in e.expected})
        shown = ", ".join(expected[:8]) + (", ..." if len(expected) > 8 else "")
        return f"unexpected '{tok}' (expected {shown})"
    return str(e)


# Nesting of '[' in attribute values; the tree transformer recurses once per level,
# so a deeper list would exhaust Python's stack instead of giving a message.
MAX_NESTING = 64


def _too_deep(text: str) -> Optional[Token]:
    """The first '[' token nested deeper than MAX_NESTING, else None (lexing errors are left to the parser)."""
    if text.count("[") <= MAX_NESTING:
        return None
    depth = 0
    try:
        for tok in _lark_parser().lex(text):
            if tok.type == "LSQB":
                depth += 1
                if depth > MAX_NESTING:
                    return tok
            elif tok.type == "RSQB":
                depth -= 1
    except lark.exceptions.LarkError:
        pass
    return None


def parse(text: str, filename: str = "<string>", resources: Optional[Dict[str, np.ndarray]] = None,
          sidecar: Optional[str] = None) -> Graph:
    """Parse text IR into a Graph; ``resources`` holds the data of ``@name`` constants."""
    lines = text.splitlines()

    def fail(message, line, column):
        src = lines[line - 1] if line and 0 < line <= len(lines) else ""
        return ParseError(message, filename, line or 0, column or 0, src)

    deep = _too_deep(text)
    if deep is not None:
        raise fail(f"attribute lists nest deeper than {MAX_NESTING} levels", deep.line, deep.column)
    try:
        tree = _lark_parser().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        raise fail(_describe_unexpected(e), e.line, e.column) from None
    builder = _Builder(resources, sidecar or "a sidecar .npz (pass resources=...)")
    try:
        return builder.transform(tree)
    except lark.exceptions.VisitError as e:
        orig = e.orig_exc
        if isinstance(orig, _Fail):
            line, col = orig.line, orig.column
            if line is None:
                meta = getattr(e.obj, "meta", None)
                line, col = getattr(meta, "line", 0), getattr(meta, "column", 0)
            raise fail(orig.message, line, col) from None
        if isinstance(orig, QccError):
            meta = getattr(e.obj, "meta", None)
            raise fail(str(orig), getattr(meta, "line", 0), getattr(meta, "column", 0)) from None
        raise


def parse_file(path, resources: Optional[Dict[str, np.ndarray]] = None) -> Graph:
    """Parse a .qir file; constants printed as ``@name`` load from the sidecar .npz."""
    from qcc.errors import InputError
    from qcc.ir.printer import sidecar_path
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read: {e}") from None
    side = sidecar_path(path)
    if resources is None and side.exists():
        try:
            with np.load(side, allow_pickle=False) as data:
                resources = {k: data[k] for k in data.files}
        except Exception as e:  # a corrupt sidecar is a user error, not a crash
            raise InputError(f"{side}: cannot read constants: {e}") from None
    return parse(text, str(path), resources, str(side))
