"""Seccomp policies: TOML files in `policies/`, parsed, validated and resolved.

A policy says, for each system call it names, an ordered list of rules (an
action and optional argument conditions; the first rule whose conditions all
hold decides), and a default action for every call it does not name.  A policy
may inherit another: the child's rules for a syscall replace the parent's for
that syscall, and everything else (including the default, unless the child sets
one) comes from the parent.  The file format is documented in
`policies/README.md`.

Every error names the file and the line: `FILE:LINE: reason`.  Syntax errors
come from tomllib; for semantic errors the line of the offending key or value
is found in the source text.

This module knows nothing about BPF: `compiler.py` compiles a `Policy`.
`Policy.decide()` is the reference meaning of a policy, which the compiled
filter must agree with (the tests check exactly that).
"""

from __future__ import annotations

import errno as _errno
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..errors import ConfigError
from ..shipped import POLICY_DIR, shipped

U64 = (1 << 64) - 1
ACTIONS = ("allow", "errno", "kill")

# Names usable in place of numbers in conditions (`mask = "CLONE_NEWUSER|CLONE_NEWNS"`).
CONSTANTS: dict[str, int] = {
    "CLONE_VM": 0x00000100,
    "CLONE_FS": 0x00000200,
    "CLONE_FILES": 0x00000400,
    "CLONE_SIGHAND": 0x00000800,
    "CLONE_PIDFD": 0x00001000,
    "CLONE_PTRACE": 0x00002000,
    "CLONE_VFORK": 0x00004000,
    "CLONE_PARENT": 0x00008000,
    "CLONE_THREAD": 0x00010000,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_SYSVSEM": 0x00040000,
    "CLONE_SETTLS": 0x00080000,
    "CLONE_PARENT_SETTID": 0x00100000,
    "CLONE_CHILD_CLEARTID": 0x00200000,
    "CLONE_UNTRACED": 0x00800000,
    "CLONE_CHILD_SETTID": 0x01000000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_IO": 0x80000000,
    "TIOCSTI": 0x5412,
    "TIOCLINUX": 0x541C,
    "AF_UNIX": 1,
    "AF_INET": 2,
    "AF_INET6": 10,
    "AF_NETLINK": 16,
    "PER_LINUX": 0,
    "PERSONALITY_QUERY": 0xFFFFFFFF,
    "U32": 0xFFFFFFFF,
}

_TOP_KEYS = ("description", "inherit", "default", "allow", "kill", "rule")
_RULE_KEYS = ("syscalls", "action", "errno", "when")
_DEFAULT_KEYS = ("action", "errno")
_COND_KEYS = ("arg", "mask", "eq", "ne", "min", "max")


