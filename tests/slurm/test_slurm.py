"""sandbox-run under a real Slurm 22.05 (slurmctld, slurmd, slurmdbd; proctrack/cgroup,
task/cgroup with ConstrainRAMSpace, cgroup/v1 on this hybrid layout).

Each outcome is compared with the same step run without sandbox-run, side by side in
one run: sacct must not be able to tell them apart. Jobs run in the lane's directory
(/work/ci/slurm-lane/jobs), never under /tmp, which a sandbox hides.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.integration import test_switchboard as sb
from tests.integration.test_switchboard import switchboard  # noqa: F401 (a fixture: the installed switchboard)
from tests.slurm.conftest import PY, Slurm, sandbox_run

pytestmark = [needs_root]
MiB = 2**20
SR = sandbox_run()
HOST = os.uname().nodename.split(".")[0]
ALLOC = "b = bytearray({mb} * 2**20); import time; time.sleep(2)"


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _wait_running(slurm: Slurm, jobid: str, step: str = "0", timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = slurm.steps(jobid).get(step)
        if s is not None and s.state == "RUNNING":
            return
        time.sleep(0.3)
    raise AssertionError(f"step {jobid}.{step} never ran: {slurm.steps(jobid)}")


# -- the allocation ---------------------------------------------------------------


def test_plain_srun_mem_is_the_limit(slurm: Slurm) -> None:
    r = f"r-{_tag()}.json"
    p = slurm.srun("--mem=300M", SR, "--from-slurm", "--report", r, "--", "true")
    assert p.returncode == 0, p.stderr
    assert slurm.report(r)["memory_limit_bytes"] == 300 * MiB


def test_step_mem_inside_sbatch(slurm: Slurm) -> None:
    r = f"r-{_tag()}.json"
    jobid = slurm.sbatch(f"srun --mem=300M {SR} --from-slurm --report {r} -- true\n", "--mem=1000M")
    assert slurm.wait(jobid)["0"].state == "COMPLETED"
    assert slurm.report(r)["memory_limit_bytes"] == 300 * MiB


def test_step_mem_per_cpu_inside_sbatch(slurm: Slurm) -> None:
    r = f"r-{_tag()}.json"
    jobid = slurm.sbatch(f"srun -c2 --mem-per-cpu=200M {SR} --from-slurm --report {r} -- true\n",
                         "-c2", "--mem-per-cpu=400M")
    assert slurm.wait(jobid)["0"].state == "COMPLETED"
    assert slurm.report(r)["memory_limit_bytes"] == 400 * MiB  # the step's 2 x 200M, not the job's 800M


def test_two_tasks_share_the_step(slurm: Slurm) -> None:
    """srun -n2 --mem=600M: Slurm limits the step, which both tasks share; each sandbox
    nests under its own task and reports the step's 600 MiB as its effective limit."""
    tag = _tag()
    p = slurm.srun("-n2", "--mem=600M", "sh", "-c",
                   f'exec {SR} --from-slurm --report r-{tag}-$SLURM_PROCID.json -- true')
    assert p.returncode == 0, p.stderr
    reports = [slurm.report(f"r-{tag}-{i}.json") for i in (0, 1)]
    steps = {os.path.dirname(os.path.dirname(str(r["cgroup"]))) for r in reports}
    assert len(steps) == 1, steps
    assert [r["memory_limit_bytes"] for r in reports] == [600 * MiB] * 2


def test_mem_above_the_step_limit_reports_the_step_limit(slurm: Slurm) -> None:
    """--mem 2G in a 200M step: the job is killed at 200M, so the report says 200M, and
    -v says why."""
    r = f"r-{_tag()}.json"
    p = slurm.srun("--mem=200M", SR, "-v", "--mem", "2G", "--report", r, "--", "true")
    assert p.returncode == 0, p.stderr
    assert slurm.report(r)["memory_limit_bytes"] == 200 * MiB
    assert "above the 200.0 MiB limit of the enclosing cgroup" in p.stderr, p.stderr


def test_the_sandbox_nests_under_the_step(slurm: Slurm) -> None:
    tag = _tag()
    r = f"r-{tag}.json"
    # with a limit of its own (without one, on v1 the job stays in the task's memory cgroup)
    p = slurm.srun("--mem=300M", "-J", f"nest-{tag}", SR, "--mem", "100M", "--report", r, "--", "true")
    assert p.returncode == 0, p.stderr
    jobid = slurm.last_jobid(f"nest-{tag}")
    cgroup = str(slurm.report(r)["cgroup"])
    assert f"/slurm_{HOST}/uid_0/job_{jobid}/step_0/task_0/" in cgroup, cgroup


