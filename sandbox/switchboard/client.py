"""The unprivileged side of the switchboard: how a non-root sandbox-run asks the
root-owned helper (helpers/switchboard.py, installed by helpers/install-switchboard)
for what it cannot do itself.

The launcher enters a user namespace of its own before it creates the PID namespace,
and the kernel honours no setuid bit inside one. So the requests go through an
*agent*: a process forked before that, which stays in the initial user namespace,
runs the setuid wrapper once per request, and is in a session of its own. When the
launcher dies, even by SIGKILL, the agent reads EOF and destroys the sandbox: an
unprivileged user could not remove the root-owned cgroup directories otherwise.
"""

from __future__ import annotations

import os
import stat

from ..errors import EXIT_SANDBOX_FAILED, SandboxError

DEFAULT_WRAPPER = "/usr/local/libexec/sandbox/sandbox-switchboard"
TIMEOUT = 30.0


class SwitchboardError(Exception):
    """A refused or failed request, with the helper's one-line reason."""


def wrapper_path() -> str:
    # The caller picks which switchboard to ask (another installation prefix): the
    # helper trusts nothing about its caller, so this override grants nothing.
    return os.environ.get("SANDBOX_SWITCHBOARD") or DEFAULT_WRAPPER


def check_access(uid: int) -> None:
    """Fail early, with one clear line, when this user cannot use the switchboard."""
    path = wrapper_path()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SandboxError(
            f"not running as root and the switchboard is not installed ({path}); "
            "an admin installs it with helpers/install-switchboard",
            EXIT_SANDBOX_FAILED,
        ) from None
    if not os.access(path, os.X_OK):
        import grp

        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        who = "this user"
        try:
            import pwd

            who = f"user {pwd.getpwuid(uid).pw_name}"
        except KeyError:
            pass
        raise SandboxError(
            f"{who} may not use the switchboard ({path}): not a member of group '{group}'",
            EXIT_SANDBOX_FAILED,
        )
    if not st.st_mode & stat.S_ISUID or st.st_uid != 0:
        raise SandboxError(f"{path} is not a setuid-root program: reinstall with helpers/install-switchboard")


def call(request: dict[str, object], state_fd: int | None = None) -> dict[str, object]:
    """One request, one invocation of the helper; the parsed reply or SwitchboardError.
    `state_fd` becomes the helper's descriptor 3 (reclaim's state file)."""
    import json
    import subprocess

    body = json.dumps({"version": 1, **request}).encode()
    try:
        if state_fd is None:
            proc = subprocess.run([wrapper_path()], input=body, capture_output=True, timeout=TIMEOUT, check=False)
            status, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            status, out, err = _run_with_fd3(body, state_fd)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SwitchboardError(f"cannot run the switchboard: {e}") from None
    if status != 0:
        lines = err.decode(errors="replace").strip().splitlines() or [f"exit status {status}"]
        raise SwitchboardError(lines[-1].removeprefix("sandbox-switchboard: "))
    try:
        reply = json.loads(out)
    except ValueError:
        raise SwitchboardError("the switchboard sent an unreadable reply") from None
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        raise SwitchboardError("the switchboard sent an unexpected reply")
    return reply


def _run_with_fd3(body: bytes, fd: int) -> tuple[int, bytes, bytes]:
    """Run the wrapper with `fd` as its descriptor 3 (subprocess keeps descriptors only
    under their own numbers). A duplicate shares the open file, and so its flock."""
    import fcntl
    import selectors
    import subprocess
    import time

    src = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)  # never 0-3 itself: dup2 onto 3 clears CLOEXEC
    pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]
    (in_r, in_w), (out_r, out_w), (err_r, err_w) = pipes
    try:
        actions = [(os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                   (os.POSIX_SPAWN_DUP2, err_w, 2), (os.POSIX_SPAWN_DUP2, src, 3)]
        pid = os.posix_spawn(wrapper_path(), [wrapper_path()], os.environ, file_actions=actions)
    finally:
        for end in (in_r, out_w, err_w, src):
            os.close(end)
    out: dict[int, bytes] = {out_r: b"", err_r: b""}
    try:
        os.write(in_w, body)  # far below a pipe's capacity
        os.close(in_w)
        in_w = -1
        deadline = time.monotonic() + TIMEOUT
        with selectors.DefaultSelector() as sel:
            for end in out:
                sel.register(end, selectors.EVENT_READ)
            while sel.get_map():
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(wrapper_path(), TIMEOUT)
                for key, _ in sel.select(timeout=1.0):
                    data = os.read(key.fd, 65536)
                    if not data:
                        sel.unregister(key.fd)
                    out[key.fd] += data
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), out[out_r], out[err_r]
    finally:
        for end in (in_w, out_r, err_r):
            if end >= 0:
                os.close(end)


def reclaim(name: str, state_fd: int) -> None:
    """Have the helper end our stale sandbox `name` at the directories its state names.
    It gets the state file we hold locked: the lock it can take there shows that no
    launcher holds one (the launcher holds it for life)."""
    call({"op": "reclaim", "name": name}, state_fd)


def _agent_main(req_r: int, rep_w: int, name: str) -> None:
    """The agent's loop: a JSON request per line in, a JSON reply per line out."""
    import json

    destroyed = False
    buf = b""
    while True:
        data = os.read(req_r, 65536)
        if not data:
            break
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            # Nothing here may end the agent before its last duty (the destroy below).
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
                reply: dict[str, object] = call(request)
            except SwitchboardError as e:
                request, reply = {}, {"ok": False, "error": str(e)}
            except (ValueError, OSError) as e:
                request, reply = {}, {"ok": False, "error": f"bad request to the agent: {e}"}
            if request.get("op") == "destroy" and reply.get("ok"):
                destroyed = True
            if request.get("op") == "create" and not reply.get("ok"):
                destroyed = True  # nothing was made
            os.write(rep_w, json.dumps(reply).encode() + b"\n")
    # The launcher is gone. Whatever it did not tear down, we do.
    if not destroyed:
        try:
            call({"op": "destroy", "name": name})
        except SwitchboardError:
            pass


class Agent:
    """The forked process that talks to the switchboard on the launcher's behalf."""

    def __init__(self, name: str) -> None:
        req_r, req_w = os.pipe2(os.O_CLOEXEC)
        rep_r, rep_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()  # a kill of the launcher's process group leaves us to clean up
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                # keep no descriptor of the launcher's (its callers wait for EOF on them)
                keep = sorted((req_r, rep_w))
                os.closerange(3, keep[0])
                os.closerange(keep[0] + 1, keep[1])
                os.closerange(keep[1] + 1, 1 << 16)
                _agent_main(req_r, rep_w, name)
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(rep_w)
        self.pid = pid
        self.req_w = req_w
        self.rep_r = rep_r
        self.buf = b""

    def request(self, request: dict[str, object]) -> dict[str, object]:
        import json

        os.write(self.req_w, json.dumps(request).encode() + b"\n")
        while b"\n" not in self.buf:
            data = os.read(self.rep_r, 65536)
            if not data:
                raise SwitchboardError("the switchboard agent died")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        reply = json.loads(line)
        if not reply.get("ok"):
            raise SwitchboardError(str(reply.get("error")))
        return dict(reply)

    def close(self) -> None:
        if self.req_w < 0:
            return
        os.close(self.req_w)
        os.close(self.rep_r)
        self.req_w = self.rep_r = -1
        os.waitpid(self.pid, 0)
