/* sandbox-switchboard: the setuid-root entry point of the switchboard helper.
 *
 * Linux ignores the setuid bit on scripts, so this tiny program is the setuid file:
 * installed root:sandbox mode 4750, only members of the group can run it at all.
 * It trusts nothing from the caller: the environment is replaced (PATH, PYTHON*,
 * LD_*, locale), descriptors beyond 3 are closed and 0-2 are made to exist (else a
 * file the helper opens, the log, could become its stdout); 3 is the caller's to pass
 * (reclaim's state file: the helper only fstats, flocks and reads it, and closes it
 * first thing for every other request), and it execs the
 * root-owned helper with an isolated interpreter (-I: no PYTHON* variables, no user
 * site, no script or current directory on the path; -S: no site module; -B: never
 * write bytecode as root). The helper is imported, not run as a script, so that the
 * bytecode the installer compiled (root's, beside it in __pycache__) is used instead of
 * compiling 1,400 lines at every request; a stale one (the helper edited since) is
 * recompiled in memory. Its directory is appended to the path: the standard library
 * comes first. The real uid stays the caller's: that is how the helper learns who
 * called, from the kernel.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#ifndef PYTHON
#define PYTHON "/usr/bin/python3"
#endif
#ifndef HELPER
#define HELPER "/usr/local/libexec/sandbox/switchboard.py"
#endif
#ifndef HELPER_DIR
#define HELPER_DIR "/usr/local/libexec/sandbox"
#endif

int main(void)
{
    static const char fail[] = "sandbox-switchboard: cannot start the helper " HELPER "\n";
    char *const argv[] = {"sandbox-switchboard", "-I", "-S", "-B", "-c",
                          "import sys; sys.path.append('" HELPER_DIR "'); import switchboard; "
                          "sys.exit(switchboard.main())",
                          NULL};
    char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8", NULL};
    int fd;

    for (fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) == -1 && open("/dev/null", O_RDWR) != fd)
            return 2;
    close_range(4, ~0U, 0);
    if (chdir("/") != 0)
        return 2;
    execve(PYTHON, argv, envp);
    if (write(2, fail, sizeof fail - 1) < 0)
        return 2;
    return 2;
}
