"""Convert NCHW spatial ops to NHWC and remove the transposes that leaves behind.

Let ``T(x, p)`` be ``nn.transpose`` with ``T(x, p).shape[i] = x.shape[p[i]]``,
``TO_NHWC = [0, 2, 3, 1]`` and ``TO_NCHW = [0, 3, 1, 2]`` (its inverse). The pass
works in two phases of local rewrites, each run to a fixpoint:

1. *Convert and sink.* Each NCHW ``nn.conv2d`` / pool / global pool becomes::

       op_nchw(x) == T(op_nhwc(T(x, TO_NHWC)), TO_NCHW)

   with conv weights re-laid ``W_nhwc = W.transpose(0, 2, 3, 1)`` ([Cout, KH,
   KW, Cin/g]); window attributes (kernel, strides, pads as [top, left,
   bottom, right]) do not depend on the layout. Transposes then *sink* below
   layout-agnostic ops, ``f(T(a, p)) == T(f'(a), p)``:

   * elementwise unary ops: ``f' = f``;
   * binary ops whose operands are all ``T(., p)`` or constants: a constant
     ``c`` (right-aligned to rank r) becomes ``c.transpose(inv(p))``, so a
     per-channel ``[C, 1, 1]`` bias becomes ``[C]``;
   * per-axis ops (batchnorm, scale_shift, softmax): ``axis' = p[axis]``;
     concat of ``T(., p)``/constants: ``axis' = p[axis]``;
   * reduce_mean: ``axes' = {p[a]}``; without keepdims the result gets the
     transpose that orders the kept axes (none when they stay in order);
   * pad: ``pads'[p[i]] = pads[i]`` for the begin and the end halves;
   * gather with 1-D constant indices (a nearest Resize): ``axis' = p[axis]``;
   * flatten / reshape to ``[N, K]`` of ``T(a, p)`` with ``p[0] = 0``: with
     ``idx = arange(K).reshape(a.shape[1:]).transpose(p[1:] - 1).ravel()``,
     ``flatten(T(a, p))[:, k] = flatten(a)[:, idx[k]]``. When ``idx`` is the
     identity (e.g. H = W = 1) it is just ``reshape(a)``; otherwise every user
     must be a dense-like op with a constant weight, whose K axis is permuted
     (``W'[:, idx] = W`` for dense ``[N, K]``) so the numbers do not change.

   Meanwhile ``T(T(x, p), q) = T(x, p[q])`` cancels each ``TO_NCHW`` against
   the next op's ``TO_NHWC`` (canonicalize's ComposeTransposes).
2. *Clean up.* A transpose that only moves size-1 axes keeps the row-major
   element order, so it is a reshape; reshapes of reshapes collapse and a
   reshape to the input's own shape disappears (an ONNX ``Reshape`` from
   [1, 49, 10, 1] to [1, 1, 49, 10] before the first conv ends as nothing).

A transpose that meets an op it cannot sink through (a graph output, a
slice, a reshape feeding a non-constant matmul, ...) stays where it is:
correctness first. ``stats["kept_transposes"]`` lists them with the reasons.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from qcc.ir.graph import Graph, Op, Value
from qcc.transforms.passmanager import PassResult, register_pass
from qcc.transforms.rewriter import PatternPass, RewritePattern, Rewriter, apply_patterns_greedily
from qcc.passes.canonicalize import ComposeTransposes
from qcc.errors import PassError

TO_NHWC = [0, 2, 3, 1]
TO_NCHW = [0, 3, 1, 2]
SPATIAL_OPS = ("nn.conv2d", "nn.maxpool", "nn.avgpool", "nn.global_avgpool", "nn.global_maxpool")
UNARY_OPS = ("nn.relu", "nn.clip", "nn.leaky_relu", "nn.sigmoid", "nn.tanh", "nn.hard_sigmoid",
             "nn.hard_swish", "nn.identity", "nn.dropout", "nn.cast")
BINARY_OPS = ("nn.add", "nn.sub", "nn.mul", "nn.div")
RESHAPE_LIKE = ("nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze")
SINK_PATTERNS = ("SinkTranspose", "SinkTransposeThroughFlatten")


def inverse(perm: Sequence[int]) -> List[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def transposed_source(v: Value):
    """(a, p) when ``v = T(a, p)``, else None."""
    op = v.producer
    if op is not None and op.opname == "nn.transpose":
        return op.operands[0], list(op.attrs["perm"])
    return None


def _transpose(rewriter: Rewriter, x: Value, perm: Sequence[int], like: Optional[Value] = None,
               name: str = "") -> Value:
    t = like.type if like is not None else None
    return rewriter.create_op("nn.transpose", [x], {"perm": list(perm)}, [t] if t else None, name=name).result


class ConvertSpatialToNHWC(RewritePattern):
    """op_nchw(x) -> T(op_nhwc(T(x, [0,2,3,1])), [0,3,1,2]); conv weights re-laid [Cout,KH,KW,Cin/g]."""

    op_names = SPATIAL_OPS

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        if op.attrs["layout"] != "NCHW":
            return rewriter.notify_match_failure(op, "it is already NHWC")
        operands = [_transpose(rewriter, op.operands[0], TO_NHWC)]
        if op.opname == "nn.conv2d":
            w = op.operands[1]
            wc = w.constant()
            if wc is not None:
                name = f"{w.producer.name}.nhwc" if w.producer.name else ""
                operands.append(rewriter.create_const(np.ascontiguousarray(wc.transpose(TO_NHWC)), name=name))
            else:  # a computed weight: re-lay it at run time
                operands.append(_transpose(rewriter, w, TO_NHWC))
            operands += op.operands[2:]
        attrs = dict(op.attrs, layout="NHWC")
        new = rewriter.create_op(op.opname, operands, attrs, name=op.name)
        rewriter.replace_op(op, _transpose(rewriter, new.results[0], TO_NCHW, like=op.results[0]))
        return True


def _sink_operands(op: Op, rewriter: Rewriter):
    """(new operands, p) when every non-constant operand is T(., p) with one p; else a reason string."""
    perm, rank = None, None
    for v in op.operands:
        src = transposed_source(v)
        if src is not None:
            if perm is not None and src[1] != perm:
                return f"its operands are transposed by different permutations ({perm} and {src[1]})"
            perm, rank = src[1], len(src[1])
    if perm is None:
        return "no operand is made by nn.transpose"
    inv = inverse(perm)
    plan = []  # checked completely before any constant is created
    for i, v in enumerate(op.operands):
        src = transposed_source(v)
        if src is not None:
            plan.append(src[0])
            continue
        c = v.constant()
        if c is None:
            return f"operand {i} is neither transposed by {perm} nor a constant"
        if c.ndim > rank:
            return f"constant operand {i} has rank {c.ndim} > {rank}"
        full = c.reshape((1,) * (rank - c.ndim) + c.shape).transpose(inv)
        if op.opname in BINARY_OPS:
            # Broadcasting aligns on the right, so leading size-1 axes can go (a [C,1,1] bias becomes [C]).
            keep = next((k for k, d in enumerate(full.shape) if d != 1), full.ndim)
            full = full.reshape(full.shape[keep:])
        plan.append(v if full.shape == c.shape and np.array_equal(full, c) else (v, np.ascontiguousarray(full)))
    new = []
    for item in plan:
        if isinstance(item, tuple):
            v, full = item
            name = f"{v.producer.name}.nhwc" if v.producer.name else ""
            item = rewriter.create_const(full, name=name, like=v)
        new.append(item)
    return new, perm


class SinkTranspose(RewritePattern):
    """f(T(a, p)) -> T(f'(a), p) for elementwise, per-axis, concat, reduce_mean, pad and gather ops."""

    op_names = UNARY_OPS + BINARY_OPS + ("nn.batchnorm", "nn.scale_shift", "nn.softmax", "nn.concat",
                                         "nn.reduce_mean", "nn.pad", "nn.gather")

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        if len(op.results) != 1:
            return rewriter.notify_match_failure(op, "it has more than one result")
        if op.opname == "nn.gather" and op.operands[1].type.rank != 1:
            return rewriter.notify_match_failure(op, "the indices are not a 1-D vector (the rank would change)")
        if op.opname in ("nn.batchnorm", "nn.scale_shift", "nn.gather"):
            # per-channel parameters and gather indices do not depend on the layout
            src = transposed_source(op.operands[0])
            if src is None:
                return rewriter.notify_match_failure(op, "its input is not made by nn.transpose")
            operands, perm = [src[0]] + op.operands[1:], src[1]
        else:
            found = _sink_operands(op, rewriter)
            if isinstance(found, str):
                return rewriter.notify_match_failure(op, found)
            operands, perm = found
        attrs = dict(op.attrs)
        out_perm = perm
        rank = len(perm)
        if "axis" in attrs:
            attrs["axis"] = perm[attrs["axis"] % rank]
        if op.opname == "nn.reduce_mean":
            axes = sorted(a % rank for a in attrs["axes"])
            attrs["axes"] = sorted(perm[a] for a in axes)
            if not attrs["keepdims"]:
                kept = [perm[i] for i in range(rank) if i not in axes]  # source axes in result order
                out_perm = [sorted(kept).index(k) for k in kept]
        if op.opname == "nn.pad":
            pads = attrs["pads"]
            new_pads = [0] * (2 * rank)
            for i in range(rank):
                new_pads[perm[i]], new_pads[rank + perm[i]] = pads[i], pads[rank + i]
            attrs["pads"] = new_pads
        new = rewriter.create_op(op.opname, operands, attrs, name=op.name)
        result = new.results[0]
        if out_perm != list(range(len(out_perm))):
            result = _transpose(rewriter, result, out_perm, like=op.results[0])
        rewriter.replace_op(op, result)
        return True


def flatten_permutation(a_shape: Sequence[int], perm: Sequence[int]) -> np.ndarray:
    """idx with flatten(T(a, perm))[:, k] == flatten(a)[:, idx[k]] (perm keeps axis 0 first)."""
    inner = [p - 1 for p in perm[1:]]
    return np.arange(int(np.prod(a_shape[1:]))).reshape(a_shape[1:]).transpose(inner).reshape(-1)


def _permuted_weight(user: Op, y: Value, idx: np.ndarray):
    """The user's weight with its K axis permuted by idx, or a reason string."""
    if user.opname not in ("nn.dense", "nn.gemm", "nn.matmul"):
        return f"the flattened value feeds {user.describe()}, not a dense, gemm or matmul"
    if user.operands[0] is not y or any(v is y for v in user.operands[1:]):
        return f"the flattened value is not only the data operand of {user.describe()}"
    if user.opname == "nn.gemm" and user.attrs["trans_a"]:
        return f"{user.describe()} has trans_a set"
    w = user.operands[1].constant()
    if w is None:
        return f"the weight of {user.describe()} is not a constant"
    k_axis = 1 if user.opname == "nn.dense" or (user.opname == "nn.gemm" and user.attrs["trans_b"]) else 0
    if w.ndim != 2 or w.shape[k_axis] != idx.size:
        return f"the weight of {user.describe()} is not a 2-D matrix with {idx.size} inputs"
    out = np.empty_like(w)
    if k_axis == 1:
        out[:, idx] = w
    else:
        out[idx, :] = w
    return out


class SinkTransposeThroughFlatten(RewritePattern):
    """flatten(T(a, p)) -> reshape(a), permuting the K axis of the dense weights that use it."""

    op_names = ("nn.flatten", "nn.reshape")

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        src = transposed_source(op.operands[0])
        if src is None:
            return rewriter.notify_match_failure(op, "its input is not made by nn.transpose")
        if len(op.operands) > 1 and op.operands[1].constant() is None:
            return rewriter.notify_match_failure(op, "the reshape target is computed at run time")
        a, perm = src
        y = op.results[0]
        t_shape = op.operands[0].type.shape
        if perm[0] != 0 or y.type.rank != 2 or y.type.shape[0] != t_shape[0]:
            return rewriter.notify_match_failure(
                op, f"it is not a flatten to [batch, features] of a transpose that keeps the batch axis "
                    f"(perm {perm}, result {list(y.type.shape)})")
        idx = flatten_permutation(a.type.shape, perm)
        graph = rewriter.graph
        weights = []
        if not np.array_equal(idx, np.arange(idx.size)):
            if graph.is_output(y):
                return rewriter.notify_match_failure(op, "the flattened value is a graph output and the "
                                                         "feature order would change")
            for user in graph.users(y):
                w = _permuted_weight(user, y, idx)
                if isinstance(w, str):
                    return rewriter.notify_match_failure(op, w)
                weights.append((user, w))
        new = rewriter.create_op("nn.reshape", [a], {"shape": list(y.type.shape)}, [y.type], name=op.name)
        for user, w in weights:
            wv = user.operands[1]
            name = f"{wv.producer.name}.nhwc" if wv.producer.name else ""
            rewriter.set_operand(user, 1, rewriter.create_const(w, name=name, like=wv, before=user))
        rewriter.replace_op(op, new.results[0])
        return True


class UnitTransposeToReshape(RewritePattern):
    """A transpose that only moves size-1 axes is a reshape (of the reshape chain's root)."""

    op_names = ("nn.transpose",)

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        x = op.operands[0]
        perm = op.attrs["perm"]
        moved = [p for p in perm if x.type.shape[p] != 1]
        if moved != sorted(moved):
            return rewriter.notify_match_failure(op, f"perm {perm} reorders axes of size > 1 "
                                                     f"(input {list(x.type.shape)})")
        root = x
        while root.producer is not None and root.producer.opname in RESHAPE_LIKE \
                and len(root.producer.operands) == 1:
            root = root.producer.operands[0]
        out = op.results[0]
        if root.type == out.type:
            rewriter.replace_op(op, root)
        else:
            new = rewriter.create_op("nn.reshape", [root], {"shape": list(out.type.shape)}, [out.type],
                                     name=op.name)
            rewriter.replace_op(op, new.results[0])
        return True


@register_pass
class ToNHWC(PatternPass):
    """Convert NCHW convs, pools and their neighbours to NHWC; cancel the transposes.

    Before (an NHWC model input that ONNX export transposed to NCHW)::

        %0 = nn.transpose %x {perm = [0, 3, 1, 2]} : tensor<1x3x8x8xf32>
        %1 = nn.conv2d %0, %w {layout = "NCHW", ...} : tensor<1x4x8x8xf32>   // %w [4, 3, 3, 3]
        %2 = nn.relu %1 : tensor<1x4x8x8xf32>
        %3 = nn.global_avgpool %2 {layout = "NCHW"} : tensor<1x4x1x1xf32>
        %4 = nn.flatten %3 {axis = 1} : tensor<1x4xf32>

    After ``-p to-nhwc``::

        %0 = nn.conv2d %x, %w_nhwc {layout = "NHWC", ...} : tensor<1x8x8x4xf32>  // [4, 3, 3, 3]
        %1 = nn.relu %0 : tensor<1x8x8x4xf32>
        %2 = nn.global_avgpool %1 {layout = "NHWC"} : tensor<1x1x1x4xf32>
        %3 = nn.reshape %2 {shape = [1, 4]} : tensor<1x4xf32>

    Statistics: ``applied.<pattern>`` counts, ``transposes_left`` and
    ``kept_transposes`` (each remaining transpose with why its users did not
    absorb it).
    """

    name = "to-nhwc"
    max_iterations = 100

    def patterns(self):
        return [ConvertSpatialToNHWC(), ComposeTransposes(), SinkTranspose(), SinkTransposeThroughFlatten()]

    def run(self, graph: Graph) -> PassResult:
        stats: Dict[str, object] = {}
        modified = False
        failures = []
        for phase, patterns in (("convert", self.patterns()),
                                ("cleanup", [ComposeTransposes(), UnitTransposeToReshape()])):
            result = apply_patterns_greedily(graph, patterns, max_iterations=self.max_iterations)
            if not result.converged:
                raise PassError(f"{phase} patterns did not reach a fixpoint in {self.max_iterations} sweeps")
            modified |= result.modified
            for k, v in result.stats.items():
                stats[k] = stats.get(k, 0) + v
            for k, v in sorted(result.applied.items()):
                stats[f"applied.{k}"] = stats.get(f"applied.{k}", 0) + v
            failures += result.failures
        kept = []
        for t in graph.find("nn.transpose"):
            users = graph.users(t.results[0])
            reasons = sorted({f"{f.op}: {f.reason}" for f in failures if f.pattern in SINK_PATTERNS
                              and any(f.op == u.describe() for u in users)})
            reasons += [f"{u.describe()} takes its input in NHWC" for u in users if u.opname in SPATIAL_OPS]
            if graph.is_output(t.results[0]):
                reasons.append("it makes a graph output, whose layout must not change")
            if not t.operands[0].producer:
                reasons.append(f"it transposes graph input '{t.operands[0].name}'")
            kept.append(f"{t.describe()} perm {t.attrs['perm']}: " + ("; ".join(reasons) or "no pattern applies"))
        stats["transposes_left"] = len(kept)
        stats["kept_transposes"] = kept
        stats["match_failures"] = failures
        return PassResult(modified, stats)
