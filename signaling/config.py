"""Server configuration: a frozen keyword-only dataclass, loaded from CLI flags and env vars."""

from __future__ import annotations

import argparse
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from mediaserver.api import IceConfig, IceServer, MediaConfig

from .ratelimit import Rate

ENV_PREFIX = "CONSULT_"
DEV_TOKEN_SECRET = "dev-token-secret-not-for-production"
DEV_API_KEY = "dev-api-key"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Everything a node needs; `media` is handed to the media plane unchanged."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str
    token_secret: str
    dev: bool = False
    resume_grace_s: float = 30.0
    peer_timeout_s: float = 15.0
    join_timeout_s: float = 10.0
    ws_heartbeat_s: float = 20.0
    max_message_bytes: int = 65536
    max_chat_chars: int = 4000
    auto_create_rooms: bool | None = None
    stats_interval_s: float = 5.0
    media: MediaConfig = field(default_factory=MediaConfig)
    # -- limits (issue 11; docs/protocol.md "Limits"): what one participant, socket, room and
    # node may send or hold. Rates are token buckets: `rate` per second, `burst` at once.
    chat_rate: float = 2.0  # chat messages per second per participant
    chat_burst: int = 10
    telemetry_rate: float = 100.0  # telemetry readings per second per participant
    telemetry_burst: int = 300  # at least one full batch (100 readings)
    ws_rate: float = 50.0  # messages per second per socket (all types)
    ws_burst: int = 200
    ws_flood: int = 200  # refused messages (refilled at ws_rate/s) before close 4009
    flood_penalty_s: float = 10.0  # after a 4009, the same user's joins to that room refused
    room_chat_messages: int = 1000  # chat a room keeps (oldest dropped)
    room_chat_bytes: int = 1 << 20  # ... and its size (JSON bytes)
    chat_page_messages: int = 50  # chat in `room` and in a chat-history page, at most
    chat_page_bytes: int = 32768  # ... and their size (never over max_message_bytes)
    room_telemetry_bytes: int = 64 << 20  # telemetry a room keeps (JSON bytes; then refused)
    max_rooms: int = 500  # rooms on the node
    max_node_participants: int = 2000  # sessions on the node (waiting ones included)
    max_room_participants: int = 32  # sessions in one room (waiting ones included)

    def __post_init__(self) -> None:
        if not self.api_key or not self.token_secret:
            raise ValueError("api_key and token_secret are required (or use dev mode)")
        if self.auto_create_rooms is None:
            object.__setattr__(self, "auto_create_rooms", self.dev)
        if self.max_message_bytes < 4096:
            raise ValueError("max_message_bytes must be at least 4096")
        self._check_limits()
        for name in ("resume_grace_s", "peer_timeout_s", "join_timeout_s", "stats_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    @property
    def rooms_auto_created(self) -> bool:
        return bool(self.auto_create_rooms)

    def _check_limits(self) -> None:
        for name in LIMIT_FIELDS:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.telemetry_burst < 100:
            raise ValueError("telemetry_burst must be at least 100 (one full batch)")

    @property
    def chat_limit(self) -> Rate:
        return Rate(self.chat_rate, self.chat_burst)

    @property
    def telemetry_limit(self) -> Rate:
        return Rate(self.telemetry_rate, self.telemetry_burst)

    @property
    def ws_limit(self) -> Rate:
        return Rate(self.ws_rate, self.ws_burst)

    @property
    def ws_flood_limit(self) -> Rate:
        """Refused messages a socket may send (refilled at ws_rate) before it is closed."""
        return Rate(self.ws_rate, self.ws_flood)


# Limit options: (field, CLI flag, type, help); the env var is CONSULT_<FIELD IN CAPITALS>.
LIMIT_OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    ("chat_rate", "--chat-rate", float, "chat messages per second per participant (2)"),
    ("chat_burst", "--chat-burst", int, "chat messages at once per participant (10)"),
    ("telemetry_rate", "--telemetry-rate", float, "telemetry readings/s per participant (100)"),
    ("telemetry_burst", "--telemetry-burst", int, "telemetry readings at once (300, >= 100)"),
    ("ws_rate", "--ws-rate", float, "WebSocket messages per second per socket (50)"),
    ("ws_burst", "--ws-burst", int, "WebSocket messages at once per socket (200)"),
    ("ws_flood", "--ws-flood", int, "refused messages before a socket is closed 4009 (200)"),
    ("flood_penalty_s", "--flood-penalty", float, "seconds a flooder may not rejoin (10)"),
    ("room_chat_messages", "--room-chat-messages", int, "chat messages a room keeps (1000)"),
    ("room_chat_bytes", "--room-chat-bytes", int, "chat bytes a room keeps (1048576)"),
    ("chat_page_messages", "--chat-page-messages", int, "chat per room/history reply (50)"),
    ("chat_page_bytes", "--chat-page-bytes", int, "chat bytes per room/history reply (32768)"),
    ("room_telemetry_bytes", "--room-telemetry-bytes", int, "telemetry bytes a room keeps"),
    ("max_rooms", "--max-rooms", int, "rooms on the node (500)"),
    ("max_node_participants", "--max-node-participants", int, "participants on the node (2000)"),
    ("max_room_participants", "--max-room-participants", int, "participants in a room (32)"),
)
LIMIT_FIELDS = tuple(name for name, *_ in LIMIT_OPTIONS)


