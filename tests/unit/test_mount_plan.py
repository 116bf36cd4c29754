"""The mount namespace as a plan (data): checked without root or namespaces."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from sandbox import syscalls as sc
from sandbox.limits import Limits
from sandbox.ns import mount as mountns
from sandbox.ns.mount import MKDIR, MOUNT, SetupOp, execute, plan
from sandbox.spec import JobSpec

TMP_TARGETS = ("/tmp", "/var/tmp", "/dev/shm")


def spec(**limits: int) -> JobSpec:
    return JobSpec(argv=("true",), name="t", limits=Limits(**limits))


def test_first_step_stops_propagation() -> None:
    """Nothing may be mounted before / is made a recursive slave: with a shared /, every
    later mount would appear on the host."""
    ops = plan(spec())
    first = ops[0]
    assert first.kind == MOUNT and first.dst == "/"
    assert first.flags & sc.MS_REC and first.flags & sc.MS_SLAVE
    assert first.flags == sc.MS_REC | sc.MS_SLAVE  # no bind, move or remount alongside
    assert first.fstype is None and first.src is None
    # no other op touches propagation or the root
    assert all(op.dst != "/" for op in ops[1:])


def test_proc_is_a_new_instance() -> None:
    ops = plan(spec())
    procs = [op for op in ops if op.dst == "/proc"]
    assert len(procs) == 1
    (proc,) = procs
    assert proc.fstype == "proc" and not proc.flags & sc.MS_BIND
    assert proc.flags & sc.MS_NOSUID and proc.flags & sc.MS_NODEV and proc.flags & sc.MS_NOEXEC


def test_one_private_tmpfs_for_all_temporary_dirs() -> None:
    ops = plan(spec())
    tmpfs = [op for op in ops if op.fstype == "tmpfs"]
    assert len(tmpfs) == 1
    assert tmpfs[0].flags & sc.MS_NOSUID and tmpfs[0].flags & sc.MS_NODEV
    assert "size=" not in (tmpfs[0].data or "")
    # each target is bound, last, from a sticky world-writable directory of that tmpfs
    binds = {op.dst: op for op in ops if op.kind == MOUNT and op.flags & sc.MS_BIND}
    assert set(binds) == set(TMP_TARGETS)
    dirs = {op.dst: op for op in ops if op.kind == MKDIR}
    for target, bind in binds.items():
        assert bind.src in dirs, target
        assert dirs[bind.src].mode == 0o1777
        assert bind.src.startswith(tmpfs[0].dst + "/")
        assert not bind.flags & sc.MS_REC


def test_order_tmpfs_then_dirs_then_binds_with_tmp_last() -> None:
    ops = plan(spec())
    index = {(op.kind, op.dst, op.src): i for i, op in enumerate(ops)}
    tmpfs_i = next(i for i, op in enumerate(ops) if op.fstype == "tmpfs")
    mkdirs = [i for i, op in enumerate(ops) if op.kind == MKDIR]
    binds = [i for i, op in enumerate(ops) if op.flags & sc.MS_BIND]
    assert tmpfs_i < min(mkdirs) and max(mkdirs) < min(binds)
    # the bind on /tmp hides the tmpfs root: every source must have been used before it
    assert ops[binds[-1]].dst == "/tmp"
    assert len(index) == len(ops)


def test_tmp_size_bounds_the_tmpfs() -> None:
    ops = plan(spec(tmp_bytes=64 << 20))
    (tmpfs,) = [op for op in ops if op.fstype == "tmpfs"]
    assert f"size={64 << 20}" in (tmpfs.data or "").split(",")


def test_other_limits_do_not_change_the_plan() -> None:
    assert plan(spec(memory_bytes=1 << 30, pids=10)) == plan(spec())


def test_describe() -> None:
    assert SetupOp(MKDIR, "/tmp/x").describe() == "create directory /tmp/x"
    assert SetupOp(MOUNT, "/a", src="/b", flags=sc.MS_BIND).describe() == "bind-mount /b on /a"
    assert SetupOp(MOUNT, "/tmp", src="x", fstype="tmpfs").describe() == "mount tmpfs on /tmp"
    assert SetupOp(MOUNT, "/", flags=sc.MS_REC | sc.MS_SLAVE).describe() == "change propagation of /"


def test_every_op_says_why_or_is_a_mkdir() -> None:
    for op in plan(spec()):
        assert op.kind == MKDIR or op.why


def test_execute_runs_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(mountns.sc, "mount", lambda *a: calls.append(("mount", *a)))
    d = tmp_path / "sticky"
    old = os.umask(0o077)
    try:
        execute([
            SetupOp(MOUNT, "/x", src="s", fstype="tmpfs", flags=2, data="size=1"),
            SetupOp(MKDIR, str(d), mode=0o1777),
            SetupOp(MOUNT, "/y", src=str(d), flags=sc.MS_BIND),
        ])
    finally:
        os.umask(old)
    assert calls == [("mount", "s", "/x", "tmpfs", 2, "size=1"), ("mount", str(d), "/y", None, sc.MS_BIND, None)]
    # exact mode despite the umask
    assert (d.stat().st_mode & 0o7777) == 0o1777


def test_execute_names_the_failed_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_a: object) -> None:
        raise OSError(errno.EPERM, "mount: Operation not permitted")

    monkeypatch.setattr(mountns.sc, "mount", fail)
    with pytest.raises(OSError) as e:
        execute([SetupOp(MKDIR, str(tmp_path / "a")), SetupOp(MOUNT, "/var/tmp", src="/tmp/v", flags=sc.MS_BIND)])
    assert e.value.errno == errno.EPERM
    assert str(e.value.strerror) == "cannot bind-mount /tmp/v on /var/tmp: Operation not permitted"
    with pytest.raises(OSError) as e:
        execute([SetupOp(MKDIR, str(tmp_path / "missing" / "b"))])
    assert e.value.strerror == f"cannot create directory {tmp_path / 'missing' / 'b'}: No such file or directory"
