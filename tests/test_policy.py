"""Policy files: parsing, every class of error with its exact FILE:LINE, inheritance, the shipped
policies' decisions, the `sbx policy` functions, and the compiled BPF agreeing with the policy."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pyseccomp as libseccomp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from programs.harness import RET_ALLOW, RET_ERRNO, RET_NOTIFY, bpf_run, const_allow, seccomp_data
from sandbox.cli import policy as policy_cli
from sandbox.errors import ConfigError
from sandbox.seccomp.policy import (ALLOW, ENOSYS, KILL, U64, Action, Condition, Policy, PolicyError, Rule, available_policies, load_policy)
from sandbox.seccomp.compiler import _build
from sandbox.seccomp.regions import syscall_regions

SHIPPED = ["build", "compile", "default", "permissive", "strict"]
X86_64 = 0xC000003E
I386 = 0x40000003


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(path: Path | str) -> str:
    with pytest.raises(PolicyError) as e:
        load_policy(str(path))
    return str(e.value)


# --- errors, one per class, with the exact FILE:LINE ------------------------------------------------

BAD = [
    ("syntax_unclosed", 'description = "x"\nallow = ["read",\n  "write"\n[default]\naction = "allow"\n',
     4, "TOML syntax error: Unclosed array (column 1)"),
    ("syntax_string", 'allow = ["read"]\ndescription = "x\n',
     2, "TOML syntax error: Illegal character '\\n' (column 17)"),
    ("unknown_syscall", 'description = "x"\nallow = [\n  "read", "wirte",\n]\n',
     3, "unknown syscall 'wirte'"),
    ("unknown_syscall_in_rule",
     'allow = ["read"]\n\n[[rule]]\nsyscalls = ["mount"]\naction = "kill"\n\n[[rule]]\nsyscalls = ["umount2", "mout"]\naction = "kill"\n',
     8, "unknown syscall 'mout'"),
    ("unknown_errno", 'allow = ["read"]\n\n[[rule]]\nsyscalls = ["socket"]\naction = "errno"\nerrno = "EFOO"\n',
     6, "unknown errno 'EFOO'"),
    ("unknown_action", 'allow = ["read"]\n\n[[rule]]\nsyscalls = ["socket"]\naction = "deny"\n',
     5, "unknown action 'deny' (expected allow, errno or kill)"),
    ("unknown_default_action", 'allow = ["read"]\n\n[default]\naction = "block"\n',
     4, "unknown action 'block' (expected allow, errno or kill)"),
    ("unknown_key", 'allow = ["read"]\nallwo = ["write"]\n',
     2, "unknown key 'allwo' (expected description, inherit, default, allow, kill, rule)"),
    ("unknown_rule_key", '[[rule]]\nsyscalls = ["socket"]\naction = "allow"\nwhen = [{ arg = 0, eq = 1 }]\nwhy = "x"\n',
     5, "unknown key 'why' in [[rule]] (expected syscalls, action, errno, when)"),
    ("errno_missing", '[[rule]]\nsyscalls = ["socket"]\naction = "errno"\n',
     3, 'action \'errno\' needs an errno name (errno = "EPERM")'),
    ("errno_with_allow", '[[rule]]\nsyscalls = ["socket"]\naction = "allow"\nerrno = "EPERM"\n',
     4, "errno given for action 'allow' (only with action = \"errno\")"),
    ("bad_arg_index", '[[rule]]\nsyscalls = ["socket"]\naction = "allow"\nwhen = [\n  { arg = 0, eq = 1 },\n  { arg = 7, eq = 2 },\n]\n',
     6, "'arg' must be 0 to 5, not 7"),
    ("unknown_constant", '[[rule]]\nsyscalls = ["clone"]\naction = "allow"\nwhen = [{ arg = 0, mask = "CLONE_NEWFOO", eq = 0 }]\n',
     4, "unknown constant 'CLONE_NEWFOO' in 'mask'"),
    ("two_comparisons", '[[rule]]\nsyscalls = ["socket"]\naction = "allow"\nwhen = [{ arg = 0, eq = 1, ne = 2 }]\n',
     4, "a condition needs exactly one comparison: eq, ne, or a range (min and/or max)"),
    ("empty_range", '[[rule]]\nsyscalls = ["socket"]\naction = "allow"\nwhen = [{ arg = 0, min = 5, max = 2 }]\n',
     4, "empty range: min 5 > max 2"),
    ("too_wide", '[[rule]]\nsyscalls = ["socket"]\naction = "allow"\n\nwhen = [{ arg = 0, eq = 0x1ffffffffffffffff }]\n',
     5, "'eq' = 36893488147419103231 does not fit in 64 bits"),
    ("inherit_missing", 'description = "x"\ninherit = "nope"\n',
     2, "cannot inherit: policy 'nope': no such policy (available: build, compile, default, permissive, strict)"),
    ("syscalls_not_a_list", '\n[[rule]]\nsyscalls = "socket"\naction = "allow"\n',
     3, "'syscalls' must be a list of syscall names"),
]


@pytest.mark.parametrize("name,text,line,reason", BAD, ids=[b[0] for b in BAD])
def test_bad_policy_is_rejected_with_file_and_line(tmp_path: Path, name: str, text: str, line: int, reason: str) -> None:
    path = write(tmp_path, f"{name}.toml", text)
    assert error_of(path) == f"{path}:{line}: {reason}"


def test_unreachable_rule_names_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "u.toml", 'allow = ["read", "socket"]\n\n[[rule]]\nsyscalls = ["socket"]\naction = "errno"\nerrno = "EPERM"\n')
    assert error_of(path) == f"{path}:3: rule for 'socket' is never used: the rule at {path}:1 decides every socket call"


def test_inheritance_cycle(tmp_path: Path) -> None:
    a = write(tmp_path, "a.toml", 'allow = ["read"]\ninherit = "b.toml"\n')
    b = write(tmp_path, "b.toml", '\n\ninherit = "./a.toml"\n')
    assert error_of(a) == f"{b}:3: inheritance cycle: a -> b -> a"


def test_error_in_inherited_file_names_that_file(tmp_path: Path) -> None:
    write(tmp_path, "parent.toml", 'allow = ["read"]\nkill = ["mount", "nosuchcall"]\n')
    child = write(tmp_path, "child.toml", 'inherit = "parent.toml"\n')
    assert error_of(child) == f"{tmp_path / 'parent.toml'}:2: unknown syscall 'nosuchcall'"


def test_policy_error_is_a_config_error_with_parts(tmp_path: Path) -> None:
    path = write(tmp_path, "x.toml", 'allow = ["nosuch"]\n')
    with pytest.raises(ConfigError) as e:
        load_policy(str(path))
    assert isinstance(e.value, PolicyError)
    assert (e.value.file, e.value.line, e.value.reason) == (str(path), 1, "unknown syscall 'nosuch'")
    assert e.value.exit_status == 125


def test_unknown_policy_name_lists_the_available_ones() -> None:
    with pytest.raises(PolicyError) as e:
        load_policy("nope")
    assert str(e.value) == "policy 'nope': no such policy (available: build, compile, default, permissive, strict)"


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as e:
        load_policy(str(tmp_path / "missing.toml"))
    assert str(e.value) == f"policy '{tmp_path / 'missing.toml'}': no such file"


def test_a_name_cannot_walk_out_of_the_policy_directory() -> None:
    with pytest.raises(PolicyError, match="no such policy"):
        load_policy("..")


# --- the format's meaning ----------------------------------------------------------------------------


def test_first_matching_rule_decides_and_default_applies(tmp_path: Path) -> None:
    path = write(tmp_path, "p.toml", """
