"""Process-tree tracking without root: /proc and connector parsing, the family, the GID
choice, the mode table, and a plan without a single namespace step."""

from __future__ import annotations

import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from sandbox import privilege, proctree, setup, spawn
from sandbox.cgroups import CgroupError
from sandbox.errors import SandboxError
from sandbox.limits import Limits
from sandbox.procscan import GidLock, scan
from sandbox.ptree import ProcessTreeJob
from sandbox.ptree_mode import ProcessTree, RootProcessTree, needs_namespace
from sandbox.spec import JobSpec
from sandbox.tracking import PidNamespaceJob
from tests.unit.test_privilege import NOT_MEMBER, _as

STAT = "{pid} ({comm}) {state} {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 {start} 1000 10 rest"


def _stat(pid: int, ppid: int, start: int = 100, state: str = "S", comm: str = "sh") -> str:
    return STAT.format(pid=pid, ppid=ppid, start=start, state=state, comm=comm)


def test_stat_is_split_after_the_last_parenthesis_of_the_command() -> None:
    p = proctree.parse_stat(_stat(42, 7, 12345, comm="a) S 1 (b"))
    assert p == proctree.Proc(42, 7, "S", 12345) and p.alive
    assert not proctree.parse_stat(_stat(43, 7, state="Z")).alive


def test_groups_and_peak_of_status() -> None:
    status = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGroups:\t27 61003 \nVmHWM:\t  2048 kB\n"
    assert proctree.parse_groups(status) == frozenset({27, 61003})
    assert proctree.parse_groups("Name:\tkthreadd\nGroups:\t\n") == frozenset()
    assert proctree.parse_status_hwm_kb(status) == 2048
    assert proctree.parse_status_hwm_kb("Name:\tkthreadd\n") is None


def test_the_marker_is_one_exact_variable_of_the_environ() -> None:
    value = proctree.marker_value("job", "ab12")
    env = b"PATH=/bin\0SANDBOX_RUN_JOB=job:ab12\0HOME=/\0"
    assert proctree.has_marker(env, value)
    assert not proctree.has_marker(b"SANDBOX_RUN_JOB=job:ab123\0", value)  # a prefix is another job
    assert not proctree.has_marker(b"X_SANDBOX_RUN_JOB=job:ab12\0", value)
    assert not proctree.has_marker(b"", value)


def test_the_family_follows_parent_chains_of_any_depth() -> None:
    # 10 is the launcher; 11 init; 12 the job; 13 a double-forked daemon reparented to 11
    parents = {1: 0, 10: 1, 11: 10, 12: 11, 13: 11, 14: 13, 20: 1, 21: 20}
    assert proctree.descendants(parents, 10) == {11, 12, 13, 14}
    assert proctree.descendants(parents, 14) == set()
    assert proctree.descendants({5: 5, 6: 5}, 5) == {6}  # a self-parented entry does not loop


def test_gid_ranges() -> None:
    assert proctree.parse_gid_range("61000-61099") == range(61000, 61100)
    assert proctree.parse_gid_range(" 61000 ") == range(61000, 61001)
    for bad in ("61099-61000", "0-10", "61000-65535", "x", "61000-", ""):
        with pytest.raises(ValueError, match="invalid GID range"):
            proctree.parse_gid_range(bad)
    assert proctree.free_gids(range(5, 9), [frozenset({5, 100}), frozenset({7})]) == [6, 8]


def _cn(what: int, payload: bytes, idx: int = proctree.CN_IDX_PROC) -> bytes:
    event = struct.pack("=IIQ", what, 0, 123) + payload
    cn = struct.pack("=IIIIHH", idx, proctree.CN_VAL_PROC, 0, 0, len(event), 0) + event
    msg = struct.pack("=IHHII", 16 + len(cn), proctree.NLMSG_DONE, 0, 0, 0) + cn
    return msg + b"\0" * (-len(msg) % 4)


def test_connector_messages_are_parsed_threads_and_foreign_ones_left_out() -> None:
    fork = _cn(proctree.PROC_EVENT_FORK, struct.pack("=IIII", 10, 10, 11, 11))
    thread = _cn(proctree.PROC_EVENT_FORK, struct.pack("=IIII", 10, 10, 12, 10))
    exit_ = _cn(proctree.PROC_EVENT_EXIT, struct.pack("=IIII", 11, 11, 0, 17))
    exec_ = _cn(proctree.PROC_EVENT_EXEC, struct.pack("=II", 13, 13))
    foreign = _cn(proctree.PROC_EVENT_FORK, struct.pack("=IIII", 1, 1, 2, 2), idx=7)
    comm = _cn(0x200, struct.pack("=II", 13, 13) + b"x" * 16)
    data = fork + thread + foreign + exit_ + comm + exec_
    assert proctree.parse_connector(data) == [
        proctree.ProcEvent("fork", 11, 10), proctree.ProcEvent("exit", 11), proctree.ProcEvent("exec", 13)]
    assert proctree.parse_connector(fork[:-6]) == []  # truncated: nothing, no exception
    assert proctree.parse_connector(b"") == []
    assert proctree.parse_connector(struct.pack("=IHHII", 8, 3, 0, 0, 0)) == []  # a length below the header


