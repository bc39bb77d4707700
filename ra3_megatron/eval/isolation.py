"""How a warm sandbox is started: bubblewrap detection, the bwrap command line, the uid to use.

bwrap mode: new pid, network, IPC, UTS (and cgroup) namespaces; a read-only minimal root
(`/usr`, `/etc`, `/lib*`, the Python install, and site-packages only when asked for); a private
size-limited `/tmp`; a cleared environment; `--die-with-parent`. As root, the zygote keeps only
the capabilities it needs to drop each program to its own uid and clean up after it; as another
user, bwrap adds a user namespace (and forbids nested ones).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ra3_megatron.errors import ConfigError

_warned: list[bool] = []
_NAMESPACES = "--unshare-pid --unshare-net --unshare-ipc --unshare-uts --unshare-cgroup-try".split()
_ZYGOTE_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_FOWNER")


@functools.cache
def _bwrap_help() -> str:
    try:
        return subprocess.run(
            [shutil.which("bwrap") or "bwrap", "--help"], capture_output=True, text=True
        ).stdout
    except OSError:
        return ""


@functools.cache
def bwrap_usable() -> bool:
    """True when `bwrap` is installed and our whole set-up works here (namespaces, mounts, and
    this Python starting inside)."""
    if shutil.which("bwrap") is None:
        return False
    python, prefix = os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)
    probe = bwrap_argv(binds=[prefix, os.path.dirname(python)], tmpfs_mb=16) + [
        python,
        "-I",
        "-S",
        "-c",
        "pass",
    ]
    try:
        return (
            subprocess.run(probe, capture_output=True, timeout=60, env={"PATH": "/usr/bin:/bin"}).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def resolve_mode(mode: str) -> str:
    """ "auto" -> "bwrap" when it works here, else "weak"; "bwrap" fails clearly without it."""
    if mode not in ("auto", "bwrap", "weak"):
        raise ConfigError(f"sandbox mode must be auto, bwrap or weak, not {mode!r}")
    if mode == "bwrap" and not bwrap_usable():
        raise ConfigError(
            "sandbox mode bwrap asked for, but bwrap is missing or cannot create namespaces here"
        )
    if mode == "auto":
        if bwrap_usable():
            return "bwrap"
        if shutil.which("bwrap") and not _warned:
            _warned.append(True)
            logging.getLogger(__name__).warning(
                "bwrap is installed but does not work here: using the weaker sandbox"
            )
        return "weak"
    return mode


def zygote_source() -> str:
    """The in-sandbox server: stdlib-only files joined into one `python -c` program."""
    here = Path(__file__).parent
    return "\n".join((here / name).read_text() for name in ("wire.py", "_guard.py", "_zygote.py"))


def others_can_run(path: str) -> bool:
    """Whether another uid can reach and read `path` (all its directories world-searchable)."""
    p = Path(path).resolve()
    return all(os.stat(d).st_mode & 0o001 for d in [p, *p.parents]) and bool(os.stat(p).st_mode & 0o004)


def program_uid(mode: str, uid_base: int, slot: int, prefix: str) -> int | None:
    """The uid a worker's programs run as: as root, one of their own, unique to this process
    and worker slot (the clean-up kills everything that uid runs; RLIMIT_NPROC counts per uid);
    in the weaker mode only if that uid can still read the Python install. Else None (ours)."""
    if os.geteuid() != 0 or not (mode == "bwrap" or others_can_run(prefix)):
        return None
    return uid_base + (os.getpid() % 100_000) * 1024 + slot % 1024


def bwrap_argv(*, binds: list[str], tmpfs_mb: int) -> list[str]:
    """bwrap's options; `binds` are host paths mounted read-only at the same place."""
    argv = [shutil.which("bwrap") or "bwrap", *_NAMESPACES, "--die-with-parent", "--new-session"]
    argv += ["--hostname", "sandbox"]
    if os.geteuid() == 0:
        argv += ["--cap-drop", "ALL"]
        for cap in _ZYGOTE_CAPS:
            argv += ["--cap-add", cap]
    else:
        argv += ["--unshare-user"] + (["--disable-userns"] if "--disable-userns" in _bwrap_help() else [])
    for top in ("/usr", "/etc"):
        argv += ["--ro-bind", top, top]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    argv += [
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--perms",
        "1777",
        "--size",
        str(tmpfs_mb << 20),
        "--tmpfs",
        "/tmp",
    ]
    covered = {"/", "/usr", "/etc", "/tmp"}
    for path in sorted(set(binds)):
        if any(path == top or path.startswith(top + "/") for top in ("/usr", "/etc")):
            continue
        for parent in reversed(Path(path).parents):  # bwrap would create missing ones 0700 as root
            if str(parent) not in covered:
                argv += ["--perms", "0755", "--dir", str(parent)]
                covered.add(str(parent))
        argv += ["--ro-bind", path, path]
        covered.add(path)
    argv += [
        "--chdir",
        "/tmp",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "LANG",
        "C.UTF-8",
    ]
    return argv
