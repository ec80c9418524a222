"""Rewrite patterns, the rewriter they change IR through, and a greedy driver.

A pattern matches one op and rewrites it through a ``Rewriter``::

    class RemoveIdentity(RewritePattern):
        op_names = ("nn.identity",)
        def match_and_rewrite(self, op, rewriter):
            rewriter.replace_op(op, op.operands[0])
            return True

When a pattern declines an op it says why with
``return rewriter.notify_match_failure(op, "bias is not a constant")``; the
reasons are kept (``rewriter.failures``, ``rewriter.why(op)``) so tests and
users can ask why nothing happened.

The rewriter changes the graph only through the ``Graph`` API and counts what
it did (``rewriter.stats``: ops inserted, erased, replaced, attributes and
operands updated). ``apply_patterns_greedily`` sweeps the graph in
topological order until no pattern applies (a fixpoint) and erases the pure
ops that its rewrites left without uses.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from qcc.errors import IRError, PassError
from qcc.ir.graph import Graph, Op, Value
from qcc.ir.registry import _check_attr, get_op
from qcc.transforms.passmanager import Pass, PassResult

STAT_KEYS = ("inserted", "erased", "replaced", "updated")


@dataclass(frozen=True)
class MatchFailure:
    pattern: str
    op: str  # how the op described itself when the match failed
    reason: str


class RewritePattern:
    """One local rewrite. ``op_names`` (if not empty) limits which ops are offered to it."""

    op_names: Tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return type(self).__name__

    def match_and_rewrite(self, op: Op, rewriter: "Rewriter") -> bool:
        raise NotImplementedError

    def applies_to(self, op: Op) -> bool:
        return not self.op_names or op.opname in self.op_names


class FunctionPattern(RewritePattern):
    """A pattern made from a function ``fn(op, rewriter) -> bool`` (see ``pattern``)."""

    def __init__(self, fn: Callable[[Op, "Rewriter"], bool], op_names: Sequence[str]):
        self.fn, self.op_names, self._name = fn, tuple(op_names), fn.__name__
        self.__doc__ = fn.__doc__

    @property
    def name(self) -> str:
        return self._name

    def match_and_rewrite(self, op, rewriter):
        return self.fn(op, rewriter)


def pattern(*op_names: str):
    """Decorator turning ``def fold_x(op, rewriter) -> bool`` into a pattern for ``op_names``."""
    def wrap(fn):
        return FunctionPattern(fn, op_names)
    return wrap


class Rewriter:
    """Changes a graph on behalf of patterns and counts the changes."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.stats: Counter = Counter({k: 0 for k in STAT_KEYS})
        self.failures: List[MatchFailure] = []
        self._failure_keys = set()
        self.anchor: Optional[Op] = None  # new ops print just before it
        self.pattern_name = ""  # set by the driver while a pattern runs
        self.maybe_dead: List[Op] = []  # producers that lost a use
        self._hint = 0

    # ------------------------------------------------------------ creating
    def create_op(self, opname: str, operands: Sequence[Value], attrs: Optional[Dict[str, Any]] = None,
                  result_types=None, name: str = "", *, before: Optional[Op] = None,
                  after: Optional[Op] = None) -> Op:
        """A new op. It prints just before ``before`` (default: the op being rewritten) or after ``after``."""
        op = self.graph.add_op(opname, operands, attrs, result_types, name=name)
        anchor = after if after is not None else (before if before is not None else self.anchor)
        if anchor is not None and anchor.graph is self.graph:
            # Creation numbers only break ties between ready ops in the printed order;
            # a fraction keeps the new op next to its anchor until the graph is renumbered.
            self._hint += 1
            offset = self._hint * 1e-6
            op.seq = anchor.seq + (offset if after is not None else -0.5 + offset)
        self.stats["inserted"] += 1
        return op

    insert_op = create_op

    def create_const(self, array, name: str = "", *, like: Optional[Value] = None,
                     before: Optional[Op] = None) -> Value:
        """A ``qcc.const`` holding ``array`` (with ``like``'s quantization if given)."""
        array = np.asarray(array)
        from qcc.ir.types import TensorType, dtype_of_numpy
        quant = like.type.quant if like is not None else None
        t = TensorType(array.shape, dtype_of_numpy(array.dtype), quant)
        return self.create_op("qcc.const", [], {"value": array}, [t], name=name, before=before).result

    # ------------------------------------------------------------ replacing
    def replace_op(self, op: Op, new_values: Union[Value, Op, Sequence[Value]]):
        """Point every use of each result of ``op`` at the matching new value, then erase ``op``."""
        if isinstance(new_values, Op):
            new_values = new_values.results
        elif isinstance(new_values, Value):
            new_values = [new_values]
        new_values = list(new_values)
        if len(new_values) != len(op.results):
            raise IRError(f"replacing {op.describe()}: it has {len(op.results)} results but "
                          f"{len(new_values)} replacement values were given")
        for old, new in zip(op.results, new_values):
            if old.type.shape != new.type.shape:
                raise IRError(f"replacing result {old.index} of {op.describe()}: shape "
                              f"{list(new.type.shape)} differs from {list(old.type.shape)}")
            self._replace_uses(old, new)
        self._erase(op)
        self.stats["replaced"] += 1

    def replace_all_uses(self, old: Value, new: Value) -> int:
        """Point every use of ``old`` (graph outputs included) at ``new``; returns how many."""
        return self._replace_uses(old, new)

    def erase_op(self, op: Op):
        self._erase(op)
        self.stats["erased"] += 1

    def set_operand(self, op: Op, index: int, value: Value):
        old = op.operands[index]
        self.graph.set_operand(op, index, value)
        self._lost_use(old)
        self._modified(op)

    def set_operands(self, op: Op, values: Sequence[Value]):
        old = list(op.operands)
        self.graph.set_operands(op, values)
        for v in old:
            self._lost_use(v)
        self._modified(op)

    def update_attrs(self, op: Op, **attrs):
        """Set attributes of ``op`` (checked against its definition)."""
        opdef = get_op(op.opname)
        for key, value in attrs.items():
            spec = opdef.attrs.get(key)
            if spec is None:
                raise IRError(f"{op.describe()} has no attribute '{key}'")
            op.attrs[key] = _check_attr(spec.kind, value)
        self._modified(op)

    def notify_match_failure(self, op: Op, reason: str) -> bool:
        """Record why the current pattern does not apply to ``op``; returns False."""
        failure = MatchFailure(self.pattern_name or "?", op.describe(), reason)
        key = (failure, id(op))
        if key not in self._failure_keys:
            self._failure_keys.add(key)
            self.failures.append(failure)
        return False

    def why(self, op_or_name: Union[Op, str]) -> List[str]:
        """The recorded reasons patterns gave for not rewriting an op (by op or model node name)."""
        desc = op_or_name.describe() if isinstance(op_or_name, Op) else None
        return [f"{f.pattern}: {f.reason}" for f in self.failures
                if f.op == desc or (desc is None and f'"{op_or_name}"' in f.op)]

    # ------------------------------------------------------------ internals
    def _replace_uses(self, old: Value, new: Value) -> int:
        n = self.graph.replace_all_uses(old, new)
        if n:
            self._lost_use(old)
        return n

    def _erase(self, op: Op):
        operands = list(op.operands)
        self.graph.erase_op(op)
        for v in operands:
            self._lost_use(v)

    def _lost_use(self, value: Value):
        if value.producer is not None:
            self.maybe_dead.append(value.producer)

    def _modified(self, op: Op):
        self.stats["updated"] += 1

    def erase_dead(self) -> int:
        """Erase the pure ops that rewrites left without uses (transitively)."""
        n = 0
        while self.maybe_dead:
            op = self.maybe_dead.pop()
            if not self.graph.contains(op) or not get_op(op.opname).pure:
                continue
            if any(self.graph.has_uses(r) for r in op.results):
                continue
            self._erase(op)
            self.stats["erased"] += 1
            n += 1
        return n


