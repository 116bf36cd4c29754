"""Symlink-safe resolution of the paths a job's mounts are made of.

A mount target given as a string is looked up by the kernel at mount time, so a symlink
that the job's user planted in the execute directory (or renamed in between) could
redirect a bind or a hiding mount onto a host path (bubblewrap's CVE-2017-5226, runc's
CVE-2021-30465 are this class of bug). So the launcher walks every path here, one
component at a time with O_NOFOLLOW, keeps an O_PATH descriptor of the result, and the
mounts are made on the descriptors (sandbox/ns/mount.py, the new mount API): the path
is never looked up again.

The rule for symlinks is the one sshd's StrictModes and the kernel's protected_symlinks
apply: a symlink is followed only where only root could have put it (the link is root's
and its directory is root's and not writable by group or others). Debian's /lib -> usr/lib
resolves; a link in an execute directory, in a user's home or in /tmp does not.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import NamedTuple

MAX_LINKS = 40  # the kernel's own limit (ELOOP)

# Paths the sandbox itself replaces: a mount under them would land on the host's copy,
# which the job never sees.
REPLACED = ("/proc", "/tmp", "/var/tmp", "/dev/shm")

SCRATCH = ((".sandbox-tmp", "/tmp"), (".sandbox-var-tmp", "/var/tmp"))


class UnsafePath(OSError):
    pass


class Resolved(NamedTuple):
    path: str  # canonical, symlinks resolved
    fd: int  # O_PATH descriptor of exactly that object
    is_dir: bool


class Bind(NamedTuple):
    src: Resolved
    dst: Resolved
    read_only: bool


class Prepared(NamedTuple):
    """Every descriptor the mount plan needs, opened before the fork."""

    execute_dir: Resolved | None = None
    parent: Resolved | None = None  # the execute dir's parent, whose other entries are hidden
    scratch: tuple[tuple[Resolved, str], ...] = ()  # (directory in the execute dir, its mount point)
    binds: tuple[Bind, ...] = ()
    hides: tuple[Resolved, ...] = ()
    devnull: Resolved | None = None  # covers hidden files
    devices: tuple[Resolved, ...] = ()  # --dev private: the host's device nodes the job gets

    def resolved(self) -> tuple[Resolved, ...]:
        found = [r for r in (self.execute_dir, self.parent, self.devnull) if r is not None]
        found += [r for r, _ in self.scratch] + list(self.hides)
        found += [r for b in self.binds for r in (b.src, b.dst)]
        found += list(self.devices)
        return tuple(found)

    def fds(self) -> tuple[int, ...]:
        return tuple(r.fd for r in self.resolved())

    def close(self) -> None:
        for fd in self.fds():
            try:
                os.close(fd)
            except OSError:
                pass


def trusted(dir_st: os.stat_result, link_st: os.stat_result) -> bool:
    """May a symlink with stat `link_st` in a directory with stat `dir_st` be followed?"""
    return link_st.st_uid == 0 and dir_st.st_uid == 0 and not dir_st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def split(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def resolve(path: str, what: str) -> Resolved:
    """Walk `path` from / without ever following an untrusted symlink. Raises UnsafePath
    (an OSError whose strerror is a one-line message naming `what`)."""
    if not os.path.isabs(path):
        path = os.path.join(os.getcwd(), path)
    todo = split(path)
    stack = [os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)]
    names: list[str] = []
    links = 0
    try:
        while todo:
            name = todo.pop(0)
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                    names.pop()
                continue
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            except OSError as e:
                shown = "/" + "/".join([*names, name])
                raise UnsafePath(e.errno, f"{what} {path}: {shown}: {os.strerror(e.errno or 0)}") from None
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                try:
                    shown = "/" + "/".join([*names, name])
                    if not trusted(os.fstat(stack[-1]), st):
                        raise UnsafePath(
                            1, f"{what} {path}: {shown} is a symlink that a user other than root could have made"
                        )
                    links += 1
                    if links > MAX_LINKS:
                        raise UnsafePath(40, f"{what} {path}: too many levels of symbolic links")
                    target = os.readlink("", dir_fd=fd)
                finally:
                    os.close(fd)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                    names.clear()
                todo[:0] = [p for p in target.split("/") if p and p != "."]
                continue
            if todo and not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                shown = "/" + "/".join([*names, name])
                raise UnsafePath(20, f"{what} {path}: {shown}: Not a directory")
            stack.append(fd)
            names.append(name)
        result = stack.pop()
        return Resolved("/" + "/".join(names), result, stat.S_ISDIR(os.fstat(result).st_mode))
    finally:
        for fd in stack:
            os.close(fd)


def check_target(path: str, what: str) -> None:
    """Refuse mount targets the sandbox replaces anyway (pure)."""
    for top in REPLACED:
        if under(path, top):
            raise UnsafePath(22, f"{what} {path}: is under {top}, which the sandbox replaces")


def check_execute_dir(path: str) -> None:
    """The execute directory's parent is covered by an empty mount: it must not be / or a
    directory the sandbox replaces (pure)."""
    if path.count("/") < 2 or path == "/":
        raise UnsafePath(22, f"--execute-dir {path}: must be below a directory other than /")
    check_target(path, "--execute-dir")


def _bind(src: str, dst: str, ro: bool, keep: Callable[[Resolved], Resolved]) -> Bind:
    flag = "--ro-bind" if ro else "--bind"
    s = keep(resolve(src, flag))
    d = keep(resolve(dst, flag))
    check_target(d.path, flag)
    if s.is_dir != d.is_dir:
        raise UnsafePath(20, f"{flag} {src}:{dst}: one is a directory, the other is not")
    return Bind(s, d, ro)


def _device(path: str) -> Resolved:
    """A host device node below /dev, to appear at the same path in a private /dev."""
    d = resolve(path, "--device")
    try:
        mode = os.stat(d.fd).st_mode
        if not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            raise UnsafePath(19, f"--device {path}: {d.path} is not a device node")  # ENODEV
        if not under(d.path, "/dev") or d.path == "/dev" or under(d.path, "/dev/pts") or under(d.path, "/dev/shm"):
            raise UnsafePath(22, f"--device {path}: {d.path} is not a device of /dev")
    except BaseException:
        os.close(d.fd)
        raise
    return d


def parse_bind(text: str) -> tuple[str, str]:
    """SRC[:DST] -> (SRC, DST); DST defaults to SRC (pure)."""
    src, sep, dst = text.partition(":")
    if not src or (sep and not dst):
        raise ValueError(f"invalid bind {text!r}: expected SRC or SRC:DST")
    return src, dst or src


def _scratch_dir(parent_fd: int, name: str, uid: int, gid: int, mode: int) -> Resolved:
    """DIR/name as a real directory owned by the job: created if missing; a symlink or
    anything else in its place is refused, never followed."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        pass
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError as e:
        try:
            is_link = stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        why = "is a symlink" if is_link else os.strerror(e.errno or 0)
        raise UnsafePath(e.errno, f"--execute-dir: scratch directory {name}: {why}") from None
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    except OSError:
        os.close(fd)
        raise
    return Resolved(name, fd, True)  # path made absolute by prepare()


