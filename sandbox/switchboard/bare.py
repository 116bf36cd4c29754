"""A switchboard member on a kernel that refuses unprivileged user namespaces (EL7's
default `user.max_user_namespaces = 0`, Debian's `kernel.unprivileged_userns_clone = 0`):
the switchboard still makes the job's cgroup, so the job is tracked, limited and
accounted exactly by it, but the launcher can make no namespace at all (they all need
CAP_SYS_ADMIN, which only a user namespace would give it).

What differs from a member with namespaces: init is not PID 1 of anything, so its end
does not end the job; the job's family is the cgroup, which no process can leave, and
when the main process exits the launcher kills the cgroup (init included: it has already
sent the main process's status). Isolation that needs a namespace is refused when asked
for (as in process-tree tracking), and the report names what the job did not get.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..cgroups import CgroupError
from ..privilege import SwitchboardMember
from .delegated import DelegatedCgroup

if TYPE_CHECKING:
    from ..cgroups import JobCgroup
    from ..spec import JobSpec


class BareMemberCgroup(DelegatedCgroup):
    """The switchboard's cgroup of a job without a PID namespace."""

    def main_exited(self) -> None:
        # init, a subreaper but not PID 1, would wait for a daemon of the job for ever:
        # the cgroup holds the whole family (a double fork or setsid cannot leave it)
        try:
            self.kill(10.0)
        except (OSError, CgroupError):
            pass  # the teardown kills again and says what is left

    def report_extra(self) -> dict[str, object]:
        from ..ptree import NOT_ISOLATED

        return {"isolation_not_provided": list(NOT_ISOLATED)}


class BareMember(SwitchboardMember):
    """A member without user namespaces: the switchboard's cgroup, no namespace."""

    name = "member-no-namespaces"
    namespaces = False
    seccomp_needs_no_new_privs = True  # no CAP_SYS_ADMIN anywhere: the kernel asks for no_new_privs

    def __init__(self, uid: int, euid: int, egid: int, why: str) -> None:
        super().__init__(uid, euid, egid)
        self.why = why  # why the kernel refuses a user namespace, for messages

    def check_isolation(self, spec: JobSpec) -> None:
        from ..ptree_mode import refuse_isolation

        refuse_isolation(spec, self.why, may_switch_user=False)

    def job_cgroup(self, name: str, parent: str | None) -> JobCgroup:
        if parent is not None:
            raise CgroupError("--cgroup-parent needs root: without it the switchboard's configured parent is used")
        return BareMemberCgroup(name, agent=self.agent)

    def before_pid_namespace(self) -> None:
        pass  # not called: no namespace
