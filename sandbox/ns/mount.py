"""The mount namespace, planned as data and then executed.

`plan()` turns a JobSpec into a list of SetupOps (bubblewrap's design), so the whole
filesystem view of a job can be checked by unit tests without root; `execute()` is a
plain loop that the job's init runs inside its new mount namespace.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

from .. import syscalls as sc
from ..spec import JobSpec

if TYPE_CHECKING:
    from ..paths import Prepared

MOUNT = "mount"
MKDIR = "mkdir"
# Descriptor-based kinds: src_fd/dst_fd were opened by the launcher after a
# symlink-safe walk (sandbox/paths.py); src/dst only name them in messages.
BIND = "bind"  # a copy of the tree at src_fd, with `attrs` (MOUNT_ATTR_*), on dst_fd
EMPTY = "empty"  # an empty read-only tmpfs on dst_fd; with `keep`, a copy of src_fd at dst/keep
SETATTR = "setattr"  # set `attrs` on the mount at the path dst and every mount below it
REOPEN = "reopen"  # re-walk dst in the new mount namespace; must be the object at dst_fd
DETACH = "detach"  # a copy of the tree at src_fd, taken now, replaces src_fd (for BIND_DETACHED)
BIND_DETACHED = "bind-detached"  # the copy DETACH took at src_fd, with `attrs`, on dst_fd (or the path dst)
FILE = "file"  # an empty file at the path dst (a mount point for a device node)
SYMLINK = "symlink"  # a symlink at dst pointing to src

# Directories the sandbox covers with private ones: a bind of them (or of what is below
# them) must show the host's, so it is copied before they are covered.
_COVERED = ("/tmp", "/var/tmp", "/dev/shm")


class SetupOp(NamedTuple):
    kind: str  # MOUNT, MKDIR, BIND, EMPTY, SETATTR, REOPEN, DETACH, BIND_DETACHED, FILE or SYMLINK
    dst: str
    src: str | None = None
    fstype: str | None = None
    flags: int = 0
    data: str | None = None
    mode: int = 0o755
    why: str = ""
    src_fd: int = -1
    dst_fd: int = -1
    attrs: int = 0
    keep: str = ""

    def describe(self) -> str:
        if self.kind == MKDIR:
            return f"create directory {self.dst}"
        if self.kind == FILE:
            return f"create {self.dst}"
        if self.kind == SYMLINK:
            return f"link {self.dst} to {self.src}"
        if self.kind in (BIND, BIND_DETACHED):
            return f"bind-mount {self.src} on {self.dst}"
        if self.kind == DETACH:
            return f"copy {self.src} before the sandbox covers it"
        if self.kind == EMPTY:
            return f"hide {self.dst}" + (f" except {self.keep}" if self.keep else "")
        if self.kind == SETATTR:
            return f"make {self.dst} read-only"
        if self.kind == REOPEN:
            return f"open {self.dst} in the new mount namespace"
        if self.flags & sc.MS_BIND:
            return f"bind-mount {self.src} on {self.dst}"
        if self.fstype:
            return f"mount {self.fstype} on {self.dst}"
        return f"change propagation of {self.dst}"


# The private tmpfs holds all three temporary directories, so one --tmp-size bounds them
# together; it is mounted on /tmp first and then covered by a bind of its own subdir.
_TMP_SUBDIRS = (("tmp", "/tmp"), ("var-tmp", "/var/tmp"), ("shm", "/dev/shm"))


# A proc instance of the new PID namespace: ps inside sees only the job.
_PROC_OP = SetupOp(MOUNT, "/proc", src="proc", fstype="proc", flags=sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                   why="ps shows only the job")


def plan(spec: JobSpec, fs: Prepared | None = None, *, cgroups_read_only: bool = False) -> list[SetupOp]:
    """The job's mounts, in order. `cgroups_read_only`: the job's uid owns its cgroup's
    files (a delegated cgroup), so it must not be able to write them."""
    ops = [
        # Before anything else: nothing mounted below may propagate to the host (a
        # shared / would leak every tmpfs to the host). Slave, not private: a disk the
        # host unmounts later still disappears inside too.
        SetupOp(MOUNT, "/", flags=sc.MS_REC | sc.MS_SLAVE, why="no propagation to the host"),
        _PROC_OP,
    ]
    size = f",size={spec.limits.tmp_bytes}" if spec.limits.tmp_bytes else ""
    if fs is not None:
        # A descriptor names a mount of the namespace it was opened in, and the kernel
        # refuses to clone or mount on the launcher's (host) mounts from the job's new
        # namespace: each one is replaced by the same object reached in the new one.
        ops[1:1] = [SetupOp(REOPEN, r.path, dst_fd=r.fd, why="descriptors of the new namespace") for r in fs.resolved()]
        # Copied right after: a copy taken when its bind comes would carry the private
        # /tmp mounted on top of it (open_tree copies the mounts stacked at its source).
        ops[1 + len(fs.resolved()):1 + len(fs.resolved())] = [
            SetupOp(DETACH, b.src.path, src=b.src.path, src_fd=b.src.fd, why="the host's, not the private one")
            for b in fs.binds if _covered(b.src.path)
        ] + [SetupOp(DETACH, d.path, src=d.path, src_fd=d.fd, why="a device the job gets") for d in fs.devices]
    if fs is not None and fs.devices:
        ops[ops.index(_PROC_OP) + 1:ops.index(_PROC_OP) + 1] = _private_dev(fs)
    if fs is not None and fs.execute_dir is not None:
        return ops + _isolation_ops(spec, fs, size) + _cgroup_ops(spec, cgroups_read_only)
    ops.append(
        SetupOp(
            MOUNT,
            "/tmp",
            src="sandbox-tmp",
            fstype="tmpfs",
            flags=sc.MS_NOSUID | sc.MS_NODEV,
            data=f"mode=755{size}",
            why="private temporary space",
        )
    )
    for sub, _target in _TMP_SUBDIRS:
        ops.append(SetupOp(MKDIR, f"/tmp/{sub}", mode=0o1777))
    # /tmp is bound last: until then its tmpfs root is where the subdirs are found
    for sub, target in sorted(_TMP_SUBDIRS, key=lambda t: t[1] == "/tmp"):
        ops.append(SetupOp(MOUNT, target, src=f"/tmp/{sub}", flags=sc.MS_BIND, why="private temporary space"))
    return ops + (_isolation_ops(spec, fs, None) if fs is not None else []) + _cgroup_ops(spec, cgroups_read_only)


def _cgroup_ops(spec: JobSpec, read_only: bool) -> list[SetupOp]:
    if spec.user is None and not read_only:
        return []
    # A job without capabilities cannot write root's cgroup files anyway; read-only also
    # covers a cgroup delegated to the job's uid (--user of a delegated user, or the
    # delegated mode, whose job would otherwise raise its own memory.max; without
    # capabilities it cannot remount it writable). The tree stays visible so that
    # runtimes can read their limits (with the cgroup namespace, /proc/self/cgroup says "/").
    return [SetupOp(SETATTR, "/sys/fs/cgroup", attrs=sc.MOUNT_ATTR_RDONLY, why="cgroups read-only")]


_BIND_ATTRS = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
_HIDDEN_FILE_ATTRS = sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV | sc.MOUNT_ATTR_NOEXEC


def _isolation_ops(spec: JobSpec, fs: Prepared, tmp_size: str | None) -> list[SetupOp]:
    """Execute directory, binds and hides. `tmp_size` is None
    when the tmpfs /tmp of the core plan is already there (no execute directory)."""
    ops: list[SetupOp] = []
    if tmp_size is not None:
        # MOUNT_UNDER_SCRATCH: /tmp and /var/tmp are on the execute directory's disk, not
        # in RAM; /dev/shm must stay a tmpfs (POSIX shm and glibc's sem_open need one).
        for d, target in fs.scratch:
            ops.append(
                SetupOp(BIND, target, src=d.path, src_fd=d.fd, dst_fd=-1, attrs=_BIND_ATTRS, why="scratch /tmp on disk")
            )
        ops.append(
            SetupOp(
                MOUNT, "/dev/shm", src="sandbox-shm", fstype="tmpfs", flags=sc.MS_NOSUID | sc.MS_NODEV,
                data=f"mode=1777{tmp_size}", why="private shared memory",
            )
        )
    for b in fs.binds:
        attrs = _BIND_ATTRS | (sc.MOUNT_ATTR_RDONLY if b.read_only else 0)
        kind = BIND_DETACHED if _covered(b.src.path) else BIND
        ops.append(
            SetupOp(kind, b.dst.path, src=b.src.path, src_fd=b.src.fd, dst_fd=b.dst.fd, attrs=attrs, why="--bind")
        )
    for h in fs.hides:
        if h.is_dir:
            ops.append(SetupOp(EMPTY, h.path, dst_fd=h.fd, why="--hide"))
        else:
            # An empty read-only mount cannot cover a file; a nodev /dev/null can, and no
            # open of it succeeds at all.
            assert fs.devnull is not None
            ops.append(
                SetupOp(BIND, h.path, src="/dev/null", src_fd=fs.devnull.fd, dst_fd=h.fd, attrs=_HIDDEN_FILE_ATTRS,
                        why="--hide")
            )
    if fs.execute_dir is not None and fs.parent is not None:
        # Last, so the copy of the execute directory carries the binds made inside it.
        # The parent is covered by an empty tmpfs and only the execute directory is
        # mounted back: its siblings have no path left in this mount namespace.
        name = fs.execute_dir.path.rsplit("/", 1)[1]
        ops.append(
            SetupOp(EMPTY, fs.parent.path, src=fs.execute_dir.path, src_fd=fs.execute_dir.fd, dst_fd=fs.parent.fd,
                    keep=name, why="hide the other execute directories")
        )
    return ops


_DEV_ATTRS = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NOEXEC


def _private_dev(fs: Prepared) -> list[SetupOp]:
    """bubblewrap's --dev: a tmpfs /dev holding binds of chosen host nodes (nodev, so a
    node made there with mknod opens nothing), a devpts instance of its own (the host's
    terminals are not in it), and the links programs expect."""
    ops = [SetupOp(MOUNT, "/dev", src="sandbox-dev", fstype="tmpfs", flags=sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                   data="mode=755,size=64k", why="a private /dev")]
    for sub, mode in (("pts", 0o755), ("shm", 0o1777)):
        ops.append(SetupOp(MKDIR, f"/dev/{sub}", mode=mode))
    made: set[str] = {"/dev", "/dev/pts", "/dev/shm"}
    for d in fs.devices:
        parent = d.path.rsplit("/", 1)[0]
        missing = []
        while parent not in made:
            missing.append(parent)
            parent = parent.rsplit("/", 1)[0]
        for p in reversed(missing):
            ops.append(SetupOp(MKDIR, p))
            made.add(p)
        ops.append(SetupOp(FILE, d.path))
        ops.append(SetupOp(BIND_DETACHED, d.path, src=d.path, src_fd=d.fd, attrs=_DEV_ATTRS, why="--device"))
    # No gid= (as bubblewrap): in a user namespace the host's tty group is not mapped and
    # the kernel refuses the mount (EINVAL); a pty then belongs to the job's own group.
    ops.append(SetupOp(MOUNT, "/dev/pts", src="devpts", fstype="devpts", flags=sc.MS_NOSUID | sc.MS_NOEXEC,
                       data="newinstance,ptmxmode=0666,mode=620", why="terminals of its own"))
    links = (("pts/ptmx", "/dev/ptmx"), ("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
             ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"))
    ops.extend(SetupOp(SYMLINK, dst, src=src) for src, dst in links)
    return ops


def _covered(path: str) -> bool:
    return any(path == top or path.startswith(top + "/") for top in _COVERED)


def _reopen(op: SetupOp) -> None:
    """Walk the canonical path with O_NOFOLLOW at every step (it has no symlinks: the
    launcher resolved them) and require the very inode the launcher opened: a rename or
    a symlink swapped in between makes this fail, never redirect."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in [p for p in op.dst.split("/") if p]:
            nxt = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        new, old = os.fstat(fd), os.fstat(op.dst_fd)
        if (new.st_dev, new.st_ino) != (old.st_dev, old.st_ino):
            raise OSError(18, "it changed while the sandbox was being set up")  # EXDEV
        os.dup2(fd, op.dst_fd)  # the plan refers to dst_fd: same number, the new mount
    finally:
        os.close(fd)


