"""The privilege strategy: which mode a process is in, and what each mode decides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox import privilege, userdirs
from sandbox.cgroups import CgroupError
from sandbox.cgroups.delegation import DELEGATED_FILES, Delegation, check
from sandbox.errors import SandboxError
from sandbox.limits import Limits
from sandbox.ns.user import unavailable
from sandbox.tracking import PidNamespaceJob, unenforced


def _as(
    monkeypatch: pytest.MonkeyPatch, uid: int, euid: int, egid: int, refusal: str | None = None,
    *, delegated: Delegation | str = "not delegated", userns: str | None = None, tracking: str = "auto",
) -> privilege.Privilege:
    """The mode of a process with these ids, for whom the switchboard says refusal
    (None: it serves them) and whose own cgroup is `delegated` (a str: why not)."""
    from sandbox.switchboard import client

    monkeypatch.setattr(privilege, "delegation", lambda _uid: delegated)

    def check_access(_uid: int) -> None:
        if refusal is not None:
            raise SandboxError(refusal)

    monkeypatch.setattr(client, "check_access", check_access)
    monkeypatch.setattr(os, "getuid", lambda: uid)
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    monkeypatch.setattr(os, "getegid", lambda: egid)
    from sandbox.ns import user

    monkeypatch.setattr(user, "unavailable", lambda: userns)  # why the kernel refuses one (None: it allows)
    return privilege.current(tracking)


NOT_MEMBER = "user u may not use the switchboard (/x): not a member of group 'sandbox'"


def test_effective_root_is_root(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _as(monkeypatch, 0, 0, 0)
    assert isinstance(p, privilege.Root)
    assert p.name == "root"


def test_a_user_the_switchboard_serves_goes_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _as(monkeypatch, 1000, 1000, 100)
    assert isinstance(p, privilege.SwitchboardMember)
    assert (p.uid, p.euid, p.egid) == (1000, 1000, 100)
    assert p.scratch_owner() == (1000, 100)


def test_root_may_control_any_sandbox_a_user_only_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    own = privilege.Ownership
    mine = frozenset({1000})
    root = _as(monkeypatch, 0, 0, 0)
    assert root.may_control(own(1000, 1000, mine)) and root.may_control(own(None, 5, frozenset()))
    user = _as(monkeypatch, 1000, 1000, 1000)
    assert user.may_control(own(1000, 1000, mine))  # its own, through the switchboard
    assert user.may_control(own(1000, 0, frozenset({0})))  # root ran it for this user (--user)
    assert not user.may_control(own(1001, 0, frozenset({0})))  # root ran it for another user
    assert not user.may_control(own(1001, 1001, frozenset({1001})))
    for bad in (0, None, "1000"):
        assert not user.may_control(own(bad, 1000, mine))


def test_a_forged_state_file_controls_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's own file claiming root's sandbox (root's cgroups, the user's uid): the
    kernel says those cgroups are root's, or no one's (gone), so it is refused."""
    own = privilege.Ownership
    user = _as(monkeypatch, 1000, 1000, 1000)
    assert not user.may_control(own(1000, 1000, frozenset({0})))
    assert not user.may_control(own(1000, 1000, frozenset({0, 1000})))
    assert not user.may_control(own(1000, 1000, frozenset()))
    # no cgroup at all (rootless): its running launcher must be this user's
    assert user.may_control(own(1000, 1000, frozenset(), False, 1000))
    assert not user.may_control(own(1000, 1000, frozenset(), False, 0))
    assert not user.may_control(own(1000, 1000, frozenset(), False, None))


