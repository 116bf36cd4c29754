"""The launcher: plan, create the cgroup, start the job's init in new namespaces,
supervise it without polling, and report.

The supervisor sleeps in poll(2) on three pipes (the exec handshake, init's status
messages, and the signal wakeup pipe) with the timeout as poll's timeout: it uses no
CPU while the job runs, however long that is.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from typing import TYPE_CHECKING, NamedTuple

from . import errors, init, records, report, wire
from . import syscalls as sc
from .cgroups import CgroupError, JobCgroup, Usage
from .ns import mount as mountns
from .spec import JobSpec

if TYPE_CHECKING:
    from collections.abc import Callable

    from .paths import Prepared
    from .privilege import Privilege

UNSHARE_FLAGS = sc.CLONE_NEWNS | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS


class Outcome(NamedTuple):
    status: str
    exit_code: int | None
    signal: int | None
    returncode: int


def decide(
    main_status: int | None,
    init_status: int | None,
    exec_error: tuple[int, str] | None,
    timed_out: bool,
    oom_kills: int | None,
) -> Outcome:
    """How the job ended, from what init and the kernel said. Pure: unit-tested."""
    if exec_error is not None:
        return Outcome(report.STATUS_FAILED, None, None, exec_error[0])
    code = sig = None
    status = main_status if main_status is not None else init_status
    if status is not None:
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
    if timed_out:
        return Outcome(report.STATUS_TIMED_OUT, code, sig, errors.EXIT_TIMEOUT)
    # An OOM kill anywhere in the job that made it fail: with `sh -c prog` the victim is
    # prog and sh exits 137 itself, so a non-zero exit counts as well as SIGKILL.
    if oom_kills and (sig == signal.SIGKILL or (code is not None and code != 0)):
        return Outcome(report.STATUS_OOM, code, sig, errors.SIGNAL_BASE + signal.SIGKILL)
    if sig is not None:
        return Outcome(report.STATUS_SIGNALED, None, sig, errors.SIGNAL_BASE + sig)
    if code is not None:
        return Outcome(report.STATUS_EXITED, code, None, code)
    return Outcome(report.STATUS_FAILED, None, None, errors.EXIT_SANDBOX_FAILED)


def _say(message: str) -> None:
    sys.stderr.write(f"sandbox-run: {message}\n")
    sys.stderr.flush()


def _noop_handler(_signum: int, _frame: object) -> None:
    """The wakeup pipe carries the signal number; the handler only has to exist."""


class Launch:
    def __init__(self, spec: JobSpec, privilege: Privilege, verbose: bool = False) -> None:
        self.spec = spec
        self.privilege = privilege
        self.verbose = verbose
        self.started_at = 0.0
        self.wall_seconds: float | None = None
        self.cg: JobCgroup | None = None
        self.fs: Prepared | None = None
        self.init_pid: int | None = None  # None again if init was never handed over
        self.init_forked: int | None = None  # the report's init_host_pid: whether or not it ran
        self.job_ns_pid: int | None = None
        self.job_host_pid: int | None = None
        self.main_status: int | None = None
        self.maxrss_kb: int | None = None
        self.exec_error: tuple[int, str] | None = None
        self.cleanup_error: str | None = None  # the job's outcome stands; this goes to `error`
        self.timed_out = False
        self.started = False
        self.state: records.State | None = None  # as written to the state file

    # -- the checklist -------------------------------------------------------------

    def run(self) -> int:
        self.started_at = time.time()
        t0 = time.monotonic()
        init_status: int | None = None
        usage = Usage()
        try:
            self.fs = _prepare_fs(self.spec, self.privilege)
            ops = mountns.plan(self.spec, self.fs)
            cg = self.privilege.job_cgroup(self.spec.name, self.spec.cgroup_parent)
            # Ours only once created: a name already in use is another launcher's cgroup,
            # which the teardown must never kill (create() cleans up its own partial work).
            cg.create(self.spec.limits)
            self.cg = cg
            init_status = self._start_and_supervise(ops)
        except errors.SandboxError as e:
            self.exec_error = (e.exit_code, e.message)
        except CgroupError as e:
            self.exec_error = (errors.EXIT_SANDBOX_FAILED, str(e))
        except OSError as e:
            self.exec_error = (errors.EXIT_SANDBOX_FAILED, f"{e.strerror or e}")
        except Exception as e:
            # A bug or an unexpected failure (a switchboard reply, ...): the job is torn
            # down and the report written all the same; --debug shows where.
            if self.spec.debug:
                raise
            self.exec_error = (errors.EXIT_SANDBOX_FAILED, f"internal error: {type(e).__name__}: {e}")
        finally:
            self.wall_seconds = round(time.monotonic() - t0, 6)
            if self.fs is not None:
                self.fs.close()
            usage = self._teardown()
        return self._finish(init_status, usage)

    def _start_and_supervise(self, ops: list[mountns.SetupOp]) -> int | None:
        assert self.cg is not None
        spec = self.spec
        join_fds = self.cg.join_fds()
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        close_in_child = [err_r, status_r, go_w, wake_r, wake_w]
        if spec.report_fd is not None:
            close_in_child.append(spec.report_fd)
        cfg = init.InitConfig(
            argv=spec.argv,
            cwd=_job_cwd(spec, self.fs),
            cwd_is_inherited=spec.cwd is None and (self.fs is None or self.fs.execute_dir is None),
            join_fds=tuple(join_fds),
            err_w=err_w,
            status_w=status_w,
            go_r=go_r,
            close_fds=tuple(close_in_child),
            unshare_flags=UNSHARE_FLAGS | _isolation_flags(spec),
            mount_ops=tuple(ops),
            hostname=spec.hostname,
            take_terminal=_in_foreground(),
            creds=(spec.user.uid, spec.user.gid, spec.user.groups) if spec.user is not None else None,
            last_cap=_last_cap() if spec.user is not None else 0,
            net_setup=_net_setup(spec),
            fs_fds=self.fs.fds() if self.fs is not None else (),
        )
        # Signals that arrive from here until the handlers exist are held, not lost:
        # blocked across the fork, they stay blocked in init, which waits for them.
        signal.pthread_sigmask(signal.SIG_BLOCK, init.FORWARDED)
        # After this, our next child is PID 1 of a new PID namespace. A launcher runs
        # one sandbox, so nothing else of ours is ever forked into it.
        self.privilege.before_pid_namespace()  # without root: the user namespace
        sc.unshare(sc.CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            try:
                init.main(cfg)  # never returns
            finally:
                os._exit(125)  # whatever happens, the child never runs the launcher's code
        self.init_pid = pid
        self.init_forked = pid
        for fd in (*join_fds, err_w, status_w, go_r):
            os.close(fd)
        try:
            self.privilege.hand_over(self.cg, pid)
        except BaseException:
            os.close(go_w)  # init reads EOF and exits
            os.waitpid(pid, 0)
            self.init_pid = None
            raise
        os.write(go_w, wire.GO)
        for sig in init.FORWARDED:
            signal.signal(sig, _noop_handler)
        signal.set_wakeup_fd(wake_w)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, init.FORWARDED)
        # While init joins the cgroup (the first v1 migration can wait ~10 ms for an
        # RCU grace period), do our own bookkeeping instead of waiting for it.
        self._bookkeeping()
        try:
            self._supervise(err_r, status_r, wake_r)
        finally:
            for fd in (err_r, status_r, go_w, wake_r, wake_w):
                os.close(fd)
            signal.set_wakeup_fd(-1)
        _, init_status = os.waitpid(pid, 0)
        return init_status

    def _bookkeeping(self) -> None:
        from . import state

        assert self.cg is not None
        try:
            self.privilege.reclaim_stale()
        except (OSError, CgroupError) as e:
            _say(f"warning: could not reclaim stale sandboxes: {e}")
        record = records.State(
            name=self.spec.name,
            uid=self.privilege.uid,
            **state.launcher_identity(),
            init_host_pid=self.init_pid,
            cgroup=self.cg.primary_path(),
            cgroup_version=self.cg.version,
            cgroup_paths=self.cg.paths(),
            argv=self.spec.argv,
            started_at=self.started_at,
            labels=dict(self.spec.labels),
        )
        try:
            state.write(self.spec.name, record)
            self.state = record
        except OSError as e:
            # The job can run without it; only `sandbox gc` after a SIGKILL and live
            # control need it.
            _say(f"warning: cannot write the sandbox state in {state.state_dir()}: {e.strerror}")

    def _supervise(self, err_r: int, status_r: int, wake_r: int) -> None:
        spec = self.spec
        poller = select.poll()
        for fd in (err_r, status_r, wake_r):
            poller.register(fd, select.POLLIN)
        err_buf = b""
        status = wire.StatusReader()
        exec_done = False
        init_gone = False
        deadline = time.monotonic() + spec.timeout if spec.timeout else None
        kill_at: float | None = None
        # Until init is gone AND the exec handshake is read to its end: init's exit can be
        # seen first, with a failed exec's message still in the error pipe.
        while not (init_gone and exec_done):
            now = time.monotonic()
            timers = [t for t in (deadline, kill_at) if t is not None]
            wait_ms = None if not timers else max(0, int((min(timers) - now) * 1000) + 1)
            if init_gone:  # every writer of the error pipe is gone: its end is due now
                wait_ms = 1000 if wait_ms is None else min(wait_ms, 1000)
            events = poller.poll(wait_ms)
            if init_gone and not events:
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                deadline = None
                self.timed_out = True
                self._forward(signal.SIGTERM)
                kill_at = now + spec.kill_grace
            if kill_at is not None and now >= kill_at:
                kill_at = None
                assert self.cg is not None
                self.cg.kill()  # init included: its status pipe closes, ending the loop
            for fd, _ev in events:
                if fd == wake_r:
                    for signum in os.read(wake_r, 64):
                        self._forward(signum)
                        if signum == signal.SIGTERM and kill_at is None:
                            kill_at = now + spec.kill_grace
                    continue
                data = os.read(fd, 4096)
                if fd == err_r:
                    if data:
                        err_buf += data
                    else:
                        poller.unregister(err_r)
                        exec_done = True
                        self.exec_error = wire.decode_error(err_buf)
                elif fd == status_r:
                    if not data:
                        poller.unregister(status_r)
                        init_gone = True
                    self._messages(status.feed(data))
            if exec_done and not self.started and self.exec_error is None and self.job_ns_pid is not None:
                self._on_started()

    def _messages(self, messages: list[wire.Status]) -> None:
        for kind, values in messages:
            if kind == wire.JOB_NS_PID:
                self.job_ns_pid = values[0]
            elif kind == wire.JOB_HOST_PID:
                self.job_host_pid = values[0]
            elif kind == wire.FINAL_STATUS:
                self.main_status, self.maxrss_kb = values

    def _forward(self, signum: int) -> None:
        if self.init_pid is not None:
            try:
                os.kill(self.init_pid, signum)
            except ProcessLookupError:
                pass

    def _on_started(self) -> None:
        self.started = True
        assert self.cg is not None
        event = {
            "name": self.spec.name,
            "cgroup": self.cg.primary_path(),
            "cgroup_version": self.cg.version,
            "cgroup_paths": self.cg.paths(),
            "init_host_pid": self.init_pid,
            "job_host_pid": self.job_host_pid,
            "job_ns_pid": self.job_ns_pid,
            "started_at": self.started_at,
        }
        if self.state is not None:
            # before the event: a caller that acts on 'started' finds the PIDs in the state
            from . import state

            self.state = self.state._replace(job_host_pid=self.job_host_pid, job_ns_pid=self.job_ns_pid)
            try:
                state.write(self.spec.name, self.state)
            except OSError as e:  # the job runs fine without it: a warning, never a kill
                _say(f"warning: cannot update the sandbox state: {e.strerror}")
        if self.spec.report_fd is not None:
            report.write_event(self.spec.report_fd, "started", event)
        if self.verbose:
            _say(
                f"started '{self.spec.name}': init pid {self.init_pid}, job pid {self.job_host_pid} "
                f"(pid {self.job_ns_pid} inside), cgroup {self.cg.primary_path()}"
            )

    # -- the end -------------------------------------------------------------------

    def _teardown(self) -> Usage:
        """Kill whatever is left, read the final figures, remove the cgroup. Runs on
        every path, failures included: a leftover cgroup is a bug."""
        usage = Usage()
        cg = self.cg
        cleaned = True
        if cg is not None and cg.exists():
            try:
                cg.kill()
            except (OSError, CgroupError) as e:
                cleaned = False
                self.cleanup_error = f"cannot kill what is left in {cg.primary_path()}: {e}"
            try:
                usage = cg.usage()
                if cleaned:
                    cg.remove_dirs()
            except (OSError, CgroupError) as e:
                cleaned = False
                self.cleanup_error = f"cannot remove cgroup {cg.primary_path()}: {e}"
        # A cgroup that could not be removed keeps its state file: `sandbox gc` (or the
        # next launch) finds and reclaims it once its launcher is gone.
        if self.state is not None and cleaned:
            from . import state

            state.remove(self.spec.name)
        return usage

    def _finish(self, init_status: int | None, usage: Usage) -> int:
        outcome = decide(self.main_status, init_status, self.exec_error, self.timed_out, usage.oom_kills)
        cg = self.cg
        record = records.Report(
            version=records.REPORT_VERSION,
            name=self.spec.name,
            status=outcome.status,
            exit_code=outcome.exit_code,
            signal=outcome.signal,
            returncode=outcome.returncode,
            wall_seconds=self.wall_seconds,
            cpu_user_seconds=None,
            cpu_system_seconds=None,
            memory_peak_bytes=None,
            memory_limit_bytes=self.spec.limits.memory_bytes,
            oom_kills=None,
            io_read_bytes=None,
            io_write_bytes=None,
            pids_peak=None,
            cgroup=cg.primary_path() if cg is not None else None,
            cgroup_version=cg.version if cg is not None else None,
            init_host_pid=self.init_forked,
            job_host_pid=self.job_host_pid,
            job_ns_pid=self.job_ns_pid,
            started_at=self.started_at,
            ended_at=time.time(),
            argv=self.spec.argv,
            error=self.exec_error[1] if self.exec_error else self.cleanup_error,
            labels=dict(self.spec.labels),
        ).with_usage(usage, self.maxrss_kb)
        r = record.to_dict()
        if r["error"] is not None:
            _say(r["error"])
        if self.spec.report_path:
            try:
                if self.spec.report_format == "classad":
                    from .classad import format_report

                    report.write_atomic_text(self.spec.report_path, format_report(r))
                else:
                    report.write_atomic(self.spec.report_path, r)
            except OSError as e:
                _say(f"cannot write report {self.spec.report_path}: {e.strerror}")
        if self.spec.report_fd is not None:
            report.write_event(self.spec.report_fd, "exited", r)
        if self.spec.accounting_log:
            from .accounting import append

            try:
                append(self.spec.accounting_log, record)
            except OSError as e:
                _say(f"warning: cannot append to the accounting log {self.spec.accounting_log}: {e.strerror}")
        if self.spec.stats or self.verbose:
            sys.stderr.write(report.summary(r) + "\n")
        return record.returncode


def _prepare_fs(spec: JobSpec, privilege: Privilege) -> Prepared | None:
    """Open every path the mounts need, symlink-safely, before the fork: a path
    looked up again later is where a planted symlink would redirect the mount."""
    if spec.execute_dir is None and not spec.binds and not spec.hide and spec.user is None:
        return None
    from .paths import prepare

    owner = (spec.user.uid, spec.user.gid) if spec.user is not None else None
    return prepare(spec.execute_dir, spec.binds, spec.hide, owner, privilege.scratch_owner())


def _job_cwd(spec: JobSpec, fs: Prepared | None) -> str:
    if spec.cwd is not None:
        return os.path.join(os.getcwd(), spec.cwd)
    if fs is not None and fs.execute_dir is not None:
        return fs.execute_dir.path
    try:
        return os.getcwd()
    except FileNotFoundError:  # the launcher's directory was removed: nothing to inherit
        return "/"


def _isolation_flags(spec: JobSpec) -> int:
    flags = 0
    if spec.user is not None:
        # init unshares after joining the job's cgroup: the root of the job's cgroup view
        # is its own cgroup, so paths it sees (/proc/self/cgroup) reveal nothing above it.
        flags |= sc.CLONE_NEWCGROUP
    if spec.net == "none":
        flags |= sc.CLONE_NEWNET
    return flags


def _net_setup(spec: JobSpec) -> Callable[[], None] | None:
    if spec.net != "none":
        return None
    from .ns.net import loopback_up  # imports pyroute2 (~110 ms): only here

    return loopback_up()


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63  # drop_bounding_set stops at the first EINVAL


def _in_foreground() -> bool:
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def run(spec: JobSpec, privilege: Privilege, verbose: bool = False) -> int:
    return Launch(spec, privilege, verbose).run()

