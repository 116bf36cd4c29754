"""sandbox-run ends the way its job ended: the job's own exit code, or death by the
job's signal, re-raised after the report is written and with core dumps disabled (as
timeout(1) does), so that a shell sees 128+N and a batch system sees the signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SANDBOX_RUN, needs_root, run_sandbox

pytestmark = [needs_root]
PY = "/usr/bin/python3"


def test_death_by_signal_is_re_raised_after_the_report(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    p = run_sandbox("--report", str(report), "--", "sh", "-c", "kill -TERM $$")
    assert p.returncode == -signal.SIGTERM, p.stderr
    r = json.loads(report.read_text())
    assert (r["status"], r["signal"], r["returncode"]) == ("signaled", signal.SIGTERM, 128 + signal.SIGTERM)


def test_a_shell_still_sees_128_plus_n() -> None:
    p = subprocess.run(["sh", "-c", f'{SANDBOX_RUN} -- sh -c "kill -HUP \\$\\$"; echo "status $?"'],
                       capture_output=True, text=True, check=False, timeout=60)
    assert p.stdout.strip() == f"status {128 + signal.SIGHUP}", p.stderr


def test_an_exit_code_above_128_stays_an_exit_code() -> None:
    """A job that exits 143 itself did not die of a signal: nor does sandbox-run."""
    assert run_sandbox("--", "sh", "-c", "exit 143").returncode == 143


def test_the_re_raised_signal_dumps_no_core(tmp_path: Path) -> None:
    """Even with an unlimited core size inherited (prlimit execs sandbox-run with it),
    sandbox-run's own death by SIGSEGV (the job's signal) leaves no core file and is not
    reported as a core dump."""
    job = ["sh", "-c", "ulimit -c 0; kill -SEGV $$"]
    proc = subprocess.Popen(["prlimit", "--core=unlimited", SANDBOX_RUN, "--", *job], cwd=tmp_path,
                            stderr=subprocess.PIPE)
    _, status = os.waitpid(proc.pid, 0)
    proc.returncode = 0  # reaped here, so that Popen does not wait again
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV, status
    assert not os.WCOREDUMP(status)
    assert not [f for f in os.listdir(tmp_path) if f.startswith("core")]


def test_sigterm_to_sandbox_run_ends_it_by_sigterm() -> None:
    """A batch system's SIGTERM is forwarded; the job dies of it and so does sandbox-run."""
    proc = subprocess.Popen([SANDBOX_RUN, "--", "sh", "-c", "echo ready; exec sleep 30"], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM


@pytest.mark.cgroup
def test_an_oom_kill_ends_sandbox_run_by_sigkill(tmp_path: Path) -> None:
    """Also when a shell in between exits 137 itself: the OOM is the outcome."""
    report = tmp_path / "r.json"
    alloc = f"{PY} -c 'b = bytearray(200 * 2**20)'"
    p = run_sandbox("--mem", "50M", "--report", str(report), "--", "sh", "-c", f"{alloc}; exit $?")
    assert p.returncode == -signal.SIGKILL, p.stderr
    r = json.loads(report.read_text())
    assert r["status"] == "oom_killed" and r["returncode"] == 137
