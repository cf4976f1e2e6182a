"""The shipped policies' seccomp filters, compiled when the wheel is built (setup.py), shipped as package data.

A box under a shipped policy then neither parses TOML nor loads libseccomp:
some 15-40 ms of CPU and 20 ms of imports per process (`sbx run`, `sbx judge`).
Each policy's file records the sha256 of every policy file it was read from
(its inheritance chain); where one differs now (an edited installation), the
file is not used and the policy is compiled from what is there, as a user's
policy always is.  Nothing here is written at run time: a filter read from a
place someone else can write would decide what a program may call on their
word (compiler.py).
"""

from __future__ import annotations

import binascii
import json
import os
from typing import TYPE_CHECKING

from ..record import Record
from ..sha256 import hexdigest
from ..shipped import POLICY_DIR

if TYPE_CHECKING:
    from pathlib import Path

_SUFFIX = ".filters.json"


class Filters(Record):
    """A policy's compiled forms: BPF, and whether the spawner may count its refusals (compiler.py), both with
    memory no process maps allowed (True) and refused (False; fallback.py), and whether it lets a program make
    no process (fallback.one_process)."""

    bpf: dict[bool, tuple[bytes, bool]]
    one_process: bool


_found: dict[str, Filters | None] = {}


def load(name: str) -> Filters | None:
    """The filters built for the shipped policy `name`, or None: not a shipped policy's name, none built, or built
    from policy files that are not the ones installed now."""
    if name not in _found:
        _found[name] = _read(name)
    return _found[name]


def _read(name: str) -> Filters | None:
    if "/" in name or name.endswith(".toml") or name.startswith("."):
        return None  # a file of the user's: compiled per run
    try:
        data = json.loads(_read_bytes(os.path.join(POLICY_DIR, f"{name}{_SUFFIX}")))
        for file, digest in data["sources"].items():
            if "/" in file or hexdigest(_read_bytes(os.path.join(POLICY_DIR, file))) != digest:
                return None
        return Filters({unmapped == "unmapped": (binascii.a2b_base64(bpf), counted)
                        for unmapped, (bpf, counted) in data["bpf"].items()}, bool(data["one_process"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def build(policy_dir: Path) -> list[str]:
    """Compile every shipped policy in `policy_dir` next to it (the wheel's build); the names built."""
    from ..run import fallback
    from . import compiler
    from .policy import load_policy

    built = []
    for source in sorted(policy_dir.glob("*.toml")):
        if source.stem.startswith("_"):
            continue
        policy = load_policy(str(source))
        forms = {}
        for unmapped, form in (("unmapped", policy), ("mapped", fallback.without_unmapped_memory(policy))):
            compiled = compiler.compile(form)
            forms[unmapped] = (binascii.b2a_base64(compiled.bpf, newline=False).decode(), compiled.counts_refusals)
        sources = {}
        for file in policy.files:
            if file.resolve().parent != policy_dir.resolve():
                raise ValueError(f"{source.name}: reads {file}, outside the shipped policies")
            sources[file.name] = hexdigest(file.read_bytes())
        data = {"sources": sources, "bpf": forms, "one_process": fallback.one_process(policy)}
        (policy_dir / f"{source.stem}{_SUFFIX}").write_text(json.dumps(data, sort_keys=True))
        built.append(source.stem)
    if not built:
        raise ValueError(f"{policy_dir}: no policy to build")
    return built
