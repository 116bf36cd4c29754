"""Seccomp profiles as data: the default's contents, OCI/docker JSON parsing, and
compilation to BPF (libseccomp is on every supported machine)."""

from __future__ import annotations

import errno
import json
import os
import platform
import struct

import pytest

from sandbox import seccomp as s
from sandbox import syscalls as sc

DOCKER_LIKE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
    "syscalls": [
        {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_PTRACE"]}},
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["not_a_syscall_anywhere"], "action": "SCMP_ACT_ALLOW"},
    ],
}


def _names(profile: s.Profile) -> set[str]:
    return {n for r in profile.rules for n in r.names}


def test_default_blocks_the_named_calls_with_eperm() -> None:
    p = s.default_profile(user_job=True)
    assert p.default_action == s.ACT_ALLOW
    for name in ("open_by_handle_at", "kexec_load", "kexec_file_load", "init_module", "finit_module",
                 "delete_module", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key"):
        assert name in _names(p), name
    assert all(r.action == s.ACT_ERRNO | errno.EPERM for r in p.rules)
    ioctls = [r.args[0] for r in p.rules if r.names == ("ioctl",)]
    assert {(a.arg, a.op, a.value, a.value_two) for a in ioctls} == {
        (1, s.CMP["SCMP_CMP_MASKED_EQ"], 0xFFFFFFFF, 0x5412), (1, s.CMP["SCMP_CMP_MASKED_EQ"], 0xFFFFFFFF, 0x541C)}


def test_root_jobs_keep_the_keyring_calls() -> None:
    assert not _names(s.default_profile(user_job=False)) & {"keyctl", "add_key", "request_key"}


def test_docker_profile_conditions_follow_the_jobs_capabilities() -> None:
    text = json.dumps(DOCKER_LIKE)
    user = s.parse_profile(text, user_job=True)
    root = s.parse_profile(text, user_job=False)
    assert user.default_action == s.ACT_ERRNO | 1
    assert "ptrace" not in _names(user) and "ptrace" in _names(root)
    assert "mount" in _names(user) and "mount" not in _names(root)
    if platform.machine() == "x86_64":
        assert set(user.arches) == {"x86", "x32"}
    pers = next(r for r in user.rules if r.names == ("personality",))
    assert pers.args == (s.Arg(0, s.CMP["SCMP_CMP_EQ"], 8, 0),)


def test_a_rule_equal_to_the_default_is_dropped() -> None:
    doc = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
    assert s.parse_profile(json.dumps(doc), user_job=True).rules == ()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{", "not JSON"),
        ("[]", "no defaultAction"),
        ('{"defaultAction": "SCMP_ACT_MAYBE"}', "unknown action"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}', "must be a list"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}', "names"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",'
         ' "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}', "index"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",'
         ' "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ROUGHLY"}]}]}', "op"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}', "errnoRet"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["X86"]}', "architecture"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",'
         ' "includes": {"moon": 1}}]}', "includes"),
    ],
)
def test_malformed_profiles_are_one_line(text: str, says: str) -> None:
    with pytest.raises(s.ProfileError) as info:
        s.parse_profile(text, user_job=True, source="p.json")
    assert says in str(info.value) and "\n" not in str(info.value)


def test_load_profile_choices(tmp_path: os.PathLike[str]) -> None:
    assert s.load_profile("none", user_job=True) is None
    assert s.load_profile("default", user_job=True) == s.default_profile(True)
    with pytest.raises(s.ProfileError, match="cannot read seccomp profile"):
        s.load_profile(os.path.join(tmp_path, "missing.json"), user_job=True)


def test_compiled_program_is_bpf_that_checks_the_architecture() -> None:
    prog = s.compile_bpf(s.default_profile(user_job=True))
    assert len(prog) % 8 == 0 and len(prog) > 8 * 20
    # first instruction: load seccomp_data.arch (offset 4), as every correct filter starts
    code, _jt, _jf, k = struct.unpack("=HBBI", prog[:8])
    assert code == 0x20 and k == 4
    sc.PreparedFilter(prog)  # lays out as sock_fprog
    with pytest.raises(ValueError):
        sc.PreparedFilter(prog[:-3])


def test_unknown_names_are_skipped_not_fatal() -> None:
    prog = s.compile_bpf(s.parse_profile(json.dumps(DOCKER_LIKE), user_job=True))
    assert prog


def test_close_all_but_gaps(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int, bool]] = []
    monkeypatch.setattr(sc, "close_range", lambda a, b, c=False: calls.append((a, b, c)))
    sc.close_all_but({0, 1, 2, 7, 9, 10})
    assert calls == [(3, 6, False), (8, 8, False), (11, 0xFFFFFFFF, False)]
