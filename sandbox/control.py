"""Live control of running sandboxes, by name: find, usage, signal, suspend, resume, ps.

A running sandbox is known by its state file (state.py), written by its launcher and
removed when it ends. From it we rebuild the sandbox's JobCgroup (the same object the
launcher holds) and act through the cgroup interface only, so every layout works and
the kernel, not a PID list we kept, says which processes belong to the job.

Who may act: root, and the user the kernel says the sandbox is theirs (privilege.
Ownership: who wrote the state file, who its cgroups were handed to). The `sandbox`
CLI and the Python API (api.py) both call these functions: one implementation.
"""

from __future__ import annotations

import os
import signal as _signal
import time
from typing import Any, NamedTuple

from . import errors, state
from .cgroups import CgroupError, JobCgroup, detect
from .cgroups.base import kill_pids
from .privilege import SYSTEM_STATE_DIR
from .records import LiveUsage, RecordError, State
from .spec import check_name


class Running(NamedTuple):
    name: str
    state: State  # its state file, validated
    cg: JobCgroup


def state_dirs() -> list[str]:
    """Where to look: the caller's own state directory and, for an ordinary user, also
    the system one (sandboxes a root launcher runs on the user's behalf record the
    user's uid there)."""
    dirs = [state.state_dir()]
    if SYSTEM_STATE_DIR not in dirs and not os.environ.get("SANDBOX_STATE_DIR"):
        dirs.append(SYSTEM_STATE_DIR)
    return dirs


def _fail(message: str) -> errors.SandboxError:
    return errors.SandboxError(message, errors.EXIT_SANDBOX_FAILED)


def _read(name: str) -> tuple[dict[str, Any], int] | None:
    for d in state_dirs():
        found = state.read_owned(name, d)
        if found is not None:
            return {**found[0], "state_dir": d}, found[1]  # where its lock is tested (alive())
    return None


def alive(data: dict[str, Any]) -> bool:
    return state.launcher_alive(data, data.get("state_dir"))


def cgroup_owners(paths: object) -> frozenset[int]:
    """Who each of a sandbox's cgroups was handed to: the owner of a v2 directory, of a
    v1 cgroup's freezer.state (only root can chown; the switchboard hands a member
    exactly these). A v1 directory itself stays root's."""
    owners = set()
    for key, path in paths.items() if isinstance(paths, dict) else ():
        try:
            owners.add(os.stat(str(path) if key == "unified" else os.path.join(str(path), "freezer.state")).st_uid)
        except (OSError, ValueError):
            continue
    return frozenset(owners)


def launcher_uid(data: dict[str, Any]) -> int | None:
    """The real uid of the sandbox's launcher, from /proc, if the recorded one still runs."""
    pid = data.get("launcher_pid")
    if not isinstance(pid, int) or not alive(data):
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Uid:")), None)
    except (OSError, ValueError):
        return None


def may_control(data: dict[str, Any], file_uid: int) -> bool:
    from .privilege import Ownership, current

    paths = data.get("cgroup_paths")
    facts = Ownership(data.get("uid"), file_uid, cgroup_owners(paths), bool(paths), launcher_uid(data))
    return current().may_control(facts)


def _restore(name: str, data: dict[str, Any]) -> tuple[State, JobCgroup]:
    try:
        # State accepts only sandbox directories of this very name, so that a doctored
        # state file cannot point a kill at some other cgroup.
        record = State.from_dict(data, name)
        cg = record.job_cgroup(detect())
    except (RecordError, CgroupError) as e:
        raise _fail(f"sandbox {name!r}: {e}") from None
    if not cg.exists():
        raise _fail(f"sandbox {name!r} is not running (its cgroup is gone)")
    return record, cg


def find(name: str) -> Running:
    """The running sandbox `name`, if the caller may control it; otherwise a one-line
    SandboxError (exit 125)."""
    try:
        check_name(name)
    except ValueError as e:
        raise _fail(str(e)) from None
    found = _read(name)
    if found is None:
        raise _fail(f"no running sandbox named {name!r}")
    data, file_uid = found
    if not may_control(data, file_uid):
        raise _fail(f"sandbox {name!r} belongs to another user")
    if not alive(data):
        raise _fail(f"sandbox {name!r} is not running (its launcher is gone; `sandbox gc` reclaims it)")
    return Running(name, *_restore(name, data))


