"""The mount namespace, planned as data and then executed.

`plan()` turns a JobSpec into a list of SetupOps (bubblewrap's design), so the whole
filesystem view of a job can be checked by unit tests without root; `execute()` is a
plain loop that the job's init runs inside its new mount namespace.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from .. import syscalls as sc
from ..spec import JobSpec

MOUNT = "mount"
MKDIR = "mkdir"


class SetupOp(NamedTuple):
    kind: str  # MOUNT or MKDIR
    dst: str
    src: str | None = None
    fstype: str | None = None
    flags: int = 0
    data: str | None = None
    mode: int = 0o755
    why: str = ""

    def describe(self) -> str:
        if self.kind == MKDIR:
            return f"create directory {self.dst}"
        if self.flags & sc.MS_BIND:
            return f"bind-mount {self.src} on {self.dst}"
        if self.fstype:
            return f"mount {self.fstype} on {self.dst}"
        return f"change propagation of {self.dst}"


# The private tmpfs holds all three temporary directories, so one --tmp-size bounds them
# together; it is mounted on /tmp first and then covered by a bind of its own subdir.
_TMP_SUBDIRS = (("tmp", "/tmp"), ("var-tmp", "/var/tmp"), ("shm", "/dev/shm"))


def plan(spec: JobSpec) -> list[SetupOp]:
    ops = [
        # Before anything else: nothing mounted below may propagate to the host (a
        # shared / would leak every tmpfs to the host). Slave, not private: a disk the
        # host unmounts later still disappears inside too.
        SetupOp(MOUNT, "/", flags=sc.MS_REC | sc.MS_SLAVE, why="no propagation to the host"),
        # A proc instance of the new PID namespace: ps inside sees only the job.
        SetupOp(
            MOUNT,
            "/proc",
            src="proc",
            fstype="proc",
            flags=sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
            why="ps shows only the job",
        ),
    ]
    size = f",size={spec.limits.tmp_bytes}" if spec.limits.tmp_bytes else ""
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
    return ops


def execute(ops: list[SetupOp]) -> None:
    """Run the plan; an OSError names the step that failed (see SetupOp.describe)."""
    for op in ops:
        try:
            if op.kind == MKDIR:
                os.mkdir(op.dst)
                os.chmod(op.dst, op.mode)  # mkdir applies the umask; a sticky 1777 must be exact
            else:
                sc.mount(op.src, op.dst, op.fstype, op.flags, op.data)
        except OSError as e:
            raise OSError(e.errno, f"cannot {op.describe()}: {os.strerror(e.errno or 0)}") from None
