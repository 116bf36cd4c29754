"""Where an ordinary user's own state lives when no root-owned directory is theirs: the
runtime directory, or a private one of their own that nobody else could have made.
Pure checks over stat results, unit-tested."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from .errors import EXIT_SANDBOX_FAILED, SandboxError


def private_to(st: os.stat_result, uid: int) -> bool:
    """A directory only `uid` can enter and write: not a symbolic link (lstat), theirs,
    no group or other bits. Pure: unit-tested."""
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077


def runtime_dir(uid: int, environ: Mapping[str, str]) -> str:
    """Where an ordinary user's live state goes: $XDG_RUNTIME_DIR, else logind's
    /run/user/UID if it is theirs, else a private directory of their own in the temporary
    directory (batch nodes, su, cron and ssh without logind have no runtime directory).
    That fallback sits where anyone may create names, so a name another user made first
    (a directory of theirs, a symbolic link) is refused, never used: the state files'
    locks decide liveness and gc acts on them."""
    given = environ.get("XDG_RUNTIME_DIR")
    if given:
        return given
    logind = f"/run/user/{uid}"
    try:
        if private_to(os.lstat(logind), uid):
            return logind
    except OSError:
        pass
    fallback = os.path.join(environ.get("TMPDIR") or "/tmp", f"sandbox-run-{uid}")
    try:
        os.mkdir(fallback, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise SandboxError(f"no runtime directory: cannot make {fallback}: {e.strerror} (set XDG_RUNTIME_DIR)",
                           EXIT_SANDBOX_FAILED) from None
    if not private_to(os.lstat(fallback), uid):
        raise SandboxError(f"no runtime directory: {fallback} is not a private directory of this user "
                           "(someone else made it?); set XDG_RUNTIME_DIR", EXIT_SANDBOX_FAILED)
    return fallback
