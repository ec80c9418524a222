"""Code generators, imported as ``qcc.backends``: one subpackage per backend.

A backend reads a fully lowered graph (see ``qcc/ops/qnn.py``) and returns the
files it would write; it never changes the graph. The core never imports this
package; the compile driver (``qcc.compiler``) looks backends up by name:

    from qcc.backends import get_backend
    files = get_backend("cmsis").generate(graph, name="net", target="cortex-m4")
"""
from __future__ import annotations

import importlib

BACKENDS = ("cmsis",)


def get_backend(name: str):
    """The backend module called ``name`` (it has ``generate`` and ``TARGETS``)."""
    if name not in BACKENDS:
        from qcc.errors import InputError
        raise InputError(f"unknown backend '{name}' (known: {', '.join(BACKENDS)})")
    return importlib.import_module(f"{__name__}.{name}")
