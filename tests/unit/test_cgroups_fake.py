"""The cgroup backends (v1, v2, hybrid) against a fake cgroupfs in tmp_path.

A small fake kernel stands in for cgroupfs: mkdir below a hierarchy populates the
control files the real kernel would show, rmdir removes them (and refuses a populated
cgroup). The layout comes from fake mountinfo and /proc/self/cgroup texts through
layout.parse, exactly as on a host. Every test checks that nothing outside the
sandbox's parent cgroup changed.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.cgroups import CgroupError, JobCgroup, Usage, job_cgroup
from sandbox.cgroups import v1 as v1mod
from sandbox.cgroups import v2 as v2mod
from sandbox.cgroups.layout import Layout, parse
from sandbox.limits import Limits

V1_FILES = {
    "memory": {
        "memory.limit_in_bytes": "9223372036854771712\n",
        "memory.memsw.limit_in_bytes": "9223372036854771712\n",
        "memory.usage_in_bytes": "0\n",
        "memory.max_usage_in_bytes": "0\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    },
    "pids": {"pids.max": "max\n", "pids.current": "0\n", "pids.peak": "0\n"},
    "cpu": {"cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "-1\n", "cpu.shares": "1024\n"},
    "cpuacct": {"cpuacct.usage": "0\n", "cpuacct.usage_user": "0\n", "cpuacct.usage_sys": "0\n",
                "cpuacct.stat": "user 0\nsystem 0\n"},
    "blkio": {"blkio.throttle.io_service_bytes_recursive": "Total 0\n"},
    "freezer": {"freezer.state": "THAWED\n"},
}
V1_COMMON = {"cgroup.procs": "", "tasks": "", "notify_on_release": "0\n"}
V2_CORE = {
    "cgroup.procs": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.kill": "",
    "cgroup.freeze": "0\n",
    "cgroup.subtree_control": "",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
}
V2_FILES = {
    "memory": {"memory.max": "max\n", "memory.swap.max": "max\n", "memory.current": "0\n", "memory.peak": "0\n",
               "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n", "pids.peak": "0\n"},
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n"},
    "io": {"io.stat": ""},
}


class FakeKernel:
    """Hierarchies under `root`; os.mkdir/os.rmdir below them behave like cgroupfs."""

    def __init__(self, root: Path, kind: str, memsw: bool = True, comount_cpu: bool = False) -> None:
        self.root = root
        self.kind = kind
        self.memsw = memsw
        self.v1_mounts: dict[str, Path] = {}  # mountpoint name -> path
        self.v2_mount: Path | None = None
        self.fail_files: set[str] = set()  # control files that refuse writes (made directories)
        self.omit_files: set[str] = set()  # control files this "kernel" lacks
        self.real_mkdir = os.mkdir
        self.real_rmdir = os.rmdir
        mountinfo, proc = [], []
        n = 30
        if kind in ("v1", "hybrid"):
            groups = [("memory",), ("pids",), ("blkio",), ("freezer",)]
            groups += [("cpu", "cpuacct")] if comount_cpu else [("cpu",), ("cpuacct",)]
            for i, ctrls in enumerate(groups):
                mp = root / ",".join(ctrls)
                self.v1_mounts[mp.name] = mp
                mountinfo.append(f"{n + i} 23 0:{n + i} / {mp} rw,relatime - cgroup cgroup rw,{','.join(ctrls)}")
                own = "/process_api/abc" if "memory" in ctrls else "/"
                proc.append(f"{i + 1}:{','.join(ctrls)}:{own}")
        if kind in ("v2", "hybrid"):
            self.v2_mount = root / "unified"
            mountinfo.append(f"60 23 0:60 / {self.v2_mount} rw,relatime - cgroup2 cgroup2 rw")
            proc.append("0::/" if kind == "hybrid" else "0::/condor/slot1")
        self.mountinfo = "\n".join(mountinfo) + "\n"
        self.proc_cgroup = "\n".join(proc) + "\n"

    def setup(self) -> None:
        """Mount roots, our own cgroups, and a sibling of each (which must never change)."""
        for mp in self.v1_mounts.values():
            self.real_mkdir(mp)
            self._populate(mp)
            for sub in ("process_api", "process_api/abc", "process_api/sibling", "batch", "batch/slot1"):
                self.mkdir(mp / sub)
        if self.v2_mount is not None:
            self.real_mkdir(self.v2_mount)
            if self.kind == "v2":
                (self.v2_mount / "cgroup.subtree_control").write_text("cpu io memory pids\n")
            self._populate(self.v2_mount)
            if self.kind == "v2":
                (self.v2_mount / "cgroup.subtree_control").write_text("cpu io memory pids\n")
                (self.v2_mount / "cgroup.controllers").write_text("cpu io memory pids\n")
            for top, subs in (("condor", ("slot1", "slot2")), ("batch", ("slot1",))):
                self.mkdir(self.v2_mount / top)
                if self.kind == "v2":
                    # the slots are empty and delegated: they offer the controllers to
                    # their children but have not enabled them yet
                    (self.v2_mount / top / "cgroup.subtree_control").write_text("cpu io memory pids\n")
                for sub in subs:
                    self.mkdir(self.v2_mount / top / sub)

    def layout(self) -> Layout:
        return parse(self.mountinfo, self.proc_cgroup)

    def _hierarchy(self, path: Path) -> tuple[str, Path] | None:
        for name, mp in self.v1_mounts.items():
            if path == mp or mp in path.parents:
                return name, mp
        if self.v2_mount is not None and (path == self.v2_mount or self.v2_mount in path.parents):
            return "unified", self.v2_mount
        return None

    def _populate(self, path: Path) -> None:
        h = self._hierarchy(path)
        assert h is not None
        files: dict[str, str] = {}
        if h[0] == "unified":
            files.update(V2_CORE)
            parent_sc = (path.parent / "cgroup.subtree_control")
            enabled = set()
            if path != self.v2_mount and parent_sc.exists():
                enabled = {c.lstrip("+") for c in parent_sc.read_text().split()}
            files["cgroup.controllers"] = " ".join(sorted(enabled)) + "\n"
            for ctrl in sorted(enabled):
                files.update(V2_FILES.get(ctrl, {}))
        else:
            files.update(V1_COMMON)
            for ctrl in h[0].split(","):
                files.update(V1_FILES.get(ctrl, {}))
            if not self.memsw:
                files.pop("memory.memsw.limit_in_bytes", None)
        for name, content in files.items():
            if name in self.omit_files:
                continue
            if name in self.fail_files:
                self.real_mkdir(path / name)
            else:
                (path / name).write_text(content)

    @staticmethod
    def _resolve(path: object, dir_fd: int | None) -> Path:
        # the switchboard makes and removes directories relative to directory fds
        p = Path(os.fsdecode(path))  # type: ignore[arg-type]
        return p if dir_fd is None else Path(os.readlink(f"/proc/self/fd/{dir_fd}")) / p

    def mkdir(self, path: object, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        self.real_mkdir(path, mode, dir_fd=dir_fd)  # type: ignore[arg-type]
        p = self._resolve(path, dir_fd)
        if self._hierarchy(p) is not None:
            self._populate(p)

    def rmdir(self, path: object, *, dir_fd: int | None = None) -> None:
        p = self._resolve(path, dir_fd)
        if self._hierarchy(p) is None:
            self.real_rmdir(path, dir_fd=dir_fd)  # type: ignore[arg-type]
            return
        if p in self.v1_mounts.values() or p == self.v2_mount:
            raise OSError(errno.EBUSY, "Device or resource busy", str(p))
        if not p.is_dir():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(p))
        if any(e.is_dir() and e.name not in self.fail_files for e in p.iterdir()):
            raise OSError(errno.EBUSY, "Device or resource busy", str(p))  # child cgroups
        procs = p / "cgroup.procs"
        if procs.is_file() and procs.read_text().split():
            raise OSError(errno.EBUSY, "Device or resource busy", str(p))
        for e in p.iterdir():
            if e.is_dir():
                self.real_rmdir(e)
            else:
                e.unlink()
        self.real_rmdir(p)

    def snapshot(self, exclude: set[Path]) -> dict[str, str | None]:
        """Every directory and file under the fake root (contents), minus `exclude` subtrees."""
        out: dict[str, str | None] = {}
        for dirpath, _dirs, files in os.walk(self.root):
            d = Path(dirpath)
            if d in exclude or any(x in d.parents for x in exclude):
                continue
            out[str(d)] = None
            for f in files:
                out[str(d / f)] = (d / f).read_text()
        return out


def cgroupfs_write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


@pytest.fixture
def kernel_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    made: list[FakeKernel] = []

    def make(kind: str, **kw: bool) -> FakeKernel:
        k = FakeKernel(tmp_path / f"cg-{len(made)}", kind, **kw)
        os.mkdir(k.root)
        k.setup()
        monkeypatch.setattr(os, "mkdir", k.mkdir)
        monkeypatch.setattr(os, "rmdir", k.rmdir)
        # a cgroupfs write replaces the value; a plain file needs O_TRUNC for that (and,
        # like cgroupfs, no O_CREAT: a control file the kernel lacks cannot be written)
        monkeypatch.setattr(v2mod, "write_file", cgroupfs_write)
        monkeypatch.setattr("sandbox.cgroups.base.write_file", cgroupfs_write)
        made.append(k)
        return k

    yield make


def read(p: str) -> str:
    return Path(p).read_text().strip()


def job_dirs(cg: JobCgroup) -> set[Path]:
    return {Path(d) for d in cg.paths().values()}


ALL_LIMITS = Limits(memory_bytes=50 << 20, swap_bytes=None, pids=20, cpus=0.5)

# -- v1 -----------------------------------------------------------------------------


@pytest.mark.parametrize("comount", [False, True])
def test_v1_create_limits_usage_remove(kernel_factory, comount: bool) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v1", comount_cpu=comount)
    before = k.snapshot(set())
    cg = job_cgroup("job1", None, k.layout())
    assert cg.version == "v1"
    paths = cg.paths()
    # in the launcher's own cgroup of each hierarchy: memory is below the managed cgroup
    assert paths["memory"] == f"{k.root}/memory/process_api/abc/sandbox-job1"
    assert paths["pids"] == f"{k.root}/pids/sandbox-job1"
    assert cg.primary_path() == paths["memory"]
    if comount:
        assert paths["cpu"] == paths["cpuacct"] == f"{k.root}/cpu,cpuacct/sandbox-job1"
    cg.create(ALL_LIMITS)
    assert read(paths["memory"] + "/memory.limit_in_bytes") == str(50 << 20)
    # no swap beyond the memory limit
    assert read(paths["memory"] + "/memory.memsw.limit_in_bytes") == str(50 << 20)
    assert read(paths["pids"] + "/pids.max") == "20"
    assert read(paths["cpu"] + "/cpu.cfs_quota_us") == "50000"
    assert read(paths["cpu"] + "/cpu.cfs_period_us") == "100000"
    # join files: one cgroup.procs per distinct directory, each once
    joins = cg.join_files()
    assert len(joins) == len(set(joins)) == len(set(paths.values()))
    assert all(j.endswith("/cgroup.procs") for j in joins)
    assert {os.path.dirname(j) for j in joins} == set(paths.values())

    # the kernel's figures
    Path(paths["memory"], "memory.max_usage_in_bytes").write_text("104857600\n")
    Path(paths["memory"], "memory.usage_in_bytes").write_text("4096\n")
    Path(paths["memory"], "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    Path(paths["pids"], "pids.peak").write_text("7\n")
    Path(paths["pids"], "pids.current").write_text("0\n")
    # the tick samples saw half the runtime: their ratio splits the exact total
    Path(paths["cpuacct"], "cpuacct.usage").write_text("3500000000\n")
    Path(paths["cpuacct"], "cpuacct.usage_user").write_text("1500000000\n")
    Path(paths["cpuacct"], "cpuacct.usage_sys").write_text("250000000\n")
    Path(paths["blkio"], "blkio.throttle.io_service_bytes_recursive").write_text(
        "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\n8:16 Read 1\n8:16 Write 2\nTotal 12291\n"
    )
    u = cg.usage()
    assert u == Usage(
        cpu_user_seconds=3.0, cpu_system_seconds=0.5, memory_current_bytes=4096, memory_peak_bytes=100 << 20,
        memory_limit_bytes=50 << 20, oom_kills=2, io_read_bytes=4097, io_write_bytes=8194, pids_current=0,
        pids_peak=7,
    )
    assert cg.exists() and cg.pids() == []
    cg.kill()  # empty: returns at once
    cg.remove_dirs()
    assert not cg.exists()
    assert k.snapshot(set()) == before


def test_v1_usage_unlimited_and_tick_fallback(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v1")
    k.omit_files |= {"cpuacct.usage_user", "cpuacct.usage_sys"}  # old kernels: USER_HZ ticks only
    cg = job_cgroup("t", None, k.layout())
    cg.create(Limits())
    paths = cg.paths()
    hz = os.sysconf("SC_CLK_TCK")
    Path(paths["cpuacct"], "cpuacct.stat").write_text(f"user {3 * hz}\nsystem {hz // 2}\n")
    os.unlink(os.path.join(paths["cpuacct"], "cpuacct.usage"))  # and no exact total either
    u = cg.usage()
    assert u.memory_limit_bytes is None  # the kernel's "unlimited" is not a limit
    assert u.cpu_user_seconds == 3.0 and u.cpu_system_seconds == (hz // 2) / hz
    # no limits asked: the limit files keep the kernel's defaults
    assert read(paths["pids"] + "/pids.max") == "max"
    assert read(paths["cpu"] + "/cpu.cfs_quota_us") == "-1"
    cg.remove_dirs()


def test_v1_swap(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v1")
    cg = job_cgroup("s", None, k.layout())
    cg.create(Limits(memory_bytes=1 << 30, swap_bytes=512 << 20))
    assert read(cg.paths()["memory"] + "/memory.memsw.limit_in_bytes") == str((1 << 30) + (512 << 20))
    cg.remove_dirs()


def test_v1_swap_without_swap_accounting_fails_cleanly(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v1", memsw=False)
    before = k.snapshot(set())
    cg = job_cgroup("s", None, k.layout())
    # without memsw the host cannot bound swap per cgroup; no --swap is fine
    cg.create(Limits(memory_bytes=1 << 30))
    cg.remove_dirs()
    with pytest.raises(CgroupError, match="--swap needs swap accounting"):
        cg.create(Limits(memory_bytes=1 << 30, swap_bytes=1 << 20))
    assert not cg.exists()
    assert k.snapshot(set()) == before


def test_v1_failed_limit_leaves_nothing(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v1")
    k.fail_files.add("pids.max")
    before = k.snapshot(set())
    cg = job_cgroup("f", None, k.layout())
    with pytest.raises(CgroupError, match=r"cannot set cgroup limit: .*pids\.max"):
        cg.create(ALL_LIMITS)
    assert not cg.exists()
    assert k.snapshot(set()) == before


def test_v1_name_in_use(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v1")
    first = job_cgroup("dup", None, k.layout())
    first.create(Limits(pids=5))
    snap = k.snapshot(set())
    with pytest.raises(CgroupError, match="already exists"):
        job_cgroup("dup", None, k.layout()).create(Limits(pids=99))
    # the existing sandbox is untouched (its limit too)
    assert k.snapshot(set()) == snap
    first.remove_dirs()


def test_v1_explicit_parent(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v1")
    before = k.snapshot(set())
    cg = job_cgroup("p", "/batch/slot1", k.layout())
    assert cg.paths()["memory"] == f"{k.root}/memory/batch/slot1/sandbox-p"
    cg.create(Limits(memory_bytes=1 << 20))
    assert k.snapshot(job_dirs(cg)) == before
    cg.remove_dirs()
    with pytest.raises(CgroupError, match="does not exist"):
        job_cgroup("q", "/no/such", k.layout()).create(Limits())
    with pytest.raises(CgroupError, match="absolute"):
        job_cgroup("q", "batch", k.layout())
    assert k.snapshot(set()) == before


def test_v1_kill_freezes_kills_thaws_until_empty(kernel_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v1")
    cg = job_cgroup("k", None, k.layout())
    cg.create(Limits())
    paths = cg.paths()
    # a sub-cgroup the job made, with a process in it
    for d in paths.values():
        os.mkdir(os.path.join(d, "inner"))
        Path(d, "cgroup.procs").write_text("1001\n1002\n")
        Path(d, "inner", "cgroup.procs").write_text("1003\n")
    rounds: list[tuple[list[int], str]] = []

    def fake_kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
        assert sig == signal.SIGKILL
        rounds.append((sorted(pids), read(paths["freezer"] + "/freezer.state")))
        # the kernel: a process forked during the first round survives it
        remaining = "1004\n" if len(rounds) == 1 else ""
        for d in paths.values():
            Path(d, "cgroup.procs").write_text(remaining)
            Path(d, "inner", "cgroup.procs").write_text("")

    monkeypatch.setattr(v1mod, "kill_pids", fake_kill)
    cg.kill(timeout=5)
    assert rounds == [([1001, 1002, 1003], "FROZEN"), ([1004], "FROZEN")]
    assert read(paths["freezer"] + "/freezer.state") == "THAWED"
    assert cg.pids() == []
    cg.remove_dirs()  # the job's sub-cgroup goes too, deepest first
    assert not cg.exists()


def test_v1_remove_refuses_populated(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v1")
    cg = job_cgroup("busy", None, k.layout())
    cg.create(Limits())
    Path(cg.paths()["memory"], "cgroup.procs").write_text("1\n")
    with pytest.raises(OSError, match="busy"):
        cg.remove_dirs()
    assert cg.exists()
    Path(cg.paths()["memory"], "cgroup.procs").write_text("")
    cg.remove_dirs()
    assert not cg.exists()


# -- v2 -----------------------------------------------------------------------------


def test_v2_create_limits_usage_remove(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v2")
    before = k.snapshot(set())
    cg = job_cgroup("job2", None, k.layout())
    assert cg.version == "v2"
    d = f"{k.root}/unified/condor/slot1/sandbox-job2"
    assert cg.paths() == {"unified": d} and cg.primary_path() == d
    cg.create(ALL_LIMITS)
    # the one write outside our directory: enabling controllers for the parent's children
    assert sorted(read(f"{k.root}/unified/condor/slot1/cgroup.subtree_control").split()) == [
        "+cpu", "+io", "+memory", "+pids"
    ]
    assert read(d + "/memory.max") == str(50 << 20)
    assert read(d + "/memory.swap.max") == "0"
    assert read(d + "/pids.max") == "20"
    assert read(d + "/cpu.max") == "50000 100000"
    assert cg.join_files() == [d + "/cgroup.procs"]
    after_create = k.snapshot({Path(d)})
    changed = {p for p in set(before) | set(after_create) if before.get(p) != after_create.get(p)}
    assert changed == {f"{k.root}/unified/condor/slot1/cgroup.subtree_control"}

    Path(d, "cpu.stat").write_text("usage_usec 2750000\nuser_usec 2500000\nsystem_usec 250000\nnr_periods 3\n")
    Path(d, "memory.peak").write_text("104857600\n")
    Path(d, "memory.current").write_text("0\n")
    Path(d, "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n")
    Path(d, "io.stat").write_text(
        "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=2 rios=1 wios=1\n"
    )
    Path(d, "pids.peak").write_text("9\n")
    u = cg.usage()
    assert u == Usage(
        cpu_user_seconds=2.5, cpu_system_seconds=0.25, memory_current_bytes=0, memory_peak_bytes=100 << 20,
        memory_limit_bytes=50 << 20, oom_kills=1, io_read_bytes=4097, io_write_bytes=8194, pids_current=0,
        pids_peak=9,
    )
    cg.kill()
    assert read(d + "/cgroup.kill") == "1"
    cg.remove_dirs()
    assert not cg.exists()
    assert k.snapshot(set()) == after_create


def test_v2_usage_of_an_unlimited_job(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v2")
    cg = job_cgroup("u", None, k.layout())
    cg.create(Limits())
    d = cg.primary_path()
    assert read(d + "/memory.max") == "max" and read(d + "/pids.max") == "max"
    u = cg.usage()
    assert u.memory_limit_bytes is None and u.cpu_user_seconds == 0.0 and u.io_read_bytes == 0
    cg.remove_dirs()


def test_v2_parent_with_processes_cannot_delegate(kernel_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """v2's 'no internal processes' rule: the kernel refuses to enable controllers in a
    cgroup with processes; we say so in one line and leave nothing behind."""
    k = kernel_factory("v2")
    before = k.snapshot(set())
    real_write = v2mod.write_file

    def refusing(path: str, value: str) -> None:
        if path.endswith("cgroup.subtree_control"):
            raise OSError(errno.EBUSY, "Device or resource busy")
        real_write(path, value)

    monkeypatch.setattr(v2mod, "write_file", refusing)
    with pytest.raises(CgroupError, match="no internal processes"):
        job_cgroup("b", None, k.layout()).create(Limits(memory_bytes=1 << 20))
    assert k.snapshot(set()) == before


def test_v2_missing_controller(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v2")
    Path(k.root, "unified/condor/slot1/cgroup.controllers").write_text("cpu io\n")  # no memory, no pids offered
    before = k.snapshot(set())
    with pytest.raises(CgroupError, match="--mem needs the memory controller"):
        job_cgroup("m", None, k.layout()).create(Limits(memory_bytes=1 << 20))
    with pytest.raises(CgroupError, match="--pids needs the pids controller"):
        job_cgroup("m", None, k.layout()).create(Limits(pids=3))
    assert not Path(k.root, "unified/condor/slot1/sandbox-m").exists()
    # only the available controllers were enabled
    changed = {p for p, v in k.snapshot(set()).items() if before.get(p) != v}
    assert changed <= {f"{k.root}/unified/condor/slot1/cgroup.subtree_control"}
    assert set(read(f"{k.root}/unified/condor/slot1/cgroup.subtree_control").split()) <= {"+cpu", "+io"}


def test_v2_failed_limit_leaves_nothing(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v2")
    k.fail_files.add("cpu.max")
    cg = job_cgroup("f", None, k.layout())
    with pytest.raises(CgroupError, match=r"cannot set cgroup limit"):
        cg.create(ALL_LIMITS)
    assert not cg.exists()


def test_v2_swap(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v2")
    cg = job_cgroup("s", None, k.layout())
    cg.create(Limits(memory_bytes=1 << 30, swap_bytes=256 << 20))
    assert read(cg.primary_path() + "/memory.swap.max") == str(256 << 20)
    cg.remove_dirs()
    k.omit_files.add("memory.swap.max")
    with pytest.raises(CgroupError, match="--swap needs swap accounting"):
        cg.create(Limits(memory_bytes=1 << 30, swap_bytes=256 << 20))
    assert not cg.exists()


def test_v2_kill_without_cgroup_kill(kernel_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Kernels before 5.14: freeze, SIGKILL every task, thaw, until the cgroup is empty."""
    k = kernel_factory("v2")
    k.omit_files.add("cgroup.kill")
    cg = job_cgroup("k", None, k.layout())
    cg.create(Limits())
    d = cg.primary_path()
    Path(d, "cgroup.procs").write_text("2001\n")
    Path(d, "cgroup.events").write_text("populated 1\nfrozen 1\n")  # the freeze completes at once
    seen: list[tuple[list[int], str]] = []

    def fake_kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
        seen.append((pids, read(d + "/cgroup.freeze")))
        Path(d, "cgroup.procs").write_text("")
        Path(d, "cgroup.events").write_text("populated 0\nfrozen 1\n")

    monkeypatch.setattr(v2mod, "kill_pids", fake_kill)
    cg.kill(timeout=5)
    assert seen == [([2001], "1")]
    assert read(d + "/cgroup.freeze") == "0"
    cg.remove_dirs()


