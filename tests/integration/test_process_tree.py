"""Process-tree tracking, for real: a real ordinary user (created here, removed also on
failure) and root, each under --tracking process-tree (what a kernel without user
namespaces gives such a user automatically: the guest test below). No cgroup, no
namespace: the family is the tree below the launcher, the environment marker, and for
root a GID of the site's tracking_gids. A setsid daemon and a fork loop are gone when
the main process ends; a grandchild's CPU is counted; limits are refused unless
allowed unenforced; after a SIGKILL of the launcher, `sandbox gc` finds the orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT, SANDBOX, SANDBOX_RUN, real_user
from tests.integration.test_core import alive, host_processes_with, wait_until

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root (creates a user)")]

USER = "sbtp-ptree"
HOME = Path(f"/home/{USER}")
GIDS = "61000-61049"
BURN = "import time\nwhile time.process_time() < 1.0: pass"


@pytest.fixture(scope="module")
def user() -> Iterator[str]:
    with real_user(USER) as name:
        yield name


def _user_env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(HOME), "XDG_RUNTIME_DIR": str(HOME),
            "SANDBOX_TEST_RUN": os.environ["SANDBOX_TEST_RUN"]}


def _as_user(program: str, *args: str) -> list[str]:
    # Through a shell, as in a login: setpriv's own exec keeps root's capabilities.
    return ["setpriv", "--reuid", USER, "--regid", USER, "--init-groups", "/bin/sh", "-c", 'exec "$0" "$@"',
            program, *args]


def run_as_user(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_as_user(SANDBOX_RUN, *args), capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=HOME, env=_user_env())


@pytest.fixture
def site(tmp_path: Path) -> dict[str, str]:
    """Root's environment: its own state directory and a site config with a GID range."""
    config = tmp_path / "sandbox.toml"
    config.write_text(f'tracking_gids = "{GIDS}"\n')
    return {**os.environ, "SANDBOX_STATE_DIR": str(tmp_path / "state"), "SANDBOX_CONFIG": str(config)}


def _report(path: Path) -> dict[str, object]:
    assert path.exists()
    data: dict[str, object] = json.loads(path.read_text())
    path.unlink()
    return data


