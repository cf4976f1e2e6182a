"""A sandbox's configuration, checked: what its box is made of and how each run is worked out, with no box yet.

Everything here is decided before anything is forked, so that bad input
gets a clear message and leaves nothing behind.  It loads no event loop:
`Sandbox` (api.py) adds the box's lifecycle and async runs on top, and
`sbx run` (oneshot.py) one blocking run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .box import netstack, plan
from .box.cgroups import delegation
from .box.layout import (
    WORK_DIR,
    Bind,
    Layout,
    MountedVolume,
    VolumeMount,
    check_box_path,
    check_secrets,
    parse_lower,
    parse_upper,
    resolve_bind,
)
from .box.run_protocol import MAX_ARGS, RunEnd, RunRequest, Seccomp, StartFailure
from .box.userns import PROGRAM_ID, IdMap, IdmapMode, detect
from .errors import ConfigError, ExecError, SetupError
from .hostpath import Guard
from .record import Record
from .run import fallback
from .run.limits import Limits
from .run.mask import Mask
from .run.relay import write_all
from .run.rlimits import rlimits
from .run.runtime_env import runtime_env
from .seccomp import prebuilt
from .upper import apart

if TYPE_CHECKING:
    from .images.store import Image
    from .seccomp.policy import Policy

DEFAULT_POLICY = "default"
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
"""As docker's default PATH, with the sbin dirs a root program (dpkg) needs; and HOME: the box's home."""
NEVER_RAN = RunEnd(None, 0.0, 0.0, 0)
"""The accounting of a run whose program never started."""


KERNEL_UPPER = ("kernel overlayfs writes straight into the --upper dir on the host, where nothing rootless can hold "
                "--disk and --inodes: use --fs fuse, or leave out --upper (the scratch upper is capped)")
"""Why a kernel union cannot keep its upper on the host (quotas; see README, "Layers")."""


class Inherit:
    """The default of `run(policy=...)`: use the sandbox's policy (None already means "no policy")."""


INHERIT = Inherit()


class ExactEnv(dict[str, str]):
    """A run's environment given whole (`run(env=ExactEnv(...))`): the sandbox adds nothing to it, neither its
    defaults (PATH, HOME, LANG), the runtimes' memory settings (runtime_env.py), nor the sandbox's own `env`.
    go-judge's clients expect exactly the list they send."""


