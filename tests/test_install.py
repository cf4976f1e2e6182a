"""What a user installs: the wheel carries everything, and nothing at run time compiles or reads a cache.

The suite itself runs against the installed wheel (conftest refuses the source
tree); these tests pin down what that install must contain and that it works
on a machine whose compiler is broken, with an empty home.
"""

from __future__ import annotations

import importlib.metadata
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import fuse_overlay
import sandbox
from helpers import sbx

BIN = Path(sys.executable).parent
VERSION = importlib.metadata.version("sbx")


@pytest.fixture
def broken_toolchain(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose cc, gcc and pkg-config only leave a mark, with an empty home and cache."""
    stubs, marks = tmp_path / "stubs", tmp_path / "marks"
    stubs.mkdir()
    marks.mkdir()
    for name in ("cc", "gcc", "pkg-config"):
        stub = stubs / name
        stub.write_text(f"#!/bin/sh\ntouch {marks}/{name}\nexit 1\n")
        stub.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PATH": f"{stubs}:{BIN}:/usr/bin:/bin", "HOME": str(home),
           "XDG_CACHE_HOME": str(home / ".cache"), "PYTHONDONTWRITEBYTECODE": "1"}
    return env, marks


def _run(argv: list[str], env: dict[str, str], cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, env=env, cwd=cwd, input=stdin, capture_output=True, timeout=300)


def test_the_wheel_ships_its_c_parts_and_policies() -> None:
    package = Path(sandbox.__file__).parent
    for name in ("sbx-starter", "sbx-spawner"):
        binary = package / "_bin" / name
        assert binary.is_file() and binary.stat().st_mode & stat.S_IXUSR
        assert binary.read_bytes()[:4] == b"\x7fELF"
    assert (Path(fuse_overlay.__file__).parent / "_bin" / "sbx-fuse-shim.so").is_file()
    assert sorted(p.stem for p in (package / "policies").glob("*.toml")) == ["build", "compile", "default", "permissive",
                                                                         "strict"]
    assert not list(package.rglob("*.c")) and not list(Path(fuse_overlay.__file__).parent.rglob("*.c"))


def test_the_venv_has_no_system_site_packages() -> None:
    """Every dependency is declared: Debian's own libseccomp binding is out of reach, pyseccomp serves."""
    cfg = (Path(sys.prefix) / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg
    probe = subprocess.run([sys.executable, "-c", "import seccomp"], capture_output=True)
    assert probe.returncode != 0 and b"ModuleNotFoundError" in probe.stderr
    required = {r.split(">")[0].split("=")[0].split("[")[0].strip()
                for r in importlib.metadata.requires("sbx") or [] if "extra" not in r}
    assert required == {"anyio", "trio", "pyfuse3", "pyseccomp", "zstandard", "pyyaml", "fastapi", "hypercorn",
                        "python-multipart", "prometheus-client", "httpx", "redis"}


def test_versions_come_from_the_package_metadata() -> None:
    assert sbx("--version").stdout.decode().strip() == f"sbx {VERSION}"
    overlay = subprocess.run([str(BIN / "sbx-overlayfs"), "--version"], capture_output=True, timeout=60)
    assert overlay.stdout.decode().strip() == f"sbx-overlayfs {VERSION}"


def test_runs_judges_and_serves_with_a_broken_compiler_and_an_empty_home(
        broken_toolchain: tuple[dict[str, str], Path], tmp_path: Path) -> None:
    env, marks = broken_toolchain
    sbx_bin = str(BIN / "sbx")

    run = _run([sbx_bin, "run", "--policy", "strict", "--", "/bin/echo", "hi"], env, tmp_path)
    assert (run.returncode, run.stdout) == (0, b"hi\n"), run.stderr

    union = _run([sbx_bin, "run", "--lower", "/", "--fs", "fuse", "--", "/bin/echo", "union"], env, tmp_path)
    assert (union.returncode, union.stdout) == (0, b"union\n"), union.stderr

    check = _run([sbx_bin, "check", "--json"], env, tmp_path)
    assert check.returncode == 0 and b'"installation"' in check.stdout

    solution = tmp_path / "sol.py"
    solution.write_text("a, b = map(int, input().split())\nprint(a + b)\n")
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "1.in").write_text("1 2\n")
    (tests / "1.out").write_text("3\n")
    judged = _run([sbx_bin, "judge", str(solution), "--tests", str(tests), "--json"], env, tmp_path)
    assert judged.returncode == 0 and b'"OK"' in judged.stdout, judged.stdout + judged.stderr

    api = _run([sys.executable, "-c", (
        "import asyncio, trio\n"
        "from sandbox import Sandbox\n"
        "async def main():\n"
        "    async with Sandbox(policy='strict') as box:\n"
        "        r = await box.run(['/bin/echo', 'api'])\n"
        "        print(r.status.value, r.stdout.decode().strip())\n"
        "asyncio.run(main())\n"
        "trio.run(main)\n"
        "from fuse_overlay import libfuse\n"
        "print('shim', libfuse._shim is not None)\n")], env, tmp_path)
    assert api.stdout.split() == [b"OK", b"api", b"OK", b"api", b"shim", b"True"], api.stderr

    assert sorted(p.name for p in marks.iterdir()) == []  # no compiler, no pkg-config was run
    assert not (Path(env["HOME"]) / ".cache").exists()  # and nothing was built or cached


def test_a_source_tree_that_was_never_built_says_so(tmp_path: Path) -> None:
    """sbx copied without its built parts: one clear line and 125, not an empty policy list."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(Path(sandbox.__file__).parent, copy / "sandbox", ignore=shutil.ignore_patterns("_bin", "policies"))
    shutil.copytree(Path(fuse_overlay.__file__).parent, copy / "fuse_overlay")
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    run = _run([sys.executable, "-m", "sandbox", "run", "--", "/bin/true"], env, copy)
    lines = run.stderr.decode().strip().splitlines()
    assert run.returncode == 125 and len(lines) == 1, run.stderr
    assert "not found" in lines[0] and "pip install" in lines[0]
    listed = _run([sys.executable, "-m", "sandbox", "policy", "list"], env, copy)
    assert listed.returncode == 125 and b"the shipped policies: not found" in listed.stderr
