"""Shared fixtures: a fresh box per test; and the check that the suite tests what users install."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import fuse_overlay
import sandbox
from sandbox import Sandbox

CHECKOUT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test the source tree: a test that passes only from a checkout is a failing test."""
    for package in (sandbox, fuse_overlay):
        where = Path(package.__file__).resolve()
        if where.is_relative_to(CHECKOUT):
            raise pytest.UsageError(f"{package.__name__} was imported from the source tree ({where}), not from an "
                                    f"installed wheel: run the suite with ./dev test, or from tests/ with a venv's python")


@pytest.fixture
async def box() -> AsyncIterator[Sandbox]:
    async with Sandbox() as sandbox:
        yield sandbox
