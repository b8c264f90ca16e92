"""Test dependencies that a bare GPU box lacks (benchmarks.gpu_check runs `pytest -m gpu` there): a module that
needs one skips as a whole instead of stopping collection, except under CI=true, where every test dependency is
installed and a missing one is a failure."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(name: str) -> ModuleType:
    """`import name`, or skip the calling test module (fail it under CI=true) when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        message = f"{name} is not installed ({exc})"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)
