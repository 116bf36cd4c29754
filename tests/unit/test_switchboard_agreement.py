"""The switchboard and the launcher's own cgroup backends agree.

The switchboard (helpers/switchboard.py) is self-contained on purpose: it runs as root
and imports nothing from the user-writable `sandbox` package. So it carries its own
layout detection, directory naming and limit writing, and the launcher, when not root,
takes over the directories it made through the same backends it uses as root. Here
both run on the same fake cgroupfs (the fake kernel of test_cgroups_fake.py), built
from the same mountinfo and /proc/self/cgroup texts, and must choose the same
hierarchies, directories, names, controllers and limit values, and leave the same
tree behind; the launcher's backend rebuilt from the switchboard's reply (as
DelegatedCgroup does) must find exactly those directories.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.cgroups import PREFIX, CgroupError, job_cgroup
from sandbox.cgroups import layout as layout_mod
from sandbox.cgroups.v2 import V2Cgroup
from sandbox.limits import Limits
from sandbox.spec import check_name

from .switchboard_module import sb
from .test_cgroups_fake import FakeKernel, cgroupfs_write, kernel_factory  # noqa: F401 (the fixture)

PARENT = "/batch/slot1"  # exists in every hierarchy of the fake kernel
KERNELS = [("v1", {}), ("v1", {"comount_cpu": True}), ("v2", {}), ("hybrid", {})]
LIMITS = [
    Limits(),
    Limits(memory_bytes=256 << 20),
    Limits(memory_bytes=256 << 20, swap_bytes=64 << 20, pids=100, cpus=0.5),
    Limits(pids=7, cpus=2.25),
]


def _request(name: str, limits: Limits) -> dict[str, Any]:
    """What the unprivileged launcher asks for (DelegatedCgroup.create), through the
    switchboard's own parser, as the installed helper receives it."""
    raw = {
        "version": 1, "op": "create", "name": name,
        "limits": {
            "memory": limits.memory_bytes,
            "swap": limits.swap_limit_bytes() if limits.memory_bytes is not None else None,
            "pids": limits.pids,
            "cpus": limits.cpus,
        },
    }
    return dict(sb.parse_request(json.dumps(raw).encode()))


def _tree(k: FakeKernel) -> dict[str, str | None]:
    return {os.path.relpath(p, k.root): v for p, v in k.snapshot(set()).items()}


@pytest.fixture
def two_kernels(kernel_factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]  # noqa: F811
    """make(kind) -> (kernel for the package, kernel for the switchboard), alike."""
    monkeypatch.setattr(sb, "LOCK", str(tmp_path / "switchboard.lock"))

    def make(kind: str, caller_in: str | None = None, **kw: bool) -> tuple[FakeKernel, FakeKernel]:
        mine, theirs = kernel_factory(kind, **kw), kernel_factory(kind, **kw)
        if caller_in is not None:  # the caller (and a root launcher beside it) sits there in every hierarchy
            for k in (mine, theirs):
                lines = k.proc_cgroup.splitlines()
                k.proc_cgroup = "".join(f"{line.rsplit(':', 1)[0]}:{caller_in}\n" for line in lines)
        # a cgroupfs write replaces the value (the fixture does the same for the package)
        monkeypatch.setattr(sb, "write_at", lambda fd, name, value: cgroupfs_write(f"/proc/self/fd/{fd}/{name}", value))
        monkeypatch.setattr(sb, "hierarchies", lambda: (*sb.parse_hierarchies(theirs.mountinfo, theirs.proc_cgroup),
                                                        theirs.proc_cgroup))
        return mine, theirs

    return make


@pytest.mark.parametrize(("kind", "kw"), KERNELS)
def test_same_hierarchies(kind: str, kw: dict[str, bool]) -> None:
    k = FakeKernel(Path("/fake"), kind, **kw)
    layout = layout_mod.parse(k.mountinfo, k.proc_cgroup)
    sb_kind, hier = sb.parse_hierarchies(k.mountinfo, k.proc_cgroup)
    assert sb_kind == layout.kind
    mine = {c: (h.mountpoint, h.mount_root) for c, h in layout.v1.items()}
    if layout.unified is not None:
        mine["unified"] = (layout.unified.mountpoint, layout.unified.mount_root)
    # the switchboard leaves out exactly the v1 controllers the backend of this layout does not use
    used = set(job_cgroup("x", PARENT, layout).paths())
    assert hier == {key: where for key, where in mine.items() if key in used}


def test_same_controllers_and_prefix() -> None:
    assert sb.PREFIX == PREFIX
    assert set(sb.V1_WANTED["v1"]) == set(layout_mod.V1_CONTROLLERS)
    assert sb.V2_CONTROLLERS == V2Cgroup.CONTROLLERS
    assert sb.LEAF == __import__("sandbox.cgroups.v2").cgroups.v2.LEAF  # where a busy v2 cgroup's processes go
    assert sb.CPU_PERIOD_US == 100_000 == __import__("sandbox.limits").limits.CPU_PERIOD_US


