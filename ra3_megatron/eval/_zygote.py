"""The in-sandbox server: one per warm sandbox; it forks one fresh child per program.

Started only by `sandbox.py`, as `python -I -S -c SOURCE CONFIG_JSON`, where SOURCE is
`wire.py`, `_guard.py` and this file joined (so the sandbox needs only the standard library).

Control channel (SOCK_SEQPACKET, fd config["ctl_fd"], one JSON object per packet):
  zygote -> parent  {"op": "hello"}
  parent -> zygote  {"op": "run", "id": K, "script": bool}, carrying fds [rpc] or [rpc, out]
  parent -> zygote  {"op": "end", "id": K}    (always sent when the parent is done with K)
  zygote -> parent  {"op": "done", "id": K, "exit": int|None, "signal": int|None}
Program channel (the rpc stream socket, length-prefixed JSON, see wire.py):
  child -> parent  {"ready": true}         (set-up done; the program's time starts)
  {"op": "load", "code": str}            -> {"ok": true, "names": {name: kind}}
  {"op": "call", "name", "args", "kwargs"} -> {"ok": true, "value": tree}
  {"op": "get", "name"}                  -> {"ok": true, "value": tree}
  any failure                            -> {"ok": false, "error": {"type", "message", "line"}}
The child holds only the rpc socket (never the control channel), so nothing it writes can be
taken for the zygote's word; the parent treats everything from the child as untrusted data.
"""

import builtins
import gc
import json
import os
import resource
import shutil
import signal
import socket
import sys

try:  # in the sandbox, wire.py's and _guard.py's source come first instead (no package there)
    from ra3_megatron.eval._guard import install_guard
    from ra3_megatron.eval.wire import decode, encode, recv_msg, send_msg
except ImportError:
    pass


def _error(exc: BaseException) -> dict:
    try:
        message = str(exc)[:2000]
    except BaseException:  # the program's own __str__ may fail
        message = "<unprintable>"
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<program>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return {"type": type(exc).__name__, "message": message, "line": line}


def _kind(value) -> str:
    if isinstance(value, type):
        return "class"
    name = type(value).__name__
    if name == "module":
        return "module:" + str(getattr(value, "__name__", ""))
    if name in ("function", "builtin_function_or_method", "method", "partial"):
        return "function"
    return "callable" if callable(value) else "value"


def _serve(rpc, script: bool) -> None:
    g = {"__name__": "__solution__", "__builtins__": builtins}
    while True:
        try:
            req = recv_msg(rpc)
        except EOFError:
            return
        try:
            if req["op"] == "load":
                exec(compile(req["code"], "<program>", "exec"), g)
                names = {k: _kind(v) for k, v in list(g.items()) if not k.startswith("__")}
                reply = {"ok": True, "names": names}
            elif req["op"] == "call":
                value = g[req["name"]](*decode(req["args"], g), **decode(req["kwargs"], g))
                reply = {"ok": True, "value": encode(value)}
            else:
                reply = {"ok": True, "value": encode(g[req["name"]])}
        except BaseException as exc:  # SystemExit and KeyboardInterrupt from the program too
            reply = {"ok": False, "error": _error(exc)}
        if script:
            sys.stdout.flush()
            sys.stderr.flush()
        try:
            send_msg(rpc, reply)
        except ValueError as exc:  # over the message size limit
            send_msg(
                rpc, {"ok": False, "error": {"type": "ResultTooLarge", "message": str(exc), "line": None}}
            )
        if script:
            return


