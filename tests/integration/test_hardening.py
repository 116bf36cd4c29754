"""A job gets nothing of its caller: no terminal, no keyring, no stray descriptor, a
syscall filter. Each test performs the attack for real, from a `--user nobody` job and
from a plain root job where the two differ, and asserts that it failed *and* that
nothing outside changed."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import pty
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SANDBOX_RUN, needs_root, run_sandbox

pytestmark = [needs_root]

PY = "/usr/bin/python3"
# add_key, request_key, keyctl: not in Python's os module; the numbers differ by architecture
KEY_NRS = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}[platform.machine()]
KEY_SPEC_SESSION_KEYRING = -3
KEY_SPEC_USER_KEYRING = -4
KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_DESCRIBE, KEYCTL_CLEAR, KEYCTL_SEARCH = 1, 6, 7, 10

JOB_KEYS = f"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
ADD, REQ, KEYCTL = {KEY_NRS}
def add(desc, ring):
    r = libc.syscall(ADD, b"user", desc.encode(), b"payload", 7, ring)
    return r if r >= 0 else -ctypes.get_errno()
def search(desc, ring):
    r = libc.syscall(KEYCTL, {KEYCTL_SEARCH}, ring, b"user", desc.encode(), 0)
    return r if r >= 0 else -ctypes.get_errno()
"""


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _keyctl(*args: object) -> int:
    r = int(_libc().syscall(ctypes.c_long(KEY_NRS[2]), *args))
    return r if r >= 0 else -ctypes.get_errno()


def _add_key(desc: str, ring: int) -> int:
    r = int(_libc().syscall(ctypes.c_long(KEY_NRS[0]), b"user", desc.encode(), b"secret", 6, ring))
    assert r > 0, ctypes.get_errno()
    return r


