"""The recorder's writer (recorder/recording.py) fed real VP8 packets (aiortc's encoder),
as a publication's sink feeds it: a lost packet loses its frame, the track waits for the next
keyframe (asking for one, from the writer thread), and timestamps keep the real time."""

from __future__ import annotations

import io
import json
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RtpPacket

from mediaserver.api import RecordingConfig
from mediaserver.recording import RecordedTrack, RecordingRequest
from recorder.keys import parse_key
from recorder.recording import Recording
from recorder.sealed import unseal

KEY = "k:" + bytes(range(32)).hex()


def frames_of_packets(count: int, keyframes: set[int]) -> list[list[bytes]]:
    encoder = Vp8Encoder()
    rng = np.random.default_rng(2)
    out, seq = [], 500
    for i in range(count):
        noise = rng.integers(0, 255, (240, 320, 3), np.uint8)  # every frame several packets
        frame = av.VideoFrame.from_ndarray(noise, format="bgr24")
        frame.pts, frame.time_base = i * 3000, Fraction(1, 90000)
        payloads, ts = encoder.encode(frame, force_keyframe=i in keyframes)
        packets = []
        for j, payload in enumerate(payloads):
            rtp = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, payload=payload)
            rtp.marker, rtp.ssrc = j == len(payloads) - 1, 1234
            packets.append(rtp.serialize())
            seq += 1
        out.append(packets)
    return out


def test_a_lost_packet_waits_for_the_next_keyframe(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(KEY)
    config = RecordingConfig(directory=str(tmp_path / "rec"), key_file=str(tmp_path / "key"))
    recording = Recording(RecordingRequest(room_id="r", recording_id="x", config=config), print)
    asked: list[str] = []
    track = RecordedTrack(
        track_id="t",
        participant_id="p",
        kind="video",
        source="camera",
        codec="VP8",
        clock_rate=90000,
        channels=1,
    )
    sink = recording.add_track(track, lambda: asked.append(threading.current_thread().name))
    frames = frames_of_packets(60, {0, 40})
    assert len(frames[10]) > 1
    del frames[10][1]  # lost: frame 10 cannot be rebuilt, 11..39 depend on it
    now = time.monotonic()
    for packets in frames:
        for packet in packets:
            sink.on_rtp(packet, now)
    recording.stop("stopped")

    manifest = json.loads((tmp_path / "rec" / "x" / "manifest.json").read_text())
    (entry,) = manifest["tracks"]
    assert entry["frames"] == 10 + 20 and entry["frames_lost"] == 1
    assert entry["keyframe_requests"] >= 1 and asked and asked[0] == "recording-x"
    data = unseal(str(tmp_path / "rec" / "x" / entry["file"]), parse_key(KEY)).data
    with av.open(io.BytesIO(data), "r") as container:
        decoded = list(container.decode(video=0))
    assert len(decoded) == 30  # every recorded frame decodes: nothing after the gap but a key
    times = [round(float(f.time or 0) * 30) for f in decoded]
    assert times == list(range(10)) + list(range(40, 60))  # real time kept across the gap


async def test_the_media_plane_starts_notes_and_stops_a_recording(tmp_path: Path) -> None:
    """The commands through LocalMediaPlane (what a worker process runs too), no signaling."""
    from mediaserver.api import (
        CreateRoom,
        IceConfig,
        MediaConfig,
        MediaEvent,
        RecordingError,
        RecordingNote,
        RecordingStopped,
        StartRecording,
        StopRecording,
    )
    from mediaserver.plane import LocalMediaPlane

    (tmp_path / "key").write_text(KEY)
    recording = RecordingConfig(directory=str(tmp_path / "rec"), key_file=str(tmp_path / "key"))
    plane = LocalMediaPlane(
        MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",)), recording=recording)
    )
    events: list[MediaEvent] = []
    plane.subscribe(events.append)
    await plane.start()
    try:
        await plane.execute(CreateRoom(room_id="r"))
        key_id = await plane.execute(StartRecording(room_id="r", recording_id="a1"))
        assert key_id == "k"
        with pytest.raises(RecordingError, match="recording already"):
            await plane.execute(StartRecording(room_id="r", recording_id="a2"))
        note = RecordingNote(room_id="r", recording_id="a1", kind="chat", data={"text": "hi"})
        await plane.execute(note)
        await plane.execute(StopRecording(room_id="r", recording_id="a1", reason="stopped"))
        await plane.execute(StopRecording(room_id="r", recording_id="a1", reason="stopped"))
        stopped = [e for e in events if isinstance(e, RecordingStopped)]
        assert [(e.recording_id, e.reason, e.error) for e in stopped] == [("a1", "stopped", "")]
        assert plane.snapshot().workers[0].counters["recording_bytes"] > 0
    finally:
        await plane.close()
    events_file = tmp_path / "rec" / "a1" / "events.jsonl.sealed"
    lines = unseal(str(events_file), parse_key(KEY)).data.decode().splitlines()
    assert [json.loads(line)["text"] for line in lines] == ["hi"]
