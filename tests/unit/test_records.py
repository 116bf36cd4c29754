"""records.py: the report, the live usage and the state record, typed: JSON round
trips, and validation that refuses a field of the wrong type or a state file that
names cgroups other than its own sandbox's."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sandbox import report as report_mod
from sandbox.cgroups import Usage
from sandbox.records import REPORT_KEYS, LiveUsage, RecordError, Report, State


def full_report(**changes: Any) -> dict[str, Any]:
    r = report_mod.new_report("job-1")
    r.update(status="exited", exit_code=0, returncode=0, wall_seconds=1.25, cpu_user_seconds=0.5,
             cpu_system_seconds=0.25, memory_peak_bytes=1 << 20, memory_limit_bytes=1 << 30, oom_kills=0,
             io_read_bytes=0, io_write_bytes=4096, pids_peak=3, cgroup="/sys/fs/cgroup/memory/sandbox-job-1",
             cgroup_version="hybrid", init_host_pid=100, job_host_pid=101, job_ns_pid=2, started_at=1.5e9,
             ended_at=1.5e9 + 1, argv=["sh", "-c", "true"], labels={"tenant": "cms"})
    r.update(changes)
    return r


def state_dict(name: str = "job-1", **changes: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": name, "uid": 1000, "launcher_pid": 4242, "launcher_start": 123456, "init_host_pid": 4243,
        "cgroup": f"/sys/fs/cgroup/memory/batch/sandbox-{name}", "cgroup_version": "hybrid",
        "cgroup_paths": {"memory": f"/sys/fs/cgroup/memory/batch/sandbox-{name}",
                         "unified": f"/sys/fs/cgroup/unified/sandbox-{name}"},
        "argv": ["sleep", "1"], "started_at": 1.5e9, "labels": {"a": "b"},
    }
    d.update(changes)
    return d


def test_report_fields_are_the_report_keys_in_order() -> None:
    assert REPORT_KEYS == report_mod.REPORT_KEYS
    assert list(report_mod.new_report("x")) == list(REPORT_KEYS)


def test_report_round_trip_keeps_keys_order_and_extras() -> None:
    data = full_report(memory_peak_source="max_rss_of_largest_process")
    r = Report.from_dict(data)
    assert r.argv == ("sh", "-c", "true") and r.labels == {"tenant": "cms"}
    assert r.extra == {"memory_peak_source": "max_rss_of_largest_process"}
    assert r.to_dict() == data and list(r.to_dict()) == list(data)
    assert Report.from_json(r.to_json()) == r
    assert json.loads(r.to_json()) == data


def test_report_from_an_event_drops_the_event_key() -> None:
    r = Report.from_dict({"event": "exited", **full_report()})
    assert "event" not in r.extra and "event" not in r.to_dict()


@pytest.mark.parametrize(
    "key,value",
    [("returncode", None), ("returncode", "0"), ("returncode", True), ("status", 3), ("wall_seconds", "1"),
     ("argv", "sh"), ("argv", [1, 2]), ("labels", {"a": 1}), ("labels", ["a"]), ("job_host_pid", 1.5),
     ("name", None)],
)
def test_report_refuses_wrong_types(key: str, value: Any) -> None:
    with pytest.raises(RecordError, match=key):
        Report.from_dict(full_report(**{key: value}))


def test_report_garbage() -> None:
    for text in ("", "[]", "{", '"x"', "null"):
        with pytest.raises(RecordError):
            Report.from_json(text)


def test_report_with_usage_takes_every_figure_and_the_rss_fallback() -> None:
    base = Report.from_dict(full_report())
    u = Usage(cpu_user_seconds=2.0, cpu_system_seconds=1.0, memory_peak_bytes=5 << 20, oom_kills=1,
              io_read_bytes=7, io_write_bytes=8, pids_peak=9)
    r = base.with_usage(u, maxrss_kb=100)
    assert (r.cpu_user_seconds, r.cpu_system_seconds, r.memory_peak_bytes, r.oom_kills, r.io_read_bytes,
            r.io_write_bytes, r.pids_peak) == (2.0, 1.0, 5 << 20, 1, 7, 8, 9)
    assert "memory_peak_source" not in r.extra
    # no cgroup peak (memory.peak is 5.19+): the largest process's RSS, said so
    r = base.with_usage(Usage(), maxrss_kb=100)
    assert r.memory_peak_bytes == 100 * 1024 and r.extra == {"memory_peak_source": "max_rss_of_largest_process"}
    assert list(r.to_dict())[-1] == "memory_peak_source"
    assert base.with_usage(Usage(), maxrss_kb=None).memory_peak_bytes is None


def test_live_usage_round_trip() -> None:
    st = State.from_dict(state_dict(job_host_pid=4244, job_ns_pid=2))
    u = Usage(cpu_user_seconds=1.0, cpu_system_seconds=0.5, memory_current_bytes=10, pids_current=3)
    live = LiveUsage.sample(st, u, "running", 3, 1.5e9 + 10)
    assert live.wall_seconds == 10.0 and live.job_host_pid == 4244 and live.argv == ("sleep", "1")
    assert live.cpu_seconds == 1.5
    d = live.to_dict()
    assert list(d)[:2] == ["name", "state"] and d["argv"] == ["sleep", "1"] and d["labels"] == {"a": "b"}
    assert LiveUsage.from_json(live.to_json()) == live
    with pytest.raises(RecordError, match="sampled_at"):
        LiveUsage.from_dict({**d, "sampled_at": None})


def test_state_round_trip() -> None:
    data = state_dict()
    st = State.from_dict(data)
    assert st.job_host_pid is None and st.cgroup_paths["unified"].endswith("sandbox-job-1")
    assert State.from_json(st.to_json()) == st
    assert {k: v for k, v in st.to_dict().items() if k in data} == data
    later = st._replace(job_host_pid=5, job_ns_pid=2)
    assert State.from_json(later.to_json()).job_ns_pid == 2


def test_state_name_of_the_file_wins() -> None:
    # a file renamed (or written) under another name is checked against its file's name
    with pytest.raises(RecordError, match="no cgroup of its own"):
        State.from_dict(state_dict("job-1"), name="job-2")
    assert State.from_dict({**state_dict("job-2"), "name": "forged"}, name="job-2").name == "job-2"


@pytest.mark.parametrize(
    "paths",
    [
        {},  # names nothing
        {"memory": "/sys/fs/cgroup/memory/machine.slice"},  # somebody else's cgroup
        {"memory": "/sys/fs/cgroup/memory/sandbox-job-1", "cpu": "/sys/fs/cgroup/cpu"},  # one bad among good
        {"memory": "/sys/fs/cgroup/memory/sandbox-job-10"},  # a prefix of another sandbox's name
        {"memory": "/sys/fs/cgroup/memory/sandbox-job-1/"},  # a trailing slash: basename is ""
    ],
)
def test_state_naming_other_cgroups_is_refused(paths: dict[str, str]) -> None:
    with pytest.raises(RecordError, match="no cgroup of its own"):
        State.from_dict(state_dict(cgroup_paths=paths))


@pytest.mark.parametrize(
    "changes",
    [{"name": "../etc"}, {"name": ""}, {"cgroup_paths": ["/sys/fs/cgroup/memory/sandbox-job-1"]},
     {"cgroup_paths": {"memory": 5}}, {"uid": "0"}, {"launcher_pid": 1.0}, {"argv": "sleep"}],
)
def test_state_garbage_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(RecordError):
        State.from_dict(state_dict(**changes))


def test_state_not_an_object() -> None:
    for text in ("[]", "1", "{"):
        with pytest.raises(RecordError):
            State.from_json(text)
