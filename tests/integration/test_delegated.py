"""Rootless on a delegated cgroup, no setuid anywhere: a real ordinary user (created here)
is handed a cgroup as systemd's user@UID.service does it (Delegate=yes: the directory and
its cgroup.procs, cgroup.subtree_control and cgroup.threads chowned to the user, the
controllers enabled in the parent's cgroup.subtree_control, a shell of theirs in it), and
runs sandbox-run as themselves, with no switchboard installed. The launcher moves the busy
cgroup's processes into a leaf, makes the sandbox's cgroup beside it and sets its limits:
an OOM kill at --mem, exact CPU of a double-forked daemon, every escapee killed at the
end, `sandbox ps/usage/suspend/resume/kill` for the user, and nothing left behind. Pure
cgroup v2 only (the v2 guest lane): on the hybrid layout the mode is never chosen (unit
tests, tests/unit/test_privilege.py)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.cgroups.delegation import DELEGATED_FILES
from sandbox.cgroups.v2 import LEAF
from sandbox.ns.user import unavailable
from sandbox.state import SUFFIX
from tests.conftest import IS_ROOT, LAYOUT, SANDBOX, SANDBOX_RUN
from tests.integration.test_core import host_processes_with, wait_until

pytestmark = [
    pytest.mark.cgroup,
    pytest.mark.layout("v2"),
    pytest.mark.skipif(not IS_ROOT, reason="needs root (creates a user and delegates a cgroup to it)"),
    pytest.mark.skipif(unavailable() is not None, reason=f"{unavailable()}"),
]

USER = "sbt-delegated"
HOME = Path(f"/home/{USER}")
CONTROLLERS = ("cpu", "memory", "pids")


def _user_gone() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return True
    return False


def _empty_tree(own: Path, top: Path) -> None:
    """Move every process of top's tree back to own, then remove the tree, deepest first."""
    for sub in sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        for pid in (sub / "cgroup.procs").read_text().split():
            (own / "cgroup.procs").write_text(pid)
        os.rmdir(sub)
    for pid in (top / "cgroup.procs").read_text().split():
        (own / "cgroup.procs").write_text(pid)
    os.rmdir(top)


def _as_user(*argv: str) -> list[str]:
    # Through a shell, as in a login: setpriv's own exec keeps root's capabilities.
    return ["setpriv", "--reuid", USER, "--regid", USER, "--init-groups", "/bin/sh", "-c", 'exec "$0" "$@"', *argv]


def _env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(HOME), "XDG_RUNTIME_DIR": str(HOME),
            "SANDBOX_TEST_RUN": os.environ.get("SANDBOX_TEST_RUN", "")}


@pytest.fixture(scope="module")
def delegated() -> Iterator[Path]:
    """The user's delegated cgroup, with a shell of theirs in it (their login session)."""
    assert LAYOUT.unified is not None
    subprocess.run(["userdel", "-r", USER], capture_output=True, check=False)
    subprocess.run(["useradd", "-m", USER], check=True, capture_output=True)
    pw = pwd.getpwnam(USER)
    own = Path(LAYOUT.unified.directory(LAYOUT.unified.own_path))
    top = own / f"sbtest-deleg-{uuid.uuid4().hex[:8]}"  # the "user-UID.slice": root's
    shell = None
    try:
        wanted = set(CONTROLLERS) - set((own / "cgroup.subtree_control").read_text().split())
        if wanted:
            (own / "cgroup.subtree_control").write_text(" ".join("+" + c for c in sorted(wanted)))
        top.mkdir()
        (top / "cgroup.subtree_control").write_text(" ".join("+" + c for c in CONTROLLERS))
        d = top / f"user@{pw.pw_uid}.service"
        d.mkdir()
        for name in ("", *DELEGATED_FILES):
            os.chown(d / name if name else d, pw.pw_uid, pw.pw_gid)
        shell = subprocess.Popen(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(d),
                                  *_as_user("sleep", "3000")], env=_env())
        assert wait_until(lambda: str(shell.pid) in (d / "cgroup.procs").read_text().split())
        yield d
    finally:
        if shell is not None:
            shell.kill()
            shell.wait()
        subprocess.run(["pkill", "-KILL", "-u", USER], capture_output=True, check=False)
        if top.exists():
            wait_until(lambda: not any(p.read_text().strip() for p in top.rglob("cgroup.procs")), timeout=5)
            _empty_tree(own, top)
        subprocess.run(["userdel", "-r", USER], capture_output=True, check=False)
    assert not top.exists() and _user_gone()


