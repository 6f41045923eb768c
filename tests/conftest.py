"""Shared fixtures: the embedded model (prepared once) and the optional reference folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REFERENCE_ENV = "INSPECT_EM_REFERENCE"


@pytest.fixture(scope="session")
def embedded_model_path() -> Path:
    """The prepared SmolLM2-135M-Instruct folder (prepared on first use; no network)."""
    from inspect_em import embedded

    return embedded.prepare()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``$INSPECT_EM_REFERENCE`` (e.g. ../shared/em-reference); the test skips without it."""
    value = os.environ.get(REFERENCE_ENV, "")
    if not value:
        pytest.skip(f"{REFERENCE_ENV} is not set (reference material absent)")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"{REFERENCE_ENV}={value} is not a folder")
    return path
