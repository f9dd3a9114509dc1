"""TURN credentials: short-lived usernames and passwords a TURN server checks with a shared secret.

The TURN REST API convention (coturn's `use-auth-secret`): the username is
`"<expiry, Unix seconds>:<participant id>"` and the credential is
`base64(HMAC-SHA1(secret, username))`. The TURN server recomputes the credential from the
username with the same secret and refuses an expired username (401): the node and the TURN
server never talk to each other. The node mints a fresh pair in every `joined` (a resume
included) and hands it out as one `iceServers` entry `{urls, username, credential}`.

The participant id in the username is the session's opaque random id (never a name or the
platform's user id); nothing here logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
from dataclasses import dataclass, field

from mediaserver.api import IceServer

DEFAULT_LIFETIME_S = 4 * 3600.0
MIN_LIFETIME_S = 60.0
MAX_LIFETIME_S = 24 * 3600.0

# RFC 7065 URIs as WebRTC clients take them: turn(s):host[:port][?transport=udp|tcp]
TURN_URL = re.compile(
    r"(?P<scheme>turns?):(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?"
)


def parse_turn_urls(text: str) -> tuple[str, ...]:
    """Comma-separated TURN URLs, each checked (ValueError names the bad one)."""
    urls = tuple(url.strip() for url in text.split(",") if url.strip())
    for url in urls:
        check_turn_url(url)
    return urls


def check_turn_url(url: str) -> None:
    """`turn:host[:port][?transport=udp|tcp]` or `turns:...`; ValueError otherwise."""
    match = TURN_URL.fullmatch(url)
    if match is None:
        raise ValueError(f"bad TURN URL {url!r}: want turn(s):host[:port][?transport=udp|tcp]")
    port = match["port"]
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"bad TURN URL {url!r}: port out of range")
    if match["scheme"] == "turns" and match["transport"] == "udp":
        raise ValueError(f"bad TURN URL {url!r}: turns (TLS) runs over tcp")


def turn_username(participant_id: str, expires_at: int) -> str:
    """`"<expiry>:<participant id>"`, the expiry in whole Unix seconds."""
    return f"{expires_at}:{participant_id}"


def turn_password(secret: str, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)): what coturn's use-auth-secret recomputes."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnCredentials:
    """Mints the `iceServers` entry of one participant: `urls`, and a username and credential
    valid for `lifetime_s` seconds from now."""

    urls: tuple[str, ...]
    secret: str = field(repr=False)
    lifetime_s: float = DEFAULT_LIFETIME_S

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("TURN credentials need at least one TURN URL")
        for url in self.urls:
            check_turn_url(url)
        if not self.secret:
            raise ValueError("TURN credentials need the TURN server's shared secret")
        if not MIN_LIFETIME_S <= self.lifetime_s <= MAX_LIFETIME_S:
            raise ValueError(
                f"the TURN credential lifetime must be within"
                f" {MIN_LIFETIME_S:.0f}..{MAX_LIFETIME_S:.0f} seconds"
            )

    def expiry(self, now: float | None = None) -> int:
        """The Unix second the credentials minted at `now` expire (rounded up)."""
        return math.ceil((time.time() if now is None else now) + self.lifetime_s)

    def ice_server(self, participant_id: str, *, now: float | None = None) -> IceServer:
        """The participant's TURN entry, minted at `now` (default: the current time)."""
        if not participant_id:
            raise ValueError("TURN credentials need a participant id")
        username = turn_username(participant_id, self.expiry(now))
        return IceServer(
            urls=list(self.urls),
            username=username,
            credential=turn_password(self.secret, username),
        )