@pytest.fixture(autouse=True)
def nothing_left(delegated: Path) -> Iterator[None]:
    yield
    assert [c.name for c in delegated.iterdir() if c.is_dir() and c.name != LEAF] == []  # no sandbox cgroup
    state = HOME / "sandbox"
    assert not state.exists() or not list(state.iterdir()), list(state.iterdir())


def _from(delegated: Path, *argv: str) -> list[str]:
    """argv run as the user from inside their delegated cgroup (its leaf once a launcher
    made one: v2 forbids processes in a cgroup that enables controllers for children)."""
    where = delegated / LEAF if (delegated / LEAF).is_dir() else delegated
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(where), *_as_user(*argv)]


def run_as_user(delegated: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_from(delegated, SANDBOX_RUN, *args), capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=HOME, env=_env())


def _report(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_text())
    path.unlink()
    return data


def test_mem_limit_oom_kills_in_the_users_own_cgroup(delegated: Path) -> None:
    report = HOME / "r.json"
    r = run_as_user(delegated, "--mem", "64M", "--report", str(report), "--", "python3", "-c",
                    "b = b'x' * (200 << 20)")
    assert r.returncode == -signal.SIGKILL, r.stderr  # 137 in a shell: sandbox-run dies as its job did
    data = _report(report)
    assert (data["tracking"], data["cgroup_version"], data["status"]) == ("cgroup", "v2", "oom_killed"), data
    assert data["cgroup"] == f"{delegated}/sandbox-{data['name']}"  # in the delegated subtree, beside the leaf
    assert data["memory_limit_bytes"] == 64 << 20 and isinstance(data["oom_kills"], int) and data["oom_kills"] >= 1
    # the user's shell was moved into the leaf with the launcher, inside the same cgroup
    assert (delegated / "cgroup.procs").read_text() == ""
    assert set(CONTROLLERS) <= set((delegated / "cgroup.subtree_control").read_text().split())


def test_escapee_killed_and_cpu_of_a_double_forked_daemon_exact(delegated: Path) -> None:
    marker = f"sbtest-dg-{uuid.uuid4().hex[:8]}"
    report, done = HOME / "r.json", HOME / "burnt"
    # a double-forked setsid daemon burns 1 s of CPU, says so (a file, and a byte down the
    # pipe it inherited), then hides; the main process ends when that byte comes, with no
    # polling of its own (a loop of sleeps cost seconds of CPU under emulation)
    burn = (f"import sys, time\nwhile time.process_time() < 1.0: pass\nopen({str(done)!r}, 'w').close()\n"
            "sys.stdout.write('x'); sys.stdout.flush()\ntime.sleep(300)")
    r = run_as_user(delegated, "--pids", "50", "--report", str(report), "--", "sh", "-c",
                    f"(setsid python3 -c \"$0\" {marker} &) | head -c 1 >/dev/null", burn)
    assert r.returncode == 0, r.stderr
    assert done.exists()
    done.unlink()
    data = _report(report)
    assert data["tracking"] == "cgroup"
    cpu = data["cpu_user_seconds"] + data["cpu_system_seconds"]  # type: ignore[operator]
    assert 1.0 <= cpu < 4.0, data  # the daemon's second, never reaped by the job, and its start
    assert isinstance(data["pids_peak"], int) and data["pids_peak"] >= 2
    assert host_processes_with(marker) == []  # killed with the cgroup at the end


