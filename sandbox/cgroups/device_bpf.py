"""cgroup v2's device filter: a BPF_PROG_TYPE_CGROUP_DEVICE program built from the
same allow-list the v1 devices controller gets, attached to the job's cgroup.

cgroup v2 has no devices controller; the kernel instead runs the cgroup's device
programs on every open and mknod of a device node (and refuses with EPERM when one
returns 0). The program is assembled here, a few instructions per rule, as runc and
crun assemble theirs: no compiler, no libbpf, only bpf(2) through ctypes (the cgroups
package uses nothing of the rest of sandbox, syscalls.py included).

`program()` is pure (rules in, instruction bytes out) so the policy is unit-tested by
evaluating the bytes, without root; `attach()` is the one part that talks to the kernel.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from ..limits import Rule
from .base import CgroupError

# struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }, access_type
# being (BPF_DEVCG_ACC_* << 16) | BPF_DEVCG_DEV_*
DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
ACCESS_BITS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
KIND_BITS = {"b": DEV_BLOCK, "c": DEV_CHAR}

# the instruction classes and operations the program uses (linux/bpf_common.h, bpf.h)
LDX_MEM_W = 0x61  # dst = *(u32 *)(src + off)
ALU32_AND_K = 0x54  # dst = (u32)(dst & imm)
ALU32_RSH_K = 0x74  # dst = (u32)dst >> imm
ALU32_MOV_X = 0xBC  # dst = (u32)src
ALU64_MOV_K = 0xB7  # dst = imm
JMP_JNE_K = 0x55  # if dst != imm: pc += off
JMP_JNE_X = 0x5D  # if dst != src: pc += off
JMP_EXIT = 0x95  # return r0

# registers: r1 holds the context on entry; r0 is the verdict (1 allow, 0 deny)
R0, R1, R_TYPE, R_ACCESS, R_MAJOR, R_MINOR = 0, 1, 2, 3, 4, 5


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One struct bpf_insn: opcode, dst_reg in the low nibble, src_reg in the high one
    (little-endian bitfield order), a signed 16-bit offset, a signed 32-bit immediate."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def access_mask(access: str) -> int:
    mask = 0
    for letter in access:
        mask |= ACCESS_BITS[letter]
    return mask


def _rule_block(rule: Rule) -> list[bytes]:
    """The test of one rule: each mismatch jumps past the block's end (the next rule)."""
    tests: list[tuple[int, int, int, int]] = [(JMP_JNE_K, R_TYPE, 0, KIND_BITS[rule.kind])]
    mask = access_mask(rule.access)
    subset: list[bytes] = []
    if mask != access_mask("rwm"):
        # allowed only if every access asked for is among the rule's: (asked & mask) == asked
        subset = [insn(ALU32_MOV_X, R1, R_ACCESS), insn(ALU32_AND_K, R1, imm=mask)]
        tests.append((JMP_JNE_X, R1, R_ACCESS, 0))
    tests.append((JMP_JNE_K, R_MAJOR, 0, rule.major))
    if rule.minor is not None:
        tests.append((JMP_JNE_K, R_MINOR, 0, rule.minor))
    verdict = [insn(ALU64_MOV_K, R0, imm=1), insn(JMP_EXIT)]
    out: list[bytes] = []
    remaining = len(tests) + len(subset) + len(verdict)
    for i, (code, dst, src, imm) in enumerate(tests):
        if i == 1 and subset:
            out += subset
            remaining -= len(subset)
        remaining -= 1
        out.append(insn(code, dst, src, off=remaining, imm=imm))
    return out + verdict


