#!/usr/bin/python3 -I -S
"""sandbox-switchboard: the root-owned helper that does, for an unprivileged sandbox-run,
the few cgroup steps it cannot do itself (HTCondor's condor_root_switchboard design).

TRUSTED CODE. It runs as root on behalf of any member of the configured group, so it
is kept small and self-contained: standard library only, never the `sandbox` package
(a checkout is user-writable), started by a setuid wrapper with a clean environment
as `/usr/bin/python3 -I -S -B`. One request per invocation: a JSON object on stdin,
a JSON reply on stdout, or a refusal: exit 1 (2 for a broken installation) and one
line on stderr; or a launcher's session (see `serve`): one request per line, one reply
line each, and at EOF the session's sandbox destroyed. Every request is logged, granted
or refused.

The policy is pure functions over text and data, unit-tested without root and checked
against the launcher's own cgroup backends (tests/unit/test_switchboard_*.py):
parse_request (what is asked), parse_hierarchies and parent_paths (where: from the
mount table, /proc/self/cgroup and the config), job_paths, effective_limits (the
request within the configured maxima and what encloses it), own_cpu_quota and
limit_writes (which limit file gets which value), may_attach and seize_refusal (which
process may be moved, and why one cannot be pinned), may_call and under_execute_root
(who may ask, for which directory), cap_refusal and sum_refusal (how much one member
holds), stale_parents, owner_refusal and state_refusal (what reclaim may end). The rest
applies their answers through directory fds.

Operations (closed set; nothing writes an arbitrary file or runs a command):
  create  {"name", "limits": {"memory", "swap", "pids", "cpus"}, ["execute_dir"]}
          make sandbox-<name> under the configured parent in each hierarchy, set the
          limits (unset ones become the configured maxima), hand it to the caller.
  attach  {"name", "pid"}  move one of the caller's processes into its sandbox (the
          cgroup v2 rule needs write access to the common ancestor, which is root's),
          pinned by ptrace meanwhile so that its PID names it and nothing else (Pin).
  destroy {"name"}  kill everything in one of the caller's sandboxes and remove it.
  reclaim {"name"} + the sandbox's state file as descriptor 3: what destroy does, for
          `sandbox gc`, at the directories that state names, once its launcher is dead.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import json
import os
import pwd
import select
import signal
import stat
import sys
import time
from collections.abc import Callable, Collection

VERSION = 1
CONFIG = "/etc/sandbox/switchboard.toml"
DEFAULT_LOG = "/var/log/sandbox-switchboard.log"
MAX_REQUEST = 4096
PREFIX = "sandbox-"
NAME_MAX = 64
NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
CPU_PERIOD_US = 100_000
# The controllers a job's cgroup is made in, per host layout (as the launcher's backends use them).
V1_WANTED = {
    "hybrid": ("memory", "pids", "cpu", "blkio"),
    "v1": ("memory", "pids", "cpu", "cpuacct", "blkio", "freezer"),
}
V2_CONTROLLERS = ("memory", "pids", "cpu", "io")
# What the caller gets: its directory (sub-cgroups, as with systemd's Delegate=) and the files
# to move its own processes, kill and freeze its own job. Never a limit file: limits are ours.
# On v1 nothing that moves processes: a v1 move needs only write access to the destination's
# cgroup.procs and the same uid as the process, so a member holding one (or a directory, in
# which mkdir makes member-owned cgroup.procs) could pull any process of its own -- a job that
# root runs under the member's uid in a limited cgroup -- out of that cgroup. On v2 a move also
# needs write access to the common ancestor, which keeps a delegated subtree to itself.
HANDED_V1 = ("freezer.state",)
HANDED_V2 = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control", "cgroup.kill", "cgroup.freeze")
# Where a sandbox's owner is recorded: the v2 directory, or the one file a v1 cgroup hands over.
OWNER_V1 = "freezer.state"
# Our mark on every directory we make: whose sandbox it is and the limits it was given. Only
# CAP_SYS_ADMIN may set or change a trusted.* attribute, so no member can forge or alter one;
# it is the one owner record a v1 directory that hands nothing over (memory, pids) can carry.
MARK = "trusted.sandbox-switchboard"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refusal(Exception):
    """A refused request: one line for the caller, exit status 1."""


class Broken(Exception):
    """The installation itself is unsafe or broken: exit status 2."""


# -- request parsing (pure: property-tested) ----------------------------------------


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise Refusal(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> object:
    raise Refusal(f"{name} is not a number")


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > NAME_MAX:
        raise Refusal(f"name must be a string of 1 to {NAME_MAX} characters")
    if not set(name) <= NAME_OK or name[0] in ".-":
        raise Refusal("name may hold only letters, digits, '.', '_' and '-', not first '.' or '-'")
    return name


def _int(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise Refusal(f"{what} must be a whole number from {low} to {high}")
    return value


def _cpus(value: object) -> float:
    if type(value) not in (int, float) or not 0.01 <= value <= 4096:  # type: ignore[operator]
        raise Refusal("cpus must be a number from 0.01 to 4096")
    return float(value)  # type: ignore[arg-type]


OPS = {"create": {"name", "limits", "execute_dir"}, "attach": {"name", "pid"}, "destroy": {"name"},
       "reclaim": {"name"}}
LIMIT_KEYS = {"memory", "swap", "pids", "cpus"}


def parse_request(raw: bytes) -> dict[str, object]:
    """Validate a request completely before anything is done. Raises only Refusal."""
    if len(raw) > MAX_REQUEST:
        raise Refusal(f"request larger than {MAX_REQUEST} bytes")
    try:
        req = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except Refusal:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refusal("request is not valid JSON") from None
    if not isinstance(req, dict):
        raise Refusal("request must be a JSON object")
    if req.get("version") != VERSION or type(req.get("version")) is not int:
        raise Refusal(f"unsupported request version (this switchboard speaks {VERSION})")
    op = req.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise Refusal("unknown operation")
    extra = set(req) - OPS[op] - {"version", "op"}
    if extra:
        raise Refusal(f"unexpected field {sorted(extra)[0]!r} for {op}")
    out: dict[str, object] = {"op": op, "name": check_name(req.get("name"))}
    if op == "attach":
        out["pid"] = _int(req.get("pid"), "pid", 2, 1 << 22)
    if op == "create":
        limits = req.get("limits", {})
        if not isinstance(limits, dict) or set(limits) - LIMIT_KEYS:
            raise Refusal(f"limits must be an object with keys from {sorted(LIMIT_KEYS)}")
        parsed: dict[str, int | float | None] = {}
        for key in LIMIT_KEYS:
            value = limits.get(key)
            if value is None:
                parsed[key] = None
            elif key == "cpus":
                parsed[key] = _cpus(value)
            elif key == "pids":
                parsed[key] = _int(value, key, 1, 1 << 22)
            else:
                parsed[key] = _int(value, key, 0 if key == "swap" else 1, (1 << 62) - 1)
        out["limits"] = parsed
        xdir = req.get("execute_dir")
        if xdir is not None:
            out["execute_dir"] = check_path(xdir)
    return out


def check_path(path: object) -> str:
    """An absolute, normalized path: no '.', '..', empty components or NUL."""
    if not isinstance(path, str) or not path.startswith("/") or len(path) > 4096:
        raise Refusal("execute_dir must be an absolute path")
    parts = path.split("/")[1:]
    if path == "/" or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise Refusal("execute_dir must be a normalized path (no '.', '..', '//' or NUL)")
    return path


# -- configuration -----------------------------------------------------------------


def _check_owned_by_root(st: os.stat_result, path: str) -> None:
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Broken(f"{path} must be owned by root and writable by root only")


def load_config(path: str = CONFIG) -> dict[str, object]:
    """The root-owned configuration. The file and every directory above it must be
    writable by root only: whoever can change it controls what we do as root."""
    import tomllib

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise Broken(f"cannot open {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Broken(f"{path} is not a regular file")
        _check_owned_by_root(st, path)
        d = os.path.dirname(path)
        while True:
            dst = os.lstat(d)
            if not stat.S_ISDIR(dst.st_mode):
                raise Broken(f"{d} is not a directory")
            _check_owned_by_root(dst, d)
            if d == "/":
                break
            d = os.path.dirname(d)
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    try:
        cfg = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise Broken(f"{path}: {e}") from None
    return cfg


def _cfg_int(cfg: dict[str, object], key: str) -> int | None:
    value = cfg.get(key)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise Broken(f"config: {key} must be a whole number")
    return value


# -- caller identity and logging -----------------------------------------------------


def may_call(
    cfg: dict[str, object], uid: int, user: str, groups: Collection[int], gid_of: Callable[[str], int | None]
) -> bool:
    """Is the caller (uid, user name, every group id it holds) allowed by the config's
    allowed_users / allowed_groups? Root always is. `gid_of` looks a group name up
    (None: no such group, which allows nobody)."""
    if uid == 0:
        return True
    users = cfg.get("allowed_users", [])
    names = cfg.get("allowed_groups", [])
    if not isinstance(users, list) or not isinstance(names, list):
        raise Broken("config: allowed_users and allowed_groups must be lists")
    if user in users:
        return True
    return any(gid is not None and gid in groups for gid in map(gid_of, (str(n) for n in names)))


def _gid_of(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class Caller:
    def __init__(self) -> None:
        # From the kernel: the real ids of a setuid process are the invoker's.
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.groups = {self.gid, *os.getgroups()}
        try:
            self.user = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            self.user = str(self.uid)

    def allowed(self, cfg: dict[str, object]) -> bool:
        return may_call(cfg, self.uid, self.user, self.groups, _gid_of)


class Log:
    """Every request, granted or refused, one line each.

    syslog (authpriv) where /dev/log exists: the system logger stamps, stores, rotates
    and forwards it, out of the caller's reach. Without a logger (a container, a minimal
    node), or when the config names a `log_file`: a plain root-owned file, opened for each
    entry with O_APPEND, so that each entry is a single write(2) that the kernel appends
    whole even with many helpers at once. Rotation is the admin's (logrotate): the
    helper holds the file open only for that one write, so a rename-and-create rotation
    needs no signal (an entry written while it happens lands in the renamed file). No
    rotation here: it is not security work, and renaming files as root is code the
    trusted path does not need."""

    def __init__(self, cfg: dict[str, object]) -> None:
        self.path = str(cfg.get("log_file") or DEFAULT_LOG)
        self.syslog = os.path.exists("/dev/log") and not cfg.get("log_file")

    def write(self, line: str) -> None:
        if self.syslog:
            import syslog

            syslog.openlog("sandbox-switchboard", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
            syslog.syslog(syslog.LOG_INFO, line)
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        data = f"{stamp} [{os.getpid()}] {line}\n".encode(errors="replace")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.EIO, "short write to the log")
        finally:
            os.close(fd)


# -- cgroup hierarchies ----------------------------------------------------------------


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


Hierarchies = dict[str, tuple[str, str]]  # key -> (mountpoint, mount root)


def parse_hierarchies(mountinfo: str, proc_cgroup: str) -> tuple[str, Hierarchies]:
    """(layout kind, hierarchy key -> (mountpoint, mount root)) from the texts of
    /proc/self/mountinfo and /proc/self/cgroup. Keys: v1 controller names and 'unified'.
    A hierarchy counts only if this process is in it (listed in /proc/self/cgroup), the
    rule the launcher's own layout.parse follows; the first mount of each wins."""
    own_v1: set[str] = set()
    own_v2 = False
    for entry in proc_cgroup.splitlines():
        parts = entry.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            own_v2 = True
        else:
            own_v1.update(parts[1].split(","))
    v1: Hierarchies = {}
    unified = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if not sep or len(lf) < 5 or len(rf) < 3:
            continue
        where = (_unescape(lf[4]), _unescape(lf[3]))
        if rf[0] == "cgroup2" and own_v2 and unified is None:
            unified = where
        elif rf[0] == "cgroup":
            for ctrl in set(rf[2].split(",")) & set(V1_WANTED["v1"]) & own_v1:
                v1.setdefault(ctrl, where)
    kind = "hybrid" if v1 and unified else "v1" if v1 else "v2" if unified else "none"
    out = {c: v1[c] for c in V1_WANTED.get(kind, ()) if c in v1}
    if unified is not None:
        out["unified"] = unified
    return kind, out


