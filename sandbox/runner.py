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

from . import errors, outcome, records, setup, sinks, spawn, state
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
        self.relay: Relay | None = None  # the job's own terminal, when one is involved
        self.held: state.Held | None = None  # our state file and the lock that says we live
        self.cleaned = False  # the cgroup is gone: our state may go too
        self.parent_pid = os.getppid()  # for --die-with-parent
        self.identity: dict[str, int | None] = {}  # the launcher's PID and start time, for people
        self.enclosing: tuple[int | None, float | None] | None = None  # memory, CPUs: read once

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
        # without namespaces (process-tree tracking, a member without user namespaces) nothing is mounted
        if not self.privilege.namespaces:
            return []
        return mountns.plan(self.spec, self.fs, cgroups_read_only=self.privilege.job_owns_its_cgroup)

    def _make_cgroup(self) -> None:
        cg = self.privilege.job_cgroup(self.spec.name, self.spec.cgroup_parent)
        # The state (the intent) before the cgroup: a launcher killed at any moment
        # after this leaves a record that `sandbox gc` reclaims. Holding the name's state
        # is what makes the cgroup ours: a name in use is refused before anything is made.
        self._claim(cg)
        cg.create(setup.job_limits(self.spec, self.fs, self.privilege.device_rules))  # cleans up its own partial work
        self.cg = cg

    def _start_and_supervise(self, ops: list[mountns.SetupOp]) -> int | None:
        assert self.cg is not None
        join_fds = self.cg.join_fds()
        pipes = spawn.open_pipes()
        self.relay = setup.open_relay(self.spec)
        # only the launcher's life may hold the state's lock: init closes its copy
        held_fds = (self.held.fd,) if self.held is not None else ()
        cfg = setup.init_config(self.spec, self.fs, ops, join_fds, pipes, relay=self.relay, held_fds=held_fds,
                                privilege=self.privilege, cg=self.cg)
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
        if self.spec.die_with_parent:
            spawn.watch_parent(self.parent_pid)
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

    def _claim(self, cg: JobCgroup) -> None:
        """Write our intent and hold its lock, or fail with nothing made. A stale state
        of the same name (its launcher died) is reclaimed first, records and all."""
        self.identity = state.launcher_identity()
        record = self._state_record(cg)
        in_use = errors.SandboxError(f"sandbox {self.spec.name!r} already exists and is running")
        try:
            try:
                self.held = state.claim(self.spec.name, record)
            except FileExistsError:
                self.privilege.reclaim_stale()
                self.held = state.claim(self.spec.name, record)
        except (state.NameInUse, FileExistsError):
            raise in_use from None
        except OSError as e:
            # without its state no gc could ever reclaim the sandbox: refuse to start
            raise errors.SandboxError(f"cannot write the sandbox state in {state.state_dir()}: {e.strerror}") from None

    def _state_record(self, cg: JobCgroup) -> records.State:
        spec, facts = self.spec, self.facts
        try:
            paths, primary, version = cg.paths(), cg.recorded_path(), cg.recorded_version()
        except (OSError, CgroupError, AttributeError):  # a delegated cgroup's are known once made
            paths, primary, version = {}, None, None
        tracking, marker, gid = cg.tracking_record()
        return records.State(
            name=spec.name,
            uid=self.privilege.uid,
            **self.identity,
            init_host_pid=self.init_pid,
            cgroup=primary,
            cgroup_version=version,
            cgroup_paths=paths,
            argv=spec.argv,
            started_at=self.started_at,
            labels=dict(spec.labels),
            job_host_pid=facts.job_host_pid,
            job_ns_pid=facts.job_ns_pid,
            report_path=os.path.abspath(spec.report_path) if spec.report_path else None,
            report_format=spec.report_format,
            accounting_log=os.path.abspath(spec.accounting_log) if spec.accounting_log else None,
            memory_limit_bytes=spec.limits.memory_bytes,
            cpu_limit_cpus=spec.limits.cpus,
            tracking=tracking,
            marker=marker,
            tracking_gid=gid,
        )

    def _update_state(self) -> None:
        if self.held is None or self.cg is None:
            return
        try:
            self.held.rewrite(self._state_record(self.cg))
        except OSError as e:  # the job runs fine without it: a warning, never a kill
            sinks.say(f"warning: cannot update the sandbox state: {e.strerror}")

    def _bookkeeping(self) -> None:
        try:
            self.privilege.reclaim_stale()
        except (OSError, CgroupError) as e:
            sinks.say(f"warning: could not reclaim stale sandboxes: {e}")
        self._update_state()  # init's PID

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
        if self.spec.report_fd is not None:  # read only for a reader of the event
            event["memory_limit_bytes"], event["cpu_limit_cpus"] = outcome.limits_in_force(
                self.spec, self.cg, *self._enclosing())
        self._update_state()  # before the event: who acts on 'started' finds the PIDs there
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
        self.cleaned = cleaned
        return usage

    def _enclosing(self) -> tuple[int | None, float | None]:
        """The memory limit and CPU quota of the cgroups ours is in, read once, at the
        start only for a reader of the started event, else at the end, off the launch
        path (the enclosing cgroups outlive ours)."""
        if self.enclosing is None:
            cg = self.cg
            self.enclosing = (cg.enclosing_memory_limit(), cg.enclosing_cpu_limit()) if cg is not None else (None, None)
        return self.enclosing

    def _say_above(self, memory: int | None, cpus: float | None) -> None:
        """-v: a limit asked for above the enclosing one is not the job's."""
        asked_mem, asked_cpus = self.spec.limits.memory_bytes, self.spec.limits.cpus
        if asked_mem is not None and memory is not None and memory < asked_mem:
            sinks.say(f"--mem {format_bytes(asked_mem)} is above the {format_bytes(memory)} limit of the "
                      "enclosing cgroup: the job had the enclosing limit")
        if asked_cpus is not None and cpus is not None and cpus < asked_cpus:
            sinks.say(f"--cpus {asked_cpus:g} is above the CPU quota of the enclosing cgroup, {cpus:g} CPUs: "
                      "the job had the enclosing quota")

    def _finish(self, init_status: int | None, usage: Usage) -> int:
        memory, cpus = self._enclosing()
        launch = outcome.LaunchFacts(self.cg, self.init_forked, self.started_at, self.wall_seconds, self.cleanup_error,
                                     memory, cpus)
        record = outcome.build_report(self.spec, self.facts, init_status, usage, launch)
        if self.verbose:
            self._say_above(memory, cpus)
        if self.facts.parent_died:
            record = record._replace(extra={**record.extra, "parent_died": True})
        if sinks.finished(self.spec, record, self.verbose, self._release) != record.returncode:
            return errors.EXIT_SANDBOX_FAILED  # the report could not be written whole
        return outcome.process_exit(record)

    def _release(self) -> None:
        """After the records: the sandbox is gone, its state may go (a cgroup that could
        not be removed keeps it, for `sandbox gc` once we are gone)."""
        if self.held is not None and self.cleaned:
            self.held.release()


def run(spec: JobSpec, privilege: Privilege, verbose: bool = False) -> int:
    """The launch; its exit for errors.exit_like (-N: the job died of signal N)."""
    return Launch(spec, privilege, verbose).run()
