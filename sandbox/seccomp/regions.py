"""A policy's meaning for one call as disjoint regions of the argument space, to reason about a policy.

Per-syscall rules are first-match (see `Policy.decide`).  Here each syscall's
rules are turned into disjoint regions, each region a conjunction of
masked-equal tests, one per argument (a "cube"); ranges become aligned
power-of-two blocks.  `run/fallback.py` asks with it whether a policy lets a
program make a process at all.  (The filter itself evaluates the rules in order:
compiler.py.)
"""

from __future__ import annotations

from .policy import U64, Action, Policy, PolicyError

_MAX_TERMS = 4096  # per syscall; a policy beyond that is refused, not analysed slowly

Cube = tuple[int, int]  # (mask, value): the argument matches when arg & mask == value
Term = tuple[Cube, ...]  # one cube per argument (mask 0: any value)
_ANY: Cube = (0, 0)
_FULL: Term = (_ANY,) * 6


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

    Regions whose action is the policy default are left out: the default covers them.
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
        raise PolicyError(f"policy {policy.name!r}: the conditions for {syscall!r} are too complex to analyse") \
            from None
    return merged
