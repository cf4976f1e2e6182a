"""Secrets (`--secret`, `Sandbox(secrets=...)`): a file only the program reads, and masked in all sbx relays."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from helpers import sbx
from sandbox import ConfigError, Relay, Sandbox, Status, Tap, run_pipeline
from sandbox.run.mask import Mask

VALUE = b"tok-3f9a1c77"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_bytes(VALUE)
    path.chmod(0o600)
    return path


def test_a_stream_is_masked_whatever_its_reads_split() -> None:
    """Every split of a stream into reads gives what masking it whole gives (the masker keeps back an end that
    may begin a secret, and a secret's start that is shown is shown with the whole of it)."""
    secrets = (b"hunter2", b"s3cr3t-token", b"abcd")
    text = b"x hunter2 y s3cr3t-tokenabcd hunt ab\ns3cr3t-toke" + b"abc" + b"abcdabcd\n"
    for size in range(1, 9):
        mask, out = Mask(secrets), b""
        for i in range(0, len(text), size):
            out += mask.feed(text[i:i + size])
        out += mask.flush()
        assert out == Mask(secrets).apply(text) and not any(s in out for s in secrets), size
    assert Mask(()).feed(b"as is") == b"as is" and not Mask((b"",))


def test_a_secret_is_a_file_only_the_program_reads_and_it_is_masked_as_it_is_printed(secret_file: Path) -> None:
    script = ("stat -c '%a %u:%g' /run/secrets/api; id -u; id -g; cat /run/secrets/api; echo; "
              "printf tok-3f9; sleep 0.2; printf 'a1c77 split\\n'; cat /run/secrets/api >&2; "
              "echo x > /run/secrets/api || echo refused; touch /run/secrets/new || echo refused; "
              "rm -f /run/secrets/api || echo refused; grep -c ' /run/secrets ' /proc/self/mounts")
    r = sbx("run", "--secret", f"id=api,src={secret_file}", "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    mode, owner = lines[0].split()
    assert (mode, owner) == ("400", f"{lines[1]}:{lines[2]}")
    assert lines[3:6] == ["***", "*** split", "refused"] and lines[6:8] == ["refused", "refused"], lines
    assert lines[8] == "1"  # a mount of its own: nothing the program writes reaches it, nor an upper below it
    assert VALUE not in r.stdout + r.stderr and r.stderr.startswith(b"***")


def test_a_secret_from_the_environment_and_the_dry_run_names_it_only(secret_file: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI_TOKEN", "from-env-5521")
    r = sbx("run", "--secret", "id=ci,env=CI_TOKEN", "--", "sh", "-c", "cat /run/secrets/ci; echo; echo from-env-5521")
    assert (r.returncode, r.stdout) == (0, b"***\n***\n"), r.stderr
    dry = sbx("run", "--dry-run", "--secret", f"id=api,src={secret_file}", "--", "true")
    assert b"/run/secrets: api (a read-only tmpfs; mode 0400" in dry.stdout
    assert VALUE not in dry.stdout and VALUE.hex().encode() not in dry.stdout


@pytest.mark.parametrize(("spec", "said"), [
    ("id=../x,src={file}", "a name of letters, digits"),
    ("id=api", "expected id=NAME,src=FILE or id=NAME,env=VAR"),
    ("id=api,src={file},env=X", "expected id=NAME,src=FILE or id=NAME,env=VAR"),
    ("id=api,src={file},mode=0444", "expected id=NAME,src=FILE or id=NAME,env=VAR"),
    ("id=api,src=/nonexistent/token", "/nonexistent/token"),
    ("id=api,env=SBX_NOT_SET_ANYWHERE", "$SBX_NOT_SET_ANYWHERE is not set"),
    ("id=big,src={big}", "more than 65536"),
])
def test_a_bad_secret_is_one_line_and_nothing_runs(spec: str, said: str, secret_file: Path, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    r = sbx("run", "--secret", spec.format(file=secret_file, big=big), "--", "sh", "-c", "echo ran")
    assert (r.returncode, r.stdout, r.stderr.count(b"\n")) == (125, b"", 1), r.stderr
    assert said.encode() in r.stderr


def test_a_secret_link_in_a_dir_the_box_writes_is_not_followed(secret_file: Path, tmp_path: Path) -> None:
    """A run with a writable bind may have planted a link there to a file of the caller's."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    (shared / "token").symlink_to(secret_file)
    r = sbx("run", "--bind", str(shared), "--secret", f"id=api,src={shared}/token", "--", "cat", "/run/secrets/api")
    assert r.returncode == 125 and b"links there are never followed" in r.stderr, r.stderr


async def test_the_api_masks_what_it_captures_and_what_it_relays(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a name of letters"):
        Sandbox(secrets={"a/b": b"x"})
    read, write = os.pipe()
    async with Sandbox(secrets={"db": VALUE, "other": "pa55-w0rd"}) as box:
        captured = await box.run(["sh", "-c", "cat /run/secrets/db; echo; printf 'pa55-'; sleep 0.1; "
                                              "echo 'w0rd' >&2; cat /run/secrets/other"])
        relayed = await box.run(["sh", "-c", "printf tok-3f9a; sleep 0.2; printf '1c77\\n'"], stdout=Relay(write))
    os.close(write)
    with os.fdopen(read, "rb") as f:
        streamed = f.read()
    assert captured.status == Status.OK and relayed.status == Status.OK
    assert (captured.stdout, captured.stderr) == (b"***\npa55-***", b"w0rd\n"), captured
    assert streamed == b"***\n"


async def test_a_tap_keeps_the_secret_masked_and_the_reader_gets_it_whole() -> None:
    """A pipe between two programs carries their bytes as they are; what the caller is shown of it is masked."""
    tap = Tap(1000)
    async with Sandbox(secrets={"db": VALUE}) as a, Sandbox() as b:
        ra, rb = await run_pipeline(a, ["cat", "/run/secrets/db"], b, ["sh", "-c", f"grep -c '^{VALUE.decode()}$'"],
                                    tap=tap)
    assert (ra.status, rb.status, rb.stdout) == (Status.OK, Status.OK, b"1\n")
    assert bytes(tap.data) == b"***"


def test_a_commit_holds_no_secret(tmp_path: Path, secret_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret's tmpfs is a mount of its own: what the program could copy elsewhere is its doing, but the
    file itself is never in the upper, so never in a commit."""
    from image_helpers import OciImage, busybox_rootfs, tar_of
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    OciImage([tar_of(rootfs)]).write(tmp_path / "oci")
    assert sbx("image", "import", str(tmp_path / "oci"), "--name", "base").returncode == 0
    r = sbx("run", "--image", "base", "--fs", "fuse", "--commit", "next", "--secret", f"id=api,src={secret_file}",
            "--", "sh", "-c", "cat /run/secrets/api; echo; ls -A /run/secrets")
    assert r.returncode == 0 and r.stdout == b"***\napi\n", r.stderr
    layers = subprocess.run(["grep", "-rl", VALUE.decode(), str(tmp_path / "data")], capture_output=True)
    assert layers.stdout == b"", layers.stdout  # not in any layer, blob or upper of the store
    seen = sbx("run", "--image", "next", "--", "sh", "-c", "ls -A /run/secrets 2>&1; true")
    assert re.fullmatch(rb"(ls: .*No such file or directory\n)?", seen.stdout), seen.stdout
