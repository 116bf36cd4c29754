"""config.py: precedence and provenance, the Slurm environment, bad files."""

from __future__ import annotations

import pytest

from sandbox import config, errors
from sandbox.argv import fast_parse


@pytest.fixture
def site(tmp_path, monkeypatch):
    path = tmp_path / "sandbox.toml"
    monkeypatch.setenv("SANDBOX_CONFIG", str(path))
    for k in [k for k in __import__("os").environ if k.startswith(("SANDBOX_", "SLURM_")) and k != "SANDBOX_CONFIG"]:
        monkeypatch.delenv(k)
    return path


def opts(*args: str) -> dict:
    parsed = fast_parse([*args, "--", "true"])
    assert parsed is not None
    return parsed[0]


def test_defaults_without_file(site):
    eff = config.effective(opts())
    assert eff["mem"] == config.Value(None, "default")
    assert eff["kill_grace"] == config.Value(10.0, "default")


def test_file_then_env_then_option(site, monkeypatch):
    site.write_text('mem = "2G"\npids = 100\ncpus = 1.5\n[labels]\nsite = "T2_X"\n')
    monkeypatch.setenv("SANDBOX_PIDS", "50")
    eff = config.effective(opts("--cpus", "0.5", "--label", "tenant=a"))
    assert eff["mem"] == config.Value(2 * 2**30, f"file:{site}")
    assert eff["pids"] == config.Value(50, "env:SANDBOX_PIDS")
    assert eff["cpus"] == config.Value(0.5, "option:--cpus")
    assert eff["labels"].value == {"site": "T2_X", "tenant": "a"}
    applied = config.apply(opts("--cpus", "0.5"))
    assert applied["mem"] == 2 * 2**30 and applied["pids"] == 50 and applied["cpus"] == 0.5
    assert applied["labels"] == (("site", "T2_X"),)


def test_accounting_log_env_and_disable(site, monkeypatch):
    monkeypatch.setenv("SANDBOX_ACCOUNTING_LOG", "/x/acct.jsonl")
    assert config.apply(opts())["accounting_log"] == "/x/acct.jsonl"
    monkeypatch.setenv("SANDBOX_ACCOUNTING_LOG", "")
    assert config.apply(opts())["accounting_log"] is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mem = [1]\n", "expected a string or a number"),
        ("memory = '1G'\n", "unknown setting 'memory'"),
        ("mem = 'lots'\n", "mem:"),
        ("mem = \n", "invalid TOML"),
        ("labels = 3\n", "labels must be a table"),
    ],
)
def test_bad_file_is_one_clear_error(site, text, message):
    site.write_text(text)
    with pytest.raises(errors.SandboxError, match=message) as e:
        config.effective({})
    assert e.value.exit_code == 125 and "\n" not in e.value.message


def test_bad_env_value(site, monkeypatch):
    monkeypatch.setenv("SANDBOX_MEM", "-1")
    with pytest.raises(errors.SandboxError, match="SANDBOX_MEM"):
        config.effective({})


def test_duplicate_label_option_refused(site):
    with pytest.raises(errors.SandboxError, match="given twice"):
        config.apply(opts("--label", "a=1", "--label", "a=2"))


SLURM = {"SLURM_JOB_ID": "77", "SLURM_NODEID": "1"}


@pytest.mark.parametrize(
    ("env", "mem", "cpus"),
    [
        ({"SLURM_MEM_PER_NODE": "4000", "SLURM_CPUS_PER_TASK": "2"}, 4000 * 2**20, 2.0),
        # two tasks on node 0, three on node 1: node 1's share
        ({"SLURM_MEM_PER_NODE": "6000", "SLURM_STEP_TASKS_PER_NODE": "2,3(x2)"}, 2000 * 2**20, None),
        ({"SLURM_MEM_PER_CPU": "1024", "SLURM_CPUS_PER_TASK": "4"}, 4096 * 2**20, 4.0),
        ({"SLURM_MEM_PER_NODE": "0"}, None, None),  # --mem=0: the whole node, no limit of ours
        ({}, None, None),
    ],
)
def test_slurm_allocation(env, mem, cpus):
    values = config.slurm_values({**SLURM, **env})
    assert (values["mem"].value if "mem" in values else None) == mem
    assert (values["cpus"].value if "cpus" in values else None) == cpus


