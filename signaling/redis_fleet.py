"""RedisFleet: nodes, placement and room journals in Redis (redis-py asyncio).

Keys (under `prefix`, "consult:" by default):
- `node:<id>`: the node's stats (JSON), expiring ALIVE_S after each heartbeat: a node is alive
  while the key exists (LiveKit's model). `nodes`: the set of node ids ever seen (pruned).
- `placed`: hash node id -> rooms placed there since its last heartbeat (the stats lag by up
  to a heartbeat; placements made meanwhile count too, so a burst of creates spreads).
- `room:<id>`: hash {node, options (JSON), created}: the placement, made once per room by a
  Lua script (atomic: two nodes never place one room twice), moved only when its node died.
- `room:<id>:chat`, `room:<id>:telemetry`: streams of JSON records (`m`), oldest first;
  `room:<id>:people`: hash participant id -> PersonRecord; `room:<id>:bars`: hash sub -> bar.

Every command has a deadline (`op_timeout_s`). When Redis cannot be reached the fleet is
"down": placement falls back to this node, journal writes queue (bounded) and go out when
Redis is back, and the next heartbeat reconciles this node's rooms (their placement records).
No participant name, sub or message text is ever logged here.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from .fleet import (
    ALIVE_S,
    Fleet,
    FleetStats,
    FleetUnavailable,
    NodeInfo,
    PersonRecord,
    Placement,
    RoomJournal,
    RoomState,
)

logger = logging.getLogger(__name__)

ROOM_TTL_S = 24 * 3600  # what a room left in Redis (its node died, nobody came back) lasts
MAX_QUEUED = 100_000  # journal writes kept while Redis is down (then the oldest are dropped)
RESTORE_PAGE = 5000

# KEYS: room hash, nodes set, placed hash. ARGV: prefix, options JSON, create (0/1), now,
# the id of a node handing its rooms over ("" if none: its rooms move as if it were dead).
# Returns false (unknown room, not created), or {node stats JSON, options JSON, moved (0/1),
# placed now (0/1)}; '' as the first element when no live node may take it.
PLACE = """
local room = KEYS[1]
local node = redis.call('HGET', room, 'node')
local options = ARGV[2]
local moved = 0
if node then
  local stats = redis.call('GET', ARGV[1] .. 'node:' .. node)
  local kept = redis.call('HGET', room, 'options')
  if stats and node ~= ARGV[5] then return {stats, kept, 0, 0} end
  options = kept or options
  moved = 1
elseif ARGV[3] ~= '1' then
  return false
end
local best, best_stats, best_load = nil, nil, nil
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local stats = redis.call('GET', ARGV[1] .. 'node:' .. id)
  if not stats then
    redis.call('SREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  else
    local info = cjson.decode(stats)
    if not info.draining and id ~= ARGV[5] then
      local load = info.rooms + (tonumber(redis.call('HGET', KEYS[3], id)) or 0)
      if best == nil or load < best_load or (load == best_load and id < best) then
        best, best_stats, best_load = id, stats, load
      end
    end
  end
end
if best == nil then return {'', options, moved, 0} end
redis.call('HSET', room, 'node', best, 'options', options, 'created', ARGV[4])
redis.call('EXPIRE', room, ROOM_TTL_S)
redis.call('HINCRBY', KEYS[3], best, 1)
return {best_stats, options, moved, 1}
""".replace("ROOM_TTL_S", str(ROOM_TTL_S))

# KEYS: room hash. ARGV: prefix, this node's id, options JSON, now. The room is here: record
# it unless a live node other than this one holds the record (returns that node's id then).
CLAIM = """
local node = redis.call('HGET', KEYS[1], 'node')
if node and node ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'node:' .. node) == 1 then
  return node
