"""pytest option ``--update-golden``: rewrite golden CHECK lines from actual output.

Registered from tests/conftest.py (``pytest_plugins = ["golden_plugin"]``).
``QCC_UPDATE_GOLDEN=1`` in the environment does the same where the option is
not available. Review the rewritten files with ``git diff`` before committing.
"""
from __future__ import annotations

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the CHECK lines of golden .qir files from actual output")


@pytest.fixture
def update_golden(request) -> bool:
    return bool(request.config.getoption("--update-golden", default=False)) or \
        os.environ.get("QCC_UPDATE_GOLDEN") == "1"
