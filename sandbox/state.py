"""Runtime state of running sandboxes: one JSON file per sandbox in the state directory.

It lets `sandbox gc` (and the next launch) tell a live sandbox from one whose
launcher was SIGKILLed, and lets later tools find a sandbox by name.

Liveness is a lock, never a PID: the launcher holds an exclusive flock(2) on its state
file for its whole life and the kernel drops it when the launcher dies, SIGKILL
included. A PID says nothing in another PID namespace (a launcher inside a sandbox sees
none of the host's launchers) and a zombie looks alive in /proc; a lock on a shared
file is the same for every namespace, container and nesting depth. The state is
written (the intent) before the cgroup exists and removed after it is gone, so there is
no moment at which a sandbox has a cgroup but no record. It lives in
/run/sandbox for root and $XDG_RUNTIME_DIR/sandbox otherwise (both are tmpfs: a
reboot, which also empties every cgroup, empties it too), and each file is removed
when its sandbox ends.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import TYPE_CHECKING, Any, NamedTuple

from .procfs import process_start_time

if TYPE_CHECKING:
    from .records import State


def state_dir() -> str:
    override = os.environ.get("SANDBOX_STATE_DIR")
    if override:
        return override
    from .config import file_setting  # one stat when there is no /etc/sandbox/sandbox.toml

    configured = file_setting("state_dir")
    if configured:
        return str(configured)
    from .privilege import current

    return current().state_dir()


# Not .json: launchers of older versions judged liveness by PID and, run beside these,
# would take a nested sandbox's state for a dead one; they list only *.json.
SUFFIX = ".state"


def path_for(name: str, directory: str | None = None) -> str:
    return os.path.join(directory or state_dir(), name + SUFFIX)


class NameInUse(Exception):
    """A live launcher holds the state of this name."""


_TMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _locked_temp(final: str, record: State) -> tuple[int, str] | None:
    """A new temp file next to `final`, locked, holding `record`; None when a gc swept
    it between open and flock (the caller tries again)."""
    tmp = f"{final}.{os.urandom(6).hex()}.tmp"
    # Made 0600 and opened to others only once locked: root's state directory is
    # world-readable (users read the state of --user sandboxes run for them), and anyone
    # who could open the new file first could flock it before us, so that every launch
    # failed.
    fd = os.open(tmp, _TMP_FLAGS, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a gc took it for an abandoned temp file
        os.close(fd)
        return None
    os.fchmod(fd, 0o644)
    try:
        _write_all(fd, record.to_json().encode())
    except BaseException:
        _unlink(tmp)
        os.close(fd)
        raise
    if os.fstat(fd).st_nlink == 0:  # swept before we locked it
        os.close(fd)
        return None
    return fd, tmp


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        if n <= 0:
            raise OSError(errno.ENOSPC, "short write")
        data = data[n:]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Held:
    """A launcher's state file and the lock that says it lives. Rewrites replace the
    file with a new one locked before it is renamed into place, so the name is never
    without a locked file."""

    def __init__(self, name: str, directory: str, fd: int, dir_fd: int = -1) -> None:
        self.name, self.directory, self.fd = name, directory, fd
        self.dir_fd = dir_fd  # a shared lock on the directory: see _hold_directory

    @property
    def path(self) -> str:
        return path_for(self.name, self.directory)

    def rewrite(self, record: State) -> None:
        for _ in range(3):
            made = _locked_temp(self.path, record)
            if made is None:
                continue
            fd, tmp = made
            try:
                os.rename(tmp, self.path)
            except BaseException:
                _unlink(tmp)
                os.close(fd)
                raise
            os.close(self.fd)
            self.fd = fd
            return
        raise OSError(errno.EAGAIN, "state temp file swept repeatedly")

    def release(self) -> None:
        """The sandbox is gone: remove its record, then let go of the lock."""
        _unlink(self.path)
        os.close(self.fd)
        self.fd = -1
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


def _hold_directory(directory: str) -> int:
    """A shared flock on the state directory for the launcher's life, or -1. An ordinary
    user's state may live in a private directory under /tmp (no runtime directory), which
    tmp cleaners age away: systemd-tmpfiles skips a directory it cannot lock exclusively,
    so a week-long job keeps its state (and with it gc's and live control's view of it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:  # a cleaner is in it this very moment: go on without
        os.close(fd)
        return -1
    return fd


def claim(name: str, record: State, directory: str | None = None) -> Held:
    """Record the intent to run sandbox `name` and hold its lock; NameInUse when a live
    launcher holds it, FileExistsError when a stale state of that name is still there
    (the caller reclaims it and claims again)."""
    directory = directory or state_dir()
    os.makedirs(directory, mode=0o755, exist_ok=True)
    final = path_for(name, directory)
    for _ in range(3):
        made = _locked_temp(final, record)
        if made is None:
            continue
        fd, tmp = made
        try:
            # link(2) is atomic and refuses an existing name: of two launchers given
            # the same name, exactly one gets it.
            os.link(tmp, final)
        except FileExistsError:
            os.close(fd)
            if launcher_alive({"name": name}, directory):
                raise NameInUse(name) from None
            raise
        finally:
            _unlink(tmp)
        return Held(name, directory, fd, _hold_directory(directory))
    raise OSError(errno.EAGAIN, "state temp file swept repeatedly")


def read(name: str, directory: str | None = None) -> dict[str, Any] | None:
    found = read_owned(name, directory)
    return None if found is None else found[0]


def read_owned(name: str, directory: str | None = None) -> tuple[dict[str, Any], int] | None:
    """The state and the uid owning the very file it was read from (a kernel fact: who
    wrote it; the uid inside is only what the writer claims)."""
    import json

    try:
        fd = os.open(path_for(name, directory), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, OSError):
        return None
    with os.fdopen(fd) as f:
        owner = os.fstat(f.fileno()).st_uid
        try:
            data = json.load(f)
        except (ValueError, UnicodeDecodeError):
            return None
    return (data, owner) if isinstance(data, dict) else None


def remove(name: str, directory: str | None = None) -> None:
    _unlink(path_for(name, directory))


def names(directory: str | None = None) -> list[str]:
    try:
        entries = os.listdir(directory or state_dir())
    except FileNotFoundError:
        return []
    return sorted(e[: -len(SUFFIX)] for e in entries if e.endswith(SUFFIX) and not e.startswith("."))


def launcher_identity() -> dict[str, int | None]:
    """For people and `sandbox ps`: the launcher's PID in the namespace that wrote the
    state. Liveness is the lock (launcher_alive), never this PID."""
    pid = os.getpid()
    return {"launcher_pid": pid, "launcher_start": process_start_time(pid)}


def _try_lock(path: str, flags: int = os.O_RDONLY, mode: int = 0, *, or_shared: bool = False) -> int | None:
    """An fd holding the exclusive lock of `path` (or, `or_shared`, a shared one when
    only shared locks are held), or None when somebody holds it (or it is gone, or was
    replaced or removed between our open and our flock)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            if not or_shared:
                raise
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
    if not _same_file(path, fd):
        os.close(fd)
        return None
    return fd


def launcher_alive(data: dict[str, Any], directory: str | None = None) -> bool:
    """Does a launcher hold the state of this sandbox (or a gc, reclaiming it)? A lock
    test: the same answer from every PID namespace, and no PID reuse to fool it."""
    name = data.get("name")
    if not isinstance(name, str):
        return False
    # a shared lock of ours conflicts only with an exclusive one: the launcher's (a
    # reader's shared lock says nothing), or an older version's gc
    state, claim = path_for(name, directory), _claim_path(name, directory)
    return _conflicts(state, fcntl.LOCK_SH) or _conflicts(claim, fcntl.LOCK_EX)


def _conflicts(path: str, op: int) -> bool:
    """Does somebody hold a lock on `path` that a lock `op` of ours would conflict with?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# A gc's claim on a stale sandbox is a lock on a file of its own, beside the state, that
# only the claimer can open (0600, a dot name that `names` does not list). The state file
# itself cannot be the claim: root's state files are readable by everyone, so any user
# could hold a shared flock on a dead launcher's file and no exclusive lock would ever be
# had on it again. Liveness stays the launcher's exclusive lock, which shared ones do not
# hide.
CLAIM = ".claim"


def _claim_path(name: str, directory: str | None) -> str:
    return os.path.join(directory or state_dir(), f".{name}{CLAIM}")


def _same_file(path: str, fd: int) -> bool:
    """Is `path` still the file open on `fd` (not replaced or removed since the open)?"""
    try:
        return os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _lock_claim(name: str, directory: str | None) -> int | None:
    # made if missing; a sweep may remove it between our open and flock (then: None)
    return _try_lock(_claim_path(name, directory), os.O_RDWR | os.O_CREAT, 0o600)


def _lock_dead(path: str) -> int | None:
    """An fd of the state file at `path` once no launcher holds its exclusive lock, with
    a lock of ours on it (exclusive, or shared when someone else holds a shared one: a
    reader's lock, which says nothing about the launcher); None while a launcher lives."""
    return _try_lock(path, or_shared=True)


class Taken(NamedTuple):
    """A stale sandbox's state, claimed: its file (fd), its data (None when unreadable),
    and the claim that keeps every other gc and launch off it until release()."""

    fd: int
    data: dict[str, Any] | None
    claim_fd: int
    claim_path: str

    def release(self) -> None:
        _unlink(self.claim_path)  # while still held: a later claim makes a new file
        os.close(self.claim_fd)
        os.close(self.fd)


def take_stale(name: str, directory: str | None = None) -> Taken | None:
    """Claim the state of a sandbox whose launcher is gone, or None when it lives, is
    being reclaimed or is gone. Holding the claim keeps a second gc or launch off it."""
    import json

    claim = _lock_claim(name, directory)
    if claim is None:
        return None
    fd = _lock_dead(path_for(name, directory))
    if fd is None:
        _unlink(_claim_path(name, directory))
        os.close(claim)
        return None
    try:
        with open(fd, closefd=False) as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError, OSError):
        data = None
    return Taken(fd, data if isinstance(data, dict) else None, claim, _claim_path(name, directory))


def sweep_temp(directory: str | None = None) -> list[str]:
    """Remove temp files nobody is writing (their writer holds their lock) and claim
    files of older versions; return what was removed."""
    directory = directory or state_dir()
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    removed = []
    for entry in entries:
        path = os.path.join(directory, entry)
        if entry.endswith(".tmp") or ".reclaim-" in entry or (entry.startswith(".") and entry.endswith(CLAIM)):
            fd = _try_lock(path)
            if fd is None:
                continue
            _unlink(path)
            os.close(fd)
            removed.append(entry)
    return removed
