"""The command line: `sandbox-run [OPTIONS] -- CMD ARGS...` and `sandbox COMMAND`.

Every error is one line on stderr and a distinct exit code; click's usage errors
(which default to 2) exit 125 like every other failure of sandbox-run itself.
Tracebacks only with --debug.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from . import __version__, errors
from .launch import launch
from .options import RUN_OPTIONS, Option


def _converter(fn: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is None or fn is None:
            return value
        try:
            if isinstance(value, tuple):
                return tuple(fn(v) for v in value)
            return fn(value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None

    return callback


def _click_options(options: tuple[Option, ...]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn the option table into click decorators (see options.py for why a table)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for o in reversed(options):
            if o.is_flag:
                fn = click.option(*o.flags, o.dest, is_flag=True, help=o.help)(fn)
            else:
                fn = click.option(
                    *o.flags,
                    o.dest,
                    metavar=o.metavar,
                    help=o.help,
                    multiple=o.multiple,
                    callback=_converter(o.convert) if o.convert else None,
                )(fn)
        return fn

    return decorate


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
    if isinstance(rv, int) and rv < 0:  # sandbox-run: the job died of signal -rv
        sys.stdout.flush()
        sys.stderr.flush()
        errors.exit_like(rv)
    sys.exit(rv if isinstance(rv, int) else 0)


# -- sandbox-run -------------------------------------------------------------------

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command(context_settings={**CONTEXT, "allow_interspersed_args": False})
@_click_options(RUN_OPTIONS)
@click.version_option(__version__, "--version", prog_name="sandbox-run")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD [ARGS]...")
def run_command(command: tuple[str, ...], **opts: Any) -> int:
    """Run CMD in its own PID, mount, IPC and UTS namespaces and its own cgroup, with
    a private /tmp, and report what it used. Exits with CMD's exit code, 128+N if it
    died of signal N, 124 on timeout, 125 if sandbox-run failed, 126 if CMD cannot be
    executed, 127 if it is not found."""
    return launch(command, opts)


def run_with_click(argv: list[str]) -> NoReturn:
    _standalone(run_command, "sandbox-run", argv)


# -- sandbox (management) ----------------------------------------------------------


@click.group(context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.version_option(__version__, "--version", prog_name="sandbox")
def sandbox_group(debug: bool) -> None:
    """Manage sandboxes started by sandbox-run."""


@sandbox_group.command("gc")
@click.option("--cgroup-parent", metavar="PATH", help="Also look for orphan cgroups under this parent.")
@click.option("--stale-only", is_flag=True,
              help="Only sandboxes with a state file whose launcher is gone; no search for orphan cgroups "
                   "(a batch system's epilog: nothing of a job that is starting).")
def gc_command(cgroup_parent: str | None, stale_only: bool) -> None:
    """Reclaim the cgroups and state of sandboxes whose launcher died (e.g. SIGKILL)."""
    from . import gc
    from .privilege import current

    names = gc.reclaim_stale() + current().reclaim_others()
    if not stale_only:
        names += gc.reclaim_orphans(cgroup_parent)
    for name in names:
        click.echo(f"reclaimed {name}")
    if not names:
        click.echo("nothing to reclaim")


# -- live control, accounting, configuration: thin wrappers over control.py,
# accounting.py and config.py, which the Python API (api.py) uses too.


def _json_out(obj: object) -> None:
    import json

    click.echo(json.dumps(obj, indent=2))


@sandbox_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
def list_command(as_json: bool) -> None:
    """Sandboxes you may control: running, suspended, or stale (launcher gone)."""
    from . import control

    entries = control.listing()
    if as_json:
        _json_out(entries)
    elif entries:
        click.echo(control.format_listing(entries))


@sandbox_group.command("ps")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of sandboxes with their processes.")
def ps_command(name: str | None, as_json: bool) -> None:
    """Process tree of each running sandbox (or NAME): namespace PID, host PID, user,
    state, CPU, RSS, command; with its labels."""
    from . import control

    sandboxes = control.ps(name)
    if as_json:
        _json_out(sandboxes)
    elif sandboxes:
        click.echo(control.format_ps(sandboxes))


@sandbox_group.command("usage")
@click.argument("name")
def usage_command(name: str) -> None:
    """Live usage of NAME as JSON, under the report's keys."""
    from . import control

    _json_out(control.usage(name).to_dict())


@sandbox_group.command("kill")
@click.argument("name")
@click.option("-s", "--signal", "sig", default="KILL", metavar="SIGNAL", show_default=True,
              help="Signal name (TERM, SIGUSR1) or number.")
def kill_command(name: str, sig: str) -> None:
    """Send SIGNAL to every process of NAME at once (freeze, signal, thaw)."""
    from . import control

    control.send_signal(name, control.parse_signal(sig))


@sandbox_group.command("suspend")
@click.argument("name")
def suspend_command(name: str) -> None:
    """Freeze every process of NAME (cgroup freezer); `sandbox resume` thaws them."""
    from . import control

    control.suspend(name)


@sandbox_group.command("resume")
@click.argument("name")
def resume_command(name: str) -> None:
    """Thaw a suspended sandbox."""
    from . import control

    control.resume(name)


@sandbox_group.command("accounting")
@click.option("--by", metavar="KEY", help="Group by the value of label KEY (e.g. tenant).")
@click.option("--since", metavar="DATE", help="Only jobs that ended at or after DATE (2026-01-31, "
              "2026-01-31T12:00, @UNIXTIME, or an age: 24h, 7d).")
@click.option("--until", metavar="DATE", help="Only jobs that ended before DATE.")
@click.option("--log", "log_path", metavar="PATH", help="Accounting log to read [configured accounting_log].")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of groups.")
def accounting_command(by: str | None, since: str | None, until: str | None, log_path: str | None,
                       as_json: bool) -> None:
    """Sum wall time, CPU time, memory and job count per label value."""
    from . import accounting, config

    path = log_path or config.effective()["accounting_log"].value
    if not path:
        raise errors.SandboxError("no accounting log is configured (accounting_log is empty)")
    totals = accounting.summarize(
        accounting.records(path),
        by,
        accounting.parse_since(since) if since else None,
        accounting.parse_since(until) if until else None,
    )
    if as_json:
        _json_out([t.as_dict(by) for t in totals])
    else:
        click.echo(accounting.table(totals, by))


@sandbox_group.command("config", context_settings={"ignore_unknown_options": True})
@click.option("--json", "as_json", is_flag=True, help="One JSON object: key -> {value, source}.")
@click.argument("run_options", nargs=-1, type=click.UNPROCESSED, metavar="[SANDBOX-RUN OPTIONS]...")
def config_command(as_json: bool, run_options: tuple[str, ...]) -> None:
    """The effective configuration and where each value comes from (default, the
    config file, a SANDBOX_* variable, Slurm, or the sandbox-run options given)."""
    from . import config
    from .argv import fast_parse

    parsed = fast_parse([*run_options, "--", "true"]) if run_options else ({}, ())
    if parsed is None:
        raise errors.SandboxError(f"invalid sandbox-run options: {' '.join(run_options)}")
    eff = config.effective(parsed[0])
    if as_json:
        _json_out({k: {"value": v.value, "source": v.source} for k, v in eff.items()})
        return
    click.echo(f"# config file: {config.config_path()}")
    rows = config.describe(eff)
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for key, text, source in rows:
        click.echo(f"{key.ljust(widths[0])}  {text.ljust(widths[1])}  {source}")


def main(argv: list[str] | None = None) -> NoReturn:
    _standalone(sandbox_group, "sandbox", argv)