def test_the_listen_message_subscribes_to_process_events() -> None:
    msg = proctree.listen_message(77)
    length, kind, _flags, _seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, pid) == (len(msg), proctree.NLMSG_DONE, 77)
    idx, val, _s, _a, size, _f = struct.unpack_from("=IIIIHH", msg, 16)
    assert (idx, val, size) == (proctree.CN_IDX_PROC, proctree.CN_VAL_PROC, 4)
    assert struct.unpack_from("=I", msg, 36) == (proctree.PROC_CN_MCAST_LISTEN,)


def _fake_proc(root: Path, procs: dict[int, tuple[int, str, bytes, str]]) -> str:
    """pid -> (ppid, Groups: text, environ, state)"""
    for pid, (ppid, groups, environ, state) in procs.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_text(_stat(pid, ppid, state=state))
        (d / "status").write_text(f"Name:\tx\nGroups:\t{groups}\nVmHWM:\t10 kB\n")
        (d / "environ").write_bytes(environ)
    return str(root)


def test_members_are_the_tree_the_marker_and_the_gid_never_the_launcher(tmp_path: Path) -> None:
    job = ProcessTreeJob("j", token="t0k")
    job._root = 500  # the launcher
    mark = b"SANDBOX_RUN_JOB=j:t0k\0"
    job.gid = 61001
    proc = _fake_proc(tmp_path, {
        1: (0, "", mark, "S"),  # the system's init is never a member, whatever it carries
        500: (1, "", b"", "S"),
        501: (500, "", b"", "S"),  # init
        502: (501, "", mark, "S"),
        503: (1, "", mark, "S"),  # an orphan of a killed launcher: the marker
        504: (1, "61001", b"", "S"),  # dropped the marker, kept the GID
        505: (1, "61002", b"SANDBOX_RUN_JOB=j:other\0", "S"),  # another job
        506: (502, "", mark, "Z"),  # a zombie: nothing left to kill
    })
    assert sorted(job.members(proc)) == [501, 502, 503, 504]
    job.gid, job._root = None, None  # gc of a user's sandbox: the marker alone
    assert sorted(job.members(proc)) == [502, 503]


def test_a_gid_carried_by_a_process_or_locked_is_not_free(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path / "proc", {7: (1, "61000", b"", "S")})
    locks = str(tmp_path / "locks")
    held = GidLock.allocate(range(61000, 61003), locks, proc)
    assert held is not None and held.gid == 61001  # 61000: an orphan still carries it
    other = GidLock.allocate(range(61000, 61003), locks, proc)
    assert other is not None and other.gid == 61002  # 61001: held by a live launcher
    assert GidLock.allocate(range(61000, 61003), locks, proc) is None
    held.release()
    again = GidLock.allocate(range(61000, 61003), locks, proc)
    assert again is not None and again.gid == 61001
    again.release()
    other.release()


