"""Pipeline text: reading pass options from strings and writing them back.

A pipeline is ``name,name{option=value,...}``. This module knows the syntax
and how option text becomes a typed value; it knows nothing of the pass
registry (``qcc.transforms.passmanager`` looks names up and builds the passes).

    syntax           elements split on top-level commas, outside braces,
                     brackets and quotes; options ``{key=value,...}``
    value typing     by the option's type hint: int (``int(text, 0)``, so
                     0x10 works), float, bool (true/false/1/0/yes/no/on/off),
                     str (quotes optional), ``Literal[...]`` choices,
                     ``Optional[X]`` (``none``), lists and tuples ``[a,b]``
    formatting       ``_format_option`` is the inverse: a value written so it
                     parses back to itself (``Pass.spec`` round-trips)
"""
from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Dict, List, Union

from qcc.errors import InputError



class PipelineError(InputError):
    """A pipeline string that names an unknown pass or option, or has bad syntax."""


_NO_DEFAULT = object()


def check_option(ok: bool, owner: str, key: str, allowed: str, value) -> None:
    """Refuse an option value out of range where it is read: ``option 'p' of pass 'calibrate' ...``."""
    if not ok:
        raise PipelineError(f"option '{key}' of {owner} must be {allowed}, got {_format_option(value)}")


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _NO_DEFAULT


def _format_option(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_option(v) for v in value) + "]"
    if isinstance(value, str) and (not value or re.search(r"[,{}\[\]=\"'\s]", value)):
        return '"' + value + '"'  # so the spec parses back
    return str(value)


def _split_top(text: str, sep: str, where: str) -> List[str]:
    """Split on ``sep`` outside braces, brackets and quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unbalanced '{c}' at column {i + 1} of {where}")
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise PipelineError(f"unclosed {'quote' if quote else 'brace or bracket'} in {where}")
    parts.append(text[start:])
    return parts


def _parse_item(item: str, where: str):
    item = item.strip()
    m = re.fullmatch(r"([A-Za-z0-9_-]+)\s*(?:\{(.*)\})?", item, re.S)
    if not m:
        raise PipelineError(f"cannot read pipeline element '{item}' in {where}: "
                            f"expected name or name{{option=value,...}}")
    name, body = m.group(1), m.group(2)
    options: Dict[str, str] = {}
    if body is not None and body.strip():
        for part in _split_top(body, ",", f"options of '{name}'"):
            if "=" not in part:
                raise PipelineError(f"option '{part.strip()}' of '{name}' needs a value (option=value)")
            key, value = part.split("=", 1)
            key = key.strip()
            if key in options:
                raise PipelineError(f"option '{key}' of '{name}' given twice")
            options[key] = value.strip()
    return name, options


def _convert(text: str, hint, what: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        if text in ("none", "None") and type(None) in args:
            return None
        return _convert(text, inner[0], what) if len(inner) == 1 else text
    if origin is typing.Literal:
        value = text.strip("\"'")
        if value not in [str(a) for a in args]:
            raise PipelineError(f"{what} must be one of {', '.join(map(str, args))}, got '{text}'")
        return next(a for a in args if str(a) == value)
    if origin in (list, tuple, List, typing.Sequence) or hint in (list, tuple):
        inner = args[0] if args else str
        if not (text.startswith("[") and text.endswith("]")):
            raise PipelineError(f"{what} takes a list written [a,b,...], got '{text}'")
        body = text[1:-1].strip()
        items = [_convert(p.strip(), inner, what) for p in _split_top(body, ",", what)] if body else []
        return tuple(items) if (origin is tuple or hint is tuple) else items
    if hint is bool:
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise PipelineError(f"{what} takes true or false, got '{text}'")
    if hint is int:
        try:
            return int(text, 0)
        except ValueError:
            raise PipelineError(f"{what} takes an integer, got '{text}'") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise PipelineError(f"{what} takes a number, got '{text}'") from None
    if hint is str or hint is Any or hint is None:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            return text[1:-1]
        return text
    raise PipelineError(f"{what} has a type qcc cannot read from text ({hint!r})")


def _describe_options(fields: Dict[str, Any]) -> str:
    if not fields:
        return "it takes no options"
    return "valid options: " + ", ".join(f"{k} ({_type_name(t)})" for k, t in fields.items())


def _type_name(hint) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "|".join(map(str, typing.get_args(hint)))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def option_types(cls: type) -> Dict[str, Any]:
    """Option name -> type hint of a pass class."""
    hints = typing.get_type_hints(cls, include_extras=False)
    return {f.name: hints.get(f.name, str) for f in cls.option_fields()}


def describe_pass_options(cls: type) -> List[str]:
    """``name: type = default`` for each option of a pass class (for --list-passes)."""
    out = []
    fields = {f.name: f for f in cls.option_fields()}
    for key, hint in option_types(cls).items():
        default = _field_default(fields[key])
        shown = "" if default is _NO_DEFAULT else f" = {_format_option(default)}"
        out.append(f"{key}: {_type_name(hint)}{shown}")
    return out

