"""Negotiation stall: a participant whose peer connection aiortc closed (the client's DTLS
went away) while the participant waits for a reconnect must not freeze the node when the
room renegotiates it.

aiortc closes an RTCPeerConnection itself once all its DTLS transports are closed; the
consultation keeps the participant for peer_timeout_s. A renegotiation in that window (a
publication it received closes) used to make the server offers' task (now
`Negotiator._negotiate`) loop without ever awaiting (signaling state "closed", `answered`
already set): the event loop, and with it every room of the node, stopped. Real media plane,
real aiortc peers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from mediaserver.api import CloseReason, IceConfig, MediaConfig, Role
from mediaserver.node import Node
from mediaserver.room import Room
from tests.media_peers import Peer, av_tracks


async def _until(predicate: Callable[[], bool], timeout_s: float = 20) -> None:
    async def loop() -> None:
        while not predicate():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(loop(), timeout_s)


@pytest.fixture
async def call() -> AsyncIterator[tuple[Node, Room, Peer, Peer]]:
    node = Node(MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",))))
    room = node.create_room("stall")
    doctor = Peer(room.add_participant("d", role=Role.DOCTOR))
    patient = Peer(room.add_participant("p", role=Role.PATIENT))
    await doctor.publish(av_tracks())
    await patient.wait_frames("video", 3)
    yield node, room, doctor, patient
    await doctor.close()
    await patient.close()
    await node.close()


@pytest.mark.timeout(60)  # the old loop never yields: only pytest-timeout's signal stops it
async def test_renegotiation_after_the_client_closed_its_connection(
    call: tuple[Node, Room, Peer, Peer],
) -> None:
    _node, room, _doctor, patient = call
    participant = room.participants["p"]
    assert participant.negotiator.answered.is_set()  # its last server offer was answered

    await patient.close()  # DTLS close_notify: aiortc closes the server's connection itself
    await _until(lambda: participant.pc.signalingState == "closed")
    assert not participant.closed  # the consultation waits peer_timeout_s for a reconnect

    # A publication it received goes away: its subscription closes and asks for an offer.
    pub = next(p for p in room.participants["d"].publications.values() if p.kind == "video")
    await pub.close(CloseReason.LEFT)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await _until(lambda: ticks >= 20)  # the event loop keeps running
        negotiation = participant.negotiator.task
        await _until(lambda: negotiation is None or negotiation.done())
    finally:
        task.cancel()

    # A reconnect still gets its offer on the new connection.
    offers = []
    participant.on("offer", lambda sdp, tracks: offers.append(tracks))
    await participant.restart_transport()
    await _until(lambda: bool(offers))
    assert any(t.get("direction") == "sendonly" for t in offers[0].values())
