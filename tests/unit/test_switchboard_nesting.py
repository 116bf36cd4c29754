"""The switchboard's containment policy without root: where a member's sandbox goes (inside
the caller's own cgroup), how far its limits go (never above what encloses it), which
process may be attached (only one sitting where the caller sits), and a teardown walk
that a deep tree cannot run out of descriptors."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from .switchboard_module import HELPER, sb

HIER = {
    "memory": ("/sys/fs/cgroup/memory", "/"),
    "pids": ("/sys/fs/cgroup/pids", "/"),
    "unified": ("/sys/fs/cgroup/unified", "/"),
}
IN_STEP = """\
6:pids:/
4:memory:/slurm/uid_1000/job_7/step_0
0::/
"""
CFG = {"cgroup": {"parent": "/sandbox.switchboard"}}


def test_nested_in_the_callers_cgroup_configured_parent_only_at_the_root() -> None:
    parents, nested = sb.nested_parents(sb.parent_paths(CFG, HIER), HIER, IN_STEP)
    assert nested == {"memory"}
    assert parents["memory"] == ("/sys/fs/cgroup/memory", "slurm/uid_1000/job_7/step_0", "/slurm/uid_1000/job_7/step_0")
    assert parents["pids"] == ("/sys/fs/cgroup/pids", "sandbox.switchboard", "/sandbox.switchboard")
    assert sb.job_paths(parents, "j")["memory"] == "/sys/fs/cgroup/memory/slurm/uid_1000/job_7/step_0/sandbox-j"


def test_nesting_respects_the_mount_root() -> None:
    hier = {"unified": ("/sys/fs/cgroup", "/kubepods/pod1")}
    parents, nested = sb.nested_parents(sb.parent_paths({"cgroup": {"parent": "/kubepods/pod1/sb"}}, hier), hier,
                                        "0::/kubepods/pod1/c1\n")
    assert nested == {"unified"} and parents["unified"] == ("/sys/fs/cgroup", "c1", "/kubepods/pod1/c1")
    with pytest.raises(sb.Refusal, match="not visible"):
        sb.nested_parents(sb.parent_paths({"cgroup": {"parent": "/kubepods/pod1/sb"}}, hier), hier, "0::/other\n")


@pytest.mark.parametrize("bad", ["/a/../b", "/a//b", "/a/./b"])
def test_nesting_refuses_an_odd_cgroup_path(bad: str) -> None:
    with pytest.raises(sb.Refusal, match="normalized"):
        sb.nested_parents(sb.parent_paths(CFG, HIER), HIER, f"4:memory:{bad}\n")


SANDBOX_JOB = """\
6:pids:/sandbox.switchboard/sandbox-job
4:memory:/slurm/uid_1000/job_7/step_0/sandbox-job
0::/sandbox.switchboard/sandbox-job
"""
SUB = IN_STEP.replace("step_0", "step_0/mine")


@pytest.mark.parametrize(
    ("pid_cgroup", "ok"),
    [
        (IN_STEP, True),  # where the caller (the launcher's agent) sits: init, before the move
        (SANDBOX_JOB, False),  # in another sandbox (root's --user job of the same uid)
        (SUB, False),  # below the caller: not where the launcher forks init
        ("6:pids:/\n4:memory:/slurm/uid_1000/job_8/step_0\n0::/\n", False),  # another batch job of the caller
        ("6:pids:/\n0::/\n", False),  # not in the hierarchy at all
        ("", False),  # gone
    ],
)
def test_attach_only_from_where_the_caller_sits(pid_cgroup: str, ok: bool) -> None:
    why = sb.may_attach(pid_cgroup, IN_STEP, ("memory", "pids", "unified"))
    assert (why is None) == ok, why


def test_enclosing_limits_take_the_tightest_ancestor() -> None:
    found = [("memory", "9223372036854771712\n"), ("memory", "104857600\n"), ("memory", "max\n"),
             ("memory", "209715200\n"), ("pids", "max\n"), ("pids", "50\n"), ("pids", "")]
    assert sb.enclosing_limits(found) == {"memory": 100 << 20, "pids": 50}
    assert sb.enclosing_limits([("memory", "max")]) == {}


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("50000 100000\n", 0.5), ("max 100000\n", None), ("-1 100000", None), ("25000 50000", 0.5),
     ("150000 100000", 1.5), ("", None), ("0 100000", None), ("100000 0", None), ("100000", None),
     ("-1 ", None), ("x 100000", None)],
)
def test_parse_cpu_quota(text: str, cpus: float | None) -> None:
    """v2 cpu.max as it is; v1 cfs quota and period read together ("QUOTA PERIOD")."""
    assert sb.parse_cpu_quota(text) == cpus


def test_the_tightest_enclosing_cpu_quota_bounds_what_the_job_gets_and_is_not_refused() -> None:
    found = [("cpus", "-1 100000"), ("cpus", "150000 100000"), ("cpus", "25000 50000"), ("cpus", "max 100000"),
             ("memory", "max\n")]
    assert sb.enclosing_limits(found) == {"cpus": 0.5}
    cfg = {"limits": {"max_cpus": 2}}
    # above the enclosing quota: the job gets the enclosing one (a rate: not refused, as for root)
    assert sb.effective_limits(cfg, asked(cpus=2), {"cpus": 0.5})["cpus"] == 0.5
    assert sb.effective_limits(cfg, asked(), {"cpus": 0.5})["cpus"] == 0.5  # unset: the tighter
    assert sb.effective_limits(cfg, asked(cpus=0.25), {"cpus": 0.5})["cpus"] == 0.25
    assert sb.effective_limits({}, asked(), {"cpus": 0.5})["cpus"] == 0.5
    with pytest.raises(sb.Refusal, match="above the maximum 2"):  # the configured maximum still holds
        sb.effective_limits(cfg, asked(cpus=3), {"cpus": 0.5})


@pytest.mark.parametrize(
    ("key", "cpus", "enclosing", "own"),
    [
        ("cpu", 2.0, 0.5, None),  # v1 refuses a child quota above an ancestor's: none of its own
        ("cpu", 0.5, 0.5, None),  # as root's launcher: not below it, none
        ("cpu", 0.25, 0.5, 0.25),
        ("cpu", 2.0, None, 2.0),
        ("cpu", None, 0.5, None),
        ("unified", 2.0, 0.5, 2.0),  # v2 takes it; the ancestor's bounds the job
        ("unified", None, 0.5, None),
    ],
)
def test_own_cpu_quota_is_roots(key: str, cpus: float | None, enclosing: float | None, own: float | None) -> None:
    assert sb.own_cpu_quota(key, cpus, enclosing) == own
    if key == "cpu" and cpus is not None:
        writes = sb.limit_writes("cpu", asked(cpus=own), (), ())
        assert writes == ([] if own is None else [("cpu.cfs_period_us", "100000"),
                                                   ("cpu.cfs_quota_us", str(round(own * 100000)))])


def asked(memory: int | None = None, swap: int | None = None, pids: int | None = None,
          cpus: float | None = None) -> dict[str, int | float | None]:
    return {"memory": memory, "swap": swap, "pids": pids, "cpus": cpus}


LIMITS_CFG = {"limits": {"max_memory_bytes": 1 << 30, "max_pids": 512}}


def test_enclosing_limits_bound_unset_and_refuse_above() -> None:
    enclosing = {"memory": 100 << 20, "pids": 50}
    # unset: the tighter of the configured maximum and what encloses the caller
    assert sb.effective_limits(LIMITS_CFG, asked(), enclosing) == asked(100 << 20, None, 50, None)
    assert sb.effective_limits(LIMITS_CFG, asked(), {"memory": 2 << 30}) == asked(1 << 30, None, 512, None)
    assert sb.effective_limits(LIMITS_CFG, asked(10 << 20), enclosing)["memory"] == 10 << 20
    with pytest.raises(sb.Refusal, match="above the enclosing cgroup's limit"):
        sb.effective_limits(LIMITS_CFG, asked(200 << 20), enclosing)
    with pytest.raises(sb.Refusal, match="above the enclosing cgroup's limit 50"):
        sb.effective_limits(LIMITS_CFG, asked(pids=51), enclosing)


def test_a_nested_v1_sandbox_without_a_tighter_limit_shares_the_callers_memory_cgroup() -> None:
    """v1 counts an OOM kill only in the victim's own memory cgroup, where a batch system
    looks (Slurm's step): a sandbox that asks for nothing tighter stays in the caller's."""
    step = {"memory": 200 << 20}
    assert sb.shares_memory({"memory", "pids"}, None, step, 200 << 20)
    assert not sb.shares_memory({"memory"}, 100 << 20, step, 100 << 20)  # its own, tighter limit
    assert not sb.shares_memory({"memory"}, None, step, 64 << 20)  # the configured maximum is tighter
    assert not sb.shares_memory({"memory"}, None, {}, 1 << 30)  # nothing encloses the caller
    assert not sb.shares_memory({"pids"}, None, step, 200 << 20)  # at the root of the memory hierarchy
    assert not sb.shares_memory({"unified"}, None, step, 200 << 20)  # v2: counted where Slurm looks anyway


def _deep(root: Path, depth: int) -> Path:
    d = root
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            name = f"d{i % 10}"
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if i % 100 == 0:
                os.mkdir("side", dir_fd=fd)
                with open(os.open("cgroup.procs", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
                    f.write(f"{i + 2}\n")
    finally:
        os.close(fd)
    return d


def test_walks_of_a_deep_tree_hold_few_descriptors(tmp_path: Path) -> None:
    """1,100 levels (as a hostile job nests them) with RLIMIT_NOFILE at 64: the pids are all
    found and every directory removed (cgroup.procs stand in as plain files here, which
    the real rmdir of cgroupfs does not need to remove)."""
    top = tmp_path / "sandbox-x"
    top.mkdir()
    _deep(top, 1100)
    code = f"""
import importlib.util, os, resource
spec = importlib.util.spec_from_file_location("h", {str(HELPER)!r}); sb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sb)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
fd = os.open({str(top)!r}, os.O_RDONLY | os.O_DIRECTORY)
pids = sb._procs(fd)
print(sorted(pids) == [i + 2 for i in range(0, 1100, 100)])
os.close(fd)
real_rmdir = os.rmdir
def rmdir(name, dir_fd):  # plain directories: drop the stand-in file first, as cgroupfs needs not
    try:
        os.unlink(name + "/cgroup.procs", dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    real_rmdir(name, dir_fd=dir_fd)
sb.os.rmdir = rmdir
pfd = os.open({str(tmp_path)!r}, os.O_RDONLY | os.O_DIRECTORY)
sb._rmdir_tree(pfd, "sandbox-x", float("inf"))
print(os.listdir({str(tmp_path)!r}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["True", "[]"], r.stdout
    assert resource.getrlimit(resource.RLIMIT_NOFILE)  # (the limit was the child's only)


def test_per_member_cap() -> None:
    assert sb.member_cap({}) is None and sb.member_cap({"limits": {"max_sandboxes_per_member": 4}}) == 4
    with pytest.raises(sb.Broken):
        sb.member_cap({"limits": {"max_sandboxes_per_member": -1}})
    assert sb.cap_refusal(None, 10**6) is None
    assert sb.cap_refusal(4, 3) is None
    assert sb.cap_refusal(4, 4) == "this user already has 4 live sandboxes (at most 4 per member)"
    assert sb.cap_refusal(0, 0) is not None


def test_a_caller_moved_into_its_leaf_nests_beside_it() -> None:
    """On v2 a busy caller's cgroup has its processes moved into `sandbox.leaf` (as the
    package's backend does as root): later requests come from the leaf and mean its parent."""
    hier = {"unified": ("/sys/fs/cgroup", "/")}
    parents, nested = sb.nested_parents(sb.parent_paths(CFG, hier), hier, "0::/batch/slot1/sandbox.leaf\n")
    assert nested == {"unified"} and parents["unified"][1:] == ("batch/slot1", "/batch/slot1")
