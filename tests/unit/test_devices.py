import pytest

from sandbox.devices import allow_list, merge, parse_device
from sandbox.limits import Rule


def test_rules_are_the_nodes_given_and_the_private_pts() -> None:
    rules = allow_list(((False, 1, 3, "rwm"), (True, 254, 0, "r"), (False, 1, 3, "rwm")))
    assert [r.text() for r in rules] == ["c 1:3 rwm", "b 254:0 r", "c 5:2 rwm", "c 136:* rwm"]


def test_nothing_given_allows_only_the_terminals() -> None:
    assert allow_list(()) == (Rule("c", 5, 2), Rule("c", 136, None))


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("/dev/nvidia0", ("/dev/nvidia0", "rwm")),
        ("/dev/fuse:rw", ("/dev/fuse", "rw")),
        ("/dev/kmsg:r", ("/dev/kmsg", "r")),
        ("/dev/loop0:mwr", ("/dev/loop0", "rwm")),  # written in devices.allow's order
        ("/dev/disk/by-path/pci-0000:00:1f.2-ata-1", ("/dev/disk/by-path/pci-0000:00:1f.2-ata-1", "rwm")),
        ("/dev/disk/by-path/pci-0000:00:1f.2-ata-1:w", ("/dev/disk/by-path/pci-0000:00:1f.2-ata-1", "w")),
    ],
)
def test_device_and_access(text: str, parsed: tuple[str, str]) -> None:
    assert parse_device(text) == parsed


@pytest.mark.parametrize(
    ("text", "says"),
    [("/dev/null:rx", "letters of r"), ("/dev/null:rr", "letters of r"), ("/dev/null:R", "letters of r"),
     ("/etc/passwd", "/dev/PATH"), ("/dev/", "/dev/PATH"), ("null:r", "/dev/PATH"), ("/dev/null:", "letters of r")],
)
def test_bad_devices_say_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_device(text)


def test_a_device_named_twice_gets_both_rights_in_first_order() -> None:
    assert merge((("/dev/a", "r"), ("/dev/b", "rwm"), ("/dev/a", "w"))) == {"/dev/a": "rw", "/dev/b": "rwm"}


def test_only_root_gives_a_job_device_rules() -> None:
    # loading a device program needs CAP_SYS_ADMIN; the other modes' jobs are in a user namespace
    from sandbox import privilege, setup
    from sandbox.spec import JobSpec

    assert privilege.Root.device_rules
    assert not any(p.device_rules for p in (privilege.SwitchboardMember, privilege.Rootless, privilege.Delegated))
    spec = JobSpec(argv=("true",), name="x", dev="private", devices=("/dev/null",))
    assert setup.job_limits(spec, object(), device_rules=False).devices is None  # type: ignore[arg-type]