def test_v2_kill_reports_survivors(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v2")
    cg = job_cgroup("z", None, k.layout())
    cg.create(Limits())
    Path(cg.primary_path(), "cgroup.events").write_text("populated 1\nfrozen 0\n")
    with pytest.raises(CgroupError, match="survived"):
        cg.kill(timeout=0.05)
    Path(cg.primary_path(), "cgroup.events").write_text("populated 0\nfrozen 0\n")
    cg.remove_dirs()


def test_v2_send_signal_freezes_around_the_signal(kernel_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`sandbox signal` (control.send_signal, through the cgroup interface): the job is
    frozen while it is signalled, so no process forks a child that misses the signal;
    the sandbox's init is left out; a job that was running is thawed again."""
    from sandbox import control
    from sandbox.records import State

    k = kernel_factory("v2")
    cg = job_cgroup("sig", None, k.layout())
    cg.create(Limits())
    d = cg.primary_path()
    Path(d, "cgroup.procs").write_text("3000\n3001\n3002\n")
    Path(d, "cgroup.events").write_text("populated 1\nfrozen 0\n")

    def freeze_now(path: str, text: str) -> None:  # the fake kernel freezes at once
        Path(path).write_text(text)
        Path(d, "cgroup.events").write_text(f"populated 1\nfrozen {text}\n")

    monkeypatch.setattr("sandbox.cgroups.v2.write_file", freeze_now)
    record = State("sig", 0, None, None, 3000, d, "v2", cg.paths())
    monkeypatch.setattr(control, "find", lambda name: control.Running(name, record, cg))
    sent: list[tuple[list[int], int, str]] = []
    monkeypatch.setattr(control, "kill_pids", lambda pids, sig: sent.append((pids, sig, read(d + "/cgroup.freeze"))))
    assert control.send_signal("sig", signal.SIGTERM) == 2
    assert sent == [([3001, 3002], signal.SIGTERM, "1")]
    assert read(d + "/cgroup.freeze") == "0"
    # a suspended job stays suspended: signalling it must not resume it
    freeze_now(d + "/cgroup.freeze", "1")
    assert control.send_signal("sig", signal.SIGUSR1) == 2
    assert sent[1] == ([3001, 3002], signal.SIGUSR1, "1") and read(d + "/cgroup.freeze") == "1"
    Path(d, "cgroup.procs").write_text("")
    Path(d, "cgroup.events").write_text("populated 0\nfrozen 0\n")
    cg.remove_dirs()


# -- hybrid -------------------------------------------------------------------------


def test_hybrid_create_limits_usage_remove(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("hybrid")
    before = k.snapshot(set())
    cg = job_cgroup("h", None, k.layout())
    assert cg.version == "hybrid"
    paths = cg.paths()
    # v1 controllers for limits; the unified mount for kill/freeze/events/cpu.stat;
    # cpuacct and freezer are not needed
    assert set(paths) == {"memory", "pids", "cpu", "blkio", "unified"}
    assert paths["unified"] == f"{k.root}/unified/sandbox-h"
    assert cg.primary_path() == paths["memory"]
    cg.create(ALL_LIMITS)
    assert read(paths["memory"] + "/memory.limit_in_bytes") == str(50 << 20)
    assert read(paths["pids"] + "/pids.max") == "20"
    assert read(paths["cpu"] + "/cpu.cfs_quota_us") == "50000"
    # unified first in the join order: the kill and the populated event use it
    joins = cg.join_files()
    assert joins[0] == paths["unified"] + "/cgroup.procs"
    assert {os.path.dirname(j) for j in joins} == set(paths.values())
    # nothing outside our directories changed (the controller-less unified parent is not written)
    assert k.snapshot(job_dirs(cg)) == before

    Path(paths["unified"], "cpu.stat").write_text("usage_usec 1200000\nuser_usec 1000000\nsystem_usec 200000\n")
    Path(paths["memory"], "memory.max_usage_in_bytes").write_text("5000000\n")
    Path(paths["memory"], "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    Path(paths["pids"], "pids.peak").write_text("4\n")
    u = cg.usage()
    assert (u.cpu_user_seconds, u.cpu_system_seconds) == (1.0, 0.2)
    assert (u.memory_peak_bytes, u.memory_limit_bytes, u.oom_kills, u.pids_peak) == (5000000, 50 << 20, 1, 4)
    assert (u.io_read_bytes, u.io_write_bytes) == (0, 0)

    cg.kill()
    assert read(paths["unified"] + "/cgroup.kill") == "1"
    cg.remove_dirs()
    assert not cg.exists()
    assert k.snapshot(set()) == before


def test_hybrid_unified_failure_removes_v1_dirs(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("hybrid")
    os.mkdir(k.root / "unified" / "sandbox-clash")  # the unified part cannot be created
    before = k.snapshot(set())
    cg = job_cgroup("clash", None, k.layout())
    with pytest.raises(CgroupError, match="already exists"):
        cg.create(ALL_LIMITS)
    assert k.snapshot(set()) == before


def test_restore_from_recorded_paths(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    """gc finds a sandbox by the paths its launcher recorded, whatever cgroup gc itself is in."""
    k = kernel_factory("hybrid")
    cg = job_cgroup("rec", "/batch/slot1", k.layout())
    cg.create(Limits())
    recorded = {key: os.path.dirname(v) for key, v in cg.paths().items()}
    again = job_cgroup("rec", None, k.layout(), parent_dirs=recorded)
    assert again.paths() == cg.paths()
    assert again.exists()
    again.destroy()
    assert not cg.exists()
    again.destroy()  # already gone: nothing to do


def test_state_record_rebuilds_the_sandbox_cgroup(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    """State.job_cgroup, the public way control and gc rebuild a sandbox's cgroup from
    its state file: the same directories its launcher made, under any parent."""
    from sandbox.records import State

    k = kernel_factory("hybrid")
    cg = job_cgroup("rec2", "/batch/slot1", k.layout())
    cg.create(Limits())
    record = State("rec2", 0, None, None, None, cg.primary_path(), cg.version, cg.paths())
    again = State.from_json(record.to_json()).job_cgroup(k.layout())
    assert again.paths() == cg.paths() and again.exists()
    again.destroy()
    assert not cg.exists()


class BusyParentKernel:
    """v2 writes as the kernel does them for a cgroup with processes of its own: enabling
    controllers is refused (EBUSY) while it has processes, and a write to cgroup.procs
    moves a process out of whichever cgroup of the hierarchy held it."""

    def __init__(self, k: FakeKernel) -> None:
        self.k = k

    def write(self, path: str, value: str) -> None:
        p = Path(path)
        if p.name == "cgroup.subtree_control" and value.startswith("+") and read(str(p.parent / "cgroup.procs")):
            raise OSError(errno.EBUSY, "Device or resource busy")
        if p.name == "cgroup.procs":
            assert self.k.v2_mount is not None
            for procs in self.k.v2_mount.rglob("cgroup.procs"):
                pids = procs.read_text().split()
                if value in pids:
                    procs.write_text("".join(f"{x}\n" for x in pids if x != value))
            p.write_text(p.read_text() + value + "\n")
            return
        if p.name == "cgroup.subtree_control":  # "+memory" enables, "-memory" disables
            enabled = set(p.read_text().split())
            for c in value.split():
                if c.startswith("+"):
                    enabled.add(c)
                else:
                    enabled.discard("+" + c[1:])
            p.write_text(" ".join(sorted(enabled)))
            return
        cgroupfs_write(path, value)


def test_v2_busy_own_cgroup_moves_its_processes_into_a_leaf(kernel_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v2")
    slot = Path(k.root, "unified/condor/slot1")
    me = os.getpid()
    (slot / "cgroup.procs").write_text(f"4242\n{me}\n")  # the starter's shell and this launcher
    monkeypatch.setattr(v2mod, "write_file", BusyParentKernel(k).write)
    outside = k.snapshot({slot})
    cg = job_cgroup("nest", None, k.layout())
    cg.create(Limits(memory_bytes=1 << 20))
    assert cg.primary_path() == str(slot / "sandbox-nest")  # beside the leaf, not below it
    assert read(str(slot / v2mod.LEAF / "cgroup.procs")).split() == ["4242", str(me)]
    assert read(str(slot / "cgroup.procs")) == ""
    assert read(str(slot / "sandbox-nest/memory.max")) == str(1 << 20)
    cg.remove_dirs()
    # another process is still in the leaf: the leaf and the controllers stay
    assert read(str(slot / v2mod.LEAF / "cgroup.procs")).split() == ["4242", str(me)]
    assert not (slot / "sandbox-nest").exists()
    assert k.snapshot({slot}) == outside  # nothing outside the given cgroup changed


def test_v2_launcher_alone_in_its_cgroup_moves_back_at_the_end(kernel_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v2")
    slot = Path(k.root, "unified/condor/slot1")
    me = os.getpid()
    (slot / "cgroup.procs").write_text(f"{me}\n")
    monkeypatch.setattr(v2mod, "write_file", BusyParentKernel(k).write)
    before = k.snapshot(set())
    cg = job_cgroup("alone", None, k.layout())
    cg.create(Limits(memory_bytes=1 << 20))
    assert read(str(slot / v2mod.LEAF / "cgroup.procs")) == str(me)
    cg.remove_dirs()
    assert k.snapshot(set()) == before  # back in its cgroup, controllers off, no leaf


def test_v2_busy_cgroup_parent_of_someone_else_is_refused(kernel_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v2")
    other = Path(k.root, "unified/batch/slot1")
    (other / "cgroup.procs").write_text("4242\n")
    monkeypatch.setattr(v2mod, "write_file", BusyParentKernel(k).write)
    before = k.snapshot(set())
    with pytest.raises(CgroupError, match="no internal processes"):
        job_cgroup("x", "/batch/slot1", k.layout()).create(Limits(memory_bytes=1 << 20))
    assert k.snapshot(set()) == before  # its processes were not moved


def test_v2_launcher_born_in_a_leaf_nests_beside_it(kernel_factory) -> None:  # type: ignore[no-untyped-def]
    k = kernel_factory("v2")
    os.mkdir(Path(k.root, "unified/condor/slot1", v2mod.LEAF))
    k.proc_cgroup = k.proc_cgroup.replace("0::/condor/slot1", f"0::/condor/slot1/{v2mod.LEAF}")
    cg = job_cgroup("born", None, k.layout())
    assert cg.primary_path() == f"{k.root}/unified/condor/slot1/sandbox-born"


@pytest.mark.parametrize(("total", "user", "system", "expected"), [
    (None, 1.5, 0.25, (1.5, 0.25)),  # no cpuacct.usage: the samples as they are
    (3_500_000_000, 1.5, 0.25, (3.0, 0.5)),  # lost ticks: the exact total in their ratio
    (2_000_000_000, 0.0, 0.0, (2.0, 0.0)),  # too short for a tick: all user, as cputime_adjust
    (2_000_000_000, 0.0, 0.5, (0.0, 2.0)),
    (0, 0.0, 0.0, (0.0, 0.0)),
])
def test_v1_cpu_is_the_exact_runtime_split_by_the_samples(total, user, system, expected) -> None:  # type: ignore[no-untyped-def]
    assert v1mod.split_runtime(total, user, system) == pytest.approx(expected)
