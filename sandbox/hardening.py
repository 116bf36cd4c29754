"""The launcher's side of what a job must not inherit: its syscall filter compiled and
laid out for the kernel, and the numbers init needs, all before the fork (after it,
init only makes the calls: syscalls.install_seccomp, join_new_session_keyring,
close_all_but)."""

from __future__ import annotations

from typing import TypedDict

from . import errors, seccomp
from . import syscalls as sc
from .spec import JobSpec


class Hardening(TypedDict):
    keep_fds: tuple[int, ...]
    keyctl_nr: int | None
    seccomp: sc.PreparedFilter | None


def prepare(spec: JobSpec) -> Hardening:
    """The InitConfig fields for `spec`; one-line SandboxError when they cannot be had."""
    try:
        keyctl = seccomp.syscall_number("keyctl")
        bpf = seccomp.compile_bpf(spec.seccomp) if spec.seccomp is not None else None
    except seccomp.ProfileError as e:
        raise errors.SandboxError(str(e)) from None
    return Hardening(
        keep_fds=spec.keep_fds,
        keyctl_nr=keyctl,
        seccomp=sc.PreparedFilter(bpf) if bpf is not None else None,
    )
