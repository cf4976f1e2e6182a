"""Images: import (rootfs, OCI layout, docker-archive), the store, runs on both union backends, hostile archives."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import free_port, sbx, wait_for_port
from image_helpers import Entry, OciImage, busybox_rootfs, layer_tar, tar_of, views
from sandbox import Sandbox, SandboxPool, Status
from sandbox.box.userns import detect
from sandbox.images import owned
from sandbox.images.store import Store
from sandbox.images.tar import tar_layer
from sandbox.images.unpack import ArchiveError, Caps


@pytest.fixture(autouse=True)
def store_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own store (the API and the command line both find it through XDG_DATA_HOME; conftest.py removes
    the views of owners the kernel union made in it)."""
    home = tmp_path / "data"
    home.mkdir()
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    return home / "sbx" / "images"


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_rootfs(tmp_path_factory.mktemp("busybox") / "root")


@pytest.fixture(params=["fuse", "kernel"])
def fs(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def _nothing_left(store: Path) -> None:
    assert os.listdir(store / "tmp") == [] and os.listdir(store / "layers") == []


def test_a_rootfs_directory_imports_and_runs(rootfs: Path, fs: str) -> None:
    r = sbx("image", "import", str(rootfs), "--name", "bb")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"bb:latest sha256:") and b"layer 1/1" in r.stderr
    run = sbx("run", "--image", "bb", "--fs", fs, "--", "sh", "-c", "cat /etc/motd; pwd; echo x > /box/f && cat /box/f")
    assert (run.returncode, run.stdout) == (0, b"from the image\n/\nx\n"), run.stderr
    listed = json.loads(sbx("image", "ls", "--json").stdout)
    assert [(i["name"], i["layers"]) for i in listed] == [("bb:latest", 1)]


def test_auto_takes_the_kernel_union_unless_the_run_needs_fuse(rootfs: Path, tmp_path: Path) -> None:
    """--fs auto: kernel overlayfs, which with a subordinate id range shows in-image owners too; the FUSE union
    for --commit."""
    assert sbx("image", "import", str(rootfs), "--name", "plain").returncode == 0
    shadow = layer_tar([Entry("etc/secret", data=b"x", mode=0o640, gid=42)])
    OciImage([tar_of(rootfs, as_root=True), shadow]).write(tmp_path / "other")
    assert sbx("image", "import", str(tmp_path / "other"), "--name", "other").returncode == 0
    owned = layer_tar([Entry("home", tarfile.DIRTYPE, mode=0o755), Entry("home/u", tarfile.DIRTYPE, uid=1000)])
    OciImage([tar_of(rootfs, as_root=True), owned]).write(tmp_path / "oci")
    assert sbx("image", "import", str(tmp_path / "oci"), "--name", "owned").returncode == 0
    root_fs = ["--", "sh", "-c", r"sed -n 's/^[^ ]* [^ ]* [^ ]* \/ \/ .* - \([^ ]*\) .*/\1/p' /proc/self/mountinfo"]
    assert sbx("run", "--image", "plain", *root_fs).stdout == b"overlay\n"
    assert sbx("run", "--image", "other", *root_fs).stdout == b"overlay\n"
    # with the suite's subordinate id range, the kernel union shows the program its home too (images/owned.py)
    assert sbx("run", "--image", "owned", *root_fs).stdout == b"overlay\n"
    assert sbx("run", "--image", "owned", "--", "stat", "-c", "%u:%g", "/home/u").stdout == b"1000:0\n"
    assert sbx("run", "--image", "owned", "--idmap", "single", *root_fs).stdout == b"overlay\n"  # not its uid
    assert sbx("run", "--image", "plain", "--commit", "next", *root_fs).stdout == b"fuse.sbx-overlayfs\n"
    assert sbx("run", "--image", "plain", "--", "stat", "-c", "%u:%g", "/etc/motd").stdout == b"0:0\n"


def test_whiteouts_and_opaque_dirs_mean_the_same_on_both_backends(rootfs: Path, tmp_path: Path, fs: str) -> None:
    base = layer_tar([Entry("etc/gone", data=b"old\n"), Entry("d", tarfile.DIRTYPE, mode=0o755),
                      Entry("d/a", data=b"a\n")])
    top = layer_tar([Entry("etc/.wh.gone"), Entry("d/.wh..wh..opq"), Entry("d/b", data=b"b\n")])
    OciImage([tar_of(rootfs), base, top]).write(tmp_path / "oci")
    assert sbx("image", "import", str(tmp_path / "oci"), "--name", "wh").returncode == 0
    run = sbx("run", "--image", "wh", "--fs", fs, "--", "sh", "-c", "ls /etc; ls -a /d")
    assert run.stdout == b"motd\n.\n..\nb\n", run.stderr


