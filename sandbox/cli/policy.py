"""`sbx policy list|show|check`.  Each function returns the text it prints; errors raise PolicyError.

Loaded for `sbx policy` only: it brings the policy parser and libseccomp, which no other command needs
(a box under a shipped policy takes its filter as built with the wheel: prebuilt.py).
"""

from __future__ import annotations

import argparse
import textwrap

from ..seccomp.compiler import compile
from ..seccomp.policy import POLICY_DIR, Action, Policy, available_policies, load_policy
from .parser import Parser, no_command

# The calls every shipped policy must stop: (label, syscall, args).  `check` warns about any a policy lets through.
DANGEROUS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("unshare", "unshare", (0x10000000,)),
    ("setns", "setns", (0, 0)),
    ("clone(CLONE_NEWUSER)", "clone", (0x10000000 | 17,)),
    ("clone(CLONE_NEWNS)", "clone", (0x00020000 | 17,)),
    ("clone3 (must be ENOSYS)", "clone3", (0, 88)),
    *((name, name, ()) for name in (
        "mount", "umount2", "pivot_root", "fsopen", "fsmount", "fsconfig", "move_mount", "open_tree",
        "mount_setattr", "ptrace", "process_vm_readv", "process_vm_writev", "bpf", "perf_event_open",
        "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key",
        "request_key", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
        "reboot", "swapon", "swapoff", "acct", "open_by_handle_at")),
    ("ioctl(TIOCSTI)", "ioctl", (0, 0x5412)),
    ("ioctl(TIOCSTI | 1 << 32)", "ioctl", (0, 0x100005412)),
    ("ioctl(TIOCLINUX)", "ioctl", (0, 0x541C)),
    ("personality(PER_LINUX32)", "personality", (0x0008,)),
    ("seccomp(SECCOMP_SET_MODE_FILTER)", "seccomp", (1,)),
    ("prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)", "prctl", (22, 2)),
)


def build(policy: argparse.ArgumentParser) -> None:
    psub = policy.add_subparsers(dest="policy_command", parser_class=Parser)
    policy.set_defaults(func=no_command(psub.choices))
    psub.add_parser("list", help="the shipped policies").set_defaults(func=lambda a: _print(list_policies()))
    show = psub.add_parser("show", help="what a policy allows and blocks")
    show.add_argument("name", metavar="NAME|FILE")
    show.set_defaults(func=lambda a: _print(show_policy(a.name)))
    pcheck = psub.add_parser("check", help="validate a policy file")
    pcheck.add_argument("file", metavar="FILE")
    pcheck.set_defaults(func=lambda a: _print(check_policy(a.file)))


def _print(text: str) -> int:
    print(text)
    return 0


def leaks(policy: Policy) -> list[str]:
    """Labels of the dangerous calls the policy does not stop (clone3 must fail with ENOSYS)."""
    out = []
    for label, syscall, args in DANGEROUS:
        action = policy.decide(syscall, args)
        if syscall == "clone3":
            if action != Action("errno", 38):
                out.append(f"{label}: {action}")
        elif action.kind == "allow":
            out.append(label)
    return out


def wide_compares(policy: Policy) -> list[str]:
    """Rules that refuse or kill on an argument compared on all 64 bits, for values that fit in 32: where the kernel
    reads the argument as an int, a value with a bit above 31 set goes past the rule (40 | 1 << 32 went past
    permissive's kill of AF_VSOCK that way).  An allow rule compared so is only stricter."""
    out = []
    for name, rules in policy.syscalls.items():
        for rule in rules:
            if rule.action.kind == "allow":
                continue
            for c in rule.when:
                if c.mask >> 32 and all(hi >> 32 == 0 for _, hi in c.ranges):
                    out.append(f"{rule.where}: warning: the rule for {name} compares argument {c.arg} on all 64 bits "
                               f"({c.text}); if the kernel reads it as an int, a value with a bit above 31 set goes "
                               'past the rule: add mask = "U32"')
    return out


def list_policies() -> str:
    """`sbx policy list`: one line per shipped policy, name and description."""
    names = available_policies()
    width = max((len(n) for n in names), default=0)
    lines = []
    for name in names:
        p = load_policy(name)
        lines.append(f"{name:<{width}}  {p.description}")
    return "\n".join(lines) + "\n"


def _wrap(items: list[str], indent: str = "    ") -> str:
    return textwrap.fill(" ".join(items), width=100, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False)


def show_policy(name_or_path: str) -> str:
    """`sbx policy show NAME|FILE`: what the policy allows, refuses and kills, readably."""
    p = load_policy(name_or_path)
    c = compile(p)
    out = [f"policy {p.name} ({p.path})"]
    if p.description:
        out.append(f"  {p.description}")
    if len(p.chain) > 1:
        out.append(f"  inherits: {' -> '.join(p.chain[1:])}")
    out.append(f"  any other syscall: {_explain(p.default)}")
    out.append("  foreign ABIs (i386 int $0x80, x32): kill and report")
    plain: dict[str, list[str]] = {}
    conditional: list[str] = []
    for name, rules in p.syscalls.items():
        if len(rules) == 1 and not rules[0].when:
            plain.setdefault(str(rules[0].action), []).append(name)
        else:
            cases = "; ".join(("otherwise " if not r.when and i else "") + r.describe() for i, r in enumerate(rules))
            if rules[-1].when:
                cases += f"; otherwise {p.default}"
            conditional.append(f"    {name}: {cases}")
    order = ["allow"] + sorted(k for k in plain if k.startswith("errno")) + ["kill"]
    for key in order:
        names = plain.get(key)
        if not names:
            continue
        out.append(f"  {_title(key)} ({len(names)}):")
        out.append(_wrap(sorted(names)))
    if conditional:
        out.append(f"  depends on the arguments ({len(conditional)}, first matching rule decides):")
        out.extend(conditional)
    out.append(f"  compiled: {c.instructions} BPF instructions")
    return "\n".join(out) + "\n"


def _title(key: str) -> str:
    if key == "allow":
        return "allowed"
    if key == "kill":
        return "killed and reported"
    return f"fail with {key.split()[1]}"


def _explain(action: Action) -> str:
    if action.kind == "allow":
        return "allowed"
    if action.kind == "kill":
        return "killed and reported"
    return f"fails with {str(action).split()[1]}"


def check_policy(path: str) -> str:
    """`sbx policy check FILE`: parse, resolve and compile; one summary line, then warnings.

    Raises PolicyError (`FILE:LINE: reason`) for a bad policy.  A policy that lets a call of the
    dangerous list through is valid, and gets one warning line per such call; so does each rule that
    `wide_compares` finds.
    """
    p = load_policy(path)
    c = compile(p)
    allowed = sum(1 for rules in p.syscalls.values() if any(r.action.kind == "allow" for r in rules))
    killed = sum(1 for rules in p.syscalls.values() if any(r.action.kind == "kill" for r in rules))
    lines = [f"{path}: ok: policy {p.name}, {len(p.syscalls)} syscalls named ({allowed} allowed, "
             f"{killed} killed), otherwise {p.default}; {c.instructions} BPF instructions"]
    lines += [f"{path}: warning: lets through {label}" for label in leaks(p)]
    lines += wide_compares(p)
    return "\n".join(lines) + "\n"


__all__ = ["list_policies", "show_policy", "check_policy", "leaks", "wide_compares", "DANGEROUS", "POLICY_DIR"]
