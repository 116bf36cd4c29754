"""Root's `sandbox gc` of switchboard members' sandboxes.

A member's launcher keeps its state in the member's own runtime directory, and its
cgroups were made by the switchboard. When launcher and agent are both gone (a batch
system's kill of the whole job, the OOM killer), root's gc reclaims them as the member
would: a child that has become that member runs the member's gc on that directory. So
the records go where the member's state says with the member's rights (a path in a file
the member wrote is never opened as root), and the cgroups go through the switchboard's
reclaim, whose checks are the member's.
"""

from __future__ import annotations

import os

from . import state
from .userdirs import private_to

FALLBACK = "sandbox-run-"  # userdirs.runtime_dir's private directory in the temporary directory


def candidate_dirs(run_user: str = "/run/user", tmp_dirs: tuple[str, ...] = ("/tmp",)) -> list[tuple[int, str]]:
    """(uid, state directory) of ordinary users' runtime directories that root can find
    and that hold state: logind's /run/user/UID and the fallback TMP/sandbox-run-UID, each
    only if private to that uid (a name another user made is not theirs). A member whose
    XDG_RUNTIME_DIR is elsewhere is not found: their own gc reclaims theirs."""
    entries = [(name, os.path.join(run_user, name)) for name in _listdir(run_user)]
    for tmp in tmp_dirs:
        entries += [(n[len(FALLBACK):], os.path.join(tmp, n)) for n in _listdir(tmp) if n.startswith(FALLBACK)]
    found = set()
    for uid_text, directory in entries:
        if not uid_text.isdigit() or int(uid_text) == 0:
            continue
        try:
            st = os.lstat(directory)
        except OSError:
            continue
        sdir = os.path.join(directory, "sandbox")
        if private_to(st, int(uid_text)) and state.names(sdir):
            found.add((int(uid_text), sdir))
    return sorted(found)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def reclaim_members() -> list[str]:
    tmp = tuple(dict.fromkeys(["/tmp", os.environ.get("TMPDIR") or "/tmp"]))
    names: list[str] = []
    for uid, directory in candidate_dirs(tmp_dirs=tmp):
        names += _as_user(uid, directory)
    return names


def _as_user(uid: int, directory: str) -> list[str]:
    """The names `sandbox gc` reclaims in `directory` run as `uid` (and its groups)."""
    import json
    import pwd

    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return []  # a deleted account: nobody to run as
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover (a child; the integration tests run it)
        code = 1
        try:
            os.close(r)
            os.initgroups(pw.pw_name, pw.pw_gid)
            os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
            os.setresuid(uid, uid, uid)
            os.environ.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
            from .gc import reclaim_stale

            os.write(w, json.dumps(reclaim_stale(directory)).encode())
            code = 0
        except Exception as e:  # one line for this user, then root's gc goes on
            from .notices import say

            say(f"warning: gc of {directory} as {pw.pw_name} failed: {e}")
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    try:
        while chunk := os.read(r, 65536):
            data += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    try:
        names = json.loads(data) if data else []
    except ValueError:
        return []
    return [str(n) for n in names] if isinstance(names, list) else []
