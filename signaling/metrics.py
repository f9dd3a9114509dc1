"""Prometheus metrics with the app's own CollectorRegistry.

Labels are bounded enums (role, state, kind, direction, message type, error code): never a room
id, participant id, user id or name. Media counters are read from the media plane's
`snapshot()` (plain ints its workers increment, one `worker` label each) at scrape time by a
custom collector.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mediaserver.api import PlaneSnapshot, Role, RoomSnapshot

if TYPE_CHECKING:
    from .hub import Hub

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
JITTER_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
RTT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.join_latency = Histogram(
            "consult_join_latency_seconds",
            "Time from join to admission (waiting room included)",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.loop_lag = Histogram(
            "consult_event_loop_lag_seconds",
            "Overshoot of a periodic sleep on the event loop",
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        self.link_loss = Histogram(
            "consult_link_loss_ratio",
            "Packet loss per participant link, sampled periodically",
            ["direction"],
            buckets=LOSS_BUCKETS,
            registry=reg,
        )
        self.link_jitter = Histogram(
            "consult_link_jitter_seconds",
            "Jitter per participant link, sampled periodically",
            ["direction"],
            buckets=JITTER_BUCKETS,
            registry=reg,
        )
        self.link_rtt = Histogram(
            "consult_link_rtt_seconds",
            "Round-trip time per participant link, sampled periodically",
            ["direction"],
            buckets=RTT_BUCKETS,
            registry=reg,
        )
        self.messages = Counter(
            "consult_ws_messages", "WebSocket messages received", ["type"], registry=reg
        )
        self.errors = Counter(
            "consult_ws_errors", "Error messages sent to clients", ["code"], registry=reg
        )

    def bind(self, hub: Hub) -> None:
        self.registry.register(HubCollector(hub))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_join(self, seconds: float) -> None:
        self.join_latency.observe(max(0.0, seconds))

    def sample_links(self, hub: Hub) -> None:
        for consultation in list(hub.consultations.values()):
            room = hub.plane.room(consultation.id)
            media = {p.participant_id: p for p in room.participants} if room is not None else {}
            for session in consultation.admitted():
                snapshot = media.get(session.id)
                if snapshot is None:
                    continue
                stats = snapshot.link
                for direction, d in (("uplink", stats.uplink), ("downlink", stats.downlink)):
                    self.link_loss.labels(direction).observe(d.loss)
                    self.link_jitter.labels(direction).observe(d.jitter_ms / 1000)
                    if d.rtt_ms is not None:
                        self.link_rtt.labels(direction).observe(d.rtt_ms / 1000)

    async def run_link_sampler(self, hub: Hub, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.sample_links(hub)
            except Exception:
                logger.exception("link stats sampling failed")

    async def run_loop_lag_monitor(self, interval_s: float = 0.5) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(interval_s)
            self.loop_lag.observe(max(0.0, time.monotonic() - start - interval_s))


MODES = ("video", "audio-only", "chat-only")
DIRECTIONS = ("uplink", "downlink")


def _mode_metrics(
    hub: Hub, plane: PlaneSnapshot, rooms: dict[str, RoomSnapshot]
) -> Iterator[Metric]:
    """Bandwidth fallback (issue 5): participants per mode, transitions, time in mode."""
    now: Tally[tuple[str, str]] = Tally()
    for consultation in list(hub.consultations.values()):
        room = rooms.get(consultation.id)
        modes_of = {p.participant_id: p.modes for p in room.participants} if room else {}
        for s in consultation.admitted():
            modes = modes_of.get(s.id) or {}
            for direction in DIRECTIONS:
                now[(direction, str(modes.get(direction, "video")))] += 1
    current = GaugeMetricFamily(
        "consult_link_mode_participants",
        "Admitted participants per link direction and fallback mode",
        labels=["direction", "mode"],
    )
    transitions = CounterMetricFamily(
        "consult_link_mode_transitions",
        "Fallback mode changes, by direction and the mode entered",
        labels=["worker", "direction", "mode"],
    )
    seconds = CounterMetricFamily(
        "consult_link_mode_seconds",
        "Seconds spent in each fallback mode (accounted at each change and when a participant"
        " leaves)",
        labels=["worker", "direction", "mode"],
    )
    for direction in DIRECTIONS:
        for mode in MODES:
            key = f"{direction}:{mode}"
            current.add_metric([direction, mode], now[(direction, mode)])
            for w in plane.workers:
                labels = [w.worker, direction, mode]
                transitions.add_metric(labels, w.mode_transitions.get(key, 0))
                seconds.add_metric(labels, w.mode_seconds.get(key, 0.0))
    yield current
    yield transitions
    yield seconds


PLACEMENTS = ("local", "remote", "moved", "conflict", "no-node")


def _fleet_metrics(hub: Hub) -> Iterator[Metric]:
    """A fleet of nodes (docs/deploy.md): the live nodes, their rooms, placements, Redis.
    Node ids are the operator's names for its nodes (a bounded label), never room ids."""
    fleet = hub.fleet
    stats = fleet.stats()
    nodes = fleet.nodes()
    live = GaugeMetricFamily("consult_fleet_nodes", "Live nodes of the fleet as this node sees it")
    live.add_metric([], len(nodes))
    yield live
    per_node = GaugeMetricFamily(
        "consult_fleet_node_rooms", "Rooms per live node (from its last stats)", labels=["node"]
    )
    for node in nodes:
        per_node.add_metric([node.id], node.rooms)
    yield per_node
    placements = CounterMetricFamily(
        "consult_fleet_placements",
        "Room placements made by this node: local, remote (another node), moved (taken from a"
        " dead node), conflict, no-node",
        labels=["outcome"],
    )
    for outcome in PLACEMENTS:
        placements.add_metric([outcome], stats.placements.get(outcome, 0))
    yield placements
    up = GaugeMetricFamily("consult_fleet_redis_up", "1 while Redis answers (fleet only)")
    up.add_metric([], 1 if stats.store_up else 0)
    yield up
    errors = CounterMetricFamily("consult_fleet_redis_errors", "Redis commands failed or late")
    errors.add_metric([], stats.store_errors)
    yield errors
    queued = GaugeMetricFamily("consult_fleet_journal_queued", "Journal writes awaiting Redis")
    queued.add_metric([], stats.journal_queued)
    yield queued
    dropped = CounterMetricFamily(
        "consult_fleet_journal_dropped", "Journal writes dropped during a long Redis outage"
    )
    dropped.add_metric([], stats.journal_dropped)
    yield dropped