def hierarchies() -> tuple[str, Hierarchies, str]:
    """The host's hierarchies and the text of our /proc/self/cgroup, read from the kernel
    now (never from the caller). A forked and exec'd setuid process sits where the process
    that ran it sits, so our own cgroups are the caller's: the request cannot name them."""
    with open("/proc/self/mountinfo") as f:
        mountinfo = f.read()
    with open("/proc/self/cgroup") as f:
        proc_cgroup = f.read()
    kind, out = parse_hierarchies(mountinfo, proc_cgroup)
    if not out:
        raise Broken("no cgroup hierarchy is mounted")
    return kind, out, proc_cgroup


def cgroup_of(proc_cgroup: str, key: str) -> str | None:
    """The path in hierarchy `key` (a v1 controller or 'unified') of a /proc/PID/cgroup text."""
    for entry in proc_cgroup.splitlines():
        parts = entry.split(":", 2)
        if len(parts) != 3:
            continue
        if key == "unified" and parts[0] == "0" and parts[1] == "":
            return parts[2]
        if key != "unified" and key in parts[1].split(","):
            return parts[2]
    return None


def nested_parents(configured: Parents, layout: Hierarchies, proc_cgroup: str) -> tuple[Parents, set[str]]:
    """Where the caller's sandbox goes, per hierarchy, and which keys nest: inside the
    caller's own cgroup (where a root launcher there would put it), so that whatever
    encloses the caller -- a batch slot, a Slurm step, a systemd unit -- encloses and
    accounts the sandbox too. Only a caller at the root of a hierarchy (a login node),
    which nothing encloses, gets the configured parent there."""
    out: Parents = {}
    nested: set[str] = set()
    for key, (mountpoint, root) in layout.items():
        path = cgroup_of(proc_cgroup, key)
        if path is None or path == "/" or key not in configured:
            out[key] = configured[key]
            continue
        try:
            path = check_path(path)
        except Refusal:
            raise Refusal(f"the caller's {key} cgroup {path!r} is not a normalized path") from None
        shown = root.rstrip("/")
        if shown and not (path == shown or path.startswith(shown + "/")):
            raise Refusal(f"the caller's {key} cgroup {path} is not visible in the mount at {mountpoint}")
        if key == "unified" and os.path.basename(path) == LEAF:
            path = os.path.dirname(path)  # moved into the leaf by an earlier create: nest beside it
        out[key] = (mountpoint, path[len(shown) :].strip("/"), path)
        nested.add(key)
    return out, nested


def may_attach(pid_cgroup: str, caller_cgroup: str, keys: Collection[str]) -> str | None:
    """None if a process whose /proc/PID/cgroup is `pid_cgroup` may be moved into a sandbox
    of a caller whose own is `caller_cgroup`, else why not. The process must sit in the
    very cgroup the caller sits in, in every hierarchy the sandbox has (where the launcher
    forks init): never in another sandbox, a batch step or anything the caller does not
    sit in itself, which is what cgroup v2's common-ancestor rule asks of a delegated user."""
    for key in keys:
        where, mine = cgroup_of(pid_cgroup, key), cgroup_of(caller_cgroup, key)
        if where is None or where != mine:
            return f"process is not in the caller's own {key} cgroup"
    return None


LIMIT_FILES = {  # (hierarchy key, limit) -> the file an enclosing cgroup bounds it with
    ("memory", "memory"): "memory.limit_in_bytes",
    ("unified", "memory"): "memory.max",
    ("pids", "pids"): "pids.max",
    ("unified", "pids"): "pids.max",
}


def parse_limit(text: str) -> int | None:
    """A limit file's value: None for unlimited ('max', v1's page-rounded LONG_MAX, empty)."""
    text = text.strip()
    if not text.isdigit():
        return None
    value = int(text)
    return None if value >= 1 << 62 else value


# The CPU quota of an enclosing cgroup, as "QUOTA PERIOD" text: v2's cpu.max as it is, v1's
# cpu.cfs_quota_us and cpu.cfs_period_us read together and joined by a space.
CPU_QUOTA_FILES = {"unified": ("cpu.max",), "cpu": ("cpu.cfs_quota_us", "cpu.cfs_period_us")}


def parse_cpu_quota(text: str) -> float | None:
    """One cgroup's CPU quota in CPUs from "QUOTA PERIOD" (v2 cpu.max; v1 cfs quota and
    period): None for none ('max', v1's -1, a missing file's empty text)."""
    quota, _, period = text.strip().partition(" ")
    period = period.strip()
    if not quota.isdigit() or not period.isdigit() or int(quota) == 0 or int(period) == 0:
        return None
    return int(quota) / int(period)


def enclosing_limits(found: Collection[tuple[str, str]]) -> dict[str, int | float]:
    """The tightest bound per limit among (limit, file text) pairs read from the cgroups
    that enclose a nested sandbox: a sandbox's limit above it would be a number, not a bound.
    "cpus" texts are CPU quotas (parse_cpu_quota), the others limit files' values."""
    out: dict[str, int | float] = {}
    for lim, text in found:
        value: int | float | None = parse_cpu_quota(text) if lim == "cpus" else parse_limit(text)
        if value is not None:
            out[lim] = min(value, out.get(lim, value))
    return out


