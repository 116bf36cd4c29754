"""The unprivileged side of the switchboard: how a non-root sandbox-run asks the
root-owned helper (helpers/switchboard.py, installed by helpers/install-switchboard)
for what it cannot do itself.

The launcher enters a user namespace of its own before it creates the PID namespace,
and the kernel honours no setuid bit inside one. So the requests go through an
*agent*: the setuid helper itself, spawned before that in a session (setsid) of its
own, which stays in the initial user namespace and serves the launcher's requests one
per line. When the launcher dies, even by SIGKILL, the helper reads EOF and destroys
the sandbox: an unprivileged user could not remove the root-owned cgroup directories
otherwise. `sandbox gc` asks it once per request (`call`).
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


def open_session(uid: int) -> Agent:
    """The launcher's session with the switchboard, or one clear line why not."""
    check_access(uid)
    try:
        return Agent()
    except SwitchboardError as e:
        raise SandboxError(str(e), EXIT_SANDBOX_FAILED) from None


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


SESSION_OPEN = b'{"version": 1, "op": "session"}\n'


def _high(fd: int) -> int:
    """`fd` moved to 10 or above: a file action's dup2 onto its own number would leave
    it close-on-exec, and the wrapper's 0-3 are made from these."""
    import fcntl

    if fd >= 10:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    finally:
        os.close(fd)


class Agent:
    """The switchboard helper itself, in a session serving this launcher's one sandbox:
    the setuid wrapper spawned once, in a session (setsid) of its own so that a kill of
    the launcher's process group leaves it to clean up, before the launcher enters its
    user namespace (where no setuid bit works). Requests go one per line on its stdin,
    replies come one per line. When the launcher dies, even by SIGKILL, the kernel
    closes the pipe: the helper reads EOF and destroys the sandbox the session made.
    Spawned as soon as the launcher knows it is a member, so the helper's interpreter
    starts and imports on the second core while the launcher plans and prepares."""

    def __init__(self) -> None:
        path = wrapper_path()
        ends = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]
        (in_r, in_w), (out_r, out_w), (err_r, err_w) = [(_high(r), _high(w)) for r, w in ends]
        null = _high(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
        try:
            # descriptor 3 is /dev/null: the wrapper passes 3 on (reclaim's), a session has none
            actions = [(os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                       (os.POSIX_SPAWN_DUP2, err_w, 2), (os.POSIX_SPAWN_DUP2, null, 3)]
            self.pid = os.posix_spawn(path, [path], {}, file_actions=actions, setsid=True)
        except OSError as e:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            raise SwitchboardError(f"cannot run the switchboard: {e.strerror or e}") from None
        finally:
            for fd in (in_r, out_w, err_w, null):
                os.close(fd)
        self.req_w, self.rep_r, self.err_r = in_w, out_r, err_r
        self.buf = b""
        self.opened = False  # the reply to SESSION_OPEN is read with the first request's
        self._send(SESSION_OPEN)

    def _send(self, line: bytes) -> None:
        try:
            os.write(self.req_w, line)  # a line is far below a pipe's capacity
        except OSError:
            pass  # the helper is gone: the reply's EOF says why

    def _reply(self) -> dict[str, object]:
        import json

        while b"\n" not in self.buf:
            data = os.read(self.rep_r, 65536)
            if not data:
                raise SwitchboardError(self._why_gone())
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            raise SwitchboardError("the switchboard sent an unreadable reply") from None
        if not isinstance(reply, dict):
            raise SwitchboardError("the switchboard sent an unexpected reply")
        return reply

    def _why_gone(self) -> str:
        """The helper ended without a reply: its one line on stderr (a broken
        installation, the wrapper unable to start it), or its exit status."""
        err = b""
        while data := os.read(self.err_r, 65536):
            err += data
        lines = err.decode(errors="replace").strip().splitlines()
        return lines[-1].removeprefix("sandbox-switchboard: ") if lines else "the switchboard helper ended"

    def request(self, request: dict[str, object]) -> dict[str, object]:
        import json

        if self.req_w < 0:
            raise SwitchboardError("the switchboard session is closed")
        self._send(json.dumps({"version": 1, **request}).encode() + b"\n")
        if not self.opened:
            opened = self._reply()
            if opened.get("ok") is not True:
                raise SwitchboardError(str(opened.get("error")))
            self.opened = True
        reply = self._reply()
        if reply.get("ok") is not True:
            raise SwitchboardError(str(reply.get("error")))
        return reply

    def close(self) -> None:
        """EOF for the helper (which destroys the session's sandbox if it still stands),
        then wait for it."""
        if self.req_w < 0:
            return
        os.close(self.req_w)
        self.req_w = -1
        os.waitpid(self.pid, 0)
        os.close(self.rep_r)
        os.close(self.err_r)