allow = ["read", "write"]
kill = ["mount"]

[default]
action = "errno"
errno = "EPERM"

[[rule]]
syscalls = ["socket"]
action = "allow"
when = [{ arg = 0, eq = "AF_UNIX" }, { arg = 1, min = 1, max = 2 }]

[[rule]]
syscalls = ["socket"]
action = "kill"
when = [{ arg = 0, mask = 0xff, eq = 1 }]

[[rule]]
syscalls = ["socket", "socketpair"]
action = "errno"
errno = "EAFNOSUPPORT"
""")
    p = load_policy(str(path))
    assert p.name == "p" and p.default == Action("errno", errno.EPERM)
    assert p.decide("read") == ALLOW and p.decide("mount") == KILL and p.decide("close") == p.default
    assert p.decide("socket", (1, 2)) == ALLOW
    assert p.decide("socket", (1, 3)) == KILL  # first rule fails on arg1, second matches
    assert p.decide("socket", (0x101, 1)) == KILL  # masked: 0x101 & 0xff == 1
    assert p.decide("socket", (2, 1)) == Action("errno", errno.EAFNOSUPPORT)
    assert p.decide("socketpair", (1, 1)) == Action("errno", errno.EAFNOSUPPORT)


def test_child_replaces_parent_rules_per_syscall_and_inherits_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path, "child.toml", 'inherit = "default"\nkill = ["fork"]\n\n[[rule]]\nsyscalls = ["socket"]\naction = "errno"\nerrno = "EACCES"\n')
    p = load_policy(str(path))
    d = load_policy("default")
    assert p.chain == ("child", "default", "permissive")
    assert d.decide("fork") == ALLOW and p.decide("fork") == KILL
    assert d.decide("socket", (1,)) == ALLOW and p.decide("socket", (1,)) == Action("errno", errno.EACCES)
    assert p.decide("mount") == KILL and p.decide("read") == ALLOW and p.default == ENOSYS
    assert p.decide("clone", (0x10000000 | 17,)) == KILL


def test_ne_and_open_ranges(tmp_path: Path) -> None:
    path = write(tmp_path, "r.toml", """
