"""Parsing of user-facing limit values and the Limits data they become."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.limits import (
    CPU_PERIOD_US,
    Limits,
    format_bytes,
    parse_count,
    parse_cpus,
    parse_seconds,
    parse_size,
)

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100", 100),
        ("1", 1),
        ("64k", 64 * K),
        ("64K", 64 * K),
        ("512M", 512 * M),
        ("512m", 512 * M),
        ("2G", 2 * G),
        ("1.5G", 3 * G // 2),
        ("0.5k", 512),
        ("1T", T),
        ("2GiB", 2 * G),
        ("2GB", 2 * G),
        ("2Gi", 2 * G),
        ("1KiB", K),
        ("1b", 1),
        (" 3g ", 3 * G),
    ],
)
def test_parse_size_accepts(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " ", "b", "G", "abc", "-1", "-1G", "+1G", "1e3", "1.2.3G", "1..5G", "1Z", "1i", "0x10",
     "\uff11G", "1 2G", "inf", "nan"],
)
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="invalid memory size"):
        parse_size(text, "memory size")


@pytest.mark.parametrize("text", ["0", "0k", "0.0G", "0.0001k"])
def test_parse_size_rejects_zero(text: str) -> None:
    with pytest.raises(ValueError, match="greater than zero"):
        parse_size(text)


@pytest.mark.parametrize("text", ["1.5", "1."])
def test_parse_size_rejects_fractional_bytes(text: str) -> None:
    with pytest.raises(ValueError, match="whole number"):
        parse_size(text)


def test_parse_size_rejects_huge() -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_size("8192P")
    with pytest.raises(ValueError, match="too large"):
        parse_size(str(1 << 62))
    assert parse_size(str((1 << 62) - 1)) == (1 << 62) - 1


@given(st.integers(min_value=1, max_value=(1 << 40)), st.sampled_from(["", "k", "M", "g", "T"]))
def test_parse_size_integer_roundtrip(n: int, unit: str) -> None:
    scale = {"": 1, "k": K, "M": M, "g": G, "T": T}[unit]
    if n * scale >= 1 << 62:
        with pytest.raises(ValueError):
            parse_size(f"{n}{unit}")
    else:
        assert parse_size(f"{n}{unit}") == n * scale


@given(st.text(max_size=12))
def test_parse_size_never_crashes(text: str) -> None:
    """Any input is a positive int below 2**62 or a ValueError naming the value; never
    another exception (which would be a traceback for the user)."""
    try:
        value = parse_size(text, "tmp size")
    except ValueError as e:
        assert "invalid tmp size" in str(e)
        assert repr(text) in str(e)
    else:
        assert isinstance(value, int) and 0 < value < 1 << 62


@pytest.mark.parametrize(
    ("text", "expected"), [("1", 1.0), ("0.5", 0.5), ("2.25", 2.25), ("0.01", 0.01), ("4096", 4096)]
)
def test_parse_cpus_accepts(text: str, expected: float) -> None:
    assert parse_cpus(text) == expected


@pytest.mark.parametrize("text", ["", "x", "0", "0.009", "-1", "nan", "inf", "-inf", "4097", "1/2"])
def test_parse_cpus_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid CPU count"):
        parse_cpus(text)


@given(st.text(max_size=10))
def test_parse_cpus_never_crashes(text: str) -> None:
    try:
        value = parse_cpus(text)
    except ValueError as e:
        assert "invalid CPU count" in str(e)
    else:
        assert 0.01 <= value <= 4096


def test_parse_count() -> None:
    assert parse_count("20", "process count") == 20
    assert parse_count(" 7 ", "process count") == 7
    for bad, why in [("0", "greater than zero"), ("-3", "greater than zero"), ("1.5", "whole number"),
                     ("x", "whole number"), ("", "whole number"), (str((1 << 22) + 1), "too large")]:
        with pytest.raises(ValueError, match=why) as e:
            parse_count(bad, "process count")
        assert "invalid process count" in str(e.value)


def test_parse_seconds() -> None:
    assert parse_seconds("2", "timeout") == 2.0
    assert parse_seconds("0.25", "timeout") == 0.25
    for bad in ("0", "-1", "nan", "inf", "x", ""):
        with pytest.raises(ValueError, match="invalid timeout"):
            parse_seconds(bad, "timeout")


def test_cpu_quota() -> None:
    assert Limits().cpu_quota_us() is None
    assert Limits(cpus=1).cpu_quota_us() == CPU_PERIOD_US
    assert Limits(cpus=0.5).cpu_quota_us() == CPU_PERIOD_US // 2
    assert Limits(cpus=2.25).cpu_quota_us() == 225_000
    # the kernel refuses quotas below 1 ms
    assert Limits(cpus=0.001).cpu_quota_us() == 1000


def test_swap_limit() -> None:
    # with a memory limit, no swap beyond it unless asked
    assert Limits(memory_bytes=G).swap_limit_bytes() == 0
    assert Limits(memory_bytes=G, swap_bytes=512 * M).swap_limit_bytes() == 512 * M
    # without a memory limit nothing is bounded
    assert Limits().swap_limit_bytes() is None


def test_limits_default_unlimited() -> None:
    assert Limits() == Limits(None, None, None, None, None)


@pytest.mark.parametrize(
    ("n", "text"),
    [(None, "n/a"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (100 * M, "100.0 MiB"),
     (2 * G, "2.0 GiB"), (3 * T, "3.0 TiB"), (5000 * T, "5000.0 TiB")],
)
def test_format_bytes(n: int | None, text: str) -> None:
    assert format_bytes(n) == text
