"""The report: what a job used and how it ended, as one flat JSON object.

Keys are fixed (REPORT_KEYS) and always present, null where the host cannot measure
one, so that starter code can rely on them without feature detection.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from .limits import format_bytes

# the report's keys and values are typed in records.py; these names stay here for the sinks
from .records import (
    REPORT_KEYS,
    REPORT_VERSION,
    STATUS_EXITED,
    STATUS_FAILED,
    STATUS_LAUNCHER_LOST,
    STATUS_OOM,
    STATUS_SIGNALED,
    STATUS_TIMED_OUT,
    STATUSES,
    dumps,
)

__all__ = [
    "REPORT_KEYS", "REPORT_VERSION", "STATUSES", "STATUS_EXITED", "STATUS_FAILED", "STATUS_LAUNCHER_LOST",
    "STATUS_OOM", "STATUS_SIGNALED", "STATUS_TIMED_OUT", "dumps", "new_report", "summary", "write_atomic",
    "write_atomic_text", "write_event",
]


def new_report(name: str) -> dict[str, Any]:
    report: dict[str, Any] = dict.fromkeys(REPORT_KEYS)
    report["version"] = REPORT_VERSION
    report["name"] = name
    return report


def write_atomic(path: str, report: dict[str, Any]) -> None:
    """Write the report so that a reader sees the old file or the whole new one,
    never a torn one: temp file in the same directory, fsync, rename."""
    write_atomic_text(path, dumps(report) + "\n")


def write_atomic_text(path: str, text: str) -> None:
    """write_atomic for a report already formatted (JSON or a ClassAd)."""
    directory = os.path.dirname(os.path.abspath(path))
    # A root launcher may write into a directory the job's user can write (a scratch
    # dir): an unpredictable name created with O_EXCL|O_NOFOLLOW, so that no planted
    # symlink redirects the write.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        # surrogateescape: bytes that were not UTF-8 (a path, a label from argv) are
        # written back as they came, not refused at the very end of a job.
        data = text.encode("utf-8", "surrogateescape")
        while data:  # a nearly full file system takes a prefix: never rename that into place
            n = os.write(fd, data)
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)


def write_event(fd: int, event: str, payload: dict[str, Any]) -> None:
    """One JSON line on the caller's descriptor; a caller that went away is not our failure."""
    line = (dumps({"event": event, **payload}) + "\n").encode()
    try:
        while line:
            n = os.write(fd, line)
            line = line[n:]
    except (BrokenPipeError, OSError):
        pass


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def summary(report: dict[str, Any]) -> str:
    """A human summary for stderr, in the spirit of `time -v` and `systemd-run --wait`."""
    status = report["status"]
    if status == STATUS_EXITED:
        outcome = f"exited with code {report['exit_code']}"
    elif status == STATUS_SIGNALED:
        outcome = f"killed by signal {report['signal']}"
    elif status == STATUS_OOM:
        outcome = "killed by the OOM killer (memory limit reached)"
    elif status == STATUS_TIMED_OUT:
        outcome = "timed out and was killed"
    elif status == STATUS_LAUNCHER_LOST:
        outcome = "lost its launcher (killed) and was reclaimed"
    else:
        outcome = f"failed to start: {report.get('error')}"
    cpu_total = None
    if report["cpu_user_seconds"] is not None and report["cpu_system_seconds"] is not None:
        cpu_total = report["cpu_user_seconds"] + report["cpu_system_seconds"]
    lines = [
        f"sandbox-run: '{report['name']}' {outcome}",
        f"  wall time:        {_seconds(report['wall_seconds'])}",
        f"  cpu user/system:  {_seconds(report['cpu_user_seconds'])} / "
        f"{_seconds(report['cpu_system_seconds'])} (total {_seconds(cpu_total)})",
        f"  cpu limit:        {_cpus(report.get('cpu_limit_cpus'))}",
        f"  memory peak:      {format_bytes(report['memory_peak_bytes'])}"
        f" (limit {format_bytes(report['memory_limit_bytes']) if report['memory_limit_bytes'] else 'none'})",
        f"  oom kills:        {report['oom_kills'] if report['oom_kills'] is not None else 'n/a'}",
        f"  io read/write:    {format_bytes(report['io_read_bytes'])} / {format_bytes(report['io_write_bytes'])}",
        f"  pids peak:        {report['pids_peak'] if report['pids_peak'] is not None else 'n/a'}",
        f"  cgroup:           {report['cgroup']} ({report['cgroup_version']})",
        f"  pids:             init {report['init_host_pid']}, job {report['job_host_pid']}"
        f" (pid {report['job_ns_pid']} inside)",
        f"  exit code:        {report['returncode']}",
    ]
    return "\n".join(lines)


def _cpus(value: float | None) -> str:
    return "none" if value is None else f"{value:g} CPUs"
