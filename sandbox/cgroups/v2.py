"""cgroup v2: one directory in the unified hierarchy, driven by writing its files.

Also used as the 'unified part' of the hybrid layout, where the v2 mount has no
controllers but still gives cgroup.kill, cgroup.freeze, cgroup.events and cpu.stat.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from ..limits import CPU_PERIOD_US, Limits
from .base import (
    PREFIX,
    CgroupError,
    JobCgroup,
    Usage,
    chain_files,
    kill_pids,
    make_dir,
    parse_cpu_max,
    procs_in_tree,
    read_int,
    read_keyed,
    read_text,
    remove_tree,
    smallest_cpus,
    smallest_limit,
    wait_events_unpopulated,
    write_file,
)
from .layout import Layout

# When the launcher's own cgroup has processes of its own (a Slurm task cgroup, a
# systemd service, a login session), v2's "no internal processes" rule forbids enabling
# controllers for its children. As crun and podman do, the launcher then moves that
# cgroup's processes into a leaf of it and nests the sandbox beside the leaf: nothing
# leaves the cgroup it was given. Not named sandbox-*: that prefix is what gc reclaims.
LEAF = "sandbox.leaf"
# new processes may be forked into the cgroup while it is being emptied
EMPTY_TRIES = 50


def _procs(directory: str) -> list[int]:
    return [int(p) for p in (read_text(os.path.join(directory, "cgroup.procs")) or "").split()]


def _io_bytes(directory: str) -> tuple[int | None, int | None]:
    text = read_text(os.path.join(directory, "io.stat"))
    if text is None:
        return None, None
    read = write = 0
    for line in text.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                write += int(value)
    return read, write


class V2Part:
    def __init__(
        self, layout: Layout, name: str, parent: str | None, parent_dirs: dict[str, str] | None = None
    ) -> None:
        h = layout.unified
        if h is None:
            raise CgroupError("this host has no cgroup2 mount")
        # may move its cgroup's processes into a leaf: only the launcher's own cgroup
        self.own = parent_dirs is None and parent in (None, h.own_path)
        if parent_dirs is not None and "unified" in parent_dirs:
            self.parent_dir = parent_dirs["unified"]
        else:
            self.parent_dir = h.directory(parent if parent is not None else h.own_path)
            if self.own and os.path.basename(self.parent_dir) == LEAF:
                # born in another launcher's leaf: nest beside it, not below it
                self.parent_dir = os.path.dirname(self.parent_dir)
        self.dir = os.path.join(self.parent_dir, PREFIX + name)
        self.leaf: str | None = None  # the leaf this launcher moved processes into
        self.enabled_here: list[str] = []  # the controllers this launcher enabled in the parent

    def file(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def delegate(self, wanted: tuple[str, ...]) -> set[str]:
        """Make the controllers we need available to our child cgroup: enable them in
        the parent's cgroup.subtree_control where the parent offers them but has not
        enabled them. This is the one write outside our own directory, and it only
        adds controllers; a parent with processes in it refuses (EBUSY: v2's 'no
        internal processes' rule), which needs a delegated, empty parent."""
        available = set((read_text(os.path.join(self.parent_dir, "cgroup.controllers")) or "").split())
        enabled = set((read_text(os.path.join(self.parent_dir, "cgroup.subtree_control")) or "").split())
        missing = [c for c in wanted if c in available and c not in enabled]
        if missing:
            control = os.path.join(self.parent_dir, "cgroup.subtree_control")
            try:
                try:
                    write_file(control, " ".join("+" + c for c in missing))
                except OSError as e:
                    if e.errno != errno.EBUSY or not self.own or not _procs(self.parent_dir):
                        raise
                    self.move_to_leaf()
                    write_file(control, " ".join("+" + c for c in missing))
                self.enabled_here = missing
            except OSError as e:
                if e.errno == errno.EBUSY:
                    raise CgroupError(
                        f"cannot enable {', '.join(missing)} for children of {self.parent_dir}: it has processes "
                        "of its own (cgroup v2 'no internal processes' rule); use --cgroup-parent with an empty, "
                        "delegated cgroup"
                    ) from None
                raise CgroupError(f"cannot enable controllers in {self.parent_dir}: {e.strerror}") from None
            enabled |= set(missing)
        return enabled & set(wanted)

    def move_to_leaf(self) -> None:
        """Move every process of the parent (this launcher among them) into its leaf."""
        leaf = os.path.join(self.parent_dir, LEAF)
        try:
            os.mkdir(leaf, 0o755)
        except FileExistsError:
            pass
        except OSError as e:
            raise CgroupError(f"cannot make {leaf}: {e.strerror}") from None
        self.leaf = leaf
        for _ in range(EMPTY_TRIES):
            pids = _procs(self.parent_dir)
            if not pids:
                return
            for pid in pids:
                try:
                    write_file(os.path.join(leaf, "cgroup.procs"), str(pid))
                except ProcessLookupError:
                    pass  # exited meanwhile
                except OSError as e:
                    raise CgroupError(f"cannot move process {pid} into {leaf}: {e.strerror}") from None
        raise CgroupError(f"{self.parent_dir} keeps gaining processes; cannot empty it into {leaf}")

    def undo_leaf(self) -> None:
        """Move back out of the leaf and disable what was enabled, if this launcher is the
        only process in the leaf and no other cgroup is beside it (else it stays: the
        others' processes still need it, and controllers in use cannot be disabled)."""
        leaf, self.leaf = self.leaf, None
        if leaf is None or _procs(leaf) != [os.getpid()]:
            return
        with os.scandir(self.parent_dir) as entries:
            if any(e.is_dir(follow_symlinks=False) and e.name != LEAF for e in entries):
                return
        try:
            if self.enabled_here:
                write_file(
                    os.path.join(self.parent_dir, "cgroup.subtree_control"),
                    " ".join("-" + c for c in self.enabled_here),
                )
                self.enabled_here = []
            write_file(os.path.join(self.parent_dir, "cgroup.procs"), str(os.getpid()))
            os.rmdir(leaf)
        except OSError as e:
            raise CgroupError(f"cannot move back out of {leaf}: {e.strerror}") from None

    def create(self, limits: Limits, controllers: tuple[str, ...]) -> None:
        try:
            self._create(limits, controllers)
        except BaseException:
            self.undo_leaf()
            raise

    def _create(self, limits: Limits, controllers: tuple[str, ...]) -> None:
        enabled = self.delegate(controllers) if controllers else set()
        if limits.memory_bytes is not None and "memory" in controllers and "memory" not in enabled:
            raise CgroupError(f"--mem needs the memory controller, which {self.parent_dir} does not offer")
        if limits.pids is not None and "pids" in controllers and "pids" not in enabled:
            raise CgroupError(f"--pids needs the pids controller, which {self.parent_dir} does not offer")
        if limits.cpus is not None and "cpu" in controllers and "cpu" not in enabled:
            raise CgroupError(f"--cpus needs the cpu controller, which {self.parent_dir} does not offer")
        make_dir(self.dir)
        try:
            if limits.memory_bytes is not None and "memory" in controllers:
                write_file(self.file("memory.max"), str(limits.memory_bytes))
                if os.path.exists(self.file("memory.swap.max")):
                    write_file(self.file("memory.swap.max"), str(limits.swap_limit_bytes() or 0))
                elif limits.swap_bytes:
                    raise CgroupError("--swap needs swap accounting (memory.swap.max), which this kernel lacks")
            if limits.pids is not None and "pids" in controllers:
                write_file(self.file("pids.max"), str(limits.pids))
            quota = limits.cpu_quota_us()
            if quota is not None and "cpu" in controllers:
                write_file(self.file("cpu.max"), f"{quota} {CPU_PERIOD_US}")
            if limits.devices is not None:
                # v2 has no devices controller: a device program, before any process joins.
                # Without a private /dev nothing is loaded (the launch pays nothing).
                from .device_bpf import attach

                attach(self.dir, limits.devices)
        except OSError as e:
            remove_tree(self.dir)
            raise CgroupError(f"cannot set cgroup limit: {e.strerror} ({e.filename or self.dir})") from None
        except BaseException:
            remove_tree(self.dir)
            raise

    def pids(self) -> list[int]:
        return procs_in_tree(self.dir)

    def freeze(self) -> None:
        if not os.path.exists(self.file("cgroup.freeze")):
            return
        write_file(self.file("cgroup.freeze"), "1")
        deadline = time.monotonic() + 2.0
        while read_keyed(self.file("cgroup.events")).get("frozen") != 1 and time.monotonic() < deadline:
            time.sleep(0.001)

    def frozen(self) -> bool | None:
        events = read_keyed(self.file("cgroup.events"))
        return None if "frozen" not in events else events["frozen"] == 1

    def thaw(self) -> None:
        if os.path.exists(self.file("cgroup.freeze")):
            write_file(self.file("cgroup.freeze"), "0")

    def kill(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if os.path.exists(self.file("cgroup.kill")):
            # 5.14+: the kernel kills the whole subtree, forks in flight included
            write_file(self.file("cgroup.kill"), "1")
            if wait_events_unpopulated(self.file("cgroup.events"), timeout):
                return
            raise CgroupError(f"processes survived cgroup.kill in {self.dir}")
        while self.pids():
            self.freeze()
            try:
                kill_pids(self.pids(), signal.SIGKILL)
            finally:
                self.thaw()
            if wait_events_unpopulated(self.file("cgroup.events"), min(0.5, max(0.0, deadline - time.monotonic()))):
                return
            if time.monotonic() > deadline:
                raise CgroupError(f"processes survived SIGKILL in {self.dir}")

    def cpu(self) -> tuple[float | None, float | None]:
        stat = read_keyed(self.file("cpu.stat"))
        if "user_usec" not in stat:
            return None, None
        return stat["user_usec"] / 1e6, stat["system_usec"] / 1e6

    def usage(self) -> Usage:
        user, system = self.cpu()
        io_read, io_write = _io_bytes(self.dir)
        limit = read_int(self.file("memory.max"))
        return Usage(
            cpu_user_seconds=user,
            cpu_system_seconds=system,
            memory_current_bytes=read_int(self.file("memory.current")),
            memory_peak_bytes=read_int(self.file("memory.peak")),
            memory_limit_bytes=limit,
            oom_kills=read_keyed(self.file("memory.events")).get("oom_kill"),
            io_read_bytes=io_read,
            io_write_bytes=io_write,
            pids_current=read_int(self.file("pids.current")),
            pids_peak=read_int(self.file("pids.peak")),
        )

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def remove_dirs(self) -> None:
        remove_tree(self.dir)
        self.undo_leaf()


class V2Cgroup(JobCgroup):
    version = "v2"
    CONTROLLERS = ("memory", "pids", "cpu", "io")

    def __init__(
        self, layout: Layout, name: str, parent: str | None, parent_dirs: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.part = V2Part(layout, name, parent, parent_dirs)

    def create(self, limits: Limits) -> None:
        self.part.create(limits, self.CONTROLLERS)

    def paths(self) -> dict[str, str]:
        return {"unified": self.part.dir}

    def enclosing_memory_limit(self) -> int | None:
        return smallest_limit(chain_files(self.part.parent_dir, "memory.max"))

    def enclosing_cpu_limit(self) -> float | None:
        return smallest_cpus([parse_cpu_max(t) for t in chain_files(self.part.parent_dir, "cpu.max")])

    def primary_path(self) -> str:
        return self.part.dir

    def join_files(self) -> list[str]:
        return [self.part.file("cgroup.procs")]

    def pids(self) -> list[int]:
        return self.part.pids()

    def freeze(self) -> None:
        self.part.freeze()

    def thaw(self) -> None:
        self.part.thaw()

    def is_frozen(self) -> bool | None:
        return self.part.frozen()

    def kill(self, timeout: float = 10.0) -> None:
        self.part.kill(timeout)

    def usage(self) -> Usage:
        return self.part.usage()

    def exists(self) -> bool:
        return self.part.exists()

    def remove_dirs(self) -> None:
        self.part.remove_dirs()


__all__ = ["V2Cgroup", "V2Part", "kill_pids", "signal"]
