"""The limits in force around a sandbox: parsed from the enclosing cgroups' files."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import config
from sandbox.cgroups.base import chain_files, parse_memory_limit, smallest_limit
from sandbox.outcome import effective_limit

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