def test_the_mode_table(monkeypatch: pytest.MonkeyPatch) -> None:
    import sandbox.cgroups

    monkeypatch.setattr(sandbox.cgroups, "unusable", lambda: None)
    no_userns = "unprivileged user namespaces are disabled (user.max_user_namespaces = 0)"
    user_auto = _as(monkeypatch, 1000, 1000, 1000, refusal=NOT_MEMBER, userns=no_userns)
    assert isinstance(user_auto, ProcessTree) and no_userns in user_auto.why and NOT_MEMBER in user_auto.why
    assert type(_as(monkeypatch, 1000, 1000, 1000, refusal=NOT_MEMBER)) is privilege.Rootless
    forced = _as(monkeypatch, 1000, 1000, 1000, tracking="process-tree")  # even with the switchboard
    assert isinstance(forced, ProcessTree) and not forced.namespaces
    assert type(_as(monkeypatch, 1000, 1000, 1000, refusal=NOT_MEMBER, tracking="pidns")) is privilege.Rootless
    assert type(_as(monkeypatch, 1000, 1000, 1000, tracking="pidns")) is privilege.Rootless  # no switchboard
    with pytest.raises(SandboxError, match=r"^--tracking cgroup: this user has no cgroup \(user u may not"):
        _as(monkeypatch, 1000, 1000, 1000, refusal=NOT_MEMBER, tracking="cgroup")
    root = _as(monkeypatch, 0, 0, 0, tracking="process-tree")
    assert isinstance(root, RootProcessTree) and not root.namespaces
    assert isinstance(root.job_cgroup("j", None), ProcessTreeJob)
    assert isinstance(_as(monkeypatch, 0, 0, 0, tracking="pidns").job_cgroup("j", None), PidNamespaceJob)
    assert not isinstance(_as(monkeypatch, 0, 0, 0, userns=no_userns).job_cgroup("j", None), ProcessTreeJob)
    monkeypatch.setattr(sandbox.cgroups, "unusable", lambda: "/sys/fs/cgroup is read-only")
    with pytest.raises(SandboxError, match=r"^--tracking cgroup: /sys/fs/cgroup is read-only$"):
        _as(monkeypatch, 0, 0, 0, tracking="cgroup").check_usable()
    for p in (root, forced):
        with pytest.raises(CgroupError, match="--cgroup-parent needs a cgroup"):
            p.job_cgroup("j", "/batch")


def test_process_tree_refuses_limits_and_isolation_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _as(monkeypatch, 1000, 1000, 1000, tracking="process-tree")
    with pytest.raises(SandboxError) as e:
        p.check_limits(Limits(memory_bytes=1 << 26), best_effort=False)
    assert "\n" not in e.value.message and e.value.message.startswith("--mem cannot be enforced without a cgroup")
    assert "--limits best-effort" in e.value.message
    p.check_limits(Limits(memory_bytes=1 << 26), best_effort=True)
    spec = JobSpec(argv=("true",), name="t")
    p.check_isolation(spec)
    asked = spec._replace(hide=("/srv",), net="none", limits=Limits(tmp_bytes=1 << 20))
    with pytest.raises(SandboxError) as e:
        p.check_isolation(asked)
    assert e.value.message.startswith("--hide/--net none/--tmp-size needs a namespace") and "\n" not in e.value.message
    assert needs_namespace(spec._replace(user=object()), may_switch_user=False) == ["--user"]  # type: ignore[arg-type]
    assert needs_namespace(spec._replace(user=object()), may_switch_user=True) == []  # type: ignore[arg-type]
    assert needs_namespace(spec._replace(execute_dir="/x", binds=(("/a", "/a", True),), dev="private"), True) == [
        "--execute-dir", "--bind/--ro-bind", "--dev private"]


