"""The aiohttp application: routes, state under web.AppKey, the media plane in cleanup_ctx."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import ssl
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from mediaserver.api import MediaPlane
from mediaserver.logs import escape
from mediaserver.plane import LocalMediaPlane
from mediaserver.workers import WorkerPool

from .config import ServerConfig, normalize_origin, tls_context
from .fleet import Fleet, LocalFleet, NodeInfo
from .http_api import HUB, add_routes, api_key_middleware, fleet_middleware
from .hub import Hub
from .metrics import CONTENT_TYPE, Metrics
from .recordings_api import run_retention
from .redis_fleet import RedisFleet
from .tcp import cap_retransmissions
from .ws import serve_socket

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
STATIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".html": "text/html",
    ".css": "text/css",
    ".json": "application/json",
    ".map": "application/json",
}
DEV_ONLY_SUFFIXES = (".html",)  # pages (the demo): dev mode only; consult.js is always served

CONFIG = web.AppKey("config", ServerConfig)
METRICS = web.AppKey("metrics", Metrics)
TLS = web.AppKey("tls", ssl.SSLContext)  # set with --tls-cert: the main site's context
METRICS_ADDRESS = web.AppKey("metrics_address", tuple)  # (host, port) of --metrics-port


class OpenSockets(weakref.WeakSet[web.WebSocketResponse]):
    """Open websockets, closed with GOING_AWAY on shutdown."""


SOCKETS = web.AppKey("sockets", OpenSockets)

__all__ = [
    "CONFIG",
    "HUB",
    "METRICS",
    "METRICS_ADDRESS",
    "SOCKETS",
    "TLS",
    "AccessLogger",
    "create_app",
]


class AccessLogger(AbstractAccessLogger):
    """Method, path, status, time: never the query string (it may carry a token) nor the
    client address. The path is escaped here too (`/x%0A...` decodes to a newline), so the line
    stays one line whatever formatter the embedding program installs (logs.py)."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %d %.1fms",
            escape(request.method),
            escape(request.path),
            response.status,
            time * 1000,
        )


def origin_allowed(config: ServerConfig, origin: str | None) -> bool:
    """With an allow-list, a browser's Origin must be on it. Browsers always send one on a
    WebSocket; programs (ConsultClient, devices) send none and are let through: the token is
    what authenticates, the list stops other web sites from using a visitor's browser."""
    if not config.allowed_origins or origin is None:
        return True
    try:
        return normalize_origin(origin) in config.allowed_origins
    except ValueError:
        return False  # "null" (sandboxed or file: pages) and anything malformed


async def websocket(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    if not origin_allowed(config, request.headers.get(hdrs.ORIGIN)):
        raise web.HTTPForbidden(text="origin not allowed\n")
    ws = web.WebSocketResponse(
        heartbeat=config.ws_heartbeat_s,
        max_msg_size=max(4 * config.max_message_bytes, 1 << 20),
    )
    await ws.prepare(request)
    if request.transport is not None:
        cap_retransmissions(request.transport.get_extra_info("socket"), config.ws_rto_max_ms)
    request.app[SOCKETS].add(ws)
    await serve_socket(request.app[HUB], ws)
    return ws


async def client_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["file"]
    path = STATIC_DIR / name
    if not STATIC_NAME.match(name) or not path.is_file():
        raise web.HTTPNotFound()
    if path.suffix in DEV_ONLY_SUFFIXES and not request.app[CONFIG].dev:
        raise web.HTTPNotFound()
    content_type = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
    )


async def demo(request: web.Request) -> web.StreamResponse:
    """Dev mode only: the launcher around the consultation pages (launcher.html). An address
    with a single `token` (the developer console's) goes to the console, /client/demo.html."""
    if not request.app[CONFIG].dev:
        raise web.HTTPNotFound()
    if "token" in request.query:
        raise web.HTTPFound(f"/client/demo.html?{request.query_string}")
    return web.FileResponse(
        STATIC_DIR / "launcher.html",
        headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache"},
    )


PAGES = {"patient": "patient.html", "doctor": "doctor.html"}  # /consult/<role>


async def consult_page(request: web.Request) -> web.StreamResponse:
    """The consultation pages (docs/client.md): in dev mode, or with --pages."""
    config = request.app[CONFIG]
    name = PAGES.get(request.match_info["role"])
    if name is None or not (config.dev or config.pages):
        raise web.HTTPNotFound()
    return web.FileResponse(
        STATIC_DIR / name,
        headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache"},
    )


def metrics_key_accepted(config: ServerConfig, request: web.Request) -> bool:
    """No --metrics-key: anyone; else `Authorization: Bearer <key>`."""
    if not config.metrics_key:
        return True
    scheme, _, key = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        key.strip().encode(), config.metrics_key.encode()
    )


