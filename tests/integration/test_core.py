"""Core launcher, end to end with the real binary: namespaces, private temporary space,
mount propagation, exit codes and the report.

Helpers shared by the test_core_*.py files live here too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.report import REPORT_KEYS
from tests.conftest import SANDBOX_RUN, needs_root, run_sandbox

pytestmark = [needs_root]
cgroup = pytest.mark.cgroup


# -- helpers -----------------------------------------------------------------------


def run_report(
    tmp_path: Path, *args: str, timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run sandbox-run with --report; return the process and the parsed report."""
    path = tmp_path / f"report-{uuid.uuid4().hex[:8]}.json"
    p = run_sandbox("--report", str(path), *args, timeout=timeout)
    assert path.exists(), f"no report written; stderr: {p.stderr}"
    text = path.read_text()
    assert text.count("\n") == 1 and text.endswith("\n"), text
    data = json.loads(text)
    assert isinstance(data, dict)
    missing = set(REPORT_KEYS) - set(data)
    assert not missing, f"report lacks {missing}"
    assert p.returncode == exit_of(data)
    return p, data


def exit_of(report: dict[str, Any]) -> int:
    """sandbox-run's own end for a report: death by the job's signal (SIGKILL for an OOM
    kill), else the report's returncode; a shell sees 128+N either way."""
    if report["status"] == "oom_killed":
        return -signal.SIGKILL
    if report["status"] == "signaled":
        return -int(report["signal"])
    return int(report["returncode"])


class Running:
    """A sandbox-run started with Popen and --report-fd on a pipe: the started event is
    read before the test goes on, so the job is known to run."""

    def __init__(
        self, *args: str, stdin: int | None = subprocess.DEVNULL, report: Path | None = None,
        env: dict[str, str] | None = None, prefix: tuple[str, ...] = (),
    ) -> None:
        r, w = os.pipe()
        extra = ["--report", str(report)] if report else []
        self.proc = subprocess.Popen(
            [*prefix, SANDBOX_RUN, "--report-fd", str(w), *extra, *args],
            pass_fds=(w,), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        os.close(w)
        self.events = os.fdopen(r, "r")
        line = self.events.readline()
        if not line:
            self.proc.kill()
            _out, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"no started event; rc={self.proc.returncode} stderr={err!r}")
        self.started: dict[str, Any] = json.loads(line)
        assert self.started["event"] == "started", self.started

    def exited(self, timeout: float = 60) -> dict[str, Any]:
        self.proc.wait(timeout=timeout)
        line = self.events.readline()
        assert line, "no exited event"
        event: dict[str, Any] = json.loads(line)
        assert event["event"] == "exited"
        assert self.events.readline() == ""  # nothing after the final event
        return event

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.communicate(timeout=30)
        except (ValueError, OSError):
            self.proc.wait(timeout=30)
        self.events.close()


@pytest.fixture
def hostdir() -> Iterator[Path]:
    """A directory the job sees (not under the private /tmp), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="sbtest-", dir="/run"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def host_processes_with(marker: str) -> list[int]:
    """Host PIDs whose command line contains marker (zombies excluded: they are dead)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmd and state != "Z":
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie (a zombie is dead; its parent may reap it later)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert lines[0].startswith("sandbox-run: "), lines
    assert "Traceback" not in stderr
    return lines[0]


# -- the PID namespace -------------------------------------------------------------


def test_ps_inside_shows_only_the_job() -> None:
    p = run_sandbox("--", "sh", "-c", "sleep 30 & ps -e -o pid=,ppid=,comm=; echo /proc/[0-9]*; kill $!")
    assert p.returncode == 0, p.stderr
    *rows, listing = p.stdout.strip().splitlines()
    procs = [tuple(r.split()) for r in rows]
    assert procs == [("1", "0", "sandbox-init"), ("2", "1", "sh"), ("3", "2", "sleep"), ("4", "2", "ps")]
    # /proc itself lists the job's processes (ps has been reaped) and nothing of the host
    assert listing == "/proc/1 /proc/2 /proc/3"