@given(st.text(alphabet="ab.-_/\0 Z9é", max_size=70))
def test_same_names(name: str) -> None:
    try:
        check_name(name)
        ours = True
    except ValueError:
        ours = False
    try:
        sb.check_name(name)
        theirs = True
    except sb.Refusal:
        theirs = False
    assert ours == theirs, name


@pytest.mark.parametrize("nested", [True, False], ids=["caller-in-slot", "caller-at-root"])
@pytest.mark.parametrize("limits", LIMITS, ids=lambda lim: ",".join(f"{k}={v}" for k, v in lim._asdict().items() if v))
@pytest.mark.parametrize(("kind", "kw"), KERNELS)
def test_same_directories_limits_and_tree(two_kernels, kind: str, kw: dict[str, bool], limits: Limits,  # type: ignore[no-untyped-def]
                                          nested: bool) -> None:
    # A caller in a slot: the switchboard nests the sandbox in the caller's own cgroup, where
    # the package as root, sitting there too, puts it by default. A caller at the root of
    # every hierarchy (a login node): the configured parent, as root's --cgroup-parent.
    mine, theirs = two_kernels(kind, PARENT if nested else "/", **kw)
    before = _tree(theirs)
    assert _tree(mine) == before
    # the package, as root
    cg = job_cgroup("agree", None if nested else PARENT, mine.layout())
    cg.create(limits)
    # the switchboard, for a caller, with no maxima configured (the request as asked)
    cfg = {"cgroup": {"parent": "/elsewhere" if nested else PARENT}}
    reply = sb.op_create(cfg, sb.Caller(), _request("agree", limits))
    assert reply["layout"] == cg.version
    assert reply["limits"] == _request("agree", limits)["limits"]
    # same directories, hierarchy by hierarchy (relative to each kernel's root)
    assert {key: os.path.relpath(p, theirs.root) for key, p in reply["paths"].items()} == {
        key: os.path.relpath(p, mine.root) for key, p in cg.paths().items()
    }
    # the same files with the same values: limits, controllers enabled on the way, nothing else
    assert _tree(theirs) == _tree(mine)
    # the launcher's backend rebuilt from the reply, as DelegatedCgroup does, finds them
    rebuilt = job_cgroup("agree", None, theirs.layout(),
                         parent_dirs={k: os.path.dirname(str(v)) for k, v in reply["paths"].items()})
    assert rebuilt.paths() == reply["paths"] and rebuilt.version == cg.version
    # and both remove all of it; what stays is the controllers enabled in the v2 parent
    # (both only ever add to cgroup.subtree_control, never take away)
    cg.destroy(timeout=0.1)
    sb.op_destroy(cfg, sb.Caller(), {"op": "destroy", "name": "agree"})
    after = _tree(theirs)
    assert _tree(mine) == after
    assert set(after) == set(before)
    assert {p: v for p, v in after.items() if v != before[p]} == (
        {"unified/batch/slot1/cgroup.subtree_control": "+memory +pids +cpu +io"} if kind == "v2" else {}
    )


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_both_refuse_swap_without_swap_accounting(two_kernels, kind: str) -> None:  # type: ignore[no-untyped-def]
    kw = {"memsw": False} if kind == "v1" else {}
    mine, theirs = two_kernels(kind, PARENT, **kw)
    if kind == "v2":
        for k in (mine, theirs):
            k.omit_files.add("memory.swap.max")
    before = _tree(theirs)
    limits = Limits(memory_bytes=64 << 20, swap_bytes=1 << 20)
    with pytest.raises(CgroupError, match="swap"):
        job_cgroup("noswap", None, mine.layout()).create(limits)
    with pytest.raises(sb.Refusal, match="swap"):
        sb.op_create({"cgroup": {"parent": PARENT}}, sb.Caller(), _request("noswap", limits))
    # nothing half-done on either side (the v2 parent's enabled controllers are the one
    # change both make before they find out, and make alike)
    assert _tree(mine) == _tree(theirs)
    assert {p for p in _tree(theirs) if "sandbox-" in p} == set()
    assert set(_tree(theirs)) == set(before)


