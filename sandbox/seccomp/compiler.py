"""Compile a `Policy` to a seccomp BPF program, once per process, and keep it in memory.

Actions map to seccomp return values: allow -> SECCOMP_RET_ALLOW, errno NAME ->
SECCOMP_RET_ERRNO(n), kill -> SECCOMP_RET_USER_NOTIF.  "kill" is a user
notification, not SECCOMP_RET_KILL: the supervisor holding the listener fd reads
which syscall it was (reliably, with its arguments), answers it with an error so
the call never runs, and ends the run with status SV.  The bad-architecture
action is a notification too, so an i386 (`int $0x80`) or x32 (nr | 0x40000000)
call is reported by name (`i386:mount`).

The program, emitted here rather than by libseccomp: rules are first-match, and
libseccomp has no order among the rules of one call.  Through it, each call's
rules had to be made disjoint regions first (regions.py), and the complement of
`arg & 0xffffffff == x` alone is 32 regions: `strict` came to 685 instructions,
400 of them for ioctl, prctl, personality and clone.  Every run loads its
filter, and the kernel converts and JITs it at 0.2-0.3 us an instruction
(bench/filter_load_bench.py): 0.1 ms of each pooled run.  The program here:
1. checks the architecture (on x86_64, the x32 bit too): anything else is the
   bad-architecture action;
2. finds the call's number in a binary tree over ranges of numbers with one
   decision each.  A leaf is a jump straight to a shared `ret` or to the call's
   rules, and the path holds only jumps and returns, so the kernel's action
   cache still takes every call that is always allowed without running it;
3. for a call with conditional rules, tests them in their order: the first that
   holds returns its action, and the default follows the last.
A condition compares only the argument words its mask reaches (an int argument
under a `U32` mask costs one load), and tests a value's set of ranges or its
complement, whichever is shorter.  Call numbers come from libseccomp's table
(pyseccomp): the policy's names, and which numbers it cannot name.

The compiled program is kept in memory for the life of the process, keyed by
the policy's meaning (not its file).  It is never kept on disk: a filter read
back from a cache directory would decide what an untrusted program may call
on the word of whoever can write that directory.  (The shipped policies'
filters are built with the wheel: prebuilt.py.)
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import pyseccomp as seccomp

from .bpf import AND, JA, JEQ, JGE, JGT, LD_ABS, LD_MEM, MAX_INSNS, RET, ST, Label, Program
from .policy import ENOSYS, U64, Action, Condition, Policy, PolicyError, Rule

_M32 = 0xFFFFFFFF
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_USER_NOTIF = 0x7FC00000
_AUDIT_ARCH_X86_64 = 0xC000003E
_AUDIT_ARCH_64BIT = 0x80000000
_AUDIT_ARCH_LE = 0x40000000
_X32_BIT = 0x40000000
_NR, _ARCH, _ARGS = 0, 4, 16  # offsets in struct seccomp_data; each argument is 8 bytes

NATIVE_SYSCALLS = 512
"""Numbers below this are looked up for names; above it the kernel has no calls yet, and they are decided as a
number without a name is."""


@dataclass(frozen=True)
class CompiledPolicy:
    name: str
    bpf: bytes  # sock_filter instructions, 8 bytes each, for syscalls.seccomp_set_filter
    reports: bool  # whether some action is NOTIFY, so a listener must be created and watched
    digest: str  # the policy's meaning (Policy.digest)
    counts_refusals: bool  # whether the spawner may turn refusals into notifications to count them (SPAWN_CALLS)

    @property
    def instructions(self) -> int:
        return len(self.bpf) // 8


def _ret(action: Action) -> int:
    if action.kind == "allow":
        return _RET_ALLOW
    if action.kind == "kill":
        return _RET_USER_NOTIF
    return _RET_ERRNO | (action.errno or 0)


Decision = Action | str  # what a number gets: an action, or the name of a call whose rules are tested in order


def _build(policy: Policy) -> bytes:
    arch = seccomp.system_arch()
    if not arch & _AUDIT_ARCH_64BIT:
        raise PolicyError(f"policy {policy.name!r}: this machine's architecture ({arch:#x}) is not a 64-bit one, "
                          "which sbx's filters are written for")
    prog = Program()
    bad_arch, default = prog.ret(_RET_USER_NOTIF), prog.ret(_ret(policy.default))
    native, tree = Label(), Label()
    prog.emit(LD_ABS, _ARCH)
    prog.emit(JEQ, arch, native, bad_arch)
    prog.here(native)
    prog.emit(LD_ABS, _NR)
    if arch == _AUDIT_ARCH_X86_64:
        x32 = Label()
        prog.emit(JGE, _X32_BIT, x32, tree)
        prog.here(x32)
        prog.emit(JEQ, _M32, default, bad_arch)  # -1, a call a tracer skipped: the default, as libseccomp had it
    blocks: dict[str, Label] = {}
    _tree(prog, _segments(policy), blocks, tree)
    for name, label in blocks.items():
        prog.here(label)
        _rules(prog, policy.rules_for(name), default, little=bool(arch & _AUDIT_ARCH_LE))
    bpf = prog.assemble()
    if len(bpf) // 8 > MAX_INSNS:
        raise PolicyError(f"policy {policy.name!r}: the filter has {len(bpf) // 8} instructions, "
                          f"more than the kernel's {MAX_INSNS}")
    return bpf


def _segments(policy: Policy) -> list[tuple[int, Decision]]:
    """(first number, decision) of each run of numbers decided alike, from 0; the last runs to 2**32 - 1.

    Under a policy that allows by default, a number libseccomp cannot name (a call newer than it: open_tree_attr
    on libseccomp 2.5) fails with ENOSYS, as on a kernel that predates it, rather than going through unseen.
    """
    decided: dict[int, Decision] = {}
    for name, rules in policy.syscalls.items():
        nr = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
        if nr >= 0:  # (negative: no such call on this architecture)
            decided[nr] = name if rules[0].when else rules[0].action
    unnamed = ENOSYS if policy.default.kind == "allow" else policy.default
    out: list[tuple[int, Decision]] = []
    for nr in range(NATIVE_SYSCALLS + 1):
        if nr in decided:
            d = decided[nr]
        else:
            d = policy.default if nr < NATIVE_SYSCALLS and _named(nr) else unnamed
        if not out or isinstance(d, str) or out[-1][1] != d:
            out.append((nr, d))
    return out


def _named(nr: int) -> bool:
    try:
        seccomp.resolve_syscall(seccomp.Arch.NATIVE, nr)
    except ValueError:
        return False
    return True


def _tree(prog: Program, segments: list[tuple[int, Decision]], blocks: dict[str, Label], root: Label) -> None:
    """A binary search of the number (in A) over the segments' first numbers, bound at `root`."""

    def target(d: Decision) -> Label:
        return blocks.setdefault(d, Label()) if isinstance(d, str) else prog.ret(_ret(d))

    def node(lo: int, hi: int) -> None:
        mid = (lo + hi) // 2
        left = target(segments[lo][1]) if mid - lo == 1 else Label()
        right = target(segments[mid][1]) if hi - mid == 1 else Label()
        prog.emit(JGE, segments[mid][0], right, left)
        for label, start, end in ((left, lo, mid), (right, mid, hi)):
            if end - start > 1:
                prog.here(label)
                node(start, end)

    prog.here(root)
    if len(segments) == 1:
        prog.emit(JA, 0, target(segments[0][1]))
    else:
        node(0, len(segments))


