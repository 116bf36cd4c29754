"""The switchboard, for real: installed by helpers/install-switchboard, run through its
setuid wrapper by real unprivileged users that these tests create (and remove, also
on failure). After every refused request nothing under the cgroup parents changed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT, LAYOUT, ROOT, SANDBOX, SANDBOX_RUN

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root (installs a setuid helper, creates users)"),
              pytest.mark.cgroup]

WRAPPER = "/usr/local/libexec/sandbox/sandbox-switchboard"
CONFIG = Path("/etc/sandbox/switchboard.toml")
LOG = Path("/var/log/sandbox-switchboard-test.log")
MEMBER, MEMBER2, OUTSIDER = "sbt-member", "sbt-member2", "sbt-outsider"
XROOT = Path("/srv/sbt-execute")  # the test's execute root
OUTSIDE = Path("/srv/sbt-outside")  # a member's directory outside every execute root
MAX_MEM = 1 << 30
CAP = 30  # live sandboxes per member (above the 25 of the symlink race test)


def _own_cgroup(key: str) -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if (key == "unified" and ctrls == "") or key in ctrls.split(","):
                return path
    return "/"


def _config() -> str:
    parents = "\n".join(
        f'{k} = "{_own_cgroup(k).rstrip("/")}/sbt-switchboard"'
        for k in ("memory", "pids", "cpu", "cpuacct", "blkio", "freezer", "unified") if _own_cgroup(k) != "/"
    )
    return f"""allowed_groups = ["sandbox"]
