"""The platform's HTTP API under /api/v1 (Bearer API key), plus health and metrics routes."""

from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any

import aiohttp
from aiohttp import web

from mediaserver.api import CloseReason, Role, WorkerLost

from . import safejson
from .consultation import ConsultationOptions
from .devices_api import add_device_routes
from .fleet import FleetUnavailable, NodeInfo
from .hub import ROOM_ID, Draining, Hub, NodeFull, RoomExists, new_room_id
from .metrics import CONTENT_TYPE
from .recording import POLICIES
from .recordings_api import add_recording_routes

logger = logging.getLogger(__name__)

HUB = web.AppKey("hub", Hub)
PLACED = "X-Consult-Placed"  # a request one node of the fleet forwards to another
ROOM_PATH = re.compile(r"^/api/v1/rooms/([^/]+)(?:/.*)?$")
FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=10)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


@web.middleware
async def api_key_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path.startswith("/api/"):
        expected = request.app[HUB].config.api_key
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            key.strip().encode(), expected.encode()
        ):
            response = _error(401, "unauthorized", "missing or wrong API key")
            response.headers["WWW-Authenticate"] = 'Bearer realm="consult"'
            return response
    result: web.StreamResponse = await handler(request)
    return result


def _options(body: dict[str, Any]) -> ConsultationOptions:
    waiting_room = body.get("waiting_room", True)
    video_codec = body.get("video_codec", "VP8")
    max_participants = body.get("max_participants", 8)
    recording = body.get("recording", "none")
    if recording not in POLICIES:
        raise ValueError("recording must be none, consent or devices")
    if not isinstance(waiting_room, bool):
        raise ValueError("waiting_room must be a boolean")
    if not isinstance(video_codec, str) or video_codec.upper() not in ("VP8", "H264"):
        raise ValueError("video_codec must be VP8 or H264")
    if isinstance(max_participants, bool) or not isinstance(max_participants, int):
        raise ValueError("max_participants must be an integer")
    if not 1 <= max_participants <= 64:
        raise ValueError("max_participants must be within 1..64")
    return ConsultationOptions(
        waiting_room=waiting_room,
        video_codec=video_codec.upper(),
        max_participants=max_participants,
        recording=recording,
    )


