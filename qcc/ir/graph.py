"""The graph IR: SSA values, ops, and a graph that owns them.

``Graph`` wraps a private ``networkx.MultiDiGraph``. Nodes are ops and graph
arguments; an edge ``producer -> consumer`` with key ``i`` says that the
consumer's operand ``i`` is a result of the producer. Operand order lives on
the op (``op.operands``), as in torch.fx and onnx-ir; the networkx graph is an
index for uses and for algorithms (topological order, liveness, isomorphism).

Passes change a graph only through this API (``add_op``, ``set_operand``,
``replace_all_uses``, ``erase_op``, ...) or the rewriter built on it, so the
index never goes stale.
"""
from __future__ import annotations

import itertools
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import networkx as nx
import numpy as np

from qcc.ir.types import TensorType, dtype_of_numpy
from qcc.errors import IRError, OpError
from qcc.ir.registry import get_op


class Value:
    """An SSA value: a graph argument or one result of an op."""

    __slots__ = ("type", "producer", "index", "name", "_graph_arg")

    def __init__(self, type: TensorType, producer: Optional["Op"] = None, index: int = 0,
                 name: str = ""):
        self.type = type
        self.producer = producer
        self.index = index
        self.name = name
        self._graph_arg = producer is None

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.type.shape

    def is_constant(self) -> bool:
        return self.producer is not None and self.producer.opname == "qcc.const"

    def constant(self) -> Optional[np.ndarray]:
        """The array of a constant-produced value, else None."""
        return self.producer.attrs["value"] if self.is_constant() else None

    def __repr__(self) -> str:
        where = f"{self.producer.opname}#{self.index}" if self.producer else "arg"
        return f"<Value {self.name or '?'} {where} {self.type}>"


class Op:
    """An operation: a registered op name, operands, attributes and results."""

    __slots__ = ("opname", "operands", "results", "attrs", "name", "seq", "graph")

    def __init__(self, opname: str, operands: List[Value], attrs: Dict[str, Any], name: str,
                 seq: int):
        self.opname = opname
        self.operands = operands
        self.results: List[Value] = []
        self.attrs = attrs
        self.name = name
        self.seq = seq
        self.graph: Optional["Graph"] = None

    @property
    def result(self) -> Value:
        """The single result of a one-result op."""
        if len(self.results) != 1:
            raise IRError(f"{self.describe()} has {len(self.results)} results, not one")
        return self.results[0]

    @property
    def opdef(self):
        return get_op(self.opname)

    def describe(self) -> str:
        """How messages name this op: its op name and model node name."""
        return f"'{self.opname}' op" + (f" \"{self.name}\"" if self.name else "")

    def __repr__(self) -> str:
        return f"<Op {self.opname} {self.name!r}>"


