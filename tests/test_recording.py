"""Consultation recording end to end: a real node, aiortc doctor, patient and stethoscope
device publishing real media; consent over the WebSocket; the recording decrypted with
`python -m recorder decrypt` and every file decoded with PyAV (docs/recording.md)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from mediaserver.api import IceConfig, MediaConfig, RecordingConfig
from recorder.cli import main as recorder_cli
from signaling.client import ConsultClient

from .conftest import Server, ServerFactory
from .device_audio import SR, THRESHOLD, FmtpOpusTrack, fidelity, heart_and_lung, to_mono
from .test_devices_fidelity import fmtp_of

Clients = Callable[[Server], ConsultClient]
KEY_TEXT = "test-key:" + base64.b64encode(bytes(range(32))).decode()
FLASH_S = 0.1  # each second starts with a flash (video) and a beep (audio) this long
RECORD_S = 6.0


def _flash(t: float) -> bool:
    return t % 1.0 < FLASH_S


class FlashVideo(VideoStreamTrack):
    """Dark frames; white for FLASH_S at every wall-clock second (the capture time)."""

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        shade = 255 if _flash(time.time()) else 20
        frame = av.VideoFrame.from_ndarray(np.full((240, 320, 3), shade, np.uint8), "bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class BeepAudio(AudioStreamTrack):
    """Silence; a 1 kHz tone for FLASH_S at every wall-clock second (the capture time)."""

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()
        assert isinstance(frame, av.AudioFrame)
        if _flash(time.time()):
            t = np.arange(frame.samples) / frame.sample_rate
            tone = (np.sin(2 * np.pi * 1000 * t) * 12000).astype(np.int16)
            layout = frame.layout.name
            beep = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16", layout=layout)
            beep.sample_rate, beep.pts, beep.time_base = (
                frame.sample_rate,
                frame.pts,
                frame.time_base,
            )
            return beep
        return frame


class FrameCounter:
    """A test sink on a live publication: the RTP timestamp of every complete VP8 frame."""

    def __init__(self) -> None:
        self.timestamps: list[int] = []

    def on_rtp(self, data: bytes, arrival: float) -> None:
        if data[1] & 0x80:
            self.timestamps.append(int.from_bytes(data[4:8], "big"))


@pytest.fixture
def recording_dir(tmp_path: Path) -> Path:
    (tmp_path / "key").write_text(KEY_TEXT)
    (tmp_path / "rec").mkdir()
    return tmp_path


def recording_server(make_server: ServerFactory, base: Path, key: str = "key") -> Any:
    recording = RecordingConfig(directory=str(base / "rec"), key_file=str(base / key))
    media = MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",)), recording=recording)
    return make_server(media=media)


async def consult(
    server: Server, clients: Clients, room: str, *, codec: str = "VP8"
) -> tuple[ConsultClient, ...]:
    body = {"id": room, "recording": "consent", "video_codec": codec}
    status, _ = await server.api("POST", "/api/v1/rooms", json=body)
    assert status == 201
    if codec == "VP8":
        doctor, patient = clients(server), clients(server)
    else:
        doctor = ConsultClient(server.url, codecs=[codec, "VP8"])
        patient = ConsultClient(server.url, codecs=[codec, "VP8"])
    await doctor.connect(server.token("doctor", room=room))
    await patient.connect(server.token("patient", room=room))
    await doctor.admit(patient.participant_id or "")
    await patient.wait_state("admitted")
    return doctor, patient


async def start_recording(doctor: ConsultClient, patient: ConsultClient) -> str:
    await doctor.request("record", action="start")
    ask = await patient.wait_for("record-consent")
    rid = ask["recording_id"]
    await patient.request("consent", recording_id=rid, accept=True)
    for client in (doctor, patient):
        started = await client.wait_for("recording", lambda m: m["state"] == "started")
        assert started["recording_id"] == rid
    return str(rid)


def decrypt(base: Path, rid: str) -> tuple[Path, dict[str, Any]]:
    out = base / f"plain-{rid}"
    assert (
        recorder_cli(
            ["decrypt", str(base / "rec" / rid), str(out), "--key-file", str(base / "key")]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    return out, manifest


def decode(path: Path) -> tuple[list[av.VideoFrame | av.AudioFrame], float]:
    with av.open(str(path), "r") as container:
        frames = [
            f
            for f in container.decode(container.streams[0])
            if isinstance(f, av.VideoFrame | av.AudioFrame)
        ]
    assert frames
    end = frames[-1]
    assert end.time is not None
    length = end.samples / end.sample_rate if isinstance(end, av.AudioFrame) else 1 / 30
    return frames, end.time + length


def onsets(times: list[float], on: list[bool]) -> list[float]:
    return [t for i, t in enumerate(times) if on[i] and (i == 0 or not on[i - 1])]


@pytest.mark.workers(0)
async def test_consented_recording_is_sealed_complete_and_in_sync(
    make_server: ServerFactory, clients: Clients, recording_dir: Path
) -> None:
    server = await recording_server(make_server, recording_dir)
    doctor, patient = await consult(server, clients, "rec")
    device = clients(server)
    await device.connect(server.token("device", room="rec"))
    await device.wait_state("admitted")
    sound = heart_and_lung(8.0)
    await doctor.publish(FlashVideo(), BeepAudio())
    await patient.publish(AudioStreamTrack())
    await device.publish(FmtpOpusTrack(sound, fmtp_of(device)), sources=["stethoscope"])
    video = await patient.wait_track(doctor.participant_id or "", "video", timeout_s=20)
    await asyncio.wait_for(video.recv(), 20)
    await doctor.wait_track(device.participant_id or "", "audio", timeout_s=20)
    pub = next(
        p
        for p in server.participant(doctor.participant_id, room="rec").publications.values()
        if p.kind == "video"
    )
    counter = FrameCounter()
    pub.add_sink(counter)

    rid = await start_recording(doctor, patient)
    started = time.time()
    await doctor.chat("recorded chat line")
    await asyncio.sleep(RECORD_S)
    await doctor.request("record", action="stop")
    span = time.time() - started
    for client in (doctor, patient, device):
        stopped = await client.wait_for("recording", lambda m: m["state"] == "stopped")
        assert (stopped["recording_id"], stopped["reason"]) == (rid, "stopped")
    pub.remove_sink(counter)

    # no plaintext on disk: no WebM header, no media payload
    sealed = {p.name: p.read_bytes() for p in (recording_dir / "rec" / rid).iterdir()}
    out, manifest = decrypt(recording_dir, rid)
    assert manifest["state"] == "stopped" and manifest["key_id"] == "test-key"
    tracks = {(t["kind"], t["source"], t["participant_id"]): t for t in manifest["tracks"]}
    assert len(tracks) == 4
    for raw in sealed.values():
        assert b"\x1a\x45\xdf\xa3" not in raw
    payloads: list[bytes] = []
    for entry in manifest["tracks"]:
        with av.open(str(out / entry["file"].removesuffix(".sealed")), "r") as container:
            payloads += [bytes(p)[4:20] for p in container.demux() if p.size >= 20][:50]
    assert len(payloads) >= 100  # video, stethoscope (silence packets are shorter)
    for payload in payloads:
        assert not any(payload in raw for raw in sealed.values())

    walls: dict[str, list[float]] = {}
    for (kind, source, pid), entry in tracks.items():
        frames, duration = decode(out / entry["file"].removesuffix(".sealed"))
        assert abs(duration - span) < 0.5, (kind, source, duration, span)
        times = [float(f.time or 0) for f in frames]
        if kind == "video":
            # every frame forwarded from the first recorded one to the last is in the file
            first = entry["first_rtp_timestamp"]
            last = first + round(times[-1] * 90000)
            forwarded = [
                ts
                for ts in counter.timestamps
                if 0 <= (ts - first) & 0xFFFFFFFF <= last - first + 45
            ]
            assert len(frames) == len(set(forwarded)) == entry["frames"]
            on = [
                isinstance(f, av.VideoFrame) and float(f.to_ndarray(format="gray").mean()) > 128
                for f in frames
            ]
            walls["video"] = [entry["first_wall_time"] + t for t in onsets(times, on)]
        elif pid == doctor.participant_id:
            samples = np.concatenate(
                [to_mono(f) for f in frames if isinstance(f, av.AudioFrame)]
            )  # (scaled: fltp)
            loud = np.abs(samples) > 0.3 * np.abs(samples).max()
            edges = np.flatnonzero(loud[1:] & ~loud[:-1]) + 1
            starts = [e for i, e in enumerate(edges) if i == 0 or e - edges[i - 1] > SR // 2]
            walls["audio"] = [entry["first_wall_time"] + e / SR for e in starts]
        elif source == "stethoscope":
            got = np.concatenate([to_mono(f) for f in frames if isinstance(f, av.AudioFrame)])
            assert fidelity(np.concatenate([sound] * 3), got[SR:]) >= THRESHOLD
    assert len(walls["video"]) >= 4 and len(walls["audio"]) >= 4
    skew = [min(abs(v - a) for a in walls["audio"]) for v in walls["video"]]
    print(f"audio/video skew per flash (ms): {[round(s * 1000) for s in skew]}")
    assert max(skew) < 0.08

    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    steps = [(e["what"], e["role"]) for e in events if e["kind"] == "consent"]
    assert steps == [
        ("requested", "doctor"),
        ("asked", "patient"),
        ("accepted", "patient"),
        ("consented", "server"),
        ("started", "server"),
        ("stop-requested", "doctor"),
        ("stopped", "server"),
    ]
    assert [e["message"]["text"] for e in events if e["kind"] == "chat"] == ["recorded chat line"]

    # an MP4 to watch: video side by side, audio mixed, on the manifest's wall clock
    mp4 = recording_dir / "export.mp4"
    key = str(recording_dir / "key")
    sealed_dir = str(recording_dir / "rec" / rid)
    assert (
        await asyncio.to_thread(recorder_cli, ["export", sealed_dir, str(mp4), "--key-file", key])
        == 0
    )
    with av.open(str(mp4), "r") as container:
        assert container.duration is not None
        assert abs(container.duration / 1e6 - span) < 0.5
        (vstream,) = container.streams.video
        (astream,) = container.streams.audio
        assert (vstream.codec_context.width, vstream.codec_context.height) == (480, 360)
        assert astream.codec_context.name == "aac"

    status, listing = await server.api("GET", "/api/v1/rooms/rec/recordings")
    assert status == 200 and [r["recording_id"] for r in listing["recordings"]] == [rid]
    status, body = await server.api("GET", f"/api/v1/rooms/rec/recordings/{rid}")
    assert status == 200 and body["key_id"] == "test-key"
    status, metrics = await server.api("GET", "/metrics")
    assert "consult_media_recording_bytes_total" in metrics
    status, _ = await server.api("DELETE", f"/api/v1/rooms/rec/recordings/{rid}")
    assert status == 204 and not (recording_dir / "rec" / rid).exists()


async def test_withdrawn_consent_stops_writing(
    make_server: ServerFactory, clients: Clients, recording_dir: Path
) -> None:
    server = await recording_server(make_server, recording_dir)
    doctor, patient = await consult(server, clients, "rec")
    await patient.publish(AudioStreamTrack())
    await doctor.wait_track(patient.participant_id or "", "audio", timeout_s=20)
    rid = await start_recording(doctor, patient)
    directory = recording_dir / "rec" / rid

    def sizes() -> dict[str, int]:
        return {p.name: p.stat().st_size for p in directory.iterdir()}

    before = sizes()
    while sizes() == before:  # the writer seals a chunk every second
        await asyncio.sleep(0.2)
    await patient.request("consent", recording_id=rid, accept=False)  # acked: stopped
    stopped = await doctor.wait_for("recording", lambda m: m["state"] == "stopped")
    assert stopped["reason"] == "consent-withdrawn"
    after = sizes()
    await asyncio.sleep(2.0)  # media still flows to the doctor; none to the recording
    assert sizes() == after
    out, manifest = decrypt(recording_dir, rid)
    assert manifest["stop_reason"] == "consent-withdrawn"
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["what"] for e in events if e["kind"] == "consent"][-2:] == ["withdrew", "stopped"]
    with pytest.raises(Exception, match="no such recording"):
        await patient.request("consent", recording_id=rid, accept=True)


async def test_recording_policy_and_missing_key(
    make_server: ServerFactory, clients: Clients, recording_dir: Path
) -> None:
    server = await recording_server(make_server, recording_dir, key="missing-key")
    doctor, patient = await consult(server, clients, "rec")
    await doctor.request("record", action="start")
    ask = await patient.wait_for("record-consent")
    await patient.request("consent", recording_id=ask["recording_id"], accept=True)
    stopped = await doctor.wait_for("recording", lambda m: m["state"] == "stopped")
    assert stopped["reason"] == "error" and "key" in stopped["error"]
    assert (await doctor.chat("the consultation goes on"))["type"] == "ack"

    status, _ = await server.api("POST", "/api/v1/rooms", json={"id": "off"})
    other = clients(server)
    await other.connect(server.token("doctor", room="off", sub="d2"))
    with pytest.raises(Exception, match="policy is none"):
        await other.request("record", action="start")
    status, _ = await server.api("POST", "/api/v1/rooms", json={"id": "x", "recording": "all"})
    assert status == 400


@pytest.fixture
def recording_node(recording_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`python -m signaling run --dev --workers 1` recording into recording_dir: (process, port)."""
    from .test_workers import _free_port

    port = _free_port()
    argv = [sys.executable, "-m", "signaling", "run", "--dev", "--port", str(port)]
    argv += ["--workers", "1", "--ice-host", "127.0.0.1", "--log-level", "WARNING"]
    argv += ["--recording-dir", str(recording_dir / "rec")]
    argv += ["--recording-key-file", str(recording_dir / "key")]
    node = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    yield node, port
    if node.poll() is None:
        node.kill()
    node.wait(10)