def _rules(prog: Program, rules: tuple[Rule, ...], default: Label, little: bool) -> None:
    for rule in rules:
        hit = prog.ret(_ret(rule.action))
        if not rule.when:  # it decides all that is left
            prog.emit(JA, 0, hit)
            return
        next_rule = Label()
        for i, cond in enumerate(rule.when):
            match = hit if i == len(rule.when) - 1 else Label()
            _condition(prog, cond, match, next_rule, little)
            if match is not hit:
                prog.here(match)
        prog.here(next_rule)
    prog.emit(JA, 0, default)


def _condition(prog: Program, cond: Condition, match: Label, fail: Label, little: bool) -> None:
    """Jump to `match` when `arg & mask` lies in the condition's ranges, else to `fail`."""
    lo_word = _ARGS + 8 * cond.arg + (0 if little else 4)
    hi_word = _ARGS + 8 * cond.arg + (4 if little else 0)
    mask_hi, mask_lo = cond.mask >> 32, cond.mask & _M32
    top = U64 if mask_hi else _M32  # the value's highest possible
    ranges = [(lo, min(hi, top)) for lo, hi in cond.ranges if lo <= top]
    outside = _complement(ranges, top)
    if not ranges or not outside:
        prog.emit(JA, 0, match if ranges else fail)
        return
    if len(outside) < len(ranges):
        ranges, match, fail = outside, fail, match
    if mask_hi:
        _load(prog, hi_word, mask_hi)
        prog.emit(ST, 0)
        _load(prog, lo_word, mask_lo)
        prog.emit(ST, 1)
        _in_ranges64(prog, ranges, match, fail)
    else:
        _load(prog, lo_word, mask_lo)
        _in_ranges32(prog, ranges, match, fail)


def _load(prog: Program, offset: int, mask: int) -> None:
    prog.emit(LD_ABS, offset)
    if mask != _M32:
        prog.emit(AND, mask)


