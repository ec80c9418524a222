"""The cmsis backend: a lowered integer graph -> C99 for Cortex-M (no malloc, one static arena).

    from qcc.backends import cmsis
    model = cmsis.generate(graph, name="net", target="cortex-m4")
    model.files     # {"net.c": bytes, "net.h": ..., "net_weights.c": ..., "Makefile": ..., "firmware/...": ...}

See ``generate.py`` for the files and ``plan.py`` for the memory plan.
"""
from .generate import GeneratedModel, find_firmware_dir, generate
from .targets import TARGETS, Target

__all__ = ["generate", "GeneratedModel", "TARGETS", "Target", "find_firmware_dir"]
