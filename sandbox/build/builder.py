"""`sbx build`: a Containerfile carried out step by step, one layer per RUN, COPY and ADD, with a build cache.

Each RUN is a box on the image so far (a `Sandbox` over the FUSE union,
its upper a host dir this builder made), as root of the box unless USER
says otherwise, under the `build` policy, with no network unless `--net`
gives one, and with the build's secrets at /run/secrets (masked in what it
prints, never in a layer: they live on a tmpfs of their own).  The box
sees the image's own filesystem, /tmp included, as `docker build` does;
what box init made in the upper only to mount over it is left out of the
layer.  COPY and ADD make their layer from the context (context.py).

The cache: a step's key is the digest of the key before it (the base
image's manifest digest to start with), the instruction as worked out
(variables replaced), and for COPY and ADD the digest of the layer they
make; the build args a RUN sees are in its key too.  A key maps to the
manifest digest of the image after that step (saved unnamed in the image
store); a hit whose layers were pruned since is a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from .. import scratch, teardown
from ..box import plan
from ..budget import Budget
from ..errors import ConfigError, SandboxError
from ..images.store import Image, Store, parse_ref
from ..record import Record, field
from ..run.limits import Limits
from ..run.relay import Relay
from ..run.result import Status
from ..sha256 import hexdigest
from ..upper import leave_out_mount_points
from .containerfile import MAX_SIZE, Instruction, pairs, parse, substitute, words
from .context import Context, Owner

DEFAULT_SHELL = ("/bin/sh", "-c")
_ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class BuildError(SandboxError):
    """A step failed: its RUN did not end OK, or what it names cannot be done."""

    exit_status = 1


class Options(Record):
    containerfile: str
    """A name in the context, or an absolute path on the host."""
    context: str
    tag: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, bytes] = field(default_factory=dict, repr=False)
    net: str = "none"
    no_cache: bool = False
    policy: str | None = "build"
    limits: Limits = field(default_factory=lambda: Limits(memory=2 * 2**30, pids=512, wall_time=3600))
    disk: int = 8 * 2**30
    """What one step may write (its layer), and what COPY and ADD may take from the context."""
    inodes: int = 2**20


class _State:
    """The build as it goes: the image so far, its config, the ARGs in scope, and the cache key."""

    def __init__(self, image: Image, key: str) -> None:
        self.image = image
        self.config: dict[str, Any] = dict(image.runtime)
        self.history: list[dict[str, Any]] = list(image.config.get("history") or [])
        self.args: dict[str, str] = {}
        self.key = key

    def variables(self) -> dict[str, str]:
        """What $NAME means in an instruction: the ARGs in scope, overridden by ENV."""
        return {**self.args, **self.env()}

    def env(self) -> dict[str, str]:
        return dict(e.split("=", 1) for e in self.config.get("Env") or [] if "=" in e)

    def set_env(self, env: Mapping[str, str]) -> None:
        self.config["Env"] = [f"{k}={v}" for k, v in env.items()]

    def workdir(self) -> str:
        return self.config.get("WorkingDir") or "/"


async def build(opts: Options, say: Callable[[str], None], out: Relay, err: Relay) -> Image:
    """Build, saying each step on `say`, the RUNs' output relayed to `out` and `err`; the image, named `opts.tag`."""
    store = Store()
    tag = parse_ref(opts.tag) if opts.tag else None
    tmp = os.path.join(store.root, "tmp")
    with Context(opts.context) as context, scratch.workdir(tmp, "build-") as work, \
            scratch.workdir(tmp, "build-uppers-", shared=True) as uppers:
        text = _containerfile(opts, context)
        steps = parse(text, opts.containerfile)
        builder = _Builder(opts, store, context, work, uppers, say, out, err)
        try:
            image = await builder.run(steps)
        finally:
            builder.release()
        final = store.save({**image.config}, list(image.diff_ids), tag)
    say(f"{'COMMIT ' + tag if tag else 'built'} {final.digest}")
    return final


