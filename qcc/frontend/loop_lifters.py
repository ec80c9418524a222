"""ONNX ``Loop`` with a trip count known at import, unrolled like ``Scan``.

ONNX semantics (``Loop(M, cond, v_0...) -> (v_final..., scan_outputs...)``)::

    cond_t, v = cond, v_0
    for t in 0, 1, ...:                      # while t < M (when M is given) and cond_t (when cond is given)
        cond_t, v, s_t = body(t, cond_t, v)  # the body also reads outer-scope values by name
    outputs: v, and each scan output stacked over the iterations: [s_0, s_1, ...] (new axis 0)

The loop is unrolled at import: iteration t binds the body's iteration-number
input to the int64 constant t and lifts a renamed copy of the body
(``LOOP/i<t>/<node>``). Body values computable at import time (the
iteration number, the condition, counters carried from constants, shapes,
constants and the outer graph's static values) are *folded* with ONNX's
reference evaluator instead of lifted, so the counter arithmetic and the
compare that tf2onnx writes (``Add(i, 1)``, ``Less(i, limit)``, ``And``) leave
no ops and a tensor-array read ``Gather(x, i)`` becomes a gather with a
constant index. The trip count is ``M`` (a constant, or computed from static
shapes), capped by the condition: when the ``cond`` input is given the body's
condition output must fold to a constant at every iteration (a counter
compare); a condition that depends on run-time data, or an ``M`` that does,
is refused with the node's name. Nested loops unroll too: a body's nested
``Loop``/``Scan`` graph has its references to the enclosing body renamed.
"""
from __future__ import annotations

from typing import Optional, Set

import numpy as np
from onnx import AttributeProto, GraphProto, helper

from qcc.errors import UnsupportedModelError
from qcc.frontend.importer import _node_key, tensor_array
from qcc.frontend.lifters import LIFTERS, _check_node, _constant_value, _static_value, lift_node, lifter
from qcc.frontend.scan_lifters import body_renamer

MAX_UNROLLED_NODES = 200_000  # iterations x body nodes: past this the import (and the C) would only grow useless
# Ops never folded: their results are data, or random, or graphs of their own.
_NEVER_FOLDED = {"Loop", "Scan", "If", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                 "Multinomial", "Bernoulli"}