[[rule]]
syscalls = ["kill"]
action = "allow"
when = [{ arg = 1, ne = 9 }]

[[rule]]
syscalls = ["tgkill"]
action = "allow"
when = [{ arg = 2, max = 15 }, { arg = 0, min = -1 }]
""")
    p = load_policy(str(path))
    assert p.decide("kill", (1, 15)) == ALLOW and p.decide("kill", (1, 9)) == ENOSYS
    assert p.decide("tgkill", (U64, 0, 15)) == ALLOW  # min = -1 is 2**64-1
    assert p.decide("tgkill", (U64 - 1, 0, 15)) == ENOSYS
    assert p.decide("tgkill", (U64, 0, 16)) == ENOSYS


# --- shipped policies ---------------------------------------------------------------------------------


def test_shipped_policies_are_listed() -> None:
    assert available_policies() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_policy_blocks_the_dangerous_list(name: str) -> None:
    p = load_policy(name)
    assert policy_cli.leaks(p) == []
    for label, syscall, args in policy_cli.DANGEROUS:
        if syscall != "clone3":
            assert p.decide(syscall, args) == KILL, label
    assert p.decide("clone3") == Action("errno", errno.ENOSYS)
    # what libc needs from the blocked families keeps working
    assert p.decide("ioctl", (0, 0x5401)) == ALLOW  # TCGETS
    assert p.decide("personality", (0xFFFFFFFF,)) == ALLOW
    assert p.decide("personality", (0,)) == ALLOW


def test_strict_allows_threads_only() -> None:
    p = load_policy("strict")
    thread = 0x3D0F00  # glibc's pthread_create flags
    assert p.decide("clone", (thread,)) == ALLOW
    assert p.decide("clone", (0x01200011,)) == KILL  # glibc fork()
    assert p.decide("clone", (0x4111,)) == KILL  # posix_spawn's CLONE_VM|CLONE_VFORK
    assert p.decide("clone", (thread | 0x10000000,)) == KILL
    assert p.decide("fork") == KILL and p.decide("vfork") == KILL
    assert p.decide("execve") == ALLOW
    assert p.decide("socket", (2,)) == Action("errno", errno.EPERM)


def test_the_ladder_strict_default_compile_permissive() -> None:
    names = {n: load_policy(n) for n in SHIPPED}

    def allowed(p: Policy) -> set[str]:
        return {s for s, rules in p.syscalls.items() if any(r.action.kind == "allow" for r in rules)}

    assert allowed(names["strict"]) - {"clone"} < allowed(names["default"]) < allowed(names["compile"])
    assert names["permissive"].default == ALLOW
    assert all(names[n].default == ENOSYS for n in ("strict", "default", "compile"))


# --- sbx policy list/show/check -----------------------------------------------------------------------


def test_policy_list() -> None:
    out = policy_cli.list_policies()
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == SHIPPED
    assert "no fork" in lines[SHIPPED.index("strict")]


def test_policy_show_is_readable() -> None:
    out = policy_cli.show_policy("strict")
    assert out.startswith("policy strict (")
    assert "inherits: permissive" in out
    assert "any other syscall: fails with ENOSYS" in out
    killed = out.split("killed and reported (")[1].split("depends on the arguments")[0]
    assert {"mount", "ptrace", "fork", "vfork", "unshare"} <= set(killed.split())
    assert "execve" not in killed.split()
    assert "clone: allow if (arg0 & CLONE_THREAD|CLONE_NEWNS" in out
    assert "otherwise kill" in out
    assert "foreign ABIs (i386 int $0x80, x32): kill and report" in out


def test_policy_check_ok_and_warnings(tmp_path: Path) -> None:
    good = write(tmp_path, "good.toml", 'inherit = "strict"\nallow = ["syncfs"]\n')
    out = policy_cli.check_policy(str(good))
    assert out.startswith(f"{good}: ok: policy good, ")
    assert "warning" not in out
    leaky = write(tmp_path, "leaky.toml", 'inherit = "default"\nallow = ["mount", "ptrace"]\n')
    out = policy_cli.check_policy(str(leaky))
    assert f"{leaky}: warning: lets through mount" in out
    assert f"{leaky}: warning: lets through ptrace" in out
    bad = write(tmp_path, "bad.toml", 'allow = ["read"]\nkill = ["nosuch"]\n')
    with pytest.raises(PolicyError) as e:
        policy_cli.check_policy(str(bad))
    assert str(e.value) == f"{bad}:2: unknown syscall 'nosuch'"


@pytest.mark.parametrize("mask", ["", 'mask = "U32", '])
def test_policy_check_warns_of_a_refusal_an_int_argument_can_pass_with_high_bits(tmp_path: Path, mask: str) -> None:
    """How permissive's AF_VSOCK kill was passed (socket(40 | 1 << 32, ...)): a kill on all 64 bits of an int."""
    path = write(tmp_path, "wide.toml", 'inherit = "strict"\n\n[[rule]]\nsyscalls = ["socket"]\naction = "kill"\n'
                 f"when = [{{ arg = 0, {mask}eq = 40 }}]\n\n[[rule]]\nsyscalls = [\"socket\"]\naction = \"allow\"\n")
    out = policy_cli.check_policy(str(path))
    warned = "warning: the rule for socket compares argument 0 on all 64 bits" in out
    assert warned == (mask == ""), out
    assert not warned or f"{path}:" in out.split("warning: the rule for socket")[0].rsplit("\n", 1)[-1]


