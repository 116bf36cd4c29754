"""Reclaim what a launcher killed with SIGKILL left behind.

Its processes died with it (init's parent-death signal takes the PID namespace down),
but its cgroup directories and state file remain. `sandbox gc` reclaims them, and each
launch does the same for whatever it notices: usage read from the cgroup before it is
removed, and the report and accounting record the launcher could not write.
"""

from __future__ import annotations

import os
import time

from . import state
from .cgroups import PREFIX, CgroupError, detect, job_cgroup
from .cgroups.layout import Layout
from .records import RecordError, State

# A launcher writes its state before it creates its cgroup, so a sandbox cgroup without
# a state file is not one of ours in the making; but a launcher of an older version may
# still be between the two: leave those alone for this long.
ORPHAN_MIN_AGE = 60.0


def reclaim_stale(
    directory: str | None = None, layout: Layout | None = None, kill_timeout: float = 10.0
) -> list[str]:
    """Reclaim every sandbox whose launcher is gone (no lock on its state): kill what is
    left, read its figures, write the report and accounting record its launcher could
    not, remove its cgroup and state. Return their names."""
    directory = directory or state.state_dir()
    state.sweep_temp(directory)
    reclaimed = []
    for name in state.names(directory):
        taken = state.take_stale(name, directory)
        if taken is None:
            continue  # alive (its launcher holds the lock), being reclaimed, or gone
        fd, data = taken.fd, taken.data
        try:
            if data is not None and not _owned(data, fd):
                continue
            if data is not None and not _reclaim_one(name, data, layout, kill_timeout, fd):
                continue  # its cgroup resisted: the state stays for the next try
            state.remove(name, directory)  # still holding the claim: nobody else acts on it
            reclaimed.append(name)
        finally:
            taken.release()
    return reclaimed


def _owned(data: dict[str, object], fd: int) -> bool:
    """Whose stale sandbox this is, from kernel facts: the state file's owner (fd is the
    very file) and who its cgroups were handed to, not the uid written inside."""
    from .control import cgroup_owners
    from .privilege import Ownership, current

    paths = data.get("cgroup_paths")
    facts = Ownership(data.get("uid"), os.fstat(fd).st_uid, cgroup_owners(paths), bool(paths), None)
    return current().may_reclaim(facts)


def _reclaim_one(name: str, data: dict[str, object], layout: Layout | None, kill_timeout: float, fd: int) -> bool:
    from .lost import write_records
    from .privilege import current

    # State.from_dict accepts only sandbox directories of this very name: a doctored or
    # corrupt state file is dropped, never followed to another cgroup.
    try:
        record = State.from_dict(data, name)
    except RecordError:
        return True
    usage = None
    cg = current().stale_cgroup(record, fd, layout)
    try:
        if cg.exists():
            cg.kill(kill_timeout)
            usage = cg.usage()  # read before removal: the cgroup holds the only figures
            cg.remove_dirs()
    except (OSError, CgroupError):
        return False
    write_records(record, usage)
    return True


def reclaim_orphans(parent: str | None = None, layout: Layout | None = None, directory: str | None = None) -> list[str]:
    """Destroy empty sandbox cgroups under `parent` that have no state file at all
    (launchers write their state before their cgroup: these come from older versions or
    from hands)."""
    layout = layout or detect()
    known = set(state.names(directory))
    probe = job_cgroup("probe", parent, layout)
    seen: set[str] = set()
    for d in probe.paths().values():
        base = os.path.dirname(d)
        try:
            entries = list(os.scandir(base))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.name.startswith(PREFIX):
                continue
            try:
                # a sandbox may end between the listing and this stat: not an error
                if not entry.is_dir(follow_symlinks=False) or time.time() - entry.stat().st_mtime <= ORPHAN_MIN_AGE:
                    continue
            except FileNotFoundError:
                continue
            name = entry.name[len(PREFIX) :]
            if name not in known:
                seen.add(name)
    reclaimed = []
    for name in sorted(seen):
        if state.read(name, directory) is not None:
            continue  # its launcher has just written its state
        cg = job_cgroup(name, parent, layout)
        try:
            if cg.pids():
                continue  # a live job we know nothing about: not ours to kill
            cg.destroy()
        except (FileNotFoundError, CgroupError):
            continue  # gone meanwhile
        reclaimed.append(name)
    return reclaimed
