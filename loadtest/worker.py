"""One generator process: owns a set of consultations, joins them, reports their counters.

Started by `loadtest.runner` as `python -m loadtest.worker SPEC_JSON`, pinned to the
generator's core. It joins each consultation at its scheduled offset (the join rate), through
the target's real control plane:

- ours: the platform HTTP API creates the room (waiting room on); the doctor joins with a
  signed token over the WebSocket protocol, the patient joins and waits, the doctor admits
  it on `knock`, both send `publish` and answer the server's offers (`LoadClient`, a
  `ConsultClient` whose peer connection is a `SyntheticPeer`);
- janus: the VideoRoom over Janus's HTTP API (`loadtest.janus`).

Protocol on stdin/stdout (one JSON object a line): the worker prints `{"ready": ...}` once
every consultation joined or failed; then each `SNAP` line is answered with a snapshot of
cumulative counters, and `END` (or stdin closing, or its time budget) ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection

from mediaserver.config import IceConfig
from mediaserver.rtc.ice import PortAllocator
from signaling.auth import encode_token
from signaling.client import ConsultClient, JoinRefused, ServerError

from .generator import Pacer, SocketDrain, StreamReceiver, StreamSender, SyntheticPeer
from .janus import JanusError, JanusSession
from .media import MediaLoop, load_media

ROLES = ("doctor", "patient")
KINDS = ("audio", "video")
PUBLISH = [{"kind": "audio", "source": "microphone"}, {"kind": "video", "source": "camera"}]
JOIN_TIMEOUT_S = 30.0  # signaling + ICE + DTLS + first media of one consultation
now = time.monotonic


@dataclass
class Spec:
    target: str  # "ours" or "janus"
    url: str  # our node's base URL, or Janus's HTTP API URL (…/janus)
    ice_host: str  # the generator's address for media sockets
    consultations: list[tuple[str, float]]  # (id, join offset in seconds)
    api_key: str = ""
    token_secret: str = ""
    run_id: str = ""
    max_seconds: float = 600.0
    decrypt_all: bool = False
    event_loop_receive: bool = False  # True: one event-loop wake-up per datagram (old path)


@dataclass
class Consultation:
    id: str
    error: str = ""
    join_s: float | None = None
    signaling_s: float | None = None
    senders: dict[str, dict[str, StreamSender]] = field(default_factory=dict)
    receivers: dict[str, dict[str, StreamReceiver]] = field(default_factory=dict)
    peers: list[SyntheticPeer] = field(default_factory=list)
    drains: list[SocketDrain] = field(default_factory=list)
    clients: list[ConsultClient] = field(default_factory=list)
    janus: JanusSession | None = None

    def role_peer(self, role: str, send: SyntheticPeer, recv: SyntheticPeer) -> None:
        self.senders[role] = send.senders
        self.receivers[role] = recv.receiving

    def flowing(self) -> bool:
        return all(
            kind in self.receivers.get(role, {}) and self.receivers[role][kind].received > 0
            for role in ROLES
            for kind in KINDS
        )

    def pair(self) -> None:
        """Each receiver learns the stream it gets (the other role's sender): latency."""
        for role, other in zip(ROLES, reversed(ROLES), strict=True):
            for kind, stream in self.receivers.get(role, {}).items():
                stream.source = self.senders.get(other, {}).get(kind)

    def snapshot(self) -> dict[str, Any]:
        streams = []
        for role, other in zip(ROLES, reversed(ROLES), strict=True):
            for kind, stream in sorted(self.receivers.get(role, {}).items()):
                streams.append({"to": role, "from": other, "kind": kind} | stream.snapshot())
        sent = {
            role: {kind: s.snapshot() for kind, s in kinds.items()}
            for role, kinds in self.senders.items()
        }
        return {
            "id": self.id,
            "error": self.error,
            "join_s": self.join_s,
            "signaling_s": self.signaling_s,
            "streams": streams,
            "sent": sent,
            "peers": [p.connection_state for p in self.peers],
            "nacks_sent": sum(p.nacks_sent for p in self.peers),
            "nacks_received": sum(p.nacks_received for p in self.peers),
            "decrypted": sum(p.decrypted for p in self.peers),
        }

    async def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)
        for peer in self.peers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(peer.close(), 5)
        if self.janus is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.janus.destroy(), 5)


