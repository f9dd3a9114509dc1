"""Real aiortc peers through a real media plane on loopback: media both ways, decoded."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc.mediastreams import AudioStreamTrack

from mediaserver.api import (
    FallbackConfig,
    IceConfig,
    MediaConfig,
    NegotiationError,
    Role,
    RoomOptions,
)
from mediaserver.node import Node
from mediaserver.publication import payload_offset
from mediaserver.room import Room
from mediaserver.rtp.keyframe import vp8_keyframe_start
from tests.media_peers import PatternVideoTrack, Peer, av_tracks


async def eventually(predicate: object, timeout: float = 20.0) -> None:
    async def poll() -> None:
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


async def test_doctor_and_patient_exchange_audio_and_video(room: Room) -> None:
    doctor = Peer(room.add_participant("d", role=Role.DOCTOR))
    patient = Peer(room.add_participant("p", role=Role.PATIENT))
    try:
        await doctor.publish(av_tracks())
        await patient.publish(av_tracks())
        for peer in (doctor, patient):
            video = await peer.wait_frames("video", 30)
            assert (320, 240) in video.sizes
            await peer.wait_frames("audio", 50)
        assert room.node.counters.packets_forwarded > 100
        # The room API shows sources, codecs and link stats.
        info = room.info()
        assert info["video_codec"] == "VP8"
        tracks = {
            (t["kind"], t["source"], t["codec"]) for p in info["participants"] for t in p["tracks"]
        }
        assert ("video", "camera", "VP8") in tracks and ("audio", "microphone", "OPUS") in tracks
        await eventually(lambda: room.participants["d"].link_stats().downlink.bitrate_bps > 0)
        stats = room.participants["d"].link_stats()
        assert stats.uplink.bitrate_bps > 0 and stats.downlink.loss < 0.5
    finally:
        await doctor.close()
        await patient.close()


async def test_forwarded_tracks_are_never_decoded_on_the_server(room: Room) -> None:
    doctor = Peer(room.add_participant("d", role=Role.DOCTOR))
    patient = Peer(room.add_participant("p", role=Role.PATIENT))
    try:
        await doctor.publish(av_tracks())
        await patient.publish(av_tracks())
        await patient.wait_frames("video", 10)
        for participant in room.participants.values():
            transceivers = participant.pc.getTransceivers()
            assert transceivers
            for t in transceivers:
                receiver, sender = t.receiver, t.sender
                assert receiver._RTCRtpReceiver__decoder_thread is None  # type: ignore[attr-defined]
                assert receiver._RTCRtpReceiver__rtcp_task is None  # type: ignore[attr-defined]
                assert not receiver._RTCRtpReceiver__started  # type: ignore[attr-defined]
                assert sender._RTCRtpSender__rtp_task is None  # type: ignore[attr-defined]
                assert sender._RTCRtpSender__rtcp_task is None  # type: ignore[attr-defined]
            assert participant.publications and participant.subscriptions
    finally:
        await doctor.close()
        await patient.close()


async def test_late_subscriber_starts_on_a_requested_keyframe(room: Room) -> None:
    doctor = Peer(room.add_participant("d", role=Role.DOCTOR))
    await doctor.publish(av_tracks())
    await eventually(lambda: room.node.counters.packets_in > 200)  # keyframe long gone
    plis_before = room.node.counters.plis_sent
    late = room.add_participant("p", role=Role.PATIENT)
    first: list[bytes] = []
    patient = Peer(late)
    subscribed_at = time.monotonic()

    def spy(packet: bytes) -> bool:
        if not first and packet[1] & 0x7F == video_pt():
            first.append(packet)
        return late._send_orig(packet)  # type: ignore[attr-defined]

    def video_pt() -> int:
        sub = next(s for s in late.subscriptions.values() if s.kind == "video")
        return sub.forwarder._pt if sub.forwarder else -1

    late._send_orig = late._send  # type: ignore[attr-defined]
    late._send = spy  # type: ignore[method-assign]
    for sub in late.subscriptions.values():
        sub._send_rtp = spy
    try:
        video = await patient.wait_frames("video", 1)
        assert room.node.counters.plis_sent > plis_before
        assert first and vp8_keyframe_start(first[0], payload_offset(first[0]))
        assert video.first_frame is not None
        print(f"late subscriber: first frame {video.first_frame - subscribed_at:.2f}s after join")
    finally:
        await doctor.close()
        await patient.close()


async def test_lost_packets_are_recovered_from_the_packet_cache(room: Room) -> None:
    doctor = Peer(room.add_participant("d", role=Role.DOCTOR))
    sub_participant = room.add_participant("p", role=Role.PATIENT)
    patient = Peer(sub_participant)
    try:
        await doctor.publish({"camera": PatternVideoTrack()})
        await patient.wait_frames("video", 5)
        # 14% downlink loss would (rightly) make the bandwidth fallback stop this video.
        for ctl in (sub_participant.fallback.down, sub_participant.fallback.up):
            ctl.config = FallbackConfig(enabled=False)
        (sub,) = sub_participant.subscriptions.values()
        send = sub._send_rtp
        count = [0]

        def lossy(packet: bytes) -> bool:  # drop every 7th first transmission
            count[0] += 1
            return True if count[0] % 7 == 0 else send(packet)

        sub._send_rtp = lossy  # retransmissions take the participant's own path
        counters = room.node.counters
        before = patient.received[0].frames
        await eventually(lambda: counters.retransmissions > 20)
        await patient.wait_frames("video", before + 30)
        assert counters.nacks_received > 0
        assert counters.retransmissions > 20
    finally:
        await doctor.close()
        await patient.close()


async def test_rooms_are_isolated(node: Node) -> None:
    a, b = node.create_room("a"), node.create_room("b")
    pa = Peer(a.add_participant("x", role=Role.DOCTOR))
    pb = Peer(b.add_participant("y", role=Role.DOCTOR))
    try:
        await pa.publish(av_tracks())
        await pb.publish({"microphone": AudioStreamTrack()})
        await eventually(lambda: node.counters.packets_in > 100)
        assert not b.participants["y"].subscriptions
        assert not a.participants["x"].subscriptions
        assert pb.offers == 0 and not pb.received
        await a.close()
        assert "a" not in node.rooms and "b" in node.rooms
        assert b.participants["y"].connection_state == "connected"
    finally:
        await pa.close()
        await pb.close()


async def test_h264_only_when_every_participant_supports_it(node: Node) -> None:
    h264 = frozenset({"VP8", "H264"})
    room = node.create_room("h", RoomOptions(video_codec="H264"))
    doctor = Peer(room.add_participant("d", role=Role.DOCTOR, video_codecs=h264))
    patient = Peer(room.add_participant("p", role=Role.PATIENT, video_codecs=h264))
    try:
        assert room.video_codec() == "H264"
        await doctor.publish({"camera": PatternVideoTrack()})
        await patient.wait_frames("video", 10)
        (pub,) = room.participants["d"].publications.values()
        assert pub.codec.name == "H264"
    finally:
        await doctor.close()
        await patient.close()
    mixed = node.create_room("m", RoomOptions(video_codec="H264"))
    mixed.add_participant("d", role=Role.DOCTOR, video_codecs=h264)
    mixed.add_participant("p", role=Role.PATIENT, video_codecs=frozenset({"VP8"}))
    assert mixed.video_codec() == "VP8"


async def test_data_channel_both_ways(room: Room) -> None:
    participant = room.add_participant("d", role=Role.DOCTOR)
    peer = Peer(participant)
    got: list[str] = []
    participant.on("data", got.append)
    try:
        await peer.publish({"microphone": AudioStreamTrack()})
        await eventually(lambda: peer.channel.readyState == "open")
        peer.channel.send('{"type": "chat", "text": "hi"}')
        echoed: list[str] = []
        peer.channel.on("message", echoed.append)
        await eventually(lambda: bool(got))
        assert participant.send_data("pong")
        await eventually(lambda: echoed == ["pong"])
    finally:
        await peer.close()


async def test_broken_sdp_is_refused_and_the_participant_stays_usable(room: Room) -> None:
    participant = room.add_participant("d", role=Role.DOCTOR)
    with pytest.raises(NegotiationError):
        await participant.handle_offer("v=0\r\nthis is not sdp", {})
    with pytest.raises(NegotiationError):
        await participant.handle_answer("v=0\r\n")  # no offer pending
    with pytest.raises(NegotiationError):
        await participant.add_ice_candidate("candidate:garbage", "0")
    peer = Peer(participant)
    try:
        await peer.publish({"camera": PatternVideoTrack()})
        await eventually(lambda: participant.connection_state == "connected")
    finally:
        await peer.close()


async def test_glare_the_server_is_impolite(room: Room) -> None:
    doctor = Peer(room.add_participant("d", role=Role.DOCTOR))
    patient_participant = room.add_participant("p", role=Role.PATIENT)
    held: list[str] = []
    patient_participant.remove_all_listeners("offer")
    patient_participant.on("offer", lambda sdp, tracks: held.append(sdp))
    try:
        await doctor.publish({"camera": PatternVideoTrack()})
        await eventually(lambda: bool(held))  # a server offer is in flight, unanswered
        client = Peer.__new__(Peer)
        client.__init__(patient_participant)  # type: ignore[misc]
        patient_participant.remove_all_listeners("offer")
        client.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        offer = await client.pc.createOffer()
        await client.pc.setLocalDescription(offer)
        assert await patient_participant.handle_offer(offer.sdp, {}) is None
        pending = patient_participant.pending_offer()
        assert pending is not None and pending[0] == held[-1]
        await client.close()
    finally:
        await doctor.close()


async def test_media_sockets_use_the_configured_range_and_announced_address() -> None:
    config = MediaConfig(
        ice=IceConfig(
            host_addresses=("127.0.0.1",),
            min_port=42100,
            max_port=42110,
            announced_address="203.0.113.7",
        )
    )
    node = Node(config)
    room = node.create_room("x")
    participant = room.add_participant("d", role=Role.DOCTOR)
    try:
        offer_sdp = await _dummy_offer()
        answer = await participant.handle_offer(offer_sdp, {})
        assert answer is not None
        candidates = [line for line in answer.splitlines() if line.startswith("a=candidate")]
        assert candidates
        for line in candidates:
            parts = line.split()
            assert parts[4] == "203.0.113.7" and 42100 <= int(parts[5]) <= 42110
    finally:
        await node.close()


async def _dummy_offer() -> str:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp
