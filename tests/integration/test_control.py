"""Live control (`sandbox list/ps/usage/kill/suspend/resume`), the Python API, labels,
the accounting log, site configuration and --report-format classad, on real sandboxes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from sandbox import api
from tests.conftest import SANDBOX, needs_root, run_sandbox

pytestmark = [needs_root, pytest.mark.cgroup]

# the system interpreter by path: a PATH lookup may find a shim that needs the cwd
BURN = ["/usr/bin/python3", "-c", "while True: pass"]


def sandbox(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SANDBOX, *args], capture_output=True, text=True, timeout=60, check=False, **kw)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def acct(tmp_path, monkeypatch):
    """A private accounting log (through the environment, as a site would)."""
    path = tmp_path / "accounting.jsonl"
    monkeypatch.setenv("SANDBOX_ACCOUNTING_LOG", str(path))
    return path


def wait_cpu_above(sb: api.Sandbox, value: float, timeout: float = 20) -> float:
    deadline = time.monotonic() + timeout
    while True:
        cpu = sb.usage().cpu_seconds or 0.0
        if cpu > value or time.monotonic() > deadline:
            return cpu
        time.sleep(0.05)


def test_starter_drives_a_long_job(acct):
    """start, usage while running, suspend (CPU stops), resume (grows again), kill, report."""
    name = unique("starter")
    with api.start(BURN, name=name, mem="256M", labels={"tenant": "cms", "job": "42"}) as sb:
        assert sb.name == name and sb.pids.job_ns_pid == 2
        assert sb.pids.job_host_pid != sb.pids.init_host_pid
        cpu = wait_cpu_above(sb, 0.3)
        u = sb.usage()
        assert cpu > 0.3 and u.state == "running" and u.memory_limit_bytes == 256 * 2**20
        assert u.labels == {"tenant": "cms", "job": "42"} and u.pids_current == 2

        sb.suspend()
        assert sb.usage().state == "suspended"
        frozen_at = sb.usage().cpu_seconds
        time.sleep(0.5)
        assert sb.usage().cpu_seconds == pytest.approx(frozen_at, abs=0.02)  # no CPU while frozen

        sb.resume()
        assert sb.usage().state == "running"
        assert wait_cpu_above(sb, frozen_at + 0.2) > frozen_at + 0.2

        sb.kill()
        report = sb.wait()
    assert report.status == "signaled" and report.signal == signal.SIGKILL and report.returncode == 137
    assert report.cpu_seconds is not None and report.cpu_seconds >= frozen_at + 0.2
    assert report.labels == {"tenant": "cms", "job": "42"}
    (line,) = acct.read_text().splitlines()
    assert json.loads(line)["name"] == name
    # gone: control refuses, with 125
    p = sandbox("usage", name)
    assert p.returncode == 125 and "no running sandbox" in p.stderr


def test_cli_commands_on_a_running_sandbox(acct):
    name = unique("cli")
    with api.start(["sh", "-c", "sleep 300 & sleep 300"], name=name, labels={"tenant": "t1"}) as sb:
        p = sandbox("list", "--json")
        assert p.returncode == 0, p.stderr
        (entry,) = [e for e in json.loads(p.stdout) if e["name"] == name]
        assert entry["state"] == "running" and entry["labels"] == {"tenant": "t1"} and entry["pids"] == 4
        assert name in sandbox("list").stdout

        p = sandbox("ps", name, "--json")
        assert p.returncode == 0, p.stderr
        (tree,) = json.loads(p.stdout)
        procs = tree["processes"]
        assert [(q["ns_pid"], q["depth"]) for q in procs][:2] == [(1, 0), (2, 1)]
        assert procs[0]["command"] == "sandbox-init" and procs[1]["command"].startswith("sh -c")
        assert sorted(q["command"] for q in procs[2:]) == ["sleep 300", "sleep 300"]
        assert {q["host_pid"] for q in procs} >= {sb.pids.init_host_pid, sb.pids.job_host_pid}
        assert all(q["user"] == "root" and q["rss_bytes"] > 0 for q in procs)
        text = sandbox("ps", name).stdout
        assert "tenant=t1" in text and "NSPID" in text and "sleep 300" in text

        p = sandbox("usage", name)
        usage = json.loads(p.stdout)
        assert usage["name"] == name and usage["job_host_pid"] == sb.pids.job_host_pid
        assert {"cpu_user_seconds", "memory_peak_bytes", "pids_peak", "io_read_bytes"} <= set(usage)

        assert sandbox("suspend", name).returncode == 0
        assert json.loads(sandbox("list", "--json").stdout)[0]["state"] in ("suspended", "running")
        assert json.loads(sandbox("usage", name).stdout)["state"] == "suspended"
        assert sandbox("resume", name).returncode == 0
        assert json.loads(sandbox("usage", name).stdout)["state"] == "running"

        # TERM reaches every process at once (the shell and both sleeps), not init
        p = sandbox("kill", name, "-s", "TERM")
        assert p.returncode == 0, p.stderr
        report = sb.wait(timeout=30)
    assert report.status == "signaled" and report.signal == signal.SIGTERM


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["usage", "no-such-sandbox"], "no running sandbox named 'no-such-sandbox'"),
        (["kill", "../etc"], "invalid sandbox name"),
        (["suspend", "-x"], ""),
        (["ps", "a/b"], "invalid sandbox name"),
        (["kill", "whatever", "-s", "NOSUCH"], "invalid signal"),
    ],
)
# the same on every cgroup layout (refused or decided before any cgroup is touched): a host test
@pytest.mark.host_only
def test_bad_names_are_refused_with_125(args, message):
    p = sandbox(*args)
    assert p.returncode == 125
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1


# the same on every cgroup layout (refused or decided before any cgroup is touched): a host test
@pytest.mark.host_only
def test_another_users_sandbox_is_refused(acct):
    name = unique("mine")
    with api.start(["sleep", "300"], name=name) as sb:
        env = {"PATH": "/usr/bin:/bin", "HOME": "/", "XDG_RUNTIME_DIR": "/nonexistent"}
        for cmd in (["kill", name], ["suspend", name], ["usage", name]):
            p = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SANDBOX, *cmd],
                capture_output=True, text=True, env=env, timeout=60, check=False,
            )
            assert p.returncode == 125, p.stderr
            assert "belongs to another user" in p.stderr
        assert sb.usage().state == "running" and sb.poll() is None  # untouched
        sb.kill()
        assert sb.wait().signal == signal.SIGKILL


# the same on every cgroup layout (refused or decided before any cgroup is touched): a host test
@pytest.mark.host_only
def test_api_run_and_failed_start(acct):
    report = api.run(["sh", "-c", "exit 3"], mem="64M", labels={"job": "x"})
    assert (report.status, report.exit_code, report.returncode) == ("exited", 3, 3)
    assert report.memory_limit_bytes == 64 * 2**20 and report.labels == {"job": "x"}
    failed = api.run(["/nonexistent/cmd"], stderr=subprocess.DEVNULL)
    assert failed.status == "failed_to_start" and failed.returncode == 127
    with pytest.raises(api.StartError) as e:
        api.start(["/nonexistent/cmd"], stderr=subprocess.DEVNULL)
    assert e.value.report.returncode == 127
    with pytest.raises(ValueError, match="--mem"):
        api.run(["true"], mem="-1")
    assert len(acct.read_text().splitlines()) == 3


# 50 launches at once: the log's locking is the same on every layout, and minutes under emulation
@pytest.mark.host_only
def test_accounting_log_with_50_sandboxes_ending_at_once(acct):
    """Every record present, each a whole, valid JSON line, then summed by label."""
    tag = uuid.uuid4().hex[:6]
    sync = f"/run/sandbox-test-{tag}"  # not under /tmp: the jobs have their own /tmp
    os.mkdir(sync)
    go = os.path.join(sync, "go")

    def one(i: int) -> int:
        # each says it runs, then all wait for the same file, so that they end (and append)
        # together; a slow poll: 50 fast pollers starve a slow guest's launchers
        script = f"touch {sync}/ready-{i}; while [ ! -e {go} ]; do sleep 0.2; done"
        return run_sandbox("--name", f"acct-{tag}-{i}", "--label", f"tenant=t{i % 3}", "--label", f"batch={tag}",
                           "--", "sh", "-c", script, timeout=600).returncode

    try:
        with ThreadPoolExecutor(50) as pool:
            futures = [pool.submit(one, i) for i in range(50)]
            # all started (or one already failed: its result says why)
            deadline = time.monotonic() + 300
            while (len(os.listdir(sync)) < 50 and time.monotonic() < deadline
                   and not any(f.done() for f in futures)):
                time.sleep(0.1)
            open(go, "w").close()
            assert [f.result() for f in futures] == [0] * 50
    finally:
        for entry in os.listdir(sync):
            os.unlink(os.path.join(sync, entry))
        os.rmdir(sync)
    raw = acct.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    records = [json.loads(line) for line in lines]  # every line valid JSON
    assert sorted(r["name"] for r in records) == sorted(f"acct-{tag}-{i}" for i in range(50))
    p = sandbox("accounting", "--by", "tenant", "--json", "--log", str(acct))
    assert p.returncode == 0, p.stderr
    totals = {t["tenant"]: t for t in json.loads(p.stdout)}
    assert {k: t["jobs"] for k, t in totals.items()} == {"t0": 17, "t1": 17, "t2": 16}
    assert sum(t["wall_seconds"] for t in totals.values()) == pytest.approx(
        sum(r["wall_seconds"] for r in records), abs=1e-3)
    table = sandbox("accounting", "--by", "tenant", "--log", str(acct), "--since", "1h").stdout
    assert table.splitlines()[0].split()[:2] == ["TENANT", "JOBS"] and "t2" in table
    assert "(none)" not in table
    assert json.loads(sandbox("accounting", "--json", "--log", str(acct), "--since", "2999-01-01").stdout) == []


# the same on every cgroup layout (refused or decided before any cgroup is touched): a host test
@pytest.mark.host_only
def test_site_config_file_env_and_options(tmp_path, acct):
    conf = tmp_path / "sandbox.toml"
    conf.write_text('mem = "96M"\npids = 64\n[labels]\nsite = "node7"\n')
    env = {**os.environ, "SANDBOX_CONFIG": str(conf), "SANDBOX_PIDS": "32"}
    p = sandbox("config", "--json", "--cpus", "0.5", env=env)
    assert p.returncode == 0, p.stderr
    eff = json.loads(p.stdout)
    assert eff["mem"] == {"value": 96 * 2**20, "source": f"file:{conf}"}
    assert eff["pids"] == {"value": 32, "source": "env:SANDBOX_PIDS"}
    assert eff["cpus"] == {"value": 0.5, "source": "option:--cpus"}
    assert eff["accounting_log"] == {"value": str(acct), "source": "env:SANDBOX_ACCOUNTING_LOG"}
    assert "file:" + str(conf) in sandbox("config", env=env).stdout
    # a launch gets the site's defaults, and an option beats them
    report = tmp_path / "r.json"
    p = run_sandbox("--report", str(report), "--", "true", env=env)
    data = json.loads(report.read_text())
    assert p.returncode == 0 and data["memory_limit_bytes"] == 96 * 2**20 and data["labels"] == {"site": "node7"}
    p = run_sandbox("--mem", "128M", "--report", str(report), "--", "true", env=env)
    assert json.loads(report.read_text())["memory_limit_bytes"] == 128 * 2**20
    # a broken site file stops the launch with one line and 125
    conf.write_text("mem = 'plenty'\n")
    p = run_sandbox("--", "true", env=env)
    assert p.returncode == 125 and "mem:" in p.stderr and len(p.stderr.splitlines()) == 1


def test_slurm_task_gets_its_allocation(tmp_path, acct):
    """`srun sandbox-run --from-slurm -- cmd` in a fake Slurm step environment."""
    env = {**os.environ, "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NODEID": "0",
           "SLURM_MEM_PER_NODE": "2048", "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_CPUS_PER_TASK": "1"}
    report = tmp_path / "r.json"
    p = run_sandbox("--from-slurm", "--report", str(report), "--", "true", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(report.read_text())["memory_limit_bytes"] == 1024 * 2**20
    env.pop("SLURM_JOB_ID")
    p = run_sandbox("--from-slurm", "--", "true", env=env)
    assert p.returncode == 125 and "not inside a Slurm job" in p.stderr


# the same on every cgroup layout (refused or decided before any cgroup is touched): a host test
@pytest.mark.host_only
def test_report_format_classad(tmp_path, acct):
    ad = tmp_path / "r.ad"
    p = run_sandbox("--report-format", "classad", "--report", str(ad), "--label", "tenant=x", "--mem", "64M",
                    "--", "sh", "-c", "exit 4")
    assert p.returncode == 4
    text = ad.read_text()
    assert "ExitCode = 4\n" in text and "ExitBySignal = false\n" in text and "MemoryProvisioned = 64\n" in text
    assert 'SandboxLabel_tenant = "x"' in text and "RemoteUserCpu = " in text and "MemoryUsage = " in text
    p = run_sandbox("--report-format", "xml", "--", "true")
    assert p.returncode == 125 and "invalid report format" in p.stderr
