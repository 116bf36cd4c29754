"""The wire between the job's init and the launcher: every message on the go, error
and status pipes is encoded and decoded here, and nowhere else.

go pipe (launcher -> init): one byte, GO; EOF instead means the launcher is gone.

error pipe (init -> launcher, close-on-exec): at most one message, "CODE text", written
by the step that failed before the job's exec. A successful exec closes the pipe with
nothing in it (DaemonCore's trick), so EOF with no message means the job runs.

status pipe (init -> launcher): newline-terminated lines "KIND int int...":
  J pid            the job's PID inside the namespace
  H pid            the job's PID on the host
  X status maxrss  the main process's wait status and the largest reaped RSS (KiB)

Every message is one write(2) below PIPE_BUF, so two writers (init and the job's
process before its exec) never interleave within one; a reader may still get a message
in pieces, and the decoders below put them back together. The encoders run in the
forked child: string formatting only, no imports.
"""

from __future__ import annotations

from typing import NamedTuple

GO = b"g"

JOB_NS_PID = "J"
JOB_HOST_PID = "H"
FINAL_STATUS = "X"
# how many integers each kind carries
ARITY = {JOB_NS_PID: 1, JOB_HOST_PID: 1, FINAL_STATUS: 2}

ERROR_MAX = 4000  # bytes: below PIPE_BUF (4096), so the message is written in one piece
DEFAULT_CODE = 125  # a message whose code is unreadable still says sandbox-run failed


class WireError(ValueError):
    """A status line that is not one of the named kinds: a bug on init's side."""


class Status(NamedTuple):
    kind: str
    values: tuple[int, ...]


def encode_status(kind: str, *values: int) -> bytes:
    return (kind + "".join(f" {v}" for v in values) + "\n").encode()


def encode_error(code: int, message: str) -> bytes:
    return f"{code} {message}".encode(errors="replace")[:ERROR_MAX]


def decode_error(data: bytes) -> tuple[int, str] | None:
    """The error pipe's whole content (read to EOF) -> (exit code, message); None if empty."""
    if not data:
        return None
    code, sep, message = data.decode(errors="replace").partition(" ")
    if code.isdigit() and sep and 0 < int(code) < 256:
        return int(code), message
    return DEFAULT_CODE, data.decode(errors="replace")


def decode_status_line(line: bytes) -> Status:
    try:
        kind, *fields = line.decode().split(" ")
        values = tuple(int(f) for f in fields)
    except ValueError:
        raise WireError(f"malformed status message {line[:80]!r}") from None
    if ARITY.get(kind) != len(values):
        raise WireError(f"unknown status message {line[:80]!r}")
    return Status(kind, values)


class StatusReader:
    """Feed it what read(2) returned, in pieces of any size; it returns the complete
    messages so far and keeps the partial line for the next read."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[Status]:
        *lines, self._buf = (self._buf + data).split(b"\n")
        return [decode_status_line(line) for line in lines]

    @property
    def pending(self) -> bytes:
        """An unterminated line left at EOF (init died mid-message: it cannot, writes
        are atomic, so this is only ever empty in practice)."""
        return self._buf