def test_namespaces_are_new() -> None:
    mine = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("pid", "mnt", "ipc", "uts", "net")}
    p = run_sandbox("--", "sh", "-c", "for n in pid mnt ipc uts net; do readlink /proc/self/ns/$n; done")
    assert p.returncode == 0, p.stderr
    inside = dict(zip(("pid", "mnt", "ipc", "uts", "net"), p.stdout.split(), strict=True))
    for ns in ("pid", "mnt", "ipc", "uts"):
        assert inside[ns] != mine[ns], ns
    assert inside["net"] == mine["net"]  # without --net, the job shares the network namespace


# -- private temporary space -------------------------------------------------------

TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def test_tmp_is_private_both_ways() -> None:
    tag = uuid.uuid4().hex
    host_files = [Path(d) / f"host-{tag}" for d in TMP_DIRS]
    for f in host_files:
        f.write_text("host")
    try:
        script = "; ".join(
            [f"test ! -e {f} || echo SEEN {f}" for f in host_files]
            + [f"echo job > {d}/job-{tag}" for d in TMP_DIRS]
            + [f"ls -A {d} | grep -v job-{tag} | sed 's|^|EXTRA {d} |'" for d in TMP_DIRS]
            + [f"stat -c '%a %U' {d}" for d in TMP_DIRS]
        )
        p = run_sandbox("--", "sh", "-c", script)
        assert p.returncode == 0, p.stderr
        assert "SEEN" not in p.stdout  # the host's files are invisible
        assert "EXTRA" not in p.stdout  # each directory starts empty
        assert p.stdout.split("\n")[-4:-1] == ["1777 root"] * 3
        for d in TMP_DIRS:  # what the job wrote is not on the host
            assert not (Path(d) / f"job-{tag}").exists()
        for f in host_files:  # and the host's files are untouched
            assert f.read_text() == "host"
    finally:
        for f in host_files:
            f.unlink(missing_ok=True)


def test_two_sandboxes_do_not_see_each_other() -> None:
    tag = uuid.uuid4().hex
    first = Running("--", "sh", "-c", f"echo A > /tmp/{tag}; echo A > /dev/shm/{tag}; echo ready; read x; "
                                      f"cat /tmp/{tag} /dev/shm/{tag}", stdin=subprocess.PIPE)
    try:
        assert first.proc.stdout is not None and first.proc.stdin is not None
        assert first.proc.stdout.readline() == "ready\n"
        second = run_sandbox("--", "sh", "-c", f"test ! -e /tmp/{tag} && test ! -e /dev/shm/{tag} && "
                                               f"echo B > /tmp/{tag} && echo B > /dev/shm/{tag} && echo clean")
        assert second.returncode == 0 and second.stdout == "clean\n", second.stderr
        first.proc.stdin.write("go\n")
        first.proc.stdin.flush()
        assert first.exited()["exit_code"] == 0
        assert first.proc.stdout.read() == "A\nA\n"
    finally:
        first.close()


def test_tmp_is_gone_at_the_end(tmp_path: Path) -> None:
    """The tmpfs dies with the mount namespace: no mount of it on the host, before,
    during or after."""
    running = Running("--", "sh", "-c", "head -c 1M /dev/zero > /tmp/f; echo ready; read x",
                      stdin=subprocess.PIPE)
    try:
        assert running.proc.stdout is not None and running.proc.stdin is not None
        assert running.proc.stdout.readline() == "ready\n"
        assert "sandbox-tmp" not in Path("/proc/self/mountinfo").read_text()
        # the job's own view does have it
        init_pid = running.started["init_host_pid"]
        assert "sandbox-tmp" in Path(f"/proc/{init_pid}/mountinfo").read_text()
        running.proc.stdin.write("\n")
        running.proc.stdin.flush()
        running.exited()
    finally:
        running.close()
    assert "sandbox-tmp" not in Path("/proc/self/mountinfo").read_text()
    assert not alive(init_pid)