class Spec:
    """What a sandbox is: its box's layout and filesystems, its defaults for runs, its policies' filters.

    The host paths it names are resolved here (hostpath.py), and the image
    and policies are read here, once."""

    DEFAULT_DISK = 256 * 2**20
    DEFAULT_INODES = 16384

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        binds: Sequence[Bind] = (),
        tmpfs: Sequence[str] = (),
        disk: int = DEFAULT_DISK,
        inodes: int = DEFAULT_INODES,
        net: str = "loopback",
        idmap: IdmapMode = "auto",
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        policy: str | None = DEFAULT_POLICY,
        lowers: Sequence[str] = (),
        upper: str | None = None,
        fs: str = "auto",
        image: str | Image | None = None,
        commit: str | None = None,
        home: str = WORK_DIR,
        secrets: Mapping[str, bytes | str] | None = None,
        host_loopback: bool = False,
        publish: Sequence[str] = (),
        volumes: Sequence[VolumeMount] = (),
        user: str | None = None,
        build_step: bool = False,
        join: int = 0,
        network: str | None = None,
    ) -> None:
        """`image`: NAME[:TAG] in the image store; its layers are the lowers, and its Env, WorkingDir and
        Entrypoint/Cmd the defaults (`cwd` defaults to /box without an image).  `commit`: NEW[:TAG], the
        image plus what the runs wrote, made when the sandbox closes (`committed` then holds it).  `home`: the
        writable working directory beside /tmp and /dev/shm (go-judge's clients expect /w).  `secrets`: name ->
        value, each a file /run/secrets/NAME only the program can read, on a tmpfs of its own (never in an
        upper, a commit or a bind), and masked (`***`) in the runs' output as it is relayed or captured and in
        their results (run/mask.py).  `net`: none, loopback, pasta or slirp4netns (a way out through a
        user-mode stack, box/netstack.py), with which `host_loopback` lets the box reach the host's 127.0.0.1 as
        host.containers.internal and `publish` (`[IP:]HOSTPORT:BOXPORT[/tcp|udp]`) puts box ports on the host.
        `volumes`: named volumes (volumes.py), each made on its first use and served by a FUSE daemon of its own
        that holds its caps; one writer at a time.  `user`: "0" (or "root") runs the programs as root of the box,
        in a user namespace of their own with no power over the sandbox (userns.py), as does an image whose User is
        root; None or "1000": the sandbox's unprivileged uid.  `build_step`: the box of a build's RUN (sbx build),
        which sees the image's own /tmp and dirs, with no home or /tmp of sbx's over them.  `join`: the outer
        process of a running box to run in instead of making one (sbx exec): its mounts are the box's, and what
        here describes a box's filesystem is not used.  `network`: a network made by `sbx network create`, whose
        loopback (and way out, if it has one) the box shares and whose hosts file is its /etc/hosts
        (living/network.py)."""
        self.network_holder = 0
        if net.startswith("box:"):  # a running detached box's network namespace, as the containers of a pod
            from .living import state
            other = state.status(net[4:])
            if other.state != "running":
                raise ConfigError(f"--net {net}: the box is not running ({other.state})")
            self.network_holder, net = other.box, "loopback"
        if net not in ("none", "loopback", *netstack.STACKS):
            raise ConfigError(f"--net: unknown mode {net!r} (expected none, loopback, pasta, slirp4netns or box:NAME)")
        if (host_loopback or publish) and net not in netstack.STACKS:
            raise ConfigError(f"--{'host-loopback' if host_loopback else 'publish'} needs --net pasta or slirp4netns")
        self.netstack = netstack.network(net, host_loopback, tuple(map(netstack.parse_publish, publish))) \
            if net in netstack.STACKS else None
        if network is not None:
            if net != "loopback" or self.network_holder:
                raise ConfigError("--network: the network's loopback is the box's network; --net is for a box alone "
                                  "(sbx network create --net pasta makes a network with a way out)")
            from .living.network import get
            joined = get(network)
            if joined.idmap != detect(idmap).mode:
                raise ConfigError(f"--network {network}: its ids are mapped {joined.idmap}, and this box's would be "
                                  f"{detect(idmap).mode}")
            self.network_holder = joined.holder
            binds = [*binds, *(Bind(os.path.join(joined.path, name), f"/etc/{name}", False)
                               for name in ("hosts", *(("resolv.conf",) if joined.way_out else ())))]
        self.limits = limits or Limits()
        self.image: Image | None = None
        if image is not None:
            if lowers:
                raise ConfigError("--image and --lower: the image's layers are the lowers")
            from .images.store import Store  # (not loaded for runs without an image: it costs ~30 ms)
            self._store = Store()
            self.image = self._store.get(image) if isinstance(image, str) else image
            lowers = [os.path.join(self._store.layer_dir(c), "root") for c in reversed(self.image.chain_ids)]
        self._idmap: IdmapMode = idmap
        self._root = _root_user(user, self.image.runtime.get("User") if self.image is not None else None)
        if self._root:
            detect(idmap).as_root()  # (refused here without a range, before anything is made)
        if upper is not None and not lowers:
            raise ConfigError("--upper needs --lower or --image: it is the writable layer over them")
        if commit is not None:
            from .images.store import parse_ref
        self._commit = parse_ref(commit) if commit is not None else None
        self.committed: Image | None = None
        self._lowers = tuple(parse_lower(d) for d in lowers)
        self._upper = parse_upper(upper) if upper is not None else None
        self._tmpfs = tuple(check_box_path(t, "--tmpfs") for t in tmpfs)
        writable = [resolve_bind(b, Guard()).identity for b in binds if b.writable]
        if self._upper is not None:
            upper_st = os.stat(self._upper, follow_symlinks=False)
            writable.append((upper_st.st_dev, upper_st.st_ino))
        # the host dirs the box can write: no caller's path follows a link below them (hostpath.py), so the
        # binds are resolved again with them known, and the command line resolves its copies with them
        self.writable_dirs = Guard(frozenset(i for i in writable if i is not None))
        self._binds = tuple(resolve_bind(b, self.writable_dirs) for b in binds)
        if self._upper is not None:
            apart(self._upper, [("--lower", d) for d in self._lowers]
                   + [("--bind" if b.writable else "--ro-bind", b.src) for b in self._binds])
        self._disk, self._inodes, self._loopback = disk, inodes, net != "none"
        self._host_dirs: dict[str, tuple[int, int]] = {}
        self._locks: list[int] = []  # flocks held while this sandbox's box and daemon live (see _lock_upper)
        if fs not in ("auto", "fuse", "kernel"):
            raise ConfigError(f"--fs: unknown filesystem {fs!r} (expected fuse, kernel or auto)")
        if fs == "auto":  # kernel overlayfs, unless the run needs what only the FUSE union gives
            # (with root in the box, the kernel union would show the layers' files as the sandbox's root's)
            needs = self._upper is not None or self._commit is not None or (self._root and bool(lowers))
            if not needs and self.image is not None:  # with a range, the kernel union shows owners too
                ids = detect(idmap)
                needs = ids.mode != "range" and self._store.owns(self.image, ids.program_uid, ids.program_gid)
            fs = "fuse" if needs and os.access("/dev/fuse", os.R_OK | os.W_OK) else "kernel"
            if fs == "kernel" and self._upper is not None:
                raise ConfigError(f"--fs auto chose --fs kernel (/dev/fuse is not usable here), {KERNEL_UPPER}")
        if fs == "kernel" and self._upper is not None:
            raise ConfigError(f"--fs kernel with --upper: {KERNEL_UPPER}")
        if fs == "kernel" and self._root and self._lowers:
            raise ConfigError("--user 0 with a union root needs --fs fuse: the kernel union shows the layers' files "
                              "as owned by the sandbox's root, which the program's namespace does not have")
        self.fs = fs
        self._views: tuple[str, ...] = ()  # through which the kernel union shows the layers' owners (owned.py)
        if fs == "kernel" and self.image is not None and self.ids.mode == "range":
            from .images import owned
            layers, views = owned.lowers([self._store.layer_dir(c) for c in reversed(self.image.chain_ids)],
                                         self.ids)
            self._lowers, self._views = tuple(layers), tuple(views)
        if self._commit is not None and (self.image is None or self.fs != "fuse"):
            raise ConfigError("--commit needs --image and the FUSE union (--fs fuse): the kernel union's upper "
                              "lives inside the box")
        defaults = self.image.runtime if self.image is not None else {}
        self.env = {**dict(e.split("=", 1) for e in defaults.get("Env") or [] if "=" in e), **(env or {})}
        self.home = check_box_path(home, "home")
        if self.home in ("/tmp", "/dev/shm") or self.home.startswith(("/tmp/", "/dev/")):
            raise ConfigError(f"home {home}: must be a directory of its own, not in /tmp or /dev")
        if cwd is not None and not cwd.startswith("/"):
            raise ConfigError(f"--cwd {cwd}: must be an absolute path in the box")
        self.cwd = os.path.normpath(cwd) if cwd else defaults.get("WorkingDir") or ("/" if self.image else self.home)
        self._secrets = check_secrets(secrets or {})
        if build_step and not self._lowers:
            raise ConfigError("a build step runs on an image")
        self._build_step = build_step
        self.join = join
        self.policy = policy
        self._filters: dict[tuple[str, bool], tuple[int, bool]] = {}  # memfd, and whether refusals are counted
        self._policies: dict[str, Policy] = {}
        if policy is not None:
            self._check_policy(policy)
        self._volumes = self._find_volumes(volumes)  # last: a volume is made on first use, once all else is right

    def _find_volumes(self, volumes: Sequence[VolumeMount]) -> tuple[MountedVolume, ...]:
        if not volumes:
            return ()
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            raise ConfigError("--volume needs /dev/fuse: a volume is served by a FUSE daemon, which holds its caps")
        from fuse_overlay.markers import OWNER_XATTR

        from .volumes import Volumes
        self._volume_store = Volumes()
        ids, mounted = self.ids, []
        for v in volumes:
            volume = self._volume_store.ensure(v.name)
            try:
                given = OWNER_XATTR in map(os.fsencode, os.listxattr(volume.data))
            except OSError as e:
                raise ConfigError(f"volume {v.name}: {volume.data}: {e.strerror}") from None
            owner = None if given or v.read_only else (ids.program_uid, ids.program_gid)
            mounted.append(MountedVolume(v.name, check_box_path(v.dst, "--volume"), v.read_only, volume.data,
                                         volume.work, volume.lower, volume.size, volume.inodes, owner))
        return tuple(mounted)

    def plan(self) -> tuple[plan.Step, ...]:
        """The steps that will build this sandbox's box (plan.py; `sbx run --dry-run`), without building it.  The
        scratch dirs a FUSE union's upper gets on entry are named by what they will be."""
        upper, workdir = self._upper, None
        if upper is not None:
            workdir = os.path.join(os.path.dirname(upper), f".sbx-work-{os.path.basename(upper)}-(made on entry)")
        elif self._lowers and self.fs == "fuse":
            upper, workdir = "(a scratch dir)/upper", "(a scratch dir)/work"
        return plan.make(self._layout(upper, workdir), self.ids)

    def _layout(self, upper: str | None, workdir: str | None) -> Layout:
        return Layout(self._disk, self._inodes, self._binds, self._tmpfs, lowers=self._lowers, upper=upper,
                      workdir=workdir, fs=self.fs, loopback=self._loopback, home=self.home, netstack=self.netstack,
                      volumes=self._volumes, build=self._build_step, secrets=self._secrets)

    @property
    def secret_values(self) -> tuple[bytes, ...]:
        return tuple(value for _, value in self._secrets)

    def mask(self) -> Mask:
        """A masker of this sandbox's secrets for one stream (one per stream: it holds what may begin one)."""
        return Mask(self.secret_values)

    def pin(self) -> None:
        """Locks held while the box and its daemons live: shared on the image's layers (no prune removes them), and
        each volume's (volumes.py: one writer at a time, no `volume rm` meanwhile)."""
        for v in self._volumes:
            self._locks += self._volume_store.lock(self._volume_store.get(v.name), v.read_only)
        if self.image is None:
            return
        if not self.image.ref:  # a build step's image, named by its digest alone
            self._locks += self._store.pin_image(self.image)
        else:
            pinned, fds = self._store.pin(self.image.ref)
            self._locks += fds
            if pinned.digest != self.image.digest:
                raise ConfigError(f"image {self.image.ref}: it was replaced by another since this sandbox was made")
        if self._views:  # made once per layer and id range, by the first box that needs them
            from .images import owned
            owned.ensure(self._views, self.ids)

    def release(self) -> None:
        """Let go of the pins and the upper's lock (the daemon holds its own copies until it exits)."""
        for fd in self._locks:
            os.close(fd)
        self._locks = []

    @property
    def ids(self) -> IdMap:
        ids = detect(self._idmap)
        return ids.as_root() if self._root else ids

    @property
    def needs_daemon(self) -> bool:
        """Whether the root is the FUSE union or there are volumes: their daemons run beside the box, from the
        supervisor."""
        return bool(self._lowers) and self.fs == "fuse" or bool(self._volumes)

    def command(self, argv: Sequence[str]) -> list[str]:
        """What runs for `argv`: with an image, its Entrypoint first, and its Cmd when `argv` is empty."""
        if self.image is None:
            return list(argv)
        defaults = self.image.runtime
        return [*(defaults.get("Entrypoint") or []), *(argv or defaults.get("Cmd") or [])]

    def _policy(self, name: str) -> Policy:
        """Read once per sandbox: a run must not pay for reading policy files."""
        if name not in self._policies:
            from .seccomp.policy import load_policy
            self._policies[name] = load_policy(name)
        return self._policies[name]

    def _check_policy(self, name: str) -> None:
        """A bad policy is bad input: it fails before any box is built.  A shipped one was checked when built."""
        if prebuilt.load(name) is None:
            self._policy(name)

    def _one_process(self, name: str) -> bool:
        built = prebuilt.load(name)
        return built.one_process if built is not None else fallback.one_process(self._policy(name))

    def _filter(self, policy: str, unmapped_memory: bool = True) -> tuple[int, bool]:
        """A memfd holding the policy's BPF, built with the wheel (prebuilt.py) or compiled once per sandbox, and
        whether the spawner may count its refusals (compiler.SPAWN_CALLS).

        Without `unmapped_memory`, the calls that make memory no process maps fail (see fallback.py).
        """
        key = (policy, unmapped_memory)
        if key not in self._filters:
            built = prebuilt.load(policy)
            if built is not None:
                bpf, counted = built.bpf[unmapped_memory]
            else:
                from .seccomp import compiler
                loaded = self._policy(policy)
                compiled = compiler.compile(loaded if unmapped_memory else fallback.without_unmapped_memory(loaded))
                bpf, counted = compiled.bpf, compiled.counts_refusals
            fd = os.memfd_create(f"sbx-seccomp-{os.path.basename(policy)}", os.MFD_CLOEXEC)
            write_all(fd, bpf)
            self._filters[key] = (fd, counted)
        return self._filters[key]

    def prepare(self, argv: Sequence[str], limits: Limits | None, env: Mapping[str, str] | None, cwd: str | None,
                policy: str | None | Inherit, cgroup: bool) -> Prepared:
        """A run worked out and checked, before its fds are made: `cgroup` says whether it gets a run cgroup."""
        argv = self.command(argv)
        if not argv:
            raise ConfigError("no program given" + (" (and the image has no Cmd)" if self.image else ""))
        limits = limits or self.limits
        if limits.cpus is not None and not cgroup:
            raise ConfigError(f"--cpus needs cgroup v2 delegation, and there is none: {delegation().reason}")
        full_env = dict(env) if isinstance(env, ExactEnv) else \
            {**BASE_ENV, "HOME": self.home, **runtime_env(limits.memory, cgroup), **self.env, **(env or {})}
        if len(argv) > MAX_ARGS or len(full_env) > MAX_ARGS:
            raise ConfigError(f"at most {MAX_ARGS} arguments and {MAX_ARGS} environment variables")
        policy_name = self.policy if isinstance(policy, Inherit) else policy
        trace = fallback.traced(limits, cgroup, policy_name is not None and self._one_process(policy_name))
        sampled_memory = None if cgroup else limits.memory
        filter_fd, counted = (None, False) if policy_name is None else self._filter(policy_name, sampled_memory is None)
        return Prepared(tuple(argv), full_env, cwd or self.cwd, limits, policy_name, trace, filter_fd, counted,
                        sampled_memory)

    def close_filters(self) -> None:
        for fd, _ in self._filters.values():
            os.close(fd)
        self._filters.clear()