def test_the_plan_has_no_namespace_step_and_the_job_carries_its_marks(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = JobSpec(argv=("true",), name="t", net="none")  # refused earlier in this mode; ignored here anyway
    pipes = spawn.open_pipes()
    try:
        job = ProcessTreeJob("t", token="abc")
        job.gid = 61005
        p = _as(monkeypatch, 0, 0, 0, tracking="process-tree")
        cfg = setup.init_config(spec, None, [], [], pipes, relay=None, privilege=p, cg=job)
        assert cfg.unshare_flags == 0 and cfg.mount_ops == () and not cfg.pid_namespace
        assert cfg.env == (("SANDBOX_RUN_JOB", "t:abc"),) and cfg.extra_groups == (61005,)
        assert cfg.net_setup is None  # no network namespace to bring a loopback up in
        user = _as(monkeypatch, 1000, 1000, 1000, tracking="process-tree")
        assert setup.init_config(spec, None, [], [], pipes, relay=None, privilege=user, cg=job).no_new_privs
        ns = _as(monkeypatch, 0, 0, 0, tracking="pidns")
        cfg = setup.init_config(spec, None, [], [], pipes, relay=None, privilege=ns, cg=PidNamespaceJob("t"))
        assert cfg.unshare_flags & setup.UNSHARE_FLAGS and cfg.pid_namespace and cfg.env == ()
    finally:
        for fd in pipes:
            os.close(fd)


@pytest.mark.parametrize(("connector", "fds"), [(True, 1024), (False, 1024), (True, 8)],
                         ids=["events", "rescans", "few-descriptors"])
def test_kill_stops_and_kills_a_forking_family_and_reaps_it(monkeypatch: pytest.MonkeyPatch, connector: bool,
                                                           fds: int) -> None:
    """Real processes (our own): a setsid daemon and a fork loop below us; with the proc
    connector's events (root), with rescans alone (everyone else), and with too few
    descriptors for a pidfd per member to wait on (the next scan finds the rest)."""
    import resource

    from sandbox import procscan, ptree

    monkeypatch.setattr(resource, "getrlimit", lambda _r: (fds, fds))
    if not connector:
        monkeypatch.setattr(ptree.Connector, "open", classmethod(lambda cls: None))
    elif procscan.Connector.open() is None:
        pytest.skip("the proc connector needs CAP_NET_ADMIN")
    job = ProcessTreeJob("k")
    job._live = True  # create() would make this test process a subreaper for the session
    script = "(setsid sleep 300 &); (while :; do sleep 300 & sleep 0.01; done) & sleep 300"
    # the setsid daemon is reparented away from us (no subreaper here): its marker finds it
    sh = subprocess.Popen(["sh", "-c", script], env={**os.environ, proctree.MARKER_VAR: job.marker})
    try:
        time.sleep(0.3)
        assert len(job.members()) >= 3
        job.attach(sh.pid)
        t0 = time.monotonic()
        job.kill(10.0)
        assert time.monotonic() - t0 < 10
        assert job.members() == {}
        sh.wait(timeout=5)
        assert not [p for p, i in scan().items() if i.ppid == os.getpid() and not i.alive]  # reaped
    finally:
        if sh.poll() is None:
            sh.kill()
            sh.wait()
        job.remove_dirs()


def test_the_site_sets_the_tracking_and_the_gid_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import config

    path = tmp_path / "sandbox.toml"
    path.write_text('tracking = "process-tree"\ntracking_gids = "61000-61009"\n')
    monkeypatch.setenv("SANDBOX_CONFIG", str(path))
    opts = config.apply({"tracking": None})
    assert opts["tracking"] == "process-tree" and opts["tracking_gids"] == range(61000, 61010)
    assert config.apply({"tracking": "pidns"})["tracking"] == "pidns"  # the option wins
    rows = {k: (v, src) for k, v, src in config.describe(config.effective())}
    assert rows["tracking_gids"] == ("61000-61009", f"file:{path}")
    path.write_text('tracking_gids = "10-20"\n')
    with pytest.raises(SandboxError, match=r"tracking_gids: invalid GID range '10-20'"):
        config.load_file(str(path))


def test_a_state_record_restores_the_family_only_through_the_recorded_launcher(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox.procfs import process_start_time
    from sandbox.records import State

    monkeypatch.setenv("SANDBOX_STATE_DIR", str(tmp_path))
    me, start = os.getpid(), process_start_time(os.getpid())
    base = {"name": "pt", "uid": 0, "launcher_pid": me, "launcher_start": start, "init_host_pid": None,
            "cgroup": None, "cgroup_version": None, "cgroup_paths": {}, "tracking": "process-tree",
            "marker": "tok", "tracking_gid": None}
    job = State.from_dict(base).job_cgroup()
    assert isinstance(job, ProcessTreeJob) and job._root == me and job.marker == "pt:tok"
    assert State.from_dict({**base, "launcher_start": (start or 0) + 1}).job_cgroup()._root is None  # type: ignore[attr-defined]
    assert State.from_dict({**base, "launcher_pid": 2**22 + 7}).job_cgroup()._root is None  # type: ignore[attr-defined]
    assert isinstance(State.from_dict({**base, "tracking": None}).job_cgroup(), PidNamespaceJob)
    # the launcher gone: its GID is used only while gc holds that GID's lock
    gone = {**base, "launcher_pid": 2**22 + 7, "tracking_gid": 61007}
    held = GidLock.take(61007, str(tmp_path / "gids"))
    assert held is not None
    assert State.from_dict(gone).job_cgroup().gid is None  # type: ignore[attr-defined]  # a live launcher's now
    held.release()
    restored = State.from_dict(gone).job_cgroup()
    assert restored.gid == 61007  # type: ignore[attr-defined]
    restored.remove_dirs()
    with pytest.raises(CgroupError, match="cannot be frozen"):
        restored.freeze()


def test_a_signal_reaches_only_the_scanned_process_never_a_pid_reused_since() -> None:
    from sandbox.procscan import stat_of

    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        info = stat_of(sleeper.pid)
        assert info is not None
        # the same PID with another start time: another process by now, never signalled
        assert ProcessTreeJob._signal(info._replace(start=info.start + 1), 9) is None
        time.sleep(0.1)
        assert sleeper.poll() is None
        assert ProcessTreeJob._signal(info, 9) is None  # signalled; no pidfd kept without keep=True
        assert sleeper.wait(timeout=5) == -9
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
