"""The kernel's side of process-tree tracking (sandbox/ptree.py): /proc read as it is
now, the GID locks, and the proc connector's socket. The parsing is proctree.py's."""

from __future__ import annotations

import errno
import fcntl
import os
import socket

from . import proctree


def read(path: str, binary: bool = False) -> str | bytes | None:
    try:
        with open(path, "rb" if binary else "r") as f:
            data: str | bytes = f.read()
            return data
    except (OSError, ValueError):
        return None


def scan(proc: str = "/proc") -> dict[int, proctree.Proc]:
    """Every process now, from its stat (threads are not listed in /proc itself)."""
    out = {}
    for entry in os.listdir(proc):
        if entry.isdigit():
            text = read(f"{proc}/{entry}/stat")
            if isinstance(text, str) and text:
                try:
                    out[int(entry)] = proctree.parse_stat(text)
                except (ValueError, IndexError):
                    continue
    return out


def stat_of(pid: int, proc: str = "/proc") -> proctree.Proc | None:
    text = read(f"{proc}/{pid}/stat")
    try:
        return proctree.parse_stat(text) if isinstance(text, str) and text else None
    except (ValueError, IndexError):
        return None


def groups_of(pid: int, proc: str = "/proc") -> frozenset[int]:
    text = read(f"{proc}/{pid}/status")
    return proctree.parse_groups(text) if isinstance(text, str) else frozenset()


class GidLock:
    """A GID of the site's range, held for the launcher's life: a lock file per GID in
    the state directory, flock'ed (the lock goes with the last descriptor, so with the
    launcher, however it dies). A GID is free when nobody holds its lock and no live
    process carries it (the orphans of a killed launcher still do, until gc)."""

    def __init__(self, gid: int, fd: int) -> None:
        self.gid, self.fd = gid, fd

    @classmethod
    def take(cls, gid: int, directory: str) -> GidLock | None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(directory, f"{gid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(gid, fd)

    @classmethod
    def allocate(cls, gids: range, directory: str, proc: str = "/proc") -> GidLock | None:
        for gid in gids:
            lock = cls.take(gid, directory)
            if lock is None:
                continue
            # After the lock: a launcher choosing now skips this GID; a process already
            # carrying it (a dead launcher's orphan) makes it taken.
            if proctree.free_gids([gid], (groups_of(p, proc) for p in scan(proc))):
                return lock
            lock.release()
        return None

    def release(self) -> None:
        os.close(self.fd)


def gid_lock_dir() -> str:
    from . import state

    return os.path.join(state.state_dir(), "gids")


class Connector:
    """The kernel's process events (root only: CAP_NET_ADMIN), as a hint to rescan."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def open(cls) -> Connector | None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                 proctree.NETLINK_CONNECTOR)
        except OSError:
            return None
        try:
            sock.bind((0, proctree.CN_IDX_PROC))
            sock.send(proctree.listen_message(sock.getsockname()[0]))
            sock.setblocking(False)
        except OSError:
            sock.close()
            return None
        return cls(sock)

    def forks(self) -> list[proctree.ProcEvent] | None:
        """The fork events queued so far; None if some were lost (ENOBUFS): rescan."""
        out: list[proctree.ProcEvent] = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    return None
                raise
            out += [e for e in proctree.parse_connector(data) if e.kind == "fork"]

    def close(self) -> None:
        self.sock.close()
