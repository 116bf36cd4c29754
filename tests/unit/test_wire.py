"""The wire between init and the launcher (sandbox/wire.py) and init's pre-exec step
table: round trips, messages split across reads, garbage, and each step's exit code."""

from __future__ import annotations

import errno
import inspect
import os

import pytest

from sandbox import init, wire
from sandbox.errors import EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_SANDBOX_FAILED


@pytest.mark.parametrize(
    "kind,values",
    [(wire.JOB_NS_PID, (2,)), (wire.JOB_HOST_PID, (4194303,)), (wire.FINAL_STATUS, (0x0900, 123456))],
)
def test_status_round_trip(kind: str, values: tuple[int, ...]) -> None:
    reader = wire.StatusReader()
    assert reader.feed(wire.encode_status(kind, *values)) == [wire.Status(kind, values)]
    assert reader.pending == b""


def test_status_split_at_every_byte() -> None:
    stream = b"".join(
        [wire.encode_status(wire.JOB_NS_PID, 2), wire.encode_status(wire.JOB_HOST_PID, 777),
         wire.encode_status(wire.FINAL_STATUS, 256, 4096)]
    )
    for cut in range(len(stream) + 1):
        reader = wire.StatusReader()
        got = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert [m.kind for m in got] == ["J", "H", "X"], cut
        assert got[2].values == (256, 4096)
    reader = wire.StatusReader()
    got = [m for b in stream for m in reader.feed(bytes([b]))]  # one byte per read
    assert [m.values for m in got] == [(2,), (777,), (256, 4096)]


def test_status_partial_line_is_kept_until_its_end() -> None:
    reader = wire.StatusReader()
    assert reader.feed(b"X 25") == []
    assert reader.pending == b"X 25"
    assert reader.feed(b"6 10\n") == [wire.Status("X", (256, 10))]
    assert reader.feed(b"") == [] and reader.pending == b""  # EOF


@pytest.mark.parametrize(
    "line",
    [b"Q 1\n", b"J\n", b"J 1 2\n", b"X 1\n", b"J one\n", b"\n", b"J  1\n", b"\xff\xfe\n", b"j 1\n"],
)
def test_status_garbage_is_refused(line: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.StatusReader().feed(line)


@pytest.mark.parametrize(
    "code,message",
    [(125, "cannot set up mounts: No such file or directory"), (127, "cannot execute 'nope': x y  z"), (126, "")],
)
def test_error_round_trip(code: int, message: str) -> None:
    assert wire.decode_error(wire.encode_error(code, message)) == (code, message)


def test_error_empty_means_the_exec_worked() -> None:
    assert wire.decode_error(b"") is None


def test_error_is_cut_below_pipe_buf_and_still_decodes() -> None:
    data = wire.encode_error(126, "é" * 5000)  # two bytes each: the cut may split one
    assert len(data) <= wire.ERROR_MAX < 4096
    code, message = wire.decode_error(data) or (0, "")
    assert code == 126 and message.startswith("éé")


@pytest.mark.parametrize("data", [b"oops", b"nocode here", b"999 too big", b"0 zero", b"-1 neg", b"\xff\xfe 1"])
def test_error_garbage_is_a_sandbox_failure_with_all_its_text(data: bytes) -> None:
    code, message = wire.decode_error(data) or (0, "")
    assert code == EXIT_SANDBOX_FAILED
    assert message == data.decode(errors="replace")


def test_error_split_across_reads_is_one_message() -> None:
    data = wire.encode_error(127, "cannot execute 'x': No such file or directory")
    buf = b""
    for b in data:
        buf += bytes([b])
    assert wire.decode_error(buf) == (127, "cannot execute 'x': No such file or directory")


# -- the step table ---------------------------------------------------------------------


def _oserror(num: int) -> OSError:
    return OSError(num, os.strerror(num))


def test_every_step_but_exec_fails_with_125() -> None:
    assert init.STEPS[-1] is init.EXECUTE
    for step in init.STEPS[:-1]:
        for num in (errno.ENOENT, errno.EACCES, errno.EPERM):
            assert step.failure(_oserror(num))[0] == EXIT_SANDBOX_FAILED, step


def test_exec_codes_come_from_the_step() -> None:
    step = init.EXECUTE.about("/no/such")
    assert step.failure(_oserror(errno.ENOENT)) == (
        EXIT_NOT_FOUND, "cannot execute '/no/such': No such file or directory")
    assert step.failure(_oserror(errno.ENOTDIR))[0] == EXIT_NOT_FOUND
    assert step.failure(_oserror(errno.EACCES)) == (EXIT_CANNOT_EXECUTE, "cannot execute '/no/such': Permission denied")
    assert step.failure(_oserror(errno.ENOEXEC))[0] == EXIT_CANNOT_EXECUTE
    # not an OSError (a bug): sandbox-run failed, whatever the step
    assert step.failure(RuntimeError("x")) == (EXIT_SANDBOX_FAILED, "cannot execute '/no/such': RuntimeError: x")


def test_messages_name_the_step() -> None:
    assert init.CHDIR.about("/work/dir").failure(_oserror(errno.ENOENT)) == (
        125, "cannot change directory to '/work/dir': No such file or directory")
    assert init.HOSTNAME.failure(_oserror(errno.EPERM)) == (125, "cannot set the hostname: Operation not permitted")
    assert init.LOOPBACK.failure(ValueError("netlink")) == (
        125, "cannot bring up the loopback interface: ValueError: netlink")
    # the mount plan's errors already say which mount failed (SetupOp.describe)
    assert init.MOUNTS.failure(OSError(errno.ENOENT, "bind /a on /b: No such file or directory")) == (
        125, "bind /a on /b: No such file or directory")


def test_step_messages_survive_the_wire() -> None:
    code, message = init.EXECUTE.about("prog").failure(_oserror(errno.ENOENT))
    assert wire.decode_error(wire.encode_error(code, message)) == (
        127, "cannot execute 'prog': No such file or directory")


def test_no_step_is_matched_by_its_text() -> None:
    source = inspect.getsource(init)
    assert "step ==" not in source and "step.startswith" not in source
