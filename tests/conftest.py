"""Shared fixtures: a fresh box per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sandbox import Sandbox


@pytest.fixture
async def box() -> AsyncIterator[Sandbox]:
    async with Sandbox() as sandbox:
        yield sandbox