@pytest.mark.parametrize("name", SHIPPED)
def test_no_shipped_refusal_compares_an_argument_on_64_bits_for_values_that_fit_in_32(name: str) -> None:
    assert policy_cli.wide_compares(load_policy(name)) == []


# --- the compiled filter means what the policy says ---------------------------------------------------


def expected_ret(action: Action) -> int:
    if action.kind == "allow":
        return RET_ALLOW
    if action.kind == "kill":
        return RET_NOTIFY
    return RET_ERRNO | action.errno


PROBES = [(0,) * 6, (0x7E020000, 0x5412), (0x10000, 0x100005412), (0xFFFFFFFF, 0x541C), (2, 1), (10,), (16,),
          (0x10011,), (0x3D0F00,), (0x3D0F00 | 0x10000000,), (0x01200011,), (U64, U64, U64, U64, U64, U64)]


def named_calls() -> list[tuple[int, str]]:
    """(number, name) of every x86_64 call below 460 that libseccomp names."""
    out = []
    for nr in range(0, 460):
        try:
            out.append((nr, libseccomp.resolve_syscall(libseccomp.Arch.X86_64, nr).decode()))
        except ValueError:
            continue
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_compiled_shipped_policy_agrees_with_the_policy(name: str) -> None:
    p = load_policy(name)
    bpf = _build(p)
    checked = 0
    for nr, syscall in named_calls():
        for args in PROBES:
            assert bpf_run(bpf, seccomp_data(nr, X86_64, args)) == expected_ret(p.decide(syscall, args)), (syscall, args)
            checked += 1
    assert checked > 3000
    # foreign ABIs go to the bad-arch action, NOTIFY: i386 getpid (20) and x32 getpid (39 | bit 30)
    assert bpf_run(bpf, seccomp_data(20, I386)) == RET_NOTIFY
    assert bpf_run(bpf, seccomp_data(0x40000000 | 39, X86_64)) == RET_NOTIFY


