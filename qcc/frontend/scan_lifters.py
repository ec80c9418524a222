"""Lifters that unroll ONNX control flow and split tensors: ``Scan`` and ``Split``.

A ``Scan`` with a static trip count (the length of its scan inputs) is
unrolled at import: for step t each scan input's slice t (``nn.gather`` with
the constant index t, which drops the axis) and the current state values feed
a renamed copy of the body's nodes (``SCAN/t<t>/<node>``), lifted like any
other node; the body's state outputs become the next step's states and the
node's final-state outputs; each scan output is stacked over the steps
(``nn.unsqueeze`` + ``nn.concat`` on its scan-output axis). This is how tf2onnx
exports a TF1 ``dynamic_rnn`` over an LSTMCell/GRUCell/BasicLSTMCell (a cell
with a projection included), and how hand-written ONNX recurrences look. The
body's ops must be ones qcc lifts; forward directions only.

``Split`` becomes one ``nn.gather`` per output with constant contiguous
indices (the outputs keep the split axis), so the quantized schemes move the
parts as integers (a cell's gate split, or a sequence unstacked into steps).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from onnx import helper

from qcc.frontend.importer import _node_key, tensor_array
from qcc.frontend.lifters import LIFTERS, _axis, _check_node, _constant_value, _inp, lift_node, lifter
from qcc.frontend.tf_cells import match_cells


# ---------------------------------------------------------------- Split
def _split_sizes(imp, node, a, length: int):
    n = len(node.output)
    given = imp.const(_inp(node, 1)) if _inp(node, 1) else (np.array(a["split"]) if "split" in a else None)
    if given is not None:
        return [int(s) for s in np.ravel(given)]
    # Equal parts; with num_outputs (opset 18) the last part may be smaller.
    size = -(-length // n)
    return [size] * (n - 1) + [length - size * (n - 1)]


def _check_split(imp, node, a) -> Optional[str]:
    if _inp(node, 1) and imp.const(_inp(node, 1)) is None:
        return "the split sizes (input 1) must be a constant"
    shape = imp.shape(node.input[0])
    if shape is None:
        return "the input shape is not static"
    length = shape[_axis(a.get("axis", 0), len(shape))]
    sizes = _split_sizes(imp, node, a, length)
    if len(sizes) != len(node.output) or sum(sizes) != length or min(sizes) < 1:
        return f"split sizes {sizes} do not cover the {length} elements of the axis in {len(node.output)} parts"
    return None


@lifter("Split", attrs=("axis", "num_outputs", "split"), check=_check_split)
def _split(imp, node, a):
    x = imp.value(node.input[0])
    axis = _axis(a.get("axis", 0), len(x.shape))
    start, name = 0, imp.node_name(node)
    for k, (out, size) in enumerate(zip(node.output, _split_sizes(imp, node, a, x.shape[axis]))):
        idx = imp.add_const(np.arange(start, start + size, dtype=np.int64), f"{name}/indices{k}")
        start += size
        if out:
            imp.emit("nn.gather", [x, idx], {"axis": axis}, node, name=f"{name}/{k}" if k else name, outputs=[out])


# ---------------------------------------------------------------- Scan
MAX_UNROLLED_NODES = 200_000  # steps x body nodes: past this the import (and the C) would only grow useless
def _check_scan(imp, node, a) -> Optional[str]:
    body = a.get("body")
    m = a.get("num_scan_inputs")
    if body is None or m is None:
        return "needs a body and num_scan_inputs"
    if any(a.get("scan_input_directions", [])) or any(a.get("scan_output_directions", [])):
        return "reverse scan directions are not supported"
    n = len(node.input) - m
    if m < 1 or n < 0 or len(body.input) != len(node.input) or len(node.output) > len(body.output) \
            or len(body.output) < n:
        return (f"its body takes {len(body.input)} inputs and gives {len(body.output)} outputs for "
                f"{len(node.input)} inputs ({m} scanned) and {len(node.output)} outputs")
    steps = set()
    for j, name in enumerate(node.input[n:]):
        shape = imp.shape(name)
        if shape is None:
            return f"scan input '{name}' has no static shape (the trip count must be known)"
        steps.add(shape[_axis(a.get("scan_input_axes", [0] * m)[j], len(shape))])
    if len(steps) != 1 or 0 in steps:
        return f"the scan inputs give trip counts {sorted(steps)}; need one non-zero count"
    if steps.pop() * max(len(body.node), 1) > MAX_UNROLLED_NODES:
        return f"unrolling it would make more than {MAX_UNROLLED_NODES:,} nodes"
    for inner in body.node:
        if inner.op_type in ("Scan", "Loop", "If"):
            return f"its body holds a nested {inner.op_type}"
        if inner.op_type == "Constant":
            if _constant_value(inner) is None:
                return f"body node \"{inner.name or inner.op_type}\" (Constant) is not a numeric tensor"
            continue
        why = _check_node(imp, inner) if inner.op_type in LIFTERS else f"qcc has no lowering for ONNX op {inner.op_type}"
        if why and "shape is not static" not in why:  # body values have no ONNX types; lifting checks shapes
            return f"body node \"{inner.name or inner.op_type}\" ({inner.op_type}): {why}"
    return None


def body_renamer(imp, name: str, body):
    """Register a loop body's constants once (as NAME/INIT) and return ``rename(v, prefix)``: a body
    value's name in the copy for one step (PREFIX/V), a constant's shared name, or an outer value as is."""
    for init in body.initializer:
        imp.consts[f"{name}/{init.name}"] = tensor_array(init, imp.source)
        imp.const_op_names[f"{name}/{init.name}"] = f"{name}/{init.name}"
    body_inits = {init.name for init in body.initializer}
    inner = {i.name for i in body.input} | {o for nd in body.node for o in nd.output}

    def rename(v: str, prefix: str) -> str:
        if not v:
            return v
        if v in body_inits:
            return f"{name}/{v}"
        return f"{prefix}/{v}" if v in inner else v
    return rename


def _renamed(node, rename, name: str):
    copy = helper.make_node(node.op_type, [rename(i) for i in node.input], [rename(o) for o in node.output],
                            name=name, domain=node.domain)
    copy.attribute.extend(node.attribute)
    return copy


@lifter("Scan", attrs=("body", "num_scan_inputs", "scan_input_axes", "scan_input_directions", "scan_output_axes",
                       "scan_output_directions"), check=_check_scan)
def _scan(imp, node, a):
    body, m = a["body"], a["num_scan_inputs"]
    n = len(node.input) - m
    k_out = len(body.output) - n
    in_axes = list(a.get("scan_input_axes", [0] * m))
    out_axes = list(a.get("scan_output_axes", [0] * k_out))
    name = imp.node_name(node)
    if _lift_cells(imp, node, body, n, in_axes, out_axes):
        return
    states = [imp.value(v) for v in node.input[:n]]
    seqs = [imp.value(v) for v in node.input[n:]]
    in_axes = [_axis(ax, len(s.shape)) for ax, s in zip(in_axes, seqs)]
    steps = seqs[0].shape[in_axes[0]]
    step_name = body_renamer(imp, name, body)  # body constants: one copy for every step
    stacked = [[] for _ in range(k_out)]
    for t in range(steps):
        prefix = f"{name}/t{t}"

        def rename(v, prefix=prefix):
            return step_name(v, prefix)
        for i, v in enumerate(states):
            imp.values[rename(body.input[i].name)] = v
        for j, seq in enumerate(seqs):
            index = imp.add_const(np.array(t, np.int64), f"{prefix}/index{j}")
            imp.emit("nn.gather", [seq, index], {"axis": in_axes[j]}, node, name=f"{prefix}/input{j}",
                     outputs=[rename(body.input[n + j].name)])
        for i, inner_node in enumerate(body.node):
            copy = _renamed(inner_node, rename, f"{prefix}/{inner_node.name or inner_node.op_type + '_' + str(i)}")
            if copy.op_type == "Constant":
                imp.consts[copy.output[0]] = _constant_value(copy)
                imp.const_op_names[copy.output[0]] = copy.name
                continue
            imp.node_names.append(copy.name)
            imp._index[_node_key(copy)] = len(imp.node_names) - 1
            lift_node(imp, copy)
        states = [imp.value(rename(o.name)) for o in body.output[:n]]
        for k in range(k_out):
            stacked[k].append(imp.value(rename(body.output[n + k].name)))
    for out, v in zip(node.output[:n], states):
        if out:
            imp.values[out] = v
    for k, out in enumerate(node.output[n:]):
        if not out:
            continue
        rank = len(stacked[k][0].shape) + 1
        axis = _axis(out_axes[k], rank)
        parts = [imp.emit("nn.unsqueeze", [v], {"axes": [axis]}, node, name=f"{name}/t{t}/stack{k}", outputs=[])
                 for t, v in enumerate(stacked[k])]
        imp.emit("nn.concat", parts, {"axis": axis}, node, name=f"{name}/output{k}", outputs=[out])


def _lift_cells(imp, node, body, n: int, in_axes, out_axes) -> bool:
    """A body of TF cells (qcc/frontend/tf_cells.py) as one nn.lstm / nn.gru per cell; False if it is not."""
    found = match_cells(imp, node, body, n, [i.name for i in body.input[n:]])
    if found is None:
        return False
    cells, outputs = found
    seqs = [imp.value(v) for v in node.input[n:]]
    states = {i: imp.value(node.input[i]) for c in cells for i in (c.h_index, c.c_index) if i >= 0}
    axes = [_axis(ax, len(s.shape)) for ax, s in zip(in_axes, seqs)]
    # Batch 1 only: each step slice [1, I]; states hold H values; scan outputs stack on axis 0 or 1.
    for seq, axis in zip(seqs, axes):
        if len(seq.shape) != 3 or [d for k, d in enumerate(seq.shape) if k != axis][0] != 1:
            return False
    for cell in cells:
        if any(states[i].type.size != cell.hidden for i in (cell.h_index, cell.c_index) if i >= 0):
            return False
        if cell.x_index >= 0 and seqs[cell.x_index].shape[2] != cell.w.shape[1]:
            return False
    if any(kind == "y" and _axis(out_axes[k - n], 3) == 2 for k, (_, kind) in outputs.items()):
        return False
    name, results = imp.node_name(node), {}
    for c, cell in enumerate(cells):
        prefix = f"{name}/{cell.kind.lower()}{c}"
        if cell.x_index >= 0:
            seq, axis = seqs[cell.x_index], axes[cell.x_index]
            if axis != 0:
                seq = imp.emit("nn.transpose", [seq], {"perm": [axis] + [k for k in range(3) if k != axis]}, node,
                               name=f"{prefix}/x_time_major", outputs=[])
            x = imp.emit("nn.reshape", [seq], {"shape": [seq.shape[0], cell.w.shape[1]]}, node,
                         name=f"{prefix}/x", outputs=[])
        else:
            x = results[id(cell.below)][0]
        operands = [x, imp.add_const(cell.w, f"{prefix}.w"), imp.add_const(cell.r, f"{prefix}.r"),
                    imp.add_const(cell.b, f"{prefix}.b")]
        for state, i in (("h0", cell.h_index), ("c0", cell.c_index))[:2 if cell.kind == "LSTM" else 1]:
            init = states[i]
            operands.append(init if init.shape == (1, cell.hidden) else
                            imp.emit("nn.reshape", [init], {"shape": [1, cell.hidden]}, node,
                                     name=f"{prefix}/{state}", outputs=[]))
        if cell.p is not None:
            operands.append(imp.add_const(cell.p, f"{prefix}.p"))
        attrs = {"hidden_size": cell.hidden, **({"linear_before_reset": 0} if cell.kind == "GRU" else {})}
        results[id(cell)] = imp.emit("nn." + cell.kind.lower(), operands, attrs, node, name=prefix,
                                     outputs=[]).producer.results
    for k, (cell, kind) in sorted(outputs.items()):
        if k >= len(node.output) or not node.output[k]:
            continue
        y, h = results[id(cell)][0], results[id(cell)][1]
        if kind == "y":  # stacked h: [T, 1, H] on axis 0, [1, T, H] on axis 1
            shape = [y.shape[0], 1, cell.hidden] if _axis(out_axes[k - n], 3) == 0 else [1, y.shape[0], cell.hidden]
            value, what = y, f"output{k - n}"
        else:  # a final state keeps its initial value's shape (the body may declare another)
            value, shape, what = h if kind == "h" else results[id(cell)][2], list(states[k].shape), f"state{k}"
        # outputs=[]: the ONNX types tf2onnx declares for Scan results can be wrong ([1, 0])
        imp.values[node.output[k]] = imp.emit("nn.reshape", [value], {"shape": shape}, node, name=f"{name}/{what}",
                                              outputs=[])
    return True
