"""Shared test fixtures.

Integration tests run the installed `sandbox-run` as a subprocess, as starter code does.
Every test is checked for leftovers afterwards: a sandbox cgroup, a state file or a
process of ours that outlives its test fails that test (a leak here leaks on every
batch node), and is then cleaned up so the next test starts clean.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.cgroups import PREFIX, detect, job_cgroup

ROOT = Path(__file__).resolve().parent.parent

# A run started from `nohup ... &` inherits SIGHUP, SIGINT and SIGQUIT ignored, and passes
# that on to every sandbox-run (and job) the tests start: the job would ignore what the
# forwarding tests send it. The tests' own processes start with the defaults.
for _sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
    if signal.getsignal(_sig) == signal.SIG_IGN:
        signal.signal(_sig, signal.default_int_handler if _sig == signal.SIGINT else signal.SIG_DFL)
BIN = Path(sys.executable).parent
SANDBOX_RUN = str(BIN / "sandbox-run")
SANDBOX = str(BIN / "sandbox")
LAYOUT = detect()
IS_ROOT = os.geteuid() == 0


def pytest_report_header(config: pytest.Config) -> str:
    return f"cgroup layout: {LAYOUT.kind} (v1 controllers: {sorted(LAYOUT.v1)}; unified: {LAYOUT.unified is not None})"


def run_sandbox(*args: str, timeout: float = 60, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run sandbox-run with args; text output captured."""
    return subprocess.run(
        [SANDBOX_RUN, *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs  # type: ignore[call-overload]
    )


def _live_elsewhere(name: str) -> bool:
    """A sandbox whose launcher is alive and not ours (another test session running at
    the same time on this machine): not a leftover of this test."""
    from sandbox import state

    data = state.read(name)
    return data is not None and state.launcher_alive(data)


def sandbox_cgroup_dirs() -> set[str]:
    """Sandbox cgroup directories under our parents in every hierarchy, except those of
    sandboxes that are alive (their launcher runs)."""
    found: set[str] = set()
    probe = job_cgroup("probe", None, LAYOUT)
    paths = probe.paths()
    # On this machine each session has its own memory cgroup but shares the root of the
    # other hierarchies: a sandbox with no directory in OUR memory parent belongs to another
    # session (created by its tests, or between its cgroup creation and its state file).
    own_memory = os.path.dirname(paths["memory"]) if "memory" in paths else None
    for key, d in paths.items():
        base = os.path.dirname(d)
        try:
            for entry in os.scandir(base):
                if not entry.name.startswith(PREFIX) or not entry.is_dir() or _live_elsewhere(entry.name[len(PREFIX):]):
                    continue
                if own_memory and key != "memory" and not os.path.isdir(os.path.join(own_memory, entry.name)):
                    continue
                found.add(entry.path)
        except FileNotFoundError:
            pass
    return found


# Every process this test run starts inherits this variable (launchers, their inits,
# jobs), so a leftover is recognised as ours even after it was reparented, and the
# sandboxes of another test run on the same machine are never judged or killed.
TEST_RUN = f"{os.getpid()}-{os.urandom(4).hex()}"
os.environ["SANDBOX_TEST_RUN"] = TEST_RUN
_MARK = f"SANDBOX_TEST_RUN={TEST_RUN}".encode()


def sandbox_processes() -> set[int]:
    """Processes of sandbox-run (launchers and inits) started by this test run."""
    pids = set()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            if not (b"sandbox-run" in cmd or comm == "sandbox-init"):
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                ours = _MARK in f.read().split(b"\0")
        except OSError:
            continue
        if ours:
            pids.add(int(entry))
    return pids


def state_files() -> set[str]:
    """State files of sandboxes whose launcher is gone."""
    from sandbox import state

    own = job_cgroup("probe", None, LAYOUT).paths().get("memory")

    def other_session(name: str) -> bool:
        # see sandbox_cgroup_dirs: a sandbox whose memory cgroup is not under ours
        paths = (state.read(name) or {}).get("cgroup_paths")
        return bool(own and isinstance(paths, dict) and "memory" in paths
                    and os.path.dirname(str(paths["memory"])) != os.path.dirname(own))

    return {n for n in state.names() if not _live_elsewhere(n) and not other_session(n)}


@pytest.fixture(autouse=True)
def no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    if not IS_ROOT or request.node.get_closest_marker("no_leftover_check"):
        yield
        return
    before_cg, before_procs, before_state = sandbox_cgroup_dirs(), sandbox_processes(), state_files()
    yield
    # a launcher the test killed needs a moment for the kernel to take its namespace down
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        procs = sandbox_processes() - before_procs
        if not procs:
            break
        time.sleep(0.05)
    procs = sandbox_processes() - before_procs
    cgs = sandbox_cgroup_dirs() - before_cg
    states = state_files() - before_state
    for pid in procs:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if cgs or states:
        subprocess.run([SANDBOX, "gc"], capture_output=True, check=False)
        for name in states:
            from sandbox import state

            state.remove(name)
    assert not procs, f"test left sandbox processes behind: {sorted(procs)}"
    assert not cgs, f"test left cgroups behind: {sorted(cgs)}"
    assert not states, f"test left state files behind: {sorted(states)}"


@contextlib.contextmanager
def real_user(name: str) -> Iterator[str]:
    """A real local user for attacks and modes tried as the other side would (a leftover of
    an earlier run of that name removed first), removed with every process of theirs when
    the block ends, also when the test fails."""
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, check=False)
    subprocess.run(["userdel", "-r", name], capture_output=True, check=False)
    subprocess.run(["useradd", "-m", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, check=False)
        subprocess.run(["userdel", "-r", name], capture_output=True, check=False)


needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (namespaces and cgroups)")


# -- layout lanes ------------------------------------------------------------------
# CI runs the `cgroup` tests again in throw-away guests with a pure cgroup v2 and a pure
# v1 layout, with SANDBOX_REQUIRE_LAYOUT=v2 or v1. There, running on another layout is an
# error, and so is a cgroup test that skipped: a lane that silently skips its tests proves
# nothing. The one allowed skip is a test marked `layout(...)` for other layouts: it is
# meant for another lane by design (and runs there).

_skipped_cgroup_tests: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "layout(*kinds): runs only on these cgroup layouts (v1, v2, hybrid); skipped elsewhere"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    in_guest = bool(os.environ.get("SANDBOX_REQUIRE_LAYOUT"))
    for item in items:
        if item.get_closest_marker("guest_only") is not None and not in_guest:
            item.add_marker(pytest.mark.skip(reason="changes machine-wide state: only in the throw-away guest lanes"))
        marker = item.get_closest_marker("layout")
        if marker is not None and LAYOUT.kind not in marker.args:
            item.add_marker(pytest.mark.skip(reason=f"meant for the {'/'.join(marker.args)} layout, not {LAYOUT.kind}"))


def pytest_sessionstart(session: pytest.Session) -> None:
    required = os.environ.get("SANDBOX_REQUIRE_LAYOUT")
    if required and LAYOUT.kind != required:
        raise pytest.UsageError(f"this lane needs the {required} cgroup layout, but the host has {LAYOUT.kind}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    guest_lane = ("cgroup" in report.keywords or "guest_only" in report.keywords)
    if report.skipped and guest_lane and os.environ.get("SANDBOX_REQUIRE_LAYOUT"):
        if not _meant_for_another_layout(report):
            _skipped_cgroup_tests.append(report.nodeid)


def _meant_for_another_layout(report: pytest.TestReport) -> bool:
    return isinstance(report.longrepr, tuple) and str(report.longrepr[2]).startswith("Skipped: meant for the ")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped_cgroup_tests:
        print(f"\ncgroup tests skipped on the {LAYOUT.kind} lane (not allowed): {_skipped_cgroup_tests}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
