"""WorkerPool: the media plane in worker processes (`--workers N`), for the control process.

Each worker (`python -m mediaserver.worker`, mediaserver/worker.py) runs a LocalMediaPlane
with its own event loop and slice of the UDP port range, and owns whole rooms. The pool
implements `MediaPlane` over one stream socket per worker (length-prefixed pickle frames, one
reader task each; nothing per packet):

- placement: a room goes to the live worker with the fewest rooms (then the lowest packet
  rate, then participants, from its heartbeats) when it is created; every later command for
  it goes to that worker and its reply is awaited (errors come back as the same
  MediaPlaneError types);
- queries are answered from a mirror of the rooms' snapshots, which the workers send with
  every event and reply (before them) and every `refresh_s`;
- events are fanned in, in each worker's order; `snapshot()` has one `worker` label a worker;
- faults: a worker that exits, closes its channel or misses heartbeats for
  `heartbeat_timeout_s` (hung, stopped) is killed; commands in flight to it fail with
  `WorkerLost`; its rooms are created again on a live worker (same options) with their WebRTC
  participants added again (what they published, by offer or RequestPublish, requested again;
  their connection closed) and each participant gets `MediaLost` (signaling tells its client
  to start a fresh media connection); plain-RTP devices (their UDP ports died with the worker) get
  `ParticipantClosed(FAILED)`. The worker is restarted under the same name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from .api import (
    AddIngest,
    AddParticipant,
    BadCommand,
    ClientOffer,
    CloseConnection,
    CloseParticipant,
    CloseRoom,
    Command,
    CreateRoom,
    GetParticipant,
    GetRoom,
    MediaEvent,
    MediaLost,
    MediaPlane,
    MediaPlaneError,
    ParticipantClosed,
    ParticipantSnapshot,
    PlaneSnapshot,
    Query,
    RequestPublish,
    RoomClosed,
    RoomExists,
    RoomSnapshot,
    UnknownRoom,
    WorkerLost,
    WorkerSnapshot,
)
from .config import MediaConfig
from .events import CloseReason, LinkStats, TrackMeta
from .logs import current_format
from .room import RoomOptions
from .worker import encode_frame, read_frame

logger = logging.getLogger(__name__)

R = TypeVar("R")

START_TIMEOUT_S = 60.0  # a worker's imports and start on a slow machine
RECOVERY_TIMEOUT_S = 60.0  # commands for a room being moved wait this long for it
CLOSE_TIMEOUT_S = 5.0


def port_slices(config: MediaConfig, count: int) -> list[MediaConfig]:
    """One MediaConfig per worker, each with its own slice of the UDP port range."""
    ice = config.ice
    if not ice.min_port:
        return [config] * count
    total = ice.max_port - ice.min_port + 1
    size = total // count
    if size < 1:
        raise ValueError(
            f"the port range {ice.min_port}-{ice.max_port} is too small for {count} workers"
        )
    out = []
    for i in range(count):
        low = ice.min_port + i * size
        high = ice.max_port if i == count - 1 else low + size - 1
        out.append(
            dataclasses.replace(config, ice=dataclasses.replace(ice, min_port=low, max_port=high))
        )
    return out


class _Worker:
    """One worker process and its channel."""

    def __init__(self, name: str, config: MediaConfig) -> None:
        self.name = name
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.pending: dict[int, asyncio.Future[tuple[bool, Any]]] = {}
        self.alive = False
        self.last_seen = time.monotonic()
        self.snapshot: WorkerSnapshot | None = None
        self.packet_rate = 0.0  # packets in per second, from its heartbeats (smoothed)
        self._rate_at = (0.0, 0)  # (monotonic, packets_in) of the last heartbeat
        self.started = 0  # how many times it was started

    def beat(self, snapshot: WorkerSnapshot) -> None:
        now, packets = time.monotonic(), snapshot.counters.get("packets_in", 0)
        then, before = self._rate_at
        if then and now > then and packets >= before:
            rate = (packets - before) / (now - then)
            self.packet_rate += 0.3 * (rate - self.packet_rate)
        self._rate_at = (now, packets)
        self.snapshot = snapshot

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def send(self, frame: object) -> None:
        if self.writer is None or self.writer.is_closing():
            raise WorkerLost(f"media worker {self.name} is gone")
        self.writer.write(encode_frame(frame))


@dataclass(eq=False)
class _Member:
    """What it takes to add a participant again on another worker."""

    add: AddParticipant | None  # None: a plain-RTP device (not moved)
    publish: list[TrackMeta] = field(default_factory=list)  # RequestPublish, in order
    offered: dict[str, TrackMeta] = field(default_factory=dict)  # its last ClientOffer's

    def tracks(self) -> tuple[TrackMeta, ...]:
        """What it publishes, to request again: its last offer's tracks, then those it asked
        for with RequestPublish that the offer does not list (by kind and source)."""
        out = list(self.offered.values())
        listed = [(t.kind, t.source) for t in out]
        for meta in self.publish:
            key = (meta.kind, meta.source)
            if key in listed:
                listed.remove(key)
            else:
                out.append(meta)
        return tuple(out)


@dataclass(eq=False)
class _Room:
    room_id: str
    options: RoomOptions
    worker: _Worker
    members: dict[str, _Member] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # clear: being created or moved
    created: bool = False  # its CreateRoom succeeded (a room lost while created is not moved)


class WorkerPool(MediaPlane):
    """N media worker processes behind the MediaPlane interface (see the module doc)."""

    def __init__(
        self,
        config: MediaConfig | None = None,
        count: int = 2,
        *,
        heartbeat_s: float = 0.5,
        heartbeat_timeout_s: float = 3.0,
        refresh_s: float = 1.0,
    ) -> None:
        super().__init__()
        if count < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.config = config or MediaConfig()
        self.heartbeat_s = heartbeat_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.refresh_s = refresh_s
        configs = port_slices(self.config, count)
        self._workers = [_Worker(f"w{i}", configs[i]) for i in range(count)]
        self._rooms: dict[str, _Room] = {}
        self._mirror: dict[str, tuple[RoomSnapshot, dict[str, ParticipantSnapshot]]] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._monitor: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._live = asyncio.Event()  # set while at least one worker is up
        self.restarts = 0

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def ready(self) -> bool:
        return not self._closed and any(w.alive for w in self._workers)

    def worker_pids(self) -> dict[str, int | None]:
        """name -> pid of the live workers' processes (None: down)."""
        return {w.name: w.pid if w.alive else None for w in self._workers}

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await asyncio.gather(*(self._start_worker(w) for w in self._workers))
        self._monitor = asyncio.create_task(self._watch())

    async def _start_worker(self, worker: _Worker) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mediaserver.worker",
                "--fd",
                str(child.fileno()),
                "--parent",
                str(os.getpid()),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        worker.proc = proc
        worker.writer = None
        worker.started += 1
        try:
            reader, writer = await asyncio.open_unix_connection(sock=parent)
            worker.writer = writer
            level = logging.getLogger().getEffectiveLevel()  # the worker logs as we do
            init = (worker.name, worker.config, self.refresh_s, self.heartbeat_s, level)
            writer.write(encode_frame(("init", *init, current_format())))
            frame = await asyncio.wait_for(read_frame(reader), START_TIMEOUT_S)
            if frame[0] != "ready":
                raise RuntimeError(f"media worker {worker.name} said {frame[0]!r}")
        except BaseException:
            if worker.writer is not None:
                worker.writer.close()
            else:
                parent.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        worker.snapshot = frame[2]
        worker.packet_rate, worker._rate_at = 0.0, (0.0, 0)
        worker.pending = {}
        worker.last_seen = time.monotonic()
        worker.alive = True
        self._live.set()
        worker.reader_task = asyncio.create_task(self._read(worker, reader))
        logger.info("media worker %s started (pid %d)", worker.name, proc.pid)

    async def close(self, reason: CloseReason = CloseReason.SHUTDOWN) -> None:
        if self._closed:
            return
        self._closed = True
        if self._monitor is not None:
            self._monitor.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._stop_worker(w, reason) for w in self._workers))
        self._rooms.clear()
        self._mirror.clear()

    async def _stop_worker(self, worker: _Worker, reason: CloseReason) -> None:
        proc = worker.proc
        if proc is None:
            return
        if worker.alive:
            with contextlib.suppress(Exception):
                worker.send(("close", reason))
            try:
                await asyncio.wait_for(proc.wait(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                logger.warning("media worker %s did not stop: killed", worker.name)
        self._down(worker)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if worker.reader_task is not None:
            worker.reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker.reader_task

    def ice_servers(self) -> list[dict[str, object]]:
        return [s.as_dict() for s in self.config.ice.ice_servers]

    # -- the channel ------------------------------------------------------------------------

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                frame = await read_frame(reader)
                worker.last_seen = time.monotonic()
                kind = frame[0]
                if kind == "events":
                    self._apply(worker, frame[2])
                    for event in frame[1]:
                        self._on_event(worker, event)
                elif kind == "reply":
                    _, ref, ok, value, rooms = frame
                    self._apply(worker, rooms)
                    future = worker.pending.pop(ref, None)
                    if future is not None and not future.done():
                        future.set_result((ok, value))
                        # The caller resumes before the next frame's events are delivered
                        # (api.MediaPlane, "Ordering": signaling registers a session once
                        # AddParticipant returned); its wake-up is already queued.
                        await asyncio.sleep(0)
                elif kind == "beat":
                    worker.beat(frame[1])
                    self._apply(worker, frame[2])
        except (EOFError, ConnectionError, OSError) as exc:
            if worker.alive:
                self._lost(worker, f"channel closed ({exc})")
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("media worker %s: bad frame", worker.name)
            self._lost(worker, "bad frame")

    def _apply(self, worker: _Worker, rooms: dict[str, RoomSnapshot | None]) -> None:
        """Mirror the snapshots of the rooms the worker holds (not those moved away)."""
        for room_id, snapshot in rooms.items():
            room = self._rooms.get(room_id)
            if room is None or room.worker is not worker:
                continue
            if snapshot is None:
                self._mirror.pop(room_id, None)
            else:
                index = {p.participant_id: p for p in snapshot.participants}
                self._mirror[room_id] = (snapshot, index)

    def _on_event(self, worker: _Worker, event: MediaEvent) -> None:
        room = self._rooms.get(event.room_id)
        if room is not None and room.worker is worker:
            if isinstance(event, ParticipantClosed):
                room.members.pop(event.participant_id, None)
            elif isinstance(event, RoomClosed):
                del self._rooms[event.room_id]
                self._mirror.pop(event.room_id, None)
        self.publish(event)

    async def _call(self, worker: _Worker, frame_kind: str, payload: object) -> Any:
        if not worker.alive:
            raise WorkerLost(f"media worker {worker.name} is gone")
        ref = next(self._ids)
        future: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        worker.pending[ref] = future
        try:
            worker.send((frame_kind, ref, payload))
        except Exception:
            worker.pending.pop(ref, None)
            raise
        ok, value = await future
        if not ok:
            raise value
        return value

    # -- commands ---------------------------------------------------------------------------

    async def execute(self, command: Command[R]) -> R:
        if not isinstance(command, Command):
            raise BadCommand(f"not a media plane command: {type(command).__name__}")
        if self._closed:
            raise MediaPlaneError("the media plane is closed")
        if isinstance(command, CreateRoom):
            await self._create_room(command)
            return cast(R, None)
        room_id: str = getattr(command, "room_id")  # noqa: B009 (every command has one)
        room = self._rooms.get(room_id)
        if room is None:
            if isinstance(command, (CloseRoom, CloseParticipant)):
                return cast(R, None)  # idempotent
            raise UnknownRoom(f"no room {room_id}")
        if not room.ready.is_set():
            try:
                await asyncio.wait_for(room.ready.wait(), RECOVERY_TIMEOUT_S)
            except TimeoutError:
                raise WorkerLost(f"room {room_id} is being moved to another worker") from None
        try:
            result = await self._call(room.worker, "cmd", command)
        except WorkerLost:
            if not isinstance(command, (CloseRoom, CloseParticipant)):
                raise
            # The worker went away with the close in flight: its media went with it, and the
            # close holds (the room is not moved with what was closed). Idempotent: no error.
            result = None
            if isinstance(command, CloseRoom):
                room.ready.set()  # commands waiting on the move find the room gone
        self._record(room, command, result)
        return cast(R, result)

    async def _create_room(self, command: CreateRoom) -> None:
        if command.room_id in self._rooms:
            raise RoomExists(f"room {command.room_id} exists")
        worker = self._least_loaded()
        if worker is None:
            raise WorkerLost("no media worker is up")
        room = _Room(command.room_id, command.options, worker)
        self._rooms[command.room_id] = room  # before the await: one create per id
        try:
            await self._call(worker, "cmd", command)
        except BaseException:
            if self._rooms.get(command.room_id) is room:
                del self._rooms[command.room_id]
                self._mirror.pop(command.room_id, None)
            raise
        room.created = True
        room.ready.set()

    def _record(self, room: _Room, command: Command[Any], result: object) -> None:
        """What the pool must know to move the room: its participants and their requests."""
        if isinstance(command, AddParticipant):
            room.members[command.participant_id] = _Member(add=command)
        elif isinstance(command, AddIngest):
            room.members[command.participant_id] = _Member(add=None)
        elif isinstance(command, RequestPublish):
            member = room.members.get(command.participant_id)
            if member is not None:
                member.publish.extend(command.tracks)
        elif isinstance(command, ClientOffer) and result is not None:
            member = room.members.get(command.participant_id)
            if member is not None:  # an offer lists every track the client sends
                member.offered = dict(command.tracks)
        elif isinstance(command, CloseParticipant):
            room.members.pop(command.participant_id, None)
        elif isinstance(command, CloseRoom):
            if self._rooms.get(room.room_id) is room:
                del self._rooms[room.room_id]
                self._mirror.pop(room.room_id, None)

    def _least_loaded(self) -> _Worker | None:
        live = [w for w in self._workers if w.alive]
        if not live:
            return None

        def load(worker: _Worker) -> tuple[int, float, int]:
            rooms = sum(1 for r in self._rooms.values() if r.worker is worker)
            participants = worker.snapshot.participants if worker.snapshot is not None else 0
            return rooms, worker.packet_rate, participants

        return min(live, key=load)

    # -- queries ----------------------------------------------------------------------------

    def query(self, query: Query[R]) -> R:
        if isinstance(query, GetParticipant):
            entry = self._mirror.get(query.room_id)
            return cast(R, entry[1].get(query.participant_id) if entry is not None else None)
        if isinstance(query, GetRoom):
            entry = self._mirror.get(query.room_id)
            return cast(R, entry[0] if entry is not None else None)
        raise BadCommand(f"not a media plane query: {type(query).__name__}")

    def snapshot(self) -> PlaneSnapshot:
        return PlaneSnapshot(
            workers=tuple(w.snapshot for w in self._workers if w.alive and w.snapshot is not None)
        )

    def room_worker(self, room_id: str) -> str | None:
        room = self._rooms.get(room_id)
        return room.worker.name if room is not None else None

    # -- faults -----------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Heartbeats and exits: a worker silent for heartbeat_timeout_s is lost."""
        interval = min(0.5, self.heartbeat_timeout_s / 4)
        while not self._closed:
            before = time.monotonic()
            await asyncio.sleep(interval)
            now = time.monotonic()
            if now - before > interval + 1.0:
                continue  # this loop stalled: the readers may hold heartbeats not yet read
            for worker in self._workers:
                if not worker.alive:
                    continue
                proc = worker.proc
                if proc is not None and proc.returncode is not None:
                    self._lost(worker, f"exited ({proc.returncode})")
                elif now - worker.last_seen > self.heartbeat_timeout_s:
                    self._lost(worker, f"no heartbeat for {now - worker.last_seen:.1f}s")

    def _down(self, worker: _Worker) -> None:
        worker.alive = False
        if worker.writer is not None:
            worker.writer.close()
        for future in worker.pending.values():
            if not future.done():
                future.set_result((False, WorkerLost(f"media worker {worker.name} went away")))
        worker.pending = {}
        if not any(w.alive for w in self._workers):
            self._live.clear()

    def _lost(self, worker: _Worker, why: str) -> None:
        if not worker.alive or self._closed:
            return
        logger.error("media worker %s (pid %s) lost: %s", worker.name, worker.pid, why)
        self._down(worker)
        if worker.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()  # a hung or stopped one too (SIGKILL works on both)
        if worker.reader_task is not None and worker.reader_task is not asyncio.current_task():
            worker.reader_task.cancel()
        rooms = [r for r in self._rooms.values() if r.worker is worker and r.created]
        for room in rooms:
            room.ready.clear()
            self._connections_gone(room.room_id)
        self._spawn(self._restart(worker))
        for room in rooms:
            self._spawn(self._move(room))

    def _connections_gone(self, room_id: str) -> None:
        """The mirror of a room whose worker is lost: no connection, no offer pending, until
        the worker that takes the room sends its snapshot."""
        entry = self._mirror.get(room_id)
        if entry is None:
            return
        participants = tuple(
            dataclasses.replace(p, connection="closed", pending_offer=None, link=LinkStats())
            for p in entry[0].participants
        )
        snapshot = dataclasses.replace(entry[0], participants=participants)
        self._mirror[room_id] = (snapshot, {p.participant_id: p for p in participants})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("worker pool task failed: %r", task.exception())

    async def _restart(self, worker: _Worker) -> None:
        if worker.proc is not None:
            await worker.proc.wait()  # its UDP ports are free again
        delay = 0.5
        while not self._closed:
            try:
                await self._start_worker(worker)
                self.restarts += 1
                return
            except Exception as exc:
                logger.error("media worker %s did not start again: %r", worker.name, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _move(self, room: _Room) -> None:
        """Create the room again on a live worker, its participants without connections."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while not self._closed and self._rooms.get(room.room_id) is room:
            target = self._least_loaded()
            if target is None:
                if time.monotonic() > deadline:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._live.wait(), 1.0)
                continue
            room.worker = target  # its events and snapshots count from now on
            batch: list[Command[Any]] = [CreateRoom(room_id=room.room_id, options=room.options)]
            moved: list[str] = []
            for pid, member in room.members.items():
                if member.add is None:
                    continue
                moved.append(pid)
                batch.append(member.add)
                tracks = member.tracks()
                if tracks:
                    batch.append(
                        RequestPublish(room_id=room.room_id, participant_id=pid, tracks=tracks)
                    )
                batch.append(CloseConnection(room_id=room.room_id, participant_id=pid))
            try:
                results = await self._call(target, "batch", batch)
            except WorkerLost:
                continue  # that one went too: another
            if self._rooms.get(room.room_id) is not room:
                # Closed meanwhile (a CloseRoom in flight to the lost worker): what this move
                # created on the target is closed too.
                with contextlib.suppress(MediaPlaneError):
                    await self._call(target, "cmd", CloseRoom(room_id=room.room_id))
                return
            if not results[0][0]:
                logger.error("room %s not created again: %r", room.room_id, results[0][1])
                break
            added = {
                cast(AddParticipant, cmd).participant_id
                for cmd, (ok, _) in zip(batch, results, strict=True)
                if ok and isinstance(cmd, AddParticipant)
            }
            room.ready.set()
            logger.warning(
                "room %s moved to media worker %s (%d participants)",
                room.room_id,
                target.name,
                len(added),
            )
            for pid in list(room.members):
                if pid in added:
                    self.publish(
                        MediaLost(room_id=room.room_id, participant_id=pid, reason="worker-lost")
                    )
                else:  # a device (its ports are gone) or one that could not be added
                    room.members.pop(pid, None)
                    self.publish(
                        ParticipantClosed(
                            room_id=room.room_id, participant_id=pid, reason=CloseReason.FAILED
                        )
                    )
            return
        # No worker took it: the room is gone.
        if self._rooms.get(room.room_id) is room:
            del self._rooms[room.room_id]
            self._mirror.pop(room.room_id, None)
            room.ready.set()
            for pid in list(room.members):
                self.publish(
                    ParticipantClosed(
                        room_id=room.room_id, participant_id=pid, reason=CloseReason.FAILED
                    )
                )
            self.publish(RoomClosed(room_id=room.room_id, reason=CloseReason.FAILED))


__all__ = ["WorkerPool", "port_slices"]
