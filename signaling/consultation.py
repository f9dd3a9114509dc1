"""Consultation: the control-plane state of one room (sessions, waiting room, chat).

The media Room is created with the consultation; a session gets its media Participant only
when admitted. Nothing of the room reaches a waiting session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mediaserver.api import CloseReason, Participant, Role, Room, RoomOptions

from . import safejson, telemetry
from .auth import TokenClaims
from .chat import ChatLog, ChatMessage, ChatTooLarge, Page, encoded_size
from .protocol import (
    ENVELOPE_BYTES,
    PROTOCOL_VERSION,
    CloseCode,
    ErrorCode,
    ProtocolError,
    error_message,
)
from .session import Session, SessionState
from .telemetry import TelemetryLog

if TYPE_CHECKING:
    from mediaserver.ingest import IngestParticipant
    from mediaserver.publication import Publication

    from .hub import Hub

logger = logging.getLogger(__name__)

CLOSE_CODES: dict[CloseReason, CloseCode] = {
    CloseReason.LEFT: CloseCode.NORMAL,
    CloseReason.KICKED: CloseCode.KICKED,
    CloseReason.DENIED: CloseCode.DENIED,
    CloseReason.TIMEOUT: CloseCode.TIMEOUT,
    CloseReason.FAILED: CloseCode.TIMEOUT,
    CloseReason.SHUTDOWN: CloseCode.GOING_AWAY,
    CloseReason.ENDED: CloseCode.ENDED,
    CloseReason.REPLACED: CloseCode.REPLACED,
}


MAX_NAME_CHARS = 64  # display names are cut to this (they are in every room message)


class RoomUnavailable(Exception):
    """A join refused because of the room (full); the caller closes with 4007."""


class Barred(Exception):
    """A join refused because of who joins (kicked, blocked, too many knocks)."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Bar:
    """Why an identity may not join this room again (until the API lifts it)."""

    participant: str  # the opaque id of the session it was barred as
    reason: str  # "kicked", "blocked" or "denied" (too many knocks)


