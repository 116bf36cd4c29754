"""Parse `sandbox-run` arguments without click, for the common case only.

Importing click costs about half of a launch's budget. This parser understands
exactly the option table in options.py (long options with a separate or '=' value,
the flags, '--', and the command that ends the options, as click does with
allow_interspersed_args=False) and gives up, returning None, on anything else:
--help, --version, an unknown or abbreviated option, a missing or invalid value.
The CLI then lets click parse the same argv, which produces the proper message.
tests/unit/test_argv.py checks that both parsers agree.
"""

from __future__ import annotations

from typing import Any

from .options import RUN_OPTIONS, Option

_BY_FLAG: dict[str, Option] = {flag: o for o in RUN_OPTIONS for flag in o.flags}


def fast_parse(argv: list[str]) -> tuple[dict[str, Any], tuple[str, ...]] | None:
    """(options by dest, command) or None if click must decide."""
    from .options import defaults

    opts = defaults()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, inline = arg.partition("=")
        opt = _BY_FLAG.get(name)
        if opt is None:
            return None
        if opt.is_flag:
            if eq:
                return None
            opts[opt.dest] = True
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 2
        try:
            converted = opt.convert(value) if opt.convert else value
        except ValueError:
            return None
        if opt.multiple:
            opts[opt.dest] = (*opts[opt.dest], converted)
        else:
            opts[opt.dest] = converted
    command = tuple(argv[i:])
    if not command or not command[0]:
        return None
    return opts, command
