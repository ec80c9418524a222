# lit configuration for the golden .qir tests: each file's `// RUN:` line is a
# shell command (qcc-opt ... | filecheck %s) that lit runs exactly as written.
#     lit tests/golden examples/custom_pass/golden      (pytest runs this too)
import os

import lit.formats

config.name = "qcc-golden"
config.test_format = lit.formats.ShTest()  # lit's own shell: pipes and quotes as in sh
config.suffixes = [".qir"]
config.test_source_root = os.path.dirname(os.path.abspath(__file__))
config.excludes = ["lit.cfg.py"]
# The tools come from the environment that runs lit (a venv's bin/ or the system's).
for name in ("PATH", "PYTHONPATH", "HOME", "VIRTUAL_ENV", "TMPDIR"):
    if name in os.environ:
        config.environment[name] = os.environ[name]
