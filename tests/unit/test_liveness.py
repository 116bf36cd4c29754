"""The state file's lock as liveness, the lost launcher's report, and stderr messages
that never block: without root, on a private directory."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sandbox import lost, notices, state
from sandbox.cgroups import Usage
from sandbox.records import State


def _record(name: str = "job1", **kw: object) -> State:
    return State(name=name, uid=0, launcher_pid=1, launcher_start=1, init_host_pid=None, cgroup=None,
                 cgroup_version=None, cgroup_paths={"memory": f"/x/sandbox-{name}"}, started_at=100.0,
                 **kw)  # type: ignore[arg-type]


def _dead_claim(d: Path, name: str) -> None:
    """A launcher that claimed `name` and died without releasing it."""
    pid = os.fork()
    if pid == 0:
        state.claim(name, _record(name), str(d))
        os._exit(0)
    os.waitpid(pid, 0)


def test_a_claim_is_alive_until_released(tmp_path: Path) -> None:
    held = state.claim("job1", _record(), str(tmp_path))
    assert state.launcher_alive({"name": "job1"}, str(tmp_path))
    assert state.take_stale("job1", str(tmp_path)) is None
    held.rewrite(_record(job_host_pid=42))
    assert state.launcher_alive({"name": "job1"}, str(tmp_path))
    assert state.read("job1", str(tmp_path))["job_host_pid"] == 42  # type: ignore[index]
    held.release()
    assert os.listdir(tmp_path) == []


def test_a_name_in_use_is_refused(tmp_path: Path) -> None:
    held = state.claim("job1", _record(), str(tmp_path))
    with pytest.raises(state.NameInUse):
        state.claim("job1", _record(), str(tmp_path))
    held.release()


def test_a_dead_launchers_claim_is_stale(tmp_path: Path) -> None:
    _dead_claim(tmp_path, "job1")
    assert not state.launcher_alive({"name": "job1"}, str(tmp_path))
    with pytest.raises(FileExistsError):
        state.claim("job1", _record(), str(tmp_path))
    taken = state.take_stale("job1", str(tmp_path))
    assert taken is not None and taken.data is not None and taken.data["name"] == "job1"
    # while one reclaimer holds it, nobody else takes it, and no launcher gets the name
    assert state.take_stale("job1", str(tmp_path)) is None
    assert state.launcher_alive({"name": "job1"}, str(tmp_path))
    with pytest.raises(state.NameInUse):
        state.claim("job1", _record(), str(tmp_path))
    taken.release()
    assert [e for e in os.listdir(tmp_path) if not e.endswith(state.SUFFIX)] == []


def test_sweep_removes_only_unlocked_temp_files(tmp_path: Path) -> None:
    (tmp_path / "a.state.0123456789ab.tmp").write_text("{")
    (tmp_path / ".b.reclaim-42").write_text("{")
    live = tmp_path / "c.state.ba9876543210.tmp"
    with open(live, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        assert sorted(state.sweep_temp(str(tmp_path))) == [".b.reclaim-42", "a.state.0123456789ab.tmp"]
    assert os.listdir(tmp_path) == [live.name]


def test_lost_report_from_state() -> None:
    st = _record(labels={"owner": "alice"}, memory_limit_bytes=1 << 20, job_host_pid=7)
    r = lost.lost_report(st, Usage(cpu_user_seconds=1.5, cpu_system_seconds=0.5), now=110.0)
    assert (r["status"], r["returncode"], r["wall_seconds"]) == ("launcher_lost", 125, 10.0)
    assert r["labels"] == {"owner": "alice"} and r["memory_limit_bytes"] == 1 << 20 and r["job_host_pid"] == 7
    assert (r["cpu_user_seconds"], r["cpu_system_seconds"]) == (1.5, 0.5)
    assert lost.lost_report(st, None, now=110.0)["cpu_user_seconds"] is None


def test_lost_records_are_written_once(tmp_path: Path) -> None:
    st = _record(report_path=str(tmp_path / "r.json"), accounting_log=str(tmp_path / "a.log"))
    lost.write_records(st, None)
    lost.write_records(st, None)
    assert len((tmp_path / "a.log").read_text().splitlines()) == 1
    assert '"launcher_lost"' in (tmp_path / "r.json").read_text()


def test_a_message_to_a_full_pipe_is_dropped_at_once() -> None:
    r, w = os.pipe()
    try:
        fl = fcntl.fcntl(w, fcntl.F_GETFL)
        fcntl.fcntl(w, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        try:
            while True:
                os.write(w, b"x" * 4096)
        except BlockingIOError:
            pass
        fcntl.fcntl(w, fcntl.F_SETFL, fl)  # blocking again: a plain write would hang here
        assert not notices.writable(w)
        assert notices.say("hello", w) is False
        os.read(r, 65536)
        assert notices.say("hello", w) is True
    finally:
        os.close(r)
        os.close(w)


def test_a_readers_shared_lock_neither_hides_a_dead_launcher_nor_blocks_its_reclaim(tmp_path: Path) -> None:
    """Root's state files are world-readable: anyone may hold a shared flock on one. That
    lock is not the launcher's exclusive one, so the sandbox is still seen dead and
    claimed (on a claim file of the gc's own), once."""
    _dead_claim(tmp_path, "job1")
    with open(state.path_for("job1", str(tmp_path))) as reader:
        fcntl.flock(reader, fcntl.LOCK_SH)
        assert not state.launcher_alive({"name": "job1"}, str(tmp_path))
        taken = state.take_stale("job1", str(tmp_path))
        assert taken is not None and taken.data is not None
        assert state.take_stale("job1", str(tmp_path)) is None
        assert state.launcher_alive({"name": "job1"}, str(tmp_path))  # being reclaimed: the name is in use
        state.remove("job1", str(tmp_path))
        taken.release()
    assert os.listdir(tmp_path) == []


def test_a_live_launchers_state_is_not_taken_through_a_shared_lock(tmp_path: Path) -> None:
    held = state.claim("job1", _record(), str(tmp_path))
    assert state.take_stale("job1", str(tmp_path)) is None
    assert [e for e in os.listdir(tmp_path) if e.startswith(".")] == []  # the failed claim left nothing
    held.release()


def test_a_new_state_file_is_private_until_locked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opened by someone else between its creation and our flock, it could be locked
    first and the launch would fail: nobody but us may open it before we hold it."""
    modes: list[int] = []
    real = fcntl.flock

    def spy(fd: int, op: int) -> None:
        if op & fcntl.LOCK_EX:
            modes.append(os.fstat(fd).st_mode & 0o777)
        real(fd, op)

    monkeypatch.setattr(state.fcntl, "flock", spy)
    held = state.claim("job1", _record(), str(tmp_path))
    assert modes and modes[0] == 0o600
    assert os.stat(state.path_for("job1", str(tmp_path))).st_mode & 0o777 == 0o644
    held.release()


def test_sweep_removes_abandoned_claims_only(tmp_path: Path) -> None:
    (tmp_path / ".a.claim").write_text("")
    held = tmp_path / ".b.claim"
    with open(held, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        assert state.sweep_temp(str(tmp_path)) == [".a.claim"]
    assert os.listdir(tmp_path) == [held.name]


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="no systemd-tmpfiles")
def test_a_tmp_cleaner_leaves_a_live_launchers_state_directory(tmp_path: Path) -> None:
    """An ordinary user's fallback state directory sits in /tmp: the real systemd-tmpfiles,
    told to age everything older than an hour by mtime, removes an old state directory
    nobody holds and keeps the one a launcher holds."""
    base = tmp_path / "tmp"
    live, dead = base / "sandbox-run-1000", base / "sandbox-run-1001"
    for d in (live, dead):
        d.mkdir(parents=True)
    held = state.claim("job1", _record(), str(live))
    _dead_claim(dead, "job2")
    old = time.time() - 2 * 86400
    for d in (live, dead):
        for f in (*d.iterdir(), d):
            os.utime(f, (old, old), follow_symlinks=False)
    conf = tmp_path / "clean.conf"
    conf.write_text(f"e {base} - - - mM:1h\n")
    subprocess.run(["systemd-tmpfiles", "--clean", str(conf)], check=True, capture_output=True)
    assert sorted(p.name for p in base.iterdir()) == [live.name], "the cleaner kept the dead one or took the live one"
    assert state.read("job1", str(live)) is not None
    held.release()
