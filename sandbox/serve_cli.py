"""`sbx serve`: the HTTP service (service/), on hypercorn's trio worker, with its pool in the same process."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .limits import parse_count, parse_size


def add_command(sub: Any) -> None:
    serve = sub.add_parser("serve", help="serve go-judge's /run API (and /file, /languages, /metrics) over HTTP")
    serve.add_argument("--listen", default="127.0.0.1:5050", metavar="HOST:PORT",
                       help="where to listen (default 127.0.0.1:5050); beyond loopback a --token-file is required")
    serve.add_argument("--pool", default="2", metavar="N", help="boxes kept ready (default 2)")
    serve.add_argument("--policy", default="compile", metavar="NAME|FILE|none",
                       help="the seccomp policy of every run (default compile)")
    serve.add_argument("--token-file", metavar="FILE", help="clients must send Authorization: Bearer <its content>")
    serve.add_argument("--max-request", default="64M", metavar="SIZE", help="largest request body (default 64M)")
    serve.add_argument("--max-pending", default="64", metavar="N", help="runs waiting before 429 (default 64)")
    serve.add_argument("--file-cache", default="1G", metavar="SIZE", help="bytes of cached files (default 1G)")
    serve.set_defaults(func=_cmd_serve)


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
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from .service import ServiceConfig, create_app

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
                           file_cache=parse_size(args.file_cache, "--file-cache"))
    hyper = Config()
    hyper.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hyper.accesslog = None
    trio.run(serve, create_app(config), hyper)  # type: ignore[arg-type]
    return 0
