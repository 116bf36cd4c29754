"""The isolation part of the mount plan, as data: no root, no mounts."""

from __future__ import annotations

from sandbox import syscalls as sc
from sandbox.credentials import Credentials
from sandbox.ns import mount as m
from sandbox.paths import Bind, Prepared, Resolved
from sandbox.spec import JobSpec

EX = Resolved("/var/lib/condor/execute/dir_1", 10, True)
PARENT = Resolved("/var/lib/condor/execute", 11, True)
TMP = Resolved("/var/lib/condor/execute/dir_1/.sandbox-tmp", 12, True)
VTMP = Resolved("/var/lib/condor/execute/dir_1/.sandbox-var-tmp", 13, True)
NOBODY = Credentials(65534, 65534, (65534,), "nobody")


def prepared(**kw: object) -> Prepared:
    base = dict(execute_dir=EX, parent=PARENT, scratch=((TMP, "/tmp"), (VTMP, "/var/tmp")))
    base.update(kw)
    return Prepared(**base)  # type: ignore[arg-type]


def test_without_isolation_the_plan_is_the_core_one() -> None:
    spec = JobSpec(argv=("true",), name="t")
    assert m.plan(spec) == m.plan(spec, None)
    assert all(op.kind in (m.MOUNT, m.MKDIR) for op in m.plan(spec))


def test_every_descriptor_is_reopened_first_in_the_new_namespace() -> None:
    ops = m.plan(JobSpec(argv=("true",), name="t"), prepared())
    assert ops[0].dst == "/" and ops[0].flags & sc.MS_SLAVE
    reopen = [op for op in ops if op.kind == m.REOPEN]
    assert ops[1 : 1 + len(reopen)] == reopen
    assert {(op.dst, op.dst_fd) for op in reopen} == {(r.path, r.fd) for r in (EX, PARENT, TMP, VTMP)}


def test_scratch_tmp_on_disk_and_shm_in_ram() -> None:
    spec = JobSpec(argv=("true",), name="t")
    ops = m.plan(spec, prepared())
    binds = {op.dst: op for op in ops if op.kind == m.BIND}
    assert binds["/tmp"].src_fd == TMP.fd and binds["/var/tmp"].src_fd == VTMP.fd
    assert binds["/tmp"].attrs & sc.MOUNT_ATTR_NOSUID
    shm = [op for op in ops if op.dst == "/dev/shm"]
    assert len(shm) == 1 and shm[0].fstype == "tmpfs"
    assert not [op for op in ops if op.fstype == "tmpfs" and op.dst == "/tmp"]  # no RAM /tmp


def test_tmp_size_bounds_shm_with_execute_dir() -> None:
    from sandbox.limits import Limits

    ops = m.plan(JobSpec(argv=("true",), name="t", limits=Limits(tmp_bytes=1 << 20)), prepared())
    (shm,) = [op for op in ops if op.dst == "/dev/shm"]
    assert shm.data is not None and "size=1048576" in shm.data


def test_parent_hidden_last_keeping_only_the_execute_dir() -> None:
    b = Bind(Resolved("/data", 20, True), Resolved(EX.path + "/data", 21, True), True)
    ops = m.plan(JobSpec(argv=("true",), name="t"), prepared(binds=(b,)))
    empties = [i for i, op in enumerate(ops) if op.kind == m.EMPTY]
    (i,) = empties
    hide = ops[i]
    assert hide.dst_fd == PARENT.fd and hide.src_fd == EX.fd and hide.keep == "dir_1"
    # the bind inside the execute dir comes before its copy is made
    bind_at = next(j for j, op in enumerate(ops) if op.kind == m.BIND and op.dst_fd == 21)
    assert bind_at < i
    assert ops[bind_at].attrs & sc.MOUNT_ATTR_RDONLY


def test_hide_dirs_and_files() -> None:
    devnull = Resolved("/dev/null", 30, False)
    fs = Prepared(hides=(Resolved("/etc/ssh", 31, True), Resolved("/etc/passwd", 32, False)), devnull=devnull)
    ops = m.plan(JobSpec(argv=("true",), name="t"), fs)
    (d,) = [op for op in ops if op.kind == m.EMPTY]
    assert d.dst_fd == 31 and not d.keep
    (f,) = [op for op in ops if op.kind == m.BIND]
    assert f.src_fd == 30 and f.dst_fd == 32
    assert f.attrs & sc.MOUNT_ATTR_NODEV and f.attrs & sc.MOUNT_ATTR_RDONLY
    # without an execute dir the core tmpfs /tmp stays
    assert [op for op in ops if op.fstype == "tmpfs" and op.dst == "/tmp"]


def test_user_makes_cgroup_tree_read_only() -> None:
    ops = m.plan(JobSpec(argv=("true",), name="t", user=NOBODY), Prepared())
    (op,) = [op for op in ops if op.kind == m.SETATTR]
    assert op.dst == "/sys/fs/cgroup" and op.attrs == sc.MOUNT_ATTR_RDONLY
    assert not [op for op in m.plan(JobSpec(argv=("true",), name="t"), Prepared()) if op.kind == m.SETATTR]


def test_a_job_that_owns_its_cgroup_sees_the_cgroup_tree_read_only() -> None:
    """The delegated mode: the job runs as the user who owns its limit files."""
    ops = m.plan(JobSpec(argv=("true",), name="t"), Prepared(), cgroups_read_only=True)
    (op,) = [op for op in ops if op.kind == m.SETATTR]
    assert op.dst == "/sys/fs/cgroup" and op.attrs == sc.MOUNT_ATTR_RDONLY
    from sandbox import privilege

    assert privilege.Delegated.job_owns_its_cgroup
    assert not any(c.job_owns_its_cgroup for c in (privilege.Root, privilege.SwitchboardMember, privilege.Rootless))


def test_describe_names_user_paths_not_descriptors() -> None:
    for op in m.plan(JobSpec(argv=("true",), name="t"), prepared()):
        assert "/proc/self/fd" not in op.describe()


def test_a_bind_of_a_covered_directory_is_copied_before_it_is_covered() -> None:
    host_tmp = Resolved("/tmp/data", 20, True)
    other = Resolved("/srv/data", 21, True)
    dst1, dst2 = Resolved("/mnt/a", 22, True), Resolved("/mnt/b", 23, True)
    for fs in (prepared(binds=(Bind(host_tmp, dst1, False), Bind(other, dst2, True))),
               Prepared(binds=(Bind(host_tmp, dst1, False), Bind(other, dst2, True)))):
        ops = m.plan(JobSpec(argv=("true",), name="t"), fs)
        kinds = [op.kind for op in ops]
        detach = kinds.index(m.DETACH)
        assert ops[detach].src_fd == 20 and kinds.count(m.DETACH) == 1
        assert detach == max(i for i, k in enumerate(kinds) if k == m.REOPEN) + 1
        covering = [i for i, op in enumerate(ops) if op.dst == "/tmp" and i != detach]
        assert covering and detach < min(covering)
        moved = next(op for op in ops if op.kind == m.BIND_DETACHED)
        assert (moved.src_fd, moved.dst_fd) == (20, 22)
        assert next(op for op in ops if op.kind == m.BIND and op.why == "--bind").src_fd == 21  # copied when bound
