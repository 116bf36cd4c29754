"""sandbox/gpus.py: the batch system's GPU assignment as the device nodes to hand over,
on injected driver text and stand-in device nodes (no GPU needed)."""

from __future__ import annotations

import os
import stat

import pytest

from sandbox import gpus
from sandbox.gpus import Gpu, GpuError, Node

INFO = """Model: \t\t NVIDIA A100-SXM4-40GB
IRQ:   \t\t 215
GPU UUID: \t GPU-{uuid}
Video BIOS: \t 92.00.19.00.10
Bus Type: \t PCIe
DMA Size: \t 47 bits
DMA Mask: \t 0x7fffffffffff
Bus Location: \t {bus}
Device Minor: \t {minor}
GPU Firmware: \t N/A
"""
# four GPUs whose minor numbers are not in PCI bus order, as happens on real nodes
NODE_GPUS = [("0000:07:00.0", 2, "aaaa1111-0000-0000-0000-000000000000"),
             ("0000:0f:00.0", 0, "bbbb2222-0000-0000-0000-000000000000"),
             ("0000:47:00.0", 3, "cccc3333-0000-0000-0000-000000000000"),
             ("0000:4e:00.0", 1, "dddd4444-0000-0000-0000-000000000000")]
GPUS = [Gpu(minor, f"gpu-{uuid}", bus) for bus, minor, uuid in NODE_GPUS]
DEV = [Node(f"nvidia{m}", True, 195, m) for m in range(4)] + [
    Node("nvidiactl", True, 195, 255), Node("nvidia-uvm", True, 508, 0), Node("nvidia-uvm-tools", True, 508, 1),
    Node("nvidia-caps", False, 0, 0)]
CONTROL = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]


def test_driver_information_is_parsed():
    gpu = gpus.parse_information(INFO.format(uuid="AAAA1111-0000", bus="0000:07:00.0", minor=2))
    assert gpu == Gpu(2, "gpu-aaaa1111-0000", "0000:07:00.0")
    assert gpus.parse_information("Model: x\n") is None


@pytest.mark.parametrize("env,expected", [
    ({"_CONDOR_AssignedGPUs": "GPU-cccc3333,GPU-bbbb2222", "CUDA_VISIBLE_DEVICES": "0,1"}, [3, 0]),
    ({"_CONDOR_AssignedGPUs": "CUDA0, CUDA3"}, [2, 1]),  # CUDA<N>: the Nth in bus order
    ({"SLURM_JOB_GPUS": "1,2", "CUDA_VISIBLE_DEVICES": "0,1"}, [0, 3]),  # Slurm renumbers CUDA_VISIBLE_DEVICES
    ({"SLURM_STEP_GPUS": "3", "SLURM_JOB_GPUS": "1,3"}, [1]),
    ({"CUDA_VISIBLE_DEVICES": "GPU-dddd4444-0000-0000-0000-000000000000"}, [1]),
])
def test_assigned_gpus_become_their_nodes_and_the_control_nodes(env, expected):
    assert gpus.for_job(env, GPUS, DEV) == [f"/dev/nvidia{m}" for m in expected] + CONTROL


@pytest.mark.parametrize("env", [{}, {"CUDA_VISIBLE_DEVICES": ""}, {"SLURM_JOB_GPUS": "NoDevFiles"},
                                 {"_CONDOR_AssignedGPUs": ""}, {"CUDA_VISIBLE_DEVICES": "-1"}])
def test_no_gpu_assigned_hands_over_nothing_not_even_the_control_nodes(env):
    assert gpus.for_job(env, GPUS, DEV) == []


def test_without_the_driver_list_an_index_is_the_minor():
    assert gpus.for_job({"SLURM_JOB_GPUS": "2"}, [], DEV) == ["/dev/nvidia2", *CONTROL]


@pytest.mark.parametrize("env,message", [
    ({"_CONDOR_AssignedGPUs": "CUDA4"}, "_CONDOR_AssignedGPUs: GPU CUDA4 is not on this node (4 GPUs)"),
    ({"_CONDOR_AssignedGPUs": "GPU-eeee"}, "GPU GPU-eeee is not on this node"),
    ({"_CONDOR_AssignedGPUs": "GPU-"}, "matches several GPUs"),
    ({"CUDA_VISIBLE_DEVICES": "MIG-1234"}, "MIG instances and other ids are not supported"),
])
def test_an_assignment_that_cannot_be_honoured_is_one_line(env, message):
    with pytest.raises(GpuError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gpus.for_job(env, GPUS, DEV)


def test_a_node_that_is_not_the_gpu_is_refused():
    dev = [Node("nvidia0", True, 195, 0), Node("nvidia1", True, 1, 3), Node("nvidia2", False, 0, 0)]
    with pytest.raises(GpuError, match="/dev/nvidia1 is not the NVIDIA device 195:1"):
        gpus.for_job({"SLURM_JOB_GPUS": "1"}, [], dev)
    with pytest.raises(GpuError, match="/dev/nvidia2 is not the NVIDIA device"):
        gpus.for_job({"SLURM_JOB_GPUS": "2"}, [], dev)
    with pytest.raises(GpuError, match="/dev/nvidia3 does not exist"):
        gpus.for_job({"SLURM_JOB_GPUS": "3"}, [], dev)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of stand-in device nodes needs root")
def test_scan_reads_stand_in_device_nodes_and_driver_files(tmp_path):
    dev, proc = tmp_path / "dev", tmp_path / "gpus"
    dev.mkdir()
    for name, major, minor in [*((f"nvidia{m}", 195, m) for m in range(4)), ("nvidiactl", 195, 255),
                               ("nvidia-uvm", 508, 0)]:
        os.mknod(dev / name, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
    (dev / "nvidia-modeset").write_text("not a device")
    for bus, minor, uuid in NODE_GPUS:
        (proc / bus).mkdir(parents=True)
        (proc / bus / "information").write_text(INFO.format(uuid=uuid.upper(), bus=bus, minor=minor))
    found_gpus, nodes = gpus.scan(str(dev), str(proc))
    assert sorted(found_gpus, key=lambda g: g.minor) == sorted(GPUS, key=lambda g: g.minor)
    got = gpus.for_job({"_CONDOR_AssignedGPUs": "CUDA1"}, found_gpus, nodes, str(dev))
    assert got == [f"{dev}/nvidia0", f"{dev}/nvidiactl", f"{dev}/nvidia-uvm"]  # a regular file is no device


def test_a_private_dev_gets_the_assigned_gpus_and_nothing_else(monkeypatch):
    from sandbox.launch import build_spec

    monkeypatch.setattr(gpus, "scan", lambda: (GPUS, DEV))
    monkeypatch.setenv("SLURM_JOB_GPUS", "1,2")
    monkeypatch.delenv("_CONDOR_AssignedGPUs", raising=False)
    monkeypatch.delenv("SLURM_STEP_GPUS", raising=False)
    spec = build_spec(("true",), {"dev": "private"})
    assert [d for d in spec.devices if "nvidia" in d] == ["/dev/nvidia0", "/dev/nvidia3", *CONTROL]
    assert build_spec(("true",), {}).devices == ()  # the host's /dev: nothing to hand over
    monkeypatch.setenv("SLURM_JOB_GPUS", "7")
    from sandbox import errors

    with pytest.raises(errors.SandboxError, match="SLURM_JOB_GPUS: GPU 7 is not on this node"):
        build_spec(("true",), {"dev": "private"})
