"""Reliability under faults: nested sandboxes, `sandbox gc` beside live sandboxes (from
any PID namespace), a launcher SIGKILLed at any moment, full disks, a blocked stderr, a
stopped launcher and the death of the launcher's parent.

Every test uses the default state directory with other sandboxes running beside it, as a
batch node does. Tests that kill a launcher make the test process a child subreaper and
reap what is reparented to it: PID 1 of this machine never reaps orphans.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prctl
import pytest

from sandbox import state
from sandbox.cgroups import PREFIX, job_cgroup
from tests.conftest import LAYOUT, ROOT, SANDBOX, SANDBOX_RUN, needs_root, real_user, run_sandbox
from tests.integration.test_core import Running, alive, wait_until

pytestmark = [needs_root]

PY = "/usr/bin/python3"


@pytest.fixture
def subreaper() -> Iterator[None]:
    prctl.set_child_subreaper(1)
    try:
        yield
    finally:
        prctl.set_child_subreaper(0)
        _reap_all()


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _reap_orphans(timeout: float = 10.0) -> None:
    """Wait for what a killed launcher left to us (its init and job, dying) and reap it, as
    a batch node's init would at once: an unreaped zombie still populates its cgroup, so
    the cgroup cannot be removed yet (gc then keeps the state for its next run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.02)


@pytest.fixture
def visible_dir() -> Iterator[Path]:
    """A directory that jobs see too (pytest's tmp_path is under the host's /tmp, which a
    sandbox hides behind its private /tmp)."""
    d = ROOT / ".test-scratch" / uuid.uuid4().hex[:10]
    d.mkdir(parents=True)
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)


@pytest.fixture
def neighbour() -> Iterator[Running]:
    """Another sandbox running beside the test, in the default state directory."""
    running = Running("--kill-grace", "2", "--", "sleep", "120")
    try:
        yield running
    finally:
        running.proc.terminate()  # a clean end: SIGKILL would leave a stale sandbox
        running.proc.wait(timeout=20)
        running.close()


def _neighbour_untouched(n: Running) -> None:
    assert n.proc.poll() is None, "the neighbouring sandbox was killed"
    assert alive(n.started["job_host_pid"])
    assert state.read(n.started["name"]) is not None


def _with_log(log: Path) -> dict[str, str]:
    return {**os.environ, "SANDBOX_ACCOUNTING_LOG": str(log)}


def _dot_files() -> list[str]:
    try:
        # ours only: launchers of older versions (other sessions) write *.json
        return [e for e in os.listdir(state.state_dir()) if state.SUFFIX + "." in e]
    except FileNotFoundError:
        return []


# -- liveness from every PID namespace ---------------------------------------------------


def test_launch_inside_a_sandbox_keeps_every_sandbox(neighbour: Running) -> None:
    p = run_sandbox("--", SANDBOX_RUN, "--", "true")
    assert p.returncode == 0, p.stderr
    _neighbour_untouched(neighbour)
    assert _dot_files() == []


def test_gc_inside_a_sandbox_reclaims_nothing_live(neighbour: Running) -> None:
    p = run_sandbox("--", SANDBOX, "gc")
    assert p.returncode == 0, p.stderr
    assert "reclaimed" not in p.stdout, p.stdout
    _neighbour_untouched(neighbour)
    assert _dot_files() == []


# not in the v2 lane: on pure v2 a sandbox's cgroup holds its processes, so no
# controller can be enabled for children there (the 'no internal processes' rule)
def test_three_levels_deep_nest_their_cgroups(visible_dir: Path, neighbour: Running) -> None:
    reports = [visible_dir / f"r{i}.json" for i in range(3)]
    argv: list[str] = []
    for i, r in enumerate(reports):
        argv += [SANDBOX_RUN, "--report", str(r), *(["--mem", "64M"] if i == 0 else []), "--"]
    p = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    got = [json.loads(r.read_text()) for r in reports]
    assert [(g["status"], g["exit_code"]) for g in got] == [("exited", 0)] * 3, got
    # each level's cgroup lies inside the one above it (on v1 a level without a limit of its
    # own stays in the enclosing memory cgroup, so compare by the sandbox directories)
    outer, middle, inner = got
    assert f"/sandbox-{outer['name']}/sandbox-{middle['name']}" in middle["cgroup"], got
    assert f"/sandbox-{middle['name']}/sandbox-{inner['name']}" in inner["cgroup"], got
    assert [g["memory_limit_bytes"] for g in got] == [64 << 20] * 3  # the outer bounds every level
    _neighbour_untouched(neighbour)


def test_the_outer_limit_bounds_the_inner_job() -> None:
    alloc = "b = bytearray(150 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"
    p = run_sandbox("--mem", "64M", "--", SANDBOX_RUN, "--", PY, "-c", alloc)
    assert p.returncode == -signal.SIGKILL, p.stderr  # sandbox-run re-raises the OOM kill


# -- a launcher killed at any moment ----------------------------------------------------


def _cgroup_dir(name: str) -> str:
    return next(iter(job_cgroup(name, None, LAYOUT).paths().values()))


