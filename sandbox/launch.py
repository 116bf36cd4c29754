"""From parsed options to a running job: the entry point of `sandbox-run`.

Both argument parsers end here (argv.py for the common case, click in cli.py for
everything else), so there is one path from options to JobSpec to runner.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from . import errors
from .argv import fast_parse
from .limits import Limits
from .spec import JobSpec, generate_name

if TYPE_CHECKING:
    from collections.abc import Mapping


def launch(command: tuple[str, ...], opts: dict[str, Any]) -> int:
    """Run a parsed command line: the one path both argument parsers lead to."""
    from .config import apply as with_site_config  # cheap: one stat unless a config file exists

    try:
        opts = with_site_config(opts)
        spec = build_spec(command, opts)
        from .privilege import current

        privilege = current(opts.get("tracking") or "auto", opts.get("tracking_gids"))
    except errors.SandboxError as e:
        _report_failure(command, opts, e)
        raise
    try:
        try:
            privilege.check_usable()  # e.g. without root or the switchboard, user namespaces
            privilege.check_limits(spec.limits, spec.best_effort)  # refused before anything is made
            privilege.check_isolation(spec)  # without namespaces: what only a namespace gives
        except errors.SandboxError as e:
            _report_failure(command, opts, e)
            raise
        if spec.report_path:
            directory = os.path.dirname(os.path.abspath(spec.report_path))
            if not os.access(directory, os.W_OK):
                raise errors.SandboxError(f"--report: cannot write in {directory}")
        if spec.report_fd is not None:
            os.set_inheritable(spec.report_fd, False)
        from .runner import run

        return run(spec, privilege, verbose=opts["verbose"])
    finally:
        privilege.close()


def build_spec(command: tuple[str, ...], opts: dict[str, Any]) -> JobSpec:
    if not command or not command[0]:
        raise errors.SandboxError("missing command to run")
    if opts.get("swap") is not None and opts.get("mem") is None:
        raise errors.SandboxError("--swap needs --mem")
    if opts.get("report_format") == "classad":
        from .classad import label_attributes

        try:
            label_attributes(dict(opts.get("labels") or ()))
        except ValueError as e:
            raise errors.SandboxError(str(e)) from None
    return JobSpec(
        argv=tuple(command),
        name=opts.get("name") or generate_name(),
        limits=Limits(
            memory_bytes=opts.get("mem"),
            swap_bytes=opts.get("swap"),
            pids=opts.get("pids"),
            cpus=opts.get("cpus"),
            tmp_bytes=opts.get("tmp_size"),
        ),
        cgroup_parent=opts.get("cgroup_parent"),
        timeout=opts.get("timeout"),
        kill_grace=opts.get("kill_grace") or 10.0,
        report_path=opts.get("report_path"),
        report_fd=opts.get("report_fd"),
        stats=bool(opts.get("stats")),
        debug=bool(opts.get("debug")),
        cwd=opts.get("cwd"),
        execute_dir=opts.get("execute_dir"),
        hide=tuple(opts.get("hide") or ()),
        binds=tuple((s, d, False) for s, d in opts.get("bind") or ())
        + tuple((s, d, True) for s, d in opts.get("ro_bind") or ()),
        user=_credentials(opts.get("user")),
        net=opts.get("net") or "host",
        labels=tuple(opts.get("labels") or ()),
        report_format=opts.get("report_format") or "json",
        accounting_log=opts.get("accounting_log"),
        best_effort=opts.get("limits") == "best-effort",
        dev=opts.get("dev") or "host",
        **_devices(opts.get("dev") or "host", tuple(opts.get("devices") or ()), tuple(opts.get("site_devices") or ())),
        pty=_pty(bool(opts.get("pty")), bool(opts.get("no_pty"))),
        keep_fds=tuple(dict.fromkeys(opts.get("keep_fds") or ())),
        seccomp=_seccomp(opts.get("seccomp") or "default", opts.get("user") is not None),
        die_with_parent=bool(opts.get("die_with_parent")),
    )


def _pty(pty: bool, no_pty: bool) -> bool | None:
    if pty and no_pty:
        raise errors.SandboxError("--pty and --no-pty exclude each other")
    return True if pty else (False if no_pty else None)


def _devices(dev: str, devices: tuple[tuple[str, str], ...], site: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """The spec's devices (paths) and device_access (those narrower than rwm). The
    site's always-allowed devices (sandbox.toml `devices`) join a private /dev where this
    node has them: one list serves nodes with and without, say, a GPU."""
    if devices and dev != "private":
        raise errors.SandboxError("--device needs --dev private (with the host's /dev, every device is there)")
    if dev != "private":
        return {"devices": ()}
    from .devices import ACCESS, merge

    basic = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")
    present = tuple((p, a) for p, a in site if os.path.lexists(p))
    given = merge((*((p, ACCESS) for p in basic), *present, *devices,
                   *((p, ACCESS) for p in _assigned_gpus(os.environ))))
    return {"devices": tuple(given), "device_access": tuple((p, a) for p, a in given.items() if a != ACCESS)}


def _assigned_gpus(env: Mapping[str, str]) -> tuple[str, ...]:
    """With a private /dev, the GPUs the batch system assigned (and only those) are
    handed over, with the driver's control nodes (see gpus.py)."""
    from . import gpus

    if gpus.assignment(env) is None:
        return ()  # no batch system said anything: no scan of /dev and the driver
    try:
        return tuple(gpus.for_job(env, *gpus.scan()))
    except gpus.GpuError as e:
        raise errors.SandboxError(str(e)) from None


def _seccomp(choice: str, user_job: bool) -> Any:
    from . import seccomp

    try:
        return seccomp.load_profile(choice, user_job)
    except seccomp.ProfileError as e:
        raise errors.SandboxError(str(e)) from None


def _report_failure(command: tuple[str, ...], opts: dict[str, Any], e: errors.SandboxError) -> None:
    """A --report for a launch refused before anything started (a bad option, a caller
    the switchboard will not serve): starter code reads the reason there, as it does
    for a failure during setup, instead of finding no report at all."""
    path = opts.get("report_path")
    if not path:
        return
    from . import report
    from .sinks import report_file

    r = report.new_report("")
    r.update(name=opts.get("name"), status=report.STATUS_FAILED, returncode=e.exit_code, error=e.message,
             argv=list(command))
    report_file(path, opts.get("report_format") or "json", r)


def _credentials(user: str | None) -> Any:
    if user is None:
        return None
    from .credentials import resolve_user

    try:
        return resolve_user(user)
    except ValueError as e:
        raise errors.SandboxError(str(e)) from None


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"sandbox-run: {message}\n")
    sys.exit(code)


def run_main(argv: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else argv
    parsed = fast_parse(args)
    if parsed is None:
        from .cli import run_with_click

        run_with_click(args)
    opts, command = parsed
    try:
        code = launch(command, opts)
    except errors.SandboxError as e:
        if opts.get("debug"):
            raise
        _fail(e.message, e.exit_code)
    # Everything is written and closed; skip the interpreter's teardown (module and
    # object finalisation), which costs several ms of every launch and does nothing
    # we need.
    sys.stdout.flush()
    sys.stderr.flush()
    errors.exit_like(code)


