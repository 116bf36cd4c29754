"""The device allow-list of a job with a private /dev, as data: what its cgroup lets
it open or mknod. The private /dev is a nodev tmpfs, but a root job may mount a tmpfs
of its own and mknod any host device there; the devices controller refuses the open."""

from __future__ import annotations

from .limits import Rule

ACCESS = "rwm"  # read, write, mknod: the letters of devices.allow, in its order
PTS_MAJOR = 136  # Unix98 pty slaves: every terminal of the job's own devpts instance


# the private /dev's own nodes beside the ones bound from the host: ptmx of its devpts
BASE = (Rule("c", 5, 2), Rule("c", PTS_MAJOR, None))


def allow_list(nodes: tuple[tuple[bool, int, int, str], ...]) -> tuple[Rule, ...]:
    """The rules for the host nodes a private /dev binds ((is_block, major, minor, access)
    each) and its own pts and ptmx: everything else is denied."""
    rules = [Rule("b" if block else "c", major, minor, access) for block, major, minor, access in nodes]
    return tuple(dict.fromkeys([*rules, *BASE]))


def parse_device(text: str) -> tuple[str, str]:
    """/dev/PATH[:ACCESS] as (path, access), ACCESS letters of r, w, m (default rwm),
    written in rwm order. The part after the last ':' is ACCESS when it is letters, so a
    path with colons (/dev/disk/by-path/pci-0000:00:1f.2-ata-1) stays a path."""
    path, sep, access = text.rpartition(":")
    if sep and not access:
        raise ValueError(f"invalid --device {text!r}: ACCESS is letters of r (read), w (write), m (mknod)")
    if not sep or not access.isalpha():
        path, access = text, ACCESS
    if not path.startswith("/dev/") or path == "/dev/":
        raise ValueError(f"invalid --device {text!r}: expected /dev/PATH or /dev/PATH:ACCESS")
    if set(access) - set(ACCESS) or len(set(access)) != len(access):
        raise ValueError(f"invalid --device {text!r}: ACCESS is letters of r (read), w (write), m (mknod)")
    return path, "".join(c for c in ACCESS if c in access)


def merge(devices: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Path -> access, in order of first mention; a path named twice gets both rights."""
    out: dict[str, str] = {}
    for path, access in devices:
        had = out.get(path, "")
        out[path] = "".join(c for c in ACCESS if c in had or c in access)
    return out
