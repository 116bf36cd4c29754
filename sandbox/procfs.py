"""Reading /proc: a process's PIDs in every namespace, and its start time.

Every function takes the /proc root as an argument, so tests point it at a fake tree.
/proc/<pid>/task/<tid>/children is not available on every kernel; the NSpid line of
/proc/<pid>/status is (4.1+), and lists the PID in every namespace from the reader's
down to the process's own.
"""

from __future__ import annotations


def ns_pids(host_pid: int, proc: str = "/proc") -> list[int] | None:
    """[host pid, ..., innermost pid] for a process, or None if it is gone."""
    try:
        with open(f"{proc}/{host_pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def ns_pid(host_pid: int, proc: str = "/proc") -> int | None:
    """The PID of a process in its own (innermost) PID namespace, or None if it is gone."""
    pids = ns_pids(host_pid, proc)
    return pids[-1] if pids else None


def process_start_time(pid: int, proc: str = "/proc") -> int | None:
    """Start time in clock ticks since boot (field 22 of /proc/<pid>/stat): with the PID,
    it names a process unambiguously, even after the PID is reused."""
    try:
        with open(f"{proc}/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[19])


def parent_and_comm(pid: int, proc: str = "/proc") -> tuple[int, str] | None:
    """(parent PID, command name) of a process (fields 4 and 2 of /proc/<pid>/stat), or
    None if it is gone."""
    try:
        with open(f"{proc}/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = text[text.find("(") + 1 : text.rfind(")")]
    return int(text[text.rfind(")") + 2 :].split()[1]), comm
