"""`ra3 mstep fp8=hybrid` on a machine without Transformer Engine / GPU fails fast and says why."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_fp8_without_te_is_refused(tmp_path, tiny_model_dir, tiny_tokenizer_dir):
    pytest.importorskip("megatron.core")
    try:
        import transformer_engine  # noqa: F401

        pytest.skip("Transformer Engine is installed here")
    except Exception:
        pass
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("def f(x):\n    return x + 1\n" * 20)
    prefix = tmp_path / "data" / "train"
    prep = [sys.executable, "-m", "ra3_megatron.cli.main", "prepare", "--input", str(src),
            "--tokenizer", str(tiny_tokenizer_dir), "--output", str(prefix)]
    subprocess.run(prep, check=True, capture_output=True)
    cmd = [sys.executable, "-m", "ra3_megatron.cli.main", "mstep", "--model", str(tiny_model_dir),
           "--data", str(prefix), "--out", str(tmp_path / "run"), "fp8=hybrid", "steps=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "fp8" in proc.stderr and "silently run no FP8" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
