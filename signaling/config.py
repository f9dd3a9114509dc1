"""Server configuration: a frozen keyword-only dataclass, loaded from CLI flags and env vars."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import secrets
import socket
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from mediaserver.api import IceConfig, IceServer, MediaConfig, RecordingConfig

from .auth import TokenVerifier
from .ratelimit import Rate
from .turn import (
    DEFAULT_LIFETIME_S,
    MAX_LIFETIME_S,
    MIN_LIFETIME_S,
    TurnCredentials,
    parse_turn_urls,
)

ENV_PREFIX = "CONSULT_"
DEV_TOKEN_SECRET = "dev-token-secret-not-for-production"
DEV_API_KEY = "dev-api-key"
MIN_SECRET_BYTES = 32  # outside dev mode: token secret, API key, metrics key
MIN_SECRET_SYMBOLS = 8  # distinct characters: refuses "aaaa..." and the like

logger = logging.getLogger(__name__)


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
    ws_rto_max_ms: int = 1000  # TCP retransmission ceiling of a WebSocket (0: the kernel's)
    max_message_bytes: int = 65536
    max_chat_chars: int = 4000
    auto_create_rooms: bool | None = None
    stats_interval_s: float = 5.0
    media: MediaConfig = field(default_factory=MediaConfig)
    # -- secrets, TLS and exposure (issue 11, item 8) --
    dev_allow_remote: bool = False  # dev mode on a non-loopback address
    tls_cert: str | None = None  # PEM certificate chain: HTTPS and WSS on the main port
    tls_key: str | None = None
    allowed_origins: tuple[str, ...] = ()  # empty: any Origin may open /ws
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # set: /metrics only there, 404 on the main port
    metrics_key: str = ""  # set: /metrics wants `Authorization: Bearer <key>`
    # -- end --
    # -- access: tokens, bars, knocks (signaling/auth.py, docs/api.md "Tokens") --
    token_public_key: str | None = None  # PEM text (RS256/ES256), read from --token-public-key
    token_algorithms: tuple[str, ...] | None = None  # None: HS256, or the public key's alone
    token_max_lifetime_s: float = 24 * 3600.0
    token_audience: str | None = None
    token_issuer: str | None = None
    max_reknocks: int = 2  # knocks of one identity after a deny; then refused (4003)
    ended_rooms_kept: int = 100_000  # ended room ids remembered (tokens refused, 4005)
    # -- end access --
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
    # -- consultation pages (issue 18, docs/client.md "The consultation pages") --
    pages: bool = False  # serve /consult/patient and /consult/doctor outside dev mode
    # -- end pages --
    # -- media worker processes (issue 13; docs/media.md "Workers") --
    # 0: the media plane in this process; N: N worker processes. `signaling run` defaults to
    # the machine's cores (default_workers); a ServerConfig built in code (tests) to 0.
    workers: int = 0
    # -- recording (docs/recording.md); the directory and key are in media.recording --
    recording_retention_days: float = 0.0  # delete recordings older than this (0: keep)
    # a worker without a heartbeat for this long is hung: killed and restarted, its rooms moved
    worker_heartbeat_timeout_s: float = 3.0
    # -- end workers --
    # -- turn: ephemeral TURN credentials in `joined` (signaling/turn.py, docs/turn.md) --
    turn_urls: tuple[str, ...] = ()  # turn:/turns: URLs handed out with minted credentials
    turn_secret: str = field(default="", repr=False)  # the TURN server's static-auth-secret
    turn_lifetime_s: float = DEFAULT_LIFETIME_S  # how long a minted credential is valid
    # -- end turn --
    # -- fleet (issue 14; docs/deploy.md "A fleet of nodes") --
    # None: one node, its state in memory (the embedded default). A redis:// URL: the nodes
    # sharing it place rooms by load, redirect clients to a room's node and take over the
    # rooms of a node that dies.
    redis_url: str | None = None
    node_id: str | None = None  # this node's id in the fleet (default: host name and port)
    node_url: str | None = None  # the base URL clients and nodes reach it at (http(s)://...)
    # -- end fleet --

    def __post_init__(self) -> None:
        if not self.api_key or not (self.token_secret or self.token_public_key):
            raise ValueError("api_key and token_secret are required (or use dev mode)")
        self._check_access()
        if self.auto_create_rooms is None:
            object.__setattr__(self, "auto_create_rooms", self.dev)
        if self.max_message_bytes < 4096:
            raise ValueError("max_message_bytes must be at least 4096")
        self._check_limits()
        if not 0 <= self.workers <= 256:
            raise ValueError("workers must be within 0..256")
        if not 1.0 <= self.worker_heartbeat_timeout_s <= 600:
            # heartbeats come every 0.5 s: under a second, a busy worker would be killed
            raise ValueError("worker_heartbeat_timeout_s must be within 1..600")
        for name in ("resume_grace_s", "peer_timeout_s", "join_timeout_s", "stats_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        self._check_exposure()
        self._check_turn()
        self._check_fleet()

    def _check_turn(self) -> None:
        if not MIN_LIFETIME_S <= self.turn_lifetime_s <= MAX_LIFETIME_S:
            raise ValueError(
                f"turn_lifetime_s must be within {MIN_LIFETIME_S:.0f}..{MAX_LIFETIME_S:.0f}"
            )
        if bool(self.turn_urls) != bool(self.turn_secret):
            raise ValueError("--turn-urls and --turn-secret-file go together")
        if self.turn_secret and self.turn_secret in (
            self.api_key,
            self.token_secret,
            self.metrics_key,
        ):
            # the TURN server holds this one: it must not sign tokens or open the API too
            raise ValueError("the TURN secret must differ from the API, token and metrics keys")
        self.turn_credentials()  # URLs checked: ValueError when unusable

    def turn_credentials(self) -> TurnCredentials | None:
        """What mints each participant's TURN entry in `joined`; None without TURN."""
        if not self.turn_urls:
            return None
        return TurnCredentials(
            urls=self.turn_urls, secret=self.turn_secret, lifetime_s=self.turn_lifetime_s
        )

    def _check_fleet(self) -> None:
        if self.redis_url is None:
            return
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("--redis-url must be redis://, rediss:// or unix://")
        if self.node_url is not None and not self.node_url.startswith(("http://", "https://")):
            raise ValueError("--node-url must be an http:// or https:// base URL")
        if self.node_url is None and self.host in ("0.0.0.0", "::", ""):
            raise ValueError("with --redis-url and a wildcard --host, give --node-url")

    def fleet_node(self) -> tuple[str, str]:
        """(node id, base URL) of this node in the fleet."""
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = (self.node_url or f"{scheme}://{host}:{self.port}").rstrip("/")
        return self.node_id or f"{socket.gethostname()}:{self.port}", url

    def _check_exposure(self) -> None:
        if self.dev and not self.dev_allow_remote and not is_loopback(self.host):
            raise ValueError(
                f"dev mode serves a fixed API key and token secret: it listens on loopback only"
                f" (not {self.host!r}) unless --dev-allow-remote is given"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        origins = tuple(normalize_origin(o) for o in self.allowed_origins)
        object.__setattr__(self, "allowed_origins", origins)
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port must be a TCP port (0-65535)")

    def _check_access(self) -> None:
        self.token_verifier()  # keys, algorithms and lifetime: ValueError when unusable
        if self.max_reknocks < 0 or self.ended_rooms_kept < 1:
            raise ValueError("max_reknocks must be >= 0 and ended_rooms_kept >= 1")

    def token_verifier(self) -> TokenVerifier:
        return TokenVerifier(
            secret=self.token_secret,
            public_key=self.token_public_key,
            algorithms=self.token_algorithms,
            max_lifetime_s=self.token_max_lifetime_s,
            audience=self.token_audience,
            issuer=self.token_issuer,
        )

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


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`; a wildcard (0.0.0.0, ::, "") or any other is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def normalize_origin(text: str) -> str:
    """An Origin as browsers send it: `scheme://host[:port]`, lower case, no default port.

    Raises ValueError for anything else (a path, a query, a scheme other than http(s))."""
    try:
        url = urlsplit(text.strip())
        port = url.port
    except ValueError as exc:
        raise ValueError(f"bad origin {text!r}: {exc}") from None
    if url.scheme.lower() not in ("http", "https") or not url.hostname:
        raise ValueError(f"bad origin {text!r}: want http(s)://host[:port]")
    if url.path not in ("", "/") or url.query or url.fragment or url.username or url.password:
        raise ValueError(f"bad origin {text!r}: want http(s)://host[:port], nothing after it")
    scheme = url.scheme.lower()
    host = url.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def _check_permissions(path: str, what: str) -> None:
    """A file anyone else may write is refused; one anyone may read is warned about."""
    mode = os.stat(path).st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ValueError(f"{what} file {path} is writable by others (chmod 600 it)")
    if mode & stat.S_IROTH:
        logger.warning("%s file %s is readable by every user (chmod 600 it)", what, path)


def read_secret_file(path: str, what: str) -> str:
    """The file's text, trailing newline stripped; empty or unreadable is an error."""
    try:
        _check_permissions(path, what)
        with open(path, encoding="utf-8") as f:
            text = f.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the {what} file: {exc}") from None
    if not text:
        raise ValueError(f"the {what} file {path} is empty")
    return text


def check_secret_strength(value: str, what: str) -> None:
    """Outside dev mode: at least MIN_SECRET_BYTES bytes of MIN_SECRET_SYMBOLS+ characters."""
    if value in (DEV_API_KEY, DEV_TOKEN_SECRET):
        raise ValueError(f"the {what} is a dev-mode value: give a random one outside dev mode")
    if len(value.encode()) < MIN_SECRET_BYTES or len(set(value)) < MIN_SECRET_SYMBOLS:
        raise ValueError(
            f"the {what} is too weak: at least {MIN_SECRET_BYTES} bytes of"
            f" {MIN_SECRET_SYMBOLS}+ distinct characters outside dev mode"
            f" (e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context (TLS 1.2+) from --tls-cert/--tls-key; None without them."""
    if not config.tls_cert or not config.tls_key:
        return None

    def encrypted_key() -> bytes:
        raise ValueError(f"the TLS key {config.tls_key} is encrypted: give an unencrypted one")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        _check_permissions(config.tls_key, "TLS key")
        context.load_cert_chain(config.tls_cert, config.tls_key, password=encrypted_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load --tls-cert/--tls-key: {exc}") from None
    return context


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
    add(
        "--workers",
        type=int,
        help="media worker processes (CONSULT_WORKERS; default: the machine's cores, at most"
        " one per --rtc-ports port; 0: media in this process)",
    )
    add(
        "--worker-heartbeat-timeout",
        type=float,
        help="seconds without a heartbeat before a media worker is taken as hung, killed and"
        " restarted (CONSULT_WORKER_HEARTBEAT_TIMEOUT_S, default 3)",
    )
    add("--redis-url", help="share rooms with the nodes of this Redis (CONSULT_REDIS_URL)")
    add("--node-id", help="this node's id in the fleet (CONSULT_NODE_ID; host:port)")
    add("--node-url", help="base URL clients and nodes reach this node at (CONSULT_NODE_URL)")
    # -- secrets, TLS and exposure (issue 11, item 8) --
    add("--api-key-file", help="file holding the API key (CONSULT_API_KEY_FILE)")
    add("--token-secret-file", help="file holding the token secret (CONSULT_TOKEN_SECRET_FILE)")
    add("--tls-cert", help="PEM certificate chain: serve HTTPS and WSS (CONSULT_TLS_CERT)")
    add("--tls-key", help="PEM private key of --tls-cert (CONSULT_TLS_KEY)")
    add("--allowed-origins", help="comma-separated Origins allowed on /ws (default: any)")
    add("--metrics-port", type=int, help="serve /metrics on this port only (CONSULT_METRICS_PORT)")
    add("--metrics-host", help="listen address of --metrics-port (127.0.0.1)")
    add("--metrics-key", help="bearer key /metrics asks for (CONSULT_METRICS_KEY)")
    add("--metrics-key-file", help="file holding the metrics key (CONSULT_METRICS_KEY_FILE)")
    add(
        "--dev-allow-remote",
        action="store_true",
        default=None,
        help="let dev mode listen on a non-loopback address (CONSULT_DEV_ALLOW_REMOTE)",
    )
    add_access_arguments(parser)
    _add_limit_arguments(parser)
    add_pages_arguments(parser)
    add_turn_arguments(parser)
    add_recording_arguments(parser)


def add_recording_arguments(parser: argparse.ArgumentParser) -> None:
    """Consultation recording (docs/recording.md); each falls back to CONSULT_<NAME>."""
    add = parser.add_argument
    add("--recording-dir", help="where recordings are written (CONSULT_RECORDING_DIR; none: off)")
    add(
        "--recording-key-file",
        help="the AES-256 key recordings are sealed with: KEY_ID:SECRET or SECRET, 32 bytes in"
        " hex or base64 (CONSULT_RECORDING_KEY_FILE)",
    )
    add(
        "--recording-retention-days",
        type=float,
        help="delete recordings older than this many days, checked hourly (0: keep;"
        " CONSULT_RECORDING_RETENTION_DAYS)",
    )


def add_turn_arguments(parser: argparse.ArgumentParser) -> None:
    """Ephemeral TURN credentials (docs/turn.md); each falls back to CONSULT_<NAME>."""
    add = parser.add_argument
    add(
        "--turn-urls",
        help="comma-separated TURN URLs handed out with minted credentials, e.g."
        " turn:turn.example.org:3478?transport=udp,turns:turn.example.org:5349?transport=tcp"
        " (CONSULT_TURN_URLS)",
    )
    add(
        "--turn-secret-file",
        help="file holding the TURN server's static-auth-secret (CONSULT_TURN_SECRET_FILE)",
    )
    add(
        "--turn-lifetime",
        type=float,
        help=f"seconds a minted TURN credential is valid ({DEFAULT_LIFETIME_S:.0f};"
        f" {MIN_LIFETIME_S:.0f} to {MAX_LIFETIME_S:.0f}; CONSULT_TURN_LIFETIME_S)",
    )


def turn_values(
    args: argparse.Namespace, env: Mapping[str, str], *, dev: bool
) -> dict[str, object]:
    """The TURN options given on the command line or in CONSULT_* env vars; the secret only
    from a file (never on the command line, where `ps` shows it)."""

    def pick(attr: str, name: str) -> str | None:
        flag = getattr(args, attr, None)
        return str(flag) if flag is not None else env.get(ENV_PREFIX + name)

    values: dict[str, object] = {}
    urls = pick("turn_urls", "TURN_URLS")
    if urls is not None:
        values["turn_urls"] = parse_turn_urls(urls)
    path = pick("turn_secret_file", "TURN_SECRET_FILE")
    if path:
        secret = read_secret_file(path, "TURN secret")
        if not dev:
            check_secret_strength(secret, "TURN secret")
        values["turn_secret"] = secret
    lifetime = pick("turn_lifetime", "TURN_LIFETIME_S")
    if lifetime is not None:
        values["turn_lifetime_s"] = float(lifetime)
    return values


def add_pages_arguments(parser: argparse.ArgumentParser) -> None:
    """The consultation pages (issue 18): on in dev mode, else only with --pages."""
    parser.add_argument(
        "--pages",
        action="store_true",
        default=None,
        help="serve /consult/patient and /consult/doctor outside dev mode (CONSULT_PAGES)",
    )


def add_access_arguments(parser: argparse.ArgumentParser) -> None:
    """Tokens, bars and knocks (docs/api.md, "Tokens"); each falls back to CONSULT_<NAME>."""
    add = parser.add_argument
    add("--token-public-key", help="PEM public key for RS256/ES256 tokens (file)")
    add("--token-algorithms", help="accepted token algorithms, e.g. HS256,RS256")
    add("--token-max-lifetime", type=float, help="longest token lifetime in seconds (86400)")
    add("--token-audience", help="required `aud` claim")
    add("--token-issuer", help="required `iss` claim")
    add("--max-reknocks", type=int, help="knocks allowed after a deny (2)")
    add("--ended-rooms-kept", type=int, help="ended room ids remembered (100000)")


def access_values(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, object]:
    """The access options given on the command line or in CONSULT_* env vars."""

    def pick(attr: str, name: str) -> str | None:
        flag = getattr(args, attr, None)
        return str(flag) if flag is not None else env.get(ENV_PREFIX + name)

    values: dict[str, object] = {}
    key_file = pick("token_public_key", "TOKEN_PUBLIC_KEY")
    if key_file:
        try:
            with open(key_file, encoding="ascii") as f:
                values["token_public_key"] = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the token public key file: {exc}") from exc
    algorithms = pick("token_algorithms", "TOKEN_ALGORITHMS")
    if algorithms:
        values["token_algorithms"] = tuple(a.strip() for a in algorithms.split(",") if a.strip())
    for attr, name, conv in (
        ("token_max_lifetime", "TOKEN_MAX_LIFETIME_S", float),
        ("token_audience", "TOKEN_AUDIENCE", str),
        ("token_issuer", "TOKEN_ISSUER", str),
        ("max_reknocks", "MAX_REKNOCKS", int),
        ("ended_rooms_kept", "ENDED_ROOMS_KEPT", int),
    ):
        text = pick(attr, name)
        if text is not None:
            field_name = "token_max_lifetime_s" if attr == "token_max_lifetime" else attr
            values[field_name] = conv(text)
    return values


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

    def secret(flag: str | None, flag_file: str | None, name: str, what: str) -> str:
        """--x or --x-file, else CONSULT_X or CONSULT_X_FILE; never both of one pair."""
        for value, path, how in (
            (flag, flag_file, f"--{name.lower().replace('_', '-')}[-file]"),
            (env.get(ENV_PREFIX + name), env.get(ENV_PREFIX + name + "_FILE"), "the env"),
        ):
            if value is not None and path is not None:
                raise ValueError(f"{what}: give the value or a file, not both ({how})")
            if value is not None:
                return value
            if path is not None:
                return read_secret_file(path, what)
        return ""

    dev_text = pick(args.dev, "DEV")
    dev = dev_text is not None and _bool(dev_text)
    api_key = secret(args.api_key, args.api_key_file, "API_KEY", "API key")
    token_secret = secret(args.token_secret, args.token_secret_file, "TOKEN_SECRET", "token secret")
    metrics_key = secret(args.metrics_key, args.metrics_key_file, "METRICS_KEY", "metrics key")
    if not dev:
        for value, what in ((api_key, "API key"), (token_secret, "token secret")):
            if value:  # a missing one is ServerConfig's error
                check_secret_strength(value, what)
        if metrics_key:
            check_secret_strength(metrics_key, "metrics key")
    api_key = api_key or (DEV_API_KEY if dev else "")
    token_secret = token_secret or (DEV_TOKEN_SECRET if dev else "")
    origins_text = pick(args.allowed_origins, "ALLOWED_ORIGINS") or ""
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
        ("dev_allow_remote", args.dev_allow_remote, "DEV_ALLOW_REMOTE", _bool),
        ("tls_cert", args.tls_cert, "TLS_CERT", str),
        ("tls_key", args.tls_key, "TLS_KEY", str),
        ("metrics_host", args.metrics_host, "METRICS_HOST", str),
        ("metrics_port", args.metrics_port, "METRICS_PORT", int),
        ("workers", getattr(args, "workers", None), "WORKERS", int),
        ("redis_url", getattr(args, "redis_url", None), "REDIS_URL", str),
        ("node_id", getattr(args, "node_id", None), "NODE_ID", str),
        ("node_url", getattr(args, "node_url", None), "NODE_URL", str),
        (
            "worker_heartbeat_timeout_s",
            getattr(args, "worker_heartbeat_timeout", None),
            "WORKER_HEARTBEAT_TIMEOUT_S",
            float,
        ),
    ):
        text = pick(flag, name)
        if text is not None:
            values[attr] = conv(text)
    if "workers" not in values:
        values["workers"] = default_workers(min_port, max_port)
    values.update(access_values(args, env))
    values.update(turn_values(args, env, dev=dev))
    for name, _flag, limit_conv, _help in LIMIT_OPTIONS:  # limits (issue 11)
        text = pick(getattr(args, name, None), name.upper())
        if text is not None:
            values[name] = limit_conv(text)
    retention = pick(getattr(args, "recording_retention_days", None), "RECORDING_RETENTION_DAYS")
    if retention is not None:
        values["recording_retention_days"] = float(retention)
    recording = RecordingConfig(
        directory=pick(getattr(args, "recording_dir", None), "RECORDING_DIR") or "",
        key_file=pick(getattr(args, "recording_key_file", None), "RECORDING_KEY_FILE") or "",
    )
    pages_text = pick(getattr(args, "pages", None), "PAGES")
    if pages_text is not None:
        values["pages"] = _bool(pages_text)
    return ServerConfig(
        api_key=api_key,
        token_secret=token_secret,
        dev=dev,
        media=MediaConfig(ice=ice, recording=recording),
        allowed_origins=tuple(o for o in origins_text.split(",") if o.strip()),
        metrics_key=metrics_key,
        **values,  # type: ignore[arg-type]
    )


def default_workers(min_port: int = 0, max_port: int = 0, cores: int | None = None) -> int:
    """`--workers` when not given: one media worker per core of the machine (issue 13), at
    most 256 and at most one per port of the --rtc-ports range (each worker gets a slice)."""
    count = max(1, min(cores or os.cpu_count() or 1, 256))
    if min_port:
        count = min(count, max(1, max_port - min_port + 1))
    return count


def random_secret() -> str:
    """32 random bytes, URL-safe; never starting with "-", so it can follow a flag in argv."""
    while True:
        value = secrets.token_urlsafe(32)
        if not value.startswith("-"):
            return value
