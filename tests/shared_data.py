"""Where the read-only shared data and detectors live (../shared by default, VITPOSE_SHARED to override)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("VITPOSE_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def shared_path(relative: str) -> Path:
    """Return a path inside shared/; skip the test when it is absent, except under CI where that is a failure."""
    path = SHARED / relative
    if not path.exists():
        message = f"shared data {path} is absent (set VITPOSE_SHARED)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path