def parse_port_range(text: str) -> tuple[int, int]:
    """'40000-40100' -> (40000, 40100)."""
    low, sep, high = text.partition("-")
    if not sep:
        raise ValueError("port range must look like 40000-40100")
    return int(low), int(high)


def parse_ice_servers(text: str) -> tuple[IceServer, ...]:
    """A JSON list of {urls, username?, credential?}, or comma-separated URLs."""
    text = text.strip()
    if not text:
        return ()
    if text.startswith("["):
        items = json.loads(text)
        return tuple(
            IceServer(
                urls=[item["urls"]] if isinstance(item["urls"], str) else list(item["urls"]),
                username=item.get("username"),
                credential=item.get("credential"),
            )
            for item in items
        )
    return tuple(IceServer(urls=[url.strip()]) for url in text.split(",") if url.strip())


def _bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m signaling run`; each falls back to CONSULT_<NAME> in the env."""
    add = parser.add_argument
    add("--dev", action="store_true", default=None, help="dev mode (env CONSULT_DEV)")
    add("--host", help="listen address (CONSULT_HOST, default 127.0.0.1)")
    add("--port", type=int, help="listen port (CONSULT_PORT, default 8080)")
    add("--api-key", help="HTTP API bearer key (CONSULT_API_KEY)")
    add("--token-secret", help="HS256 secret for participant tokens (CONSULT_TOKEN_SECRET)")
    add("--resume-grace", type=float, help="seconds a dropped socket may resume (30)")
    add("--peer-timeout", type=float, help="seconds a disconnected peer is kept (15)")
    add("--max-message-bytes", type=int, help="largest WebSocket message (65536)")
    add("--auto-create-rooms", choices=("true", "false"), help="create rooms on first join")
    add("--ice-host", action="append", help="address to bind media sockets on (repeatable)")
    add("--ice-announce", help="address announced in ICE candidates (public address)")
    add("--rtc-ports", help="UDP port range for media, e.g. 40000-40100")
    add("--ice-servers", help="STUN/TURN for clients: JSON list or comma-separated URLs")
    _add_limit_arguments(parser)


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """Limits (issue 11): --chat-rate ... each also CONSULT_<FIELD NAME IN CAPITALS>."""
    for name, flag, conv, text in LIMIT_OPTIONS:
        parser.add_argument(flag, type=conv, dest=name, help=f"{text} (CONSULT_{name.upper()})")


def config_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> ServerConfig:
    """Merge CLI flags over CONSULT_* env vars over embedded defaults."""
    env = os.environ if env is None else env

    def pick(flag: object, name: str) -> str | None:
        if flag is not None:
            return str(flag)
        return env.get(ENV_PREFIX + name)

    dev_text = pick(args.dev, "DEV")
    dev = dev_text is not None and _bool(dev_text)
    api_key = pick(args.api_key, "API_KEY") or (DEV_API_KEY if dev else "")
    secret = pick(args.token_secret, "TOKEN_SECRET") or (DEV_TOKEN_SECRET if dev else "")
    hosts_text = ",".join(args.ice_host) if args.ice_host else env.get(ENV_PREFIX + "ICE_HOSTS", "")
    ports_text = pick(args.rtc_ports, "RTC_PORTS")
    min_port, max_port = parse_port_range(ports_text) if ports_text else (0, 0)
    ice = IceConfig(
        host_addresses=tuple(h.strip() for h in hosts_text.split(",") if h.strip()),
        announced_address=pick(args.ice_announce, "ICE_ANNOUNCE") or None,
        min_port=min_port,
        max_port=max_port,
        ice_servers=parse_ice_servers(pick(args.ice_servers, "ICE_SERVERS") or ""),
    )
    values: dict[str, object] = {}
    for attr, flag, name, conv in (
        ("host", args.host, "HOST", str),
        ("port", args.port, "PORT", int),
        ("resume_grace_s", args.resume_grace, "RESUME_GRACE_S", float),
        ("peer_timeout_s", args.peer_timeout, "PEER_TIMEOUT_S", float),
        ("max_message_bytes", args.max_message_bytes, "MAX_MESSAGE_BYTES", int),
        ("auto_create_rooms", args.auto_create_rooms, "AUTO_CREATE_ROOMS", _bool),
    ):
        text = pick(flag, name)
        if text is not None:
            values[attr] = conv(text)
    for name, _flag, limit_conv, _help in LIMIT_OPTIONS:  # limits (issue 11)
        text = pick(getattr(args, name, None), name.upper())
        if text is not None:
            values[name] = limit_conv(text)
    return ServerConfig(
        api_key=api_key,
        token_secret=secret,
        dev=dev,
        media=MediaConfig(ice=ice),
        **values,  # type: ignore[arg-type]
    )


def random_secret() -> str:
    return secrets.token_urlsafe(32)
