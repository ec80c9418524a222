"""plan-memory: report the static memory plan of a lowered graph (the graph is not changed).

The plan itself needs back-end facts (which kernels may run in place and at
which displacement depends on their loop order in the C templates), so it
lives in the back end (``backends/cmsis/plan.py``, ``inplace.py``); this pass
is the thin wrapper that runs it on a graph and reports its numbers as stats:

    arena_bytes        peak RAM: inputs, outputs and activations in one arena
    lower_bound_bytes  max over steps of the bytes live at once without in-place layers
    in_place_layers    layers writing over an operand that dies at them
    live_bytes         bytes live during each step, in schedule order

``inplace=false`` plans without in-place layers or streaming (then arena >= lower bound);
``max_recompute`` bounds row-streamed chains' repeated MACs (0: no streaming; default 0.1).
"""
from __future__ import annotations

from dataclasses import dataclass

from qcc.ir.graph import Graph
from qcc.transforms.passmanager import Pass, PassResult, register_pass


@register_pass
@dataclass
class PlanMemory(Pass):
    """Compute the static memory plan (peak RAM, lower bound, RAM per layer); changes nothing.

    Before and after: the same IR. What it adds is its statistics
    (``qcc-opt lowered.qir -p plan-memory --pass-stats``)::

        // 0:plan-memory: {'arena_bytes': 8460, 'lower_bound_bytes': 16000, 'in_place_layers': 10,
        //                 'live_bytes': [8490, 16000, ..., 76, 24]}          (kws_dscnn int8)

    ``arena_bytes`` is the generated ``NAME_ARENA_SIZE`` (input and output
    included); ``lower_bound_bytes`` the largest set of tensors live at once,
    the best any plan without in-place layers can do.
    """

    name = "plan-memory"
    backend: str = "cmsis"
    inplace: bool = True
    max_recompute: float = 0.1

    def run(self, graph: Graph) -> PassResult:
        from qcc.backend_registry import get_backend
        plan_mod = get_backend(self.backend).plan
        plan = plan_mod.make_plan(graph, inplace=self.inplace, max_recompute=self.max_recompute)
        report = plan_mod.memory_report(plan)
        self.report = report
        return PassResult(False, {"arena_bytes": report["arena_bytes"],
                                  "lower_bound_bytes": report["lower_bound_bytes"],
                                  "in_place_layers": report["in_place_layers"],
                                  "streamed_chains": len(report["streaming"]["chains"]),
                                  "live_bytes": [e["live_bytes"] for e in report["layers"]]})
