"""Starting the job's init: the pipes between us, the signal mask, the PID namespace,
the fork, and the go once init is where it must be (the privilege decides where)."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, NamedTuple

from . import init, wire
from . import syscalls as sc

if TYPE_CHECKING:
    from .cgroups import JobCgroup
    from .privilege import Privilege


class Pipes(NamedTuple):
    err_r: int  # the exec handshake: EOF when init's exec succeeded, else the error
    err_w: int
    status_r: int  # init's status messages (job PIDs, the main process's status)
    status_w: int
    go_r: int  # init waits on it until it is in the job's cgroup
    go_w: int
    wake_r: int  # the signal wakeup pipe: the launcher's poll wakes on a signal
    wake_w: int

    def ours(self) -> tuple[int, ...]:
        """The ends the launcher keeps once init runs."""
        return (self.err_r, self.status_r, self.go_w, self.wake_r, self.wake_w)


def open_pipes() -> Pipes:
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    return Pipes(err_r, err_w, status_r, status_w, go_r, go_w, wake_r, wake_w)


def fork_init(cfg: init.InitConfig, privilege: Privilege) -> int:
    """Fork init as PID 1 of a new PID namespace; it waits for go."""
    # Signals that arrive from here until the handlers exist are held, not lost:
    # blocked across the fork, they stay blocked in init, which waits for them.
    signal.pthread_sigmask(signal.SIG_BLOCK, init.FORWARDED)
    # A caller that ignores SIGCHLD (a daemon that never waits) would have the kernel reap
    # init and the job at once: no exit status for us or for init, whose wait never ends.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # After this, our next child is PID 1 of a new PID namespace. A launcher runs
    # one sandbox, so nothing else of ours is ever forked into it.
    if privilege.namespaces:
        privilege.before_pid_namespace()  # without root: the user namespace
        sc.unshare(sc.CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        try:
            init.main(cfg)  # never returns
        finally:
            os._exit(125)  # whatever happens, the child never runs the launcher's code
    return pid


def go(pid: int, pipes: Pipes, join_fds: list[int], cg: JobCgroup, privilege: Privilege) -> None:
    """Hand init over to its cgroup, let it go, and start forwarding signals to it.
    On failure init has been told to stop (EOF on go) and reaped."""
    for fd in (*join_fds, pipes.err_w, pipes.status_w, pipes.go_r):
        os.close(fd)
    try:
        privilege.hand_over(cg, pid)
    except BaseException:
        os.close(pipes.go_w)  # init reads EOF and exits
        os.waitpid(pid, 0)
        raise
    os.write(pipes.go_w, wire.GO)
    for sig in init.FORWARDED:
        # A signal the caller ignores (nohup's SIGHUP, a background shell's SIGINT) stays
        # ignored, as it would for the job run directly: the job inherits the same SIG_IGN
        # through exec, and a SIGTERM its caller chose to ignore starts no kill grace here.
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _noop_handler)
    signal.set_wakeup_fd(pipes.wake_w)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, init.FORWARDED)


# Sent to us by the kernel when our parent dies (--die-with-parent): a signal nothing
# else sends, read from the wakeup pipe like the forwarded ones.
PARENT_DEATH_SIGNAL = signal.SIGRTMIN + 3


def watch_parent(parent_pid: int) -> None:
    """--die-with-parent, bubblewrap's way: the kernel signals us when our parent dies.
    It may have died before we asked: then the signal is sent now."""
    signal.signal(PARENT_DEATH_SIGNAL, _noop_handler)
    sc.set_parent_death_signal(PARENT_DEATH_SIGNAL)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), PARENT_DEATH_SIGNAL)


def _noop_handler(_signum: int, _frame: object) -> None:
    """The wakeup pipe carries the signal number; the handler only has to exist."""
