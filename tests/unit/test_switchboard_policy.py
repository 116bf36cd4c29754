"""The switchboard's policy as pure functions, without root: where (hierarchies and parent
paths from mountinfo, /proc/self/cgroup and the config), how much (the request within
the configured maxima, and which limit file gets which value), and who may ask."""

from __future__ import annotations

import errno
import signal
from pathlib import Path

import pytest

from .switchboard_module import sb

HYBRID_MOUNTINFO = """\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 24 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
38 33 0:33 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
39 33 0:34 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
40 33 0:35 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
41 33 0:36 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,blkio
42 33 0:37 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,freezer
43 33 0:38 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup rw,cpuset
"""
HYBRID_CGROUP = """\
9:cpuset:/
8:freezer:/
7:blkio:/
6:pids:/
5:cpu,cpuacct:/
4:memory:/machine/job.slice
1:name=systemd:/
0::/
"""


def test_hybrid_hierarchies_are_the_wanted_v1_controllers_and_unified() -> None:
    kind, hier = sb.parse_hierarchies(HYBRID_MOUNTINFO, HYBRID_CGROUP)
    assert kind == "hybrid"
    assert hier == {
        "memory": ("/sys/fs/cgroup/memory", "/"),
        "pids": ("/sys/fs/cgroup/pids", "/"),
        "cpu": ("/sys/fs/cgroup/cpu,cpuacct", "/"),
        "blkio": ("/sys/fs/cgroup/blkio", "/"),
        "unified": ("/sys/fs/cgroup/unified", "/"),
    }  # cpuacct and freezer: the unified hierarchy does their work; cpuset, name=systemd: never


def test_pure_v1_keeps_cpuacct_and_freezer_and_v2_is_only_unified() -> None:
    v1_info = "".join(line + "\n" for line in HYBRID_MOUNTINFO.splitlines() if "cgroup2" not in line)
    kind, hier = sb.parse_hierarchies(v1_info, HYBRID_CGROUP.replace("0::/\n", ""))
    assert kind == "v1"
    assert set(hier) == {"memory", "pids", "cpu", "cpuacct", "blkio", "freezer"}
    assert hier["cpu"] == hier["cpuacct"] == ("/sys/fs/cgroup/cpu,cpuacct", "/")
    v2_info = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
    assert sb.parse_hierarchies(v2_info, "0::/user.slice\n") == ("v2", {"unified": ("/sys/fs/cgroup", "/")})


def test_hierarchies_escapes_roots_and_what_this_process_is_not_in() -> None:
    # a container: the mount shows only its own subtree; the mountpoint has an escaped space
    info = (
        "50 40 0:40 /kubepods/pod1 /sys/fs/cgroup/my\\040cg rw - cgroup2 cgroup2 rw\n"
        "51 40 0:41 / /other/cgroup2 rw - cgroup2 cgroup2 rw\n"  # the second mount: ignored
        "52 40 0:42 / /mnt/memory rw - cgroup cgroup rw,memory\n"  # not in /proc/self/cgroup
        "garbage line without separator\n"
        "53 40 0:43 / /x - \n"
    )
    assert sb.parse_hierarchies(info, "0::/\n") == ("v2", {"unified": ("/sys/fs/cgroup/my cg", "/kubepods/pod1")})
    assert sb.parse_hierarchies("", "") == ("none", {})


def test_parent_paths_default_overrides_and_mount_roots() -> None:
    hier = {"memory": ("/sys/fs/cgroup/memory", "/"), "unified": ("/c", "/kubepods/pod1")}
    cfg = {"cgroup": {"parent": "/kubepods/pod1/sb", "parents": {"memory": "/machine/job.slice/sb"}}}
    parents = sb.parent_paths(cfg, hier)
    assert parents == {
        "memory": ("/sys/fs/cgroup/memory", "machine/job.slice/sb", "/machine/job.slice/sb"),
        "unified": ("/c", "sb", "/kubepods/pod1/sb"),
    }
    assert sb.job_paths(parents, "j1") == {
        "memory": "/sys/fs/cgroup/memory/machine/job.slice/sb/sandbox-j1",
        "unified": "/c/sb/sandbox-j1",
    }
    default = sb.parent_paths({}, {"unified": ("/c", "/")})["unified"]
    assert default == ("/c", "sandbox.switchboard", "/sandbox.switchboard")


