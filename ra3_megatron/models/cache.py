"""A small build cache: build a directory once, atomically, safe under concurrent processes."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """`$RA3_CACHE`, else `~/.cache/ra3_megatron`."""
    root = Path(os.environ.get("RA3_CACHE") or Path.home() / ".cache" / "ra3_megatron")
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def _locked(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_dir(name: str, build: Callable[[Path], None]) -> Path:
    """Return `cache_root()/name`, calling `build(tmp_dir)` first if it does not exist yet.

    The build writes into a temporary sibling that is renamed into place when complete, so a
    crash never leaves a half-written entry, and a lock makes concurrent callers build once.
    """
    target = cache_root() / name
    if (target / ".complete").exists():
        return target
    with _locked(cache_root() / f".{name}.lock"):
        if (target / ".complete").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache_root()))
        try:
            build(tmp)
            (tmp / ".complete").touch()
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