@dataclass
class RewriteResult:
    modified: bool
    iterations: int
    converged: bool
    stats: Dict[str, int] = field(default_factory=dict)
    applied: Counter = field(default_factory=Counter)  # pattern name -> times it fired
    failures: List[MatchFailure] = field(default_factory=list)


def apply_patterns_greedily(graph: Graph, patterns: Sequence[RewritePattern], *, max_iterations: int = 10,
                            rewriter: Optional[Rewriter] = None) -> RewriteResult:
    """Apply ``patterns`` until none fires; each sweep visits ops in topological order.

    Patterns are tried in the order given; the first that returns True wins
    for that op. Pure ops left without uses by a rewrite are erased after each
    sweep. Stops after ``max_iterations`` sweeps (``converged`` False then).
    """
    rw = rewriter or Rewriter(graph)
    applied: Counter = Counter()
    modified = False
    converged = False
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        changed = False
        for op in graph.ops:
            if not graph.contains(op):
                continue
            for p in patterns:
                if not p.applies_to(op):
                    continue
                rw.anchor, rw.pattern_name = op, p.name
                if p.match_and_rewrite(op, rw):
                    applied[p.name] += 1
                    changed = True
                    break
                if not graph.contains(op):
                    raise PassError(f"pattern {p.name} erased {op.describe()} but returned False")
        rw.anchor, rw.pattern_name = None, ""
        if rw.erase_dead():
            changed = True
        modified |= changed
        if not changed:
            converged = True
            break
    if modified:
        graph.renumber()
    return RewriteResult(modified, iterations, converged, dict(rw.stats), applied, list(rw.failures))


class PatternPass(Pass):
    """Base of passes that apply a list of patterns greedily; subclasses give ``patterns()``."""

    max_iterations: ClassVar[int] = 10

    def patterns(self) -> List[RewritePattern]:
        raise NotImplementedError

    def run(self, graph: Graph) -> PassResult:
        patterns = self.patterns()
        result = apply_patterns_greedily(graph, patterns, max_iterations=self.max_iterations)
        if not result.converged:
            raise PassError(f"patterns did not reach a fixpoint in {self.max_iterations} sweeps "
                            f"(still firing: {', '.join(sorted(result.applied)) or 'none'})")
        stats = dict(result.stats)
        stats.update({f"applied.{k}": v for k, v in sorted(result.applied.items())})
        stats["match_failures"] = result.failures
        return PassResult(result.modified, stats)
