"""Vital-sign telemetry: schema, validation, the room's log, relay and replay.

A device (or a nurse's app) sends batches of readings; each accepted reading gets the room's
next sequence number `seq` (1, 2, 3... per room, no gaps), is kept for the room's life and is
relayed to every admitted participant except devices. A client that lost its socket asks for
what it missed with `telemetry-history {after: <last seq it has>}` (pages bounded in count and
in bytes: every record knows its JSON size, so a page costs O(page)): the log is the single
source of truth, live records and replayed ones carry the same `seq`, so a client merges them
without loss or duplicates. Device batches carry the device's own increasing `seq`: a batch
re-sent after a reconnect (its ack was lost) is acknowledged again and not stored twice.

Reading schema (docs/devices.md): every reading has `kind`, `t` (the device's clock when it was
measured: milliseconds since the Unix epoch) and a `unit` that must be the one listed.

| kind | fields | unit | range |
|---|---|---|---|
| `spo2` | `value` | `%` | 50-100 |
| `heart_rate` | `value` | `bpm` | 20-300 |
| `temperature` | `value` | `Cel` | 30-45 |
| `respiratory_rate` | `value` | `/min` | 2-80 |
| `blood_pressure` | `systolic`, `diastolic`, `mean?` | `mm[Hg]` | 40-300 / 20-200, sys > dia |
| `ecg` | `lead`, `rate` (250-500 samples/s), `samples` (1-1000 numbers) | `mV` | -10..10 each |

No reading value is ever logged: errors name the field, not the value.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mediaserver.api import Role

from .protocol import ENVELOPE_BYTES, ErrorCode, ProtocolError

if TYPE_CHECKING:
    from .consultation import Consultation
    from .session import Session

MAX_BATCH = 100
MAX_ECG_SAMPLES = 1000
HISTORY_PAGE = 200  # records per telemetry-history reply, at most (and max_message_bytes)
# A room keeps its telemetry for its life, within bounds: 500 000 records is over 5 hours of
# a 500 samples/s ECG in 20-sample batches, plus vitals; and room_telemetry_bytes of JSON (64
# MiB by default: about 3 hours of that ECG), beyond which batches are refused ("full").
MAX_RECORDS = 500_000
ECG_LEADS = frozenset({"I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"})
# the device clock may run ahead of ours a little, never days
MAX_FUTURE_MS = 24 * 3600 * 1000
MIN_T_MS = 946684800000  # 2000-01-01

SCALARS: dict[str, tuple[str, float, float]] = {
    "spo2": ("%", 50, 100),
    "heart_rate": ("bpm", 20, 300),
    "temperature": ("Cel", 30, 45),
    "respiratory_rate": ("/min", 2, 80),
}
KINDS = (*SCALARS, "blood_pressure", "ecg")


class TelemetryError(ValueError):
    """A batch refused as a whole: nothing of it is stored or relayed."""


class TelemetryForbidden(TelemetryError):
    """The sender may not send vital signs (error `forbidden`); nothing is stored."""


def may_send(session: Session) -> bool:
    """Vital signs come from a `device`, or from a participant whose token has the claim
    `"telemetry": true`; never from an observer (docs/protocol.md, "Telemetry")."""
    if session.role is Role.DEVICE:
        return True
    return session.role is not Role.OBSERVER and session.telemetry_granted


def _number(reading: dict[str, Any], key: str, where: str, lo: float, hi: float) -> float:
    value = reading.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TelemetryError(f"{where}: {key} must be a number")
    if not lo <= value <= hi:
        raise TelemetryError(f"{where}: {key} out of range {lo:g}..{hi:g}")
    return float(value)


def validate_reading(reading: object, where: str, now_ms: int) -> dict[str, Any]:
    """A clean copy of one reading (only the schema's fields), or TelemetryError."""
    if not isinstance(reading, dict):
        raise TelemetryError(f"{where}: a reading must be an object")
    kind = reading.get("kind")
    if kind not in KINDS:
        raise TelemetryError(f"{where}: kind must be one of {', '.join(KINDS)}")
    t = reading.get("t")
    if isinstance(t, bool) or not isinstance(t, int):
        raise TelemetryError(f"{where}: t must be integer milliseconds since the Unix epoch")
    if not MIN_T_MS <= t <= now_ms + MAX_FUTURE_MS:
        raise TelemetryError(f"{where}: t is not a plausible device time")
    unit = reading.get("unit")
    clean: dict[str, Any] = {"kind": kind, "t": t}
    if kind in SCALARS:
        expected, lo, hi = SCALARS[kind]
        if unit != expected:
            raise TelemetryError(f"{where}: unit of {kind} must be {expected!r}")
        clean["value"] = _number(reading, "value", where, lo, hi)
    elif kind == "blood_pressure":
        if unit != "mm[Hg]":
            raise TelemetryError(f"{where}: unit of blood_pressure must be 'mm[Hg]'")
        systolic = _number(reading, "systolic", where, 40, 300)
        diastolic = _number(reading, "diastolic", where, 20, 200)
        if systolic <= diastolic:
            raise TelemetryError(f"{where}: systolic must be above diastolic")
        clean.update(systolic=systolic, diastolic=diastolic)
        if reading.get("mean") is not None:
            clean["mean"] = _number(reading, "mean", where, diastolic, systolic)
    else:  # ecg
        if unit != "mV":
            raise TelemetryError(f"{where}: unit of ecg must be 'mV'")
        lead = reading.get("lead", "II")
        if lead not in ECG_LEADS:
            raise TelemetryError(f"{where}: lead must be one of {', '.join(sorted(ECG_LEADS))}")
        rate = reading.get("rate")
        if isinstance(rate, bool) or not isinstance(rate, int) or not 250 <= rate <= 500:
            raise TelemetryError(f"{where}: rate must be an integer 250..500 samples/s")
        samples = reading.get("samples")
        if not isinstance(samples, list) or not 1 <= len(samples) <= MAX_ECG_SAMPLES:
            raise TelemetryError(f"{where}: samples must be a list of 1..{MAX_ECG_SAMPLES}")
        for s in samples:
            if isinstance(s, bool) or not isinstance(s, int | float) or not -10 <= s <= 10:
                raise TelemetryError(f"{where}: samples must be numbers within -10..10 mV")
        clean.update(lead=lead, rate=rate, samples=[float(s) for s in samples])
    clean["unit"] = unit
    return clean


def validate_batch(readings: object, now_ms: int | None = None) -> list[dict[str, Any]]:
    if not isinstance(readings, list) or not 1 <= len(readings) <= MAX_BATCH:
        raise TelemetryError(f"readings must be a list of 1..{MAX_BATCH}")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return [validate_reading(r, f"readings[{i}]", now) for i, r in enumerate(readings)]


def parse_device_seq(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise TelemetryError("seq must be a non-negative integer")
    return value


@dataclass(slots=True)
class TelemetryLog:
    """The room's telemetry, kept for its life (a list indexed by seq - 1)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # JSON bytes of each record
    max_bytes: int = 64 << 20  # JSON bytes the room keeps (room_telemetry_bytes, issue 11)
    bytes: int = 0
    device_seq: dict[str, int] = field(default_factory=dict)  # participant -> last batch seq

    @property
    def last(self) -> int:
        return len(self.records)

    def append_batch(
        self,
        sender: str,
        readings: list[dict[str, Any]],
        device_seq: int | None,
        *,
        role: str = Role.DEVICE.value,
        max_record_bytes: int | None = None,
    ) -> list[dict[str, Any]] | None:
        """Store a validated batch; None when it is a re-sent batch already stored.

        TelemetryError when a record's JSON would be over `max_record_bytes` (it could not be
        sent in one message): nothing of the batch is stored.
        """
        if device_seq is not None and device_seq <= self.device_seq.get(sender, -1):
            return None
        if len(self.records) + len(readings) > MAX_RECORDS:
            raise TelemetryError("the room's telemetry log is full")
        received = int(time.time() * 1000)
        out = []
        sizes = []
        for i, reading in enumerate(readings):
            record = {
                "seq": len(self.records) + 1 + i,
                "from": sender,
                "role": role,  # who produced it: the participant (opaque id) and its role
                "received": received,
                **reading,
            }
            size = len(json.dumps(record, separators=(",", ":")))
            if max_record_bytes is not None and size > max_record_bytes:
                raise TelemetryError(f"readings[{i}] is larger than {max_record_bytes} bytes")
            out.append(record)
            sizes.append(size)
        if self.bytes + sum(sizes) > self.max_bytes:
            raise TelemetryError("the room's telemetry log is full")
        if device_seq is not None:
            self.device_seq[sender] = device_seq
        self.records.extend(out)
        self.sizes.extend(sizes)
        self.bytes += sum(sizes)
        return out

    def restore(self, batches: list[dict[str, Any]]) -> None:
        """Take back the batches another node kept (the journal's form: `from`, `dseq`,
        `records`, oldest first): the same seq numbers, and each sender's batch numbers so a
        batch re-sent after the move is not stored twice."""
        for batch in batches:
            records = batch.get("records")
            if not isinstance(records, list):
                continue
            for record in records:
                if not isinstance(record, dict) or record.get("seq") != len(self.records) + 1:
                    continue  # out of order: the log stays gapless
                size = len(json.dumps(record, separators=(",", ":")))
                self.records.append(record)
                self.sizes.append(size)
                self.bytes += size
            sender, dseq = batch.get("from"), batch.get("dseq")
            if isinstance(sender, str) and isinstance(dseq, int):
                self.device_seq[sender] = max(dseq, self.device_seq.get(sender, -1))

    def after(
        self, seq: int, limit: int = HISTORY_PAGE, max_bytes: int | None = None
    ) -> list[dict[str, Any]]:
        """Records after `seq`: at most `limit`, and at most `max_bytes` of JSON (brackets and
        commas included) past the first one, which is always there (pages advance)."""
        start = max(0, seq)
        end = min(len(self.records), start + limit)
        if max_bytes is not None:
            used = 2 + (self.sizes[start] if start < end else 0)
            stop = start + 1
            while stop < end and used + 1 + self.sizes[stop] <= max_bytes:
                used += 1 + self.sizes[stop]
                stop += 1
            end = min(end, stop)
        return self.records[start:end]

    def __len__(self) -> int:
        return len(self.records)


def relay(consultation: Consultation, session: Session, batch: object, seq: object) -> int:
    """Validate, store and relay a batch from an admitted participant; returns records stored.

    TelemetryError when the batch is refused (nothing stored, nothing relayed); ProtocolError
    `rate-limited` over the participant's telemetry rate (telemetry_rate readings/s).
    """
    from .session import SessionState

    if session.state is not SessionState.ADMITTED:
        raise TelemetryError("telemetry is open after admission")
    if not may_send(session):
        raise TelemetryForbidden("only devices, or a token granting telemetry, send vital signs")
    count = len(batch) if isinstance(batch, list) else 1
    if not session.telemetry_bucket.take(min(max(count, 1), MAX_BATCH)):
        raise ProtocolError(ErrorCode.RATE_LIMITED, "too many telemetry readings: slow down")
    readings = validate_batch(batch)
    max_record_bytes = consultation.hub.config.max_message_bytes - ENVELOPE_BYTES
    device_seq = parse_device_seq(seq)
    records = consultation.telemetry.append_batch(
        session.id,
        readings,
        device_seq,
        role=session.role.value,
        max_record_bytes=max_record_bytes,
    )
    if not records:
        return 0
    consultation.journal.telemetry(session.id, device_seq, records)  # fleet: outlives the node
    for other in consultation.admitted():
        if other is not session and other.role is not Role.DEVICE:
            for record in records:
                other.send({"type": "telemetry", "record": record})
    return len(records)
