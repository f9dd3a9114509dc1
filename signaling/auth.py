"""Participant tokens (JWT, verified with PyJWT) and resume tokens.

The platform signs each participant's token: HS256 with the shared secret, or RS256/ES256 with
its private key, the node holding only the public key (`--token-public-key`), so that a node
that is compromised cannot mint tokens. Claims: room, sub (the platform's user id), role, name
(display name), exp; optional iat, nbf, aud, iss and `telemetry` (true: the participant may
send vital signs, docs/protocol.md). Error reasons never include claim values.

Checked here beyond PyJWT: the compact form is exactly three canonical base64url segments
(nothing after the signature), the header is a flat JSON object (signaling/safejson.py), the
algorithm is in the node's allow-list and picks its key (the secret for HS256, the public key
for RS256/ES256: never the other), time claims are finite numbers, and a token lives at most
`max_lifetime_s` (exp - now, and exp - iat when iat is given).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import re
import secrets
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mediaserver.api import Role

from . import safejson

CLOCK_LEEWAY_S = 30.0
MAX_TOKEN_CHARS = 8192
DEFAULT_MAX_LIFETIME_S = 24 * 3600.0
SUPPORTED_ALGORITHMS = ("HS256", "RS256", "ES256")
MIN_RSA_BITS = 2048
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]*$")
_MAX_CLAIM_CHARS = 256


@contextlib.contextmanager
def _no_key_length_warning() -> Iterator[None]:
    """The secret's strength is the configuration's business, not a warning per token."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        yield


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
    telemetry: bool = False  # the `telemetry` claim (observers never send, whatever it says)

    def __repr__(self) -> str:  # never print sub or name by accident
        return f"TokenClaims(room={self.room!r}, role={self.role.value})"


