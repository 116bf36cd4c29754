"""The options of `sandbox-run`, declared once as data.

cli.py builds the click command from this table (help, usage errors, --version);
argv.py parses the common case from the same table without importing click, which
costs ~20 ms of a ~40 ms launch. Value conversion is shared: both call `convert`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .limits import parse_count, parse_cpus, parse_seconds, parse_size
from .spec import check_name


class Option(NamedTuple):
    flags: tuple[str, ...]  # e.g. ("--mem",) or ("-v", "--verbose")
    dest: str
    help: str
    metavar: str = ""
    convert: Callable[[str], Any] | None = None  # raises ValueError with a user-facing message
    is_flag: bool = False
    multiple: bool = False
    default: Any = None


def _report_fd(text: str) -> int:
    import os

    if not text.isdigit():
        raise ValueError(f"invalid descriptor {text!r}: expected a number")
    fd = int(text)
    try:
        os.fstat(fd)
    except OSError:
        raise ValueError(f"descriptor {fd} is not open") from None
    return fd


def dev_mode(text: str) -> str:
    if text not in ("host", "private"):
        raise ValueError(f"invalid --dev {text!r}: expected host or private")
    return text


def _device(text: str) -> tuple[str, str]:
    from .devices import parse_device

    return parse_device(text)


def _keep_fd(text: str) -> int:
    fd = _report_fd(text)
    if fd <= 2:
        raise ValueError(f"descriptor {fd} always reaches the job: --keep-fd is for 3 and up")
    return fd


LABEL_KEY_MAX = 64
LABEL_VALUE_MAX = 256


def parse_label(text: str) -> tuple[str, str]:
    """KEY=VALUE for --label. Keys are identifiers (they become JSON keys, ClassAd
    attribute suffixes and `sandbox accounting --by` arguments); values are printable
    text without newlines, so that an accounting line stays one line."""
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise ValueError(f"invalid label {text!r}: expected KEY=VALUE")
    if len(key) > LABEL_KEY_MAX or not (key[0].isascii() and (key[0].isalpha() or key[0] == "_")) or not all(
        c.isascii() and (c.isalnum() or c in "_.-") for c in key
    ):
        raise ValueError(
            f"invalid label key {key!r}: use letters, digits, '_', '.', '-', starting with a letter or '_'"
        )
    if len(value) > LABEL_VALUE_MAX or not value.isprintable():
        raise ValueError(f"invalid label value for {key!r}: at most {LABEL_VALUE_MAX} printable characters")
    return key, value


def _report_format(text: str) -> str:
    if text not in ("json", "classad"):
        raise ValueError(f"invalid report format {text!r}: expected json or classad")
    return text


TRACKING_MODES = ("auto", "cgroup", "pidns", "process-tree")


def tracking_mode(text: str) -> str:
    if text not in TRACKING_MODES:
        raise ValueError(f"invalid tracking {text!r}: expected auto, cgroup, pidns or process-tree")
    return text


LIMIT_POLICIES = ("enforce", "best-effort")


def limits_policy(text: str) -> str:
    if text not in LIMIT_POLICIES:
        raise ValueError(f"invalid limits policy {text!r}: expected enforce or best-effort")
    return text


def _bind(text: str) -> tuple[str, str]:
    from .paths import parse_bind

    return parse_bind(text)


def _user(text: str) -> str:
    from .credentials import check_user

    return check_user(text)


def _net(text: str) -> str:
    if text not in ("host", "none"):
        raise ValueError(f"invalid network mode {text!r}: expected host or none")
    return text


RUN_OPTIONS: tuple[Option, ...] = (
    Option(("--mem",), "mem", "Hard memory limit (2G, 512M, 1.5G or bytes); no swap beyond it unless --swap.",
           "SIZE", lambda v: parse_size(v, "memory size")),
    Option(("--swap",), "swap", "Swap the job may use beyond --mem.", "SIZE", lambda v: parse_size(v, "swap size")),
    Option(("--pids",), "pids", "At most N processes and threads.", "N", lambda v: parse_count(v, "process count")),
    Option(("--cpus",), "cpus", "CPU quota, in CPUs (0.5, 2, ...).", "X", parse_cpus),
    Option(("--limits",), "limits", "enforce [default]: refuse limits this host cannot enforce (no cgroup); "
           "best-effort: run anyway, the report names them in limits_not_enforced.", "POLICY", limits_policy),
    Option(("--tracking",), "tracking", "What holds the job's processes together: auto [default], cgroup, "
           "pidns (a PID namespace), or process-tree (no cgroup, no namespace: the tree, an environment marker "
           "and, for root, a GID of the site's tracking_gids).", "MODE", tracking_mode),
    Option(("--tmp-size",), "tmp_size",
           "Bound on the private /tmp, /var/tmp and /dev/shm together (tmpfs: RAM charged to the job).",
           "SIZE", lambda v: parse_size(v, "tmp size")),
    Option(("--name",), "name", "Name of the sandbox (default: a generated unique name).", "NAME", check_name),
    Option(("--cgroup-parent",), "cgroup_parent",
           "Cgroup path to create the sandbox's cgroup under (default: the launcher's own cgroup).", "PATH"),
    Option(("--timeout",), "timeout",
           "Stop the job after SECONDS (SIGTERM, then SIGKILL after --kill-grace); exit 124.",
           "SECONDS", lambda v: parse_seconds(v, "timeout")),
    Option(("--kill-grace",), "kill_grace",
           "Seconds between SIGTERM and SIGKILL, on timeout or when sandbox-run gets SIGTERM [10].",
           "SECONDS", lambda v: parse_seconds(v, "kill grace")),
    Option(("--report",), "report_path", "Write the final report, one JSON object, atomically to PATH.", "PATH"),
    Option(("--report-fd",), "report_fd", "Stream JSON lines ('started', then 'exited') on inherited descriptor N.",
           "N", _report_fd),
    Option(("--chdir",), "cwd", "Working directory of the job (default: the current one).", "DIR"),
    Option(("--stats",), "stats", "Print a usage summary on stderr at the end.", is_flag=True),
    Option(("--die-with-parent",), "die_with_parent", "Tear the sandbox down (SIGKILL) when the process that "
           "started sandbox-run dies, SIGKILL included; the report says parent_died.", is_flag=True),
    Option(("-v", "--verbose"), "verbose", "Say what happens on stderr, and print the summary.", is_flag=True),
    Option(("--debug",), "debug", "Show tracebacks of internal errors.", is_flag=True),
    # isolation (execute dir, binds, hidden paths, credentials): see README "Isolation model"
    Option(("--execute-dir",), "execute_dir",
           "Run the job in DIR with every other entry of DIR's parent hidden; /tmp and /var/tmp "
           "live in DIR (DIR/.sandbox-tmp, DIR/.sandbox-var-tmp).", "DIR"),
    Option(("--hide",), "hide", "Cover PATH with an empty read-only mount (repeatable).", "PATH", multiple=True),
    Option(("--bind",), "bind", "Bind-mount SRC on DST (default: SRC) for the job (repeatable).", "SRC[:DST]",
           _bind, multiple=True),
    Option(("--ro-bind",), "ro_bind", "Like --bind, read-only (repeatable).", "SRC[:DST]", _bind, multiple=True),
    Option(("--user",), "user",
           "Run the job as USER[:GROUP] (names or numbers) with no capabilities and no_new_privs, "
           "in its own cgroup namespace.", "USER[:GROUP]", _user),
    Option(("--net",), "net", "Network: host [default] or none (a new namespace with loopback only).",
           "MODE", _net),
    Option(("--dev",), "dev", "Devices: host [default], or private (a new /dev: null, zero, full, random, "
           "urandom, tty, its own pts, shm, and --device nodes).", "MODE", dev_mode),
    Option(("--device",), "devices", "With --dev private: pass the host's device node PATH (e.g. /dev/nvidia0), "
           "with ACCESS letters of r, w, m [rwm] (repeatable).", "PATH[:ACCESS]", _device, multiple=True),
    Option(("--pty",), "pty", "Give the job a terminal of its own, relayed to ours (default when one of "
           "fds 0-2 is a terminal).", is_flag=True),
    Option(("--no-pty",), "no_pty", "Never give the job a terminal: it keeps fds 0-2 as they are, in a session "
           "of its own.", is_flag=True),
    Option(("--keep-fd",), "keep_fds", "Pass the caller's open descriptor N to the job (repeatable); "
           "it receives only 0-2 otherwise.", "N", _keep_fd, multiple=True),
    Option(("--seccomp",), "seccomp", "Syscall filter: default [default], none, or PATH of an OCI/docker "
           "JSON profile.", "MODE"),
    Option(("--label",), "labels", "Label the sandbox KEY=VALUE (repeatable; e.g. tenant=, job=): in the report, "
           "`sandbox ps` and the accounting log.", "KEY=VALUE", parse_label, multiple=True),
    Option(("--report-format",), "report_format", "Format of --report: json [default] or classad (HTCondor names).",
           "FORMAT", _report_format),
    Option(("--from-slurm",), "from_slurm", "Take --mem and --cpus, when not given, from the Slurm allocation "
           "(SLURM_MEM_PER_NODE / SLURM_MEM_PER_CPU, SLURM_CPUS_PER_TASK).", is_flag=True),
)


def defaults() -> dict[str, Any]:
    return {o.dest: (() if o.multiple else (False if o.is_flag else o.default)) for o in RUN_OPTIONS}