@pytest.mark.parametrize("compression", ["", "zstd"])
def test_plain_and_zstd_layers_import(rootfs: Path, tmp_path: Path, compression: str) -> None:
    top = layer_tar([Entry("etc/motd", data=b"compressed\n")])
    OciImage([tar_of(rootfs), top], compression=compression).write(tmp_path / "oci")
    assert sbx("image", "import", str(tmp_path / "oci"), "--name", "z").returncode == 0
    assert sbx("run", "--image", "z", "--", "cat", "/etc/motd").stdout == b"compressed\n"


async def test_a_pool_of_an_image_resets_to_it(rootfs: Path) -> None:
    Store().import_path(str(rootfs), "bb")
    async with SandboxPool(size=1, image="bb") as pool:
        async with pool.acquire() as box:
            assert (await box.run(["sh", "-c", "echo x > /tmp/left; cat /etc/motd"])).stdout == b"from the image\n"
        async with pool.acquire() as box:
            assert (await box.run(["sh", "-c", "ls /tmp"])).stdout == b""


def test_the_images_env_workdir_entrypoint_and_cmd_apply(rootfs: Path, tmp_path: Path) -> None:
    config = {"Env": ["PATH=/bin", "GREETING=hello"], "WorkingDir": "/etc", "Entrypoint": ["/bin/sh", "-c"],
              "Cmd": ["echo $GREETING; pwd"]}
    OciImage([tar_of(rootfs)], config=config, ref="cfg").write(tmp_path / "oci")
    assert sbx("image", "import", str(tmp_path / "oci")).returncode == 0  # named by the layout's ref
    default = sbx("run", "--image", "cfg")
    assert (default.returncode, default.stdout) == (0, b"hello\n/etc\n"), default.stderr
    given = sbx("run", "--image", "cfg:latest", "--env", "GREETING=mine", "--", "echo $GREETING")
    assert given.stdout == b"mine\n", given.stderr


def test_a_docker_archive_made_by_skopeo_imports_with_its_name(rootfs: Path, tmp_path: Path) -> None:
    OciImage([tar_of(rootfs)], config={"Cmd": ["cat", "/etc/motd"]}).write(tmp_path / "oci")
    archive = tmp_path / "img.tar"
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{tmp_path / 'oci'}", f"docker-archive:{archive}:tools/bb:v1"],
                   check=True)
    r = sbx("image", "import", str(archive))
    assert r.returncode == 0 and r.stdout.startswith(b"docker.io/tools/bb:v1 "), r.stderr  # as skopeo wrote it
    assert sbx("run", "--image", "docker.io/tools/bb:v1").stdout == b"from the image\n"


def test_in_image_owners_and_modes_show_in_the_box(rootfs: Path, tmp_path: Path, fs: str) -> None:
    """The caller cannot chown: the FUSE union presents what the layer recorded, and the kernel union shows it
    through a view of the layer whose entries are really owned by the subordinate ids (images/owned.py)."""
    owned = layer_tar([Entry("home", tarfile.DIRTYPE, mode=0o755), Entry("home/u", tarfile.DIRTYPE, mode=0o750,
                                                                          uid=1000, gid=1000),
                       Entry("home/u/f", data=b"mine\n", mode=0o640, uid=1000, gid=1000)])
    OciImage([tar_of(rootfs), owned]).write(tmp_path / "oci")
    assert sbx("image", "import", str(tmp_path / "oci"), "--name", "own").returncode == 0
    r = sbx("run", "--image", "own", "--fs", fs, "--", "sh", "-c", "stat -c '%u:%g %a' /home/u; cat /home/u/f")
    assert r.stdout == b"1000:1000 750\nmine\n", r.stderr  # the program's uid in the box is 1000


def test_a_parent_a_layer_does_not_name_keeps_what_the_layers_below_give_it(rootfs: Path, tmp_path: Path,
                                                                            fs: str) -> None:
    """umoci's and many real layers name data/l2.txt without data/: the layer applies onto its parents' view, so
    /data keeps the image user's owner and mode from below, and that user can still write there."""
    lower = layer_tar([Entry("data", tarfile.DIRTYPE, mode=0o750, uid=1000, gid=1000),
                       Entry("data/l1.txt", data=b"1\n", uid=1000, gid=1000)])
    upper = layer_tar([Entry("data/l2.txt", data=b"2\n", uid=1000, gid=1000)])
    OciImage([tar_of(rootfs), lower, upper]).write(tmp_path / "oci")
    assert sbx("image", "import", str(tmp_path / "oci"), "--name", "implicit").returncode == 0
    r = sbx("run", "--image", "implicit", "--fs", fs, "--", "sh", "-c",
            "stat -c '%u:%g %a' /data; cat /data/l1.txt /data/l2.txt; touch /data/new && echo wrote")
    assert r.stdout == b"1000:1000 750\n1\n2\nwrote\n", r.stderr


