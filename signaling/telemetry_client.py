"""Telemetry on top of ConsultClient: a device sender that survives reconnects, and a receiver
that merges live and replayed records by the room's `seq` (no loss, no duplicates).

    sender = TelemetrySender(device_client)
    await sender.send([{"kind": "heart_rate", "value": 72, "unit": "bpm", "t": now_ms}])
    receiver = TelemetryReceiver(doctor_client)
    await receiver.sync()          # after connect or resume: fetch what the socket missed
    records = receiver.records()   # every record once, in seq order
"""

from __future__ import annotations

import asyncio
from typing import Any

from .client import ConsultClient, ServerError


class TelemetrySender:
    """Batches get an increasing device `seq`; a batch whose ack never came is sent again."""

    def __init__(self, client: ConsultClient) -> None:
        self.client = client
        self.seq = 0
        self.unacked: list[tuple[int, list[dict[str, Any]]]] = []

    def add(self, readings: list[dict[str, Any]]) -> None:
        """Queue a batch (sent by the next flush)."""
        self.seq += 1
        self.unacked.append((self.seq, readings))

    async def send(self, readings: list[dict[str, Any]], timeout_s: float = 15.0) -> None:
        self.add(readings)
        await self.flush(timeout_s)

    async def flush(self, timeout_s: float = 15.0) -> None:
        """Send every batch not acknowledged yet, in order, without waiting for each ack
        (pipelined on the one socket); then wait for the acks. ServerError on a refused batch
        (dropped from the queue), ConnectionError when the socket went (kept for a resume)."""
        while self.unacked:
            sent: list[tuple[int, str, asyncio.Future[dict[str, Any]]]] = []
            try:
                for seq, readings in list(self.unacked):
                    ref = self.client._next_id()
                    sent.append((seq, ref, self.client._expect(ref)))
                    await self.client.send(
                        {"type": "telemetry", "id": ref, "seq": seq, "readings": readings}
                    )
                for seq, _, future in sent:
                    reply = await asyncio.wait_for(future, timeout_s)
                    self.unacked = [b for b in self.unacked if b[0] != seq]
                    if reply.get("type") == "error":  # refused: dropped, the caller is told
                        raise ServerError(reply.get("code", ""), reply.get("message", ""))
            except (AssertionError, ConnectionError, RuntimeError, TimeoutError) as exc:
                raise ConnectionError("socket lost") from exc
            finally:
                for _, ref, future in sent:
                    future.cancel()
                    self.client._pending.pop(ref, None)


class TelemetryReceiver:
    def __init__(self, client: ConsultClient) -> None:
        self.client = client
        self._replayed: dict[int, dict[str, Any]] = {}

    def _merged(self) -> dict[int, dict[str, Any]]:
        merged = dict(self._replayed)
        for msg in self.client.received("telemetry"):
            record = msg.get("record")
            if isinstance(record, dict) and isinstance(record.get("seq"), int):
                merged.setdefault(record["seq"], record)
        return merged

    def records(self) -> list[dict[str, Any]]:
        """Records 1..n with no gap (what comes after a gap waits for `sync`)."""
        merged = self._merged()
        out = []
        seq = 1
        while seq in merged:
            out.append(merged[seq])
            seq += 1
        return out

    @property
    def contiguous(self) -> int:
        return len(self.records())

    async def sync(self) -> int:
        """Fetch every record after the last contiguous one; returns the room's last seq."""
        while True:
            after = self.contiguous
            reply = await self.client.request("telemetry-history", after=after)
            for record in reply.get("records", []):
                self._replayed.setdefault(record["seq"], record)
            if not reply.get("records") or self.contiguous >= reply.get("last", 0):
                return int(reply.get("last", 0))

    async def wait_count(self, count: int, timeout_s: float = 30.0) -> None:
        async def wait() -> None:
            while self.contiguous < count:
                await self.client.wait_for("telemetry", lambda _m: True, timeout_s=timeout_s)

        await asyncio.wait_for(wait(), timeout_s)
