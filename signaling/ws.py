"""The `/ws` endpoint: the join handshake, then one handler per message type.

A handler's exception never escapes: client mistakes become `error` messages, anything else
is logged (participant id only) and answered with error `internal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from mediaserver.api import (
    AddCandidate,
    ClientAnswer,
    ClientOffer,
    CloseReason,
    MediaPlaneError,
    NegotiationError,
    RequestPublish,
    RestartTransport,
    TrackMeta,
    parse_capture,
    validate_channels,
    validate_source,
)

from . import safejson, telemetry
from .auth import TokenError
from .chat import parse_id
from .consultation import Barred, Consultation, RoomGone, RoomUnavailable
from .fleet import FleetUnavailable, Placement
from .hub import Draining, Hub, NodeFull, RoomEnded, RoomExists
from .protocol import (
    ENVELOPE_BYTES,
    PROTOCOL_VERSION,
    CloseCode,
    ErrorCode,
    ProtocolError,
    error_message,
    mid_kinds,
    parse_codecs,
    parse_message,
    require_sdp,
    require_str,
)
from .ratelimit import TokenBucket
from .session import Session, SessionState

logger = logging.getLogger(__name__)

Handler = Callable[[Hub, Session, dict[str, Any]], Awaitable[None]]
FLOOD_CLOSE_S = 1.0  # a flooding socket's close handshake, at most
JOIN_ATTEMPTS = 3  # a join that meets a room ending on its way in tries the room id again


async def _refuse(ws: web.WebSocketResponse, code: CloseCode, reason: str) -> None:
    logger.info("join refused: %s (%d)", reason, int(code))
    await ws.close(code=code, message=reason.encode()[:120])


async def handshake(hub: Hub, ws: web.WebSocketResponse) -> Session | None:
    """Wait for `join`; return the session, or close the socket and return None."""
    try:
        return await _handshake(hub, ws)
    except Exception as exc:
        logger.error("join failed: %s", type(exc).__name__, exc_info=exc)
        await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
        return None


async def _handshake(hub: Hub, ws: web.WebSocketResponse) -> Session | None:
    config = hub.config
    try:
        first = await ws.receive(timeout=config.join_timeout_s)
    except TimeoutError:
        await _refuse(ws, CloseCode.PROTOCOL, "join timeout")
        return None
    if first.type != WSMsgType.TEXT:
        if first.type not in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            await _refuse(ws, CloseCode.PROTOCOL, "first message must be join")
        return None
    try:
        msg = parse_message(first.data, max_bytes=config.max_message_bytes)
    except ProtocolError:
        await _refuse(ws, CloseCode.PROTOCOL, "first message must be join")
        return None
    if msg["type"] != "join":
        await _refuse(ws, CloseCode.PROTOCOL, "first message must be join")
        return None
    if msg.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        await _refuse(ws, CloseCode.PROTOCOL, "unsupported protocol version")
        return None
    token = msg.get("token")
    room = msg.get("room")
    resume = msg.get("resume")
    try:
        codecs = parse_codecs(msg)
        if not isinstance(token, str):
            raise TokenError("missing token")
        if room is not None and not isinstance(room, str):
            raise TokenError("wrong room")
        claims = hub.tokens.verify(token, room=room, check_expiry=False)
        penalty = hub.penalty_left(claims.room, claims.sub)
        if penalty > 0:  # it flooded a socket (limits, issue 11): held, then refused, so a
            # reconnect storm makes one attempt per penalty; not logged (it would flood the log)
            await asyncio.sleep(min(penalty, config.join_timeout_s))
            await ws.close(code=CloseCode.RATE_LIMITED, message=b"rate limit")
            return None
        consultation = hub.get(claims.room)
        if consultation is None and hub.fleet.shared:
            try:
                routed = await _route(hub, claims.room)
            except FleetUnavailable:  # where the room is cannot be known now: retry later
                await _refuse(ws, CloseCode.TRY_AGAIN_LATER, "fleet unavailable: try again")
                return None
            if isinstance(routed, Placement):  # another node holds it: the client goes there
                await _redirect(ws, routed, msg["id"])
                return None
            consultation = routed
        if consultation is not None and isinstance(resume, str):
            session = consultation.take_resume(resume, claims.sub)
            if session is not None:
                consultation.resume(session, ws=ws, ref=msg["id"])
                return session
        restore = consultation is not None and consultation.restorable(
            claims.sub, resume, _unexpired(hub, token, room)
        )
        if not restore:
            hub.tokens.verify(token, room=room)  # expiry, for a new join
    except TokenError as exc:
        await _refuse(ws, CloseCode.BAD_TOKEN, exc.reason)
        return None
    except ProtocolError:
        await _refuse(ws, CloseCode.PROTOCOL, "bad join")
        return None
    try:
        for _ in range(JOIN_ATTEMPTS):
            if consultation is None and claims.room in hub.ended:
                break
            if consultation is None:
                consultation = await _auto_create(hub, claims.room)
                if consultation is None:
                    await _refuse(ws, CloseCode.ROOM_UNAVAILABLE, "unknown room")
                    return None
            try:
                return await consultation.join(
                    claims, codecs=codecs, ws=ws, ref=msg["id"], restore=restore
                )
            except RoomGone:  # it ended on the way in: the room id afresh (a new room or ended)
                consultation = hub.get(claims.room)
        await _refuse(ws, CloseCode.ENDED, "room ended")
        return None
    except RoomUnavailable as exc:
        await _refuse(ws, CloseCode.ROOM_UNAVAILABLE, str(exc))
        return None
    except Barred as exc:
        await _refuse(ws, exc.code, exc.reason)
        return None
    except NodeFull as exc:
        await _refuse(ws, CloseCode.NODE_FULL, str(exc))
        return None


def _unexpired(hub: Hub, token: str, room: str | None) -> bool:
    try:
        hub.tokens.verify(token, room=room)
    except TokenError:
        return False
    return True


async def _route(hub: Hub, room_id: str) -> Consultation | Placement | None:
    """A room this node does not hold, in a fleet: the placement of the node that does, or
    the room taken over here (its node died, or it is placed here and new). None: unknown to
    the fleet (the node decides alone, as without a fleet). FleetUnavailable: Redis cannot
    say where the room is, or its journal cannot be read (the client retries: 1013)."""
    try:
        placement = await hub.fleet.place(room_id, {}, create=hub.config.rooms_auto_created)
    except LookupError:
        return None
    if placement.node.id != hub.fleet.node.id:
        return placement
    try:
        return await hub.take_over(placement)
    except (Draining, NodeFull, ValueError):
        return hub.get(room_id)


async def _redirect(ws: web.WebSocketResponse, placement: Placement, ref: str | None) -> None:
    """Send the client to the room's node (docs/protocol.md, "Redirect"): it joins there with
    the same join message."""
    node = placement.node
    await ws.send_json({"type": "redirect", "ref": ref, "url": node.ws_url, "node": node.id})
    await ws.close(code=CloseCode.REDIRECT, message=b"redirect")


async def _auto_create(hub: Hub, room_id: str) -> Consultation | None:
    """The room created for a first join (dev mode); NodeFull at max_rooms."""
    if not hub.config.rooms_auto_created:
        return None
    hub.check_capacity(None)  # a full node creates no room its joiner could not enter
    try:
        return await hub.create(room_id, auto_created=True)
    except (Draining, RoomEnded, RoomExists, ValueError):
        return hub.get(room_id)


async def dispatch(hub: Hub, session: Session, raw: str) -> None:
    """Handle one text frame; never raises."""
    ref: str | None = None
    if session.state is SessionState.CLOSED:
        return
    try:
        msg = parse_message(raw, max_bytes=hub.config.max_message_bytes)
        ref = msg["id"]
        hub.metrics.messages.labels(msg["type"]).inc()
        await HANDLERS[msg["type"]](hub, session, msg)
    except ProtocolError as exc:
        hub.metrics.errors.labels(exc.code.value).inc()
        session.send(error_message(exc.code, exc.message, exc.ref if exc.ref else ref))
    except Exception as exc:
        hub.metrics.errors.labels(ErrorCode.INTERNAL.value).inc()
        logger.error(
            "handler failed for participant %s: %s", session.id, type(exc).__name__, exc_info=exc
        )
        session.send(error_message(ErrorCode.INTERNAL, "internal error", ref))


def _ack(session: Session, msg: dict[str, Any]) -> None:
    session.send({"type": "ack", "ref": msg["id"]})


def _media(session: Session, msg: dict[str, Any]) -> tuple[str, str]:
    """The media plane's address of the session's participant: (room_id, participant_id)."""
    if session.state is not SessionState.ADMITTED or not session.has_media:
        raise ProtocolError(ErrorCode.NOT_ADMITTED, "not admitted yet", msg["id"])
    return session.consultation.id, session.id


def _doctor(session: Session, msg: dict[str, Any]) -> None:
    if not session.is_doctor or session.state is not SessionState.ADMITTED:
        raise ProtocolError(ErrorCode.FORBIDDEN, "only a doctor may do this", msg["id"])


def _target(session: Session, msg: dict[str, Any]) -> Session:
    pid = require_str(msg, "participant", max_len=64)
    target = session.consultation.sessions.get(pid)
    if target is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, "no such participant", msg["id"])
    return target


async def on_ping(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    session.send({"type": "pong", "ref": msg["id"]})


async def on_join(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    raise ProtocolError(ErrorCode.ALREADY_JOINED, "already joined", msg["id"])


async def on_chat(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    text = require_str(msg, "text", max_len=hub.config.max_chat_chars)
    session.consultation.post_chat(session, text)
    await session.consultation.journal.flushed()  # a fleet: acknowledged once it is durable
    _ack(session, msg)


async def on_admit(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    _doctor(session, msg)
    target = _target(session, msg)
    await session.consultation.admit(target)
    _ack(session, msg)


async def on_deny(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    _doctor(session, msg)
    target = _target(session, msg)
    block = msg.get("block", False)
    if not isinstance(block, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "block must be a boolean", msg["id"])
    await session.consultation.deny(target, block=block)
    _ack(session, msg)


async def on_kick(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    _doctor(session, msg)
    target = _target(session, msg)
    if target is session:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "use leave to leave", msg["id"])
    await session.consultation.kick(target)  # barred from the room for its life
    _ack(session, msg)


async def on_end(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    _doctor(session, msg)
    _ack(session, msg)
    logger.info("participant %s ends room %s", session.id, session.consultation.id)
    await session.consultation.end(CloseReason.ENDED)


async def on_leave(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    await session.consultation.remove(session, CloseReason.LEFT)


def _tracks_of_offer(msg: dict[str, Any], sdp: str) -> dict[str, TrackMeta]:
    raw = msg.get("tracks", {})
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "tracks must be an object", msg["id"])
    kinds = mid_kinds(sdp)
    tracks: dict[str, TrackMeta] = {}
    for mid, meta in raw.items():
        if not isinstance(meta, dict) or not isinstance(meta.get("source", ""), str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "tracks[mid] must be {source}", msg["id"])
        kind = meta.get("kind") or kinds.get(mid)
        if kind not in ("audio", "video"):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "tracks names an unknown mid", msg["id"])
        tracks[mid] = _track_meta(kind, meta, msg)
    return tracks


def _track_meta(kind: str, item: dict[str, Any], msg: dict[str, Any]) -> TrackMeta:
    """devices: a known source label for this kind, the channels of an audio device and what
    its capture does (`settings`: echo cancellation, noise suppression, auto gain...)."""
    source = item.get("source") or TrackMeta.default(kind).source
    if not isinstance(source, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "track source must be a string", msg["id"])
    try:
        return TrackMeta(
            kind=kind,
            source=validate_source(kind, source),
            channels=validate_channels(item.get("channels")),
            capture=parse_capture(item.get("settings")) if kind == "audio" else None,
        )
    except ValueError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc), msg["id"]) from exc


def _negotiation_error(exc: Exception, msg: dict[str, Any]) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_SDP, f"negotiation failed: {str(exc)[:200]}", msg["id"])


async def on_offer(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    room_id, pid = _media(session, msg)
    sdp = require_sdp(msg)
    tracks = _tracks_of_offer(msg, sdp)
    try:
        answer = await hub.plane.execute(
            ClientOffer(room_id=room_id, participant_id=pid, sdp=sdp, tracks=tracks)
        )
    except (NegotiationError, MediaPlaneError, ValueError) as exc:
        raise _negotiation_error(exc, msg) from exc
    if answer is None:
        raise ProtocolError(ErrorCode.GLARE, "a server offer is in flight", msg["id"])
    session.send({"type": "answer", "ref": msg["id"], "sdp": answer})


async def on_answer(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    room_id, pid = _media(session, msg)
    sdp = require_sdp(msg)
    try:
        await hub.plane.execute(ClientAnswer(room_id=room_id, participant_id=pid, sdp=sdp))
    except (NegotiationError, MediaPlaneError, ValueError) as exc:
        raise _negotiation_error(exc, msg) from exc
    _ack(session, msg)


async def on_candidate(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    room_id, pid = _media(session, msg)
    if "candidate" not in msg:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "missing field: candidate", msg["id"])
    cand = msg["candidate"]
    if cand is None:
        candidate, sdp_mid = None, None
    elif isinstance(cand, dict) and isinstance(cand.get("candidate"), str):
        candidate = cand["candidate"] or None
        mid = cand.get("sdpMid")
        sdp_mid = mid if isinstance(mid, str) else None
    else:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "candidate must be {candidate, sdpMid}", msg["id"]
        )
    try:
        await hub.plane.execute(
            AddCandidate(room_id=room_id, participant_id=pid, candidate=candidate, sdp_mid=sdp_mid)
        )
    except (NegotiationError, MediaPlaneError, ValueError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "candidate rejected", msg["id"]) from exc
    _ack(session, msg)


async def on_publish(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    room_id, pid = _media(session, msg)
    raw = msg.get("tracks")
    if not isinstance(raw, list) or not raw or len(raw) > 16:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "tracks must be a list of 1-16", msg["id"])
    tracks = []
    for item in raw:
        kind = item.get("kind") if isinstance(item, dict) else None
        if kind not in ("audio", "video"):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "track kind must be audio|video", msg["id"])
        assert isinstance(item, dict)
        tracks.append(_track_meta(kind, item, msg))
    await hub.plane.execute(
        RequestPublish(room_id=room_id, participant_id=pid, tracks=tuple(tracks))
    )
    _ack(session, msg)


async def on_reconnect(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    """The client starts a fresh media connection (issue 5): the server offers on a new one."""
    room_id, pid = _media(session, msg)
    await hub.plane.execute(RestartTransport(room_id=room_id, participant_id=pid))
    _ack(session, msg)


# -- devices: vital-sign telemetry (signaling/telemetry.py) -----------------------------------


async def on_telemetry(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    if session.state is not SessionState.ADMITTED:
        raise ProtocolError(ErrorCode.NOT_ADMITTED, "telemetry is open after admission", msg["id"])
    try:
        stored = telemetry.relay(session.consultation, session, msg.get("readings"), msg.get("seq"))
    except telemetry.TelemetryForbidden as exc:
        raise ProtocolError(ErrorCode.FORBIDDEN, str(exc), msg["id"]) from exc
    except telemetry.TelemetryError as exc:
        raise ProtocolError(ErrorCode.BAD_TELEMETRY, str(exc), msg["id"]) from exc
    await session.consultation.journal.flushed()  # a fleet: acknowledged once it is durable
    session.send({"type": "ack", "ref": msg["id"], "seq": msg.get("seq"), "stored": stored})


async def on_telemetry_history(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    if session.state is not SessionState.ADMITTED:
        raise ProtocolError(ErrorCode.NOT_ADMITTED, "telemetry is open after admission", msg["id"])
    after = msg.get("after", 0)
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "after must be an integer >= 0", msg["id"])
    log = session.consultation.telemetry
    reply: dict[str, Any] = {"type": "telemetry-history", "ref": _short_ref(msg), "records": []}
    reply["last"] = log.last
    room = hub.config.max_message_bytes - len(json.dumps(reply, separators=(",", ":"))) + 2
    reply["records"] = log.after(after, max_bytes=room)
    session.send(reply)


def _short_ref(msg: dict[str, Any]) -> str:
    """The `id` of a request answered with a page, which leaves the page ENVELOPE_BYTES."""
    ref: str = msg["id"]
    if len(ref) > ENVELOPE_BYTES // 4:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "id too long for a history request", None)
    return ref


async def on_chat_history(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    """A page of the chat before the message `before` (the newest page without it)."""
    ref = _short_ref(msg)
    if session.state is not SessionState.ADMITTED:
        raise ProtocolError(ErrorCode.NOT_ADMITTED, "chat is open after admission", ref)
    before = None
    if msg.get("before") is not None:
        before = parse_id(msg["before"])
        if before is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "before must be a chat id (m<n>)", ref)
    limit = msg.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "limit must be an integer >= 1", ref)
    reply: dict[str, Any] = {"type": "chat-history", "ref": ref, "messages": [], "more": False}
    page = session.consultation.chat_page(before, envelope=reply, limit=limit)
    reply["messages"], reply["more"] = page.messages, page.more
    session.send(reply)


async def on_record(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    _doctor(session, msg)
    action = require_str(msg, "action", max_len=8)
    await session.consultation.recording.request(session, action, msg["id"])
    _ack(session, msg)


async def on_consent(hub: Hub, session: Session, msg: dict[str, Any]) -> None:
    _media(session, msg)
    recording_id = require_str(msg, "recording_id", max_len=64)
    accept = msg.get("accept")
    if not isinstance(accept, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "accept must be a boolean", msg["id"])
    await session.consultation.recording.consent(session, recording_id, accept, msg["id"])
    _ack(session, msg)


HANDLERS: dict[str, Handler] = {
    "join": on_join,
    "ping": on_ping,
    "chat": on_chat,
    "admit": on_admit,
    "deny": on_deny,
    "kick": on_kick,
    "end": on_end,
    "leave": on_leave,
    "offer": on_offer,
    "answer": on_answer,
    "candidate": on_candidate,
    "publish": on_publish,
    "reconnect": on_reconnect,
    "telemetry": on_telemetry,
    "telemetry-history": on_telemetry_history,
    "chat-history": on_chat_history,
    "record": on_record,
    "consent": on_consent,
}


class SocketLimit:
    """What one socket may send (issue 11): `ws_rate` messages/s with a `ws_burst`; a message
    over it is answered `rate-limited` (not handled). Refused messages drain a second bucket
    (`ws_flood`, refilled at ws_rate): once it is empty the flood is sustained and the socket
    is closed with 4009. So a socket gets at most twice ws_rate answers per second."""

    def __init__(self, hub: Hub) -> None:
        self.messages = TokenBucket(hub.config.ws_limit)
        self.refusals = TokenBucket(hub.config.ws_flood_limit)

    def admit(self) -> bool | None:
        """True: handle the message; False: refuse it; None: close the socket."""
        if self.messages.take():
            return True
        return False if self.refusals.take() else None


def _refusal(raw: str) -> dict[str, Any]:
    """The `rate-limited` error for a frame not handled (its id, when it has a short one)."""
    ref = None
    if len(raw) <= 4096:
        try:
            msg = safejson.loads(raw)
        except safejson.BadJson:
            msg = None
        if isinstance(msg, dict) and isinstance(msg.get("id"), str) and len(msg["id"]) <= 256:
            ref = msg["id"]
    return error_message(ErrorCode.RATE_LIMITED, "too many messages: slow down", ref)


async def serve_socket(hub: Hub, ws: web.WebSocketResponse) -> None:
    """Run one prepared socket: handshake, then messages until it closes.

    One message at a time, and the loop yields after each: a socket whose frames are all
    buffered does not hold the event loop for the whole buffer (another room waits at most
    one message).
    """
    session = await handshake(hub, ws)
    if session is None:
        return
    limit = SocketLimit(hub)
    flooded = False
    try:
        async for frame in ws:
            if frame.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                admitted = limit.admit()
                if admitted is None:
                    flooded = True
                    break
                if not admitted:
                    hub.metrics.errors.labels(ErrorCode.RATE_LIMITED.value).inc()
                    raw = frame.data if frame.type == WSMsgType.TEXT else ""
                    session.send(_refusal(raw))
                elif frame.type == WSMsgType.TEXT:
                    await dispatch(hub, session, frame.data)
                else:
                    session.send(
                        error_message(ErrorCode.BAD_REQUEST, "binary frames unsupported", None)
                    )
                await asyncio.sleep(0)
            else:
                break
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("socket loop of participant %s failed", session.id)
    finally:
        session.consultation.socket_closed(session, ws)
    if flooded:  # after socket_closed: the session stays for the grace period (resume)
        logger.warning("participant %s flooded its socket: closing it", session.id)
        hub.penalize(session.consultation.id, session.sub)
        # The close handshake reads (and parses) whatever the flooder still sends until its
        # close frame: bounded, then the connection is dropped.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                ws.close(code=CloseCode.RATE_LIMITED, message=b"rate limit"), FLOOD_CLOSE_S
            )
