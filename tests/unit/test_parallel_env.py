"""A one-rank job started without torchrun sets the rendezvous variables for itself and removes
them when it tears down, so a process it starts later picks its own port (an inherited stale
MASTER_PORT made a later `ra3 convert` fail with EADDRINUSE)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.unit


def test_rendezvous_variables_set_for_one_rank_are_removed_at_teardown():
    code = textwrap.dedent("""
        import os
        from ra3_megatron.megatron.parallel import ParallelConfig, destroy_distributed, init_distributed
        os.environ["WORLD_SIZE"] = "1"  # given by the caller: left alone
        init_distributed(ParallelConfig())
        print("during", "MASTER_PORT" in os.environ, "RANK" in os.environ)
        destroy_distributed()
        print("after", "MASTER_PORT" in os.environ, "RANK" in os.environ, os.environ.get("WORLD_SIZE"))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith(("during", "after"))]
    assert lines == ["during True True", "after False False 1"]