class HubCollector(Collector):
    """Gauges of rooms/participants/tracks and the media node's counters, read at scrape time."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        open_rooms = GaugeMetricFamily("consult_rooms", "Open consultations")
        open_rooms.add_metric([], len(hub.consultations))
        yield open_rooms
        draining = GaugeMetricFamily("consult_node_draining", "1 while the node refuses new rooms")
        draining.add_metric([], 1 if hub.draining else 0)
        yield draining

        tally: Tally[tuple[str, str]] = Tally()
        kinds: Tally[str] = Tally()
        rooms: dict[str, RoomSnapshot] = {}
        for consultation in list(hub.consultations.values()):
            for s in list(consultation.sessions.values()):
                tally[(s.role.value, s.state.value)] += 1
            room = hub.plane.room(consultation.id)
            if room is not None:
                rooms[consultation.id] = room
                for track in room.tracks:
                    kinds[track.kind] += 1
        participants = GaugeMetricFamily(
            "consult_participants", "Participants by role and state", labels=["role", "state"]
        )
        for role in Role:
            for state in ("waiting", "admitted"):
                participants.add_metric([role.value, state], tally[(role.value, state)])
        yield participants
        tracks = GaugeMetricFamily("consult_tracks", "Published tracks by kind", labels=["kind"])
        for kind in ("audio", "video"):
            tracks.add_metric([kind], kinds[kind])
        yield tracks

        plane = hub.plane.snapshot()
        yield from _mode_metrics(hub, plane, rooms)
        yield from _fleet_metrics(hub)

        tasks = GaugeMetricFamily(
            "mediaserver_asyncio_tasks", "Tasks of the node's event loop (benchmarks/soak.py)"
        )
        try:
            tasks.add_metric([], len(asyncio.all_tasks()))
        except RuntimeError:  # scraped off the event loop (no running loop)
            pass
        else:
            yield tasks

        families: dict[str, CounterMetricFamily] = {}
        for w in plane.workers:
            for name, value in w.counters.items():
                family = families.get(name)
                if family is None:
                    family = families[name] = CounterMetricFamily(
                        f"consult_media_{name}", f"Media plane counter {name}", labels=["worker"]
                    )
                family.add_metric([w.worker], value)
        yield from families.values()
