"""The device allow-list behind --dev private: a root job mounts a tmpfs of its own
(the private /dev is nodev), mknods a host device there (/dev/kmsg, the root disk) and
cannot open it; with --device that one node opens. Enforced by the v1 devices controller (v1, hybrid)
or, on pure v2, by the BPF device program attached to the job's cgroup."""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.cgroups import device_bpf
from sandbox.cgroups.layout import detect
from sandbox.limits import Rule
from tests.conftest import needs_root, run_sandbox

LAYOUT = detect()
pytestmark = [needs_root, pytest.mark.cgroup,
              pytest.mark.skipif("devices" not in LAYOUT.v1 and LAYOUT.kind != "v2",
                                 reason="no v1 devices controller and not pure v2")]

ATTACK = """
import ctypes, os, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
os.makedirs("/run/devtest", exist_ok=True)
assert libc.mount(b"t", b"/run/devtest", b"tmpfs", 0, None) == 0, ctypes.get_errno()
kind, major, minor = sys.argv[3], int(sys.argv[1]), int(sys.argv[2])
try:
    os.mknod("/run/devtest/disk", 0o600 | (stat.S_IFBLK if kind == "b" else stat.S_IFCHR), os.makedev(major, minor))
    os.close(os.open("/run/devtest/disk", os.O_RDONLY))
    print("opened")
except OSError as e:
    print("refused", e.errno)
"""


def _root_disk() -> tuple[str, int, int]:
    dev = os.stat("/").st_dev
    major, minor = os.major(dev), os.minor(dev)
    target = os.path.realpath(f"/sys/dev/block/{major}:{minor}")
    return "/dev/" + os.path.basename(target), major, minor


def test_a_root_job_cannot_open_a_host_device_it_made() -> None:
    # the attack itself works: with the host's /dev the job's own node of /dev/kmsg opens
    r = run_sandbox("--", sys.executable, "-c", ATTACK, "1", "11", "c")
    assert r.stdout.split() == ["opened"], r.stderr
    # ... and under --dev private the same node is refused (EPERM from the devices controller)
    r = run_sandbox("--dev", "private", "--", sys.executable, "-c", ATTACK, "1", "11", "c")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["refused", "1"]
    # a disk too (some hosts refuse root's open of a disk outside any sandbox as well, so
    # the disk alone would prove nothing there: the kmsg case is the one that can fail)
    _path, major, minor = _root_disk()
    r = run_sandbox("--dev", "private", "--", sys.executable, "-c", ATTACK, str(major), str(minor), "b")
    assert r.stdout.split() == ["refused", "1"], r.stderr


def test_the_device_passed_opens_and_no_other() -> None:
    _path, major, minor = _root_disk()
    base = ("--dev", "private", "--device", "/dev/kmsg", "--", sys.executable, "-c", ATTACK)
    r = run_sandbox(*base, "1", "11", "c")  # /dev/kmsg, made anew: the one passed
    assert r.stdout.split() == ["opened"], r.stderr
    r = run_sandbox(*base, str(major), str(minor), "b")
    assert r.stdout.split() == ["refused", "1"], r.stderr


# Run by a root job: how many device programs its cgroup has beyond its parent's, and
# what bpf(2) answers the job itself under the default filter.
QUERY = """
import os, sys
from sandbox.cgroups.device_bpf import effective
path = "/sys/fs/cgroup" + open("/proc/self/cgroup").read().split("::", 1)[1].strip()
try:
    fds = [os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in (path, os.path.dirname(path))]
    print("added", effective(fds[0]) - effective(fds[1]))
except OSError as e:
    print("bpf", e.errno)
with open("/dev/null", "w") as f:
    f.write("x")
print("null ok")
"""


@pytest.mark.layout("v2")  # the BPF device program is pure v2's
def test_only_a_private_dev_attaches_a_program_and_the_job_cannot_reach_bpf() -> None:
    r = run_sandbox("--dev", "private", "--seccomp", "none", "--", sys.executable, "-c", QUERY)
    assert r.stdout.split() == ["added", "1", "null", "ok"], r.stderr
    r = run_sandbox("--seccomp", "none", "--", sys.executable, "-c", QUERY)
    assert r.stdout.split() == ["added", "0", "null", "ok"], r.stderr  # no --dev private: nothing
    r = run_sandbox("--dev", "private", "--", sys.executable, "-c", QUERY)
    assert r.stdout.split() == ["bpf", "1", "null", "ok"], r.stderr  # the default filter: no detach


