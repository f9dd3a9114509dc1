"""Janus (Debian package `janus`, 1.1.x) as a load-test target: its config and its HTTP API.

`write_config(dir, ...)` writes a config folder that loads only the VideoRoom plugin and the
HTTP transport, listening on one address (inside the load test's network namespace), with
`event_loops` (one per CPU it is pinned to), an RTP port range, no STUN, no NAT mapping, no
mDNS, ICE gathering enforced on that one address. `JanusSession` speaks the HTTP API: create a
session, attach `janus.plugin.videoroom` handles, send requests (with JSEP) and long-poll the
session's events.

A consultation on Janus (`loadtest.worker`): create a room; each participant joins as a
publisher and publishes with an SDP offer (Janus answers), then subscribes to the other's
feed with a second handle (Janus offers, the generator answers and sends `start`). So each
participant has two PeerConnections there, against one on our node.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp

PLUGIN = "janus.plugin.videoroom"
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu/janus", "/usr/lib/aarch64-linux-gnu/janus", "/usr/lib/janus")
HTTP_PORT = 8088


def janus_lib_dir() -> Path:
    for d in LIB_DIRS:
        if (Path(d) / "plugins" / "libjanus_videoroom.so").exists():
            return Path(d)
    raise FileNotFoundError(
        "Janus's VideoRoom plugin was not found: install Debian's package "
        "(`make janus`, i.e. apt-get install janus)"
    )


def write_config(
    folder: Path,
    *,
    address: str,
    rtp_ports: tuple[int, int] = (20000, 29999),
    event_loops: int = 1,
) -> Path:
    """Write a minimal Janus config folder; returns the path of janus.jcfg.

    `event_loops`: Janus's media loops (one per CPU it is given, as our node's workers)."""
    lib = janus_lib_dir()
    folder.mkdir(parents=True, exist_ok=True)
    plugins, transports = folder / "plugins", folder / "transports"
    for sub, lib_name in (
        (plugins, "plugins/libjanus_videoroom.so"),
        (transports, "transports/libjanus_http.so"),
    ):
        sub.mkdir(exist_ok=True)
        link = sub / Path(lib_name).name
        if not link.exists():
            link.symlink_to(lib / lib_name)
    for empty in ("events", "loggers"):
        (folder / empty).mkdir(exist_ok=True)
    (folder / "janus.jcfg").write_text(
        f"""general: {{
    configs_folder = "{folder}"
    plugins_folder = "{plugins}"
    transports_folder = "{transports}"
    events_folder = "{folder / "events"}"
    loggers_folder = "{folder / "loggers"}"
    debug_level = 2
    admin_secret = "{secrets.token_hex(8)}"
    protected_folders = []
    event_loops = {max(1, event_loops)}
    server_name = "loadtest"
}}
certificates: {{
}}
media: {{
    ipv6 = false
    rtp_port_range = "{rtp_ports[0]}-{rtp_ports[1]}"
    dtls_mtu = 1200
    no_media_timer = 1
    slowlink_threshold = 0
}}
nat: {{
    nice_debug = false
    ignore_mdns = true
    ice_enforce_list = "{address}"
}}
plugins: {{
}}
transports: {{
}}
loggers: {{
}}
events: {{
    broadcast = false
}}
"""
    )
    (folder / "janus.transport.http.jcfg").write_text(
        f"""general: {{
    json = "compact"
    base_path = "/janus"
    http = true
    port = {HTTP_PORT}
    ip = "{address}"
    https = false
}}
admin: {{
    admin_http = false
}}
cors: {{
}}
"""
    )
    (folder / "janus.plugin.videoroom.jcfg").write_text("general: {\n    string_ids = false\n}\n")
    return folder / "janus.jcfg"


class JanusError(Exception):
    pass


class JanusSession:
    """One Janus API session over HTTP, with a long-poll task routing events by transaction."""

    def __init__(self, base_url: str, http: aiohttp.ClientSession, *, timeout: float = 15) -> None:
        self.base = base_url.rstrip("/")
        self.http = http
        self.timeout = timeout
        self.id = 0
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._poller: asyncio.Task[None] | None = None
        self.events = 0

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {"transaction": secrets.token_hex(6), **body}
        async with self.http.post(
            self.base + path, json=body, timeout=aiohttp.ClientTimeout(total=self.timeout)
        ) as resp:
            reply: dict[str, Any] = await resp.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(str(reply.get("error")))
        return reply

    async def create(self) -> None:
        reply = await self._post("", {"janus": "create"})
        self.id = int(reply["data"]["id"])
        self._poller = asyncio.create_task(self._poll())

    async def attach(self) -> int:
        reply = await self._post(f"/{self.id}", {"janus": "attach", "plugin": PLUGIN})
        return int(reply["data"]["id"])

    async def request(self, handle: int, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous plugin request (create room...): returns the plugin's data."""
        reply = await self._post(f"/{self.id}/{handle}", {"janus": "message", "body": body})
        data: dict[str, Any] = reply.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{body.get('request')}: {data['error']}")
        return data

    async def message(
        self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """An asynchronous plugin request: waits for its event; returns (data, jsep)."""
        tx = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[tx] = future
        msg: dict[str, Any] = {"janus": "message", "body": body, "transaction": tx}
        if jsep is not None:
            msg["jsep"] = jsep
        try:
            async with self.http.post(
                f"{self.base}/{self.id}/{handle}",
                json=msg,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                ack: dict[str, Any] = await resp.json(content_type=None)
            if ack.get("janus") == "error":
                raise JanusError(str(ack.get("error")))
            event = await asyncio.wait_for(future, self.timeout)
        finally:
            self._waiting.pop(tx, None)
        data: dict[str, Any] = event.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{body.get('request')}: {data['error']}")
        return data, event.get("jsep")

    async def _poll(self) -> None:
        """Long-poll the session's events (this also keeps the session alive)."""
        url = f"{self.base}/{self.id}?maxev=10"
        while True:
            try:
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=40)) as resp:
                    body = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                await asyncio.sleep(0.5)
                continue
            for event in body if isinstance(body, list) else [body]:
                self.events += 1
                tx = event.get("transaction")
                future = self._waiting.get(tx) if tx else None
                if future is not None and not future.done() and event.get("janus") == "event":
                    future.set_result(event)

    async def destroy(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller
        if self.id:
            with contextlib.suppress(Exception):
                await self._post(f"/{self.id}", {"janus": "destroy"})


async def wait_ready(base_url: str, timeout: float = 20) -> None:
    """Wait until Janus's HTTP API answers `info`."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(
                    base_url.rstrip("/") + "/info", timeout=aiohttp.ClientTimeout(total=2)
                ) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Janus did not answer on {base_url} in {timeout:.0f} s")
            await asyncio.sleep(0.2)
