"""LocalMediaPlane: the media plane in this process, over Node -> Room -> Participant.

The in-process implementation of `mediaserver.api.MediaPlane` (tests, debugging, and the
node today). Commands call the live objects' public methods; queries copy their state into
snapshots; their events are translated into `MediaEvent`s and published to the subscribers,
synchronously and in order. Nothing here is on the packet path: it runs on signaling
messages, state changes and snapshot reads only.

An implementation over IPC to worker processes would run a LocalMediaPlane in each worker
and carry the same commands, events and snapshots (all plain data) over its channel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, TypeVar, cast

from .api import (
    AddCandidate,
    AddIngest,
    AddParticipant,
    BadCommand,
    ClientAnswer,
    ClientOffer,
    CloseConnection,
    CloseParticipant,
    CloseRoom,
    Command,
    ConnectionState,
    CreateRoom,
    DataMessage,
    DeviceState,
    GetParticipant,
    GetRoom,
    MediaPlane,
    ModeChanged,
    NoPort,
    ParticipantClosed,
    ParticipantExists,
    ParticipantKind,
    ParticipantSnapshot,
    PauseChanged,
    PendingOffer,
    PlaneSnapshot,
    Query,
    RecordingError,
    RecordingNote,
    RecordingStopped,
    RequestPublish,
    RestartTransport,
    RoomClosed,
    RoomExists,
    RoomFull,
    RoomSnapshot,
    ServerOffer,
    StartRecording,
    StopRecording,
    TrackPublished,
    TrackSnapshot,
    TrackUnpublished,
    UnknownParticipant,
    UnknownRoom,
    Unsupported,
    WorkerSnapshot,
    check_ingest_sdp,
)
from .config import MediaConfig
from .emitter import Emitter
from .events import CloseReason, LinkStats, Role, TrackInfo
from .ingest import IngestParticipant, parse_sdp
from .node import Node
from .participant import Participant
from .publication import Publication
from .recording import RecordingRequest, RoomRecording, load_factory
from .room import Room

logger = logging.getLogger(__name__)

R = TypeVar("R")


class MediaParticipant(Protocol):
    """What a WebRTC participant and a plain-RTP device have in common (the room's view)."""

    id: str
    role: Role
    publications: dict[str, Publication]

    @property
    def closed(self) -> bool: ...

    @property
    def connection_state(self) -> str: ...

    def info(self) -> dict[str, Any]: ...

    def link_stats(self) -> LinkStats: ...

    async def close(self, reason: CloseReason = CloseReason.LEFT) -> None: ...


class LocalMediaPlane(MediaPlane):
    """The media plane of this process: one Node, its rooms, in the caller's event loop."""

    WORKER: ClassVar[str] = "local"  # the `worker` label of its metrics
    workers: ClassVar[tuple[str, ...]] = (WORKER,)

    def __init__(self, config: MediaConfig | None = None, *, node: Node | None = None) -> None:
        super().__init__()
        self.node = node or Node(config)  # tests reach live objects here, signaling never
        self.recordings: dict[str, RoomRecording] = {}  # room id -> its running recording
        self._stopping: set[asyncio.Task[None]] = set()
        self._recording_counters = {"bytes": 0, "tracks": 0, "dropped": 0, "errors": 0}

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.node.closed

    async def start(self) -> None:
        await self.node.start()

    async def close(self, reason: CloseReason = CloseReason.SHUTDOWN) -> None:
        await self.node.close(reason)  # (each room's close stops its recording)
        while self._stopping:
            await asyncio.gather(*list(self._stopping), return_exceptions=True)

    def ice_servers(self) -> list[dict[str, object]]:
        return self.node.ice_servers()

    # -- commands ---------------------------------------------------------------------------

    async def execute(self, command: Command[R]) -> R:
        handler = _COMMANDS.get(type(command))
        if handler is None:
            raise BadCommand(f"not a media plane command: {type(command).__name__}")
        return cast(R, await handler(self, command))

    async def _create_room(self, cmd: CreateRoom) -> None:
        if cmd.room_id in self.node.rooms:
            raise RoomExists(f"room {cmd.room_id} exists")
        room = self.node.create_room(cmd.room_id, cmd.options)
        rid = room.id
        room.on("track-published", lambda info: self._track_event(room, info, TrackPublished))
        room.on("track-unpublished", lambda info: self._track_event(room, info, TrackUnpublished))
        room.once("close", lambda reason: self.publish(RoomClosed(room_id=rid, reason=reason)))

    async def _close_room(self, cmd: CloseRoom) -> None:
        room = self.node.get_room(cmd.room_id)
        if room is not None:
            await room.close(cmd.reason)

    async def _add_participant(self, cmd: AddParticipant) -> ParticipantSnapshot:
        room = self._room(cmd.room_id)
        self._check_room_has_space(room, cmd.participant_id)
        codecs = frozenset(cmd.video_codecs) if cmd.video_codecs is not None else None
        participant = room.add_participant(cmd.participant_id, role=cmd.role, video_codecs=codecs)
        self._wire(room.id, participant)
        return _participant_snapshot(room.id, participant)

    async def _add_ingest(self, cmd: AddIngest) -> ParticipantSnapshot:
        room = self._room(cmd.room_id)
        check_ingest_sdp(cmd.sdp, cmd.sources)
        media = parse_sdp(cmd.sdp, sources=dict(enumerate(cmd.sources or ())) or None)
        self._check_room_has_space(room, cmd.participant_id)
        ingest = IngestParticipant(cmd.participant_id, room, media)
        room.add_publisher(ingest)
        try:
            await ingest.start(self._ingest_host())
        except OSError as exc:
            await ingest.close(CloseReason.FAILED)
            raise NoPort(f"cannot bind a UDP port: {exc.strerror}") from exc
        self._wire(room.id, ingest)
        return _participant_snapshot(room.id, ingest)

    async def _client_offer(self, cmd: ClientOffer) -> str | None:
        p = self._webrtc(cmd.room_id, cmd.participant_id, "offer")
        return await p.handle_offer(cmd.sdp, dict(cmd.tracks))

    async def _client_answer(self, cmd: ClientAnswer) -> None:
        await self._webrtc(cmd.room_id, cmd.participant_id, "answer").handle_answer(cmd.sdp)

    async def _add_candidate(self, cmd: AddCandidate) -> None:
        p = self._webrtc(cmd.room_id, cmd.participant_id, "trickle candidates")
        await p.add_ice_candidate(cmd.candidate, cmd.sdp_mid)

    async def _request_publish(self, cmd: RequestPublish) -> None:
        if not cmd.tracks:
            raise BadCommand("RequestPublish.tracks must list at least one track")
        p = self._webrtc(cmd.room_id, cmd.participant_id, "request publishing")
        p.request_publish(list(cmd.tracks))

    async def _restart_transport(self, cmd: RestartTransport) -> None:
        await self._webrtc(cmd.room_id, cmd.participant_id, "reconnect").restart_transport()

    async def _close_connection(self, cmd: CloseConnection) -> None:
        p = self._webrtc(cmd.room_id, cmd.participant_id, "close a peer connection")
        await p.close_connection()

    async def _close_participant(self, cmd: CloseParticipant) -> None:
        room = self.node.get_room(cmd.room_id)
        participant = room.participants.get(cmd.participant_id) if room is not None else None
        if participant is not None:
            await participant.close(cmd.reason)

    # -- recording (mediaserver/recording.py, the recorder package) ---------------------

    async def _start_recording(self, cmd: StartRecording) -> str:
        room = self._room(cmd.room_id)
        if cmd.room_id in self.recordings:
            raise RecordingError(f"room {cmd.room_id} is recording already")
        config = self.node.config.recording
        request = RecordingRequest(
            room_id=room.id, recording_id=cmd.recording_id, config=config, audit=cmd.audit
        )
        loop = asyncio.get_running_loop()
        rid = cmd.recording_id

        def failed(message: str) -> None:  # from the recorder's thread
            loop.call_soon_threadsafe(self._recording_failed, room.id, rid, message)

        factory = load_factory(config.backend)
        # its directory, manifest and first files: disk I/O, off the media event loop
        recorder = await asyncio.to_thread(factory, request, failed)
        if room.closed or cmd.room_id in self.recordings:  # meanwhile
            await asyncio.to_thread(recorder.stop, "room-closed")
            raise RecordingError(f"room {cmd.room_id} closed or is recording already")
        sources = frozenset(cmd.sources) if cmd.sources is not None else None
        recording = RoomRecording(room, rid, recorder, sources=sources, on_error=failed)
        self.recordings[room.id] = recording
        try:
            recording.start()
        except ValueError as exc:
            await self._end_recording(recording, "error", str(exc))
            raise RecordingError(str(exc)) from None
        room.once("close", lambda _reason: self._spawn_stop(recording, "room-closed", ""))
        return recorder.key_id

    async def _stop_recording(self, cmd: StopRecording) -> None:
        recording = self.recordings.get(cmd.room_id)
        if recording is not None and recording.recording_id == cmd.recording_id:
            recording.detach()  # no packet from now on, then the last consent steps
            for entry in cmd.audit:
                recording.recorder.note("consent", dict(entry))
            await self._end_recording(recording, cmd.reason, "")

    async def _recording_note(self, cmd: RecordingNote) -> None:
        recording = self.recordings.get(cmd.room_id)
        if recording is not None and recording.recording_id == cmd.recording_id:
            recording.recorder.note(cmd.kind, dict(cmd.data))

    def _recording_failed(self, room_id: str, recording_id: str, message: str) -> None:
        recording = self.recordings.get(room_id)
        if recording is not None and recording.recording_id == recording_id:
            self._spawn_stop(recording, "error", message)

    def _spawn_stop(self, recording: RoomRecording, reason: str, error: str) -> None:
        recording.detach()  # no packet from now on; the files close in the task
        task = asyncio.ensure_future(self._end_recording(recording, reason, error))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _end_recording(self, recording: RoomRecording, reason: str, error: str) -> None:
        room_id = recording.room.id
        if self.recordings.get(room_id) is not recording:
            return  # stopped already
        del self.recordings[room_id]
        try:
            await recording.stop(reason)
        finally:
            for name, value in recording.recorder.counters().items():
                self._recording_counters[name] = self._recording_counters.get(name, 0) + value
            self.publish(
                RecordingStopped(
                    room_id=room_id,
                    recording_id=recording.recording_id,
                    reason=reason,
                    error=error,
                )
            )

    def recording_counters(self) -> dict[str, int]:
        """Recording totals: finished recordings plus the running ones."""
        totals = dict(self._recording_counters)
        for recording in self.recordings.values():
            for name, value in recording.recorder.counters().items():
                totals[name] = totals.get(name, 0) + value
        return totals

    # -- queries ----------------------------------------------------------------------------

    def query(self, query: Query[R]) -> R:
        if isinstance(query, GetParticipant):
            room = self.node.get_room(query.room_id)
            p = room.participants.get(query.participant_id) if room is not None else None
            return cast(R, None if p is None else _participant_snapshot(query.room_id, p))
        if isinstance(query, GetRoom):
            room = self.node.get_room(query.room_id)
            return cast(R, None if room is None else _room_snapshot(room))
        raise BadCommand(f"not a media plane query: {type(query).__name__}")

    def snapshot(self) -> PlaneSnapshot:
        counters = self.node.counters
        ints = {
            f.name: getattr(counters, f.name)
            for f in dataclasses.fields(counters)
            if isinstance(getattr(counters, f.name), int)
        }
        ints.update({f"recording_{k}": v for k, v in self.recording_counters().items()})
        worker = WorkerSnapshot(
            worker=self.WORKER,
            rooms=len(self.node.rooms),
            participants=sum(len(r.participants) for r in self.node.rooms.values()),
            counters=ints,
            mode_transitions=dict(counters.mode_transitions),
            mode_seconds=dict(counters.mode_seconds),
        )
        return PlaneSnapshot(workers=(worker,))

    # -- internals --------------------------------------------------------------------------

    def _room(self, room_id: str) -> Room:
        room = self.node.get_room(room_id)
        if room is None or room.closed:
            raise UnknownRoom(f"no room {room_id}")
        return room

    def _participant(self, room_id: str, participant_id: str) -> MediaParticipant:
        participant = self._room(room_id).participants.get(participant_id)
        if participant is None:
            raise UnknownParticipant(f"no participant {participant_id} in room {room_id}")
        return participant

    def _webrtc(self, room_id: str, participant_id: str, what: str) -> Participant:
        participant = self._participant(room_id, participant_id)
        if not isinstance(participant, Participant):
            raise Unsupported(f"participant {participant_id} is a plain-RTP device: no {what}")
        return participant

    @staticmethod
    def _check_room_has_space(room: Room, participant_id: str) -> None:
        if participant_id in room.participants:
            raise ParticipantExists(f"participant {participant_id} exists")
        if len(room.participants) >= room.options.max_participants:
            raise RoomFull("room is full")

    def _ingest_host(self) -> str:
        hosts = self.node.config.ice.host_addresses
        return hosts[0] if hosts else "0.0.0.0"

    def _wire(self, room_id: str, participant: Emitter) -> None:
        """Translate a participant's events (WebRTC or device: the same names) into events."""
        pid = cast(MediaParticipant, participant).id
        ids = {"room_id": room_id, "participant_id": pid}
        publish = self.publish

        def offer(sdp: str, tracks: dict[str, dict[str, Any]]) -> None:
            state = cast(MediaParticipant, participant).connection_state
            publish(ServerOffer(**ids, sdp=sdp, tracks=tracks, connection=state))

        participant.on("offer", offer)
        participant.on("data", lambda text: publish(DataMessage(**ids, text=text)))
        participant.on(
            "connectionstatechange", lambda state: publish(ConnectionState(**ids, state=state))
        )
        participant.on(
            "mode",
            lambda direction, mode, reason: publish(
                ModeChanged(**ids, direction=direction, mode=mode, reason=reason)
            ),
        )
        participant.on(
            "pause",
            lambda sources, reason: publish(
                PauseChanged(**ids, sources=tuple(sources), reason=reason)
            ),
        )
        participant.on("state", lambda state: publish(DeviceState(**ids, state=state)))
        participant.once("close", lambda reason: publish(ParticipantClosed(**ids, reason=reason)))

    def _track_event(
        self, room: Room, info: TrackInfo, kind: type[TrackPublished | TrackUnpublished]
    ) -> None:
        owner = room.participants.get(info.participant_id)
        pub = owner.publications.get(info.track_id) if owner is not None else None
        track = _track_snapshot(pub) if pub is not None else _track_of_info(info)
        self.publish(kind(room_id=room.id, track=track))


_COMMANDS: dict[type, Callable[[LocalMediaPlane, Any], Any]] = {
    CreateRoom: LocalMediaPlane._create_room,
    CloseRoom: LocalMediaPlane._close_room,
    AddParticipant: LocalMediaPlane._add_participant,
    AddIngest: LocalMediaPlane._add_ingest,
    ClientOffer: LocalMediaPlane._client_offer,
    ClientAnswer: LocalMediaPlane._client_answer,
    AddCandidate: LocalMediaPlane._add_candidate,
    RequestPublish: LocalMediaPlane._request_publish,
    RestartTransport: LocalMediaPlane._restart_transport,
    CloseConnection: LocalMediaPlane._close_connection,
    CloseParticipant: LocalMediaPlane._close_participant,
    StartRecording: LocalMediaPlane._start_recording,
    StopRecording: LocalMediaPlane._stop_recording,
    RecordingNote: LocalMediaPlane._recording_note,
}


# -- snapshots of live objects ----------------------------------------------------------------


def _track_of_info(info: TrackInfo) -> TrackSnapshot:
    return TrackSnapshot(
        track_id=info.track_id,
        participant_id=info.participant_id,
        kind=info.kind,
        source=info.source,
        codec=info.codec,
        mid=info.mid,
    )


def _track_snapshot(pub: Publication) -> TrackSnapshot:
    info = pub.info()
    return dataclasses.replace(
        _track_of_info(info),
        capture=pub.capture.as_dict() if pub.capture is not None else None,
        warnings=tuple(pub.warnings),
    )


def _copy_link(link: LinkStats) -> LinkStats:
    return LinkStats(
        uplink=dataclasses.replace(link.uplink), downlink=dataclasses.replace(link.downlink)
    )


def _participant_snapshot(room_id: str, participant: MediaParticipant) -> ParticipantSnapshot:
    tracks = []
    for pub in list(participant.publications.values()):
        try:
            tracks.append(_track_snapshot(pub))
        except Exception:  # a publication caught mid-close: left out
            logger.debug("track snapshot failed", exc_info=True)
    info = participant.info()
    if isinstance(participant, Participant):
        pending = participant.pending_offer()
        return ParticipantSnapshot(
            room_id=room_id,
            participant_id=participant.id,
            role=participant.role,
            kind=ParticipantKind.WEBRTC,
            connection=participant.connection_state,
            closed=participant.closed,
            tracks=tuple(tracks),
            subscriptions=int(info.get("subscriptions", 0)),
            modes=dict(info.get("modes") or {}),
            paused_sources=tuple(participant.fallback.paused_sources()),
            pause_reason=participant.fallback.pause_reason,
            pending_offer=None
            if pending is None
            else PendingOffer(sdp=pending[0], tracks=pending[1]),
            link=_copy_link(participant.link_stats()),
            transport_restarts=participant.transport_restarts,
        )
    return ParticipantSnapshot(
        room_id=room_id,
        participant_id=participant.id,
        role=participant.role,
        kind=ParticipantKind.INGEST,
        connection=participant.connection_state,
        closed=participant.closed,
        tracks=tuple(tracks),
        subscriptions=0,
        modes=dict(info.get("modes") or {}),
        link=_copy_link(participant.link_stats()),
        ingest=tuple(dict(s) for s in info.get("ingest") or ()),
    )


def _room_snapshot(room: Room) -> RoomSnapshot:
    participants = []
    for p in list(room.participants.values()):
        try:
            participants.append(_participant_snapshot(room.id, p))
        except Exception:  # a participant caught mid-close: left out
            logger.debug("participant snapshot failed", exc_info=True)
    return RoomSnapshot(
        room_id=room.id, video_codec=room.video_codec(), participants=tuple(participants)
    )


__all__ = ["LocalMediaPlane", "MediaParticipant"]
