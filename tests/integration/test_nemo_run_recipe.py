"""The NeMo-Run launcher builds a real experiment for a recipe (dry run); skips without nemo_run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_nemo_run_dryrun(tmp_path):
    pytest.importorskip("nemo_run")
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "nemo_run_ra3.py"), "--recipe", "tiny_cpu",
                           "--dryrun", "em.estep.penalty=0.1"], capture_output=True, text=True, timeout=300,
                          env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tiny_cpu" in proc.stdout + proc.stderr


def test_nemo_run_rejects_bad_override():
    pytest.importorskip("nemo_run")
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "nemo_run_ra3.py"), "--recipe", "tiny_cpu",
                           "--dryrun", "em.nope=1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "no field 'nope'" in proc.stderr
