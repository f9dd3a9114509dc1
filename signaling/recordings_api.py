"""HTTP API of recordings (docs/recording.md), and their retention.

- `GET /api/v1/rooms/{room}/recordings`: the room's recordings, newest first (their manifests'
  summary: id, state, started_at, stopped_at, stop_reason, error, tracks).
- `GET /api/v1/rooms/{room}/recordings/{rid}`: the manifest (files, key id, RTP-to-wall-time
  mapping of every track).
- `DELETE /api/v1/rooms/{room}/recordings/{rid}`: delete it (409 while it is running).

Recordings are directories `<--recording-dir>/<recording id>/` holding `manifest.json` (plain
JSON: ids, times, files) and sealed files; they are read here as files, never decrypted.
`--recording-retention-days N` deletes every stopped recording started more than N days ago
(checked every RETENTION_CHECK_S and at start).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import time
from typing import Any

from aiohttp import web

from .hub import Hub

logger = logging.getLogger(__name__)

RECORDING_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RETENTION_CHECK_S = 3600.0
SUMMARY = ("recording_id", "state", "started_at", "stopped_at", "stop_reason", "error")


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def read_manifest(directory: str, recording_id: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(directory, recording_id, "manifest.json"), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def manifests(directory: str) -> list[dict[str, Any]]:
    if not directory:
        return []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in names:
        if RECORDING_ID.match(name):
            manifest = read_manifest(directory, name)
            if manifest is not None:
                found.append(manifest)
    return sorted(found, key=lambda m: -float(m.get("started_at") or 0))


def _hub(request: web.Request) -> Hub:
    from .http_api import HUB  # (http_api adds these routes)

    return request.app[HUB]


async def list_recordings(request: web.Request) -> web.Response:
    room_id = request.match_info["room_id"]
    directory = _hub(request).config.media.recording.directory
    items = await asyncio.to_thread(manifests, directory)
    out = []
    for m in items:
        if m.get("room_id") == room_id:
            entry = {k: m.get(k) for k in SUMMARY}
            entry["tracks"] = len(m.get("tracks") or [])
            out.append(entry)
    return web.json_response({"recordings": out})


def _recording(request: web.Request) -> tuple[str, str, dict[str, Any] | None]:
    rid = request.match_info["rid"]
    directory = _hub(request).config.media.recording.directory
    if not directory or not RECORDING_ID.match(rid):
        return directory, rid, None
    manifest = read_manifest(directory, rid)
    if manifest is None or manifest.get("room_id") != request.match_info["room_id"]:
        return directory, rid, None
    return directory, rid, manifest


async def get_recording(request: web.Request) -> web.Response:
    _directory, _rid, manifest = _recording(request)
    if manifest is None:
        return _error(404, "not-found", "no such recording")
    return web.json_response(manifest)


async def delete_recording(request: web.Request) -> web.Response:
    directory, rid, manifest = _recording(request)
    if manifest is None:
        return _error(404, "not-found", "no such recording")
    hub = _hub(request)
    consultation = hub.consultations.get(request.match_info["room_id"])
    if consultation is not None and consultation.recording.recording_id == rid:
        if consultation.recording.state.value != "idle":
            return _error(409, "recording", "the recording is running: stop it first")
    await asyncio.to_thread(shutil.rmtree, os.path.join(directory, rid), True)
    logger.info("recording %s deleted through the API", rid)
    return web.Response(status=204)


def expired(directory: str, days: float, now: float | None = None) -> list[str]:
    """Stopped recordings started more than `days` days ago (a crashed one: by its files)."""
    limit = (now if now is not None else time.time()) - days * 86400
    old = []
    for m in manifests(directory):
        rid = str(m.get("recording_id", ""))
        if not RECORDING_ID.match(rid):
            continue
        started = float(m.get("started_at") or 0)
        if started < limit and (m.get("state") != "recording" or _idle(directory, rid, limit)):
            old.append(rid)
    return old


def _idle(directory: str, rid: str, limit: float) -> bool:
    """A recording left "recording" by a crash: expired once no file changed since `limit`."""
    path = os.path.join(directory, rid)
    try:
        return all(e.stat().st_mtime < limit for e in os.scandir(path))
    except OSError:
        return False


def apply_retention(directory: str, days: float) -> int:
    removed = 0
    for rid in expired(directory, days):
        shutil.rmtree(os.path.join(directory, rid), ignore_errors=True)
        removed += 1
    if removed:
        logger.info("retention: %d recording(s) older than %g days deleted", removed, days)
    return removed


async def run_retention(hub: Hub) -> None:
    """The retention task (`--recording-retention-days`): forever, every RETENTION_CHECK_S."""
    directory = hub.config.media.recording.directory
    days = hub.config.recording_retention_days
    while True:
        try:
            await asyncio.to_thread(apply_retention, directory, days)
        except Exception:
            logger.exception("recording retention failed")
        await asyncio.sleep(RETENTION_CHECK_S)


def add_recording_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/rooms/{room_id}/recordings", list_recordings)
    app.router.add_get("/api/v1/rooms/{room_id}/recordings/{rid}", get_recording)
    app.router.add_delete("/api/v1/rooms/{room_id}/recordings/{rid}", delete_recording)
