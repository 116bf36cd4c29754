"""Supervising a running job without polling.

The supervisor sleeps in poll(2) on three pipes (the exec handshake, init's status
messages, and the signal wakeup pipe) with the timeout as poll's timeout: it uses no
CPU while the job runs, however long that is.
"""

from __future__ import annotations

import os
import select
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import wire
from .spawn import PARENT_DEATH_SIGNAL

if TYPE_CHECKING:
    from collections.abc import Callable

    from .cgroups import JobCgroup
    from .spawn import Pipes
    from .terminal import Relay


@dataclass
class Facts:
    """What the supervisor learnt about the job from init and from the clock."""

    job_ns_pid: int | None = None
    job_host_pid: int | None = None
    main_status: int | None = None
    maxrss_kb: int | None = None
    exec_error: tuple[int, str] | None = None
    timed_out: bool = False
    started: bool = False
    parent_died: bool = False  # --die-with-parent: torn down because our parent died


class Supervisor:
    def __init__(
        self,
        facts: Facts,
        cg: JobCgroup,
        init_pid: int,
        *,
        timeout: float | None,
        kill_grace: float,
        on_started: Callable[[], None],
        relay: Relay | None = None,
    ) -> None:
        self.facts = facts
        self.cg = cg
        self.init_pid = init_pid
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.on_started = on_started
        self.relay = relay

    def run(self, pipes: Pipes) -> None:
        self.pipes = pipes
        self.poller = select.poll()
        self.relay_fds = self.relay.poll_fds() if self.relay is not None else ()
        for fd in (pipes.err_r, pipes.status_r, pipes.wake_r, *self.relay_fds):
            self.poller.register(fd, select.POLLIN)
        self.err_buf = b""
        self.status = wire.StatusReader()
        self.exec_done = False
        self.init_gone = False
        self.deadline = time.monotonic() + self.timeout if self.timeout else None
        self.kill_at: float | None = None
        facts = self.facts
        # Until init is gone AND the exec handshake is read to its end: init's exit can be
        # seen first, with a failed exec's message still in the error pipe.
        while not (self.init_gone and self.exec_done):
            events = self.poller.poll(self._wait_ms())
            if self.init_gone and not events:
                break
            now = time.monotonic()
            for fd, _ev in events:
                self._readable(fd, now)
            # The timers only after what init said: a launcher stopped (SIGSTOP) past the
            # deadline finds the job's own exit waiting in the pipe, and that stands.
            self._timers(now)
            if self.exec_done and not facts.started and facts.exec_error is None and facts.job_ns_pid is not None:
                facts.started = True
                self.on_started()

    def _wait_ms(self) -> int | None:
        """poll's timeout: until the next timer (None: none)."""
        now = time.monotonic()
        timers = [t for t in (self.deadline, self.kill_at) if t is not None]
        wait_ms = None if not timers else max(0, int((min(timers) - now) * 1000) + 1)
        if self.init_gone:  # every writer of the error pipe is gone: its end is due now
            wait_ms = 1000 if wait_ms is None else min(wait_ms, 1000)
        return wait_ms

    def _timers(self, now: float) -> None:
        """The deadline (SIGTERM, then SIGKILL after the grace), unless the job ended."""
        ended = self.init_gone or self.facts.main_status is not None
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None
            if not ended:
                self.facts.timed_out = True
                self._forward(signal.SIGTERM)
                self.kill_at = now + self.kill_grace
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            if not self.init_gone:
                self.cg.kill()  # init included: its status pipe closes, ending the loop

    def _readable(self, fd: int, now: float) -> None:
        pipes = self.pipes
        if fd in self.relay_fds and self.relay is not None:
            if not self.relay.ready(fd):
                self.poller.unregister(fd)
            return
        if fd == pipes.wake_r:
            for signum in os.read(fd, 64):
                if signum == signal.SIGWINCH and self.relay is not None:
                    self.relay.resize()  # the caller's window changed: so does the job's
                    continue
                if signum == PARENT_DEATH_SIGNAL:
                    self.facts.parent_died = True
                    self.cg.kill()  # init included: its status pipe closes, ending the loop
                    continue
                self._forward(signum)
                if signum == signal.SIGTERM and self.kill_at is None:
                    self.kill_at = now + self.kill_grace
            return
        data = os.read(fd, 4096)
        if fd == pipes.err_r:
            if data:
                self.err_buf += data
            else:
                self.poller.unregister(fd)
                self.exec_done = True
                self.facts.exec_error = wire.decode_error(self.err_buf)
        elif fd == pipes.status_r:
            if not data:
                self.poller.unregister(fd)
                self.init_gone = True
            self._messages(self.status.feed(data))

    def _messages(self, messages: list[wire.Status]) -> None:
        for kind, values in messages:
            if kind == wire.JOB_NS_PID:
                self.facts.job_ns_pid = values[0]
            elif kind == wire.JOB_HOST_PID:
                self.facts.job_host_pid = values[0]
            elif kind == wire.FINAL_STATUS:
                first = self.facts.main_status is None
                self.facts.main_status, self.facts.maxrss_kb = values
                if first:
                    self.cg.main_exited()  # without a PID namespace, the launcher ends the family

    def _forward(self, signum: int) -> None:
        try:
            os.kill(self.init_pid, signum)
        except ProcessLookupError:
            pass
