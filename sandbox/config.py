"""Site configuration: defaults from a TOML file and SANDBOX_* variables, under options.

Precedence, lowest first: built-in default, the file (/etc/sandbox/sandbox.toml, or
$SANDBOX_CONFIG), the environment (SANDBOX_MEM, ...), the Slurm allocation (only with
--from-slurm or `from_slurm = true`), and the command line. Every value carries where
it came from, so `sandbox config` can say why a job got the limit it got.

This module is on the launch path, so it stays cheap: tomllib is imported only when the
file exists (one stat otherwise), and nothing here imports more than limits.py, which
the launcher has loaded anyway.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from . import errors
from .limits import parse_count, parse_cpus, parse_seconds, parse_size

DEFAULT_PATH = "/etc/sandbox/sandbox.toml"
ENV_PREFIX = "SANDBOX_"


class Setting(NamedTuple):
    key: str
    convert: Callable[[str], Any]
    help: str
    option: str | None = None  # the sandbox-run option that overrides it


class Value(NamedTuple):
    value: Any
    source: str  # "default", "file:PATH", "env:NAME", "slurm:NAME", "option:--flag"


def _path(text: str) -> str:
    return text  # "" disables (accounting_log)


def _limits_policy(text: str) -> str:
    from .options import limits_policy

    return limits_policy(text)


def _tracking(text: str) -> str:
    from .options import tracking_mode

    return tracking_mode(text)


def _gid_range(text: str) -> range:
    from .proctree import parse_gid_range

    return parse_gid_range(text)


def _dev(text: str) -> str:
    from .options import dev_mode

    return dev_mode(text)


def _device_list(text: str) -> tuple[tuple[str, str], ...]:
    """PATH[:ACCESS] entries, comma-separated (the file's list is joined so)."""
    from .devices import parse_device

    return tuple(parse_device(item.strip()) for item in text.split(",") if item.strip())


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"invalid boolean {text!r}: expected true or false")


SETTINGS: tuple[Setting, ...] = (
    Setting("mem", lambda v: parse_size(v, "memory size"), "default --mem", "--mem"),
    Setting("swap", lambda v: parse_size(v, "swap size"), "default --swap", "--swap"),
    Setting("pids", lambda v: parse_count(v, "process count"), "default --pids", "--pids"),
    Setting("cpus", parse_cpus, "default --cpus", "--cpus"),
    Setting("tmp_size", lambda v: parse_size(v, "tmp size"), "default --tmp-size", "--tmp-size"),
    Setting("limits", _limits_policy, "enforce or best-effort: limits without a cgroup", "--limits"),
    Setting("cgroup_parent", str, "default --cgroup-parent", "--cgroup-parent"),
    Setting("tracking", _tracking, "default --tracking (auto, cgroup, pidns or process-tree)", "--tracking"),
    Setting("tracking_gids", _gid_range, "GIDs (FIRST-LAST) root's process-tree jobs are tagged with"),
    Setting("timeout", lambda v: parse_seconds(v, "timeout"), "default --timeout", "--timeout"),
    Setting("kill_grace", lambda v: parse_seconds(v, "kill grace"), "default --kill-grace", "--kill-grace"),
    Setting("from_slurm", _bool, "take --mem/--cpus from the Slurm allocation", "--from-slurm"),
    Setting("dev", _dev, "default --dev (host or private)", "--dev"),
    Setting("seccomp", str, "default --seccomp (default, none or a profile's path)", "--seccomp"),
    Setting("devices", _device_list, "devices a private /dev always gets, beside --device ones"),
    Setting("accounting_log", _path, "accounting log (JSON lines); empty: none"),
    Setting("state_dir", _path, "directory of the running sandboxes' state files"),
)
BY_KEY = {s.key: s for s in SETTINGS}
LIST_SETTINGS = ("devices",)  # a TOML list in the file, comma-separated in SANDBOX_DEVICES


def config_path() -> str:
    return os.environ.get("SANDBOX_CONFIG") or DEFAULT_PATH


