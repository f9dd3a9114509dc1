"""Hub: the node's consultations, the media plane, resume tokens and background tasks."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any

import aiohttp

from mediaserver.api import CloseReason, CloseRoom, CreateRoom, MediaEvent, MediaPlane

from .auth import CLOCK_LEEWAY_S, ResumeTokens
from .config import ServerConfig
from .consultation import Consultation, ConsultationOptions, RoomUnavailable
from .fleet import HEARTBEAT_S, Fleet, FleetUnavailable, LocalFleet, NodeInfo, Placement
from .metrics import Metrics

logger = logging.getLogger(__name__)

ROOM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def new_room_id() -> str:
    return "r_" + secrets.token_hex(6)


class Draining(Exception):
    """The node refuses new rooms."""


class RoomExists(Exception):
    pass


class RoomEnded(Exception):
    """The room was ended: its id is not created again by a join."""


class EndedRooms:
    """Ids of rooms ended on purpose: their tokens are refused (close 4005) and no join
    creates them again, for `keep_s` (at least the longest token lifetime) and at most
    `max_ids` ids (the oldest forgotten first). Creating the room through the API clears it."""

    def __init__(self, *, keep_s: float, max_ids: int) -> None:
        self.keep_s = keep_s
        self.max_ids = max_ids
        self._ended: OrderedDict[str, float] = OrderedDict()  # room id -> monotonic end time

    def add(self, room_id: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._expire(now)
        self._ended.pop(room_id, None)
        self._ended[room_id] = now
        while len(self._ended) > self.max_ids:
            _, ended_at = self._ended.popitem(last=False)
            if now - ended_at < self.keep_s:
                logger.warning("ended-room memory full: a room id is forgotten early")

    def __contains__(self, room_id: object) -> bool:
        return isinstance(room_id, str) and self.contains(room_id)

    def contains(self, room_id: str, now: float | None = None) -> bool:
        ended_at = self._ended.get(room_id)
        if ended_at is None:
            return False
        now = time.monotonic() if now is None else now
        if now - ended_at < self.keep_s:
            return True
        self._expire(now)
        return False

    def _expire(self, now: float) -> None:
        while self._ended:
            room_id, ended_at = next(iter(self._ended.items()))
            if now - ended_at < self.keep_s:
                return
            del self._ended[room_id]

    def discard(self, room_id: str) -> None:
        self._ended.pop(room_id, None)

    def __len__(self) -> int:
        return len(self._ended)


class NodeFull(Exception):
    """The node's room or participant cap (max_rooms, max_node_participants) is reached."""


