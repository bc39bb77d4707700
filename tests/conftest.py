"""Shared test configuration: GPU tests skip themselves through one autouse fixture, and a
session-level check fails the run when a process the tests started outlives it."""

from __future__ import annotations

import os
import time
import uuid

import pytest

# Every process the suite starts inherits this tag (children copy os.environ); at the end of the
# session any live process carrying it, other than pytest itself, is a leak.
LEAK_TAG = "RA3_TEST_SESSION"
os.environ[LEAK_TAG] = uuid.uuid4().hex

# Tests never reach a model or data hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _skip_gpu_tests_without_cuda(request):
    if request.node.get_closest_marker("gpu") and not _cuda_available():
        pytest.skip("needs a CUDA GPU")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir():
    """HF tokenizer dir: byte-level BPE (8k) trained on the stdlib; built once, cached."""
    from ra3_megatron.models.tiny import tiny_tokenizer_dir as build

    return build()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir():
    """HF checkpoint dir of the tiny Llama (random init, float32 safetensors + tokenizer)."""
    from ra3_megatron.models.tiny import tiny_model_dir as build

    return build()


def tagged_processes(tag: str = LEAK_TAG) -> list:
    """Live processes (other than this one) whose environment carries this session's tag."""
    import psutil

    found, me = [], os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(tag) == os.environ[tag] and _alive(proc):
                found.append(proc)
        except psutil.Error:  # gone, or not ours to read
            continue
    return found


def _alive(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a process it started is still alive (after a short grace), and kill it."""
    import psutil

    deadline = time.monotonic() + 10.0
    left = tagged_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = [p for p in left if _alive(p)]
    if not left:
        return
    lines = []
    for proc in left:
        try:
            lines.append(f"  pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
            proc.kill()
        except psutil.Error:
            pass
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"{len(lines)} process(es) started by the tests outlived them (killed now):\n" + "\n".join(lines)
    if reporter is not None:
        reporter.write_line(message, red=True)
    else:
        print(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