def test_the_kernel_unions_view_of_owners_holds_only_what_the_layer_records(rootfs: Path, tmp_path: Path,
                                                                           store_home: Path) -> None:
    """The view of a layer (images/owned.py) copies the entries with an owner record and the directories above
    them, as the layer has them: hard links stay links, no file is setuid on the host (its owner is a subordinate
    id anyone could become through it), ids past the range stay box root's, a link is neither followed nor copied.
    A view half made by a killed build goes with the next one, and prune takes the views with their layer."""
    top = layer_tar([Entry("srv", tarfile.DIRTYPE, mode=0o751),
                     Entry("srv/tool", data=b"tool\n", mode=0o4755, uid=1000, gid=1000),
                     Entry("srv/same", tarfile.LNKTYPE, linkname="srv/tool"),
                     Entry("srv/far", data=b"far\n", uid=70000, gid=5),
                     Entry("srv/link", tarfile.SYMTYPE, linkname="/etc/motd", uid=1000),
                     Entry("srv/plain", data=b"plain\n")])
    OciImage([tar_of(rootfs, as_root=True), top]).write(tmp_path / "oci")
    assert sbx("image", "import", str(tmp_path / "oci"), "--name", "view").returncode == 0
    ids = detect()
    assert ids.subuid is not None and ids.subgid is not None
    name = owned.view_name(ids)
    [layer] = [h for h in os.listdir(store_home / "layers") if owned.has_owners(str(store_home / "layers" / h))]
    stale = store_home / "layers" / layer / f"part-{name}-stale"
    owned._helper(ids, "build", stale.name, str(store_home / "layers" / layer))  # as a build killed halfway left it
    assert (stale / "srv" / "tool").stat().st_uid == ids.subuid[0] + 999
    r = sbx("run", "--image", "view", "--fs", "kernel", "--", "sh", "-c",
            "cd /srv && stat -c '%n %u:%g %a' . tool same far link plain && stat -c %h tool && cat tool far plain && "
            "[ $(stat -c %i tool) = $(stat -c %i same) ] && echo linked && echo more >> tool && cat tool")
    assert r.stdout == (b". 0:0 751\ntool 1000:1000 755\nsame 1000:1000 755\nfar 0:5 644\nlink 0:0 777\n"
                        b"plain 0:0 644\n2\ntool\nfar\nplain\nlinked\ntool\nmore\n"), r.stderr
    view = store_home / "layers" / layer / name
    assert not stale.exists() and sorted(os.listdir(view / "srv")) == ["far", "same", "tool"]
    assert view.stat().st_mode & 0o7777 == (store_home / "layers" / layer / "root").stat().st_mode & 0o7777
    host = (view / "srv" / "tool").stat()
    assert (host.st_uid, host.st_gid, host.st_mode & 0o7777, host.st_nlink) == \
        (ids.subuid[0] + 999, ids.subgid[0] + 999, 0o755, 2)
    assert (view / "srv" / "far").stat().st_uid == os.getuid()
    assert sbx("image", "rm", "view").returncode == 0 and sbx("image", "prune").returncode == 0
    _nothing_left(store_home)


def test_a_view_of_owners_is_made_once_by_concurrent_boxes(rootfs: Path, tmp_path: Path, store_home: Path) -> None:
    owned_home = layer_tar([Entry("home", tarfile.DIRTYPE, mode=0o755), Entry("home/u", tarfile.DIRTYPE, uid=1000,
                                                                              gid=1000, mode=0o700)])
    OciImage([tar_of(rootfs, as_root=True), owned_home]).write(tmp_path / "oci")
    assert sbx("image", "import", str(tmp_path / "oci"), "--name", "race").returncode == 0
    results: list[subprocess.CompletedProcess[bytes]] = []
    run = ["run", "--image", "race", "--fs", "kernel", "--", "sh", "-c", "touch /home/u/x && stat -c %u /home/u"]
    threads = [threading.Thread(target=lambda: results.append(sbx(*run))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(r.returncode, r.stdout) for r in results] == [(0, b"1000\n")] * 4, [r.stderr for r in results]
    assert len(views(store_home)) == 1
    assert not any(n.startswith("part-") for h in os.listdir(store_home / "layers")
                   for n in os.listdir(store_home / "layers" / h))


def test_an_exported_image_is_read_by_skopeo_and_umoci(rootfs: Path, tmp_path: Path) -> None:
    """With its whiteouts, owners and config; and it imports back the same."""
    gone = layer_tar([Entry("etc/gone", data=b"old\n"), Entry("home", tarfile.DIRTYPE, mode=0o755),
                      Entry("home/f", data=b"f\n", mode=0o600, uid=1000, gid=1000)])
    top = layer_tar([Entry("etc/.wh.gone"), Entry("etc/new", data=b"new\n")])
    OciImage([tar_of(rootfs), gone, top], config={"Cmd": ["cat", "/etc/new"]}).write(tmp_path / "oci")
    assert sbx("image", "import", str(tmp_path / "oci"), "--name", "ex:v1").returncode == 0
    out = tmp_path / "ex.tar"
    r = sbx("image", "export", "ex:v1", "-o", str(out))
    assert r.returncode == 0, r.stderr
    seen = json.loads(subprocess.run(["skopeo", "inspect", f"oci-archive:{out}"], check=True,
                                     capture_output=True).stdout)
    assert len(seen["Layers"]) == 3
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(out) as tar:
        tar.extractall(layout)
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:v1", str(bundle)], check=True,
                   capture_output=True)
    rootfs_out = bundle / "rootfs"
    assert (rootfs_out / "etc" / "new").read_text() == "new\n" and not (rootfs_out / "etc" / "gone").exists()
    assert (rootfs_out / "etc" / "motd").read_text() == "from the image\n"
    assert (rootfs_out / "home" / "f").stat().st_mode & 0o777 == 0o600
    assert sbx("image", "import", str(out), "--name", "back").returncode == 0
    assert sbx("run", "--image", "back").stdout == b"new\n"


