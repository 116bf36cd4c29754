"""The v2 device program, evaluated without the kernel: its bytes are decoded and run by
a tiny interpreter of exactly the instructions it may use (anything else fails the test),
over (type, major, minor, access) cases, against the allow-list's meaning."""

from __future__ import annotations

import itertools
import struct

import pytest

from sandbox.cgroups import device_bpf as bpf
from sandbox.devices import allow_list
from sandbox.limits import Rule

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF


def run(code: bytes, kind: str, major: int, minor: int, access: str) -> int:
    """The verdict of the program for one access: what the kernel's interpreter returns."""
    assert len(code) % 8 == 0
    insns = [struct.unpack_from("<BBhi", code, i) for i in range(0, len(code), 8)]
    ctx = struct.pack("<III", (bpf.access_mask(access) << 16) | bpf.KIND_BITS[kind], major, minor)
    reg = [0] * 11
    pc = steps = 0
    while True:
        steps += 1
        assert steps <= len(insns), "a loop or a jump backwards"  # the verifier's rule too
        code_, regs, off, imm = insns[pc]
        dst, src = regs & 0xF, regs >> 4
        pc += 1
        if code_ == bpf.LDX_MEM_W:
            assert src == 1 and off in (0, 4, 8), "reads only the context's three u32"
            reg[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif code_ == bpf.ALU32_AND_K:
            reg[dst] = reg[dst] & imm & MASK32
        elif code_ == bpf.ALU32_RSH_K:
            reg[dst] = (reg[dst] & MASK32) >> imm
        elif code_ == bpf.ALU32_MOV_X:
            reg[dst] = reg[src] & MASK32
        elif code_ == bpf.ALU64_MOV_K:
            reg[dst] = imm & MASK64
        elif code_ == bpf.JMP_JNE_K:
            assert off >= 0
            pc += off if reg[dst] != imm & MASK64 else 0
        elif code_ == bpf.JMP_JNE_X:
            assert off >= 0
            pc += off if reg[dst] != reg[src] else 0
        elif code_ == bpf.JMP_EXIT:
            return reg[0]
        else:
            raise AssertionError(f"unexpected opcode {code_:#x}")
        assert 0 <= pc < len(insns), "jumped out of the program"


def allowed(rules: tuple[Rule, ...], kind: str, major: int, minor: int, access: str) -> bool:
    """The v1 devices controller's meaning of an allow-list after 'deny a'."""
    return any(r.kind == kind and r.major == major and r.minor in (None, minor) and set(access) <= set(r.access)
               for r in rules)


RULES = (Rule("c", 1, 3), Rule("b", 8, 0, "r"), Rule("c", 136, None), Rule("c", 10, 229, "rw"),
         Rule("c", 195, 0, "m"), Rule("b", 7, None, "wm"))
MAJORS_MINORS = [(1, 3), (1, 5), (8, 0), (8, 1), (136, 0), (136, 77), (10, 229), (195, 0), (7, 3), (3, 1), (0, 0)]
ACCESSES = ["r", "w", "m", "rw", "rwm", "rm"]


PRIVATE_DEV = allow_list(((False, 1, 3, "rwm"), (True, 8, 0, "r")))


@pytest.mark.parametrize("rules", [RULES, (), PRIVATE_DEV, (Rule("c", 4, None),)])
def test_the_program_allows_exactly_the_rules(rules: tuple[Rule, ...]) -> None:
    code = bpf.program(rules)
    for kind, (major, minor), access in itertools.product("bc", MAJORS_MINORS, ACCESSES):
        want = allowed(rules, kind, major, minor, access)
        assert run(code, kind, major, minor, access) == int(want), (kind, major, minor, access)


def test_nothing_allowed_is_a_two_instruction_deny_after_the_loads() -> None:
    code = bpf.program(())
    assert len(code) == 8 * 8
    assert run(code, "c", 1, 3, "r") == 0


def test_the_private_dev_allows_its_nodes_and_not_the_hosts_disk() -> None:
    code = bpf.program(allow_list(((False, 1, 3, "rwm"), (False, 1, 5, "rwm"))))
    assert run(code, "c", 1, 3, "rw") == 1  # /dev/null
    assert run(code, "c", 136, 4, "rw") == 1  # a pts of its own
    assert run(code, "c", 5, 2, "rw") == 1  # its ptmx
    assert run(code, "b", 8, 0, "r") == 0  # the host's disk
    assert run(code, "b", 8, 0, "m") == 0  # nor its mknod
    assert run(code, "c", 1, 11, "w") == 0  # /dev/kmsg


def test_an_access_subset_rule() -> None:
    code = bpf.program((Rule("c", 10, 229, "r"),))
    assert run(code, "c", 10, 229, "r") == 1
    assert run(code, "c", 10, 229, "w") == 0
    assert run(code, "c", 10, 229, "m") == 0
    assert run(code, "c", 10, 229, "rw") == 0


@pytest.mark.parametrize("rule", [Rule("a", 1, 3), Rule("c", 1, 3, "x"), Rule("c", 1, 3, ""), Rule("c", -1, 3),
                                  Rule("c", 1, 2**31)])
def test_unusable_rules_are_refused(rule: Rule) -> None:
    with pytest.raises(ValueError):
        bpf.program((rule,))


def test_the_encoding_of_one_instruction() -> None:
    # r4 = *(u32 *)(r1 + 4): dst in the low nibble, src in the high one
    assert bpf.insn(bpf.LDX_MEM_W, 4, 1, 4) == bytes([0x61, 0x14, 4, 0, 0, 0, 0, 0])
    assert bpf.insn(bpf.JMP_JNE_K, 2, off=3, imm=-1) == bytes([0x55, 0x02, 3, 0, 0xFF, 0xFF, 0xFF, 0xFF])