def _own_execute_dir(d: Resolved, uid: int, gid: int) -> None:
    """A starter usually creates the execute directory as root: hand it to the job's
    user. One owned by somebody else is refused rather than taken away from them."""
    fd = os.open(f"/proc/self/fd/{d.fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_uid == 0:
            os.fchown(fd, uid, gid)
        elif st.st_uid != uid:
            raise UnsafePath(1, f"--execute-dir {d.path}: belongs to uid {st.st_uid}, not to the job's user")
    finally:
        os.close(fd)


def prepare(
    execute_dir: str | None,
    binds: tuple[tuple[str, str, bool], ...],
    hides: tuple[str, ...],
    owner: tuple[int, int] | None,
    launcher: tuple[int, int],
    *,
    devices: tuple[str, ...] = (),
) -> Prepared:
    """Resolve and open everything; create the scratch directories last, so that a bad
    path leaves nothing behind. `owner` is the --user job's (uid, gid), None without
    --user; `launcher` who owns scratch then (privilege.scratch_owner())."""
    opened: list[Resolved] = []

    def keep(r: Resolved) -> Resolved:
        opened.append(r)
        return r

    try:
        ex = parent = None
        if execute_dir is not None:
            ex = keep(resolve(execute_dir, "--execute-dir"))
            if not ex.is_dir:
                raise UnsafePath(20, f"--execute-dir {ex.path}: Not a directory")
            check_execute_dir(ex.path)
            parent = keep(resolve(os.path.dirname(ex.path), "--execute-dir"))
        bound = [_bind(src, dst, ro, keep) for src, dst, ro in binds]
        hidden = []
        devnull = None
        for path in hides:
            h = keep(resolve(path, "--hide"))
            check_target(h.path, "--hide")
            if ex is not None and (under(ex.path, h.path)):
                raise UnsafePath(22, f"--hide {h.path}: would hide the execute directory")
            hidden.append(h)
            if not h.is_dir and devnull is None:
                devnull = keep(resolve("/dev/null", "--hide"))
        scratch: list[tuple[Resolved, str]] = []
        if ex is not None:
            uid, gid = owner if owner is not None else launcher
            if owner is not None:
                _own_execute_dir(ex, uid, gid)
            # The job's user alone: /tmp is not shared with anybody inside the sandbox.
            # A root job keeps the sticky world-writable /tmp it would have anywhere.
            mode = 0o1777 if uid == 0 else 0o700
            for name, target in SCRATCH:
                d = keep(_scratch_dir(ex.fd, name, uid, gid, mode))
                scratch.append((d._replace(path=f"{ex.path}/{name}"), target))
        nodes = tuple(keep(_device(path)) for path in dict.fromkeys(devices))
        return Prepared(ex, parent, tuple(scratch), tuple(bound), tuple(hidden), devnull, nodes)
    except BaseException:
        for r in opened:
            os.close(r.fd)
        raise
