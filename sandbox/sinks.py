"""Where a launch's news goes: the report file (JSON or a ClassAd), the caller's event
descriptor, the accounting log and the summary on stderr. A sink that fails is a
warning on stderr, never a change to the job's outcome."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from . import report

if TYPE_CHECKING:
    from .records import Report
    from .spec import JobSpec


def say(message: str) -> None:
    sys.stderr.write(f"sandbox-run: {message}\n")
    sys.stderr.flush()


def started(spec: JobSpec, event: dict[str, Any]) -> None:
    if spec.report_fd is not None:
        report.write_event(spec.report_fd, "started", event)


def finished(spec: JobSpec, record: Report, verbose: bool) -> None:
    r = record.to_dict()
    if r["error"] is not None:
        say(r["error"])
    if spec.report_path:
        report_file(spec.report_path, spec.report_format, r)
    if spec.report_fd is not None:
        report.write_event(spec.report_fd, "exited", r)
    if spec.accounting_log:
        from .accounting import append

        try:
            append(spec.accounting_log, record)
        except OSError as e:
            say(f"warning: cannot append to the accounting log {spec.accounting_log}: {e.strerror}")
    if spec.stats or verbose:
        sys.stderr.write(report.summary(r) + "\n")


def report_file(path: str, report_format: str, r: dict[str, Any]) -> None:
    """--report in its format (json or classad); a report that cannot be written is said."""
    try:
        if report_format == "classad":
            from .classad import format_report

            report.write_atomic_text(path, format_report(r))
        else:
            report.write_atomic(path, r)
    except OSError as e:
        say(f"cannot write report {path}: {e.strerror}")
