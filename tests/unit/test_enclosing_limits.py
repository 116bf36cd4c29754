"""The limits in force around a sandbox: parsed from the enclosing cgroups' files."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import config
from sandbox.cgroups import job_cgroup
from sandbox.cgroups.base import (
    chain_files,
    parse_cfs_quota,
    parse_cpu_max,
    parse_memory_limit,
    smallest_cpus,
    smallest_limit,
)
from sandbox.limits import Limits
from sandbox.outcome import effective_limit
from tests.unit.test_cgroups_fake import kernel_factory  # noqa: F401 (a fixture)

MiB = 2**20


@pytest.mark.parametrize(
    ("text", "limit"),
    [("max\n", None), ("9223372036854771712\n", None), ("524288000\n", 500 * MiB), (None, None), ("", None),
     ("-1", None), ("junk", None)],
)
def test_parse_memory_limit(text: str | None, limit: int | None) -> None:
    assert parse_memory_limit(text) == limit


def test_the_smallest_limit_along_the_chain_wins() -> None:
    assert smallest_limit(["max", "1048576000", "524288000", "max"]) == 500 * MiB
    assert smallest_limit(["9223372036854771712", None]) is None
    assert smallest_limit([]) is None


def test_chain_files_reads_up_to_the_hierarchy_root(tmp_path: Path) -> None:
    """A fake v1 memory hierarchy: root > slurm > job_1 > step_0 > task_0 (what Slurm's
    task/cgroup makes); the directory above the root is not a cgroup."""
    root = tmp_path / "memory"
    chain = [root / p for p in ("", "slurm", "slurm/job_1", "slurm/job_1/step_0", "slurm/job_1/step_0/task_0")]
    limits = ["9223372036854771712", "9223372036854771712", "1048576000", "314572800", "9223372036854771712"]
    for d, limit in zip(chain, limits, strict=True):
        d.mkdir()
        (d / "cgroup.procs").write_text("")
        (d / "memory.limit_in_bytes").write_text(limit + "\n")
    texts = chain_files(str(chain[-1]), "memory.limit_in_bytes")
    assert [t.strip() for t in texts if t] == limits[::-1]
    assert smallest_limit(texts) == 300 * MiB


@pytest.mark.parametrize(
    ("requested", "enclosing", "effective"),
    [(None, None, None), (2048 * MiB, None, 2048 * MiB), (None, 500 * MiB, 500 * MiB),
     (2048 * MiB, 500 * MiB, 500 * MiB), (100 * MiB, 500 * MiB, 100 * MiB)],
)
def test_effective_limit(requested: int | None, enclosing: int | None, effective: int | None) -> None:
    assert effective_limit(requested, enclosing) == effective


def test_from_slurm_prefers_the_step_cgroup_over_the_variables() -> None:
    """Inside sbatch --mem=1000M a step's task carries the job's SLURM_MEM_PER_NODE: when
    the step's cgroup is limited, the variables are not used and no limit of ours is set."""
    env = {"SLURM_JOB_ID": "9", "SLURM_MEM_PER_NODE": "1000", "SLURM_CPUS_PER_TASK": "1"}
    assert "mem" not in config.slurm_values(env, enclosing_memory=300 * MiB)
    assert config.slurm_values(env, enclosing_memory=None)["mem"].value == 1000 * MiB