allowed_users = []
execute_roots = ["{XROOT}"]
log_file = "{LOG}"
[limits]
max_memory_bytes = {MAX_MEM}
max_swap_bytes = 0
max_pids = 512
max_cpus = 2
max_sandboxes_per_member = {CAP}
[cgroup]
parent = "/sbt-switchboard"
[cgroup.parents]
{parents}
"""


@pytest.fixture(scope="session")
def switchboard() -> Iterator[None]:
    import fcntl

    # The installation is machine-wide: test sessions running at the same time (several
    # engineers, CI) take turns instead of uninstalling it under each other.
    lock = os.open("/run/lock/sandbox-switchboard-tests.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield from _installed()
    finally:
        os.close(lock)


def _installed() -> Iterator[None]:
    saved = CONFIG.read_bytes() if CONFIG.exists() else None
    had_group = subprocess.run(["getent", "group", "sandbox"], capture_output=True, check=False).returncode == 0
    users: list[str] = []
    try:
        inst = subprocess.run([str(ROOT / "helpers" / "install-switchboard")], capture_output=True, text=True,
                              check=False)
        assert inst.returncode == 0, f"install-switchboard failed ({inst.returncode}): {inst.stderr}"
        CONFIG.write_text(_config())
        os.chmod(CONFIG, 0o644)
        for user, member in ((MEMBER, True), (MEMBER2, True), (OUTSIDER, False)):
            subprocess.run(["userdel", "-r", user], capture_output=True, check=False)
            subprocess.run(["useradd", "-m", *(["-G", "sandbox"] if member else []), user], check=True)
            users.append(user)
        for d in (XROOT, OUTSIDE):
            d.mkdir(exist_ok=True)
        shutil.chown(OUTSIDE, MEMBER, MEMBER)
        (XROOT / MEMBER).mkdir(exist_ok=True)
        shutil.chown(XROOT / MEMBER, MEMBER, MEMBER)
        make_slot(SLOT)
        yield
    finally:
        remove_slot(_dirs(SLOT))
        for user in users:
            uid = subprocess.run(["id", "-u", user], capture_output=True, text=True, check=False).stdout.strip()
            if uid.isdigit():  # a launch without XDG_RUNTIME_DIR keeps its state there
                shutil.rmtree(f"/tmp/sandbox-run-{uid}", ignore_errors=True)
            subprocess.run(["userdel", "-r", user], capture_output=True, check=False)
        for d in (XROOT, OUTSIDE):
            shutil.rmtree(d, ignore_errors=True)
        subprocess.run(
            [str(ROOT / "helpers" / "install-switchboard"), "--uninstall", *([] if had_group else ["--remove-group"])],
            capture_output=True, check=False,
        )
        if saved is not None:
            CONFIG.parent.mkdir(exist_ok=True)
            CONFIG.write_bytes(saved)
            os.chmod(CONFIG, 0o644)
        else:  # ours, not the installer's default: --uninstall leaves it
            CONFIG.unlink(missing_ok=True)
            try:
                CONFIG.parent.rmdir()
            except OSError:
                pass
        for d in _parents():
            try:
                os.rmdir(d)
            except OSError:
                pass
        for p in LOG.parent.glob(LOG.name + "*"):
            p.unlink()


SLOT = "sbt-slot"  # where the tests' members sit, as in a batch slot: their sandboxes nest in it
LEAF = "sandbox.leaf"  # on v2, where a busy cgroup's processes move so that it may have children


def _dirs(name: str) -> list[str]:
    """`name` below our own cgroup, in each hierarchy the switchboard uses here."""
    from sandbox.cgroups import job_cgroup

    out: list[str] = []
    for key in job_cgroup("x", None, LAYOUT).paths():
        h = LAYOUT.unified if key == "unified" else LAYOUT.v1[key]
        assert h is not None
        d = h.directory(h.own_path.rstrip("/") + "/" + name)
        if d not in out:  # controllers mounted together share a directory
            out.append(d)
    return out


def _parents() -> list[str]:
    return _dirs("sbt-switchboard") + _dirs(SLOT)


def make_slot(name: str, memory: int | None = None, cpu_quota_us: int | None = None) -> list[str]:
    """A root-made cgroup in every hierarchy standing in for a batch slot (with a memory
    limit, and a CPU quota per 100 ms period, where given)."""
    dirs = _dirs(name)
    for d in dirs:
        if os.path.exists(os.path.join(os.path.dirname(d), "cgroup.subtree_control")) and LAYOUT.kind == "v2":
            # v2: the slot offers the controllers to what nests in it (adding only)
            offered = Path(os.path.dirname(d), "cgroup.controllers").read_text().split()
            wanted = [c for c in ("memory", "pids", "cpu", "io") if c in offered]
            Path(os.path.dirname(d), "cgroup.subtree_control").write_text(" ".join("+" + c for c in wanted))
        os.makedirs(d, exist_ok=True)
        for limit in ("memory.limit_in_bytes", "memory.max"):
            if memory is not None and os.path.exists(os.path.join(d, limit)):
                Path(d, limit).write_text(str(memory))
        if cpu_quota_us is not None and os.path.exists(os.path.join(d, "cpu.cfs_quota_us")):
            Path(d, "cpu.cfs_period_us").write_text("100000")
            Path(d, "cpu.cfs_quota_us").write_text(str(cpu_quota_us))
        elif cpu_quota_us is not None and os.path.exists(os.path.join(d, "cpu.max")):
            Path(d, "cpu.max").write_text(f"{cpu_quota_us} 100000")
    return dirs


def remove_slot(dirs: list[str]) -> None:
    """Remove a slot and anything left in it, deepest first (a leftover fails the test)."""
    for d in dirs:
        for dirpath, _sub, _files in sorted(os.walk(d), key=lambda e: -e[0].count("/")):
            for _ in range(100):
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # processes still leaving
                    import time

                    time.sleep(0.05)


def in_slot(dirs: list[str], cmd: list[str]) -> list[str]:
    """`cmd`, started inside the slot: root moves the shell there, then execs `cmd`.

    On v2 a slot that already has sandboxes has its processes in its leaf (no internal
    processes once it has controllers enabled below it): a newcomer joins them there."""
    moves = " ".join(
        f"if [ -d '{d}/{LEAF}' ]; then f='{d}/{LEAF}/cgroup.procs'; else f='{d}/cgroup.procs'; fi; "
        'echo $$ > "$f" || exit 99;'
        for d in dirs
    )
    return ["/bin/sh", "-c", f'{moves} exec "$@"', "sh", *cmd]


def as_user(user: str, slot: str = SLOT) -> list[str]:
    # Through a shell: setpriv itself execs with root's capabilities still in effect
    # (the kernel then lets a non-member run the 4750 wrapper); a shell started by it
    # has none, like a real login.
    login = ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "/bin/sh", "-c", 'exec "$0" "$@"']
    return in_slot(_dirs(slot), login)


def started(proc: subprocess.Popen[bytes], comm: str = "sleep") -> subprocess.Popen[bytes]:
    """Wait until the shell that `in_slot` starts has become `comm` (so the PID is the job's)."""
    import time

    for _ in range(500):
        try:
            if Path(f"/proc/{proc.pid}/comm").read_text().strip() == comm:
                return proc
        except FileNotFoundError:
            break
        time.sleep(0.01)
    raise AssertionError(f"{comm} did not start")


def snapshot() -> set[tuple[str, int]]:
    found = set()
    for parent in _parents():
        for dirpath, _subdirs, _files in os.walk(parent):
            # the parent itself is made once and stays; so does a v2 slot's leaf, made by
            # the first create there (it holds the slot's processes, it is no sandbox)
            if dirpath != parent and os.path.basename(dirpath) != LEAF:
                found.add((dirpath, os.stat(dirpath).st_uid))
    return found


def ask(user: str, body: bytes | dict[str, object], env: dict[str, str] | None = None,
        wrapper: str = WRAPPER, slot: str = SLOT) -> subprocess.CompletedProcess[bytes]:
    raw = body if isinstance(body, bytes) else json.dumps({"version": 1, **body}).encode()
    return subprocess.run([*as_user(user, slot), wrapper],
                          input=raw, capture_output=True, timeout=60, check=False, env=env or {"PATH": "/usr/bin:/bin"})


def refused(user: str, body: bytes | dict[str, object], why: str, **kw: object) -> None:
    before = snapshot()
    r = ask(user, body, **kw)  # type: ignore[arg-type]
    assert r.returncode != 0, r.stdout
    err = r.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("sandbox-switchboard: "), err
    assert why in err, err
    assert snapshot() == before


@pytest.fixture
def cleanup() -> Iterator[list[tuple[str, str]]]:
    made: list[tuple[str, str]] = []
    yield made
    for user, name in made:
        ask(user, {"op": "destroy", "name": name})


BAD = [
    (b'{"version": 1, "op": "create", "name": "x"', "not valid JSON"),
    (b"\x00\x01garbage", "not valid JSON"),
    (b" " * 5000, "larger than"),
    ({"op": "chown", "name": "x"}, "unknown operation"),
    (b'{"version": 7, "op": "destroy", "name": "x"}', "version"),
    ({"op": "create", "name": "a/b", "limits": {}}, "name"),
    ({"op": "create", "name": "..", "limits": {}}, "name"),
    ({"op": "create", "name": "a\0b", "limits": {}}, "name"),
    ({"op": "create", "name": "x" * 65, "limits": {}}, "name"),
    ({"op": "create", "name": "neg", "limits": {"memory": -5}}, "memory"),
    ({"op": "create", "name": "big", "limits": {"memory": MAX_MEM + 1}}, "above the maximum"),
    ({"op": "create", "name": "pids", "limits": {"pids": 513}}, "above the maximum"),
    ({"op": "create", "name": "cpus", "limits": {"cpus": 3}}, "above the maximum"),
    ({"op": "create", "name": "sw", "limits": {"memory": 1 << 26, "swap": 1}}, "above the maximum"),
    ({"op": "destroy", "name": "nonexistent"}, "no sandbox named"),
    ({"op": "attach", "name": "nonexistent", "pid": 2}, "no sandbox named"),
]


@pytest.mark.parametrize("body,why", BAD, ids=[str(i) for i in range(len(BAD))])
# the helper's request and path checks come before any cgroup: the same on every layout, a host test
@pytest.mark.host_only
def test_bad_requests_refused(switchboard: None, body: bytes | dict[str, object], why: str) -> None:
    refused(MEMBER, body, why)


def test_create_attach_destroy(switchboard: None, cleanup: list[tuple[str, str]]) -> None:
    before = snapshot()
    r = ask(MEMBER, {"op": "create", "name": "sbt-ok", "limits": {"memory": 1 << 26}})
    assert r.returncode == 0, r.stderr
    cleanup.append((MEMBER, "sbt-ok"))
    reply = json.loads(r.stdout)
    uid = int(subprocess.run(["id", "-u", MEMBER], capture_output=True, text=True, check=True).stdout)
    for key, path in reply["paths"].items():
        assert SLOT in path, path  # nested where the caller sits
        # v2: the directory, as a delegation (a move needs the common ancestor, which stays
        # root's); v1: nothing that moves a process (a v1 move needs only the destination)
        owner = uid if key == "unified" else 0
        assert os.stat(path).st_uid == owner, key
        assert os.stat(os.path.join(path, "cgroup.procs")).st_uid == owner, key
    if "memory" in reply["paths"]:
        assert Path(reply["paths"]["memory"], "memory.limit_in_bytes").read_text().strip() == str(1 << 26)
        assert os.stat(os.path.join(reply["paths"]["memory"], "memory.limit_in_bytes")).st_uid == 0
    # unset limits become the configured maxima
    assert reply["limits"]["pids"] == 512
    refused(MEMBER, {"op": "create", "name": "sbt-ok", "limits": {}}, "already exists")
    # another user's sandbox: neither attach nor destroy
    sleeper = subprocess.Popen(in_slot(_dirs(SLOT), ["setpriv", "--reuid", MEMBER2, "--regid", MEMBER2, "--init-groups",
                                                     "sleep", "60"]))
    started(sleeper)
    try:
        refused(MEMBER2, {"op": "destroy", "name": "sbt-ok"}, "another user")
        refused(MEMBER2, {"op": "attach", "name": "sbt-ok", "pid": sleeper.pid}, "another user")
        # the caller's sandbox, another user's process
        refused(MEMBER, {"op": "attach", "name": "sbt-ok", "pid": sleeper.pid}, "not the caller's")
        refused(MEMBER, {"op": "attach", "name": "sbt-ok", "pid": os.getpid()}, "not the caller's")
    finally:
        sleeper.kill()
        sleeper.wait()
    mine = subprocess.Popen(in_slot(_dirs(SLOT), ["setpriv", "--reuid", MEMBER, "--regid", MEMBER, "--init-groups",
                                                  "sleep", "60"]))
    started(mine)
    try:
        r = ask(MEMBER, {"op": "attach", "name": "sbt-ok", "pid": mine.pid})
        assert r.returncode == 0, r.stderr
        cg = Path(f"/proc/{mine.pid}/cgroup").read_text()
        assert "sandbox-sbt-ok" in cg
        r = ask(MEMBER, {"op": "destroy", "name": "sbt-ok"})
        assert r.returncode == 0, r.stderr
        assert mine.wait(timeout=10) == -9  # destroy killed it
    finally:
        mine.kill()
        mine.wait()
    assert snapshot() == before
    log = LOG.read_text()
    assert "op=create" in log and "op=destroy" in log and "REFUSED" in log and f"({MEMBER})" in log


PRE_TRACE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
r, w = os.pipe()
p = os.fork()
if p == 0:
    os.close(w)
    os.read(r, 1)
    os._exit(0)
if libc.ptrace(0x4206, p, None, None) != 0:  # PTRACE_SEIZE
    sys.exit(f"PTRACE_SEIZE: {os.strerror(ctypes.get_errno())}")
print(p, flush=True)
sys.stdin.read()
os.kill(p, 9)
os.waitpid(p, 0)
"""


# refused before any cgroup is written: the same on every layout
@pytest.mark.host_only
def test_attach_refuses_a_process_someone_traces(switchboard: None, cleanup: list[tuple[str, str]]) -> None:
    """A process the member traces itself (one way around the pin: a traced process cannot
    be seized) is refused with one line, and stays where it was, traced as before."""
    r = ask(MEMBER, {"op": "create", "name": "sbt-traced", "limits": {}})
    assert r.returncode == 0, r.stderr
    cleanup.append((MEMBER, "sbt-traced"))
    tracer = subprocess.Popen([*as_user(MEMBER), "/usr/bin/python3", "-c", PRE_TRACE], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tracer.stdout is not None
        line = tracer.stdout.readline()
        assert line.strip().isdigit(), tracer.stderr.read() if tracer.stderr else line
        pid = int(line)
        where, status = Path(f"/proc/{pid}/cgroup").read_text(), Path(f"/proc/{pid}/status").read_text()
        traced_by = [x.split()[1] for x in status.splitlines() if x.startswith("TracerPid:")]
        assert traced_by != ["0"], status
        refused(MEMBER, {"op": "attach", "name": "sbt-traced", "pid": pid}, f"process {pid} is being traced (by PID")
        assert Path(f"/proc/{pid}/cgroup").read_text() == where
        after = Path(f"/proc/{pid}/status").read_text()
        assert [x.split()[1] for x in after.splitlines() if x.startswith("TracerPid:")] == traced_by
    finally:
        tracer.communicate(timeout=30)
    assert tracer.returncode == 0


# the helper's request and path checks come before any cgroup: the same on every layout, a host test
@pytest.mark.host_only
def test_outsider_cannot_run_wrapper(switchboard: None) -> None:
    before = snapshot()
    r = ask(OUTSIDER, {"op": "destroy", "name": "x"})
    assert r.returncode != 0 and b"Permission denied" in r.stderr
    assert snapshot() == before


# the helper's request and path checks come before any cgroup: the same on every layout, a host test
@pytest.mark.host_only
def test_execute_dir_checks(switchboard: None, cleanup: list[tuple[str, str]]) -> None:
    link = XROOT / "link"
    link.unlink(missing_ok=True)
    link.symlink_to(OUTSIDE)
    try:
        refused(MEMBER, {"op": "create", "name": "x1", "limits": {}, "execute_dir": str(link)}, "symbolic link")
        refused(MEMBER, {"op": "create", "name": "x1", "limits": {}, "execute_dir": str(OUTSIDE)}, "execute root")
        refused(MEMBER2, {"op": "create", "name": "x1", "limits": {}, "execute_dir": str(XROOT / MEMBER)},
                "not owned")
        r = ask(MEMBER, {"op": "create", "name": "x1", "limits": {}, "execute_dir": str(XROOT / MEMBER)})
        assert r.returncode == 0, r.stderr
        cleanup.append((MEMBER, "x1"))
    finally:
        link.unlink()


# the helper's request and path checks come before any cgroup: the same on every layout, a host test
@pytest.mark.host_only
def test_directory_swapped_for_symlink(switchboard: None, cleanup: list[tuple[str, str]]) -> None:
    """A thread swaps the execute dir for a symlink (to the member's own directory outside
    the roots) and back, as fast as it can, while requests run: every request either
    checked the real directory or was refused; none ever checked the symlink's target."""
    swap = XROOT / "swap"
    real = XROOT / "swap.real"
    real.mkdir()
    shutil.chown(real, MEMBER, MEMBER)
    os.symlink(real, XROOT / "tmp-to-real")  # unused; keeps rename targets in one dir
    tmp_link = XROOT / "swap.link"
    os.symlink(OUTSIDE, tmp_link)
    real_ino = os.stat(real).st_ino
    outside_ino = os.stat(OUTSIDE).st_ino
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            os.rename(real, swap)  # swap is the real directory
            os.rename(swap, real)
            os.symlink(OUTSIDE, XROOT / "swap.new")
            os.rename(XROOT / "swap.new", swap)  # swap is a symlink
            os.unlink(swap)

    t = threading.Thread(target=flip)
    t.start()
    seen = {"ok": 0, "refused": 0}
    try:
        for i in range(25):
            name = f"sw{i}"
            r = ask(MEMBER, {"op": "create", "name": name, "limits": {}, "execute_dir": str(swap)})
            if r.returncode == 0:
                cleanup.append((MEMBER, name))
                checked = json.loads(r.stdout)["execute_dir"]
                assert checked[1] == real_ino and checked[1] != outside_ino
                seen["ok"] += 1
            else:
                seen["refused"] += 1
    finally:
        stop.set()
        t.join()
        for p in (swap, tmp_link, XROOT / "tmp-to-real", XROOT / "swap.new"):
            if p.is_symlink():
                p.unlink()
        shutil.rmtree(real, ignore_errors=True)
        shutil.rmtree(swap, ignore_errors=True)
    assert seen["refused"] > 0  # the race was run


# the helper's request and path checks come before any cgroup: the same on every layout, a host test
@pytest.mark.host_only
def test_writable_config_refused(switchboard: None) -> None:
    os.chmod(CONFIG, 0o666)
    try:
        refused(MEMBER, {"op": "create", "name": "cfg", "limits": {}}, "writable by root only")
    finally:
        os.chmod(CONFIG, 0o644)
    os.chown(CONFIG, 1, -1)  # owned by a non-root user (daemon)
    try:
        refused(MEMBER, {"op": "create", "name": "cfg", "limits": {}}, "owned by root")
    finally:
        os.chown(CONFIG, 0, -1)
    os.chmod(CONFIG.parent, 0o777)
    try:
        refused(MEMBER, {"op": "create", "name": "cfg", "limits": {}}, "writable by root only")
    finally:
        os.chmod(CONFIG.parent, 0o755)


# the helper's request and path checks come before any cgroup: the same on every layout, a host test
@pytest.mark.host_only
def test_hostile_environment(switchboard: None, tmp_path: Path, cleanup: list[tuple[str, str]]) -> None:
    """PYTHONPATH/PYTHONHOME/LD_PRELOAD/PATH/locale of the caller reach nothing that runs as root."""
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "pwned"
    for mod in ("json", "tomllib", "grp", "pwd", "site", "sitecustomize"):
        (evil / f"{mod}.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    os.chmod(tmp_path, 0o777)
    env = {
        "PATH": f"{evil}:/usr/bin:/bin", "PYTHONPATH": str(evil), "PYTHONHOME": str(evil),
        "PYTHONSTARTUP": str(evil / "site.py"), "PYTHONINSPECT": "1", "LD_PRELOAD": str(evil / "libevil.so"),
        "LD_LIBRARY_PATH": str(evil), "LC_ALL": "xx_XX.EVIL", "LANG": "tr_TR.UTF-8", "PYTHONWARNINGS": "error",
    }
    r = ask(MEMBER, {"op": "create", "name": "envtest", "limits": {}}, env=env)
    assert r.returncode == 0, r.stderr
    cleanup.append((MEMBER, "envtest"))
    assert not marker.exists()
    r = ask(MEMBER, {"op": "destroy", "name": "envtest"}, env=env)
    assert r.returncode == 0, r.stderr
    assert not marker.exists()


def _run_as(user: str, *args: str, slot: str = SLOT) -> subprocess.CompletedProcess[str]:
    home = f"/home/{user}"
    return subprocess.run(
        [*as_user(user, slot), SANDBOX_RUN, *args],
        capture_output=True, text=True, timeout=120, check=False, cwd=home,
        env={"PATH": "/usr/bin:/bin", "HOME": home, "XDG_RUNTIME_DIR": home},
    )


# the member's launch on each layout is test_member_job_is_limited's; this one's point (paths,
# the environment) is the same everywhere
@pytest.mark.host_only
def test_member_runs_sandbox_run(switchboard: None, tmp_path: Path) -> None:
    before = snapshot()
    report = Path(f"/home/{MEMBER}/report.json")
    r = _run_as(MEMBER, "--mem", "64M", "--report", str(report), "--", "id")
    assert r.returncode == 0, r.stderr
    uid = subprocess.run(["id", "-u", MEMBER], capture_output=True, text=True, check=True).stdout.strip()
    assert r.stdout.startswith(f"uid={uid}({MEMBER})"), r.stdout
    data = json.loads(report.read_text())
    assert data["status"] == "exited" and data["memory_limit_bytes"] == 64 << 20
    assert data["cpu_user_seconds"] is not None and data["memory_peak_bytes"]
    assert f"{SLOT}/sandbox-" in data["cgroup"]  # nested in the slot the member sits in
    assert snapshot() == before  # destroyed at the end


def test_member_job_is_limited(switchboard: None) -> None:
    r = _run_as(MEMBER, "--mem", "32M", "--", "/usr/bin/python3", "-c", "b = bytearray(200 << 20)")
    assert r.returncode == -signal.SIGKILL, r.stderr  # the OOM kill ends sandbox-run by SIGKILL


# the helper's request and path checks come before any cgroup: the same on every layout, a host test
@pytest.mark.host_only
def test_outsider_gets_125(switchboard: None) -> None:
    before = snapshot()
    r = _run_as(OUTSIDER, "--mem", "64M", "--", "id")
    assert r.returncode == 125
    assert r.stderr.count("\n") == 1 and "not a member of group 'sandbox'" in r.stderr, r.stderr
    assert snapshot() == before


# the member's launch on each layout is test_member_job_is_limited's; this one's point (paths,
# the environment) is the same everywhere
@pytest.mark.host_only
def test_member_runs_in_its_execute_dir(switchboard: None) -> None:
    """Without root, --execute-dir works too: the scratch /tmp is the member's own."""
    xdir = XROOT / MEMBER
    r = _run_as(MEMBER, "--execute-dir", str(xdir), "--", "sh", "-c", "pwd; echo hi > /tmp/f; stat -c '%U %a' /tmp")
    try:
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == str(xdir)
        assert lines[1] == f"{MEMBER} 700"
        assert (xdir / ".sandbox-tmp" / "f").read_text() == "hi\n"  # on the scratch disk
    finally:
        shutil.rmtree(xdir / ".sandbox-tmp", ignore_errors=True)
        shutil.rmtree(xdir / ".sandbox-var-tmp", ignore_errors=True)


# -- containment: what a member gets stays inside what it was given ----------------------


def _sandboxes_in(dirs: list[str]) -> list[str]:
    return [os.path.join(dp, n) for d in dirs for dp, subs, _f in os.walk(d) for n in subs if n.startswith("sandbox-")]


def test_sandbox_nests_in_the_members_slot_and_its_limit_holds(switchboard: None) -> None:
    """A root-made cgroup with a 100 MiB limit stands in for a batch slot: the member's
    sandbox is a child of it, its limit is bounded by the slot's, and the job is OOM-killed
    inside it (the report says oom_killed; sandbox-run ends by SIGKILL)."""
    dirs = make_slot("sbt-slot100", memory=100 << 20)
    report = Path(f"/home/{MEMBER}/report-slot.json")
    try:
        # unset: the slot's 100 MiB (the configured maximum is 1 GiB) in the slot's child
        r = ask(MEMBER, {"op": "create", "name": "sbt-inslot", "limits": {}}, slot="sbt-slot100")
        assert r.returncode == 0, r.stderr
        reply = json.loads(r.stdout)
        assert reply["limits"]["memory"] == 100 << 20
        # co-mounted v1 controllers (EL7's cpu,cpuacct) share a directory, reachable through
        # symbolic links: compare real paths, each of the sandbox's in some slot directory
        real = {os.path.realpath(d) for d in dirs}
        inside = {os.path.realpath(os.path.dirname(p)) for p in reply["paths"].values()}
        # on v1 asking for nothing tighter than the slot, the sandbox stays in the slot's
        # memory cgroup (where a batch system counts an OOM kill), named in `shared`
        inside |= {os.path.realpath(p) for p in reply["shared"].values()}
        assert set(reply["shared"]) == ({"memory"} if "memory" in LAYOUT.v1 else set()), reply
        assert inside == real, (reply["paths"], dirs)
        assert ask(MEMBER, {"op": "destroy", "name": "sbt-inslot"}, slot="sbt-slot100").returncode == 0
        # the job: OOM-killed in its sandbox, which sits in the slot (40 MiB left to the
        # launcher, so that the sandbox's limit, not the slot's, is the one reached)
        r = _run_as(MEMBER, "--mem", "60M", "--report", str(report), "--", "/usr/bin/python3", "-c",
                    "b = bytearray(300 << 20)", slot="sbt-slot100")
        assert r.returncode == -signal.SIGKILL, r.stderr
        data = json.loads(report.read_text())
        assert data["status"] == "oom_killed" and "sbt-slot100/sandbox-" in data["cgroup"], data
        # a limit above what encloses the caller is refused, with one line, nothing made
        r = _run_as(MEMBER, "--mem", "200M", "--", "true", slot="sbt-slot100")
        assert r.returncode == 125 and "above the enclosing cgroup's limit" in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1, r.stderr
        assert _sandboxes_in(dirs) == []
    finally:
        report.unlink(missing_ok=True)
        ask(MEMBER, {"op": "destroy", "name": "sbt-inslot"}, slot="sbt-slot100")
        remove_slot(dirs)


def test_cpus_above_the_slots_quota_runs_under_the_slots(switchboard: None) -> None:
    """A root-made cgroup with a 0.5-CPU quota stands in for a batch slot (here the v1 cpu
    hierarchy): a member's `--cpus 2` inside it runs, as root's does, with no quota of its
    own on v1 (which refuses a child quota above an ancestor's: the create failed with
    125) and the report states the quota in force, the slot's 0.5; nothing is left."""
    dirs = make_slot("sbt-slotcpu", cpu_quota_us=50_000)
    report = Path(f"/home/{MEMBER}/report-cpu.json")
    try:
        quotas = [d for d in dirs if os.path.exists(os.path.join(d, "cpu.cfs_quota_us"))
                  or os.path.exists(os.path.join(d, "cpu.max"))]
        assert quotas, "no cpu controller in the slot's hierarchies"
        r = _run_as(MEMBER, "--cpus", "2", "--report", str(report), "--", "true", slot="sbt-slotcpu")
        assert r.returncode == 0, r.stderr
        data = json.loads(report.read_text())
        assert data["status"] == "exited" and data["cpu_limit_cpus"] == 0.5, data
        assert "sbt-slotcpu/sandbox-" in data["cgroup"], data
        # below the slot's quota the sandbox has its own, and the report says so
        r = _run_as(MEMBER, "--cpus", "0.25", "--report", str(report), "--", "true", slot="sbt-slotcpu")
        assert r.returncode == 0, r.stderr
        assert json.loads(report.read_text())["cpu_limit_cpus"] == 0.25
        assert _sandboxes_in(dirs) == []
    finally:
        report.unlink(missing_ok=True)
        remove_slot(dirs)


def _job_pid(uid: int, marker: str, timeout: float = 20) -> int:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if os.stat(entry.path).st_uid == uid and marker in Path(entry.path, "cmdline").read_text():
                    return int(entry.name)
            except (FileNotFoundError, ProcessLookupError):
                continue
        time.sleep(0.05)
    raise AssertionError(f"no process of uid {uid} with {marker!r}")


WRITE_EVERYWHERE = """
import os, sys
pid, hits = sys.argv[1], []
for d in sys.argv[2:]:
    for name in os.listdir(d):
        path = os.path.join(d, name)
        if os.path.isdir(path):
            continue
        try:
            with open(path, "w") as f:
                f.write(pid)
            hits.append(path)
        except OSError:
            pass
    try:
        os.mkdir(os.path.join(d, "pull"))
        hits.append(d + "/pull (mkdir)")
        os.rmdir(os.path.join(d, "pull"))
    except OSError:
        pass
print(hits)
"""


def test_member_cannot_pull_roots_user_job_out_of_its_cgroup(switchboard: None, cleanup: list[tuple[str, str]]) -> None:
    """Root runs a --user MEMBER --mem 64M job. The member makes a sandbox and asks to
    attach the job's PID, then writes that PID into every file it was handed (and tries
    a sub-cgroup of its own on v1): the job stays where it is and is OOM-killed at 64M."""
    uid = int(subprocess.run(["id", "-u", MEMBER], capture_output=True, text=True, check=True).stdout)
    marker = "sbt-pull-victim"
    go = Path(f"/home/{MEMBER}/sbt-pull-go")
    go.unlink(missing_ok=True)
    # the victim allocates only once the attacks are over (a fixed sleep runs out under
    # emulation before the member has even made its sandbox)
    job = subprocess.Popen(
        [SANDBOX_RUN, "--user", MEMBER, "--mem", "64M", "--", "/usr/bin/python3", "-c",
         f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.05)\n"
         f"b = bytearray(200 << 20); time.sleep(2)  # {marker}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        pid = _job_pid(uid, marker)
        where = Path(f"/proc/{pid}/cgroup").read_text()
        r = ask(MEMBER, {"op": "create", "name": "sbt-pull", "limits": {"memory": 1 << 30}})
        assert r.returncode == 0, r.stderr
        cleanup.append((MEMBER, "sbt-pull"))
        paths = list(json.loads(r.stdout)["paths"].values())
        refused(MEMBER, {"op": "attach", "name": "sbt-pull", "pid": pid}, "not in the caller's own")
        w = subprocess.run([*as_user(MEMBER), "/usr/bin/python3", "-c", WRITE_EVERYWHERE, str(pid), *paths],
                           capture_output=True, text=True, timeout=60, check=False)
        assert w.returncode == 0, w.stderr
        # a v2 sandbox is delegated to the member (sub-cgroups of its own are its right; the
        # kernel still refuses moving a PID in from outside the delegation); on v1 nothing is
        # writable by the member at all
        unified = LAYOUT.unified.mountpoint.rstrip("/") + "/" if LAYOUT.unified else None
        v1_hits = [h for h in eval(w.stdout) if unified is None or not h.startswith(unified)]
        assert v1_hits == [], v1_hits
        assert Path(f"/proc/{pid}/cgroup").read_text() == where
        go.touch()
        _out, err = job.communicate(timeout=120)
        assert job.returncode == -signal.SIGKILL, err  # the OOM kill at 64M ends sandbox-run by SIGKILL
    finally:
        # SIGTERM, not SIGKILL: the launcher then ends its job and removes its cgroup
        if job.poll() is None:
            job.terminate()
            try:
                job.wait(timeout=60)
            except subprocess.TimeoutExpired:
                job.kill()
                job.wait()
        go.unlink(missing_ok=True)


DEEP = """
import os, sys, time
sandbox, depth = sys.argv[1], 1100
fd = os.open(sandbox, os.O_RDONLY | os.O_DIRECTORY)
for i in range(depth):
    os.mkdir("n", dir_fd=fd)
    nfd = os.open("n", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    fd = nfd
    if i in (500, depth - 1):
        with open(os.open("cgroup.freeze", os.O_WRONLY, dir_fd=fd), "w") as f:
            f.write("1")
# the job's background sleeper into the deepest, frozen cgroup
with open(os.open("cgroup.procs", os.O_WRONLY, dir_fd=fd), "w") as f:
    f.write(sys.argv[2])
os.close(fd)
os.chmod(sandbox + "/n" * 800, 0)  # and a directory the helper would not enter without root's override
print("ok")
"""


# 1,100 cgroup levels made and removed one by one: minutes under the guests' emulation
@pytest.mark.host_only
def test_a_hostile_tree_cannot_stop_teardown(switchboard: None) -> None:
    """1,100 nested sub-cgroups in the member's (v2) sandbox, two frozen, one mode 000, a
    process of the job in the deepest frozen one: after the job nothing of it is left."""
    uid = int(subprocess.run(["id", "-u", MEMBER], capture_output=True, text=True, check=True).stdout)
    before = snapshot()
    home = f"/home/{MEMBER}"
    job = subprocess.Popen(
        [*as_user(MEMBER), SANDBOX_RUN, "--", "/bin/sh", "-c", "sleep 1000 & sleep 8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=home,
        env={"PATH": "/usr/bin:/bin", "HOME": home, "XDG_RUNTIME_DIR": home},
    )
    try:
        sleeper = _job_pid(uid, "sleep\x001000")
        unified = [d for d in _sandboxes_in(_dirs(SLOT)) if "/unified/" in d]
        if not unified:
            pytest.skip("no cgroup v2 hierarchy: a member gets no directory to nest in")
        w = subprocess.run([*as_user(MEMBER), "/usr/bin/python3", "-c", DEEP, unified[0], str(sleeper)],
                           capture_output=True, text=True, timeout=120, check=False)
        assert w.stdout.strip() == "ok", w.stderr
        _out, err = job.communicate(timeout=120)
        assert job.returncode == 0, err
        assert not os.path.exists(f"/proc/{sleeper}/status") or "Z" in Path(f"/proc/{sleeper}/stat").read_text()
        assert snapshot() == before
    finally:
        job.kill()
        job.wait()


# the helper's request and path checks come before any cgroup: the same on every layout, a host test
@pytest.mark.host_only
def test_execute_dir_is_no_oracle(switchboard: None) -> None:
    """In another user's private directory, an existing directory, a missing one and a
    symbolic link get the same reply: what the caller could learn by looking."""
    private = XROOT / "sbt-private"
    private.mkdir(mode=0o700, exist_ok=True)
    (private / "exists").mkdir(exist_ok=True)
    (private / "link").symlink_to(OUTSIDE)
    for p in (private, private / "exists"):
        shutil.chown(p, MEMBER2, MEMBER2)
    try:
        replies = set()
        for leaf in ("exists", "missing", "link"):
            before = snapshot()
            r = ask(MEMBER, {"op": "create", "name": "orc", "limits": {}, "execute_dir": str(private / leaf)})
            assert r.returncode == 1 and snapshot() == before
            replies.add(r.stderr)
        assert len(replies) == 1, replies
        assert b"not accessible" in replies.pop()
    finally:
        shutil.rmtree(private)


def test_a_forged_state_file_shows_and_controls_nothing_of_roots(switchboard: None) -> None:
    """The member copies root's state file into its own state directory, claiming root's
    running sandbox (root's cgroups and launcher, the member's uid): list, ps and usage show
    nothing of it, kill and suspend refuse, and root's job runs on untouched."""
    uid = int(subprocess.run(["id", "-u", MEMBER], capture_output=True, text=True, check=True).stdout)
    name = f"sbt-forged-{os.getpid()}"
    # ended by `sandbox kill` below; it must outlive the checks, which take minutes under emulation
    job = subprocess.Popen([SANDBOX_RUN, "--name", name, "--", "sleep", "600"])
    home = Path(f"/home/{MEMBER}")
    forged = home / "sandbox" / Path(__import__("sandbox.state").state.path_for(name, "/")).name
    try:
        import time

        from sandbox import state as state_mod

        real = Path(state_mod.path_for(name, "/run/sandbox"))
        deadline = time.monotonic() + 120  # a launch takes seconds under emulation
        while not real.exists() and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.05)
        data = json.loads(real.read_text())
        data["uid"] = uid
        forged.parent.mkdir(exist_ok=True)
        shutil.chown(forged.parent, MEMBER, MEMBER)
        forged.write_text(json.dumps(data))
        shutil.chown(forged, MEMBER, MEMBER)  # the member's own file, as if it wrote it
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_RUNTIME_DIR": str(home)}

        def member(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*as_user(MEMBER), SANDBOX, *args], capture_output=True, text=True,
                                  env=env, timeout=60, check=False)

        listed = member("list")
        assert name not in listed.stdout, listed.stdout
        for cmd in (["ps", name], ["usage", name], ["kill", name], ["suspend", name]):
            r = member(*cmd)
            assert r.returncode == 125 and "belongs to another user" in r.stderr, (cmd, r.stdout, r.stderr)
            assert "sleep" not in r.stdout
        assert job.poll() is None  # root's job runs on
        frozen = Path(data["cgroup_paths"]["unified"], "cgroup.freeze") if "unified" in data["cgroup_paths"] else None
        assert frozen is None or frozen.read_text().strip() == "0"
    finally:
        forged.unlink(missing_ok=True)
        subprocess.run([SANDBOX, "kill", name], capture_output=True, check=False)  # as root: the launcher tears down
        try:
            job.wait(timeout=30)
        finally:
            job.kill()
            job.wait()


# 31 sandboxes through the setuid helper: minutes under the guests' emulation
@pytest.mark.host_only
def test_per_member_cap(switchboard: None, cleanup: list[tuple[str, str]]) -> None:
    """The member's CAP+1st live sandbox is refused with one line, nothing made; after
    one is destroyed there is room again. Other members are not counted."""
    for i in range(CAP):
        r = ask(MEMBER2, {"op": "create", "name": f"cap{i}", "limits": {}})
        assert r.returncode == 0, (i, r.stderr)
        cleanup.append((MEMBER2, f"cap{i}"))
    refused(MEMBER2, {"op": "create", "name": "capx", "limits": {}}, f"already has {CAP} live sandboxes")
    r = ask(MEMBER, {"op": "create", "name": "capm", "limits": {}})
    assert r.returncode == 0, r.stderr
    cleanup.append((MEMBER, "capm"))
    assert ask(MEMBER2, {"op": "destroy", "name": "cap0"}).returncode == 0
    r = ask(MEMBER2, {"op": "create", "name": "capx", "limits": {}})
    assert r.returncode == 0, r.stderr
    cleanup.append((MEMBER2, "capx"))


# -- caps on the sum of a member's limits ------------------------------------------------


# three helper requests and a config rewrite: the sums are counted the same on every layout
@pytest.mark.host_only
def test_per_member_sum_of_limits(switchboard: None, cleanup: list[tuple[str, str]]) -> None:
    """With the sums capped at 192 MiB of memory and 2 CPUs per member, two sandboxes of
    64 MiB and 0.5 CPUs fit; a third that would pass either sum is refused with one line
    and nothing made; one that fits is made; another member is counted apart."""
    saved = CONFIG.read_text()
    CONFIG.write_text(saved.replace("[limits]\n", f"[limits]\nmax_memory_bytes_per_member = {192 << 20}\n"
                                                  "max_cpus_per_member = 2\n"))
    try:
        for i in range(2):
            r = ask(MEMBER, {"op": "create", "name": f"sum{i}", "limits": {"memory": 64 << 20, "cpus": 0.5}})
            assert r.returncode == 0, (i, r.stderr)
            cleanup.append((MEMBER, f"sum{i}"))
        refused(MEMBER, {"op": "create", "name": "sumx", "limits": {"memory": 128 << 20, "cpus": 0.5}},
                f"memory {128 << 20} would take this user's live sandboxes to {256 << 20}, above the {192 << 20}")
        refused(MEMBER, {"op": "create", "name": "sumx", "limits": {"memory": 64 << 20, "cpus": 1.5}},
                "cpus 1.50 would take this user's live sandboxes to 2.50, above the 2 allowed per member")
        # unset, the memory limit would be the 1 GiB maximum: far above what is left
        refused(MEMBER, {"op": "create", "name": "sumx", "limits": {"cpus": 0.5}}, "would take")
        r = ask(MEMBER2, {"op": "create", "name": "sum-other", "limits": {"memory": 192 << 20, "cpus": 1}})
        assert r.returncode == 0, r.stderr
        cleanup.append((MEMBER2, "sum-other"))
        r = ask(MEMBER, {"op": "create", "name": "sum2", "limits": {"memory": 64 << 20, "cpus": 1}})
        assert r.returncode == 0, r.stderr
        cleanup.append((MEMBER, "sum2"))
    finally:
        CONFIG.write_text(saved)


# -- gc of a member's sandbox whose launcher and agent died --------------------------------

GC_ENV = {"PATH": "/usr/bin:/bin"}  # no XDG_RUNTIME_DIR: the state goes to /tmp/sandbox-run-UID


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Killed launchers' agents and inits are reparented to us, and we reap them (PID 1
    here never reaps orphans: a zombie would stay)."""
    import prctl

    prctl.set_child_subreaper(1)
    try:
        yield
    finally:
        prctl.set_child_subreaper(0)
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def _uid(user: str) -> int:
    return int(subprocess.run(["id", "-u", user], capture_output=True, text=True, check=True).stdout)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def _stale(user: str, name: str) -> tuple[Path, dict[str, object]]:
    """A member's sandbox whose launcher and agent were both SIGKILLed (a batch system's
    kill of the whole job): its state file and what it says."""
    import time

    from sandbox import state as state_mod

    path = Path(state_mod.path_for(name, f"/tmp/sandbox-run-{_uid(user)}/sandbox"))
    proc = subprocess.Popen([*as_user(user), SANDBOX_RUN, "--name", name, "--", "sleep", "1000"], env=GC_ENV,
                            cwd="/")
    data: dict[str, object] = {}
    deadline = time.monotonic() + 120
    while not data.get("job_host_pid") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    assert data.get("job_host_pid"), f"the launch did not start ({proc.poll()})"
    launcher = int(data["launcher_pid"])  # type: ignore[call-overload]
    agents = [c for c in _children(launcher) if f"sandbox-{name}" not in Path(f"/proc/{c}/cgroup").read_text()]
    assert len(agents) == 1, agents
    # The member's own reclaim of a live sandbox: refused, nothing changed.
    before = snapshot()
    r = subprocess.run([*as_user(user), "/bin/sh", "-c", 'exec "$0" 3<"$1"', WRAPPER, str(path)],
                       input=json.dumps({"version": 1, "op": "reclaim", "name": name}).encode(),
                       capture_output=True, timeout=60, check=False, env=GC_ENV)
    assert r.returncode == 1 and b"its launcher is alive" in r.stderr, r.stderr
    assert snapshot() == before
    os.kill(agents[0], signal.SIGSTOP)  # so that it cannot destroy the sandbox when the launcher dies
    os.kill(launcher, signal.SIGKILL)
    proc.wait(timeout=30)
    os.kill(agents[0], signal.SIGKILL)
    os.waitpid(agents[0], 0)  # ours now: reparented to the subreaper
    paths = data["cgroup_paths"]
    assert isinstance(paths, dict) and paths and all(os.path.isdir(p) for p in paths.values())
    return path, data


def _gone(path: Path, data: dict[str, object], user: str) -> None:
    """Nothing of the sandbox is left, and its launcher_lost record was written."""
    paths = data["cgroup_paths"]
    assert isinstance(paths, dict)
    assert [p for p in paths.values() if os.path.exists(p)] == []
    assert not path.exists()
    log = Path(f"/home/{user}/.local/state/sandbox/accounting.jsonl")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    mine = [r for r in records if r.get("name") == data["name"]]
    assert [r["status"] for r in mine] == ["launcher_lost"], mine
    assert os.stat(log).st_uid == _uid(user)  # written with the member's rights, root's gc too


def _forged_by(user: str, data: dict[str, object]) -> Path:
    """`user`'s own copy of another member's state, in `user`'s own state directory."""
    d = Path(f"/tmp/sandbox-run-{_uid(user)}/sandbox")
    d.mkdir(parents=True, exist_ok=True)
    for p in (d.parent, d):
        shutil.chown(p, user, user)
    os.chmod(d.parent, 0o700)
    forged = d / f"{data['name']}.state"
    forged.write_text(json.dumps({**data, "uid": _uid(user)}))
    shutil.chown(forged, user, user)
    return forged