def visible() -> list[tuple[str, dict[str, Any]]]:
    """(name, state) of every sandbox the caller may control, live or stale."""
    out: dict[str, dict[str, Any]] = {}
    for d in state_dirs():
        for name in state.names(d):
            found = state.read_owned(name, d)
            if found is not None and name not in out and may_control({**found[0], "state_dir": d}, found[1]):
                out[name] = {**found[0], "state_dir": d}
    return sorted(out.items())


# -- actions ---------------------------------------------------------------------------


def parse_signal(text: str) -> int:
    """KILL, SIGKILL, kill or 9."""
    t = text.strip().upper()
    if t.isdigit():
        num = int(t)
        if 0 < num < _signal.NSIG:
            return num
    else:
        name = t if t.startswith("SIG") else "SIG" + t
        sig = getattr(_signal.Signals, name, None) if name.isidentifier() else None
        if isinstance(sig, _signal.Signals):
            return int(sig)
    raise _fail(f"invalid signal {text!r}: expected a name (TERM, SIGKILL) or a number")


def send_signal(name: str, sig: int) -> int:
    """Deliver `sig` to every process of the job at once: freeze, signal, thaw, so that
    no process forks a child that misses it. The sandbox's init is left out: it is our
    supervisor, not the job, and it would forward a TERM to the job a second time.
    Returns how many processes were signalled."""
    r = find(name)
    init_pid = r.state.init_host_pid
    was_frozen = r.cg.is_frozen()
    try:
        if was_frozen is not None:  # without a freezer, a process forking now may miss it
            r.cg.freeze()
        pids = [p for p in r.cg.pids() if p != init_pid]
        kill_pids(pids, sig)
    except (OSError, CgroupError) as e:
        raise _fail(f"sandbox {name!r}: cannot signal: {e}") from None
    finally:
        if was_frozen is False:
            try:
                r.cg.thaw()
            except (OSError, CgroupError):
                pass
    return len(pids)


# A freeze completes once every task has reached the freezer; on a loaded machine (or
# under emulation) a busy job's tasks take longer than the backends' 2 s wait, and on v1
# writing FROZEN again retries the tasks not yet frozen. Give up only after this long.
SUSPEND_ATTEMPTS = 5


def suspend(name: str) -> None:
    r = find(name)
    frozen: bool | None = False
    for _ in range(SUSPEND_ATTEMPTS):
        try:
            r.cg.freeze()
        except (OSError, CgroupError) as e:
            raise _fail(f"sandbox {name!r}: cannot freeze: {e}") from None
        frozen = r.cg.is_frozen()
        if frozen is None:
            raise _fail(f"sandbox {name!r}: this host has no cgroup freezer")
        if frozen:
            return
    if not frozen:
        r.cg.thaw()
        raise _fail(f"sandbox {name!r}: the freezer did not complete; left running")


def resume(name: str) -> None:
    r = find(name)
    try:
        r.cg.thaw()
    except (OSError, CgroupError) as e:
        raise _fail(f"sandbox {name!r}: cannot thaw: {e}") from None


def run_state(cg: JobCgroup) -> str:
    return "suspended" if cg.is_frozen() else "running"


def usage(name: str) -> LiveUsage:
    """Live figures under the report's keys, plus the current ones (memory_current_bytes,
    pids_current) and the sandbox's state."""
    from .outcome import effective_limit

    r = find(name)
    u = r.cg.usage()
    pids = u.pids_current if u.pids_current is not None else len(r.cg.pids())
    # As in the report: the tightest of the sandbox's own limit and the enclosing
    # cgroups' (a 2G sandbox in a 500M batch slot has 500M). Without a cgroup no limit
    # is in force, whatever was asked (--limits best-effort).
    own_cpus = r.state.cpu_limit_cpus if r.cg.paths() else None
    in_force = (effective_limit(u.memory_limit_bytes, r.cg.enclosing_memory_limit()),
                effective_limit(own_cpus, r.cg.enclosing_cpu_limit()))
    return LiveUsage.sample(r.state, u, run_state(r.cg), pids, time.time(), in_force=in_force)


