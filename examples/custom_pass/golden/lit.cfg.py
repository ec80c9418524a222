# The golden tests of this example use the repository's lit configuration.
import os

here = os.path.dirname(os.path.abspath(__file__))
lit_config.load_config(config, os.path.join(here, "..", "..", "..", "tests", "golden", "lit.cfg.py"))
config.test_source_root = here