_ACTIONS = st.sampled_from([ALLOW, KILL, Action("errno", errno.EPERM), Action("errno", errno.EACCES)])
_BITS = st.sampled_from([0, 1, 2, 3, 31, 32, 33, 62, 63])


@st.composite
def conditions(draw) -> Condition:
    arg = draw(st.integers(0, 2))
    mask = draw(st.sampled_from([U64, 0xFFFFFFFF, 0xFF00, 0x7E020000, 0x8000000000000001, 0xF0]))
    kind = draw(st.sampled_from(["eq", "ne", "range", "min", "max"]))
    a = draw(st.one_of(st.integers(0, 20), st.integers(0, U64), st.builds(lambda b: 1 << b, _BITS)))
    b = draw(st.one_of(st.integers(0, 20), st.integers(0, U64), st.builds(lambda b: (1 << b) - 1, _BITS)))
    lo, hi = min(a, b), max(a, b)
    ranges = {"eq": [(a, a)], "ne": [r for r in ((0, a - 1), (a + 1, U64)) if r[0] <= r[1]],
              "range": [(lo, hi)], "min": [(a, U64)], "max": [(0, a)]}[kind]
    return Condition(arg, mask, tuple(ranges), kind)


@st.composite
def policies(draw) -> Policy:
    syscalls = {}
    for name in draw(st.lists(st.sampled_from(["socket", "ioctl", "clone", "kill"]), min_size=1, max_size=3, unique=True)):
        rules = [Rule(draw(_ACTIONS), tuple(draw(st.lists(conditions(), max_size=3)))) for _ in range(draw(st.integers(1, 4)))]
        syscalls[name] = tuple(rules)
    return Policy("gen", Path("gen.toml"), "", draw(_ACTIONS), syscalls, ("gen",))


def _probe_values(p: Policy, draw) -> list[tuple[int, ...]]:
    """Arguments near every boundary the policy's conditions draw."""
    edges = {0, U64}
    for rules in p.syscalls.values():
        for r in rules:
            for c in r.when:
                for lo, hi in c.ranges:
                    for v in (lo - 1, lo, hi, hi + 1):
                        edges.add(v & c.mask & U64)
                        edges.add((v & c.mask | (~c.mask & draw(st.integers(0, U64)))) & U64)
    edges = sorted(edges)
    return [tuple(draw(st.sampled_from(edges)) for _ in range(3)) + (0, 0, 0) for _ in range(40)]


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_filter_agrees_with_first_match_semantics(data) -> None:
    p = data.draw(policies())
    bpf = _build(p)  # rules are tested in order: no policy is too complex to compile
    for args in _probe_values(p, data.draw):
        for name in p.syscalls:
            nr = libseccomp.resolve_syscall(libseccomp.Arch.X86_64, name)
            got = bpf_run(bpf, seccomp_data(nr, X86_64, args))
            assert got == expected_ret(p.decide(name, args)), (name, [hex(a) for a in args], p.syscalls[name])


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_filter_is_short_and_its_always_allowed_calls_stay_cacheable(name: str) -> None:
    """Every run loads its filter and the kernel JITs it per instruction: rules tested in order keep `strict`
    at about a quarter of the 685 instructions libseccomp made of it.  And a call the policy always allows
    takes a path of number loads, jumps and returns, which the kernel's action cache (seccomp_is_const_allow)
    can decide once at load, so such calls never run the filter."""
    p = load_policy(name)
    bpf = _build(p)
    assert len(bpf) // 8 < 200, len(bpf) // 8
    allowed = 0
    for nr, syscall in named_calls():
        rules = p.rules_for(syscall)
        always = (rules[0].action if rules and not rules[0].when else p.default if not rules else None) == ALLOW
        assert const_allow(bpf, nr, X86_64) == always, syscall
        allowed += always
    assert allowed > 50


