"""HTTP API for devices that do not speak WebRTC (docs/api.md, docs/devices.md).

- `POST /api/v1/rooms/{room}/devices`: a device participant joins the room (admitted, role
  `device`). With `sdp` (plain RTP over UDP, see mediaserver/ingest.py) the server binds a UDP
  port per m-line and answers with the ports to send to; without it the device only posts
  telemetry.
- `GET /api/v1/rooms/{room}/devices/{participant}`: its state (`waiting`, `receiving`,
  `stalled`) and per-stream counters (packets, bad packets, forward or transcode).
- `POST /api/v1/rooms/{room}/devices/{participant}/telemetry`: `{seq?, readings}`, the schema of
  signaling/telemetry.py; `400 bad-telemetry` for a refused batch.
- The device leaves with `DELETE /api/v1/rooms/{room}/participants/{participant}`.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from mediaserver.api import (
    AddIngest,
    IngestError,
    MediaPlaneError,
    NoPort,
    ParticipantKind,
    ParticipantSnapshot,
    Role,
    check_ingest_sdp,
)

from . import telemetry
from .consultation import Consultation, RoomUnavailable
from .hub import Hub, NodeFull
from .protocol import ProtocolError
from .session import Session, SessionState

logger = logging.getLogger(__name__)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    from .http_api import json_body

    return await json_body(request)


def _hub(request: web.Request) -> Hub:
    from .http_api import HUB as API_HUB

    return request.app[API_HUB]


def _device(request: web.Request) -> tuple[Consultation, Session] | web.Response:
    consultation = _hub(request).get(request.match_info["room_id"])
    session = consultation.sessions.get(request.match_info["pid"]) if consultation else None
    if consultation is None or session is None or session.role is not Role.DEVICE:
        return _error(404, "not-found", "no such device")
    return consultation, session


async def create_device(request: web.Request) -> web.Response:
    hub = _hub(request)
    consultation = hub.get(request.match_info["room_id"])
    if consultation is None:
        return _error(404, "not-found", "no such room")
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    name = body.get("name", "Device")
    sub = body.get("sub", "device-api")
    sdp = body.get("sdp")
    sources = body.get("sources")
    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        return _error(400, "bad-request", "name must be a string of 1-64 characters")
    if not isinstance(sub, str) or not 1 <= len(sub) <= 128:
        return _error(400, "bad-request", "sub must be a string of 1-128 characters")
    if sdp is not None:
        try:
            check_ingest_sdp(sdp, sources)
        except ValueError as exc:
            return _error(400, "bad-sdp", str(exc))
    try:
        hub.check_capacity(consultation)  # limits (issue 11)
    except (RoomUnavailable, NodeFull) as exc:
        code = "room-full" if isinstance(exc, RoomUnavailable) else "node-full"
        return _error(429, code, str(exc))
    session = Session(consultation=consultation, role=Role.DEVICE, name=name, sub=sub, codecs=None)
    ingest: ParticipantSnapshot | None = None
    if sdp is not None:
        command = AddIngest(
            room_id=consultation.id,
            participant_id=session.id,
            sdp=sdp,
            sources=tuple(sources) if sources is not None else None,
        )
        try:
            ingest = await hub.plane.execute(command)
        except NoPort as exc:
            return _error(503, "no-port", str(exc))
        except IngestError as exc:
            return _error(400, "bad-sdp", str(exc))
        except (MediaPlaneError, ValueError) as exc:  # full, or the room is closing
            return _error(409, "room-full", str(exc))
        session.has_media = True
    consultation.sessions[session.id] = session  # its media events reach it from here on
    session.state = SessionState.ADMITTED
    consultation.broadcast(
        {"type": "participant-joined", "participant": consultation.describe(session)},
        exclude=session,
    )
    logger.info("device %s joined room %s over the API", session.id, consultation.id)
    return web.json_response(_describe(session, ingest), status=201)


def _describe(session: Session, ingest: ParticipantSnapshot | None) -> dict[str, Any]:
    """A device and its streams (the media plane's snapshot; None: telemetry only)."""
    out: dict[str, Any] = {"id": session.id, "role": "device", "state": "receiving"}
    if ingest is None or ingest.kind is not ParticipantKind.INGEST:
        out.update(state="telemetry-only", media=[])
    else:
        out.update(state=ingest.connection, media=[dict(s) for s in ingest.ingest])
    return out


async def get_device(request: web.Request) -> web.Response:
    found = _device(request)
    if isinstance(found, web.Response):
        return found
    consultation, session = found
    return web.json_response(_describe(session, consultation.media(session)))


async def post_telemetry(request: web.Request) -> web.Response:
    found = _device(request)
    if isinstance(found, web.Response):
        return found
    consultation, session = found
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    try:
        stored = telemetry.relay(consultation, session, body.get("readings"), body.get("seq"))
    except telemetry.TelemetryForbidden as exc:
        return _error(403, "forbidden", str(exc))
    except telemetry.TelemetryError as exc:
        return _error(400, "bad-telemetry", str(exc))
    except ProtocolError as exc:  # rate-limited (issue 11)
        return _error(429, exc.code.value, exc.message)
    return web.json_response({"stored": stored, "seq": body.get("seq")})


def add_device_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/rooms/{room_id}/devices", create_device)
    app.router.add_get("/api/v1/rooms/{room_id}/devices/{pid}", get_device)
    app.router.add_post("/api/v1/rooms/{room_id}/devices/{pid}/telemetry", post_telemetry)
