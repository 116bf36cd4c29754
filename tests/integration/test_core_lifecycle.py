"""Core launcher, end to end: PID 1 (reaping, signal forwarding, the end of the job)
and the launcher's death (SIGKILL), with `sandbox gc` and the next launch reclaiming
what it left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import state
from tests.conftest import SANDBOX, needs_root, run_sandbox
from tests.integration.test_core import Running, alive, host_processes_with, wait_until

pytestmark = [needs_root]


def test_init_reaps_500_orphans() -> None:
    """500 orphans, reparented to init, exit; inside, no zombie is left while the job
    still runs, and nothing but the job remains."""
    script = (
        "for i in $(seq 500); do (sleep 0.2 &) ; done; "
        # wait for the sleeps to end, counting with builtins only (no fork): init and sh are
        # left. A zombie is still a /proc entry, so if init did not reap, this loop runs out.
        "n=0; while set -- /proc/[0-9]*; [ $# -gt 2 ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done; "
        "echo LEFT $#; "
        "ps -e -o pid=,ppid=,stat=,comm=; echo ZOMBIES $(ps -e -o stat= | grep -c Z)"
    )
    p = run_sandbox("--", "sh", "-c", script, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "ZOMBIES 0" in p.stdout, p.stdout
    assert "LEFT 2" in p.stdout, p.stdout
    rows = [line.split() for line in p.stdout.splitlines() if not line.startswith(("ZOMBIES", "LEFT"))]
    assert sorted(row[3] for row in rows) == ["ps", "sandbox-init", "sh"], rows


def test_orphans_are_reparented_to_init() -> None:
    p = run_sandbox("--", "sh", "-c", "(sleep 5 &); sleep 0.3; ps -o ppid= -C sleep | head -1; kill $(pidof sleep)")
    assert p.stdout.split()[0] == "1", p.stdout


SIGNALS = ("TERM", "INT", "HUP", "QUIT", "USR1", "USR2")


def test_signals_are_forwarded_to_the_job() -> None:
    traps = "; ".join(f"trap 'echo {s}' {s}" for s in SIGNALS if s != "TERM")
    script = f"{traps}; trap 'echo TERM; exit 0' TERM; echo ready; while :; do sleep 0.05; done"
    running = Running("--kill-grace", "30", "--", "sh", "-c", script)
    try:
        out = running.proc.stdout
        assert out is not None
        assert out.readline() == "ready\n"
        for name in (*SIGNALS[1:], "TERM"):  # TERM last: the job ends on it
            running.proc.send_signal(getattr(signal, f"SIG{name}"))
            assert out.readline() == f"{name}\n"
        e = running.exited()
    finally:
        running.close()
    # the job handled the signals and exited 0 by itself
    assert running.proc.returncode == 0
    assert (e["status"], e["exit_code"]) == ("exited", 0)


def _ignoring(*sigs: signal.Signals) -> tuple[str, ...]:
    """A prefix that starts sandbox-run with these signals ignored, as its caller left them."""
    names = ", ".join(f"signal.{sig.name}" for sig in sigs)
    code = f"import os, signal, sys\nfor s in ({names},): signal.signal(s, signal.SIG_IGN)\n"
    code += "os.execv(sys.argv[1], sys.argv[1:])"
    return (sys.executable, "-c", code)


def test_signals_the_caller_ignores_stay_ignored() -> None:
    """Started as `nohup sandbox-run ...` would be (SIGHUP ignored), by a caller that also
    ignores SIGCHLD: the job ignores SIGHUP as it would run directly, a SIGHUP to the
    launcher ends nothing and starts no kill grace, SIGTERM is still forwarded, and the
    exit status is exact (an ignored SIGCHLD would let the kernel reap it away)."""
    script = "grep -E '^SigIgn' /proc/self/status; trap 'echo TERM; exit 7' TERM; "
    script += "echo ready; while :; do sleep 0.05; done"
    running = Running("--kill-grace", "1", "--", "sh", "-c", script, prefix=_ignoring(signal.SIGHUP, signal.SIGCHLD))
    try:
        out = running.proc.stdout
        assert out is not None
        ignored = int(out.readline().split()[1], 16)
        assert ignored & (1 << (signal.SIGHUP - 1)) and not ignored & (1 << (signal.SIGCHLD - 1)), hex(ignored)
        assert out.readline() == "ready\n"
        running.proc.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            running.proc.wait(timeout=2)  # longer than the kill grace: nothing started it
        running.proc.send_signal(signal.SIGTERM)
        assert out.readline() == "TERM\n"
        e = running.exited()
    finally:
        running.close()
    assert running.proc.returncode == 7
    assert (e["status"], e["exit_code"]) == ("exited", 7)


def test_main_exit_kills_the_rest_and_returns_its_status() -> None:
    marker = f"sbtest-bg-{uuid.uuid4().hex[:8]}"
    script = (
        f"sh -c 'sleep 300' {marker}-a & "
        f"(setsid sh -c 'sleep 300' {marker}-b &) ; "
        f"nohup sh -c 'sleep 300' {marker}-c >/dev/null 2>&1 & "
        f"(sh -c 'trap \"\" TERM HUP INT; sleep 300' {marker}-d &) ; "
        "sleep 0.3; exit 7"
    )
    p = run_sandbox("--", "sh", "-c", script)
    assert p.returncode == 7, p.stderr
    assert host_processes_with(marker) == []


@pytest.fixture
def private_state(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment with a state directory of our own: every launch reclaims the stale
    sandboxes it notices, and other test sessions on this machine launch all the time."""
    d = tmp_path / "state"
    env = {**os.environ, "SANDBOX_STATE_DIR": str(d)}
    yield env
    # a test that failed half-way leaves a stale sandbox there: reclaim it
    subprocess.run([SANDBOX, "gc"], capture_output=True, timeout=60, check=False, env=env)