# -- the CPU quota in force --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("50000 200000", 0.25), ("200000", 2.0), (None, None),
     ("", None), ("junk 100000", None), ("100000 0", None)],
)
def test_parse_cpu_max(text: str | None, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize(
    ("quota", "period", "cpus"),
    [("-1\n", "100000\n", None), ("50000\n", "100000\n", 0.5), ("300000", "100000", 3.0), (None, "100000", None),
     ("50000", None, None), ("50000", "0", None), ("x", "100000", None)],
)
def test_parse_cfs_quota(quota: str | None, period: str | None, cpus: float | None) -> None:
    assert parse_cfs_quota(quota, period) == cpus


def test_the_smallest_cpu_quota_along_the_chain_wins() -> None:
    # a child may be given more than its parent (v1 and v2 both allow it): the parent bounds it
    assert smallest_cpus([4.0, None, 1.5, None]) == 1.5
    assert smallest_cpus([None, None]) is None
    assert smallest_cpus([]) is None


@pytest.mark.parametrize(
    ("requested", "enclosing", "effective"),
    [(None, None, None), (4.0, None, 4.0), (None, 1.5, 1.5), (4.0, 1.5, 1.5), (0.5, 1.5, 0.5)],
)
def test_effective_cpu_limit(requested: float | None, enclosing: float | None, effective: float | None) -> None:
    assert effective_limit(requested, enclosing) == effective


def _quota(kind: str, directory: Path, quota: int, period: int) -> None:
    if kind == "v2":
        (directory / "cpu.max").write_text(f"{quota} {period}\n")
    else:
        (directory / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        (directory / "cpu.cfs_period_us").write_text(f"{period}\n")


@pytest.mark.parametrize("kind", ["v1", "hybrid", "v2"])
def test_the_backends_read_the_cpu_quota_of_every_ancestor(kernel_factory, kind: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """A sandbox under /batch/slot1 (v2: /condor/slot1): the quota of the slot (1.5 CPUs)
    and of its parent (0.5 CPUs at a 200 ms period) are read; the tighter one is in force.
    Reading writes nothing."""
    k = kernel_factory(kind)
    top, slot = ("condor", "condor/slot1") if kind == "v2" else ("batch", "batch/slot1")
    cpu_root = k.v2_mount if kind == "v2" else k.v1_mounts["cpu"]
    cg = job_cgroup("q", "/" + slot, k.layout())
    assert cg.enclosing_cpu_limit() is None  # no quota anywhere
    _quota(kind, cpu_root / slot, 150000, 100000)
    assert cg.enclosing_cpu_limit() == 1.5
    _quota(kind, cpu_root / top, 100000, 200000)
    before = k.snapshot(set())
    assert cg.enclosing_cpu_limit() == 0.5
    assert k.snapshot(set()) == before
    cg.create(Limits(cpus=4))  # above the enclosing quota: allowed, and bounded by it
    assert cg.enclosing_cpu_limit() == 0.5
    cg.remove_dirs()


def test_the_report_states_the_tightest_cpu_quota() -> None:
    from sandbox import outcome
    from sandbox.limits import Limits as L
    from sandbox.spec import JobSpec

    spec = JobSpec(argv=("true",), name="x", limits=L(cpus=4.0))
    assert outcome.limits_in_force(spec, None, None, 1.5) == (None, 1.5)
    assert outcome.limits_in_force(spec, None, 300 * MiB, None) == (300 * MiB, 4.0)

    class BestEffort:  # --limits best-effort where --cpus could not be enforced
        not_enforced = ("--cpus",)

    assert outcome.limits_in_force(spec, BestEffort(), None, None) == (None, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["v1", "hybrid"])
def test_v1_cpus_above_the_enclosing_quota_sets_none_of_its_own(kernel_factory, kind: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """v1 refuses a child quota above an ancestor's (EINVAL): --cpus 4 under a 0.5-CPU slot
    leaves the sandbox's own quota unset (the slot's bounds it); --cpus 0.25 is set."""
    k = kernel_factory(kind)
    _quota(kind, k.v1_mounts["cpu"] / "batch", 50000, 100000)
    cg = job_cgroup("big", "/batch/slot1", k.layout())
    cg.create(Limits(cpus=4))
    assert (Path(cg.paths()["cpu"]) / "cpu.cfs_quota_us").read_text().strip() == "-1"
    cg.remove_dirs()
    cg = job_cgroup("small", "/batch/slot1", k.layout())
    cg.create(Limits(cpus=0.25))
    assert (Path(cg.paths()["cpu"]) / "cpu.cfs_quota_us").read_text().strip() == "25000"
    cg.remove_dirs()
