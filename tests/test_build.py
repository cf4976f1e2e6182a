"""`sbx build`: a Containerfile into an image, a layer per step, cached; the context and the RUNs are hostile."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import host_processes_matching, sbx
from image_helpers import Entry, busybox_rootfs, layer_tar


@pytest.fixture(autouse=True)
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store of the test's own, with the busybox image `bb` in it."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert sbx("image", "import", str(busybox_rootfs(tmp_path / "bbroot")), "--name", "bb").returncode == 0
    return tmp_path / "data" / "sbx" / "images"


def context(tmp_path: Path, containerfile: str, files: dict[str, str] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Containerfile").write_text(containerfile)
    for name, text in (files or {}).items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(text)
    return ctx


def left_in(store: Path) -> list[str]:
    """What a build left in the store's scratch dir (nothing, once it ended)."""
    return sorted(os.listdir(store / "tmp"))


STEPS = """\
FROM bb
ARG GREETING=hi
ENV APP=/app \\
    MODE=test
WORKDIR /app
COPY app/ ./
COPY app/greeting /tmp/g
RUN cat /tmp/g > from-tmp && echo "$GREETING $MODE" > arg && id -u > who && ls -A /
RUN ["/bin/sh", "-c", "echo exec-form > /app/exec"]
USER 1000
EXPOSE 8080
LABEL org.example.role="a test"
VOLUME /data
ENTRYPOINT ["/bin/sh"]
CMD ["/app/run.sh", "x"]
"""


def test_a_containerfile_builds_a_layer_per_step_and_the_image_runs(tmp_path: Path, store: Path) -> None:
    ctx = context(tmp_path, STEPS, {"app/greeting": "hello\n", "app/run.sh": 'echo from-script "$@" $APP\n'})
    r = sbx("build", "-t", "demo:1", "--build-arg", "GREETING=hey", str(ctx), timeout=120)
    assert r.returncode == 0, r.stderr
    name, digest = r.stdout.decode().split()
    assert name == "demo:1" and digest.startswith("sha256:")
    said = r.stderr.decode()
    assert "STEP 7/14: RUN cat /tmp/g" in said and "STEP 3/14: ENV APP=/app MODE=test\n" in said and said.count("--> sha256:") == 4, said
    # the RUN saw the image's own root: no /box, nothing of sbx's but the mounts a box needs
    root = said.split("ls -A /\n", 1)[1].split("-->", 1)[0].split()
    assert "box" not in root and {"app", "bin", "tmp", "proc", "dev"} <= set(root), said
    ran = sbx("run", "--image", "demo:1")
    assert (ran.returncode, ran.stdout) == (0, b"from-script x /app\n"), ran.stderr
    files = sbx("run", "--image", "demo:1", "--", "-c",  # (after the Entrypoint, /bin/sh)
                "cat from-tmp arg who exec; stat -c '%u %a %n' /app/run.sh /app/arg; id -u; pwd")
    assert files.stdout.decode().splitlines() == ["hello", "hey test", "0", "exec-form", "0 644 /app/run.sh",
                                                  "0 644 /app/arg", "1000", "/app"], files.stderr
    config = json.loads(sbx("image", "inspect", "demo:1").stdout)["config"]["config"]
    assert config["User"] == "1000" and config["ExposedPorts"] == {"8080/tcp": {}}
    assert config["Labels"] == {"org.example.role": "a test"} and "MODE=test" in config["Env"]
    assert (config["Entrypoint"], config["Cmd"], config["Volumes"]) == (["/bin/sh"], ["/app/run.sh", "x"],
                                                                         {"/data": {}})
    assert len(json.loads(sbx("image", "inspect", "demo:1").stdout)["layers"]) == 5
    # the layers hold what the steps wrote, and none of the mount points box init made for the RUNs
    layers = [p / "root" for p in (store / "layers").iterdir()]
    made = {str(f.relative_to(layer)) for layer in layers for f in layer.rglob("*")}
    assert {"app/arg", "app/exec", "tmp/g", "app/run.sh"} <= made and "box" not in made
    assert not any(m.startswith(("proc", "dev", "run")) for m in made), made
    assert left_in(store) == []


