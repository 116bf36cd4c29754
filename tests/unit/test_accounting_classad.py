"""accounting.py (log format, sums) and classad.py (attribute mapping)."""

from __future__ import annotations

import json
import os

import pytest

from sandbox import accounting, classad, errors
from sandbox.api import Report, command_line
from sandbox.options import parse_label
from sandbox.report import REPORT_KEYS, new_report


def rec(name, tenant=None, *, wall=1.0, user=1.0, system=0.5, peak=2**20, ended=1000.0, rc=0):
    r = new_report(name)
    r.update(status="exited", wall_seconds=wall, cpu_user_seconds=user, cpu_system_seconds=system,
             memory_peak_bytes=peak, ended_at=ended, returncode=rc, labels={"tenant": tenant} if tenant else {})
    return r


def test_append_writes_whole_lines_and_reader_skips_torn_ones(tmp_path):
    log = tmp_path / "sub" / "acct.jsonl"
    accounting.append(str(log), rec("a"))
    with open(log, "ab") as f:
        f.write(b"not json\n")
    accounting.append(str(log), rec("b"))
    with open(log, "ab") as f:
        f.write(b'{"name": "torn", "wall')  # a crash mid-line: no newline
    assert [r["name"] for r in accounting.records(str(log))] == ["a", "b"]
    assert oct(os.stat(log).st_mode & 0o777) == "0o640"


def test_append_refuses_a_symlinked_log(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "acct.jsonl").symlink_to(target)
    with pytest.raises(OSError):
        accounting.append(str(tmp_path / "acct.jsonl"), rec("a"))
    assert target.read_text() == ""


def test_summarize_by_label_and_since():
    recs = [rec("1", "a", wall=10, peak=100), rec("2", "a", wall=5, peak=300, rc=1), rec("3", "b"),
            rec("4", None), rec("old", "a", ended=10.0)]
    totals = {t.key: t for t in accounting.summarize(recs, "tenant", since=500.0)}
    assert set(totals) == {"a", "b", None}
    a = totals["a"]
    assert (a.jobs, a.failed, a.wall_seconds, a.cpu_seconds) == (2, 1, 15.0, 3.0)
    assert a.memory_peak_max_bytes == 300 and a.memory_byte_seconds == 100 * 10 + 300 * 5
    (everything,) = accounting.summarize(recs)
    assert everything.jobs == 5
    assert "tenant" in accounting.table(list(totals.values()), "tenant").splitlines()[0].lower()


@pytest.mark.parametrize("text", ["2026-01-31", "2026-01-31T12:00:00+00:00", "@1700000000", "7d", "1.5h"])
def test_parse_since_accepts(text):
    assert accounting.parse_since(text) > 0


def test_parse_since_refuses():
    with pytest.raises(errors.SandboxError, match="invalid date"):
        accounting.parse_since("yesterday")


def test_classad_mapping():
    r = rec("x", "cms", user=1.25, system=0.5, peak=3 * 2**20 + 1)
    r.update(status="signaled", signal=9, exit_code=None, memory_limit_bytes=2**30, error='say "hi"\\',
             cpu_limit_cpus=2)
    ad = classad.parse(classad.format_report(r))
    assert ad["SandboxCpuLimit"] == 2.0 and isinstance(ad["SandboxCpuLimit"], float)
    assert ad["RemoteUserCpu"] == 1.25 and ad["RemoteSysCpu"] == 0.5
    assert ad["MemoryUsage"] == 4  # MiB, rounded up
    assert ad["ResidentSetSize"] == 3 * 1024 + 1
    assert ad["MemoryProvisioned"] == 1024
    assert ad["ExitBySignal"] is True and ad["ExitSignal"] == 9 and "ExitCode" not in ad
    assert ad["SandboxLabel_tenant"] == "cms" and ad["SandboxError"] == 'say "hi"\\'
    assert "SandboxCgroup" not in ad  # null keys are left out
    r.update(status="exited", signal=None, exit_code=3)
    ad = classad.parse(classad.format_report(r))
    assert ad["ExitBySignal"] is False and ad["ExitCode"] == 3


