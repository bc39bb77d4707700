"""The in-process guard of a sandboxed program: an audit hook (Python code cannot remove one).

It refuses: creating processes (fork, exec, spawn, subprocess, system), sending signals, every
socket operation, ctypes / cffi and `_posixsubprocess`, changing files outside the program's
directory (open for writing, remove, rename, link, chmod, chown, utime, mkdir, rmtree, copy),
reading another process's /proc entries, and opening outside directories (whose fds would let
`dir_fd` calls escape). It is the only barrier in the weaker mode and a second one under bwrap;
a program that escapes the interpreter itself (a CPython bug, a C extension) gets past it.
Standard library only: its source is joined into the sandbox server (see isolation.py).
"""

import os
import sys

_BLOCKED_EVENTS = frozenset(
    "os.fork os.forkpty os.system os.exec os.posix_spawn os.spawn subprocess.Popen pty.spawn "
    "os.kill os.killpg resource.prlimit os.chroot webbrowser.open ensurepip.bootstrap "
    "ftplib.connect http.client.connect smtplib.connect poplib.connect imaplib.open "
    "nntplib.connect telnetlib.Telnet.open urllib.Request".split()
)
_BLOCKED_IMPORTS = frozenset({"ctypes", "_ctypes", "cffi", "_cffi_backend", "_posixsubprocess"})
# event -> (indices of path arguments, index of their dir_fd argument or None)
_PATH_EVENTS = {
    "os.remove": ((0,), 1),
    "os.rmdir": ((0,), 1),
    "os.mkdir": ((0,), 2),
    "os.chmod": ((0,), 2),
    "os.chown": ((0,), 3),
    "os.utime": ((0,), 3),
    "os.truncate": ((0,), None),
    "os.rename": ((0, 1), 2),
    "os.link": ((0, 1), 2),
    "os.symlink": ((1,), 2),
    "os.chflags": ((0,), None),
    "os.lchflags": ((0,), None),
    "os.setxattr": ((0,), None),
    "os.removexattr": ((0,), None),
    "shutil.rmtree": ((0,), None),
    "shutil.copyfile": ((1,), None),
    "shutil.copymode": ((1,), None),
    "shutil.copystat": ((1,), None),
    "shutil.copytree": ((1,), None),
    "shutil.move": ((0, 1), None),
    "shutil.chown": ((0,), None),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def install_guard(work: str) -> None:
    """In-process guard (an audit hook, which Python code cannot remove): no processes,
    signals, sockets or ctypes; file changes only inside `work`; no other process's /proc."""
    realpath, join, isdir = os.path.realpath, os.path.join, os.path.isdir
    work = realpath(work)
    me = str(os.getpid())

    def resolve(path, dir_fd=None):
        if isinstance(path, int):
            return None  # an fd the program already holds
        path = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(path):
            path = join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        return realpath(path)

    def inside(resolved):
        return (
            resolved is None or resolved == work or resolved.startswith(work + "/") or resolved == "/dev/null"
        )

    def deny(what):
        raise PermissionError(f"sandbox: {what} is not allowed")

    def hook(event, args):
        if event in _BLOCKED_EVENTS or event.startswith(("socket.", "ctypes.")):
            deny(event)
        if event == "open":
            path, mode, flags = args[0], args[1], args[2] if len(args) > 2 else 0
            write = (
                any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
            )
            where = resolve(path)
            if inside(where):
                return
            if write:
                deny(f"writing {where}")
            parts = where.split("/")
            if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != me:
                deny(f"reading {where}")
            if mode is None and isdir(where):  # an outside dir fd would let dir_fd calls escape
                deny(f"opening the directory {where}")
        elif event in _PATH_EVENTS:
            indices, fd_index = _PATH_EVENTS[event]
            dir_fd = args[fd_index] if fd_index is not None and fd_index < len(args) else None
            for i in indices:
                where = resolve(args[i], dir_fd if isinstance(dir_fd, int) else None)
                if not inside(where):
                    deny(f"{event} on {where}")
        elif event == "import" and args[0].partition(".")[0] in _BLOCKED_IMPORTS:
            deny(f"importing {args[0]}")

    sys.addaudithook(hook)
