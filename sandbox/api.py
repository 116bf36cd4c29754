"""The Python API for starter code: run a job, or start one and control it.

    from sandbox import api

    report = api.run(["make", "-j2"], mem="2G", cpus=2, labels={"tenant": "cms"})
    print(report.status, report.cpu_user_seconds, report.memory_peak_bytes)

    with api.start(["./long-job"], mem="4G", name="job-42") as sb:
        print(sb.pids.job_host_pid, sb.pids.job_ns_pid)
        print(sb.usage().cpu_user_seconds)
        sb.suspend(); sb.resume()
        sb.signal(signal.SIGTERM)
        report = sb.wait()

It is the CLI, driven: `start` runs the installed `sandbox-run` as a subprocess with
`--report-fd` on a pipe, takes the PID mapping from its `started` event and the report
from its `exited` event, and controls the live sandbox with the same functions as
`sandbox usage/kill/suspend/resume` (control.py). Options are sandbox-run's, by their
names in the option table (mem, cpus, pids, tmp_size, name, timeout, labels, ...),
validated here with the same converters before anything runs.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal as _signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any

from . import control, errors
from .options import RUN_OPTIONS, Option
from .records import LiveUsage, Report

__all__ = ["LiveUsage", "PidMap", "Report", "Sandbox", "SandboxRunError", "StartError", "run", "start"]

_BY_DEST: dict[str, Option] = {o.dest: o for o in RUN_OPTIONS}
_RESERVED = {"report_fd"}  # the API's own channel


class SandboxRunError(errors.SandboxError):
    """sandbox-run failed without a report (bad options, killed launcher): see its stderr."""


class StartError(SandboxRunError):
    """The job did not start (command not found, a setup step failed); `.report` says why."""

    def __init__(self, report: Report) -> None:
        super().__init__(f"sandbox {report.name!r} failed to start: {report.error}", report.returncode)
        self.report = report


@dataclass(frozen=True)
class PidMap:
    init_host_pid: int
    job_host_pid: int
    job_ns_pid: int


def sandbox_run_path() -> str:
    """The sandbox-run next to this interpreter (a venv), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "sandbox-run")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("sandbox-run")
    if found is None:
        raise SandboxRunError("sandbox-run not found (neither beside the interpreter nor on PATH)")
    return found


