"""outcome.decide: how a job ended, from init's report and the kernel's counters."""

from __future__ import annotations

import signal

from hypothesis import given
from hypothesis import strategies as st

from sandbox import report
from sandbox.outcome import Outcome, decide


def exited(code: int) -> int:
    return code << 8  # the wait status of exit(code)


def killed(sig: int) -> int:
    return sig  # the wait status of death by signal sig, no core dump


def test_own_exit_codes() -> None:
    for code in (0, 1, 3, 42, 255):
        assert decide(exited(code), 0, None, False, 0) == Outcome(report.STATUS_EXITED, code, None, code)


def test_signal() -> None:
    assert decide(killed(signal.SIGTERM), 0, None, False, 0) == Outcome(report.STATUS_SIGNALED, None, 15, 143)
    assert decide(killed(signal.SIGKILL), 0, None, False, None) == Outcome(report.STATUS_SIGNALED, None, 9, 137)
    # a core dump flag does not change the signal
    assert decide(killed(signal.SIGSEGV) | 0x80, 0, None, False, 0).returncode == 128 + signal.SIGSEGV


def test_exec_error_wins() -> None:
    for code in (125, 126, 127):
        out = decide(None, exited(code), (code, "cannot execute 'x'"), False, 0)
        assert out == Outcome(report.STATUS_FAILED, None, None, code)
    # even if something else was set
    assert decide(exited(0), 0, (127, "x"), True, 3).status == report.STATUS_FAILED


def test_timeout() -> None:
    assert decide(killed(signal.SIGTERM), 0, None, True, 0) == Outcome(report.STATUS_TIMED_OUT, None, 15, 124)
    assert decide(exited(0), 0, None, True, 0) == Outcome(report.STATUS_TIMED_OUT, 0, None, 124)
    # init killed by cgroup.kill after the grace period: no main status at all
    assert decide(None, killed(signal.SIGKILL), None, True, 0) == Outcome(report.STATUS_TIMED_OUT, None, 9, 124)
    # a timeout that also hit the memory limit is still a timeout
    assert decide(killed(signal.SIGKILL), 0, None, True, 1).status == report.STATUS_TIMED_OUT


def test_oom() -> None:
    assert decide(killed(signal.SIGKILL), 0, None, False, 1) == Outcome(report.STATUS_OOM, None, 9, 137)
    # `sh -c prog`: the OOM victim is prog, sh exits 137 itself
    assert decide(exited(137), 0, None, False, 2) == Outcome(report.STATUS_OOM, 137, None, 137)
    assert decide(exited(1), 0, None, False, 1).status == report.STATUS_OOM


def test_oom_of_a_helper_in_a_job_that_succeeded() -> None:
    """A child was OOM-killed, the job coped and exited 0: it exited, with oom_kills in the report."""
    assert decide(exited(0), 0, None, False, 1) == Outcome(report.STATUS_EXITED, 0, None, 0)
    # a non-KILL signal is not an OOM kill
    assert decide(killed(signal.SIGTERM), 0, None, False, 1).status == report.STATUS_SIGNALED


def test_init_status_when_main_status_is_missing() -> None:
    assert decide(None, exited(125), None, False, None) == Outcome(report.STATUS_EXITED, 125, None, 125)
    assert decide(None, killed(signal.SIGKILL), None, False, None).returncode == 137


def test_nothing_known_is_a_failure() -> None:
    assert decide(None, None, None, False, None) == Outcome(report.STATUS_FAILED, None, None, 125)


@given(
    st.one_of(st.none(), st.integers(0, 255).map(exited), st.integers(1, 64).map(killed)),
    st.one_of(st.none(), st.integers(0, 255).map(exited)),
    st.one_of(st.none(), st.tuples(st.sampled_from([125, 126, 127]), st.text(max_size=5))),
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 3)),
)
def test_decide_total(main, init, err, timed_out, ooms) -> None:  # type: ignore[no-untyped-def]
    """Every combination gives a valid status and a return code in the documented bands."""
    out = decide(main, init, err, timed_out, ooms)
    assert out.status in (report.STATUS_EXITED, report.STATUS_SIGNALED, report.STATUS_OOM,
                          report.STATUS_TIMED_OUT, report.STATUS_FAILED)
    assert 0 <= out.returncode <= 255
    if out.status == report.STATUS_SIGNALED:
        assert out.returncode == 128 + out.signal
    if out.status == report.STATUS_EXITED:
        assert out.returncode == out.exit_code
    if out.status == report.STATUS_TIMED_OUT:
        assert out.returncode == 124
    if out.status == report.STATUS_OOM:
        assert out.returncode == 137 and ooms