async def json_body(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object (none: {}), or the 400 to answer (also for deep nesting)."""
    try:
        body = safejson.loads(await request.read()) if request.can_read_body else {}
    except ValueError:
        return _error(400, "bad-json", "body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "bad-request", "body must be a JSON object")
    return body


async def create_room(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    body = await json_body(request)
    if isinstance(body, web.Response):
        return body
    room_id = body.get("id")
    if room_id is not None and not isinstance(room_id, str):
        return _error(400, "bad-request", "id must be a string")
    try:
        options = _options(body)
        if hub.fleet.shared and PLACED not in request.headers:  # placed by load, once
            room_id = room_id or new_room_id()
            if not ROOM_ID.match(room_id):
                raise ValueError("room id must be 1-64 characters of A-Z a-z 0-9 _ . -")
            try:
                placement = await hub.fleet.place(room_id, options.as_dict(), create=True)
            except FleetUnavailable:  # the store is down: rooms go to this node
                placement = None
            if placement is not None and placement.node.id != hub.fleet.node.id:
                return await forward(request, placement.node, {**body, "id": room_id})
        consultation = await hub.create(room_id, options)
    except Draining:
        return _error(503, "draining", "node is draining: no new rooms")
    except RoomExists:
        return _error(409, "exists", "room exists")
    except NodeFull as exc:  # max_rooms (issue 11)
        return _error(429, "node-full", str(exc))
    except WorkerLost as exc:  # worker processes: none is up
        return _error(503, "no-media-worker", str(exc))
    except ValueError as exc:
        return _error(400, "bad-request", str(exc))
    node = hub.fleet.node
    info = {**consultation.info(), "node": {"id": node.id, "url": node.url}}
    return web.json_response(info, status=201)


async def forward(
    request: web.Request, node: NodeInfo, body: dict[str, Any] | None = None
) -> web.Response:
    """The same API request, answered by the node that holds the room."""
    http = request.app[HUB].fleet_http()
    data = json.dumps(body).encode() if body is not None else await request.read()
    headers = {
        "Authorization": request.headers.get("Authorization", ""),
        "Content-Type": "application/json",
        PLACED: "1",
    }
    url = node.url.rstrip("/") + request.path
    try:
        async with http.request(
            request.method, url, data=data or None, headers=headers, timeout=FORWARD_TIMEOUT
        ) as reply:
            return web.Response(
                status=reply.status, body=await reply.read(), content_type="application/json"
            )
    except (aiohttp.ClientError, TimeoutError):
        return _error(502, "node-unreachable", "the room's node did not answer")


@web.middleware
async def fleet_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """In a fleet, /api/v1/rooms/<id>... of a room another node holds is answered by it."""
    hub = request.app.get(HUB)
    match = ROOM_PATH.match(request.path)
    if hub is not None and match and hub.fleet.shared and PLACED not in request.headers:
        room_id = match.group(1)
        if hub.get(room_id) is None:
            placement = await hub.fleet.locate(room_id)
            if placement is not None and placement.node.id != hub.fleet.node.id:
                return await forward(request, placement.node)
    result: web.StreamResponse = await handler(request)
    return result


async def list_rooms(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    return web.json_response({"rooms": [c.summary() for c in hub.consultations.values()]})


async def get_room(request: web.Request) -> web.Response:
    consultation = request.app[HUB].get(request.match_info["room_id"])
    if consultation is None:
        return _error(404, "not-found", "no such room")
    return web.json_response(consultation.info())


async def end_room(request: web.Request) -> web.Response:
    ended = await request.app[HUB].end(request.match_info["room_id"], CloseReason.ENDED)
    if not ended:
        return _error(404, "not-found", "no such room")
    return web.json_response({"id": request.match_info["room_id"], "ended": True})


async def remove_participant(request: web.Request) -> web.Response:
    consultation = request.app[HUB].get(request.match_info["room_id"])
    session = consultation.sessions.get(request.match_info["pid"]) if consultation else None
    if consultation is None or session is None:
        return _error(404, "not-found", "no such participant")
    if session.role is Role.DEVICE:  # how a device leaves: no bar
        await consultation.remove(session, CloseReason.KICKED, notice={"type": "kicked"})
    else:  # a kick: the identity is barred from the room until lift_bar
        await consultation.kick(session)
    return web.json_response({"id": session.id, "removed": True})


async def lift_bar(request: web.Request) -> web.Response:
    """Let an identity barred from the room (kicked, blocked, too many knocks) join again."""
    consultation = request.app[HUB].get(request.match_info["room_id"])
    if consultation is None or not consultation.lift_bar(request.match_info["pid"]):
        return _error(404, "not-found", "no such bar")
    return web.json_response({"participant": request.match_info["pid"], "lifted": True})


async def drain(request: web.Request) -> web.Response:
    """No new rooms here; `{"move_after_s": N}` (a fleet): the rooms still here after N
    seconds move to other nodes, their clients with them."""
    hub = request.app[HUB]
    body = await json_body(request)
    if isinstance(body, web.Response):
        return body
    move_after = body.get("move_after_s")
    if move_after is not None and (
        isinstance(move_after, bool)
        or not isinstance(move_after, int | float)
        or not 0 <= move_after <= 24 * 3600
    ):
        return _error(400, "bad-request", "move_after_s must be a number of seconds (0-86400)")
    if move_after is not None and not hub.fleet.shared:
        return _error(400, "bad-request", "move_after_s needs a fleet (--redis-url)")
    hub.draining = True
    logger.info("node draining: new rooms refused")
    reply: dict[str, Any] = {"draining": True, "rooms": len(hub.consultations)}
    if move_after is not None and not hub.moving:
        hub.moving = True
        hub.spawn(hub.move_rooms(float(move_after)))
        reply["move_after_s"] = move_after
    return web.json_response(reply)


async def node_info(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    return web.json_response(
        {
            "draining": hub.draining,
            "rooms": len(hub.consultations),
            "participants": sum(len(c.sessions) for c in hub.consultations.values()),
            "node": hub.fleet.node.id,
            "fleet": [n.as_dict() for n in hub.fleet.nodes()],
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    hub = request.app.get(HUB)
    if hub is None or hub.draining or hub.plane.closed:
        return web.json_response({"status": "draining"}, status=503)
    if not hub.plane.ready:  # worker processes: none is up
        return web.json_response({"status": "no-media-worker"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[HUB].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/rooms", create_room)
    app.router.add_get("/api/v1/rooms", list_rooms)
    app.router.add_get("/api/v1/rooms/{room_id}", get_room)
    app.router.add_delete("/api/v1/rooms/{room_id}", end_room)
    app.router.add_delete("/api/v1/rooms/{room_id}/participants/{pid}", remove_participant)
    app.router.add_delete("/api/v1/rooms/{room_id}/bars/{pid}", lift_bar)
    app.router.add_get("/api/v1/node", node_info)
    app.router.add_post("/api/v1/node/drain", drain)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    add_device_routes(app)  # devices: ingest and telemetry over HTTP (devices_api.py)
    add_recording_routes(app)  # recordings: list, manifest, delete (recordings_api.py)
