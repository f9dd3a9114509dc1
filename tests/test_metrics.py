"""/metrics: content, media counters read at scrape time, no ids or names anywhere."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from signaling.client import ConsultClient

from .conftest import Server

Clients = Callable[[Server], ConsultClient]


async def scrape(server: Server) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/metrics") as r:
            assert r.status == 200
            assert r.content_type == "text/plain"
            return await r.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.workers(0)  # reaches the in-process media objects
async def test_metrics_content_and_no_pii(server: Server, clients: Clients) -> None:
    doctor = clients(server)
    await doctor.connect(server.token("doctor", sub="sub-doc-4471", name="Doctor Quinn"))
    patient = clients(server)
    await patient.connect(server.token("patient", sub="sub-pat-9917", name="Mary Privacy"))
    other = clients(server)
    await other.connect(server.token("observer", room="r2", sub="sub-obs-1", name="Olive Obs"))
    await doctor.admit(patient.participant_id or "")
    await patient.wait_state("admitted")
    await patient.send_raw('{"type":"nope","id":"1"}')
    await patient.wait_for("error")
    server.node.counters.packets_forwarded += 1234
    server.node.counters.nacks_received += 7
    server.node.counters.plis_sent += 3
    await asyncio.sleep(0.7)  # a loop-lag sample and a link-stats sample

    text = await scrape(server)
    values = samples(text)
    assert values[("consult_rooms", ())] == 2
    assert values[("consult_participants", (("role", "doctor"), ("state", "admitted")))] == 1
    assert values[("consult_participants", (("role", "patient"), ("state", "admitted")))] == 1
    assert values[("consult_participants", (("role", "observer"), ("state", "admitted")))] == 1
    assert values[("consult_participants", (("role", "patient"), ("state", "waiting")))] == 0
    assert values[("consult_tracks", (("kind", "video"),))] == 0
    local = (("worker", "local"),)  # the in-process media plane's label
    assert values[("consult_media_packets_forwarded_total", local)] >= 1234
    assert values[("consult_media_nacks_received_total", local)] >= 7
    assert values[("consult_media_plis_sent_total", local)] >= 3
    assert values[("consult_join_latency_seconds_count", ())] == 3
    assert values[("consult_event_loop_lag_seconds_count", ())] >= 1
    assert values[("consult_ws_errors_total", (("code", "unknown-type"),))] == 1
    assert ("consult_link_loss_ratio_count", (("direction", "uplink"),)) in values

    for secret in ("sub-doc-4471", "sub-pat-9917", "Doctor Quinn", "Mary Privacy", "Olive"):
        assert secret not in text
    for client in (doctor, patient, other):
        assert client.participant_id is not None and client.participant_id not in text
    assert '"r1"' not in text and '"r2"' not in text


async def test_asyncio_task_gauge(server: Server) -> None:
    """The soak benchmark watches the node's task count (benchmarks/soak.py)."""
    value = samples(await scrape(server))[("mediaserver_asyncio_tasks", ())]
    assert value >= 1
