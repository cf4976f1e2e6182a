"""Build sbx's C parts and package data into the wheel, so nothing compiles at run time.

- `sandbox/box/starter.c` becomes `sandbox/_bin/sbx-starter`, a static executable
  spawned for each box (it builds the box and is its init), and
  `sandbox/box/spawner.c` becomes `sandbox/_bin/sbx-spawner`, another (box init
  execs it inside the box, where the host's libraries may not be).
- `fuse_overlay/shim.c` becomes `fuse_overlay/_bin/sbx-fuse-shim.so`, loaded
  by the FUSE daemon before pyfuse3.
- `policies/*.toml` (top level, where a reader looks for them) become
  `sandbox/policies/`, read with importlib.resources, each with its filters
  compiled (`NAME.filters.json`, sandbox/seccomp/prebuilt.py).

A build without a C compiler, libc's static archive or the libfuse3 headers
fails here, naming what is missing, rather than producing a wheel that
cannot run.  Everything else is in pyproject.toml.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _compiler() -> list[str]:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("sbx build: no C compiler (install gcc and libc6-dev)")
    return shlex.split(cc)


def _fuse_cflags() -> list[str]:
    try:
        out = subprocess.run(["pkg-config", "--cflags", "fuse3"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit("sbx build: pkg-config cannot find fuse3 (install pkg-config and libfuse3-dev)") from None
    return shlex.split(out)


def _compile(args: list[str], what: str) -> None:
    proc = subprocess.run([*_compiler(), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sbx build: compiling the {what} failed:\n{proc.stderr}")


class BuildWithC(build_py):
    def run(self) -> None:
        super().run()
        out = Path(self.build_lib)
        starter = out / "sandbox" / "_bin" / "sbx-starter"
        spawner = out / "sandbox" / "_bin" / "sbx-spawner"
        shim = out / "fuse_overlay" / "_bin" / "sbx-fuse-shim.so"
        for target in (spawner, shim):
            target.parent.mkdir(parents=True, exist_ok=True)
        for binary, source in ((starter, "starter"), (spawner, "spawner")):
            _compile(["-O2", "-static", "-s", "-o", str(binary), str(HERE / "sandbox" / "box" / f"{source}.c")], source)
        _compile(["-O2", "-shared", "-fPIC", *_fuse_cflags(), "-o", str(shim), str(HERE / "fuse_overlay" / "shim.c"),
                  "-ldl"], "libfuse shim")
        policies = out / "sandbox" / "policies"
        policies.mkdir(parents=True, exist_ok=True)
        for src in sorted((HERE / "policies").glob("*.toml")):
            shutil.copyfile(src, policies / src.name)
        _prebuild_filters(out, policies)


def _prebuild_filters(build_lib: Path, policies: Path) -> None:
    """The shipped policies' filters, compiled now with the package just built (sandbox/seccomp/prebuilt.py), so that no
    box under one compiles it at run time."""
    build_lib, policies = build_lib.resolve(), policies.resolve()
    code = "import sys; from pathlib import Path; from sandbox.seccomp.prebuilt import build; build(Path(sys.argv[1]))"
    path = os.pathsep.join(p for p in (str(build_lib), os.environ.get("PYTHONPATH")) if p)  # pip's build env too
    proc = subprocess.run([sys.executable, "-c", code, str(policies)], capture_output=True, text=True,
                          cwd=build_lib, env={**os.environ, "PYTHONPATH": path})
    if proc.returncode != 0:
        raise SystemExit(f"sbx build: compiling the shipped policies failed (libseccomp and pyseccomp are needed "
                         f"to build the wheel):\n{proc.stderr}")


class BinaryDistribution(Distribution):
    """The wheel carries machine code: tag it for this platform, not as pure Python."""

    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_py": BuildWithC}, distclass=BinaryDistribution)
