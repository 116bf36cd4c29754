"""Breakout attempts against the isolation (execute dir, binds, hidden paths, credentials).
Every job runs as `nobody`; every test asserts that the attack failed AND that nothing
outside the sandbox changed."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SANDBOX_RUN, needs_root, run_sandbox

# Only the cgroup attack below depends on the cgroup layout; the rest is namespaces and
# mounts, the same on every layout, and runs once, on the host.
pytestmark = [needs_root]

PY = "/usr/bin/python3"  # the job's user cannot reach the project's venv
NOBODY = 65534


def snapshot(path: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    """Owner, mode, size and content of every entry below `path` (symlinks not followed)."""
    out: dict[str, tuple[int, int, int, bytes | None]] = {}
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            data = Path(p).read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[p] = (st.st_uid, st.st_gid, st.st_mode, data)
    return out


def etc_state() -> tuple[tuple[int, int, int], list[str]]:
    st = os.stat("/etc")
    return (st.st_uid, st.st_gid, st.st_mode), sorted(os.listdir("/etc"))


@pytest.fixture
def execute_root() -> Iterator[Path]:
    """An HTCondor-like execute root (root's, 0755) with two job directories, not under
    /tmp (the sandbox replaces /tmp, so an execute directory there is refused)."""
    root = Path(tempfile.mkdtemp(prefix="sandbox-test-execute-", dir="/var/lib"))
    try:
        root.chmod(0o755)
        for name in ("dir_1", "dir_2"):
            (root / name).mkdir()
            (root / name / "secret").write_text(f"secret of {name}\n")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def job(execute_dir: Path, script: str, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_sandbox(
        "--user", "nobody", "--execute-dir", str(execute_dir), *extra, "--", PY, "-c", script, timeout=timeout
    )


# --- hidden siblings ------------------------------------------------------------------

SIBLING_ATTACKS = r"""
import os, sys
root, me = sys.argv[1], sys.argv[2]
print("LIST", sorted(os.listdir("..")))
print("CWD", os.getcwd())
paths = [
    root + "/dir_2/secret", "../dir_2/secret", root + "/dir_2",
    "/proc/self/cwd/../dir_2/secret", "/proc/1/cwd/dir_2/secret",
    "/proc/1/cwd/" + root + "/dir_2/secret",
    "/proc/1/root" + root + "/dir_2/secret", "/proc/self/root" + root + "/dir_2/secret",
    me + "/.sandbox-tmp/../../dir_2/secret",
]
for p in paths:
    try:
        with open(p) as f:
            print("OPENED", p, f.read().strip())
    except OSError as e:
        print("DENIED", p, e.errno)
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
# undo the hiding mount, or remount /proc: both need CAP_SYS_ADMIN
for what, rc in (("umount", libc.umount2(b"..", 2)), ("umount-proc", libc.umount2(b"/proc", 2)),
                 ("mount-proc", libc.mount(b"proc", b"/proc", b"proc", 0, None)),
                 ("remount", libc.mount(None, b"..", None, 32 | 4096, None))):
    print("MOUNTOP", what, rc, ctypes.get_errno())
print("LIST2", sorted(os.listdir("..")))
"""


def test_sibling_execute_dirs_cannot_be_listed_or_opened(execute_root: Path) -> None:
    d1 = execute_root / "dir_1"
    before = snapshot(execute_root / "dir_2")
    p = run_sandbox(
        "--user", "nobody", "--execute-dir", str(d1), "--",
        PY, "-c", SIBLING_ATTACKS, str(execute_root), str(d1),
    )
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert "LIST ['dir_1']" in out
    assert f"CWD {d1}" in out
    assert not [line for line in out if line.startswith("OPENED")], p.stdout
    assert len([line for line in out if line.startswith("DENIED")]) == 9
    for line in out:
        if line.startswith("MOUNTOP"):
            _, _what, rc, err = line.split()
            assert rc == "-1" and err == "1", line  # EPERM
    assert "LIST2 ['dir_1']" in out
    assert snapshot(execute_root / "dir_2") == before
    # the starter's directory was handed to the job's user, with its scratch
    assert d1.stat().st_uid == NOBODY
    for name in (".sandbox-tmp", ".sandbox-var-tmp"):
        st = (d1 / name).lstat()
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == NOBODY and stat.S_IMODE(st.st_mode) == 0o700


def test_tmp_lives_in_the_execute_dir(execute_root: Path) -> None:
    d1 = execute_root / "dir_1"
    p = job(d1, "open('/tmp/a','w').write('A'); open('/var/tmp/b','w').write('B')")
    assert p.returncode == 0, p.stderr
    assert (d1 / ".sandbox-tmp" / "a").read_text() == "A"
    assert (d1 / ".sandbox-var-tmp" / "b").read_text() == "B"
    assert not os.path.exists("/tmp/a") and not os.path.exists("/var/tmp/b")


# --- two concurrent jobs as the same user ---------------------------------------------

JOB_A = r"""
import os, socket, sys, time
srv = socket.socket(socket.AF_UNIX)
srv.bind("/tmp/mpd.sock")  # a careless MPD-style tool: world-writable socket in /tmp
os.chmod("/tmp/mpd.sock", 0o777)
srv.listen()
open("/tmp/private", "w").write("A's tmp")
open("mine", "w").write("A's file")
open("ready", "w").write(str(os.getpid()))
while not os.path.exists("go"):
    time.sleep(0.05)
print("A alive", open("/tmp/private").read(), open("mine").read())
"""

JOB_B = r"""
import ctypes, os, signal, socket, sys
root, a_host_pid = sys.argv[1], int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print("PIDS", pids)
def attempt(name, fn):
    try:
        fn()
        print("SUCCEEDED", name)
    except OSError as e:
        print("FAILED", name, e.errno)
def connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
attempt("connect-tmp", lambda: connect("/tmp/mpd.sock"))
attempt("connect-via-dir", lambda: connect(root + "/dir_1/.sandbox-tmp/mpd.sock"))
attempt("read-tmp", lambda: open("/tmp/private").read())
attempt("read-dir", lambda: open(root + "/dir_1/mine").read())
attempt("write-dir", lambda: open(root + "/dir_1/evil", "w").write("x"))
attempt("write-tmp-via-dir", lambda: open(root + "/dir_1/.sandbox-tmp/evil", "w").write("x"))
attempt("signal", lambda: os.kill(a_host_pid, signal.SIGKILL))
attempt("proc", lambda: os.listdir(f"/proc/{a_host_pid}/root"))
def ptrace():
    if libc.ptrace(16, a_host_pid, None, None) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")
attempt("ptrace", ptrace)
# kill(-1) reaches every process the sender may signal but itself: none (init is root's)
attempt("kill-all", lambda: os.kill(-1, signal.SIGKILL))
print("B done")
"""


def test_two_jobs_as_nobody_cannot_touch_each_other(execute_root: Path) -> None:
    d1, d2 = execute_root / "dir_1", execute_root / "dir_2"
    a = subprocess.Popen(
        [SANDBOX_RUN, "--user", "nobody", "--execute-dir", str(d1), "--", PY, "-c", JOB_A],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (d1 / "ready").exists() or not (d1 / "ready").read_text():
            assert a.poll() is None and time.monotonic() < deadline, a.stderr.read() if a.stderr else ""
            time.sleep(0.05)
        a_host_pid = _host_pid_of(int((d1 / "ready").read_text()), d1)
        before = snapshot(d1)
        b = run_sandbox(
            "--user", "nobody", "--execute-dir", str(d2), "--", PY, "-c", JOB_B, str(execute_root), str(a_host_pid)
        )
        assert b.returncode == 0, b.stderr
        out = b.stdout.splitlines()
        assert "PIDS [1, 2]" in out  # init and B itself
        assert not [line for line in out if line.startswith("SUCCEEDED")], b.stdout
        assert len([line for line in out if line.startswith("FAILED")]) == 10
        assert "B done" in out
        assert snapshot(d1) == before
        assert not (d1 / "evil").exists()
        (d1 / "go").write_text("")
        a_out, a_err = a.communicate(timeout=30)
        assert a.returncode == 0, a_err
        assert "A alive A's tmp A's file" in a_out
    finally:
        if a.poll() is None:
            a.terminate()
            a.communicate(timeout=30)


def _host_pid_of(ns_pid: int, execute_dir: Path) -> int:
    """The host PID of the job process whose cwd is `execute_dir` (NSpid says ns_pid)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            if os.readlink(f"/proc/{entry}/cwd") != str(execute_dir):
                continue
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:") and line.split()[-1] == str(ns_pid):
                return int(entry)
    raise AssertionError("job A's host pid not found")


# --- privilege ------------------------------------------------------------------------


def test_setuid_root_binary_gains_nothing(execute_root: Path) -> None:
    d1 = execute_root / "dir_1"
    suid = d1 / "suid-id"
    shutil.copy("/usr/bin/id", suid)
    os.chown(suid, 0, 0)
    suid.chmod(0o4755)
    # control: outside a sandbox the bit works, so the assertion below can fail
    control = subprocess.run(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", str(suid), "-u"],
        capture_output=True, text=True, check=True,
    )
    assert control.stdout.strip() == "0"
    p = run_sandbox(
        "--user", "nobody", "--execute-dir", str(d1), "--", "sh", "-c",
        "./suid-id -u; grep -E '^(NoNewPrivs|CapEff|CapPrm|CapBnd|CapAmb|CapInh)' /proc/self/status",
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == str(NOBODY)
    status = dict(line.split(":\t") for line in lines[1:])
    assert status["NoNewPrivs"] == "1"
    assert {status[k] for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh")} == {"0000000000000000"}
    assert suid.stat().st_uid == 0 and suid.stat().st_mode & stat.S_ISUID


CGROUP_ATTACKS = r"""
import os
print("CG", sorted(set(l.split(":", 2)[2].strip() for l in open("/proc/self/cgroup"))))
ok = failed = 0
for dirpath, dirs, files in os.walk("/sys/fs/cgroup"):
    for name in ("cgroup.procs", "tasks"):
        if name in files:
            try:
                with open(os.path.join(dirpath, name), "w") as f:
                    f.write(str(os.getpid()))
                ok += 1
                print("MOVED", dirpath)
            except OSError:
                failed += 1
    try:
        os.mkdir(os.path.join(dirpath, "escape"))
        ok += 1
        print("MKDIR", dirpath)
    except OSError:
        failed += 1
print("RESULT", ok, failed)
print("CG2", sorted(set(l.split(":", 2)[2].strip() for l in open("/proc/self/cgroup"))))
"""


@pytest.mark.cgroup
def test_job_cannot_leave_or_touch_cgroups(execute_root: Path, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    p = job(execute_root / "dir_1", CGROUP_ATTACKS, "--report", str(report), timeout=120)
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert "CG ['/']" in out  # its own cgroup namespace: nothing above its cgroup shows
    result = next(line for line in out if line.startswith("RESULT")).split()
    # nothing succeeded; at least its own cgroup.procs and a mkdir were tried (v2 has
    # one hierarchy, the hybrid layout several)
    assert result[1] == "0" and int(result[2]) >= 2, p.stdout
    assert "CG2 ['/']" in out
    leftovers = subprocess.run(
        ["find", "/sys/fs/cgroup", "-maxdepth", "4", "-name", "escape"], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout == ""


# --- symlinks planted by the job's user ------------------------------------------------


def test_symlinked_scratch_dir_is_refused(execute_root: Path) -> None:
    d1 = execute_root / "dir_1"
    os.chown(d1, NOBODY, NOBODY)
    os.symlink("/etc", d1 / ".sandbox-tmp")
    os.lchown(d1 / ".sandbox-tmp", NOBODY, NOBODY)
    before = etc_state()
    p = job(d1, "print('ran')")
    assert p.returncode == 125
    assert "ran" not in p.stdout
    assert p.stderr.strip().endswith(".sandbox-tmp: is a symlink"), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert etc_state() == before
    assert os.readlink(d1 / ".sandbox-tmp") == "/etc"


def test_symlink_in_execute_dir_does_not_redirect_a_bind(execute_root: Path) -> None:
    d1 = execute_root / "dir_1"
    os.chown(d1, NOBODY, NOBODY)
    os.symlink("/etc", d1 / "data")
    os.lchown(d1 / "data", NOBODY, NOBODY)
    before = etc_state()
    p = job(d1, "print('ran')", "--ro-bind", f"{execute_root}/dir_2:{d1}/data")
    assert p.returncode == 125 and "ran" not in p.stdout
    assert "data is a symlink that a user other than root could have made" in p.stderr
    assert etc_state() == before


def test_symlinked_execute_dir_path_is_refused(execute_root: Path) -> None:
    # a user-owned directory on the way: its symlink must not make us chown /etc
    user_dir = execute_root / "dir_1"
    os.chown(user_dir, NOBODY, NOBODY)
    os.symlink("/etc", user_dir / "execute")
    os.lchown(user_dir / "execute", NOBODY, NOBODY)
    before = etc_state()
    p = job(user_dir / "execute" / "ssh", "print('ran')")
    assert p.returncode == 125 and "ran" not in p.stdout
    assert "is a symlink" in p.stderr
    assert etc_state() == before
    assert os.stat("/etc/ssh").st_uid == 0 and not os.path.exists("/etc/ssh/.sandbox-tmp")


def test_execute_dir_under_tmp_is_refused() -> None:
    with tempfile.TemporaryDirectory() as d:
        p = job(Path(d), "print('ran')")
        assert p.returncode == 125 and "which the sandbox replaces" in p.stderr
        assert os.listdir(d) == []


# --- hide, bind -----------------------------------------------------------------------


def test_hide_and_binds(execute_root: Path) -> None:
    d1, d2 = execute_root / "dir_1", execute_root / "dir_2"
    script = r"""
import os
def attempt(name, fn):
    try:
        r = fn(); print("OK", name, r)
    except OSError as e:
        print("ERR", name, e.errno)
attempt("list-hidden", lambda: os.listdir("/etc/ssh"))
attempt("write-hidden", lambda: open("/etc/ssh/x", "w"))
attempt("read-hidden-file", lambda: open("/etc/passwd").read())
attempt("read-ro", lambda: open("/mnt/ro/secret").read().strip())
attempt("write-ro", lambda: open("/mnt/ro/new", "w"))
attempt("write-rw", lambda: open("/mnt/rw/new", "w").write("hello"))
"""
    rw = execute_root / "rw"
    rw.mkdir()
    os.chown(rw, NOBODY, NOBODY)
    os.makedirs("/mnt/ro", exist_ok=True)
    os.makedirs("/mnt/rw", exist_ok=True)
    try:
        p = job(d1, script, "--hide", "/etc/ssh", "--hide", "/etc/passwd",
                "--ro-bind", f"{d2}:/mnt/ro", "--bind", f"{rw}:/mnt/rw")
    finally:
        os.rmdir("/mnt/ro")
        os.rmdir("/mnt/rw")
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert "OK list-hidden []" in out
    assert "ERR write-hidden 30" in out  # EROFS
    assert "ERR read-hidden-file 13" in out  # nodev /dev/null: EACCES
    assert "OK read-ro secret of dir_2" in out
    assert "ERR write-ro 30" in out
    assert "OK write-rw 5" in out
    assert (rw / "new").read_text() == "hello"
    assert os.listdir("/etc/ssh") and os.path.getsize("/etc/passwd") > 0
    assert not (d2 / "new").exists()


# --- network --------------------------------------------------------------------------

NET = r"""
import socket
print("IF", sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]))
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
socket.create_connection(srv.getsockname(), timeout=5)
print("LO OK")
try:
    socket.create_connection(("192.0.2.1", 80), timeout=2)
    print("OUT OK")
except OSError as e:
    print("OUT", e.errno)
"""


def test_net_none_has_only_loopback(execute_root: Path) -> None:
    p = job(execute_root / "dir_1", NET, "--net", "none")
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert "IF ['lo']" in out
    assert "LO OK" in out
    assert "OUT 101" in out  # ENETUNREACH: no route at all
    host = job(execute_root / "dir_2", "print(len(open('/proc/net/dev').readlines()) - 2)")
    assert host.returncode == 0 and int(host.stdout) > 1  # the host's interfaces: shared


def test_job_cannot_type_into_the_callers_terminal() -> None:
    """CVE-2017-5226 (bubblewrap): a job that keeps the caller's controlling terminal can
    push input into it with TIOCSTI, to be run by the caller's (root's) shell."""
    code = (
        "import fcntl, termios\n"
        "try:\n"
        "    fcntl.ioctl(0, termios.TIOCSTI, b'#')\n"
        "    print('INJECTED')\n"
        "except OSError as e:\n"
        "    print('REFUSED', e.errno)\n"
    )
    cmd = f"{SANDBOX_RUN} --user nobody -- /usr/bin/python3 -c \"{code}\""
    p = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, check=False)
    assert "REFUSED" in p.stdout and "INJECTED" not in p.stdout, p.stdout + p.stderr