async def test_a_node_killed_mid_recording_leaves_a_playable_prefix(
    recording_dir: Path, recording_node: tuple[subprocess.Popen[bytes], int]
) -> None:
    """`python -m signaling run` (media in a worker process) killed with SIGKILL while it
    records: every sealed chunk on disk decrypts, and the prefix decodes."""
    from signaling.auth import encode_token
    from signaling.config import DEV_API_KEY, DEV_TOKEN_SECRET

    from .test_e2e_media import SyntheticVideo
    from .test_workers import _ready, alive, until, worker_processes

    node, port = recording_node
    url = f"http://127.0.0.1:{port}"
    doctor, patient = ConsultClient(url), ConsultClient(url)
    try:
        await _ready(port)
        workers = worker_processes(node.pid)
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {DEV_API_KEY}"}
            body = {"id": "k", "recording": "consent"}
            async with http.post(f"{url}/api/v1/rooms", json=body, headers=headers) as r:
                assert r.status == 201

        def token(role: str) -> str:
            return encode_token(
                secret=DEV_TOKEN_SECRET, room="k", sub=role, role=role, name=role, ttl_s=600
            )

        await doctor.connect(token("doctor"))
        await patient.connect(token("patient"))
        await doctor.admit(patient.participant_id or "")
        await patient.wait_state("admitted")
        await doctor.publish(SyntheticVideo(90), AudioStreamTrack())
        await patient.wait_track(doctor.participant_id or "", "video", timeout_s=20)
        rid = await start_recording(doctor, patient)
        video = recording_dir / "rec" / rid / "00-video-camera.webm.sealed"
        await until(lambda: video.exists() and video.stat().st_size > 20_000, 30, "video written")
        node.kill()  # SIGKILL: no stop, no final chunk, no manifest update
        node.wait(10)
        await until(lambda: not any(alive(pid) for pid in workers), 15, "its worker gone")
    finally:
        await doctor.close()
        await patient.close()

    from recorder.cli import decrypt as decrypt_files
    from recorder.keys import FileKeyStore

    out, manifest = decrypt(recording_dir, rid)
    assert manifest["state"] == "recording"  # as the crash left it
    states = dict(
        decrypt_files(
            str(recording_dir / "rec" / rid),
            str(recording_dir / "again"),
            FileKeyStore(str(recording_dir / "key")),
        )
    )
    assert set(states.values()) == {"truncated"}  # no final chunk: cut short, said so
    started = [e for e in manifest["tracks"] if e["first_rtp_timestamp"] is not None]
    assert {e["kind"] for e in started} == {"audio", "video"}
    for entry in started:
        frames, duration = decode(out / entry["file"].removesuffix(".sealed"))
        assert len(frames) > 10 and duration > 0.5, entry["file"]


