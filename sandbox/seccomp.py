"""The job's syscall filter: profiles as data, compiled to BPF in the launcher.

A profile is plain data (Profile, Rule): the built-in default, or a file in the OCI /
docker JSON format that sites already keep. The launcher compiles it with libseccomp
(through ctypes, before the fork: libseccomp knows every architecture's syscall
numbers and emits the architecture checks that a hand-written filter gets wrong, e.g.
the x32 ABI on x86_64) and exports the BPF program as bytes. The job's process then
installs those bytes with one prctl(PR_SET_SECCOMP) call (syscalls.install_seccomp),
as the last step before exec: nothing of libseccomp runs after the fork.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any, NamedTuple

ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_ERRNO = 0x00050000
ACT_TRACE = 0x7FF00000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000

# scmp_compare, in libseccomp's order (seccomp.h)
CMP = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
       "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}

TIOCSTI = 0x5412
TIOCLINUX = 0x541C


class ProfileError(ValueError):
    """A profile that cannot be used as written: one line, and the launch stops (125)."""


class Arg(NamedTuple):
    arg: int  # which of the six syscall arguments
    op: int  # CMP value
    value: int
    value_two: int = 0


class Rule(NamedTuple):
    names: tuple[str, ...]
    action: int  # ACT_* (with the errno in the low 16 bits for ACT_ERRNO)
    args: tuple[Arg, ...] = ()


class Profile(NamedTuple):
    default_action: int
    rules: tuple[Rule, ...]
    arches: tuple[str, ...] = ()  # libseccomp names ("x86", "x32"); the native one is always in


EPERM = ACT_ERRNO | errno.EPERM

# Each entry: what it is and why a batch job has no business with it. Returned as EPERM,
# the answer a program already handles ("not allowed here"), never a kill.
_ALL_JOBS = (
    # open_by_handle_at reaches any file of a mounted filesystem by its handle, outside
    # every mount namespace and hidden directory (the "shocker" container escape).
    ("open_by_handle_at", "name_to_handle_at"),
    # replace or extend the running kernel
    ("kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
     "create_module", "query_module", "get_kernel_syms"),
    # in-kernel programs and counters: large attack surface, and host-wide observation
    ("bpf", "perf_event_open", "lookup_dcookie"),
    # userfaultfd stalls kernel code at a chosen page fault: the classic race amplifier
    ("userfaultfd",),
    # io_uring: a second syscall interface that bypasses this filter's checks on the calls
    # it performs, and a long CVE list (docker and Android block it too)
    ("io_uring_setup", "io_uring_enter", "io_uring_register"),
    # host-wide state a root job could change: the clock, swap, accounting, the console log
    ("settimeofday", "clock_settime", "clock_adjtime", "stime", "swapon", "swapoff", "acct",
     "syslog", "iopl", "ioperm", "reboot"),
    # obsolete calls nothing current uses, each once a vulnerability
    ("uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "vm86", "vm86old"),
)
# The kernel keyrings are not namespaced: a key in a uid's user keyring is shared by every
# job of that uid (and by the caller if it is the same uid). A --user job gets a session
# keyring of its own before this filter applies and nothing else.
_KEYRING = ("add_key", "keyctl", "request_key")


def _terminal_rules() -> tuple[Rule, ...]:
    # The kernel compares the low 32 bits of the ioctl command: mask, or a command with a
    # high bit set slips past an equality test (the bypass found in CVE-2017-5226 fixes).
    return tuple(
        Rule(("ioctl",), EPERM, (Arg(1, CMP["SCMP_CMP_MASKED_EQ"], 0xFFFFFFFF, cmd),))
        for cmd in (TIOCSTI, TIOCLINUX)
    )


def default_profile(user_job: bool) -> Profile:
    """Allow everything except what the tables above name (a denylist: batch jobs run
    arbitrary scientific software, which an allowlist would break in ways sites debug
    for days); the keyring calls only for jobs that run as another user."""
    names = [n for group in _ALL_JOBS for n in group]
    if user_job:
        names.extend(_KEYRING)
    return Profile(ACT_ALLOW, (Rule(tuple(names), EPERM), *_terminal_rules()), _compat_arches())


def _compat_arches() -> tuple[str, ...]:
    # 32-bit programs still run on 64-bit nodes: filter their entry points too, with the
    # same rules (an unlisted architecture would be killed outright).
    return {"x86_64": ("x86", "x32"), "aarch64": ("arm",)}.get(os.uname().machine, ())


# -- OCI / docker JSON -------------------------------------------------------------

_ACTIONS = {"SCMP_ACT_KILL": ACT_KILL_THREAD, "SCMP_ACT_KILL_THREAD": ACT_KILL_THREAD,
            "SCMP_ACT_KILL_PROCESS": ACT_KILL_PROCESS, "SCMP_ACT_TRAP": ACT_TRAP,
            "SCMP_ACT_ERRNO": ACT_ERRNO, "SCMP_ACT_TRACE": ACT_TRACE, "SCMP_ACT_LOG": ACT_LOG,
            "SCMP_ACT_ALLOW": ACT_ALLOW}


def _action(name: object, errno_ret: object, where: str) -> int:
    if not isinstance(name, str) or name not in _ACTIONS:
        raise ProfileError(f"{where}: unknown action {name!r}")
    base = _ACTIONS[name]
    if base in (ACT_ERRNO, ACT_TRACE):
        value = errno.EPERM if errno_ret is None else errno_ret
        if not isinstance(value, int) or not 0 <= value < 0x10000:
            raise ProfileError(f"{where}: errnoRet must be a number below 65536")
        return base | value
    return base


def _arch_name(name: object) -> str:
    if not isinstance(name, str) or not name.startswith("SCMP_ARCH_"):
        raise ProfileError(f"unknown architecture {name!r}")
    return name.removeprefix("SCMP_ARCH_").lower()


def _applies(entry: dict[str, Any], ctx: _Context) -> bool:
    """docker's includes/excludes: by architecture, capability and kernel version."""
    for key, want in (("includes", True), ("excludes", False)):
        cond = entry.get(key) or {}
        if not isinstance(cond, dict) or set(cond) - {"arches", "caps", "minKernel"}:
            raise ProfileError(f"{key} may name only arches, caps and minKernel")
        tests = []
        if "arches" in cond:
            tests.append(any(_arch_name(a) in ctx.arches for a in cond["arches"]))
        if "caps" in cond:
            tests.append(all(c in ctx.caps for c in cond["caps"]) if want else any(c in ctx.caps for c in cond["caps"]))
        if "minKernel" in cond:
            tests.append(_kernel_tuple(os.uname().release) >= _kernel_tuple(str(cond["minKernel"])))
        if want and not all(tests):
            return False
        if not want and tests and any(tests):
            return False
    return True