@cgroup
def test_tmp_size_bounds_all_three_together() -> None:
    p = run_sandbox("--tmp-size", "1M", "--", "sh", "-c", "df -k /tmp | tail -1; head -c 2M /dev/zero > /tmp/big")
    assert p.returncode != 0
    assert "No space left on device" in p.stderr
    assert p.stdout.split()[1] == "1024"  # 1M tmpfs
    # /tmp, /var/tmp and /dev/shm share the bound
    p = run_sandbox("--tmp-size", "1M", "--", "sh", "-c",
                    "head -c 400K /dev/zero > /tmp/a && head -c 400K /dev/zero > /var/tmp/b && echo two && "
                    "head -c 400K /dev/zero > /dev/shm/c && echo three")
    assert p.stdout == "two\n" and "No space left on device" in p.stderr
    # without the option the job can write more than 1M
    p = run_sandbox("--", "sh", "-c", "head -c 2M /dev/zero > /tmp/big && echo ok")
    assert p.returncode == 0 and p.stdout == "ok\n", p.stderr


# -- mounts stay inside --------------------------------------------------------------


def _mountinfo() -> set[str]:
    # drop the mount ID and parent ID: they are not a mount's identity across reads
    return {line.split(" ", 2)[2] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def test_no_mount_propagates_to_the_host(hostdir: Path) -> None:
    target = hostdir / "mnt"
    target.mkdir()
    before = _mountinfo()
    ours = (str(target), "sandbox-tmp", "sbtest-inner")

    def leaked(lines: set[str]) -> list[str]:
        new = lines - before
        return [line for line in new if any(word in line for word in ours)
                or any(f" {d} " in line for d in (*TMP_DIRS, "/proc"))]

    running = Running("--", "sh", "-c",
                      f"mount -t tmpfs sbtest-inner {target} && mount --bind /tmp {target} && "
                      "mount -t tmpfs sbtest-inner /mnt && echo ready && read x",
                      stdin=subprocess.PIPE)
    try:
        assert running.proc.stdout is not None and running.proc.stdin is not None
        assert running.proc.stdout.readline() == "ready\n", running.proc.stderr
        # the job's mounts exist in its namespace...
        inside = Path(f"/proc/{running.started['job_host_pid']}/mountinfo").read_text()
        assert str(target) in inside and "sbtest-inner" in inside
        # ...and not on the host
        assert leaked(_mountinfo()) == []
        assert os.listdir(target) == []
        running.proc.stdin.write("\n")
        running.proc.stdin.flush()
        assert running.exited()["exit_code"] == 0
    finally:
        running.close()
    assert leaked(_mountinfo()) == []


# -- exit codes ----------------------------------------------------------------------


@pytest.mark.parametrize(("script", "code"), [("exit 0", 0), ("exit 3", 3), ("exit 255", 255)])
def test_own_exit_code(tmp_path: Path, script: str, code: int) -> None:
    p, r = run_report(tmp_path, "--", "sh", "-c", script)
    assert p.returncode == code
    assert (r["status"], r["exit_code"], r["signal"]) == ("exited", code, None)
    assert p.stderr == ""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGUSR1, signal.SIGSEGV])
def test_death_by_signal(tmp_path: Path, sig: int) -> None:
    p, r = run_report(tmp_path, "--", "sh", "-c", f"kill -{int(sig)} $$")
    assert p.returncode == -sig  # died of it too, after writing the report
    assert (r["status"], r["exit_code"], r["signal"], r["returncode"]) == ("signaled", None, sig, 128 + sig)


def test_timeout(tmp_path: Path) -> None:
    t0 = time.monotonic()
    p, r = run_report(tmp_path, "--timeout", "0.5", "--", "sleep", "60")
    assert p.returncode == 124
    assert r["status"] == "timed_out" and r["signal"] == signal.SIGTERM
    assert time.monotonic() - t0 < 30


