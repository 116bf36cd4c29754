"""A sandbox that could not be torn down fails the launch in its exit status as well as
in its report, whatever the job itself did (a starter that checks only the status sees it)."""

from __future__ import annotations

from sandbox import errors, outcome, records
from sandbox.cgroups import Usage
from sandbox.spec import JobSpec
from sandbox.supervise import Facts


def _report(cleanup_error: str | None) -> records.Report:
    facts = Facts(job_ns_pid=2, job_host_pid=1234, main_status=0, started=True)
    launch = outcome.LaunchFacts(None, 1233, 0.0, 0.1, cleanup_error)
    return outcome.build_report(JobSpec(argv=("true",), name="t"), facts, 0, Usage(), launch)


def test_a_clean_teardown_keeps_the_jobs_status() -> None:
    rec = _report(None)
    assert (rec.status, rec.exit_code, rec.returncode, rec.error) == ("exited", 0, 0, None)


def test_a_failed_teardown_is_125_and_in_the_report() -> None:
    rec = _report("cannot remove cgroup /x: Too many open files")
    assert rec.returncode == errors.EXIT_SANDBOX_FAILED
    assert rec.exit_code == 0 and rec.status == "exited"  # what the job did stays true
    assert rec.error is not None and "cannot remove cgroup" in rec.error
