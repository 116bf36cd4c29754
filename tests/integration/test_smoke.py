from __future__ import annotations

import json

import pytest

from tests.conftest import needs_root, run_sandbox

pytestmark = [needs_root, pytest.mark.cgroup]


def test_ps_shows_only_the_job(tmp_path):
    report = tmp_path / "r.json"
    p = run_sandbox("--mem", "2G", "--report", str(report), "--", "ps", "-e", "-o", "pid=,comm=")
    assert p.returncode == 0, p.stderr
    lines = [line.split() for line in p.stdout.strip().splitlines()]
    assert [pid for pid, _ in lines] == ["1", "2"]
    assert lines[1][1] == "ps"
    data = json.loads(report.read_text())
    assert data["status"] == "exited" and data["exit_code"] == 0
    assert data["job_ns_pid"] == 2
