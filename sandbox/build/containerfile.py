"""A Containerfile (Dockerfile) read into typed instructions, as `docker build` reads one.

Lines join on a trailing backslash; `#` starts a comment only at the
start of a line; instruction names are case-insensitive.  Arguments in the
JSON form (`["a", "b"]`) are an exec form, anything else a shell form.
Variables (`$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME:+word}`, `\\$`
for a dollar) are replaced when the instruction is worked out (builder.py),
in the instructions docker replaces them in, never in RUN's shell form, CMD
or ENTRYPOINT (the shell does that).  What docker has and sbx does not
(heredocs, ONBUILD, HEALTHCHECK, a URL in ADD, `--from` of another stage)
is refused in one line that names the line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from ..errors import ConfigError
from ..record import Record

KNOWN = ("FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "ENTRYPOINT", "CMD", "LABEL", "EXPOSE",
         "VOLUME", "SHELL", "MAINTAINER", "STOPSIGNAL")
REFUSED = {
    "ONBUILD": "ONBUILD (triggers for later builds) is not supported",
    "HEALTHCHECK": "HEALTHCHECK is not supported (sbx runs no health checks)",
}
MAX_SIZE = 1 << 20
"""A Containerfile's size: it is read whole."""
_VAR = re.compile(r"\\\$|\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
_FLAG = re.compile(r"--([a-z-]+)=(\S*)")


class Instruction(Record):
    line: int
    """Where it starts in the file, for messages."""
    name: str
    """Upper case."""
    args: str
    """The rest of the line, flags taken off."""
    flags: tuple[tuple[str, str], ...] = ()
    """`--name=value` before the arguments (COPY --chown=, RUN --mount=, ...)."""
    exec_form: tuple[str, ...] | None = None
    """The arguments as a JSON array, when written as one."""

    def where(self, path: str) -> str:
        return f"{path}:{self.line}: {self.name}"

    def flag(self, name: str) -> str | None:
        return next((v for k, v in self.flags if k == name), None)


def parse(text: str, path: str) -> list[Instruction]:
    """The file's instructions; an unknown or malformed one is a ConfigError naming PATH:LINE."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction is dropped, as docker does
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].rstrip())
            continue
        pending.append(stripped)
        out.append(_instruction(" ".join(p for p in pending if p), start, path))
        pending = []
    if pending:
        out.append(_instruction(" ".join(pending), start, path))
    if not out or out[0].name not in ("FROM", "ARG") or not any(i.name == "FROM" for i in out):
        raise ConfigError(f"{path}: a Containerfile starts with FROM (ARG may come before it)")
    return out


def _instruction(line: str, number: int, path: str) -> Instruction:
    word, _, rest = line.partition(" ")
    name = word.upper()
    if name in REFUSED:
        raise ConfigError(f"{path}:{number}: {REFUSED[name]}")
    if name not in KNOWN:
        raise ConfigError(f"{path}:{number}: unknown instruction {word!r}")
    rest = rest.strip()
    flags: list[tuple[str, str]] = []
    if name in ("RUN", "COPY", "ADD", "FROM"):
        while (m := _FLAG.match(rest)) is not None:
            flags.append((m.group(1), m.group(2)))
            rest = rest[m.end():].lstrip()
    if rest.startswith("<<"):
        raise ConfigError(f"{path}:{number}: {name} with a heredoc is not supported")
    exec_form = None
    if rest.startswith("["):
        try:
            parsed = json.loads(rest)
        except ValueError:
            parsed = None  # docker runs a line that is no JSON array as a shell form
        if isinstance(parsed, list) and all(isinstance(a, str) for a in parsed):
            exec_form = tuple(parsed)
    return Instruction(number, name, rest, tuple(flags), exec_form)


def substitute(text: str, values: Mapping[str, str]) -> str:
    """`text` with $NAME, ${NAME}, ${NAME:-word} and ${NAME:+word} replaced from `values` (unset: empty)."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "\\$":
            return "$"
        name = m.group(1) or m.group(4)
        value = values.get(name, "")
        if m.group(2) == "-":
            return value or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if value else ""
        return value
    return _VAR.sub(one, text)


def words(text: str, where: str) -> list[str]:
    """Space-separated arguments, with double or single quotes grouping (as COPY's and LABEL's are read)."""
    out: list[str] = []
    current: list[str] = []
    quote = ""
    started = False
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
            else:
                current.append(ch)
        elif ch in "\"'":
            quote, started = ch, True
        elif ch.isspace():
            if started:
                out.append("".join(current))
                current, started = [], False
        else:
            current.append(ch)
            started = True
    if quote:
        raise ConfigError(f"{where}: an unterminated quote")
    if started:
        out.append("".join(current))
    return out


def pairs(text: str, where: str, legacy: bool) -> list[tuple[str, str]]:
    """`K=V K2="v 2"` (ENV, LABEL, ARG); with `legacy`, `ENV K some value` too."""
    items = words(text, where)
    if legacy and items and "=" not in items[0]:
        key, _, value = text.strip().partition(" ")
        return [(key, value.strip())]
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where}: expected KEY=VALUE, not {item!r}")
        out.append((key, value))
    return out
