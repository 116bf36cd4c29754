#!/usr/bin/env python3
"""Launch cost, supervisor CPU and supervisor memory of sandbox-run, measured side by side
with `unshare` and BenchExec's `runexec` on the same machine in the same run.

    .venv/bin/python tests/benchmarks/bench_launch.py [--runs 60] [--sleep 30] [--json out.json]
                                                      [--compare REV]

--compare REV also times sandbox-run as of git revision REV (e.g. main, HEAD~1) in the
same hyperfine run, from a checkout under /work/ci/bench-<rev> run with this venv's
interpreter and packages, and prints the ratio of the medians: the way to show a change
did not slow the launch down on a shared, noisy machine.

Needs hyperfine (apt) and installs BenchExec into a throw-away venv under
/var/tmp/sandbox-bench (pip) on first use. Prints a markdown table for the README.
Not a test: the machine is shared and noisy, so figures are medians of many runs and
are compared only with anchors measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
SANDBOX_RUN = str(BIN / "sandbox-run")
BENCH_VENV = Path("/var/tmp/sandbox-bench/venv")
ROOT = Path(__file__).resolve().parents[2]
LABEL = "sandbox-run (cgroup + pid/mount/ipc/uts ns + private tmp + report)"


def ensure_tools() -> str | None:
    if shutil.which("hyperfine") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "hyperfine"], check=True, stdout=subprocess.DEVNULL)
    runexec = BENCH_VENV / "bin" / "runexec"
    if not runexec.exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(BENCH_VENV)], check=True)
        r = subprocess.run([str(BENCH_VENV / "bin" / "pip"), "install", "-q", "benchexec"], check=False)
        if r.returncode != 0:
            return None
    return str(runexec)


def checkout(rev: str) -> str:
    """A sandbox-run of revision `rev`: its tree exported under /work/ci, started by a
    script that puts it first on this interpreter's path (the venv's own checkout is
    an editable install on sys.path, so the export wins)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                            check=True, capture_output=True, text=True).stdout.strip()
    where = Path("/work/ci") / f"bench-{commit[:12]}"
    if not (where / "sandbox").is_dir():
        where.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "sandbox"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    script = where / "sandbox-run"
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(where)!r})\n"
                      "from sandbox.launch import run_main\nsys.exit(run_main())\n")
    script.chmod(0o755)
    return str(script)


def hyperfine(commands: dict[str, str], runs: int) -> dict[str, dict[str, float]]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            ["hyperfine", "-N", "--warmup", "5", "--runs", str(runs), "--export-json", out.name,
             *[c for c in commands.values()]],
            check=True, stdout=subprocess.DEVNULL,
        )
        data = json.load(open(out.name))
    results = {}
    for label, res in zip(commands, data["results"], strict=True):
        results[label] = {"median_ms": res["median"] * 1000, "mean_ms": res["mean"] * 1000,
                          "min_ms": res["min"] * 1000, "stddev_ms": (res["stddev"] or 0) * 1000}
    return results


def _ticks(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rfind(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _private_kib(pid: int) -> int:
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


def supervisor(sleep: float) -> dict[str, float]:
    """CPU the launcher and init use while a job sleeps, and their private memory."""
    r, w = os.pipe()
    proc = subprocess.Popen([SANDBOX_RUN, "--mem", "1G", "--report-fd", str(w), "--", "sleep", str(sleep)],
                            pass_fds=(w,))
    os.close(w)
    reader = os.fdopen(r)
    started = json.loads(reader.readline())
    init_pid = started["init_host_pid"]
    time.sleep(1.0)
    hz = os.sysconf("SC_CLK_TCK")
    t0 = time.monotonic()
    cpu0 = _ticks(proc.pid) + _ticks(init_pid)
    private = {"launcher_kib": _private_kib(proc.pid), "init_kib": _private_kib(init_pid)}
    time.sleep(max(0.0, sleep - 3.0))
    cpu1 = _ticks(proc.pid) + _ticks(init_pid)
    window = time.monotonic() - t0
    ended = json.loads(reader.readline())
    proc.wait()
    # Memory the supervisor adds to the job's own cgroup: /bin/true's peak is mostly init.
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([SANDBOX_RUN, "--mem", "1G", "--report", f"{d}/r.json", "--", "/bin/true"], check=True)
        true_peak = json.load(open(f"{d}/r.json"))["memory_peak_bytes"]
    return {
        "window_s": window,
        "supervisor_cpu_s": (cpu1 - cpu0) / hz,
        "launcher_private_kib": private["launcher_kib"],
        "init_private_kib": private["init_kib"],
        "job_status": ended["status"],
        "true_job_cgroup_peak_kib": (true_peak or 0) / 1024,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--sleep", type=float, default=30.0)
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--compare", metavar="REV", help="also time sandbox-run as of git revision REV")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    runexec = ensure_tools()
    with tempfile.TemporaryDirectory() as d:
        commands = {
            LABEL: f"{SANDBOX_RUN} --mem 1G --report {d}/report.json -- /bin/true",
            "unshare --fork --pid --mount-proc true": "unshare --fork --pid --mount-proc true",
        }
        if args.compare:
            old = checkout(args.compare)
            commands[f"{LABEL} @ {args.compare}"] = f"{old} --mem 1G --report {d}/old.json -- /bin/true"
        if runexec:
            commands["runexec (BenchExec)"] = (
                f"{runexec} --memlimit 100MB --read-only-dir / --full-access-dir /tmp --output /dev/null "
                f"--container -- /bin/true"
            )
        launch = hyperfine(commands, args.runs)
    sup = supervisor(args.sleep)
    print("| command | median | mean ± sd | min |")
    print("|---|---|---|---|")
    for label, r in launch.items():
        spread = f"{r['mean_ms']:.1f} ± {r['stddev_ms']:.1f} ms"
        print(f"| {label} | {r['median_ms']:.1f} ms | {spread} | {r['min_ms']:.1f} ms |")
    if args.compare:
        ratio = launch[LABEL]["median_ms"] / launch[f"{LABEL} @ {args.compare}"]["median_ms"]
        print(f"\nlaunch median, this tree / {args.compare}: {ratio:.3f}")
    print()
    print(f"supervisor CPU (launcher + init) over {sup['window_s']:.0f} s of `sleep`: {sup['supervisor_cpu_s']:.3f} s")
    print(f"supervisor private memory: launcher {sup['launcher_private_kib'] / 1024:.1f} MiB, "
          f"init {sup['init_private_kib'] / 1024:.1f} MiB")
    print(f"cgroup memory peak of a /bin/true job (init's share of the job's figure): "
          f"{sup['true_job_cgroup_peak_kib'] / 1024:.2f} MiB")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"launch": launch, "supervisor": sup}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