def _metrics_refused() -> web.Response:
    response = web.json_response(
        {"error": "unauthorized", "message": "missing or wrong metrics key"}, status=401
    )
    response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="metrics"'
    return response


@web.middleware
async def metrics_guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """/metrics of the main site: 404 when it has a port of its own, else the key if set."""
    if request.path == "/metrics":
        config = request.app[CONFIG]
        if config.metrics_port is not None:
            raise web.HTTPNotFound()
        if not metrics_key_accepted(config, request):
            return _metrics_refused()
    result: web.StreamResponse = await handler(request)
    return result


def metrics_site(
    app: web.Application, context: ssl.SSLContext | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: /metrics alone on --metrics-host:--metrics-port (TLS like the main site)."""
    config = app[CONFIG]
    metrics = app[METRICS]

    async def serve_metrics(request: web.Request) -> web.Response:
        if not metrics_key_accepted(config, request):
            return _metrics_refused()
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        site_app = web.Application()
        site_app.router.add_get("/metrics", serve_metrics)
        runner = web.AppRunner(site_app, access_log_class=AccessLogger)
        await runner.setup()
        try:
            await web.TCPSite(
                runner, config.metrics_host, config.metrics_port or 0, ssl_context=context
            ).start()
            app[METRICS_ADDRESS] = tuple(runner.addresses[0][:2])
            logger.info("metrics on port %d", app[METRICS_ADDRESS][1])
            yield
        finally:
            await runner.cleanup()

    return lifecycle


async def _hand_over_rooms(app: web.Application) -> None:
    """A node of a fleet that stops moves its rooms to other nodes first: its clients get
    `redirect` and resume there (docs/deploy.md, "Drain and stop")."""
    hub = app.get(HUB)
    if hub is None or not hub.fleet.shared:
        return
    hub.draining = True
    moved = 0
    for consultation in list(hub.consultations.values()):
        moved += await hub.hand_over(consultation)
    if moved:
        await asyncio.sleep(0.2)  # the redirects leave before the sockets are closed below
        logger.info("stopping: %d room(s) moved to other nodes", moved)


async def _on_shutdown(app: web.Application) -> None:
    sockets: OpenSockets = app[SOCKETS]
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def _media_plane(config: ServerConfig) -> MediaPlane:
    """--workers 0: the media plane in this process; N: N worker processes."""
    if config.workers:
        return WorkerPool(
            config.media,
            config.workers,
            refresh_s=min(config.stats_interval_s, 5),
            heartbeat_timeout_s=config.worker_heartbeat_timeout_s,
        )
    return LocalMediaPlane(config.media)


def _fleet(config: ServerConfig) -> Fleet:
    """--redis-url: a fleet of nodes sharing Redis; else this node alone."""
    node_id, url = config.fleet_node()
    node = NodeInfo(id=node_id, url=url)
    if config.redis_url:
        return RedisFleet(node, config.redis_url, chat_kept=config.room_chat_messages)
    return LocalFleet(node)


def create_app(*, config: ServerConfig, plane: MediaPlane | None = None) -> web.Application:
    """Build the app; the media plane (given, else in-process or `config.workers` worker
    processes, from config.media) lives in cleanup_ctx.

    Raises ValueError when --tls-cert/--tls-key cannot be loaded."""
    app = web.Application(middlewares=[metrics_guard, api_key_middleware, fleet_middleware])
    app[CONFIG] = config
    context = tls_context(config)
    if context is not None:
        app[TLS] = context
    app[METRICS] = Metrics()
    sockets = OpenSockets()
    app[SOCKETS] = sockets

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        media = plane or _media_plane(config)
        try:
            await media.start()
        except BaseException:
            await media.close()
            raise
        fleet = _fleet(config)
        await fleet.start()
        hub = Hub(config=config, plane=media, metrics=app[METRICS], fleet=fleet)
        app[METRICS].bind(hub)
        app[HUB] = hub
        hub.spawn(app[METRICS].run_link_sampler(hub, config.stats_interval_s))
        hub.spawn(app[METRICS].run_loop_lag_monitor())
        if fleet.shared:
            hub.spawn(hub.run_heartbeat())
        if config.recording_retention_days > 0 and config.media.recording.directory:
            hub.spawn(run_retention(hub))
        logger.info("node ready (dev=%s, fleet=%s)", config.dev, fleet.shared)
        yield
        await hub.close()
        await fleet.close()
        await media.close()

    app.cleanup_ctx.append(lifecycle)
    if config.metrics_port is not None:
        app.cleanup_ctx.append(metrics_site(app, context))
    app.on_shutdown.append(_hand_over_rooms)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/client/{file}", client_file)
    app.router.add_get("/demo", demo)
    app.router.add_get("/consult/{role}", consult_page)
    add_routes(app)
    return app
