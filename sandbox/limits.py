"""Resource limits: parsing of user-facing values and the pure data they become."""

from __future__ import annotations

import math
from typing import NamedTuple

# No `re` here: this module is on the launch path and `re` costs ~4 ms to import.
_SCALE = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SUFFIXES = ("ib", "b", "i", "")


def parse_size(text: str, what: str = "size") -> int:
    """Parse '2G', '512M', '1.5G', '64k' or plain bytes into bytes (binary units, like
    docker, podman and Slurm). Raises ValueError with a message naming `what`."""
    bad = ValueError(f"invalid {what} {text!r}: expected bytes or a number with K, M, G or T")
    body = text.strip().lower()
    unit = ""
    for suffix in _SUFFIXES:
        if suffix and body.endswith(suffix) and len(body) > len(suffix):
            stem = body[: -len(suffix)]
            if stem[-1] in "kmgtp":
                body, unit = stem[:-1], stem[-1]
                break
            if suffix == "b":
                body = stem
                break
    else:
        if body and body[-1] in "kmgtp":
            body, unit = body[:-1], body[-1]
    number = body.strip()
    if not number or number.count(".") > 1 or not number.replace(".", "").isdigit() or not number.isascii():
        raise bad
    # whole numbers stay ints: a float would round byte counts above 2**53
    value = float(number) * _SCALE[unit] if "." in number else int(number) * _SCALE[unit]
    if unit == "" and "." in number:
        raise ValueError(f"invalid {what} {text!r}: a byte count must be a whole number")
    result = int(value)
    if result <= 0:
        raise ValueError(f"invalid {what} {text!r}: must be greater than zero")
    if result >= 1 << 62:
        raise ValueError(f"invalid {what} {text!r}: too large")
    return result


def parse_cpus(text: str) -> float:
    """Parse a CPU quota such as '1', '0.5' or '2.25' (CPUs' worth of time per period)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid CPU count {text!r}: expected a number such as 1 or 0.5") from None
    if not math.isfinite(value) or value < 0.01:
        raise ValueError(f"invalid CPU count {text!r}: must be at least 0.01")
    if value > 4096:
        raise ValueError(f"invalid CPU count {text!r}: too large")
    return value


def parse_count(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"invalid {what} {text!r}: expected a whole number") from None
    if value <= 0:
        raise ValueError(f"invalid {what} {text!r}: must be greater than zero")
    if value > 1 << 22:
        raise ValueError(f"invalid {what} {text!r}: too large")
    return value


def parse_seconds(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid {what} {text!r}: expected a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"invalid {what} {text!r}: must be a positive number of seconds")
    return value


CPU_PERIOD_US = 100_000


class Rule(NamedTuple):
    kind: str  # "c" or "b"
    major: int
    minor: int | None  # None: every minor
    access: str = "rwm"

    def text(self) -> str:
        """The line devices.allow takes: 'c 1:3 rwm'."""
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.kind} {self.major}:{minor} {self.access}"


class Limits(NamedTuple):
    """Hard limits for one job; None means unlimited (inherit the parent's)."""

    memory_bytes: int | None = None
    swap_bytes: int | None = None  # swap allowed beyond memory_bytes; None with a memory limit = 0
    pids: int | None = None
    cpus: float | None = None
    tmp_bytes: int | None = None
    devices: tuple[Rule, ...] | None = None  # None: every device (the host's /dev)

    def cpu_quota_us(self) -> int | None:
        """CFS quota per CPU_PERIOD_US for the requested CPU count."""
        if self.cpus is None:
            return None
        return max(1000, round(self.cpus * CPU_PERIOD_US))

    def swap_limit_bytes(self) -> int | None:
        """Swap allowed beyond the memory limit: zero unless --swap said otherwise."""
        if self.memory_bytes is None:
            return self.swap_bytes
        return self.swap_bytes or 0


def format_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
