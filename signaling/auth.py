"""Participant tokens (HS256 JWT, signed by the platform) and resume tokens.

Implemented with hmac/hashlib/base64 only. Claims: room, sub (the platform's user id), role,
name (display name), exp; optional iat and nbf. Error reasons never include claim values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from mediaserver.api import Role

CLOCK_LEEWAY_S = 30.0


class TokenError(Exception):
    """A refused token; `reason` is short, fixed text safe to log and send as a close reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenClaims:
    room: str
    sub: str
    role: Role
    name: str
    exp: float
    iat: float | None = None
    nbf: float | None = None

    def __repr__(self) -> str:  # never print sub or name by accident
        return f"TokenClaims(room={self.room!r}, role={self.role.value})"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("malformed token") from exc


def _sign(secret: str, signing_input: bytes) -> bytes:
    return hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()


def encode_token(
    *,
    secret: str,
    room: str,
    sub: str,
    role: Role | str,
    name: str,
    ttl_s: float = 3600.0,
    now: float | None = None,
) -> str:
    """Mint an HS256 JWT (what the platform does; used by `mediaserver token` and tests)."""
    now = time.time() if now is None else now
    role_value = role.value if isinstance(role, Role) else role
    header = {"alg": "HS256", "typ": "JWT"}
    payload = {
        "room": room,
        "sub": sub,
        "role": role_value,
        "name": name,
        "iat": int(now),
        "exp": int(now + ttl_s),
    }
    signing_input = ".".join(
        _b64encode(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload)
    ).encode()
    return signing_input.decode() + "." + _b64encode(_sign(secret, signing_input))


def _number(payload: dict[str, Any], key: str, *, required: bool) -> float | None:
    value = payload.get(key)
    if value is None:
        if required:
            raise TokenError(f"malformed token: missing {key}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"malformed token: {key} is not a number")
    return float(value)


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise TokenError(f"malformed token: missing {key}")
    return value


def verify_token(
    token: str,
    *,
    secret: str,
    room: str | None = None,
    now: float | None = None,
    check_expiry: bool = True,
) -> TokenClaims:
    """Check signature, expiry, role and (when given) room; return the claims."""
    if not isinstance(token, str) or token.count(".") != 2 or len(token) > 8192:
        raise TokenError("malformed token")
    header_b64, payload_b64, signature_b64 = token.split(".")
    signing_input = f"{header_b64}.{payload_b64}".encode()
    try:
        header = json.loads(_b64decode(header_b64))
    except ValueError as exc:
        raise TokenError("malformed token") from exc
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise TokenError("malformed token: alg must be HS256")
    if not hmac.compare_digest(_sign(secret, signing_input), _b64decode(signature_b64)):
        raise TokenError("bad signature")
    try:
        payload = json.loads(_b64decode(payload_b64))
    except ValueError as exc:
        raise TokenError("malformed token") from exc
    if not isinstance(payload, dict):
        raise TokenError("malformed token")
    now = time.time() if now is None else now
    exp = _number(payload, "exp", required=True)
    assert exp is not None
    nbf = _number(payload, "nbf", required=False)
    iat = _number(payload, "iat", required=False)
    if check_expiry and now > exp + CLOCK_LEEWAY_S:
        raise TokenError("token expired")
    if nbf is not None and now + CLOCK_LEEWAY_S < nbf:
        raise TokenError("token not yet valid")
    try:
        role = Role(payload.get("role"))
    except ValueError as exc:
        raise TokenError("bad role") from exc
    claims = TokenClaims(
        room=_text(payload, "room"),
        sub=_text(payload, "sub"),
        role=role,
        name=_text(payload, "name"),
        exp=exp,
        iat=iat,
        nbf=nbf,
    )
    if room is not None and claims.room != room:
        raise TokenError("wrong room")
    return claims


@dataclass(slots=True)
class _ResumeEntry:
    room: str
    participant_id: str
    expires_at: float | None  # None while the participant's socket is attached


class ResumeTokens:
    """Opaque random resume tokens, each bound to one participant.

    Every `joined` carries a new token. A resume presents one: every *other* token of that
    participant is revoked, and the presented one stays valid only until a newer one is
    presented. So a `joined` reply lost with the socket it was sent on (a network that drops
    again at once) costs nothing: the client resumes again with the token it has, instead of
    joining afresh (for a patient: back into the waiting room). While the socket is attached the
    tokens do not expire; once it drops they expire with the grace period (the participant is
    removed at the same moment).
    """

    def __init__(self) -> None:
        self._entries: dict[str, _ResumeEntry] = {}
        # participant id -> [last presented token or "", last issued token or ""]
        self._by_participant: dict[str, list[str]] = {}

    def _tokens(self, participant_id: str) -> list[str]:
        return [t for t in self._by_participant.get(participant_id, []) if t]

    def issue(self, room: str, participant_id: str) -> str:
        """A new token for `joined`; it supersedes the last issued one (never presented)."""
        pair = self._by_participant.setdefault(participant_id, ["", ""])
        self._entries.pop(pair[1], None)
        token = secrets.token_urlsafe(24)
        self._entries[token] = _ResumeEntry(room, participant_id, None)
        pair[1] = token
        return token

    def start_expiry(self, participant_id: str, ttl_s: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for token in self._tokens(participant_id):
            self._entries[token].expires_at = now + ttl_s

    def peek(self, token: str, room: str, now: float | None = None) -> str | None:
        """The participant id a valid token is bound to, or None; the token stays valid."""
        if not isinstance(token, str):
            return None
        entry = self._entries.get(token)
        if entry is None or entry.room != room:
            return None
        now = time.monotonic() if now is None else now
        if entry.expires_at is not None and now > entry.expires_at:
            return None
        return entry.participant_id

    def consume(self, token: str, room: str, now: float | None = None) -> str | None:
        """A resume presents `token`: the participant id it is bound to, or None. The
        participant's other tokens are revoked; this one stays until a newer one is presented."""
        pid = self.peek(token, room, now)
        if pid is not None:
            for other in self._tokens(pid):
                if other != token:
                    self._entries.pop(other, None)
            self._by_participant[pid] = [token, ""]
            self._entries[token].expires_at = None
        return pid

    def revoke(self, participant_id: str) -> None:
        for token in self._by_participant.pop(participant_id, []):
            self._entries.pop(token, None)

    def __len__(self) -> int:
        return len(self._entries)
