"""Shared fixtures: a fresh box per test; async tests on anyio (trio unless a module asks for more); and the check
that the suite tests what users install."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import fuse_overlay
import sandbox
from image_helpers import views
from sandbox import Sandbox
from sandbox.box.userns import detect
from sandbox.images import owned

CHECKOUT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test the source tree: a test that passes only from a checkout is a failing test."""
    for package in (sandbox, fuse_overlay):
        where = Path(package.__file__).resolve()
        if where.is_relative_to(CHECKOUT):
            raise pytest.UsageError(f"{package.__name__} was imported from the source tree ({where}), not from an "
                                    f"installed wheel: run the suite with ./dev test, or from tests/ with a venv's python")


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Every async test runs on anyio's plugin (marked before that plugin looks at it)."""
    if collector.funcnamefilter(name) and inspect.iscoroutinefunction(obj):
        pytest.mark.anyio(obj)


@pytest.fixture(scope="session")
def debian_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian 12's minbase with redis-server, built once per run without root from Debian's mirror (mmdebstrap): the
    real image the image and living-box tests run."""
    rootfs = tmp_path_factory.mktemp("debian") / "debian.tar"
    subprocess.run(["mmdebstrap", "--quiet", "--mode=unshare", "--variant=minbase", "--include=redis-server",
                    "bookworm", str(rootfs)], check=True, timeout=900, stdout=subprocess.DEVNULL)
    return rootfs


@pytest.fixture(autouse=True)
def _image_views_removed(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test's image store (`XDG_DATA_HOME=tmp_path/data`) may hold views of in-image owners that the kernel union
    made (sandbox/images/owned.py), owned by the subordinate ids: removed after the test as `sbx image prune` does,
    since pytest cannot remove them from its old temporary dirs."""
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    made = views(tmp / "data" / "sbx" / "images") if tmp is not None else []
    if made:
        owned.remove(made, detect())


@pytest.fixture
def anyio_backend() -> str:
    """The event loop of async tests; test_api.py runs its tests on both."""
    return "trio"


@pytest.fixture
def user() -> str | None:
    """The `box` fixture's `user`: a module whose tests hold for root of the box too overrides it with both."""
    return None


@pytest.fixture
def joined() -> bool:
    """Whether the `box` fixture's programs are `sbx exec`'s, in a running detached box: a module whose hostile
    tests hold for them too overrides it with both."""
    return False


@pytest.fixture
async def box(user: str | None, joined: bool, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Sandbox]:
    if not joined:
        async with Sandbox(user=user) as sandbox:
            yield sandbox
        return
    from sandbox.living import detach, state
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg-run"))
    (tmp_path / "xdg-run").mkdir(mode=0o700)
    cli = [sys.executable, "-m", "sandbox"]
    made = subprocess.run([*cli, "run", "-d", "--name", "hostile", *(["--user", user] if user else []), "--",
                           "sleep", "infinity"], capture_output=True)
    assert made.returncode == 0, made.stderr
    try:
        async with Sandbox(join=state.status("hostile").box, **detach.exec_config("hostile")) as sandbox:
            yield sandbox
    finally:
        subprocess.run([*cli, "rm", "-f", "hostile"], capture_output=True)
