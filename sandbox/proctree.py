"""Who belongs to a job with neither a cgroup nor a PID namespace: pure functions over
the text of /proc and the bytes of the kernel's process-event connector.

A job's family (sandbox/ptree.py) is the union of three things, each of which a job
can defeat alone but not all together:

- the process tree below its launcher, a child subreaper (an orphan, double-forked or
  setsid, is reparented to the nearest subreaper ancestor, never to the system's init,
  while the launcher lives);
- a marker in the environment every process inherits (HTCondor ProcD's environment
  tracking): it survives the launcher's death, a process may drop it;
- for root, a supplementary group of its own (ProcD's GID tracking): a process without
  CAP_SETGID cannot shed it, whoever its parent is.

Everything here takes text or bytes and returns data: unit-tested without root.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import NamedTuple

MARKER_VAR = "SANDBOX_RUN_JOB"


class Proc(NamedTuple):
    """One process as /proc/PID/stat tells it."""

    pid: int
    ppid: int
    state: str  # R, S, D, T, t, Z, X, ...
    start: int  # start time in clock ticks since boot: with the PID, one process for good

    @property
    def alive(self) -> bool:
        """Not a zombie: it can still run, fork, or be signalled to any effect."""
        return self.state not in ("Z", "X", "x")


def parse_stat(text: str) -> Proc:
    """/proc/PID/stat. The command name (field 2) may hold spaces and parentheses: the
    fields are split after its last ')'."""
    pid = int(text[: text.index("(")].strip())
    fields = text[text.rfind(")") + 2 :].split()
    return Proc(pid, int(fields[1]), fields[0], int(fields[19]))


def parse_groups(status: str) -> frozenset[int]:
    """The supplementary groups of /proc/PID/status ('Groups:\\t10 61003 ')."""
    for line in status.splitlines():
        if line.startswith("Groups:"):
            return frozenset(int(g) for g in line.split()[1:])
    return frozenset()


def parse_status_hwm_kb(status: str) -> int | None:
    """VmHWM (peak resident set, kB) of /proc/PID/status; None for a kernel thread or zombie."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def marker_value(name: str, token: str) -> str:
    return f"{name}:{token}"


def has_marker(environ: bytes, value: str) -> bool:
    """Does /proc/PID/environ (NUL-separated) carry exactly MARKER_VAR=value?"""
    return f"{MARKER_VAR}={value}".encode() in environ.split(b"\0")


def descendants(parents: Mapping[int, int], root: int) -> set[int]:
    """Every process below `root` (not root itself), from a PID -> parent PID map."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        if pid != ppid:
            children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found and child != root:
                found.add(child)
                stack.append(child)
    return found


# -- the GID range ------------------------------------------------------------------


def parse_gid_range(text: str) -> range:
    """'61000-61099' (inclusive) or a single '61000'. A GID below 1000 or the overflow
    GIDs would tag processes with a group that means something else."""
    low_text, dash, high_text = text.strip().partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if dash else low
    except ValueError:
        raise ValueError(f"invalid GID range {text!r}: expected FIRST-LAST, e.g. 61000-61099") from None
    if not 1000 <= low <= high < 65534:
        raise ValueError(f"invalid GID range {text!r}: expected FIRST-LAST within 1000-65533")
    return range(low, high + 1)


def free_gids(candidates: Iterable[int], in_use: Iterable[frozenset[int]]) -> list[int]:
    """The GIDs of `candidates` that no live process carries (each entry of `in_use` is
    one process's groups), in order."""
    used: set[int] = set()
    for groups in in_use:
        used |= groups
    return [g for g in candidates if g not in used]


# -- the proc connector (linux/cn_proc.h, linux/connector.h) ------------------------

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000
NLMSG_DONE = 3

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # id.idx, id.val, seq, ack, len, flags
_EVENT_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_FORK = struct.Struct("=IIII")  # parent pid, parent tgid, child pid, child tgid
_PAIR = struct.Struct("=II")  # process pid, process tgid (exec, exit, ...)


class ProcEvent(NamedTuple):
    """A fork (pid: the child, parent: its parent process), an exec or an exit (pid: the
    process). Threads are left out: a thread is not a process of its own."""

    kind: str  # "fork", "exec" or "exit"
    pid: int
    parent: int | None = None


def listen_message(pid: int) -> bytes:
    """The datagram that subscribes a connector socket to process events."""
    payload = struct.pack("=I", PROC_CN_MCAST_LISTEN)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, pid) + cn


def parse_connector(data: bytes) -> list[ProcEvent]:
    """Every process event in one datagram (several netlink messages, 4-byte aligned).
    Truncated or foreign messages are skipped, never raised on: the kernel's word is
    a hint to rescan /proc, never the membership itself."""
    events: list[ProcEvent] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length = _NLMSGHDR.unpack_from(data, offset)[0]
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        body = data[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3
        if len(body) < _CN_MSG.size + _EVENT_HEAD.size:
            continue
        idx, val, _seq, _ack, size, _flags = _CN_MSG.unpack_from(body, 0)
        if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC) or size < _EVENT_HEAD.size:
            continue
        event = body[_CN_MSG.size : _CN_MSG.size + size]
        what = _EVENT_HEAD.unpack_from(event, 0)[0]
        rest = event[_EVENT_HEAD.size :]
        if what == PROC_EVENT_FORK and len(rest) >= _FORK.size:
            _ppid, ptgid, cpid, ctgid = _FORK.unpack_from(rest, 0)
            if cpid == ctgid:
                events.append(ProcEvent("fork", ctgid, ptgid))
        elif what in (PROC_EVENT_EXEC, PROC_EVENT_EXIT) and len(rest) >= _PAIR.size:
            pid, tgid = _PAIR.unpack_from(rest, 0)
            if pid == tgid:
                events.append(ProcEvent("exec" if what == PROC_EVENT_EXEC else "exit", tgid))
    return events
