"""The switchboard's attach pins the process it moves, tested as the attacker would, on
the real kernel: the helper's own op_attach runs in-process (as root) in a private PID
namespace, so that a victim can be forked at a chosen PID (ns_last_pid), and the attack
is made at the worst moment, between the checks and the write into cgroup.procs."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT, ROOT
from tests.integration.test_switchboard import _own_cgroup, make_slot, remove_slot

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root (ptrace, cgroups, a PID namespace)"),
              pytest.mark.cgroup]

HELPER = ROOT / "helpers" / "switchboard.py"
KEYS = ("memory", "pids", "cpu", "cpuacct", "blkio", "freezer", "unified")

# PID 1 of the test's PID namespace, with a private /proc. It is the helper (op_attach,
# in-process, for a caller of uid UID sitting in the slot); its child A is the member's
# attacker, the real parent of P, the member's process to attach (blocked on a pipe read,
# as the launcher's init waits for its go byte). Modes:
#   plain:    attach P; then P must still read the byte it is sent (the pin's stop did not
#             break its read) and exit 0 from inside the sandbox.
#   attack:   between the checks and the write, A SIGKILLs P and tries for 1 s to reap it,
#             then forks V, a process of the same uid in another cgroup (root's sandbox for
#             the member), with ns_last_pid set so that V gets P's PID if it is free.
#   unpinned: the same attack on the sequence without the pin (Pin replaced by nothing):
#             what the test would see if the pin did not hold.
SCRIPT = r"""
import importlib.util, json, os, signal, sys, time
helper, mode, uid, lock = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[6]
slot, victim_cg = json.loads(sys.argv[4]), json.loads(sys.argv[5])
spec = importlib.util.spec_from_file_location("sbh", helper)
sb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sb)
sb.LOCK = lock

def join(dirs):
    for d in dirs:
        leaf = os.path.join(d, sb.LEAF)
        with open(os.path.join(leaf if os.path.isdir(leaf) else d, "cgroup.procs"), "w") as f:
            f.write("0")

def line(fd):
    out = b""
    while not out.endswith(b"\n"):
        b = os.read(fd, 1)
        if not b:
            raise SystemExit("pipe closed")
        out += b
    return json.loads(out)

def send(fd, obj):
    os.write(fd, json.dumps(obj).encode() + b"\n")

join(slot)
caller = sb.Caller()
caller.uid, caller.gid, caller.groups, caller.user = uid, uid, {uid}, "sbtq-pin"
cfg = {"cgroup": {"parent": "/sbtq-pin-unused", "parents": json.loads(sys.argv[7])}}
sb.op_create(cfg, caller, {"op": "create", "name": "sbtq-pin",
                           "limits": {"memory": None, "swap": None, "pids": None, "cpus": None}})
to_a, from_h = os.pipe()
to_h, from_a = os.pipe()
go_r, go_w = os.pipe()
a = os.fork()
if a == 0:  # A: the attacker, P's parent
    os.close(from_h); os.close(to_h)
    up_r, up_w = os.pipe()
    p = os.fork()
    if p == 0:
        os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
        os.write(up_w, b"u")
        got = os.read(go_r, 1)  # blocked here, as init on its go pipe
        with open("/proc/self/cgroup") as f:
            where = f.read()
        os._exit(0 if got == b"G" and "sandbox-sbtq-pin" in where else 3)
    os.close(go_r)
    os.read(up_r, 1)  # P runs as the member
    send(from_a, {"p": p})
    cmd = line(to_a)
    if cmd == "attack":
        os.kill(p, signal.SIGKILL)
        reaped, deadline = False, time.monotonic() + 1
        while time.monotonic() < deadline and not reaped:
            reaped = os.waitpid(p, os.WNOHANG)[0] == p
            time.sleep(0.01)
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(p - 1))
        ready_r, ready_w = os.pipe()
        v = os.fork()
        if v == 0:  # V: the member's job that root runs in its own cgroup
            join(victim_cg)
            os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
            os.write(ready_w, b"r")
            while True:
                signal.pause()
        os.read(ready_r, 1)
        with open(f"/proc/{v}/cgroup") as f:
            send(from_a, {"reaped": reaped, "v": v, "v_cgroup": f.read()})
        cmd = line(to_a)  # "done": the helper let go
        with open(f"/proc/{v}/cgroup") as f:
            v_after = f.read()
        os.kill(v, signal.SIGKILL)
        os.waitpid(v, 0)
        status = os.waitpid(p, 0)[1] if not reaped else None
        send(from_a, {"p_status": status, "v_cgroup_after": v_after})
    else:
        send(from_a, {"p_status": os.waitpid(p, 0)[1]})
    os._exit(0)
