"""Shared pytest fixtures.

``shared_models`` is the folder of real third-party models next to the
checkout (``<repo>/../shared/models``); tests that use it skip, with the
reason, when it is absent (e.g. in a fresh clone).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
SHARED_MODELS = (REPO_ROOT / ".." / "shared" / "models").resolve()

# Helper modules next to this file (onnx_builders.py, ...) import by name.
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


def shared_model_path(*parts: str) -> Path:
    """A path under the shared models folder; skips the calling test when it does not exist."""
    path = SHARED_MODELS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared model file {path} is absent (the models live in <repo>/../shared/models)")
    return path


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """The shared models folder, or skip when it is absent."""
    if not SHARED_MODELS.is_dir():
        pytest.skip(f"shared models folder {SHARED_MODELS} is absent (expected at <repo>/../shared/models)")
    return SHARED_MODELS