def job(script: str, *opts: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return run_sandbox(*opts, "--", PY, "-c", script, **kw)  # type: ignore[arg-type]


AS_USER = pytest.mark.parametrize("who", [("--user", "nobody"), ()], ids=["user", "root"])


# --- terminals ----------------------------------------------------------------------


class Shell:
    """A real interactive bash on a pseudo-terminal, as an admin's root shell is."""

    def __init__(self, cwd: Path) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.chdir(cwd)
            os.execve("/bin/bash", ["bash", "--norc", "--noprofile", "-i"],
                      {"PATH": "/usr/bin:/bin", "PS1": "$ ", "TERM": "dumb"})
        self.out = b""

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\n")

    def expect(self, marker: bytes, timeout: float = 60) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.out:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} in {self.out[-2000:]!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self.out += os.read(self.fd, 65536)
                except OSError:
                    break
        return self.out

    def close(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def shell() -> Iterator[tuple[Shell, Path]]:
    work = Path(tempfile.mkdtemp(prefix="sandbox-test-tty-", dir="/var/lib"))
    work.chmod(0o755)
    sh = Shell(work)
    try:
        yield sh, work
    finally:
        sh.close()
        shutil.rmtree(work, ignore_errors=True)


INJECT = (
    "import fcntl, os, sys, termios\n"
    "src = sys.argv[1]\n"
    "fd = os.open('/dev/tty', os.O_RDWR) if src == 'tty' else int(src)\n"
    "for ch in 'touch INJECTED\\n':\n"
    "    fcntl.ioctl(fd, termios.TIOCSTI, ch.encode())\n"
)


@pytest.mark.parametrize("src", ["tty", "fd"])
@AS_USER
def test_tiocsti_reaches_nothing_of_the_callers_shell(shell: tuple[Shell, Path], who: tuple[str, ...],
                                                     src: str) -> None:
    sh, work = shell
    # fds 0-2 redirected, as in a starter's or an admin's `job </dev/null >log 2>&1`; with
    # "fd" the terminal reaches the job as descriptor 5 instead of through /dev/tty
    redirect = "5<>/dev/tty " if src == "fd" else ""
    keep = "--keep-fd 5 " if src == "fd" else ""
    job_src = "5" if src == "fd" else "tty"
    sh.type(f"{SANDBOX_RUN} {' '.join(who)} {keep}-- {PY} -c \"{INJECT}\" {job_src} "
            f"</dev/null >log 2>&1 {redirect}; echo DO''NE-$?")  # quoted: the echo of the line is no match
    sh.expect(b"DONE-")
    sh.type("echo SETT''LED")  # whatever the job typed would run before this
    sh.expect(b"SETTLED")
    time.sleep(0.3)
    log = (work / "log").read_text()
    assert not (work / "INJECTED").exists(), log
    # the job ran, and the ioctl (or the open of /dev/tty) was refused
    assert "Traceback" in log and "Error" in log, (log, sh.out[-3000:])


# --- keyrings -----------------------------------------------------------------------


@pytest.fixture
def caller_session_key() -> Iterator[str]:
    """This test process in a session keyring of its own holding a key, as a starter
    holding Kerberos or AFS tokens is."""
    assert _keyctl(ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), ctypes.c_void_p(None)) > 0
    desc = f"sandbox-test:{os.getpid()}:{os.urandom(4).hex()}"
    key = _add_key(desc, KEY_SPEC_SESSION_KEYRING)
    yield desc
    _keyctl(ctypes.c_long(3), ctypes.c_long(key))  # KEYCTL_REVOKE; the session keyring goes with this process


@AS_USER
def test_the_callers_session_keyring_is_out_of_reach(caller_session_key: str, who: tuple[str, ...]) -> None:
    script = JOB_KEYS + (
        f"print('FOUND' if search({caller_session_key!r}, {KEY_SPEC_SESSION_KEYRING}) > 0 else 'NOTFOUND')\n"
        f"new = add('job-key', {KEY_SPEC_SESSION_KEYRING})\n"
        "print('ADDED', new)\n"
    )
    p = job(script, *who)
    assert p.returncode == 0, p.stderr
    assert "NOTFOUND" in p.stdout, p.stdout
    added = int(p.stdout.split("ADDED ")[1].split()[0])
    if added > 0:  # a root job may add keys: to its own session keyring, gone with it
        time.sleep(0.2)
        assert _keyctl(ctypes.c_long(KEYCTL_DESCRIBE), ctypes.c_long(added), None, 0) < 0
    # nothing reached the caller's own session keyring
    assert _keyctl(ctypes.c_long(KEYCTL_SEARCH), ctypes.c_long(KEY_SPEC_SESSION_KEYRING), b"user", b"job-key", 0) < 0


def _clear_user_keyring(uid: int) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            os.setresuid(uid, uid, uid)
            _keyctl(ctypes.c_long(KEYCTL_CLEAR), ctypes.c_long(KEY_SPEC_USER_KEYRING))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def test_two_nobody_jobs_cannot_meet_in_the_user_keyring() -> None:
    desc = f"sandbox-test-drop:{os.urandom(4).hex()}"
    sender = subprocess.Popen(
        [SANDBOX_RUN, "--user", "nobody", "--", PY, "-c",
         JOB_KEYS + f"print(add({desc!r}, {KEY_SPEC_USER_KEYRING}), flush=True)\nimport time; time.sleep(3)\n"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        receiver = job(JOB_KEYS + f"print('GOT', search({desc!r}, {KEY_SPEC_USER_KEYRING}))\n", "--user", "nobody")
        out, err = sender.communicate(timeout=30)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
        _clear_user_keyring(65534)
    assert int(out.split()[0]) == -errno.EPERM, out + err
    assert f"GOT -{errno.EPERM}" in receiver.stdout, receiver.stdout + receiver.stderr


# --- descriptors --------------------------------------------------------------------


@pytest.fixture
def execute_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="sandbox-test-execute-", dir="/var/lib"))
    root.chmod(0o755)
    for name in ("dir_1", "dir_2"):
        (root / name).mkdir()
        (root / name / "secret").write_text(f"secret of {name}\n")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


READ_THROUGH_FD = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "for p in (f'/proc/self/fd/{fd}/dir_2/secret', f'/proc/1/fd/{fd}/dir_2/secret'):\n"
    "    try:\n"
    "        print('READ', open(p).read().strip())\n"
    "    except OSError as e:\n"
    "        print('REFUSED', p, e.errno)\n"
)


