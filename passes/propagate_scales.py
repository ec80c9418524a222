"""propagate-scales: tie the fixed-point formats that integer ops cannot change.

Integer max pool, reshape, flatten, squeeze, transpose, pad and relu move or compare stored values, so their
output format is their input's; a concat copies stored values, so its inputs
and output share one format. The pass groups such fake-quant points
(``activation_groups``), widens every group member's ``q.range`` to the union
of the group's ranges and gives every member the format that range implies.
``assign-qmn`` assigns one n per group (it recomputes the same groups), so the
tie holds after it too. An add aligns its inputs by shifts, so nothing is tied
there: its output format comes from its own range. Neither for average
pooling, whose mean changes format in its single rounding (``out_shift``).
"""
from __future__ import annotations

from dataclasses import dataclass

from qcc.ir.graph import Graph
from qcc.transforms.passmanager import Pass, PassResult, register_pass

from ._qmn_util import activation_groups, bits_of, fixed_type, frac_bits_for


@register_pass
@dataclass
class PropagateScales(Pass):
    """Give format-preserving ops and concat inputs one shared Qm.n format.

    Before::

        %1 = q.quantize %0 : tensor<1x8x!q.fixed<i8, 4>>      // range [-8, 6]
        %2 = q.dequantize %1 : tensor<1x8xf32>
        %3 = nn.relu %2 : tensor<1x8xf32>
        %4 = q.range %3 {max = 6.0, min = 0.0} : tensor<1x8xf32>
        %5 = q.quantize %4 : tensor<1x8x!q.fixed<i8, 4>>      // was fixed<i8, 5>

    After ``-p propagate-scales`` the relu's range is the union [-8, 6] and
    both quantize ops use ``!q.fixed<i8, 4>``.
    """

    name = "propagate-scales"

    def run(self, graph: Graph) -> PassResult:
        tied = changed = 0
        for group in activation_groups(graph):
            if len(group) < 2:
                continue
            tied += 1
            ranges = [q.operands[0].producer for q in group
                      if q.operands[0].producer is not None and q.operands[0].producer.opname == "q.range"]
            if not ranges:
                continue
            lo = min(r.attrs["min"] for r in ranges)
            hi = max(r.attrs["max"] for r in ranges)
            for r in ranges:
                if (r.attrs["min"], r.attrs["max"]) != (lo, hi):
                    r.attrs["min"], r.attrs["max"] = lo, hi
                    changed += 1
            for q in group:
                t = q.result.type
                n = frac_bits_for(max(abs(lo), abs(hi)), bits_of(t.dtype))
                if t.quant.frac_bits != n:
                    q.result.type = fixed_type(t.shape, t.dtype, n)
                    changed += 1
        return PassResult(bool(changed), {"groups": tied, "changed": changed})
