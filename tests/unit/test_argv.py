"""The click-free fast parser (argv.fast_parse) must agree with click (cli.run_command)
on every argv it accepts: same options, same values, same command. It may give up
(None) on anything, leaving the decision and the error message to click."""

from __future__ import annotations

import os
from typing import Any

import click
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sandbox.argv import fast_parse
from sandbox.cli import run_command
from sandbox.options import RUN_OPTIONS, Option, defaults

# Values per option, valid and invalid: the table's converters decide which is which.
_SAMPLES: dict[str, list[str]] = {
    "mem": ["2G", "512M", "1.5G", "100", "0", "1.5", "-1", "abc", "", "2 G", "8192P", "--stats"],
    "swap": ["1G", "0", "x"],
    "pids": ["20", "0", "-5", "1.5", "x", "99999999"],
    "cpus": ["0.5", "2", "0", "nan", "inf", "-1", "x", "1e1"],
    "tmp_size": ["64M", "0", "1.5", "x"],
    "name": ["job-1", "a.b_c", "-bad", ".hidden", "a/b", "", "x" * 65, "--", "ünï"],
    "cgroup_parent": ["/batch/slot1", "relative", "", "-v", "--mem"],
    "timeout": ["10", "0.5", "0", "-1", "x", "inf"],
    "kill_grace": ["1", "0", "x"],
    "report_path": ["/tmp/r.json", "", "-", "--debug"],
    "report_fd": ["1", "2", "9999", "-1", "x", ""],
    "cwd": ["/", "/nonexistent", "", "--"],
}
_UNKNOWN = ["--memory", "--me", "-m", "-x", "--help", "-h", "--version", "--no-stats", "-vv", "---", "--mem-"]
_COMMAND_WORDS = ["true", "ls", "-l", "--mem", "2G", "--", "-", "--stats", "--help", "sh", "-c", "echo $x", ""]


def _option_tokens(o: Option) -> st.SearchStrategy[list[str]]:
    flag = st.sampled_from(o.flags)
    if o.is_flag:
        return st.one_of(flag.map(lambda f: [f]), flag.map(lambda f: [f + "=1"]), flag.map(lambda f: [f + "="]))
    value = st.one_of(st.sampled_from(_SAMPLES.get(o.dest, ["x"])), st.text(max_size=6))
    separate = st.tuples(flag, value).map(lambda t: [t[0], t[1]])
    inline = st.tuples(flag, value).map(lambda t: [f"{t[0]}={t[1]}"])
    missing = flag.map(lambda f: [f])  # value missing when it ends the argv, else takes the next word
    return st.one_of(separate, separate, inline, missing)


_ANY_OPTION = st.one_of(
    *[_option_tokens(o) for o in RUN_OPTIONS],
    st.sampled_from(_UNKNOWN).map(lambda u: [u]),
)

ARGVS = st.builds(
    lambda opts, dashdash, command: [*(t for group in opts for t in group), *(["--"] if dashdash else []), *command],
    st.lists(_ANY_OPTION, max_size=6),
    st.booleans(),
    st.lists(st.one_of(st.sampled_from(_COMMAND_WORDS), st.text(max_size=4)), max_size=3),
)


def click_parse(argv: list[str]) -> dict[str, Any] | None:
    """What click makes of argv (its params, command included), or None if it refuses."""
    try:
        ctx = run_command.make_context("sandbox-run", list(argv))
    except (click.UsageError, click.exceptions.Exit):
        return None
    return dict(ctx.params)


def check_agree(argv: list[str]) -> bool:
    """Assert agreement; return whether the fast parser accepted the argv."""
    fast = fast_parse(list(argv))
    if fast is None:
        return False
    opts, command = fast
    slow = click_parse(argv)
    assert slow is not None, f"fast_parse accepted {argv!r}, click refuses it"
    assert slow.pop("command") == command, argv
    assert set(slow) == set(opts), argv
    for key, value in opts.items():
        assert slow[key] == value or (slow[key] is None and value is None), (argv, key, slow[key], value)
    return True


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ARGVS)
@example(["--mem", "2G", "--", "ps", "faux"])
@example(["--cgroup-parent", "-v", "true"])
@example(["--cgroup-parent", "--mem", "true"])
@example(["--report", "-", "true"])
@example(["-v", "--stats", "--debug", "cmd", "--mem", "1G"])
@example(["--mem=2G", "-", "x"])
@example(["--chdir", "", "true"])
@example(["--", "--help"])
@example(["--", ""])
def test_fast_parse_agrees_with_click(argv: list[str]) -> None:
    check_agree(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--mem", "2G", "--", "ps", "faux"],
        ["--mem=2G", "ps"],
        ["--mem", "1G", "--pids", "20", "--cpus", "0.5", "--tmp-size", "64M", "--swap", "1G", "--", "x"],
        ["--name", "job-1", "--cgroup-parent", "/batch", "--timeout", "5", "--kill-grace", "1", "x"],
        ["--report", "/tmp/r.json", "--report-fd", "1", "--chdir", "/", "--stats", "-v", "--debug", "x", "-v"],
        ["-", "x"],
        ["--", "--", "x"],
        ["true"],
    ],
)
def test_common_command_lines_take_the_fast_path(argv: list[str]) -> None:
    """The launch-speed point of the fast parser: what starters pass never needs click."""
    assert check_agree(argv)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--"],
        ["--mem", "2G"],
        ["--mem", "2G", "--"],
        ["--mem"],
        ["--mem", "lots", "x"],
        ["--mem=", "x"],
        ["--stats=1", "x"],
        ["--help"],
        ["--version"],
        ["-h", "x"],
        ["--memory", "1G", "x"],
        ["--me", "1G", "x"],
        ["-vv", "x"],
        ["--report-fd", "9999", "x"],
        ["--name", "a/b", "x"],
        ["--", ""],
    ],
)
def test_gives_up_where_click_must_speak(argv: list[str]) -> None:
    assert fast_parse(argv) is None


def test_fast_parse_values_are_converted() -> None:
    parsed = fast_parse(["--mem", "1.5G", "--pids", "7", "--cpus", "0.5", "--timeout=2.5", "--", "a", "b"])
    assert parsed is not None
    opts, command = parsed
    assert command == ("a", "b")
    assert opts == {**defaults(), "mem": 3 << 29, "pids": 7, "cpus": 0.5, "timeout": 2.5}


def test_every_table_option_is_a_click_option() -> None:
    params = {p.name: p for p in run_command.params}
    for o in RUN_OPTIONS:
        assert o.dest in params, o.dest
        assert set(o.flags) <= set(params[o.dest].opts), o.dest


def test_report_fd_must_be_open() -> None:
    r, w = os.pipe()
    try:
        assert check_agree(["--report-fd", str(w), "x"])
    finally:
        os.close(r)
        os.close(w)
    assert fast_parse(["--report-fd", str(w), "x"]) is None
    assert click_parse(["--report-fd", str(w), "x"]) is None
