"""Compile a `Policy` to a seccomp BPF program with libseccomp, once, and cache it.

Actions map to seccomp return values: allow -> SCMP_ACT_ALLOW, errno NAME ->
SCMP_ACT_ERRNO(n), kill -> SCMP_ACT_NOTIFY.  "kill" is a user notification, not
SECCOMP_RET_KILL: the supervisor holding the listener fd reads which syscall it
was (reliably, with its arguments), answers it with an error so the call never
runs, and ends the run with status SV.  The bad-architecture action is NOTIFY
too, so an i386 (`int $0x80`) or x32 (nr | 0x40000000) call is reported by name
(`i386:mount`); libseccomp sends x32 numbers on the x86_64 arch to that action.

Per-syscall rules are first-match (see `Policy.decide`).  libseccomp has no
order among rules of one syscall (an unconditional rule silently swallows
conditional ones with another action, and one rule cannot compare an argument
twice), so each syscall's rules are first turned into disjoint regions of the
argument space, each region a conjunction of masked-equal tests, one per
argument (a "cube"); ranges become aligned power-of-two blocks.  Disjoint rules
mean libseccomp's order cannot matter.

The compiled program is kept in memory for the life of the process, keyed by
the policy's meaning (not its file).  It is never kept on disk: a filter read
back from a cache directory would decide what an untrusted program may call
on the word of whoever can write that directory.
Compiling costs 10-35 ms once per policy and process (the shipped policies).
"""

from __future__ import annotations

import errno
import struct
import tempfile
import threading
from dataclasses import dataclass

import pyseccomp as seccomp

from .policy import U64, Action, Policy, PolicyError

OPTIMIZE = 2  # libseccomp: 2 = binary tree over syscall numbers, 1 = rules in priority order
_MAX_TERMS = 4096  # per syscall; a policy beyond that is refused, not compiled slowly

Cube = tuple[int, int]  # (mask, value): the argument matches when arg & mask == value
Term = tuple[Cube, ...]  # one cube per argument (mask 0: any value)
_ANY: Cube = (0, 0)
_FULL: Term = (_ANY,) * 6


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


# --- cubes -----------------------------------------------------------------------------------------


def _cube_and(a: Cube, b: Cube) -> Cube | None:
    common = a[0] & b[0]
    if (a[1] ^ b[1]) & common:
        return None
    return a[0] | b[0], a[1] | b[1]


def _cube_not(c: Cube) -> list[Cube]:
    """Disjoint cubes covering everything outside c: the first differing bit, from the top."""
    mask, value = c
    out, prefix = [], 0
    for bit in range(63, -1, -1):
        b = 1 << bit
        if mask & b:
            out.append((prefix | b, (value & prefix) | (~value & b)))
            prefix |= b
    return out


def _range_cubes(mask: int, lo: int, hi: int) -> list[Cube]:
    """Disjoint cubes for `lo <= arg & mask <= hi`: split [lo, hi] into aligned blocks."""
    out = []
    while lo <= hi:
        size = (lo & -lo) if lo else 1 << 64
        while lo + size - 1 > hi:
            size >>= 1
        fixed = U64 & ~(size - 1)  # bits the block fixes
        if not (lo & fixed & ~mask):  # the block needs a 1 where arg & mask is always 0: empty
            m = mask & fixed
            out.append((m, lo & m))
        lo += size
    return out


def _condition_cubes(mask: int, ranges: tuple[tuple[int, int], ...]) -> list[Cube]:
    """Disjoint cubes for `arg & mask` lying in the ranges; `!= x` as the complement of one cube."""
    if len(ranges) == 2 and ranges[0][0] == 0 and ranges[1][1] == U64 and ranges[0][1] + 2 == ranges[1][0]:
        x = ranges[0][1] + 1  # the ranges of `ne = x`
        return [_ANY] if x & ~mask else _cube_not((mask, x))
    return [c for lo, hi in ranges for c in _range_cubes(mask, lo, hi)]


def _term_and(a: Term, b: Term) -> Term | None:
    out = []
    for x, y in zip(a, b):
        c = _cube_and(x, y)
        if c is None:
            return None
        out.append(c)
    return tuple(out)


_WORK_LIMIT = 400_000  # term intersections per syscall before a policy is called too complex
_work = 0


def _region_and(a: list[Term], b: list[Term]) -> list[Term]:
    global _work
    _work += len(a) * len(b)
    if _work > _WORK_LIMIT:
        raise _TooComplex
    out = []
    for x in a:
        for y in b:
            t = _term_and(x, y)
            if t is not None:
                out.append(t)
                if len(out) > _MAX_TERMS:
                    raise _TooComplex
    return _merge(out)


def _merge(region: list[Term]) -> list[Term]:
    """Join sibling terms (equal but for one bit of one argument's cube) until none are left.

    Keeps regions near their smallest: the complement of `arg != x` comes back as the one cube `arg == x`.
    """
    if len(region) < 2:
        return region
    global _work
    terms = set(region)
    changed = True
    while changed:
        changed = False
        _work += len(terms) * 8
        if _work > _WORK_LIMIT:
            raise _TooComplex
        for t in list(terms):
            if t not in terms:
                continue
            for i, (mask, value) in enumerate(t):
                m = mask
                while m:
                    bit = m & -m
                    m ^= bit
                    sibling = t[:i] + ((mask, value ^ bit),) + t[i + 1:]
                    if sibling in terms:
                        terms.discard(t)
                        terms.discard(sibling)
                        terms.add(t[:i] + ((mask & ~bit, value & ~bit),) + t[i + 1:])
                        changed = True
                        break
                if t not in terms:
                    break
    return list(terms)


