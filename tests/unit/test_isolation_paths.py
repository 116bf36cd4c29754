"""Symlink-safe resolution and the pure checks of sandbox/paths.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sandbox import paths


def st(uid: int, mode: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))


def test_trust_rule() -> None:
    root_dir = st(0, stat.S_IFDIR | 0o755)
    assert paths.trusted(root_dir, st(0, stat.S_IFLNK | 0o777))
    assert not paths.trusted(root_dir, st(1000, stat.S_IFLNK | 0o777))  # a user's link
    assert not paths.trusted(st(1000, stat.S_IFDIR | 0o755), st(0, stat.S_IFLNK | 0o777))  # a user's dir
    assert not paths.trusted(st(0, stat.S_IFDIR | 0o1777), st(0, stat.S_IFLNK | 0o777))  # /tmp
    assert not paths.trusted(st(0, stat.S_IFDIR | 0o775), st(0, stat.S_IFLNK | 0o777))


@pytest.mark.parametrize(
    ("text", "expected"), [("/a", ("/a", "/a")), ("/a:/b", ("/a", "/b")), ("rel:/b", ("rel", "/b"))]
)
def test_parse_bind(text: str, expected: tuple[str, str]) -> None:
    assert paths.parse_bind(text) == expected


@pytest.mark.parametrize("text", ["", ":/b", "/a:"])
def test_parse_bind_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid bind"):
        paths.parse_bind(text)


@pytest.mark.parametrize("path", ["/", "/scratch", "/tmp/x/dir_1", "/var/tmp/dir", "/dev/shm/a/b", "/proc/1/x"])
def test_execute_dir_refused(path: str) -> None:
    with pytest.raises(paths.UnsafePath):
        paths.check_execute_dir(path)


def test_execute_dir_accepted() -> None:
    paths.check_execute_dir("/var/lib/condor/execute/dir_1")
    paths.check_execute_dir("/tmpdata/dir_1")  # a prefix of /tmp, not under it


def test_resolve_plain_and_dotdot(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    r = paths.resolve(str(tmp_path / "a" / "." / "b" / ".." / "b"), "--x")
    try:
        assert r.path == str((tmp_path / "a" / "b").resolve()) and r.is_dir
        assert os.path.samestat(os.fstat(r.fd), os.stat(tmp_path / "a" / "b"))
    finally:
        os.close(r.fd)


def test_resolve_refuses_untrusted_symlink(tmp_path: Path) -> None:
    # pytest's tmp_path is below the world-writable /tmp, or owned by a non-root user:
    # either way a link in it is not root-only
    user_dir = tmp_path / "user"
    user_dir.mkdir(mode=0o777)
    user_dir.chmod(0o777)
    (user_dir / "link").symlink_to("/etc")
    with pytest.raises(paths.UnsafePath, match="link is a symlink that a user other than root could have made"):
        paths.resolve(str(user_dir / "link" / "ssh"), "--bind")


@pytest.mark.skipif(os.geteuid() != 0, reason="a trusted link must be root's")
def test_resolve_follows_root_only_symlink(tmp_path: Path) -> None:
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o755)
    safe.chmod(0o755)
    (tmp_path / "target").mkdir()
    (safe / "link").symlink_to(tmp_path / "target")
    r = paths.resolve(str(safe / "link"), "--bind")
    try:
        assert r.path == str((tmp_path / "target").resolve())
    finally:
        os.close(r.fd)


def test_resolve_missing_and_not_a_dir(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(paths.UnsafePath, match="No such file"):
        paths.resolve(str(tmp_path / "nope" / "x"), "--hide")
    with pytest.raises(paths.UnsafePath, match="Not a directory"):
        paths.resolve(str(tmp_path / "f" / "x"), "--hide")


def test_prepare_leaves_nothing_on_a_bad_path(tmp_path: Path) -> None:
    ex = tmp_path / "exec" / "dir_1"
    ex.mkdir(parents=True)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(paths.UnsafePath):
        paths.prepare(str(ex), (("/nonexistent-src", "/mnt", False),), (), None, (os.geteuid(), os.getegid()))
    assert os.listdir(ex) == []  # no scratch directories created
    assert len(os.listdir("/proc/self/fd")) == before  # no descriptor leaked