def test_jumps_past_255_instructions_are_relaxed() -> None:
    """A call with hundreds of conditions: its tests, and the tree's jumps over them, reach further than a
    conditional jump's 8-bit offsets; the program still means the policy."""
    values = list(range(0x5400, 0x5400 + 300))
    rules = tuple(Rule(Action("errno", 1 + i % 100), (Condition(1, 0xFFFFFFFF, ((v, v),), "eq"),))
                  for i, v in enumerate(values)) + (Rule(ALLOW),)
    wide = tuple(Rule(KILL, (Condition(0, U64, ((v << 32, (v << 32) + 5),), "range"),)) for v in range(1, 120))
    p = Policy("long", Path("long.toml"), "", ENOSYS, {"ioctl": rules, "kill": wide, "read": (Rule(ALLOW),)}, ("long",))
    bpf = _build(p)
    assert len(bpf) // 8 > 600
    ioctl, kill, read = (libseccomp.resolve_syscall(libseccomp.Arch.X86_64, n) for n in ("ioctl", "kill", "read"))
    for v in values[:3] + values[-3:] + [0, 0x53FF, values[-1] + 1]:
        assert bpf_run(bpf, seccomp_data(ioctl, X86_64, (0, v | 1 << 40))) == expected_ret(p.decide("ioctl", (0, v)))
    for v in (1, 60, 119, 120):
        for low in (0, 5, 6):
            args = ((v << 32) + low,)
            assert bpf_run(bpf, seccomp_data(kill, X86_64, args)) == expected_ret(p.decide("kill", args)), (v, low)
    assert bpf_run(bpf, seccomp_data(read, X86_64)) == RET_ALLOW
    assert bpf_run(bpf, seccomp_data(0, I386)) == RET_NOTIFY


def test_regions_are_disjoint_and_skip_the_default() -> None:
    p = load_policy("strict")
    regions = syscall_regions(p, "ioctl")
    # kill TIOCSTI, kill TIOCLINUX, allow the rest: no region carries the default (ENOSYS)
    assert {a for a, _ in regions} == {KILL, ALLOW}
    assert all(a != p.default for a, _ in regions)
    assert syscall_regions(p, "syncfs") == []  # not named: the default covers it


def test_load_is_cached_until_a_file_of_the_chain_changes(tmp_path: Path) -> None:
    import os

    parent = write(tmp_path, "parent.toml", 'allow = ["read"]\n')
    child = write(tmp_path, "child.toml", 'inherit = "parent.toml"\nallow = ["write"]\n')
    first = load_policy(str(child))
    assert load_policy(str(child)) is first
    parent.write_text('allow = ["read"]\nkill = ["sync"]\n')
    os.utime(parent, ns=(1, 1))  # a different mtime even within the clock's resolution
    second = load_policy(str(child))
    assert second is not first and second.decide("sync") == KILL and first.decide("sync") == ENOSYS


def test_the_shipped_policies_filters_are_built_with_the_wheel() -> None:
    """What setup.py compiled is what compiling the installed policy gives now, for both memory forms."""
    from sandbox.run import fallback
    from sandbox.seccomp import compiler as seccomp
    from sandbox.seccomp import prebuilt
    for name in available_policies():
        built = prebuilt.load(name)
        assert built is not None, name
        policy = load_policy(name)
        assert built.bpf[True] == (seccomp.compile(policy).bpf, seccomp.compile(policy).counts_refusals)
        mapped = seccomp.compile(fallback.without_unmapped_memory(policy))
        assert built.bpf[False] == (mapped.bpf, mapped.counts_refusals)
        assert built.one_process == fallback.one_process(policy)
    assert prebuilt.load("./strict.toml") is None and prebuilt.load("nonesuch") is None


def test_a_built_filter_whose_policy_file_changed_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox.seccomp import prebuilt
    from sandbox.shipped import POLICY_DIR
    copy = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, copy)
    monkeypatch.setattr(prebuilt, "POLICY_DIR", copy)
    monkeypatch.setattr(prebuilt, "_found", {})
    assert prebuilt.load("strict") is not None
    source = copy / "strict.toml"
    source.write_text(source.read_text() + "\n# edited\n")
    monkeypatch.setattr(prebuilt, "_found", {})
    assert prebuilt.load("strict") is None  # compiled from what is there instead


def test_a_run_under_a_shipped_policy_loads_no_policy_parser_or_libseccomp() -> None:
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "sandbox", "run", "--policy", "strict", "--",
                        "/bin/true"], capture_output=True)
    assert r.returncode == 0, r.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.decode().splitlines() if "|" in line}
    assert {"pyseccomp", "tomllib", "sandbox.seccomp.policy", "sandbox.seccomp.compiler"}.isdisjoint(imported)