def _term_not(t: Term) -> list[Term]:
    """Disjoint terms covering everything outside t."""
    out, prefix = [], list(_FULL)
    for i, cube in enumerate(t):
        if cube == _ANY:
            continue
        for c in _cube_not(cube):
            term = list(prefix)
            term[i] = c
            out.append(tuple(term))
        prefix[i] = cube
    return out


def _region_minus(region: list[Term], cut: list[Term]) -> list[Term]:
    """What of `region` lies outside every term of `cut`: a term that misses a cut term is kept whole."""
    global _work
    for c in cut:
        _work += len(region)
        if _work > _WORK_LIMIT:
            raise _TooComplex
        out, outside = [], None
        for t in region:
            if _term_and(t, c) is None:
                out.append(t)
                continue
            outside = outside or _term_not(c)
            out.extend(x for n in outside if (x := _term_and(t, n)) is not None)
        if len(out) > _MAX_TERMS:
            raise _TooComplex
        region = out
    return _merge(region)


def _condition_region(rule) -> list[Term]:
    region = [_FULL]
    for cond in rule.when:
        cubes = _condition_cubes(cond.mask, cond.ranges)
        terms = []
        for c in cubes:
            term = list(_FULL)
            term[cond.arg] = c
            terms.append(tuple(term))
        region = _region_and(region, terms)
    return region


class _TooComplex(Exception):
    pass


def syscall_regions(policy: Policy, syscall: str) -> list[tuple[Action, Term]]:
    """Disjoint (action, term) pairs that together give the first-match meaning of the syscall's rules.

    Regions whose action is the policy default are left out: the filter's default covers them.
    """
    rules = policy.rules_for(syscall)
    if rules and not rules[0].when:  # most calls: one rule with no condition, which decides every call
        return [] if rules[0].action == policy.default else [(rules[0].action, _FULL)]
    global _work
    _work = 0
    out: list[tuple[Action, Term]] = []
    remaining = [_FULL]
    try:
        for rule in rules:
            if not rule.when:  # takes all that is left, and nothing is left after it
                if rule.action != policy.default:
                    out.extend((rule.action, t) for t in remaining)
                break
            cond = _condition_region(rule)
            if rule.action != policy.default:
                out.extend((rule.action, t) for t in _region_and(remaining, cond))
            remaining = _region_minus(remaining, cond)
            if not remaining:
                break
            if len(out) > _MAX_TERMS:
                raise _TooComplex
        merged: list[tuple[Action, Term]] = []
        for action in dict.fromkeys(a for a, _ in out):
            merged.extend((action, t) for t in _merge([t for a, t in out if a == action]))
    except _TooComplex:
        raise PolicyError(f"policy {policy.name!r}: the conditions for {syscall!r} are too complex to compile") from None
    return merged


# --- libseccomp ------------------------------------------------------------------------------------


def _scmp_action(action: Action) -> int:
    if action.kind == "allow":
        return seccomp.ALLOW
    if action.kind == "kill":
        return seccomp.NOTIFY
    return seccomp.ERRNO(action.errno)


def _build(policy: Policy) -> bytes:
    f = seccomp.SyscallFilter(_scmp_action(policy.default))
    f.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.NOTIFY)
    f.set_attr(seccomp.Attr.CTL_NNP, 0)  # the loader sets no_new_privs itself
    try:
        f.set_attr(seccomp.Attr.CTL_OPTIMIZE, OPTIMIZE)
    except (RuntimeError, ValueError, OSError):
        pass
    for syscall in policy.syscalls:
        for action, term in syscall_regions(policy, syscall):
            args = []
            for i, (mask, value) in enumerate(term):
                if mask == U64:
                    args.append(seccomp.Arg(i, seccomp.EQ, value))
                elif mask:
                    args.append(seccomp.Arg(i, seccomp.MASKED_EQ, mask, value))
            try:
                f.add_rule_exactly(_scmp_action(action), syscall, *args)
            except (RuntimeError, ValueError, OSError) as e:
                raise PolicyError(f"policy {policy.name!r}: libseccomp refused a rule for {syscall!r}: {e}") from None
    if policy.default.kind == "allow":
        for nr in _unnamed_syscalls():
            f.add_rule_exactly(seccomp.ERRNO(errno.ENOSYS), nr)
    with tempfile.TemporaryFile() as tmp:
        f.export_bpf(tmp)
        tmp.seek(0)
        bpf = tmp.read()
    if not bpf or len(bpf) % 8:
        raise PolicyError(f"policy {policy.name!r}: libseccomp produced no valid BPF program")
    if len(bpf) // 8 > 4096:
        raise PolicyError(f"policy {policy.name!r}: the filter has {len(bpf) // 8} instructions, more than the kernel's 4096")
    return bpf


NATIVE_SYSCALLS = 512
"""Syscall numbers below this are checked for names; above it (x86_64) the kernel has none yet."""


def _unnamed_syscalls() -> list[int]:
    """Native syscall numbers libseccomp cannot name: calls newer than it (open_tree_attr on libseccomp 2.5).

    A policy that allows by default would let them all through, unseen; they
    fail with ENOSYS instead, as on a kernel that predates them.
    """
    out = []
    for nr in range(NATIVE_SYSCALLS):
        try:
            seccomp.resolve_syscall(seccomp.Arch.NATIVE, nr)
        except ValueError:
            out.append(nr)
    return out


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


_RET = 0x06  # BPF_RET | BPF_K
_SECCOMP_RET_USER_NOTIF = 0x7FC00000


def _has_notify(bpf: bytes) -> bool:
    for code, _jt, _jf, k in struct.iter_unpack("=HBBI", bpf):
        if code == _RET and k & 0xFFFF0000 == _SECCOMP_RET_USER_NOTIF:
            return True
    return False


def clear_memory_cache() -> None:
    with _lock:
        _memory.clear()