os.close(to_a); os.close(from_a); os.close(go_r)
p = line(to_h)["p"]
out = {"mode": mode, "p": p}
if mode == "unpinned":
    class NoPin:
        def __init__(self, pid, pidfd): pass
        def __enter__(self): return self
        def __exit__(self, *exc): return None
    sb.Pin = NoPin
if mode in ("attack", "unpinned"):
    real_write, attacked = sb.write_at, []
    def write_at(fd, name, value):
        if name == "cgroup.procs" and not attacked:
            attacked.append(1)
            send(from_h, "attack")
            out.update(line(to_h))
        real_write(fd, name, value)
    sb.write_at = write_at
try:
    sb.op_attach(cfg, caller, {"op": "attach", "name": "sbtq-pin", "pid": p})
    out["attach"] = "ok"
except sb.Refusal as e:
    out["attach"] = "refused: " + str(e)
if mode == "plain":
    os.write(go_w, b"G")
    send(from_h, "plain")
else:
    sb.write_at = real_write
    send(from_h, "done")
out.update(line(to_h))
os.waitpid(a, 0)
with open(os.path.join(sb.Job(cfg, "sbtq-pin").path(next(iter(sb.hierarchies()[1]))), "cgroup.procs")) as f:
    out["left_in_sandbox"] = f.read().split()
sb.op_destroy(cfg, caller, {"op": "destroy", "name": "sbtq-pin"})
print(json.dumps(out))
"""


def _free_uid() -> int:
    taken = {u.pw_uid for u in pwd.getpwall()}
    return next(u for u in range(61200, 62000) if u not in taken)


def _run(mode: str, tmp_path: Path) -> dict[str, object]:
    slot, victim = make_slot("sbtq-pin-slot"), make_slot("sbtq-pin-victim")
    # a hierarchy the caller would sit at the root of gets the configured parent: the slot too
    parents = {k: f"{_own_cgroup(k).rstrip('/')}/sbtq-pin-slot" for k in KEYS if _own_cgroup(k) != "/"}
    try:
        r = subprocess.run(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "/usr/bin/python3", "-I", "-c", SCRIPT,
             str(HELPER), mode, str(_free_uid()), json.dumps(slot), json.dumps(victim),
             str(tmp_path / "switchboard.lock"), json.dumps(parents)],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout.splitlines()[-1]))
    finally:
        remove_slot(slot)
        remove_slot(victim)
        for d in (*slot, *victim):
            assert not os.path.exists(d), f"{d} left behind"


# every member launch in the guest lanes attaches through the pin: this one's point (the
# blocked read survives) does not depend on the layout
@pytest.mark.host_only
def test_a_pinned_process_is_attached_and_its_blocked_read_survives(tmp_path: Path) -> None:
    out = _run("plain", tmp_path)
    assert out["attach"] == "ok", out
    assert out["p_status"] == 0, out  # read its byte after the pin's stop, in the sandbox


def test_the_pid_of_an_attached_process_cannot_be_reused_for_another(tmp_path: Path) -> None:
    """Killed between the checks and the write, the pinned process stays a zombie that its
    parent cannot reap, so a victim forked at its PID gets another one and the write moves
    nothing else; afterwards the zombie is its parent's to reap."""
    out = _run("attack", tmp_path)
    assert out["reaped"] is False, out  # the pin: the killed process's zombie is ours only
    assert out["v"] != out["p"], out  # so its PID stayed taken
    assert out["v_cgroup_after"] == out["v_cgroup"] and "sbtq-pin-victim" in str(out["v_cgroup"]), out
    # refused, naming the process: exited during attach, or the write found only the zombie
    assert str(out["attach"]).startswith("refused: ") and str(out["p"]) in str(out["attach"]), out
    assert out["p_status"] == 9, out  # passed on to its parent, killed by SIGKILL
    assert out["left_in_sandbox"] == [], out


