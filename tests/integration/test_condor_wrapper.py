"""helpers/condor-job-wrapper driven the way condor_starter drives a USER_JOB_WRAPPER:
a scratch directory outside /tmp, .job.ad and .machine.ad written by HTCondor's own
library (classad2's printOld), the starter's environment, a stand-in condor_chirp that
records what it was asked, and a starter stand-in that is a child subreaper (as the
starter is, and as PID 1 of this machine is not) for the hard-kill case."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from sandbox import classad
from tests.conftest import SANDBOX_RUN, needs_root

classad2 = pytest.importorskip("classad2", reason="HTCondor's classad2 (pip install htcondor) writes the test's ads")
# Not a cgroup test: the wrapper only builds sandbox-run's command and reads its report, the
# same on every layout; under the guests' emulation its many Python starts exceed the timeouts.
pytestmark = [needs_root]

WRAPPER = str(Path(__file__).resolve().parents[2] / "helpers" / "condor-job-wrapper")
DEFAULT_REQUEST_MEMORY = "ifthenelse(MemoryUsage =!= undefined,MAX({ MemoryUsage,1024 }),1024)"  # HTCondor's default
OWNER = 'dom\\u "x" é'  # a backslash, quotes and non-ASCII: each was mangled by one side once

CHIRP = """#!/usr/bin/python3 -I
import json, os, sys
with open(os.environ["CHIRP_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if len(sys.argv) > 2 and sys.argv[2] == os.environ.get("CHIRP_FAIL_ON"):
    sys.stderr.write("chirp: could not connect to the starter\\n")
    sys.exit(1)
"""

# The starter's side of a hard kill: be the subreaper, SIGKILL the wrapper once the job
# runs, then reap whatever is left and say which of the wrapper's descendants were still
# alive after the deadline (and kill those, so that the test leaves nothing behind).
STARTER = r"""
import ctypes, json, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
ready, argv = sys.argv[1], sys.argv[2:]
w = subprocess.Popen(argv)
deadline = time.monotonic() + 30
while not os.path.exists(ready) and time.monotonic() < deadline:
    time.sleep(0.05)
os.kill(w.pid, signal.SIGKILL)
w.wait()
def children():
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            out.append(int(pid))
    return out
deadline = time.monotonic() + 25
while time.monotonic() < deadline:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        break
    if not children():
        break
    time.sleep(0.05)
left = children()
for pid in left:
    os.kill(pid, signal.SIGKILL)
try:
    while True:
        os.wait()
except ChildProcessError:
    pass
print(json.dumps({"left": left, "waited": round(30 - (deadline - time.monotonic()), 1)}))
"""


def write_ad(path: Path, attrs: dict[str, object]) -> None:
    ad = classad2.ClassAd()
    for k, v in attrs.items():
        ad[k] = classad2.ExprTree(v[5:]) if isinstance(v, str) and v.startswith("expr:") else v
    path.write_text(ad.printOld())


@pytest.fixture
def node(tmp_path, monkeypatch):
    """An execute node: EXECUTE outside /tmp (the sandbox replaces /tmp), two slots."""
    base = Path(f"/var/lib/sandbox-test-{uuid.uuid4().hex[:8]}")
    scratch = base / "execute" / "dir_1"
    scratch.mkdir(parents=True)
    (base / "execute" / "dir_2").mkdir()
    (base / "execute" / "dir_2" / "secret").write_text("other slot")
    write_ad(scratch / ".job.ad", {"ClusterId": 12, "ProcId": 3, "Owner": OWNER, "RequestCpus": 1,
                                   "RequestMemory": "expr:" + DEFAULT_REQUEST_MEMORY})
    write_ad(scratch / ".machine.ad", {"Name": "slot1@node", "Memory": 192, "Cpus": 1})
    chirp = tmp_path / "bin" / "condor_chirp"
    chirp.parent.mkdir()
    chirp.write_text(CHIRP)
    chirp.chmod(0o755)
    env = {"PATH": f"{chirp.parent}:/usr/bin:/bin", "_CONDOR_SCRATCH_DIR": str(scratch),
           "_CONDOR_JOB_AD": str(scratch / ".job.ad"), "_CONDOR_MACHINE_AD": str(scratch / ".machine.ad"),
           "_CONDOR_WRAPPER_ERROR_FILE": str(tmp_path / "wrapper_error"), "_CHIRP_DELAYED_UPDATE_PREFIX": "Chirp*",
           "SANDBOX_RUN": SANDBOX_RUN, "CHIRP_LOG": str(tmp_path / "chirped"),
           "SANDBOX_ACCOUNTING_LOG": str(tmp_path / "acct.jsonl")}
    yield scratch, env, tmp_path
    shutil.rmtree(base)


def wrap(env: dict[str, str], cwd: Path, *argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WRAPPER, *argv], capture_output=True, text=True, env={**env, **extra}, cwd=cwd,
                          timeout=60, check=False)


def chirped(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "chirped"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_job_runs_in_the_slot_and_its_usage_reaches_the_job_ad_under_chirp_names(node):
    scratch, env, tmp_path = node
    p = wrap(env, scratch, "sh", "-c", "pwd; ls ..; exit 7")
    assert p.returncode == 7, p.stderr
    assert p.stdout.split() == [str(scratch), "dir_1"]  # the other slot is hidden
    assert "warning" not in p.stderr
    text = (scratch / ".sandbox_report.ad").read_text()
    ours = classad.parse(text)
    theirs = classad2.parseOne(text, classad2.ParserType.Old)  # HTCondor reads the report
    assert theirs["ExitCode"] == 7 and theirs["MemoryProvisioned"] == 192  # the slot's Memory
    assert theirs["SandboxLabel_owner"] == ours["SandboxLabel_owner"] == OWNER
    assert theirs["SandboxLabel_condor_job"] == "12.3"
    calls = chirped(tmp_path)
    assert calls and all(c[0] == "set_job_attr_delayed" and c[1].startswith("Chirp") for c in calls)
    pushed = {name: classad2.ExprTree(value).eval() for _, name, value in calls}  # as the starter parses them
    assert pushed["ChirpSandboxLabel_owner"] == OWNER
    assert pushed["ChirpSandboxExitCode"] == 7 and pushed["ChirpSandboxStatus"] == "exited"
    for standard in ("MemoryUsage", "ResidentSetSize", "RemoteUserCpu", "RemoteSysCpu", "RemoteWallClockTime",
                     "MemoryProvisioned", "ExitBySignal"):
        assert pushed[f"ChirpSandbox{standard}"] == ours[standard]
    assert not (tmp_path / "wrapper_error").exists()


def test_a_refusing_prefix_or_a_failing_chirp_is_said_and_the_job_keeps_its_status(node):
    scratch, env, tmp_path = node
    p = wrap(env, scratch, "true", _CHIRP_DELAYED_UPDATE_PREFIX="Site*, Other*")
    assert p.returncode == 0
    assert "CHIRP_DELAYED_UPDATE_PREFIX=Site*, Other* refuses ChirpSandbox" in p.stderr
    assert chirped(tmp_path) == []
    p = wrap(env, scratch, "true", CHIRP_FAIL_ON="ChirpSandboxStatus")
    assert p.returncode == 0
    lines = [line for line in p.stderr.splitlines() if "condor_chirp" in line]
    assert len(lines) == 1 and "ChirpSandboxStatus failed (exit 1: chirp: could not connect" in lines[0]
    assert chirped(tmp_path)[-1][1] == "ChirpSandboxStatus"  # nothing after the first failure


def test_a_job_without_a_memory_size_runs_with_a_warning_that_says_why(node):
    scratch, env, _tmp = node
    (scratch / ".machine.ad").unlink()
    p = wrap(env, scratch, "true")
    assert p.returncode == 0
    warning = [line for line in p.stderr.splitlines() if "without a memory limit" in line]
    assert len(warning) == 1
    assert ".machine.ad: No such file or directory" in warning[0]
    assert "RequestMemory is an expression this wrapper does not evaluate (ifthenelse(" in warning[0]
    assert "MemoryProvisioned" not in classad.parse((scratch / ".sandbox_report.ad").read_text())


def test_the_wrapper_error_file_gets_sandbox_runs_one_line_reason(node, tmp_path):
    scratch, env, _tmp = node
    p = wrap(env, scratch, "/no/such/program")
    assert p.returncode == 127
    assert (tmp_path / "wrapper_error").read_text() == \
        "sandbox-run: cannot execute '/no/such/program': No such file or directory\n"
    # EXECUTE under /var/tmp: every job fails, and the hold reason says why
    bad = Path(f"/var/tmp/sandbox-test-{uuid.uuid4().hex[:8]}/execute/dir_1")
    bad.mkdir(parents=True)
    try:
        (tmp_path / "wrapper_error").unlink()
        p = wrap({**env, "_CONDOR_SCRATCH_DIR": str(bad)}, bad, "true")
        assert p.returncode == 125
        reason = (tmp_path / "wrapper_error").read_text()
        assert reason.endswith("is under /var/tmp, which the sandbox replaces\n") and reason.count("\n") == 1
    finally:
        shutil.rmtree(bad.parents[1])


def test_a_launch_refused_before_it_starts_still_gives_its_reason(node):
    """A launch sandbox-run refuses before any setup (here: the slot's --mem for a job
    user that is neither root nor a switchboard member, so no cgroup can enforce it)
    still puts its reason into the hold reason."""
    scratch, env, _tmp = node
    os.chown(scratch, 65534, 65534)  # the job's user's scratch directory, as the starter makes it
    error_file = scratch / ".wrapper_error"
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", WRAPPER, "true"],
                       capture_output=True, text=True, env={**env, "_CONDOR_WRAPPER_ERROR_FILE": str(error_file)},
                       cwd=scratch, timeout=60, check=False)
    assert p.returncode == 125, p.stderr
    reason = error_file.read_text()
    assert reason.count("\n") == 1 and "switchboard" in reason and "exit 125" not in reason


def test_a_job_killed_by_a_signal_ends_the_wrapper_by_that_signal(node):
    scratch, env, _tmp = node
    p = wrap(env, scratch, "sh", "-c", "kill -USR1 $$")
    assert p.returncode == -signal.SIGUSR1


def test_the_starters_hard_kill_takes_sandbox_run_and_the_job_down(node):
    scratch, env, _tmp = node
    ready = scratch / "ready"  # not under /tmp: the job's /tmp is its own
    p = subprocess.run([sys.executable, "-c", STARTER, str(ready), WRAPPER, "sh", "-c",
                        f"touch {ready}; exec sleep 600"], capture_output=True, text=True, env=env, cwd=scratch,
                       timeout=90, check=False)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.splitlines()[-1])
    assert result["left"] == [], f"still running {result['waited']} s after the wrapper's SIGKILL"
    ad = classad.parse((scratch / ".sandbox_report.ad").read_text())  # stopped the orderly way, report written
    # SIGTERM: the wrapper's parent-death signal to sandbox-run; SIGKILL: sandbox-run's
    # own --die-with-parent, used when this sandbox-run has it
    has_die_with_parent = "--die-with-parent" in subprocess.run([SANDBOX_RUN, "--help"], capture_output=True,
                                                                 text=True, check=False).stdout
    assert ad["ExitBySignal"] is True
    assert ad["ExitSignal"] == (signal.SIGKILL if has_die_with_parent else signal.SIGTERM)


def test_sandbox_run_writes_a_report_for_a_launch_it_refuses_before_setup(tmp_path):
    from tests.conftest import run_sandbox

    for fmt, read in (("json", json.loads), ("classad", classad.parse)):
        path = tmp_path / f"r.{fmt}"
        p = run_sandbox("--report-format", fmt, "--report", str(path), "--swap", "1G", "--", "true")
        assert p.returncode == 125 and p.stderr == "sandbox-run: --swap needs --mem\n"
        r = read(path.read_text())
        status, error = (r["status"], r["error"]) if fmt == "json" else (r["SandboxStatus"], r["SandboxError"])
        assert (status, error) == ("failed_to_start", "--swap needs --mem")


def test_a_gpu_the_node_does_not_have_refuses_a_private_dev_launch_in_one_line(tmp_path):
    """End to end on this GPU-less machine: the assignment is honoured or refused, never
    ignored (with no assignment, the private /dev launch runs)."""
    from tests.conftest import run_sandbox

    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")}
    p = run_sandbox("--dev", "private", "--", "true", env={**env, "_CONDOR_AssignedGPUs": "CUDA0"})
    assert p.returncode == 125
    assert p.stderr == "sandbox-run: _CONDOR_AssignedGPUs: /dev/nvidia0 does not exist\n"
    p = run_sandbox("--dev", "private", "--", "sh", "-c", "ls /dev", env={**env, "_CONDOR_AssignedGPUs": ""})
    assert p.returncode == 0 and "nvidia" not in p.stdout