def test_a_second_build_is_all_cache_and_a_change_builds_from_there(tmp_path: Path, store: Path) -> None:
    ctx = context(tmp_path, STEPS, {"app/greeting": "hello\n", "app/run.sh": "echo x\n"})
    first = sbx("build", "-t", "demo:1", str(ctx), timeout=120)
    again = sbx("build", "-t", "demo:2", str(ctx), timeout=120)
    assert first.returncode == again.returncode == 0, again.stderr
    assert again.stderr.decode().count("--> Using cache") == 4 and first.stdout.split()[1] == again.stdout.split()[1]
    (ctx / "app" / "greeting").write_text("changed\n")  # the first COPY's content: it and what follows again
    changed = sbx("build", "-t", "demo:3", str(ctx), timeout=120).stderr.decode()
    assert changed.count("--> Using cache") == 0 and changed.count("--> sha256:") == 4, changed
    other_arg = sbx("build", "-t", "demo:4", "--build-arg", "GREETING=yo", str(ctx), timeout=120).stderr.decode()
    assert other_arg.count("--> Using cache") == 2, other_arg  # the COPYs; the RUNs see another GREETING
    nocache = sbx("build", "--no-cache", "-t", "demo:5", str(ctx), timeout=120).stderr.decode()
    assert "Using cache" not in nocache


def test_the_ignore_file_leaves_paths_out(tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM bb\nCOPY . /ctx/\n",
                  {"keep.txt": "k", "secret.env": "s", "logs/a.log": "l", "logs/keep.log": "k", "sub/x.tmp": "t",
                   ".containerignore": "*.env\nlogs\n!logs/keep.log\n**/*.tmp\n"})
    assert sbx("build", "-t", "ign", str(ctx), timeout=120).returncode == 0
    r = sbx("run", "--image", "ign", "--", "sh", "-c", "cd /ctx && ls -A . logs sub 2>&1")
    listed = r.stdout.decode().split()
    assert "keep.txt" in listed and "keep.log" in listed and "Containerfile" in listed
    assert not {"secret.env", "a.log", "x.tmp", ".containerignore"} & set(listed), listed


