"""Command line: `python -m signaling run [...]` and `python -m signaling token [...]`.

The console script `mediaserver` maps here, so `mediaserver token ...` works too.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Sequence
from urllib.parse import urlencode

from aiohttp import web

from mediaserver.api import Role
from mediaserver.logs import LOG_FORMATS, configure_logging

from .app import TLS, AccessLogger, create_app
from .auth import encode_token
from .config import DEV_TOKEN_SECRET, ENV_PREFIX, ServerConfig, add_run_arguments, config_from_args

DEMO_ROOM = "demo"
DEMO_TTL_S = 12 * 3600


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mediaserver", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a node")
    add_run_arguments(run)
    run.add_argument("--log-level", default=os.environ.get(ENV_PREFIX + "LOG_LEVEL", "INFO"))
    run.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get(ENV_PREFIX + "LOG_FORMAT", "text"),
        help="text (escaped, one line a record) or json (one object a line); CONSULT_LOG_FORMAT",
    )
    token = sub.add_parser("token", help="mint a participant token (JWT)")
    token.add_argument("--room", required=True)
    token.add_argument("--sub", required=True, help="the platform's user id")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--name", required=True, help="display name")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds of validity")
    token.add_argument(
        "--secret",
        default=os.environ.get(ENV_PREFIX + "TOKEN_SECRET", DEV_TOKEN_SECRET),
        help="HS256 secret (CONSULT_TOKEN_SECRET; the dev secret by default)",
    )
    token.add_argument("--private-key", help="PEM private key file: RS256/ES256 instead of HS256")
    return parser


def demo_urls(config: ServerConfig, *, room: str = DEMO_ROOM) -> dict[str, str]:
    """Dev mode's addresses: the launcher (/demo) and each consultation page, with tokens."""
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    base = f"{_scheme(config)}://{host}:{config.port}"
    tokens: dict[str, str] = {}
    for role, name in ((Role.DOCTOR, "Dr. Demo"), (Role.PATIENT, "Demo Patient")):
        tokens[role.value] = encode_token(
            secret=config.token_secret,
            room=room,
            sub=f"dev-{role.value}",
            role=role,
            name=name,
            ttl_s=DEMO_TTL_S,
        )
    urls = {"demo": f"{base}/demo?{urlencode(tokens)}"}
    for kind, token in tokens.items():
        urls[kind] = f"{base}/consult/{kind}?{urlencode({'token': token})}"
    return urls


def _scheme(config: ServerConfig) -> str:
    return "https" if config.tls_cert else "http"


def _banner(config: ServerConfig) -> str:
    lines = [f"consultation node on {_scheme(config)}://{config.host}:{config.port}"]
    if config.dev:
        lines += [
            "DEV MODE: in-memory state, rooms created on first join, demo page enabled",
            f"  API key:      {config.api_key}",
            f"  token secret: {config.token_secret}",
        ]
        for role, url in demo_urls(config).items():
            lines.append(f"  {role:8s} {url}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        configure_logging(str(args.log_level), str(args.log_format))
        config = config_from_args(args)
        app = create_app(config=config)
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    print(_banner(config), flush=True)
    # Everything imported so far lives as long as the process: keep it out of the cyclic
    # collector's full passes, which otherwise stall forwarding for every room (tens of ms).
    gc.collect()
    gc.freeze()
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        ssl_context=app.get(TLS),
        access_log_class=AccessLogger,
        print=None,
    )
    return 0


def token(args: argparse.Namespace) -> int:
    private_key = None
    if args.private_key:
        with open(args.private_key, encoding="ascii") as f:
            private_key = f.read()
    print(
        encode_token(
            secret=args.secret,
            private_key=private_key,
            room=args.room,
            sub=args.sub,
            role=Role(args.role),
            name=args.name,
            ttl_s=args.ttl,
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return run(args)
    return token(args)


if __name__ == "__main__":
    sys.exit(main())
