"""sandbox/procfs.py against a fake /proc tree: NSpid and the start time of a process."""

from __future__ import annotations

from pathlib import Path

from sandbox.procfs import ns_pid, ns_pids, process_start_time


def _proc(tmp_path: Path, pid: int, status: str, stat: str) -> str:
    d = tmp_path / str(pid)
    d.mkdir()
    (d / "status").write_text(status)
    (d / "stat").write_text(stat)
    return str(tmp_path)


def test_nspid_lists_every_namespace_down_to_the_innermost(tmp_path: Path) -> None:
    proc = _proc(tmp_path, 4242, "Name:\tsleep\nTgid:\t4242\nNSpid:\t4242\t17\t2\nNSsid:\t1\n", "")
    assert ns_pids(4242, proc) == [4242, 17, 2]
    assert ns_pid(4242, proc) == 2


def test_a_gone_process_or_a_kernel_without_nspid_is_none(tmp_path: Path) -> None:
    proc = _proc(tmp_path, 7, "Name:\told\nPid:\t7\n", "")
    assert ns_pids(7, proc) is None and ns_pid(7, proc) is None
    assert ns_pids(8, proc) is None and process_start_time(8, proc) is None


def test_start_time_survives_a_command_name_with_spaces_and_parentheses(tmp_path: Path) -> None:
    # field 22 (starttime) counts from the start of the line; comm "(a) (b c)" must not shift it
    fields_4_to_21 = " ".join(str(n) for n in range(4, 22))
    proc = _proc(tmp_path, 99, "", f"99 ((a) (b c)) S {fields_4_to_21} 987654 23 24\n")
    assert process_start_time(99, proc) == 987654
