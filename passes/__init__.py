"""The pass library, imported as ``qcc.passes``: one pass per module.

Importing this package registers every built-in pass: each module here
(except those starting with ``_``, which hold shared helpers) is imported in
name order, and its ``@register_pass`` classes and ``register_pipeline``
calls take effect. A new pass is a new file; nothing else needs editing.
"""
from __future__ import annotations

import importlib
import pkgutil

PASS_MODULES = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))

for _module in PASS_MODULES:
    importlib.import_module(f"{__name__}.{_module}")
