"""`sbx serve` and `sbx worker`: the HTTP service (service/) with its pool in the same process, and the queue's
workers.  Both stop cleanly on SIGINT or SIGTERM (a shell starts a background job with SIGINT ignored)."""

from __future__ import annotations

import argparse
import ipaddress
import signal
from pathlib import Path

from ..errors import ConfigError
from ..run.limits import parse_count, parse_seconds, parse_size


def build_serve(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--listen", default="127.0.0.1:5050", metavar="HOST:PORT",
                       help="where to listen (default 127.0.0.1:5050); beyond loopback a --token-file is required")
    serve.add_argument("--pool", default="2", metavar="N", help="boxes kept ready (default 2)")
    serve.add_argument("--policy", default="compile", metavar="NAME|FILE|none",
                       help="the seccomp policy of every run (default compile)")
    serve.add_argument("--token-file", metavar="FILE", help="clients must send Authorization: Bearer <its content>")
    serve.add_argument("--max-request", default="64M", metavar="SIZE", help="largest request body (default 64M)")
    serve.add_argument("--max-pending", default="64", metavar="N", help="runs waiting before 429 (default 64)")
    serve.add_argument("--file-cache", default="1G", metavar="SIZE", help="bytes of cached files (default 1G)")
    serve.add_argument("--redis", metavar="URL", help="queue submissions on Redis Streams for sbx worker (default: "
                                                      "judge them in this process)")
    serve.add_argument("--output-budget", default="512M", metavar="SIZE",
                       help="bytes of output /run may hold for all requests at once: each takes its collectors' and "
                            "copy-outs' max before it runs (default 512M)")
    serve.add_argument("--src-prefix", action="append", default=[], metavar="DIR",
                       help="a server path under which a request's src may read files, as go-judge's flag "
                            "(repeatable, or comma-separated; default none: src is refused)")
    serve.add_argument("--callback-allow", action="append", default=[], metavar="HOST[,HOST...]",
                       help="hosts (names, addresses or networks such as 10.0.0.0/8) a submission's callback_url may "
                            "name (repeatable; default none: no callbacks)")
    serve.set_defaults(func=_cmd_serve)


def build_worker(worker: argparse.ArgumentParser) -> None:
    worker.add_argument("--redis", required=True, metavar="URL", help="e.g. redis://127.0.0.1:6379/0")
    worker.add_argument("--judges", default="1", metavar="N", help="submissions judged at once (default 1)")
    worker.add_argument("--lease", default="30", metavar="S",
                        help="a job whose worker is silent this long is taken over (default 30)")
    worker.add_argument("--name", metavar="NAME", help="consumer name (default: host and a random suffix)")
    worker.set_defaults(func=_cmd_worker)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _cmd_serve(args: argparse.Namespace) -> int:
    import anyio
    import redis
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from ..service import ServiceConfig, create_app

    host, port = _listen(args.listen)
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"--token-file {args.token_file}: {e.strerror}") from None
        if not token:
            raise ConfigError(f"--token-file {args.token_file}: empty")
    elif not _loopback(host):
        raise ConfigError(f"--listen {args.listen}: beyond loopback a --token-file is required")
    config = ServiceConfig(pool=parse_count(args.pool, "--pool"), policy=None if args.policy == "none" else args.policy,
                           token=token, max_request=parse_size(args.max_request, "--max-request"),
                           max_pending=parse_count(args.max_pending, "--max-pending"),
                           file_cache=parse_size(args.file_cache, "--file-cache"), redis=args.redis,
                           callback_allow=tuple(args.callback_allow),
                           output_budget=parse_size(args.output_budget, "--output-budget"),
                           src_prefix=tuple(p for given in args.src_prefix for p in given.split(",") if p))
    hyper = Config()
    hyper.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hyper.accesslog = None
    try:
        app = create_app(config)
    except redis.RedisError as e:
        raise ConfigError(f"--redis {args.redis}: {e}") from None

    async def main() -> None:
        """On asyncio: its transports write a response without the pass through the event loop that each of trio's
        socket sends makes, a fifth of an HTTP /run of /bin/true (bench/README.md)."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async def stopped() -> None:
                await signals.__anext__()
            await serve(app, hyper, shutdown_trigger=stopped)  # type: ignore[arg-type]
    anyio.run(main, backend="asyncio")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    import redis
    import trio

    from ..service.redis_queue import Worker

    try:
        worker = Worker(args.redis, parse_seconds(args.lease, "--lease"), args.name)
    except (redis.RedisError, ValueError) as e:
        raise ConfigError(f"--redis {args.redis}: {e}") from None
    judges = parse_count(args.judges, "--judges")

    async def main() -> None:
        """Until SIGINT or SIGTERM; a job cut short stays pending, and another worker takes it after the lease."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.run, judges)
                await signals.__anext__()
                nursery.cancel_scope.cancel()
    trio.run(main)
    return 0