@AS_USER
def test_a_descriptor_of_the_caller_does_not_reach_the_job(execute_root: Path, who: tuple[str, ...]) -> None:
    fd = os.open(execute_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        p = run_sandbox(*who, "--execute-dir", str(execute_root / "dir_1"), "--", PY, "-c", READ_THROUGH_FD,
                        str(fd), pass_fds=(fd,))
        kept = run_sandbox(*who, "--execute-dir", str(execute_root / "dir_1"), "--keep-fd", str(fd), "--",
                           PY, "-c", READ_THROUGH_FD, str(fd), pass_fds=(fd,))
    finally:
        os.close(fd)
    assert p.returncode == 0, p.stderr
    assert "READ" not in p.stdout, p.stdout
    assert kept.returncode == 0, kept.stderr
    assert "READ secret of dir_2" in kept.stdout, kept.stdout  # passed on purpose: it is the job's
    assert (execute_root / "dir_2" / "secret").read_text() == "secret of dir_2\n"


def test_keep_fd_of_a_closed_descriptor_is_refused() -> None:
    p = job("pass", "--keep-fd", "987")
    assert p.returncode == 125 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "987" in p.stderr


def test_only_fds_0_to_2_reach_the_job() -> None:
    r, w = os.pipe()
    try:
        p = run_sandbox("--", "/bin/ls", "/proc/self/fd", pass_fds=(r, w))
    finally:
        os.close(r)
        os.close(w)
    assert p.returncode == 0, p.stderr
    assert sorted(int(x) for x in p.stdout.split()) == [0, 1, 2, 3], p.stdout  # 3: ls's own directory


# --- binds of what the sandbox replaces -----------------------------------------------


@pytest.mark.parametrize("src", ["/tmp", "/var/tmp", "/dev/shm"])
@pytest.mark.parametrize("how", ["--bind", "--ro-bind", "--execute-dir"])
def test_bind_of_a_replaced_directory_shows_the_hosts(src: str, how: str, execute_root: Path) -> None:
    marker = Path(tempfile.mkstemp(prefix="sandbox-test-marker-", dir=src)[1])
    dst = Path(tempfile.mkdtemp(prefix="sandbox-test-dst-", dir="/var/lib"))
    opts = ["--execute-dir", str(execute_root / "dir_1"), "--bind"] if how == "--execute-dir" else [how]
    try:
        p = run_sandbox(*opts, f"{src}:{dst}", "--", "/bin/ls", "-a", str(dst), "/tmp")
    finally:
        marker.unlink()
        dst.rmdir()
    if p.returncode == 125:  # refused is also an answer; silently the private one is not
        assert len(p.stderr.strip().splitlines()) == 1 and src in p.stderr, p.stderr
    else:
        assert p.returncode == 0, p.stderr
        assert marker.name in p.stdout.split(), p.stdout
        assert p.stdout.count(marker.name) == 1, p.stdout  # and the job's own /tmp is still private


# --- the syscall filter ---------------------------------------------------------------

BLOCKED = r"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = json.loads(os.environ["NRS"])
out = {}
for name, args in (("open_by_handle_at", (-100, 0, 0)), ("kexec_load", (0, 0, 0, 0)),
                   ("kexec_file_load", (-1, -1, 0, 0, 0)), ("init_module", (0, 0, 0)),
                   ("finit_module", (-1, 0, 0)), ("delete_module", (0, 0)), ("bpf", (0, 0, 0)),
                   ("perf_event_open", (0, 0, -1, -1, 0)), ("userfaultfd", (0,)),
                   ("keyctl", (0, -3, 0)), ("add_key", (0, 0, 0, 0, 0)), ("request_key", (0, 0, 0, 0))):
    r = libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) for a in args])
    out[name] = 0 if r >= 0 else ctypes.get_errno()
