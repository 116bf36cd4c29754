"""Runtime state of running sandboxes: one JSON file per sandbox in the state directory.

It lets `sandbox gc` (and the next launch) tell a live sandbox from one whose
launcher was SIGKILLed, and lets later tools find a sandbox by name. It lives in
/run/sandbox for root and $XDG_RUNTIME_DIR/sandbox otherwise (both are tmpfs: a
reboot, which also empties every cgroup, empties it too), and each file is removed
when its sandbox ends.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .procfs import process_start_time

if TYPE_CHECKING:
    from .records import State


def state_dir() -> str:
    override = os.environ.get("SANDBOX_STATE_DIR")
    if override:
        return override
    from .config import file_setting  # one stat when there is no /etc/sandbox/sandbox.toml

    configured = file_setting("state_dir")
    if configured:
        return str(configured)
    from .privilege import current

    return current().state_dir()


def path_for(name: str, directory: str | None = None) -> str:
    return os.path.join(directory or state_dir(), f"{name}.json")


def write(name: str, record: State, directory: str | None = None) -> None:
    directory = directory or state_dir()
    os.makedirs(directory, mode=0o755, exist_ok=True)
    final = path_for(name, directory)
    tmp = f"{final}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(record.to_json())
    os.rename(tmp, final)


def read(name: str, directory: str | None = None) -> dict[str, Any] | None:
    import json

    try:
        with open(path_for(name, directory)) as f:
            data = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove(name: str, directory: str | None = None) -> None:
    try:
        os.unlink(path_for(name, directory))
    except FileNotFoundError:
        pass


def names(directory: str | None = None) -> list[str]:
    try:
        entries = os.listdir(directory or state_dir())
    except FileNotFoundError:
        return []
    return sorted(e[:-5] for e in entries if e.endswith(".json") and not e.startswith("."))


def launcher_identity() -> dict[str, int | None]:
    pid = os.getpid()
    return {"launcher_pid": pid, "launcher_start": process_start_time(pid)}


def launcher_alive(data: dict[str, Any]) -> bool:
    """Is the launcher that wrote this state still running? PID plus start time, so a
    reused PID does not keep a dead sandbox alive."""
    pid = data.get("launcher_pid")
    if not isinstance(pid, int):
        return False
    start = process_start_time(pid)
    return start is not None and start == data.get("launcher_start")