def test_pull_goes_through_skopeo_and_says_so_without_it(rootfs: Path, tmp_path: Path) -> None:
    OciImage([tar_of(rootfs)], config={"Cmd": ["cat", "/etc/motd"]}).write(tmp_path / "oci")
    r = sbx("image", "pull", f"oci:{tmp_path / 'oci'}", "--name", "pulled")
    assert r.returncode == 0, r.stderr
    assert sbx("run", "--image", "pulled").stdout == b"from the image\n"
    nameless = sbx("image", "pull", f"oci:{tmp_path / 'oci'}")
    assert nameless.returncode == 125 and b"give --name" in nameless.stderr
    empty = tmp_path / "bin"
    empty.mkdir()
    without = subprocess.run([sys.executable, "-m", "sandbox", "image", "pull", "debian:12"],
                             env={**os.environ, "PATH": str(empty)}, capture_output=True)
    assert without.returncode == 125 and without.stderr.startswith(b"sbx: sbx image pull needs skopeo")
    assert without.stderr.count(b"\n") == 1


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1 at a free port, plain HTTP, storing under tmp_path."""
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: "
                      f"{tmp_path / 'registry'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    server = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        wait_for_port(port, server)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_pull_from_a_registry(rootfs: Path, tmp_path: Path, registry: str) -> None:
    OciImage([tar_of(rootfs)], config={"Cmd": ["cat", "/etc/motd"]}).write(tmp_path / "oci")
    pushed = subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{tmp_path / 'oci'}",
                             f"docker://{registry}/team/bb:v1"], capture_output=True)
    assert pushed.returncode == 0, pushed.stderr
    r = sbx("image", "pull", "--tls-verify=false", f"{registry}/team/bb:v1")
    assert r.returncode == 0 and r.stdout.startswith(f"{registry}/team/bb:v1 sha256:".encode()), r.stderr
    assert sbx("run", "--image", f"{registry}/team/bb:v1").stdout == b"from the image\n"
    verified = sbx("image", "pull", f"{registry}/team/bb:v1", "--name", "again")  # TLS is verified by default
    assert verified.returncode == 125 and verified.stderr.startswith(b"sbx: skopeo could not fetch docker://")
    assert verified.stderr.count(b"\n") == 1
    missing = sbx("image", "pull", "--tls-verify=false", f"{registry}/team/nope:v1")
    assert missing.returncode == 125 and b"skopeo could not fetch" in missing.stderr
    assert [i["name"] for i in Store().list()] == [f"{registry}/team/bb:v1"]


def test_push_to_a_registry_and_pull_back_the_same_image(rootfs: Path, tmp_path: Path, registry: str) -> None:
    """sbx image push through skopeo to Debian's docker-registry; the registry has the digest push printed, and
    the image pulled back has the same layers and config and runs."""
    OciImage([tar_of(rootfs)], config={"Cmd": ["cat", "/etc/motd"]}).write(tmp_path / "oci")
    assert sbx("image", "import", str(tmp_path / "oci"), "--name", "bb:1").returncode == 0
    ref = f"{registry}/team/pushed:v2"
    pushed = sbx("image", "push", "--tls-verify=false", "bb:1", ref)
    assert pushed.returncode == 0, pushed.stderr
    name, digest = pushed.stdout.decode().split()
    assert name == ref and digest.startswith("sha256:")
    remote = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
                                       capture_output=True, check=True).stdout)
    assert remote["Digest"] == digest
    pulled = sbx("image", "pull", "--tls-verify=false", ref, "--name", "back:1")
    assert pulled.returncode == 0, pulled.stderr
    back = json.loads(sbx("image", "inspect", "back:1").stdout)
    remote_config = json.loads(subprocess.run(["skopeo", "inspect", "--config", "--tls-verify=false",
                                               f"docker://{ref}"], capture_output=True, check=True).stdout)
    assert back["layers"] == remote_config["rootfs"]["diff_ids"] and len(back["layers"]) == 1
    assert back["config"]["config"]["Cmd"] == ["cat", "/etc/motd"]
    assert sbx("run", "--image", "back:1").stdout == b"from the image\n"
    refused = sbx("image", "push", "bb:1", ref)  # TLS is verified by default: the local registry has none
    assert refused.returncode == 125 and refused.stderr.startswith(b"sbx: skopeo could not push to docker://")
    assert refused.stderr.count(b"\n") == 1
    missing = sbx("image", "push", "--tls-verify=false", "nothere:1", ref)
    assert (missing.returncode, missing.stderr) == (125, b"sbx: image nothere:1: not in the store (sbx image ls "
                                                         b"lists it, sbx image import adds one)\n")


def test_commit_makes_the_runs_changes_a_new_layer(rootfs: Path, tmp_path: Path) -> None:
    """What the program wrote and deleted, as one more layer over the image; exported, umoci sees the same."""
    data = layer_tar([Entry("data", tarfile.DIRTYPE, mode=0o755, uid=1000, gid=1000),
                      Entry("data/old", data=b"old\n", uid=1000, gid=1000)])  # the program's (uid 1000 in the box)
    OciImage([tar_of(rootfs), data]).write(tmp_path / "oci")
    assert sbx("image", "import", str(tmp_path / "oci"), "--name", "base").returncode == 0
    r = sbx("run", "--image", "base", "--commit", "next:v2", "--", "sh", "-c",
            "rm /data/old && mkdir /data/app && echo built > /data/app/out && ln -s out /data/app/link")
    assert r.returncode == 0 and b"sbx: committed next:v2 sha256:" in r.stderr, r.stderr
    for fs in ("fuse", "kernel"):
        seen = sbx("run", "--image", "next:v2", "--fs", fs, "--", "sh", "-c", "ls /data; cat /data/app/link")
        assert seen.stdout == b"app\nbuilt\n", (fs, seen.stderr)  # no old: deleted
    assert sbx("image", "export", "next:v2", "-o", str(tmp_path / "next.tar")).returncode == 0
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(tmp_path / "next.tar") as tar:
        tar.extractall(layout)
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:v2", str(tmp_path / "bundle")],
                   check=True, capture_output=True)
    assert (tmp_path / "bundle" / "rootfs" / "data" / "app" / "out").read_text() == "built\n"
    assert not (tmp_path / "bundle" / "rootfs" / "data" / "old").exists()
    refused = sbx("run", "--image", "base", "--fs", "kernel", "--commit", "x", "--", "true")
    assert refused.returncode == 125 and b"--commit needs --image and the FUSE union" in refused.stderr


def test_commit_never_follows_a_link_the_program_planted(rootfs: Path, tmp_path: Path, store_home: Path) -> None:
    """The upper is the program's: a link in it to a host dir or file of the caller's stays a link in the layer."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("host secret\n")
    secret.chmod(0o755)
    assert sbx("image", "import", str(rootfs), "--name", "base").returncode == 0
    r = sbx("run", "--image", "base", "--commit", "next", "--", "sh", "-c",
            f"ln -s {secret} /box/dir && ln -s {secret}/key /box/file")
    assert r.returncode == 0, r.stderr
    next_image = Store().get("next")
    top = store_home / "layers" / next_image.chain_ids[-1].split(":")[1] / "root" / "box"
    assert os.readlink(top / "dir") == str(secret) and os.readlink(top / "file") == f"{secret}/key"
    found = subprocess.run(["grep", "-r", "host secret", str(store_home)], capture_output=True)
    assert found.returncode == 1, "the secret reached the store through a link"
    assert os.listdir(secret) == ["key"]