end
redis.call('HSET', KEYS[1], 'node', ARGV[2], 'options', ARGV[3])
redis.call('HSETNX', KEYS[1], 'created', ARGV[4])
redis.call('EXPIRE', KEYS[1], ROOM_TTL_S)
return false
""".replace("ROOM_TTL_S", str(ROOM_TTL_S))


class RedisJournal(RoomJournal):
    """One room's journal: its writes go through the fleet's ordered writer."""

    def __init__(self, fleet: RedisFleet, room_id: str) -> None:
        self._fleet = fleet
        self._room = fleet.key("room", room_id)

    # Stream entries carry the room's own sequence number as their id: a write that Redis
    # applied but whose reply was lost (a timeout) goes again and is refused, not doubled.

    def chat(self, message: dict[str, Any]) -> None:
        entry = f"{str(message['id']).lstrip('m')}-0"
        self._fleet.enqueue(("xadd", self._room + ":chat", json.dumps(message), entry))

    def telemetry(self, sender: str, device_seq: int | None, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        batch = {"from": sender, "dseq": device_seq, "records": records}
        entry = f"{records[0]['seq']}-0"
        self._fleet.enqueue(("xadd", self._room + ":telemetry", json.dumps(batch), entry))

    def person(self, record: PersonRecord) -> None:
        value = json.dumps(record.as_dict())
        self._fleet.enqueue(("hset", self._room + ":people", record.id, value))

    def person_gone(self, participant_id: str) -> None:
        self._fleet.enqueue(("hdel", self._room + ":people", participant_id))

    def bar(self, sub: str, bar: dict[str, Any] | None) -> None:
        if bar is None:
            self._fleet.enqueue(("hdel", self._room + ":bars", sub))
        else:
            self._fleet.enqueue(("hset", self._room + ":bars", sub, json.dumps(bar)))

    async def flushed(self) -> None:
        await self._fleet.flushed()


class RedisFleet(Fleet):
    def __init__(
        self,
        node: NodeInfo,
        url: str,
        *,
        prefix: str = "consult:",
        op_timeout_s: float = 1.0,
        chat_kept: int = 1000,
    ) -> None:
        self.node = node
        self.url = url
        self.prefix = prefix
        self.op_timeout_s = op_timeout_s
        self.chat_kept = chat_kept
        self.up = False
        self.errors = 0  # commands that failed (metrics)
        self.placements: collections.Counter[str] = collections.Counter()  # outcome -> count
        self.dropped = 0  # journal writes dropped while Redis was down too long
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=op_timeout_s,
            socket_connect_timeout=op_timeout_s,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._place = self._redis.register_script(PLACE)
        self._claim = self._redis.register_script(CLAIM)
        self._nodes: list[NodeInfo] = [node]
        self._queue: collections.deque[tuple[str, ...]] = collections.deque()
        self._appended = 0
        self._written = 0
        self._progress = asyncio.Condition()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def shared(self) -> bool:
        return True

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def _op(self, coro: Any) -> Any:
        """One command within the deadline; FleetUnavailable (and the fleet "down") if not."""
        try:
            return await asyncio.wait_for(coro, self.op_timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            self.errors += 1
            if self.up:
                logger.warning("redis unreachable (%s): rooms go to this node", type(exc).__name__)
            self.up = False
            raise FleetUnavailable(type(exc).__name__) from None

    # -- life ---------------------------------------------------------------------------------

    async def start(self) -> None:
        with_rooms: dict[str, dict[str, Any]] = {}
        try:
            await self.heartbeat(rooms=with_rooms, participants=0, draining=False)
        except FleetUnavailable:
            logger.warning("redis unreachable at start: this node runs alone until it answers")
        self._writer = asyncio.create_task(self._write_loop())

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer, self.op_timeout_s * 2)
            except (TimeoutError, asyncio.CancelledError):
                self._writer.cancel()
        try:  # leave at once rather than when the stats expire
            await asyncio.wait_for(self._redis.delete(self.key("node", self.node.id)), 0.5)
        except (RedisError, OSError, TimeoutError):
            pass
        await self._redis.aclose()

    # -- nodes --------------------------------------------------------------------------------

    async def heartbeat(
        self, *, rooms: dict[str, dict[str, Any]], participants: int, draining: bool
    ) -> None:
        was_up = self.up
        self.node = NodeInfo(
            id=self.node.id,
            url=self.node.url,
            rooms=len(rooms),
            participants=participants,
            draining=draining,
            at=time.time(),
        )
        stats = json.dumps(self.node.as_dict())
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self.key("node", self.node.id), stats, px=int(ALIVE_S * 1000))
        pipe.sadd(self.key("nodes"), self.node.id)
        pipe.hset(self.key("placed"), self.node.id, 0)
        pipe.smembers(self.key("nodes"))
        result = await self._op(pipe.execute())
        ids = sorted(result[3])
        values = await self._op(self._redis.mget([self.key("node", i) for i in ids])) if ids else []
        self._nodes = [NodeInfo.from_dict(json.loads(v)) for v in values if v]
        self.up = True
        if not was_up:
            logger.info("redis reachable: %d node(s) in the fleet", len(self._nodes))
            await self._reconcile(rooms)
            self._wake.set()

    async def _reconcile(self, rooms: dict[str, dict[str, Any]]) -> None:
        """After an outage (or at start): record the rooms this node holds."""
        now = str(int(time.time()))
        for room_id, options in rooms.items():
            other = await self._op(
                self._claim(
                    keys=[self.key("room", room_id)],
                    args=[self.prefix, self.node.id, json.dumps(options), now],
                )
            )
            if other:
                self.placements["conflict"] += 1
                logger.warning("room %s is held by another live node too", room_id)

    def nodes(self) -> list[NodeInfo]:
        return list(self._nodes) if self.up else [self.node]

    def stats(self) -> FleetStats:
        return FleetStats(
            store_up=self.up,
            store_errors=self.errors,
            placements=dict(self.placements),
            journal_queued=len(self._queue),
            journal_dropped=self.dropped,
        )

    # -- placement ----------------------------------------------------------------------------

    async def place(
        self,
        room_id: str,
        options: dict[str, Any],
        *,
        create: bool,
        away_from: str | None = None,
    ) -> Placement:
        result = await self._op(
            self._place(
                keys=[self.key("room", room_id), self.key("nodes"), self.key("placed")],
                args=[
                    self.prefix,
                    json.dumps(options),
                    "1" if create else "0",
                    int(time.time()),
                    away_from or "",
                ],
            )
        )
        if not result:
            raise LookupError(room_id)
        stats, kept, moved, placed = result
        if not stats:
            self.placements["no-node"] += 1
            raise FleetUnavailable("no live node may take the room")
        node = NodeInfo.from_dict(json.loads(stats))
        placement = Placement(
            room_id,
            node,
            json.loads(kept or "{}"),
            moved=bool(moved),
            created=bool(placed) and not moved,
        )
        if placed:  # a placement made now (not the lookup of an existing one)
            local = node.id == self.node.id
            self.placements["moved" if moved else "local" if local else "remote"] += 1
        return placement

    async def locate(self, room_id: str) -> Placement | None:
        try:
            record = await self._op(self._redis.hgetall(self.key("room", room_id)))
            if not record or "node" not in record:
                return None
            stats = await self._op(self._redis.get(self.key("node", record["node"])))
        except FleetUnavailable:
            return None
        if not stats:
            return None
        options = json.loads(record.get("options") or "{}")
        return Placement(room_id, NodeInfo.from_dict(json.loads(stats)), options)

    async def claim(self, room_id: str, options: dict[str, Any]) -> str | None:
        """Record a room created here (Redis was down when it was placed); returns the id of
        another live node that holds it, if any."""
        other = await self._op(
            self._claim(
                keys=[self.key("room", room_id)],
                args=[self.prefix, self.node.id, json.dumps(options), str(int(time.time()))],
            )
        )
        return str(other) if other else None

    async def release(self, room_id: str) -> None:
        room = self.key("room", room_id)
        keys = [room + suffix for suffix in ("", ":chat", ":telemetry", ":people", ":bars")]
        self.enqueue(("del", *keys))

    # -- journals -----------------------------------------------------------------------------

    def journal(self, room_id: str) -> RoomJournal:
        return RedisJournal(self, room_id)

    def enqueue(self, op: tuple[str, ...]) -> None:
        self._queue.append(op)
        self._appended += 1
        if len(self._queue) > MAX_QUEUED:
            self._queue.popleft()
            self._written += 1  # never written: it does not hold back flushed()
            self.dropped += 1
        self._wake.set()

    async def flushed(self) -> None:
        target = self._appended
        async with self._progress:
            await self._progress.wait_for(
                lambda: self._written >= target or not self.up or self._closed
            )

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and self.up:
                batch = [self._queue[i] for i in range(min(len(self._queue), 500))]
                try:
                    results = await self._op(self._pipeline(batch).execute(raise_on_error=False))
                except FleetUnavailable:
                    break
                for result in results:  # an entry id already there: written before (a retry)
                    if isinstance(result, ResponseError) and "equal or smaller" not in str(result):
                        self.errors += 1
                        logger.warning("redis refused a journal write: %s", result)
                for _ in batch:
                    self._queue.popleft()
                self._written += len(batch)
                async with self._progress:
                    self._progress.notify_all()
            if not self.up:
                async with self._progress:
                    self._progress.notify_all()  # flushed() does not wait for a dead store
            if self._closed:
                return

    def _pipeline(self, batch: list[tuple[str, ...]]) -> Any:
        pipe = self._redis.pipeline(transaction=False)
        touched: set[str] = set()
        for op in batch:
            kind, key = op[0], op[1]
            if kind == "xadd":
                pipe.xadd(key, {"m": op[2]}, id=op[3], maxlen=self._maxlen(key), approximate=True)
            elif kind == "hset":
                pipe.hset(key, op[2], op[3])
            elif kind == "hdel":
                pipe.hdel(key, op[2])
            elif kind == "del":
                pipe.delete(*op[1:])
                touched.difference_update(op[1:])
                continue
            touched.add(key)
        for key in touched:
            pipe.expire(key, ROOM_TTL_S)
        return pipe

    def _maxlen(self, key: str) -> int:
        return self.chat_kept if key.endswith(":chat") else 500_000

    async def restore(self, room_id: str) -> RoomState:
        room = self.key("room", room_id)
        state = RoomState()
        state.chat = await self._stream(room + ":chat")
        state.telemetry = await self._stream(room + ":telemetry")
        people = await self._op(self._redis.hgetall(room + ":people"))
        for pid, value in people.items():
            state.people[pid] = PersonRecord.from_dict(json.loads(value))
        bars = await self._op(self._redis.hgetall(room + ":bars"))
        state.bars = {sub: json.loads(value) for sub, value in bars.items()}
        return state

    async def _stream(self, key: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        start = "-"
        while True:
            page = await self._op(self._redis.xrange(key, min=start, count=RESTORE_PAGE))
            records.extend(json.loads(fields["m"]) for _, fields in page)
            if len(page) < RESTORE_PAGE:
                return records
            start = "(" + page[-1][0]