import pty, termios
# on a terminal that is the caller's controlling one, where the kernel itself allows TIOCSTI
for name, cmd in (("TIOCSTI", termios.TIOCSTI), ("TIOCLINUX", 0x541C), ("TIOCSTI_high", termios.TIOCSTI | (1 << 32))):
    pid, master = pty.fork()
    if pid == 0:
        r = libc.ioctl(0, ctypes.c_ulong(cmd), ctypes.c_char_p(b"x"))
        os._exit(0 if r == 0 else ctypes.get_errno())
    out[name] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    os.close(master)
print(json.dumps(out))
"""


def _nrs() -> str:
    from sandbox import seccomp

    names = ("open_by_handle_at", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
             "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key")
    return json.dumps({n: seccomp.syscall_number(n) for n in names})


def _blocked(*opts: str) -> dict[str, int]:
    p = job(BLOCKED, *opts, env={**os.environ, "NRS": _nrs()})
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout))


def test_the_default_filter_answers_eperm() -> None:
    got = _blocked("--user", "nobody")
    assert got == dict.fromkeys(got, errno.EPERM), got
    assert len(got) == 15


def test_seccomp_none_turns_it_off() -> None:
    got = _blocked("--user", "nobody", "--seccomp", "none")
    # without the filter the kernel answers for itself: no capability, or no such device
    assert got["bpf"] != errno.EPERM or got["userfaultfd"] != errno.EPERM or got["keyctl"] != errno.EPERM, got


def test_an_oci_profile_file_is_honoured(tmp_path: Path) -> None:
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOTSUP}],
    }))
    p = job("import os\ntry:\n    os.uname()\nexcept OSError as e:\n    print('ERRNO', e.errno)\n",
            "--user", "nobody", "--seccomp", str(profile))
    assert p.returncode == 0, p.stderr
    assert f"ERRNO {errno.ENOTSUP}" in p.stdout, p.stdout


@pytest.mark.parametrize("text", ["{", '{"defaultAction": "SCMP_ACT_SOMETIMES"}'])
def test_a_malformed_profile_is_one_line_and_125(tmp_path: Path, text: str) -> None:
    profile = tmp_path / "bad.json"
    profile.write_text(text)
    p = job("print('RAN')", "--seccomp", str(profile))
    assert p.returncode == 125 and "RAN" not in p.stdout
    assert len(p.stderr.strip().splitlines()) == 1 and "bad.json" in p.stderr, p.stderr


# --- devices ----------------------------------------------------------------------------

LIST_DEV = "import os\nfor root, dirs, files in os.walk('/dev'):\n    for n in files: print(os.path.join(root, n))\n"


@AS_USER
def test_a_private_dev_has_only_the_basic_nodes(who: tuple[str, ...]) -> None:
    host = set(os.listdir("/dev"))
    p = job(LIST_DEV, *who, "--dev", "private")
    assert p.returncode == 0, p.stderr
    seen = set(p.stdout.split())
    assert seen == {f"/dev/{n}" for n in ("null", "zero", "full", "random", "urandom", "tty", "pts/ptmx",
                                        "ptmx", "stdin", "stdout", "stderr")}, seen
    assert set(os.listdir("/dev")) == host  # nothing of it reached the host's /dev


def test_device_passes_exactly_one() -> None:
    extra = next(n for n in ("kvm", "fuse", "net/tun", "loop0") if os.path.exists(f"/dev/{n}"))
    p = job(LIST_DEV + f"print(open('/dev/{extra}', 'rb').fileno() > 0)\n", "--dev", "private",
            "--device", f"/dev/{extra}")
    assert p.returncode == 0, p.stderr
    listed = {line for line in p.stdout.split() if line.startswith("/dev/")}
    assert f"/dev/{extra}" in listed and len(listed) == 12, listed
    assert "True" in p.stdout


def test_a_root_jobs_mknod_in_the_private_dev_opens_nothing() -> None:
    disk = next(p for p in ("/dev/vda", "/dev/sda", "/dev/nvme0n1") if os.path.exists(p))
    rdev = os.stat(disk).st_rdev
    script = (f"import os, stat\ntry:\n    os.mknod('/dev/disk', stat.S_IFBLK | 0o600, {rdev})\n"
              "    os.open('/dev/disk', os.O_RDONLY)\n    print('OPENED')\n"
              "except OSError as e:\n    print('REFUSED', e.errno)\n")
    p = job(script, "--dev", "private")
    assert p.returncode == 0, p.stderr
    # the devices controller refuses the mknod (EPERM); without one, the nodev /dev the open
    assert f"REFUSED {errno.EACCES}" in p.stdout or f"REFUSED {errno.EPERM}" in p.stdout, p.stdout


@pytest.mark.parametrize(
    ("opts", "says"),
    [
        (("--device", "/dev/null"), "needs --dev private"),
        (("--dev", "private", "--device", "/etc/passwd"), "/dev/PATH"),
        (("--dev", "private", "--device", "/dev/null:rx"), "letters of r"),
        (("--dev", "private", "--device", "/dev/shm"), "not a device node"),
        (("--dev", "sometimes"), "host or private"),
    ],
)
def test_bad_device_options_are_one_line(opts: tuple[str, ...], says: str) -> None:
    p = job("print('RAN')", *opts)
    assert p.returncode in (2, 125) and "RAN" not in p.stdout, p.stdout
    assert len(p.stderr.strip().splitlines()) == 1 and says in p.stderr, p.stderr


# --- the job's own terminal -------------------------------------------------------------


@AS_USER
def test_an_interactive_job_gets_a_pty_with_job_control(shell: tuple[Shell, Path], who: tuple[str, ...]) -> None:
    import fcntl
    import struct
    import termios

    sh, _work = shell
    sh.expect(b"$ ")
    sh.type(f"{SANDBOX_RUN} {' '.join(who)} -- /bin/bash --norc --noprofile -i; echo OU''TER-$?")
    time.sleep(1.5)  # the inner shell reads the next line, not the outer one
    sh.type("PS1='in$ '; sleep 30 & jobs; echo JO''BS-DONE")
    out = sh.expect(b"JOBS-DONE\r\n")
    assert b"[1]+  Running" in out, out[-1500:]
    fcntl.ioctl(sh.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))  # the caller's window changes
    time.sleep(0.3)
    sh.type("stty size; kill %1; wait; tty; exit 7")
    out = sh.expect(b"OUTER-")
    sh.expect(b"OUTER-7")
    assert b"33 111" in out, out[-1500:]
    inner_tty = out.split(b"exit 7")[-1]
    assert b"/dev/pts/" in inner_tty  # a terminal of its own, not the caller's


def test_eof_reaches_a_job_on_its_pty(shell: tuple[Shell, Path]) -> None:
    sh, _work = shell
    sh.expect(b"$ ")
    sh.type(f"{SANDBOX_RUN} -- /bin/cat; echo CA''T-$?")
    time.sleep(1.5)
    os.write(sh.fd, b"hello\n\x04")
    out = sh.expect(b"CAT-0")
    assert out.count(b"hello") >= 2, out[-500:]  # echoed by the job's terminal, then by cat


def test_no_pty_keeps_the_callers_descriptors_without_its_session(shell: tuple[Shell, Path]) -> None:
    sh, work = shell
    sh.type(f"{SANDBOX_RUN} --no-pty -- {PY} -c \"import os; print(os.ttyname(0), os.getsid(0) == os.getpid())\""
            f" >log; echo NO''PTY-$?")
    sh.expect(b"NOPTY-0")
    name, own_session = (work / "log").read_text().split()
    assert name.startswith("/dev/pts/") and own_session == "True"


def test_pty_forced_without_a_terminal() -> None:
    p = run_sandbox("--pty", "--", "/bin/sh", "-c", "tty; exit 4", stdin=subprocess.DEVNULL)
    assert p.returncode == 4, p.stderr
    assert p.stdout.startswith("/dev/pts/"), p.stdout
    both = run_sandbox("--pty", "--no-pty", "--", "/bin/true")
    assert both.returncode == 125 and "exclude" in both.stderr
