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

if TYPE_CHECKING:
    from collections.abc import Callable

    from .cgroups import JobCgroup
    from .spawn import Pipes


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
    ) -> None:
        self.facts = facts
        self.cg = cg
        self.init_pid = init_pid
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.on_started = on_started

    def run(self, pipes: Pipes) -> None:
        err_r, status_r, wake_r = pipes.err_r, pipes.status_r, pipes.wake_r
        facts = self.facts
        poller = select.poll()
        for fd in (err_r, status_r, wake_r):
            poller.register(fd, select.POLLIN)
        err_buf = b""
        status = wire.StatusReader()
        exec_done = False
        init_gone = False
        deadline = time.monotonic() + self.timeout if self.timeout else None
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
                facts.timed_out = True
                self._forward(signal.SIGTERM)
                kill_at = now + self.kill_grace
            if kill_at is not None and now >= kill_at:
                kill_at = None
                self.cg.kill()  # init included: its status pipe closes, ending the loop
            for fd, _ev in events:
                if fd == wake_r:
                    for signum in os.read(wake_r, 64):
                        self._forward(signum)
                        if signum == signal.SIGTERM and kill_at is None:
                            kill_at = now + self.kill_grace
                    continue
                data = os.read(fd, 4096)
                if fd == err_r:
                    if data:
                        err_buf += data
                    else:
                        poller.unregister(err_r)
                        exec_done = True
                        facts.exec_error = wire.decode_error(err_buf)
                elif fd == status_r:
                    if not data:
                        poller.unregister(status_r)
                        init_gone = True
                    self._messages(status.feed(data))
            if exec_done and not facts.started and facts.exec_error is None and facts.job_ns_pid is not None:
                facts.started = True
                self.on_started()

    def _messages(self, messages: list[wire.Status]) -> None:
        for kind, values in messages:
            if kind == wire.JOB_NS_PID:
                self.facts.job_ns_pid = values[0]
            elif kind == wire.JOB_HOST_PID:
                self.facts.job_host_pid = values[0]
            elif kind == wire.FINAL_STATUS:
                self.facts.main_status, self.facts.maxrss_kb = values

    def _forward(self, signum: int) -> None:
        try:
            os.kill(self.init_pid, signum)
        except ProcessLookupError:
            pass
