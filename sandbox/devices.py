"""The device allow-list of a job with a private /dev, as data: what its cgroup lets
it open or mknod. The private /dev is a nodev tmpfs, but a root job may mount a tmpfs
of its own and mknod any host device there; the devices controller refuses the open."""

from __future__ import annotations

from .limits import Rule

PTS_MAJOR = 136  # Unix98 pty slaves: every terminal of the job's own devpts instance


# the private /dev's own nodes beside the ones bound from the host: ptmx of its devpts
BASE = (Rule("c", 5, 2), Rule("c", PTS_MAJOR, None))


def allow_list(nodes: tuple[tuple[bool, int, int], ...]) -> tuple[Rule, ...]:
    """The rules for the host nodes a private /dev binds ((is_block, major, minor) each)
    and its own pts and ptmx: everything else is denied."""
    rules = [Rule("b" if block else "c", major, minor) for block, major, minor in nodes]
    return tuple(dict.fromkeys([*rules, *BASE]))