def test_commit_keeps_hard_links_and_fifos_and_refuses_a_tree_too_deep(rootfs: Path, store_home: Path) -> None:
    assert sbx("image", "import", str(rootfs), "--name", "base").returncode == 0
    r = sbx("run", "--image", "base", "--commit", "next", "--", "sh", "-c",
            "echo one > /box/a && ln /box/a /box/b && mkfifo /box/fifo")
    assert r.returncode == 0, r.stderr
    top = store_home / "layers" / Store().get("next").chain_ids[-1].split(":")[1] / "root" / "box"
    assert sorted(os.listdir(top)) == ["a", "b", "fifo"] and stat.S_ISFIFO(os.lstat(top / "fifo").st_mode)
    assert os.stat(top / "a").st_ino == os.stat(top / "b").st_ino and (top / "b").read_text() == "one\n"
    deep = sbx("run", "--image", "base", "--commit", "deep", "--", "sh", "-c",
               "cd /box && for i in $(seq 600); do mkdir d && cd d || exit 1; done")
    assert deep.returncode == 125 and deep.stderr.count(b"\n") == 1, deep.stderr
    assert deep.stderr.startswith(b"sbx: --commit deep:latest: the run's files: directories nested deeper than 512")
    assert [i["name"] for i in Store().list()] == ["base:latest", "next:latest"]
    assert os.listdir(store_home / "tmp") == []