# the control of the attack test (which runs on every layout): that the attack works
# without the pin is the kernel's PID reuse, the same on every layout
@pytest.mark.host_only
def test_without_the_pin_the_same_attack_moves_the_victim(tmp_path: Path) -> None:
    """The control: the same attack against the sequence without the pin does what the
    pin prevents (so the test above can fail): the parent reaps the killed process, the
    victim gets its PID, and the helper's write moves the victim into the sandbox."""
    out = _run("unpinned", tmp_path)
    assert out["reaped"] is True and out["v"] == out["p"], out
    assert "sandbox-sbtq-pin" in str(out["v_cgroup_after"]), out  # moved: the attack worked
    assert "sbtq-pin-victim" in str(out["v_cgroup"]), out


def _v1_freezer() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[:1] == ["cgroup"] and "freezer" in right.split()[2].split(","):
                return left.split()[4]
    return None


# a v2 freeze lets a ptrace-stop through; a task the v1 freezer holds does not run, not even to stop
@pytest.mark.layout("v1", "hybrid")  # a v1 freezer hierarchy
def test_a_process_that_does_not_stop_stays_pinned_until_it_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process the v1 freezer holds cannot stop for the pin: the attach is refused, and
    the process stays traced (its PID still cannot be reused) until it can stop; then the
    next pin's start lets it go (a long-lived helper serves many attaches), and its
    blocked read goes on."""
    from tests.unit.switchboard_module import sb

    freezer = os.path.join(str(_v1_freezer()), _own_cgroup("freezer").strip("/"), "sbtq-pin-frozen")
    os.makedirs(freezer)
    r, w = os.pipe()
    p = os.fork()
    if p == 0:  # as the launcher's init: blocked on its go pipe
        try:
            os.close(w)
            os._exit(0 if os.read(r, 1) == b"G" else 3)
        except BaseException:
            os._exit(4)
    os.close(r)
    pidfd = os.pidfd_open(p)
    try:
        Path(freezer, "cgroup.procs").write_text(str(p))
        Path(freezer, "freezer.state").write_text("FROZEN")
        for _ in range(500):
            if Path(freezer, "freezer.state").read_text().strip() == "FROZEN":
                break
            time.sleep(0.01)
        monkeypatch.setattr(sb, "PIN_WAIT", 0.5)
        with pytest.raises(sb.Refusal, match=f"process {p} did not stop"):
            with sb.Pin(p, pidfd):
                raise AssertionError("pinned a frozen process")
        assert p in sb._LEFT_TRACED
        assert _tracer(p) == os.getpid()  # still ours: its PID stays pinned
        Path(freezer, "freezer.state").write_text("THAWED")
        deadline = time.monotonic() + 10
        while p in sb._LEFT_TRACED and time.monotonic() < deadline:
            sb._release_left()
            time.sleep(0.01)
        assert p not in sb._LEFT_TRACED and _tracer(p) == 0
        os.write(w, b"G")
        assert os.waitpid(p, 0)[1] == 0  # its read went on
    finally:
        sb._LEFT_TRACED.discard(p)
        os.close(pidfd)
        os.close(w)
        try:
            Path(freezer, "freezer.state").write_text("THAWED")
            os.kill(p, 9)
            os.waitpid(p, 0)
        except (OSError, ChildProcessError):
            pass
        os.rmdir(freezer)


def _tracer(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x.split()[1] for x in status.splitlines() if x.startswith("TracerPid:")))
