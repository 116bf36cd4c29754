"""The launcher's messages on stderr, written so that they can never block it.

A caller's stderr may be a pipe that nobody reads any more (the job shares it and
filled it): a blocking write there would hang the launcher forever after its job is
gone. Setting O_NONBLOCK is no way out, since the flag belongs to the open file
description that the caller and the job share. Instead each message is written only
when poll(2) says the descriptor takes it now; otherwise it is dropped and the report
notes it (messages_dropped).
"""

from __future__ import annotations

import os
import select

# A pipe that polls writable has a free buffer page: a write of at most this many bytes
# then completes at once (pipe(7): writes of up to PIPE_BUF bytes are atomic).
PIPE_BUF = 4096


def writable(fd: int = 2) -> bool:
    """Would a short write to `fd` complete now?"""
    poller = select.poll()
    try:
        poller.register(fd, select.POLLOUT)
        events = poller.poll(0)
    except (OSError, ValueError):
        return False
    return any(ev & select.POLLOUT and not ev & (select.POLLERR | select.POLLNVAL) for _fd, ev in events)


def say(message: str, fd: int = 2) -> bool:
    """Write 'sandbox-run: MESSAGE' if it can be written without waiting; False if it
    was dropped (or only partly written)."""
    data = f"sandbox-run: {message}\n".encode(errors="replace")
    try:
        while data:
            if not writable(fd):
                return False
            n = os.write(fd, data[:PIPE_BUF])
            data = data[n:]
    except OSError:  # closed, a broken pipe, ...: not the launcher's failure
        return False
    return True
