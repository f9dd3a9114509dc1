"""Real aiortc peers through a real media plane on loopback: media both ways, decoded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mediaserver.api import IceConfig, MediaConfig, Node, Role, Room
from tests.media_peers import Peer, av_tracks


@pytest.fixture
async def room() -> AsyncIterator[Room]:
    node = Node(MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",))))
    await node.start()
    room = node.create_room("r1")
    yield room
    await node.close()


async def test_doctor_and_patient_exchange_audio_and_video(room: Room) -> None:
    doctor = Peer(room.add_participant("d", role=Role.DOCTOR))
    patient = Peer(room.add_participant("p", role=Role.PATIENT))
    try:
        await doctor.publish(av_tracks())
        await patient.publish(av_tracks())
        for peer in (doctor, patient):
            await peer.wait_frames("video", 30)
            await peer.wait_frames("audio", 50)
        counters = room.node.counters
        assert counters.packets_forwarded > 100
    finally:
        await doctor.close()
        await patient.close()
        await asyncio.sleep(0)
