"""--user parsing and resolution."""

from __future__ import annotations

import pwd

import pytest

from sandbox.credentials import parse_user, resolve_user, supplementary


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nobody", ("nobody", None)),
        ("65534", ("65534", None)),
        ("alice:users", ("alice", "users")),
        ("1:2", ("1", "2")),
    ],
)
def test_parse_user(text: str, expected: tuple[str, str | None]) -> None:
    assert parse_user(text) == expected


@pytest.mark.parametrize("text", ["", ":g", "u:", "u:g:h", "4294967295"])
def test_parse_user_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid user"):
        parse_user(text)


def test_supplementary_groups() -> None:
    assert supplementary(100, [5, 100, 0, 5, 7]) == (100, 5, 7)


def test_resolve_nobody() -> None:
    pw = pwd.getpwnam("nobody")
    c = resolve_user("nobody")
    assert (c.uid, c.gid, c.name) == (pw.pw_uid, pw.pw_gid, "nobody")
    assert c.groups[0] == pw.pw_gid
    assert resolve_user(str(pw.pw_uid)) == c


def test_resolve_with_group() -> None:
    c = resolve_user("nobody:daemon")
    assert c.gid == 1 and c.groups[0] == 1


def test_resolve_refusals() -> None:
    with pytest.raises(ValueError, match="no such user"):
        resolve_user("no-such-user-xyz")
    with pytest.raises(ValueError, match="no such group"):
        resolve_user("nobody:no-such-group-xyz")
    with pytest.raises(ValueError, match="must not be root"):
        resolve_user("root")
    with pytest.raises(ValueError, match="must not be root"):
        resolve_user("0:1")
    with pytest.raises(ValueError, match="gid 0"):
        resolve_user("nobody:0")
    with pytest.raises(ValueError, match="no passwd entry"):
        resolve_user("4000000")
    assert resolve_user("4000000:4000000").groups == (4000000,)