def program(rules: tuple[Rule, ...]) -> bytes:
    """The device program allowing exactly `rules` (kind b/c, major, minor or every
    minor, access letters of rwm) and denying everything else."""
    for rule in rules:
        if rule.kind not in KIND_BITS or not rule.access or set(rule.access) - set(ACCESS_BITS):
            raise ValueError(f"unusable device rule {rule.text()!r}")
        if not 0 <= rule.major < 2**31 or (rule.minor is not None and not 0 <= rule.minor < 2**31):
            raise ValueError(f"device numbers out of range in {rule.text()!r}")
    out = [
        insn(LDX_MEM_W, R_TYPE, R1, 0),
        insn(ALU32_AND_K, R_TYPE, imm=0xFFFF),
        insn(LDX_MEM_W, R_ACCESS, R1, 0),
        insn(ALU32_RSH_K, R_ACCESS, imm=16),
        insn(LDX_MEM_W, R_MAJOR, R1, 4),
        insn(LDX_MEM_W, R_MINOR, R1, 8),
    ]
    for rule in rules:
        out += _rule_block(rule)
    out += [insn(ALU64_MOV_K, R0, imm=0), insn(JMP_EXIT)]
    return b"".join(out)


# -- the kernel side ----------------------------------------------------------------------

BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_QUERY = 5, 8, 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # the attach type
# Ancestors' programs keep running beside ours (the kernel allows a device only if every
# one does): a job's filter narrows what it was given and never replaces it.
BPF_F_ALLOW_MULTI = 2
BPF_F_QUERY_EFFECTIVE = 1
ATTR_SIZE = 128  # larger than every field used; the kernel wants the tail zeroed
LOG_SIZE = 1 << 16
# bpf(2)'s number: the asm-generic one (280) on the newer architectures
SYSCALL_NR = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
LICENSE = b"Apache-2.0\0"  # no GPL-only helper is called


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    nr = SYSCALL_NR.get(os.uname().machine)
    if nr is None:
        raise CgroupError(f"--dev private: no BPF device filter on {os.uname().machine} (cgroup v2)")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    result = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(ATTR_SIZE))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def _load(code: bytes, log: bool = False) -> int:
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(LICENSE, len(LICENSE))
    logbuf = ctypes.create_string_buffer(LOG_SIZE if log else 1)
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf
    struct.pack_into("<IIQQIIQ", attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
                     ctypes.addressof(insns), ctypes.addressof(lic),
                     1 if log else 0, LOG_SIZE if log else 0, ctypes.addressof(logbuf) if log else 0)
    struct.pack_into("8s", attr, 48, b"sbx_dev")  # prog_name: what bpftool shows
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as e:
        if log or e.errno != errno.EACCES:
            why = logbuf.value.decode(errors="replace").strip().splitlines()[-1:] if log else []
            raise CgroupError(f"--dev private: the kernel refused the BPF device filter: {e.strerror}"
                              + (f" ({why[0]})" if why else "")) from None
        return _load(code, log=True)  # EACCES is the verifier's: load again for its reason


def effective(cgroup_fd: int) -> int:
    """How many device programs run for the cgroup open at `cgroup_fd` (its own and its
    ancestors' that stay)."""
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    struct.pack_into("<III", attr, 0, cgroup_fd, BPF_CGROUP_DEVICE, BPF_F_QUERY_EFFECTIVE)
    _bpf(BPF_PROG_QUERY, attr)
    return int(struct.unpack_from("<I", attr, 24)[0])  # prog_cnt


def attach(directory: str, rules: tuple[Rule, ...]) -> None:
    """Attach the program for `rules` to the (still empty) cgroup `directory`. Removing
    the cgroup detaches it: nothing else to undo."""
    prog = _load(program(rules))
    fds = [prog]
    try:
        cg = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fds.append(cg)
        parent = os.open(os.path.dirname(directory), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fds.append(parent)
        attr = ctypes.create_string_buffer(ATTR_SIZE)
        struct.pack_into("<IIII", attr, 0, cg, prog, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
        _bpf(BPF_PROG_ATTACH, attr)
        # An ancestor's program attached without ALLOW_MULTI would be overridden by ours,
        # widening what the job may open past what it was given: refuse.
        replaced = effective(cg) != effective(parent) + 1
    except OSError as e:
        raise CgroupError(f"--dev private: cannot attach the BPF device filter to {directory}: "
                          f"{e.strerror}") from None
    finally:
        for fd in fds:
            os.close(fd)
    if replaced:
        raise CgroupError(f"--dev private: a device program of an enclosing cgroup of {directory} "
                          "would be replaced by the sandbox's (attached without BPF_F_ALLOW_MULTI)")
