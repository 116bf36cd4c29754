"""The Slurm lane: tests against a real slurmctld / slurmd / slurmdbd (helpers/slurm-lane).

Outside the lane (no SLURM_LANE_DIR) these tests skip; inside it (SANDBOX_REQUIRE_SLURM=1)
a skip is an error, as in the cgroup v2 lane: a lane that silently skips proves nothing.
Jobs run as root with this run's environment (srun propagates it), so the leftover check of
tests/conftest.py sees their sandbox processes too; they share the lane's state directory
with the lane's Epilog, never the machine's /run/sandbox.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SANDBOX_RUN

LANE = os.environ.get("SLURM_LANE_DIR")
if LANE:
    os.environ["SANDBOX_STATE_DIR"] = f"{LANE}/state"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED"}
PY = "/usr/bin/python3"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slurm)
            if not LANE:
                item.add_marker(pytest.mark.skip(reason="needs the Slurm lane (helpers/slurm-lane run)"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if (report.skipped and not hasattr(report, "wasxfail") and "slurm" in report.keywords
            and os.environ.get("SANDBOX_REQUIRE_SLURM")):
        report.outcome = "failed"  # type: ignore[assignment]
        report.longrepr = f"skipped in the Slurm lane (not allowed): {report.longrepr}"


@dataclass
class Step:
    state: str
    exit_code: str  # "code:signal", as sacct prints it
    total_cpu: float


def _seconds(text: str) -> float:
    """sacct's [DD-][HH:]MM:SS[.mmm]."""
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return (float(days) if days else 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


class Slurm:
    def __init__(self, lane: Path) -> None:
        self.jobs = lane / "jobs"
        self.state_dir = lane / "state"

    def srun(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["srun", *args], capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=self.jobs)

    def sbatch(self, script: str, *args: str, where: Path | None = None) -> str:
        """Submit `script`; its output and working directory are `where` (default: the
        lane's jobs directory), which must be writable by the job's user."""
        where = where or self.jobs
        path = where / f"job-{uuid.uuid4().hex[:8]}.sh"
        path.write_text("#!/bin/sh\n" + script)
        p = subprocess.run(["sbatch", "--parsable", f"--output={path}.out", *args, str(path)],
                           capture_output=True, text=True, check=True, cwd=where)
        return p.stdout.strip().split(";")[0]

    def scancel(self, *jobids: str) -> None:
        subprocess.run(["scancel", *jobids], check=True)

    def steps(self, jobid: str) -> dict[str, Step]:
        p = subprocess.run(["sacct", "-j", jobid, "-n", "-P", "-o", "JobID,State,ExitCode,TotalCPU"],
                           capture_output=True, text=True, check=True)
        out = {}
        for line in p.stdout.splitlines():
            step, state, code, cpu = line.split("|")
            out[step.split(".", 1)[1] if "." in step else "job"] = Step(state.split()[0], code, _seconds(cpu))
        return out

    def wait(self, jobid: str, step: str = "job", timeout: float = 150) -> dict[str, Step]:
        """sacct's view once the job is over on the node too. sacct says CANCELLED as soon
        as scancel is accepted, while the step's processes may still be ending; squeue
        lists the job until they are gone and the Epilog has run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = subprocess.run(["squeue", "-h", "-j", jobid], capture_output=True, text=True, check=False)
            if p.returncode == 0 and not p.stdout.strip():
                break
            time.sleep(0.5)
        while time.monotonic() < deadline:
            steps = self.steps(jobid)
            if steps.get("job") and steps["job"].state in TERMINAL and (step == "job" or (
                    steps.get(step) and steps[step].state in TERMINAL)):
                return steps
            time.sleep(0.5)
        raise AssertionError(f"job {jobid} not over after {timeout} s: {self.steps(jobid)}")

    def last_jobid(self, name: str, timeout: float = 20) -> str:
        """The newest job of that name (slurmdbd learns of it a moment after srun returns)."""
        deadline = time.monotonic() + timeout
        while True:
            p = subprocess.run(["sacct", "-n", "-X", "-P", "--name", name, "-o", "JobID"],
                               capture_output=True, text=True, check=True)
            if p.stdout.split() or time.monotonic() > deadline:
                return p.stdout.split()[-1]
            time.sleep(0.3)

    def report(self, name: str) -> dict[str, object]:
        return json.loads((self.jobs / name).read_text())  # type: ignore[no-any-return]


@pytest.fixture
def slurm() -> Iterator[Slurm]:
    assert LANE
    yield Slurm(Path(LANE))


def sandbox_run() -> str:
    return SANDBOX_RUN