def test_the_user_controls_their_own_sandbox(delegated: Path) -> None:
    marker = f"sbtest-dgc-{uuid.uuid4().hex[:8]}"
    name = f"dg-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        _from(delegated, SANDBOX_RUN, "--name", name, "--", "sh", "-c",
              f"(setsid sh -c 'sleep 300' {marker} &); trap 'exit 3' TERM; echo ready; while :; do sleep 0.1; done"),
        stdout=subprocess.PIPE, text=True, cwd=HOME, env=_env(),
    )

    def sandbox(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(_as_user(SANDBOX, *args), capture_output=True, text=True, timeout=60, check=False,
                              cwd=HOME, env=_env())

    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert wait_until((HOME / "sandbox" / f"{name}{SUFFIX}").exists)
        assert wait_until(lambda: bool(host_processes_with(marker)))
        _another_user_cannot_touch_it(name, delegated / f"sandbox-{name}")
        ps = sandbox("ps", name, "--json")
        assert ps.returncode == 0, ps.stderr
        [sb] = json.loads(ps.stdout)
        assert any(marker in p["command"] for p in sb["processes"]), sb
        usage = sandbox("usage", name)
        assert usage.returncode == 0, usage.stderr
        assert json.loads(usage.stdout)["memory_current_bytes"] is not None  # figures from its cgroup
        cg = delegated / f"sandbox-{name}"
        assert sandbox("suspend", name).returncode == 0
        assert "frozen 1" in (cg / "cgroup.events").read_text()
        assert sandbox("resume", name).returncode == 0
        assert "frozen 0" in (cg / "cgroup.events").read_text()
        kill = sandbox("kill", "--signal", "TERM", name)
        assert kill.returncode == 0, kill.stderr
        assert proc.wait(timeout=60) == 3
        assert host_processes_with(marker) == []
        assert not cg.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            for f in (HOME / "sandbox").glob("*"):
                f.unlink()  # the state of the launcher killed here


def _another_user_cannot_touch_it(name: str, cg: Path) -> None:
    """`nobody` copies the user's state into its own state directory, claiming the
    sandbox as theirs, and writes the cgroup's kill and freeze files directly: live
    control refuses (the cgroup is not theirs), the kernel refuses the writes, the job
    runs on unfrozen."""
    nobody = pwd.getpwnam("nobody")
    runtime = Path(tempfile.mkdtemp(prefix="sbt-nobody-"))
    try:
        data = json.loads((HOME / "sandbox" / f"{name}{SUFFIX}").read_text())
        data["uid"] = nobody.pw_uid
        (runtime / "sandbox").mkdir()
        (runtime / "sandbox" / f"{name}{SUFFIX}").write_text(json.dumps(data))
        for path in (runtime, runtime / "sandbox", runtime / "sandbox" / f"{name}{SUFFIX}"):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        env = {"PATH": "/usr/bin:/bin", "HOME": "/", "XDG_RUNTIME_DIR": str(runtime)}
        as_nobody = ["setpriv", "--reuid", "nobody", "--regid", str(nobody.pw_gid), "--clear-groups"]
        for cmd in (["kill", name], ["suspend", name]):
            r = subprocess.run([*as_nobody, SANDBOX, *cmd], capture_output=True, text=True, env=env, timeout=60,
                               check=False)
            assert r.returncode == 125 and "belongs to another user" in r.stderr, (cmd, r.stderr)
        for f in ("cgroup.kill", "cgroup.freeze", "memory.max"):
            r = subprocess.run([*as_nobody, "sh", "-c", 'echo 1 > "$0"', str(cg / f)], capture_output=True,
                               text=True, env=env, timeout=60, check=False)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (f, r.stderr)
        assert "frozen 0" in (cg / "cgroup.events").read_text() and "populated 1" in (cg / "cgroup.events").read_text()
        assert (cg / "memory.max").read_text().strip() == "max"
    finally:
        shutil.rmtree(runtime)


def test_the_job_cannot_raise_its_own_limit(delegated: Path) -> None:
    """The attack: the job runs as the user who owns its cgroup's memory.max (the
    delegated mode makes that cgroup as the user) and writes "max" there before it
    allocates. Its cgroup tree is read-only: the write fails and the job is OOM-killed at
    its limit; the file still says 64M."""
    name = f"sbtest-raise-{uuid.uuid4().hex[:6]}"
    attack = (f"import glob\nd = glob.glob('/sys/fs/cgroup/**/sandbox-{name}', recursive=True)[0]\n"
              "try:\n    open(d + '/memory.max', 'w').write('max')\n    print('raised', flush=True)\n"
              "except OSError as e:\n"
              "    print('refused', e.errno, open(d + '/memory.max').read().strip(), flush=True)\n"
              "b = b'x' * (200 << 20)")
    report = HOME / "r.json"
    r = run_as_user(delegated, "--name", name, "--mem", "64M", "--report", str(report), "--", "python3", "-c", attack)
    data = _report(report)
    assert r.stdout.split() == ["refused", "30", str(64 << 20)], (r.stdout, r.stderr)  # EROFS
    assert r.returncode == -signal.SIGKILL and data["status"] == "oom_killed", (r.stderr, data)