def _root_user(user: str | None, image_user: str | None) -> bool:
    """Whether the program is root of the box: `--user 0`, or else an image whose User is root.  An image's other
    users are not there to run as (the program is the sandbox's uid 1000, as without --user)."""
    if user is None:
        return (image_user or "").split(":")[0] in ("0", "root")
    if user.split(":")[0] in ("0", "root") and user.partition(":")[2] in ("", "0", "root"):
        return True
    if user in (str(PROGRAM_ID), f"{PROGRAM_ID}:{PROGRAM_ID}"):
        return False
    raise ConfigError(f"--user {user}: 0 (root of the box) or {PROGRAM_ID} (the default) are the users a box has")


class Prepared(Record):
    """A run as `Spec.prepare` worked it out; `request` is what the spawner gets once its fds are known."""

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    limits: Limits
    policy: str | None
    trace: bool
    filter_fd: int | None
    """The policy's filter (the sandbox's: send a dup of it), or None."""
    counted: bool
    memory: int | None
    """The memory limit the spawner samples: only without a run cgroup."""

    def request(self, ids: IdMap, cgroup: bool, capture: bool, fds: int, say_started: bool = False,
                terminal: bool = False) -> RunRequest:
        return RunRequest(
            argv=self.argv, env=self.env, cwd=self.cwd, rlimits=rlimits(self.limits, ids, cgroup),
            cpu_time=self.limits.cpu_time, wall_time=self.limits.wall_time, memory=self.memory,
            output=self.limits.output, cpu_set=self.limits.cpu_set, trace=self.trace, capture=capture, fds=fds,
            seccomp=Seccomp.NONE if self.filter_fd is None else Seccomp.COUNTED if self.counted else Seccomp.AS_IS,
            say_started=say_started, terminal=terminal)


def exec_failure(failure: StartFailure, req: RunRequest) -> Exception:
    code, stage = failure.errno, failure.stage
    message = os.strerror(code)
    if stage == "exec":
        return ExecError(f"{req.argv[0]}: {message}", code)
    if stage == "cwd":
        return ConfigError(f"--cwd {req.cwd}: {message}")
    if stage == "cgroup":
        return SetupError(f"the program could not join its run's cgroup: {message}")
    if stage == "trace":
        return SetupError(f"the spawner cannot trace the run, which is how it counts the CPU time of every process "
                          f"without cgroup v2 ({message}; see `sbx check`): give --pids 1, or delegate cgroup v2")
    return SetupError(f"preparing the program failed: {message}")
