"""`sbx submit`: a solution and its tests to a running `sbx serve`, and, with --wait, the same table as `sbx judge`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..run.limits import parse_seconds, parse_size


def build(submit: argparse.ArgumentParser) -> None:
    submit.add_argument("solution", metavar="SOLUTION")
    submit.add_argument("--tests", required=True, metavar="DIR", help="NAME.in with NAME.out (or NAME.ans)")
    submit.add_argument("--server", default="http://127.0.0.1:5050", metavar="URL", help="default http://127.0.0.1:5050")
    submit.add_argument("--lang", metavar="NAME", help="default: from the file extension (the server's languages)")
    submit.add_argument("--time", default="1", metavar="S", help="CPU time limit per test (default 1)")
    submit.add_argument("--memory", default="256M", metavar="SIZE", help="memory limit per test (default 256M)")
    submit.add_argument("--token-file", metavar="FILE", help="the bearer token the server asks for")
    submit.add_argument("--wait", action="store_true", help="wait for the verdict and print its table")
    submit.add_argument("--json", action="store_true", help="with --wait: the record as one JSON object")
    submit.set_defaults(func=_cmd_submit)


def _cmd_submit(args: argparse.Namespace) -> int:
    import httpx

    from ..judge import find_tests, table

    tests = find_tests(Path(args.tests))
    headers = {}
    if args.token_file:
        try:
            headers["Authorization"] = f"Bearer {Path(args.token_file).read_text().strip()}"
        except OSError as e:
            raise ConfigError(f"--token-file {args.token_file}: {e.strerror}") from None
    try:
        source = Path(args.solution).read_text()
        body = {"language": args.lang, "source": source,
                "tests": [{"name": t.name, "input": t.input.read_text(), "answer": t.answer.read_text()}
                          for t in tests],
                "limits": {"time": parse_seconds(args.time, "--time"), "memory": parse_size(args.memory, "--memory")}}
    except OSError as e:
        raise ConfigError(f"{e.filename}: {e.strerror}") from None
    try:
        with httpx.Client(base_url=args.server, headers=headers, timeout=30) as client:
            if body["language"] is None:
                body["language"] = _language(client, Path(args.solution))
            submitted = _ok(client.post("/submissions", json=body))
            if not args.wait:
                print(submitted["id"])
                return 0
            while (state := _ok(client.get(f"/submissions/{submitted['id']}")))["state"] != "done":
                time.sleep(0.2)
    except httpx.HTTPError as e:
        raise ConfigError(f"--server {args.server}: {e}") from None
    record = state["result"]
    print(json.dumps(record) if args.json else table(record))
    return 0 if record["verdict"] == "OK" else 1


def _language(client: Any, solution: Path) -> str:
    found = [lang["name"] for lang in _ok(client.get("/languages")) if solution.suffix in lang["extensions"]]
    if not found:
        raise ConfigError(f"{solution}: the server has no language for {solution.suffix!r}; use --lang")
    return str(found[0])


def _ok(response: Any) -> Any:
    if response.status_code >= 400:
        raise ConfigError(f"the server answered {response.status_code}: {response.json()}")
    return response.json()
