"""The privilege strategy: which mode a process is in, and what each mode decides."""

from __future__ import annotations

import os

import pytest

from sandbox import privilege
from sandbox.cgroups import CgroupError


def _as(monkeypatch: pytest.MonkeyPatch, uid: int, euid: int, egid: int) -> privilege.Privilege:
    monkeypatch.setattr(os, "getuid", lambda: uid)
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    monkeypatch.setattr(os, "getegid", lambda: egid)
    return privilege.current()


def test_effective_root_is_root(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _as(monkeypatch, 0, 0, 0)
    assert isinstance(p, privilege.Root)
    assert p.name == "root"


def test_any_other_user_goes_through_the_switchboard(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _as(monkeypatch, 1000, 1000, 100)
    assert isinstance(p, privilege.SwitchboardMember)
    assert (p.uid, p.euid, p.egid) == (1000, 1000, 100)
    assert p.scratch_owner() == (1000, 100)


def test_root_may_control_any_sandbox_a_user_only_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    root = _as(monkeypatch, 0, 0, 0)
    assert root.may_control(1000) and root.may_control(None)
    user = _as(monkeypatch, 1000, 1000, 1000)
    assert user.may_control(1000)
    assert not user.may_control(1001)
    assert not user.may_control(0)
    assert not user.may_control(None)
    assert not user.may_control("1000")


def test_built_in_locations(monkeypatch: pytest.MonkeyPatch) -> None:
    root = _as(monkeypatch, 0, 0, 0)
    assert root.builtin_default("state_dir") == "/run/sandbox"
    assert root.builtin_default("accounting_log") == "/var/log/sandbox/accounting.jsonl"
    assert root.builtin_default("timeout") is None
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", "/home/u/.st")
    user = _as(monkeypatch, 1000, 1000, 1000)
    assert user.builtin_default("state_dir") == "/run/user/1000/sandbox"
    assert user.builtin_default("accounting_log") == "/home/u/.st/sandbox/accounting.jsonl"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/x")
    assert user.state_dir() == "/run/user/x/sandbox"


def test_a_user_cannot_choose_the_cgroup_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    user = _as(monkeypatch, 1000, 1000, 1000)
    with pytest.raises(CgroupError, match="--cgroup-parent needs root"):
        user.job_cgroup("j", "/sys/fs/cgroup/elsewhere")


def test_a_user_hands_init_over_through_the_cgroup_and_root_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    attached: list[int] = []

    class Fake:
        def attach(self, pid: int) -> None:
            attached.append(pid)

    _as(monkeypatch, 0, 0, 0).hand_over(Fake(), 41)  # type: ignore[arg-type]
    assert attached == []
    _as(monkeypatch, 1000, 1000, 1000).hand_over(Fake(), 42)  # type: ignore[arg-type]
    assert attached == [42]


def test_only_root_reclaims_at_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import gc

    calls: list[float] = []
    monkeypatch.setattr(gc, "reclaim_stale", lambda kill_timeout: calls.append(kill_timeout) or [])
    _as(monkeypatch, 1000, 1000, 1000).reclaim_stale()
    assert calls == []
    _as(monkeypatch, 0, 0, 0).reclaim_stale()
    assert calls == [1.0]
