"""Recognise TensorFlow's standard recurrent cells in a ``Scan`` body and lift them as one op.

tf2onnx turns a TF1 ``dynamic_rnn`` into a ``Scan`` whose body is the cell
written out in primitive ops. When the body is made of these cells (and
nothing else that the model reads), the Scan becomes one ``nn.lstm`` /
``nn.gru`` per cell instead of T unrolled copies: one weight copy, and the
cell state and gate pre-activations get the recurrent kernels' formats
(Q3.12 gates, an int16 cell) instead of one 8-bit scale per primitive op.

BasicLSTMCell, and LSTMCell without a projection or clipping
(``[x, h] @ K + b`` split into i, j, f, o)::

    c' = c * sigmoid(f + forget_bias) + sigmoid(i) * tanh(j)
    h' = tanh(c') * sigmoid(o)

is ONNX's LSTM with W = K[:I].T and R = K[I:].T re-ordered i, o, f, c(=j) and
Wb = b (i, o, f + forget_bias, j), Rb = 0. LSTMCell with peepholes adds
``w_i_diag * c`` and ``w_f_diag * c`` to i and f and ``w_o_diag * c'`` to o:
ONNX's P = [w_i, w_o, w_f] (nn.lstm's operand p). GRUCell
(``r, u = split(sigmoid([x, h] @ Kg + bg))``)::

    n  = tanh([x, r * h] @ Kc + bc)
    h' = u * h + (1 - u) * n

is ONNX's GRU with ``linear_before_reset = 0`` and z = u: W = [Kg_u, Kg_r,
Kc] over the x rows, R over the h rows, Wb = [bg_u, bg_r, bc], Rb = 0.
Multiplications and additions match in either operand order; the gate
product may be a Gemm or a MatMul plus an Add; the concat may put h first.

Cells may be stacked (MultiRNNCell: a cell's x is the previous cell's h'),
and the body may also carry states the model never reads (tf2onnx's int32
time counter): those are dropped. Anything else (a projection,
cell clipping, another activation, a body value read outside the cells)
leaves the Scan to be unrolled op by op. A projection (num_proj) is inside the
recurrence (h = m @ P feeds the next step's gates), which nn.lstm does not
compute, so ML-KWS's LSTM models (peepholes and a projection) stay unrolled.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
from onnx import helper, numpy_helper


@dataclass
class Cell:
    kind: str  # "LSTM" or "GRU"
    x: str  # body value: the per-step input
    h_prev: str
    h_new: str
    w: np.ndarray  # ONNX layout, one direction removed: [G*H, I]
    r: np.ndarray  # [G*H, H]
    b: np.ndarray  # [2*G*H]
    c_prev: str = ""
    c_new: str = ""
    nodes: List = field(default_factory=list)
    # set by match_cells: the body input indices of h_prev / c_prev and of x (a scan input), or the cell below
    h_index: int = -1
    c_index: int = -1
    x_index: int = -1
    below: Optional["Cell"] = None
    p: Optional[np.ndarray] = None  # peepholes [3H] (ONNX P order i, o, f), nn.lstm's operand p

    @property
    def hidden(self) -> int:
        return self.r.shape[1]


class _Body:
    """Producers, consumers and constants of a Scan body, looking through Identity nodes."""

    def __init__(self, imp, body, n_states: int):
        self.imp = imp
        self.nodes = list(body.node)
        self.inputs = [i.name for i in body.input]
        self.states = set(self.inputs[:n_states])
        self.consts: Dict[str, np.ndarray] = {}
        for init in body.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        for node in body.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        self.consts[node.output[0]] = numpy_helper.to_array(a.t)
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: Dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def const(self, name: str) -> Optional[np.ndarray]:
        name = self.skip_identity(name)
        if name in self.consts:
            return self.consts[name]
        return None if name in self.producer or name in self.inputs else self.imp.const(name)

    def skip_identity(self, name: str) -> str:
        while name in self.producer and self.producer[name].op_type == "Identity":
            name = self.producer[name].input[0]
        return name

    def node(self, name: str, op_type: str):
        n = self.producer.get(self.skip_identity(name))
        return n if n is not None and n.op_type == op_type else None

    def only_users(self, name: str, op_type: str) -> list:
        """The consumers of ``name`` (through Identity) when all are ``op_type``, else []."""
        users, todo = [], [name]
        while todo:
            for n in self.consumers.get(todo.pop(), []):
                if n.op_type == "Identity":
                    todo.append(n.output[0])
                elif n.op_type == op_type:
                    users.append(n)
                else:
                    return []
        return users

    def user(self, name: str, op_type: str):
        users = self.only_users(name, op_type)
        return users[0] if len(users) == 1 else None

    def same(self, a: str, b: str) -> bool:
        return self.skip_identity(a) == self.skip_identity(b)

    def other(self, node, name: str) -> Optional[str]:
        """The operand of a binary ``node`` that is not ``name``."""
        a, b = node.input[0], node.input[1]
        return b if self.same(a, name) else a if self.same(b, name) else None


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _gate_product(body: _Body, name: str):
    """``[x, h] @ K + b`` as (concat inputs, K [rows, cols], b [cols], nodes), or None."""
    gemm = body.node(name, "Gemm")
    if gemm is not None:
        if _attr(gemm, "transA", 0) or _attr(gemm, "alpha", 1.0) != 1.0 or _attr(gemm, "beta", 1.0) != 1.0:
            return None
        k = body.const(gemm.input[1])
        b = body.const(gemm.input[2]) if len(gemm.input) > 2 and gemm.input[2] else None
        if k is None or (len(gemm.input) > 2 and gemm.input[2] and b is None):
            return None
        k = k.T if _attr(gemm, "transB", 0) else k
        matmul_in, nodes = gemm.input[0], [gemm]
    else:
        add = body.node(name, "Add")
        if add is not None:
            for mm_name, b_name in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
                mm, b = body.node(mm_name, "MatMul"), body.const(b_name)
                if mm is not None and b is not None:
                    break
            else:
                return None
            nodes = [add, mm]
        else:
            mm, b, nodes = body.node(name, "MatMul"), None, []
            if mm is None:
                return None
            nodes = [mm]
        k = body.const(mm.input[1])
        if k is None:
            return None
        matmul_in = mm.input[0]
    concat = body.node(matmul_in, "Concat")
    if concat is None or len(concat.input) != 2 or _attr(concat, "axis", None) not in (1, -1) or k.ndim != 2:
        return None
    cols = k.shape[1]
    b = np.zeros(cols, np.float32) if b is None else np.asarray(b, np.float32)
    if b.size == 1:
        b = np.full(cols, b.reshape(-1)[0], np.float32)
    if b.shape != (cols,):
        return None
    return list(concat.input), k.astype(np.float32), b, nodes + [concat]


def _split_rows(k: np.ndarray, parts: List[str], h: str, body: _Body, hidden: int):
    """K's rows for x and for h, and the x value, given the concat's inputs (x, h) or (h, x)."""
    if body.same(parts[1], h):
        x, kx, kh = parts[0], k[:k.shape[0] - hidden], k[k.shape[0] - hidden:]
    elif body.same(parts[0], h):
        x, kx, kh = parts[1], k[hidden:], k[:hidden]
    else:
        return None
    return (x, kx, kh) if kx.shape[0] > 0 else None


def _split_parts(body: _Body, split, n: int) -> bool:
    if split is None or len(split.output) != n or _attr(split, "axis", 0) not in (1, -1):
        return False
    sizes = _attr(split, "split", None)
    if len(split.input) > 1 and split.input[1]:
        sizes = body.const(split.input[1])
    return sizes is None or len(set(int(s) for s in np.ravel(sizes))) == 1


def _gate_input(body: _Body, name: str, act: str, hidden: int):
    """Follow a gate from its split part through Adds to its ``act`` (Sigmoid/Tanh): a constant added
    (the forget bias) and at most one peephole ``c * diag`` (``Mul`` of a value by a constant [H]).
    Returns (activation node, added bias [H], (c value, diag [H]) or None, Add/Mul nodes) or None."""
    bias, peephole, nodes = np.zeros(hidden, np.float32), None, []
    while True:
        users = body.only_users(name, "Add") or body.only_users(name, act)
        if len(users) != 1:
            return None
        node = users[0]
        if node.op_type == act:
            return node, bias, peephole, nodes
        other = body.other(node, name)
        const = body.const(other) if other is not None else None
        if const is not None and const.size in (1, hidden):
            bias = bias + np.broadcast_to(np.asarray(const, np.float32).reshape(-1), (hidden,))
        else:
            mul = body.node(other, "Mul") if other is not None else None
            diag = None
            if mul is not None:
                for c, d in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
                    diag = body.const(d)
                    if diag is not None and diag.size == hidden and body.const(c) is None:
                        break
                else:
                    diag = None
            if diag is None or peephole is not None:
                return None
            peephole, nodes = (c, np.asarray(diag, np.float32).reshape(-1)), nodes + [mul]
        nodes.append(node)
        name = node.output[0]


def _match_lstm(body: _Body, split) -> Optional[Cell]:
    if not _split_parts(body, split, 4):
        return None
    prod = _gate_product(body, split.input[0])
    if prod is None or prod[1].shape[1] % 4:
        return None
    parts, k, b, nodes = prod
    hidden = k.shape[1] // 4
    gates = [_gate_input(body, part, act, hidden)
             for part, act in zip(split.output, ("Sigmoid", "Tanh", "Sigmoid", "Sigmoid"))]
    if None in gates:
        return None
    (sig_i, bias_i, peep_i, n_i), (tanh_j, bias_j, peep_j, n_j), (sig_f, bias_f, peep_f, n_f), \
        (sig_o, bias_o, peep_o, n_o) = gates
    mul_ij, mul_fc = body.user(sig_i.output[0], "Mul"), body.user(sig_f.output[0], "Mul")
    if mul_ij is None or mul_fc is None or not body.same(body.other(mul_ij, sig_i.output[0]) or "", tanh_j.output[0]):
        return None
    c_prev = body.other(mul_fc, sig_f.output[0])
    add_c = body.user(mul_ij.output[0], "Add")
    if c_prev is None or add_c is None or body.other(add_c, mul_ij.output[0]) is None \
            or not body.same(body.other(add_c, mul_ij.output[0]), mul_fc.output[0]):
        return None
    c_new = add_c.output[0]
    tanh_c = [n for n in body.consumers.get(c_new, []) if n.op_type == "Tanh"]
    if len(tanh_c) != 1:
        return None
    mul_h = body.user(tanh_c[0].output[0], "Mul")
    if mul_h is None or not body.same(body.other(mul_h, tanh_c[0].output[0]) or "", sig_o.output[0]):
        return None
    h_prev = next((p for p in parts if body.skip_identity(p) in body.states), None)
    rows = _split_rows(k, parts, h_prev, body, hidden) if h_prev else None
    if rows is None or body.skip_identity(c_prev) not in body.states:
        return None
    # Peepholes (TF use_peepholes): i and f read the previous cell state, o the new one; all or none.
    peepholes = (peep_i, peep_o, peep_f)
    if peep_j is not None or (any(peepholes) and not all(peepholes)):
        return None
    if all(peepholes) and not (body.same(peep_i[0], c_prev) and body.same(peep_f[0], c_prev)
                               and body.same(peep_o[0], c_new)):
        return None
    x, kx, kh = rows
    # TF blocks i, j, f, o -> ONNX i, o, f, c; constants added before the activations join the bias
    blocks = [slice(g * hidden, (g + 1) * hidden) for g in (0, 3, 2, 1)]
    bias = b.copy() + np.concatenate([bias_i, bias_j, bias_f, bias_o])
    w = np.concatenate([kx[:, s].T for s in blocks])
    r = np.concatenate([kh[:, s].T for s in blocks])
    wb = np.concatenate([bias[s] for s in blocks])
    used = nodes + [split, sig_i, tanh_j, sig_o, sig_f, mul_ij, mul_fc, add_c, tanh_c[0], mul_h] + n_i + n_j + n_f + n_o
    cell = Cell("LSTM", x, h_prev, mul_h.output[0], w, r, np.concatenate([wb, np.zeros_like(wb)]),
                c_prev, c_new, used)
    if all(peepholes):
        cell.p = np.concatenate([p[1] for p in peepholes])  # ONNX P order: i, o, f
    return cell


def _match_gru(body: _Body, split) -> Optional[Cell]:
    if not _split_parts(body, split, 2):
        return None
    sig = body.node(split.input[0], "Sigmoid")
    if sig is None or body.user(sig.output[0], "Split") is not split:
        return None
    prod = _gate_product(body, sig.input[0])
    if prod is None or prod[1].shape[1] % 2:
        return None
    parts, kg, bg, nodes = prod
    hidden = kg.shape[1] // 2
    h_prev = next((p for p in parts if body.skip_identity(p) in body.states), None)
    rows = _split_rows(kg, parts, h_prev, body, hidden) if h_prev else None
    if rows is None:
        return None
    x, kgx, kgh = rows
    r_out, u_out = split.output
    mul_rh = body.user(r_out, "Mul")
    if mul_rh is None or not body.same(body.other(mul_rh, r_out) or "", h_prev):
        return None
    concat2 = body.user(mul_rh.output[0], "Concat")
    if concat2 is None:
        return None
    cand = None
    for t in body.nodes:  # the candidate's Tanh over a gate product of this concat
        if t.op_type == "Tanh":
            p = _gate_product(body, t.input[0])
            if p is not None and body.same(p[3][-1].output[0], concat2.output[0]):
                cand, prod_c = t, p
                break
    if cand is None or prod_c[1].shape[1] != hidden:
        return None
    parts_c, kc, bc, nodes_c = prod_c
    if body.same(parts_c[1], mul_rh.output[0]) and body.same(parts_c[0], x):
        kcx, kch = kc[:-hidden], kc[-hidden:]
    elif body.same(parts_c[0], mul_rh.output[0]) and body.same(parts_c[1], x):
        kcx, kch = kc[hidden:], kc[:hidden]
    else:
        return None
    u_users = [n for n in body.consumers.get(u_out, [])]
    mul_uh = next((n for n in u_users if n.op_type == "Mul" and body.same(body.other(n, u_out) or "", h_prev)), None)
    sub = next((n for n in u_users if n.op_type == "Sub" and body.same(n.input[1], u_out)), None)
    if mul_uh is None or sub is None or len(u_users) != 2:
        return None
    one = body.const(sub.input[0])
    if one is None or one.size != 1 or float(np.ravel(one)[0]) != 1.0:
        return None
    mul_nc = body.user(sub.output[0], "Mul")
    if mul_nc is None or not body.same(body.other(mul_nc, sub.output[0]) or "", cand.output[0]):
        return None
    add_h = body.user(mul_uh.output[0], "Add")
    if add_h is None or not body.same(body.other(add_h, mul_uh.output[0]) or "", mul_nc.output[0]):
        return None
    u, rr = slice(hidden, 2 * hidden), slice(0, hidden)
    w = np.concatenate([kgx[:, u].T, kgx[:, rr].T, kcx.T])
    r = np.concatenate([kgh[:, u].T, kgh[:, rr].T, kch.T])
    wb = np.concatenate([bg[u], bg[rr], bc])
    used = nodes + nodes_c + [sig, split, mul_rh, cand, mul_uh, sub, mul_nc, add_h]
    return Cell("GRU", x, h_prev, add_h.output[0], w, r, np.concatenate([wb, np.zeros_like(wb)]), nodes=used)


def match_cells(imp, node, body, n_states: int, scan_inputs: List[str]):
    """``(cells in dependency order, {body output index: (cell, "h" | "c" | "y")})`` when the body is
    only TF cells plus states the model never reads, else None."""
    b = _Body(imp, body, n_states)
    cells = [c for c in (_match_lstm(b, s) or _match_gru(b, s) for s in b.nodes if s.op_type == "Split") if c]
    if not cells:
        return None
    out_names = [o.name for o in body.output]
    state_of = {b.skip_identity(body.input[i].name): i for i in range(n_states)}
    outputs = {}
    for cell in cells:
        for kind, prev, new in (("h", cell.h_prev, cell.h_new), ("c", cell.c_prev, cell.c_new)):
            if not prev:
                continue
            i = state_of.get(b.skip_identity(prev))
            if i is None or not b.same(out_names[i], new):
                return None  # the state is not carried from this cell's output to its input
            outputs[i] = (cell, kind)
            setattr(cell, kind + "_index", i)
    for k, name in enumerate(out_names):
        live = k < len(node.output) and imp.is_used(node.output[k])
        if k in outputs or not live:
            continue  # unread states (tf2onnx's time counter) and unread scan outputs are dropped
        cell = next((c for c in cells if b.same(name, c.h_new)), None) if k >= n_states else None
        if cell is None:
            return None  # the model reads a body value that no cell computes
        outputs[k] = (cell, "y")
    scanned = [b.skip_identity(s) for s in scan_inputs]
    for cell in cells:
        if cell.h_index < 0 or (cell.kind == "LSTM" and cell.c_index < 0):
            return None
        cell.x_index = scanned.index(b.skip_identity(cell.x)) if b.skip_identity(cell.x) in scanned else -1
        cell.below = next((d for d in cells if b.same(cell.x, d.h_new)), None)
    order = []
    while len(order) < len(cells):  # a cell reads a scan input or an earlier cell's h (MultiRNNCell)
        ready = [c for c in cells if all(c is not d for d in order)
                 and (c.x_index >= 0 or any(c.below is d for d in order))]
        if not ready:
            return None
        order.append(ready[0])
    covered = {id(n) for c in cells for n in c.nodes}
    for cell in cells:  # nothing else feeds a cell
        for n in cell.nodes:
            for i in n.input:
                p = b.producer.get(b.skip_identity(i))
                if p is not None and id(p) not in covered and p.op_type != "Constant":
                    return None
    return order, outputs