# Boolean ops a loop condition is computed with (tf2onnx's ``Less`` on constants before a Loop, and in
# its body); qcc has no run-time booleans, so they are lifted only when they fold at import.
FOLDED_ONLY = ("Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "And", "Or", "Not", "Xor")


# ---------------------------------------------------------------- checking
def static_at_import(imp, name: str, extra: Set[str] = frozenset()) -> bool:
    """Whether a value is computable at import time: from constants and static shapes in the outer
    graph, or one of ``extra`` (an enclosing loop body's import-time values)."""
    return name in extra or _static_value(imp, name)


def _check_folded_only(imp, node, a) -> Optional[str]:
    if all(static_at_import(imp, n) for n in node.input):
        return None
    return (f"it computes a boolean from run-time data; qcc evaluates {node.op_type} only at import "
            f"(a loop's counter compare)")


@lifter(*FOLDED_ONLY, check=_check_folded_only)
def _folded_only(imp, node, a):
    arrays = [_known(imp, n) for n in node.input]
    values = _fold(imp, node, arrays) if all(x is not None for x in arrays) else None
    if values is None:
        raise UnsupportedModelError(f"{imp.source}: ONNX node \"{imp.node_name(node)}\" ({node.op_type}): "
                                    f"{_check_folded_only(imp, node, a) or 'it does not fold at import'}")
    _set_known(imp, node.output[0], values[0])


def _body_static_names(body: GraphProto, n_carried: int, outer_static, carried_static) -> Set[str]:
    """Body values computable at import time: the iteration number and condition, constants, shapes,
    static outer values, the carried values flagged in ``carried_static``, and what follows from them."""
    static = {body.input[0].name, body.input[1].name} | {i.name for i in body.initializer}
    static |= {body.input[2 + k].name for k in range(n_carried) if carried_static[k]}
    shaped = set()  # every value has a static shape once lifted
    for node in body.node:
        if node.op_type == "Constant" or (node.op_type == "Shape") or (
                node.op_type not in _NEVER_FOLDED
                and all(not i or i in static or (i not in shaped and outer_static(i)) for i in node.input)):
            static.update(o for o in node.output if o)
        shaped.update(o for o in node.output if o)
    return static


def _outer_static(imp, extra: Set[str]):
    return lambda name: static_at_import(imp, name, extra)


def _carried_static(body, n_carried, node_inputs, outer_static) -> list:
    """Which carried values stay import-time constants through every iteration (a fixpoint)."""
    flags = [bool(node_inputs[2 + k]) and outer_static(node_inputs[2 + k]) for k in range(n_carried)]
    while True:
        static = _body_static_names(body, n_carried, outer_static, flags)
        new = [f and body.output[1 + k].name in static for k, f in enumerate(flags)]
        if new == flags:
            return flags
        flags = new


def check_loop(imp, node, a, extra_static: Set[str] = frozenset()) -> Optional[str]:
    """Why ``node`` (a Loop) cannot be unrolled, or None. ``extra_static`` names the enclosing body's
    import-time values when the Loop is nested in another loop's body."""
    body = a.get("body")
    if body is None:
        return "needs a body"
    m_name = node.input[0] if node.input else ""
    cond_name = node.input[1] if len(node.input) > 1 else ""
    n_carried = max(len(node.input) - 2, 0)
    if len(body.input) != 2 + n_carried or len(body.output) < 1 + n_carried \
            or len(node.output) > len(body.output) - 1:
        return (f"its body takes {len(body.input)} inputs and gives {len(body.output)} outputs for "
                f"{n_carried} loop-carried values and {len(node.output)} outputs")
    outer_static = _outer_static(imp, set(extra_static))
    if not m_name and not cond_name:
        return "it has neither a trip count (M) nor a condition: the loop never ends"
    if m_name and not outer_static(m_name):
        return (f"the trip count '{m_name}' is computed from run-time data (a dynamic trip count); "
                f"qcc unrolls loops whose trip count is known at import")
    if m_name and imp.const(m_name) is not None:
        count = int(np.ravel(imp.const(m_name))[0])
        if count * max(len(body.node), 1) > MAX_UNROLLED_NODES:
            return f"unrolling {count} iterations would make more than {MAX_UNROLLED_NODES:,} nodes"
    if cond_name and not outer_static(cond_name):
        return f"the initial condition '{cond_name}' depends on run-time data (a data-dependent condition)"
    carried = _carried_static(body, n_carried, list(node.input), outer_static)
    static = _body_static_names(body, n_carried, outer_static, carried)
    if cond_name and body.output[0].name not in static:
        return (f"the body's condition '{body.output[0].name}' depends on run-time data (a data-dependent "
                f"condition); qcc unrolls loops whose condition is a counter compare known at import")
    for inner in body.node:
        if inner.op_type == "Constant" and _constant_value(inner) is None:
            return f"body node \"{inner.name or inner.op_type}\" (Constant) is not a numeric tensor"
    # The body's own constants, visible to the checks of its lifted nodes (a Squeeze's axes) meanwhile.
    local = {i.name: tensor_array(i, imp.source) for i in body.initializer}
    local.update({n.output[0]: _constant_value(n) for n in body.node if n.op_type == "Constant"})
    local = {k: v for k, v in local.items() if k not in imp.consts}
    imp.consts.update(local)
    try:
        return _check_body_nodes(imp, body, static, extra_static)
    finally:
        for k in local:
            del imp.consts[k]


def _check_body_nodes(imp, body, static: Set[str], extra_static) -> Optional[str]:
    for inner in body.node:
        if inner.op_type == "Constant" or all(o in static for o in inner.output if o):
            continue  # folded at import
        if inner.op_type == "Loop":
            why = check_loop(imp, inner, {x.name: helper.get_attribute_value(x) for x in inner.attribute},
                             set(extra_static) | static)
        else:
            why = _check_node(imp, inner) if inner.op_type in LIFTERS else \
                f"qcc has no lowering for ONNX op {inner.op_type}"
        if why and "shape is not static" not in why:  # body values have no ONNX types; lifting checks shapes
            return f"body node \"{inner.name or inner.op_type}\" ({inner.op_type}): {why}"
    return None


# ---------------------------------------------------------------- renaming
def _rename_free(graph: GraphProto, rename, bound: Set[str]) -> GraphProto:
    """A copy of a nested subgraph whose references to enclosing values (names it does not bind)
    go through ``rename``."""
    copy = GraphProto()
    copy.CopyFrom(graph)
    bound = set(bound) | {i.name for i in copy.input} | {i.name for i in copy.initializer} \
        | {o for n in copy.node for o in n.output}
    for n in copy.node:
        for i, name in enumerate(n.input):
            if name and name not in bound:
                n.input[i] = rename(name)
        for attr in n.attribute:
            if attr.type == AttributeProto.GRAPH:
                attr.g.CopyFrom(_rename_free(attr.g, rename, bound))
    for o in copy.output:
        if o.name not in bound:
            o.name = rename(o.name)
    return copy


def _renamed(node, rename, name: str):
    copy = helper.make_node(node.op_type, [rename(i) for i in node.input], [rename(o) for o in node.output],
                            name=name, domain=node.domain)
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            attr = helper.make_attribute(attr.name, _rename_free(attr.g, rename, set()))
        copy.attribute.append(attr)
    return copy


# ---------------------------------------------------------------- unrolling
def _known(imp, name: str) -> Optional[np.ndarray]:
    """The import-time array of a value, or None when it is computed at run time."""
    if name in imp.consts:
        return imp.consts[name]
    v = imp.values.get(name)
    if v is None:
        return None
    return v.constant() if v.is_constant() else imp.known.get(v)


def _set_known(imp, name: str, array) -> None:
    """Record an import-time value; it becomes a ``qcc.const`` where a lifted op reads it."""
    imp.consts[name] = np.asarray(array)
    imp.const_op_names[name] = name


def _fold(imp, node, inputs: list, cache: Optional[dict] = None) -> Optional[list]:
    """Evaluate one ONNX node on constant inputs with ONNX's reference evaluator, or None.
    ``cache`` keeps one evaluator per body node across iterations (feeds by the node's own names)."""
    from onnx.reference import ReferenceEvaluator

    if node.op_type in _NEVER_FOLDED:
        return None
    try:
        key = id(node)
        if cache is None or key not in cache:
            evaluator = ReferenceEvaluator(node, opsets={"": imp.opset})
            if cache is not None:
                cache[key] = (node, evaluator)  # holding the node keeps its id unique
        else:
            evaluator = cache[key][1]
        return evaluator.run(None, {n: a for n, a in zip(node.input, inputs) if n})
    except Exception:  # an op the reference does not evaluate: lift it instead
        return None


def _count_iterations(imp, body, n_carried: int, initial: list, limit: Optional[int], going: bool,
                      budget: int, cache: dict) -> Optional[int]:
    """The iteration count a condition gives, found by running only the body's import-time part (the
    counter and the compare), or None when that part cannot decide it; past ``budget``, budget + 1."""
    constants = {i.name: tensor_array(i, imp.source) for i in body.initializer}
    constants.update({n.output[0]: _constant_value(n) for n in body.node if n.op_type == "Constant"})
    outer = {n: _known(imp, n) for inner in body.node for n in inner.input if n and n not in constants}
    t = 0
    while going and (limit is None or t < limit):
        if t > budget:
            return t
        env = dict(constants)
        env.update({body.input[0].name: np.array(t, np.int64), body.input[1].name: np.array(going)})
        env.update({body.input[2 + k].name: x for k, x in enumerate(initial) if x is not None})
        for inner in body.node:
            if inner.op_type == "Constant":
                continue
            arrays = [env.get(n, outer.get(n)) if n else None for n in inner.input]
            if not all(x is not None for n, x in zip(inner.input, arrays) if n):
                continue
            values = _fold(imp, inner, arrays, cache)
            for o, x in zip(inner.output, values or []):
                if o:
                    env[o] = np.asarray(x)
        c = env.get(body.output[0].name)
        if c is None or c.size != 1:
            return None
        going = bool(np.ravel(c)[0])
        initial = [env.get(o.name) for o in body.output[1:1 + n_carried]]
        t += 1
    return t


def _refuse(imp, node, why: str):
    raise UnsupportedModelError(f"{imp.source}: ONNX node \"{imp.node_name(node)}\" (Loop): {why}")


def _unroll_node(imp, loop, inner_node, copy, cache: dict) -> None:
    """Fold one renamed body node when its inputs are known at import, else lift it."""
    if copy.op_type == "Constant":
        _set_known(imp, copy.output[0], _constant_value(copy))
        return
    values = None
    if copy.op_type == "Shape" and copy.input[0] in imp.values:  # static shapes: no nn.shape op
        shape = np.array(imp.values[copy.input[0]].shape, np.int64)
        attrs = {x.name: helper.get_attribute_value(x) for x in copy.attribute}
        values = [shape[attrs.get("start", 0):attrs.get("end", len(shape))]]
    elif copy.op_type not in _NEVER_FOLDED:
        arrays = [_known(imp, n) if n else None for n in copy.input]
        if all(x is not None for n, x in zip(copy.input, arrays) if n):
            values = _fold(imp, inner_node, arrays, cache)
    if values is not None:
        for o, x in zip(copy.output, values):
            if o:
                _set_known(imp, o, x)
        return
    if copy.op_type not in LIFTERS:
        _refuse(imp, loop, f"body node \"{inner_node.name or inner_node.op_type}\" ({copy.op_type}) computes "
                           f"from run-time data and qcc has no lowering for it")
    imp.node_names.append(copy.name)
    imp._index[_node_key(copy)] = len(imp.node_names) - 1
    lift_node(imp, copy)


def _scalar(imp, node, value_name: str, what: str) -> np.ndarray:
    x = _known(imp, value_name)
    if x is None or x.size != 1:
        _refuse(imp, node, f"{what} '{value_name}' is not a scalar known at import")
    return np.ravel(x)[0]


@lifter("Loop", attrs=("body",), check=check_loop)
def _loop(imp, node, a):
    body = a["body"]
    name = imp.node_name(node)
    m_name = node.input[0] if node.input else ""
    cond_name = node.input[1] if len(node.input) > 1 else ""
    n_carried = len(node.input) - 2
    k_out = len(body.output) - 1 - n_carried
    limit = int(_scalar(imp, node, m_name, "the trip count (a dynamic trip count?)")) if m_name else None
    going = bool(_scalar(imp, node, cond_name, "the initial condition")) if cond_name else True
    budget = MAX_UNROLLED_NODES // max(len(body.node), 1)
    cache: dict = {}
    if cond_name:  # the condition may end the loop first (or only after too many iterations)
        count = _count_iterations(imp, body, n_carried, [_known(imp, v) for v in node.input[2:]], limit, going,
                                  budget, cache)
        if count is not None and count > budget and (limit is None or limit > budget):
            _refuse(imp, node, f"its condition stays true past {budget} iterations (unrolling would make more "
                               f"than {MAX_UNROLLED_NODES:,} nodes)")
        limit = count if count is not None else limit
    if limit is not None and limit > budget:
        _refuse(imp, node, f"unrolling {limit} iterations would make more than {MAX_UNROLLED_NODES:,} nodes")

    step_name = body_renamer(imp, name, body)  # body constants: one copy for every iteration
    carried = list(node.input[2:])  # the current value of each carried dependency, by (renamed) name
    stacked = [[] for _ in range(k_out)]
    t = 0
    while going and (limit is None or t < limit):
        if t >= budget:
            _refuse(imp, node, f"its condition stays true past {budget} iterations (unrolling would make more "
                               f"than {MAX_UNROLLED_NODES:,} nodes)")
        prefix = f"{name}/i{t}"

        def rename(v, prefix=prefix):
            return step_name(v, prefix)
        _set_known(imp, rename(body.input[0].name), np.array(t, np.int64))
        _set_known(imp, rename(body.input[1].name), np.array(going))
        for k, v in enumerate(carried):
            known = _known(imp, v)
            if known is not None:
                _set_known(imp, rename(body.input[2 + k].name), known)
            else:
                imp.values[rename(body.input[2 + k].name)] = imp.value(v)
        for i, inner_node in enumerate(body.node):
            copy = _renamed(inner_node, rename, f"{prefix}/{inner_node.name or inner_node.op_type + '_' + str(i)}")
            _unroll_node(imp, node, inner_node, copy, cache)
        if cond_name:
            c = _known(imp, rename(body.output[0].name))
            if c is None or c.size != 1:
                _refuse(imp, node, f"the body's condition '{body.output[0].name}' depends on run-time data "
                                   f"(a data-dependent condition)")
            going = bool(np.ravel(c)[0])
        carried = [rename(o.name) for o in body.output[1:1 + n_carried]]
        for k in range(k_out):
            stacked[k].append(rename(body.output[1 + n_carried + k].name))
        t += 1

    for out, v in zip(node.output[:n_carried], carried):
        if out:
            known = _known(imp, v)
            if known is not None and v not in imp.values:
                _set_known(imp, out, known)
            else:
                imp.values[out] = imp.value(v)
    for k, out in enumerate(node.output[n_carried:]):
        if out and (stacked[k] or imp.is_used(out)):  # an unread scan output may be empty (no iteration)
            _stack(imp, node, out, stacked[k], f"{name}/output{k}")


def _stack(imp, node, out: str, names: list, op_name: str) -> None:
    """A scan output: the iterations' values stacked on a new axis 0 (folded when all are constants)."""
    if not names:
        _refuse(imp, node, f"scan output '{out}' would be empty (the loop runs no iteration)")
    arrays = [_known(imp, v) if v not in imp.values else None for v in names]
    if all(x is not None for x in arrays):
        if len({x.shape for x in arrays}) != 1:
            _refuse(imp, node, f"scan output '{out}' changes shape between iterations")
        _set_known(imp, out, np.stack(arrays))
        return
    values = [imp.value(v) for v in names]
    if len({v.shape for v in values}) != 1:
        _refuse(imp, node, f"scan output '{out}' changes shape between iterations")
    parts = [imp.emit("nn.unsqueeze", [v], {"axes": [0]}, node, name=f"{op_name}/stack{t}", outputs=[])
             for t, v in enumerate(values)]
    if len(parts) == 1:
        imp.emit("nn.identity", parts, {}, node, name=op_name, outputs=[out])
    else:
        imp.emit("nn.concat", parts, {"axis": 0}, node, name=op_name, outputs=[out])