def test_timeout_of_a_job_that_ignores_sigterm(tmp_path: Path) -> None:
    t0 = time.monotonic()
    p, r = run_report(tmp_path, "--timeout", "0.5", "--kill-grace", "1", "--",
                      "sh", "-c", "trap '' TERM; while :; do sleep 0.1; done")
    elapsed = time.monotonic() - t0
    assert p.returncode == 124
    assert r["status"] == "timed_out"
    assert r["wall_seconds"] >= 1.4  # it did get its grace period
    assert elapsed < 30  # and was killed after it, not after the default 10 s


BAD_OPTIONS = [
    (["--mem", "lots"], "--mem"),
    (["--mem", "0"], "--mem"),
    (["--mem=1.5"], "--mem"),
    (["--mem"], "--mem"),
    (["--swap", "1G"], "--swap"),
    (["--pids", "x"], "--pids"),
    (["--pids", "0"], "--pids"),
    (["--cpus", "0"], "--cpus"),
    (["--cpus", "nan"], "--cpus"),
    (["--tmp-size", "1.5"], "--tmp-size"),
    (["--timeout", "-1"], "--timeout"),
    (["--kill-grace", "x"], "--kill-grace"),
    (["--name", "a/b"], "--name"),
    (["--name", "-x"], "--name"),
    (["--report-fd", "987"], "--report-fd"),
    (["--stats=yes"], "--stats"),
    (["--nope"], "--nope"),
    (["--report", "/nonexistent/dir/r.json"], "--report"),
]


@pytest.mark.parametrize(("args", "option"), BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_is_125_and_one_line(args: list[str], option: str) -> None:
    p = run_sandbox(*args, "--", "sh", "-c", "echo RAN")
    assert p.returncode == 125
    line = one_error_line(p.stderr)
    assert option in line
    assert "RAN" not in p.stdout


@pytest.mark.parametrize("args", [[], ["--mem", "1G"], ["--mem", "1G", "--"]])
def test_missing_command_is_125(args: list[str]) -> None:
    p = run_sandbox(*args)
    assert p.returncode == 125
    assert "Traceback" not in p.stderr


def test_cgroup_parent_must_exist(tmp_path: Path) -> None:
    p, r = run_report(tmp_path, "--cgroup-parent", f"/no-such-parent-{uuid.uuid4().hex[:6]}", "--", "true")
    assert p.returncode == 125
    assert "no-such-parent" in one_error_line(p.stderr)
    assert r["status"] == "failed_to_start"


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["/etc/passwd"], 126, "sandbox-run: cannot execute '/etc/passwd': Permission denied"),
        (["/"], 126, "sandbox-run: cannot execute '/': Permission denied"),
        (["no-such-command-xyz"], 127, "sandbox-run: cannot execute 'no-such-command-xyz': No such file or directory"),
        (["/nonexistent/bin/x"], 127, "sandbox-run: cannot execute '/nonexistent/bin/x': No such file or directory"),
        (["--chdir", "/nonexistent-dir", "--", "true"], 125,
         "sandbox-run: cannot change directory to '/nonexistent-dir': No such file or directory"),
    ],
)
def test_failures_before_exec(tmp_path: Path, argv: list[str], code: int, message: str) -> None:
    args = argv if argv[0].startswith("--") else ["--", *argv]
    p, r = run_report(tmp_path, *args)
    assert p.returncode == code
    assert one_error_line(p.stderr) == message
    assert r["status"] == "failed_to_start"
    assert r["error"] and r["error"] in message
    assert (r["exit_code"], r["signal"]) == (None, None)


def test_chdir() -> None:
    p = run_sandbox("--chdir", "/usr", "--", "pwd")
    assert (p.returncode, p.stdout) == (0, "/usr\n")
    # the default is the launcher's working directory
    p = run_sandbox("--", "pwd", cwd="/etc")
    assert (p.returncode, p.stdout) == (0, "/etc\n")


# -- the report ----------------------------------------------------------------------