def _text(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2:
        return f"{value[0]}={value[1]}" if isinstance(value[0], str) else f"{value[0]}:{value[1]}"
    return str(value)


def command_line(argv: Sequence[str], options: Mapping[str, Any]) -> list[str]:
    """sandbox-run's arguments for `options` (option-table names), each value checked
    with the CLI's own converter, so that a bad value raises ValueError here."""
    if isinstance(argv, str) or not argv:
        raise ValueError("argv must be a non-empty sequence of strings")
    args: list[str] = []
    for dest, value in options.items():
        opt = _BY_DEST.get(dest)
        if opt is None or dest in _RESERVED:
            raise TypeError(f"unknown sandbox-run option {dest!r}")
        if value is None or value is False:
            continue
        flag = opt.flags[-1]
        if opt.is_flag:
            args.append(flag)
            continue
        if opt.multiple:
            items = list(value.items()) if isinstance(value, Mapping) else list(value)
            texts = [_text(v) for v in items]
        else:
            texts = [_text(value)]
        for text in texts:
            if opt.convert is not None:
                try:
                    opt.convert(text)
                except ValueError as e:
                    raise ValueError(f"{flag}: {e}") from None
            args += [f"{flag}={text}"]
    return [*args, "--", *argv]


class Sandbox:
    """A running sandbox started by `start`. Use it as a context manager to be sure the
    job is killed and reaped if your code fails."""

    def __init__(self, process: subprocess.Popen[bytes], events: IO[bytes], started: dict[str, Any]) -> None:
        self.process = process
        self._events = events
        self._report: Report | None = None
        self.name: str = started["name"]
        self.cgroup: str | None = started.get("cgroup")
        self.cgroup_paths: dict[str, str] = dict(started.get("cgroup_paths") or {})
        self.started_at: float | None = started.get("started_at")
        self.pids = PidMap(started["init_host_pid"], started["job_host_pid"], started["job_ns_pid"])

    # live control: the same functions as the `sandbox` commands
    def usage(self) -> LiveUsage:
        return control.usage(self.name)

    def processes(self) -> list[dict[str, Any]]:
        """The job's processes as `sandbox ps --json` lists them."""
        return list(control.ps(self.name)[0]["processes"])

    def signal(self, sig: int = _signal.SIGTERM) -> None:
        """Deliver `sig` to every process of the job at once (freeze, signal, thaw)."""
        control.send_signal(self.name, sig)

    def kill(self) -> None:
        self.signal(_signal.SIGKILL)

    def suspend(self) -> None:
        control.suspend(self.name)

    def resume(self) -> None:
        control.resume(self.name)

    # the end
    def poll(self) -> Report | None:
        if self.process.poll() is None:
            return None
        return self.wait()

    def wait(self, timeout: float | None = None) -> Report:
        """Wait for the job to end; its report. subprocess.TimeoutExpired after `timeout`."""
        if self._report is not None:
            return self._report
        # Read the events to their end first, then reap: an 'exited' event larger than
        # the pipe's buffer (a long argv) blocks sandbox-run until it is read.
        exited = None
        deadline = None if timeout is None else time.monotonic() + timeout
        buf = b""
        fd = self._events.fileno()
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], wait)[0]:
                raise subprocess.TimeoutExpired(self.process.args, timeout or 0.0)
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
        for line in buf.splitlines():
            event = _event(line)
            if event is not None and event.get("event") == "exited":
                exited = event
        self._events.close()
        self.process.wait()
        if exited is None:
            raise SandboxRunError(f"sandbox-run ended (status {self.process.returncode}) without a report")
        self._report = Report.from_dict(exited)
        return self._report

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, tp: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self.process.poll() is None:
            try:
                self.kill()
            except errors.SandboxError:
                # not reachable through its state (it ended meanwhile, or its state is
                # elsewhere): sandbox-run itself forwards SIGTERM and kills after the grace
                self.process.send_signal(_signal.SIGTERM)
        try:
            self.wait()
        except SandboxRunError:
            if tp is None:
                raise

    def __repr__(self) -> str:
        return f"<Sandbox {self.name!r} pids={self.pids}>"


def _event(line: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def start(
    argv: Sequence[str],
    *,
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    **options: Any,
) -> Sandbox:
    """Start `argv` in a sandbox; return once the job runs. stdin/stdout/stderr/env/cwd
    are subprocess.Popen's, for sandbox-run (the job inherits them). Raises StartError
    (with the report) if the job could not be started, SandboxRunError if sandbox-run
    failed before that, ValueError/TypeError for a bad option."""
    args = [sandbox_run_path(), *command_line(argv, options)]
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        process = subprocess.Popen(
            [args[0], f"--report-fd={w}", *args[1:]],
            pass_fds=(w,),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
        )
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    # unbuffered: wait() reads the rest with os.read, which a buffer would hide from
    events = os.fdopen(r, "rb", buffering=0)
    first = _event(events.readline())
    if first is not None and first.get("event") == "started":
        return Sandbox(process, events, first)
    process.wait()
    rest = [e for e in map(_event, events) if e is not None]
    events.close()
    exited = first if first is not None and first.get("event") == "exited" else next(
        (e for e in rest if e.get("event") == "exited"), None
    )
    if exited is not None:
        raise StartError(Report.from_dict(exited))
    raise SandboxRunError(
        f"sandbox-run failed (exit {process.returncode}) before starting the job; see its stderr",
        process.returncode if process.returncode and process.returncode > 0 else errors.EXIT_SANDBOX_FAILED,
    )


def run(argv: Sequence[str], **kwargs: Any) -> Report:
    """Run `argv` in a sandbox to the end; its report (also when it failed to start).
    Same arguments as `start`."""
    try:
        sb = start(argv, **kwargs)
    except StartError as e:
        return e.report
    with sb:
        return sb.wait()
