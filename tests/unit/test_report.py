"""The report: fixed keys, atomic file writes, JSON-lines events, the human summary."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from sandbox import report
from sandbox.report import REPORT_KEYS, new_report, summary, write_atomic, write_event

# The keys the README promises to starter code; REPORT_KEYS may hold more, never fewer.
PROMISED = (
    "version name status exit_code signal wall_seconds cpu_user_seconds cpu_system_seconds memory_peak_bytes "
    "memory_limit_bytes oom_kills io_read_bytes io_write_bytes pids_peak cgroup cgroup_version init_host_pid "
    "job_host_pid job_ns_pid"
).split()


def full_report(**changes: Any) -> dict[str, Any]:
    r = new_report("job-1")
    r.update(
        status=report.STATUS_EXITED, exit_code=0, signal=None, returncode=0, wall_seconds=1.5,
        cpu_user_seconds=0.25, cpu_system_seconds=0.125, memory_peak_bytes=100 << 20, memory_limit_bytes=1 << 30,
        oom_kills=0, io_read_bytes=4096, io_write_bytes=0, pids_peak=3, cgroup="/sys/fs/cgroup/memory/x",
        cgroup_version="hybrid", init_host_pid=100, job_host_pid=101, job_ns_pid=2,
    )
    r.update(changes)
    return r


def test_report_keys_cover_the_promise() -> None:
    assert set(PROMISED) <= set(REPORT_KEYS)
    assert len(set(REPORT_KEYS)) == len(REPORT_KEYS)


def test_new_report_is_flat_and_null() -> None:
    r = new_report("abc")
    assert list(r) == list(REPORT_KEYS)
    assert r["version"] == 1 and r["name"] == "abc"
    assert all(v is None for k, v in r.items() if k not in ("version", "name"))


def test_write_atomic(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text("old")
    r = full_report()
    write_atomic(str(path), r)
    assert json.loads(path.read_text()) == r
    assert path.read_text().count("\n") == 1
    # no temp file left next to it
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


def test_write_atomic_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_atomic("rel.json", full_report())
    assert json.loads((tmp_path / "rel.json").read_text())["name"] == "job-1"


def test_write_atomic_failure_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(str(path), {"x": object()})
    # json fails before the temp file exists: the old report is untouched, nothing left over
    assert path.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


def test_write_atomic_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(str(tmp_path / "nope" / "r.json"), full_report())


def test_write_event_lines() -> None:
    r, w = os.pipe()
    try:
        write_event(w, "started", {"job_ns_pid": 2, "cgroup": "/x"})
        write_event(w, "exited", full_report())
        os.close(w)
        w = -1
        lines = os.read(r, 1 << 16).decode().splitlines()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    started, exited = (json.loads(line) for line in lines)
    assert started == {"event": "started", "job_ns_pid": 2, "cgroup": "/x"}
    assert exited["event"] == "exited" and exited["status"] == "exited"
    assert set(REPORT_KEYS) <= set(exited)


def test_write_event_to_a_vanished_reader_is_not_an_error() -> None:
    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    r, w = os.pipe()
    os.close(r)
    try:
        write_event(w, "exited", full_report())  # EPIPE swallowed
        write_event(9999, "exited", full_report())  # EBADF swallowed
    finally:
        os.close(w)
        signal.signal(signal.SIGPIPE, old)


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({}, "exited with code 0"),
        ({"status": report.STATUS_SIGNALED, "exit_code": None, "signal": 9, "returncode": 137}, "killed by signal 9"),
        ({"status": report.STATUS_OOM, "signal": 9, "returncode": 137, "oom_kills": 1}, "OOM killer"),
        ({"status": report.STATUS_TIMED_OUT, "returncode": 124}, "timed out"),
        ({"status": report.STATUS_FAILED, "returncode": 127, "error": "cannot execute 'x'"}, "cannot execute 'x'"),
    ],
)
def test_summary_outcomes(changes: dict[str, Any], phrase: str) -> None:
    text = summary(full_report(**changes))
    assert text.startswith("sandbox-run: 'job-1' ")
    assert phrase in text.splitlines()[0]
    assert f"exit code:        {full_report(**changes)['returncode']}" in text


def test_summary_figures() -> None:
    text = summary(full_report())
    assert "1.500 s" in text
    assert "0.250 s / 0.125 s (total 0.375 s)" in text
    assert "cpu limit:        none" in text and "cpu limit:        1.5 CPUs" in summary(full_report(cpu_limit_cpus=1.5))
    assert "100.0 MiB" in text and "limit 1.0 GiB" in text
    assert "init 100, job 101 (pid 2 inside)" in text
    assert "(hybrid)" in text


def test_summary_with_nothing_measured() -> None:
    """A job that failed before its cgroup existed: every figure is null, the summary still works."""
    r = new_report("early")
    r.update(status=report.STATUS_FAILED, returncode=125, error="cgroup parent /x does not exist")
    text = summary(r)
    assert "failed to start: cgroup parent /x does not exist" in text
    assert "n/a" in text and "limit none" in text


def test_write_atomic_does_not_follow_a_planted_temp_symlink(tmp_path, monkeypatch):
    """A root launcher writing into a directory the job's user controls: even a symlink
    planted at the exact temp name is not followed (O_EXCL|O_NOFOLLOW)."""
    import os

    from sandbox import report as report_mod

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    monkeypatch.setattr(report_mod.os, "urandom", lambda n: b"\0" * n)
    os.symlink(victim, tmp_path / f".r.json.{'00' * 6}.tmp")
    with pytest.raises(FileExistsError):
        report_mod.write_atomic(str(tmp_path / "r.json"), report_mod.new_report("x"))
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "r.json").exists()
