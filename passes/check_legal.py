"""check-legal: refuse, before any calibration, every float op the chosen scheme cannot lower.

The quantizing pipelines (``qmn``, ``int8-calibrated``) run this right after
their float cleanup, so a model with an op the scheme has no integer kernel for
fails in seconds with one message listing every such node, in the model's own
terms (ONNX node name and op type, and why), instead of after calibration with
internal op names. Exit code 2 (``UnsupportedModelError``).

The tables below are the scheme's contract with its lowering pass:
``QMN_LEGAL`` with ``lower-quantized`` and ``INT8_LEGAL`` with
``quantize-affine`` + ``lower-qdq``. Each maps a float op to ``None`` (always
lowers) or a check that returns why this instance does not. An op in neither
is refused. tests/test_check_legal.py checks the tables against the lowering
passes' handlers, so a kernel added or removed without its table entry fails there.

Ops whose operands are all constants are skipped (const-fold has folded those
the cleanup can fold; the rest are shape computations the lowering ignores).

Before (``-p check-legal{scheme=int8}``)::

    %1 = nn.leaky_relu %0 {alpha = 0.1} : tensor<1x8xf32> loc("lrelu")

After: no change, or ``error: 1 op cannot be compiled with --scheme int8 ...
node "lrelu" (LeakyRelu): no int8 kernel yet``.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Literal, Optional

from qcc.errors import UnsupportedModelError
from qcc.ir.graph import Graph, Op
from qcc.transforms.passmanager import Pass, PassResult, register_pass

Check = Optional[Callable[[Op], Optional[str]]]
FUSABLE_ACTS = ("none", "relu", "relu6")
FLOAT_EPILOGUE_OPS = ("nn.softmax", "nn.sigmoid", "nn.tanh")
SHAPE_OPS = ("nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze", "nn.transpose", "nn.pad", "nn.concat",
             "nn.identity", "nn.dropout")


# ---------------------------------------------------------------- checks shared by both schemes
def _const_weights(op: Op) -> Optional[str]:
    if not all(v.is_constant() for v in op.operands[1:]):
        return "the weights/bias are computed at run time, not constants"
    return None


def _act(op: Op) -> Optional[str]:
    act = op.attrs.get("act", "none")
    if act in FUSABLE_ACTS:
        return None
    return f"the fused activation '{act}' has no integer clamp"


def _layer(op: Op) -> Optional[str]:
    return _const_weights(op) or _act(op)


def _tensor_pair(op: Op) -> Optional[str]:
    a, b = op.operands
    if a.is_constant() or b.is_constant():
        return "one operand is a constant that is not a scalar or per-channel vector"
    if a.shape != b.shape:
        return f"it broadcasts {list(a.shape)} with {list(b.shape)}; integer elementwise ops need equal shapes"
    return None


def _elementwise(op: Op) -> Optional[str]:
    return _tensor_pair(op) or _act(op)


def _window(op: Op) -> Optional[str]:
    a = op.attrs
    if a.get("dilations", [1, 1]) != [1, 1]:
        return f"dilations {a['dilations']} have no integer pooling kernel"
    if a["ceil_mode"]:  # legalize-pool removes it; left only when the pass did not run
        return "ceil_mode is left (run legalize-pool first)"
    return None


def _constant_indices(op: Op) -> Optional[str]:
    return None if op.operands[1].is_constant() else "the indices are computed at run time, not constants"


def _last_axis(op: Op) -> Optional[str]:
    rank = op.operands[0].type.rank
    if op.attrs["axis"] % rank != rank - 1:
        return f"it is over axis {op.attrs['axis']}; integer softmax runs over the last axis"
    return None


def _const_weights_of_cell(op: Op) -> Optional[str]:
    if not all(v.is_constant() for v in op.operands[1:4]):
        return "the cell's weights/bias are computed at run time, not constants"
    return None


def _scale_shift_axis(op: Op) -> Optional[str]:
    rank = op.operands[0].type.rank
    axis = op.attrs["axis"] % rank
    if axis == rank - 1 or (rank == 4 and axis == 1):
        return None
    return f"it scales axis {axis} of a rank-{rank} tensor; only the channel (or last) axis lowers"


# ---------------------------------------------------------------- Qm.n: lower-quantized
QMN_LEGAL: Dict[str, Check] = {
    "nn.conv2d": _layer, "nn.dense": _layer, "nn.add": _elementwise, "nn.sub": _elementwise,
    "nn.mul": _elementwise, "nn.maxpool": _window, "nn.avgpool": _window,
    "nn.global_avgpool": None, "nn.global_maxpool": None, "nn.relu": None, "nn.clip": None,
    "nn.softmax": _last_axis, "nn.sigmoid": None, "nn.tanh": None, "nn.leaky_relu": None,
    "nn.hard_sigmoid": None, "nn.hard_swish": None, "nn.scale_shift": _scale_shift_axis,
    "nn.gather": _constant_indices, **{name: None for name in SHAPE_OPS},
    # One integer op per cell (passes/_lower_recurrent.py); W, R and B must be constants.
    "nn.lstm": _const_weights_of_cell, "nn.gru": _const_weights_of_cell,
}


# ---------------------------------------------------------------- int8: quantize-affine + lower-qdq
INT8_LAYERS = ("nn.conv2d", "nn.dense", "nn.add", "nn.maxpool", "nn.avgpool", "nn.global_avgpool")


def _int8_pool(op: Op) -> Optional[str]:
    if op.opname == "nn.avgpool" and op.attrs["count_include_pad"] and any(op.attrs["pads"]):
        return "count_include_pad with padding is left (run legalize-pool first)"
    return _window(op)


LAYOUT_MOVES = ("nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze", "nn.transpose")


def _only_to_outputs(graph, v) -> bool:
    """Is ``v`` read only by graph outputs, through layout ops?"""
    return all(u.opname in LAYOUT_MOVES and _only_to_outputs(graph, u.result) for u in graph.users(v))


def _recurrent_int8(op: Op) -> Optional[str]:
    if not all(v.is_constant() for v in op.operands[1:]):
        return "its weights, bias or initial states are computed at run time, not constants"
    if op.opname == "nn.lstm" and not _only_to_outputs(op.graph, op.results[2]):
        return ("its final cell state (Y_c) feeds other layers; under int8 Y_c is the kernel's int16 cell "
                "state, read only as a graph output")
    return None


INT8_LEGAL: Dict[str, Check] = {
    "nn.conv2d": _layer, "nn.dense": _layer, "nn.maxpool": _int8_pool, "nn.avgpool": _int8_pool,
    "nn.global_avgpool": None, "nn.global_maxpool": None, "nn.softmax": _last_axis,
    # TFLite's ADD / SUB / MUL: any two int8 tensors, numpy broadcasting, constants quantized per tensor.
    "nn.add": _act, "nn.sub": _act, "nn.mul": _act,
    # A ReLU / Clip is the clamp of the layer before it, or on its own an s8.requantize (TFLite RELU / RELU6).
    "nn.relu": None, "nn.clip": None,
    # 256-entry tables from TFLite Micro's reference kernels (qcc/sim/s8_lut.py).
    "nn.leaky_relu": None, "nn.sigmoid": None, "nn.tanh": None, "nn.hard_swish": None, "nn.hard_sigmoid": None,
    "nn.gather": _constant_indices, **{name: None for name in SHAPE_OPS},
    # TFLite's integer LSTM (and a GRU from its pieces): quantize-recurrent, not lower-qdq.
    "nn.lstm": _recurrent_int8, "nn.gru": _recurrent_int8,
}


# Why the remaining float ops never lower, in users' terms.
NEVER: Dict[str, str] = {
    "nn.batchnorm": "it does not follow a conv/dense it could fold into",
    "nn.scale_shift": "a per-channel scale/shift (a BatchNormalization or constant Mul/Add) lowers in int8 only "
                      "over the channels of a 4-D tensor (as a depthwise 1x1 conv) or folded into a conv/dense",
    "nn.gemm": "the weights are not constant", "nn.matmul": "the right operand is not a 2-D constant",
    "nn.div": "only division by a constant scalar or per-channel vector lowers",
    "nn.reduce_mean": "only a mean over both spatial axes of a 4-D tensor lowers, as a global average pool",
}

LEGAL = {"qmn": QMN_LEGAL, "int8": INT8_LEGAL}
# int8 ops without a 16x8 lowering (``--scheme int8 --bits 16``): the s8.lut tables index int8 codes.
INT16X8_MISSING: Dict[str, str] = {
    name: "no 16x8 (int16 activation) kernel: its table lookup is int8-only; use --bits 8"
    for name in ("nn.leaky_relu", "nn.sigmoid", "nn.tanh", "nn.hard_swish", "nn.hard_sigmoid")}
INT16X8_MISSING.update({name: "no 16x8 recurrent cell: the integer LSTM/GRU takes int8 inputs and hidden states "
                              "(CMSIS-NN's s8 cell); use --bits 8" for name in ("nn.lstm", "nn.gru")})


def why_illegal(op: Op, scheme: str, bits: int = 8) -> Optional[str]:
    """Why ``scheme`` cannot lower ``op`` (None when it can); ``bits`` 16 with int8 is the 16x8 mode."""
    if scheme == "int8" and bits == 16 and op.opname in INT16X8_MISSING:
        return INT16X8_MISSING[op.opname]
    table = LEGAL[scheme]
    if op.opname in table:
        check = table[op.opname]
        return check(op) if check is not None else None
    return NEVER.get(op.opname, f"no {scheme} kernel for this op")


def _float_epilogue(graph: Graph, op: Op) -> bool:
    """A softmax/sigmoid/tanh whose result only reaches graph outputs through more of them."""
    if op.opname not in FLOAT_EPILOGUE_OPS:
        return False
    users = graph.users(op.result)
    return (graph.is_output(op.result) or bool(users)) and all(_float_epilogue(graph, u) for u in users)


@register_pass
class CheckLegal(Pass):
    """Fail with every op the scheme cannot lower, named as in the model (ONNX node and op type).

    See the module docstring. ``float_output=true`` allows a trailing
    softmax/sigmoid/tanh (it stays float after the last dequantize).
    """

    name = "check-legal"
    scheme: Literal["qmn", "int8"] = "qmn"
    float_output: bool = False
    bits: int = 8   # with scheme int8, 16 checks the 16x8 kernels

    def run(self, graph: Graph) -> PassResult:
        problems: List[str] = []
        qmn_would = True
        for op in graph.ops:
            if op.opname == "qcc.const" or op.opname.startswith(("q.", "qnn.", "s8.")):
                continue
            if op.operands and all(v.is_constant() for v in op.operands):
                continue
            if not any(v.type.is_float for v in op.operands):
                continue  # shape computations on integer tensors
            if self.float_output and _float_epilogue(graph, op):
                continue
            why = why_illegal(op, self.scheme, self.bits)
            if why:
                problems.append(f"  {graph.source_name(op)}: {why}")
                qmn_would = qmn_would and why_illegal(op, "qmn") is None
        if problems:
            flag = "--scheme int8" if self.scheme == "int8" else "--scheme qmn"
            flag += " --bits 16" if self.scheme == "int8" and self.bits == 16 else ""
            s = "s" if len(problems) > 1 else ""
            raise UnsupportedModelError(
                f"{len(problems)} op{s} cannot be compiled with {flag} (nothing was calibrated or written):\n"
                + "\n".join(problems)
                + ("\n(--scheme qmn has kernels for all of them)" if self.scheme == "int8" and qmn_would else ""))
        return PassResult(False, {"checked": len(graph.ops)})