# two member launches killed: seconds each under the guests' emulation; the cgroup facts are the helper's
@pytest.mark.host_only
def test_member_gc_reclaims_its_stale_sandbox_and_no_other_member_can(switchboard: None, subreaper: None) -> None:
    name = f"sbt-gc-{os.getpid()}"
    path, data = _stale(MEMBER, name)
    forged = _forged_by(MEMBER2, data)
    try:
        before = snapshot()
        # another member: its gc, with its own copy of the state, reclaims nothing
        r = subprocess.run([*as_user(MEMBER2), SANDBOX, "gc"], capture_output=True, text=True, timeout=60,
                           check=False, env=GC_ENV)
        assert r.returncode == 0 and "reclaimed" not in r.stdout, (r.stdout, r.stderr)
        # ... nor does the helper, asked directly with that copy
        r2 = subprocess.run([*as_user(MEMBER2), "/bin/sh", "-c", 'exec "$0" 3<"$1"', WRAPPER, str(forged)],
                            input=json.dumps({"version": 1, "op": "reclaim", "name": name}).encode(),
                            capture_output=True, timeout=60, check=False, env=GC_ENV)
        assert r2.returncode == 1 and r2.stderr.count(b"\n") == 1, r2.stderr
        assert b"belongs to another user" in r2.stderr, r2.stderr
        assert snapshot() == before and path.exists()
        r = subprocess.run([*as_user(MEMBER), SANDBOX, "gc"], capture_output=True, text=True, timeout=60,
                           check=False, env=GC_ENV)
        assert r.returncode == 0 and f"reclaimed {name}" in r.stdout, (r.stdout, r.stderr)
        _gone(path, data, MEMBER)
    finally:
        forged.unlink(missing_ok=True)
        subprocess.run([SANDBOX, "gc"], capture_output=True, check=False)


