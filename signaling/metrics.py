"""Prometheus metrics with the app's own CollectorRegistry.

Labels are bounded enums (role, state, kind, direction, message type, error code): never a room
id, participant id, user id or name. Media counters are read from `node.counters` (plain ints the
media plane increments) at scrape time by a custom collector.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mediaserver.api import Role

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
            for session in consultation.admitted():
                if session.media is None:
                    continue
                try:
                    stats = session.media.link_stats()
                except Exception:
                    continue
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


def _mode_metrics(hub: Hub) -> Iterator[Metric]:
    """Bandwidth fallback (issue 5): participants per mode, transitions, time in mode."""
    now: Tally[tuple[str, str]] = Tally()
    for consultation in list(hub.consultations.values()):
        for s in consultation.admitted():
            modes = getattr(s.media, "modes", None) or {}
            for direction in DIRECTIONS:
                now[(direction, str(modes.get(direction, "video")))] += 1
    counters = hub.node.counters
    current = GaugeMetricFamily(
        "consult_link_mode_participants",
        "Admitted participants per link direction and fallback mode",
        labels=["direction", "mode"],
    )
    transitions = CounterMetricFamily(
        "consult_link_mode_transitions",
        "Fallback mode changes, by direction and the mode entered",
        labels=["direction", "mode"],
    )
    seconds = CounterMetricFamily(
        "consult_link_mode_seconds",
        "Seconds spent in each fallback mode (accounted at each change and when a participant"
        " leaves)",
        labels=["direction", "mode"],
    )
    for direction in DIRECTIONS:
        for mode in MODES:
            key = f"{direction}:{mode}"
            current.add_metric([direction, mode], now[(direction, mode)])
            transitions.add_metric([direction, mode], counters.mode_transitions.get(key, 0))
            seconds.add_metric([direction, mode], counters.mode_seconds.get(key, 0.0))
    yield current
    yield transitions
    yield seconds


class HubCollector(Collector):
    """Gauges of rooms/participants/tracks and the media node's counters, read at scrape time."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        rooms = GaugeMetricFamily("consult_rooms", "Open consultations")
        rooms.add_metric([], len(hub.consultations))
        yield rooms
        draining = GaugeMetricFamily("consult_node_draining", "1 while the node refuses new rooms")
        draining.add_metric([], 1 if hub.draining else 0)
        yield draining

        tally: Tally[tuple[str, str]] = Tally()
        kinds: Tally[str] = Tally()
        for consultation in list(hub.consultations.values()):
            for s in list(consultation.sessions.values()):
                tally[(s.role.value, s.state.value)] += 1
            try:
                for track in consultation.media_room.tracks():
                    kinds[track.kind] += 1
            except Exception:
                pass
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

        yield from _mode_metrics(hub)

        tasks = GaugeMetricFamily(
            "mediaserver_asyncio_tasks", "Tasks of the node's event loop (benchmarks/soak.py)"
        )
        try:
            tasks.add_metric([], len(asyncio.all_tasks()))
        except RuntimeError:  # scraped off the event loop (no running loop)
            pass
        else:
            yield tasks

        counters = hub.node.counters
        for f in dataclasses.fields(counters):
            value = getattr(counters, f.name)
            if isinstance(value, int):
                family = CounterMetricFamily(
                    f"consult_media_{f.name}", f"Media plane counter {f.name}"
                )
                family.add_metric([], value)
                yield family
