"""Consultation: the control-plane state of one room (sessions, waiting room, chat).

The media room is created with the consultation (`CreateRoom`); a session gets a media
participant only when admitted (`AddParticipant`). Nothing of the room reaches a waiting
session. Signaling holds no media object: it sends the media plane commands
(mediaserver/api.py), reads snapshots, and gets its events through the hub.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mediaserver.api import (
    AddParticipant,
    CloseConnection,
    CloseParticipant,
    CloseReason,
    ConnectionState,
    DataMessage,
    DeviceState,
    MediaEvent,
    MediaLost,
    MediaPlane,
    MediaPlaneError,
    ModeChanged,
    ParticipantClosed,
    ParticipantEvent,
    ParticipantKind,
    ParticipantSnapshot,
    PauseChanged,
    RecordingStopped,
    Role,
    RoomFull,
    RoomOptions,
    ServerOffer,
    TrackSnapshot,
)

from . import safejson, telemetry
from .auth import TokenClaims
from .chat import ChatLog, ChatMessage, ChatTooLarge, Page, encoded_size
from .fleet import NodeInfo, PersonRecord, RoomState
from .protocol import (
    ENVELOPE_BYTES,
    PROTOCOL_VERSION,
    CloseCode,
    ErrorCode,
    ProtocolError,
    error_message,
)
from .recording import POLICIES, RecordingConsent
from .session import Session, SessionState
from .telemetry import TelemetryLog

if TYPE_CHECKING:
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


HAND_OVER_MEDIA_S = 1.0  # a room handed over closes its media this long after its sockets
MAX_NAME_CHARS = 64  # display names are cut to this (they are in every room message)


class RoomUnavailable(Exception):
    """A join refused because of the room (full); the caller closes with 4007."""


class RoomGone(Exception):
    """The consultation ended (or its media room failed) while a join was on its way in:
    the caller joins the room id afresh (a new consultation, or `ended`)."""


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
    recording: str = "none"  # none | consent | devices (signaling/recording.py)

    def __post_init__(self) -> None:
        if self.recording not in POLICIES:
            raise ValueError("recording must be none, consent or devices")

    def media_options(self) -> RoomOptions:
        return RoomOptions(video_codec=self.video_codec, max_participants=self.max_participants)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConsultationOptions:
        """Options as as_dict() wrote them (a placement record); defaults where absent."""
        default = cls()
        waiting_room = data.get("waiting_room", default.waiting_room)
        codec = data.get("video_codec", default.video_codec)
        limit = data.get("max_participants", default.max_participants)
        recording = data.get("recording", default.recording)
        return cls(
            recording=recording if recording in POLICIES else default.recording,
            waiting_room=waiting_room if isinstance(waiting_room, bool) else default.waiting_room,
            video_codec=codec if codec in ("VP8", "H264") else default.video_codec,
            max_participants=limit if isinstance(limit, int) and 1 <= limit <= 64 else 8,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "waiting_room": self.waiting_room,
            "video_codec": self.video_codec,
            "max_participants": self.max_participants,
            "recording": self.recording,
        }


class Consultation:
    def __init__(
        self,
        room_id: str,
        options: ConsultationOptions,
        *,
        hub: Hub,
        auto_created: bool = False,
    ) -> None:
        self.id = room_id
        self.options = options
        self.hub = hub
        self.plane: MediaPlane = hub.plane
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
        self._media_ready = asyncio.Event()  # set once the hub created its media room
        # Access (issue 11): by the token's `sub`, in memory only and never logged. Entries come
        # only from platform-signed tokens; they last for the room's life.
        self.bars: dict[str, Bar] = {}
        self.denials: dict[str, int] = {}
        # Fleet (docs/deploy.md "A fleet of nodes"): what must outlive this node is journaled;
        # a room taken over from a dead node takes its participants back by `sub`.
        self.journal = hub.fleet.journal(room_id)
        self.restored: dict[str, PersonRecord] = {}  # sub -> record, until that user is back
        self._order = 0
        self.recording = RecordingConsent(self)

    def media_created(self) -> None:
        """The hub created the media room: joins may add participants to it."""
        self._media_ready.set()
        if self.options.recording == "devices":
            self.hub.spawn(self.recording.start_devices())

    def media_failed(self) -> None:
        """The media room could not be created: the consultation never opens."""
        self.ended = True
        self._media_ready.set()

    def restore(self, state: RoomState) -> None:
        """Take the room over from a node that died: its chat, telemetry and bars, and its
        participants, each taken back (same id, same state, same place in the waiting room)
        when its user joins here (`restored_join`)."""
        self.chat.restore(state.chat)
        self.telemetry.restore(state.telemetry)
        for sub, bar in state.bars.items():
            self.bars[sub] = Bar(str(bar.get("participant", "")), str(bar.get("reason", "")))
        for record in state.people.values():
            self.restored[record.sub] = record
            self._order = max(self._order, record.order)

    def _person(self, session: Session) -> PersonRecord:
        return PersonRecord(
            id=session.id,
            sub=session.sub,
            role=session.role.value,
            name=session.name,
            state=session.state.value,
            order=session.order,
            telemetry=session.telemetry_granted,
            resume=tuple(session.resume_digests),
        )

    def _bar(self, sub: str, bar: Bar) -> None:
        self.bars[sub] = bar
        self.journal.bar(sub, {"participant": bar.participant, "reason": bar.reason})

    # -- views --------------------------------------------------------------------------------

    def admitted(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.state is SessionState.ADMITTED]

    def doctors(self) -> list[Session]:
        return [s for s in self.admitted() if s.is_doctor]

    def position(self, session: Session) -> int:
        return self.waiting.index(session.id) + 1

    def media(self, session: Session) -> ParticipantSnapshot | None:
        """The media plane's snapshot of the session's participant (None: no media)."""
        return self.plane.participant(self.id, session.id) if session.has_media else None

    def describe(self, session: Session) -> dict[str, Any]:
        info = session.public()
        media = self.media(session)
        info["tracks"] = [_track(t) for t in media.tracks] if media is not None else []
        if media is not None:  # a `room` snapshot restores what `mode` events said
            info["modes"] = dict(media.modes)  # (a plain-RTP device's: always video)
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
        room = self.plane.room(self.id)
        media = {p.participant_id: p for p in room.participants} if room is not None else {}
        participants = []
        for s in self.sessions.values():
            entry: dict[str, Any] = {
                "id": s.id,
                "sub": s.sub,
                "role": s.role.value,
                "state": s.state.value,
                "connected": s.connected,
            }
            snapshot = media.get(s.id) if s.has_media else None
            if snapshot is not None:
                entry["media"] = _media_info(snapshot)
            participants.append(entry)
        return {
            "id": self.id,
            "options": self.options.as_dict(),
            "created_at": int(self.created_at),
            "video_codec": room.video_codec if room is not None else self.options.video_codec,
            "worker": room.worker if room is not None else None,
            "participants": participants,
            "tracks": [_room_track(t) for t in room.tracks] if room is not None else [],
            "chat_messages": len(self.chat),
            "telemetry_records": len(self.telemetry),
            "recording": self.recording.info(),
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
        self.journal.chat(message.as_dict())
        self.broadcast({"type": "chat", "message": message.as_dict()})
        self.recording.note("chat", {"message": message.as_dict()})
        return message

    # -- joining ------------------------------------------------------------------------------

    def _joined(
        self, session: Session, ref: str | None, *, resumed: bool, moved: bool = False
    ) -> dict[str, Any]:
        token = self.hub.resume_tokens.issue(self.id, session.id)
        session.resume_digests = [*session.resume_digests[-1:], resume_digest(token)]
        self.journal.person(self._person(session))
        msg = {
            "type": "joined",
            "ref": ref,
            "v": PROTOCOL_VERSION,
            "room": self.id,
            "participant": session.public(),
            "state": session.state.value,
            "resume": token,
            "resumed": resumed,
            "iceServers": self._ice_servers(session),
        }
        if moved:  # taken back on another node: its media connection must start afresh
            msg["moved"] = True
        return msg

    def _ice_servers(self, session: Session) -> list[dict[str, object]]:
        """The session's TURN entry with credentials minted now (with --turn-urls), then the
        node's static STUN/TURN servers (--ice-servers)."""
        minted = [self.hub.turn.ice_server(session.id).as_dict()] if self.hub.turn else []
        return [*minted, *self.plane.ice_servers()]

    async def join(
        self,
        claims: TokenClaims,
        *,
        codecs: frozenset[str] | None,
        ws: web.WebSocketResponse,
        ref: str | None,
        restore: bool = False,
    ) -> Session:
        if not self._media_ready.is_set():  # its media room is still being created
            await self._media_ready.wait()
        if self.ended:
            raise RoomGone(self.id)
        bar = self.bars.get(claims.sub)
        if bar is not None:
            raise Barred(*BAR_CLOSE[bar.reason])
        # One session per user and room: a fresh join (no or an expired resume token) replaces
        # the one still in its grace period, which would otherwise be offered to it as a peer.
        for old in [s for s in self.sessions.values() if s.owns_sub(claims.sub)]:
            await self.remove(old, CloseReason.REPLACED, end_if_empty=False)
        if self.ended:
            raise RoomGone(self.id)
        self.hub.check_capacity(self)  # RoomUnavailable or NodeFull (limits, issue 11)
        record = self.restored.pop(claims.sub, None) if restore else None
        session = Session(
            consultation=self,
            role=claims.role,
            name=claims.name[:MAX_NAME_CHARS],
            sub=claims.sub,
            codecs=codecs,
            telemetry=claims.telemetry,
            participant_id=record.id if record is not None else None,
        )
        if record is not None:  # taken back from a node that died: same id, same place
            session.order = record.order
            session.resume_digests = list(record.resume)
            waits = record.state == SessionState.WAITING.value
        else:
            self._order += 1
            session.order = self._order
            waits = claims.role is Role.PATIENT and self.options.waiting_room
        if not waits:
            try:
                await self._create_media(session)
            except RoomFull as exc:
                raise RoomUnavailable("room is full") from exc
            except MediaPlaneError:
                if self.ended:  # its media room closed meanwhile
                    raise RoomGone(self.id) from None
                raise
            if self.ended:  # the room's close takes the participant's media with it
                raise RoomGone(self.id)
        self.sessions[session.id] = session
        session.attach(ws)
        logger.info(
            "participant %s joined room %s as %s (%s)",
            session.id,
            self.id,
            session.role.value,
            "waiting" if waits else "admitted",
        )
        moved = record is not None
        if waits:
            self.waiting.append(session.id)
            self.waiting.sort(key=lambda pid: self.sessions[pid].order)
            session.send(self._joined(session, ref, resumed=moved, moved=moved))
            if moved:  # back at its place: those behind it move down one
                self._send_positions()
            else:
                session.send({"type": "waiting", "position": self.position(session)})
            self._to_doctors({"type": "knock", "participant": session.public()})
        else:
            session.state = SessionState.ADMITTED
            session.send(self._joined(session, ref, resumed=moved, moved=moved))
            self._on_admitted(session)
        return session

    def restorable(self, sub: str, resume: object, token_valid: bool) -> bool:
        """A user of the node that died may be taken back here: with a token still valid, or
        with one of the resume tokens it was last given there (its join token may be old)."""
        record = self.restored.get(sub)
        if record is None:
            return False
        return token_valid or (isinstance(resume, str) and resume_digest(resume) in record.resume)

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
            media = self.media(session)
            # A `pause` sent while the socket was down was lost with it (issue 5).
            if media is not None and media.paused_sources:
                sources, reason = list(media.paused_sources), media.pause_reason
                session.send({"type": "pause", "sources": sources, "reason": reason})
            pending = media.pending_offer if media is not None else None
            if pending is not None:
                session.send({"type": "offer", "sdp": pending.sdp, "tracks": pending.tracks})

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
            await self._create_media(session)
        except RoomFull as exc:
            raise ProtocolError(ErrorCode.ROOM_FULL, "room is full") from exc
        self.waiting.remove(session.id)
        session.state = SessionState.ADMITTED
        self.journal.person(self._person(session))
        logger.info("participant %s admitted to room %s", session.id, self.id)
        self._on_admitted(session)
        self._send_positions()

    def _on_admitted(self, session: Session) -> None:
        self.hub.metrics.observe_join(time.monotonic() - session.joined_at)
        session.send({"type": "admitted"})
        session.send(self.room_message(session))
        # a patient is asked to consent (a running recording stops until it did)
        self.hub.spawn(self.recording.admitted(session))
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
            self._bar(session.sub, Bar(session.id, "blocked"))
        elif denials > self.hub.config.max_reknocks:
            self._bar(session.sub, Bar(session.id, "denied"))
        await self.journal.flushed()  # a fleet: barred on any node before it is told
        notice = {"type": "denied", "blocked": block}
        await self.remove(session, CloseReason.DENIED, notice=notice)

    async def kick(self, session: Session) -> None:
        """Remove a participant and bar its identity for the room's life (the API lifts it)."""
        self._bar(session.sub, Bar(session.id, "kicked"))
        await self.journal.flushed()  # a fleet: barred on any node before it is told
        await self.remove(session, CloseReason.KICKED, notice={"type": "kicked"})

    def lift_bar(self, participant_id: str) -> bool:
        """The API lifts the bar of the identity barred as `participant_id` (and its knocks)."""
        for sub, bar in list(self.bars.items()):
            if bar.participant == participant_id:
                del self.bars[sub]
                self.journal.bar(sub, None)
                self.denials.pop(sub, None)
                return True
        return False

    # -- media wiring -------------------------------------------------------------------------

    async def _create_media(self, session: Session) -> None:
        """The session's media participant; its events reach `on_media_event` by its id."""
        await self.plane.execute(
            AddParticipant(
                room_id=self.id,
                participant_id=session.id,
                role=session.role,
                video_codecs=tuple(sorted(session.codecs)) if session.codecs else None,
            )
        )
        session.has_media = True

    def on_media_event(self, event: MediaEvent) -> None:
        """An event of the media plane for this room (the hub routes them by room id)."""
        if isinstance(event, RecordingStopped):
            self.recording.on_stopped(event)
            return
        if not isinstance(event, ParticipantEvent):
            return  # track and room events: the snapshots say what changed
        session = self.sessions.get(event.participant_id)
        if session is None or not session.has_media:
            return  # a session removed meanwhile (its media is being closed)
        try:
            self._on_participant_event(session, event)
        except Exception:
            logger.exception("media event handler failed for participant %s", session.id)

    def _on_participant_event(self, session: Session, event: ParticipantEvent) -> None:
        if isinstance(event, ServerOffer):
            self._on_media_offer(session, event)
        elif isinstance(event, DataMessage):
            self._on_media_data(session, event.text)
        elif isinstance(event, ConnectionState):
            self._on_media_state(session, event.state)
        elif isinstance(event, ModeChanged):
            self._on_media_mode(session, event.direction, event.mode, event.reason)
        elif isinstance(event, PauseChanged):
            self._on_media_pause(session, list(event.sources), event.reason)
        elif isinstance(event, DeviceState):
            self.broadcast(
                {"type": "device-state", "participant": session.id, "state": event.state},
                exclude=session,
            )
        elif isinstance(event, ParticipantClosed):
            self._on_media_close(session, event.reason)
        elif isinstance(event, MediaLost):
            self._on_media_lost(session)

    def _on_media_offer(self, session: Session, event: ServerOffer) -> None:
        session.send({"type": "offer", "sdp": event.sdp, "tracks": event.tracks})
        if event.connection == "new":
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
        self.recording.note("mode", {k: v for k, v in msg.items() if k != "type"})

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
        media = self.media(session)
        if media is None or media.closed:
            return
        state = media.connection
        if state in ("disconnected", "failed", "closed"):
            await self.remove(session, CloseReason.TIMEOUT)
        elif state == "connecting" or (state == "new" and media.pending_offer is not None):
            logger.info("participant %s: media did not connect (%s)", session.id, state)
            session.peer_timer = None  # closing arms the clock for the client's `reconnect`
            await self.plane.execute(CloseConnection(room_id=self.id, participant_id=session.id))
            session.send(
                error_message(
                    ErrorCode.MEDIA_TIMEOUT,
                    "the media connection did not connect in time: start a fresh one (reconnect)",
                    None,
                )
            )

    def _on_media_lost(self, session: Session) -> None:
        """The worker holding the media went away (worker processes, docs/media.md): the
        room is on another worker, the participant without a connection. The client is told
        `media-timeout`, as for a connection that never connected, and starts a fresh one
        (`reconnect`) within peer_timeout_s."""
        if session.state is SessionState.CLOSED:
            return
        self.recording.media_lost()  # the recording went with the worker
        logger.info("participant %s: media worker lost, client told to reconnect", session.id)
        self._watch_peer(session, restart=True)
        session.send(
            error_message(
                ErrorCode.MEDIA_TIMEOUT,
                "the media connection was lost: start a fresh one (reconnect)",
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
        self.journal.person_gone(session.id)
        session.cancel_timers()
        if notice is not None:
            session.send(notice)
        session.close_socket(CLOSE_CODES.get(reason, CloseCode.NORMAL), reason.value)
        logger.info(
            "participant %s left room %s (%s, was %s)", session.id, self.id, reason.value, was.value
        )
        # Nobody left in a room nobody created: it ends at once (its media room's close takes
        # the participant's media with it), before any await, so that a join from now on
        # finds no consultation and creates a fresh one.
        ends = end_if_empty and self.auto_created and not self.sessions and not self.ended
        if session.has_media and not ends:
            try:
                await self.plane.execute(
                    CloseParticipant(room_id=self.id, participant_id=session.id, reason=reason)
                )
            except Exception:
                logger.exception("closing media of participant %s failed", session.id)
        left = {"type": "participant-left", "participant": session.id, "reason": reason.value}
        if was is SessionState.ADMITTED:
            self.broadcast(left)
            await self.recording.left(session)
        else:
            self._to_doctors(left)
            self._send_positions()
        if ends:
            await self.end(CloseReason.ENDED, final=False)

    def hand_over(self, node: NodeInfo) -> None:
        """Move the room to `node` (this one drains or stops; the fleet placed it there): every
        client is told `redirect` and closed (4011) and resumes there, where the room is taken
        back from the journal. Nothing ends: no `ended`, no release of the room's record."""
        if self.ended:
            return
        self.ended = True  # a join racing in retries and is routed to the new node
        notice = {"type": "redirect", "url": node.ws_url, "node": node.id, "moved": True}
        for session in list(self.sessions.values()):
            session.state = SessionState.CLOSED
            session.cancel_timers()
            self.hub.resume_tokens.revoke(session.id)
            session.send(notice)
            session.close_socket(CloseCode.REDIRECT, "moved")
        self.sessions.clear()
        self.waiting.clear()
        self.hub.forget(self)
        logger.info("room %s handed over to node %s", self.id, node.id)
        if self._media_ready.is_set():
            # The media goes a moment after the sockets: a client learns of the move before
            # its connection here closes (the new node's connection replaces it).
            self.hub.spawn(self._close_media_later())

    async def _close_media_later(self) -> None:
        await asyncio.sleep(HAND_OVER_MEDIA_S)
        await self.hub.close_media(self.id, CloseReason.SHUTDOWN)

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
        # Gone at once for signaling (before any await): a join from now on creates the room
        # afresh, once its media room closed (Hub.create waits for the close). The media
        # room closes in a task of the hub, awaited here; a worker's close is a round trip.
        self.hub.forget(self, ended=final and reason is CloseReason.ENDED)
        if reason is not CloseReason.SHUTDOWN:  # a node shutting down leaves it to the fleet
            self.hub.release(self.id)
        logger.info("room %s ended (%s)", self.id, reason.value)
        if self._media_ready.is_set():  # (still being created: Hub.create closes it)
            await asyncio.shield(self.hub.close_media(self.id, reason))


def resume_digest(token: str) -> str:
    """What the fleet journal keeps of a resume token: never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def _cancel(session: Session, attr: str) -> None:
    task = getattr(session, attr)
    if task is not None and not task.done() and task is not asyncio.current_task():
        task.cancel()
    setattr(session, attr, None)


def _track(track: TrackSnapshot) -> dict[str, Any]:
    """A track as the room's participants see it (`room`, `participant-joined`)."""
    return {"id": track.track_id, "kind": track.kind, "source": track.source, **_capture(track)}


def _capture(track: TrackSnapshot) -> dict[str, Any]:
    """devices: what a publication's capture does and what the doctor must know (issue 19)."""
    out: dict[str, Any] = {}
    if track.capture is not None:
        out["capture"] = dict(track.capture)
    if track.warnings:
        out["warnings"] = list(track.warnings)
    return out


def _room_track(t: TrackSnapshot) -> dict[str, Any]:
    return {
        "id": t.track_id,
        "participant": t.participant_id,
        "kind": t.kind,
        "source": t.source,
        "codec": t.codec,
        "mid": t.mid,
        **_capture(t),
    }


def _media_info(media: ParticipantSnapshot) -> dict[str, Any]:
    """The media plane's view of a participant (connection, tracks, link stats...)."""
    info: dict[str, Any] = {"connection": media.connection}
    if media.ingest:
        info["ingest"] = [dict(s) for s in media.ingest]
    info["tracks"] = [
        {
            "track_id": t.track_id,
            "kind": t.kind,
            "source": t.source,
            "codec": t.codec,
            **_capture(t),
        }
        for t in media.tracks
    ]
    info["subscriptions"] = media.subscriptions
    info["modes"] = dict(media.modes)
    if media.kind is ParticipantKind.WEBRTC:
        info["paused_sources"] = list(media.paused_sources)
    info["link"] = media.link.as_dict()
    return info
