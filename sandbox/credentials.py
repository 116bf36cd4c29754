"""The job's user: `--user USER[:GROUP]` parsed, then resolved to numbers in the launcher.

init only ever sees numbers (it imports nothing after the fork, and NSS lookups there
could load modules or talk to a daemon); pwd and grp are imported only when --user is
given.
"""

from __future__ import annotations

from typing import NamedTuple


class Credentials(NamedTuple):
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, the primary one included
    name: str | None  # None: a number with no passwd entry


def parse_user(text: str) -> tuple[str, str | None]:
    """'USER[:GROUP]' -> (USER, GROUP or None). Pure: the option's converter."""
    user, sep, group = text.partition(":")
    if not user or (sep and not group) or ":" in group:
        raise ValueError(f"invalid user {text!r}: expected USER or USER:GROUP (names or numbers)")
    for part in (user, group):
        if part.isdigit() and int(part) >= 2**32 - 1:
            raise ValueError(f"invalid user {text!r}: {part} is not a valid id")
    return user, group or None


def check_user(text: str) -> str:
    parse_user(text)
    return text


def resolve_user(text: str) -> Credentials:
    """Numbers for `text`, or ValueError with a one-line message."""
    import grp
    import os
    import pwd

    user, group = parse_user(text)
    entry: pwd.struct_passwd | None
    if user.isdigit():
        uid = int(user)
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            entry = None
    else:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise ValueError(f"--user: no such user {user!r}") from None
        uid = entry.pw_uid
    if uid == 0:
        # Without capabilities root still owns most of the host's files: running a job
        # as root is what not giving --user means, and is not isolation.
        raise ValueError("--user: the job's user must not be root")
    if group is None:
        if entry is None:
            raise ValueError(f"--user: uid {uid} has no passwd entry: name its group too ({uid}:GROUP)")
        gid = entry.pw_gid
    elif group.isdigit():
        gid = int(group)
    else:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"--user: no such group {group!r}") from None
    if gid == 0:
        raise ValueError("--user: the job's group must not be root's (gid 0)")
    groups = os.getgrouplist(entry.pw_name, gid) if entry is not None else [gid]
    return Credentials(uid, gid, supplementary(gid, groups), entry.pw_name if entry else None)


def supplementary(gid: int, groups: list[int]) -> tuple[int, ...]:
    """The groups the job gets: the user's, primary first, without duplicates, and never
    gid 0 (membership in root's group would open root's group-readable files). Pure."""
    out = [gid]
    for g in groups:
        if g not in out and g != 0:
            out.append(g)
    return tuple(out)