@pytest.mark.parametrize(
    "cgroup",
    [
        {"parent": "/elsewhere/sb"},  # not visible in a mount rooted at /kubepods/pod1
        {"parent": "relative"},
        {"parent": "/a/../b"},
        {"parents": {"unified": "/kubepods/pod1/../x"}},
        {"parents": []},
        [],
    ],
)
def test_bad_parent_config_is_broken(cgroup: object) -> None:
    with pytest.raises(sb.Broken):
        sb.parent_paths({"cgroup": cgroup}, {"unified": ("/c", "/kubepods/pod1")})


LIMITS_CFG = {"limits": {"max_memory_bytes": 1 << 30, "max_swap_bytes": 0, "max_pids": 512, "max_cpus": 2}}


def asked(memory: int | None = None, swap: int | None = None, pids: int | None = None,
          cpus: float | None = None) -> dict[str, int | float | None]:
    return {"memory": memory, "swap": swap, "pids": pids, "cpus": cpus}


def test_effective_limits_fill_unset_ones_with_the_maxima() -> None:
    assert sb.effective_limits(LIMITS_CFG, asked()) == asked(1 << 30, 0, 512, 2.0)
    assert sb.effective_limits(LIMITS_CFG, asked(1 << 20, 0, 10, 0.5)) == asked(1 << 20, 0, 10, 0.5)
    assert sb.effective_limits({}, asked(pids=3)) == asked(pids=3)  # no maxima: as asked


@pytest.mark.parametrize(
    ("cfg", "request_", "error"),
    [
        (LIMITS_CFG, asked(memory=(1 << 30) + 1), sb.Refusal),
        (LIMITS_CFG, asked(memory=1 << 20, swap=1), sb.Refusal),
        (LIMITS_CFG, asked(pids=513), sb.Refusal),
        (LIMITS_CFG, asked(cpus=2.5), sb.Refusal),
        ({}, asked(swap=1 << 20), sb.Refusal),  # swap needs a memory limit
        ({"limits": []}, asked(), sb.Broken),
        ({"limits": {"max_pids": -1}}, asked(), sb.Broken),
        ({"limits": {"max_pids": True}}, asked(), sb.Broken),
        ({"limits": {"max_cpus": 0}}, asked(), sb.Broken),
        ({"limits": {"max_cpus": "2"}}, asked(), sb.Broken),
    ],
)
def test_effective_limits_refusals(cfg: dict[str, object], request_: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        sb.effective_limits(cfg, request_)


def test_limit_writes_v2() -> None:
    full = asked(1 << 30, 1 << 20, 64, 0.5)
    every = ("memory", "pids", "cpu")
    assert sb.limit_writes("unified", full, every, sb.SWAP_FILES) == [
        ("memory.max", str(1 << 30)), ("memory.swap.max", str(1 << 20)),
        ("pids.max", "64"), ("cpu.max", "50000 100000"),
    ]
    # a controller the parent does not offer: nothing written for it (create refuses earlier)
    assert sb.limit_writes("unified", full, ("pids",), ()) == [("pids.max", "64")]
    assert sb.limit_writes("unified", asked(), every, sb.SWAP_FILES) == []
    # the smallest quota the kernel accepts is 1 ms per period
    assert sb.limit_writes("unified", asked(cpus=0.001), every, ()) == [("cpu.max", "1000 100000")]


def test_limit_writes_v1() -> None:
    full = asked(1 << 30, 1 << 20, 64, 1.5)
    assert sb.limit_writes("memory", full, (), sb.SWAP_FILES) == [
        ("memory.limit_in_bytes", str(1 << 30)), ("memory.memsw.limit_in_bytes", str((1 << 30) + (1 << 20))),
    ]
    assert sb.limit_writes("pids", full, (), ()) == [("pids.max", "64")]
    assert sb.limit_writes("cpu", full, (), ()) == [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "150000")]
    for key in ("cpuacct", "blkio", "freezer"):
        assert sb.limit_writes(key, full, (), sb.SWAP_FILES) == []  # never a limit file there
    # swap 0 without swap accounting: nothing to bound; swap asked for: refused, not ignored
    assert sb.limit_writes("memory", asked(1 << 30, 0), (), ()) == [("memory.limit_in_bytes", str(1 << 30))]
    with pytest.raises(sb.Refusal, match="swap accounting"):
        sb.limit_writes("memory", full, (), ())
    with pytest.raises(sb.Refusal, match="swap accounting"):
        sb.limit_writes("unified", full, ("memory",), ())


def test_controllers_to_enable() -> None:
    assert sb.controllers_to_enable("cpuset cpu io memory hugetlb pids rdma\n", {"cpu"}) == ["memory", "pids", "io"]
    assert sb.controllers_to_enable("", set()) == []
    assert sb.controllers_to_enable("memory pids cpu io", {"memory", "pids", "cpu", "io"}) == []


