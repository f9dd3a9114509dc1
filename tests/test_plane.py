"""The media plane's boundary (mediaserver/api.py) and its in-process implementation.

Real aiortc peers that reach the media plane only through commands, queries and events (no
live object): join, publish, decode frames, data channel, close; every command, query result
and event pickles; bad input gets a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
import struct
from collections.abc import AsyncIterator, Callable

import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCBundlePolicy

from mediaserver.api import (
    AddCandidate,
    AddIngest,
    AddParticipant,
    BadCommand,
    ClientAnswer,
    ClientOffer,
    CloseConnection,
    CloseParticipant,
    CloseReason,
    CloseRoom,
    ConnectionState,
    CreateRoom,
    DataMessage,
    DeviceState,
    GetParticipant,
    GetRoom,
    IceConfig,
    IngestError,
    MediaConfig,
    MediaEvent,
    NegotiationError,
    ParticipantClosed,
    ParticipantExists,
    ParticipantKind,
    RequestPublish,
    RestartTransport,
    Role,
    RoomClosed,
    RoomExists,
    RoomFull,
    RoomOptions,
    ServerOffer,
    TrackMeta,
    TrackPublished,
    TrackUnpublished,
    UnknownParticipant,
    UnknownRoom,
    Unsupported,
)
from mediaserver.plane import LocalMediaPlane
from mediaserver.rtc.peer import bundle_data_channel
from tests.media_peers import Received, av_tracks

ROOM = "r"


@pytest.fixture
async def plane() -> AsyncIterator[LocalMediaPlane]:
    plane = LocalMediaPlane(MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",))))
    await plane.start()
    yield plane
    await plane.close()


class Events:
    """Every event of the plane, in order."""

    def __init__(self, plane: LocalMediaPlane) -> None:
        self.seen: list[MediaEvent] = []
        self.unsubscribe = plane.subscribe(self.seen.append)

    def of(self, kind: type[MediaEvent], **fields: object) -> list[MediaEvent]:
        return [
            e
            for e in self.seen
            if isinstance(e, kind) and all(getattr(e, k) == v for k, v in fields.items())
        ]

    async def wait(self, kind: type[MediaEvent], timeout: float = 30, **fields: object) -> None:
        async def poll() -> None:
            while not self.of(kind, **fields):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(poll(), timeout)


class PlanePeer:
    """An aiortc client whose signaling is the plane's commands and events (what signaling/
    does for a WebSocket client)."""

    def __init__(self, plane: LocalMediaPlane, participant_id: str) -> None:
        self.plane = plane
        self.id = participant_id
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self.channel = self.pc.createDataChannel("consult", negotiated=True, id=0)
        bundle_data_channel(self.pc)
        self.received: list[Received] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self.unsubscribe = plane.subscribe(self._on_event)
        self.pc.on("track", self._on_track)

    def _on_event(self, event: MediaEvent) -> None:
        if isinstance(event, ServerOffer) and event.participant_id == self.id:
            self._tasks.append(asyncio.ensure_future(self._answer(event.sdp)))

    async def _answer(self, sdp: str) -> None:
        async with self._lock:
            if self.pc.connectionState == "closed":
                return
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            with contextlib.suppress(UnknownParticipant, UnknownRoom, NegotiationError):
                await self.plane.execute(
                    ClientAnswer(
                        room_id=ROOM, participant_id=self.id, sdp=self.pc.localDescription.sdp
                    )
                )

    async def publish(self, tracks: dict[str, MediaStreamTrack]) -> None:
        async with self._lock:
            for track in tracks.values():
                self.pc.addTransceiver(track, direction="sendonly")
            await self.pc.setLocalDescription(await self.pc.createOffer())
            meta = {
                t.mid: TrackMeta(kind=track.kind, source=source)
                for t in self.pc.getTransceivers()
                for source, track in tracks.items()
                if t.sender.track is track and t.mid is not None
            }
            offer = ClientOffer(
                room_id=ROOM, participant_id=self.id, sdp=self.pc.localDescription.sdp, tracks=meta
            )
            answer = await self.plane.execute(offer)
            assert answer is not None
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    def _on_track(self, track: MediaStreamTrack) -> None:
        item = Received(kind=track.kind, track=track)
        self.received.append(item)
        self._tasks.append(asyncio.ensure_future(self._read(item)))

    async def _read(self, item: Received) -> None:
        while True:
            try:
                await item.track.recv()
            except Exception:
                return
            item.frames += 1

    async def wait_frames(self, kind: str, count: int, timeout: float = 30) -> None:
        async def poll() -> None:
            while not any(r.kind == kind and r.frames >= count for r in self.received):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(poll(), timeout)

    async def close(self) -> None:
        self.unsubscribe()
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


async def _until(predicate: Callable[[], bool], timeout: float = 30) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


async def test_two_peers_through_commands_queries_and_events(plane: LocalMediaPlane) -> None:
    events = Events(plane)
    await plane.execute(CreateRoom(room_id=ROOM))
    added = await plane.execute(AddParticipant(room_id=ROOM, participant_id="d", role=Role.DOCTOR))
    assert added.kind is ParticipantKind.WEBRTC and added.connection == "new" and not added.tracks
    await plane.execute(AddParticipant(room_id=ROOM, participant_id="p", role=Role.PATIENT))
    doctor, patient = PlanePeer(plane, "d"), PlanePeer(plane, "p")
    try:
        await doctor.publish(av_tracks())
        # the media path: the patient decodes the doctor's frames, forwarded by the node
        await patient.wait_frames("video", 3)
        await patient.wait_frames("audio", 3)
        await events.wait(ConnectionState, participant_id="d", state="connected")
        await events.wait(ConnectionState, participant_id="p", state="connected")
        published = events.of(TrackPublished, room_id=ROOM)
        assert {e.track.source for e in published} == {"microphone", "camera"}  # type: ignore[attr-defined]
        offers = events.of(ServerOffer, participant_id="p")
        assert offers and offers[0].connection == "new"  # type: ignore[attr-defined]

        room = plane.query(GetRoom(room_id=ROOM))
        assert room is not None and room.video_codec == "VP8"
        assert {t.source for t in room.tracks} == {"microphone", "camera"}
        d = plane.participant(ROOM, "d")
        p = plane.participant(ROOM, "p")
        assert d is not None and p is not None
        assert d.connection == "connected" and d.subscriptions == 0 and len(d.tracks) == 2
        assert p.subscriptions == 2 and not p.tracks and p.pending_offer is None
        assert d.modes == {"uplink": "video", "downlink": "video"}
        assert plane.query(GetParticipant(room_id=ROOM, participant_id="x")) is None
        assert plane.room("nope") is None
        for snapshot in (room, d, p):  # plain data: a worker process could send it
            assert pickle.loads(pickle.dumps(snapshot)) == snapshot

        # the data channel: what a client sends arrives as an event
        await _until(lambda: doctor.channel.readyState == "open")
        doctor.channel.send('{"type":"chat","text":"hello"}')
        await events.wait(DataMessage, participant_id="d")

        worker = plane.snapshot().workers[0]
        assert worker.worker == "local" and worker.rooms == 1 and worker.participants == 2
        assert worker.counters["packets_forwarded"] > 0

        # closing: the participant, then its tracks' subscribers see them go
        await plane.execute(CloseParticipant(room_id=ROOM, participant_id="d"))
        await plane.execute(CloseParticipant(room_id=ROOM, participant_id="d"))  # idempotent
        closed = events.of(ParticipantClosed, participant_id="d")
        assert [e.reason for e in closed] == [CloseReason.LEFT]  # type: ignore[attr-defined]
        assert len(events.of(TrackUnpublished, room_id=ROOM)) == 2
        assert plane.participant(ROOM, "d") is None
        await plane.execute(CloseRoom(room_id=ROOM, reason=CloseReason.ENDED))
        await plane.execute(CloseRoom(room_id=ROOM))  # idempotent
        assert events.of(ParticipantClosed, participant_id="p", reason=CloseReason.ENDED)
        assert events.of(RoomClosed, room_id=ROOM, reason=CloseReason.ENDED)
        assert plane.room(ROOM) is None and plane.snapshot().workers[0].rooms == 0
        for event in events.seen:
            assert pickle.loads(pickle.dumps(event)) == event
    finally:
        await doctor.close()
        await patient.close()


async def test_restart_and_close_connection(plane: LocalMediaPlane) -> None:
    """RestartTransport: a fresh connection ("new") and a server offer on it; CloseConnection
    closes the connection alone."""
    events = Events(plane)
    await plane.execute(CreateRoom(room_id=ROOM))
    await plane.execute(AddParticipant(room_id=ROOM, participant_id="d", role=Role.DOCTOR))
    await plane.execute(
        RequestPublish(room_id=ROOM, participant_id="d", tracks=(TrackMeta.default("audio"),))
    )
    await events.wait(ServerOffer, participant_id="d")
    snapshot = plane.participant(ROOM, "d")
    assert snapshot is not None and snapshot.pending_offer is not None
    assert snapshot.pending_offer.tracks  # the recvonly m-line for the requested track
    await plane.execute(RestartTransport(room_id=ROOM, participant_id="d"))
    await events.wait(ConnectionState, participant_id="d", state="new")
    await _until(lambda: len(events.of(ServerOffer, participant_id="d")) >= 2)
    snapshot = plane.participant(ROOM, "d")
    assert snapshot is not None and snapshot.transport_restarts == 1
    await plane.execute(CloseConnection(room_id=ROOM, participant_id="d"))
    await events.wait(ConnectionState, participant_id="d", state="closed")
    snapshot = plane.participant(ROOM, "d")
    assert snapshot is not None and not snapshot.closed  # the participant stays


def _sdp_opus() -> str:
    return (
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=device\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 5004 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n"
    )


async def test_a_device_is_a_participant_like_any_other(plane: LocalMediaPlane) -> None:
    """One participant interface: a plain-RTP device is addressed and described like a WebRTC
    participant; negotiation commands are refused with Unsupported."""
    events = Events(plane)
    await plane.execute(CreateRoom(room_id=ROOM))
    device = await plane.execute(
        AddIngest(room_id=ROOM, participant_id="dev", sdp=_sdp_opus(), sources=("stethoscope",))
    )
    assert device.kind is ParticipantKind.INGEST and device.role is Role.DEVICE
    assert device.connection == "waiting" and [t.source for t in device.tracks] == ["stethoscope"]
    port = device.ingest[0]["port"]
    assert isinstance(port, int) and port > 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for seq in range(20):
            header = struct.pack("!BBHII", 0x80, 111, seq, seq * 960, 0x1234)
            sock.sendto(header + os.urandom(60), ("127.0.0.1", port))
    await events.wait(DeviceState, participant_id="dev", state="receiving")
    snapshot = plane.participant(ROOM, "dev")
    assert snapshot is not None and snapshot.connection == "receiving"
    assert snapshot.ingest[0]["packets"] >= 1
    with pytest.raises(Unsupported, match="plain-RTP device"):
        await plane.execute(ClientOffer(room_id=ROOM, participant_id="dev", sdp="v=0", tracks={}))
    with pytest.raises(Unsupported):
        await plane.execute(RestartTransport(room_id=ROOM, participant_id="dev"))
    await plane.execute(CloseParticipant(room_id=ROOM, participant_id="dev"))
    assert events.of(ParticipantClosed, participant_id="dev")
    assert plane.participant(ROOM, "dev") is None


async def test_bad_input_gets_clear_errors(plane: LocalMediaPlane) -> None:
    # fields are checked on construction, with the field's name
    with pytest.raises(BadCommand, match=r"ClientOffer\.sdp must be str, not int"):
        ClientOffer(room_id=ROOM, participant_id="d", sdp=3, tracks={})  # type: ignore[arg-type]
    with pytest.raises(BadCommand, match=r"AddParticipant\.role"):
        AddParticipant(room_id=ROOM, participant_id="d", role="doctor")  # type: ignore[arg-type]
    with pytest.raises(BadCommand, match=r"AddParticipant\.room_id must be 1-128"):
        AddParticipant(room_id="", participant_id="d", role=Role.DOCTOR)
    with pytest.raises(BadCommand, match=r"RequestPublish\.tracks"):
        RequestPublish(room_id=ROOM, participant_id="d", tracks=[TrackMeta.default("audio")])  # type: ignore[arg-type]
    with pytest.raises(BadCommand, match=r"AddCandidate\.candidate"):
        AddCandidate(room_id=ROOM, participant_id="d", candidate=5, sdp_mid=None)  # type: ignore[arg-type]
    with pytest.raises(BadCommand, match="not a media plane command"):
        await plane.execute(GetRoom(room_id=ROOM))  # type: ignore[arg-type]
    with pytest.raises(BadCommand, match="not a media plane query"):
        plane.query(CreateRoom(room_id=ROOM))  # type: ignore[arg-type]

    # the objects a command names must exist, and not twice
    with pytest.raises(UnknownRoom):
        await plane.execute(AddParticipant(room_id="nope", participant_id="d", role=Role.DOCTOR))
    await plane.execute(CreateRoom(room_id=ROOM, options=RoomOptions(max_participants=1)))
    with pytest.raises(RoomExists):
        await plane.execute(CreateRoom(room_id=ROOM))
    with pytest.raises(UnknownParticipant):
        await plane.execute(ClientAnswer(room_id=ROOM, participant_id="x", sdp="v=0"))
    await plane.execute(AddParticipant(room_id=ROOM, participant_id="d", role=Role.DOCTOR))
    with pytest.raises(ParticipantExists):
        await plane.execute(AddParticipant(room_id=ROOM, participant_id="d", role=Role.DOCTOR))
    with pytest.raises(RoomFull):
        await plane.execute(AddParticipant(room_id=ROOM, participant_id="p", role=Role.PATIENT))
    with pytest.raises(IngestError, match="not an SDP"):
        await plane.execute(AddIngest(room_id=ROOM, participant_id="dev", sdp="hello"))

    # a broken SDP or an answer with no offer: NegotiationError, the participant stays usable
    with pytest.raises(NegotiationError):
        await plane.execute(ClientOffer(room_id=ROOM, participant_id="d", sdp="v=0", tracks={}))
    with pytest.raises(NegotiationError):
        await plane.execute(ClientAnswer(room_id=ROOM, participant_id="d", sdp="v=0\r\n"))
    snapshot = plane.participant(ROOM, "d")
    assert snapshot is not None and not snapshot.closed
    # closing what is gone does nothing
    await plane.execute(CloseParticipant(room_id=ROOM, participant_id="x"))
    await plane.execute(CloseRoom(room_id="nope"))


def test_every_command_and_event_pickles() -> None:
    meta = TrackMeta(kind="audio", source="stethoscope", channels=2)
    items: list[object] = [
        CreateRoom(room_id=ROOM, options=RoomOptions(video_codec="H264")),
        AddParticipant(room_id=ROOM, participant_id="p", role=Role.PATIENT, video_codecs=("VP8",)),
        AddIngest(room_id=ROOM, participant_id="p", sdp="v=0", sources=("stethoscope",)),
        ClientOffer(room_id=ROOM, participant_id="p", sdp="v=0", tracks={"0": meta}),
        ClientAnswer(room_id=ROOM, participant_id="p", sdp="v=0"),
        AddCandidate(room_id=ROOM, participant_id="p", candidate=None, sdp_mid=None),
        RequestPublish(room_id=ROOM, participant_id="p", tracks=(meta,)),
        RestartTransport(room_id=ROOM, participant_id="p"),
        CloseConnection(room_id=ROOM, participant_id="p"),
        CloseParticipant(room_id=ROOM, participant_id="p", reason=CloseReason.KICKED),
        CloseRoom(room_id=ROOM),
        GetParticipant(room_id=ROOM, participant_id="p"),
        GetRoom(room_id=ROOM),
        ServerOffer(room_id=ROOM, participant_id="p", sdp="v=0", tracks={}, connection="new"),
        DeviceState(room_id=ROOM, participant_id="p", state="stalled"),
        RoomClosed(room_id=ROOM, reason=CloseReason.SHUTDOWN),
    ]
    for item in items:
        assert pickle.loads(pickle.dumps(item)) == item


def test_signaling_imports_only_the_boundary() -> None:
    """signaling/ reaches the media plane through mediaserver.api only (app.py picks the
    implementation; the Python client's aiortc seam, mediaserver.rtc, is client code; the log
    format, mediaserver.logs, is the workers' too), and api.py exports no live media object."""
    import ast
    from pathlib import Path

    import mediaserver.api as api

    assert not {"Node", "Room", "Participant", "IngestParticipant"} & set(api.__all__)
    root = Path(__file__).parent.parent / "signaling"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mediaserver"):
                module = node.module or ""
                allowed = (
                    module == "mediaserver.api"
                    # how records are written, shared with the media workers: no media object
                    or module == "mediaserver.logs"
                    or (
                        path.name == "app.py"
                        and module in ("mediaserver.plane", "mediaserver.workers")
                    )
                    or (path.name == "client.py" and module.startswith("mediaserver.rtc."))
                )
                assert allowed, f"{path.name} imports {module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("mediaserver") for a in node.names), path.name
