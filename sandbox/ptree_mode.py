"""The privilege modes of process-tree tracking (sandbox/ptree.py): no cgroup and no
namespace at all. privilege.current() chooses them (and nothing else does): for an
ordinary user when the kernel refuses a user namespace, and for anyone under
`--tracking process-tree` (a site that forbids namespaces sets it in sandbox.toml).

What differs from the other modes: the launcher and init are child subreapers instead
of a PID namespace; the plan has no namespace or mount step; limits are refused (or,
under --limits best-effort, named as not enforced); isolation that needs a namespace is
refused when asked for, and the report names what the job did not get.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import SandboxError
from .privilege import Root, Rootless

if TYPE_CHECKING:
    from .cgroups import JobCgroup
    from .limits import Limits
    from .spec import JobSpec

FIX = "allow user namespaces, give the launcher a cgroup, or leave --tracking to auto"


def needs_namespace(spec: JobSpec, may_switch_user: bool) -> list[str]:
    """The options of `spec` whose isolation only a namespace gives. Pure: unit-tested."""
    asked = [
        ("--execute-dir", spec.execute_dir is not None),
        ("--hide", bool(spec.hide)),
        ("--bind/--ro-bind", bool(spec.binds)),
        ("--net none", spec.net == "none"),
        ("--dev private", spec.dev == "private"),
        ("--tmp-size", spec.limits.tmp_bytes is not None),
        ("--hostname", spec.hostname is not None),
        ("--user", spec.user is not None and not may_switch_user),
    ]
    return [flag for flag, wanted in asked if wanted]


def refuse_isolation(spec: JobSpec, why: str, may_switch_user: bool) -> None:
    flags = needs_namespace(spec, may_switch_user)
    if flags:
        raise SandboxError(f"{'/'.join(flags)} needs a namespace, and this sandbox has none ({why}); {FIX}")


class ProcessTree(Rootless):
    """An ordinary user, no namespace: the family is the tree below the launcher and the
    environment marker. State and records stay in the user's own directories."""

    name = "process-tree"
    namespaces = False
    seccomp_needs_no_new_privs = True  # no CAP_SYS_ADMIN anywhere: the kernel asks for no_new_privs

    def check_usable(self) -> None:
        pass  # nothing to ask of the kernel: fork and prctl

    def check_limits(self, limits: Limits, best_effort: bool) -> None:
        from .tracking import refuse_unenforced

        refuse_unenforced(limits, best_effort, self.why, FIX)

    def check_isolation(self, spec: JobSpec) -> None:
        refuse_isolation(spec, self.why, may_switch_user=False)

    def job_cgroup(self, name: str, parent: str | None) -> JobCgroup:
        from .cgroups import CgroupError
        from .ptree import ProcessTreeJob

        if parent is not None:
            raise CgroupError(f"--cgroup-parent needs a cgroup, and this sandbox has none ({self.why})")
        return ProcessTreeJob(name)

    def before_pid_namespace(self) -> None:
        pass  # not called: no namespace

    def reclaim_stale(self) -> None:
        from . import gc

        # the user's own state directory: orphans of a killed launcher, by their marker
        gc.reclaim_stale(kill_timeout=1.0)


class RootProcessTree(Root):
    """Root under --tracking process-tree: the tree, the marker, and a supplementary
    group of the site's tracking_gids range (None: tree and marker only; the report's
    tracked_by says which). A --user job cannot shed that group (no CAP_SETGID); a job
    left root can, as it can do anything."""

    namespaces = False

    def __init__(self, uid: int, euid: int, egid: int, gids: range | None) -> None:
        super().__init__(uid, euid, egid, "process-tree")
        self.gids = gids

    def no_cgroup(self) -> str | None:
        return "--tracking process-tree"

    def check_limits(self, limits: Limits, best_effort: bool) -> None:
        from .tracking import refuse_unenforced

        refuse_unenforced(limits, best_effort, "--tracking process-tree", FIX)

    def check_isolation(self, spec: JobSpec) -> None:
        refuse_isolation(spec, "--tracking process-tree", may_switch_user=True)

    def job_cgroup(self, name: str, parent: str | None) -> JobCgroup:
        from .cgroups import CgroupError
        from .ptree import ProcessTreeJob

        if parent is not None:
            raise CgroupError("--cgroup-parent needs a cgroup, and --tracking process-tree makes none")
        return ProcessTreeJob(name, self.gids)
