"""Locate the spawner, `spawner.c`, built once per source version (see fuse_overlay.cbuild)."""

from __future__ import annotations

from pathlib import Path

from fuse_overlay.cbuild import BuildError, build_cached

from .errors import SetupError

SOURCE = Path(__file__).with_name("spawner.c")


def spawner_binary() -> str:
    try:
        return build_cached(SOURCE, "sbx-spawner", ["-O2", "-static"], "spawner")
    except BuildError as exc:
        raise SetupError(str(exc)) from None
