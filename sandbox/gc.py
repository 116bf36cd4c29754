"""Reclaim what a launcher killed with SIGKILL left behind.

Its processes died with it (init's parent-death signal takes the PID namespace down),
but its cgroup directories and state file remain. `sandbox gc` reclaims them, and each
launch does the same for whatever it notices.
"""

from __future__ import annotations

import os
import time

from . import state
from .cgroups import PREFIX, CgroupError, detect, job_cgroup
from .cgroups.layout import Layout
from .records import RecordError, State

# A cgroup without a state file may belong to a launcher that has just created it and
# not yet written its state: leave those alone for this long.
ORPHAN_MIN_AGE = 60.0


def reclaim_stale(
    directory: str | None = None, layout: Layout | None = None, kill_timeout: float = 10.0
) -> list[str]:
    """Destroy the cgroup of every sandbox whose launcher is gone; return their names."""
    layout = layout or detect()
    directory = directory or state.state_dir()
    reclaimed = []
    for name in state.names(directory):
        data = state.read(name, directory)
        if data is None or state.launcher_alive(data):
            continue
        # Claim the entry with an atomic rename, so that two launchers noticing the same
        # stale sandbox do not both tear it down.
        src = state.path_for(name, directory)
        claimed = os.path.join(directory, f".{name}.reclaim-{os.getpid()}")
        try:
            os.rename(src, claimed)
        except FileNotFoundError:
            continue
        try:
            # State.from_dict accepts only sandbox directories of this very name: a
            # doctored or corrupt state file is dropped, never followed to another cgroup.
            try:
                record = State.from_dict(data, name)
            except RecordError:
                record = None
            if record is not None:
                record.job_cgroup(layout).destroy(kill_timeout)
            reclaimed.append(name)
        except CgroupError:
            os.rename(claimed, src)  # leave it for the next try
            continue
        os.unlink(claimed)
    return reclaimed


def reclaim_orphans(parent: str | None = None, layout: Layout | None = None, directory: str | None = None) -> list[str]:
    """Destroy empty sandbox cgroups under `parent` that have no state file at all."""
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
            if entry.name.startswith(PREFIX) and entry.is_dir(follow_symlinks=False):
                name = entry.name[len(PREFIX) :]
                try:
                    age = time.time() - entry.stat().st_mtime
                except FileNotFoundError:
                    continue  # removed meanwhile by its own launcher
                if name not in known and age > ORPHAN_MIN_AGE:
                    seen.add(name)
    reclaimed = []
    for name in sorted(seen):
        cg = job_cgroup(name, parent, layout)
        if cg.pids():
            continue  # a live job we know nothing about: not ours to kill
        cg.destroy()
        reclaimed.append(name)
    return reclaimed
