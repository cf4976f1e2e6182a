"""Classic BPF as seccomp takes it: instructions with symbolic jump targets, laid out into bytes.

A conditional jump reaches at most 255 instructions ahead (its offsets are
bytes); `assemble` relaxes one that must reach further by putting a
trampoline right after it: a copy of the `ret` it aims at, or else a `ja`,
whose offset has 32 bits.  Only forward jumps exist, as the kernel demands (a
jump backwards fails to pack, with struct.error).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# opcodes (linux/filter.h, linux/bpf_common.h)
LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = the seccomp_data word at k
LD_MEM = 0x60  # BPF_LD | BPF_MEM: A = M[k]
ST = 0x02  # M[k] = A
AND = 0x54  # BPF_ALU | BPF_AND | BPF_K
JA = 0x05
JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JGT = 0x25
JGE = 0x35
RET = 0x06  # BPF_RET | BPF_K

MAX_INSNS = 4096  # BPF_MAXINSNS: the kernel loads no longer program
_MAX_JUMP = 255


class Label:
    """A place in the program, bound by `Program.here`; jumps name it before or after it is bound."""


@dataclass
class _Insn:
    code: int
    k: int = 0
    jt: Label | None = None  # conditional jumps: where to go when the test holds, and when it does not;
    jf: Label | None = None  # `ja` goes to jt


class Program:
    def __init__(self) -> None:
        self._insns: list[_Insn | Label] = []
        self._rets: dict[int, Label] = {}

    def here(self, label: Label) -> None:
        self._insns.append(label)

    def emit(self, code: int, k: int = 0, jt: Label | None = None, jf: Label | None = None) -> None:
        self._insns.append(_Insn(code, k & 0xFFFFFFFF, jt, jf))

    def ret(self, value: int) -> Label:
        """The label of a shared `ret value`, laid out at the end of the program."""
        return self._rets.setdefault(value, Label())

    def assemble(self) -> bytes:
        items = list(self._insns)
        for value, label in self._rets.items():
            items += [label, _Insn(RET, value)]
        ret_of = {label: value for value, label in self._rets.items()}
        while True:
            where = _positions(items)
            far = next(((i, side) for i, item in enumerate(items) if isinstance(item, _Insn) and item.code != JA
                        for side in ("jt", "jf") if (t := getattr(item, side)) is not None
                        and where[t] - where[id(item)] - 1 > _MAX_JUMP), None)
            if far is None:
                break
            i, side = far
            target: Label = getattr(items[i], side)
            near = Label()
            setattr(items[i], side, near)
            items[i + 1:i + 1] = [near, _Insn(RET, ret_of[target]) if target in ret_of else _Insn(JA, 0, target)]
        out = []
        for item in items:
            if isinstance(item, Label):
                continue
            pc = where[id(item)]
            if item.code == JA:
                out.append(struct.pack("=HBBI", JA, 0, 0, where[item.jt] - pc - 1))
                continue
            jt = where[item.jt] - pc - 1 if item.jt is not None else 0
            jf = where[item.jf] - pc - 1 if item.jf is not None else 0
            out.append(struct.pack("=HBBI", item.code, jt, jf, item.k))
        return b"".join(out)


def _positions(items: list[_Insn | Label]) -> dict[object, int]:
    """The index of every instruction (by id) and of every label (the instruction it precedes)."""
    where: dict[object, int] = {}
    pc = 0
    for item in items:
        if isinstance(item, Label):
            where[item] = pc
        else:
            where[id(item)] = pc
            pc += 1
    return where