GROUPS = {"sandbox": 990, "batch": 991}


def test_who_may_call() -> None:
    cfg = {"allowed_users": ["alice"], "allowed_groups": ["sandbox", "no-such-group"]}
    gid_of = GROUPS.get
    assert sb.may_call(cfg, 0, "root", set(), gid_of)  # root always
    assert sb.may_call(cfg, 1000, "alice", {1000}, gid_of)  # by name
    assert sb.may_call(cfg, 1001, "bob", {1001, 990}, gid_of)  # by a supplementary group
    assert not sb.may_call(cfg, 1001, "bob", {1001, 991}, gid_of)
    assert not sb.may_call({}, 1000, "alice", {990}, gid_of)  # nothing configured: nobody
    assert not sb.may_call({"allowed_groups": ["no-such-group"]}, 1, "x", {1}, lambda name: None)
    with pytest.raises(sb.Broken):
        sb.may_call({"allowed_users": "alice"}, 1000, "alice", set(), gid_of)


def test_execute_roots() -> None:
    roots = ["/home", "/var/lib/condor/execute/"]
    assert sb.under_execute_root(roots, "/home")
    assert sb.under_execute_root(roots, "/home/alice/job")
    assert sb.under_execute_root(roots, "/var/lib/condor/execute/dir_1")
    assert not sb.under_execute_root(roots, "/homework")  # a prefix of the name is not a parent
    assert not sb.under_execute_root(roots, "/var/lib/condor")
    assert not sb.under_execute_root([], "/home/alice")


def test_log_is_one_appended_line_per_entry(tmp_path: Path) -> None:
    path = tmp_path / "sb.log"
    log = sb.Log({"log_file": str(path)})
    assert not log.syslog  # a configured file wins over syslog
    log.write("first")
    log.write("second")
    lines = path.read_text().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["first", "second"]
    assert path.stat().st_mode & 0o777 == 0o600
    # a symlink planted at the log path is not followed
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        log.write("third")
    assert not (tmp_path / "elsewhere").exists()


STATUS = ("Name:\tsandbox-init\nState:\tS (sleeping)\nTracerPid:\t{tracer}\nUid:\t1000\t1000\t1000\t1000\n"
          "Threads:\t{threads}\n")


def test_status_fields_for_the_pin() -> None:
    text = STATUS.format(tracer=0, threads=1)
    assert sb.status_field(text, "Threads") == "1"
    assert sb.status_field(text, "TracerPid") == "0"
    assert sb.status_field(text, "Tgid") is None
    assert sb.status_field("", "Threads") is None


@pytest.mark.parametrize(
    ("err", "status", "yama", "why"),
    [
        # another tracer holds it: refused, never moved unpinned (pre-tracing would evade the pin)
        (errno.EPERM, STATUS.format(tracer=4242, threads=1), None, "is being traced (by PID 4242)"),
        (errno.EPERM, STATUS.format(tracer=4242, threads=1), "3", "is being traced (by PID 4242)"),
        (errno.EPERM, STATUS.format(tracer=0, threads=1), "3", "Yama kernel.yama.ptrace_scope = 3"),
        (errno.EPERM, STATUS.format(tracer=0, threads=1), "1", "cannot pin process 7 for the move (ptrace: "),
        (errno.ESRCH, STATUS.format(tracer=0, threads=1), None, "no process 7"),
        (errno.EPERM, "", None, "no process 7"),  # gone meanwhile
    ],
)
def test_seize_refusal_names_why(err: int, status: str, yama: str | None, why: str) -> None:
    text = sb.seize_refusal(7, err, status, yama)
    assert why in text and "\n" not in text, text


def test_a_held_signal_is_handed_back_at_detach() -> None:
    stop = lambda sig, event=0: (event << 16) | (sig << 8) | 0x7F  # noqa: E731 (a waitpid status)
    assert sb.reinjected_signal(stop(signal.SIGTERM)) == signal.SIGTERM  # signal-delivery-stop
    assert sb.reinjected_signal(stop(signal.SIGTRAP, sb.PTRACE_EVENT_STOP)) == 0  # our PTRACE_INTERRUPT
    assert sb.reinjected_signal(stop(signal.SIGSTOP, sb.PTRACE_EVENT_STOP)) == 0  # a group-stop resumes by itself
    assert sb.reinjected_signal(signal.SIGKILL) == 0  # killed: not a stop
