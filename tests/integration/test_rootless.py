"""Rootless, no cgroup: a real ordinary user (created here, removed also on failure), not
root and not allowed to use the switchboard, runs sandbox-run as themselves. The job's
PID namespace, made from a user namespace, is its family: the escape matrix (double
fork + setsid, a new process group, `nohup cmd &`, the launcher's SIGKILL) leaves
nothing behind, CPU is exact, and limits only a cgroup enforces are refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.ns.user import unavailable
from sandbox.state import SUFFIX
from tests.conftest import IS_ROOT, SANDBOX, SANDBOX_RUN, real_user
from tests.integration.test_core import alive, host_processes_with, wait_until

pytestmark = [
    pytest.mark.skipif(not IS_ROOT, reason="needs root (creates a user)"),
    pytest.mark.skipif(unavailable() is not None, reason=f"{unavailable()}"),
]

USER = "sbt-rootless"
HOME = Path(f"/home/{USER}")


@pytest.fixture(scope="module")
def user() -> Iterator[str]:
    with real_user(USER) as name:
        yield name


def _cmd(*args: str) -> list[str]:
    # Through a shell, as in a login: setpriv's own exec keeps root's capabilities.
    return ["setpriv", "--reuid", USER, "--regid", USER, "--init-groups", "/bin/sh", "-c", 'exec "$0" "$@"',
            SANDBOX_RUN, *args]


def _env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(HOME), "XDG_RUNTIME_DIR": str(HOME),
            "SANDBOX_TEST_RUN": os.environ["SANDBOX_TEST_RUN"]}


def run_as_user(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(*args), capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=HOME, env=_env())


def _report(r: subprocess.CompletedProcess[str], path: Path) -> dict[str, object]:
    assert path.exists(), r.stderr
    data: dict[str, object] = json.loads(path.read_text())
    path.unlink()
    return data


@pytest.fixture(autouse=True)
def no_state_left(user: str) -> Iterator[None]:
    yield
    state = HOME / "sandbox"
    assert not state.exists() or not list(state.iterdir()), list(state.iterdir())


def test_mode_is_pidns_and_the_job_runs_as_the_user(user: str) -> None:
    report = HOME / "r.json"
    r = run_as_user("--report", str(report), "--", "sh", "-c", "id -u; echo $$; cat /proc/self/uid_map")
    assert r.returncode == 0, r.stderr
    uid = subprocess.run(["id", "-u", USER], capture_output=True, text=True, check=True).stdout.strip()
    lines = r.stdout.split("\n")
    assert lines[0] == uid
    assert int(lines[1]) < 10  # a PID of the job's own namespace
    assert lines[2].split() == [uid, uid, "1"]  # the identity map of a user namespace
    data = _report(r, report)
    assert data["tracking"] == "pidns"
    assert data["cgroup"] is None and data["cgroup_version"] is None
    assert (data["status"], data["exit_code"]) == ("exited", 0)
    assert data["cpu_user_seconds"] is not None and data["cpu_system_seconds"] is not None


def test_a_private_dev_with_terminals_of_its_own(user: str) -> None:
    """--dev private in a user namespace: its devpts instance mounts (the host's tty group
    is not mapped there, so no gid= option), and a pty opened there is the job's own."""
    r = run_as_user("--dev", "private", "--", "/usr/bin/python3", "-c",
                    "import os; m, s = os.openpty(); print(os.ttyname(s)); print(sorted(os.listdir('/dev')))")
    assert r.returncode == 0, r.stderr
    tty, listing = r.stdout.splitlines()
    assert tty.startswith("/dev/pts/")
    assert {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm"} <= set(eval(listing))


@pytest.mark.parametrize("limit", [("--mem", "64M"), ("--pids", "10"), ("--cpus", "1")])
def test_limit_refused_with_reason_and_fix(user: str, limit: tuple[str, str]) -> None:
    marker = HOME / "ran"
    r = run_as_user(*limit, "--", "touch", str(marker))
    assert r.returncode == 125
    assert r.stderr.count("\n") == 1, r.stderr
    assert limit[0] in r.stderr and "without a cgroup" in r.stderr and "--limits best-effort" in r.stderr
    assert "not a member" in r.stderr or "not installed" in r.stderr  # why: no switchboard for them
    assert not marker.exists()  # nothing was run


def test_best_effort_runs_and_says_what_was_not_enforced(user: str) -> None:
    report = HOME / "r.json"
    r = run_as_user("--mem", "64M", "--pids", "10", "--limits", "best-effort", "--report", str(report), "--", "true")
    assert r.returncode == 0, r.stderr
    data = _report(r, report)
    assert data["tracking"] == "pidns"
    assert data["limits_not_enforced"] == ["--mem", "--pids"]
    assert data["memory_limit_bytes"] is None


def test_escape_matrix_nothing_outlives_the_job(user: str) -> None:
    marker = f"sbtest-rl-{uuid.uuid4().hex[:8]}"
    script = (
        f"(setsid sh -c 'sleep 300' {marker}-a &) ; "  # double fork + setsid
        f"python3 -c 'import os,time; os.setpgid(0, 0); time.sleep(300)' {marker}-b & "  # new process group
        f"nohup sh -c 'sleep 300' {marker}-c >/dev/null 2>&1 & "
        f"(sh -c 'trap \"\" TERM HUP INT; sleep 300' {marker}-d &) ; "
        "sleep 0.3; exit 7"
    )
    r = run_as_user("--", "sh", "-c", script)
    assert r.returncode == 7, r.stderr
    assert host_processes_with(marker) == []


def test_timeout_kills_escapees(user: str) -> None:
    marker = f"sbtest-rlt-{uuid.uuid4().hex[:8]}"
    r = run_as_user("--timeout", "1", "--kill-grace", "0.5", "--", "sh", "-c",
                    f"(setsid sh -c 'trap \"\" TERM; sleep 300' {marker} &); sleep 300")
    assert r.returncode == 124, r.stderr
    assert host_processes_with(marker) == []


def test_launcher_sigkill_kills_the_job_and_gc_writes_its_record(user: str) -> None:
    """The launcher's SIGKILL takes the PID namespace down (init's parent-death signal);
    the user's own `sandbox gc` then writes the report the launcher could not (a
    launcher_lost record: no cgroup held figures) and removes the state."""
    marker = f"sbtest-rlk-{uuid.uuid4().hex[:8]}"
    report = HOME / "lost.json"
    proc = subprocess.Popen(
        _cmd("--report", str(report), "--", "sh", "-c", f"(setsid sh -c 'sleep 300' {marker}-a &); "
             f"nohup sh -c 'sleep 300' {marker}-b >/dev/null 2>&1 & echo ready; exec sleep 300"),
        stdout=subprocess.PIPE, text=True, cwd=HOME, env=_env(),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert wait_until(lambda: bool(host_processes_with(f"{marker}-a") and host_processes_with(f"{marker}-b")))
        pids = [p for p in host_processes_with(marker) if p != proc.pid]  # the launcher's argv has it too
        state = HOME / "sandbox"
        assert wait_until(lambda: state.is_dir() and any(f.suffix == SUFFIX for f in state.iterdir()))
        # the launcher is the last exec of the setpriv chain: proc.pid itself
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert wait_until(lambda: not any(alive(p) for p in pids), timeout=5)
        assert not report.exists()
        gc = subprocess.run(["setpriv", "--reuid", USER, "--regid", USER, "--init-groups", SANDBOX, "gc"],
                            capture_output=True, text=True, timeout=60, check=False, cwd=HOME, env=_env())
        assert gc.returncode == 0, gc.stderr
        lost = _report(gc, report)
        assert (lost["status"], lost["returncode"], lost["cgroup"]) == ("launcher_lost", 125, None), lost
        assert not [f for f in state.iterdir() if f.suffix == SUFFIX]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in host_processes_with(marker):
            os.kill(p, signal.SIGKILL)
        report.unlink(missing_ok=True)
        for f in (HOME / "sandbox").glob("*"):
            f.unlink()  # whatever a failed gc left


def test_cpu_of_a_double_forked_daemon_is_counted(user: str) -> None:
    report = HOME / "r.json"
    done = HOME / "burnt"
    burn = f"import time\nwhile time.process_time() < 0.6: pass\nopen({str(done)!r}, 'w').close()"
    # the main process waits for the daemon (not its child) by the file it leaves
    r = run_as_user("--report", str(report), "--", "sh", "-c",
                    f"(setsid python3 -c \"$0\" &); n=0; while [ ! -e {done} ] && [ $n -lt 600 ]; "
                    "do sleep 0.1; n=$((n+1)); done", burn, timeout=120)
    assert r.returncode == 0, r.stderr
    assert done.exists()
    done.unlink()
    data = _report(r, report)
    assert isinstance(data["cpu_user_seconds"], float) and isinstance(data["cpu_system_seconds"], float)
    assert data["cpu_user_seconds"] + data["cpu_system_seconds"] >= 0.6


def test_the_user_controls_their_own_sandbox(user: str) -> None:
    """`sandbox ps/usage/kill` as the user, through the state in their own directory."""
    from tests.conftest import SANDBOX

    marker = f"sbtest-rlc-{uuid.uuid4().hex[:8]}"
    name = f"rl-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        _cmd("--name", name, "--", "sh", "-c",
             f"(setsid sh -c 'sleep 300' {marker} &); trap 'exit 3' TERM; echo ready; while :; do sleep 0.1; done"),
        stdout=subprocess.PIPE, text=True, cwd=HOME, env=_env(),
    )

    def sandbox(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [*_cmd()[:-1], SANDBOX, *args]  # the same login shell, the `sandbox` command
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, cwd=HOME, env=_env())

    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert wait_until(lambda: bool(host_processes_with(marker)))
        # the state is the user's own (written by the launcher just after the job starts)
        assert wait_until((HOME / "sandbox" / f"{name}{SUFFIX}").exists)
        ps = sandbox("ps", name, "--json")
        assert ps.returncode == 0, ps.stderr
        [sb] = json.loads(ps.stdout)
        assert any(marker in p["command"] for p in sb["processes"]), sb
        assert sandbox("usage", name).returncode == 0
        kill = sandbox("kill", "--signal", "TERM", name)
        assert kill.returncode == 0, kill.stderr
        assert proc.wait(timeout=30) == 3
        assert host_processes_with(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            for f in (HOME / "sandbox").glob("*"):
                f.unlink()  # the state of the launcher killed here


def test_without_a_runtime_dir_the_state_goes_to_a_private_fallback(user: str) -> None:
    """No XDG_RUNTIME_DIR and no /run/user/UID (su, cron, a batch node without logind):
    the user's own 0700 directory in /tmp holds the state; one that another user made
    first under that name is refused with one line and 125, and nothing is written."""
    uid = int(subprocess.run(["id", "-u", USER], capture_output=True, text=True, check=True).stdout)
    fallback = Path(f"/tmp/sandbox-run-{uid}")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(HOME), "SANDBOX_TEST_RUN": os.environ["SANDBOX_TEST_RUN"]}
    assert not Path(f"/run/user/{uid}").exists()
    shutil.rmtree(fallback, ignore_errors=True)
    try:
        r = subprocess.run(_cmd("--", "true"), capture_output=True, text=True, timeout=60, check=False,
                           cwd=HOME, env=env)
        assert r.returncode == 0, r.stderr
        st = fallback.lstat()
        assert (st.st_uid, st.st_mode & 0o7777) == (uid, 0o700)
        listed = subprocess.run(["setpriv", "--reuid", USER, "--regid", USER, "--init-groups", SANDBOX, "list"],
                                capture_output=True, text=True, timeout=60, check=False, cwd=HOME, env=env)
        assert listed.returncode == 0 and listed.stderr == "", listed.stderr
        # another user takes the name first, open to all, hoping to read or plant state
        shutil.rmtree(fallback)
        subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                        "mkdir", "-m", "777", str(fallback)], check=True, env=env)
        r = subprocess.run(_cmd("--", "true"), capture_output=True, text=True, timeout=60, check=False,
                           cwd=HOME, env=env)
        assert r.returncode == 125 and "not a private directory" in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1, r.stderr
        assert list(fallback.iterdir()) == []
    finally:
        shutil.rmtree(fallback, ignore_errors=True)