@cgroup
def test_report_of_a_normal_exit(tmp_path: Path) -> None:
    p, r = run_report(tmp_path, "--name", f"rep-{uuid.uuid4().hex[:6]}", "--mem", "256M", "--", "sh", "-c", "exit 0")
    assert p.returncode == 0
    assert r["version"] == 1 and r["name"].startswith("rep-")
    assert r["cgroup"].endswith(f"/sandbox-{r['name']}")
    assert r["cgroup_version"] in ("v1", "v2", "hybrid")
    assert r["memory_limit_bytes"] == 256 << 20
    assert r["job_ns_pid"] == 2 and r["init_host_pid"] != r["job_host_pid"]
    for key in ("wall_seconds", "cpu_user_seconds", "cpu_system_seconds"):
        assert isinstance(r[key], float) and r[key] >= 0, key
    assert r["memory_peak_bytes"] > 0 and r["oom_kills"] == 0 and r["pids_peak"] >= 1
    assert r["argv"] == ["sh", "-c", "exit 0"]
    assert r["error"] is None and r["ended_at"] >= r["started_at"]


def test_report_fd_streams_started_then_exited() -> None:
    running = Running("--", "sh", "-c", "echo ready; read x; exit 5", stdin=subprocess.PIPE)
    try:
        s = running.started
        assert {"name", "cgroup", "init_host_pid", "job_host_pid", "job_ns_pid"} <= set(s)
        assert s["job_ns_pid"] == 2
        assert running.proc.stdout is not None and running.proc.stdin is not None
        assert running.proc.stdout.readline() == "ready\n"
        # the PID mapping is the kernel's: NSpid of the host pid ends with the namespace pid
        nspid = next(line for line in Path(f"/proc/{s['job_host_pid']}/status").read_text().splitlines()
                 if line.startswith("NSpid:")).split()[1:]
        assert [int(x) for x in nspid] == [s["job_host_pid"], s["job_ns_pid"]]
        init_nspid = next(line for line in Path(f"/proc/{s['init_host_pid']}/status").read_text().splitlines()
                      if line.startswith("NSpid:")).split()[1:]
        assert [int(x) for x in init_nspid] == [s["init_host_pid"], 1]
        assert Path(f"/proc/{s['init_host_pid']}/comm").read_text().strip() == "sandbox-init"
        running.proc.stdin.write("\n")
        running.proc.stdin.flush()
        e = running.exited()
        assert running.proc.returncode == 5
        assert set(REPORT_KEYS) <= set(e)
        assert (e["status"], e["exit_code"], e["job_host_pid"], e["job_ns_pid"]) == (
            "exited", 5, s["job_host_pid"], 2)
    finally:
        running.close()


def test_report_fd_on_failure_has_no_started_event() -> None:
    r, w = os.pipe()
    p = subprocess.run([SANDBOX_RUN, "--report-fd", str(w), "--", "no-such-command-xyz"],
                       pass_fds=(w,), capture_output=True, text=True, timeout=60, check=False)
    os.close(w)
    with os.fdopen(r) as f:
        lines = [json.loads(line) for line in f]
    assert p.returncode == 127
    assert [e["event"] for e in lines] == ["exited"]
    assert lines[0]["status"] == "failed_to_start"


def test_report_fd_is_not_inherited_by_the_job() -> None:
    r, w = os.pipe()
    script = f"if test -e /proc/self/fd/{w}; then echo LEAK; fi"
    p = subprocess.run([SANDBOX_RUN, "--report-fd", str(w), "--", "sh", "-c", script],
                       pass_fds=(w,), capture_output=True, text=True, timeout=60, check=False)
    os.close(w)
    os.close(r)
    assert p.returncode == 0 and "LEAK" not in p.stdout


@cgroup
def test_report_on_oom_timeout_and_failure(tmp_path: Path) -> None:
    """The report file is written whatever ended the job."""
    _, r = run_report(tmp_path, "--mem", "50M", "--", "sh", "-c", "head -c 200M /dev/zero | tail > /dev/null")
    assert r["status"] == "oom_killed"
    _, r = run_report(tmp_path, "--timeout", "0.3", "--", "sleep", "30")
    assert r["status"] == "timed_out"
    _, r = run_report(tmp_path, "--", "no-such-command-xyz")
    assert r["status"] == "failed_to_start"


