"""From the JobSpec to what init is given: the paths opened before the fork and the
InitConfig (namespaces to make, mounts, cwd, credentials, descriptors)."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from . import hardening, init
from . import syscalls as sc

if TYPE_CHECKING:
    from collections.abc import Callable

    from .cgroups import JobCgroup
    from .limits import Limits
    from .ns.mount import SetupOp
    from .paths import Prepared
    from .privilege import Privilege
    from .spawn import Pipes
    from .spec import JobSpec
    from .terminal import Relay

UNSHARE_FLAGS = sc.CLONE_NEWNS | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS


def prepare_fs(spec: JobSpec, privilege: Privilege) -> Prepared | None:
    """Open every path the mounts need, symlink-safely, before the fork: a path
    looked up again later is where a planted symlink would redirect the mount."""
    if spec.execute_dir is None and not spec.binds and not spec.hide and spec.user is None and not spec.devices:
        return None
    from .paths import prepare

    owner = (spec.user.uid, spec.user.gid) if spec.user is not None else None
    return prepare(spec.execute_dir, spec.binds, spec.hide, owner, privilege.scratch_owner(), devices=spec.devices)


def job_limits(spec: JobSpec, fs: Prepared | None, device_rules: bool = True) -> Limits:
    """The limits the cgroup gets: with a private /dev (and `device_rules`: the
    privilege's say), only its devices may be opened."""
    if spec.dev != "private" or fs is None or not device_rules:
        return spec.limits
    from .devices import allow_list

    narrower = dict(spec.device_access)
    nodes = []
    for path, d in zip(spec.devices, fs.devices, strict=True):  # prepare() keeps their order
        st = os.stat(d.fd)
        nodes.append((stat.S_ISBLK(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev),
                      narrower.get(path, "rwm")))
    return spec.limits._replace(devices=allow_list(tuple(nodes)))


def init_config(
    spec: JobSpec, fs: Prepared | None, ops: list[SetupOp], join_fds: list[int], pipes: Pipes, *,
    relay: Relay | None, held_fds: tuple[int, ...] = (), privilege: Privilege | None = None,
    cg: JobCgroup | None = None,
) -> init.InitConfig:
    """What init is given. Without namespaces (privilege.namespaces False: process-tree
    tracking, a switchboard member without user namespaces) the plan has no namespace
    and no mount step at all, and the job carries the marks its family is found by
    (cg.job_marks())."""
    namespaces = privilege is None or privilege.namespaces
    env, groups = cg.job_marks() if cg is not None else ((), ())
    creds = (spec.user.uid, spec.user.gid, (*spec.user.groups, *groups)) if spec.user is not None else None
    close_in_child = [pipes.err_r, pipes.status_r, pipes.go_w, pipes.wake_r, pipes.wake_w, *held_fds]
    if spec.report_fd is not None:
        close_in_child.append(spec.report_fd)
    return init.InitConfig(
        argv=spec.argv,
        cwd=_job_cwd(spec, fs),
        cwd_is_inherited=spec.cwd is None and (fs is None or fs.execute_dir is None),
        join_fds=tuple(join_fds),
        err_w=pipes.err_w,
        status_w=pipes.status_w,
        go_r=pipes.go_r,
        close_fds=tuple(close_in_child),
        unshare_flags=UNSHARE_FLAGS | _isolation_flags(spec) if namespaces else 0,
        mount_ops=tuple(ops) if namespaces else (),
        hostname=spec.hostname,
        creds=creds,
        last_cap=_last_cap() if spec.user is not None else 0,
        net_setup=_net_setup(spec) if namespaces else None,
        fs_fds=fs.fds() if fs is not None else (),
        **hardening.prepare(spec),
        pty_slave=relay.slave if relay is not None else -1,
        pty_replace=relay.replace if relay is not None else (),
        pid_namespace=namespaces,
        env=env,
        extra_groups=groups,
        no_new_privs=not namespaces and privilege is not None and privilege.seccomp_needs_no_new_privs,
    )


def open_relay(spec: JobSpec) -> Relay | None:
    """A pty of the job's own when a terminal is involved; the module only then."""
    if spec.pty is False or (spec.pty is None and not any(os.isatty(fd) for fd in (0, 1, 2))):
        return None
    from .terminal import Relay

    return Relay.open(spec.pty)


def _job_cwd(spec: JobSpec, fs: Prepared | None) -> str:
    if spec.cwd is not None:
        return os.path.join(os.getcwd(), spec.cwd)
    if fs is not None and fs.execute_dir is not None:
        return fs.execute_dir.path
    try:
        return os.getcwd()
    except FileNotFoundError:  # the launcher's directory was removed: nothing to inherit
        return "/"


def _isolation_flags(spec: JobSpec) -> int:
    flags = 0
    if spec.user is not None:
        # init unshares after joining the job's cgroup: the root of the job's cgroup view
        # is its own cgroup, so paths it sees (/proc/self/cgroup) reveal nothing above it.
        flags |= sc.CLONE_NEWCGROUP
    if spec.net == "none":
        flags |= sc.CLONE_NEWNET
    return flags


def _net_setup(spec: JobSpec) -> Callable[[], None] | None:
    if spec.net != "none":
        return None
    from .ns.net import loopback_up  # imports pyroute2 (~110 ms): only here

    return loopback_up()


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63  # drop_bounding_set stops at the first EINVAL