def own_cpu_quota(key: str, cpus: float | None, enclosing: float | None) -> float | None:
    """The CPU quota the sandbox's own cgroup in hierarchy `key` gets for `cpus` (what was
    asked, within the maxima) under the tightest `enclosing` quota: as root's launcher does,
    v1 (whose key is "cpu") gets none when `cpus` is not below the enclosing quota, since
    v1 refuses a child quota above an ancestor's (EINVAL) where v2 takes it, and the
    ancestor's bounds the job either way."""
    if key == "cpu" and cpus is not None and enclosing is not None and cpus >= enclosing:
        return None
    return cpus


Parents = dict[str, tuple[str, str, str]]  # key -> (mountpoint, parent relative to it, hierarchy path)


def parent_paths(cfg: dict[str, object], layout: Hierarchies) -> Parents:
    """key -> (mountpoint, parent relative to it, parent's hierarchy path), per hierarchy:
    the config's [cgroup] parent, or its [cgroup.parents] entry for that key, which the
    mount must show (a mount root other than / shows only its own subtree)."""
    section = cfg.get("cgroup", {})
    if not isinstance(section, dict):
        raise Broken("config: [cgroup] must be a table")
    # not "sandbox-...": that prefix marks a sandbox, which `sandbox gc` may reclaim
    default = section.get("parent", "/sandbox.switchboard")
    overrides = section.get("parents", {})
    if not isinstance(overrides, dict):
        raise Broken("config: [cgroup.parents] must be a table")
    out: Parents = {}
    for key, (mountpoint, root) in layout.items():
        path = overrides.get(key, default)
        try:
            path = check_path(path)
        except Refusal:
            raise Broken(f"config: cgroup parent for {key} must be a normalized absolute path") from None
        shown = root.rstrip("/")
        if shown and not path.startswith(shown + "/"):
            raise Broken(f"config: cgroup parent {path} is not visible in the mount at {mountpoint}")
        out[key] = (mountpoint, path[len(shown) :].strip("/"), path)
    return out


