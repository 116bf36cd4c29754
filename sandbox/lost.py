"""The records of a sandbox whose launcher died: its report and accounting line, made
from its state by whoever reclaims it (`sandbox gc` or the next launch).

Every sandbox that started yields exactly one of each: a record its launcher already
wrote (it died between writing and removing its state) is recognised by its name and
start time and not written twice.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from . import report

if TYPE_CHECKING:
    from .cgroups import Usage
    from .records import State

# How much of the accounting log's end is searched for a record already written: the
# launcher writes its record moments before it removes its state, so it is near the end
# unless a whole node's worth of launches came in between.
TAIL_BYTES = 1 << 20


def lost_report(st: State, usage: Usage | None, now: float | None = None) -> dict[str, Any]:
    """The report of a sandbox whose launcher is gone, from its state. Pure: unit-tested."""
    now = time.time() if now is None else now
    r = report.new_report(st.name)
    started = st.started_at
    r.update(
        status=report.STATUS_LAUNCHER_LOST,
        returncode=125,
        started_at=started,
        ended_at=now,
        wall_seconds=round(now - started, 6) if started is not None else None,
        argv=list(st.argv),
        labels=dict(st.labels),
        cgroup=st.cgroup,
        cgroup_version=st.cgroup_version,
        init_host_pid=st.init_host_pid,
        job_host_pid=st.job_host_pid,
        job_ns_pid=st.job_ns_pid,
        memory_limit_bytes=st.memory_limit_bytes,
        cpu_limit_cpus=st.cpu_limit_cpus,
        error="the launcher died before the job ended; usage is what its cgroup held when it was reclaimed",
    )
    if st.tracking is not None:  # no cgroup: what found the job's processes
        r["tracking"] = st.tracking
    if usage is not None:
        r.update(
            cpu_user_seconds=usage.cpu_user_seconds,
            cpu_system_seconds=usage.cpu_system_seconds,
            memory_peak_bytes=usage.memory_peak_bytes,
            oom_kills=usage.oom_kills,
            io_read_bytes=usage.io_read_bytes,
            io_write_bytes=usage.io_write_bytes,
            pids_peak=usage.pids_peak,
        )
    return r


def same_sandbox(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("name") == b.get("name") and a.get("started_at") == b.get("started_at")


def write_records(st: State, usage: Usage | None) -> None:
    """Write the report and accounting record the launcher could not. Failures are
    not gc's failure: it says so and goes on (the cgroup is reclaimed all the same)."""
    r = lost_report(st, usage)
    path = st.report_path
    if path is not None and not _report_already(path, r):
        try:
            if st.report_format == "classad":
                from .classad import format_report

                report.write_atomic_text(path, format_report(r))
            else:
                report.write_atomic(path, r)
        except OSError as e:
            _warn(f"cannot write the report {path} of lost sandbox {r['name']}: {e.strerror}")
    log = st.accounting_log
    if log is not None and not _logged_already(log, r):
        from .accounting import append

        try:
            append(log, r)
        except OSError as e:
            _warn(f"cannot append to the accounting log {log}: {e.strerror}")


def _report_already(path: str, r: dict[str, Any]) -> bool:
    import json

    try:
        with open(path, "rb") as f:
            text = f.read(1 << 20)
    except OSError:
        return False
    try:
        old = json.loads(text)
    except ValueError:
        # a ClassAd report: its name and start date
        lines = set(text.decode(errors="replace").splitlines())
        return f'SandboxName = "{r["name"]}"' in lines and any(
            line.startswith("JobCurrentStartExecutingDate = ") for line in lines
        ) and f"JobCurrentStartExecutingDate = {int(r['started_at'] or 0)}" in lines
    return isinstance(old, dict) and same_sandbox(old, r)


def _logged_already(log: str, r: dict[str, Any]) -> bool:
    import json

    try:
        with open(log, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read()
    except OSError:
        return False
    needle = json.dumps(r["name"]).encode()
    for line in tail.splitlines():
        if needle not in line:
            continue
        try:
            old = json.loads(line)
        except ValueError:
            continue
        if isinstance(old, dict) and same_sandbox(old, r):
            return True
    return False


def _warn(message: str) -> None:
    from .notices import say  # a launch reclaims too: never blocked by its stderr

    say(f"warning: {message}")
