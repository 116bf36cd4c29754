"""Exit codes and the one exception type that carries them to the CLI.

The codes follow timeout(1), env(1) and podman: the job's own code, 128+N for
signal N, and a reserved band (124-127) for what happened around the job.
"""

from __future__ import annotations

import os
import signal
from typing import NoReturn

EXIT_TIMEOUT = 124
EXIT_SANDBOX_FAILED = 125  # sandbox-run itself failed, usage errors included
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
SIGNAL_BASE = 128
# A job cannot die of these (their default action stops or ignores): never re-raised.
_NOT_FATAL = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD,
                        signal.SIGCONT, signal.SIGURG, signal.SIGWINCH})


def exit_like(code: int) -> NoReturn:
    """End this process the way the job ended: `code` >= 0 is an exit status, -N is death
    by signal N. Like timeout(1), sandbox-run then kills itself with N, after its report
    and accounting are written, so that a shell still sees 128+N and a batch system sees
    the signal (Slurm's sacct says CANCELLED, TIMEOUT or OUT_OF_MEMORY, not FAILED 15:0)."""
    if code >= 0:
        os._exit(code)
    sig = -code
    if sig in _NOT_FATAL:
        os._exit(SIGNAL_BASE + sig)
    # The core would be sandbox-run's, not the job's: RLIMIT_CORE covers a file in the
    # cwd, PR_SET_DUMPABLE a core_pattern pipe (which ignores the rlimit).
    import resource

    import prctl

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    prctl.set_dumpable(False)
    if sig != signal.SIGKILL:
        signal.signal(sig, signal.SIG_DFL)  # the supervisor's forwarding handler is still set
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    os.kill(os.getpid(), sig)
    os._exit(SIGNAL_BASE + sig)  # not reached for a fatal signal


class SandboxError(Exception):
    """A failure of sandbox-run itself, with a one-line message for the user."""

    def __init__(self, message: str, exit_code: int = EXIT_SANDBOX_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message
