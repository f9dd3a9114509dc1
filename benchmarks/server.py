"""A minimal media server for benchmarks: one mediaserver Node behind a tiny local endpoint.

Not the product's signaling server (no auth, no waiting room): just enough to exchange SDP
with synthetic peers and read the node's counters, on 127.0.0.1 only.

- `GET /ws`: one WebSocket per participant. Client -> server: {"type": "join", "room", "id",
  "role", "publish": [{"kind", "source"}]} then {"type": "answer", "sdp"} for each server
  offer. Server -> client: {"type": "offer", "sdp", "tracks"}. Closing the socket leaves.
- `GET /counters`: node.counters as JSON, plus rooms/participants and this process's pid.

Run: `python -m benchmarks.server --port 0 --max-seconds 600`; prints `LISTENING <port>`.
It exits on SIGTERM/SIGINT, when stdin closes (its parent died) or after --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from typing import Any

from aiohttp import WSMsgType, web

from benchmarks.common import Stalls
from mediaserver.api import CloseReason, IceConfig, MediaConfig, NegotiationError, Role, TrackMeta
from mediaserver.node import Node
from mediaserver.participant import Participant

logger = logging.getLogger("benchmarks.server")
NODE: web.AppKey[Node] = web.AppKey("node", Node)


STALLS: web.AppKey[Stalls] = web.AppKey("stalls", Stalls)


async def counters(request: web.Request) -> web.Response:
    node = request.app[NODE]
    body: dict[str, Any] = dataclasses.asdict(node.counters)
    body["rooms"] = len(node.rooms)
    body["participants"] = sum(len(r.participants) for r in node.rooms.values())
    body["connected"] = sum(
        1
        for r in node.rooms.values()
        for p in r.participants.values()
        if p.connection_state == "connected"
    )
    # The batched send path (mediaserver/rtc/batch.py): one flush per transport and loop pass.
    batches = [
        p.transport.batch
        for r in node.rooms.values()
        for p in r.participants.values()
        if p.transport is not None and p.transport.batch is not None
    ]
    body["send_flushes"] = sum(b.flushes for b in batches)
    body["send_syscalls"] = sum(b.batches for b in batches)
    body["send_datagrams"] = sum(b.datagrams for b in batches)
    body["send_errors"] = sum(b.send_errors for b in batches)
    body["pid"] = os.getpid()
    body |= request.app[STALLS].read()
    return web.json_response(body)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    node = request.app[NODE]
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    participant: Participant | None = None
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def writer() -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                await ws.send_json(await outbox.get())

    write_task = asyncio.create_task(writer())
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if data["type"] == "join" and participant is None:
                room = node.get_room(data["room"]) or node.create_room(data["room"])
                participant = room.add_participant(data["id"], role=Role(data["role"]))
                participant.on(
                    "offer",
                    lambda sdp, tracks: outbox.put_nowait(
                        {"type": "offer", "sdp": sdp, "tracks": tracks}
                    ),
                )
                publish = [TrackMeta(kind=t["kind"], source=t["source"]) for t in data["publish"]]
                if publish:
                    participant.request_publish(publish)
            elif data["type"] == "answer" and participant is not None:
                try:
                    await participant.handle_answer(data["sdp"])
                except NegotiationError as exc:
                    logger.warning("answer refused: %s", exc)
    finally:
        write_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await write_task
        if participant is not None:
            room = participant.room
            await participant.close(CloseReason.LEFT)
            if not room.participants:
                await room.close()
    return ws


async def serve(port: int, max_seconds: float) -> None:
    node = Node(MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",))))
    await node.start()
    app = web.Application()
    app[NODE] = node
    stalls = app[STALLS] = Stalls()
    watch = asyncio.create_task(stalls.watch())
    if os.environ.get("BENCH_WATCHDOG"):
        stalls.start_watchdog("server")
    app.router.add_get("/ws", websocket)
    app.router.add_get("/counters", counters)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"LISTENING {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    loop.remove_reader(sys.stdin.fileno())
    watch.cancel()
    await node.close()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="server %(levelname)s %(name)s: %(message)s")
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.port, args.max_seconds))


if __name__ == "__main__":
    main()
