"""One import package: `vitpose_batch` (with `vitpose_core`), no `jobs` or `schemas` taking a user's names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_python_dash_m_runs_the_command():
    done = subprocess.run([sys.executable, "-m", "vitpose_batch", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("vitpose-batch ")


def test_a_users_jobs_and_schemas_folders_stay_theirs(tmp_path):
    for name in ("jobs", "schemas"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"MINE = {name!r}\n")
    probe = ("import jobs, schemas, vitpose_batch, vitpose_core; "
             "print(jobs.MINE, schemas.MINE, vitpose_batch.__name__, vitpose_core.__name__)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["jobs", "schemas", "vitpose_batch", "vitpose_core"], done.stderr
    assert not (ROOT / "jobs").exists() and not (ROOT / "schemas").exists()


def test_the_installed_packages_are_the_two_of_ours():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'include = ["vitpose_core*", "vitpose_batch*"]' in text
    assert 'vitpose-batch = "vitpose_batch.cli:entry"' in text