# What a barred identity's join is refused with; 4003/4004 are final for the clients.
BAR_CLOSE: dict[str, tuple[CloseCode, str]] = {
    "kicked": (CloseCode.KICKED, "kicked from this room"),
    "blocked": (CloseCode.DENIED, "blocked"),
    "denied": (CloseCode.DENIED, "too many knocks"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsultationOptions:
    waiting_room: bool = True
    video_codec: str = "VP8"
    max_participants: int = 8

    def media_options(self) -> RoomOptions:
        return RoomOptions(video_codec=self.video_codec, max_participants=self.max_participants)

    def as_dict(self) -> dict[str, Any]:
        return {
            "waiting_room": self.waiting_room,
            "video_codec": self.video_codec,
            "max_participants": self.max_participants,
        }


class Consultation:
    def __init__(
        self,
        room_id: str,
        options: ConsultationOptions,
        *,
        hub: Hub,
        media_room: Room,
        auto_created: bool = False,
    ) -> None:
        self.id = room_id
        self.options = options
        self.hub = hub
        self.media_room = media_room
        self.auto_created = auto_created
        self.created_at = time.time()
        self.sessions: dict[str, Session] = {}
        self.waiting: list[str] = []
        config = hub.config
        self.chat = ChatLog(  # bounded: the oldest go first (limits, issue 11)
            max_messages=config.room_chat_messages, max_bytes=config.room_chat_bytes
        )
        self.telemetry = TelemetryLog(max_bytes=config.room_telemetry_bytes)  # devices: vitals
        self.ended = False
        # Access (issue 11): by the token's `sub`, in memory only and never logged. Entries come
        # only from platform-signed tokens; they last for the room's life.
        self.bars: dict[str, Bar] = {}
        self.denials: dict[str, int] = {}

    # -- views --------------------------------------------------------------------------------

    def admitted(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.state is SessionState.ADMITTED]

    def doctors(self) -> list[Session]:
        return [s for s in self.admitted() if s.is_doctor]

    def position(self, session: Session) -> int:
        return self.waiting.index(session.id) + 1

    def describe(self, session: Session) -> dict[str, Any]:
        info = session.public()
        info["tracks"] = _tracks(session.media)
        if session.media is not None:  # a `room` snapshot restores what `mode` events said
            info["modes"] = dict(session.media.modes)  # (a plain-RTP device's: always video)
        return info

    def waiting_list(self) -> list[dict[str, Any]]:
        return [
            {**self.sessions[pid].public(), "position": i + 1} for i, pid in enumerate(self.waiting)
        ]

    def room_message(self, session: Session) -> dict[str, Any]:
        """The room's state; the chat is its most recent page (`chat_more`: older ones are
        kept, fetched with chat-history), so the message stays within max_message_bytes."""
        msg: dict[str, Any] = {
            "type": "room",
            "room": self.id,
            "participants": [self.describe(s) for s in self.admitted()],
            "chat": [],
            "chat_more": False,  # (the longer of its two values, for the size)
            "telemetry": {"last": self.telemetry.last},  # devices: fetch with telemetry-history
        }
        if session.is_doctor:
            msg["waiting"] = self.waiting_list()
        page = self.chat_page(None, envelope=msg)
        msg["chat"], msg["chat_more"] = page.messages, page.more
        return msg

    def chat_page(
        self, before: int | None, *, envelope: dict[str, Any], limit: int | None = None
    ) -> Page:
        """A page of chat that fits in `envelope` (the reply, its list still empty) within
        max_message_bytes and the chat_page_* bounds."""
        config = self.hub.config
        count = min(limit or config.chat_page_messages, config.chat_page_messages)
        hard = config.max_message_bytes - encoded_size(envelope) + 2  # + the empty list
        return self.chat.page(
            before=before, limit=count, max_bytes=config.chat_page_bytes, hard_bytes=hard
        )

    def info(self) -> dict[str, Any]:
        """What the HTTP API returns (no display names)."""
        participants = []
        for s in self.sessions.values():
            entry: dict[str, Any] = {
                "id": s.id,
                "sub": s.sub,
                "role": s.role.value,
                "state": s.state.value,
                "connected": s.connected,
            }
            if s.media is not None:
                entry.update(_media_info(s.media))
            participants.append(entry)
        return {
            "id": self.id,
            "options": self.options.as_dict(),
            "created_at": int(self.created_at),
            "video_codec": _safe(self.media_room.video_codec, self.options.video_codec),
            "participants": participants,
            "tracks": _room_tracks(self.media_room),
            "chat_messages": len(self.chat),
            "telemetry_records": len(self.telemetry),
            "barred": [
                {"participant": bar.participant, "sub": sub, "reason": bar.reason}
                for sub, bar in self.bars.items()
            ],
        }

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": int(self.created_at),
            "participants": len(self.admitted()),
            "waiting": len(self.waiting),
        }

    # -- messaging ----------------------------------------------------------------------------

    def broadcast(self, msg: dict[str, Any], *, exclude: Session | None = None) -> None:
        for s in self.admitted():
            if s is not exclude:
                s.send(msg)

    def _to_doctors(self, msg: dict[str, Any]) -> None:
        for s in self.doctors():
            s.send(msg)

    def _send_positions(self) -> None:
        for i, pid in enumerate(self.waiting):
            self.sessions[pid].send({"type": "waiting", "position": i + 1})

    def post_chat(self, session: Session, text: str) -> ChatMessage:
        if session.state is not SessionState.ADMITTED:
            raise ProtocolError(ErrorCode.NOT_ADMITTED, "chat is open after admission")
        if not session.chat_bucket.take():
            raise ProtocolError(ErrorCode.RATE_LIMITED, "too many chat messages: slow down")
        try:
            message = self.chat.append(
                sender=session.id,
                name=session.name,
                role=session.role.value,
                text=text,
                max_size=self.hub.config.max_message_bytes - ENVELOPE_BYTES,
            )
        except ChatTooLarge as exc:
            raise ProtocolError(ErrorCode.TOO_LARGE, str(exc)) from exc
        self.broadcast({"type": "chat", "message": message.as_dict()})
        return message

    # -- joining ------------------------------------------------------------------------------

    def _joined(self, session: Session, ref: str | None, *, resumed: bool) -> dict[str, Any]:
        return {
            "type": "joined",
            "ref": ref,
            "v": PROTOCOL_VERSION,
            "room": self.id,
            "participant": session.public(),
            "state": session.state.value,
            "resume": self.hub.resume_tokens.issue(self.id, session.id),
            "resumed": resumed,
            "iceServers": self.hub.node.ice_servers(),
        }

    async def join(
        self,
        claims: TokenClaims,
        *,
        codecs: frozenset[str] | None,
        ws: web.WebSocketResponse,
        ref: str | None,
    ) -> Session:
        bar = self.bars.get(claims.sub)
        if bar is not None:
            raise Barred(*BAR_CLOSE[bar.reason])
        # One session per user and room: a fresh join (no or an expired resume token) replaces
        # the one still in its grace period, which would otherwise be offered to it as a peer.
        for old in [s for s in self.sessions.values() if s.owns_sub(claims.sub)]:
            await self.remove(old, CloseReason.REPLACED, end_if_empty=False)
        self.hub.check_capacity(self)  # RoomUnavailable or NodeFull (limits, issue 11)
        session = Session(
            consultation=self,
            role=claims.role,
            name=claims.name[:MAX_NAME_CHARS],
            sub=claims.sub,
            codecs=codecs,
            telemetry=claims.telemetry,
        )
        waits = claims.role is Role.PATIENT and self.options.waiting_room
        if not waits:
            try:
                self._create_media(session)
            except ValueError as exc:
                raise RoomUnavailable("room is full") from exc
        self.sessions[session.id] = session
        session.attach(ws)
        logger.info(
            "participant %s joined room %s as %s (%s)",
            session.id,
            self.id,
            session.role.value,
            "waiting" if waits else "admitted",
        )
        if waits:
            self.waiting.append(session.id)
            session.send(self._joined(session, ref, resumed=False))
            session.send({"type": "waiting", "position": self.position(session)})
            self._to_doctors({"type": "knock", "participant": session.public()})
        else:
            session.state = SessionState.ADMITTED
            session.send(self._joined(session, ref, resumed=False))
            self._on_admitted(session)
        return session

    def take_resume(self, token: str, sub: str) -> Session | None:
        """The session a resume token reattaches (consuming the token), if it is the user's."""
        pid = self.hub.resume_tokens.peek(token, self.id)
        session = self.sessions.get(pid) if pid is not None else None
        if session is None or session.state is SessionState.CLOSED or not session.owns_sub(sub):
            return None  # someone else's token stays valid for its owner
        self.hub.resume_tokens.consume(token, self.id)
        return session

    def resume(self, session: Session, *, ws: web.WebSocketResponse, ref: str | None) -> None:
        _cancel(session, "grace_task")
        session.attach(ws)
        logger.info("participant %s resumed in room %s", session.id, self.id)
        session.send(self._joined(session, ref, resumed=True))
        if session.state is SessionState.WAITING:
            session.send({"type": "waiting", "position": self.position(session)})
        else:
            session.send({"type": "admitted"})
            session.send(self.room_message(session))
            # A `pause` sent while the socket was down was lost with it (issue 5).
            fallback = getattr(session.media, "fallback", None)  # none for a plain-RTP device
            if fallback is not None and fallback.paused_sources():
                sources, reason = fallback.paused_sources(), fallback.pause_reason
                session.send({"type": "pause", "sources": sources, "reason": reason})
            pending = _safe(session.media.pending_offer, None) if session.media else None
            if pending is not None:
                sdp, tracks = pending
                session.send({"type": "offer", "sdp": sdp, "tracks": tracks})

    def socket_closed(self, session: Session, ws: web.WebSocketResponse) -> None:
        """The socket ended without leave: keep the session for the grace period."""
        if not session.detach(ws) or session.state is SessionState.CLOSED or self.ended:
            return
        grace = self.hub.config.resume_grace_s
        self.hub.resume_tokens.start_expiry(session.id, grace)
        logger.info("participant %s lost its socket; grace %.0fs", session.id, grace)

        async def expire() -> None:
            await asyncio.sleep(grace)
            await self.remove(session, CloseReason.TIMEOUT)

        session.grace_task = self.hub.spawn(expire())

    # -- admission ----------------------------------------------------------------------------

    async def admit(self, session: Session) -> None:
        if session.state is not SessionState.WAITING:
            raise ProtocolError(ErrorCode.NOT_FOUND, "participant is not waiting")
        try:
            self._create_media(session)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.ROOM_FULL, "room is full") from exc
        self.waiting.remove(session.id)
        session.state = SessionState.ADMITTED
        logger.info("participant %s admitted to room %s", session.id, self.id)
        self._on_admitted(session)
        self._send_positions()

    def _on_admitted(self, session: Session) -> None:
        self.hub.metrics.observe_join(time.monotonic() - session.joined_at)
        session.send({"type": "admitted"})
        session.send(self.room_message(session))
        self.broadcast(
            {"type": "participant-joined", "participant": self.describe(session)}, exclude=session
        )

    async def deny(self, session: Session, *, block: bool = False) -> None:
        """Refuse a waiting participant. Its identity may knock `max_reknocks` more times;
        `block` bars it at once (until the API lifts the bar)."""
        if session.state is not SessionState.WAITING:
            raise ProtocolError(ErrorCode.NOT_FOUND, "participant is not waiting")
        denials = self.denials.get(session.sub, 0) + 1
        self.denials[session.sub] = denials
        if block:
            self.bars[session.sub] = Bar(session.id, "blocked")
        elif denials > self.hub.config.max_reknocks:
            self.bars[session.sub] = Bar(session.id, "denied")
        notice = {"type": "denied", "blocked": block}
        await self.remove(session, CloseReason.DENIED, notice=notice)

    async def kick(self, session: Session) -> None:
        """Remove a participant and bar its identity for the room's life (the API lifts it)."""
        self.bars[session.sub] = Bar(session.id, "kicked")
        await self.remove(session, CloseReason.KICKED, notice={"type": "kicked"})

    def lift_bar(self, participant_id: str) -> bool:
        """The API lifts the bar of the identity barred as `participant_id` (and its knocks)."""
        for sub, bar in list(self.bars.items()):
            if bar.participant == participant_id:
                del self.bars[sub]
                self.denials.pop(sub, None)
                return True
        return False

    # -- media wiring -------------------------------------------------------------------------

    def _create_media(self, session: Session) -> Participant:
        media = self.media_room.add_participant(
            session.id, role=session.role, video_codecs=session.codecs
        )
        session.media = media
        media.on("offer", self._listener(session, self._on_media_offer))
        media.on("data", self._listener(session, self._on_media_data))
        media.on("connectionstatechange", self._listener(session, self._on_media_state))
        media.on("mode", self._listener(session, self._on_media_mode))
        media.on("pause", self._listener(session, self._on_media_pause))  # issue 5
        media.on("close", self._listener(session, self._on_media_close))
        return media

    def _listener(self, session: Session, handler: Callable[..., None]) -> Callable[..., None]:
        def listener(*args: Any) -> None:
            try:
                handler(session, *args)
            except Exception:
                logger.exception("media event handler failed for participant %s", session.id)

        return listener

    def _on_media_offer(self, session: Session, sdp: str, tracks: dict[str, Any]) -> None:
        session.send({"type": "offer", "sdp": sdp, "tracks": tracks})
        media = session.media
        if media is not None and media.connection_state == "new":
            self._watch_peer(session, restart=False)  # the first exchange: it must connect

    def _on_media_data(self, session: Session, text: str) -> None:
        try:
            msg = safejson.loads(text)
        except ValueError:
            return
        if isinstance(msg, dict) and msg.get("type") == "telemetry":
            self._on_channel_telemetry(session, msg)  # devices
            return
        if not isinstance(msg, dict) or msg.get("type") != "chat":
            return
        body = msg.get("text")
        if isinstance(body, str) and body and len(body) <= self.hub.config.max_chat_chars:
            try:
                self.post_chat(session, body)
            except ProtocolError as exc:  # rate-limited, too-large: told over the WebSocket
                session.send(exc.to_message())

    def _on_channel_telemetry(self, session: Session, msg: dict[str, Any]) -> None:
        """devices: telemetry over the data channel; ack or error over the WebSocket."""
        ref = msg.get("id") if isinstance(msg.get("id"), str) else None
        try:
            stored = telemetry.relay(self, session, msg.get("readings"), msg.get("seq"))
        except telemetry.TelemetryForbidden as exc:
            session.send(error_message(ErrorCode.FORBIDDEN, str(exc), ref))
            return
        except telemetry.TelemetryError as exc:
            session.send(error_message(ErrorCode.BAD_TELEMETRY, str(exc), ref))
            return
        except ProtocolError as exc:  # rate-limited
            session.send(error_message(exc.code, exc.message, ref))
            return
        session.send({"type": "ack", "ref": ref, "seq": msg.get("seq"), "stored": stored})

    def _on_media_mode(self, session: Session, direction: str, mode: str, reason: str) -> None:
        msg = {
            "type": "mode",
            "participant": session.id,
            "direction": direction,
            "mode": mode,
            "reason": reason,
        }
        self.broadcast(msg)

    def _on_media_pause(self, session: Session, sources: list[str], reason: str) -> None:
        """Bandwidth fallback: the publisher stops (or resumes) these senders (issue 5)."""
        session.send({"type": "pause", "sources": sources, "reason": reason})

    def _on_media_state(self, session: Session, state: str) -> None:
        """Every media session state but `connected` is given peer_timeout_s (_peer_timeout).

        `new` (a fresh connection after `reconnect`; also a first server offer, see
        _on_media_offer) and `connecting` start a connection attempt: the clock starts again.
        A failed or closed one (a client closes its old one first) keeps the clock it has: it
        is to be replaced (`reconnect`, issue 5) within peer_timeout_s of the first trouble.
        """
        if session.state is SessionState.CLOSED:
            return
        if state == "connected":
            _cancel(session, "peer_timer")
        else:
            self._watch_peer(session, restart=state in ("new", "connecting"))

    def _watch_peer(self, session: Session, *, restart: bool) -> None:
        if restart:
            _cancel(session, "peer_timer")
        if session.peer_timer is None or session.peer_timer.done():
            session.peer_timer = self.hub.spawn(self._peer_timeout(session))

    async def _peer_timeout(self, session: Session) -> None:
        """A media session still not connected after peer_timeout_s: one that never connected
        (`new` with our offer unanswered, `connecting`: ICE or DTLS does not complete) is
        closed and the client told `media-timeout` (it starts a fresh one with `reconnect`,
        which gets peer_timeout_s again); one that failed or closed and was not replaced
        removes the participant (reason `timeout`)."""
        await asyncio.sleep(self.hub.config.peer_timeout_s)
        media = session.media
        if not isinstance(media, Participant) or media.closed:
            return
        state = media.connection_state
        if state in ("disconnected", "failed", "closed"):
            await self.remove(session, CloseReason.TIMEOUT)
        elif state == "connecting" or (state == "new" and media.pending_offer() is not None):
            logger.info("participant %s: media did not connect (%s)", session.id, state)
            session.peer_timer = None  # closing arms the clock for the client's `reconnect`
            await media.close_connection()
            session.send(
                error_message(
                    ErrorCode.MEDIA_TIMEOUT,
                    "the media connection did not connect in time: start a fresh one (reconnect)",
                    None,
                )
            )

    def _on_media_close(self, session: Session, reason: CloseReason) -> None:
        if session.state is not SessionState.CLOSED:
            self.hub.spawn(self.remove(session, reason))

    # -- leaving ------------------------------------------------------------------------------

    async def remove(
        self,
        session: Session,
        reason: CloseReason,
        *,
        notice: dict[str, Any] | None = None,
        end_if_empty: bool = True,
    ) -> None:
        """Remove a session once: close its socket and media, tell the others."""
        if session.state is SessionState.CLOSED:
            return
        was = session.state
        session.state = SessionState.CLOSED
        self.sessions.pop(session.id, None)
        if session.id in self.waiting:
            self.waiting.remove(session.id)
        self.hub.resume_tokens.revoke(session.id)
        session.cancel_timers()
        if notice is not None:
            session.send(notice)
        session.close_socket(CLOSE_CODES.get(reason, CloseCode.NORMAL), reason.value)
        logger.info(
            "participant %s left room %s (%s, was %s)", session.id, self.id, reason.value, was.value
        )
        if session.media is not None:
            try:
                await session.media.close(reason)
            except Exception:
                logger.exception("closing media of participant %s failed", session.id)
        left = {"type": "participant-left", "participant": session.id, "reason": reason.value}
        if was is SessionState.ADMITTED:
            self.broadcast(left)
        else:
            self._to_doctors(left)
            self._send_positions()
        if end_if_empty and self.auto_created and not self.sessions:
            await self.end(CloseReason.ENDED, final=False)  # nobody left in a room nobody created

    async def end(self, reason: CloseReason = CloseReason.ENDED, *, final: bool = True) -> None:
        """End the consultation: everyone gets `ended` and close 4005 (1001 on shutdown).

        Ended on purpose (`final`, not a shutdown), its id is remembered by the hub and its
        tokens are refused; an auto-created room that emptied is not (final=False)."""
        if self.ended:
            return
        self.ended = True
        code = CloseCode.GOING_AWAY if reason is CloseReason.SHUTDOWN else CloseCode.ENDED
        for session in list(self.sessions.values()):
            session.state = SessionState.CLOSED
            session.cancel_timers()
            self.hub.resume_tokens.revoke(session.id)
            session.send({"type": "ended", "reason": reason.value})
            session.close_socket(code, reason.value)
        self.sessions.clear()
        self.waiting.clear()
        try:
            await self.media_room.close(reason)
        except Exception:
            logger.exception("closing media room %s failed", self.id)
        self.hub.forget(self, ended=final and reason is CloseReason.ENDED)
        logger.info("room %s ended (%s)", self.id, reason.value)