# a member launch killed: seconds under the guests' emulation; the cgroup facts are the helper's
@pytest.mark.host_only
def test_root_gc_reclaims_a_members_stale_sandbox(switchboard: None, subreaper: None) -> None:
    name = f"sbt-rootgc-{os.getpid()}"
    path, data = _stale(MEMBER, name)
    try:
        r = subprocess.run([SANDBOX, "gc", "--stale-only"], capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0 and f"reclaimed {name}" in r.stdout, (r.stdout, r.stderr)
        _gone(path, data, MEMBER)
    finally:
        subprocess.run([*as_user(MEMBER), SANDBOX, "gc"], capture_output=True, check=False, env=GC_ENV)


# the installation, the same on every layout
@pytest.mark.host_only
def test_the_helper_runs_from_roots_bytecode(switchboard: None) -> None:
    """The installer byte-compiles the helper (a request would compile it anew otherwise):
    root's, beside it, writable by root only, and the wrapper imports it from there."""
    import importlib.util

    helper = Path(WRAPPER).parent / "switchboard.py"
    pyc = Path(importlib.util.cache_from_source(str(helper)))
    for p in (pyc, pyc.parent):
        st = os.stat(p)
        assert st.st_uid == 0 and not st.st_mode & 0o022, p
    assert f"sys.path.append('{helper.parent}'); import switchboard".encode() in Path(WRAPPER).read_bytes()


# -- a launcher's session: one helper serving one sandbox until EOF ------------------------


def _session(user: str) -> subprocess.Popen[bytes]:
    """The helper in a session, as a member's launcher opens one (through a shell: see as_user)."""
    proc = subprocess.Popen([*as_user(user), WRAPPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    assert proc.stdin is not None
    proc.stdin.write(b'{"version": 1, "op": "session"}\n')
    proc.stdin.flush()
    assert _said(proc) == {"version": 1, "ok": True, "session": True}
    return proc


def _said(proc: subprocess.Popen[bytes], line: bytes | None = None) -> dict[str, object]:
    """Send `line` (if any), read the one reply line."""
    assert proc.stdin is not None and proc.stdout is not None
    if line is not None:
        proc.stdin.write(line)
        proc.stdin.flush()
    reply = json.loads(proc.stdout.readline())
    assert isinstance(reply, dict)
    return reply


def _line(body: dict[str, object]) -> bytes:
    return json.dumps({"version": 1, **body}).encode() + b"\n"


def _in_session(proc: subprocess.Popen[bytes], line: bytes, why: str) -> None:
    """`line` refused in one reply line, the session going on, nothing changed."""
    before = snapshot()
    reply = _said(proc, line)
    assert reply["ok"] is False and why in str(reply["error"]), reply
    assert proc.poll() is None and snapshot() == before


# the session's framing and binding are the same on every layout (the EOF destroy on each
# layout: test_a_launcher_killed_right_after_create_leaves_nothing)
@pytest.mark.host_only
def test_a_session_makes_one_sandbox_refuses_garbage_and_destroys_it_at_eof(
    switchboard: None, cleanup: list[tuple[str, str]],
) -> None:
    before = snapshot()
    proc = _session(MEMBER)
    try:
        created = _said(proc, _line({"op": "create", "name": "sbt-sess", "limits": {"memory": 1 << 26}}))
        assert created["ok"] is True, created
        cleanup.append((MEMBER, "sbt-sess"))
        paths = created["paths"]
        assert isinstance(paths, dict) and all(os.path.isdir(p) for p in paths.values())
        # the session is bound to its one sandbox: a second create is refused, any name
        _in_session(proc, _line({"op": "create", "name": "sbt-sess2", "limits": {}}), "one sandbox per session")
        _in_session(proc, _line({"op": "create", "name": "sbt-sess", "limits": {}}), "one sandbox per session")
        # garbage and an oversized line: one line each, the session goes on
        _in_session(proc, b"\x00\x01garbage\n", "not valid JSON")
        _in_session(proc, b" " * 10000 + b"\n", "larger than")
        _in_session(proc, b'{"version": 1, "op": "session"}\n', "unknown operation")
        # what one-shot requests may not do, a session may not either
        _in_session(proc, _line({"op": "destroy", "name": "nonexistent"}), "no sandbox named")
        _in_session(proc, _line({"op": "attach", "name": "sbt-sess", "pid": os.getpid()}), "not the caller's")
        assert all(os.path.isdir(p) for p in paths.values())
        assert proc.stdin is not None
        proc.stdin.close()  # EOF, as when the launcher dies: the helper destroys the sandbox
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else b""
    finally:
        proc.kill()
        proc.wait()
    assert snapshot() == before
    log = LOG.read_text()
    assert "op=destroy" in log and "(end of session) OK" in log and "one sandbox per session" in log


@pytest.mark.host_only  # the session's framing, as above
def test_a_session_that_destroyed_its_sandbox_ends_quietly(switchboard: None, cleanup: list[tuple[str, str]]) -> None:
    before = snapshot()
    proc = _session(MEMBER)
    try:
        assert _said(proc, _line({"op": "create", "name": "sbt-sess3", "limits": {}}))["ok"] is True
        cleanup.append((MEMBER, "sbt-sess3"))
        assert _said(proc, _line({"op": "destroy", "name": "sbt-sess3"}))["ok"] is True
        assert snapshot() == before
        mark = LOG.stat().st_size
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert "sbt-sess3" not in LOG.read_text()[mark:]  # no second destroy at EOF


def _helpers() -> set[int]:
    """Live switchboard helpers (by the wrapper's argv[0]: once hardened, a helper's
    ids are all root's)."""
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv0 = Path(entry.path, "cmdline").read_bytes().split(b"\0")[0]
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if argv0 == b"sandbox-switchboard" and state != "Z":
            found.add(int(entry.name))
    return found


def test_a_launcher_killed_right_after_create_leaves_nothing(switchboard: None, subreaper: None) -> None:
    """SIGKILL of a member's launcher as soon as its sandbox's directories exist: the
    helper reads EOF and destroys them, in every hierarchy, and ends; nothing is left."""
    import time

    name = f"sbt-killed-{os.getpid()}"
    before = snapshot()
    helpers_before = _helpers()
    home = f"/home/{MEMBER}"
    proc = subprocess.Popen([*as_user(MEMBER), SANDBOX_RUN, "--name", name, "--mem", "64M", "--", "sleep", "1000"],
                            env={"PATH": "/usr/bin:/bin", "HOME": home, "XDG_RUNTIME_DIR": home}, cwd="/",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(os.path.basename(d) == f"sandbox-{name}" for d, _uid_ in snapshot() - before):
            assert time.monotonic() < deadline and proc.poll() is None, "the sandbox was never made"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 30
        while (snapshot() != before or _helpers() - helpers_before) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert snapshot() == before
        assert _helpers() - helpers_before == set()
    finally:
        proc.kill()
        proc.wait()
        subprocess.run([*as_user(MEMBER), SANDBOX, "gc"], capture_output=True, check=False,
                       env={"PATH": "/usr/bin:/bin", "HOME": home, "XDG_RUNTIME_DIR": home})


@pytest.mark.guest_only  # it changes a sysctl
def test_a_member_without_user_namespaces_is_held_and_limited_by_its_cgroup(switchboard: None) -> None:
    """EL7's default, user.max_user_namespaces = 0: the member's launcher can make no
    namespace, but the switchboard's cgroup still holds and limits the job. A setsid
    daemon is gone once the main process exits, an allocation past --mem is OOM-killed,
    and the report names the isolation the job did not get."""
    sysctl = Path("/proc/sys/user/max_user_namespaces")
    old = sysctl.read_text()
    home = Path(f"/home/{MEMBER}")
    report, ready = home / "report-bare.json", home / "bare-ready"
    marker = f"sbt-bare-{os.getpid()}"
    daemon = "import sys, time\nopen(sys.argv[1], 'w').close()\ntime.sleep(300)"
    before = snapshot()
    sysctl.write_text("0\n")
    try:
        r = _run_as(MEMBER, "--mem", "64M", "--report", str(report), "--", "sh", "-c",
                    f'setsid /usr/bin/python3 -c "$0" {ready} {marker} & '
                    f'while [ ! -e {ready} ]; do sleep 0.1; done; readlink /proc/self/ns/pid', daemon)
        assert r.returncode == 0, r.stderr
        data = json.loads(report.read_text())
        assert data["tracking"] == "cgroup" and data["memory_limit_bytes"] == 64 << 20, data
        assert "pid namespace" in data["isolation_not_provided"], data
        assert r.stdout.strip() == os.readlink("/proc/self/ns/pid")  # the host's: no namespace
        left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False)
        assert left.stdout == "", f"the daemon survived: {left.stdout}"
        r = _run_as(MEMBER, "--mem", "64M", "--report", str(report), "--", "/usr/bin/python3", "-c",
                    "b = bytearray(200 << 20)")
        assert r.returncode == -signal.SIGKILL, r.stderr
        assert json.loads(report.read_text())["status"] == "oom_killed"
        assert snapshot() == before
    finally:
        sysctl.write_text(old)
        subprocess.run(["pkill", "-KILL", "-f", marker], capture_output=True, check=False)
        for f in (report, ready):
            f.unlink(missing_ok=True)
