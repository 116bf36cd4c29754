"""Is the launcher's own cgroup v2 delegated to its caller?

Delegation is a kernel fact, not a setting: systemd's user@UID.service (Delegate=yes) or
a batch system hands a user a cgroup by chowning its directory and the three files that
govern its subtree (cgroup.procs: moving processes in; cgroup.subtree_control: enabling
controllers for its children; cgroup.threads) to them. With those, the user may make
child cgroups there, enable the controllers its parent gave it, set their limits and
move their own processes between them, with no help from root. The check is split in a
pure part over what was read (unit-tested) and the reading.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

from ..limits import Limits
from .base import read_text
from .layout import Layout, detect

# The files whose owner decides (with the directory itself, named "" here).
DELEGATED_FILES = ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")
# Without these the mode would promise what it cannot keep (--mem, --pids); cpu is
# optional: without it only --cpus is refused (cpu.stat's figures exist without it).
REQUIRED_CONTROLLERS = ("memory", "pids")
# Which controller each limit needs.
LIMIT_CONTROLLERS = (("--mem", "memory"), ("--swap", "memory"), ("--pids", "pids"), ("--cpus", "cpu"))


class Delegation(NamedTuple):
    directory: str  # the delegated cgroup: the sandboxes are made in it
    controllers: frozenset[str]  # what it offers its children (its cgroup.controllers)

    def unoffered(self, limits: Limits) -> tuple[str, ...]:
        """The options asked for whose controller this cgroup does not offer."""
        asked = {"--mem": limits.memory_bytes, "--swap": limits.swap_bytes, "--pids": limits.pids,
                 "--cpus": limits.cpus}
        return tuple(flag for flag, ctrl in LIMIT_CONTROLLERS
                     if asked[flag] is not None and ctrl not in self.controllers)


def check(uid: int, kind: str, directory: str | None, owners: Mapping[str, int | None],
          controllers_text: str | None, *, writable: bool = True) -> Delegation | str:
    """The delegation of `directory` (the caller's own cgroup v2 directory) to `uid`, or
    why there is none. `kind` is the layout's; `owners` maps "" (the directory) and each
    of DELEGATED_FILES to its owner's uid (None: missing); `controllers_text` is its
    cgroup.controllers; `writable` whether its mount lets us write (a job of a delegated
    sandbox sees it read-only: a launch there is not delegated). Pure: unit-tested."""
    if kind != "v2" or directory is None:
        if kind == "hybrid":
            return "the controllers are in cgroup v1 hierarchies, which only root can write"
        return "no cgroup v2 hierarchy holds the controllers"
    for name in ("", *DELEGATED_FILES):
        owner = owners.get(name)
        if owner != uid:
            path = os.path.join(directory, name) if name else directory
            whose = "missing" if owner is None else f"owned by uid {owner}"
            return f"the cgroup {path} is not delegated to uid {uid} ({whose})"
    if not writable:
        return f"the cgroup {directory} is on a read-only mount (inside a sandbox?)"
    offered = frozenset((controllers_text or "").split())
    missing = [c for c in REQUIRED_CONTROLLERS if c not in offered]
    if missing:
        return f"the delegated cgroup {directory} offers no {', '.join(missing)} controller to its children"
    return Delegation(directory, offered)


def own_directory(layout: Layout) -> str | None:
    """The cgroup v2 directory the sandboxes would be made in: the launcher's own, or,
    when it was born in another launcher's leaf, the leaf's parent (as V2Part nests)."""
    from .v2 import LEAF

    h = layout.unified
    if h is None:
        return None
    try:
        directory = h.directory(h.own_path)
    except ValueError:
        return None
    return os.path.dirname(directory) if os.path.basename(directory) == LEAF else directory


def _owner(path: str) -> int | None:
    try:
        return os.lstat(path).st_uid
    except OSError:
        return None


def find(uid: int, layout: Layout | None = None) -> Delegation | str:
    """The caller's delegated cgroup, read from the kernel, or why there is none."""
    try:
        layout = layout or detect()
    except OSError as e:
        return f"cannot read the cgroup layout: {e.strerror}"
    directory = own_directory(layout)
    if layout.kind != "v2" or directory is None:
        return check(uid, layout.kind, None, {}, None)
    owners = {name: _owner(os.path.join(directory, name) if name else directory) for name in ("", *DELEGATED_FILES)}
    # access(2) answers EROFS for a read-only mount, whoever owns the directory
    writable = os.access(directory, os.W_OK)
    return check(uid, layout.kind, directory, owners, read_text(os.path.join(directory, "cgroup.controllers")),
                 writable=writable)