# Run by a root job given /dev/kmsg read-only: each of open for reading, open for
# writing, and mknod of the same node on a tmpfs of its own, and what came of it.
RIGHTS = """
import ctypes, os, stat
libc = ctypes.CDLL(None, use_errno=True)
os.makedirs("/run/devtest", exist_ok=True)
assert libc.mount(b"t", b"/run/devtest", b"tmpfs", 0, None) == 0, ctypes.get_errno()
def attempt(what, fn):
    try:
        fn()
        print(what, "ok")
    except OSError as e:
        print(what, e.errno)
attempt("read", lambda: os.close(os.open("/dev/kmsg", os.O_RDONLY)))
attempt("write", lambda: os.close(os.open("/dev/kmsg", os.O_WRONLY)))
attempt("mknod", lambda: os.mknod("/run/devtest/kmsg", 0o600 | stat.S_IFCHR, os.makedev(1, 11)))
"""


def test_device_access_letters_narrow_what_the_job_may_do() -> None:
    r = run_sandbox("--dev", "private", "--device", "/dev/kmsg:r", "--", sys.executable, "-c", RIGHTS)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["read", "ok", "write", "1", "mknod", "1"], r.stdout
    r = run_sandbox("--dev", "private", "--device", "/dev/kmsg:wm", "--", sys.executable, "-c", RIGHTS)
    assert r.stdout.split() == ["read", "1", "write", "ok", "mknod", "ok"], r.stdout


BPF_F_ALLOW_OVERRIDE = 1


@pytest.fixture
def v2_parent() -> Iterator[Path]:
    """An empty test cgroup under the launcher's own v2 cgroup, removed afterwards (which
    detaches the programs the test attached to it)."""
    assert LAYOUT.unified is not None
    own = Path(LAYOUT.unified.directory(LAYOUT.unified.own_path))
    wanted = {"memory", "pids", "cpu", "io"} & set((own / "cgroup.controllers").read_text().split())
    (own / "cgroup.subtree_control").write_text(" ".join("+" + c for c in sorted(wanted)))
    parent = own / f"sbtest-dev-{os.getpid()}"
    parent.mkdir()
    try:
        yield parent
    finally:
        os.rmdir(parent)


def _attach_enclosing(parent: Path, flags: int) -> None:
    """What a batch system's or container runtime's device policy above the sandbox is:
    its own program on the enclosing cgroup, allowing only the basic nodes and ptys."""
    prog = device_bpf._load(device_bpf.program((Rule("c", 1, 3), Rule("c", 1, 5), Rule("c", 1, 7), Rule("c", 1, 8),
                                                Rule("c", 1, 9), Rule("c", 5, 0), Rule("c", 5, 2),
                                                Rule("c", 136, None))))
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        attr = ctypes.create_string_buffer(device_bpf.ATTR_SIZE)
        struct.pack_into("<IIII", attr, 0, fd, prog, device_bpf.BPF_CGROUP_DEVICE, flags)
        device_bpf._bpf(device_bpf.BPF_PROG_ATTACH, attr)
    finally:
        os.close(fd)
        os.close(prog)


@pytest.mark.layout("v2")
def test_an_enclosing_device_program_still_applies_and_is_never_overridden(v2_parent: Path) -> None:
    rel = "/" + str(v2_parent.relative_to(LAYOUT.unified.mountpoint))  # type: ignore[union-attr]
    _attach_enclosing(v2_parent, device_bpf.BPF_F_ALLOW_MULTI)
    r = run_sandbox("--cgroup-parent", rel, "--dev", "private", "--device", "/dev/kmsg", "--",
                    sys.executable, "-c", RIGHTS)
    assert r.returncode == 0, r.stderr
    # the sandbox allows /dev/kmsg, the enclosing program does not: both must allow
    assert r.stdout.split() == ["read", "1", "write", "1", "mknod", "1"], r.stdout
    other = v2_parent.parent / f"{v2_parent.name}-override"
    other.mkdir()
    try:
        _attach_enclosing(other, BPF_F_ALLOW_OVERRIDE)
        before = sorted(p.name for p in other.iterdir())
        r = run_sandbox("--cgroup-parent", rel + "-override", "--dev", "private", "--", "true")
        assert r.returncode == 125, r.stderr
        assert "would be replaced" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert sorted(p.name for p in other.iterdir()) == before  # no half-made sandbox
    finally:
        os.rmdir(other)


def test_a_sites_default_private_dev_and_its_always_allowed_device(tmp_path: Path) -> None:
    site = tmp_path / "sandbox.toml"
    site.write_text('dev = "private"\ndevices = ["/dev/kmsg:r", "/dev/no-such-node"]\n')
    env = {**os.environ, "SANDBOX_CONFIG": str(site)}
    r = run_sandbox("--", sys.executable, "-c", RIGHTS, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["read", "ok", "write", "1", "mknod", "1"], r.stdout