def test_from_slurm_under_options_and_outside_slurm(site, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "5")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "1024")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    eff = config.effective(opts("--from-slurm", "--cpus", "1"))
    assert eff["mem"] == config.Value(2**30, "slurm:SLURM_MEM_PER_NODE")
    assert eff["cpus"] == config.Value(1.0, "option:--cpus")
    monkeypatch.delenv("SLURM_JOB_ID")
    with pytest.raises(errors.SandboxError, match="not inside a Slurm job"):
        config.effective(opts("--from-slurm"))


def test_a_site_makes_private_dev_and_its_filter_the_default(site, monkeypatch):
    assert config.effective(opts())["dev"] == config.Value("host", "default")
    assert config.effective(opts())["seccomp"] == config.Value("default", "default")
    site.write_text('dev = "private"\nseccomp = "/etc/sandbox/seccomp.json"\n')
    applied = config.apply(opts())
    assert applied["dev"] == "private" and applied["seccomp"] == "/etc/sandbox/seccomp.json"
    assert config.apply(opts("--dev", "host", "--seccomp", "none"))["dev"] == "host"
    site.write_text('dev = "maybe"\n')
    with pytest.raises(errors.SandboxError, match="host or private"):
        config.load_file()


def test_a_site_lists_always_allowed_devices(site, monkeypatch):
    from sandbox.launch import build_spec

    assert config.effective(opts())["devices"] == config.Value((), "default")
    site.write_text('dev = "private"\ndevices = ["/dev/null:r", "/dev/nvidia9:rw", "/dev/fuse:rw"]\n')
    eff = config.effective(opts())
    assert eff["devices"] == config.Value((("/dev/null", "r"), ("/dev/nvidia9", "rw"), ("/dev/fuse", "rw")),
                                          f"file:{site}")
    assert ("devices", "/dev/null:r, /dev/nvidia9:rw, /dev/fuse:rw", f"file:{site}") in config.describe(eff)
    monkeypatch.setattr("os.path.lexists", lambda p: p != "/dev/nvidia9")  # this node has no such GPU
    spec = build_spec(("true",), config.apply(opts("--device", "/dev/zero:r")))
    assert spec.dev == "private"
    # the basic nodes stay rwm (a node named twice gets both rights); an absent one is left out
    assert spec.devices == ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
                            "/dev/fuse")
    assert spec.device_access == (("/dev/fuse", "rw"),)
    assert build_spec(("true",), config.apply(opts("--dev", "host"))).devices == ()  # host /dev: no list needed


def test_site_devices_from_the_environment_and_bad_ones(site, monkeypatch):
    monkeypatch.setenv("SANDBOX_DEVICES", "/dev/fuse:rw, /dev/kvm")
    assert config.effective(opts())["devices"] == config.Value((("/dev/fuse", "rw"), ("/dev/kvm", "rwm")),
                                                               "env:SANDBOX_DEVICES")
    monkeypatch.setenv("SANDBOX_DEVICES", "/dev/fuse:rx")
    with pytest.raises(errors.SandboxError, match=r"SANDBOX_DEVICES: .*letters of r"):
        config.effective(opts())
    monkeypatch.delenv("SANDBOX_DEVICES")
    for text, says in (('devices = ["/etc/passwd"]\n', r"devices: .*/dev/PATH"),
                       ('devices = [1]\n', "expected a list of strings"),
                       ('devices = ["/dev/a,/dev/b"]\n', "without commas")):
        site.write_text(text)
        with pytest.raises(errors.SandboxError, match=says):
            config.load_file()
