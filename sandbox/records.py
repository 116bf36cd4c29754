"""The records sandbox-run keeps and hands out, typed: the final report, the live usage
and the state record of a running sandbox. Each has its JSON round trip
(to_dict / from_dict, to_json / from_json) and from_dict validates: a field of the
wrong type is a RecordError, never a value passed on.

NamedTuples rather than dataclasses: the launcher builds a report on every launch and
`dataclasses` costs ~5 ms of imports (inspect, ast, ...) there; `typing` is loaded anyway.
The annotations are evaluated (no `from __future__ import annotations` here) because
from_dict checks values against them.
"""

import os
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, Union, get_args, get_origin

from .cgroups import PREFIX
from .spec import check_name

if TYPE_CHECKING:
    from .cgroups import JobCgroup, Usage
    from .cgroups.layout import Layout

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})

STATUS_EXITED = "exited"
STATUS_SIGNALED = "signaled"
STATUS_OOM = "oom_killed"
STATUS_TIMED_OUT = "timed_out"
STATUS_FAILED = "failed_to_start"
# The launcher died (SIGKILL) before the job ended: `sandbox gc` or the next launch
# wrote this report from the sandbox's state, with what its cgroup still held.
STATUS_LAUNCHER_LOST = "launcher_lost"
STATUSES = (STATUS_EXITED, STATUS_SIGNALED, STATUS_OOM, STATUS_TIMED_OUT, STATUS_FAILED, STATUS_LAUNCHER_LOST)

REPORT_VERSION = 1


class RecordError(ValueError):
    """A record (a state file, an event, a report) that is not what it claims to be."""


def _conforms(value: object, tp: Any) -> bool:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, arg) for arg in get_args(tp))
    if tp is type(None):
        return value is None
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple:  # tuple[str, ...]
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if origin is Mapping:  # Mapping[str, str] or Mapping[str, Any]
        want = get_args(tp)[1]
        return isinstance(value, Mapping) and all(
            isinstance(k, str) and (want is Any or isinstance(v, want)) for k, v in value.items()
        )
    raise TypeError(f"records: no check for {tp!r}")  # a field type added without one


R = TypeVar("R", bound="tuple[Any, ...]")


def _from_dict(cls: type[R], data: Mapping[str, Any], extra: bool) -> R:
    if not isinstance(data, Mapping):
        raise RecordError(f"{cls.__name__}: not a JSON object")
    hints = cls.__annotations__
    defaults = cls._field_defaults  # type: ignore[attr-defined]
    kwargs: dict[str, Any] = {}
    for name in cls._fields:  # type: ignore[attr-defined]
        if name == "extra":
            continue
        value = data.get(name, defaults.get(name))
        if value is None and name in ("argv", "labels"):  # null in an early report: none
            value = () if name == "argv" else {}
        if not _conforms(value, hints[name]):
            raise RecordError(f"{cls.__name__}: {name} {value!r:.80} is not {hints[name]}")
        if isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        kwargs[name] = value
    if extra:
        kwargs["extra"] = {k: v for k, v in data.items() if k not in hints and k != "event"}
    return cls(**kwargs)


def _to_dict(record: "tuple[Any, ...]") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in zip(record._fields, record, strict=True):  # type: ignore[attr-defined]
        if name == "extra":
            out.update(value)
        elif isinstance(value, tuple):
            out[name] = list(value)
        elif isinstance(value, Mapping):
            out[name] = dict(value)
        else:
            out[name] = value
    return out


def dumps(obj: Mapping[str, Any]) -> str:
    import json  # deferred: json pulls in `re`; the launcher imports it after the fork

    return json.dumps(obj, sort_keys=False, separators=(",", ":"))


def _loads(text: str | bytes) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError as e:
        raise RecordError(f"not valid JSON: {e}") from None


