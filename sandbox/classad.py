"""The report as an HTCondor ClassAd (`--report-format classad`).

One `Attribute = value` per line, the format condor_starter, condor_chirp and
`condor_q -long` use. Standard job-ad attributes where HTCondor has one, in HTCondor's
units; the rest as Sandbox* attributes. A key the host cannot measure (null) is left
out rather than written as `undefined`, so that an ad merged into the job ad never
replaces a value the starter measured itself with nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

MIB = 1024 * 1024


def _mib_ceil(v: Any) -> int:
    return math.ceil(int(v) / MIB)


def _kib_ceil(v: Any) -> int:
    return math.ceil(int(v) / 1024)


def _int(v: Any) -> int:
    return int(v)


def _same(v: Any) -> Any:
    return v


# (report key, ClassAd attribute, conversion): the table in README.md ("HTCondor") is this one.
MAPPING: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("cpu_user_seconds", "RemoteUserCpu", _same),
    ("cpu_system_seconds", "RemoteSysCpu", _same),
    ("wall_seconds", "RemoteWallClockTime", _same),
    ("memory_peak_bytes", "MemoryUsage", _mib_ceil),  # MiB, rounded up, as HTCondor's MemoryUsage
    ("memory_peak_bytes", "ResidentSetSize", _kib_ceil),  # KiB
    ("memory_limit_bytes", "MemoryProvisioned", _mib_ceil),  # MiB
    ("io_read_bytes", "BlockReadKbytes", _kib_ceil),
    ("io_write_bytes", "BlockWriteKbytes", _kib_ceil),
    ("started_at", "JobCurrentStartExecutingDate", _int),
    ("ended_at", "CompletionDate", _int),
    ("name", "SandboxName", _same),
    ("status", "SandboxStatus", _same),
    ("returncode", "SandboxReturnCode", _same),
    ("oom_kills", "SandboxOomKills", _same),
    ("pids_peak", "SandboxPidsPeak", _same),
    ("cgroup", "SandboxCgroup", _same),
    ("cgroup_version", "SandboxCgroupVersion", _same),
    ("init_host_pid", "SandboxInitPid", _same),
    ("job_host_pid", "SandboxJobPid", _same),
    ("job_ns_pid", "SandboxJobNsPid", _same),
    ("error", "SandboxError", _same),
)


def quote(value: Any) -> str:
    """A ClassAd literal: strings quoted with backslash escapes, booleans lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "undefined"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def _attr_suffix(key: str) -> str:
    """A label key as part of an attribute name (letters, digits, '_')."""
    return re.sub(r"[^A-Za-z0-9_]", "_", key)


def attributes(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # How the job ended, as the starter puts it in the job ad: ExitBySignal decides
    # whether ExitCode or ExitSignal is meaningful.
    if report.get("signal") is not None:
        out["ExitBySignal"] = True
        out["ExitSignal"] = int(report["signal"])
    elif report.get("exit_code") is not None:
        out["ExitBySignal"] = False
        out["ExitCode"] = int(report["exit_code"])
    for key, attr, convert in MAPPING:
        value = report.get(key)
        if value is not None:
            out[attr] = convert(value)
    if report.get("cpu_user_seconds") is not None and report.get("cpu_system_seconds") is not None:
        out["SandboxCpuSeconds"] = report["cpu_user_seconds"] + report["cpu_system_seconds"]
    labels = report.get("labels") or {}
    for key, value in labels.items():
        out[f"SandboxLabel_{_attr_suffix(key)}"] = value
    return out


def format_report(report: dict[str, Any]) -> str:
    return "".join(f"{k} = {quote(v)}\n" for k, v in attributes(report).items())


def parse(text: str) -> dict[str, Any]:
    """Read a flat ClassAd of literals (what format_report and the starter's .job.ad /
    .machine.ad files hold); expressions that are not literals are kept as their text."""
    out: dict[str, Any] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "[", "]")):
            continue
        name, eq, value = line.partition("=")
        if not eq:
            continue
        out[name.strip()] = _literal(value.strip().rstrip(";"))
    return out


def _literal(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("undefined", "error"):
        return None
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text[1:-1])
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text