class PolicyError(ConfigError):
    """A policy that cannot be used: missing, malformed, or naming unknown things."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        self.file = file
        self.line = line
        self.reason = message
        super().__init__(f"{file}:{line}: {message}" if file is not None else message)


# --- the model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    kind: str  # "allow" | "errno" | "kill" (kill = kill the run and report the syscall)
    errno: int | None = None

    def __str__(self) -> str:
        if self.kind == "errno":
            return f"errno {_errno.errorcode.get(self.errno or 0, self.errno)}"
        return self.kind

    def key(self) -> list[object]:
        return [self.kind, self.errno]


ALLOW = Action("allow")
KILL = Action("kill")
ENOSYS = Action("errno", _errno.ENOSYS)


@dataclass(frozen=True)
class Condition:
    """`(arg[index] & mask)` lies in one of `ranges` (inclusive, sorted, disjoint)."""

    arg: int
    mask: int
    ranges: tuple[tuple[int, int], ...]
    text: str

    def matches(self, args: tuple[int, ...]) -> bool:
        value = args[self.arg] & self.mask
        return any(lo <= value <= hi for lo, hi in self.ranges)

    def key(self) -> list[object]:
        return [self.arg, self.mask, [list(r) for r in self.ranges]]


@dataclass(frozen=True)
class Rule:
    action: Action
    when: tuple[Condition, ...] = ()
    where: str = ""  # FILE:LINE of the rule, for messages

    def matches(self, args: tuple[int, ...]) -> bool:
        return all(c.matches(args) for c in self.when)

    def describe(self) -> str:
        if not self.when:
            return str(self.action)
        return f"{self.action} if " + " and ".join(c.text for c in self.when)


@dataclass(frozen=True)
class Policy:
    name: str
    path: Path
    description: str
    default: Action
    syscalls: dict[str, tuple[Rule, ...]] = field(hash=False)
    chain: tuple[str, ...] = ()  # this policy's name, then the names of what it inherits, nearest first
    files: tuple[Path, ...] = ()  # the files of the chain, in the same order

    def rules_for(self, syscall: str) -> tuple[Rule, ...]:
        return self.syscalls.get(syscall, ())

    def decide(self, syscall: str, args: tuple[int, ...] = (0,) * 6) -> Action:
        """What the policy does with one call: the reference semantics the compiled filter implements."""
        args = tuple(a & U64 for a in args) + (0,) * (6 - len(args))
        for rule in self.syscalls.get(syscall, ()):
            if rule.matches(args):
                return rule.action
        return self.default

    def canonical(self) -> str:
        """Everything that decides the compiled filter, as a stable string (the cache key's input)."""
        body = {
            "default": self.default.key(),
            "syscalls": {
                name: [[r.action.key(), [c.key() for c in r.when]] for r in rules]
                for name, rules in sorted(self.syscalls.items())
            },
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()


# --- finding lines in the source ------------------------------------------------------------------


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?")


class _Source:
    """Line lookup for semantic errors: tomllib gives values, not positions."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.code = [_strip_comment(line) for line in self.lines]
        self.headers: list[tuple[int, str, bool]] = []  # (line index, name, is array-of-tables)
        for i, line in enumerate(self.lines):
            m = _HEADER.match(line)
            if m and not _in_multiline_value(self.lines, i):
                self.headers.append((i, m.group(2).replace('"', "").replace("'", ""), m.group(1) == "[["))

    def block(self, table: str | None, index: int = 0) -> tuple[int, int]:
        """Line range [start, end) of the top-level part (table None), `[table]` or the index-th `[[table]]`."""
        if table is None:
            return 0, self.headers[0][0] if self.headers else len(self.lines)
        seen = 0
        for n, (i, name, _) in enumerate(self.headers):
            if name == table:
                if seen == index:
                    end = self.headers[n + 1][0] if n + 1 < len(self.headers) else len(self.lines)
                    return i, end
                seen += 1
        return 0, len(self.lines)

    def find(self, block: tuple[int, int], *patterns: str) -> int:
        """1-based line of the first pattern found in the block (patterns tried in order), else the block's first line."""
        start, end = block
        for pattern in patterns:
            rx = re.compile(pattern)
            for i in range(start, end):
                if rx.search(self.code[i]):
                    return i + 1
        return start + 1

    def key_line(self, block: tuple[int, int], key: str) -> int:
        return self.find(block, rf"(^|[{{,\s])\"?{re.escape(key)}\"?\s*=")

    def value_line(self, block: tuple[int, int], value: object, key: str | None = None) -> int:
        if isinstance(value, str):
            pats = [rf"([\"']){re.escape(value)}\1"]
        else:
            pats = [rf"(?<![\w.]){re.escape(str(value))}(?![\w.])"]
            if isinstance(value, int) and value >= 0:
                pats.append(rf"(?i:0x0*{value:x})(?!\w)")
        if key is not None:
            pats = [rf"(^|[{{,\s])\"?{re.escape(key)}\"?\s*=\s*{p}" for p in pats] + pats
            pats.append(rf"(^|[{{,\s])\"?{re.escape(key)}\"?\s*=")
        return self.find(block, *pats)


def _strip_comment(line: str) -> str:
    out, quote = [], None
    for ch in line:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        out.append(ch)
    return "".join(out)


def _in_multiline_value(lines: list[str], i: int) -> bool:
    """Whether line i sits inside a multi-line array (so `[` there is not a table header)."""
    depth = 0
    for line in lines[:i]:
        code = _strip_comment(line)
        code = re.sub(r"\"(\\.|[^\"\\])*\"|'[^']*'", "", code)
        if depth == 0 and _HEADER.match(code) and "=" not in code:
            continue
        depth += code.count("[") - code.count("]")
        depth = max(depth, 0)
    return depth > 0


# --- parsing ---------------------------------------------------------------------------------------


def _syscall_known(name: str) -> bool:
    import pyseccomp as seccomp

    try:
        return seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) >= 0
    except (ValueError, TypeError):
        return False


def _errno_number(name: str) -> int | None:
    value = getattr(_errno, name, None) if re.fullmatch(r"E[A-Z0-9]+", name) else None
    return value if isinstance(value, int) else None


class _Parser:
    def __init__(self, path: Path, display: str, text: str) -> None:
        self.path = path
        self.file = display
        self.src = _Source(text)

    def fail(self, line: int, reason: str) -> PolicyError:
        return PolicyError(reason, self.file, line)

    def parse_action(self, table: dict, block: tuple[int, int], what: str) -> Action:
        for key in table:
            if key not in _DEFAULT_KEYS and key not in _RULE_KEYS:
                raise self.fail(self.src.key_line(block, key), f"unknown key '{key}' in {what}")
        if "action" not in table:
            raise self.fail(block[0] + 1, f"{what} has no 'action' (expected allow, errno or kill)")
        kind = table["action"]
        if not isinstance(kind, str) or kind not in ACTIONS:
            raise self.fail(self.src.value_line(block, kind, "action"),
                            f"unknown action {kind!r} (expected allow, errno or kill)")
        if kind == "errno":
            if "errno" not in table:
                raise self.fail(self.src.key_line(block, "action"), "action 'errno' needs an errno name (errno = \"EPERM\")")
            name = table["errno"]
            number = _errno_number(name) if isinstance(name, str) else None
            if number is None:
                raise self.fail(self.src.value_line(block, name, "errno"), f"unknown errno {name!r}")
            return Action("errno", number)
        if "errno" in table:
            raise self.fail(self.src.key_line(block, "errno"), f"errno given for action '{kind}' (only with action = \"errno\")")
        return Action(kind)

    def value(self, raw: object, block: tuple[int, int], key: str) -> int:
        line = lambda: self.src.value_line(block, raw, key)  # noqa: E731
        if isinstance(raw, bool):
            raise self.fail(line(), f"'{key}' must be an integer or a constant name, not a boolean")
        if isinstance(raw, int):
            if not -(1 << 63) <= raw <= U64:
                raise self.fail(line(), f"'{key}' = {raw} does not fit in 64 bits")
            return raw & U64
        if isinstance(raw, str):
            total = 0
            for part in raw.split("|"):
                part = part.strip()
                if part not in CONSTANTS:
                    raise self.fail(line(), f"unknown constant {part!r} in '{key}'")
                total |= CONSTANTS[part]
            return total
        raise self.fail(line(), f"'{key}' must be an integer or a constant name")

    def condition(self, raw: object, block: tuple[int, int]) -> Condition:
        if not isinstance(raw, dict):
            raise self.fail(self.src.key_line(block, "when"), "each 'when' entry must be a table like { arg = 0, eq = 1 }")
        for key in raw:
            if key not in _COND_KEYS:
                raise self.fail(self.src.key_line(block, key), f"unknown key '{key}' in a condition (expected arg, mask, eq, ne, min, max)")
        if "arg" not in raw:
            raise self.fail(self.src.key_line(block, "when"), "a condition needs 'arg' (0 to 5)")
        arg = raw["arg"]
        if isinstance(arg, bool) or not isinstance(arg, int) or not 0 <= arg <= 5:
            raise self.fail(self.src.value_line(block, arg, "arg"), f"'arg' must be 0 to 5, not {arg!r}")
        mask = self.value(raw["mask"], block, "mask") if "mask" in raw else U64
        kinds = [k for k in ("eq", "ne") if k in raw]
        ranged = "min" in raw or "max" in raw
        if len(kinds) + ranged != 1:
            raise self.fail(self.src.value_line(block, arg, "arg"),
                            "a condition needs exactly one comparison: eq, ne, or a range (min and/or max)")
        subject = f"arg{arg}" if mask == U64 else f"(arg{arg} & {_shown(raw['mask'], mask)})"
        if "eq" in raw:
            v = self.value(raw["eq"], block, "eq")
            ranges, text = [(v, v)], f"{subject} == {_shown(raw['eq'], v)}"
        elif "ne" in raw:
            v = self.value(raw["ne"], block, "ne")
            ranges = [r for r in ((0, v - 1), (v + 1, U64)) if r[0] <= r[1]]
            text = f"{subject} != {_shown(raw['ne'], v)}"
        else:
            lo = self.value(raw["min"], block, "min") if "min" in raw else 0
            hi = self.value(raw["max"], block, "max") if "max" in raw else U64
            if lo > hi:
                raise self.fail(self.src.key_line(block, "min"), f"empty range: min {_show(lo)} > max {_show(hi)}")
            ranges = [(lo, hi)]
            text = f"{_show(lo)} <= {subject} <= {_show(hi)}" if "min" in raw and "max" in raw else (
                f"{subject} >= {_show(lo)}" if "min" in raw else f"{subject} <= {_show(hi)}")
        return Condition(arg, mask, tuple(ranges), text)

    def syscall_names(self, raw: object, block: tuple[int, int], key: str) -> list[str]:
        if isinstance(raw, str) or not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
            raise self.fail(self.src.key_line(block, key), f"'{key}' must be a list of syscall names")
        for name in raw:
            if not _syscall_known(name):
                raise self.fail(self.src.value_line(block, name), f"unknown syscall {name!r}")
        return raw

    def parse(self, doc: dict) -> tuple[dict, list[tuple[str, Rule, int]]]:
        """Header fields and this file's rules as (syscall, rule, line), in file order."""
        top = self.src.block(None)
        for key in doc:
            if key not in _TOP_KEYS:
                line = self.src.key_line(top, key) if _has_key(self.src, top, key) else self._table_line(key)
                raise self.fail(line, f"unknown key '{key}' (expected {', '.join(_TOP_KEYS)})")
        header: dict = {}
        if "description" in doc:
            if not isinstance(doc["description"], str):
                raise self.fail(self.src.key_line(top, "description"), "'description' must be a string")
            header["description"] = doc["description"]
        if "inherit" in doc:
            if not isinstance(doc["inherit"], str) or not doc["inherit"]:
                raise self.fail(self.src.key_line(top, "inherit"), "'inherit' must be a policy name or a file path")
            header["inherit"] = (doc["inherit"], self.src.key_line(top, "inherit"))
        if "default" in doc:
            raw = doc["default"]
            if isinstance(raw, dict):
                block = self.src.block("default")
                if block == (0, len(self.src.lines)):
                    block = top
                header["default"] = self.parse_action(raw, block, "default")
            else:
                raise self.fail(self.src.key_line(top, "default"),
                                "'default' must be a table: [default] action = ...")
        rules: list[tuple[str, Rule, int]] = []
        for key, action in (("allow", ALLOW), ("kill", KILL)):
            if key in doc:
                line = self.src.key_line(top, key)
                for name in self.syscall_names(doc[key], top, key):
                    rules.append((name, Rule(action, (), f"{self.file}:{line}"), line))
        raw_rules = doc.get("rule", [])
        if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
            raise self.fail(self._table_line("rule"), "'rule' must be an array of tables: [[rule]]")
        for i, raw in enumerate(raw_rules):
            block = self.src.block("rule", i)
            for key in raw:
                if key not in _RULE_KEYS:
                    raise self.fail(self.src.key_line(block, key), f"unknown key '{key}' in [[rule]] (expected {', '.join(_RULE_KEYS)})")
            if "syscalls" not in raw:
                raise self.fail(block[0] + 1, "[[rule]] has no 'syscalls'")
            names = self.syscall_names(raw["syscalls"], block, "syscalls")
            action = self.parse_action(raw, block, "[[rule]]")
            when_raw = raw.get("when", [])
            if isinstance(when_raw, dict):
                when_raw = [when_raw]
            if not isinstance(when_raw, list):
                raise self.fail(self.src.key_line(block, "when"), "'when' must be a list of conditions")
            when = tuple(self.condition(c, block) for c in when_raw)
            for name in names:
                rules.append((name, Rule(action, when, f"{self.file}:{block[0] + 1}"), block[0] + 1))
        return header, rules

    def _table_line(self, key: str) -> int:
        for i, name, _ in self.src.headers:
            if name == key or name.startswith(key + "."):
                return i + 1
        return 1


def _has_key(src: _Source, block: tuple[int, int], key: str) -> bool:
    rx = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
    return any(rx.search(src.lines[i]) for i in range(*block))


def _shown(raw: object, v: int) -> str:
    """A value as the policy wrote it if that was a name, else as a number."""
    return raw if isinstance(raw, str) else _show(v)


def _show(v: int) -> str:
    for name, value in CONSTANTS.items():
        if value == v and v > 9 and not name.startswith(("U32", "PER_", "PERSONALITY")):
            return name
    if v == 0xFFFFFFFF:
        return "0xffffffff"
    return str(v) if v < 4096 else hex(v)


# --- loading ---------------------------------------------------------------------------------------


def available_policies() -> list[str]:
    """Names of the shipped policies."""
    found = Path(shipped(POLICY_DIR, "the shipped policies")).glob("*.toml")
    return sorted(p.stem for p in found if not p.stem.startswith("_"))


def _is_path(ref: str) -> bool:
    return "/" in ref or ref.endswith(".toml")


def resolve(ref: str, relative_to: Path | None = None) -> Path:
    """The file a policy reference names; PolicyError naming the policy if there is none."""
    if _is_path(ref):
        p = Path(ref)
        if not p.is_absolute() and relative_to is not None:
            p = relative_to / p
        if not p.is_file():
            raise PolicyError(f"policy {ref!r}: no such file")
        return p
    p = Path(POLICY_DIR, f"{ref}.toml")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", ref) or not p.is_file():
        raise PolicyError(f"policy {ref!r}: no such policy (available: {', '.join(available_policies())})")
    return p


_loaded: dict[tuple[str, Path], tuple[tuple[tuple[Path, tuple[int, int, int]], ...], Policy]] = {}


def _signature(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1, -1)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def load_policy(name_or_path: str) -> Policy:
    """A shipped policy by name (`strict`), or a policy file by path (anything with `/` or ending `.toml`).

    Parsed once: later calls return the same Policy while none of the files in its inheritance chain changed.
    """
    path = resolve(name_or_path)
    key = (name_or_path, path)
    hit = _loaded.get(key)
    if hit is not None and all(_signature(p) == sig for p, sig in hit[0]):
        return hit[1]
    policy = _load(path, name_or_path, ())
    _loaded[key] = (tuple((p, _signature(p)) for p in policy.files), policy)
    return policy


def _display(path: Path, ref: str) -> str:
    return ref if _is_path(ref) else str(path)


def _load(path: Path, ref: str, seen: tuple[Path, ...], display: str | None = None) -> Policy:
    display = display or _display(path, ref)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"policy {ref!r}: cannot read {display}: {getattr(e, 'strerror', None) or e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _syntax_error(e, display, text) from None
    parser = _Parser(path, display, text)
    header, rules = parser.parse(doc)

    parent: Policy | None = None
    if "inherit" in header:
        parent_ref, line = header["inherit"]
        try:
            parent_path = resolve(parent_ref, path.parent)
        except PolicyError as e:
            raise PolicyError(f"cannot inherit: {e.reason}", display, line) from None
        if parent_path.resolve() in seen + (path.resolve(),):
            names = " -> ".join(p.stem for p in seen + (path.resolve(), parent_path.resolve()))
            raise PolicyError(f"inheritance cycle: {names}", display, line)
        parent_display = _display(parent_path, parent_ref) if not _is_path(parent_ref) else str(parent_path)
        parent = _load(parent_path, parent_ref, seen + (path.resolve(),), parent_display)

    mine: dict[str, list[Rule]] = {}
    for name, rule, line in rules:
        earlier = mine.setdefault(name, [])
        if earlier and not earlier[-1].when:
            raise PolicyError(f"rule for {name!r} is never used: the rule at {earlier[-1].where} decides every {name} call",
                              display, line)
        earlier.append(rule)

    syscalls = dict(parent.syscalls) if parent else {}
    syscalls.update({name: tuple(r) for name, r in mine.items()})
    default = header.get("default") or (parent.default if parent else ENOSYS)
    name = path.stem
    return Policy(
        name=name,
        path=path,
        description=header.get("description", ""),
        default=default,
        syscalls=dict(sorted(syscalls.items())),
        chain=(name,) + (parent.chain if parent else ()),
        files=(path,) + (parent.files if parent else ()),
    )


def _syntax_error(e: tomllib.TOMLDecodeError, display: str, text: str) -> PolicyError:
    msg = str(e)
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
    if m:
        return PolicyError(f"TOML syntax error: {msg[:m.start()]} (column {m.group(2)})", display, int(m.group(1)))
    m = re.search(r"\s*\(at end of document\)$", msg)
    line = max(1, len(text.splitlines()))
    return PolicyError(f"TOML syntax error: {msg[:m.start()] if m else msg} (at end of file)", display, line)