def _cancel(session: Session, attr: str) -> None:
    task = getattr(session, attr)
    if task is not None and not task.done() and task is not asyncio.current_task():
        task.cancel()
    setattr(session, attr, None)


def _safe(fn: Callable[[], Any], default: Any) -> Any:
    try:
        return fn()
    except Exception:
        return default


def _tracks(media: Participant | IngestParticipant | None) -> list[dict[str, Any]]:
    if media is None:
        return []
    out = []
    for pub in list(media.publications.values()):
        info = _safe(pub.info, None)
        if info is not None:
            out.append(
                {"id": info.track_id, "kind": info.kind, "source": info.source, **_capture(pub)}
            )
    return out


def _capture(pub: Publication) -> dict[str, Any]:
    """devices: what a publication's capture does and what the doctor must know (issue 19)."""
    out: dict[str, Any] = {}
    if pub.capture is not None:
        out["capture"] = pub.capture.as_dict()
    if pub.warnings:
        out["warnings"] = list(pub.warnings)
    return out


def _room_tracks(room: Room) -> list[dict[str, Any]]:
    pubs: list[Publication] = _safe(
        lambda: [pub for p in room.participants.values() for pub in p.publications.values()], []
    )
    out = []
    for pub in pubs:
        t = _safe(pub.info, None)
        if t is not None:
            out.append(
                {
                    "id": t.track_id,
                    "participant": t.participant_id,
                    "kind": t.kind,
                    "source": t.source,
                    "codec": t.codec,
                    "mid": t.mid,
                    **_capture(pub),
                }
            )
    return out


def _media_info(media: Participant | IngestParticipant) -> dict[str, Any]:
    """The media plane's view of a participant (connection, tracks, link stats...)."""
    info = _safe(media.info, {})
    for track in info.get("tracks") or []:
        pub = media.publications.get(track.get("track_id"))
        if pub is not None:
            track.update(_capture(pub))
    return {"media": {k: v for k, v in info.items() if k not in ("id", "role")}}
