"""The launch as a checklist: plan, make the cgroup, start init, supervise, tear down,
report. Each step is a named method here; what it does lives in the module that owns
it (setup, spawn, supervise, outcome, sinks; the privilege decides what differs
between root and a switchboard member).
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

from . import errors, outcome, records, setup, sinks, spawn
from .cgroups import CgroupError, JobCgroup, Usage
from .limits import format_bytes
from .ns import mount as mountns
from .supervise import Facts, Supervisor

if TYPE_CHECKING:
    from .paths import Prepared
    from .privilege import Privilege
    from .spec import JobSpec
    from .terminal import Relay


class Launch:
    def __init__(self, spec: JobSpec, privilege: Privilege, verbose: bool = False) -> None:
        self.spec = spec
        self.privilege = privilege
        self.verbose = verbose
        self.started_at = 0.0
        self.wall_seconds: float | None = None
        self.facts = Facts()
        self.cg: JobCgroup | None = None
        self.fs: Prepared | None = None
        self.init_pid: int | None = None  # None again if init was never handed over
        self.init_forked: int | None = None  # the report's init_host_pid: whether or not it ran
        self.cleanup_error: str | None = None  # the job's outcome stands; this goes to `error`
        self.state: records.State | None = None  # as written to the state file
        self.relay: Relay | None = None  # the job's own terminal, when one is involved

    # -- the checklist -------------------------------------------------------------

    def run(self) -> int:
        self.started_at = time.time()
        t0 = time.monotonic()
        init_status: int | None = None
        usage = Usage()
        try:
            ops = self._plan()
            self._make_cgroup()
            init_status = self._start_and_supervise(ops)
        except errors.SandboxError as e:
            self.facts.exec_error = (e.exit_code, e.message)
        except CgroupError as e:
            self.facts.exec_error = (errors.EXIT_SANDBOX_FAILED, str(e))
        except OSError as e:
            self.facts.exec_error = (errors.EXIT_SANDBOX_FAILED, f"{e.strerror or e}")
        except Exception as e:
            # A bug or an unexpected failure (a switchboard reply, ...): the job is torn
            # down and the report written all the same; --debug shows where.
            if self.spec.debug:
                raise
            self.facts.exec_error = (errors.EXIT_SANDBOX_FAILED, f"internal error: {type(e).__name__}: {e}")
        finally:
            self.wall_seconds = round(time.monotonic() - t0, 6)
            if self.relay is not None:
                self.relay.finish()  # the job's last output, and the caller's terminal as it was
            if self.fs is not None:
                self.fs.close()
            usage = self._teardown()
        return self._finish(init_status, usage)

    def _plan(self) -> list[mountns.SetupOp]:
        self.fs = setup.prepare_fs(self.spec, self.privilege)
        return mountns.plan(self.spec, self.fs)

    def _make_cgroup(self) -> None:
        cg = self.privilege.job_cgroup(self.spec.name, self.spec.cgroup_parent)
        # Ours only once created: a name already in use is another launcher's cgroup,
        # which the teardown must never kill (create() cleans up its own partial work).
        cg.create(self.spec.limits)
        self.cg = cg

    def _start_and_supervise(self, ops: list[mountns.SetupOp]) -> int | None:
        assert self.cg is not None
        join_fds = self.cg.join_fds()
        pipes = spawn.open_pipes()
        self.relay = setup.open_relay(self.spec)
        cfg = setup.init_config(self.spec, self.fs, ops, join_fds, pipes, relay=self.relay)
        pid = spawn.fork_init(cfg, self.privilege)
        self.init_pid = pid
        self.init_forked = pid
        try:
            spawn.go(pid, pipes, join_fds, self.cg, self.privilege)
        except BaseException:
            self.init_pid = None  # reaped
            raise
        if self.relay is not None:
            self.relay.start()
        # While init joins the cgroup (the first v1 migration can wait ~10 ms for an
        # RCU grace period), do our own bookkeeping instead of waiting for it.
        self._bookkeeping()
        spec = self.spec
        sup = Supervisor(
            self.facts, self.cg, pid, timeout=spec.timeout, kill_grace=spec.kill_grace, on_started=self._on_started,
            relay=self.relay,
        )
        try:
            sup.run(pipes)
        finally:
            for fd in pipes.ours():
                os.close(fd)
            signal.set_wakeup_fd(-1)
        _, init_status = os.waitpid(pid, 0)
        return init_status

    # -- the state record ----------------------------------------------------------

    def _bookkeeping(self) -> None:
        from . import state

        assert self.cg is not None
        try:
            self.privilege.reclaim_stale()
        except (OSError, CgroupError) as e:
            sinks.say(f"warning: could not reclaim stale sandboxes: {e}")
        record = records.State(
            name=self.spec.name,
            uid=self.privilege.uid,
            **state.launcher_identity(),
            init_host_pid=self.init_pid,
            cgroup=self.cg.recorded_path(),
            cgroup_version=self.cg.recorded_version(),
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
            sinks.say(f"warning: cannot write the sandbox state in {state.state_dir()}: {e.strerror}")

    def _on_started(self) -> None:
        facts = self.facts
        assert self.cg is not None
        event = {
            "name": self.spec.name,
            "cgroup": self.cg.recorded_path(),
            "cgroup_version": self.cg.recorded_version(),
            "tracking": self.cg.tracking,
            "cgroup_paths": self.cg.paths(),
            "init_host_pid": self.init_pid,
            "job_host_pid": facts.job_host_pid,
            "job_ns_pid": facts.job_ns_pid,
            "started_at": self.started_at,
        }
        if self.state is not None:
            # before the event: a caller that acts on 'started' finds the PIDs in the state
            from . import state

            self.state = self.state._replace(job_host_pid=facts.job_host_pid, job_ns_pid=facts.job_ns_pid)
            try:
                state.write(self.spec.name, self.state)
            except OSError as e:  # the job runs fine without it: a warning, never a kill
                sinks.say(f"warning: cannot update the sandbox state: {e.strerror}")
        sinks.started(self.spec, event)
        if self.verbose:
            sinks.say(
                f"started '{self.spec.name}': init pid {self.init_pid}, job pid {facts.job_host_pid} "
                f"(pid {facts.job_ns_pid} inside), {self._where()}"
            )

    def _where(self) -> str:
        assert self.cg is not None
        path = self.cg.recorded_path()
        return f"cgroup {path}" if path else f"tracked by {self.cg.tracking}, no cgroup"

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
        # read at the end, off the launch path: the enclosing cgroups outlive ours
        enclosing = self.cg.enclosing_memory_limit() if self.cg is not None else None
        launch = outcome.LaunchFacts(self.cg, self.init_forked, self.started_at, self.wall_seconds, self.cleanup_error,
                                     enclosing)
        record = outcome.build_report(self.spec, self.facts, init_status, usage, launch)
        requested = self.spec.limits.memory_bytes
        if self.verbose and requested is not None and enclosing is not None and enclosing < requested:
            sinks.say(f"--mem {format_bytes(requested)} is above the {format_bytes(enclosing)} limit of the "
                      "enclosing cgroup: the job had the enclosing limit")
        sinks.finished(self.spec, record, self.verbose)
        return outcome.process_exit(record)


def run(spec: JobSpec, privilege: Privilege, verbose: bool = False) -> int:
    """The launch; its exit for errors.exit_like (-N: the job died of signal N)."""
    return Launch(spec, privilege, verbose).run()
