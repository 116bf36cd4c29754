"""The report as an HTCondor ClassAd (`--report-format classad`), and the reader of ads.

One `Attribute = value` per line: old ClassAd syntax, the format of the starter's
.job.ad / .machine.ad files and of `condor_q -long`. Standard job-ad attributes where
HTCondor has one, in HTCondor's units; the rest as Sandbox* attributes. A key the host
cannot measure (null) is left out rather than written as `undefined`, so that an ad
merged into the job ad never replaces a value the starter measured itself with nothing.

Strings are written byte for byte as HTCondor's own unparser writes old syntax
(classad2's printOld): a `"` becomes `\\"` and nothing else is escaped, because in old
syntax a backslash is literal. HTCondor's lexer takes `\\"` as a quote, except at the
end of the line, where it is a backslash that ends the string. Old syntax has no way to
write a line break: printOld writes it raw and HTCondor's own parser then rejects the
whole ad. A value with CR or LF is therefore written as `eval("<new-syntax literal>")`,
which HTCondor evaluates to the same string; nothing in a value can start a new line,
so nothing in a value can add an attribute.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
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
    # CPUs' worth of time per period, a real (1.5): not HTCondor's CpusProvisioned, a count
    ("cpu_limit_cpus", "SandboxCpuLimit", float),
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

LABEL_PREFIX = "SandboxLabel_"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # an attribute name that needs no quoting


class Expr(str):
    """The text of a value that is not a literal (`RequestMemory = ifthenelse(...)`):
    kept as written, distinguishable from a string that happens to read the same."""


# -- writing ---------------------------------------------------------------------------

def _real(value: float) -> str:
    # HTCondor's unparser: %.16G, ".0" added when that reads like an integer; 0.0 as
    # "%.1f" to keep its sign; no literal for NaN and infinities, so real("...").
    if math.isnan(value):
        return 'real("NaN")'
    if math.isinf(value):
        return 'real("INF")' if value > 0 else 'real("-INF")'
    if value == 0.0:
        return "%.1f" % value  # noqa: UP031 (printf semantics on purpose)
    text = "%.16G" % value  # noqa: UP031
    return text if any(c in text for c in ".Ee") else text + ".0"


def _text(value: str) -> str:
    # No ClassAd string can hold a NUL (both lexers stop at it): U+FFFD stands in.
    return value.replace("\0", "\ufffd")


def quote_new(value: str) -> str:
    """A new-syntax ClassAd string literal, as HTCondor's unparser writes one: C escapes,
    and every byte outside printable ASCII in octal (of its UTF-8; bytes that were not
    UTF-8, as surrogateescape decoded them, go back unchanged)."""
    out = ['"']
    for byte in _text(value).encode("utf-8", "surrogateescape"):
        c = chr(byte)
        if c in _NEW_ESCAPES:
            out.append(_NEW_ESCAPES[c])
        elif 0x20 <= byte < 0x7F:
            out.append(c)
        else:
            out.append(f"\\{byte:03o}")
    out.append('"')
    return "".join(out)


_NEW_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
                "\\": "\\\\", '"': '\\"'}


def quote(value: Any) -> str:
    """An old-syntax ClassAd literal, as HTCondor writes it (see the module's docstring)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _real(value)
    text = _text(str(value))
    if "\n" in text or "\r" in text:
        return f"eval({quote(quote_new(text))})"
    return '"' + text.replace('"', '\\"') + '"'


def label_attributes(labels: Mapping[str, Any]) -> dict[str, Any]:
    """The SandboxLabel_<key> attributes of the labels. ClassAd names ignore case and a
    key's '.' and '-' become '_', so two keys can name one attribute; that is refused
    (ValueError, one line) rather than one label silently replacing the other."""
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in labels.items():
        attr = LABEL_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", key)
        other = seen.setdefault(attr.lower(), key)
        if other != key:
            raise ValueError(
                f"--label keys {other!r} and {key!r} are the same ClassAd attribute {attr} "
                "(ClassAd names ignore case; '.' and '-' become '_'): rename one"
            )
        out[attr] = value
    return out


def attributes(report: Mapping[str, Any]) -> dict[str, Any]:
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
    out.update(label_attributes(report.get("labels") or {}))
    return out


def format_report(report: Mapping[str, Any]) -> str:
    lines = []
    for name, value in attributes(report).items():
        if not NAME.match(name):  # never reached through the options; a value must not make a name
            raise ValueError(f"not a ClassAd attribute name: {name!r}")
        lines.append(f"{name} = {quote(value)}\n")
    return "".join(lines)


# -- reading ---------------------------------------------------------------------------

_BLANKS = " \t\r\f\v"
_INT = re.compile(r"[+-]?(?:0|[1-9][0-9]*)\Z")  # 010 is no integer to HTCondor
_REAL = re.compile(r"[+-]?(?:(?:[0-9]+\.[0-9]+|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)\Z")
_REAL_WORDS = {'real("NaN")': math.nan, 'real("INF")': math.inf, 'real("-INF")': -math.inf}
_NEW_ESCAPE = re.compile(r"([0-3][0-7]{2}|[0-7]{1,2})|([abfnrtv\\'\"?])")
_C_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}