def test_report_when_the_launcher_gets_sigterm(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    running = Running("--kill-grace", "5", "--", "sleep", "60", report=report)
    try:
        running.proc.send_signal(signal.SIGTERM)
        e = running.exited()
    finally:
        running.close()
    # SIGTERM went to the job, which died of it
    assert running.proc.returncode == -signal.SIGTERM
    data = json.loads(report.read_text())
    # the file and the final event carry the same report
    assert data == {k: v for k, v in e.items() if k != "event"}
    assert (data["status"], data["signal"]) == ("signaled", signal.SIGTERM)
    assert set(REPORT_KEYS) <= set(data)


def test_report_when_the_launcher_gets_sigterm_and_the_job_ignores_it(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    running = Running("--kill-grace", "1", "--", "sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done",
                      report=report)
    try:
        assert running.proc.stdout is not None
        assert running.proc.stdout.readline() == "ready\n"
        running.proc.send_signal(signal.SIGTERM)
        e = running.exited(timeout=30)
    finally:
        running.close()
    data = json.loads(report.read_text())
    assert data["status"] == e["status"]
    assert running.proc.returncode == exit_of(data) != 0
    assert set(REPORT_KEYS) <= set(data)


def test_stats_summary_on_stderr() -> None:
    p = run_sandbox("--stats", "--name", "stats-test-x", "--", "sh", "-c", "echo out; exit 4")
    assert p.returncode == 4 and p.stdout == "out\n"
    assert p.stderr.startswith("sandbox-run: 'stats-test-x' exited with code 4\n")
    for label in ("wall time:", "cpu user/system:", "memory peak:", "pids peak:", "cgroup:", "exit code:        4"):
        assert label in p.stderr
    p = run_sandbox("--", "true")
    assert p.stderr == ""  # no summary unless asked


def test_inherited_cwd_under_host_tmp_gives_no_way_into_it(tmp_path):
    """A starter whose working directory is in the host's /tmp: the job's /tmp is
    private, so that directory has no path in the sandbox, and the job must not keep a
    pathless reference to it (reading the host's files through '.'). It starts in /."""
    host_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-test-cwd-"))
    try:
        (host_dir / "secret").write_text("host data\n")
        p = subprocess.run(
            [SANDBOX_RUN, "--", "sh", "-c", "pwd; cat secret 2>&1; ls"],
            cwd=host_dir, capture_output=True, text=True, timeout=60, check=False,
        )
        assert p.returncode == 0, p.stderr
        lines = p.stdout.splitlines()
        assert lines[0] == "/"
        assert "host data" not in p.stdout
        # a visible directory is kept: /usr exists in the sandbox too
        p = subprocess.run(
            [SANDBOX_RUN, "--", "pwd"], cwd="/usr", capture_output=True, text=True, timeout=60, check=False
        )
        assert p.stdout.strip() == "/usr"
    finally:
        shutil.rmtree(host_dir)


@pytest.mark.cgroup
# the same on every cgroup layout (refused or decided before any cgroup is touched): a host test
@pytest.mark.host_only
def test_a_name_in_use_is_refused_and_the_running_sandbox_is_untouched(tmp_path, hostdir):
    name = f"dup-{uuid.uuid4().hex[:8]}"
    # the first job runs until the test is done with it (a fixed sleep is too short in a
    # slow guest), and never longer than a minute
    go = hostdir / "go"
    first = Running("--name", name, "--timeout", "60", "--", "sh", "-c",
                    f"while [ ! -e {go} ]; do sleep 0.05; done; exit 5")
    try:
        p, r = run_report(tmp_path, "--name", name, "--", "true")
        assert p.returncode == 125 and r["status"] == "failed_to_start"
        assert "already exists" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert Path(first.started["cgroup"]).is_dir()  # the first one's cgroup is still there
        assert first.proc.poll() is None  # and it still runs
        go.touch()
        ended = first.exited()
        assert ended["status"] == "exited" and ended["exit_code"] == 5  # it ran to its own end
    finally:
        first.close()