# -- how the step ended, as sacct says it ------------------------------------------


def _side_by_side(slurm: Slurm, step: str, *sbatch_args: str, report: str | None = None,
                  cancel: bool = False) -> tuple[dict[str, object], dict[str, object]]:
    """The same step with and without sandbox-run, at the same time; sacct of each."""
    sandboxed = f"{SR} --report {report} -- {step}" if report else f"{SR} -- {step}"
    jobs = [slurm.sbatch(f"srun {s}\n", "-c1", *sbatch_args) for s in (step, sandboxed)]
    if cancel:
        for jobid in jobs:
            _wait_running(slurm, jobid)
        time.sleep(1)
        slurm.scancel(*jobs)
    plain, sb = (slurm.wait(j, "0") for j in jobs)
    return ({k: (v.state, v.exit_code) for k, v in plain.items() if k in ("job", "0")},
            {k: (v.state, v.exit_code) for k, v in sb.items() if k in ("job", "0")})


def test_oom_under_the_step_limit_is_out_of_memory(slurm: Slurm) -> None:
    r = f"r-{_tag()}.json"
    plain, sb = _side_by_side(slurm, f"{PY} -c '{ALLOC.format(mb=400)}'", "--mem=200M", report=r)
    assert plain["0"][0] == "OUT_OF_MEMORY", plain
    assert slurm.report(r)["status"] == "oom_killed"
    assert sb == plain


def test_scancel_of_a_setsid_daemon_is_cancelled_and_leaves_nothing(slurm: Slurm) -> None:
    token = f"1000.{int(_tag(), 16) % 10**6}"  # a sleep this run can recognise
    plain, sb = _side_by_side(slurm, f"sh -c 'setsid sleep {token} & exec sleep {token}'", "--mem=200M",
                              cancel=True)
    assert plain["job"][0] == "CANCELLED", plain
    left = [p for p in os.listdir("/proc") if p.isdigit() and token.encode() in _cmdline(p)]
    assert not left, left
    assert sb == plain


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_time_limit_is_timeout(slurm: Slurm) -> None:
    plain, sb = _side_by_side(slurm, "sleep 300", "--mem=100M", "--time=1")
    assert plain["job"][0] == "TIMEOUT", plain
    assert sb == plain


def _scancel_a_sigterm_ignoring_job(slurm: Slurm, options: str) -> str:
    jobid = slurm.sbatch(f"srun {SR} {options} -- sh -c 'trap \"\" TERM; sleep 300'\n", "-c1", "--mem=100M")
    _wait_running(slurm, jobid)
    time.sleep(1)
    slurm.scancel(jobid)
    slurm.wait(jobid, "0")
    return jobid


def test_sigterm_ignoring_job_within_killwait_is_reported(slurm: Slurm) -> None:
    """KillWait=10 in the lane: with a kill grace of 2 s below it, sandbox-run SIGKILLs the job
    itself and writes its report before Slurm's SIGKILL."""
    r = f"r-{_tag()}.json"
    _scancel_a_sigterm_ignoring_job(slurm, f"--kill-grace 2 --report {r}")
    report = slurm.report(r)
    assert report["status"] == "signaled" and report["signal"] == 9, report


def test_killwait_shorter_than_kill_grace_leaves_nothing_after_the_epilog(slurm: Slurm) -> None:
    """--kill-grace 30 > KillWait 10: Slurm SIGKILLs the launcher mid-grace. Its sandbox
    cgroup under the task's (it has a limit of its own) would block Slurm's own cgroup
    cleanup; the shipped Epilog (helpers/slurm-epilog: `sandbox gc --stale-only`)
    reclaims it, writes a `launcher_lost` record as the report, and the job's cgroups go."""
    r = f"r-{_tag()}.json"
    jobid = _scancel_a_sigterm_ignoring_job(slurm, f"--mem 50M --kill-grace 30 --report {r}")
    # The launcher died before it could write one: the Epilog's gc wrote the accounting
    # record in its place, from what the sandbox's cgroup held when it was reclaimed.
    lost = slurm.report(r)
    assert lost["status"] == "launcher_lost" and lost["returncode"] == 125, lost
    assert lost["memory_limit_bytes"] == 50 << 20 and f"job_{jobid}/" in str(lost["cgroup"]), lost
    deadline = time.monotonic() + 30
    left: list[Path] = []
    while time.monotonic() < deadline:
        left = list(Path("/sys/fs/cgroup").glob(f"*/slurm_{HOST}/uid_*/job_{jobid}"))
        if not left:
            break
        time.sleep(0.5)
    assert not left, left
    assert not list(slurm.state_dir.glob("*.json"))


