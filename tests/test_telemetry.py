"""Vital-sign telemetry: schema validation, relay to the doctor, replay after a reconnect."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from typing import Any

import pytest

from signaling.client import ConsultClient, ServerError
from signaling.telemetry import TelemetryError, TelemetryLog, validate_batch
from signaling.telemetry_client import TelemetryReceiver, TelemetrySender

from .conftest import Server

Clients = Callable[[Server], ConsultClient]
RATE = 500  # ECG samples/s
CHUNK = 20  # samples per batch: one batch every 40 ms


def now_ms() -> int:
    return int(time.time() * 1000)


def ecg_value(i: int) -> float:
    """Sample i of a synthetic ECG; rounding keeps it exact through JSON."""
    return round(math.sin(2 * math.pi * 1.2 * i / RATE) + 0.001 * (i % 997), 4)


def ecg(start: int, t0: int) -> dict[str, Any]:
    return {
        "kind": "ecg",
        "lead": "II",
        "rate": RATE,
        "unit": "mV",
        "t": t0 + start * 1000 // RATE,
        "samples": [ecg_value(i) for i in range(start, start + CHUNK)],
    }


@pytest.mark.parametrize(
    ("reading", "message"),
    [
        ({"kind": "spo2", "value": 97, "unit": "bpm"}, "unit of spo2"),
        ({"kind": "spo2", "value": 120, "unit": "%"}, "value out of range"),
        ({"kind": "heart_rate", "value": "72", "unit": "bpm"}, "value must be a number"),
        ({"kind": "heart_rate", "value": float("nan"), "unit": "bpm"}, "must be a number"),
        ({"kind": "glucose", "value": 5, "unit": "mmol/L"}, "kind must be one of"),
        ({"kind": "temperature", "value": 37.0, "unit": "Cel", "t": "now"}, "t must be integer"),
        (
            {"kind": "blood_pressure", "systolic": 80, "diastolic": 120, "unit": "mm[Hg]"},
            "systolic must be above diastolic",
        ),
        ({"kind": "ecg", "rate": 100, "unit": "mV", "samples": [0.1]}, "rate must be"),
        ({"kind": "ecg", "rate": 500, "unit": "mV", "samples": [0.1, 99]}, "within -10..10"),
        ({"kind": "ecg", "rate": 500, "unit": "mV", "samples": []}, "samples must be a list"),
    ],
)
def test_schema_refuses_bad_readings(reading: dict[str, Any], message: str) -> None:
    reading = {"t": now_ms(), **reading}
    with pytest.raises(TelemetryError, match=message):
        validate_batch([reading])


def test_schema_accepts_every_kind_and_drops_unknown_fields() -> None:
    t = now_ms()
    clean = validate_batch(
        [
            {"kind": "spo2", "value": 97, "unit": "%", "t": t, "patient": "Jane"},
            {"kind": "heart_rate", "value": 72, "unit": "bpm", "t": t},
            {"kind": "temperature", "value": 37.2, "unit": "Cel", "t": t},
            {"kind": "respiratory_rate", "value": 16, "unit": "/min", "t": t},
            {
                "kind": "blood_pressure",
                "systolic": 120,
                "diastolic": 80,
                "mean": 93,
                "unit": "mm[Hg]",
                "t": t,
            },
            ecg(0, t),
        ]
    )
    assert [r["kind"] for r in clean] == [
        "spo2",
        "heart_rate",
        "temperature",
        "respiratory_rate",
        "blood_pressure",
        "ecg",
    ]
    assert "patient" not in clean[0]
    assert clean[5]["samples"] == [ecg_value(i) for i in range(CHUNK)]


def test_log_numbers_records_and_ignores_a_resent_batch() -> None:
    log = TelemetryLog()
    batch = validate_batch([{"kind": "spo2", "value": 97, "unit": "%", "t": now_ms()}])
    first = log.append_batch("p_a", batch, 1)
    assert first is not None and [r["seq"] for r in first] == [1]
    assert log.append_batch("p_a", batch, 1) is None  # re-sent after a lost ack
    assert log.append_batch("p_b", batch, 1) is not None  # another device's own numbering
    assert [r["seq"] for r in log.after(0)] == [1, 2]
    assert log.after(1)[0]["from"] == "p_b"


async def joined(server: Server, clients: Clients) -> tuple[ConsultClient, ConsultClient]:
    doctor = clients(server)
    await doctor.connect(server.token("doctor"))
    device = clients(server)
    await device.connect(server.token("device"))
    await device.wait_state("admitted")
    return doctor, device


async def test_bad_telemetry_gets_a_clear_error_and_nothing_is_relayed(
    server: Server, clients: Clients
) -> None:
    doctor, device = await joined(server, clients)
    bad = [
        {"kind": "spo2", "value": 97, "unit": "%", "t": now_ms()},
        {"kind": "spo2", "value": 140, "unit": "%", "t": now_ms()},
    ]
    with pytest.raises(ServerError) as info:
        await device.request("telemetry", seq=1, readings=bad)
    assert info.value.code == "bad-telemetry"
    assert "readings[1]" in info.value.message and "140" not in info.value.message
    await device.send_raw(json.dumps({"type": "telemetry", "id": "x", "readings": "nope"}))
    error = await device.wait_for("error", lambda m: m["ref"] == "x")
    assert error["code"] == "bad-telemetry"
    # the consultation goes on: a good batch is relayed, and it is the first record
    good = [{"kind": "heart_rate", "value": 71, "unit": "bpm", "t": now_ms()}]
    ack = await device.request("telemetry", seq=2, readings=good)
    assert ack["stored"] == 1
    msg = await doctor.wait_for("telemetry")
    assert msg["record"]["seq"] == 1 and msg["record"]["value"] == 71.0
    assert msg["record"]["from"] == device.participant_id
    assert not device.received("telemetry")  # devices get no relay
    status, info_ = await server.api("GET", "/api/v1/rooms/r1")
    assert status == 200 and info_["telemetry_records"] == 1


async def test_ecg_for_60_s_arrives_complete_and_in_order_across_a_reconnect(
    server: Server, clients: Clients
) -> None:
    doctor, device = await joined(server, clients)
    sender = TelemetrySender(device)
    receiver = TelemetryReceiver(doctor)
    duration_s = 60
    chunks = duration_s * RATE // CHUNK
    t0 = now_ms()
    connected = asyncio.Event()
    connected.set()
    done_producing = asyncio.Event()

    async def produce() -> None:
        start = time.monotonic()
        for n in range(chunks):
            # the device clock: readings are due every CHUNK/RATE seconds
            delay = start + n * CHUNK / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            batch = [ecg(n * CHUNK, t0)]
            if n % (RATE // CHUNK) == 0:
                t = t0 + n * CHUNK * 1000 // RATE
                batch.append({"kind": "heart_rate", "value": 60 + n % 40, "unit": "bpm", "t": t})
                batch.append({"kind": "spo2", "value": 95 + n % 5, "unit": "%", "t": t})
            sender.add(batch)
        done_producing.set()

    async def flush_forever() -> None:
        while True:
            await connected.wait()
            try:
                await sender.flush()
            except ConnectionError:
                await asyncio.sleep(0.05)  # the socket is gone: wait for the resume
                continue
            if done_producing.is_set() and not sender.unacked:
                return
            await asyncio.sleep(0.01)

    producer = asyncio.create_task(produce())
    flusher = asyncio.create_task(flush_forever())
    try:
        await asyncio.sleep(duration_s / 2)
        # forced reconnect of both ends mid-stream
        connected.clear()
        await asyncio.gather(device.drop(), doctor.drop())
        await asyncio.sleep(1.0)  # 25 batches produced meanwhile, none delivered
        assert (await device.resume())["resumed"] is True
        connected.set()
        await doctor.wait_for("room")  # the one of the first join
        assert (await doctor.resume())["resumed"] is True
        room = await doctor.wait_for("room", timeout_s=15)
        assert room["telemetry"]["last"] >= 1  # what the doctor missed is in the log
        await receiver.sync()
        await asyncio.wait_for(producer, duration_s + 60)
        await asyncio.wait_for(flusher, 120)
        last = await receiver.sync()
    finally:
        producer.cancel()
        flusher.cancel()

    records = receiver.records()
    assert len(records) == last
    assert [r["seq"] for r in records] == list(range(1, last + 1))
    waves = [r for r in records if r["kind"] == "ecg"]
    samples = [s for r in waves for s in r["samples"]]
    assert len(samples) == duration_s * RATE  # zero loss, no duplicates
    assert samples == [ecg_value(i) for i in range(duration_s * RATE)]  # in order
    times = [r["t"] for r in waves]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert len([r for r in records if r["kind"] == "heart_rate"]) == duration_s
    _, info = await server.api("GET", "/api/v1/rooms/r1")
    assert info["telemetry_records"] == last


async def test_telemetry_over_the_data_channel_is_relayed_and_acknowledged(
    server: Server, clients: Clients
) -> None:
    from aiortc.mediastreams import AudioStreamTrack

    doctor, device = await joined(server, clients)
    await device.publish(AudioStreamTrack())  # negotiates the transport, data channel included
    await doctor.wait_track(device.participant_id or "", "audio", timeout_s=20)
    assert device.channel is not None
    for _ in range(200):
        if device.channel.readyState == "open":
            break
        await asyncio.sleep(0.05)
    reading = {"kind": "temperature", "value": 37.4, "unit": "Cel", "t": now_ms()}
    device.send_data(json.dumps({"type": "telemetry", "id": "d1", "seq": 1, "readings": [reading]}))
    ack = await device.wait_for("ack", lambda m: m["ref"] == "d1")
    assert ack["stored"] == 1
    msg = await doctor.wait_for("telemetry")
    assert msg["record"]["kind"] == "temperature" and msg["record"]["value"] == 37.4
    bad = {"type": "telemetry", "id": "d2", "seq": 2, "readings": [{**reading, "value": 99}]}
    device.send_data(json.dumps(bad))
    error = await device.wait_for("error", lambda m: m["ref"] == "d2")
    assert error["code"] == "bad-telemetry"
    assert len(doctor.received("telemetry")) == 1