def _kernel_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("-", maxsplit=1)[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


class _Context(NamedTuple):
    arches: frozenset[str]
    caps: frozenset[str]


def _arg(raw: object, where: str) -> Arg:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: each of args must be an object")
    index, value, op = raw.get("index"), raw.get("value"), raw.get("op")
    two = raw.get("valueTwo", 0)
    if not isinstance(index, int) or not 0 <= index <= 5:
        raise ProfileError(f"{where}: args index must be 0 to 5")
    if not isinstance(value, int) or not isinstance(two, int) or op not in CMP:
        raise ProfileError(f"{where}: args need a numeric value and an op among {', '.join(CMP)}")
    return Arg(index, CMP[str(op)], value, two)


def parse_profile(text: str, user_job: bool, source: str = "profile") -> Profile:
    """An OCI runtime-spec `linux.seccomp` object or a docker profile -> Profile."""
    import json  # only for profile files: the default launch does not pay for it

    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ProfileError(f"{source}: not JSON: {e}") from None
    if not isinstance(doc, dict) or "defaultAction" not in doc:
        raise ProfileError(f"{source}: not a seccomp profile (no defaultAction)")
    default = _action(doc["defaultAction"], doc.get("defaultErrnoRet"), source)
    native = os.uname().machine
    arches = [_arch_name(a) for a in doc.get("architectures") or []]
    for entry in doc.get("archMap") or []:
        if _arch_name(entry.get("architecture")) == native:
            arches += [_arch_name(a) for a in entry.get("subArchitectures") or []]
    # a --user job holds no capability; a root job holds them all
    caps = frozenset() if user_job else frozenset({"CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_BOOT",
                                                   "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_TIME",
                                                   "CAP_SYSLOG", "CAP_SYS_PACCT", "CAP_SYS_NICE",
                                                   "CAP_SYS_RESOURCE", "CAP_SYS_TTY_CONFIG",
                                                   "CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH"})
    ctx = _Context(frozenset({native, *arches}), caps)
    rules = []
    syscalls = doc.get("syscalls")
    syscalls = [] if syscalls is None else syscalls
    if not isinstance(syscalls, list):
        raise ProfileError(f"{source}: syscalls must be a list")
    for i, entry in enumerate(syscalls):
        where = f"{source}: syscalls[{i}]"
        if not isinstance(entry, dict):
            raise ProfileError(f"{where}: must be an object")
        names = entry.get("names") or ([entry["name"]] if "name" in entry else [])
        if not names or not all(isinstance(n, str) for n in names):
            raise ProfileError(f"{where}: names must be a list of syscall names")
        action = _action(entry.get("action"), entry.get("errnoRet"), where)
        args = tuple(_arg(a, where) for a in entry.get("args") or [])
        if _applies(entry, ctx) and action != default:
            rules.append(Rule(tuple(names), action, args))
    return Profile(default, tuple(rules), tuple(a for a in dict.fromkeys(arches) if a != native))


def load_profile(choice: str, user_job: bool) -> Profile | None:
    """--seccomp default|none|PATH -> the profile to compile, or None for no filter."""
    if choice == "none":
        return None
    if choice == "default":
        return default_profile(user_job)
    try:
        with open(choice, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ProfileError(f"cannot read seccomp profile {choice!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ProfileError(f"seccomp profile {choice!r} is not UTF-8 text") from None
    return parse_profile(text, user_job, source=choice)


# -- compiling with libseccomp ------------------------------------------------------


class _ArgCmp(ctypes.Structure):
    _fields_ = (("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64))


_lib: ctypes.CDLL | None = None


def _libseccomp() -> ctypes.CDLL:
    global _lib  # noqa: PLW0603 - loaded once, on the first launch that filters
    if _lib is None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError:
            raise ProfileError("libseccomp (Debian: libseccomp2) is not installed; "
                               "install it or run with --seccomp none") from None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = (ctypes.c_uint32,)
        lib.seccomp_release.argtypes = (ctypes.c_void_p,)
        lib.seccomp_rule_add_array.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(_ArgCmp))
        lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_resolve_name.argtypes = (ctypes.c_char_p,)
        lib.seccomp_arch_add.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
        lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
        _lib = lib
    return _lib


def syscall_number(name: str) -> int | None:
    """The native number of a syscall, or None when this architecture has no such call."""
    nr = int(_libseccomp().seccomp_syscall_resolve_name(name.encode()))
    return None if nr < 0 else nr


def compile_bpf(profile: Profile) -> bytes:
    """The classic-BPF program (struct sock_filter[]) that enforces `profile`."""
    lib = _libseccomp()
    ctx = lib.seccomp_init(profile.default_action)
    if not ctx:
        raise ProfileError("libseccomp cannot create a filter")
    try:
        for arch in profile.arches:
            token = lib.seccomp_arch_resolve_name(arch.encode())
            rc = lib.seccomp_arch_add(ctx, token) if token else -errno.EINVAL
            if rc not in (0, -errno.EEXIST):
                raise ProfileError(f"libseccomp cannot filter architecture {arch!r}")
        for rule in profile.rules:
            _add_rule(lib, ctx, rule)
        r, w = os.pipe()
        try:
            # the program is at most a few thousand instructions: far below a pipe's buffer
            rc = lib.seccomp_export_bpf(ctx, w)
            os.close(w)
            w = -1
            if rc != 0:
                raise ProfileError(f"libseccomp cannot export the filter: {os.strerror(-rc)}")
            chunks = []
            while chunk := os.read(r, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
    finally:
        lib.seccomp_release(ctx)


def _add_rule(lib: ctypes.CDLL, ctx: int, rule: Rule) -> None:
    cmps = (_ArgCmp * max(1, len(rule.args)))(*(_ArgCmp(a.arg, a.op, a.value, a.value_two) for a in rule.args))
    for name in rule.names:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            continue  # a call this kernel's architecture does not have (profiles list many)
        rc = lib.seccomp_rule_add_array(ctx, rule.action, nr, len(rule.args), cmps)
        if rc not in (0, -errno.EEXIST):
            raise ProfileError(f"libseccomp refuses the rule for {name!r}: {os.strerror(-rc)}")