def _child(cfg: dict, req: dict, fds: list, ctl) -> None:
    """Set up the program's process and serve it; never returns."""
    code = 70
    try:
        ctl.close()  # the program must never hold the control channel
        rpc_fd, out_fd = fds[0], (fds[1] if len(fds) > 1 else None)
        os.setsid()  # its own session and process group
        lim = cfg["limits"]
        for res, value in (
            (resource.RLIMIT_AS, lim["memory_bytes"]),
            (resource.RLIMIT_FSIZE, lim["file_bytes"]),
            (resource.RLIMIT_NOFILE, lim["open_files"]),
            (resource.RLIMIT_NPROC, lim["processes"]),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(res, (value, value))
        resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_seconds"], lim["cpu_seconds"] + 1))
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(out_fd if out_fd is not None else null, 1)
        os.dup2(out_fd if out_fd is not None else null, 2)
        os.closerange(3, rpc_fd)
        os.closerange(rpc_fd + 1, 65536)
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
        work = os.path.join(cfg["work_root"], f"p{req['id']}")
        os.mkdir(work, 0o700)
        os.chdir(work)
        os.environ.clear()
        os.environ.update({"HOME": work, "TMPDIR": work, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        if "random" in sys.modules:
            sys.modules["random"].seed()  # the zygote's state must not be shared across programs
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        rpc = socket.socket(fileno=rpc_fd)
        if cfg["guard"]:
            install_guard(work)
        code = 0
        send_msg(rpc, {"ready": True})  # the program's wall-time budget starts now
        _serve(rpc, bool(req.get("script")))
    finally:
        os._exit(code)


def _cleanup(cfg: dict, pid: int, req: dict) -> dict:
    """Kill every process the program left, reap the child, remove what it wrote."""
    _kill_all(cfg, pid)  # before reaping: the child's pid (and group id) cannot be reused yet
    _, wstatus = os.waitpid(pid, 0)
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    if cfg["private_tmp"]:  # the sandbox's own /tmp: wipe everything the program could write
        for entry in os.listdir(cfg["work_root"]):
            path = os.path.join(cfg["work_root"], entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
    else:
        shutil.rmtree(os.path.join(cfg["work_root"], f"p{req['id']}"), ignore_errors=True)
    if os.WIFEXITED(wstatus):
        return {"exit": os.WEXITSTATUS(wstatus), "signal": None}
    return {"exit": None, "signal": os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else None}


def _kill_all(cfg: dict, pid: int) -> None:
    for target in (-pid, pid):  # the program's process group, then the child itself
        try:
            os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if cfg["pid_namespace"]:  # anything that left the group: all but pid 1 and this zygote
        for _ in range(1000):
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                return
            me = str(os.getpid())
            if not [p for p in os.listdir("/proc") if p.isdigit() and p not in ("1", me) and _alive(p)]:
                return
    elif cfg["uid"] is not None:  # a uid of its own: kill everything that uid runs
        helper = os.fork()
        if helper == 0:
            try:
                os.setuid(cfg["uid"])
                for _ in range(1000):
                    os.kill(-1, signal.SIGKILL)  # never this helper itself
            except ProcessLookupError:
                pass
            finally:
                os._exit(0)
        os.waitpid(helper, 0)


def _alive(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def main() -> None:
    cfg = json.loads(sys.argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.path.extend(cfg["extra_path"])
    for name in cfg["preimport"]:  # shared with every child through fork: faster starts
        try:
            __import__(name)
        except ImportError:
            pass
    gc.collect()
    gc.freeze()  # children never scan (and so never copy-on-write) the zygote's objects
    ctl = socket.socket(fileno=cfg["ctl_fd"])
    ctl.send(json.dumps({"op": "hello"}).encode())
    while True:
        msg, fds, _, _ = socket.recv_fds(ctl, 1 << 16, 4)
        if not msg:
            return  # the parent is gone
        req = json.loads(msg)
        if req["op"] != "run":
            continue
        pid = os.fork()
        if pid == 0:
            _child(cfg, req, fds, ctl)
        for fd in fds:
            os.close(fd)
        while True:  # wait until the parent is done with this program
            msg = ctl.recv(1 << 16)
            if not msg or json.loads(msg).get("op") == "end":
                break
        status = _cleanup(cfg, pid, req)
        if not msg:
            return
        ctl.send(json.dumps({"op": "done", "id": req["id"], **status}).encode())


if __name__ == "__main__":
    main()