def test_links_out_of_the_context_are_refused_and_links_inside_copied_as_links(tmp_path: Path, store: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private").write_text("the caller's\n")
    ctx = context(tmp_path, "FROM bb\nCOPY tree /tree\n", {"tree/real": "real\n"})
    (ctx / "tree" / "out").symlink_to(outside / "private")
    (ctx / "tree" / "up").symlink_to("../../outside")
    (ctx / "escape").symlink_to(outside / "private")
    (ctx / "rel-escape").symlink_to("../outside/private")
    assert sbx("build", "-t", "links", str(ctx), timeout=120).returncode == 0
    r = sbx("run", "--image", "links", "--", "sh", "-c", "ls -l /tree | cut -c1; cat /tree/out || echo not-followed")
    assert b"the caller's" not in r.stdout and r.stdout.decode().split().count("l") == 2, r.stdout
    for src in ("escape", "rel-escape", "../outside/private", "/../outside/private"):
        (ctx / "Containerfile").write_text(f"FROM bb\nCOPY {src} /x\n")
        refused = sbx("build", "--quiet", str(ctx), timeout=60)
        assert refused.returncode == 125 and len(refused.stderr.splitlines()) == 1, (src, refused.stderr)
        said = refused.stderr.decode()
        assert "a link out of the context (refused)" in said or "is outside the context" in said, said
    assert left_in(store) == []


def test_a_fifo_or_a_hostile_archive_in_the_context_is_refused_without_blocking(tmp_path: Path, store: Path) -> None:
    ctx = context(tmp_path, "FROM bb\nCOPY . /c/\n")
    os.mkfifo(ctx / "pipe")
    r = sbx("build", str(ctx), timeout=60)
    assert r.returncode == 125 and b"pipe is a FIFO: only files, directories and links" in r.stderr, r.stderr
    os.unlink(ctx / "pipe")
    (ctx / "evil.tar").write_bytes(layer_tar([Entry("../../escaped", data=b"x")]))
    (ctx / "Containerfile").write_text("FROM bb\nADD evil.tar /opt/\n")
    r = sbx("build", str(ctx), timeout=60)
    assert r.returncode == 125 and b"leaves the destination" in r.stderr, r.stderr
    assert not (tmp_path / "escaped").exists() and left_in(store) == []
    (ctx / "ok.tar").write_bytes(layer_tar([Entry("d/f", data=b"unpacked\n")]))
    (ctx / "Containerfile").write_text("FROM bb\nADD ok.tar /opt/\n")
    assert sbx("build", "-t", "added", str(ctx), timeout=60).returncode == 0
    assert sbx("run", "--image", "added", "--", "cat", "/opt/d/f").stdout == b"unpacked\n"


def test_a_secret_is_masked_in_a_run_and_never_in_a_layer(tmp_path: Path, store: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-9d81c2")
    ctx = context(tmp_path, "FROM bb\nRUN --mount=type=secret,id=api cat /run/secrets/api; echo; echo built > /b\n")
    r = sbx("build", "-t", "sec", "--secret", f"id=api,src={token}", str(ctx), timeout=120)
    assert r.returncode == 0 and b"tok-9d81c2" not in r.stderr + r.stdout and b"***" in r.stderr, r.stderr
    for path in (store / "layers").rglob("*"):
        assert not path.is_file() or b"tok-9d81c2" not in path.read_bytes(), path
    assert not any(p.name == "secrets" for p in (store / "layers").rglob("*"))
    missing = context(tmp_path, "FROM bb\nRUN --mount=type=secret,id=other true\n")
    refused = sbx("build", "--quiet", str(missing), timeout=60)
    assert refused.returncode == 125 and b"a secret given with sbx build --secret" in refused.stderr


def test_a_failed_run_fails_the_build_and_leaves_nothing(tmp_path: Path, store: Path) -> None:
    ctx = context(tmp_path, "FROM bb\nRUN echo partial > /p\nRUN echo before; exit 3\n")
    r = sbx("build", "-t", "fails", str(ctx), timeout=120)
    assert r.returncode == 1 and b"before\n" in r.stderr
    assert r.stderr.decode().splitlines()[-1] == "sbx: Containerfile:3: RUN: RE: exited with status 3"
    assert sbx("image", "inspect", "fails").returncode == 125 and left_in(store) == []


@pytest.mark.parametrize(("containerfile", "said"), [
    ("RUN true\n", "Containerfile: a Containerfile starts with FROM"),
    ("FROM bb\nFROBNICATE x\n", "Containerfile:2: unknown instruction 'FROBNICATE'"),
    ("FROM bb\nHEALTHCHECK CMD true\n", "Containerfile:2: HEALTHCHECK is not supported"),
    ("FROM nothere\n", "image nothere:latest: not in the store"),
    ("FROM bb\nUSER app\n", "Containerfile:2: USER app: a box runs its program as root (0) or as uid 1000"),
    ("FROM bb\nCOPY missing /x\n", "Containerfile:2: COPY: missing: No such file or directory"),
    ("FROM bb\nADD https://example.com/x /x\n", "a URL is not supported"),
    ("FROM bb\nCOPY --from=stage /a /b\n", "--from is not supported"),
    ("FROM scratch\nRUN true\n", "RUN on scratch"),
])
def test_bad_containerfiles_are_one_line(tmp_path: Path, store: Path, containerfile: str, said: str) -> None:
    r = sbx("build", "--quiet", str(context(tmp_path, containerfile)), timeout=60)
    assert r.returncode == 125 and len(r.stderr.splitlines()) == 1 and said in r.stderr.decode(), r.stderr
    assert left_in(store) == []


def test_an_exported_build_is_read_by_umoci(tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM bb\nRUN mkdir /opt && echo built > /opt/out\nCMD [\"cat\", \"/opt/out\"]\n")
    assert sbx("build", "-t", "exp:1", str(ctx), timeout=120).returncode == 0
    out = tmp_path / "exp.tar"
    assert sbx("image", "export", "exp:1", "-o", str(out)).returncode == 0
    layout = tmp_path / "layout"
    layout.mkdir()
    subprocess.run(["tar", "-xf", str(out), "-C", str(layout)], check=True)
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:1", str(bundle)], check=True,
                   capture_output=True)
    assert (bundle / "rootfs" / "opt" / "out").read_text() == "built\n"
    assert json.loads((bundle / "config.json").read_text())["process"]["args"] == ["cat", "/opt/out"]


def test_a_built_image_exported_runs_in_podman(tmp_path: Path) -> None:
    """The real client: rootless podman loads the exported image and runs its Cmd, with what the RUN made."""
    ctx = context(tmp_path, 'FROM bb\nRUN mkdir /opt && echo built-by-sbx > /opt/out\nCMD ["cat", "/opt/out"]\n')
    assert sbx("build", "-t", "for-podman:1", str(ctx), timeout=120).returncode == 0
    out = tmp_path / "image.tar"
    assert sbx("image", "export", "for-podman:1", "-o", str(out)).returncode == 0
    runroot = tempfile.mkdtemp(prefix="podman-", dir="/tmp")  # (podman wants it shorter than 50 characters)
    podman = ["podman", "--root", str(tmp_path / "podman-root"), "--runroot", runroot, "--storage-driver", "vfs"]
    try:
        loaded = subprocess.run([*podman, "load", "-q", "-i", str(out)], capture_output=True, text=True,
                                timeout=120)
        assert loaded.returncode == 0, loaded.stderr
        name = loaded.stdout.strip().rsplit(" ", 1)[-1]
        ran = subprocess.run([*podman, "run", "--rm", "--net", "none", name], capture_output=True, text=True,
                             timeout=120)
        assert (ran.returncode, ran.stdout) == (0, "built-by-sbx\n"), ran.stderr
    finally:
        subprocess.run([*podman, "system", "reset", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(runroot, ignore_errors=True)


def test_copy_takes_chown_and_chmod(tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM bb\nCOPY --chown=1000:1000 --chmod=640 app /home/app/\nUSER 1000\n"
                            "RUN echo mine >> /home/app/f && stat -c '%u:%g %a' /home/app/f\n", {"app/f": "x\n"})
    r = sbx("build", "-t", "owned", str(ctx), timeout=120)
    assert r.returncode == 0 and b"1000:1000 640\n" in r.stderr, r.stderr


def test_a_killed_build_leaves_nothing_the_next_build_keeps(tmp_path: Path, store: Path) -> None:
    """SIGKILL in the middle of a RUN: the box and its daemon die with sbx; the step's upper and the build's
    scratch dir are the next build's to remove.  And two builds at once of the same steps both succeed."""
    ctx = context(tmp_path, "FROM bb\nRUN echo started; sleep 1000.24680\n")
    build = subprocess.Popen([sys.executable, "-m", "sandbox", "build", str(ctx)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not host_processes_matching("1000.24680") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert host_processes_matching("1000.24680")
        build.send_signal(signal.SIGKILL)
        build.wait()
        deadline = time.monotonic() + 10
        while host_processes_matching("1000.24680") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert host_processes_matching("1000.24680") == []
    finally:
        build.kill()
        build.wait()
    assert left_in(store) != []  # what the killed one could not remove
    (ctx / "Containerfile").write_text("FROM bb\nRUN echo same > /f\n")
    both = [subprocess.Popen([sys.executable, "-m", "sandbox", "build", "-t", f"twin:{i}", str(ctx)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    for b in both:
        _, err = b.communicate(timeout=120)
        assert b.returncode == 0, err
    assert left_in(store) == []
    assert sbx("run", "--image", "twin:1", "--", "cat", "/f").stdout == b"same\n"


def test_f_names_a_containerfile_from_the_working_directory(tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM bb\nRUN exit 7\n", {"data": "in the context\n"})
    (tmp_path / "Other.containerfile").write_text("FROM bb\nCOPY data /data\n")
    r = sbx("build", "-q", "-f", str(tmp_path / "Other.containerfile"), "-t", "other", str(ctx), timeout=120)
    assert r.returncode == 0, r.stderr
    assert sbx("run", "--image", "other", "--", "cat", "/data").stdout == b"in the context\n"
    os.mkfifo(tmp_path / "fifo")
    fifo = sbx("build", "-q", "-f", str(tmp_path / "fifo"), str(ctx), timeout=60)
    assert fifo.returncode == 125 and fifo.stderr.endswith(b"fifo: not a regular file\n"), fifo.stderr