def _execute_fd_op(op: SetupOp) -> None:
    if op.kind == REOPEN:
        _reopen(op)
    elif op.kind == BIND:
        tree = sc.open_tree_clone(op.src_fd)
        try:
            if op.attrs:
                sc.mount_setattr(tree, op.attrs)
            if op.dst_fd >= 0:
                sc.move_mount_to(tree, op.dst_fd)
            else:  # a path the sandbox owns (/tmp): no user controls any component of it
                sc.move_mount_to(tree, sc.AT_FDCWD, op.dst)
        finally:
            os.close(tree)
    elif op.kind == DETACH:
        tree = sc.open_tree_clone(op.src_fd)
        try:
            os.dup2(tree, op.src_fd)  # the plan refers to src_fd: same number, the copy
        finally:
            os.close(tree)
    elif op.kind == BIND_DETACHED:
        if op.attrs:
            sc.mount_setattr(op.src_fd, op.attrs)
        if op.dst_fd >= 0:
            sc.move_mount_to(op.src_fd, op.dst_fd)
        else:  # in a directory the sandbox made (the private /dev): nobody else controls it
            sc.move_mount_to(op.src_fd, sc.AT_FDCWD, op.dst)
    elif op.kind == EMPTY:
        attrs = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV | sc.MOUNT_ATTR_NOEXEC
        mnt = sc.new_tmpfs((("mode", "0755"), ("size", "4k")), attrs)
        try:
            if op.keep:
                os.mkdir(op.keep, 0o755, dir_fd=mnt)
            sc.mount_setattr(mnt, sc.MOUNT_ATTR_RDONLY)
            sc.move_mount_to(mnt, op.dst_fd)
            if op.keep:
                tree = sc.open_tree_clone(op.src_fd)
                try:
                    sc.move_mount_to(tree, mnt, op.keep)
                finally:
                    os.close(tree)
        finally:
            os.close(mnt)
    elif op.kind == SETATTR:
        sc.mount_setattr(sc.AT_FDCWD, op.attrs, path=op.dst)


def execute(ops: list[SetupOp]) -> None:
    """Run the plan; an OSError names the step that failed (see SetupOp.describe)."""
    for op in ops:
        try:
            if op.kind == MKDIR:
                os.mkdir(op.dst)
                os.chmod(op.dst, op.mode)  # mkdir applies the umask; a sticky 1777 must be exact
            elif op.kind == FILE:
                os.close(os.open(op.dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
            elif op.kind == SYMLINK:
                os.symlink(op.src or "", op.dst)
            elif op.kind in (BIND, EMPTY, SETATTR, REOPEN, DETACH, BIND_DETACHED):
                _execute_fd_op(op)
            else:
                sc.mount(op.src, op.dst, op.fstype, op.flags, op.data)
        except OSError as e:
            raise OSError(e.errno, f"cannot {op.describe()}: {os.strerror(e.errno or 0)}") from None
