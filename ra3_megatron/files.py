"""File writes every long job shares: a file is replaced whole or not at all."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file beside path, fsync, rename: readers see the old file or the whole
    new one. The temporary name is the writer's own (process and thread), so writers racing on the
    same path (the ranks that finish an E-step together each write its manifest) never rename
    each other's half-written file; the last rename wins."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
