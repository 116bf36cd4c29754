"""The switchboard's policy for `sandbox gc` of a member's sandboxes and for the caps on
the sum of a member's limits, as pure functions without root: which directories a state
file may aim reclaim at, whose they are, when a launcher counts as dead, and how much a
member's live sandboxes hold together."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox import gc_members

from .switchboard_module import sb

HIER = {"unified": ("/sys/fs/cgroup/unified", "/"), "memory": ("/sys/fs/cgroup/memory", "/"),
        "pids": ("/sys/fs/cgroup/pids", "/batch")}  # pids: a mount showing only /batch


def test_stale_parents_are_where_the_state_says_inside_our_hierarchies() -> None:
    got = sb.stale_parents({"unified": "/sys/fs/cgroup/unified/slot/sandbox-j",
                            "memory": "/sys/fs/cgroup/memory/sandbox-j",
                            "pids": "/sys/fs/cgroup/pids/s1/sandbox-j"}, HIER, "j")
    assert got == {"unified": ("/sys/fs/cgroup/unified", "slot", "/slot"),
                   "memory": ("/sys/fs/cgroup/memory", "", "/"),
                   "pids": ("/sys/fs/cgroup/pids", "s1", "/batch/s1")}
    assert sb.job_paths(got, "j")["unified"] == "/sys/fs/cgroup/unified/slot/sandbox-j"


@pytest.mark.parametrize("paths,why", [
    ({}, "names no cgroup"),
    (None, "names no cgroup"),
    ({"cpuset": "/sys/fs/cgroup/cpuset/sandbox-j"}, "outside this host's hierarchies"),
    ({"unified": 7}, "outside this host's hierarchies"),
    ({"unified": "/etc/sandbox-j"}, "not a normalized path in the unified hierarchy"),
    ({"unified": "/sys/fs/cgroup/unifiedx/sandbox-j"}, "not a normalized path"),
    ({"unified": "/sys/fs/cgroup/unified/../memory/sandbox-j"}, "not a normalized path"),
    ({"unified": "/sys/fs/cgroup/unified/a//sandbox-j"}, "not a normalized path"),
    ({"unified": "/sys/fs/cgroup/unified/sandbox-j/"}, "not a normalized path"),
    ({"unified": "/sys/fs/cgroup/unified/sandbox-j\0"}, "not a normalized path"),
    ({"unified": "/sys/fs/cgroup/unified/sandbox-other"}, "not the directory of sandbox j"),
    ({"unified": "/sys/fs/cgroup/unified/sandbox-j/sandbox-j-x"}, "not the directory of sandbox j"),
    ({"unified": "/sys/fs/cgroup/unified"}, "not a normalized path"),
])
def test_a_doctored_state_aims_reclaim_nowhere_else(paths: object, why: str) -> None:
    with pytest.raises(sb.Refusal, match=why):
        sb.stale_parents(paths, HIER, "j")


def test_whose_directories_they_are() -> None:
    assert sb.owner_refusal(1000, [1000, 1000]) is None
    assert sb.owner_refusal(1000, [1000, None]) is None  # destroy: the handed directories speak
    assert sb.owner_refusal(1000, [1000, None], every=True) == "has a directory with no owner record"
    assert sb.owner_refusal(1000, [1000, 0]) == "belongs to another user"  # root's v1 directory, say
    assert sb.owner_refusal(1000, [1001]) == "belongs to another user"
    assert sb.owner_refusal(1000, []) == "belongs to another user"
    assert sb.owner_refusal(1000, [None], every=False) == "belongs to another user"
    assert sb.owner_refusal(0, [1000, None], every=True) is None  # root may reclaim any


def test_a_launcher_holding_its_lock_is_alive() -> None:
    assert sb.state_refusal(1000, True, 1000, True, False) is None
    assert "launcher is alive" in str(sb.state_refusal(1000, True, 1000, True, True))
    assert "launcher is alive" in str(sb.state_refusal(0, True, 1000, True, True))  # root too
    assert "regular file" in str(sb.state_refusal(1000, False, 1000, True, False))  # a FIFO would block us
    assert sb.state_refusal(1000, True, 1001, True, False) == "the state file is not the caller's"
    assert sb.state_refusal(0, True, 1001, True, False) is None
    assert "removed or replaced" in str(sb.state_refusal(1000, True, 1000, False, False))


def test_marks_round_trip_and_junk_is_no_mark() -> None:
    mark = sb.parse_mark(sb.mark_text(1000, {"memory": 1 << 26, "cpus": 0.5, "pids": 9}))
    assert mark == {"uid": 1000, "memory": 1 << 26, "cpus": 0.5}
    for raw in (None, b"", b"\xff", b"[]", b'{"uid": "0"}', b'{"memory": 1}', b'{"uid": 1.0}'):
        assert sb.parse_mark(raw) is None, raw


def test_sum_caps_from_the_config() -> None:
    assert sb.sum_caps({}) == {}
    assert sb.sum_caps({"limits": {"max_memory_bytes_per_member": 1 << 30, "max_cpus_per_member": 1.5}}) == {
        "memory": 1 << 30, "cpus": 1.5}
    for bad in ({"max_memory_bytes_per_member": 1.5}, {"max_memory_bytes_per_member": 0},
                {"max_cpus_per_member": "2"}, {"max_cpus_per_member": -1}, {"max_memory_bytes_per_member": True}):
        with pytest.raises(sb.Broken):
            sb.sum_caps({"limits": bad})


MiB = 1 << 20


def test_the_sum_of_a_members_limits() -> None:
    caps = {"memory": 192 * MiB, "cpus": 2}
    live = [{"uid": 1, "memory": 64 * MiB, "cpus": 0.5}, {"uid": 1, "memory": 64 * MiB, "cpus": 0.5}]
    fallback = {"memory": 100 * MiB, "cpus": 1.0}
    assert sb.sum_refusal(caps, live, {"memory": 64 * MiB, "cpus": 1}, fallback) is None  # exactly full
    assert sb.sum_refusal(caps, live, {"memory": 64 * MiB + 1, "cpus": 1}, fallback) == (
        f"memory {64 * MiB + 1} would take this user's live sandboxes to {192 * MiB + 1}, "
        f"above the {192 * MiB} allowed per member")
    assert sb.sum_refusal(caps, live, {"memory": MiB, "cpus": 1.25}, fallback) == (
        "cpus 1.25 would take this user's live sandboxes to 2.25, above the 2 allowed per member")
    assert "must be limited" in str(sb.sum_refusal(caps, [], {"memory": None, "cpus": 1}, fallback))
    # unknown is never free: no mark, or no such limit, counts the per-sandbox maximum ...
    assert sb.sum_refusal(caps, [None], {"memory": 92 * MiB, "cpus": 1}, fallback) is None
    assert sb.sum_refusal(caps, [None], {"memory": 93 * MiB, "cpus": 1}, fallback) is not None
    assert sb.sum_refusal(caps, [{"uid": 1, "memory": None, "cpus": 0.1}], {"memory": 93 * MiB, "cpus": 1},
                          fallback) is not None
    # ... or, with none configured, the whole cap
    assert sb.sum_refusal(caps, [None], {"memory": 1, "cpus": 0.1}, {}) is not None
    assert sb.sum_refusal({}, live * 100, {"memory": None, "cpus": None}, {}) is None  # no caps: no sums


@pytest.mark.skipif(os.geteuid() != 0, reason="chowns directories to other uids")
def test_root_gc_finds_members_state_only_in_their_private_directories(tmp_path: Path) -> None:
    run_user, tmp = tmp_path / "run-user", tmp_path / "tmp"
    made = {}
    for base, name, uid, mode in ((run_user, "4242", 4242, 0o700), (run_user, "4243", 4243, 0o755),
                                  (tmp, "sandbox-run-4244", 4244, 0o700), (tmp, "sandbox-run-4245", 4242, 0o700),
                                  (run_user, "0", 0, 0o700), (tmp, "sandbox-run-x", 4246, 0o700),
                                  (run_user, "4247", 4247, 0o700)):
        d = base / name
        (d / "sandbox").mkdir(parents=True)
        if uid != 4247:  # that one holds no state
            (d / "sandbox" / "job.state").write_text("{}")
        os.chown(d, uid, uid)
        os.chmod(d, mode)
        made[name] = d
    assert gc_members.candidate_dirs(str(run_user), (str(tmp),)) == [
        (4242, str(made["4242"] / "sandbox")), (4244, str(made["sandbox-run-4244"] / "sandbox"))]
    # 4243: others may enter; sandbox-run-4245: another user's; 0: root's own gc does it;
    # sandbox-run-x: no uid; 4247: nothing to reclaim
    (made["4242"]).rename(run_user / "x4242")
    os.symlink(run_user / "x4242", made["4242"])  # a link is not the directory
    assert [u for u, _ in gc_members.candidate_dirs(str(run_user), (str(tmp),))] == [4244]
