"""Exit codes and the one exception type that carries them to the CLI.

The codes follow timeout(1), env(1) and podman: the job's own code, 128+N for
signal N, and a reserved band (124-127) for what happened around the job.
"""

from __future__ import annotations

EXIT_TIMEOUT = 124
EXIT_SANDBOX_FAILED = 125  # sandbox-run itself failed, usage errors included
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
SIGNAL_BASE = 128


class SandboxError(Exception):
    """A failure of sandbox-run itself, with a one-line message for the user."""

    def __init__(self, message: str, exit_code: int = EXIT_SANDBOX_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message
