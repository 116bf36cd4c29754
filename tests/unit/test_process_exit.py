"""outcome.process_exit: how sandbox-run itself ends, from the report's outcome."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest

from sandbox import report
from sandbox.outcome import process_exit


@pytest.mark.parametrize(
    ("status", "sig", "returncode", "expected"),
    [
        (report.STATUS_EXITED, None, 0, 0),
        (report.STATUS_EXITED, None, 143, 143),  # the job's own code, even above 128
        (report.STATUS_SIGNALED, signal.SIGTERM, 143, -signal.SIGTERM),
        (report.STATUS_SIGNALED, signal.SIGSEGV, 139, -signal.SIGSEGV),
        (report.STATUS_OOM, None, 137, -signal.SIGKILL),  # a shell in between exited 137
        (report.STATUS_OOM, signal.SIGKILL, 137, -signal.SIGKILL),
        (report.STATUS_TIMED_OUT, signal.SIGTERM, 124, 124),  # our --timeout: sandbox-run's outcome
        (report.STATUS_FAILED, None, 127, 127),
    ],
)
def test_process_exit(status: str, sig: int | None, returncode: int, expected: int) -> None:
    record = SimpleNamespace(status=status, signal=sig, returncode=returncode)
    assert process_exit(record) == expected  # type: ignore[arg-type]