def _copy_attr(value: Any) -> Any:
    """A copy of one attribute value (arrays, lists, dicts and scalars; never graph objects)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple, dict)):
        import copy
        return copy.deepcopy(value)
    return value


class Graph:
    """A dataflow graph of ops with named inputs and outputs."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: List[Value] = []
        self.outputs: List[Value] = []
        self.output_names: List[str] = []
        self._nx = nx.MultiDiGraph()
        self._seq = itertools.count()
        # Model node name -> its op type in the source model (ONNX), so messages speak the model's terms.
        self.source_ops: Dict[str, str] = {}
        # Facts passes found that users should hear about (the drivers print them as warnings).
        self.notes: List[str] = []

    def source_name(self, op: Op) -> str:
        """How user-facing messages name ``op``: ``node "conv1" (Conv)`` (as the importer's) for a model node."""
        if op.name and op.name in self.source_ops:
            return f"node \"{op.name}\" ({self.source_ops[op.name]})"
        return op.describe()

    # ------------------------------------------------------------ building
    def add_input(self, name: str, type: TensorType) -> Value:
        if any(v.name == name for v in self.inputs):
            raise IRError(f"graph input '{name}' defined twice")
        v = Value(type, None, len(self.inputs), name)
        self.inputs.append(v)
        self._nx.add_node(v)
        return v

    def set_outputs(self, values: Sequence[Value], names: Optional[Sequence[str]] = None):
        values = list(values)
        for v in values:
            self._check_owned(v, "graph output")
        self.outputs = values
        self.output_names = list(names) if names is not None else [
            v.name or f"output_{i}" for i, v in enumerate(values)]
        if len(self.output_names) != len(self.outputs):
            raise IRError("graph outputs and output names differ in number")

    def add_op(self, opname: str, operands: Sequence[Value], attrs: Optional[Dict[str, Any]] = None,
               result_types: Optional[Sequence[TensorType]] = None, name: str = "",
               result_names: Optional[Sequence[str]] = None) -> Op:
        """Create an op at the end of the graph.

        Attributes missing from ``attrs`` take the registered defaults. When
        ``result_types`` is None they come from the op's shape rule.
        """
        opdef = get_op(opname)
        op = Op(opname, list(operands), opdef.complete_attrs(attrs or {}, name), name,
                next(self._seq))
        for i, v in enumerate(op.operands):
            if not isinstance(v, Value):
                raise IRError(f"{op.describe()}: operand {i} is not a Value")
            self._check_owned(v, f"operand {i} of {op.describe()}")
        if result_types is None:
            result_types = opdef.infer_types(op)
        names = list(result_names) if result_names else [""] * len(result_types)
        op.results = [Value(t, op, i, n) for i, (t, n) in enumerate(zip(result_types, names))]
        op.graph = self
        self._nx.add_node(op)
        for i, v in enumerate(op.operands):
            self._nx.add_edge(self._source(v), op, key=i)
        return op

    def add_const(self, array: np.ndarray, name: str = "", quant=None,
                  dtype: Optional[str] = None) -> Value:
        """A constant op holding ``array``; returns its value."""
        array = np.asarray(array)
        dtype = dtype or dtype_of_numpy(array.dtype)
        t = TensorType(array.shape, dtype, quant)
        return self.add_op("qcc.const", [], {"value": array}, [t], name=name).result

    # ------------------------------------------------------------ queries
    @property
    def ops(self) -> List[Op]:
        """Ops in a deterministic topological order (ties broken by creation order)."""
        try:
            order = nx.lexicographical_topological_sort(self._nx, key=self._sort_key)
            return [n for n in order if isinstance(n, Op)]
        except nx.NetworkXUnfeasible:
            raise IRError(f"graph @{self.name} has a cycle") from None

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        return sum(1 for n in self._nx.nodes if isinstance(n, Op))

    def find(self, opname: str) -> List[Op]:
        return [op for op in self.ops if op.opname == opname]

    def uses(self, value: Value) -> List[Tuple[Op, int]]:
        """(consumer, operand index) for every use of ``value`` by an op."""
        src = self._source(value)
        found = []
        for _, dst, key in self._nx.out_edges(src, keys=True):
            if dst.operands[key] is value:
                found.append((dst, key))
        found.sort(key=lambda u: (u[0].seq, u[1]))
        return found

    def users(self, value: Value) -> List[Op]:
        seen, out = set(), []
        for op, _ in self.uses(value):
            if id(op) not in seen:
                seen.add(id(op))
                out.append(op)
        return out

    def is_output(self, value: Value) -> bool:
        return any(v is value for v in self.outputs)

    def has_uses(self, value: Value) -> bool:
        return bool(self.uses(value)) or self.is_output(value)

    def contains(self, op: Op) -> bool:
        return op.graph is self and self._nx.has_node(op)

    def copy(self) -> "Graph":
        """An independent copy: new ops and values, attribute arrays copied, same names and order.

        Built op by op in topological order, so a graph thousands of layers deep
        copies without recursion (``copy.deepcopy`` recurses through the linked
        ops and values once per layer and overflows Python's stack).
        """
        new = Graph.__new__(Graph)
        new.__dict__.update({k: v for k, v in self.__dict__.items()
                             if k not in ("inputs", "outputs", "output_names", "_nx", "_seq")})
        new.inputs, new.outputs, new.output_names = [], [], list(self.output_names)
        new._nx = nx.MultiDiGraph()
        mapping: Dict[int, Value] = {}
        for v in self.inputs:
            copied = Value(v.type, None, v.index, v.name)
            new.inputs.append(copied)
            new._nx.add_node(copied)
            mapping[id(v)] = copied
        for op in self.ops:
            attrs = {k: _copy_attr(a) for k, a in op.attrs.items()}
            twin = Op(op.opname, [mapping[id(v)] for v in op.operands], attrs, op.name, op.seq)
            twin.results = [Value(r.type, twin, r.index, r.name) for r in op.results]
            twin.graph = new
            new._nx.add_node(twin)
            for i, v in enumerate(twin.operands):
                new._nx.add_edge(new._source(v), twin, key=i)
            for r, t in zip(op.results, twin.results):
                mapping[id(r)] = t
        new.outputs = [mapping[id(v)] for v in self.outputs]
        following = next(self._seq)  # both graphs go on numbering where this one stood
        self._seq, new._seq = itertools.count(following), itertools.count(following)
        return new

    def __deepcopy__(self, memo) -> "Graph":
        return self.copy()

    def networkx(self) -> nx.MultiDiGraph:
        """A read-only view of the dataflow graph for algorithms."""
        return self._nx.copy(as_view=True)

    # ------------------------------------------------------------ mutation
    def set_operand(self, op: Op, index: int, value: Value):
        self._check_owned(value, f"new operand {index} of {op.describe()}")
        old = op.operands[index]
        self._nx.remove_edge(self._source(old), op, key=index)
        op.operands[index] = value
        self._nx.add_edge(self._source(value), op, key=index)

    def set_operands(self, op: Op, values: Sequence[Value]):
        """Replace the whole operand list of ``op``."""
        for v in values:
            self._check_owned(v, f"operand of {op.describe()}")
        for i, old in enumerate(op.operands):
            self._nx.remove_edge(self._source(old), op, key=i)
        op.operands = list(values)
        for i, v in enumerate(op.operands):
            self._nx.add_edge(self._source(v), op, key=i)

    def replace_all_uses(self, old: Value, new: Value) -> int:
        """Point every use of ``old`` (graph outputs included) at ``new``."""
        if old is new:
            return 0
        n = 0
        for op, i in self.uses(old):
            self.set_operand(op, i, new)
            n += 1
        for i, v in enumerate(self.outputs):
            if v is old:
                self.outputs[i] = new
                n += 1
        return n

    def erase_op(self, op: Op):
        """Remove an op whose results have no uses left."""
        for r in op.results:
            if self.has_uses(r):
                users = ", ".join(u.describe() for u in self.users(r)) or "the graph outputs"
                raise IRError(f"cannot erase {op.describe()}: result {r.index} is still used by {users}")
        self._nx.remove_node(op)
        op.graph = None

    def move_after_seq(self, op: Op, after: Op):
        """Give ``op`` a creation number right after ``after`` (printing order hint)."""
        op.seq = after.seq + 0.5  # type: ignore[assignment]

    def renumber(self):
        """Make creation numbers follow the current topological order."""
        for i, op in enumerate(self.ops):
            op.seq = i
        self._seq = itertools.count(len(self))

    def verify(self):
        """Check SSA form, operand ownership, types and every op's own verifier."""
        ops = self.ops  # raises on cycles
        defined = {id(v) for v in self.inputs}
        for op in ops:
            if op.graph is not self:
                raise IRError(f"{op.describe()} does not belong to graph @{self.name}")
            for i, v in enumerate(op.operands):
                if id(v) not in defined:
                    raise IRError(f"{op.describe()}: operand {i} is not defined before use "
                                  f"(dangling value {v!r})")
            try:
                get_op(op.opname).verify(op)
            except OpError as e:
                raise IRError(f"{op.describe()}: {e}") from None
            for r in op.results:
                defined.add(id(r))
        for i, v in enumerate(self.outputs):
            if id(v) not in defined:
                raise IRError(f"graph output {i} ('{self.output_names[i]}') is not defined")

    # ------------------------------------------------------------ helpers
    def _source(self, value: Value):
        return value if value.producer is None else value.producer

    def _check_owned(self, value: Value, what: str):
        src = self._source(value)
        if not self._nx.has_node(src):
            raise IRError(f"{what} is a value from outside graph @{self.name} or of an erased op")

    @staticmethod
    def _sort_key(node) -> Tuple:
        if isinstance(node, Value):
            return (0, node.index)
        return (1, node.seq)