class Hub:
    def __init__(
        self,
        *,
        config: ServerConfig,
        plane: MediaPlane,
        metrics: Metrics,
        fleet: Fleet | None = None,
    ) -> None:
        self.config = config
        self.plane = plane
        self.metrics = metrics
        self.fleet = fleet or LocalFleet(NodeInfo(id="local", url=""))
        self.resume_tokens = ResumeTokens()
        self.tokens = config.token_verifier()
        self.turn = config.turn_credentials()  # mints TURN credentials per `joined` (or None)
        self.ended = EndedRooms(
            keep_s=config.token_max_lifetime_s + CLOCK_LEEWAY_S, max_ids=config.ended_rooms_kept
        )
        self.consultations: dict[str, Consultation] = {}
        self.draining = False
        self.moving = False  # a drain's deadline is set: its rooms move to other nodes
        self._tasks: set[asyncio.Task[Any]] = set()
        self._penalties: dict[tuple[str, str], float] = {}  # (room, sub) -> until (monotonic)
        # Media rooms still closing after their consultation was forgotten (a worker's close
        # is a round trip): a room created again under the same id waits for its close.
        self._closing: dict[str, asyncio.Task[None]] = {}
        self._unsubscribe = plane.subscribe(self._on_media_event)
        self._http: aiohttp.ClientSession | None = None

    def _on_media_event(self, event: MediaEvent) -> None:
        """The media plane's events go to the consultation of their room."""
        consultation = self.consultations.get(event.room_id)
        if consultation is not None:
            consultation.on_media_event(event)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a background task owned by the hub (cancelled on close, errors logged)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed: %r", task.exception())

    def get(self, room_id: str) -> Consultation | None:
        return self.consultations.get(room_id)

    async def create(
        self,
        room_id: str | None = None,
        options: ConsultationOptions | None = None,
        *,
        auto_created: bool = False,
    ) -> Consultation:
        if self.draining:
            raise Draining("node is draining")
        room_id = room_id or new_room_id()
        if not ROOM_ID.match(room_id):
            raise ValueError("room id must be 1-64 characters of A-Z a-z 0-9 _ . -")
        if room_id in self.consultations:
            raise RoomExists(room_id)
        if auto_created and room_id in self.ended:
            raise RoomEnded(room_id)
        self.ended.discard(room_id)  # the platform creates it again on purpose
        if len(self.consultations) >= self.config.max_rooms:
            raise NodeFull("node is full (rooms)")
        options = options or ConsultationOptions()
        consultation = Consultation(room_id, options, hub=self, auto_created=auto_created)
        self.consultations[room_id] = consultation  # before the await: one create per id
        try:
            closing = self._closing.get(room_id)
            if closing is not None:  # the media room of the consultation ended before it
                await asyncio.shield(closing)
            await self.plane.execute(CreateRoom(room_id=room_id, options=options.media_options()))
        except BaseException:
            self.forget(consultation)
            consultation.media_failed()
            raise
        if consultation.ended:  # ended while its media room was being created
            self.close_media(room_id, CloseReason.ENDED)
        consultation.media_created()
        logger.info("room %s created%s", room_id, " (auto)" if auto_created else "")
        return consultation

    async def take_over(self, placement: Placement) -> Consultation:
        """A room placed here that this node does not hold: one whose node died (or left),
        taken back from the fleet's journal (its chat, telemetry, bars and participants).
        FleetUnavailable when the journal cannot be read (then nothing is created)."""
        room_id = placement.room_id
        state = await self.fleet.restore(room_id)
        options = ConsultationOptions.from_dict(placement.options)
        try:  # a room new to the fleet, created by a join (dev mode), ends when it empties
            consultation = await self.create(room_id, options, auto_created=placement.created)
        except RoomExists:  # another join took it over first
            existing = self.get(room_id)
            if existing is None:
                raise
            return existing
        consultation.restore(state)  # (no await since create: no join got in before it)
        logger.info("room %s taken over (%d people to take back)", room_id, len(state.people))
        return consultation

    def fleet_http(self) -> aiohttp.ClientSession:
        """The session API requests are forwarded to other nodes with (closed with the hub)."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def hand_over(self, consultation: Consultation) -> bool:
        """Move a room to the least-loaded other node (drain, shutdown); False when it stays
        here (no fleet, Redis unreachable, no other node may take it)."""
        if not self.fleet.shared:
            return False
        try:
            placement = await self.fleet.place(
                consultation.id,
                consultation.options.as_dict(),
                create=True,
                away_from=self.fleet.node.id,
            )
        except (FleetUnavailable, LookupError):
            return False
        if placement.node.id == self.fleet.node.id:
            return False
        await consultation.journal.flushed()
        consultation.hand_over(placement.node)
        return True

    async def move_rooms(self, after_s: float) -> None:
        """Drain with a deadline: after `after_s` the rooms still here move to other nodes."""
        await asyncio.sleep(after_s)
        moved = 0
        for consultation in list(self.consultations.values()):
            moved += await self.hand_over(consultation)
        logger.info("drain deadline: %d room(s) moved to other nodes", moved)

    def release(self, room_id: str) -> None:
        """The room ended here: the fleet forgets where it was and what it kept."""
        if self.fleet.shared:
            self.spawn(self.fleet.release(room_id))

    async def run_heartbeat(self) -> None:
        """The node's load to the fleet every HEARTBEAT_S (a store outage is the fleet's
        to report; the loop goes on)."""
        while True:
            rooms = {cid: c.options.as_dict() for cid, c in self.consultations.items()}
            try:
                await self.fleet.heartbeat(
                    rooms=rooms, participants=self.participants(), draining=self.draining
                )
            except FleetUnavailable:
                pass
            await asyncio.sleep(HEARTBEAT_S)

    def participants(self) -> int:
        return sum(len(c.sessions) for c in self.consultations.values())

    def check_capacity(self, consultation: Consultation | None) -> None:
        """Room for one more participant (waiting or not) in `consultation` (None: a room not
        created yet), or RoomUnavailable (max_room_participants) or NodeFull
        (max_node_participants)."""
        if consultation and len(consultation.sessions) >= self.config.max_room_participants:
            raise RoomUnavailable("room is full")
        if self.participants() >= self.config.max_node_participants:
            raise NodeFull("node is full (participants)")

    def penalize(self, room_id: str, sub: str) -> None:
        """A user who flooded a socket (close 4009) may not join that room for
        flood_penalty_s: a reconnect storm costs the node a refusal each, not a join."""
        now = time.monotonic()
        for key in [k for k, until in self._penalties.items() if until <= now]:
            del self._penalties[key]
        self._penalties[(room_id, sub)] = now + self.config.flood_penalty_s

    def penalty_left(self, room_id: str, sub: str) -> float:
        """Seconds the user's flood penalty in that room still runs (0: none)."""
        until = self._penalties.get((room_id, sub))
        return 0.0 if until is None else max(0.0, until - time.monotonic())

    def forget(self, consultation: Consultation, *, ended: bool = False) -> None:
        """Drop a consultation; `ended`: it was ended on purpose, its tokens are refused."""
        if self.consultations.get(consultation.id) is consultation:
            del self.consultations[consultation.id]
        if ended:
            self.ended.add(consultation.id)

    def close_media(self, room_id: str, reason: CloseReason) -> asyncio.Task[None]:
        """Close a forgotten consultation's media room in the background (the caller may
        await the task); creating the room id again waits for it."""
        task = self.spawn(self._close_media(room_id, reason, self._closing.get(room_id)))
        self._closing[room_id] = task

        def done(_: asyncio.Task[Any]) -> None:
            if self._closing.get(room_id) is task:
                del self._closing[room_id]

        task.add_done_callback(done)
        return task

    async def _close_media(
        self, room_id: str, reason: CloseReason, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:  # closes of one id run in order
            await asyncio.shield(previous)
        try:
            await self.plane.execute(CloseRoom(room_id=room_id, reason=reason))
        except Exception:
            logger.exception("closing media room %s failed", room_id)

    async def end(self, room_id: str, reason: CloseReason = CloseReason.ENDED) -> bool:
        consultation = self.consultations.get(room_id)
        if consultation is None:
            return False
        await consultation.end(reason)
        return True

    async def close(self) -> None:
        for consultation in list(self.consultations.values()):
            # In a fleet the room moves to another node, its clients with it; else it ends.
            if not await self.hand_over(consultation):
                await consultation.end(CloseReason.SHUTDOWN)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._unsubscribe()
        if self._http is not None:
            await self._http.close()