@pytest.mark.cgroup
def test_killed_between_cgroup_and_state_leaves_nothing_after_one_gc(subreaper: None) -> None:
    """Killed the moment its cgroup appears (before the state was written, on the old
    order): one gc reclaims everything and the name is free at once."""
    name = f"t-window-{uuid.uuid4().hex[:8]}"
    first = _cgroup_dir(name)
    proc = subprocess.Popen([SANDBOX_RUN, "--name", name, "--", "sleep", "30"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.isdir(first) and time.monotonic() < deadline and proc.poll() is None:
        pass
    proc.kill()
    proc.wait()
    _reap_orphans()  # under emulation the kill may come after init and the job started
    p = subprocess.run([SANDBOX, "gc"], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    assert not os.path.isdir(first)
    assert state.read(name) is None
    assert run_sandbox("--name", name, "--", "true").returncode == 0


def _kill_after_start(visible_dir: Path, *extra: str) -> tuple[str, Path, Path]:
    name = f"t-lost-{uuid.uuid4().hex[:8]}"
    report, log = visible_dir / "report.json", visible_dir / "acct.log"
    burn = "import time; t = time.time() + 0.3\nwhile time.time() < t: pass\ntime.sleep(60)"
    running = Running("--name", name, *extra, "--", PY, "-c", burn, report=report, env=_with_log(log))
    try:
        time.sleep(0.5)
        running.proc.kill()
        running.proc.wait()
    finally:
        running.close()
    return name, report, log


def test_killed_launcher_yields_its_report_and_record(visible_dir: Path, subreaper: None) -> None:
    name, report, log = _kill_after_start(visible_dir, "--label", "owner=alice")
    p = subprocess.run([SANDBOX, "gc"], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    subprocess.run([SANDBOX, "gc"], capture_output=True, check=True)  # a second gc adds nothing
    lines = log.read_text().splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert json.loads(report.read_text()) == record
    assert record["name"] == name and record["status"] == "launcher_lost"
    assert record["labels"] == {"owner": "alice"}
    assert record["cpu_user_seconds"] is not None and record["cpu_user_seconds"] + record["cpu_system_seconds"] > 0.02
    assert record["returncode"] == 125 and record["ended_at"] >= record["started_at"]
    assert not os.path.isdir(_cgroup_dir(name)) and state.read(name) is None
    assert _dot_files() == []


def test_the_next_launch_also_writes_the_lost_record(visible_dir: Path, subreaper: None) -> None:
    _name, report, log = _kill_after_start(visible_dir)
    assert run_sandbox("--", "true").returncode == 0
    assert [json.loads(x)["status"] for x in log.read_text().splitlines()] == ["launcher_lost"]
    assert json.loads(report.read_text())["status"] == "launcher_lost"


def test_classad_names_the_lost_launcher() -> None:
    from sandbox import report
    from sandbox.classad import format_report

    assert "launcher_lost" in report.STATUSES
    r = {**report.new_report("x"), "status": "launcher_lost", "returncode": 125}
    assert 'SandboxStatus = "launcher_lost"' in format_report(r)


# -- full disks, blocked output, a stopped launcher --------------------------------------


@pytest.fixture
def small_fs(visible_dir: Path) -> Iterator[Path]:
    d = visible_dir / "small"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "sbtest", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def _fill(d: Path, leave: int) -> None:
    with open(d / "filler", "wb") as f:
        try:
            f.write(b"x" * (16384 - leave))
            f.flush()
        except OSError:
            pass


@pytest.mark.parametrize("leave", [4096, 0])
def test_a_report_that_does_not_fit_is_never_left(small_fs: Path, visible_dir: Path, leave: int) -> None:
    _fill(small_fs, leave)
    labels = [a for i in range(200) for a in ("--label", f"k{i}=" + "v" * 30)]  # a report of ~9 KB
    log = visible_dir / "acct.log"
    p = run_sandbox("--report", str(small_fs / "r.json"), *labels, "--", "true", env=_with_log(log))
    assert p.returncode == 125, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "report" in p.stderr, p.stderr
    assert sorted(os.listdir(small_fs)) == ["filler"]
    assert [json.loads(x)["status"] for x in log.read_text().splitlines()] == ["exited"]


def test_stats_on_a_full_stderr_pipe_never_block_the_launcher(visible_dir: Path) -> None:
    report = visible_dir / "r.json"
    fill = (
        "import fcntl, os\n"
        "fl = fcntl.fcntl(2, fcntl.F_GETFL); fcntl.fcntl(2, fcntl.F_SETFL, fl | os.O_NONBLOCK)\n"
        "try:\n    while True: os.write(2, b'x' * 4096)\nexcept BlockingIOError: pass\n"
        "fcntl.fcntl(2, fcntl.F_SETFL, fl)\n"
    )
    r, w = os.pipe()
    try:
        proc = subprocess.Popen([SANDBOX_RUN, "--stats", "--report", str(report), "--", PY, "-c", fill], stderr=w)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("the launcher blocked on its own stderr") from None
    finally:
        os.close(w)
        os.close(r)
    assert rc == 0
    got = json.loads(report.read_text())
    assert got["status"] == "exited" and got["messages_dropped"], got


def test_a_job_that_ended_while_the_launcher_was_stopped_is_not_timed_out() -> None:
    running = Running("--timeout", "1", "--", "sh", "-c", "sleep 0.3; exit 3")
    try:
        running.proc.send_signal(signal.SIGSTOP)  # the job runs; its launcher does not
        time.sleep(2)
        running.proc.send_signal(signal.SIGCONT)
        e = running.exited()
    finally:
        running.close()
    assert running.proc.returncode == 3 and (e["status"], e["exit_code"]) == ("exited", 3), e


# -- gc under churn ---------------------------------------------------------------------


def test_gc_survives_a_sandbox_vanishing_mid_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import gc

    class Vanished:
        name = PREFIX + "vanished"
        path = "/nonexistent/" + PREFIX + "vanished"

        def is_dir(self, follow_symlinks: bool = True) -> bool:
            return True

        def stat(self, follow_symlinks: bool = True) -> os.stat_result:
            raise FileNotFoundError(2, "No such file or directory", self.path)

    real = os.scandir
    monkeypatch.setattr(gc.os, "scandir", lambda p: [Vanished()] if PREFIX not in str(p) else real(p))
    assert gc.reclaim_orphans() == []


def test_gc_removes_stale_temp_and_claim_files(tmp_path: Path) -> None:
    from sandbox import gc

    for junk in ("a.json.0123456789ab.tmp", ".b.reclaim-4242"):
        (tmp_path / junk).write_text("{")
        os.utime(tmp_path / junk, (time.time() - 600, time.time() - 600))
    gc.reclaim_stale(str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_a_live_temp_file_is_left_alone(tmp_path: Path) -> None:
    """A temp file whose writer holds its lock is being written: not garbage."""
    from sandbox import gc

    live = tmp_path / "c.json.0123456789ab.tmp"
    with open(live, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        gc.reclaim_stale(str(tmp_path))
        assert live.exists()


# -- the launcher's parent dies ---------------------------------------------------------


def test_die_with_parent_tears_down_and_records(visible_dir: Path, subreaper: None) -> None:
    report, log = visible_dir / "r.json", visible_dir / "acct.log"
    starter = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen({[SANDBOX_RUN, '--die-with-parent', '--report', str(report), '--', 'sleep', '60']!r})\n"
        "print(p.pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True, env=_with_log(log))
    assert parent.stdout is not None
    launcher = int(parent.stdout.readline())
    assert wait_until(lambda: any(d.get("launcher_pid") == launcher for d in _states()), timeout=10)
    parent.kill()
    parent.wait()
    assert wait_until(report.exists, timeout=10), "the sandbox outlived its parent"
    os.waitpid(launcher, 0)
    got: dict[str, Any] = json.loads(report.read_text())
    assert got["status"] == "signaled" and got["signal"] == signal.SIGKILL and got["parent_died"] is True, got
    assert [json.loads(x)["name"] for x in log.read_text().splitlines()] == [got["name"]]


def _states() -> list[dict[str, Any]]:
    return [d for d in (state.read(n) for n in state.names()) if d]


LOCK_HOLDER = "sbt-lockholder"


@pytest.fixture
def lock_holder() -> Iterator[str]:
    """A real unprivileged user of this machine (any local user can read root's state)."""
    with real_user(LOCK_HOLDER) as name:
        yield name


def test_a_users_shared_lock_on_a_stale_state_does_not_stop_its_reclaim(
    visible_dir: Path, subreaper: None, lock_holder: str
) -> None:
    """The attack: an ordinary user holds a shared flock on root's state file of a
    sandbox whose launcher was SIGKILLed, so that gc's exclusive lock on it fails for as
    long as they like and the sandbox (cgroup, name, records) is never reclaimed."""
    name, report, log = _kill_after_start(visible_dir)
    path = state.path_for(name)
    hold = ("import fcntl, sys, time\nf = open(sys.argv[1])\nfcntl.flock(f, fcntl.LOCK_SH)\n"
            "print('held', flush=True)\ntime.sleep(120)")
    holder = subprocess.Popen(["setpriv", "--reuid", lock_holder, "--regid", lock_holder, "--init-groups",
                               PY, "-c", hold, path], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        p = subprocess.run([SANDBOX, "gc"], capture_output=True, text=True, check=False)
        assert p.returncode == 0, p.stderr
        assert not os.path.isdir(_cgroup_dir(name)) and state.read(name) is None
        assert json.loads(report.read_text())["status"] == "launcher_lost"
        assert [json.loads(x)["name"] for x in log.read_text().splitlines()] == [name]
        assert holder.poll() is None  # the reader was not disturbed: its lock just means nothing
        assert not [e for e in os.listdir(state.state_dir()) if e.startswith(f".{name}")]  # no claim left
    finally:
        holder.kill()
        holder.wait()