def public_key_algorithm(pem: str) -> str:
    """The algorithm a PEM public key verifies: RS256 (RSA >= 2048 bits) or ES256 (P-256)."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError("token public key is not a PEM public key") from exc
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"token public key: RSA keys must have at least {MIN_RSA_BITS} bits")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError("token public key must be RSA (RS256) or EC P-256 (ES256)")


def private_key_algorithm(pem: str) -> str:
    """The algorithm a PEM private key signs with (`mediaserver token --private-key`)."""
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public_key_algorithm(public.decode())


def encode_token(
    *,
    secret: str = "",
    room: str,
    sub: str,
    role: Role | str,
    name: str,
    ttl_s: float = 3600.0,
    now: float | None = None,
    private_key: str | None = None,
    claims: Mapping[str, Any] | None = None,
) -> str:
    """Mint a JWT (what the platform does; used by `mediaserver token` and tests).

    HS256 with `secret`, or RS256/ES256 with a PEM `private_key`; `claims` adds or overrides
    claims (e.g. {"telemetry": True}, aud, iss).
    """
    now = time.time() if now is None else now
    role_value = role.value if isinstance(role, Role) else role
    payload: dict[str, Any] = {
        "room": room,
        "sub": sub,
        "role": role_value,
        "name": name,
        "iat": int(now),
        "exp": int(now + ttl_s),
    }
    payload.update(claims or {})
    if private_key is not None:
        return jwt.encode(payload, private_key, algorithm=private_key_algorithm(private_key))
    with _no_key_length_warning():
        return jwt.encode(payload, secret, algorithm="HS256")


def _b64decode(segment: str) -> bytes:
    """A canonical unpadded base64url segment, or TokenError (junk, padding, stray bits)."""
    if not _SEGMENT.match(segment) or len(segment) % 4 == 1:
        raise TokenError("malformed token")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("malformed token") from exc
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != segment:
        raise TokenError("malformed token")
    return data


def _time_claim(payload: dict[str, Any], key: str) -> float | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"malformed token: {key} is not a number")
    number = float(value) if abs(value) < 2**63 else math.inf
    if not math.isfinite(number):
        raise TokenError(f"malformed token: {key} is not a finite number")
    return number


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise TokenError(f"malformed token: missing {key}")
    if len(value) > _MAX_CLAIM_CHARS:
        raise TokenError(f"malformed token: {key} too long")
    return value


_PYJWT_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAlgorithmError, "malformed token: alg not allowed"),
    (jwt.InvalidKeyError, "bad signature"),
)


class TokenVerifier:
    """The node's token policy: keys, algorithm allow-list, lifetime, audience, issuer."""

    def __init__(
        self,
        *,
        secret: str = "",
        public_key: str | None = None,
        algorithms: tuple[str, ...] | None = None,
        max_lifetime_s: float = DEFAULT_MAX_LIFETIME_S,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        public_alg = public_key_algorithm(public_key) if public_key else None
        if algorithms is None:  # a public key alone: the node cannot verify what it could mint
            algorithms = (public_alg,) if public_alg else ("HS256",)
        for alg in algorithms:
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(f"token algorithm {alg!r} is not one of {SUPPORTED_ALGORITHMS}")
            if alg == "HS256" and not secret:
                raise ValueError("HS256 tokens need a token secret")
            if alg != "HS256" and alg != public_alg:
                raise ValueError(f"{alg} tokens need a matching --token-public-key")
        if not math.isfinite(max_lifetime_s) or max_lifetime_s <= 0:
            raise ValueError("token max lifetime must be a positive number of seconds")
        self.algorithms = tuple(algorithms)
        self.max_lifetime_s = max_lifetime_s
        self.audience = audience
        self.issuer = issuer
        self._keys: dict[str, Any] = {"HS256": secret}
        if public_key and public_alg:
            self._keys[public_alg] = serialization.load_pem_public_key(public_key.encode())

    def verify(
        self,
        token: str,
        *,
        room: str | None = None,
        now: float | None = None,
        check_expiry: bool = True,
    ) -> TokenClaims:
        """Check form, signature, claims, lifetime, expiry and (when given) room."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise TokenError("malformed token")
        header_b64, payload_b64, signature_b64 = token.split(".")
        try:
            header = safejson.loads(_b64decode(header_b64), max_depth=2)
        except safejson.BadJson as exc:
            raise TokenError("malformed token") from exc
        if not isinstance(header, dict) or header.get("alg") not in self.algorithms:
            raise TokenError("malformed token: alg not allowed")
        alg = header["alg"]
        _b64decode(payload_b64)
        if not signature_b64:
            raise TokenError("malformed token")
        _b64decode(signature_b64)
        payload = self._decode(token, alg)
        return self._claims(payload, room=room, now=now, check_expiry=check_expiry)

    def _decode(self, token: str, alg: str) -> dict[str, Any]:
        options: dict[str, Any] = {
            "require": ["exp", "room", "sub", "role"],
            # time claims are checked by _claims: finite numbers, leeway, max lifetime
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": self.audience is not None,
            "verify_iss": self.issuer is not None,
        }
        try:
            with _no_key_length_warning():
                payload = jwt.decode(
                    token,
                    self._keys[alg],
                    algorithms=[alg],
                    options=options,  # type: ignore[arg-type]
                    audience=self.audience,
                    issuer=self.issuer,
                )
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"malformed token: missing {exc.claim}") from exc
        except jwt.PyJWTError as exc:
            for kind, reason in _PYJWT_REASONS:
                if isinstance(exc, kind):
                    raise TokenError(reason) from exc
            raise TokenError("malformed token") from exc
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise TokenError("malformed token") from exc
        if not isinstance(payload, dict):
            raise TokenError("malformed token")
        return payload

    def _claims(
        self, payload: dict[str, Any], *, room: str | None, now: float | None, check_expiry: bool
    ) -> TokenClaims:
        now = time.time() if now is None else now
        exp = _time_claim(payload, "exp")
        if exp is None:
            raise TokenError("malformed token: missing exp")
        nbf = _time_claim(payload, "nbf")
        iat = _time_claim(payload, "iat")
        if exp - now > self.max_lifetime_s + CLOCK_LEEWAY_S or (
            iat is not None and exp - iat > self.max_lifetime_s + 1.0  # whole-second claims
        ):
            raise TokenError("token lifetime too long")
        if check_expiry and now > exp + CLOCK_LEEWAY_S:
            raise TokenError("token expired")
        if nbf is not None and now + CLOCK_LEEWAY_S < nbf:
            raise TokenError("token not yet valid")
        if iat is not None and now + CLOCK_LEEWAY_S < iat:
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
            telemetry=payload.get("telemetry") is True and role is not Role.OBSERVER,
        )
        if room is not None and claims.room != room:
            raise TokenError("wrong room")
        return claims


def verify_token(
    token: str,
    *,
    secret: str,
    room: str | None = None,
    now: float | None = None,
    check_expiry: bool = True,
) -> TokenClaims:
    """HS256 with the default policy (tests and tools; the node uses its TokenVerifier)."""
    return TokenVerifier(secret=secret).verify(token, room=room, now=now, check_expiry=check_expiry)


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