def _containerfile(opts: Options, context: Context) -> str:
    """The Containerfile: a host path if absolute (the command line's -f), else a name in the context."""
    path, what = opts.containerfile, f"sbx build -f {opts.containerfile}"
    if not os.path.isabs(path):
        return context.read_file(path, MAX_SIZE, what).decode(errors="replace")
    from .. import hostpath
    with hostpath.resolve(path, "sbx build -f") as found:
        try:
            fd = found.reopen(os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise ConfigError(f"{what}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{what}: not a regular file")
        data = f.read(MAX_SIZE + 1)
    if len(data) > MAX_SIZE:
        raise ConfigError(f"{what}: more than {MAX_SIZE} bytes")
    return data.decode(errors="replace")


class _Builder:
    """`work`: the build's scratch dir (layer tars); `uppers`: the dir of its RUNs' uppers, and of their unions'
    work dirs (api.py), locked shared, as the sandboxes lock the dirs above an upper (upper.py); a killed build's
    go with the next build's."""

    def __init__(self, opts: Options, store: Store, context: Context, work: str, uppers: str,
                 say: Callable[[str], None], out: Relay, err: Relay) -> None:
        self.opts, self.store, self.context, self.work, self.uppers = opts, store, context, work, uppers
        self.say, self.out, self.err = say, out, err
        self.pins: list[int] = []
        self.cache_dir = os.path.join(store.root, "build-cache")
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        self.steps = 0

    def release(self) -> None:
        for fd in self.pins:
            os.close(fd)
        self.pins = []

    async def run(self, instructions: list[Instruction]) -> Image:
        pre_from: dict[str, str] = {}
        state: _State | None = None
        total = len(instructions)
        for n, ins in enumerate(instructions, 1):
            where = ins.where(self.opts.containerfile)
            self.say(f"STEP {n}/{total}: {ins.name} {ins.args}".rstrip())
            if ins.name == "ARG" and state is None:
                for name, value in self._args(ins, where):
                    pre_from[name] = self.opts.build_args.get(name, value)
                continue
            if ins.name == "FROM":
                state = self._from(ins, pre_from, where)
                continue
            assert state is not None
            await self._step(state, ins, where)
        assert state is not None
        return state.image.replace(config={**state.image.config, "config": state.config, "history": state.history})

    # -- instructions ------------------------------------------------------------------------------------------

    def _from(self, ins: Instruction, pre_from: Mapping[str, str], where: str) -> _State:
        parts = words(substitute(ins.args, pre_from), where)
        if len(parts) not in (1, 3) or (len(parts) == 3 and parts[1].upper() != "AS"):
            raise ConfigError(f"{where}: expected FROM IMAGE [AS NAME]")
        if parts[0] == "scratch":
            base = Image("", "scratch", {"architecture": "amd64", "os": "linux", "config": {}}, ())
        else:
            base = self.store.get(parts[0])
            self.pins += self.store.pin_image(base)
        return _State(base, base.digest)

    async def _step(self, state: _State, ins: Instruction, where: str) -> None:
        name = ins.name
        if name == "ARG":
            for key, value in self._args(ins, where):
                state.args[key] = self.opts.build_args.get(key, value)
        elif name == "ENV":
            env = state.env()
            for key, value in pairs(substitute(ins.args, state.variables()), where, legacy=True):
                env[key] = value
            state.set_env(env)
        elif name == "WORKDIR":
            path = substitute(ins.args, state.variables()).strip()
            state.config["WorkingDir"] = os.path.normpath(os.path.join(state.workdir(), path))
        elif name == "USER":
            state.config["User"] = substitute(ins.args, state.variables()).strip()
            _box_user(state.config["User"], where)
        elif name in ("ENTRYPOINT", "CMD"):
            shell = state.config.get("Shell") or list(DEFAULT_SHELL)
            state.config["Entrypoint" if name == "ENTRYPOINT" else "Cmd"] = \
                list(ins.exec_form) if ins.exec_form is not None else [*shell, ins.args]
        elif name == "SHELL":
            if not ins.exec_form:
                raise ConfigError(f"{where}: SHELL takes a JSON array")
            state.config["Shell"] = list(ins.exec_form)
        elif name in ("LABEL", "MAINTAINER"):
            labels = dict(state.config.get("Labels") or {})
            found = [("maintainer", ins.args)] if name == "MAINTAINER" else \
                pairs(substitute(ins.args, state.variables()), where, legacy=False)
            labels.update(found)
            state.config["Labels"] = labels
        elif name in ("EXPOSE", "VOLUME"):
            items = list(ins.exec_form) if ins.exec_form is not None else \
                words(substitute(ins.args, state.variables()), where)
            key = "ExposedPorts" if name == "EXPOSE" else "Volumes"
            state.config[key] = {**(state.config.get(key) or {}),
                                 **{(i if "/" in i or name == "VOLUME" else f"{i}/tcp"): {} for i in items}}
        elif name == "STOPSIGNAL":
            state.config["StopSignal"] = ins.args.strip()
        elif name == "RUN":
            await self._run(state, ins, where)
        elif name in ("COPY", "ADD"):
            self._copy(state, ins, where)
        else:
            raise ConfigError(f"{where}: not supported")
        if name not in ("RUN", "COPY", "ADD"):
            state.key = _key(state.key, f"{name} {json.dumps(state.config, sort_keys=True)}")
            state.history.append({"created_by": f"{name} {ins.args}", "empty_layer": True})

    def _args(self, ins: Instruction, where: str) -> list[tuple[str, str]]:
        out = []
        for item in words(ins.args, where):
            key, sep, value = item.partition("=")
            if not key.replace("_", "a").isalnum():
                raise ConfigError(f"{where}: {key!r} is not an ARG name")
            out.append((key, value if sep else ""))
        return out

    # -- RUN ---------------------------------------------------------------------------------------------------

    async def _run(self, state: _State, ins: Instruction, where: str) -> None:
        net = self.opts.net
        for flag, value in ins.flags:
            if flag == "network":
                if value not in ("none", "default"):
                    raise ConfigError(f"{where}: --network={value}: none or default (sbx build --net's)")
                net = "none" if value == "none" else net
            elif flag == "mount":
                self._secret_mount(value, where)
            else:
                raise ConfigError(f"{where}: --{flag} is not a RUN option sbx knows (--network, --mount=type=secret)")
        shell = state.config.get("Shell") or list(DEFAULT_SHELL)
        argv = list(ins.exec_form) if ins.exec_form is not None else [*shell, ins.args]
        # build args are the RUN's environment (ENV wins), and its cache key: another value, another layer
        env = {**state.args, **state.env()}
        user = _box_user(state.config.get("User") or "0", where)
        key = _key(state.key, json.dumps(["RUN", argv, env, user, net, sorted(state.config.items())],
                                         sort_keys=True, default=str))
        if self._cached(state, key):
            return
        if not state.image.diff_ids:
            raise ConfigError(f"{where}: RUN on scratch: the image has no files to run yet (COPY some first)")
        env.setdefault("HOME", "/root" if user == "0" else "/")
        from ..api import Sandbox
        run_image = state.image.replace(config={**state.image.config, "config": {}})  # no Entrypoint, no Env
        upper = tempfile.mkdtemp(prefix="upper-", dir=self.uppers)
        made = teardown.identity(upper)
        try:
            os.chmod(upper, 0o755)
            sandbox = Sandbox(image=run_image, upper=upper, fs="fuse", user=user, policy=self.opts.policy, net=net,
                              secrets=self.opts.secrets, limits=self.opts.limits, disk=self.opts.disk,
                              inodes=self.opts.inodes, env=env, cwd=state.workdir(), build_step=True)
            async with sandbox:
                result = await sandbox.run(argv, stdin=None, stdout=self.out, stderr=self.err)
            if result.status is not Status.OK:
                raise BuildError(f"{where}: {result.summary}")
            leave_out_mount_points(upper, plan.mount_points(sandbox.plan()))
            diff_id = self.store.layer_from_upper(state.image, upper, where, self.pins)
        finally:
            teardown.remove_tree(upper, made)
        self._advance(state, diff_id, key, f"RUN {ins.args}")

    def _secret_mount(self, value: str, where: str) -> None:
        """`--mount=type=secret,id=NAME` (buildkit's): every RUN has the build's secrets at /run/secrets; a name the
        build was not given is an error, as in docker."""
        fields = dict(part.partition("=")[::2] for part in value.split(","))
        if fields.get("type") != "secret":
            raise ConfigError(f"{where}: --mount={value}: only type=secret (the build's --secret)")
        if fields.get("id") not in self.opts.secrets or fields.get("target", fields.get("dst")) not in \
                (None, f"/run/secrets/{fields.get('id')}"):
            raise ConfigError(f"{where}: --mount={value}: a secret given with sbx build --secret id=NAME, at "
                              "/run/secrets/NAME")

    # -- COPY and ADD ------------------------------------------------------------------------------------------

    def _copy(self, state: _State, ins: Instruction, where: str) -> None:
        owner = Owner()
        for flag, value in ins.flags:
            if flag == "chown":
                owner = owner.replace(**dict(zip(("uid", "gid"), _ids(value, where), strict=True)))
            elif flag == "chmod":
                try:
                    owner = owner.replace(mode=int(value, 8) & 0o7777)
                except ValueError:
                    raise ConfigError(f"{where}: --chmod={value}: an octal mode") from None
            elif flag != "link":
                raise ConfigError(f"{where}: --{flag} is not supported (COPY and ADD take --chown and --chmod)")
        parts = list(ins.exec_form) if ins.exec_form is not None else \
            words(substitute(ins.args, state.variables()), where)
        if len(parts) < 2:
            raise ConfigError(f"{where}: expected {ins.name} SRC... DEST")
        *srcs, dest = parts
        if any(s.startswith(("http://", "https://", "git@")) for s in srcs):
            raise ConfigError(f"{where}: a URL is not supported: fetch it in a RUN (with sbx build --net pasta)")
        dest = dest if dest.startswith("/") else os.path.join(state.workdir(), dest)
        found = [(src, rel) for src in srcs for rel in self.context.sources(src, where)]
        into_dir = dest.endswith("/") or len(found) > 1
        tar_path = os.path.join(self.work, f"copy-{self.steps}.tar")
        self.steps += 1
        budget = Budget(self.opts.disk, self.opts.inodes)
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
            for src, rel in found:
                target = os.path.join(dest, os.path.basename(rel)) if into_dir else dest
                if ins.name == "ADD" and rel.endswith(_ARCHIVES) and self._extract(tar, rel, dest, budget, where):
                    continue
                self.context.add(tar, rel, dest if self.context.is_dir(rel, where) else target, owner, budget, where)
        key = _key(state.key, json.dumps([ins.name, _file_digest(tar_path), dest], sort_keys=True))
        if not self._cached(state, key):
            diff_id = self.store.add_layer(state.image, tar_path, where, self.pins)
            self._advance(state, diff_id, key, f"{ins.name} {ins.args}")
        os.unlink(tar_path)

    def _extract(self, tar: tarfile.TarFile, rel: str, dest: str, budget: Budget, where: str) -> bool:
        """ADD of a local archive: its entries under `dest` (the layer's unpacking checks them again); False when
        it is no archive after all (then it is copied as a file)."""
        data = self.context.open_file(rel, where)
        try:
            try:
                archive = tarfile.open(fileobj=data, mode="r:*")
            except (tarfile.TarError, EOFError, OSError):
                return False
            with archive:
                for m in archive:
                    name = os.path.normpath(m.name.lstrip("/"))
                    if name == ".." or name.startswith("../"):
                        raise ConfigError(f"{where}: {rel}: entry {m.name!r} leaves the destination")
                    short = budget.take(m.size if m.isreg() else 0, 1)
                    if short is not None:
                        raise ConfigError(f"{where}: {rel} holds more {short} than a build step may")
                    m.name = os.path.join(dest, name).lstrip("/") if name != "." else dest.lstrip("/")
                    if m.islnk():
                        m.linkname = os.path.join(dest, os.path.normpath(m.linkname.lstrip("/"))).lstrip("/")
                    tar.addfile(m, archive.extractfile(m) if m.isreg() else None)
            return True
        finally:
            data.close()

    # -- the cache ---------------------------------------------------------------------------------------------

    def _cached(self, state: _State, key: str) -> bool:
        """Take the step's image from the cache, if it is there and its layers still are."""
        if self.opts.no_cache:
            return False
        try:
            with open(os.path.join(self.cache_dir, key.split(":")[1])) as f:
                digest = f.read().strip()
        except OSError:
            return False
        image = self.store.by_digest(digest)
        if image is None:
            return False
        try:
            self.pins += self.store.pin_image(image)
        except ConfigError:
            return False  # pruned since
        state.image, state.key = image, key
        state.config = dict(image.runtime)
        state.history = list(image.config.get("history") or [])
        self.say(f"--> Using cache {digest}")
        return True

    def _advance(self, state: _State, diff_id: str, key: str, created_by: str) -> None:
        """The step's layer on the image so far, saved (unnamed) and remembered under its key."""
        diff_ids = [*state.image.diff_ids, diff_id]
        state.history.append({"created_by": created_by})
        config = {**state.image.config, "config": state.config, "history": state.history,
                  "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        state.image = self.store.save(config, diff_ids, None)
        state.key = key
        path = os.path.join(self.cache_dir, key.split(":")[1])
        with open(f"{path}.{os.getpid()}", "w") as f:
            f.write(state.image.digest)
        os.rename(f"{path}.{os.getpid()}", path)
        self.say(f"--> {state.image.digest[:19]} (layer {diff_id[:19]})")


def _key(before: str, step: str) -> str:
    return "sha256:" + hexdigest(f"{before}\n{step}".encode())


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _ids(value: str, where: str) -> tuple[int, int]:
    """--chown=UID[:GID] (numbers, or root)."""
    user, _, group = value.partition(":")
    ids = []
    for part in (user, group or user):
        if part == "root":
            ids.append(0)
        elif part.isdigit():
            ids.append(int(part))
        else:
            raise ConfigError(f"{where}: --chown={value}: numeric ids (or root): names are not looked up")
    return ids[0], ids[1]


def _box_user(user: str, where: str) -> str:
    """The box user a USER means: root of the box ("0"), or the sandbox's uid 1000."""
    name, _, group = user.partition(":")
    if name in ("0", "root") and group in ("", "0", "root"):
        return "0"
    if name == "1000" and group in ("", "1000"):
        return "1000"
    raise ConfigError(f"{where} {user}: a box runs its program as root (0) or as uid 1000")
