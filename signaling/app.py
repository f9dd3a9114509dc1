"""The aiohttp application: routes, state under web.AppKey, Node lifecycle in cleanup_ctx."""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import WSCloseCode, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from mediaserver.api import Node

from .config import ServerConfig
from .http_api import HUB, add_routes, api_key_middleware
from .hub import Hub
from .metrics import Metrics
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

CONFIG = web.AppKey("config", ServerConfig)
METRICS = web.AppKey("metrics", Metrics)


class OpenSockets(weakref.WeakSet[web.WebSocketResponse]):
    """Open websockets, closed with GOING_AWAY on shutdown."""


SOCKETS = web.AppKey("sockets", OpenSockets)

__all__ = ["CONFIG", "HUB", "METRICS", "SOCKETS", "AccessLogger", "create_app"]


class AccessLogger(AbstractAccessLogger):
    """Method, path, status, time: never the query string (it may carry a token) nor the
    client address."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %d %.1fms",
            request.method,
            request.path,
            response.status,
            time * 1000,
        )


async def websocket(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    ws = web.WebSocketResponse(
        heartbeat=config.ws_heartbeat_s,
        max_msg_size=max(4 * config.max_message_bytes, 1 << 20),
    )
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    await serve_socket(request.app[HUB], ws)
    return ws


async def client_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["file"]
    path = STATIC_DIR / name
    if not STATIC_NAME.match(name) or not path.is_file():
        raise web.HTTPNotFound()
    content_type = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
    )


async def demo(request: web.Request) -> web.StreamResponse:
    path = STATIC_DIR / "demo.html"
    if not request.app[CONFIG].dev or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Content-Type": "text/html; charset=utf-8"})


async def _on_shutdown(app: web.Application) -> None:
    sockets: OpenSockets = app[SOCKETS]
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def create_app(*, config: ServerConfig, node: Node | None = None) -> web.Application:
    """Build the app; the media Node (given or created from config.media) lives in cleanup_ctx."""
    app = web.Application(middlewares=[api_key_middleware])
    app[CONFIG] = config
    app[METRICS] = Metrics()
    sockets = OpenSockets()
    app[SOCKETS] = sockets

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        media_node = node or Node(config.media)
        await media_node.start()
        hub = Hub(config=config, node=media_node, metrics=app[METRICS])
        app[METRICS].bind(hub)
        app[HUB] = hub
        hub.spawn(app[METRICS].run_link_sampler(hub, config.stats_interval_s))
        hub.spawn(app[METRICS].run_loop_lag_monitor())
        logger.info("node ready (dev=%s)", config.dev)
        yield
        await hub.close()
        await media_node.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/client/{file}", client_file)
    app.router.add_get("/demo", demo)
    add_routes(app)
    return app
