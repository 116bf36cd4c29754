"""Root where no cgroup can be had, as in many containers: /sys/fs/cgroup read-only, or
no hierarchy mounted at all (each made so in a private mount namespace of the test,
so the host's mounts never change). The job is tracked by its PID namespace: the
escape matrix leaves nothing behind, CPU is exact, cgroup limits are refused."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from sandbox.state import SUFFIX
from tests.conftest import SANDBOX_RUN, needs_root
from tests.integration.test_core import host_processes_with

pytestmark = [needs_root]

# every cgroup mount read-only (a bind remount changes that mount only, in our namespace)
READ_ONLY = ('for m in $(awk \'$5 ~ "^/sys/fs/cgroup" {print $5}\' /proc/self/mountinfo); do '
             'mount -o remount,bind,ro "$m" || exit 99; done; exec "$0" "$@"')
ABSENT = 'mount -t tmpfs -o ro none /sys/fs/cgroup || exit 99; exec "$0" "$@"'


def run_without_cgroup(how: str, tmp_path: Path, *args: str) -> tuple[int, str, dict[str, object] | None]:
    import os
    import subprocess

    report = tmp_path / "r.json"
    env = {**os.environ, "SANDBOX_STATE_DIR": str(tmp_path / "state")}
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", how,
                        SANDBOX_RUN, "--report", str(report), *args],
                       capture_output=True, text=True, timeout=120, check=False, env=env)
    assert r.returncode != 99, r.stderr  # the test's own mount failed
    data = json.loads(report.read_text()) if report.exists() else None
    state = tmp_path / "state"
    assert not state.exists() or not list(state.iterdir())
    return r.returncode, r.stderr, data


@pytest.mark.parametrize("how", [READ_ONLY, ABSENT], ids=["read-only", "absent"])
def test_root_without_cgroup_is_tracked_by_pid_namespace(tmp_path: Path, how: str) -> None:
    marker = f"sbtest-nocg-{uuid.uuid4().hex[:8]}"
    script = (
        f"(setsid sh -c 'sleep 300' {marker}-a &) ; "
        f"python3 -c 'import os,time; os.setpgid(0, 0); time.sleep(300)' {marker}-b & "
        f"nohup sh -c 'sleep 300' {marker}-c >/dev/null 2>&1 & "
        "python3 -c 'import time\nwhile time.process_time() < 0.5: pass'; exit 7"
    )
    code, err, data = run_without_cgroup(how, tmp_path, "--", "sh", "-c", script)
    assert code == 7, err
    assert data is not None
    assert data["tracking"] == "pidns" and data["cgroup"] is None and data["cgroup_version"] is None
    assert isinstance(data["cpu_user_seconds"], float) and isinstance(data["cpu_system_seconds"], float)
    assert data["cpu_user_seconds"] + data["cpu_system_seconds"] >= 0.5
    assert host_processes_with(marker) == []


def test_root_without_cgroup_refuses_limits_naming_why(tmp_path: Path) -> None:
    code, err, data = run_without_cgroup(READ_ONLY, tmp_path, "--mem", "64M", "--", "true")
    # refused before anything is made; the report says so, with the same one line
    assert code == 125 and data is not None and data["status"] == "failed_to_start", data
    assert err.count("\n") == 1 and err == f"sandbox-run: {data['error']}\n", err
    assert "--mem cannot be enforced without a cgroup" in err and "read-only" in err
    assert "--limits best-effort" in err


def test_root_without_cgroup_timeout_kills_escapees(tmp_path: Path) -> None:
    marker = f"sbtest-nocgt-{uuid.uuid4().hex[:8]}"
    code, err, data = run_without_cgroup(
        ABSENT, tmp_path, "--timeout", "1", "--kill-grace", "0.5", "--mem", "64M", "--limits", "best-effort", "--",
        "sh", "-c", f"(setsid sh -c 'trap \"\" TERM; sleep 300' {marker} &); sleep 300")
    assert code == 124, err
    assert data is not None and data["status"] == "timed_out"
    assert data["limits_not_enforced"] == ["--mem"]
    assert host_processes_with(marker) == []


def test_a_cgroup_is_used_where_one_can_be_made(tmp_path: Path) -> None:
    """The fallback is only a fallback: with a writable hierarchy the mode is cgroup."""
    import os
    import subprocess

    report = tmp_path / "r.json"
    env = {**os.environ, "SANDBOX_STATE_DIR": str(tmp_path / "state")}
    r = subprocess.run([SANDBOX_RUN, "--report", str(report), "--", "true"], capture_output=True, text=True,
                       timeout=60, check=False, env=env)
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    assert data["tracking"] == "cgroup" and data["cgroup"]


def test_live_control_of_a_sandbox_without_cgroup(tmp_path: Path) -> None:
    """`sandbox list/ps/usage/kill` find the job through its state: init's PID
    namespace is the family; without a freezer the signal goes to each process."""
    import os
    import subprocess

    from tests.conftest import SANDBOX
    from tests.integration.test_core import wait_until

    marker = f"sbtest-nocgc-{uuid.uuid4().hex[:8]}"
    name = f"nocg-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "SANDBOX_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", ABSENT, SANDBOX_RUN, "--name", name, "--",
         "sh", "-c", f"(setsid sh -c 'sleep 300' {marker} &); trap 'exit 3' TERM; echo ready; "
         "while :; do sleep 0.1; done"],
        stdout=subprocess.PIPE, text=True, env=env)

    def sandbox(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SANDBOX, *args], capture_output=True, text=True, timeout=60, check=False, env=env)

    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert wait_until(lambda: bool(host_processes_with(marker)))
        assert wait_until((tmp_path / "state" / f"{name}{SUFFIX}").exists)  # written just after the start
        listed = sandbox("list", "--json")
        assert listed.returncode == 0 and name in listed.stdout, listed.stderr
        ps = sandbox("ps", name, "--json")
        assert ps.returncode == 0, ps.stderr
        [sb] = json.loads(ps.stdout)
        assert sb["name"] == name and sb["cgroup"] is None
        commands = [p["command"] for p in sb["processes"]]
        assert any(marker in c for c in commands) and "sandbox-init" in commands, commands
        usage = sandbox("usage", name)
        assert usage.returncode == 0, usage.stderr
        kill = sandbox("kill", "--signal", "TERM", name)
        assert kill.returncode == 0, kill.stderr
        assert proc.wait(timeout=30) == 3
        assert host_processes_with(marker) == []  # the escapee too: TERM to each, then the namespace went
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
