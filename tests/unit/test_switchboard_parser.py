"""The switchboard's request parser: everything refused is refused with Refusal and
nothing else (a crash of trusted code is a bug, and could leave work half-done)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .switchboard_module import sb


def req(**fields: object) -> bytes:
    return json.dumps({"version": 1, **fields}).encode()


def test_valid_create() -> None:
    out = sb.parse_request(req(op="create", name="job.1", limits={"memory": 1 << 26, "cpus": 0.5}))
    assert out == {"op": "create", "name": "job.1",
                   "limits": {"memory": 1 << 26, "cpus": 0.5, "pids": None, "swap": None}}


def test_valid_attach_and_destroy() -> None:
    assert sb.parse_request(req(op="attach", name="a", pid=1234))["pid"] == 1234
    assert sb.parse_request(req(op="destroy", name="a")) == {"op": "destroy", "name": "a"}


@pytest.mark.parametrize(
    "raw",
    [
        b"", b"{", b'{"version": 1, "op": "create", "name": "x"', b"[]", b"null", b"\xff\xfe",
        b"[" * 5000, b'{"version": 1, "version": 1, "op": "destroy", "name": "x"}',
        req(version=2, op="destroy", name="x"), req(op="exec", name="x"), req(op="destroy"),
        json.dumps({"version": True, "op": "destroy", "name": "x"}).encode(),
        req(op="destroy", name="a/b"), req(op="destroy", name=".."), req(op="destroy", name="a\0b"),
        req(op="destroy", name="x" * 65), req(op="destroy", name="-x"), req(op="destroy", name=""),
        req(op="destroy", name="x", extra=1), req(op="attach", name="x", pid=-1),
        req(op="attach", name="x", pid=True), req(op="attach", name="x", pid=1),
        req(op="create", name="x", limits={"memory": -1}), req(op="create", name="x", limits={"memory": 0}),
        req(op="create", name="x", limits={"memory": 1.5}), req(op="create", name="x", limits={"pids": 1 << 40}),
        req(op="create", name="x", limits={"cpus": 0}), req(op="create", name="x", limits={"cpus": "1"}),
        req(op="create", name="x", limits={"disk": 1}), req(op="create", name="x", limits=[]),
        b'{"version": 1, "op": "create", "name": "x", "limits": {"cpus": NaN}}',
        b'{"version": 1, "op": "create", "name": "x", "limits": {"cpus": 1e400}}',
        req(op="create", name="x", execute_dir="relative"), req(op="create", name="x", execute_dir="/a/../b"),
        req(op="create", name="x", execute_dir="/a//b"), req(op="create", name="x", execute_dir="/a/\0"),
        b"x" * (sb.MAX_REQUEST + 1),
    ],
)
def test_refused(raw: bytes) -> None:
    with pytest.raises(sb.Refusal):
        sb.parse_request(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "version": st.sampled_from([1, 2, 0, True, "1", None]),
        "op": st.sampled_from(["create", "attach", "destroy", "exec", "", None]),
        "name": st.text(max_size=70) | json_values,
        "pid": st.integers() | json_values,
        "limits": st.dictionaries(st.sampled_from(["memory", "swap", "pids", "cpus", "x"]), json_values, max_size=5)
        | json_values,
        "execute_dir": st.text(max_size=40) | json_values,
    },
)


def _only_refusal(raw: bytes) -> None:
    try:
        out = sb.parse_request(raw)
    except sb.Refusal:
        return
    assert out["op"] in ("create", "attach", "destroy")
    sb.check_name(out["name"])


@settings(max_examples=400, deadline=None)
@given(fields)
def test_property_structured_requests(fields: dict[str, object]) -> None:
    _only_refusal(json.dumps(fields).encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000))
def test_property_arbitrary_bytes(raw: bytes) -> None:
    _only_refusal(raw)


def _lines(data: bytes) -> list[bytes]:
    import os

    r, w = os.pipe()
    os.write(w, data)  # far below a pipe's capacity
    os.close(w)
    try:
        out = sb.Lines(r)
        return list(iter(out.line, None))
    finally:
        os.close(r)


def test_session_lines_are_bounded() -> None:
    big = b"x" * (3 * sb.MAX_REQUEST)
    got = _lines(b"a\n" + big + b"\nb\n" + big + b"c")
    assert got == [b"a\n", big[:sb.MAX_REQUEST + 1], b"b\n", big[:sb.MAX_REQUEST + 1]]
    with pytest.raises(sb.Refusal, match="larger than"):
        sb.parse_request(got[1])
    assert _lines(b"") == [] and _lines(b"last") == [b"last"]


def test_only_the_exact_opener_opens_a_session() -> None:
    assert sb.opens_session(b'{"version": 1, "op": "session"}\n')
    for raw in (b'{"version": true, "op": "session"}', b'{"version": 1, "op": "session", "name": "x"}',
                b'{"version": 1, "op": "create", "name": "x"}', b"\xff", b"[]"):
        assert not sb.opens_session(raw), raw


def test_a_session_binds_its_one_sandbox() -> None:
    s = sb.Session()
    s.check({"op": "create", "name": "a"})
    s.done({"op": "create", "name": "a"})
    for name in ("a", "b"):
        with pytest.raises(sb.Refusal, match="one sandbox per session"):
            s.check({"op": "create", "name": name})
    s.check({"op": "destroy", "name": "b"})  # another of the caller's: the op's own checks decide
    s.done({"op": "destroy", "name": "b"})
    assert s.live
    s.done({"op": "destroy", "name": "a"})
    assert not s.live and s.made == "a"
