"""Quality of one consultation over a measurement window, and whether it was sustained.

Pure functions over the generator's cumulative counters (two snapshots), unit-tested.

A consultation is *sustained* when (thresholds configurable, `Thresholds`):
- it joined (signaling, waiting room, ICE, DTLS, first packet on all four streams) within
  `max_join_s` (2 s);
- each of its four streams (doctor -> patient and patient -> doctor, audio and video) lost
  at most `max_loss` (1%) of its packets after retransmission (NACK/RTX) over the window;
- each stream's p95 one-way latency (generator send time to generator arrival, through the
  SFU: see `loadtest.generator`) is at most `max_latency_p95_ms` (50 ms);
- no video stream froze: at most `max_freezes` (0) gaps over `FREEZE_S` (500 ms) between
  consecutive video packets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .generator import FREEZE_S, percentile

STREAMS_PER_CONSULTATION = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    max_loss: float = 0.01
    max_latency_p95_ms: float = 50.0
    max_freezes: int = 0
    max_join_s: float = 2.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self) | {"freeze_gap_ms": FREEZE_S * 1000}


def _hist_delta(before: dict[str, int], after: dict[str, int]) -> dict[int, int]:
    out = {}
    for k, n in after.items():
        d = n - before.get(k, 0)
        if d > 0:
            out[int(k)] = d
    return out


def stream_window(
    before: dict[str, Any] | None, after: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """One stream's quality over the window between two cumulative snapshots."""
    b = before or {}
    expected = after["expected"] - b.get("expected", 0)
    received = after["received"] - b.get("received", 0)
    lat = _hist_delta(b.get("latency_hist", {}), after.get("latency_hist", {}))
    loss = max(0.0, 1 - received / expected) if expected > 0 else 1.0
    return {
        "kind": after["kind"],
        "from": after.get("from", ""),
        "to": after.get("to", ""),
        "expected": expected,
        "received": received,
        "recovered": after.get("recovered", 0) - b.get("recovered", 0),
        "loss": loss,
        "jitter_ms": after.get("jitter_ms", 0.0),
        "latency_p50_ms": percentile(lat, 0.5) if lat else None,
        "latency_p95_ms": percentile(lat, 0.95) if lat else None,
        "latency_samples": sum(lat.values()),
        "freezes": after.get("freezes", 0) - b.get("freezes", 0),
        "gap_max_ms": after.get("gap_max_ms", 0.0),
        "bitrate_kbps": (after["bytes"] - b.get("bytes", 0)) * 8 / 1000 / seconds
        if seconds > 0
        else 0.0,
    }


def consultation_window(
    before: dict[str, Any] | None, after: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """A consultation's streams over the window (snapshots from `loadtest.worker`)."""
    old = {(s["to"], s["kind"]): s for s in (before or {}).get("streams", [])}
    streams = [stream_window(old.get((s["to"], s["kind"])), s, seconds) for s in after["streams"]]
    return {
        "id": after["id"],
        "error": after.get("error", ""),
        "join_s": after.get("join_s"),
        "signaling_s": after.get("signaling_s"),
        "streams": streams,
    }


def evaluate(c: dict[str, Any], th: Thresholds) -> tuple[bool, list[str]]:
    """(sustained, the reasons it was not) for a `consultation_window` result."""
    reasons: list[str] = []
    if c.get("error"):
        return False, [str(c["error"])]
    join = c.get("join_s")
    if join is None:
        reasons.append("never joined")
    elif join > th.max_join_s:
        reasons.append(f"join {join:.2f} s > {th.max_join_s:g} s")
    streams = c.get("streams", [])
    if len(streams) < STREAMS_PER_CONSULTATION:
        reasons.append(f"{len(streams)} of {STREAMS_PER_CONSULTATION} streams")
    for s in streams:
        name = f"{s['from']}->{s['to']} {s['kind']}"
        if s["expected"] <= 0:
            reasons.append(f"{name}: no packets")
            continue
        if s["loss"] > th.max_loss:
            reasons.append(f"{name}: loss {s['loss'] * 100:.2f}% > {th.max_loss * 100:g}%")
        p95 = s.get("latency_p95_ms")
        if p95 is None:
            reasons.append(f"{name}: no latency measured")
        elif p95 > th.max_latency_p95_ms:
            reasons.append(f"{name}: p95 latency {p95:.0f} ms > {th.max_latency_p95_ms:g} ms")
        if s["kind"] == "video" and s.get("freezes", 0) > th.max_freezes:
            reasons.append(f"{name}: {s['freezes']} freezes (gaps > {FREEZE_S * 1000:.0f} ms)")
    return not reasons, reasons
