"""The op registry: every op is declared once, here or in a sibling module.

An ``OpDef`` gives an op's name, its operands, its attributes (kind and
default), a verifier and a shape rule. The text IR uses one generic syntax for
all ops, so adding an op never touches the grammar: declare it with
``register_op`` and the printer, parser, verifier and pass manager know it.

    register_op(OpDef(
        "nn.relu", operands=["x"], summary="max(x, 0)",
        infer=same_as_operand(0)))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from qcc.ir.types import TensorType


from qcc.errors import OpError  # noqa: F401  (re-exported for op modules)


_MISSING = object()
REQUIRED = _MISSING

ATTR_KINDS = ("int", "float", "str", "bool", "ints", "floats", "strs", "array", "any")


@dataclass(frozen=True)
class AttrSpec:
    kind: str
    default: Any = _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def _check_attr(kind: str, value: Any) -> Any:
    """Normalize an attribute value to its kind, or raise OpError."""
    if kind == "any":
        return value
    if kind == "int":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise OpError(f"expected an integer, got {value!r}")
        return int(value)
    if kind == "float":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise OpError(f"expected a number, got {value!r}")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise OpError(f"expected a string, got {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise OpError(f"expected true or false, got {value!r}")
        return bool(value)
    if kind in ("ints", "floats", "strs"):
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise OpError(f"expected a list, got {value!r}")
        return [_check_attr(kind[:-1], v) for v in value]
    if kind == "array":
        if not isinstance(value, np.ndarray):
            raise OpError(f"expected an array, got {type(value).__name__}")
        return value
    raise OpError(f"unknown attribute kind '{kind}'")


@dataclass
class OpDef:
    """The definition of one op.

    ``operands`` names the operands in order. A trailing ``"*name"`` takes any
    number (at least ``min_variadic``); a name ending in ``"?"`` is optional
    (only at the end). ``infer(op) -> [TensorType]`` is the shape rule and
    ``verify(op)`` adds op-specific checks; both raise ``OpError``.
    """

    name: str
    operands: Sequence[str] = ()
    attrs: Dict[str, AttrSpec] = field(default_factory=dict)
    infer: Optional[Callable] = None
    verify_fn: Optional[Callable] = None
    num_results: int = 1
    summary: str = ""
    pure: bool = True  # no side effects: removable when unused

    def operand_count_range(self):
        names = list(self.operands)
        if names and names[-1].startswith("*"):
            return len(names) - 1, None
        required = sum(1 for n in names if not n.endswith("?"))
        return required, len(names)

    def complete_attrs(self, attrs: Dict[str, Any], where: str = "") -> Dict[str, Any]:
        """Validate attribute kinds and fill in defaults; unknown names are errors."""
        out = {}
        for key, value in attrs.items():
            spec = self.attrs.get(key)
            if spec is None:
                known = ", ".join(sorted(self.attrs)) or "none"
                raise OpError(f"'{self.name}' has no attribute '{key}' (known: {known})")
            try:
                out[key] = _check_attr(spec.kind, value)
            except OpError as e:
                raise OpError(f"'{self.name}' attribute '{key}': {e}") from None
        for key, spec in self.attrs.items():
            if key not in out:
                if spec.required:
                    raise OpError(f"'{self.name}' needs attribute '{key}'")
                out[key] = list(spec.default) if isinstance(spec.default, (list, tuple)) else spec.default
        return out

    def infer_types(self, op) -> List[TensorType]:
        self._check_operand_count(op)
        if self.infer is None:
            raise OpError(f"'{self.name}' has no shape rule; give result types explicitly")
        types = self.infer(op)
        return list(types) if isinstance(types, (list, tuple)) else [types]

    def _check_operand_count(self, op):
        lo, hi = self.operand_count_range()
        n = len(op.operands)
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise OpError(f"expects {want} operands ({', '.join(self.operands)}), got {n}")

    def verify(self, op):
        self._check_operand_count(op)
        if self.num_results is not None and len(op.results) != self.num_results:
            raise OpError(f"expects {self.num_results} results, got {len(op.results)}")
        for key in op.attrs:
            if key not in self.attrs:
                raise OpError(f"unknown attribute '{key}'")
        for key, spec in self.attrs.items():
            if key not in op.attrs:
                raise OpError(f"missing attribute '{key}'")
            _check_attr(spec.kind, op.attrs[key])
        if self.infer is not None:
            try:
                expected = self.infer_types(op)
            except OpError:
                raise
            except Exception as e:  # a shape rule that cannot run on these operands
                raise OpError(f"shape rule failed: {e}") from None
            for r, t in zip(op.results, expected):
                if t is None:
                    continue
                if r.type.shape != t.shape:
                    raise OpError(f"result {r.index} has shape {list(r.type.shape)}, "
                                  f"the shape rule gives {list(t.shape)}")
        if self.verify_fn is not None:
            self.verify_fn(op)


_REGISTRY: Dict[str, OpDef] = {}


def register_op(opdef: OpDef) -> OpDef:
    if opdef.name in _REGISTRY:
        raise ValueError(f"op '{opdef.name}' registered twice")
    _REGISTRY[opdef.name] = opdef
    return opdef


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise OpError(f"unknown op '{name}'") from None


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def registered_ops() -> List[str]:
    return sorted(_REGISTRY)




# ---------------------------------------------------------------- shape-rule helpers
def same_as_operand(i: int = 0):
    """Shape rule: one result with the type of operand ``i``."""
    def rule(op):
        return [op.operands[i].type]
    return rule


def attr(name, kind, default=_MISSING) -> tuple:
    return name, AttrSpec(kind, default)


def attrs(*specs) -> Dict[str, AttrSpec]:
    return dict(specs)