def test_cpu_matches_sacct(slurm: Slurm) -> None:
    """A double-forked burner counts for both: the sandbox's report and sacct's TotalCPU."""
    burn = f"{PY} -c 'import time; t = time.process_time(); exec(\"while time.process_time() - t < {{s}}: pass\")'"
    tag = _tag()
    r = f"r-{tag}.json"
    job = f"( {burn.format(s=1)} & ) ; {burn.format(s=1.5)}; sleep 0.5"
    p = slurm.srun("-J", f"cpu-{tag}", "-c2", "--mem=200M", SR, "--report", r, "--", "sh", "-c", job)
    assert p.returncode == 0, p.stderr
    step = slurm.wait(slurm.last_jobid(f"cpu-{tag}"), "0")["0"]
    report = slurm.report(r)
    cpu = float(report["cpu_user_seconds"]) + float(report["cpu_system_seconds"])  # type: ignore[arg-type]
    assert cpu > 2.3, report
    assert abs(cpu - step.total_cpu) < 0.25, (cpu, step)


# -- a switchboard member's sandbox inside a step -----------------------------------------


@pytest.fixture
def member_dir(slurm: Slurm, switchboard: None) -> Iterator[Path]:  # noqa: F811
    """The switchboard installed as tests/integration/test_switchboard.py installs it (its
    member, a real user in group `sandbox`, exists before Slurm runs a job as it, and is
    removed after), and a directory of the member's for the job's output and report."""
    d = slurm.jobs / sb.MEMBER
    d.mkdir()
    shutil.chown(d, sb.MEMBER, sb.MEMBER)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def test_a_members_sandbox_in_a_step_is_out_of_memory_at_the_steps_limit(slurm: Slurm, member_dir: Path) -> None:
    """A job of the member's (sbatch --uid): its step's sandbox-run goes through the
    switchboard, which nests the sandbox in the step's task cgroup, within the step's
    --mem. The job allocates twice that: sacct says OUT_OF_MEMORY, as for the same step
    without sandbox-run, and nothing is left: not the sandbox's cgroups (so Slurm's own
    cleanup removes the job's), its state, or a process."""
    home = f"/home/{sb.MEMBER}"
    report = member_dir / f"r-{_tag()}.json"
    before = sb.snapshot()
    # the member's own environment, not the lane's (root's state directory)
    env = f"unset SANDBOX_STATE_DIR; export HOME={home} XDG_RUNTIME_DIR={home}\n"
    # where the job sits in the memory hierarchy, then twice the step's memory
    job = f"sh -c 'echo \"$SLURM_JOB_ID $(grep :memory: /proc/self/cgroup)\"; exec {PY} -c \"{ALLOC.format(mb=400)}\"'"
    jobs = [slurm.sbatch(f"{env}srun {step}\n", "-c1", "--mem=200M", f"--uid={sb.MEMBER}", where=member_dir)
            for step in (job, f"{SR} --report {report} -- {job}")]
    try:
        plain, sandboxed = ({k: (v.state, v.exit_code) for k, v in slurm.wait(j, "0").items() if k in ("job", "0")}
                            for j in jobs)
    except AssertionError as e:
        raise AssertionError(f"{e}; the jobs' output: {[p.read_text() for p in member_dir.glob('*.out')]}") from None
    assert plain["0"][0] == "OUT_OF_MEMORY", plain
    r = json.loads(report.read_text())
    assert r["status"] == "oom_killed" and r["memory_limit_bytes"] == 200 * MiB, r
    out = "".join(p.read_text() for p in member_dir.glob("*.out"))
    # the step encloses the sandbox: on v1 it asked for nothing tighter than the step, so its
    # job stays in the task's memory cgroup, where Slurm counts an OOM kill (v1 counts it
    # only in the victim's own memory cgroup); its other hierarchies are its own
    task = rf"^{jobs[1]} \d+:memory:/slurm_{HOST}/uid_\d+/job_{jobs[1]}/step_0/task_0$"
    assert re.search(task, out, re.MULTILINE), out
    assert f"/sandbox-{r['name']}" in str(r["cgroup"]), r
    assert sandboxed == plain, (r, out)
    deadline = time.monotonic() + 30
    left: list[Path] = []
    while time.monotonic() < deadline:
        left = list(Path("/sys/fs/cgroup").glob(f"*/slurm_{HOST}/uid_*/job_{jobs[1]}"))
        if not left:
            break
        time.sleep(0.5)
    assert not left, left
    assert sb.snapshot() == before
    assert not list(Path(home, "sandbox").glob("*.state*")), list(Path(home, "sandbox").iterdir())
