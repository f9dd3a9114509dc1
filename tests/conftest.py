"""Shared fixtures: a real node (aiohttp app on 127.0.0.1, port 0) and token minting."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mediaserver.api import IceConfig, MediaConfig
from mediaserver.node import Node
from mediaserver.participant import Participant
from mediaserver.plane import LocalMediaPlane
from mediaserver.room import Room
from signaling.app import HUB, AccessLogger, create_app
from signaling.auth import encode_token
from signaling.client import ConsultClient
from signaling.config import ServerConfig
from signaling.hub import Hub

API_KEY = "test-api-key"
SECRET = "test-token-secret"


@dataclasses.dataclass
class Server:
    url: str
    app: web.Application
    config: ServerConfig

    @property
    def hub(self) -> Hub:
        return self.app[HUB]

    # Test helpers: the live media objects of the in-process plane (signaling holds none).

    @property
    def plane(self) -> LocalMediaPlane:
        plane = self.hub.plane
        assert isinstance(plane, LocalMediaPlane), "the live objects are in-process only"
        return plane

    @property
    def node(self) -> Node:
        return self.plane.node

    def media_room(self, room: str = "r1") -> Room:
        media_room = self.node.get_room(room)
        assert media_room is not None, f"no media room {room}"
        return media_room

    def participant(self, participant_id: str | None, *, room: str = "r1") -> Participant:
        """The live WebRTC participant of a session (AssertionError when it has none)."""
        participant = self.media_room(room).participants.get(participant_id or "")
        assert isinstance(participant, Participant), f"no WebRTC participant {participant_id}"
        return participant

    def token(
        self,
        role: str,
        *,
        room: str = "r1",
        sub: str | None = None,
        name: str | None = None,
        ttl_s: float = 600.0,
        secret: str = SECRET,
    ) -> str:
        return encode_token(
            secret=secret,
            room=room,
            sub=sub or f"user-{role}",
            role=role,
            name=name or f"Name {role}",
            ttl_s=ttl_s,
        )

    def client(self) -> ConsultClient:
        return ConsultClient(self.url)

    async def api(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {API_KEY}", **kwargs.pop("headers", {})}
        async with aiohttp.ClientSession() as http:
            async with http.request(method, self.url + path, headers=headers, **kwargs) as r:
                body = await r.json() if r.content_type == "application/json" else await r.text()
                return r.status, body


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    """A media node on loopback (no signaling): tests drive its rooms directly."""
    node = Node(MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",))))
    await node.start()
    yield node
    await node.close()


@pytest.fixture
async def room(node: Node) -> Room:
    return node.create_room("r1")


def make_config(**overrides: Any) -> ServerConfig:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "api_key": API_KEY,
        "token_secret": SECRET,
        "auto_create_rooms": True,
        "resume_grace_s": 5.0,
        "stats_interval_s": 0.2,
        "media": MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",))),
        # CONSULT_TEST_WORKERS=N runs the test servers' media in N worker processes (0, the
        # default: in-process); a test marked `workers(n)` gets n whatever it says (tests that
        # reach live media objects, server.node and the like, are marked workers(0))
        "workers": int(os.environ.get("CONSULT_TEST_WORKERS", "0")),
    }
    values.update(overrides)
    return ServerConfig(**values)


ServerFactory = Callable[..., Awaitable[Server]]


def marked_workers(request: pytest.FixtureRequest) -> int | None:
    """n of the test's `workers(n)` marker (None: unmarked)."""
    marker = request.node.get_closest_marker("workers")
    return None if marker is None else int(marker.args[0])


@pytest.fixture
async def make_server(request: pytest.FixtureRequest) -> AsyncIterator[ServerFactory]:
    runners: list[web.AppRunner] = []
    workers = marked_workers(request)

    async def start(**overrides: Any) -> Server:
        if workers is not None:
            overrides.setdefault("workers", workers)
        config = make_config(**overrides)
        app = create_app(config=config)
        runner = web.AppRunner(app, access_log_class=AccessLogger)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return Server(url=f"http://127.0.0.1:{port}", app=app, config=config)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[Server], ConsultClient]]:
    """ConsultClients closed at teardown."""
    made: list[ConsultClient] = []

    def make(server: Server) -> ConsultClient:
        client = server.client()
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()
