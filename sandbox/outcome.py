"""How a job ended and what it used: the decision (pure) and the report record built
from it, the launch's facts and the cgroup's usage record."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from . import errors, records, report

if TYPE_CHECKING:
    from .cgroups import JobCgroup, Usage
    from .spec import JobSpec
    from .supervise import Facts


class Outcome(NamedTuple):
    status: str
    exit_code: int | None
    signal: int | None
    returncode: int


def decide(
    main_status: int | None,
    init_status: int | None,
    exec_error: tuple[int, str] | None,
    timed_out: bool,
    oom_kills: int | None,
) -> Outcome:
    """How the job ended, from what init and the kernel said. Pure: unit-tested."""
    if exec_error is not None:
        return Outcome(report.STATUS_FAILED, None, None, exec_error[0])
    code = sig = None
    status = main_status if main_status is not None else init_status
    if status is not None:
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
    if timed_out:
        return Outcome(report.STATUS_TIMED_OUT, code, sig, errors.EXIT_TIMEOUT)
    # An OOM kill anywhere in the job that made it fail: with `sh -c prog` the victim is
    # prog and sh exits 137 itself, so a non-zero exit counts as well as SIGKILL.
    if oom_kills and (sig == signal.SIGKILL or (code is not None and code != 0)):
        return Outcome(report.STATUS_OOM, code, sig, errors.SIGNAL_BASE + signal.SIGKILL)
    if sig is not None:
        return Outcome(report.STATUS_SIGNALED, None, sig, errors.SIGNAL_BASE + sig)
    if code is not None:
        return Outcome(report.STATUS_EXITED, code, None, code)
    return Outcome(report.STATUS_FAILED, None, None, errors.EXIT_SANDBOX_FAILED)


N = TypeVar("N", int, float)


def effective_limit(requested: N | None, enclosing: N | None) -> N | None:
    """The memory (or CPU) the job could have: its own limit, or a tighter one it runs
    inside (a 2G sandbox in a 500M Slurm step is killed at 500M; --cpus 4 under a
    parent's quota of 1.5 CPUs gets 1.5)."""
    if requested is None or enclosing is None:
        return requested if enclosing is None else enclosing
    return min(requested, enclosing)


def limits_in_force(
    spec: JobSpec, cg: JobCgroup | None, enclosing_memory: int | None, enclosing_cpus: float | None
) -> tuple[int | None, float | None]:
    """(memory_limit_bytes, cpu_limit_cpus): the tightest of the job's own limits and
    those of the cgroups it runs in; an own limit left unenforced (--limits best-effort)
    is not one."""
    unenforced = getattr(cg, "not_enforced", ())
    memory = None if "--mem" in unenforced else spec.limits.memory_bytes
    cpus = None if "--cpus" in unenforced else spec.limits.cpus
    return effective_limit(memory, enclosing_memory), effective_limit(cpus, enclosing_cpus)


def process_exit(record: records.Report) -> int:
    """How sandbox-run itself ends, for errors.exit_like: -N when the job died of signal
    N (an OOM kill is SIGKILL even when a shell in between exited 137 itself), else the
    report's returncode. Our own --timeout stays 124: that outcome is sandbox-run's."""
    if record.status == report.STATUS_OOM:
        return -signal.SIGKILL
    if record.status == report.STATUS_SIGNALED and record.signal:
        return -record.signal
    return record.returncode


def build_report(
    spec: JobSpec,
    facts: Facts,
    init_status: int | None,
    usage: Usage,
    launch: LaunchFacts,
) -> records.Report:
    """The report: how the job ended (decide) and what it used (the usage record)."""
    end = decide(facts.main_status, init_status, facts.exec_error, facts.timed_out, usage.oom_kills)
    cg = launch.cg
    memory_limit, cpu_limit = limits_in_force(spec, cg, launch.enclosing_memory, launch.enclosing_cpus)
    return records.Report(
        version=records.REPORT_VERSION,
        name=spec.name,
        status=end.status,
        exit_code=end.exit_code,
        signal=end.signal,
        # A sandbox that could not be torn down is a failure of sandbox-run whatever the
        # job did: a starter that checks only the exit status must see it.
        returncode=end.returncode if launch.cleanup_error is None else errors.EXIT_SANDBOX_FAILED,
        wall_seconds=launch.wall_seconds,
        cpu_user_seconds=None,
        cpu_system_seconds=None,
        memory_peak_bytes=None,
        memory_limit_bytes=memory_limit,
        cpu_limit_cpus=cpu_limit,
        oom_kills=None,
        io_read_bytes=None,
        io_write_bytes=None,
        pids_peak=None,
        cgroup=cg.recorded_path() if cg is not None else None,
        cgroup_version=cg.recorded_version() if cg is not None else None,
        init_host_pid=launch.init_forked,
        job_host_pid=facts.job_host_pid,
        job_ns_pid=facts.job_ns_pid,
        started_at=launch.started_at,
        ended_at=time.time(),
        argv=spec.argv,
        error=facts.exec_error[1] if facts.exec_error else launch.cleanup_error,
        tracking=cg.tracking if cg is not None else None,
        labels=dict(spec.labels),
        extra={**_not_enforced(cg), **(cg.report_extra() if cg is not None else {})},
    ).with_usage(usage, max(facts.maxrss_kb or 0, getattr(cg, "peak_rss_kb", 0)) or None)


def _not_enforced(cg: JobCgroup | None) -> dict[str, object]:
    """Limits the caller allowed to go unenforced (--limits best-effort) are named."""
    flags = getattr(cg, "not_enforced", ())
    return {"limits_not_enforced": list(flags)} if flags else {}


class LaunchFacts(NamedTuple):
    """What the launcher itself knows at the end, for the report."""

    cg: JobCgroup | None
    init_forked: int | None  # init's host PID, whether or not it ever ran the job
    started_at: float
    wall_seconds: float | None
    cleanup_error: str | None
    enclosing_memory: int | None = None  # the tightest limit of the cgroups ours is in
    enclosing_cpus: float | None = None  # and their tightest CPU quota, in CPUs
