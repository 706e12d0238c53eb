"""Fixtures shared by every test folder.

Real data comes from ``../shared/data`` beside the checkout (or ``$SAMSCOPE_TEST_DATA``); tests
that need it are skipped, not failed, where it is absent. Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SAMSCOPE_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The developer data set (see its README); skips the test when it is missing."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def litemedsam():
    """The real bundled LiteMedSAM model on CPU, loaded once per test session."""
    from app.core.models.registry import load_model

    return load_model("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def lite_engine(litemedsam):
    """An engine (embedding cache + predict) around the session's LiteMedSAM."""
    from app.core.engine import Engine

    return Engine(litemedsam)