def _builtin_default(key: str) -> Any:
    if key == "kill_grace":
        return 10.0
    if key == "from_slurm":
        return False
    if key in ("dev", "seccomp", "devices", "tracking", "tracking_gids"):
        return {"dev": "host", "seccomp": "default", "devices": (), "tracking": "auto", "tracking_gids": None}[key]
    from .privilege import current  # state_dir, accounting_log: where depends on the mode

    return current().builtin_default(key)


_file_cache: dict[str, tuple[tuple[int, int] | None, dict[str, Any]]] = {}


def load_file(path: str | None = None) -> dict[str, Any]:
    """The file's settings, validated ({} when there is no file). A bad file is an error,
    not a silent default: a typo in a site limit must not go unnoticed."""
    path = path or config_path()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise errors.SandboxError(f"cannot read {path}: {e.strerror}") from None
    ident = (st.st_mtime_ns, st.st_size)
    cached = _file_cache.get(path)
    if cached is not None and cached[0] == ident:
        return cached[1]
    import tomllib

    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise errors.SandboxError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise errors.SandboxError(f"{path}: invalid TOML: {e}") from None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "labels":
            if not isinstance(value, dict):
                raise errors.SandboxError(f"{path}: labels must be a table of KEY = \"VALUE\"")
            out["labels"] = {str(k): _label(path, str(k), v) for k, v in value.items()}
            continue
        setting = BY_KEY.get(key)
        if setting is None:
            raise errors.SandboxError(f"{path}: unknown setting {key!r} (known: {', '.join(BY_KEY)}, labels)")
        if key in LIST_SETTINGS and isinstance(value, list):
            if not all(isinstance(v, str) and "," not in v for v in value):
                raise errors.SandboxError(f"{path}: {key}: expected a list of strings (without commas)")
            text = ",".join(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float, str)):
            text = str(value)
        else:
            raise errors.SandboxError(f"{path}: {key}: expected a string or a number")
        try:
            out[key] = setting.convert(text)
        except ValueError as e:
            raise errors.SandboxError(f"{path}: {key}: {e}") from None
    _file_cache[path] = (ident, out)
    return out


def _label(path: str, key: str, value: object) -> str:
    from .options import parse_label

    try:
        return parse_label(f"{key}={value}")[1]
    except ValueError as e:
        raise errors.SandboxError(f"{path}: labels: {e}") from None


def file_setting(key: str) -> Any:
    """One setting from the file, or None: for modules that only need one (state.py)."""
    return load_file().get(key)


def _env_value(setting: Setting, env: Mapping[str, str]) -> Value | None:
    name = ENV_PREFIX + setting.key.upper()
    if name not in env:
        return None
    try:
        return Value(setting.convert(env[name]), f"env:{name}")
    except ValueError as e:
        raise errors.SandboxError(f"{name}: {e}") from None


# -- Slurm ----------------------------------------------------------------------------


def _tasks_on_node(env: Mapping[str, str]) -> int:
    """Tasks of this step on this node, from SLURM_STEP_TASKS_PER_NODE ('2(x3),1': two
    tasks on each of three nodes, then one) indexed by SLURM_NODEID."""
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not spec:
        return 1
    counts: list[int] = []
    for part in spec.split(","):
        count, _, rep = part.partition("(x")
        try:
            counts += [int(count)] * (int(rep.rstrip(")")) if rep else 1)
        except ValueError:
            return 1
    node = int(env.get("SLURM_NODEID", "0") or 0)
    return max(1, counts[node] if node < len(counts) else counts[-1])


def enclosing_memory_limit(cgroup_parent: str | None) -> int | None:
    """The memory limit already in force where the sandbox will be made (Slurm's step
    cgroup under task/cgroup); None when there is none or it cannot be read."""
    from .cgroups import CgroupError, job_cgroup

    try:
        return job_cgroup("probe", cgroup_parent).enclosing_memory_limit()
    except (CgroupError, OSError):
        return None


