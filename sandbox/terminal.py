"""A pseudo-terminal of the job's own, relayed to the caller's terminal.

A job must never hold the caller's terminal (TIOCSTI, or the terminal's foreground
process group, reach the caller's shell), yet an interactive job needs a terminal of
its own for job control. As `systemd-run --pty` and `docker run -t` do, the launcher
opens a pty pair before the fork; the job's process makes the slave its controlling
terminal on the descriptors of 0-2 that were terminals; the launcher puts the
caller's terminal in raw mode and copies bytes both ways in its poll loop, and window
size changes (SIGWINCH) to the pty. Only when a terminal is involved (or --pty).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import termios
import tty
from typing import Any

_STD = (0, 1, 2)


def _winsize(fd: int) -> bytes | None:
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None


class Relay:
    """Made before the fork (`open`); `start` after it in the launcher, `finish` at the end."""

    def __init__(self, master: int, slave: int, replace: tuple[int, ...], caller_tty: int | None) -> None:
        self.master, self.slave, self.replace, self.caller_tty = master, slave, replace, caller_tty
        self._saved: list[Any] | None = None
        self._old_winch: Any = None
        self._started = False

    @classmethod
    def open(cls, force: bool | None) -> Relay | None:
        """force None: a pty when any of fds 0-2 is a terminal; True/False: --pty/--no-pty."""
        ttys = tuple(fd for fd in _STD if os.isatty(fd))
        if force is False or (force is None and not ttys):
            return None
        master, slave = os.openpty()
        os.set_blocking(master, True)
        for fd in (master, slave):
            os.set_inheritable(fd, False)
        caller = ttys[0] if ttys else None
        if caller is not None:
            # the job's terminal starts as the caller's is: modes and size
            with contextlib.suppress(OSError):
                termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(caller))
            size = _winsize(caller)
            if size is not None:
                fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
        return cls(master, slave, ttys or _STD, caller)

    def start(self) -> None:
        """In the launcher, after the fork: raw mode for the caller's terminal, SIGWINCH
        through the launcher's wakeup descriptor. The bytes move in the launcher's own
        poll loop (`poll_fds`, `ready`): after unshare(CLONE_NEWPID) it cannot start a
        thread, and a second process would land in the job's PID namespace."""
        self._started = True
        os.close(self.slave)  # the job's copy stays; EIO on the master then means it is gone
        if self.caller_tty is not None and 0 in self.replace:
            with contextlib.suppress(OSError):
                self._saved = termios.tcgetattr(0)
                tty.setraw(0)
        if self.caller_tty is not None:
            self._old_winch = signal.signal(signal.SIGWINCH, lambda _s, _f: None)

    def poll_fds(self) -> tuple[int, ...]:
        return (self.master, 0) if 0 in self.replace else (self.master,)

    def resize(self) -> None:
        size = _winsize(self.caller_tty) if self.caller_tty is not None else None
        if size is not None:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)  # the kernel signals the job

    def ready(self, fd: int) -> bool:
        """Move what `fd` (one of poll_fds) has; False once it is done for good."""
        if fd == self.master:
            data = _read(self.master)
            if data:
                self._out(data)
            return bool(data)
        data = _read(0)
        if data:
            _write_all(self.master, data)
            return True
        # the caller's input ended: the job reads EOF (VEOF, at the start of a line)
        with contextlib.suppress(OSError):
            _write_all(self.master, termios.tcgetattr(self.master)[6][termios.VEOF])
        return False

    def _out(self, data: bytes) -> None:
        out = next((fd for fd in (1, 2) if fd in self.replace), self.caller_tty)
        if out is not None:
            _write_all(out, data)

    def finish(self) -> None:
        """Drain the job's last output, give the caller's terminal back as it was."""
        if self._started:
            poller = select.poll()
            poller.register(self.master, select.POLLIN)
            while poller.poll(200):
                data = _read(self.master)
                if not data:
                    break
                self._out(data)
        if self._saved is not None:
            with contextlib.suppress(OSError):
                termios.tcsetattr(0, termios.TCSADRAIN, self._saved)
        if self._old_winch is not None:
            signal.signal(signal.SIGWINCH, self._old_winch)
        for fd in (self.master, *(() if self._started else (self.slave,))):
            with contextlib.suppress(OSError):
                os.close(fd)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError as e:  # EIO on a master: every slave descriptor is closed
        if e.errno != errno.EIO:
            raise
        return b""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except OSError as e:
            if e.errno == errno.EIO:
                return
            raise
        view = view[n:]