def _complement(ranges: list[tuple[int, int]], top: int) -> list[tuple[int, int]]:
    out, start = [], 0
    for lo, hi in ranges:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= top:
        out.append((start, top))
    return out


def _in_ranges32(prog: Program, ranges: list[tuple[int, int]], match: Label, fail: Label) -> None:
    """The value in A (32 bits) against sorted, disjoint ranges: below one range, it is below all that follow."""
    for i, (lo, hi) in enumerate(ranges):
        following = fail if i == len(ranges) - 1 else Label()
        if lo == hi:
            prog.emit(JEQ, lo, match, following)
        elif hi == _M32:
            prog.emit(JGE, lo, match, fail)
        else:
            if lo:
                at_least = Label()
                prog.emit(JGE, lo, at_least, fail)
                prog.here(at_least)
            prog.emit(JGT, hi, following, match)
        if following is not fail:
            prog.here(following)


def _in_ranges64(prog: Program, ranges: list[tuple[int, int]], match: Label, fail: Label) -> None:
    """The value whose high word is in M[0] and low word in M[1] against sorted, disjoint ranges."""
    for i, (lo, hi) in enumerate(ranges):
        following = fail if i == len(ranges) - 1 else Label()
        if lo:
            at_least = Label()
            _against64(prog, lo, above=at_least, below=fail, low_test=JGE, low_true=at_least, low_false=fail)
            prog.here(at_least)
        if hi == U64:
            prog.emit(JA, 0, match)
        else:
            _against64(prog, hi, above=following, below=match, low_test=JGT, low_true=following, low_false=match)
        if following is not fail:
            prog.here(following)


def _against64(prog: Program, bound: int, *, above: Label, below: Label, low_test: int, low_true: Label,
               low_false: Label) -> None:
    """The value (M[0], M[1]) against a 64-bit bound: a higher high word goes `above`, a lower one `below`,
    and the same one leaves it to `low_test` of the low words."""
    same_high, low = Label(), Label()
    prog.emit(LD_MEM, 0)
    prog.emit(JGT, bound >> 32, above, same_high)
    prog.here(same_high)
    prog.emit(JEQ, bound >> 32, low, below)
    prog.here(low)
    prog.emit(LD_MEM, 1)
    prog.emit(low_test, bound & _M32, low_true, low_false)


# --- the in-memory cache ---------------------------------------------------------------------------


_memory: dict[str, CompiledPolicy] = {}
_lock = threading.Lock()


def compile(policy: Policy) -> CompiledPolicy:  # noqa: A001 - the public name the launcher calls
    """The policy's BPF program: from memory, else compiled (and kept)."""
    key = policy.digest
    with _lock:
        hit = _memory.get(key)
        if hit is not None:
            return hit if hit.name == policy.name else _renamed(hit, policy.name)
        counts = _counts_refusals(policy)
        bpf = _build(policy)
        compiled = CompiledPolicy(policy.name, bpf, reports=_has_notify(bpf), digest=key, counts_refusals=counts)
        _memory[key] = compiled
        return compiled


def _renamed(c: CompiledPolicy, name: str) -> CompiledPolicy:
    return CompiledPolicy(name, c.bpf, c.reports, c.digest, c.counts_refusals)


SPAWN_CALLS = ("sendmsg", "close", "execve", "newfstatat", "write", "exit_group")
"""What the spawner's child calls between loading the filter and the program's first instruction
(spawner.c, exec_program): it sends the notification listener over, closes it and calls execve, and
when execve fails, stats the path, writes the error and exits.  The spawner waits for that execve
meanwhile, so nothing could answer a notification about these calls."""


def _counts_refusals(policy: Policy) -> bool:
    """Whether the spawner may count this policy's refusals (by turning them into notifications it answers):
    only if it refuses none of SPAWN_CALLS, which would wait forever for an answer.  A policy that kills one
    of them (a kill is a notification) could never start a program, and is refused here."""
    counts = True
    for call in SPAWN_CALLS:
        rules = policy.rules_for(call)
        kinds = {r.action.kind for r in rules}
        if all(r.when for r in rules):  # no unconditional rule: the default may apply
            kinds.add(policy.default.kind)
        if "kill" in kinds:
            raise PolicyError(f"policy {policy.name!r}: it kills {call}, which sbx's spawner calls to start the "
                              "program; refuse it instead (action \"errno\"), or allow it")
        counts = counts and kinds == {"allow"}
    return counts


def _has_notify(bpf: bytes) -> bool:
    for code, _jt, _jf, k in struct.iter_unpack("=HBBI", bpf):
        if code == RET and k & 0xFFFF0000 == _RET_USER_NOTIF:
            return True
    return False


def clear_memory_cache() -> None:
    with _lock:
        _memory.clear()
