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


# --- leaving the test process ---------------------------------------------------------------
# After the last test, the interpreter's own finalisation (garbage-collecting the Qt, napari and
# model objects of hundreds of tests) can abort inside a C extension ("Fatal Python error:
# none_dealloc" / "terminate called without an active exception"), turning a green run into
# exit status 134 after pytest has reported. Once pytest has written its summary, the process
# leaves with pytest's own exit status and skips that finalisation. SAMSCOPE_TEST_FINALIZE=1
# keeps the normal exit (to look for the culprit).
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if _EXIT_STATUS and not os.environ.get("SAMSCOPE_TEST_FINALIZE"):
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