class NoiseVideo(VideoStreamTrack):
    """Noise: every frame costs the encoder its full bitrate."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.default_rng(3)

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = self.rng.integers(0, 255, (240, 320, 3), np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: the recording runs out of space in seconds (ENOSPC, for real)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.workers(0)
async def test_a_full_disk_stops_the_recording_not_the_consultation(
    make_server: ServerFactory, clients: Clients, recording_dir: Path, full_disk: Path
) -> None:
    recording = RecordingConfig(directory=str(full_disk), key_file=str(recording_dir / "key"))
    media = MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",)), recording=recording)
    server = await make_server(media=media)
    doctor, patient = await consult(server, clients, "rec")
    await doctor.publish(NoiseVideo())
    video = await patient.wait_track(doctor.participant_id or "", "video", timeout_s=20)
    rid = await start_recording(doctor, patient)
    stopped = await doctor.wait_for("recording", lambda m: m["state"] == "stopped", timeout_s=60)
    assert (stopped["recording_id"], stopped["reason"]) == (rid, "error")
    assert stopped["error"] == "write failed: No space left on device"
    # the consultation goes on: chat, and video still reaches the patient
    assert (await doctor.chat("still here"))["type"] == "ack"
    await asyncio.wait_for(video.recv(), 20)
    # what was written is decryptable: every complete chunk, a WebM prefix that decodes
    out = recording_dir / "plain"
    key = str(recording_dir / "key")
    assert recorder_cli(["decrypt", str(full_disk / rid), str(out), "--key-file", key]) == 0
    frames, _ = decode(out / "00-video-camera.webm")
    assert len(frames) >= 1


async def test_h264_is_recorded_into_matroska(
    make_server: ServerFactory, recording_dir: Path
) -> None:
    from .test_e2e_media import SyntheticVideo

    server = await recording_server(make_server, recording_dir)
    made: list[ConsultClient] = []

    def keep(server: Server) -> ConsultClient:  # (consult makes its own H264 clients)
        raise AssertionError("unused")

    doctor, patient = await consult(server, keep, "h", codec="H264")
    made += [doctor, patient]
    try:
        await doctor.publish(SyntheticVideo(120))
        video = await patient.wait_track(doctor.participant_id or "", "video", timeout_s=20)
        await asyncio.wait_for(video.recv(), 20)
        rid = await start_recording(doctor, patient)
        directory = recording_dir / "rec" / rid
        await until_size(directory / "00-video-camera.mkv.sealed", 2000)
        await doctor.request("record", action="stop")
        await doctor.wait_for("recording", lambda m: m["state"] == "stopped")
    finally:
        for client in made:
            await client.close()
    out, manifest = decrypt(recording_dir, rid)
    (entry,) = manifest["tracks"]
    assert entry["codec"] == "H264" and entry["file"] == "00-video-camera.mkv.sealed"
    frames, _ = decode(out / "00-video-camera.mkv")
    assert len(frames) == entry["frames"] > 0


def size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


async def until_size(path: Path, size: int) -> None:
    for _ in range(300):
        if size_of(path) > size:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path.name} never grew past {size} bytes")


def test_a_codec_it_cannot_record_is_refused(recording_dir: Path) -> None:
    from mediaserver.api import RecordingError
    from mediaserver.recording import RecordedTrack, RecordingRequest
    from recorder.recording import Recording

    config = RecordingConfig(directory=str(recording_dir / "rec"), key_file="")
    with pytest.raises(RecordingError, match="no recording key"):
        Recording(RecordingRequest(room_id="r", recording_id="a", config=config), print)
    config = RecordingConfig(
        directory=str(recording_dir / "rec"), key_file=str(recording_dir / "key")
    )
    errors: list[str] = []
    recording = Recording(
        RecordingRequest(room_id="r", recording_id="b", config=config), errors.append
    )
    track = RecordedTrack(
        track_id="t",
        participant_id="p",
        kind="video",
        source="camera",
        codec="H265",
        clock_rate=90000,
        channels=1,
    )
    with pytest.raises(ValueError, match="cannot record H265"):
        recording.add_track(track, lambda: None)
    recording.stop("stopped")
    manifest = json.loads((recording_dir / "rec" / "b" / "manifest.json").read_text())
    assert manifest["state"] == "stopped" and manifest["tracks"] == [] and not errors


@pytest.mark.workers(0)
async def test_a_publisher_reconnecting_mid_recording_continues_its_file(
    make_server: ServerFactory, clients: Clients, recording_dir: Path
) -> None:
    """A fresh peer connection (new SSRC, sequence numbers and timestamps): the track's file
    goes on after a keyframe, its time bridged by the gap, so its length stays the span."""
    from .test_e2e_media import SyntheticVideo

    server = await recording_server(make_server, recording_dir)
    doctor, patient = await consult(server, clients, "rec")
    await doctor.publish(SyntheticVideo(70))
    await patient.wait_track(doctor.participant_id or "", "video", timeout_s=20)
    rid = await start_recording(doctor, patient)
    started = time.time()
    pub = next(iter(server.participant(doctor.participant_id, room="rec").publications.values()))
    first_ssrc = pub.ssrc
    await asyncio.sleep(2.0)
    await doctor._restart_media()
    counter = FrameCounter()
    for _ in range(200):  # until the new connection's frames reach the publication
        if pub.ssrc != first_ssrc and pub.stats.received > 30:
            break
        await asyncio.sleep(0.1)
    assert pub.ssrc != first_ssrc
    pub.add_sink(counter)
    await asyncio.sleep(2.0)
    await doctor.request("record", action="stop")
    span = time.time() - started
    pub.remove_sink(counter)
    assert counter.timestamps  # media flowed on the new connection
    out, manifest = decrypt(recording_dir, rid)
    (entry,) = manifest["tracks"]
    frames, duration = decode(out / "00-video-camera.webm")
    assert len(frames) == entry["frames"]
    assert abs(duration - span) < 0.5, (duration, span)
    last_second = [f for f in frames if (f.time or 0) > duration - 1.0]
    assert len(last_second) > 10  # recorded after the switch


async def test_devices_policy_records_device_streams_only(
    make_server: ServerFactory, clients: Clients, recording_dir: Path
) -> None:
    server = await recording_server(make_server, recording_dir)
    status, _ = await server.api("POST", "/api/v1/rooms", json={"id": "d", "recording": "devices"})
    assert status == 201
    doctor, device = clients(server), clients(server)
    await doctor.connect(server.token("doctor", room="d"))
    started = await doctor.wait_for("recording", lambda m: m["state"] == "started")
    assert started["reason"] in ("running", "policy")  # (joined after or before it started)
    with pytest.raises(Exception, match="policy is devices"):
        await doctor.request("record", action="start")
    await device.connect(server.token("device", room="d"))
    await device.wait_state("admitted")
    sound = heart_and_lung(4.0)
    await doctor.publish(AudioStreamTrack())
    await device.publish(FmtpOpusTrack(sound, fmtp_of(device)), sources=["stethoscope"])
    await doctor.wait_track(device.participant_id or "", "audio", timeout_s=20)
    rid = started["recording_id"]
    await until_size(recording_dir / "rec" / rid / "00-audio-stethoscope.webm.sealed", 4000)
    status, _ = await server.api("DELETE", "/api/v1/rooms/d")
    assert status in (200, 204)
    for _ in range(100):
        status, body = await server.api("GET", f"/api/v1/rooms/d/recordings/{rid}")
        if body.get("state") == "stopped":
            break
        await asyncio.sleep(0.1)
    assert body["stop_reason"] == "room-closed"
    assert [(t["source"], t["participant_id"]) for t in body["tracks"]] == [
        ("stethoscope", device.participant_id)
    ]


def test_retention_deletes_old_stopped_recordings(recording_dir: Path) -> None:
    from signaling.recordings_api import apply_retention

    base = recording_dir / "rec"
    now = time.time()
    for rid, age_days, state in (
        ("old", 40, "stopped"),
        ("new", 1, "stopped"),
        ("live", 40, "recording"),
    ):
        (base / rid).mkdir()
        manifest = {
            "recording_id": rid,
            "room_id": "r",
            "state": state,
            "started_at": now - age_days * 86400,
        }
        (base / rid / "manifest.json").write_text(json.dumps(manifest))
    assert apply_retention(str(base), 30) == 1  # "live" was written a moment ago: kept
    assert sorted(p.name for p in base.iterdir()) == ["live", "new"]
    old = now - 40 * 86400
    for path in (base / "live", base / "live" / "manifest.json"):
        os.utime(path, (old, old))  # a crash left it "recording", untouched for 40 days
    assert apply_retention(str(base), 30) == 1
    assert [p.name for p in base.iterdir()] == ["new"]


async def test_a_lost_media_worker_stops_its_recording(
    make_server: ServerFactory, clients: Clients, recording_dir: Path
) -> None:
    """The worker process holding the room is killed: the room moves to the other worker, the
    recording is said stopped (error) and what it sealed decrypts."""
    import signal

    from .test_workers import pool_of

    recording = RecordingConfig(
        directory=str(recording_dir / "rec"), key_file=str(recording_dir / "key")
    )
    media = MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",)), recording=recording)
    server = await make_server(media=media, workers=2, peer_timeout_s=30.0)
    doctor, patient = await consult(server, clients, "rec")
    await patient.publish(AudioStreamTrack())
    await doctor.wait_track(patient.participant_id or "", "audio", timeout_s=20)
    rid = await start_recording(doctor, patient)
    _, room = await server.api("GET", "/api/v1/rooms/rec")
    assert room["recording"] == {"policy": "consent", "state": "running", "recording_id": rid}
    await until_size(recording_dir / "rec" / rid / "00-audio-microphone.webm.sealed", 1000)
    victim = pool_of(server).worker_pids()[room["worker"]]
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    for client in (doctor, patient):
        stopped = await client.wait_for("recording", lambda m: m["state"] == "stopped", 30)
        assert (stopped["reason"], stopped["error"]) == ("error", "the media worker was lost")
    _, room = await server.api("GET", "/api/v1/rooms/rec")
    assert room["recording"]["state"] == "idle"
    _, manifest = decrypt(recording_dir, rid)
    assert manifest["state"] == "recording"  # as the worker's death left it