def carrying(needle: bytes) -> list[int]:
    """Live processes whose environment holds `needle` (root reads every environ)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read() and alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def with_gid(gid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    groups = next((line.split()[1:] for line in f if line.startswith("Groups:")), [])
            except OSError:
                continue
            if str(gid) in groups and alive(int(entry)):
                found.append(int(entry))
    return found


@pytest.fixture(autouse=True)
def no_state_left(user: str) -> Iterator[None]:
    yield
    state = HOME / "sandbox"
    assert not state.exists() or not [p for p in state.iterdir() if p.name != "gids"], list(state.iterdir())


# The daemon drops the environment marker: the tree below the (subreaper) launcher still holds
# it. The main process waits until both have said who they are (slow in an emulated guest).
ESCAPES = (
    "(setsid env -u SANDBOX_RUN_JOB sh -c 'echo daemon $$; touch {d}/{m}.a; exec sleep 300' {m}-a &); "
    "(sh -c 'echo loop $$; touch {d}/{m}.b; while :; do sh -c \"sleep 300\" {m}-c & sleep 0.01; done' {m}-b &); "
    "while [ ! -e {d}/{m}.a ] || [ ! -e {d}/{m}.b ]; do sleep 0.05; done; rm {d}/{m}.a {d}/{m}.b; "
    "sleep 0.3; echo \"marker $SANDBOX_RUN_JOB\"; exit 7"
)


def cleanup(marker: str) -> None:
    """Whatever a failed test left (a fork loop included: stopped first, then killed)."""
    for _ in range(20):
        if not host_processes_with(marker):
            return
        subprocess.run(["pkill", "-STOP", "-f", marker], capture_output=True, check=False)
        subprocess.run(["pkill", "-KILL", "-f", marker], capture_output=True, check=False)


def _escapes_gone(out: str, marker: str) -> None:
    pids = [int(line.split()[1]) for line in out.splitlines() if line.split()[0] in ("daemon", "loop")]
    assert len(pids) == 2, out
    job_marker = next(line.split()[1] for line in out.splitlines() if line.startswith("marker "))
    assert wait_until(lambda: not any(alive(p) for p in pids), timeout=5), pids
    assert host_processes_with(marker) == []
    assert carrying(f"SANDBOX_RUN_JOB={job_marker}".encode()) == []


def test_a_user_s_daemon_and_fork_loop_go_with_the_main_process(user: str) -> None:
    marker = f"sbtp-esc-{uuid.uuid4().hex[:8]}"
    report = HOME / "r.json"
    try:
        r = run_as_user("--tracking", "process-tree", "--report", str(report), "--", "sh", "-c",
                        ESCAPES.format(m=marker, d=HOME))
        assert r.returncode == 7, r.stderr
        data = _report(report)
        assert (data["tracking"], data["cgroup"], data["status"]) == ("process-tree", None, "exited"), data
        assert data["tracked_by"] == ["tree", "environ"] and data["tracking_gid"] is None
        assert "pid namespace" in data["isolation_not_provided"]  # type: ignore[operator]
        assert data["memory_peak_source"] == "max_rss_of_largest_process"  # a lower bound, and said so
        _escapes_gone(r.stdout, marker)
    finally:
        cleanup(marker)


def test_an_orphaned_grandchild_s_cpu_is_counted(user: str) -> None:
    report = HOME / "r.json"
    flag = HOME / "burnt"
    script = (f"(setsid python3 -c '{BURN}\nopen(\"{flag}\", \"w\")' &); "
              f"while [ ! -e {flag} ]; do sleep 0.05; done; sleep 0.2; rm {flag}")
    r = run_as_user("--tracking", "process-tree", "--report", str(report), "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    data = _report(report)
    cpu = float(data["cpu_user_seconds"]) + float(data["cpu_system_seconds"])  # type: ignore[arg-type]
    assert cpu >= 0.8, data


def test_limits_are_refused_in_one_line_with_nothing_made(user: str) -> None:
    report = HOME / "r.json"
    marker = f"sbtp-lim-{uuid.uuid4().hex[:8]}"
    r = run_as_user("--tracking", "process-tree", "--mem", "64M", "--report", str(report), "--",
                    "sh", "-c", f"echo {marker}; sleep 30")
    assert r.returncode == 125 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("sandbox-run: --mem cannot be enforced without a cgroup")
    assert "--limits best-effort" in r.stderr
    data = _report(report)
    assert data["status"] == "failed_to_start"
    assert host_processes_with(marker) == []
    assert not (HOME / "sandbox").exists() or not [p for p in (HOME / "sandbox").iterdir()]


def test_best_effort_runs_and_names_what_went_unenforced(user: str) -> None:
    report = HOME / "r.json"
    r = run_as_user("--tracking", "process-tree", "--mem", "64M", "--pids", "50", "--limits", "best-effort",
                    "--report", str(report), "--", "true")
    assert r.returncode == 0, r.stderr
    data = _report(report)
    assert data["tracking"] == "process-tree" and data["limits_not_enforced"] == ["--mem", "--pids"], data
    assert data["memory_limit_bytes"] is None  # not in force


def test_isolation_that_needs_a_namespace_is_refused(user: str) -> None:
    r = run_as_user("--tracking", "process-tree", "--hide", "/srv", "--", "true")
    assert r.returncode == 125
    assert r.stderr.count("\n") == 1 and "--hide needs a namespace" in r.stderr, r.stderr


def _start(cmd: list[str], **kw: object) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, **kw)  # type: ignore[call-overload]
    assert proc.stdout is not None
    lines = []
    while True:
        line = proc.stdout.readline()
        assert line, f"the job ended early: {lines}"
        lines.append(line.strip())
        if line.strip() == "ready":
            return proc, lines


def test_a_user_s_orphans_of_a_killed_launcher_are_found_by_marker(user: str) -> None:
    marker = f"sbtp-ugc-{uuid.uuid4().hex[:8]}"
    flag = HOME / marker
    script = (f"(setsid sh -c 'echo daemon $$; touch {flag}; exec sleep 300' {marker} &); "
              f"while [ ! -e {flag} ]; do sleep 0.05; done; echo ready; sleep 300")
    cmd = _as_user(SANDBOX_RUN, "--tracking", "process-tree", "--name", f"ugc-{marker[-8:]}", "--", "sh", "-c", script)
    proc, lines = _start(cmd, cwd=HOME, env=_user_env())
    try:
        daemon = int(next(ln.split()[1] for ln in lines if ln.startswith("daemon")))
        os.kill(proc.pid, signal.SIGKILL)  # setpriv and its shell exec'd: this is the launcher
        proc.wait(timeout=10)
        assert alive(daemon)  # the system's init has it now: the documented blind spot
        gc = subprocess.run(_as_user(SANDBOX, "gc"), capture_output=True, text=True, timeout=60, check=False,
                            cwd=HOME, env=_user_env())
        assert gc.returncode == 0, gc.stderr
        assert wait_until(lambda: not alive(daemon), timeout=5)
        assert host_processes_with(marker) == []
    finally:
        cleanup(marker)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_root_with_a_gid_range_tags_the_job_and_gc_kills_orphans_by_it(
    user: str, site: dict[str, str], tmp_path: Path
) -> None:
    marker = f"sbtp-gid-{uuid.uuid4().hex[:8]}"
    report = tmp_path / "lost.json"
    flag = HOME / marker  # the job's user can write there
    # the daemon drops the environment marker: only the GID can still name it
    script = (
        "grep Groups: /proc/self/status; "
        "python3 -c 'import os; os.setgroups([])' 2>/dev/null && echo shed || echo kept; "
        f"(setsid env -u SANDBOX_RUN_JOB sh -c 'echo daemon $$; touch {flag}; exec sleep 300' {marker} &); "
        f"while [ ! -e {flag} ]; do sleep 0.05; done; echo ready; sleep 300"
    )
    cmd = [SANDBOX_RUN, "--tracking", "process-tree", "--user", USER, "--report", str(report), "--", "sh", "-c", script]
    proc, lines = _start(cmd, env=site)
    try:
        groups = next(ln for ln in lines if ln.startswith("Groups:")).split()[1:]
        [gid] = [int(g) for g in groups if 61000 <= int(g) <= 61049]
        assert "kept" in lines and "shed" not in lines  # no CAP_SETGID: setgroups fails
        daemon = int(next(ln.split()[1] for ln in lines if ln.startswith("daemon")))
        assert daemon in with_gid(gid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert wait_until(lambda: _comm(daemon) == "sleep" and alive(daemon))  # orphaned, alive
        gc = subprocess.run([SANDBOX, "gc"], capture_output=True, text=True, timeout=60, check=False, env=site)
        assert gc.returncode == 0, gc.stderr
        assert wait_until(lambda: with_gid(gid) == [], timeout=5), with_gid(gid)
        assert host_processes_with(marker) == []
        lost = _report(report)  # written by gc, the launcher could not
        assert (lost["status"], lost["tracking"]) == ("launcher_lost", "process-tree"), lost
    finally:
        cleanup(marker)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_root_without_a_range_tracks_by_tree_and_marker_and_says_so(user: str, tmp_path: Path) -> None:
    marker = f"sbtp-root-{uuid.uuid4().hex[:8]}"
    report = tmp_path / "r.json"
    env = {**os.environ, "SANDBOX_STATE_DIR": str(tmp_path / "state"), "SANDBOX_CONFIG": str(tmp_path / "none.toml")}
    try:
        r = subprocess.run([SANDBOX_RUN, "--tracking", "process-tree", "--report", str(report), "--", "sh", "-c",
                            ESCAPES.format(m=marker, d=tmp_path)], capture_output=True, text=True, timeout=60,
                           check=False, env=env)
        assert r.returncode == 7, r.stderr
        data = _report(report)
        assert data["tracking"] == "process-tree" and data["tracked_by"] == ["tree", "environ"], data
        assert data["tracking_gid"] is None
        _escapes_gone(r.stdout, marker)
        assert not [p for p in (tmp_path / "state").iterdir() if p.name != "gids"]
    finally:
        cleanup(marker)


def test_live_control_of_a_process_tree_job(user: str, site: dict[str, str]) -> None:
    marker = f"sbtp-ctl-{uuid.uuid4().hex[:8]}"
    name = f"ctl-{marker[-8:]}"
    script = f"(setsid sh -c 'sleep 300' {marker} &); trap 'exit 3' TERM; echo ready; while :; do sleep 0.1; done"
    proc, _ = _start([SANDBOX_RUN, "--tracking", "process-tree", "--name", name, "--", "sh", "-c", script], env=site)

    def sandbox(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SANDBOX, *args], capture_output=True, text=True, timeout=60, check=False, env=site)

    try:
        assert wait_until(lambda: name in sandbox("list").stdout)
        ps = sandbox("ps", name, "--json")
        assert ps.returncode == 0, ps.stderr
        [sb] = json.loads(ps.stdout)
        commands = [p["command"] for p in sb["processes"]]
        assert any(marker in c for c in commands) and "sandbox-init" in commands, commands
        kill = sandbox("kill", "--signal", "TERM", name)
        assert kill.returncode == 0, kill.stderr
        assert proc.wait(timeout=30) == 3
        assert host_processes_with(marker) == []
    finally:
        cleanup(marker)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.guest_only  # it changes a sysctl
def test_without_user_namespaces_an_ordinary_user_gets_process_tree(user: str) -> None:
    path = Path("/proc/sys/user/max_user_namespaces")
    old = path.read_text()
    path.write_text("0\n")
    try:
        report = HOME / "r.json"
        r = run_as_user("--report", str(report), "--", "sh", "-c", "echo $SANDBOX_RUN_JOB")
        assert r.returncode == 0, r.stderr
        data = _report(report)
        assert data["tracking"] == "process-tree" and data["cgroup"] is None, data
        assert r.stdout.startswith(f"{data['name']}:")
        refused = run_as_user("--mem", "64M", "--", "true")
        assert refused.returncode == 125 and "max_user_namespaces" in refused.stderr, refused.stderr
    finally:
        path.write_text(old)


def test_a_timeout_ends_a_family_that_ignores_sigterm(user: str, tmp_path: Path) -> None:
    marker = f"sbtp-tmo-{uuid.uuid4().hex[:8]}"
    report = tmp_path / "r.json"
    env = {**os.environ, "SANDBOX_STATE_DIR": str(tmp_path / "state")}
    script = f"(setsid sh -c 'trap \"\" TERM; sleep 300' {marker} &); trap '' TERM; sleep 300"
    try:
        r = subprocess.run([SANDBOX_RUN, "--tracking", "process-tree", "--timeout", "1", "--kill-grace", "0.5",
                            "--report", str(report), "--", "sh", "-c", script],
                           capture_output=True, text=True, timeout=60, check=False, env=env)
        assert r.returncode == 124, r.stderr
        assert _report(report)["status"] == "timed_out"
        assert host_processes_with(marker) == []
    finally:
        cleanup(marker)
