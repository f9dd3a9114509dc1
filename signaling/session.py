"""Session: one participant of a consultation as the control plane sees it.

A session outlives its WebSocket: a dropped socket leaves it in place for the resume grace
period. Outgoing messages go through a per-socket queue and writer task, so event listeners
(synchronous) can send, and messages keep their order. The platform's user id (`sub`) and the
display name stay in memory only: logs and metrics use the opaque random `id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mediaserver.api import Role

from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from .consultation import Consultation

logger = logging.getLogger(__name__)


class SessionState(enum.Enum):
    WAITING = "waiting"
    ADMITTED = "admitted"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


MAX_QUEUED = 1000
_draining_writers: set[asyncio.Task[None]] = set()


def new_participant_id() -> str:
    return "p_" + secrets.token_hex(8)


class Session:
    def __init__(
        self,
        *,
        consultation: Consultation,
        role: Role,
        name: str,
        sub: str,
        codecs: frozenset[str] | None,
        telemetry: bool = False,
        participant_id: str | None = None,
    ) -> None:
        self.id = participant_id or new_participant_id()  # given: taken back on another node
        self.consultation = consultation
        self.role = role
        self.name = name
        self._sub = sub
        self.codecs = codecs
        self.telemetry_granted = telemetry  # the token's `telemetry` claim (signaling/auth.py)
        self.state = SessionState.WAITING
        self.order = 0  # its place in the room's join order (the waiting room's order)
        self.resume_digests: list[str] = []  # of its latest resume tokens (fleet journal)
        # The media plane holds its participant as (consultation.id, id) once it has one.
        self.has_media = False
        self.joined_at = time.monotonic()
        self.ws: web.WebSocketResponse | None = None
        self._queue: asyncio.Queue[str | _Close] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.grace_task: asyncio.Task[None] | None = None
        self.peer_timer: asyncio.Task[None] | None = None
        limits = consultation.hub.config  # what this participant may send (issue 11)
        self.chat_bucket = TokenBucket(limits.chat_limit)
        self.telemetry_bucket = TokenBucket(limits.telemetry_limit)

    def __repr__(self) -> str:
        return f"Session({self.id}, {self.role.value}, {self.state.value})"

    def owns_sub(self, sub: str) -> bool:
        return secrets.compare_digest(self._sub.encode(), sub.encode())

    @property
    def sub(self) -> str:
        return self._sub

    @property
    def is_doctor(self) -> bool:
        return self.role is Role.DOCTOR

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.ws.closed

    def public(self) -> dict[str, Any]:
        """What other participants see of this one."""
        return {"id": self.id, "role": self.role.value, "name": self.name}

    # -- outgoing -----------------------------------------------------------------------------

    def send(self, msg: dict[str, Any]) -> None:
        """Queue a message for the attached socket; dropped while no socket is attached.

        A socket that does not keep up (MAX_QUEUED messages waiting) is closed with 4008: the
        session stays for the grace period, and a resume sends the full state again.
        """
        if self._queue is None:
            return
        if self._queue.qsize() >= MAX_QUEUED:
            logger.warning("participant %s does not read its socket: closing it", self.id)
            self.close_socket(4008, "too slow")
            return
        text = json.dumps(msg, separators=(",", ":"))
        limit = self.consultation.hub.config.max_message_bytes
        # ASCII-escaped: characters are bytes. Replies are built within the limit (issue 11);
        # over it is a bug, dropped and logged. SDP grows with the room and is never dropped.
        if len(text) > limit and msg.get("type") not in ("offer", "answer"):
            kind = msg.get("type")
            logger.error("dropped a %s message of %d bytes to %s", kind, len(text), self.id)
            return
        self._queue.put_nowait(text)

    def close_socket(self, code: int, reason: str) -> None:
        """Close the attached socket after the messages already queued."""
        if self._queue is not None:
            self._queue.put_nowait(_Close(int(code), reason))
            self._queue = None
        if self._writer is not None:
            _draining_writers.add(self._writer)
            self._writer.add_done_callback(_draining_writers.discard)
            self._writer = None  # it ends by itself after the close

    def attach(self, ws: web.WebSocketResponse) -> None:
        """Bind a socket; a previously attached one is closed with 4006 (replaced)."""
        from .protocol import CloseCode

        if self.ws is not None and self.ws is not ws:
            self.close_socket(CloseCode.REPLACED, "replaced by a resumed connection")
        self.ws = ws
        self._queue = asyncio.Queue()
        self._writer = asyncio.create_task(self._write(ws, self._queue))

    def detach(self, ws: web.WebSocketResponse) -> bool:
        """Forget `ws` if it is the attached socket; True when it was."""
        if self.ws is not ws:
            return False
        self.ws = None
        self._queue = None
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        self._writer = None
        return True

    def cancel_timers(self) -> None:
        for task in (self.grace_task, self.peer_timer):
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
        self.grace_task = None
        self.peer_timer = None

    @staticmethod
    async def _write(ws: web.WebSocketResponse, queue: asyncio.Queue[str | _Close]) -> None:
        while True:
            item = await queue.get()
            if isinstance(item, _Close):
                with contextlib.suppress(Exception):
                    await ws.close(code=item.code, message=item.reason.encode()[:120])
                return
            if ws.closed:
                continue
            try:
                await ws.send_str(item)
            except (ConnectionError, RuntimeError):
                logger.debug("send on a closing socket dropped")
