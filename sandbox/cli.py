"""The command line: `sandbox-run [OPTIONS] -- CMD ARGS...` and `sandbox COMMAND`.

Every error is one line on stderr and a distinct exit code; click's usage errors
(which default to 2) exit 125 like every other failure of sandbox-run itself.
Tracebacks only with --debug.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from . import __version__, errors
from .limits import Limits, parse_count, parse_cpus, parse_seconds, parse_size
from .spec import JobSpec, check_name, generate_name


def _converter(fn: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, str | None], Any]:
    def callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return fn(value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None

    return callback


def _report_fd(text: str) -> int:
    fd = parse_count(text, "descriptor") if text != "0" else 0
    try:
        os.fstat(fd)
    except OSError:
        raise ValueError(f"descriptor {fd} is not open") from None
    return fd


def _fail(prog: str, message: str, code: int = errors.EXIT_SANDBOX_FAILED) -> NoReturn:
    sys.stderr.write(f"{prog}: {message}\n")
    sys.exit(code)


def _standalone(command: click.Command, prog: str, argv: list[str] | None) -> NoReturn:
    """click's standalone mode, with our exit codes and one-line errors."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        rv = command.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:  # type: ignore[attr-defined,unused-ignore]
        click.echo(e.ctx.get_help(), err=True)
        sys.exit(errors.EXIT_SANDBOX_FAILED)
    except click.UsageError as e:
        hint = f" (try '{prog} --help')"
        _fail(prog, e.format_message().replace("\n", " ") + hint)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        _fail(prog, "aborted")
    except errors.SandboxError as e:
        if debug:
            raise
        _fail(prog, e.message, e.exit_code)
    except Exception as e:  # a bug: say it in one line; --debug shows where
        if debug:
            raise
        _fail(prog, f"internal error: {type(e).__name__}: {e} (run with --debug for a traceback)")
    sys.exit(rv if isinstance(rv, int) else 0)


# -- sandbox-run -------------------------------------------------------------------

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command(context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.option("--mem", metavar="SIZE", callback=_converter(lambda v: parse_size(v, "memory size")),
              help="Hard memory limit (2G, 512M, 1.5G or bytes); no swap beyond it unless --swap.")
@click.option("--swap", metavar="SIZE", callback=_converter(lambda v: parse_size(v, "swap size")),
              help="Swap the job may use beyond --mem.")
@click.option("--pids", metavar="N", callback=_converter(lambda v: parse_count(v, "process count")),
              help="At most N processes and threads.")
@click.option("--cpus", metavar="X", callback=_converter(parse_cpus), help="CPU quota, in CPUs (0.5, 2, ...).")
@click.option("--tmp-size", metavar="SIZE", callback=_converter(lambda v: parse_size(v, "tmp size")),
              help="Bound on the private /tmp, /var/tmp and /dev/shm together (RAM, charged to the job).")
@click.option("--name", metavar="NAME", callback=_converter(check_name),
              help="Name of the sandbox (default: a generated unique name).")
@click.option("--cgroup-parent", metavar="PATH",
              help="Cgroup to create the sandbox's cgroup under (default: the launcher's own).")
@click.option("--timeout", metavar="SECONDS", callback=_converter(lambda v: parse_seconds(v, "timeout")),
              help="Stop the job after SECONDS (SIGTERM, then SIGKILL after --kill-grace); exit 124.")
@click.option("--kill-grace", metavar="SECONDS", default="10",
              callback=_converter(lambda v: parse_seconds(v, "kill grace")),
              help="Time between SIGTERM and SIGKILL on timeout or when sandbox-run gets SIGTERM [10].")
@click.option("--report", "report_path", metavar="PATH", type=click.Path(dir_okay=False),
              help="Write the final report, one JSON object, atomically to PATH.")
@click.option("--report-fd", metavar="N", callback=_converter(_report_fd),
              help="Stream JSON lines ('started', then 'exited') on inherited descriptor N.")
@click.option("--chdir", "cwd", metavar="DIR", help="Working directory of the job (default: the current one).")
@click.option("--stats", is_flag=True, help="Print a usage summary on stderr at the end.")
@click.option("-v", "--verbose", is_flag=True, help="Say what happens on stderr, and print the summary.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.version_option(__version__, "--version", prog_name="sandbox-run")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD [ARGS]...")
def run_command(command: tuple[str, ...], **opts: Any) -> int:
    """Run CMD in its own PID, mount, IPC and UTS namespaces and its own cgroup, with
    a private /tmp, and report what it used. Exits with CMD's exit code, 128+N if it
    died of signal N, 124 on timeout, 125 if sandbox-run failed, 126 if CMD cannot be
    executed, 127 if it is not found."""
    spec = build_spec(command, opts)
    if os.geteuid() != 0:
        raise errors.SandboxError("sandbox-run must run as root (unprivileged use needs the switchboard helper)")
    if spec.report_path:
        directory = os.path.dirname(os.path.abspath(spec.report_path))
        if not os.access(directory, os.W_OK):
            raise errors.SandboxError(f"--report: cannot write in {directory}")
    if spec.report_fd is not None:
        os.set_inheritable(spec.report_fd, False)
    from .runner import run

    return run(spec, verbose=opts["verbose"])


def build_spec(command: tuple[str, ...], opts: dict[str, Any]) -> JobSpec:
    if not command or not command[0]:
        raise click.UsageError("missing command to run")
    if opts.get("swap") is not None and opts.get("mem") is None:
        raise click.UsageError("--swap needs --mem")
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
    )


def run_main(argv: list[str] | None = None) -> NoReturn:
    _standalone(run_command, "sandbox-run", argv)


# -- sandbox (management) ----------------------------------------------------------


@click.group(context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.version_option(__version__, "--version", prog_name="sandbox")
def sandbox_group(debug: bool) -> None:
    """Manage sandboxes started by sandbox-run."""


@sandbox_group.command("gc")
@click.option("--cgroup-parent", metavar="PATH", help="Also look for orphan cgroups under this parent.")
def gc_command(cgroup_parent: str | None) -> None:
    """Reclaim the cgroups and state of sandboxes whose launcher died (e.g. SIGKILL)."""
    from . import gc

    names = gc.reclaim_stale() + gc.reclaim_orphans(cgroup_parent)
    for name in names:
        click.echo(f"reclaimed {name}")
    if not names:
        click.echo("nothing to reclaim")


def main(argv: list[str] | None = None) -> NoReturn:
    _standalone(sandbox_group, "sandbox", argv)