def parse(text: str) -> dict[str, Any]:
    """Read an old-syntax ad, one `Name = value` a line, as HTCondor does: names are
    case-insensitive (a later line replaces an earlier one, keeping the first spelling);
    literals become str / int / float / bool, `undefined` and `error` None, anything
    else an Expr of its text. Lines are split on LF only."""
    out: dict[str, Any] = {}
    spelling: dict[str, str] = {}
    for raw in text.split("\n"):
        line = raw.lstrip(_BLANKS)
        if not line or line.startswith(("#", "[", "]")):
            continue
        name, eq, value = line.partition("=")
        name = name.strip()
        if not eq or not NAME.match(name):
            continue
        out[spelling.setdefault(name.lower(), name)] = literal(value.lstrip(" \t"))
    return out


def literal(value: str) -> Any:
    """One old-syntax value (the rest of its line): its Python value if it is a
    literal, else Expr of its text."""
    if value.startswith('"'):  # trailing blanks matter to a string (see _old_string)
        string = _old_string(value)
        return Expr(value.rstrip(_BLANKS)) if string is None else string
    text = value.rstrip(_BLANKS)
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("undefined", "error"):
        return None
    if _INT.match(text):
        return int(text)
    if _REAL.match(text):
        return float(text)
    if text in _REAL_WORDS:
        return _REAL_WORDS[text]
    if text.startswith("eval(") and text.endswith(")"):
        inner = _old_string(text[5:-1].strip())
        decoded = _new_string(inner) if inner is not None else None
        if decoded is not None:
            return decoded
    return Expr(text)


def _old_string(text: str) -> str | None:
    """The value of an old-syntax string literal that is the whole of `text` (None if
    it is not): a `"` ends it unless a backslash precedes it, and a backslash-quote
    ends it (the backslash kept) when nothing follows on the line."""
    out: list[str] = []
    i = 1
    while i < len(text):
        c = text[i]
        if c != '"':
            out.append(c)
            i += 1
            continue
        if out and out[-1] == "\\" and i + 1 < len(text):
            out[-1] = '"'  # \" inside the line: a quote
            i += 1
            continue
        return "".join(out) if text[i + 1:].strip(_BLANKS) == "" else None
    return None


def _new_string(text: str) -> str | None:
    """The value of a new-syntax string literal that is the whole of `text`, or None."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return None
    body, data, i = text[1:-1], bytearray(), 0
    while i < len(body):
        c = body[i]
        if c == '"':
            return None  # more than one literal: an expression
        if c != "\\":
            data += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        m = _NEW_ESCAPE.match(body, i + 1)
        if m is None:
            return None  # an escape HTCondor would not take
        data.append(int(m[1], 8) if m[1] else _C_ESCAPES.get(m[2], ord(m[2])))
        i = m.end()
    return None if 0 in data else data.decode("utf-8", "surrogateescape")
