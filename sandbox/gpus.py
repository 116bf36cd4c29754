"""The GPUs a batch system assigned to the job, as the NVIDIA device nodes to hand over.

With a private /dev, a job sees only the device nodes it is given (`--device`). A GPU job
needs its own /dev/nvidia<minor> nodes and the driver's control nodes (nvidiactl,
nvidia-uvm, nvidia-uvm-tools, nvidia-modeset), and must not see the other GPUs of the
node. What was assigned comes from the environment the batch system set:

- HTCondor: `_CONDOR_AssignedGPUs`, ids as its GPU discovery names them: `GPU-<uuid
  prefix>` (current releases) or `CUDA<N>`;
- Slurm: `SLURM_STEP_GPUS` / `SLURM_JOB_GPUS`, the GRES indices of the GPUs;
- otherwise `CUDA_VISIBLE_DEVICES` (indices or `GPU-<uuid>`).

An index N is the Nth GPU in PCI bus order, the order of HTCondor's discovery with
CUDA_DEVICE_ORDER=PCI_BUS_ID and of Slurm's NVML autodetection; its minor number and
UUID come from the driver's /proc/driver/nvidia/gpus/<bus>/information. Without that
file (no driver loaded) an index is taken as the minor number, Slurm's default
`File=/dev/nvidia[0-N]`. Everything here but scan() is pure, over injected text.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

NVIDIA_MAJOR = 195  # /dev/nvidia<minor> and /dev/nvidiactl (minor 255); nvidia-uvm's major is dynamic
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
NONE_VALUES = ("", "none", "nodevfiles", "-1")  # Slurm's NoDevFiles, CUDA's "no device"
SOURCES = ("_CONDOR_AssignedGPUs", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES")


@dataclass(frozen=True)
class Gpu:
    minor: int
    uuid: str  # "GPU-xxxxxxxx-...", lower case
    bus: str  # PCI bus location, "0000:3b:00.0", lower case


@dataclass(frozen=True)
class Node:
    """One entry of /dev: what scan() saw (a stand-in in tests)."""

    name: str
    char: bool
    major: int
    minor: int


class GpuError(ValueError):
    """An assignment that cannot be honoured: one line saying which id and why."""


def parse_information(text: str) -> Gpu | None:
    """One /proc/driver/nvidia/gpus/<bus>/information file (`Key: value` lines)."""
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}
    try:
        return Gpu(int(fields["device minor"]), fields["gpu uuid"].lower(), fields["bus location"].lower())
    except (KeyError, ValueError):
        return None


def assignment(env: Mapping[str, str]) -> tuple[str, list[str]] | None:
    """The variable that says which GPUs the job has, and its ids; None when no batch
    system said anything (then nothing is handed over on its behalf)."""
    for var in SOURCES:
        if var in env:
            value = env[var].strip()
            ids = [] if value.lower() in NONE_VALUES else [t.strip() for t in re.split(r"[,\s]+", value) if t.strip()]
            return var, ids
    return None


def minors(var: str, ids: Sequence[str], gpus: Sequence[Gpu]) -> list[int]:
    """The minor numbers of the assigned GPUs, in the order given, each once."""
    by_bus = sorted(gpus, key=lambda g: g.bus)
    out: list[int] = []
    for ident in ids:
        m = re.fullmatch(r"(?:CUDA)?([0-9]+)", ident, re.IGNORECASE)
        if m:
            index = int(m.group(1))
            if by_bus:
                if index >= len(by_bus):
                    raise GpuError(f"{var}: GPU {ident} is not on this node ({len(by_bus)} GPUs)")
                minor = by_bus[index].minor
            else:
                minor = index
        elif ident.lower().startswith("gpu-"):
            found = [g for g in gpus if g.uuid.startswith(ident.lower())]
            if len(found) != 1:
                raise GpuError(f"{var}: GPU {ident} " + ("matches several GPUs" if found else "is not on this node"))
            minor = found[0].minor
        else:
            raise GpuError(f"{var}: cannot hand over GPU {ident!r} (MIG instances and other ids are not supported)")
        if minor not in out:
            out.append(minor)
    return out


def device_nodes(var: str, wanted: Sequence[int], dev: Sequence[Node], dev_dir: str = "/dev") -> list[str]:
    """The device nodes to pass with --device: each assigned GPU's node, checked to be
    the NVIDIA character device of that minor, then the control nodes that exist."""
    by_name = {n.name: n for n in dev}
    out = []
    for minor in wanted:
        node = by_name.get(f"nvidia{minor}")
        if node is None:
            raise GpuError(f"{var}: {dev_dir}/nvidia{minor} does not exist")
        if not node.char or (node.major, node.minor) != (NVIDIA_MAJOR, minor):
            raise GpuError(f"{var}: {dev_dir}/nvidia{minor} is not the NVIDIA device {NVIDIA_MAJOR}:{minor}")
        out.append(f"{dev_dir}/nvidia{minor}")
    if wanted:
        out += [f"{dev_dir}/{name}" for name in CONTROL_NODES if name in by_name and by_name[name].char]
    return out


def for_job(env: Mapping[str, str], gpus: Sequence[Gpu], dev: Sequence[Node], dev_dir: str = "/dev") -> list[str]:
    """Everything above in one: env -> the --device list (empty: no GPU assigned)."""
    found = assignment(env)
    if found is None:
        return []
    var, ids = found
    return device_nodes(var, minors(var, ids, gpus), dev, dev_dir)


def scan(dev_dir: str = "/dev", proc_dir: str = "/proc/driver/nvidia/gpus") -> tuple[list[Gpu], list[Node]]:
    """The host's side: the driver's GPU list and the nvidia* entries of dev_dir."""
    gpus: list[Gpu] = []
    try:
        buses = sorted(os.listdir(proc_dir))
    except OSError:
        buses = []
    for bus in buses:
        try:
            with open(os.path.join(proc_dir, bus, "information")) as f:
                gpu = parse_information(f.read())
        except OSError:
            continue
        if gpu is not None:
            gpus.append(gpu)
    nodes: list[Node] = []
    try:
        names = [n for n in os.listdir(dev_dir) if n.startswith("nvidia")]
    except OSError:
        names = []
    for name in sorted(names):
        try:
            st = os.lstat(os.path.join(dev_dir, name))
        except OSError:
            continue
        nodes.append(Node(name, stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev)))
    return gpus, nodes