class Report(NamedTuple):
    """The final report (README "Report"): every key, typed, in the file's order."""

    version: int
    name: str
    status: str
    exit_code: int | None
    signal: int | None
    returncode: int
    wall_seconds: float | None
    cpu_user_seconds: float | None
    cpu_system_seconds: float | None
    memory_peak_bytes: int | None
    memory_limit_bytes: int | None
    cpu_limit_cpus: float | None  # the CPU quota in force, in CPUs (--cpus or an enclosing cgroup's)
    oom_kills: int | None
    io_read_bytes: int | None
    io_write_bytes: int | None
    pids_peak: int | None
    cgroup: str | None
    cgroup_version: str | None
    init_host_pid: int | None
    job_host_pid: int | None
    job_ns_pid: int | None
    started_at: float | None
    ended_at: float | None
    argv: tuple[str, ...]
    error: str | None
    tracking: str | None = None  # "cgroup", "pidns" or "process-tree": what held the job's processes together
    labels: Mapping[str, str] = _EMPTY
    extra: Mapping[str, Any] = _EMPTY  # keys beyond these (memory_peak_source, ...)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Report":
        return _from_dict(cls, data, extra=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Report":
        return cls.from_dict(_loads(text))

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @property
    def cpu_seconds(self) -> float | None:
        if self.cpu_user_seconds is None or self.cpu_system_seconds is None:
            return None
        return self.cpu_user_seconds + self.cpu_system_seconds

    def with_usage(self, usage: "Usage", maxrss_kb: int | None) -> "Report":
        """This report with the figures of the job's cgroup."""
        extra = dict(self.extra)
        peak = usage.memory_peak_bytes
        if peak is None and maxrss_kb:
            # No cgroup peak on this kernel (memory.peak is 5.19+): the largest single
            # process's peak RSS, from init's rusage of everything it reaped, is a lower bound.
            peak = maxrss_kb * 1024
            extra["memory_peak_source"] = "max_rss_of_largest_process"
        return self._replace(
            cpu_user_seconds=usage.cpu_user_seconds,
            cpu_system_seconds=usage.cpu_system_seconds,
            memory_peak_bytes=peak,
            oom_kills=usage.oom_kills,
            io_read_bytes=usage.io_read_bytes,
            io_write_bytes=usage.io_write_bytes,
            pids_peak=usage.pids_peak,
            extra=extra,
        )


REPORT_KEYS = tuple(f for f in Report._fields if f != "extra")


class LiveUsage(NamedTuple):
    """`sandbox usage NAME`, typed: the report's keys measured now, and the current
    memory and process count."""

    name: str
    state: str  # "running" or "suspended"
    wall_seconds: float | None
    cpu_user_seconds: float | None
    cpu_system_seconds: float | None
    memory_current_bytes: int | None
    memory_peak_bytes: int | None
    memory_limit_bytes: int | None
    cpu_limit_cpus: float | None
    oom_kills: int | None
    io_read_bytes: int | None
    io_write_bytes: int | None
    pids_current: int | None
    pids_peak: int | None
    cgroup: str | None
    cgroup_version: str | None
    init_host_pid: int | None
    job_host_pid: int | None
    job_ns_pid: int | None
    started_at: float | None
    sampled_at: float
    argv: tuple[str, ...] = ()
    labels: Mapping[str, str] = _EMPTY
    extra: Mapping[str, Any] = _EMPTY

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LiveUsage":
        return _from_dict(cls, data, extra=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "LiveUsage":
        return cls.from_dict(_loads(text))

    @classmethod
    def sample(
        cls, state: "State", usage: "Usage", run_state: str, pids_current: int, now: float,
        *, in_force: tuple[int | None, float | None] = (None, None),
    ) -> "LiveUsage":
        """The live figures of the sandbox `state` describes; `in_force` the memory and
        CPU limits the job has (its own or a tighter enclosing one), as the report has."""
        started = state.started_at
        return cls(
            name=state.name,
            state=run_state,
            wall_seconds=round(now - started, 6) if started is not None else None,
            cpu_user_seconds=usage.cpu_user_seconds,
            cpu_system_seconds=usage.cpu_system_seconds,
            memory_current_bytes=usage.memory_current_bytes,
            memory_peak_bytes=usage.memory_peak_bytes,
            memory_limit_bytes=in_force[0],
            cpu_limit_cpus=in_force[1],
            oom_kills=usage.oom_kills,
            io_read_bytes=usage.io_read_bytes,
            io_write_bytes=usage.io_write_bytes,
            pids_current=pids_current,
            pids_peak=usage.pids_peak,
            cgroup=state.cgroup,
            cgroup_version=state.cgroup_version,
            init_host_pid=state.init_host_pid,
            job_host_pid=state.job_host_pid,
            job_ns_pid=state.job_ns_pid,
            started_at=started,
            sampled_at=now,
            argv=state.argv,
            labels=dict(state.labels),
        )

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @property
    def cpu_seconds(self) -> float | None:
        if self.cpu_user_seconds is None or self.cpu_system_seconds is None:
            return None
        return self.cpu_user_seconds + self.cpu_system_seconds


class State(NamedTuple):
    """A running sandbox's state file: who runs it, its launcher's identity (PID and
    start time, for people: liveness is the file's lock, see state.py), the cgroup
    directories that are its own, and where its records go."""

    name: str
    uid: int | None
    launcher_pid: int | None
    launcher_start: int | None
    init_host_pid: int | None
    cgroup: str | None
    cgroup_version: str | None
    cgroup_paths: Mapping[str, str]
    argv: tuple[str, ...] = ()
    started_at: float | None = None
    labels: Mapping[str, str] = _EMPTY
    job_host_pid: int | None = None
    job_ns_pid: int | None = None
    # what `sandbox gc` needs to write the records of a sandbox whose launcher was killed
    report_path: str | None = None
    report_format: str | None = None
    accounting_log: str | None = None
    memory_limit_bytes: int | None = None
    cpu_limit_cpus: float | None = None
    # a job without a cgroup: "pidns", or "process-tree" with what finds its family
    tracking: str | None = None
    marker: str | None = None  # the token of its environment marker
    tracking_gid: int | None = None  # its supplementary group (root's process-tree jobs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str | None = None) -> "State":
        """Validated, including that every directory it names is a sandbox directory of
        this very name: a state file names the directories to kill, so a doctored or
        corrupt one must not aim gc or `sandbox kill` at another cgroup. `name` (the
        file's) wins over the name written inside."""
        if name is not None and isinstance(data, Mapping):
            data = {**data, "name": name}
        state = _from_dict(cls, data, extra=False)
        try:
            check_name(state.name)
        except ValueError as e:
            raise RecordError(f"state: {e}") from None
        if state.cgroup is None and not state.cgroup_paths:
            return state  # no cgroup: tracked by its PID namespace (sandbox/tracking.py)
        if not state.cgroup_paths or any(
            os.path.basename(p) != PREFIX + state.name for p in state.cgroup_paths.values()
        ):
            raise RecordError("its state file names no cgroup of its own")
        return state

    @classmethod
    def from_json(cls, text: str | bytes, name: str | None = None) -> "State":
        return cls.from_dict(_loads(text), name)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def to_json(self) -> str:
        return dumps(self.to_dict())

    def job_cgroup(self, layout: "Layout | None" = None) -> "JobCgroup":
        """The sandbox's cgroup, rebuilt from the directories recorded here (the same
        object its launcher holds), on `layout` (detected if None)."""
        from .cgroups import detect, job_cgroup

        if self.cgroup is None and not self.cgroup_paths and self.tracking == "process-tree":
            from .ptree import ProcessTreeJob

            return ProcessTreeJob.restore(self.name, token=self.marker, gid=self.tracking_gid,
                                          launcher_pid=self.launcher_pid, launcher_start=self.launcher_start,
                                          init_pid=self.init_host_pid)
        if self.cgroup is None and not self.cgroup_paths:
            from .tracking import PidNamespaceJob

            return PidNamespaceJob.restore(self.name, self.init_host_pid, self.launcher_pid)
        parents = {k: os.path.dirname(v) for k, v in self.cgroup_paths.items()}
        return job_cgroup(self.name, None, layout or detect(), parent_dirs=parents)
