"""The CPU shims' device mode, and the block that runs without it (the E-step's engine calls)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = [pytest.mark.unit, pytest.mark.skipif(torch.cuda.is_available(), reason="the shims are a no-op with CUDA")]


def run(code: str) -> str:
    # A process of its own: the shims' mode stays on for the life of the process that applies them.
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_device_mode_is_suspended_only_inside_the_block():
    out = run("""
        import torch
        from torch.overrides import TorchFunctionMode
        from ra3_megatron.megatron.cpu_shims import apply_cpu_shims, device_mode_suspended

        def cuda_zeros():
            try:
                return torch.zeros(1, device="cuda").device.type
            except (AssertionError, RuntimeError):
                return "refused"

        with device_mode_suspended():  # before the shims: nothing to suspend
            print(cuda_zeros())
        assert apply_cpu_shims()
        print(cuda_zeros())
        with device_mode_suspended():
            print(cuda_zeros())
        print(cuda_zeros())

        class Other(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                return func(*args, **(kwargs or {}))

        with Other(), device_mode_suspended():  # another mode on top: left alone, shims stay on
            print(cuda_zeros())
    """)
    assert out.split() == ["refused", "cpu", "refused", "cpu", "cpu"]