def test_a_layer_tar_leaves_out_sockets_and_keeps_links_as_links(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(upper / "d" / "sock"))
    (upper / "d" / "out").symlink_to(tmp_path)
    (upper / "f").write_text("x")
    tar_layer(str(upper), str(tmp_path / "layer.tar"), "test")
    with tarfile.open(tmp_path / "layer.tar") as tar:
        assert [(m.name, m.type) for m in tar] == [("d", tarfile.DIRTYPE), ("d/out", tarfile.SYMTYPE),
                                                  ("f", tarfile.REGTYPE)]


async def test_the_api_runs_an_image(rootfs: Path) -> None:
    Store().import_path(str(rootfs), "bb")
    async with Sandbox(image="bb") as box:
        r = await box.run(["cat", "/etc/motd"])
    assert (r.status, r.stdout) == (Status.OK, b"from the image\n")


def test_a_real_debian_image_from_mmdebstrap(tmp_path: Path, debian_rootfs: Path) -> None:
    """Debian's minbase, built without root from Debian's mirror, imported and run."""
    assert sbx("image", "import", str(debian_rootfs), "--name", "debian:12", timeout=300).returncode == 0
    r = sbx("run", "--image", "debian:12", "--", "sh", "-c", "cat /etc/debian_version; apt-get --version | head -1",
            timeout=120)
    assert r.returncode == 0 and r.stdout.startswith(b"12."), r.stderr
    assert b"apt " in r.stdout
    # both unions show Debian's owners and modes alike (podman showed the same, save its own /etc/hosts)
    tree = ["--", "sh", "-c", r"find /etc /usr /var -xdev \( -type f -o -type d \) -printf '%U:%G %m %p\n' | sort"]
    kernel, fuse = (sbx("run", "--image", "debian:12", "--fs", fs, *tree, timeout=120) for fs in ("kernel", "fuse"))
    assert kernel.stdout == fuse.stdout and b"\n0:42 640 /etc/shadow\n" in kernel.stdout, kernel.stderr
    assert b"\n0:8 775 /var/mail\n" in kernel.stdout
    # root of the box: dpkg installs a local package, useradd and su work, and a commit keeps the owners
    deb = _local_deb(tmp_path)
    r = sbx("run", "--image", "debian:12", "--user", "0", "--policy", "build", "--commit", "debian:hello",
            "--ro-bind", f"{deb.parent}:/deb", "--", "sh", "-c",
            "id -u; dpkg -i /deb/sbx-hello.deb > /dev/null && sbx-hello && useradd -m builder && "
            "su builder -c 'id -un; touch ~/mine' && head -c 5 /etc/shadow; echo; "
            "kill -9 1 2>/dev/null || echo box-init-out-of-reach", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["0", "hello", "from", "a", "package", "builder", "root:", "box-init-out-of-reach"]
    r = sbx("run", "--image", "debian:hello", "--", "sh", "-c",
            "sbx-hello; stat -c '%U %n' /usr/local/bin/sbx-hello /home/builder/mine; dpkg -s sbx-hello | grep Status",
            timeout=120)
    assert r.stdout.decode().splitlines() == ["hello from a package", "root /usr/local/bin/sbx-hello",
                                              "builder /home/builder/mine", "Status: install ok installed"], r.stderr
    # the same from a Containerfile: sbx build, a RUN that installs the .deb COPY'd to /tmp, as root of the box
    (deb.parent / "Containerfile").write_text(
        "FROM debian:12\nCOPY sbx-hello.deb /tmp/\nRUN dpkg -i /tmp/sbx-hello.deb && rm /tmp/sbx-hello.deb\n"
        "RUN useradd -m builder\nUSER 1000\nCMD [\"sh\", \"-c\", \"sbx-hello; id -un; ls -A /tmp\"]\n")
    built = sbx("build", "-t", "debian:built", str(deb.parent), timeout=300)
    assert built.returncode == 0, built.stderr
    r = sbx("run", "--image", "debian:built", timeout=120)
    assert (r.returncode, r.stdout) == (0, b"hello from a package\nbuilder\n"), r.stderr
    again = sbx("build", "-t", "debian:built", str(deb.parent), timeout=300)
    assert again.stderr.count(b"--> Using cache") == 3, again.stderr


def _local_deb(tmp_path: Path) -> Path:
    """A package built with Debian's dpkg-deb, as a CI job's own .deb would be."""
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: sbx-hello\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: sbx tests <sbx@example.invalid>\nDescription: a test\n")
    tool = root / "usr" / "local" / "bin" / "sbx-hello"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\necho hello from a package\n")
    tool.chmod(0o755)
    out = tmp_path / "debs" / "sbx-hello.deb"
    out.parent.mkdir()
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    out.parent.chmod(0o755)
    out.chmod(0o644)
    return out


# -- hostile archives --------------------------------------------------------------------------------------------


def _import_layer(tmp_path: Path, tar: bytes, caps: Caps = Caps(), gz: bool = False) -> None:
    path = tmp_path / ("layer.tar.gz" if gz else "layer.tar")
    path.write_bytes(gzip.compress(tar) if gz else tar)
    Store().import_path(str(path), "hostile", caps)


def test_entries_that_leave_the_layer_are_refused(tmp_path: Path, store_home: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    cases = {
        "..": [Entry("../escaped", data=b"x")],
        "through a symlink": [Entry("link", tarfile.SYMTYPE, linkname=str(victim)), Entry("link/pwned", data=b"x")],
        "hard link up": [Entry("h", tarfile.LNKTYPE, linkname="../../etc/passwd")],
        "hard link through a symlink": [Entry("s", tarfile.SYMTYPE, linkname="/etc"),
                                        Entry("h", tarfile.LNKTYPE, linkname="s/passwd")],
        "hard link to nothing": [Entry("h", tarfile.LNKTYPE, linkname="etc/shadow")],
    }
    for what, entries in cases.items():
        with pytest.raises(ArchiveError):
            _import_layer(tmp_path, layer_tar(entries))
        assert os.listdir(victim) == [] and not (tmp_path / "escaped").exists(), what
        _nothing_left(store_home)


def test_device_nodes_and_setuid_bits_never_take_effect(tmp_path: Path, store_home: Path) -> None:
    _import_layer(tmp_path, layer_tar([Entry("/abs", data=b"in the layer\n"), Entry("dev/null", tarfile.CHRTYPE),
                                       Entry("bin/su", data=b"x", mode=0o4755, uid=0),
                                       Entry("home/u/f", data=b"mine", uid=1000, gid=1000)]))
    [layer] = os.listdir(store_home / "layers")
    root = store_home / "layers" / layer / "root"
    assert (root / "abs").read_bytes() == b"in the layer\n", "a leading / is the layer's root"
    assert not (root / "dev" / "null").exists()
    assert (root / "bin" / "su").stat().st_mode & 0o7777 == 0o755
    assert os.getxattr(root / "home" / "u" / "f", "user.sbx.owner") == b"1000:1000:100644:0"


def test_a_decompression_bomb_stops_at_the_caps(tmp_path: Path, store_home: Path) -> None:
    bomb = layer_tar([Entry("zeros", data=bytes(64 * 2**20))])
    with pytest.raises(ArchiveError, match="more than 1048576 bytes"):
        _import_layer(tmp_path, bomb, Caps(bytes=2**20), gz=True)
    _nothing_left(store_home)
    many = layer_tar([Entry(f"f{i}") for i in range(500)])
    with pytest.raises(ArchiveError, match="more than 100 entries"):
        _import_layer(tmp_path, many, Caps(entries=100))
    _nothing_left(store_home)


def test_malformed_metadata_is_one_line(tmp_path: Path, store_home: Path) -> None:
    oci = OciImage([layer_tar([Entry("a", data=b"1")])]).write(tmp_path / "oci")
    (oci / "index.json").write_text('{"manifests": [{"mediaType": "x"}]}')
    r = sbx("image", "import", str(oci), "--name", "bad")
    assert r.returncode == 125 and b"malformed image metadata" in r.stderr and r.stderr.count(b"\n") == 1, r.stderr
    _nothing_left(store_home)


def test_an_image_tar_is_read_by_its_content_whatever_its_names_prefix(rootfs: Path, tmp_path: Path,
                                                                      store_home: Path) -> None:
    """`tar -C layout -cf image.tar .` names ./oci-layout: still an OCI layout, never a rootfs of its files; a tar
    that claims to be an image and is none is refused in one line."""
    OciImage([tar_of(rootfs)], config={"Cmd": ["cat", "/etc/motd"]}).write(tmp_path / "oci")
    subprocess.run(["tar", "-C", str(tmp_path / "oci"), "-cf", str(tmp_path / "image.tar"), "."], check=True)
    assert sbx("image", "import", str(tmp_path / "image.tar"), "--name", "dot").returncode == 0
    assert sbx("run", "--image", "dot").stdout == b"from the image\n"
    (tmp_path / "oci" / "oci-layout").unlink()
    subprocess.run(["tar", "-C", str(tmp_path / "oci"), "-cf", str(tmp_path / "half.tar"), "."], check=True)
    r = sbx("image", "import", str(tmp_path / "half.tar"), "--name", "half")
    assert r.returncode == 125 and b"index.json but no oci-layout" in r.stderr and r.stderr.count(b"\n") == 1, r.stderr


def test_a_blob_that_does_not_match_its_digest_is_refused(rootfs: Path, tmp_path: Path, store_home: Path) -> None:
    oci = OciImage([layer_tar([Entry("a", data=b"1")])]).write(tmp_path / "oci")
    manifest_digest = json.loads((oci / "index.json").read_text())["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((oci / "blobs" / "sha256" / manifest_digest).read_bytes())
    layer = oci / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]
    layer.write_bytes(gzip.compress(layer_tar([Entry("a", data=b"2")])))
    r = sbx("image", "import", str(oci), "--name", "bad")
    assert r.returncode == 125 and b"does not match its digest" in r.stderr, r.stderr
    _nothing_left(store_home)


# -- the store ------------------------------------------------------------------------------------------------------


def test_layers_are_shared_and_prune_frees_only_what_nothing_uses(rootfs: Path, tmp_path: Path,
                                                                  store_home: Path) -> None:
    base = tar_of(rootfs)
    OciImage([base]).write(tmp_path / "a")
    OciImage([base, layer_tar([Entry("etc/extra", data=b"e\n")])]).write(tmp_path / "b")
    store = Store()
    store.import_path(str(tmp_path / "a"), "a")
    store.import_path(str(tmp_path / "b"), "b")
    assert len(os.listdir(store_home / "layers")) == 2, "the shared layer is unpacked once"
    store.remove("a")
    assert store.prune() == []
    store.tag("b", "c:v2")
    store.remove("b")
    assert store.prune() == [] and [i["name"] for i in store.list()] == ["c:v2"]
    store.remove("c:v2")
    assert len(store.prune()) == 2
    _nothing_left(store_home)


def test_a_layer_the_store_has_is_verified_not_unpacked_again(rootfs: Path, tmp_path: Path, store_home: Path) -> None:
    base = tar_of(rootfs)
    OciImage([base]).write(tmp_path / "a")
    assert sbx("image", "import", str(tmp_path / "a"), "--name", "a").returncode == 0
    again = sbx("image", "import", str(tmp_path / "a"), "--name", "a2")
    assert again.returncode == 0 and b"layer 1/1: sha256:" in again.stderr and b"shared, verified" in again.stderr
    claimed = "sha256:" + hashlib.sha256(base).hexdigest()  # the config of a hostile image claims that layer
    OciImage([layer_tar([Entry("etc/motd", data=b"planted\n")])], diff_ids=[claimed]).write(tmp_path / "lie")
    r = sbx("image", "import", str(tmp_path / "lie"), "--name", "lie")
    assert r.returncode == 125 and b"but the config says " + claimed.encode() in r.stderr, r.stderr
    assert [i["name"] for i in Store().list()] == ["a2:latest", "a:latest"]
    assert os.listdir(store_home / "tmp") == [] and len(os.listdir(store_home / "layers")) == 1


async def test_a_layer_a_box_runs_on_is_not_pruned(rootfs: Path, store_home: Path) -> None:
    store = Store()
    store.import_path(str(rootfs), "bb")
    async with Sandbox(image="bb") as box:
        store.remove("bb")
        assert store.prune() == []
        assert (await box.run(["cat", "/etc/motd"])).stdout == b"from the image\n"
    assert len(store.prune()) == 1


def test_concurrent_imports_of_one_image(rootfs: Path, tmp_path: Path, store_home: Path) -> None:
    OciImage([tar_of(rootfs)]).write(tmp_path / "oci")
    errors: list[BaseException] = []

    def one(name: str) -> None:
        try:
            Store().import_path(str(tmp_path / "oci"), name)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=one, args=(f"n{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(os.listdir(store_home / "layers")) == 1 and len(Store().list()) == 4
    assert os.listdir(store_home / "tmp") == []


def test_bad_input_gets_one_line(tmp_path: Path) -> None:
    r = sbx("run", "--image", "nope", "--", "true")
    assert (r.returncode, r.stderr) == (125, b"sbx: image nope:latest: not in the store (sbx image ls lists it, "
                                              b"sbx image import adds one)\n")
    r = sbx("image", "import", str(tmp_path / "missing"))
    assert r.returncode == 125 and r.stderr.count(b"\n") == 1
    r = sbx("run", "--image", "Bad Name", "--", "true")
    assert r.returncode == 125 and b"not a valid NAME[:TAG]" in r.stderr
    assert shutil.which("skopeo"), "skopeo makes the docker-archive fixture (./dev installs it)"