def slurm_values(env: Mapping[str, str], enclosing_memory: int | None = None) -> dict[str, Value]:
    """mem and cpus of one Slurm task. The memory is the step's own cgroup limit when
    Slurm constrains it (task/cgroup): the sandbox then adds no limit of its own, so an
    OOM kill happens, and is counted, where Slurm looks; its report states that limit.
    Only without one does it come from the variables srun sets (Slurm's MB are MiB),
    which a plain srun does not set and which inside sbatch are the job's, not the step's."""
    if "SLURM_JOB_ID" not in env:
        raise errors.SandboxError("--from-slurm: not inside a Slurm job (SLURM_JOB_ID is not set)")
    out: dict[str, Value] = {}
    cpus_text = env.get("SLURM_CPUS_PER_TASK")
    try:
        cpus = int(cpus_text) if cpus_text else None
        if cpus is not None:
            out["cpus"] = Value(float(cpus), "slurm:SLURM_CPUS_PER_TASK")
        from_env = enclosing_memory is None
        if from_env and env.get("SLURM_MEM_PER_CPU"):
            mib = int(env["SLURM_MEM_PER_CPU"]) * (cpus or 1)
            out["mem"] = Value(mib * 1024 * 1024, "slurm:SLURM_MEM_PER_CPU")
        elif from_env and env.get("SLURM_MEM_PER_NODE"):
            mib = int(env["SLURM_MEM_PER_NODE"]) // _tasks_on_node(env)
            out["mem"] = Value(mib * 1024 * 1024, "slurm:SLURM_MEM_PER_NODE")
    except ValueError as e:
        raise errors.SandboxError(f"--from-slurm: unreadable Slurm environment: {e}") from None
    if "mem" in out and out["mem"].value == 0:
        del out["mem"]  # --mem=0 asks Slurm for the whole node: no limit of ours
    return out


# -- the effective configuration --------------------------------------------------------


def effective(options: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> dict[str, Value]:
    """Every setting's value and source; `options` are sandbox-run's parsed options."""
    env = os.environ if env is None else env
    options = options or {}
    from_file = load_file()
    where = f"file:{config_path()}"
    out: dict[str, Value] = {}
    for s in SETTINGS:
        value = Value(_builtin_default(s.key), "default")
        if s.key in from_file:
            value = Value(from_file[s.key], where)
        value = _env_value(s, env) or value
        opt = options.get(s.key)
        if s.option is not None and opt not in (None, False):
            value = Value(opt, f"option:{s.option}")
        out[s.key] = value
    if out["from_slurm"].value:
        enclosing = enclosing_memory_limit(options.get("cgroup_parent"))
        for key, value in slurm_values(env, enclosing).items():
            if options.get(key) is None:
                out[key] = value
    labels = dict(from_file.get("labels", {}))
    sources = dict.fromkeys(labels, where)
    seen: set[str] = set()
    for key, val in options.get("labels") or ():
        if key in seen:
            raise errors.SandboxError(f"--label {key} given twice")
        seen.add(key)
        labels[key] = val
        sources[key] = "option:--label"
    out["labels"] = Value(labels, "; ".join(f"{k}: {v}" for k, v in sources.items()) or "default")
    return out


def apply(opts: dict[str, Any]) -> dict[str, Any]:
    """sandbox-run's options completed with the site's defaults (a new dict)."""
    eff = effective(opts)
    out = dict(opts)
    for s in SETTINGS:
        if s.option is not None and s.key in out:
            out[s.key] = eff[s.key].value
    out["accounting_log"] = eff["accounting_log"].value or None
    out["site_devices"] = eff["devices"].value
    out["tracking_gids"] = eff["tracking_gids"].value
    out["labels"] = tuple(eff["labels"].value.items())
    return out


def describe(eff: Mapping[str, Value]) -> list[tuple[str, str, str]]:
    """(key, value as text, source) rows for `sandbox config`."""
    from .limits import format_bytes

    rows = []
    for key, (value, source) in eff.items():
        if key == "labels":
            rows.append((key, ", ".join(f"{k}={v}" for k, v in value.items()) or "-", source))
            continue
        if value is None:
            text = "-"
        elif key in ("mem", "swap", "tmp_size") and isinstance(value, int):
            text = f"{format_bytes(value)} ({value})"
        elif key == "devices":
            text = ", ".join(f"{p}:{a}" for p, a in value) or "-"
        elif isinstance(value, range):
            text = f"{value.start}-{value.stop - 1}"
        else:
            text = str(value)
        rows.append((key, text, source))
    return rows
