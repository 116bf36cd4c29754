"""The accounting log: one JSON line per finished sandbox, and sums over it.

Writing. Many launchers end at the same moment and append to the same file. Each
record is written with ONE write(2) of the whole line on a descriptor opened with
O_APPEND: the kernel moves to the end of the file and writes under the inode's lock in
one step, so concurrent appenders on a local filesystem never interleave or overwrite
each other's lines (POSIX requires the seek+write of O_APPEND to be atomic; Linux holds
i_rwsem across the whole write to a regular file). A record is a few hundred bytes, far
below a page, so a launcher killed during the call leaves the whole line or none of
it. Should a write ever come back short (disk full), the fragment is closed with a
newline so that only that record is lost, not the next writer's too; readers skip any
line that is not a complete JSON object. Not fsynced: a power loss may lose the last
records, but never corrupts earlier ones. (On NFS, O_APPEND is not atomic across
clients: keep the log on a local disk, one log per node.)

Reading. `summarize` sums wall time, CPU time, job count and memory per label value.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from . import errors
from .records import Report, dumps


def append(path: str, report: Report | Mapping[str, Any]) -> None:
    """One record: a Report (the launcher's), or a report's keys as a mapping."""
    line = ((report.to_json() if isinstance(report, Report) else dumps(report)) + "\n").encode()
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o640)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
        fd = os.open(path, flags, 0o640)
    try:
        n = os.write(fd, line)
        if n != len(line):
            os.write(fd, b"\n")
            raise OSError(errno.ENOSPC, f"short write ({n} of {len(line)} bytes)")
    finally:
        os.close(fd)


def records(path: str) -> Iterator[dict[str, Any]]:
    """Every complete record; torn or foreign lines are skipped."""
    import json

    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    except OSError as e:
        raise errors.SandboxError(f"cannot read the accounting log {path}: {e.strerror}") from None
    with f:
        for raw in f:
            if not raw.endswith(b"\n"):
                continue  # a write in progress or torn by a crash
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def parse_since(text: str) -> float:
    """A point in time: ISO 8601 date or date-time (local time unless it has an offset),
    '@UNIXTIME', or an age such as 90m, 24h, 7d."""
    import datetime

    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in units:
        import time

        return time.time() - float(text[:-1]) * units[text[-1]]
    if text.startswith("@"):
        try:
            return float(text[1:])
        except ValueError:
            pass
    else:
        try:
            return datetime.datetime.fromisoformat(text).timestamp()
        except ValueError:
            pass
    raise errors.SandboxError(f"invalid date {text!r}: expected YYYY-MM-DD[THH:MM[:SS]], @UNIXTIME or an age (7d, 24h)")


class Totals(NamedTuple):
    key: str | None  # the label value; None: records without the label (or no --by)
    jobs: int
    wall_seconds: float
    cpu_user_seconds: float
    cpu_system_seconds: float
    memory_peak_max_bytes: int | None
    memory_peak_sum_bytes: int
    memory_byte_seconds: float  # peak x wall of each job: the GB-hours a site bills
    failed: int  # jobs that did not exit 0

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_user_seconds + self.cpu_system_seconds

    def as_dict(self, by: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {by or "group": self.key}
        out.update(self._asdict())
        del out["key"]
        out["cpu_seconds"] = round(self.cpu_seconds, 6)
        return out


def _num(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def summarize(
    recs: Iterable[dict[str, Any]], by: str | None = None, since: float | None = None, until: float | None = None
) -> list[Totals]:
    groups: dict[str | None, list[Any]] = {}
    for r in recs:
        ended = r.get("ended_at")
        if since is not None and not (isinstance(ended, (int, float)) and ended >= since):
            continue
        if until is not None and not (isinstance(ended, (int, float)) and ended < until):
            continue
        labels = r.get("labels")
        if not isinstance(labels, dict):
            labels = {}
        key = labels.get(by) if by else None
        g = groups.setdefault(key, [0, 0.0, 0.0, 0.0, None, 0, 0.0, 0])
        g[0] += 1
        wall = _num(r.get("wall_seconds"))
        g[1] += wall
        g[2] += _num(r.get("cpu_user_seconds"))
        g[3] += _num(r.get("cpu_system_seconds"))
        peak = r.get("memory_peak_bytes")
        if isinstance(peak, int):
            g[4] = peak if g[4] is None else max(g[4], peak)
            g[5] += peak
            g[6] += peak * wall
        if r.get("returncode") != 0:
            g[7] += 1
    # labelled groups sorted by value, the unlabelled one last
    order = sorted((k for k in groups if k is not None), key=str) + ([None] if None in groups else [])
    return [
        Totals(k, g[0], round(g[1], 6), round(g[2], 6), round(g[3], 6), g[4], g[5], round(g[6], 3), g[7])
        for k, g in ((k, groups[k]) for k in order)
    ]


def table(totals: list[Totals], by: str | None) -> str:
    from .limits import format_bytes

    head = (by or "group").upper()
    rows = [(head, "JOBS", "FAILED", "WALL_S", "CPU_S", "MEM_PEAK_MAX", "MEM_GIB_HOURS")]
    for t in totals:
        label = t.key if t.key is not None else ("(all)" if by is None else "(none)")
        rows.append(
            (
                label,
                str(t.jobs),
                str(t.failed),
                f"{t.wall_seconds:.1f}",
                f"{t.cpu_seconds:.1f}",
                format_bytes(t.memory_peak_max_bytes) if t.memory_peak_max_bytes is not None else "-",
                f"{t.memory_byte_seconds / 2**30 / 3600:.4f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
        for r in rows
    )
