"""Code generators, imported as ``qcc.backends``: one subpackage per backend.

A backend reads a fully lowered graph (see ``qcc/ir/ops/qnn.py``) and returns the
files it would write; it never changes the graph. The core never imports this
package: each backend is registered in the ``qcc.backends`` entry-point group
(pyproject.toml), and the compile driver (through ``qcc.backend_registry.get_backend``)
looks it up by name:

    from qcc.backend_registry import get_backend
    files = get_backend("cmsis").generate(graph, name="net", target="cortex-m4")
"""