@pytest.mark.parametrize("bad", ["novalue", "=x", "1a=b", "a b=c", "a=line\nbreak", "k=" + "v" * 300])
def test_label_validation(bad):
    with pytest.raises(ValueError):
        parse_label(bad)


def test_label_ok():
    assert parse_label("tenant=cms=prod") == ("tenant", "cms=prod")


def test_api_report_has_every_report_key():
    data = json.loads(json.dumps(rec("x", "a")))
    data["memory_peak_source"] = "max_rss_of_largest_process"
    report = Report.from_dict(data)
    assert set(REPORT_KEYS) <= set(report.to_dict())
    assert report.extra == {"memory_peak_source": "max_rss_of_largest_process"}
    assert report.labels == {"tenant": "a"} and report.cpu_seconds == 1.5


def test_api_command_line_uses_the_option_table():
    args = command_line(["cmd", "-x"], {"mem": "1G", "cpus": 2, "labels": {"t": "a", "j": "1"}, "stats": True})
    assert args == ["--mem=1G", "--cpus=2", "--label=t=a", "--label=j=1", "--stats", "--", "cmd", "-x"]
    with pytest.raises(ValueError, match="--mem"):
        command_line(["cmd"], {"mem": "lots"})
    with pytest.raises(TypeError):
        command_line(["cmd"], {"report_fd": 3})
    with pytest.raises(TypeError):
        command_line(["cmd"], {"memory": 3})


def test_label_keys_that_are_one_classad_attribute_are_refused():
    with pytest.raises(ValueError, match=r"'x.y' and 'X_y' are the same ClassAd attribute SandboxLabel_X_y"):
        classad.label_attributes({"x.y": "1", "X_y": "3"})
    assert classad.label_attributes({"x.y": "1", "x.z": "2"}) == {"SandboxLabel_x_y": "1", "SandboxLabel_x_z": "2"}


def test_the_command_line_refuses_colliding_labels_only_for_a_classad_report():
    from sandbox.launch import build_spec

    labels = (("x.y", "1"), ("x-y", "2"))
    with pytest.raises(errors.SandboxError, match="same ClassAd attribute SandboxLabel_x_y"):
        build_spec(("true",), {"labels": labels, "report_format": "classad"})
    assert build_spec(("true",), {"labels": labels}).labels == labels  # distinct JSON keys


def test_undecodable_bytes_go_through_unchanged(tmp_path):
    from sandbox.report import write_atomic_text

    value = b"caf\xe9 \xff\\\"".decode("utf-8", "surrogateescape")  # Latin-1 bytes, as argv gives them
    write_atomic_text(str(tmp_path / "r.ad"), classad.format_report({"error": value, "name": value + "\n"}))
    raw = (tmp_path / "r.ad").read_bytes()
    assert b'SandboxError = "caf\xe9 \xff\\\\""\n' in raw  # the bytes themselves, old-syntax quoted
    ad = classad.parse(raw.decode("utf-8", "surrogateescape"))
    assert ad == {"SandboxError": value, "SandboxName": value + "\n"}


def test_reader_keeps_expressions_apart_from_strings():
    ad = classad.parse('RequestMemory = ifthenelse(MemoryUsage =!= undefined, 2048, 1024)\nOwner = "ifthenelse"\n'
                       "requestmemory = 512\nX = 010\nY = eval(\"a\" + \"b\")\n")
    assert ad["RequestMemory"] == 512  # names ignore case: the later line wins, the first spelling stays
    assert ad["Owner"] == "ifthenelse" and not isinstance(ad["Owner"], classad.Expr)
    assert isinstance(ad["X"], classad.Expr) and isinstance(ad["Y"], classad.Expr)
