"""Garbage on the media path: dropped or counted, never raised, the call goes on."""

from __future__ import annotations

import asyncio
import random
import struct

from mediaserver.api import FallbackConfig, IceConfig, MediaConfig, Role
from mediaserver.node import Node
from mediaserver.rtp import rtcp
from tests.media_peers import PatternVideoTrack, Peer


def garbage(rng: random.Random, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        size = rng.choice([12, 13, 16, 20, 40, 200])
        data = bytearray(rng.randbytes(size))
        data[0] = 0x80 | (data[0] & 0x3F)  # looks like RTP v2: takes the deep path
        out.append(bytes(data))
    return out


def test_rtcp_parser_survives_random_input() -> None:
    rng = random.Random(7)
    for data in garbage(rng, 3000):
        for item in rtcp.parse(data):
            assert item is not None
    # A NACK or REMB whose length field lies about its size.
    lying = struct.pack("!BBHII", 0x80 | 15, 206, 60, 1, 0) + b"REMB\xff"
    assert list(rtcp.parse(lying)) == []


async def test_garbage_rtp_and_rtcp_do_not_break_a_live_call() -> None:
    # Garbage sequence numbers read as heavy loss: the bandwidth fallback would (rightly)
    # stop the video this test watches, so it is off here.
    node = Node(
        MediaConfig(
            ice=IceConfig(host_addresses=("127.0.0.1",)),
            fallback=FallbackConfig(enabled=False),
        )
    )
    room = node.create_room("r")
    doctor_p = room.add_participant("d", role=Role.DOCTOR)
    doctor = Peer(doctor_p)
    patient = Peer(room.add_participant("p", role=Role.PATIENT))
    try:
        await doctor.publish({"camera": PatternVideoTrack()})
        await patient.wait_frames("video", 5)
        (pub,) = doctor_p.publications.values()
        rng = random.Random(11)
        transport = doctor_p.transport
        assert transport is not None
        for data in garbage(rng, 2000):
            # As if decrypted from the publisher: through the participant's demux...
            transport.on_rtp(data, 0.0)
            transport.on_rtcp(data)
            # ...and straight into the publication, with its real SSRC.
            pub.on_rtp(data[:8] + struct.pack("!I", pub.ssrc or 0) + data[12:], 0.0)
            pub.on_rtx(data, 0.0)
        before = patient.received[0].frames
        await patient.wait_frames("video", before + 20)
        assert doctor_p.connection_state == "connected"
    finally:
        await doctor.close()
        await patient.close()
        await node.close()
        await asyncio.sleep(0)
