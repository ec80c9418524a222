"""Canonicalize: local simplifications that put the graph in the form later passes expect.

Identities (exact in float arithmetic, so numerics do not change):

* ``x + 0``, ``0 + x``, ``x - 0``, ``x * 1``, ``1 * x``, ``x / 1`` -> ``x`` when the
  constant does not broadcast ``x`` to a larger shape and no activation is fused;
* ``nn.identity x``, ``nn.dropout x`` (inference) -> ``x``;
* a chain of ``nn.reshape``/``nn.flatten``/``nn.squeeze``/``nn.unsqueeze`` ->
  one ``nn.reshape`` to the final shape (none at all if the shape is unchanged);
* ``transpose(transpose(x, p), q)`` -> ``transpose(x, r)`` with ``r[i] = p[q[i]]``,
  dropped when ``r`` is the identity permutation;
* ``nn.slice`` of a run-time ``x`` with constant parameters -> one constant-index
  ``nn.gather`` per axis it narrows (``x`` itself when it narrows none).

Dense layers (``nn.dense(x, w, b) = x @ w.T + b`` with ``w`` [N, K]):

* ``nn.matmul(x, W)`` with constant ``W`` [K, N] -> ``nn.dense(x, W.T)``;
* ``nn.add(nn.dense(x, w), b)`` with constant ``b`` of N elements -> ``nn.dense(x, w, b)``;
* ``nn.gemm(a, B, c)`` (ONNX Gemm: ``alpha * a @ op(B) + beta * c``) with constant
  ``B`` and ``c`` -> ``nn.dense(a, alpha * op(B).T, beta * c)``; with ``c`` computed at run
  time and ``beta = 1`` -> ``nn.add(nn.dense(a, alpha * op(B).T), c)``;
* the QDQ form of the same Gemm, ``B = dequantize(Bq)`` of a quantized constant (or of
  ``quantize(W)``, W constant, when ``trans_b``) and ``c``
  one value per output feature, ``alpha = beta = 1`` -> ``nn.dense(a, dequantize(op(Bq).T), c)``
  (a per-axis ``Bq`` keeps its output-channel axis: 1 -> 0 when ``op(B) = B``), which
  ``lower-qdq`` and ``lower-quantized`` read as a quantized dense layer.

Each pattern tells the rewriter why it did not apply (``rewriter.why(op)``).
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from qcc.ir.graph import Op, Value
from qcc.ir.ops.nn_shape import slice_indices, slice_params
from qcc.transforms.passmanager import register_pass
from qcc.transforms.rewriter import PatternPass, RewritePattern

RESHAPE_LIKE = ("nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze")


def _no_act(op: Op) -> bool:
    return op.attrs.get("act", "none") == "none"


def _is_splat(v: Value, scalar: float) -> bool:
    c = v.constant()
    return c is not None and c.size > 0 and bool(np.all(c == scalar))


class RemoveNeutralOperand(RewritePattern):
    """x+0, 0+x, x-0, x*1, 1*x, x/1 -> x."""

    op_names = ("nn.add", "nn.sub", "nn.mul", "nn.div")
    NEUTRAL = {"nn.add": (0.0, True), "nn.sub": (0.0, False), "nn.mul": (1.0, True), "nn.div": (1.0, False)}

    def match_and_rewrite(self, op, rewriter):
        neutral, commutes = self.NEUTRAL[op.opname]
        if not _no_act(op):
            return rewriter.notify_match_failure(op, f"a fused activation ({op.attrs['act']}) is applied")
        if not op.results[0].type.is_float:
            return rewriter.notify_match_failure(op, "the result is not a float tensor")
        a, b = op.operands
        candidates = [(a, b)] + ([(b, a)] if commutes else [])
        for keep, const in candidates:
            if not _is_splat(const, neutral):
                continue
            if keep.type != op.results[0].type:
                return rewriter.notify_match_failure(
                    op, f"the constant {neutral:g} broadcasts the other operand to a new shape or type")
            rewriter.replace_op(op, keep)
            return True
        return rewriter.notify_match_failure(op, f"no operand is a constant that is all {neutral:g}")


class RemoveIdentity(RewritePattern):
    """nn.identity x and nn.dropout x (inference) -> x."""

    op_names = ("nn.identity", "nn.dropout")

    def match_and_rewrite(self, op, rewriter):
        rewriter.replace_op(op, op.operands[0])
        return True


class CollapseReshapes(RewritePattern):
    """A reshape-like op of a reshape-like op becomes one reshape; a no-op reshape goes away."""

    op_names = RESHAPE_LIKE

    def match_and_rewrite(self, op, rewriter):
        out = op.results[0]
        src = op.operands[0]
        if src.type.shape == out.type.shape and src.type == out.type:
            rewriter.replace_op(op, src)
            return True
        inner = src.producer
        if inner is None or inner.opname not in RESHAPE_LIKE:
            return rewriter.notify_match_failure(op, "its input is not made by a reshape, flatten, "
                                                     "squeeze or unsqueeze")
        root = inner.operands[0]
        if root.type.shape == out.type.shape:
            rewriter.replace_op(op, root)
            return True
        if out.type.rank == 0:
            return rewriter.notify_match_failure(op, "the result is a scalar (rank 0), which a "
                                                     "reshape attribute cannot express")
        new = rewriter.create_op("nn.reshape", [root], {"shape": list(out.type.shape)},
                                 [out.type], name=op.name)
        rewriter.replace_op(op, new)
        return True


class ComposeTransposes(RewritePattern):
    """transpose(transpose(x, p), q) -> transpose(x, p[q]); an identity permutation goes away."""

    op_names = ("nn.transpose",)

    def match_and_rewrite(self, op, rewriter):
        perm = list(op.attrs["perm"])
        if perm == list(range(len(perm))):
            rewriter.replace_op(op, op.operands[0])
            return True
        inner = op.operands[0].producer
        if inner is None or inner.opname != "nn.transpose":
            return rewriter.notify_match_failure(op, "its input is not made by a transpose")
        composed = [inner.attrs["perm"][q] for q in perm]
        root = inner.operands[0]
        if composed == list(range(len(composed))):
            rewriter.replace_op(op, root)
        else:
            new = rewriter.create_op("nn.transpose", [root], {"perm": composed},
                                     [op.results[0].type], name=op.name)
            rewriter.replace_op(op, new)
        return True


def _bias_vector(c: Optional[np.ndarray], n: int, out_rank: int) -> Optional[np.ndarray]:
    """``c`` as an [n] vector if adding it to an [..., n] tensor adds it to every row, else None."""
    if c is None or c.ndim > out_rank:
        return None
    if c.size == n and all(d == 1 for d in c.shape[:-1]) and (c.ndim and c.shape[-1] == n):
        return c.reshape(n)
    if c.size == 1:
        return np.broadcast_to(c.reshape(()), (n,)).copy()
    return None


class SliceToGather(RewritePattern):
    """nn.slice of a run-time x with constant starts/ends/axes/steps -> one constant-index nn.gather per
    axis it narrows (none: x itself). Keras's ``x[:, -1]`` (tf2onnx's strided_slice) then lowers like
    any gather in both integer schemes."""

    op_names = ("nn.slice",)

    def match_and_rewrite(self, op, rewriter):
        if op.operands[0].is_constant():
            return rewriter.notify_match_failure(op, "x is a constant (const-fold folds it)")
        params = slice_params(op)
        if params is None:
            return rewriter.notify_match_failure(op, "starts, ends, axes or steps are computed at run time")
        value, base = op.operands[0], op.name or "slice"
        for axis, start, end, step in params:
            dim = value.type.shape[axis]
            idx = slice_indices(dim, start, end, step)
            if idx.size == 0:
                return rewriter.notify_match_failure(op, f"it selects nothing on axis {axis}")
            if idx.size == dim and np.array_equal(idx, np.arange(dim)):
                continue
            indices = rewriter.create_const(idx, name=f"{base}/indices{axis}")
            shape = list(value.type.shape)
            shape[axis] = idx.size
            gather = rewriter.create_op("nn.gather", [value, indices], {"axis": axis},
                                        [value.type.with_shape(tuple(shape))], name=f"{base}/axis{axis}")
            value = gather.results[0]
        rewriter.replace_op(op, value)
        return True


class MatMulToDense(RewritePattern):
    """nn.matmul(x, W) with constant W [K, N] -> nn.dense(x, W.T)."""

    op_names = ("nn.matmul",)

    def match_and_rewrite(self, op, rewriter):
        x, w = op.operands
        wc = w.constant()
        if wc is None:
            return rewriter.notify_match_failure(op, "the weight (operand 1) is not a constant")
        if wc.ndim != 2:
            return rewriter.notify_match_failure(op, f"the weight has rank {wc.ndim}, not 2")
        if x.type.rank < 2:
            return rewriter.notify_match_failure(op, "the input has rank < 2")
        if not (x.type.is_float and w.type.is_float):
            return rewriter.notify_match_failure(op, "the operands are not float tensors")
        weight = rewriter.create_const(np.ascontiguousarray(wc.T), name=w.producer.name)
        dense = rewriter.create_op("nn.dense", [x, weight], {}, [op.results[0].type], name=op.name)
        rewriter.replace_op(op, dense)
        return True


class DenseAddBias(RewritePattern):
    """nn.add(nn.dense(x, w), b) with constant b of N elements -> nn.dense(x, w, b)."""

    op_names = ("nn.add",)

    def match_and_rewrite(self, op, rewriter):
        for dense_value, bias in (op.operands, op.operands[::-1]):
            d = dense_value.producer
            if d is not None and d.opname == "nn.dense":
                break
        else:
            return rewriter.notify_match_failure(op, "no operand is made by nn.dense")
        if len(d.operands) > 2:
            return rewriter.notify_match_failure(op, "the dense op already has a bias")
        if not _no_act(d):
            return rewriter.notify_match_failure(op, "the dense op has a fused activation")
        if rewriter.graph.users(dense_value) != [op] or rewriter.graph.is_output(dense_value):
            return rewriter.notify_match_failure(op, "the dense result has other uses")
        n = d.operands[1].type.shape[0]
        vec = _bias_vector(bias.constant(), n, dense_value.type.rank)
        if vec is None:
            return rewriter.notify_match_failure(
                op, f"the other operand is not a constant that adds one value per output feature ({n})")
        if op.results[0].type != dense_value.type:
            return rewriter.notify_match_failure(op, "the add changes the shape or type of the dense result")
        b = bias if bias.type.shape == (n,) else rewriter.create_const(vec.astype(bias.type.np_dtype),
                                                                       name=bias.producer.name)
        attrs = {"act": op.attrs["act"], "act_alpha": op.attrs["act_alpha"]}
        new = rewriter.create_op("nn.dense", [d.operands[0], d.operands[1], b], attrs,
                                 [op.results[0].type], name=d.name or op.name)
        rewriter.replace_op(op, new)
        return True


class GemmToDense(RewritePattern):
    """nn.gemm(a, B, c) with constant B (and c) -> nn.dense(a, alpha * op(B).T, beta * c)."""

    op_names = ("nn.gemm",)

    def match_and_rewrite(self, op, rewriter):
        a, b = op.operands[:2]
        c = op.operands[2] if len(op.operands) > 2 else None
        if op.attrs["trans_a"]:
            return rewriter.notify_match_failure(op, "trans_a is set (the input would need a transpose)")
        bc = b.constant()
        if bc is None:
            return rewriter.notify_match_failure(op, "B (operand 1) is not a constant")
        if not b.type.is_float:
            return rewriter.notify_match_failure(op, "B is not a float tensor")
        alpha, beta = op.attrs["alpha"], op.attrs["beta"]
        w = bc if op.attrs["trans_b"] else bc.T  # dense wants [N, K]
        n = w.shape[0]
        vec, run_time_c = None, False
        if c is not None and beta != 0.0:
            if not c.is_constant():
                # A run-time C (Keras's GRU with reset_after=False adds the input projection this way):
                # dense(a, B) then an elementwise add, exact for beta = 1.
                if beta != 1.0:
                    return rewriter.notify_match_failure(op, "C is computed at run time and beta is not 1")
                run_time_c = True
            else:
                vec = _bias_vector(c.constant(), n, 2)
                if vec is None:
                    return rewriter.notify_match_failure(
                        op, f"C is not a constant that adds one value per output feature ({n})")
        operands: List[Value] = [a]
        if alpha != 1.0:
            w = (w * np.asarray(alpha, dtype=w.dtype)).astype(w.dtype)
        operands.append(b if w is bc else rewriter.create_const(np.ascontiguousarray(w), name=b.producer.name))
        if vec is not None:
            if beta != 1.0:
                vec = (vec * np.asarray(beta, dtype=vec.dtype)).astype(vec.dtype)
            operands.append(c if (c.type.shape == (n,) and beta == 1.0)
                            else rewriter.create_const(np.ascontiguousarray(vec), name=c.producer.name))
        if run_time_c:
            shape = tuple(a.type.shape[:-1]) + (n,)
            dense = rewriter.create_op("nn.dense", operands, {}, [op.results[0].type.with_shape(shape)],
                                       name=op.name)
            add = rewriter.create_op("nn.add", [dense.results[0], c], {}, [op.results[0].type],
                                     name=f"{op.name or 'gemm'}/add_c")
            rewriter.replace_op(op, add)
            return True
        dense = rewriter.create_op("nn.dense", operands, {}, [op.results[0].type], name=op.name)
        rewriter.replace_op(op, dense)
        return True


def _quantized_constant(v: Value) -> bool:
    """A quantized constant, or the quantize of a float constant (PyTorch's fake-quant weights)."""
    p = v.producer
    return v.is_constant() or (p is not None and p.opname == "q.quantize" and p.operands[0].is_constant())


class DequantizedGemmToDense(RewritePattern):
    """nn.gemm(a, dequantize(Bq), c) with constant Bq, alpha = beta = 1 -> nn.dense(a, dequantize(Bq'), c)."""

    op_names = ("nn.gemm",)

    def match_and_rewrite(self, op, rewriter):
        a, b = op.operands[:2]
        c = op.operands[2] if len(op.operands) > 2 else None
        dq = b.producer
        if dq is None or dq.opname != "q.dequantize" or not _quantized_constant(dq.operands[0]):
            return rewriter.notify_match_failure(op, "B (operand 1) is not a dequantized constant")
        if op.attrs["trans_a"] or op.attrs["alpha"] != 1.0 or (c is not None and op.attrs["beta"] != 1.0):
            return rewriter.notify_match_failure(op, "trans_a is set or alpha/beta is not 1 (scales are fixed)")
        bq = dq.operands[0]
        n = bq.shape[0] if op.attrs["trans_b"] else bq.shape[1]
        if c is not None and tuple(c.shape) != (n,):
            return rewriter.notify_match_failure(op, f"C is not a vector of one value per output feature ({n})")
        w = b
        if not op.attrs["trans_b"] and not bq.is_constant():
            return rewriter.notify_match_failure(op, "B = dequantize(quantize(W)) is not transposed (trans_b=0)")
        if not op.attrs["trans_b"]:
            from qcc.ir.types import PerAxisQuant, TensorType
            q = bq.type.quant
            if isinstance(q, PerAxisQuant):
                q = PerAxisQuant(1 - q.axis, q.scales, q.zero_points)
            arr = np.ascontiguousarray(bq.constant().T)
            wq = rewriter.create_op("qcc.const", [], {"value": arr},
                                    [TensorType(arr.shape, bq.type.dtype, q)], name=bq.producer.name).result
            w = rewriter.create_op("q.dequantize", [wq], {}, [TensorType(arr.shape)], name=dq.name).result
        dense = rewriter.create_op("nn.dense", [a, w] + ([c] if c is not None else []), {},
                                   [op.results[0].type], name=op.name)
        rewriter.replace_op(op, dense)
        return True


def populate_canonicalize_patterns() -> List[RewritePattern]:
    """The canonicalization patterns, for reuse by other pattern passes."""
    return [RemoveNeutralOperand(), RemoveIdentity(), CollapseReshapes(), ComposeTransposes(),
            MatMulToDense(), DenseAddBias(), GemmToDense(), DequantizedGemmToDense(), SliceToGather()]


@register_pass
class Canonicalize(PatternPass):
    """Simplify locally: neutral operands, identities, reshape and transpose chains, dense layers.

    Before::

        %0 = qcc.const dense<[[1.0, 2.0], [3.0, 4.0]]> : tensor<2x2xf32>
        %1 = qcc.const dense<[0.5, -0.5]> : tensor<2xf32>
        %2 = nn.matmul %x, %0 : tensor<1x2xf32>
        %3 = nn.add %2, %1 {act = "relu", act_alpha = 0.0} : tensor<1x2xf32>

    After ``-p canonicalize``::

        %0 = qcc.const dense<[[1.0, 3.0], [2.0, 4.0]]> : tensor<2x2xf32>
        %1 = qcc.const dense<[0.5, -0.5]> : tensor<2xf32>
        %2 = nn.dense %x, %0, %1 {act = "relu", act_alpha = 0.0} : tensor<1x2xf32>
    """

    name = "canonicalize"

    def patterns(self):
        return populate_canonicalize_patterns()
