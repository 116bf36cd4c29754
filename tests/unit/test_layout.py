"""cgroups.layout.parse: where hierarchies are mounted and where we sit in each,
from mountinfo and /proc/self/cgroup texts of real layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.cgroups.layout import Hierarchy, detect, parse

# this machine: v1 controllers apart, a controller-less cgroup2 at unified, a managed memory cgroup
HYBRID_MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/abc
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""

# systemd's legacy layout: cpu and cpuacct co-mounted, no cgroup2 line at all
V1_MOUNTINFO = """\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,pids
33 25 0:29 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,blkio
34 25 0:30 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,freezer
35 25 0:31 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,relatime shared:17 - cgroup cgroup rw,net_cls,net_prio
"""
V1_CGROUP = """\
7:freezer:/slurm/uid_0/job_1
6:blkio:/system.slice/slurmd.service
5:pids:/system.slice/slurmd.service
4:memory:/slurm/uid_0/job_1/step_0
3:cpu,cpuacct:/slurm/uid_0/job_1
2:net_cls,net_prio:/
1:name=systemd:/system.slice/slurmd.service
"""

V2_MOUNTINFO = """\
24 1 0:21 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""
V2_CGROUP = "0::/system.slice/condor.service/slot1\n"


def test_hybrid() -> None:
    layout = parse(HYBRID_MOUNTINFO, HYBRID_CGROUP)
    assert layout.kind == "hybrid"
    assert set(layout.v1) == {"memory", "pids", "cpu", "cpuacct", "blkio", "freezer", "devices"}  # cpuset ignored
    mem = layout.v1["memory"]
    assert mem == Hierarchy("/sys/fs/cgroup/memory", "/", frozenset({"memory"}), 1, "/process_api/abc")
    assert mem.directory(mem.own_path) == "/sys/fs/cgroup/memory/process_api/abc"
    assert layout.v1["cpu"].directory("/") == "/sys/fs/cgroup/cpu"
    assert layout.unified is not None
    assert layout.unified.mountpoint == "/sys/fs/cgroup/unified" and layout.unified.version == 2
    assert layout.unified.own_path == "/"


def test_v1_comounted() -> None:
    layout = parse(V1_MOUNTINFO, V1_CGROUP)
    assert layout.kind == "v1" and layout.unified is None
    cpu, acct = layout.v1["cpu"], layout.v1["cpuacct"]
    assert cpu is acct or cpu == acct
    assert cpu.controllers == frozenset({"cpu", "cpuacct"})
    assert cpu.directory(cpu.own_path) == "/sys/fs/cgroup/cpu,cpuacct/slurm/uid_0/job_1"
    assert layout.v1["memory"].own_path == "/slurm/uid_0/job_1/step_0"
    assert layout.v1["pids"].own_path == "/system.slice/slurmd.service"
    assert "net_cls" not in layout.v1


def test_v2(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    mountinfo = V2_MOUNTINFO.replace("/sys/fs/cgroup", str(tmp_path))
    layout = parse(mountinfo, V2_CGROUP)
    assert layout.kind == "v2" and layout.v1 == {}
    u = layout.unified
    assert u is not None
    assert u.controllers == frozenset({"cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"})
    assert u.directory(u.own_path) == f"{tmp_path}/system.slice/condor.service/slot1"


def test_v2_unreadable_controllers() -> None:
    layout = parse(V2_MOUNTINFO.replace("/sys/fs/cgroup", "/nonexistent/cg"), V2_CGROUP)
    assert layout.kind == "v2"
    assert layout.unified is not None and layout.unified.controllers == frozenset()


def test_cgroup2_mount_without_a_v2_line_is_ignored() -> None:
    """A cgroup2 mount we have no path in (no '0::' line) cannot be used."""
    layout = parse(V1_MOUNTINFO + V2_MOUNTINFO.replace("/sys/fs/cgroup", "/sys/fs/cgroup/unified"), V1_CGROUP)
    assert layout.kind == "v1" and layout.unified is None


def test_none() -> None:
    layout = parse("22 1 254:0 / / rw - ext4 /dev/vda rw\n", "")
    assert layout.kind == "none" and layout.v1 == {} and layout.unified is None


def test_container_mount_root() -> None:
    """In a container the hierarchy is mounted from a non-/ root: paths outside it cannot
    be reached, paths inside map below the mountpoint."""
    mountinfo = "40 31 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n"
    layout = parse(mountinfo, "4:memory:/docker/abc/job\n")
    mem = layout.v1["memory"]
    assert mem.mount_root == "/docker/abc"
    assert mem.directory("/docker/abc/job") == "/sys/fs/cgroup/memory/job"
    assert mem.directory("/docker/abc") == "/sys/fs/cgroup/memory"
    for outside in ("/", "/docker", "/docker/abcdef", "/other/job"):
        with pytest.raises(ValueError, match="outside"):
            mem.directory(outside)


def test_first_mount_of_a_hierarchy_wins_and_escapes_are_decoded() -> None:
    mountinfo = (
        "35 31 0:32 / /sys/fs/cgroup/my\\040memory rw - cgroup cgroup rw,memory\n"
        "90 31 0:32 / /mnt/again rw - cgroup cgroup rw,memory\n"
        "garbage line without separator\n"
        "1 2 - short\n"
    )
    layout = parse(mountinfo, "4:memory:/a b\n")
    assert layout.v1["memory"].mountpoint == "/sys/fs/cgroup/my memory"
    assert layout.v1["memory"].directory("/a b") == "/sys/fs/cgroup/my memory/a b"


def test_controller_we_do_not_sit_in_is_skipped() -> None:
    """A mounted hierarchy absent from /proc/self/cgroup (e.g. mounted after a
    namespace change) has no own path: not used."""
    layout = parse(V1_MOUNTINFO, "4:memory:/x\n")
    assert set(layout.v1) == {"memory"}


def test_detect_matches_this_host() -> None:
    with open("/proc/self/cgroup") as f:
        text = f.read()
    layout = detect()
    has_v2_line = any(line.startswith("0::") for line in text.splitlines())
    has_v1_line = any(not line.startswith("0::") for line in text.splitlines() if line)
    if layout.kind == "hybrid":
        assert has_v1_line and has_v2_line
    elif layout.kind == "v2":
        assert has_v2_line
    for ctrl, h in layout.v1.items():
        assert ctrl in h.controllers
        assert f":{h.own_path}" in text
