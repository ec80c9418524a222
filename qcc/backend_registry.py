"""Backends by name: the ``qcc.backends`` entry-point group.

The core never imports a backend; drivers and passes that need one (``qcc``,
``plan-memory``) look it up here by name.
"""
from __future__ import annotations

from qcc.errors import InputError


def get_backend(name: str):
    """The backend registered as ``name`` in the ``qcc.backends`` entry-point group.

    A backend is a module with ``generate(graph, ...)`` and ``TARGETS``; qcc's own
    (``cmsis``) is registered in pyproject.toml, and a third-party package adds one
    by declaring its module in the same group. The driver finds backends by name,
    so the core never imports one.
    """
    from importlib import metadata
    found = {ep.name: ep for ep in metadata.entry_points(group="qcc.backends")}
    if name not in found:
        raise InputError(f"unknown backend '{name}' (known: {', '.join(sorted(found)) or 'none installed'})")
    return found[name].load()
