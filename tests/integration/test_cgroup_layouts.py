"""What differs between cgroup layouts, on the real kernel of each: the v1 freezer kill
loop (pure v1 and hybrid hosts; the v1 CI guest) and nesting under a busy cgroup v2
(the v2 CI guest)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.cgroups.v1 import V1Cgroup
from sandbox.cgroups.v2 import LEAF
from sandbox.limits import Limits
from tests.conftest import LAYOUT, SANDBOX_RUN, needs_root
from tests.integration.test_core import host_processes_with, run_report, wait_until

pytestmark = [needs_root, pytest.mark.cgroup]


# A fork loop that never stops making setsid, double-forked escapees, also while every
# pid is taken (a shell loop would exit on its first failed fork).
FORK_LOOP = """
import os, sys
while True:
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                os.execv("/bin/sh", ["sh", "-c", "sleep 300", sys.argv[1] + "-loop"])
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
"""


def escapees(marker: str) -> str:
    """A shell script: escapees that leave the job's session and process tree (setsid,
    double fork, nohup), then the fork loop."""
    return (
        f"(setsid sh -c 'sleep 300' {marker}-setsid &); "
        f"(sh -c 'sleep 300' {marker}-double &); "
        f"nohup sh -c 'sleep 300' {marker}-nohup >/dev/null 2>&1 & "
        f"exec /usr/bin/python3 -c '{FORK_LOOP}' {marker}"
    )


# -- v1: the freezer kill loop ------------------------------------------------------------


@pytest.mark.layout("v1", "hybrid")
def test_v1_freezer_kill_leaves_no_survivor_of_a_fork_loop_and_setsid_escapees() -> None:
    """The v1 backend's own kill (no cgroup.kill, no PID namespace to help): freeze, kill
    every task, thaw, repeat; nothing of the job survives."""
    cg = V1Cgroup(LAYOUT, f"sbtest-freeze-{uuid.uuid4().hex[:8]}", None)
    assert "freezer" in cg.paths(), "this layout has no v1 freezer"
    marker = f"sbtest-v1kill-{uuid.uuid4().hex[:8]}"
    cg.create(Limits(pids=200))  # the fork loop is bounded by pids.max
    job = None
    try:
        joins = " ".join(cg.join_files())
        job = subprocess.Popen(
            ["sh", "-c", f'for f in {joins}; do echo $$ > "$f"; done; exec sh -c "$0"', escapees(marker)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        assert wait_until(lambda: len(host_processes_with(f"{marker}-loop")) >= 10, timeout=60)
        assert host_processes_with(f"{marker}-setsid") and host_processes_with(f"{marker}-double")
        cg.kill(timeout=30)
        assert cg.pids() == []
        job.wait(timeout=30)
        # the escapees were not the test's children: none survives anywhere on the host
        assert wait_until(lambda: host_processes_with(marker) == [], timeout=10), host_processes_with(marker)
        assert cg.is_frozen() is False  # thawed again: the next job is not born frozen
    finally:
        if cg.pids():
            cg.kill(timeout=30)
        if job is not None and job.poll() is None:
            job.kill()
            job.wait()
        cg.remove_dirs()
    assert not cg.exists()


@pytest.mark.layout("v1")
def test_pure_v1_job_is_killed_through_the_freezer_and_reported_as_v1(tmp_path: Path) -> None:
    marker = f"sbtest-v1run-{uuid.uuid4().hex[:8]}"
    script = f"cat /proc/self/cgroup; {escapees(marker)}"
    p, r = run_report(tmp_path, "--timeout", "3", "--pids", "200", "--mem", "128M", "--", "sh", "-c", script,
                      timeout=120)
    assert p.returncode == 124 and r["status"] == "timed_out", p.stderr
    assert r["cgroup_version"] == "v1"
    lines = dict(line.split(":", 2)[1:] for line in p.stdout.splitlines() if line.count(":") >= 2)
    # in its own cgroup in every hierarchy the launcher uses, the freezer's included
    for ctrl in ("memory", "pids", "freezer", "cpu,cpuacct" if "cpu,cpuacct" in lines else "cpu"):
        assert lines.get(ctrl, "").endswith(f"/sandbox-{r['name']}"), (ctrl, p.stdout)
    assert r["memory_limit_bytes"] == 128 << 20 and r["memory_peak_bytes"] and r["cpu_user_seconds"] is not None
    assert wait_until(lambda: host_processes_with(marker) == [], timeout=10), host_processes_with(marker)


# -- v2: nesting under a busy cgroup -------------------------------------------------------


def _empty_tree(own: Path, top: Path) -> None:
    """Move every process of top's tree back to own, then remove the tree."""
    for sub in sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        for pid in (sub / "cgroup.procs").read_text().split():
            (own / "cgroup.procs").write_text(pid)
        os.rmdir(sub)
    for pid in (top / "cgroup.procs").read_text().split():
        (own / "cgroup.procs").write_text(pid)
    os.rmdir(top)


