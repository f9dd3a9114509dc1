"""Fleet: the nodes that share rooms, and what of a room outlives its node.

One interface, two implementations: `LocalFleet` (the embedded default: one node, nothing
shared, every room here) and `RedisFleet` (signaling/redis_fleet.py: a registry of nodes with
their load, room placement made once per room, and a journal of each room's chat, participants
and bars that another node restores the room from when its node dies).

The hub asks the fleet where a room lives (`place`, `locate`), tells it the node's load
(`heartbeat`) and journals what a room must not lose (`RoomJournal`). Nothing here is on the
media path: the fleet is control-plane state only, and a fleet that cannot reach its store
never stops a call in progress (it places new rooms on this node and catches up later).
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any

# A node is alive while its last stats are younger than this (LiveKit's model: stats every 2 s).
HEARTBEAT_S = 2.0
ALIVE_S = 5.0


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as the fleet sees it: its id, the base URL clients and nodes reach it at, and
    its load at `at` (wall-clock seconds)."""

    id: str
    url: str
    rooms: int = 0
    participants: int = 0
    draining: bool = False
    at: float = 0.0

    @property
    def ws_url(self) -> str:
        """The node's WebSocket endpoint (ws:// or wss://.../ws)."""
        url = self.url.rstrip("/")
        return ("wss" + url[5:] if url.startswith("https") else "ws" + url[4:]) + "/ws"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "rooms": self.rooms,
            "participants": self.participants,
            "draining": self.draining,
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeInfo:
        return cls(
            id=str(data["id"]),
            url=str(data["url"]),
            rooms=int(data.get("rooms", 0)),
            participants=int(data.get("participants", 0)),
            draining=bool(data.get("draining", False)),
            at=float(data.get("at", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a room lives. `moved`: the room was placed again because its node died or left
    (its new node restores it from the journal rather than creating it empty)."""

    room_id: str
    node: NodeInfo
    options: dict[str, Any] = field(default_factory=dict)
    moved: bool = False
    created: bool = False  # placed by this call for a room the fleet did not know


@dataclass(frozen=True, slots=True)
class PersonRecord:
    """A participant as the journal keeps it: enough to take it back on another node with the
    same id and state (a waiting patient keeps its place: `order`). `resume` holds digests of
    its latest resume tokens (never the tokens)."""

    id: str
    sub: str
    role: str
    name: str
    state: str
    order: int
    telemetry: bool = False
    resume: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sub": self.sub,
            "role": self.role,
            "name": self.name,
            "state": self.state,
            "order": self.order,
            "telemetry": self.telemetry,
            "resume": list(self.resume),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PersonRecord:
        return cls(
            id=str(data["id"]),
            sub=str(data["sub"]),
            role=str(data["role"]),
            name=str(data["name"]),
            state=str(data["state"]),
            order=int(data["order"]),
            telemetry=bool(data.get("telemetry", False)),
            resume=tuple(str(r) for r in data.get("resume", ())),
        )


@dataclass(slots=True)
class RoomState:
    """What a room's journal holds, for the node that takes the room over."""

    chat: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    telemetry: list[dict[str, Any]] = field(default_factory=list)  # batches, oldest first
    people: dict[str, PersonRecord] = field(default_factory=dict)  # participant id -> record
    bars: dict[str, dict[str, Any]] = field(default_factory=dict)  # sub -> bar


@dataclass(frozen=True, slots=True)
class FleetStats:
    """The fleet's counters for /metrics (no room or participant in them)."""

    store_up: bool = True
    store_errors: int = 0  # commands to the store that failed or timed out
    placements: dict[str, int] = field(default_factory=dict)  # local|remote|moved|... -> count
    journal_queued: int = 0  # journal writes waiting for the store
    journal_dropped: int = 0  # ... dropped after MAX_QUEUED while it was down


class FleetUnavailable(Exception):
    """The fleet's store cannot be reached: the caller falls back to this node."""


class RoomJournal(abc.ABC):
    """What one room must not lose with its node, written behind the room in order.

    Appends never block and never raise: a store that is down keeps them queued (bounded)
    and writes them when it returns. `flushed()` waits until everything appended so far is
    stored, or the store is known down (a chat is acknowledged once it is durable)."""

    @abc.abstractmethod
    def chat(self, message: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def telemetry(self, sender: str, device_seq: int | None, records: list[dict[str, Any]]) -> None:
        """A stored telemetry batch (`device_seq`: the sender's batch number, for dedup)."""

    @abc.abstractmethod
    def person(self, record: PersonRecord) -> None: ...

    @abc.abstractmethod
    def person_gone(self, participant_id: str) -> None: ...

    @abc.abstractmethod
    def bar(self, sub: str, bar: dict[str, Any] | None) -> None:
        """Bar `sub` from the room (None: lift it)."""

    @abc.abstractmethod
    async def flushed(self) -> None: ...


class NullJournal(RoomJournal):
    """One node, nothing shared: the room's own memory is all there is."""

    def chat(self, message: dict[str, Any]) -> None:
        pass

    def telemetry(self, sender: str, device_seq: int | None, records: list[dict[str, Any]]) -> None:
        pass

    def person(self, record: PersonRecord) -> None:
        pass

    def person_gone(self, participant_id: str) -> None:
        pass

    def bar(self, sub: str, bar: dict[str, Any] | None) -> None:
        pass

    async def flushed(self) -> None:
        return None


class Fleet(abc.ABC):
    """The nodes sharing rooms. `node` is this node."""

    node: NodeInfo

    @property
    def shared(self) -> bool:
        """True when other nodes may hold rooms (a store is configured)."""
        return False

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def heartbeat(
        self, *, rooms: dict[str, dict[str, Any]], participants: int, draining: bool
    ) -> None:
        """Publish this node's load; `rooms`: the rooms it holds and their options (recorded
        again after an outage). Raises FleetUnavailable when the store cannot be reached."""

    @abc.abstractmethod
    def nodes(self) -> list[NodeInfo]:
        """The live nodes as last seen (this one included)."""

    @abc.abstractmethod
    async def place(
        self,
        room_id: str,
        options: dict[str, Any],
        *,
        create: bool,
        away_from: str | None = None,
    ) -> Placement:
        """The room's node: its existing placement while that node lives, else (`create`, or a
        room whose node died or is `away_from`, a node handing its rooms over) the
        least-loaded live node that is not draining, recorded once for every node. Raises
        FleetUnavailable when the store cannot be reached or no node may take it, LookupError
        when the room is unknown and `create` is False."""

    @abc.abstractmethod
    async def locate(self, room_id: str) -> Placement | None:
        """The room's placement if its node is alive, else None (never raises)."""

    @abc.abstractmethod
    async def release(self, room_id: str) -> None:
        """The room ended: forget its placement and its journal."""

    @abc.abstractmethod
    def journal(self, room_id: str) -> RoomJournal: ...

    def stats(self) -> FleetStats:
        return FleetStats()

    @abc.abstractmethod
    async def restore(self, room_id: str) -> RoomState:
        """What the room's journal holds (empty when nothing was kept)."""


class LocalFleet(Fleet):
    """The embedded default: this node alone; rooms are here and their state in memory."""

    def __init__(self, node: NodeInfo) -> None:
        self.node = node
        self._journal = NullJournal()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def heartbeat(
        self, *, rooms: dict[str, dict[str, Any]], participants: int, draining: bool
    ) -> None:
        self.node = NodeInfo(
            id=self.node.id,
            url=self.node.url,
            rooms=len(rooms),
            participants=participants,
            draining=draining,
            at=time.time(),
        )

    def nodes(self) -> list[NodeInfo]:
        return [self.node]

    async def place(
        self,
        room_id: str,
        options: dict[str, Any],
        *,
        create: bool,
        away_from: str | None = None,
    ) -> Placement:
        return Placement(room_id, self.node, options)

    async def locate(self, room_id: str) -> Placement | None:
        return None

    async def release(self, room_id: str) -> None:
        return None

    def journal(self, room_id: str) -> RoomJournal:
        return self._journal

    async def restore(self, room_id: str) -> RoomState:
        return RoomState()
