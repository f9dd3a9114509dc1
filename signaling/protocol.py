"""Wire format of the signaling protocol (v1): close codes, error codes, parsing, validation.

See docs/protocol.md. Parsing is pure: no I/O, no state.
"""

from __future__ import annotations

import enum
from typing import Any

from . import safejson

PROTOCOL_VERSION = 1
# Room left in a server message around one chat message or telemetry record (limits, issue
# 11): an item is refused when it would be over max_message_bytes - ENVELOPE_BYTES.
ENVELOPE_BYTES = 1024


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    TRY_AGAIN_LATER = 1013  # a fleet whose Redis cannot say where the room is: retry
    BAD_TOKEN = 4001
    PROTOCOL = 4002
    DENIED = 4003
    KICKED = 4004
    ENDED = 4005
    REPLACED = 4006
    ROOM_UNAVAILABLE = 4007
    TIMEOUT = 4008
    RATE_LIMITED = 4009  # a sustained flood of messages (limits, issue 11)
    NODE_FULL = 4010  # the node's room or participant cap (limits, issue 11)
    REDIRECT = 4011  # the room is on another node: join there (the `redirect` message's url)


class ErrorCode(enum.StrEnum):
    BAD_JSON = "bad-json"
    BAD_REQUEST = "bad-request"
    UNKNOWN_TYPE = "unknown-type"
    TOO_LARGE = "too-large"
    BAD_SDP = "bad-sdp"
    GLARE = "glare"
    NOT_ADMITTED = "not-admitted"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not-found"
    ROOM_FULL = "room-full"
    ALREADY_JOINED = "already-joined"
    BAD_TELEMETRY = "bad-telemetry"
    MEDIA_TIMEOUT = "media-timeout"  # not a reply (ref null): restart media (`reconnect`)
    RATE_LIMITED = "rate-limited"
    INTERNAL = "internal"


CLIENT_TYPES = frozenset(
    {
        "join",
        "offer",
        "answer",
        "candidate",
        "publish",
        "reconnect",
        "chat",
        "admit",
        "deny",
        "kick",
        "end",
        "leave",
        "ping",
        "telemetry",
        "telemetry-history",
        "chat-history",
        "record",
        "consent",
    }
)


class ProtocolError(Exception):
    """A client mistake answered with an `error` message; the session stays usable."""

    def __init__(self, code: ErrorCode, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref

    def to_message(self) -> dict[str, Any]:
        return error_message(self.code, self.message, self.ref)


def error_message(code: ErrorCode, message: str, ref: str | None) -> dict[str, Any]:
    return {"type": "error", "code": code.value, "message": message, "ref": ref}


def parse_message(raw: str, *, max_bytes: int) -> dict[str, Any]:
    """Decode one text frame into a dict with a known `type` and a string `id`."""
    if len(raw) > max_bytes or len(raw.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message larger than {max_bytes} bytes")
    try:
        msg = safejson.loads(raw)  # deep nesting too: bad-json, never a RecursionError
    except ValueError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, "message is not valid JSON") from exc
    if not isinstance(msg, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, "message must be a JSON object")
    ref = msg.get("id")
    ref = ref if isinstance(ref, str) else None
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "missing field: type", ref)
    if kind not in CLIENT_TYPES:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, "unknown message type", ref)
    if ref is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "missing field: id (a string)", None)
    return msg


def require_str(msg: dict[str, Any], key: str, *, max_len: int | None = None) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"missing field: {key}", msg.get("id"))
    if max_len is not None and len(value) > max_len:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{key} longer than {max_len}", msg.get("id"))
    return value


def require_sdp(msg: dict[str, Any]) -> str:
    sdp = require_str(msg, "sdp")
    if not sdp.lstrip().startswith("v=0") or "\nm=" not in sdp:
        raise ProtocolError(ErrorCode.BAD_SDP, "sdp is not a session description", msg["id"])
    return sdp


def mid_kinds(sdp: str) -> dict[str, str]:
    """Map each m-line's mid to its kind (audio/video/application)."""
    kinds: dict[str, str] = {}
    kind: str | None = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
        elif line.startswith("a=mid:") and kind is not None:
            kinds[line[6:].strip()] = kind
    return kinds


def parse_codecs(msg: dict[str, Any]) -> frozenset[str] | None:
    codecs = msg.get("codecs")
    if codecs is None:
        return None
    if not isinstance(codecs, list) or not all(isinstance(c, str) for c in codecs):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "codecs must be a list of strings", msg["id"])
    return frozenset(c.upper() for c in codecs[:16])