# -- ps ----------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def process_info(pid: int, proc: str = "/proc") -> dict[str, Any] | None:
    """One process as `sandbox ps` shows it, or None if it is gone."""
    from .procfs import ns_pid

    try:
        with open(f"{proc}/{pid}/stat") as f:
            stat = f.read()
        with open(f"{proc}/{pid}/status") as f:
            status = f.read()
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = stat[stat.find("(") + 1 : stat.rfind(")")]
    fields = stat[stat.rfind(")") + 2 :].split()
    uid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:")), -1)
    argv = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    return {
        "host_pid": pid,
        "ns_pid": ns_pid(pid, proc),
        "ppid": int(fields[1]),
        "user": _user(uid),
        "uid": uid,
        "state": fields[0],
        "cpu_seconds": round((int(fields[11]) + int(fields[12])) / _TICK, 2),
        "rss_bytes": int(fields[21]) * _PAGE,
        # init is forked, not exec'd, from the launcher: its cmdline is the launcher's
        "command": comm if comm == "sandbox-init" else (" ".join(argv) if argv else f"[{comm}]"),
    }


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def tree(pids: list[int]) -> list[dict[str, Any]]:
    """The processes in tree order (parents before children), each with its depth."""
    infos = {p: i for p in pids if (i := process_info(p)) is not None}
    children: dict[int, list[int]] = {}
    for pid, info in infos.items():
        children.setdefault(info["ppid"], []).append(pid)
    roots = sorted(p for p, i in infos.items() if i["ppid"] not in infos)
    out: list[dict[str, Any]] = []
    stack = [(p, 0) for p in reversed(roots)]
    while stack:
        pid, depth = stack.pop()
        out.append({**infos[pid], "depth": depth})
        stack.extend((c, depth + 1) for c in sorted(children.get(pid, []), reverse=True))
    return out


def ps(name: str | None = None) -> list[dict[str, Any]]:
    """Every running sandbox the caller may control (or the one named), with its
    processes."""
    if name is not None:
        targets = [find(name)]
    else:
        targets = []
        for n, data in visible():
            if not alive(data):
                continue
            try:
                targets.append(find(n))
            except errors.SandboxError:
                continue  # ended while we looked
    return [
        {
            "name": r.name,
            "state": run_state(r.cg),
            "labels": dict(r.state.labels),
            "cgroup": r.state.cgroup,
            "started_at": r.state.started_at,
            "processes": tree(r.cg.pids()),
        }
        for r in targets
    ]


def format_ps(sandboxes: list[dict[str, Any]]) -> str:
    from .limits import format_bytes

    blocks = []
    for sb in sandboxes:
        labels = " ".join(f"{k}={v}" for k, v in sb["labels"].items())
        head = f"{sb['name']}  {sb['state']}  {sb['cgroup']}" + (f"  [{labels}]" if labels else "")
        rows = [("NSPID", "PID", "USER", "S", "CPU", "RSS", "COMMAND")]
        for p in sb["processes"]:
            rows.append(
                (
                    str(p["ns_pid"]),
                    str(p["host_pid"]),
                    p["user"],
                    p["state"],
                    f"{p['cpu_seconds']:.2f}s",
                    format_bytes(p["rss_bytes"]),
                    "  " * p["depth"] + ("\\_ " if p["depth"] else "") + p["command"],
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        lines = [head] + [
            "  " + "  ".join(c.rjust(w) if i in (0, 1, 4, 5) else c.ljust(w) for i, (c, w) in enumerate(
                zip(r[:6], widths, strict=True))) + "  " + r[6]
            for r in rows
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def listing() -> list[dict[str, Any]]:
    out = []
    for name, data in visible():
        live = alive(data)
        entry: dict[str, Any] = {
            "name": name,
            "state": "stale",
            "uid": data.get("uid"),
            "pids": None,
            "started_at": data.get("started_at"),
            "labels": data.get("labels") or {},
            "argv": data.get("argv"),
            "cgroup": data.get("cgroup"),
        }
        if live:
            try:
                r = find(name)
                entry["state"] = run_state(r.cg)
                entry["pids"] = len(r.cg.pids())
            except errors.SandboxError:
                continue  # ended while we looked
        out.append(entry)
    return out


def format_listing(entries: list[dict[str, Any]]) -> str:
    rows = [("NAME", "STATE", "PIDS", "USER", "STARTED", "LABELS", "COMMAND")]
    for e in entries:
        started = e["started_at"]
        rows.append(
            (
                e["name"],
                e["state"],
                "-" if e["pids"] is None else str(e["pids"]),
                _user(e["uid"]) if isinstance(e["uid"], int) else "?",
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float))
                else "-",
                " ".join(f"{k}={v}" for k, v in e["labels"].items()) or "-",
                " ".join(e["argv"] or []),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:6], widths, strict=True)) + "  " + r[6] for r in rows)
