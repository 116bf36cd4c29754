"""`sandbox suspend` against a freezer that completes late or never (a busy job on a
loaded machine): it keeps asking for a while, and a freeze that never completes is undone."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox import control, errors


class SlowFreezer:
    def __init__(self, completes_after: int | None) -> None:
        self.completes_after, self.freezes, self.thawed = completes_after, 0, False

    def freeze(self) -> None:
        self.freezes += 1

    def is_frozen(self) -> bool:
        return self.completes_after is not None and self.freezes >= self.completes_after

    def thaw(self) -> None:
        self.thawed = True


def _suspend(monkeypatch: pytest.MonkeyPatch, cg: SlowFreezer) -> None:
    found: Any = control.Running("x", None, cg)  # type: ignore[arg-type]
    monkeypatch.setattr(control, "find", lambda name: found)
    control.suspend("x")


def test_a_late_freeze_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    cg = SlowFreezer(completes_after=3)
    _suspend(monkeypatch, cg)
    assert cg.freezes == 3 and not cg.thawed


def test_a_freeze_that_never_completes_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    cg = SlowFreezer(completes_after=None)
    with pytest.raises(errors.SandboxError, match="the freezer did not complete; left running"):
        _suspend(monkeypatch, cg)
    assert cg.freezes == control.SUSPEND_ATTEMPTS and cg.thawed
