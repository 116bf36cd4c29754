"""Where the cgroup hierarchies are mounted and where this process sits in each.

Read from /proc/self/mountinfo and /proc/self/cgroup, never assumed: batch nodes
mount v1 controllers co-mounted (cpu,cpuacct) or apart, and containers show a
non-/ mount root.
"""

from __future__ import annotations

import os
from typing import NamedTuple

# The v1 controllers the launcher can use; others (cpuset, net_cls...) are left alone.
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "blkio", "freezer")
# Joined only by a job with a private /dev (its allow-list); root's launches alone.
V1_DEVICES = "devices"


class Hierarchy(NamedTuple):
    mountpoint: str
    mount_root: str  # the hierarchy path that the mountpoint shows (not always "/")
    controllers: frozenset[str]
    version: int  # 1 or 2
    own_path: str  # this process's cgroup in this hierarchy, from /proc/self/cgroup

    def directory(self, cgroup_path: str) -> str:
        """The directory of a hierarchy path, or ValueError if the mount cannot show it."""
        root = self.mount_root.rstrip("/")
        if root and not (cgroup_path == root or cgroup_path.startswith(root + "/")):
            raise ValueError(f"cgroup {cgroup_path} is outside the part of the hierarchy mounted at {self.mountpoint}")
        rel = cgroup_path[len(root) :].lstrip("/")
        return os.path.join(self.mountpoint, rel) if rel else self.mountpoint


class Layout(NamedTuple):
    kind: str  # "v1", "v2" or "hybrid"
    v1: dict[str, Hierarchy]  # controller name -> hierarchy
    unified: Hierarchy | None


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 0 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse(mountinfo: str, proc_cgroup: str) -> Layout:
    own_v1: dict[str, str] = {}
    own_v2 = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            own_v2 = parts[2]
        else:
            for ctrl in parts[1].split(","):
                own_v1[ctrl] = parts[2]
    v1: dict[str, Hierarchy] = {}
    unified = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3:
            continue
        fstype, mount_root, mountpoint = rf[0], _unescape(lf[3]), _unescape(lf[4])
        if fstype == "cgroup2" and own_v2 is not None and unified is None:
            ctrls = _read_controllers(mountpoint)
            unified = Hierarchy(mountpoint, mount_root, ctrls, 2, own_v2)
        elif fstype == "cgroup":
            opts = set(rf[2].split(","))
            ctrls = frozenset(c for c in (*V1_CONTROLLERS, V1_DEVICES) if c in opts)
            for ctrl in ctrls:
                if ctrl in own_v1 and ctrl not in v1:
                    v1[ctrl] = Hierarchy(mountpoint, mount_root, ctrls, 1, own_v1[ctrl])
    if v1 and unified is not None:
        kind = "hybrid"
    elif v1:
        kind = "v1"
    elif unified is not None:
        kind = "v2"
    else:
        kind = "none"
    return Layout(kind, v1, unified)


def _read_controllers(mountpoint: str) -> frozenset[str]:
    try:
        with open(os.path.join(mountpoint, "cgroup.controllers")) as f:
            return frozenset(f.read().split())
    except OSError:
        return frozenset()


def detect() -> Layout:
    with open("/proc/self/mountinfo") as f:
        mountinfo = f.read()
    with open("/proc/self/cgroup") as f:
        proc_cgroup = f.read()
    return parse(mountinfo, proc_cgroup)