def job_paths(parents: Parents, name: str) -> dict[str, str]:
    """The directory of sandbox `name` in each hierarchy (what `create` replies)."""
    return {key: os.path.join(mountpoint, rel, PREFIX + name) for key, (mountpoint, rel, _) in parents.items()}


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_dir(path: str, create_last: bool = False) -> int:
    """Open a directory one component at a time with O_NOFOLLOW, so that no symlink
    anywhere in the path is followed, and every later step works on the fd, never on
    the name again (nothing can be swapped between check and use)."""
    fd = os.open("/", DIR_FLAGS)
    parts = [p for p in path.split("/") if p]
    try:
        for i, part in enumerate(parts):
            if create_last and i == len(parts) - 1:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                # O_NOFOLLOW|O_DIRECTORY on a symlink fails with ELOOP or ENOTDIR
                if e.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(part, fd):
                    raise Refusal(f"{path}: a path component is a symbolic link") from None
                if e.errno in (errno.ENOENT, errno.ENOTDIR):
                    raise Refusal(f"{path}: no such directory") from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_at(dir_fd: int, name: str, value: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def read_at(dir_fd: int, name: str) -> str:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return ""
    try:
        return os.read(fd, 1 << 16).decode()
    finally:
        os.close(fd)


def exists_at(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def stale_parents(paths: object, layout: Hierarchies, name: str) -> Parents:
    """The parents (as parent_paths gives them) of the directories a state file names for
    sandbox `name`: each in a hierarchy of ours, below its mountpoint, normalized, and
    named sandbox-<name>. Whose they are is checked on the directories themselves."""
    if not isinstance(paths, dict) or not paths:
        raise Refusal("its state names no cgroup")
    out: Parents = {}
    for key, path in paths.items():
        if key not in layout or not isinstance(path, str):
            raise Refusal(f"its state names a cgroup outside this host's hierarchies ({key!r})")
        mountpoint, root = layout[key]
        base = mountpoint.rstrip("/") + "/"
        parts = path[len(base) :].split("/")
        if not path.startswith(base) or "\0" in path or any(p in ("", ".", "..") for p in parts):
            raise Refusal(f"{path!r} is not a normalized path in the {key} hierarchy")
        if parts[-1] != PREFIX + name:
            raise Refusal(f"{path} is not the directory of sandbox {name}")
        rel = "/".join(parts[:-1])
        out[key] = (mountpoint, rel, (root.rstrip("/") + "/" + rel).rstrip("/") or "/")
    return out


def owner_refusal(caller_uid: int, records: Collection[int | None], every: bool = False) -> str | None:
    """Why the directories with these owner records (Job.records) are not the caller's
    sandbox, or None. Root may act on any. `every`: a directory without a record counts
    against it (otherwise only the directories that hand something over speak)."""
    if caller_uid == 0:
        return None
    if every and None in records:
        return "has a directory with no owner record"
    if {r for r in records if r is not None} != {caller_uid}:
        return "belongs to another user"
    return None


def mark_text(uid: int, limits: dict[str, int | float | None]) -> bytes:
    """The value of MARK for a sandbox made for `uid` with these limits."""
    return json.dumps({"uid": uid, "memory": limits.get("memory"), "cpus": limits.get("cpus")}, sort_keys=True).encode()


def parse_mark(raw: bytes | None) -> dict[str, object] | None:
    """A directory's mark, or None (none: made by an older helper, or on a kernel whose
    cgroupfs has no trusted attributes)."""
    if raw is None:
        return None
    try:
        data = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or type(data.get("uid")) is not int:
        return None
    return data


def read_mark(fd: int) -> dict[str, object] | None:
    try:
        return parse_mark(os.getxattr(fd, MARK))
    except OSError:  # ENODATA: none; ENOTSUP: this cgroupfs keeps none
        return None


def _set_mark(fd: int, value: bytes) -> None:
    try:
        os.setxattr(fd, MARK, value)
    except OSError as e:
        # Without trusted attributes (an old kernel's cgroupfs, a root without CAP_SYS_ADMIN)
        # there is no mark: the sums count the maxima, reclaim leaves bare v1 directories.
        if e.errno not in (errno.ENOTSUP, errno.EPERM):
            raise


class Job:
    """One sandbox's cgroup directories, each held open as an fd."""

    def __init__(self, cfg: dict[str, object], name: str, at: object = None) -> None:
        """Where the caller would make sandbox `name` now, or (`at`: the directories a
        state file names, for reclaim) where one was made, possibly from another cgroup."""
        self.kind, layout, self.own_cgroup = hierarchies()
        if at is None:
            self.parents, self.nested = nested_parents(parent_paths(cfg, layout), layout, self.own_cgroup)
        else:
            self.parents, self.nested = stale_parents(at, layout, name), set()
        self.dirname = PREFIX + name
        self.fds: dict[str, int] = {}
        self.parent_fds: dict[str, int] = {}

    def path(self, key: str) -> str:
        return job_paths({key: self.parents[key]}, self.dirname[len(PREFIX) :])[key]

    def hierarchy_path(self, key: str) -> str:
        return self.parents[key][2].rstrip("/") + "/" + self.dirname

    def comounted_with(self, key: str) -> str | None:
        """An earlier hierarchy key whose directory is this key's (controllers mounted
        together, as cpu,cpuacct often are): that directory is made and removed once."""
        for other in self.parents:
            if other == key:
                return None
            if self.parents[other][:2] == self.parents[key][:2]:
                return other
        return None

    def open_parents(self, create: bool = False) -> None:
        # Only the configured parent is ever made here; a caller's own cgroup exists.
        for key, (mountpoint, rel, _) in self.parents.items():
            if key not in self.parent_fds:
                make = create and bool(rel) and key not in self.nested
                self.parent_fds[key] = open_dir(os.path.join(mountpoint, rel), create_last=make)

    def enclosing(self) -> dict[str, int | float]:
        """The limits and CPU quota of the parents and all their ancestors up to the
        hierarchy's root, read through fds."""
        found: list[tuple[str, str]] = []
        for key, (mountpoint, rel, _) in self.parents.items():
            files = [(lim, name) for (k, lim), name in LIMIT_FILES.items() if k == key]
            cpu_files = CPU_QUOTA_FILES.get(key, ())
            if not files and not cpu_files:
                continue
            fd = open_dir(mountpoint)
            try:
                for part in [None, *rel.split("/")] if rel else [None]:
                    if part is not None:
                        nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
                        os.close(fd)
                        fd = nfd
                    found += [(lim, read_at(fd, name)) for lim, name in files]
                    if cpu_files:
                        found.append(("cpus", " ".join(read_at(fd, name).strip() for name in cpu_files)))
            finally:
                os.close(fd)
        return enclosing_limits(found)

    def records(self) -> list[int | None]:
        """Who each directory was handed to, from the kernel: our mark, the owner of a v2
        directory, of a v1 cgroup's handed file (only root chowns, and only here); None
        for a directory with no record (a v1 one made by an older helper)."""
        out: list[int | None] = []
        for key, fd in self.fds.items():
            mark = read_mark(fd)
            if mark is not None:
                out.append(int(mark["uid"]))  # type: ignore[call-overload]
            if key == "unified":
                out.append(os.fstat(fd).st_uid)
            elif exists_at(fd, OWNER_V1):
                out.append(os.stat(OWNER_V1, dir_fd=fd, follow_symlinks=False).st_uid)
            elif mark is None:
                out.append(None)
        return out

    def open_existing(self, caller: Caller, every: bool = False) -> None:
        """Open the job's directories and check they are the caller's: the owner of a
        directory we created is the one we handed it to, and only we create here.
        `every`: each directory must carry a record (reclaim's directories come from a
        state file, which the caller wrote)."""
        try:
            self.open_parents()
        except Refusal:  # no parent yet: nothing was ever created
            raise Refusal(f"no sandbox named {self.dirname[len(PREFIX):]}") from None
        for key, pfd in self.parent_fds.items():
            try:
                fd = os.open(self.dirname, DIR_FLAGS, dir_fd=pfd)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise Refusal(f"cannot open {self.path(key)}: {e.strerror}") from None
            self.fds[key] = fd
        if not self.fds:
            raise Refusal(f"no sandbox named {self.dirname[len(PREFIX):]}")
        why = owner_refusal(caller.uid, self.records(), every)
        if why is not None:
            raise Refusal(f"sandbox {self.dirname[len(PREFIX):]} {why}")

    def close(self) -> None:
        for fd in (*self.fds.values(), *self.parent_fds.values()):
            os.close(fd)
        self.fds.clear()
        self.parent_fds.clear()


def controllers_to_enable(available: str, enabled: Collection[str]) -> list[str]:
    """The controllers we need that a v2 cgroup offers (its cgroup.controllers text) but
    has not enabled for its children yet, in V2_CONTROLLERS order."""
    offered = set(available.split())
    return [c for c in V2_CONTROLLERS if c in offered and c not in enabled]


LEAF = "sandbox.leaf"  # the package's v2 backend uses the same name


def _enable(fd: int, missing: list[str], busy_to_leaf: bool) -> None:
    """Enable `missing` in the cgroup `fd`. v2's "no internal processes" rule refuses that
    (EBUSY) while the cgroup has processes: in the caller's own cgroup, as the launcher's
    backend does as root (and crun and podman do), its processes first move into a leaf
    child of it, so they stay inside everything that enclosed them."""
    text = " ".join("+" + c for c in missing)
    try:
        write_at(fd, "cgroup.subtree_control", text)
        return
    except OSError as e:
        if e.errno != errno.EBUSY or not busy_to_leaf or not _read_all(fd, "cgroup.procs").split():
            raise
    try:
        os.mkdir(LEAF, 0o755, dir_fd=fd)
    except FileExistsError:
        pass
    leaf = os.open(LEAF, DIR_FLAGS, dir_fd=fd)
    try:
        for _ in range(50):
            pids = _read_all(fd, "cgroup.procs").split()
            if not pids:
                write_at(fd, "cgroup.subtree_control", text)
                return
            for pid in pids:
                try:
                    write_at(leaf, "cgroup.procs", pid)
                except ProcessLookupError:
                    pass  # exited meanwhile
    finally:
        os.close(leaf)
    raise Refusal("the caller's cgroup keeps gaining processes; cannot empty it into its leaf")


def _enable_v2_controllers(job: Job) -> set[str]:
    """Make memory/pids/cpu/io available to children of the configured v2 parent: enable
    them in every ancestor's cgroup.subtree_control from the mount root down (adding only)."""
    mountpoint, rel, _ = job.parents["unified"]
    # In a caller's own cgroup only that cgroup is ours to enable controllers in (its
    # ancestors belong to whatever encloses the caller); the configured parent's chain is.
    fd = open_dir(os.path.join(mountpoint, rel) if "unified" in job.nested else mountpoint)
    try:
        for part in [*rel.split("/"), None] if rel and "unified" not in job.nested else [None]:
            enabled = set(read_at(fd, "cgroup.subtree_control").split())
            missing = controllers_to_enable(read_at(fd, "cgroup.controllers"), enabled)
            if missing:
                try:
                    _enable(fd, missing, busy_to_leaf=part is None and "unified" in job.nested)
                except OSError as e:
                    raise Refusal(f"cannot enable {' '.join(missing)} in the v2 parent: {e.strerror}") from None
            if part is None:
                return (enabled | set(missing)) & set(V2_CONTROLLERS)
            nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    return set()


def shares_memory(nested: Collection[str], asked: int | float | None, enclosing: dict[str, int | float],
                  effective: int | float | None) -> bool:
    """Does the sandbox stay in the caller's own v1 memory cgroup instead of making a child
    there? When the caller is nested (a Slurm task) and nothing tighter than what encloses
    it was asked for or configured: v1 counts an OOM kill only in the victim's own memory
    cgroup and a batch system reads its own (slurmstepd: OUT_OF_MEMORY in sacct), so a
    child with the same limit would hide the kill from it. The launcher's v1 backend does
    the same as root. Only the v1 hierarchy's key is "memory" (v2's is "unified")."""
    bound = enclosing.get("memory")
    return "memory" in nested and asked is None and bound is not None and effective == bound


def effective_limits(
    cfg: dict[str, object], asked: dict[str, int | float | None], enclosing: dict[str, int | float] | None = None
) -> dict[str, int | float | None]:
    """The request's limits within the configured maxima and the `enclosing` cgroups'
    limits; an unset limit becomes the tighter of the two. A memory or pids limit above
    an enclosing one is refused; cpus above an enclosing quota is not (a rate, as for
    root's launcher: the job gets the enclosing quota, which is what this says)."""
    for key, bound in (enclosing or {}).items():
        value = asked.get(key)
        if key != "cpus" and value is not None and value > bound:
            raise Refusal(f"{key} {value} is above the enclosing cgroup's limit {bound}")
    lim = cfg.get("limits", {})
    if not isinstance(lim, dict):
        raise Broken("config: [limits] must be a table")
    out = dict(asked)
    for key, cfg_key in (("memory", "max_memory_bytes"), ("swap", "max_swap_bytes"), ("pids", "max_pids")):
        high = _cfg_int(lim, cfg_key)
        if high is not None:
            if out[key] is not None and out[key] > high:  # type: ignore[operator]
                raise Refusal(f"{key} {out[key]} is above the maximum {high}")
            if out[key] is None:
                out[key] = high
    max_cpus = lim.get("max_cpus")
    if max_cpus is not None:
        if type(max_cpus) not in (int, float) or max_cpus <= 0:
            raise Broken("config: max_cpus must be a positive number")
        if out["cpus"] is not None and out["cpus"] > max_cpus:
            raise Refusal(f"cpus {out['cpus']} is above the maximum {max_cpus}")
        if out["cpus"] is None:
            out["cpus"] = float(max_cpus)
    for key, bound in (enclosing or {}).items():
        if out.get(key) is None or out[key] > bound:  # type: ignore[operator]
            out[key] = bound
    if out["memory"] is None and out["swap"]:
        raise Refusal("swap needs a memory limit")
    return out


SWAP_FILES = ("memory.swap.max", "memory.memsw.limit_in_bytes")  # v2, v1


def _swap_bound(name: str, value: int, swap: int, present: Collection[str]) -> list[tuple[str, str]]:
    # The swap files exist only with swap accounting: without it no swap bound can be
    # set, so a request for swap is refused rather than left silently unbounded.
    if name in present:
        return [(name, str(value))]
    if swap:
        raise Refusal("swap needs swap accounting, which this kernel lacks")
    return []


def limit_writes(
    key: str, limits: dict[str, int | float | None], v2_enabled: Collection[str], present: Collection[str]
) -> list[tuple[str, str]]:
    """(file, value) for the job's directory in hierarchy `key`, in order: the values the
    launcher's backends write as root. `present`: which of SWAP_FILES the directory has."""
    mem, swap, pids, cpus = limits["memory"], int(limits["swap"] or 0), limits["pids"], limits["cpus"]
    quota = None if cpus is None else max(1000, round(cpus * CPU_PERIOD_US))
    out: list[tuple[str, str]] = []
    if key == "unified":
        if mem is not None and "memory" in v2_enabled:
            out += [("memory.max", str(mem)), *_swap_bound("memory.swap.max", swap, swap, present)]
        if pids is not None and "pids" in v2_enabled:
            out.append(("pids.max", str(pids)))
        if quota is not None and "cpu" in v2_enabled:
            out.append(("cpu.max", f"{quota} {CPU_PERIOD_US}"))
    elif key == "memory" and mem is not None:
        # memsw bounds memory plus swap together
        memsw = _swap_bound("memory.memsw.limit_in_bytes", int(mem) + swap, swap, present)
        out += [("memory.limit_in_bytes", str(mem)), *memsw]
    elif key == "pids" and pids is not None:
        out.append(("pids.max", str(pids)))
    elif key == "cpu" and quota is not None:
        out += [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", str(quota))]
    return out


def _set_limits(key: str, fd: int, limits: dict[str, int | float | None], v2_enabled: set[str]) -> None:
    present = [name for name in SWAP_FILES if exists_at(fd, name)]
    for name, value in limit_writes(key, limits, v2_enabled, present):
        write_at(fd, name, value)


def under_execute_root(roots: Collection[object], path: str) -> bool:
    """Is the (normalized) `path` one of the config's execute_roots or below one?"""
    return any(path == r or path.startswith(str(r).rstrip("/") + "/") for r in roots)


def as_caller(caller: Caller, walk: Callable[[], int]) -> int:
    """Run a path walk with the caller's file credentials (effective ids and groups: the
    ids file access checks use), so that its answer -- a refusal's wording included --
    is what the caller could learn by looking: in a directory it cannot search, an
    existing path, a missing one and a symbolic link all fail alike with EACCES.
    The saved uid stays 0 to return; a process whose ids changed is not dumpable, and
    signals check the real and saved uids (0), so the caller gains nothing meanwhile."""
    if caller.uid == 0:
        return walk()
    os.setgroups(sorted(caller.groups))
    os.setegid(caller.gid)
    os.seteuid(caller.uid)
    try:
        return walk()
    except PermissionError:
        raise Refusal("execute_dir is not accessible to the caller") from None
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups([])


def check_execute_dir(cfg: dict[str, object], caller: Caller, path: str) -> list[int]:
    roots = cfg.get("execute_roots", [])
    if not isinstance(roots, list):
        raise Broken("config: execute_roots must be a list")
    if not under_execute_root(roots, path):
        raise Refusal(f"execute_dir {path} is not under an allowed execute root")
    fd = as_caller(caller, lambda: open_dir(path))
    try:
        st = os.fstat(fd)
        if caller.uid not in (0, st.st_uid):
            raise Refusal(f"execute_dir {path} is not owned by the caller")
    finally:
        os.close(fd)
    return [st.st_dev, st.st_ino]  # what was checked, for the record


def member_cap(cfg: dict[str, object]) -> int | None:
    """The config's `[limits] max_sandboxes_per_member` (None: no cap)."""
    lim = cfg.get("limits", {})
    return _cfg_int(lim, "max_sandboxes_per_member") if isinstance(lim, dict) else None


def cap_refusal(cap: int | None, live: int) -> str | None:
    """Why a member with `live` sandboxes may not make one more, or None."""
    if cap is not None and live >= cap:
        return f"this user already has {live} live sandboxes (at most {cap} per member)"
    return None


SUM_CAPS = {"memory": "max_memory_bytes_per_member", "cpus": "max_cpus_per_member"}


def sum_caps(cfg: dict[str, object]) -> dict[str, int | float]:
    """The config's caps on the sum of one member's live sandboxes' limits, per limit."""
    lim = cfg.get("limits", {})
    out: dict[str, int | float] = {}
    for key, cfg_key in SUM_CAPS.items():
        value = lim.get(cfg_key) if isinstance(lim, dict) else None
        if value is None:
            continue
        if type(value) not in ((int,) if key == "memory" else (int, float)) or value <= 0:
            raise Broken(f"config: {cfg_key} must be a positive {'whole ' if key == 'memory' else ''}number")
        out[key] = value
    return out


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.2f}"


def sum_refusal(
    caps: dict[str, int | float], live: Collection[dict[str, object] | None], new: dict[str, int | float | None],
    fallback: dict[str, int | float | None],
) -> str | None:
    """Why one more sandbox with the (effective) limits `new` would take a member's live
    sandboxes (their marks `live`) above the per-member sums `caps`, or None. A live
    sandbox counts what its mark says it was given; one without a mark (an older helper,
    a kernel without trusted attributes) or with no such limit counts as the per-sandbox
    maximum `fallback`, or, with none, as the whole cap: unknown is never free."""
    for key, cap in caps.items():
        asked = new.get(key)
        if asked is None:
            return f"{key} must be limited: this user's live sandboxes may have at most {_num(cap)} together"
        used: float = 0
        for mark in live:
            given = None if mark is None else mark.get(key)
            used += given if type(given) in (int, float) else (fallback.get(key) or cap)  # type: ignore[operator]
        if used + asked > cap:
            return (f"{key} {_num(asked)} would take this user's live sandboxes to {_num(used + asked)}, "
                    f"above the {_num(cap)} allowed per member")
    return None


LOCK = "/run/sandbox-switchboard.lock"
MAX_COUNTED = 100_000  # cgroups walked to count a member's sandboxes before giving up


def _owned_marks(mountpoint: str, key: str, uid: int) -> list[dict[str, object] | None]:
    """The caller's live sandboxes, by their marks (None: unmarked): `sandbox-*`
    directories anywhere in hierarchy `key` whose owner record (v2 directory, v1
    freezer.state) is the caller; a sandbox's own subtree is not searched (the member
    controls it)."""
    root = open_dir(mountpoint)
    walk, todo, found, seen = _Walk(root), [[]], [], 0  # type: ignore[var-annotated]
    try:
        while todo:
            path = todo.pop()
            seen += 1
            if seen > MAX_COUNTED:
                raise Refusal("too many cgroups to count this user's sandboxes")
            try:
                fd = walk.open(path)
                if path and path[-1].startswith(PREFIX):
                    st = os.fstat(fd) if key == "unified" else os.stat(OWNER_V1, dir_fd=fd, follow_symlinks=False)
                    if st.st_uid == uid:
                        found.append(read_mark(fd))
                    continue
                todo += [[*path, name] for name in _subdirs(fd)]
            except (FileNotFoundError, NotADirectoryError):
                continue
    finally:
        walk.close()
        os.close(root)
    return found


def check_cap(cfg: dict[str, object], caller: Caller, job: Job) -> list[dict[str, object] | None]:
    """Refuse a member at the cap on the number of live sandboxes; their marks, for the sums."""
    cap = member_cap(cfg)
    if caller.uid == 0 or (cap is None and not sum_caps(cfg)):
        return []
    key = "unified" if "unified" in job.parents else "freezer"
    if key not in job.parents:
        raise Broken("config: per-member caps need a v2 or a v1 freezer hierarchy")
    live = _owned_marks(job.parents[key][0], key, caller.uid)
    why = cap_refusal(cap, len(live))
    if why is not None:
        raise Refusal(why)
    return live


def check_sums(cfg: dict[str, object], caller: Caller, live: Collection[dict[str, object] | None],
               limits: dict[str, int | float | None]) -> None:
    caps = sum_caps(cfg)
    if caller.uid == 0 or not caps:
        return
    lim = cfg.get("limits", {})
    assert isinstance(lim, dict)  # effective_limits checked it
    fallback = {"memory": _cfg_int(lim, "max_memory_bytes"), "cpus": lim.get("max_cpus")}
    why = sum_refusal(caps, live, limits, fallback)
    if why is not None:
        raise Refusal(why)


def _create_lock() -> int:
    """Creates take turns, so that two at once cannot both find room under a cap."""
    import fcntl

    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def op_create(cfg: dict[str, object], caller: Caller, req: dict[str, object]) -> dict[str, object]:
    effective_limits(cfg, req["limits"])  # type: ignore[arg-type]
    checked = check_execute_dir(cfg, caller, str(req["execute_dir"])) if "execute_dir" in req else None
    lock = _create_lock()
    try:
        return _create(cfg, caller, req, checked)
    finally:
        os.close(lock)


def _create(cfg: dict[str, object], caller: Caller, req: dict[str, object], checked: object) -> dict[str, object]:
    job = Job(cfg, str(req["name"]))
    made: list[str] = []
    try:
        live = check_cap(cfg, caller, job)
        # The parent first: on v2 the controllers are enabled down to and in it.
        job.open_parents(create=True)
        enclosing = job.enclosing()
        limits = effective_limits(cfg, req["limits"], enclosing)  # type: ignore[arg-type]
        # the quota asked for (within the maxima): what root's launcher would set (limits
        # says what the job gets, the tighter of it and an enclosing quota)
        own_cpus = effective_limits(cfg, req["limits"])["cpus"]  # type: ignore[arg-type]
        asked = req["limits"]["memory"]  # type: ignore[index]
        shared = {"memory"} if shares_memory(job.nested, asked, enclosing, limits["memory"]) else set()
        check_sums(cfg, caller, live, limits)
        mark = mark_text(caller.uid, limits)
        v2_enabled = _enable_v2_controllers(job) if job.kind == "v2" else set()
        needed = {"memory": "memory", "pids": "pids", "cpus": "cpu"}
        for lim, ctrl in needed.items():
            if job.kind == "v2" and (own_cpus if lim == "cpus" else limits[lim]) is not None and ctrl not in v2_enabled:
                raise Refusal(f"the {ctrl} controller is not available in the v2 parent")
        for key, pfd in job.parent_fds.items():
            first = job.comounted_with(key)
            if key in shared or first in shared:
                continue  # the job stays in the caller's own cgroup there
            if first is not None:  # e.g. cpu,cpuacct mounted together: one directory
                job.fds[key] = os.dup(job.fds[first])
                continue
            try:
                os.mkdir(job.dirname, 0o755, dir_fd=pfd)
            except FileExistsError:
                raise Refusal(f"sandbox {req['name']} already exists") from None
            made.append(key)
            fd = os.open(job.dirname, DIR_FLAGS, dir_fd=pfd)
            job.fds[key] = fd
            _set_mark(fd, mark)  # before the handover: nobody sees it unmarked but us
            cpus = own_cpu_quota(key, own_cpus, enclosing.get("cpus"))
            _set_limits(key, fd, {**limits, "cpus": cpus}, v2_enabled)
        for key, fd in job.fds.items():
            for name in HANDED_V2 if key == "unified" else HANDED_V1:
                if exists_at(fd, name):
                    os.chown(name, caller.uid, caller.gid, dir_fd=fd, follow_symlinks=False)
            if key == "unified":  # last: its owner is the record of whose sandbox this is
                os.fchown(fd, caller.uid, caller.gid)
    except BaseException as e:
        for key in made:
            try:
                os.rmdir(job.dirname, dir_fd=job.parent_fds[key])
            except OSError:
                pass
        job.close()
        if isinstance(e, OSError):
            raise Refusal(f"cannot create the cgroup: {e.strerror}") from None
        raise
    paths = {key: job.path(key) for key in job.fds}
    stays = {key: os.path.join(*job.parents[key][:2]).rstrip("/") for key in shared}
    job.close()
    return {"paths": paths, "shared": stays, "limits": limits, "layout": job.kind, "execute_dir": checked}


def _pidfd_alive(pidfd: int) -> bool:
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return not p.poll(0)


def _status_uids(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return {int(x) for x in line.split()[1:]}
    except (FileNotFoundError, ProcessLookupError):
        pass
    return set()


def _read_proc_cgroup(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def status_field(status: str, name: str) -> str | None:
    """A field's value in a /proc/PID/status text ("Threads", "TracerPid"), None if absent."""
    for line in status.splitlines():
        key, sep, value = line.partition(":")
        if sep and key == name:
            return value.strip()
    return None


def seize_refusal(pid: int, err: int, status: str, yama: str | None) -> str:
    """Why process `pid` cannot be pinned (PTRACE_SEIZE failed with `err`), from its
    /proc/PID/status text and Yama's ptrace_scope (None: no Yama). A process another
    tracer holds is refused, not moved unpinned: pre-tracing it would otherwise be the
    way around the pin."""
    tracer = status_field(status, "TracerPid")
    if tracer not in (None, "0"):
        return f"process {pid} is being traced (by PID {tracer}): it cannot be pinned for the move"
    if err == errno.ESRCH or not status:
        return f"no process {pid}"
    if yama == "3":
        return "ptrace is disabled on this host (Yama kernel.yama.ptrace_scope = 3): cannot pin the process to move"
    return f"cannot pin process {pid} for the move (ptrace: {os.strerror(err)})"


PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 17, 0x4206, 0x4207
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: wait for a tracee whatever its kind
PIN_WAIT = 5.0  # seconds for a pinned process to stop (one in an uninterruptible sleep does not)


def reinjected_signal(wait_status: int) -> int:
    """The signal to hand back at PTRACE_DETACH for a tracee in this stop: the one a
    signal-delivery-stop held (else it would be lost); none for an event stop (our
    PTRACE_INTERRUPT, or a group-stop, which detaching resumes by itself)."""
    if not os.WIFSTOPPED(wait_status) or wait_status >> 16:
        return 0
    return os.WSTOPSIG(wait_status)


def _ptrace(request: int, pid: int, data: int = 0) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
    libc.ptrace.restype = ctypes.c_long
    if libc.ptrace(request, pid, None, data or None) == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _read_status(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _yama_scope() -> str | None:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


# Tracees a pin could not release (they did not stop in time): still ours, so their PIDs
# still cannot be reused; released at the next attach, or by the kernel when we exit.
_LEFT_TRACED: set[int] = set()


class Pin:
    """Hold process `pid` (whose pidfd is `pidfd`) so that its PID names it and nothing
    else until release: PTRACE_SEIZE makes us its tracer, and a zombie ptracee is visible
    only to its tracer (kernel/exit.c, wait_consider_task), so even killed it cannot be
    reaped by its parent, and its PID cannot be freed and reused, before we let go.
    The seized task is checked to be the pidfd's, then stopped (PTRACE_INTERRUPT) and
    found single-threaded: with its one thread in a ptrace-stop no other thread can exec
    (an exec by another thread makes it the leader, untraced, and the old leader goes)
    nor start; a stop is no signal, and a blocking read restarts by itself after it.
    Release detaches (handing back a signal held in a signal-delivery-stop); a tracee that
    died meanwhile is collected by our wait, which passes its zombie on to its parent."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid, self.pidfd = pid, pidfd
        self.status: int | None = None  # the wait status of its stop, once stopped
        self.exited = False

    def __enter__(self) -> Pin:
        _release_left()
        try:
            _ptrace(PTRACE_SEIZE, self.pid)
        except OSError as e:
            raise Refusal(seize_refusal(self.pid, e.errno or 0, _read_status(self.pid), _yama_scope())) from None
        try:
            if not _pidfd_alive(self.pidfd):  # its PID was reused before the seize: not it
                raise Refusal(f"process {self.pid} exited during attach")
            _ptrace(PTRACE_INTERRUPT, self.pid)
            self._wait_stop()
            if self.exited:
                raise Refusal(f"process {self.pid} exited during attach")
            threads = status_field(_read_status(self.pid), "Threads")
            if threads != "1":
                raise Refusal(f"process {self.pid} has {threads} threads: only a single-threaded process is attached")
        except BaseException:
            self.release()
            raise
        return self

    def _wait_stop(self) -> None:
        deadline, pause = time.monotonic() + PIN_WAIT, 0.0002
        while True:
            try:
                got, status = os.waitpid(self.pid, os.WNOHANG | WALL)
            except ChildProcessError:  # no longer our tracee: gone, as if it had exited
                self.exited = True
                return
            if got == self.pid:
                if os.WIFSTOPPED(status):
                    self.status = status
                    return
                if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                    self.exited = True  # collected: its zombie went on to its parent
                    return
            if time.monotonic() > deadline:
                _LEFT_TRACED.add(self.pid)
                raise Refusal(f"process {self.pid} did not stop to be pinned (an uninterruptible sleep?)")
            time.sleep(pause)
            pause = min(pause * 2, 0.01)

    def release(self) -> None:
        while not self.exited and self.pid not in _LEFT_TRACED:
            if self.status is None:
                try:
                    _ptrace(PTRACE_INTERRUPT, self.pid)
                except ProcessLookupError:
                    pass  # dying: the wait below collects it
                self._wait_stop()
                continue
            try:
                _ptrace(PTRACE_DETACH, self.pid, reinjected_signal(self.status))
                return
            except ProcessLookupError:  # killed since it stopped: no longer in a stop
                self.status = None

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _release_left() -> None:
    """Let go of tracees an earlier pin left (a long-lived helper serves many attaches)."""
    for pid in list(_LEFT_TRACED):
        try:
            got, status = os.waitpid(pid, os.WNOHANG | WALL)
        except ChildProcessError:
            _LEFT_TRACED.discard(pid)
            continue
        if got != pid:
            continue
        _LEFT_TRACED.discard(pid)
        if os.WIFSTOPPED(status):
            try:
                _ptrace(PTRACE_DETACH, pid, reinjected_signal(status))
            except ProcessLookupError:
                _LEFT_TRACED.add(pid)  # killed meanwhile: its exit is collected next time


def op_attach(cfg: dict[str, object], caller: Caller, req: dict[str, object]) -> dict[str, object]:
    pid = int(req["pid"])  # type: ignore[call-overload]
    job = Job(cfg, str(req["name"]))
    try:
        job.open_existing(caller)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise Refusal(f"no process {pid}") from None
        try:
            # Before it is touched: only the caller's own processes are ever stopped, even briefly.
            if _status_uids(pid) != {caller.uid} or not _pidfd_alive(pidfd):
                raise Refusal(f"process {pid} is not the caller's")
            # Pinned, the checks and the writes all concern the one process the pidfd
            # names: killed meanwhile, it stays a zombie only we can reap, its PID unused.
            with Pin(pid, pidfd):
                if _status_uids(pid) != {caller.uid}:
                    raise Refusal(f"process {pid} is not the caller's")
                why = may_attach(_read_proc_cgroup(pid), job.own_cgroup, job.fds)
                if why is not None:
                    raise Refusal(f"cannot attach {pid}: {why}")
                for fd in job.fds.values():
                    write_at(fd, "cgroup.procs", str(pid))
            if not _pidfd_alive(pidfd):
                raise Refusal(f"process {pid} exited during attach")
        finally:
            os.close(pidfd)
    except OSError as e:
        raise Refusal(f"cannot attach {pid}: {e.strerror}") from None
    finally:
        job.close()
    return {}


# A member's job may nest sub-cgroups as deep as it likes (on v2, in the directory it was
# handed): walks keep at most this many directories open and reopen deeper ones by name,
# so no tree runs the helper out of descriptors.
MAX_HELD = 32


class _Walk:
    """Open directories below `root` by their path of names, holding descriptors only for
    (at most MAX_HELD) prefixes of the path last opened, as a depth-first walk needs."""

    def __init__(self, root: int) -> None:
        self.path: list[str] = []
        self.held: dict[int, int] = {0: root}  # depth -> fd of self.path[:depth]

    def open(self, path: list[str]) -> int:
        common = 0
        while common < min(len(path), len(self.path)) and path[common] == self.path[common]:
            common += 1
        for depth in [d for d in self.held if d > common]:
            os.close(self.held.pop(depth))
        self.path = list(path)
        base = max(d for d in self.held if d <= len(path))
        fd = self.held[base]
        for depth in range(base + 1, len(path) + 1):
            fd = os.open(path[depth - 1], DIR_FLAGS, dir_fd=fd)
            self.held[depth] = fd
            if len(self.held) > MAX_HELD:
                os.close(self.held.pop(min(d for d in self.held if d > 0)))
        return fd

    def close(self) -> None:
        for depth in [d for d in self.held if d > 0]:
            os.close(self.held.pop(depth))


def _subdirs(fd: int) -> list[str]:
    with os.scandir(fd) as it:
        return [e.name for e in it if e.is_dir(follow_symlinks=False)]


def _read_all(dir_fd: int, name: str) -> str:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return ""
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def _procs(fd: int) -> list[int]:
    """Every process in the tree below (and in) the directory `fd`, however deep."""
    walk, pids, todo = _Walk(fd), [], [[]]  # type: ignore[var-annotated]
    try:
        while todo:
            path = todo.pop()
            try:
                here = walk.open(path)
                pids += [int(p) for p in _read_all(here, "cgroup.procs").split()]
                todo += [[*path, name] for name in _subdirs(here)]
            except FileNotFoundError:  # removed meanwhile (by its owner): nothing in it
                continue
    finally:
        walk.close()
    return pids


def _in_cgroup(pid: int, key: str, path: str) -> bool:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, where = line.rstrip("\n").split(":", 2)
            mine = ctrls == "" if key == "unified" else key in ctrls.split(",")
            if mine and (where == path or where.startswith(path + "/")):
                return True
    return False


def _kill_v1(fd: int, key: str, path: str, freezer: int | None, deadline: float) -> None:
    """No cgroup.kill: SIGKILL each task through a pidfd, after checking through that
    pidfd that the process is still in this cgroup (a PID read from cgroup.procs may
    have been reused by anyone's process by the time we signal it)."""
    while True:
        pids = _procs(fd)
        if not pids:
            return
        if freezer is not None:
            write_at(freezer, "freezer.state", "FROZEN")
        try:
            for pid in pids:
                try:
                    pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue
                try:
                    if _in_cgroup(pid, key, path) and _pidfd_alive(pidfd):
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except (FileNotFoundError, ProcessLookupError):
                    pass
                finally:
                    os.close(pidfd)
        finally:
            if freezer is not None:
                write_at(freezer, "freezer.state", "THAWED")
        if time.monotonic() > deadline:
            raise Refusal("processes survived SIGKILL")
        time.sleep(0.005)


def _rmdir_tree(parent: int, name: str, deadline: float) -> None:
    """Remove the (emptied) cgroup `name` and every directory below it, deepest first,
    without recursion and with a bounded number of open descriptors."""
    walk, todo = _Walk(parent), [([name], False)]
    try:
        while todo:
            if time.monotonic() > deadline:
                raise Refusal("the sandbox's cgroup tree could not be removed in time")
            path, listed = todo.pop()
            if not listed:
                try:
                    subs = _subdirs(walk.open(path))
                except FileNotFoundError:
                    continue
                todo.append((path, True))
                todo += [([*path, sub], False) for sub in subs]
                continue
            try:
                os.rmdir(path[-1], dir_fd=walk.open(path[:-1]))
            except FileNotFoundError:
                pass
    finally:
        walk.close()


def op_destroy(cfg: dict[str, object], caller: Caller, req: dict[str, object]) -> dict[str, object]:
    job = Job(cfg, str(req["name"]))
    try:
        job.open_existing(caller)
        _teardown(job, str(req["name"]))
    finally:
        job.close()
    return {}


STATE_FD = 3  # the one descriptor the wrapper passes on: reclaim's state file
MAX_STATE = 1 << 16


def state_refusal(caller_uid: int, is_file: bool, file_uid: int, linked: bool, launcher_holds: bool) -> str | None:
    """Why the state file the caller holds (descriptor 3) does not show a sandbox whose
    launcher is dead, or None. A launcher holds an exclusive flock on its state file for
    its whole life and the kernel drops it when the launcher dies, SIGKILL included, so a
    lock we get on the caller's own open file (which the caller's gc holds) means that no
    launcher holds one. The file must be the caller's and still in place (a state rewrite
    renames a new one over it). Root is not spared the liveness check: it is correctness,
    not permission (a member may end its own live sandbox with destroy anyway)."""
    if not is_file:
        return "the state file (descriptor 3) must be a regular file"
    if launcher_holds:
        return "its launcher is alive: it holds the lock on the sandbox's state file"
    if caller_uid not in (0, file_uid):
        return "the state file is not the caller's"
    if not linked:
        return "the state file was removed or replaced"
    return None


def _held_state(caller: Caller) -> dict[str, object]:
    """The state the caller's gc holds on descriptor 3, once state_refusal agrees."""
    try:
        st = os.fstat(STATE_FD)
    except OSError:
        raise Refusal("reclaim needs the sandbox's state file as descriptor 3") from None
    held = False
    if stat.S_ISREG(st.st_mode):
        try:
            fcntl.flock(STATE_FD, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = True
    why = state_refusal(caller.uid, stat.S_ISREG(st.st_mode), st.st_uid, st.st_nlink > 0, held)
    if why is not None:
        raise Refusal(why)
    try:
        data = json.loads(os.pread(STATE_FD, MAX_STATE, 0).decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refusal("the state file is not valid JSON") from None
    if not isinstance(data, dict):
        raise Refusal("the state file is not a JSON object")
    return data


def op_reclaim(cfg: dict[str, object], caller: Caller, req: dict[str, object]) -> dict[str, object]:
    """destroy, for `sandbox gc`: at the directories the sandbox's state names (its
    launcher may have sat in another cgroup than this caller), each of which must carry
    the caller's owner record, once no launcher holds the state's lock."""
    name = str(req["name"])
    job = Job(cfg, name, at=_held_state(caller).get("cgroup_paths"))
    try:
        job.open_existing(caller, every=True)
        _teardown(job, name)
        paths = sorted(job.path(key) for key in job.fds)
    finally:
        job.close()
    return {"removed": paths}


def _teardown(job: Job, name: str) -> None:
    deadline = time.monotonic() + 10
    try:
        ufd = job.fds.get("unified")
        if ufd is not None and exists_at(ufd, "cgroup.kill"):
            write_at(ufd, "cgroup.kill", "1")
            while "populated 1" in read_at(ufd, "cgroup.events"):
                if time.monotonic() > deadline:
                    raise Refusal("processes survived cgroup.kill")
                time.sleep(0.002)
        for key, fd in job.fds.items():
            _kill_v1(fd, key, job.hierarchy_path(key), job.fds.get("freezer") if key != "unified" else None, deadline)
        for key, pfd in job.parent_fds.items():
            if key in job.fds and job.comounted_with(key) is None:
                _rmdir_tree(pfd, job.dirname, deadline + 50)
    except OSError as e:
        raise Refusal(f"cannot destroy {name}: {e.strerror}") from None


# -- the process -------------------------------------------------------------------------


def harden() -> None:
    """Make the caller unable to interfere with us once we act as root."""
    # Signals: with the real uid still the caller's, the caller could SIGSTOP us between
    # a check and the use (and widen any race at will); a terminal sends SIGINT/SIGHUP/
    # SIGTSTP without any permission check, so those are ignored too.
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if os.geteuid() != 0:
        # no_new_privs (apptainer, systemd NoNewPrivileges=) makes exec ignore the
        # setuid bit: say so instead of failing later with a bare EACCES
        raise Broken("not running as root: the wrapper's setuid bit was ignored (no_new_privs set?)")
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    os.umask(0o022)
    os.chdir("/")
    # A caller-set RLIMIT_FSIZE or RLIMIT_CPU could stop us halfway (SIGXFSZ in the log
    # write, SIGXCPU mid-operation): lift them, or refuse if we cannot.
    import resource

    for res in (resource.RLIMIT_FSIZE, resource.RLIMIT_CPU, resource.RLIMIT_AS):
        _soft, hard = resource.getrlimit(res)
        try:
            resource.setrlimit(res, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        except (ValueError, OSError):
            if hard != resource.RLIM_INFINITY:
                raise Broken("resource limits set by the caller could interrupt the switchboard") from None
            resource.setrlimit(res, (hard, hard))
    # The initial user namespace only. An unprivileged user can make a mount namespace
    # (its own /sys/fs/cgroup, its own /etc) only inside a user namespace of its own, and
    # the kernel honours no setuid bit there; this check says so explicitly.
    with open("/proc/self/uid_map") as f:
        if f.read().split() != ["0", "0", "4294967295"]:
            raise Broken("the switchboard runs only in the initial user namespace")


def _summary(req: dict[str, object] | None, raw: bytes) -> str:
    if req is None:
        return f"raw={raw[:200]!r} ({len(raw)} bytes)"
    return json.dumps({k: v for k, v in req.items() if k != "op"}, sort_keys=True)


def _close_state_fd() -> None:
    try:
        os.close(STATE_FD)
    except OSError:
        pass


# -- framing: one request per invocation, or a session -------------------------------------
#
# A one-shot caller writes one request and closes stdin: the reply is on stdout (exit 0),
# a refusal one line on stderr (exit 1, 2 for a broken installation). A launcher's agent
# instead opens a session with the line SESSION_OPEN and then sends one request per line,
# each answered by one line on stdout, a refusal included ({"ok": false, "error": ...}),
# until EOF. Each request is checked as a one-shot one is (the config reloaded, the caller
# allowed, the request parsed, the op's own ownership checks, logged); what the session
# adds is its binding: it makes at most one sandbox, and at EOF, the launcher gone (even
# by SIGKILL: the kernel closes its pipe), it destroys that sandbox unless it was
# destroyed in the session. The caller's identity is still the kernel's real uid.

SESSION_OPEN = {"version": VERSION, "op": "session"}


class Lines:
    """Our stdin as lines of at most MAX_REQUEST bytes: a longer one is returned cut to
    MAX_REQUEST + 1 bytes (enough for parse_request to refuse it) and its rest skipped
    up to its newline, so no caller makes us hold more than that."""

    def __init__(self, fd: int = 0) -> None:
        self.fd, self.buf, self.eof, self.skip = fd, b"", False, False

    def line(self) -> bytes | None:
        """The next line with its newline, the last one without, None at the end."""
        while True:
            nl = self.buf.find(b"\n")
            if self.skip:
                self.buf, self.skip = (b"", True) if nl < 0 else (self.buf[nl + 1:], False)
                if not self.skip:
                    continue
            elif nl >= 0:
                line, self.buf = self.buf[:nl + 1], self.buf[nl + 1:]
                return line[:MAX_REQUEST + 1]
            elif len(self.buf) > MAX_REQUEST:
                line, self.buf, self.skip = self.buf[:MAX_REQUEST + 1], b"", True
                return line
            if self.eof:
                line, self.buf = self.buf, b""
                return line or None
            data = os.read(self.fd, 65536)
            self.eof = not data
            self.buf += data

    def rest(self, have: int) -> bytes:
        """What is left up to EOF, at most MAX_REQUEST + 1 - have bytes (a one-shot request)."""
        out = self.buf
        while not self.eof and have + len(out) <= MAX_REQUEST:
            data = os.read(self.fd, 65536)
            self.eof = not data
            out += data
        self.buf = b""
        return out[:max(0, MAX_REQUEST + 1 - have)]


def opens_session(line: bytes) -> bool:
    try:
        req = json.loads(line)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return req == SESSION_OPEN and type(req.get("version")) is int


class Session:
    """What a session binds: the one sandbox it made, and whether it is still there."""

    def __init__(self) -> None:
        self.made: str | None = None  # the name this session created
        self.live = False  # ... and has not destroyed

    def check(self, req: dict[str, object]) -> None:
        if req["op"] == "create" and self.made is not None:
            raise Refusal(f"this session already made sandbox {self.made}: one sandbox per session")

    def done(self, req: dict[str, object]) -> None:
        if req["op"] == "create":
            self.made, self.live = str(req["name"]), True
        elif req["op"] in ("destroy", "reclaim") and req["name"] == self.made:
            self.live = False


def _refusal_text(e: BaseException) -> str:
    if isinstance(e, (Refusal, Broken)):
        return str(e).replace("\n", " ")
    # Anything else is a bug: still one line and a log entry, never a traceback
    # (a root traceback would show the caller our internals and state).
    return f"internal error: {type(e).__name__}: {e}".replace("\n", " ")


def _log_refusal(log: Log | None, caller: Caller, req: dict[str, object] | None, raw: bytes, reason: str, *,
                 note: str = "") -> None:
    what = req["op"] if req else "request"
    try:
        entry = f"uid={caller.uid}({caller.user}) op={what} args={_summary(req, raw)}{note} REFUSED: {reason}"
        (log or Log({})).write(entry)
    except (OSError, Broken):
        pass


def handle(caller: Caller, config_path: str, raw: bytes, session: Session | None = None,
           note: str = "") -> tuple[int, dict[str, object] | str]:
    """One request, checked and done as if it came alone: (0, the reply), or (1 for a
    refusal, 2 for a broken installation, the reason). Logged either way."""
    log: Log | None = None
    req: dict[str, object] | None = None
    try:
        cfg = load_config(config_path)
        log = Log(cfg)
        if not caller.allowed(cfg):
            raise Refusal(f"user {caller.user} is not allowed to use the switchboard")
        req = parse_request(raw)
        if session is not None:
            session.check(req)
        elif req["op"] != "reclaim":
            _close_state_fd()
        op = {"create": op_create, "attach": op_attach, "destroy": op_destroy, "reclaim": op_reclaim}[str(req["op"])]
        reply = op(cfg, caller, req)
    except (Refusal, Broken, Exception) as e:
        reason = _refusal_text(e)
        _log_refusal(log, caller, req, raw, reason, note=note)
        return (1 if isinstance(e, Refusal) else 2), reason
    if session is not None:
        session.done(req)
    try:
        log.write(f"uid={caller.uid}({caller.user}) op={req['op']} args={_summary(req, raw)}{note} OK "
                  f"{json.dumps(reply)}")
    except OSError as e:
        # done but not logged: say so loudly rather than pretend
        if session is None:
            sys.stderr.write(f"sandbox-switchboard: warning: cannot write the log: {e.strerror}\n")
    return 0, reply


def _reply_line(status: int, reply: dict[str, object] | str) -> bytes:
    body = {"ok": True, **reply} if isinstance(reply, dict) else {"ok": False, "error": reply}
    return json.dumps({"version": VERSION, **body}).encode() + b"\n"


def _write_all(data: bytes) -> None:
    while data:
        data = data[os.write(1, data):]


def serve(caller: Caller, config_path: str, lines: Lines) -> int:
    """A session, until EOF; then its sandbox, if still there, is destroyed."""
    _close_state_fd()  # reclaim is gc's, one-shot: a session has no state file to offer
    session = Session()
    talking = True  # the caller still reads our replies
    status = 0
    try:
        _write_all(_reply_line(0, {"session": True}))
    except OSError:
        talking = False
    while talking and (raw := lines.line()) is not None:
        code, reply = handle(caller, config_path, raw, session)
        try:
            _write_all(_reply_line(code, reply))
        except OSError:  # EPIPE (SIGPIPE is ignored): the launcher is gone, as at EOF
            talking = False
    if session.live and session.made is not None:
        end = json.dumps({"version": VERSION, "op": "destroy", "name": session.made}).encode()
        status, _ = handle(caller, config_path, end, session, note=" (end of session)")
    return status


def main(config_path: str = CONFIG) -> int:
    caller = Caller()
    try:
        harden()
    except (Broken, Exception) as e:
        reason = _refusal_text(e)
        _log_refusal(None, caller, None, b"", reason)
        sys.stderr.write(f"sandbox-switchboard: {reason}\n")
        return 2
    lines = Lines()
    first = lines.line() or b""
    if opens_session(first):
        try:
            # its parser imported while the launcher is still busy (the agent opens the
            # session as soon as the launcher knows it is a member); each request loads
            # the config again, as a one-shot request does
            load_config(config_path)
        except (Broken, OSError):
            pass  # each request says so
        status = serve(caller, config_path, lines)
        os._exit(status)  # every reply and log entry is written: no interpreter teardown
    raw = first + lines.rest(len(first))
    status, reply = handle(caller, config_path, raw)
    if isinstance(reply, str):
        sys.stderr.write(f"sandbox-switchboard: {reply}\n")
        return status
    sys.stdout.write(json.dumps({"version": VERSION, "ok": True, **reply}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