def _stale(name: str, paths: dict[str, str], env: dict[str, str]) -> bool:
    d = env["SANDBOX_STATE_DIR"]
    return state.read(name, d) is not None and all(os.path.isdir(p) for p in paths.values())


def _kill_launcher(env: dict[str, str]) -> tuple[Running, list[int], dict[str, str]]:
    """Start a job with background children, SIGKILL its launcher; return the job's host
    pids (from the started event and cgroup.procs) and its cgroup paths."""
    running = Running("--", "sh", "-c", "sleep 300 & (setsid sleep 300 &); nohup sleep 300 >/dev/null 2>&1 & "
                      "echo ready; exec sleep 300", env=env)
    out = running.proc.stdout
    assert out is not None
    assert out.readline() == "ready\n"
    paths: dict[str, str] = running.started["cgroup_paths"]
    procs_file = Path(paths.get("unified", next(iter(paths.values()))), "cgroup.procs")
    assert wait_until(lambda: len(procs_file.read_text().split()) >= 5)  # init, sh->sleep, 3 sleeps
    pids = {int(x) for x in procs_file.read_text().split()}
    pids |= {running.started["init_host_pid"], running.started["job_host_pid"]}
    running.proc.send_signal(signal.SIGKILL)
    running.proc.wait(timeout=30)
    return running, sorted(pids), paths


@pytest.mark.cgroup
def test_launcher_sigkill_kills_the_job_and_gc_reclaims(private_state: dict[str, str]) -> None:
    env = private_state
    running, pids, paths = _kill_launcher(env)
    name = running.started["name"]
    try:
        # every process of the job dies at once with its launcher
        assert wait_until(lambda: not any(alive(p) for p in pids), timeout=5), [p for p in pids if alive(p)]
        assert all(not Path(d, "cgroup.procs").read_text().split() for d in paths.values() if os.path.isdir(d))
        # its cgroup and state remain, stale, until someone reclaims them
        assert _stale(name, paths, env)
        gc = subprocess.run([SANDBOX, "gc"], capture_output=True, text=True, timeout=60, check=False, env=env)
        assert gc.returncode == 0, gc.stderr
        assert f"reclaimed {name}" in gc.stdout
        assert not any(os.path.isdir(d) for d in paths.values())
        assert state.read(name, env["SANDBOX_STATE_DIR"]) is None
        # a second gc finds nothing of it
        gc = subprocess.run([SANDBOX, "gc"], capture_output=True, text=True, timeout=60, check=False, env=env)
        assert name not in gc.stdout
    finally:
        running.close()


@pytest.mark.cgroup
# the reclaim itself is test_launcher_sigkill_kills_the_job_and_gc_reclaims's on each layout;
# who triggers it is the same everywhere
@pytest.mark.host_only
def test_next_launch_reclaims_a_stale_sandbox(private_state: dict[str, str]) -> None:
    env = private_state
    running, pids, paths = _kill_launcher(env)
    name = running.started["name"]
    try:
        assert wait_until(lambda: not any(alive(p) for p in pids), timeout=5)
        assert _stale(name, paths, env)
        p = run_sandbox("--", "true", env=env)
        assert p.returncode == 0, p.stderr
        assert not any(os.path.isdir(d) for d in paths.values())
        assert state.read(name, env["SANDBOX_STATE_DIR"]) is None
    finally:
        running.close()


def test_gc_leaves_a_live_sandbox_alone() -> None:
    running = Running("--", "sh", "-c", "echo ready; read x", stdin=subprocess.PIPE)
    try:
        assert running.proc.stdout is not None and running.proc.stdin is not None
        assert running.proc.stdout.readline() == "ready\n"
        gc = subprocess.run([SANDBOX, "gc"], capture_output=True, text=True, timeout=60, check=False)
        assert running.started["name"] not in gc.stdout
        assert alive(running.started["job_host_pid"])
        assert state.read(running.started["name"]) is not None
        running.proc.stdin.write("\n")
        running.proc.stdin.flush()
        assert running.exited()["exit_code"] == 0
    finally:
        running.close()