def test_a_busy_v2_slot_is_emptied_into_the_leaf_alike(two_kernels, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """v2, the caller's slot holds processes (a starter's shell and more): both move them
    into the slot's leaf, enable the controllers there and nest the sandbox beside it."""
    from sandbox.cgroups import v2 as v2mod

    from .test_cgroups_fake import BusyParentKernel

    mine, theirs = two_kernels("v2", "/condor/slot1")
    for k in (mine, theirs):
        Path(k.root, "unified/condor/slot1/cgroup.procs").write_text("4242\n4243\n")
    monkeypatch.setattr(v2mod, "write_file", BusyParentKernel(mine).write)
    busy = BusyParentKernel(theirs)

    def write_at(fd: int, name: str, value: str) -> None:
        busy.write(os.readlink(f"/proc/self/fd/{fd}") + "/" + name, value)

    monkeypatch.setattr(sb, "write_at", write_at)
    limits = Limits(memory_bytes=1 << 20)
    cg = job_cgroup("busy", None, mine.layout())
    cg.create(limits)
    reply = sb.op_create({"cgroup": {"parent": "/elsewhere"}}, sb.Caller(), _request("busy", limits))
    assert os.path.relpath(reply["paths"]["unified"], theirs.root) == "unified/condor/slot1/sandbox-busy"
    assert _tree(theirs) == _tree(mine)
    assert Path(theirs.root, "unified/condor/slot1", sb.LEAF, "cgroup.procs").read_text().split() == ["4242", "4243"]


@pytest.mark.parametrize(("kind", "kw"), [k for k in KERNELS if k[0] != "v2"])
def test_same_shared_memory_cgroup_in_a_limited_slot(two_kernels, kind: str, kw: dict[str, bool]) -> None:  # type: ignore[no-untyped-def]
    """A slot with a memory limit (a Slurm step) and no tighter one asked for: on v1 neither
    the package as root nor the switchboard makes a memory directory (the job stays in the
    slot's, where v1 counts the OOM kill a batch system looks for); both agree on the rest,
    and the backend rebuilt as DelegatedCgroup does reads the slot's memory."""
    mine, theirs = two_kernels(kind, PARENT, **kw)
    for k in (mine, theirs):
        (k.v1_mounts["memory"] / PARENT.lstrip("/") / "memory.limit_in_bytes").write_text(f"{200 << 20}\n")
    cg = job_cgroup("share", None, mine.layout())
    cg.create(Limits(pids=7))
    reply = sb.op_create({"cgroup": {"parent": "/elsewhere"}}, sb.Caller(), _request("share", Limits(pids=7)))
    assert "memory" not in reply["paths"] and "memory" not in cg.paths()
    assert reply["shared"] == {"memory": str(theirs.v1_mounts["memory"] / PARENT.lstrip("/"))}
    assert reply["limits"]["memory"] == 200 << 20  # what the job has: the slot's
    assert {key: os.path.relpath(p, theirs.root) for key, p in reply["paths"].items()} == {
        key: os.path.relpath(p, mine.root) for key, p in cg.paths().items()
    }
    assert _tree(theirs) == _tree(mine)
    parent_dirs = {k: os.path.dirname(str(v)) for k, v in reply["paths"].items()}
    rebuilt = job_cgroup("share", None, theirs.layout(), parent_dirs={**parent_dirs, **reply["shared"]})
    rebuilt.share_memory()
    assert rebuilt.paths() == reply["paths"] and rebuilt.enclosing_memory_limit() == 200 << 20
    assert rebuilt.usage().memory_limit_bytes == 200 << 20  # the slot's figures
    cg.remove_dirs()
    rebuilt.remove_dirs()


@pytest.mark.parametrize("cpus", [2.25, 0.25], ids=["above-the-slot", "below-the-slot"])
@pytest.mark.parametrize(("kind", "kw"), KERNELS)
def test_same_cpu_quota_in_a_slot_with_one(two_kernels, kind: str, kw: dict[str, bool], cpus: float) -> None:  # type: ignore[no-untyped-def]
    """A slot with a 0.5-CPU quota: --cpus above it gets no quota of its own on v1 (which
    refuses a child quota above an ancestor's) and its own on v2, from the package as
    root and from the switchboard alike; below it, its own everywhere. The reply says
    what the job gets: the tighter of the two."""
    mine, theirs = two_kernels(kind, PARENT, **kw)
    for k in (mine, theirs):
        if kind == "v2":
            Path(k.v2_mount, PARENT.lstrip("/"), "cpu.max").write_text("50000 100000\n")
        else:
            cpu_root = next(mp for name, mp in k.v1_mounts.items() if "cpu" in name.split(","))
            Path(cpu_root, PARENT.lstrip("/"), "cpu.cfs_quota_us").write_text("25000\n")
            Path(cpu_root, PARENT.lstrip("/"), "cpu.cfs_period_us").write_text("50000\n")
    limits = Limits(cpus=cpus)
    cg = job_cgroup("cpuq", None, mine.layout())
    cg.create(limits)
    reply = sb.op_create({"cgroup": {"parent": "/elsewhere"}}, sb.Caller(), _request("cpuq", limits))
    assert reply["limits"]["cpus"] == min(cpus, 0.5)
    assert _tree(theirs) == _tree(mine)
    quota = {p: (v or "").strip() for p, v in _tree(theirs).items()
             if "sandbox-cpuq" in p and ("cfs_quota" in p or "cpu.max" in p)}
    own = kind == "v2" or cpus < 0.5
    assert set(quota.values()) == {f"{round(cpus * 100000)} 100000" if kind == "v2" else
                                   str(round(cpus * 100000)) if own else "-1"}, quota
    cg.remove_dirs()
    sb.op_destroy({"cgroup": {"parent": "/elsewhere"}}, sb.Caller(), {"op": "destroy", "name": "cpuq"})
