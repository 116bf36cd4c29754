"""The privilege strategy: the one place that asks who we are and decides what follows.

A launcher runs in one of these modes, chosen once when it starts:

- Root: makes the job's cgroup itself (anywhere, --cgroup-parent included), reclaims
  sandboxes other launchers left behind, keeps state in /run/sandbox.
- Member of the switchboard's group: the setuid switchboard makes the cgroup under its
  configured parent and moves init into it; the launcher gets the right to make the
  other namespaces from a user namespace of its own, entered just before the PID
  namespace; state and the accounting log live in the user's own directories.
- Delegated: an ordinary user whose own cgroup v2 was delegated to them (systemd's
  user@UID.service, a batch system's subtree; cgroups/delegation.py reads the kernel's
  facts). The launcher makes the job's cgroup there itself, with real limits, and the
  namespaces as rootless: no setuid program anywhere. Chosen before the switchboard: no
  privileged helper to trust or pay for per launch, and the sandbox stays where the
  user's processes are, under the limits the site put on that cgroup.
- Rootless: neither root, nor delegated, nor allowed to use the switchboard (or it is not
  installed). The launcher makes every namespace from a user namespace of its own and
  no cgroup at all: the job's PID namespace is its family (sandbox/tracking.py).
  Limits only a cgroup enforces are refused, with the reason and the fix, unless the
  caller allows them to go unenforced (--limits best-effort).
- Process tree (ptree_mode.py): no user namespace either, or --tracking process-tree:
  no namespace; the family is the tree, a marker and, for root, a GID (ptree.py).

Everything that differs between the modes is a method here, so another mode is one more class, not one more `if`
in every module. Nothing else in sandbox/ reads the uid (tests/unit/test_architecture.py checks it).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from .errors import EXIT_SANDBOX_FAILED, SandboxError
from .userdirs import runtime_dir

if TYPE_CHECKING:
    from .cgroups import JobCgroup
    from .cgroups.delegation import Delegation
    from .cgroups.layout import Layout
    from .limits import Limits
    from .records import State
    from .spec import JobSpec

SYSTEM_STATE_DIR = "/run/sandbox"
SYSTEM_ACCOUNTING_LOG = "/var/log/sandbox/accounting.jsonl"


class Privilege(ABC):
    name: ClassVar[str]
    device_rules: ClassVar[bool] = False  # a private /dev's rules in the job's cgroup: see Root
    # The job runs as the uid that owns its cgroup's limit files (see Delegated): its
    # view of the cgroup filesystem must then be read-only, or it could raise its limits.
    job_owns_its_cgroup: ClassVar[bool] = False
    namespaces: ClassVar[bool] = True  # False: process-tree tracking, no namespace at all (ptree_mode.py)
    seccomp_needs_no_new_privs: ClassVar[bool] = False  # the job has no capability to install a filter

    def __init__(self, uid: int, euid: int, egid: int) -> None:
        self.uid = uid  # the real uid: whose sandbox it is, recorded in its state
        self.euid = euid  # the effective ids: what files we make belong to
        self.egid = egid

    @abstractmethod
    def check_usable(self) -> None:
        """Raise SandboxError, before anything is made, if this mode cannot launch."""

    def close(self) -> None:  # noqa: B027  (most modes start nothing)
        """End what check_usable started (a member's switchboard session)."""

    def check_limits(self, limits: Limits, best_effort: bool) -> None:
        """Raise SandboxError, before anything is made, for limits this mode cannot
        enforce (unless best_effort: then the report names them). A cgroup enforces all."""
        return None

    def check_isolation(self, spec: JobSpec) -> None:
        """Raise SandboxError, before anything is made, for isolation asked for that this
        mode cannot give (every mode with namespaces gives all)."""
        return None

    @abstractmethod
    def job_cgroup(self, name: str, parent: str | None) -> JobCgroup:
        """The job's cgroup, not yet created."""

    @abstractmethod
    def before_pid_namespace(self) -> None:
        """What the launcher does right before it unshares the PID namespace."""

    @abstractmethod
    def hand_over(self, cg: JobCgroup, init_pid: int) -> None:
        """Between init's fork and its go: put init where it must be."""

    @abstractmethod
    def reclaim_stale(self) -> None:
        """Reclaim sandboxes whose launcher was SIGKILLed, at each launch."""

    @abstractmethod
    def state_dir(self) -> str:
        """The built-in directory of the running sandboxes' state files."""

    @abstractmethod
    def accounting_log(self) -> str:
        """The built-in accounting log."""

    def may_control(self, facts: Ownership) -> bool:
        """May this caller signal, freeze or inspect a sandbox? Root may. A user may if
        root wrote the state for that user (a --user job), or if the user wrote it and
        the kernel agrees the sandbox is theirs: the switchboard handed its cgroup to
        them. A uid in a file the user wrote proves nothing: they could write any."""
        if self.uid == 0:
            return True
        if facts.file_uid == 0:
            return facts.recorded_uid == self.uid
        if not facts.file_uid == facts.recorded_uid == self.uid:
            return False
        if facts.has_cgroup:
            return facts.cgroup_uids == frozenset({self.uid})
        # no cgroup (a rootless sandbox, held by its PID namespace): its live launcher's real uid
        return facts.launcher_uid == self.uid

    def may_reclaim(self, facts: Ownership) -> bool:
        """May this caller's gc reclaim a stale sandbox (its launcher gone)? As for live
        control; but a sandbox without a cgroup has no launcher left to ask, and its own
        file is enough: reclaiming it kills nothing (its PID namespace died with the
        launcher, and init is only taken if still the recorded launcher's) and writes its
        records with the caller's own rights."""
        if not facts.has_cgroup and facts.launcher_uid is None:
            return self.uid == 0 or facts.file_uid == facts.recorded_uid == self.uid
        return self.may_control(facts)

    def stale_cgroup(self, record: State, state_fd: int, layout: Layout | None) -> JobCgroup:
        """The cgroup of a sandbox whose launcher died, for gc to reclaim (its state file
        held locked on `state_fd`): the backend on its recorded directories."""
        return record.job_cgroup(layout)

    def reclaim_others(self) -> list[str]:
        """What `sandbox gc` reclaims beyond this caller's own state directory."""
        return []

    def scratch_owner(self) -> tuple[int, int]:
        """Who owns the job's scratch directories when no --user is given: the job runs
        as the launcher, root or (through the switchboard) the unprivileged caller, who
        can only give files to itself."""
        return self.euid, self.egid

    def builtin_default(self, key: str) -> Any:
        """The built-in value of a site setting that depends on the mode (None: none)."""
        if key == "state_dir":
            return self.state_dir()
        if key == "accounting_log":
            return self.accounting_log()
        return None


class Ownership(NamedTuple):
    """Who a sandbox belongs to, as far as the kernel can tell."""

    recorded_uid: object  # what its state file says
    file_uid: int  # who owns that file
    cgroup_uids: frozenset[int]  # who the cgroup was handed to (v2 directory, v1 freezer.state owners)
    has_cgroup: bool = True  # the state names cgroups at all
    launcher_uid: int | None = None  # the real uid of its launcher, if that is still running


class Root(Privilege):
    name = "root"
    device_rules = True  # only root: a v2 device program needs CAP_SYS_ADMIN; the others' jobs are in a user namespace

    def __init__(self, uid: int, euid: int, egid: int, tracking: str = "auto") -> None:
        super().__init__(uid, euid, egid)
        self.tracking = tracking  # --tracking: "pidns" forces the PID namespace, "cgroup" a cgroup
        self._no_cgroup: str | None = None  # why no cgroup can be made, once asked
        self._asked = False

    def no_cgroup(self) -> str | None:
        """Why root can make no cgroup here (a container's read-only or absent
        /sys/fs/cgroup): then the job is tracked by its PID namespace instead."""
        if not self._asked:
            from .cgroups import unusable

            self._no_cgroup, self._asked = ("--tracking pidns" if self.tracking == "pidns" else unusable()), True
        return self._no_cgroup

    def check_usable(self) -> None:
        if self.tracking == "cgroup" and self.no_cgroup() is not None:
            raise SandboxError(f"--tracking cgroup: {self.no_cgroup()}", EXIT_SANDBOX_FAILED)

    def check_limits(self, limits: Limits, best_effort: bool) -> None:
        from .tracking import refuse_unenforced

        if self.no_cgroup() is not None:
            refuse_unenforced(limits, best_effort, f"{self.no_cgroup()}", "give the launcher a writable cgroup")

    def job_cgroup(self, name: str, parent: str | None) -> JobCgroup:
        from .cgroups import job_cgroup

        if parent is None and self.no_cgroup() is not None:
            from .tracking import PidNamespaceJob

            return PidNamespaceJob(name)
        return job_cgroup(name, parent)

    def before_pid_namespace(self) -> None:
        pass  # root may make every namespace as it is

    def hand_over(self, cg: JobCgroup, init_pid: int) -> None:
        # A cgroup of root's: init joins it itself, through the fds it inherits, and
        # attach() does nothing; a PID-namespace job takes its pidfd on init here.
        cg.attach(init_pid)

    def reclaim_stale(self) -> None:
        from . import gc

        gc.reclaim_stale(kill_timeout=1.0)  # a stuck one is left for `sandbox gc`

    def reclaim_others(self) -> list[str]:
        # Members' stale sandboxes: each is reclaimed by a child that is that member
        # (its records go where the member said, with the member's rights, never root's).
        from .gc_members import reclaim_members

        return reclaim_members()

    def state_dir(self) -> str:
        return SYSTEM_STATE_DIR

    def accounting_log(self) -> str:
        return SYSTEM_ACCOUNTING_LOG


class SwitchboardMember(Privilege):
    name = "member"

    agent: Any = None  # this launch's switchboard session (switchboard.client.Agent)

    def check_usable(self) -> None:
        from .switchboard.client import open_session

        # installed and ours to run; started now, its interpreter's start overlaps our planning
        self.agent = open_session(self.uid)

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()  # EOF: the helper destroys a sandbox still standing, then ends

    def job_cgroup(self, name: str, parent: str | None) -> JobCgroup:
        from .switchboard.delegated import member_cgroup

        return member_cgroup(name, parent, self.agent)  # made by the switchboard, in this session

    def before_pid_namespace(self) -> None:
        # A user namespace of our own gives us the right to make the others. After this no
        # setuid bit works for us: the switchboard's session, spawned before, is outside it.
        from .ns import user as userns

        userns.enter(self.euid, self.egid)

    def hand_over(self, cg: JobCgroup, init_pid: int) -> None:
        cg.attach(init_pid)  # by the switchboard (a v2 move needs the common ancestor: root's)

    def reclaim_stale(self) -> None:
        pass  # the switchboard's agent reclaims this user's own stale sandboxes

    def stale_cgroup(self, record: State, state_fd: int, layout: Layout | None) -> JobCgroup:
        from .switchboard.delegated import stale_cgroup  # the switchboard's reclaim

        return stale_cgroup(record, state_fd, layout)

    def state_dir(self) -> str:
        return os.path.join(runtime_dir(self.uid, os.environ), "sandbox")

    def accounting_log(self) -> str:
        home = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        return os.path.join(home, "sandbox", "accounting.jsonl")


class Rootless(SwitchboardMember):
    """No root, no switchboard: a user namespace for the namespaces, a PID namespace
    instead of a cgroup. State and the accounting log stay in the user's directories."""

    name = "rootless"

    def __init__(self, uid: int, euid: int, egid: int, why: str = "") -> None:
        super().__init__(uid, euid, egid)
        self.why = why  # why there is no cgroup: the switchboard's refusal, for messages

    def check_usable(self) -> None:
        from .ns import user as userns

        problem = userns.unavailable()
        if problem:
            raise SandboxError(f"{self.why}; and {problem}" if self.why else problem, EXIT_SANDBOX_FAILED)

    def check_limits(self, limits: Limits, best_effort: bool) -> None:
        from .tracking import refuse_unenforced

        refuse_unenforced(limits, best_effort, self.why, "run as root or a switchboard member")

    def job_cgroup(self, name: str, parent: str | None) -> JobCgroup:
        from .cgroups import CgroupError
        from .tracking import PidNamespaceJob

        if parent is not None:
            raise CgroupError(f"--cgroup-parent needs a cgroup, and this user has none ({self.why})")
        return PidNamespaceJob(name)

    def hand_over(self, cg: JobCgroup, init_pid: int) -> None:
        cg.attach(init_pid)  # the tracker takes a pidfd on init: nothing moves

    def stale_cgroup(self, record: State, state_fd: int, layout: Layout | None) -> JobCgroup:
        return record.job_cgroup(layout)  # no switchboard to ask


class Delegated(Rootless):
    """The job's cgroup made by the user in their delegated cgroup (beside a leaf the
    launcher moves that cgroup's processes into when it has some), the namespaces as
    rootless. The user owns the files that set the limits: the job, which runs as that
    user, sees the cgroup filesystem read-only (it has no capability to remount it), so
    its limits bind it; the site's bound on the user is the delegated cgroup's own
    limits, which stay root's."""

    name = "delegated"
    job_owns_its_cgroup = True

    def __init__(self, uid: int, euid: int, egid: int, delegation: Delegation) -> None:
        super().__init__(uid, euid, egid)
        self.delegation = delegation

    def check_limits(self, limits: Limits, best_effort: bool) -> None:
        missing = self.delegation.unoffered(limits)
        if missing:
            raise SandboxError(
                f"{'/'.join(missing)} cannot be enforced: the delegated cgroup {self.delegation.directory} does not "
                "offer its controller; ask for it to be delegated (systemd: Delegate= of user@.service)"
            )

    def job_cgroup(self, name: str, parent: str | None) -> JobCgroup:
        from .cgroups import CgroupError, job_cgroup

        if parent is not None:
            raise CgroupError("--cgroup-parent needs root: a delegated user's sandboxes go in their own cgroup, "
                              f"{self.delegation.directory}")
        return job_cgroup(name, None)

    def hand_over(self, cg: JobCgroup, init_pid: int) -> None:
        # init joins by itself, through the cgroup.procs fds opened before the user
        # namespace: the kernel checks the opener's rights, the delegated user's
        cg.attach(init_pid)

    def reclaim_stale(self) -> None:
        from . import gc

        # the user's own state directory only; what it names is theirs (may_reclaim)
        gc.reclaim_stale(kill_timeout=1.0)


def delegation(uid: int) -> Delegation | str:
    """The caller's delegated cgroup, or why there is none (the kernel's facts)."""
    from .cgroups.delegation import find

    return find(uid)


def current(tracking: str = "auto", gids: range | None = None) -> Privilege:
    """The mode of this process, from its effective ids, its delegated cgroup, the
    switchboard and the kernel's user namespaces, or as `tracking` (--tracking) forces
    it; `gids`: the site's tracking_gids, for root's process-tree mode. Decided here
    and nowhere else."""
    uid, euid, egid = os.getuid(), os.geteuid(), os.getegid()
    if tracking == "process-tree":
        from .ptree_mode import ProcessTree, RootProcessTree

        if euid == 0:
            return RootProcessTree(uid, euid, egid, gids)
        return ProcessTree(uid, euid, egid, "--tracking process-tree")
    if euid == 0:
        return Root(uid, euid, egid, tracking)
    if uid == euid and tracking != "pidns":  # files it makes are its real uid's, whose sandbox it is
        found = delegation(uid)
        if not isinstance(found, str):
            return Delegated(uid, euid, egid, found)
    from .ns import user as userns
    from .switchboard.client import check_access

    try:
        if tracking == "pidns":
            raise SandboxError("--tracking pidns")
        check_access(uid)
    except SandboxError as e:
        if tracking == "cgroup":
            raise SandboxError(f"--tracking cgroup: this user has no cgroup ({e.message})") from None
        problem = userns.unavailable() if tracking == "auto" else None
        if problem is not None:
            from .ptree_mode import ProcessTree
            return ProcessTree(uid, euid, egid, f"{e.message}; and {problem}")
        return Rootless(uid, euid, egid, e.message)
    problem = userns.unavailable()  # then the switchboard's cgroup holds the job, without namespaces
    if problem is not None:
        from .switchboard.bare import BareMember
        return BareMember(uid, euid, egid, problem)
    return SwitchboardMember(uid, euid, egid)
