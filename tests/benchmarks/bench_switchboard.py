#!/usr/bin/env python3
"""The switchboard's time per launch: a group member's `sandbox-run -- /bin/true` (three
requests to the setuid helper: create, attach, destroy) beside root's, in one hyperfine
run, both started the same way from the same batch-slot cgroup.

    .venv/bin/python tests/benchmarks/bench_switchboard.py [--runs 30] [--json out.json] [--compare REV]

Installs the switchboard, its test config and test users exactly as
tests/integration/test_switchboard.py does (and removes them after, under the same
machine-wide lock), then prints the medians and the ratio member / root. The target is
at most 1.5. Not a test: the machine is shared and noisy, so the figure is a median of
many runs, compared only with root's measured in the same run.

--compare REV adds the member's launch by sandbox-run as of revision REV (exported as
bench_launch.py --compare does) to the same hyperfine run, against the switchboard
installed from this tree: its one-shot requests are answered as before, so a launcher
from before the session shows the cost of one helper per request.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_launch import checkout, hyperfine
from tests.integration import test_switchboard as sbt

ROOT_LABEL = "root: sandbox-run --mem 64M -- /bin/true"
MEMBER_LABEL = "member (switchboard): sandbox-run --mem 64M -- /bin/true"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--compare", metavar="REV", help="also time a member's launch by sandbox-run as of REV")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    job = [sbt.SANDBOX_RUN, "--mem", "64M", "--", "/bin/true"]
    home = f"/home/{sbt.MEMBER}"
    env = ["env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}", f"XDG_RUNTIME_DIR={home}"]
    commands = {
        # the same shell moves each into the slot; root's runs through a shell too
        ROOT_LABEL: shlex.join(sbt.in_slot(sbt._dirs(sbt.SLOT), ["/bin/sh", "-c", 'exec "$0" "$@"', *env, *job])),
        MEMBER_LABEL: shlex.join([*sbt.as_user(sbt.MEMBER), *env, *job]),
    }
    if args.compare:
        old = [checkout(args.compare), *job[1:]]
        # compiled as root, as helpers/bootstrap compiles this tree: the member could not
        # write the bytecode and would compile every module at every start
        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.dirname(old[0])], check=True,
                       stdout=subprocess.DEVNULL)
        commands[f"member, sandbox-run as of {args.compare}"] = shlex.join([*sbt.as_user(sbt.MEMBER), *env, *old])
    lock = os.open("/run/lock/sandbox-switchboard-tests.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    installed = sbt._installed()
    try:
        next(installed)
        os.chdir("/")
        launch = hyperfine(commands, args.runs)
    finally:
        installed.close()
        os.close(lock)
    print("| command | median | mean ± sd | min |")
    print("|---|---|---|---|")
    for label, r in launch.items():
        print(f"| {label} | {r['median_ms']:.1f} ms | {r['mean_ms']:.1f} ± {r['stddev_ms']:.1f} ms | "
              f"{r['min_ms']:.1f} ms |")
    ratio = launch[MEMBER_LABEL]["median_ms"] / launch[ROOT_LABEL]["median_ms"]
    print(f"\nlaunch median, member / root: {ratio:.2f} (target: at most 1.5)")
    for label in list(launch)[2:]:
        print(f"launch median, {label} / root: {launch[label]['median_ms'] / launch[ROOT_LABEL]['median_ms']:.2f}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"launch": launch, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
