"""Where a launch's news goes: the report file (JSON or a ClassAd), the caller's event
descriptor, the accounting log and the summary on stderr. A sink that fails is a
warning on stderr, never a change to the job's outcome; a report that cannot be
written whole is not left in place and makes the exit status 125."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import errors, notices, report

if TYPE_CHECKING:
    from collections.abc import Callable

    from .records import Report
    from .spec import JobSpec


def say(message: str) -> None:
    """One line on stderr if it can be written now; never blocks (see notices.py)."""
    notices.say(message)


def started(spec: JobSpec, event: dict[str, Any]) -> None:
    if spec.report_fd is not None:
        report.write_event(spec.report_fd, "started", event)


def finished(spec: JobSpec, record: Report, verbose: bool, release: Callable[[], None]) -> int:
    """Deliver the final report; return the launcher's exit status. The report, the
    final event and the accounting record come first, then `release` (our state), and
    only then messages: a caller that stopped reading our stderr can neither keep the
    records from being written nor (notices.say never blocks) us from exiting."""
    r = record.to_dict()
    messages = [r["error"]] if r["error"] is not None else []
    if spec.stats or verbose:
        messages.append(report.summary(r).removeprefix("sandbox-run: "))
    if messages and not notices.writable():
        r["messages_dropped"] = messages
    if spec.report_path:
        failure = report_file(spec.report_path, spec.report_format, r)
        if failure is not None:
            # no report rather than a torn one; the accounting record still says it all
            r["returncode"] = errors.EXIT_SANDBOX_FAILED
            r["error"] = r["error"] or failure
            messages = [failure]
    if spec.report_fd is not None:
        report.write_event(spec.report_fd, "exited", r)
    if spec.accounting_log:
        from .accounting import append

        try:
            append(spec.accounting_log, r)
        except OSError as e:
            messages.append(f"warning: cannot append to the accounting log {spec.accounting_log}: {e.strerror}")
    release()
    for message in messages:
        say(message)
    return int(r["returncode"])


def report_file(path: str, report_format: str, r: dict[str, Any]) -> str | None:
    """--report in its format (json or classad); the one-line reason when it could not
    be written whole (nothing is then left at `path`)."""
    try:
        if report_format == "classad":
            from .classad import format_report

            report.write_atomic_text(path, format_report(r))
        else:
            report.write_atomic(path, r)
    except OSError as e:
        return f"cannot write the report {path}: {e.strerror or e}"
    return None
