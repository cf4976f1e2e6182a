"""Starting and stopping a box, from the supervisor (async, anyio) side.

Process tree::

    supervisor ── outer (new user namespace; waits) ── box init (pid 1 of the new
                                                        pid/mount/net/ipc/uts/cgroup namespaces)

Both are the starter (starter.c), a small static program spawned fresh for
each box, so that nothing of the caller's memory, command line or
environment reaches them; box init is the outer's fork.  The outer process
exists because a user namespace's id map must be written from outside it
(newuidmap needs the target pid), and because a new pid namespace only
applies to children.  Each link dies with its parent (PR_SET_PDEATHSIG), and
when box init dies the kernel kills every process of its pid namespace:
nothing of a box can outlive the supervisor.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

import anyio

from ..errors import SetupError
from ..run.limits import Limits
from ..shipped import SPAWNER, STARTER, shipped
from . import netstack, plan, protocol
from .cgroups import BoxCgroup, Delegation, RunCgroup, box_cgroup_of
from .layout import Layout
from .netstack import READY_TIMEOUT, Network
from .run_protocol import RunEnd, RunRequest, StartFailure, decode_report
from .starter import spawn_starter, write_id_maps
from .union_daemon import Daemon, ForkServer
from .userns import IdMap

_CLOSE_TIMEOUT = 5.0
_SPAWNER_GRACE = 1.0
"""How long a spawner may be late with a wall limit or a kill; one that is (a program wedged it) is replaced."""


class Box:
    """One live box: namespaces, root filesystem, box init for file requests, and its spawner for runs."""

    def __init__(self, layout: Layout, ids: IdMap, delegation: Delegation, daemon_holds: tuple[int, ...] = (),
                 join: int = 0, network: int = 0) -> None:
        """`daemon_holds`: fds the FUSE daemons keep for their whole life (locks that must outlast a killed caller).
        `join`: the outer process of a running box to enter (sbx exec): no box is made, the layout is not used, and
        the runs' cgroups, if the box has one, are inside the box's.  `network`: the holder of the network whose
        user and network namespaces the box shares (living/network.py), already mapped."""
        self.layout = layout
        self._join = join
        self._network = network
        self._daemon_holds = daemon_holds
        self.ids = ids
        self._delegation = delegation
        self.cgroup: BoxCgroup | None = None
        self._run_cgroup: RunCgroup | None = None
        self._sock: protocol.AsyncSocket | None = None
        self._spawner: protocol.AsyncSocket | None = None
        self._killed: str | None = None
        self._started: Callable[[], None] | None = None
        self._run_started = 0.0
        self._pid = 0
        self._pidfd = -1
        self._send_lock = anyio.Lock()
        self.broken = False
        self.daemons: list[Daemon] = []
        """The FUSE daemons serving the box: its union root's (first), and each volume's (layout.volumes)."""
        self._netstack: netstack.Stack | None = None
        self._busy = False

    async def start(self) -> None:
        starter = shipped(STARTER, "the starter")
        spawner = shipped(SPAWNER, "the spawner")
        cgroup_fd = -1
        delegation = self._delegation
        if self._join and delegation.base is not None:  # sbx exec: a cgroup in the box's, if it has one
            delegation = delegation.replace(base=box_cgroup_of(self._join))
        if delegation.base is not None:
            try:
                # it may first remove a dead supervisor's cgroups, waiting for their processes to die
                self.cgroup = await anyio.to_thread.run_sync(BoxCgroup, delegation, not self._join)
                cgroup_fd = self.cgroup.init_procs()
            except OSError as e:
                await self.aclose()
                raise SetupError(f"cannot make the box's cgroup: {e.strerror or e}") from None
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        unshared_r, unshared_w = os.pipe()
        mapped_r, mapped_w = os.pipe()
        theirs = [child.detach(), unshared_w, mapped_r]
        try:
            enter = f"exec:{self._join}" if self._join else f"net:{self._network}" if self._network else ""
            self._pid = spawn_starter(starter, spawner, self.ids, theirs, cgroup_fd, enter)
            self._pidfd = os.pidfd_open(self._pid)
        except OSError as e:
            parent.close()
            for fd in (unshared_r, mapped_w):
                os.close(fd)
            await self.aclose()
            raise SetupError(f"cannot start the box: {e.strerror or e}") from None
        finally:
            for fd in (*theirs, *([cgroup_fd] if cgroup_fd >= 0 else [])):
                os.close(fd)
        self._sock = protocol.AsyncSocket(parent)
        try:
            # joining a running box builds nothing but a /proc of its nested pid namespace, and for a program that
            # is root of the box its own user namespace
            tokens = plan.tokens(plan.make(self.layout, self.ids)) if not self._join else \
                ["join", *plan.tokens(plan.joined(self.ids))]
            await protocol.asend_tokens(self._sock, tokens, [])
            if self.ids.mode == "range" and not self._join and not self._network:
                await self._map_ids(unshared_r, mapped_w)
            reply, fds = await protocol.arecv(self._sock)
            while "fuse" in reply or "volume" in reply:  # a FUSE mount made: its daemon, before it is used
                await self._start_daemon(fds[0], *self._daemon_options(reply))
                reply, fds = await protocol.arecv(self._sock)
            if reply.get("ready"):
                self._spawner = _socket(fds[0])
        except EOFError:
            reply = {"error": "box init exited during setup"}
        except BaseException:
            await self.aclose()
            raise
        finally:
            os.close(unshared_r)
            os.close(mapped_w)
        if "error" in reply:
            death = self.daemon_death()
            if death is not None:
                reply["error"] += f" ({death})"
            await self.aclose()
            raise SetupError(reply["error"])
        if self.layout.netstack is not None and not self._join:
            try:
                await self._start_netstack(self.layout.netstack)
            except BaseException:
                await self.aclose()
                raise

    async def _start_netstack(self, net: Network) -> None:
        """The box's way out (netstack.py), up before any program runs.  Spawned from this thread, the event
        loop's, which outlives the box: the stack dies with the thread that started it."""
        self._netstack = stack = netstack.start(self._pid, net)
        with anyio.move_on_after(READY_TIMEOUT):
            while not stack.ready():
                await anyio.sleep(0.002)
            return
        raise SetupError(f"{net.stack}: the box's network was not up after {READY_TIMEOUT:.0f} s")

    def _daemon_options(self, reply: dict[str, Any]) -> tuple[str, list[str]]:
        """What the daemon of the FUSE mount box init made is (for messages), and its options: the union root's
        (`{"fuse": true}`), or the volume's that `{"volume": N}` names."""
        layout = self.layout
        if "fuse" in reply:
            what = "the union filesystem daemon"
            opts = [f"lowerdir={':'.join(layout.lowers)}", f"upperdir={layout.upper}", f"workdir={layout.workdir}",
                    f"quota_bytes={layout.disk}", f"quota_inodes={layout.inodes}"]
        else:
            index = reply["volume"]
            if not isinstance(index, int) or not 0 <= index < len(layout.volumes):
                raise SetupError(f"box init named a volume the box does not have: {index!r}")
            volume = layout.volumes[index]
            what = f"the daemon of the volume at {volume.dst}"
            opts = [f"lowerdir={volume.data}", "ro"] if volume.read_only else \
                [f"lowerdir={volume.lower}", f"upperdir={volume.data}", f"workdir={volume.work}",
                 f"quota_bytes={volume.size}", f"quota_inodes={volume.inodes}"]
        if self.ids.mode == "range":  # the daemon shows host ids as the box's user namespace maps them
            opts += [f"uidmapping={':'.join(self.ids.uid_map_args())}",
                     f"gidmapping={':'.join(self.ids.gid_map_args())}"]
        if self.ids.root:  # the layers' root is the program's namespace's 0
            opts.append(f"rootid={self.ids.program_uid}:{self.ids.program_gid}")
        return what, opts

    async def _start_daemon(self, fd: int, what: str, opts: list[str]) -> None:
        """Serve a FUSE mount box init made (the root, or a volume) on `fd` with sbx-overlayfs, from outside the
        box.

        The daemon runs as the caller, out of the program's reach (another pid
        namespace, another uid in range mode).  Its stderr goes to an unlinked
        file, read only to explain a failure.
        """
        log = tempfile.TemporaryFile()
        procs = -1
        try:
            if self.cgroup is not None:  # it joins before it serves: its work for the box is the box's
                try:
                    procs = self.cgroup.daemon_procs()
                except OSError as e:
                    raise SetupError(f"cannot make the cgroup of {what}: {e.strerror or e}") from None
            try:
                daemon = await anyio.to_thread.run_sync(
                    ForkServer.fork_daemon, ["-o", ",".join(opts)], fd, log.fileno(), procs, self._daemon_holds)
            except OSError as e:
                raise SetupError(f"cannot start {what}: {e.strerror or e}") from None
            daemon.what, daemon.log = what, log
            self.daemons.append(daemon)
        except BaseException:
            log.close()
            raise
        finally:
            os.close(fd)
            if procs >= 0:
                os.close(procs)

    async def watch_daemons(self) -> None:
        """End the current run (IE) if a FUSE daemon of the box dies under it."""
        async with anyio.create_task_group() as watchers:
            for daemon in self.daemons:
                watchers.start_soon(self._watch_daemon, daemon, watchers.cancel_scope)

    async def _watch_daemon(self, daemon: Daemon, watchers: anyio.CancelScope) -> None:
        await anyio.wait_readable(daemon.pidfd)
        reason = self.daemon_death()
        assert reason is not None
        await self.kill_run(reason)
        watchers.cancel()

    def daemon_death(self) -> str | None:
        """Why the run cannot be trusted, if a daemon is gone.

        A program that touched a FUSE mount right after its daemon died got
        ENOTCONN and may have ended before `watch_daemons` woke: its failure
        is the sandbox's, not the program's.
        """
        for daemon in self.daemons:
            if daemon.dead:
                self.broken = True
                return f"{daemon.what} died ({daemon.last_words()})"
        return None

    async def _map_ids(self, unshared_r: int, mapped_w: int) -> None:
        await anyio.wait_readable(unshared_r)
        if os.read(unshared_r, 1) != b"u":
            return  # the outer process failed; its error arrives on the socket
        await anyio.to_thread.run_sync(write_id_maps, self.ids, self._pid)
        os.write(mapped_w, b"g")

    async def start_run(self, req: RunRequest, fds: list[int], limits: Limits,
                        started: Callable[[], None] | None = None) -> None:
        """Hand a run to the spawner, in a fresh cgroup when the box has one.

        `fds` (the program's, 0 to req.fds - 1, then the seccomp filter if
        any) are closed once sent: the output pipes must reach EOF when the last
        process of the run dies.  `started` is called once the program runs
        (for a request that asks the spawner to say so).
        """
        claimed = False
        try:
            self._claim()
            claimed = True
            self._killed = None
            self._started = started
            cgroup = self.cgroup is not None
            if self.cgroup is not None:
                try:
                    self._run_cgroup = self.cgroup.new_run(limits)
                except OSError as e:
                    raise SetupError(f"cannot make the run's cgroup: {e.strerror or e}") from None
                # the program joins it before execve; the spawner watches its CPU time
                fds = [*fds, self._run_cgroup.procs_fd, self._run_cgroup.cpu_stat_fd]
            async with self._send_lock:
                self._run_started = time.monotonic()
                try:
                    await protocol.asend_tokens(self._spawner, req.tokens(cgroup), fds)  # type: ignore[arg-type]
                except (BrokenPipeError, ConnectionResetError):
                    self.broken = True
                    raise SetupError("the box's spawner is gone (it could not start, or it died)") from None
        except BaseException:
            if claimed:  # a refused request must not release the run that holds the box, or its cgroup
                self._busy = False
                self._drop_run_cgroup()
            raise
        finally:
            for fd in fds:
                os.close(fd)

    def _drop_run_cgroup(self) -> None:
        """A run cgroup that cannot be removed leaves the box unfit: closing it kills its whole tree."""
        if self._run_cgroup is not None:
            cgroup, self._run_cgroup = self._run_cgroup, None
            try:
                cgroup.remove()
            except OSError:
                self.broken = True

    def _claim(self) -> None:
        """One run or one file request at a time: each waits for its own reply on its socket."""
        if self._sock is None or self.broken:
            raise SetupError("the box is closed or broken")
        if self._busy:
            raise SetupError("the box is busy: one run or file operation at a time")
        self._busy = True

    async def file_op(self, tokens: list[str], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        """A request for box init's file copying or reset (starter.c); returns its reply and any fd it sent.

        `fds` are closed once sent.
        """
        claimed = False
        try:
            self._claim()
            claimed = True
            await protocol.asend_tokens(self._sock, tokens, fds)  # type: ignore[arg-type]
            return await protocol.arecv(self._sock)  # type: ignore[arg-type]
        except EOFError:
            self.broken = True
            raise SetupError("box init died") from None
        finally:
            if claimed:
                self._busy = False
            for fd in fds:
                os.close(fd)

    async def reply(self, wall_limit: float | None) -> RunEnd | StartFailure:
        """Wait for the started run to end.

        Cancelled, it ends the run (the spawner kills every process) and still
        collects the report, so the box stays usable; a spawner that does not
        answer in time is replaced, and a box that cannot replace it is marked
        broken.
        """
        try:
            end = await self._reply(wall_limit)
            if self._run_cgroup is not None and isinstance(end, RunEnd):
                try:
                    end = self._run_cgroup.accounted(end)
                except OSError as e:
                    raise SetupError(f"reading the run's cgroup failed: {e.strerror or e}") from None
            return end
        finally:
            self._busy = False
            self._drop_run_cgroup()

    async def _reply(self, wall_limit: float | None) -> RunEnd | StartFailure:
        report = None
        try:
            with anyio.move_on_after(math.inf if wall_limit is None else wall_limit + _SPAWNER_GRACE):
                report = await self._recv_report()
            if report is None:
                await self.kill_run("WLE")
                report = await self._late_report()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self.kill_run("cancelled")
                await self._late_report()
            raise
        except (EOFError, OSError):
            await self._respawn()
        except anyio.ClosedResourceError:
            pass
        if self._sock is None:
            raise SetupError("the box was closed during the run")
        if report is None:  # what the supervisor knows
            return RunEnd(None, 0.0, time.monotonic() - self._run_started, 0,
                          killed=self._killed or ("the box stopped, or the program killed its spawner" if self._join
                                                  else "the sandbox's spawner died (the program killed it)"))
        return decode_report(report, self._killed)

    async def _recv_report(self) -> dict[str, Any]:
        """The spawner's end-of-run report; without memory.peak (Linux < 5.19), sample the run's memory meanwhile."""
        cgroup = self._run_cgroup
        while True:
            if self._spawner is None:
                raise anyio.ClosedResourceError("the box was closed")
            with anyio.move_on_after(0.005 if cgroup is not None and not cgroup.has_peak else math.inf):
                report, _ = await protocol.arecv(self._spawner)  # one recvmsg: cancelling it loses nothing
                if "started" not in report:
                    return report
                if self._started is not None:
                    self._started()
                continue
            assert cgroup is not None
            cgroup.sample_memory()

    async def _late_report(self) -> dict[str, Any] | None:
        """The report of a run that was told to end; None if the spawner failed to give it (it is replaced)."""
        with anyio.move_on_after(_SPAWNER_GRACE):
            try:
                return await self._recv_report()
            except (EOFError, OSError, anyio.ClosedResourceError):
                pass
        await self._respawn()
        return None

    async def _respawn(self) -> None:
        """Box init kills every process of the box and starts a new spawner (a program wedged or killed the old one)."""
        if self._spawner is not None:
            self._spawner.close()
            self._spawner = None
        if self._sock is None:
            return  # the box was closed meanwhile
        try:
            with anyio.fail_after(_CLOSE_TIMEOUT):
                await protocol.asend_tokens(self._sock, ["respawn"], [])  # type: ignore[arg-type]
                reply, fds = await protocol.arecv(self._sock)  # type: ignore[arg-type]
            self._spawner = _socket(fds[0])
        except (EOFError, OSError, IndexError, TimeoutError, anyio.ClosedResourceError):
            self.broken = True

    async def kill_run(self, reason: str) -> None:
        """Ask the spawner to end the current run now (it ignores this between runs); the first reason stands."""
        if self._killed is None:
            self._killed = reason
        async with self._send_lock:
            if self._spawner is None:
                return
            try:
                await self._spawner.sendmsg([b"kill"], [])
            except (OSError, anyio.ClosedResourceError):
                pass

    @property
    def pid(self) -> int:
        """The outer process: its namespaces are the box's."""
        return self._pid

    async def signal_run(self, signum: int) -> None:
        """Send `signum` to the current run's first process (none between runs); the run goes on as it will."""
        async with self._send_lock:
            if self._spawner is None:
                return
            try:
                await self._spawner.sendmsg([f"signal {int(signum)}".encode()], [])
            except (OSError, anyio.ClosedResourceError):
                pass

    async def aclose(self) -> None:
        """Close the control socket (box init exits on EOF); SIGKILL the outer process if that is slow."""
        if self._netstack is not None:
            self._netstack.stop()
            self._netstack = None
        for sock in (self._spawner, self._sock):
            if sock is not None:
                sock.close()
        self._sock = self._spawner = None
        if self._pidfd >= 0:
            with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True) as scope:
                await anyio.wait_readable(self._pidfd)
            if scope.cancelled_caught:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                with anyio.CancelScope(shield=True):
                    await anyio.wait_readable(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
            try:
                os.waitpid(self._pid, 0)  # it is dead (its pidfd said so): this only collects it
            except ChildProcessError:
                pass
        if self.cgroup is not None:
            cgroup, self.cgroup = self.cgroup, None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(cgroup.remove)
        daemons, self.daemons = self.daemons, []
        for daemon in daemons:
            # the mount went with the box's namespaces; the daemon sees ENODEV and exits
            with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True) as scope:
                await anyio.wait_readable(daemon.pidfd)
            if scope.cancelled_caught:
                daemon.kill()
                with anyio.CancelScope(shield=True):
                    await anyio.wait_readable(daemon.pidfd)
            daemon.close()

    async def __aenter__(self) -> Box:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _socket(fd: int) -> protocol.AsyncSocket:
    return protocol.AsyncSocket(socket.socket(fileno=fd))
