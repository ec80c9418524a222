"""Transformation infrastructure: ``passmanager`` (Pass, PassManager, registries, plugins),
``pipeline_text`` (the ``name{opt=v}`` pipeline syntax) and ``rewriter`` (Rewriter,
RewritePattern, PatternPass). The passes themselves live in ``qcc.passes``."""