class LoadClient(ConsultClient):
    """ConsultClient whose peer connection is a SyntheticPeer (pre-encoded media, no codec)."""

    def __init__(self, base_url: str, peer: SyntheticPeer, http: aiohttp.ClientSession) -> None:
        super().__init__(base_url, http=http)
        self.peer = peer

    def _ensure_pc(self) -> RTCPeerConnection:
        if self.pc is None:
            self.pc = self.peer.pc
            self.channel = self.peer.channel
        return self.pc

    async def _answer_offer(self, msg: dict[str, Any]) -> None:
        async with self._negotiation:
            self._ensure_pc()
            sdp = await self.peer.answer(msg["sdp"], msg.get("tracks") or {})
            try:
                await self.request("answer", sdp=sdp)
            except (ConnectionError, aiohttp.ClientError, TimeoutError):
                return  # the socket closed meanwhile (the run is ending): nothing to answer
            self.negotiations += 1


class Worker:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.video: MediaLoop
        self.audio: MediaLoop
        self.video, self.audio = load_media()
        self.pacer = Pacer()
        self.ports = PortAllocator(IceConfig(host_addresses=(spec.ice_host,)))
        self.consultations = [Consultation(cid) for cid, _ in spec.consultations]
        self.joins = asyncio.Semaphore(8)

    def peer(self, name: str, *, datachannel: bool = True) -> SyntheticPeer:
        return SyntheticPeer(
            name,
            video=self.video,
            audio=self.audio,
            pacer=self.pacer,
            ports=self.ports,
            datachannel=datachannel,
            decrypt_all=self.spec.decrypt_all,
        )

    # -- our node ---------------------------------------------------------------------------

    async def setup_ours(self, c: Consultation, http: aiohttp.ClientSession) -> None:
        spec = self.spec
        room = f"lt-{spec.run_id}-{c.id}"
        async with http.post(
            spec.url.rstrip("/") + "/api/v1/rooms",
            json={"id": room, "waiting_room": True, "max_participants": 2},
            headers={"Authorization": f"Bearer {spec.api_key}"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as resp:
            if resp.status != 201:
                text = (await resp.text())[:200]
                raise RuntimeError(f"creating the room: HTTP {resp.status} {text}")
        t0 = now()
        clients: dict[str, LoadClient] = {}
        for role in ROLES:
            peer = self.peer(f"{c.id}-{role}")
            c.peers.append(peer)
            c.role_peer(role, peer, peer)
            client = LoadClient(spec.url, peer, http)
            c.clients.append(client)
            clients[role] = client
            token = encode_token(
                secret=spec.token_secret,
                room=room,
                sub=f"loadtest-{c.id}-{role}",
                role=role,
                name=f"Load {role}",
                ttl_s=3600,
            )
            await client.connect(token)
        knock = await clients["doctor"].wait_for("knock", timeout_s=10)
        await clients["doctor"].admit(knock["participant"]["id"])
        await clients["patient"].wait_state("admitted", timeout_s=10)
        c.signaling_s = now() - t0
        for client in clients.values():
            client._ensure_pc()
            await client.request("publish", tracks=PUBLISH)

    # -- Janus ------------------------------------------------------------------------------

    async def setup_janus(self, c: Consultation, http: aiohttp.ClientSession) -> None:
        session = c.janus = JanusSession(self.spec.url, http)
        await session.create()
        t0 = now()
        pubs = {role: await session.attach() for role in ROLES}
        room = random.randrange(10**6, 10**9)
        await session.request(
            pubs["doctor"],
            {
                "request": "create",
                "room": room,
                "publishers": 2,
                "audiocodec": "opus",
                "videocodec": "vp8",
                "permanent": False,
            },
        )
        feeds: dict[str, int] = {}
        senders: dict[str, SyntheticPeer] = {}
        for role in ROLES:
            data, _ = await session.message(
                pubs[role], {"request": "join", "ptype": "publisher", "room": room, "display": role}
            )
            feeds[role] = int(data["id"])
            peer = senders[role] = self.peer(f"{c.id}-{role}-pub", datachannel=False)
            c.peers.append(peer)
            offer = await peer.offer()
            _, jsep = await session.message(
                pubs[role],
                {"request": "publish"},
                {"type": "offer", "sdp": offer, "trickle": False},
            )
            if not jsep:
                raise RuntimeError("Janus sent no answer to the publisher's offer")
            await peer.accept(jsep["sdp"])
        c.signaling_s = now() - t0
        # Janus refuses subscriptions to a publisher whose PeerConnection is not up yet.
        deadline = now() + JOIN_TIMEOUT_S / 2
        while not all(p.connection_state == "connected" for p in senders.values()):
            if now() > deadline:
                raise TimeoutError("publishers did not connect to Janus")
            await asyncio.sleep(0.02)
        for role, other in zip(ROLES, reversed(ROLES), strict=True):
            handle = await session.attach()
            sub = self.peer(f"{c.id}-{role}-sub", datachannel=False)
            c.peers.append(sub)
            c.role_peer(role, senders[role], sub)
            join = {
                "request": "join",
                "ptype": "subscriber",
                "room": room,
                "streams": [{"feed": feeds[other]}],
            }
            for attempt in range(20):  # Janus may not have the publisher's media set up yet
                try:
                    _, jsep = await session.message(handle, join)
                    break
                except JanusError as exc:
                    if "No such feed" not in str(exc) or attempt == 19:
                        raise
                    await asyncio.sleep(0.1)
            if not jsep:
                raise RuntimeError("Janus sent no offer to the subscriber")
            answer = await sub.answer(jsep["sdp"], {})
            await session.message(
                handle, {"request": "start"}, {"type": "answer", "sdp": answer, "trickle": False}
            )

    # -- life -------------------------------------------------------------------------------

    async def join(self, c: Consultation, delay: float, http: aiohttp.ClientSession) -> None:
        await asyncio.sleep(delay)
        async with self.joins:
            t0 = now()
            try:
                setup = self.setup_ours if self.spec.target == "ours" else self.setup_janus
                await asyncio.wait_for(setup(c, http), JOIN_TIMEOUT_S)
                deadline = t0 + JOIN_TIMEOUT_S
                while not c.flowing():
                    if now() > deadline:
                        raise TimeoutError("media did not flow on every stream")
                    await asyncio.sleep(0.02)
                c.join_s = now() - t0
                c.pair()
                if not self.spec.event_loop_receive:
                    for peer in c.peers:
                        drain = peer.detach_socket()
                        if drain is not None:
                            c.drains.append(drain)
                            self.pacer.add_drain(drain)
            except JoinRefused as exc:
                c.error = f"join refused by the node ({exc.code}: {exc.reason or 'no reason'})"
            except ServerError as exc:
                c.error = f"the node answered an error: {exc}"
            except TimeoutError as exc:
                c.error = f"timed out joining: {exc or 'no answer'}"
            except (aiohttp.ClientError, OSError) as exc:
                c.error = f"cannot reach the target: {type(exc).__name__}: {exc}"
            except Exception as exc:
                c.error = f"{type(exc).__name__}: {exc}"

    async def run(self) -> None:
        spec = self.spec
        deadline = now() + spec.max_seconds
        pacer = asyncio.create_task(self.pacer.run(deadline))
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as http:
            try:
                await asyncio.gather(
                    *(
                        self.join(c, delay, http)
                        for c, (_, delay) in zip(
                            self.consultations, spec.consultations, strict=True
                        )
                    )
                )
                # Everything set up lives until the end: keep it out of the collector's passes.
                gc.collect()
                gc.freeze()
                emit(
                    {
                        "ready": True,
                        "consultations": [
                            {"id": c.id, "join_s": c.join_s, "error": c.error}
                            for c in self.consultations
                        ],
                    }
                )
                while now() < deadline:
                    line = await loop.run_in_executor(None, sys.stdin.readline)
                    if not line or line.strip() == "END":
                        return
                    emit(self.snapshot())
            finally:
                pacer.cancel()
                await asyncio.gather(
                    *(c.close() for c in self.consultations), return_exceptions=True
                )

    def snapshot(self) -> dict[str, Any]:
        cpu = os.times()
        late = max(
            (
                s.late_max
                for c in self.consultations
                for k in c.senders.values()
                for s in k.values()
            ),
            default=0.0,
        )
        return {
            "cpu": cpu.user + cpu.system,
            "ticks": self.pacer.ticks,
            "late_ticks": self.pacer.late_ticks,
            "late_max_ms": late * 1000,
            "consultations": [c.snapshot() for c in self.consultations],
        }


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def main() -> None:
    raw = json.loads(sys.argv[1])
    raw["consultations"] = [tuple(x) for x in raw["consultations"]]
    spec = Spec(**raw)
    if spec.event_loop_receive:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # Otherwise the stock loop: the pacer drains the media sockets itself (SocketDrain),
    # which needs a datagram transport that can pause reading (uvloop's cannot).
    try:
        asyncio.run(Worker(spec).run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