@pytest.fixture
def busy_cgroup() -> Iterator[tuple[Path, str]]:
    """(directory, hierarchy path) of an empty test cgroup below ours, with every
    controller there is available to it but none enabled below it (as a Slurm task
    cgroup or a systemd service has); removed with everything in it afterwards."""
    assert LAYOUT.unified is not None
    own = Path(LAYOUT.unified.directory(LAYOUT.unified.own_path))
    wanted = {"memory", "pids", "cpu", "io"} & set((own / "cgroup.controllers").read_text().split())
    (own / "cgroup.subtree_control").write_text(" ".join("+" + c for c in sorted(wanted)))
    top = own / f"sbtest-busy-{uuid.uuid4().hex[:8]}"
    top.mkdir()
    try:
        yield top, "/" + str(top.relative_to(LAYOUT.unified.mountpoint))
    finally:
        _empty_tree(own, top)


def _launch_in(directory: Path, report: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """sandbox-run started from inside the cgroup `directory`, as a batch job's shell would."""
    return subprocess.run(
        ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(directory), SANDBOX_RUN,
         "--report", str(report), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.layout("v2")
def test_v2_busy_own_cgroup_nests_the_sandbox_beside_a_leaf(tmp_path: Path, busy_cgroup: tuple[Path, str]) -> None:
    top, rel = busy_cgroup
    busy = subprocess.Popen(["sleep", "300"])
    try:
        (top / "cgroup.procs").write_text(str(busy.pid))  # the batch job's own process
        report = tmp_path / "r.json"
        p = _launch_in(top, report, "--mem", "64M", "--pids", "30", "--", "sh", "-c", "cat /proc/self/cgroup")
        assert p.returncode == 0, p.stderr
        r = json.loads(report.read_text())
        assert r["cgroup_version"] == "v2" and r["cgroup"] == f"{top}/sandbox-{r['name']}"
        assert f"0::{rel}/sandbox-{r['name']}" in p.stdout.splitlines()  # never outside the given cgroup
        assert r["memory_limit_bytes"] == 64 << 20 and r["memory_peak_bytes"] is not None
        # the job's own process was moved into the leaf, inside the same cgroup, and stays there
        assert (top / LEAF / "cgroup.procs").read_text().split() == [str(busy.pid)]
        assert (top / "cgroup.procs").read_text() == ""
        assert sorted(d.name for d in top.iterdir() if d.is_dir()) == [LEAF]  # the sandbox is gone
        # a second launch finds the controllers enabled and nests beside the leaf again
        p = _launch_in(top / LEAF, tmp_path / "r2.json", "--mem", "64M", "--", "true")
        assert p.returncode == 0, p.stderr
        assert json.loads((tmp_path / "r2.json").read_text())["cgroup"].startswith(f"{top}/sandbox-")
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.layout("v2")
def test_v2_launcher_alone_in_its_cgroup_undoes_the_move(tmp_path: Path, busy_cgroup: tuple[Path, str]) -> None:
    top, _rel = busy_cgroup
    before = (top / "cgroup.subtree_control").read_text()
    p = _launch_in(top, tmp_path / "r.json", "--mem", "64M", "--", "true")
    assert p.returncode == 0, p.stderr
    # the launcher was the only process there: the leaf is gone (a populated one could not
    # be removed) and the controllers it enabled are disabled again
    assert not (top / LEAF).exists()
    assert (top / "cgroup.subtree_control").read_text() == before
    assert [d.name for d in top.iterdir() if d.is_dir()] == []
