"""PID 1 of the job's PID namespace, and the last steps of the job before exec.

This code runs in a forked copy of the launcher: it imports nothing, starts no
threads and logs nothing (the launcher imported everything it needs before the
fork). Every failure before the job's exec goes back to the launcher as one line
on the close-on-exec error pipe (DaemonCore's trick), never as a bare exit code.

Why our own init: in a PID namespace, PID 1 inherits every orphan and must reap it
(else zombies pile up); the kernel drops signals to PID 1 that it has no handler for,
so it must forward them explicitly; and when PID 1 exits the kernel kills the whole
namespace, which is what makes the launcher's death fatal to the whole job.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import signal
from collections.abc import Callable
from typing import NamedTuple, NoReturn

from . import syscalls as sc
from . import wire
from .errors import EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_SANDBOX_FAILED
from .ns import mount as mountns

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
WAITED = frozenset((*FORWARDED, signal.SIGCHLD))


class Step(NamedTuple):
    """One pre-exec step of init and how its failure is reported: the exit code comes
    from the step, never from matching its text."""

    doing: str  # for "cannot <doing>: <reason>"; "{}" is filled in by about()
    code: int = EXIT_SANDBOX_FAILED
    code_if_missing: int | None = None  # the code for ENOENT/ENOTDIR, if it differs
    names_itself: bool = False  # its OSErrors already say what failed (SetupOp.describe)

    def about(self, subject: str) -> Step:
        return self._replace(doing=self.doing.format(repr(subject)))

    def failure(self, e: BaseException) -> tuple[int, str]:
        """(exit code, one-line message) for `e` raised during this step."""
        if not isinstance(e, OSError):  # e.g. a netlink error: still one line
            return EXIT_SANDBOX_FAILED, f"cannot {self.doing}: {type(e).__name__}: {e}"
        code = self.code
        if self.code_if_missing is not None and e.errno in (errno.ENOENT, errno.ENOTDIR):
            code = self.code_if_missing
        if self.names_itself:
            return code, e.strerror or str(e)
        return code, f"cannot {self.doing}: {e.strerror}"


JOIN_CGROUP = Step("join the job's cgroup")
ARM_PARENT_DEATH = Step("arm the parent-death signal")
CREATE_NAMESPACES = Step("create namespaces")
MOUNTS = Step("set up mounts", names_itself=True)
LOOPBACK = Step("bring up the loopback interface")
HOSTNAME = Step("set the hostname")
START_JOB = Step("start the job")
CLOSE_FDS = Step("close inherited descriptors")
PREPARE_JOB = Step("prepare the job")
SWITCH_USER = Step("switch to the job's user")
NEW_KEYRING = Step("give the job a session keyring of its own")
CHDIR = Step("change directory to {}")
SECCOMP = Step("install the syscall filter")
EXECUTE = Step("execute {}", code=EXIT_CANNOT_EXECUTE, code_if_missing=EXIT_NOT_FOUND)
# in the order init runs them: init itself, then the job's process up to its exec
STEPS = (CLOSE_FDS, JOIN_CGROUP, ARM_PARENT_DEATH, CREATE_NAMESPACES, MOUNTS, LOOPBACK, HOSTNAME, START_JOB,
         PREPARE_JOB, SWITCH_USER, NEW_KEYRING, CHDIR, SECCOMP, EXECUTE)


class InitConfig(NamedTuple):
    argv: tuple[str, ...]
    cwd: str  # the job's working directory, looked up again inside the new mount namespace
    cwd_is_inherited: bool  # the launcher's own: if it has no path in the sandbox, start in /
    join_fds: tuple[int, ...]  # cgroup.procs files to write "0" into
    err_w: int  # close-on-exec error pipe to the launcher
    status_w: int  # status messages to the launcher (wire.py): the job's PIDs, its final status
    go_r: int  # the launcher's go-ahead; EOF means it died
    close_fds: tuple[int, ...]  # launcher-side descriptors init must not keep
    unshare_flags: int
    mount_ops: tuple[mountns.SetupOp, ...]
    hostname: str | None
    # isolation: the job's credentials and the capabilities it loses
    creds: tuple[int, int, tuple[int, ...]] | None = None  # uid, gid, groups; None: stay root
    last_cap: int = 40  # /proc/sys/kernel/cap_last_cap, read by the launcher
    net_setup: Callable[[], None] | None = None  # brings up lo in a new network namespace
    fs_fds: tuple[int, ...] = ()  # descriptors the mount plan uses; closed after it
    # what the job must not inherit from its caller
    keep_fds: tuple[int, ...] = ()  # --keep-fd: the caller's descriptors passed on purpose
    keyctl_nr: int | None = None  # keyctl's syscall number here; None: keep the caller's keyrings
    seccomp: sc.PreparedFilter | None = None  # compiled before the fork; None: --seccomp none
    pty_slave: int = -1  # the job's own terminal (terminal.py), or -1
    pty_replace: tuple[int, ...] = ()  # which of fds 0-2 it replaces
    # without a PID namespace (process-tree tracking, sandbox/ptree.py)
    pid_namespace: bool = True  # False: not PID 1, kill(-1) would reach the whole host
    env: tuple[tuple[str, str], ...] = ()  # the family's marker, set in the job's environment
    extra_groups: tuple[int, ...] = ()  # the family's GID, a supplementary group of the job
    no_new_privs: bool = False  # before the filter: no capability lets us install it otherwise


def _fail(err_w: int, step: Step, e: BaseException) -> NoReturn:
    code, message = step.failure(e)
    try:
        os.write(err_w, wire.encode_error(code, message))
    finally:
        os._exit(code)


def _send(fd: int, kind: str, *values: int) -> None:
    os.write(fd, wire.encode_status(kind, *values))  # < PIPE_BUF: atomic even with two writers


def main(cfg: InitConfig) -> NoReturn:
    """Entry point of the forked child; never returns."""
    step = CLOSE_FDS
    try:
        _close_inherited(cfg)
        step = JOIN_CGROUP
        # The launcher may have had signal handlers with a wakeup fd: not ours.
        signal.set_wakeup_fd(-1)
        # Join before anything else: every process of the job descends from this one,
        # so no fork can happen outside the cgroup. "0" means the writer itself, which
        # also works from inside the new PID namespace.
        for fd in cfg.join_fds:
            os.write(fd, b"0")
            os.close(fd)
        step = ARM_PARENT_DEATH
        sc.set_parent_death_signal(signal.SIGKILL)
        sc.set_name("sandbox-init")
        if not cfg.pid_namespace:  # the job's orphans come to us: reaped, their rusage ours
            sc.set_child_subreaper()
        # The launcher may have died before the line above (the first cgroup write can
        # block for an RCU grace period): then the signal was never armed. Its end of
        # the go pipe tells: no go byte, or a hang-up behind it, means it is gone.
        if os.read(cfg.go_r, 1) != wire.GO:
            os._exit(125)
        hangup = select.poll()
        hangup.register(cfg.go_r, select.POLLHUP)
        if hangup.poll(0):
            os._exit(125)
        os.close(cfg.go_r)
        step = CREATE_NAMESPACES
        sc.unshare(cfg.unshare_flags)  # 0 without namespaces: a no-op
        # procfs resolves /proc/self in its own PID namespace: kept open across the
        # remount below, the host's instance tells the job its host PID.
        host_proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        step = MOUNTS
        mountns.execute(list(cfg.mount_ops))
        for fd in cfg.fs_fds:
            os.close(fd)
        # init is visible to the job: its cwd (the launcher's) must not be a way back
        # into a hidden directory through /proc/1/cwd.
        os.chdir("/")
        if cfg.net_setup is not None:
            step = LOOPBACK
            cfg.net_setup()
        if cfg.hostname:
            step = HOSTNAME
            sc.sethostname(cfg.hostname)
        step = START_JOB
        signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
        job = os.fork()
        if job == 0:
            _exec_job(cfg, host_proc)
    except BaseException as e:  # one line on the error pipe, and never a return into the launcher
        _fail(cfg.err_w, step, e)
    os.close(cfg.err_w)
    os.close(host_proc)
    if cfg.pty_slave >= 0:
        os.close(cfg.pty_slave)  # the job's alone: the relay sees EIO when the job is gone
    _send(cfg.status_w, wire.JOB_NS_PID, job)
    _reap(cfg.status_w, job, cfg.pid_namespace)


def _close_inherited(cfg: InitConfig) -> None:
    for fd in cfg.close_fds:
        os.close(fd)
    # Everything else the caller left open (an fd on the execute root reaches any hidden
    # directory through /proc/1/fd/N) goes now: init is visible to the job.
    sc.close_all_but({0, 1, 2, cfg.err_w, cfg.status_w, cfg.go_r, *cfg.join_fds, *cfg.fs_fds, *cfg.keep_fds,
                      cfg.pty_slave})


def _reap(status_w: int, job: int, pid_namespace: bool = True) -> NoReturn:
    main_status: int | None = None
    while True:
        info = signal.sigwaitinfo(WAITED)
        if info.si_signo != signal.SIGCHLD:
            if main_status is None:
                try:
                    os.kill(job, info.si_signo)
                except ProcessLookupError:
                    pass
            continue
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                if main_status is not None:
                    rss = _children_maxrss_kb()
                    _send(status_w, wire.FINAL_STATUS, main_status, rss)
                    os._exit(0)
                break
            if pid == 0:
                break
            if pid == job:
                main_status = status
                if not pid_namespace:
                    # Not PID 1: the launcher ends the family (it knows its members), and
                    # we reap what it kills until nothing is left below us.
                    _send(status_w, wire.FINAL_STATUS, main_status, _children_maxrss_kb())
                    continue
                # The main process is gone: so is the job. kill(-1) from PID 1 reaches
                # every other process in the namespace, double-forked daemons included.
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _children_maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def _exec_job(cfg: InitConfig, host_proc: int) -> NoReturn:
    step = PREPARE_JOB
    try:
        _send(cfg.status_w, wire.JOB_HOST_PID, int(os.readlink("self", dir_fd=host_proc)))
        os.close(host_proc)
        # Undo what Python did to this process: blocked signals and ignored SIGPIPE /
        # SIGXFSZ survive exec and would change the job's behaviour.
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        # No job shares the caller's controlling terminal: with it, ioctl(TIOCSTI)
        # types commands into the caller's shell (bubblewrap's CVE-2017-5226), through
        # fds 0-2 or an open of /dev/tty, and what it types runs outside the sandbox.
        # A session of its own has no controlling terminal (/dev/tty gives ENXIO).
        os.setsid()
        for key, value in cfg.env:
            os.environ[key] = value
        if cfg.extra_groups and cfg.creds is None:
            os.setgroups([*os.getgroups(), *cfg.extra_groups])
        if cfg.pty_slave >= 0:
            sc.take_controlling_terminal(cfg.pty_slave)
            for fd in cfg.pty_replace:
                os.dup2(cfg.pty_slave, fd)
            os.close(cfg.pty_slave)
        # Only 0-2 and what the caller passed on purpose survive the exec.
        sc.close_all_but({0, 1, 2, *cfg.keep_fds}, cloexec=True)
        for fd in cfg.keep_fds:
            os.set_inheritable(fd, True)
        if cfg.creds is not None:
            step = SWITCH_USER
            _drop_privileges(cfg.creds, cfg.last_cap)
        if cfg.keyctl_nr is not None:
            # After the switch, so that the new keyring is the job user's own. The caller's
            # session keyring (a starter's Kerberos or AFS tokens) is out of reach, and
            # what the job adds to its own goes when its last process does.
            step = NEW_KEYRING
            sc.join_new_session_keyring(cfg.keyctl_nr)
        step = CHDIR.about(cfg.cwd)
        # By path, in the new mount namespace: an inherited directory reference would
        # keep a pathless way into whatever the sandbox covers (the host's /tmp, a hidden
        # execute directory). The launcher's own directory may have no path here (it was
        # under /tmp, say): then the job starts in / rather than in the host's.
        try:
            os.chdir(cfg.cwd)
        except OSError:
            if not cfg.cwd_is_inherited:
                raise
            os.chdir("/")
        if cfg.seccomp is not None:
            # Last, so that no step above runs filtered; the kernel takes it after
            # no_new_privs (a --user job) or from CAP_SYS_ADMIN (a root job).
            step = SECCOMP
            if cfg.no_new_privs:
                sc.set_no_new_privs()
            sc.install_seccomp(cfg.seccomp)
        step = EXECUTE.about(cfg.argv[0])
        os.execvp(cfg.argv[0], list(cfg.argv))
    except BaseException as e:
        _fail(cfg.err_w, step, e)
    os._exit(125)  # not reached: execvp returns only by raising


def _drop_privileges(creds: tuple[int, int, tuple[int, ...]], last_cap: int) -> None:
    """Become the job's user for good. Order matters: groups while we may still set
    them; the bounding set while CAP_SETPCAP is ours; setresuid to a non-zero uid then
    clears the permitted and effective sets (no SECBIT_KEEP_CAPS), and capset clears what
    remains (inheritable); no_new_privs makes setuid binaries and file capabilities inert."""
    uid, gid, groups = creds
    os.setgroups(list(groups))
    os.setresgid(gid, gid, gid)
    sc.drop_bounding_set(last_cap)
    os.setresuid(uid, uid, uid)
    sc.clear_capabilities()
    sc.set_no_new_privs()
