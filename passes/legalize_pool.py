"""legalize-pool: pools with partial windows -> pools whose windows only count in-bounds cells.

The integer pools (``qnn.*pool``, ``s8.*pool``) take only the floor output size
and count in-bounds elements in an average. Two ONNX features go beyond that,
and both are exact float identities away from it:

* ``ceil_mode``: the output has ``o = ceil((n + p0 + p1 - span) / s) + 1``
  windows (less one if the last would start in the end padding), so the last
  window may hang past the padded input by ``e = (o - 1) s + span - (n + p0 + p1)``
  cells. Those cells never count (ONNX / onnxruntime, PyTorch): they act like
  end padding that is not counted, which is what the pools already do with
  padding. So::

      pool{pads = [t, l, b, r], ceil_mode} -> pool{pads = [t, l, b + e_h, r + e_w]}

  (max pool pads with -inf, so padding never wins either way.)
* ``count_include_pad`` on an average pool with explicit padding: the divisor
  counts the explicit padding cells (as zeros in the sum) but not the ceil_mode
  cells. Padding the input with real zeros first gives exactly that divisor::

      avgpool{pads = P, count_include_pad} -> avgpool(pad(x, P, 0)){pads = [0, 0, e_h, e_w]}

  The ``nn.pad`` is an integer op in both schemes (its zero becomes the zero
  point or 0 in Qm.n). ``count_include_pad=false`` as an option leaves such
  pools alone (the ``int8`` QDQ pipeline: a pad inside a QDQ island would break
  the island).

Before (``%x : tensor<1x2x6x6xf32>``; ceil_mode makes 4 windows per axis, the last hanging 1 cell out)::

    %1 = nn.avgpool %x {ceil_mode = true, count_include_pad = true, kernel = [3, 3],
                        pads = [1, 1, 1, 1], strides = [2, 2], layout = "NCHW"} : tensor<1x2x4x4xf32>

After ``-p legalize-pool``::

    %1 = nn.pad %x {pads = [0, 0, 1, 1, 0, 0, 1, 1], value = 0.0} : tensor<1x2x8x8xf32>
    %2 = nn.avgpool %1 {ceil_mode = false, count_include_pad = false, kernel = [3, 3],
                        pads = [0, 0, 1, 1], strides = [2, 2], layout = "NCHW"} : tensor<1x2x4x4xf32>
"""
from __future__ import annotations

from typing import List

from qcc.ir.graph import Op
from qcc.ir.ops.nn import spatial, window_out
from qcc.transforms.passmanager import register_pass
from qcc.transforms.rewriter import PatternPass, RewritePattern


def ceil_extra(op: Op) -> List[int]:
    """[e_h, e_w]: how far the last ceil_mode window hangs past the padded input (0 without ceil_mode)."""
    a = op.attrs
    if not a["ceil_mode"]:
        return [0, 0]
    _, _, h, w = spatial(op.operands[0].shape, a["layout"])
    dil = a.get("dilations", [1, 1])
    extra = []
    for i, n in enumerate((h, w)):
        k, s, p0, p1 = a["kernel"][i], a["strides"][i], a["pads"][i], a["pads"][i + 2]
        o = window_out(n, k, s, dil[i], p0, p1, True)
        extra.append(max(0, (o - 1) * s + (k - 1) * dil[i] + 1 - (n + p0 + p1)))
    return extra


class CeilModeToPadding(RewritePattern):
    """pool{ceil_mode} -> pool with the overhang as uncounted end padding."""

    op_names = ("nn.maxpool", "nn.avgpool")

    def __init__(self, split_count_include_pad: bool = True):
        self.split = split_count_include_pad

    def match_and_rewrite(self, op, rewriter):
        a = op.attrs
        if not a["ceil_mode"]:
            return rewriter.notify_match_failure(op, "ceil_mode is off")
        if op.opname == "nn.avgpool" and a["count_include_pad"] and any(a["pads"]):
            # The overhang must not count while the explicit padding does: split the padding out first.
            return rewriter.notify_match_failure(op, "count_include_pad with padding is split first")
        eh, ew = ceil_extra(op)
        pt, pl, pb, pr = a["pads"]
        attrs = {**a, "ceil_mode": False, "pads": [pt, pl, pb + eh, pr + ew]}
        if op.opname == "nn.avgpool":
            attrs["count_include_pad"] = False  # no explicit padding left to count
        rewriter.anchor = op
        new = rewriter.create_op(op.opname, [op.operands[0]], attrs, [op.result.type], name=op.name)
        rewriter.replace_op(op, new)
        return True


class CountedPaddingToPad(RewritePattern):
    """avgpool{count_include_pad, pads = P} -> avgpool(nn.pad(x, P, 0)) without padding to count."""

    op_names = ("nn.avgpool",)

    def match_and_rewrite(self, op, rewriter):
        a = op.attrs
        if not (a["count_include_pad"] and any(a["pads"])):
            return rewriter.notify_match_failure(op, "no explicit padding is counted")
        pt, pl, pb, pr = a["pads"]
        x = op.operands[0]
        n, c, h, w = spatial(x.shape, a["layout"])
        if a["layout"] == "NCHW":
            pads, shape = [0, 0, pt, pl, 0, 0, pb, pr], (n, c, h + pt + pb, w + pl + pr)
        else:
            pads, shape = [0, pt, pl, 0, 0, pb, pr, 0], (n, h + pt + pb, w + pl + pr, c)
        # The ceil_mode overhang of the original window grid becomes uncounted end padding (recomputing
        # ceil_mode on the padded input could keep a last window that starts in the end padding).
        eh, ew = ceil_extra(op)
        rewriter.anchor = op
        padded = rewriter.create_op("nn.pad", [x], {"pads": pads, "value": 0.0}, [x.type.with_shape(shape)],
                                    name=op.name).result
        attrs = {**a, "pads": [0, 0, eh, ew], "ceil_mode": False, "count_include_pad": False}
        new = rewriter.create_op("nn.avgpool", [padded], attrs, [op.result.type], name=op.name)
        rewriter.replace_op(op, new)
        return True


@register_pass
class LegalizePool(PatternPass):
    """Rewrite ceil_mode pools and counted padding into pools over in-bounds windows (exact in float).

    See the module docstring for the identities and a before/after example.
    """

    name = "legalize-pool"
    count_include_pad: bool = True

    def patterns(self) -> List[RewritePattern]:
        pats: List[RewritePattern] = [CeilModeToPadding()]
        return pats + [CountedPaddingToPad()] if self.count_include_pad else pats