def test_gc_reclaims_a_stale_cgroupless_sandbox_only_from_the_callers_own_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rootless sandbox whose launcher died has no launcher left to ask: its owner's gc
    may reclaim it from their own file; nobody else's may; with a cgroup, the kernel's
    owner of the cgroup still decides."""
    own = privilege.Ownership
    user = _as(monkeypatch, 1000, 1000, 1000)
    assert user.may_reclaim(own(1000, 1000, frozenset(), False, None))
    assert not user.may_reclaim(own(1001, 1001, frozenset(), False, None))
    assert not user.may_reclaim(own(1000, 1001, frozenset(), False, None))  # another's file
    assert not user.may_reclaim(own(1000, 0, frozenset(), False, None))  # root's file, no cgroup
    assert not user.may_reclaim(own(1000, 1000, frozenset({0})))  # a forged claim on root's cgroup
    assert user.may_reclaim(own(1000, 1000, frozenset({1000})))
    root = _as(monkeypatch, 0, 0, 0)
    assert root.may_reclaim(own(1000, 1000, frozenset(), False, None))


def _logind_dir_for(monkeypatch: pytest.MonkeyPatch, uid: int) -> None:
    """/run/user/UID as logind makes it (whether or not this host has one for `uid`), so
    that no test falls back to making a directory for a uid it is not."""
    real = os.lstat
    fake = os.stat_result((0o40700, 0, 0, 2, uid, uid, 0, 0, 0, 0))

    def lstat(path: object, *a: object, **kw: object) -> os.stat_result:
        return fake if path == f"/run/user/{uid}" else real(path, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(privilege.os, "lstat", lstat)


def test_built_in_locations(monkeypatch: pytest.MonkeyPatch) -> None:
    _logind_dir_for(monkeypatch, 1000)
    root = _as(monkeypatch, 0, 0, 0)
    assert root.builtin_default("state_dir") == "/run/sandbox"
    assert root.builtin_default("accounting_log") == "/var/log/sandbox/accounting.jsonl"
    assert root.builtin_default("timeout") is None
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", "/home/u/.st")
    user = _as(monkeypatch, 1000, 1000, 1000)
    assert user.builtin_default("state_dir") == "/run/user/1000/sandbox"
    assert user.builtin_default("accounting_log") == "/home/u/.st/sandbox/accounting.jsonl"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/x")
    assert user.state_dir() == "/run/user/x/sandbox"


def test_a_user_cannot_choose_the_cgroup_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    user = _as(monkeypatch, 1000, 1000, 1000)
    with pytest.raises(CgroupError, match="--cgroup-parent needs root"):
        user.job_cgroup("j", "/sys/fs/cgroup/elsewhere")


def test_init_is_handed_over_through_the_job_cgroup_in_every_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    attached: list[int] = []

    class Fake:
        def attach(self, pid: int) -> None:
            attached.append(pid)

    _as(monkeypatch, 0, 0, 0).hand_over(Fake(), 41)  # type: ignore[arg-type]
    _as(monkeypatch, 1000, 1000, 1000).hand_over(Fake(), 42)  # type: ignore[arg-type]
    _as(monkeypatch, 1000, 1000, 1000, refusal=NOT_MEMBER).hand_over(Fake(), 43)  # type: ignore[arg-type]
    assert attached == [41, 42, 43]
    # what attach does is the backend's: nothing for root's own cgroups, which init joins itself
    from sandbox.cgroups import job_cgroup

    assert job_cgroup("x", "/p").attach(44) is None


def test_root_without_a_usable_cgroup_tracks_by_pid_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    import sandbox.cgroups

    monkeypatch.setattr(sandbox.cgroups, "unusable", lambda: "/sys/fs/cgroup/memory is read-only")
    root = _as(monkeypatch, 0, 0, 0)
    assert isinstance(root.job_cgroup("j", None), PidNamespaceJob)
    assert not isinstance(root.job_cgroup("j", "/batch"), PidNamespaceJob)  # asked for: never a fallback
    with pytest.raises(SandboxError, match=r"^--mem cannot be enforced without a cgroup \(/sys/fs/cgroup/memory "
                       r"is read-only\); give the launcher a writable cgroup, or pass --limits best-effort"):
        root.check_limits(Limits(memory_bytes=1 << 20), best_effort=False)
    root.check_limits(Limits(memory_bytes=1 << 20), best_effort=True)
    monkeypatch.setattr(sandbox.cgroups, "unusable", lambda: None)
    root = _as(monkeypatch, 0, 0, 0)
    root.check_limits(Limits(memory_bytes=1 << 20), best_effort=False)
    assert not isinstance(root.job_cgroup("j", None), PidNamespaceJob)


def test_root_reclaims_at_launch_a_member_leaves_it_to_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import gc

    calls: list[float] = []
    monkeypatch.setattr(gc, "reclaim_stale", lambda kill_timeout: calls.append(kill_timeout) or [])
    _as(monkeypatch, 1000, 1000, 1000).reclaim_stale()
    assert calls == []
    _as(monkeypatch, 0, 0, 0).reclaim_stale()
    assert calls == [1.0]


def test_a_user_the_switchboard_refuses_is_rootless(monkeypatch: pytest.MonkeyPatch) -> None:
    _logind_dir_for(monkeypatch, 1000)
    p = _as(monkeypatch, 1000, 1000, 100, refusal=NOT_MEMBER)
    assert isinstance(p, privilege.Rootless) and p.name == "rootless"
    assert p.why == NOT_MEMBER
    assert isinstance(p.job_cgroup("j", None), PidNamespaceJob)
    assert p.scratch_owner() == (1000, 100)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert p.state_dir() == "/run/user/1000/sandbox"  # the user's own, as for a member


def test_rootless_refuses_limits_only_a_cgroup_enforces(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _as(monkeypatch, 1000, 1000, 1000, refusal=NOT_MEMBER)
    p.check_limits(Limits(tmp_bytes=1 << 20), best_effort=False)  # a tmpfs size: enforced anyway
    with pytest.raises(SandboxError) as e:
        p.check_limits(Limits(memory_bytes=1 << 26, cpus=1.0), best_effort=False)
    line = e.value.message
    assert "\n" not in line and e.value.exit_code == 125
    assert line.startswith("--mem/--cpus cannot be enforced without a cgroup")
    assert NOT_MEMBER in line and "--limits best-effort" in line  # the reason and the fix
    p.check_limits(Limits(memory_bytes=1 << 26, cpus=1.0), best_effort=True)


def test_cgroup_modes_enforce_every_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    every = Limits(memory_bytes=1 << 26, swap_bytes=0, pids=5, cpus=1.0, tmp_bytes=1)
    _as(monkeypatch, 0, 0, 0).check_limits(every, best_effort=False)
    _as(monkeypatch, 1000, 1000, 1000).check_limits(every, best_effort=False)


def test_rootless_has_no_cgroup_parent_to_choose(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _as(monkeypatch, 1000, 1000, 1000, refusal=NOT_MEMBER)
    with pytest.raises(CgroupError, match="--cgroup-parent needs a cgroup"):
        p.job_cgroup("j", "/batch")


def test_unenforced_names_the_options() -> None:
    assert unenforced(Limits()) == ()
    assert unenforced(Limits(memory_bytes=1, swap_bytes=0, pids=2, cpus=0.5, tmp_bytes=9)) == (
        "--mem", "--swap", "--pids", "--cpus")


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ({}, None),
        ({"kernel/unprivileged_userns_clone": "1", "user/max_user_namespaces": "100"}, None),
        ({"kernel/unprivileged_userns_clone": "0"}, "kernel.unprivileged_userns_clone = 0"),
        ({"user/max_user_namespaces": "0"}, "user.max_user_namespaces = 0"),
        ({"kernel/apparmor_restrict_unprivileged_userns": "1"}, "kernel.apparmor_restrict_unprivileged_userns = 1"),
    ],
)
def test_user_namespace_availability_from_sysctls(tmp_path: Path, files: dict[str, str], why: str | None) -> None:
    for key, value in files.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_text(value + "\n")
    found = unavailable(str(tmp_path))
    if why is None:
        assert found is None
    else:
        assert found is not None and why in found and "sysctl" in found


def test_rootless_reports_the_switchboard_refusal_and_the_kernel_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sandbox.ns import user as userns

    p = _as(monkeypatch, 1000, 1000, 1000, refusal=NOT_MEMBER)
    monkeypatch.setattr(userns, "unavailable", lambda: "unprivileged user namespaces are disabled (k = 0)")
    with pytest.raises(SandboxError, match="not a member of group 'sandbox'; and unprivileged user namespaces"):
        p.check_usable()
    monkeypatch.setattr(userns, "unavailable", lambda: None)
    p.check_usable()


def test_pid_namespace_job_kills_init_through_its_pidfd_and_counts_its_cpu() -> None:
    job = PidNamespaceJob("t")
    job.create(Limits(memory_bytes=1 << 20))
    assert job.not_enforced == ("--mem",)
    assert job.recorded_path() is None and job.recorded_version() is None and job.tracking == "pidns"
    import time

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        while time.process_time() < 0.2:
            pass
        os.write(w, b"x")  # burnt: now only waiting for the kill
        time.sleep(300)
        os._exit(0)
    os.close(w)
    try:
        job.attach(pid)
        assert job.exists()
        assert os.read(r, 1) == b"x"
        job.kill(timeout=5)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
        job.kill()  # reaped: the pidfd refers to nothing, and nothing else is signalled
        usage = job.usage()
        assert usage.cpu_user_seconds is not None and usage.cpu_system_seconds is not None
        assert usage.cpu_user_seconds + usage.cpu_system_seconds >= 0.15
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        job.remove_dirs()
        os.close(r)
    assert not job.exists()


def test_live_control_restores_a_pid_namespace_job_only_from_its_own_init() -> None:
    from sandbox.records import State

    record = State.from_dict({"name": "j", "uid": 1000, "launcher_pid": os.getpid(), "launcher_start": 1,
                              "init_host_pid": None, "cgroup": None, "cgroup_version": None, "cgroup_paths": {}})
    assert not record.job_cgroup().exists()  # no init recorded: nothing to act on
    pid = os.fork()
    if pid == 0:
        import time

        time.sleep(30)
        os._exit(0)
    try:
        # our child, but not a sandbox-init: its PID is not the sandbox's any more
        assert not PidNamespaceJob.restore("j", pid, os.getpid()).exists()
        assert not PidNamespaceJob.restore("j", pid, 1).exists()  # not the recorded launcher's
        assert not PidNamespaceJob.restore("j", 2**22 + 7, os.getpid()).exists()  # no such process
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    with pytest.raises(Exception, match="names no cgroup of its own"):
        State.from_dict({"name": "j", "uid": 1, "launcher_pid": 1, "launcher_start": 1, "init_host_pid": 2,
                         "cgroup": "/sys/fs/cgroup/x", "cgroup_version": "v2", "cgroup_paths": {}})


def _stat(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, uid, 0, 0, 0, 0))


def test_a_private_directory_is_the_users_own_and_closed() -> None:
    assert userdirs.private_to(_stat(0o040700, 1000), 1000)
    assert not userdirs.private_to(_stat(0o040700, 1001), 1000)  # made by another user first
    assert not userdirs.private_to(_stat(0o040750, 1000), 1000)
    assert not userdirs.private_to(_stat(0o041777, 1000), 1000)
    assert not userdirs.private_to(_stat(0o120777, 1000), 1000)  # a symbolic link (lstat)


def test_runtime_dir_without_xdg_falls_back_to_a_private_one(tmp_path: Path) -> None:
    uid = os.getuid()
    assert privilege.runtime_dir(uid, {"XDG_RUNTIME_DIR": "/given"}) == "/given"
    got = privilege.runtime_dir(uid, {"TMPDIR": str(tmp_path)})
    if got != f"/run/user/{uid}":  # logind's, where this machine has it
        assert got == str(tmp_path / f"sandbox-run-{uid}")
        assert userdirs.private_to(os.lstat(got), uid)
        assert privilege.runtime_dir(uid, {"TMPDIR": str(tmp_path)}) == got  # the same one again
    # a name someone else made first (here: open to all) is refused, never used
    other = tmp_path / "o"
    other.mkdir()
    (other / f"sandbox-run-{uid}").mkdir(mode=0o777)
    os.chmod(other / f"sandbox-run-{uid}", 0o777)
    if got != f"/run/user/{uid}":
        with pytest.raises(SandboxError, match="not a private directory"):
            privilege.runtime_dir(uid, {"TMPDIR": str(other)})


# -- a cgroup delegated to the user ----------------------------------------------------

D = "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/job.scope"
DELEGATED_BY_SYSTEMD = {"": 1000, "cgroup.procs": 1000, "cgroup.subtree_control": 1000, "cgroup.threads": 1000}


def test_a_cgroup_delegated_as_systemd_does_is_found() -> None:
    found = check(1000, "v2", D, DELEGATED_BY_SYSTEMD, "cpu memory pids\n")
    assert found == Delegation(D, frozenset({"cpu", "memory", "pids"}))


@pytest.mark.parametrize("name", ["", *DELEGATED_FILES])
def test_one_file_not_the_users_is_no_delegation(name: str) -> None:
    for owner in (0, 1001, None):
        why = check(1000, "v2", D, {**DELEGATED_BY_SYSTEMD, name: owner}, "cpu memory pids")
        assert isinstance(why, str) and "not delegated to uid 1000" in why
        assert (D + "/" + name if name else D) in why


def test_a_delegation_without_memory_or_pids_is_not_chosen() -> None:
    why = check(1000, "v2", D, DELEGATED_BY_SYSTEMD, "cpu pids")
    assert why == f"the delegated cgroup {D} offers no memory controller to its children"
    assert isinstance(check(1000, "v2", D, DELEGATED_BY_SYSTEMD, ""), str)


def test_a_read_only_cgroup_mount_is_no_delegation() -> None:
    """Inside a delegated sandbox's job the tree is read-only: a nested launch there is
    not delegated (it would fail to make its cgroup) and goes on without one."""
    why = check(1000, "v2", D, DELEGATED_BY_SYSTEMD, "cpu memory pids", writable=False)
    assert why == f"the cgroup {D} is on a read-only mount (inside a sandbox?)"


def test_the_hybrid_layout_is_never_delegated() -> None:
    # this machine's layout: user@UID.service's directory in the unified mount is the
    # user's, but that mount has no controllers (they are in v1, root's): no limits to promise
    unified = D.replace("/sys/fs/cgroup/", "/sys/fs/cgroup/unified/")
    why = check(1000, "hybrid", unified, DELEGATED_BY_SYSTEMD, "")
    assert why == "the controllers are in cgroup v1 hierarchies, which only root can write"
    assert isinstance(check(1000, "hybrid", unified, DELEGATED_BY_SYSTEMD, "cpu memory pids"), str)
    assert isinstance(check(1000, "v1", None, {}, None), str)


def test_find_reads_the_hybrid_layout_as_not_delegated() -> None:
    from sandbox.cgroups.delegation import find
    from sandbox.cgroups.layout import parse

    mountinfo = ("30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
                 "31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    layout = parse(mountinfo, "0::/user.slice/user-1000.slice/user@1000.service\n5:memory:/user.slice\n")
    assert find(1000, layout) == "the controllers are in cgroup v1 hierarchies, which only root can write"


def test_a_delegated_user_gets_the_delegated_mode_before_the_switchboard(monkeypatch: pytest.MonkeyPatch) -> None:
    found = Delegation(D, frozenset({"memory", "pids"}))
    for refusal in (None, NOT_MEMBER):  # chosen whether or not the switchboard would serve them
        p = _as(monkeypatch, 1000, 1000, 100, refusal=refusal, delegated=found)
        assert isinstance(p, privilege.Delegated) and p.name == "delegated"
    assert isinstance(_as(monkeypatch, 1000, 1000, 100, delegated="no"), privilege.SwitchboardMember)
    assert isinstance(_as(monkeypatch, 0, 0, 0, delegated=found), privilege.Root)
    # a setuid-other-user process makes files its euid's, not its caller's: never delegated
    assert not isinstance(_as(monkeypatch, 1000, 1001, 100, delegated=found), privilege.Delegated)


def test_the_delegated_mode_refuses_only_limits_its_cgroup_cannot_enforce(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _as(monkeypatch, 1000, 1000, 1000, delegated=Delegation(D, frozenset({"memory", "pids"})))
    p.check_limits(Limits(memory_bytes=1 << 26, swap_bytes=0, pids=5, tmp_bytes=1), best_effort=False)
    with pytest.raises(SandboxError) as e:
        p.check_limits(Limits(memory_bytes=1 << 26, cpus=1.0), best_effort=True)
    assert e.value.message.startswith(f"--cpus cannot be enforced: the delegated cgroup {D} does not offer")
    assert "\n" not in e.value.message and e.value.exit_code == 125
    with pytest.raises(CgroupError, match="--cgroup-parent needs root"):
        p.job_cgroup("j", "/batch")


def test_a_delegated_user_reclaims_their_own_stale_sandboxes_at_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import gc

    calls: list[float] = []
    monkeypatch.setattr(gc, "reclaim_stale", lambda kill_timeout: calls.append(kill_timeout) or [])
    _as(monkeypatch, 1000, 1000, 1000, delegated=Delegation(D, frozenset({"memory", "pids"}))).reclaim_stale()
    assert calls == [1.0]


def test_a_delegated_users_sandbox_is_theirs_by_its_cgroups_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _as(monkeypatch, 1000, 1000, 1000, delegated=Delegation(D, frozenset({"memory", "pids"})))
    own = privilege.Ownership
    assert p.may_control(own(1000, 1000, frozenset({1000})))
    assert not p.may_control(own(1000, 1000, frozenset({1001})))  # a state file naming another's cgroup
    assert not p.may_control(own(1001, 1001, frozenset({1001})))


def test_a_member_without_user_namespaces_keeps_the_switchboards_cgroup(monkeypatch: pytest.MonkeyPatch) -> None:
    """EL7's default (user.max_user_namespaces = 0): the switchboard still serves the
    member, so the job is tracked and limited by its cgroup, with no namespace at all."""
    from sandbox.switchboard.bare import BareMember, BareMemberCgroup

    why = "user namespaces are disabled (user.max_user_namespaces = 0)"
    p = _as(monkeypatch, 1000, 1000, 100, userns=why)
    assert isinstance(p, BareMember) and not p.namespaces and p.seccomp_needs_no_new_privs
    assert isinstance(p.job_cgroup("j", None), BareMemberCgroup)
    p.check_limits(Limits(memory_bytes=64 << 20, pids=10, cpus=0.5), best_effort=False)  # a cgroup enforces them
    with pytest.raises(SandboxError, match=r"--hide needs a namespace.*max_user_namespaces"):
        from sandbox.spec import JobSpec

        p.check_isolation(JobSpec(argv=("true",), name="j", hide=("/x",)))
    with pytest.raises(CgroupError):
        p.job_cgroup("j", "/sys/fs/cgroup/x")
    # with user namespaces, the member as before
    assert type(_as(monkeypatch, 1000, 1000, 100)) is privilege.SwitchboardMember
