"""Lifecycle of departed participants and of media sessions that never connect (issue 11).

Item 5: a participant that published and left is freed whatever the timing of its leave
(after its media flowed, while the server's offer to the staying doctor is unanswered, right
after its `publish`): no Subscription to its publications stays with the doctor, and weak
references show that its Participant, Publications, the Subscriptions to them, its peer
connection, transport and packet caches are collected. A real node, real aiortc clients
(ConsultClient: it publishes with `publish` and answers the server's offers).

Item 6: a media session that never connects (the server's offer unanswered; ICE that cannot
complete because the client's UDP is dropped) is closed after peer_timeout_s and the client is
told `media-timeout`; the client starts a fresh connection by itself and gets media once the
network is back.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from mediaserver.participant import Participant
from signaling.client import ConsultClient
from tests.media_peers import PatternVideoTrack

from .conftest import Server, ServerFactory
from .netns import NetNS
from .shaping import ShapedLink, shaping_available
from .test_fallback_shaped import ShapedCall

Clients = Callable[[Server], ConsultClient]
ROOM = "r1"
_users = itertools.count(1)  # a platform user id per departing patient


async def _until(predicate: Callable[[], bool], timeout_s: float = 30, what: str = "") -> None:
    async def loop() -> None:
        while not predicate():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(loop(), timeout_s)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what or predicate}")


def _media(server: Server, participant_id: str | None) -> Participant:
    return server.participant(participant_id, room=ROOM)


async def _doctor(server: Server, clients: Clients) -> ConsultClient:
    """The doctor who stays, in a room without a waiting room; publishes audio and video."""
    status, _ = await server.api("POST", "/api/v1/rooms", json={"id": ROOM, "waiting_room": False})
    assert status == 201
    doctor = clients(server)
    await doctor.connect(server.token("doctor", room=ROOM))
    await doctor.publish(AudioStreamTrack(), PatternVideoTrack())
    await _until(lambda: _media(server, doctor.participant_id).connection_state == "connected")
    return doctor


def _weakrefs(server: Server, participant_id: str) -> dict[str, weakref.ref[Any]]:
    """Weak references to everything of a participant the node must free once it left."""
    participant = _media(server, participant_id)
    refs: dict[str, weakref.ref[Any]] = {
        "session": weakref.ref(server.hub.consultations[ROOM].sessions[participant_id]),
        "participant": weakref.ref(participant),
        "peer connection": weakref.ref(participant.pc),
    }
    if participant.transport is not None:
        refs["transport"] = weakref.ref(participant.transport)
        refs["dtls transport"] = weakref.ref(participant.transport.dtls)
    for pub in participant.publications.values():
        refs[f"publication {pub.kind}"] = weakref.ref(pub)
        refs[f"packet cache {pub.kind}"] = weakref.ref(pub.cache)
    for sub in participant.subscriptions.values():
        refs[f"own subscription {sub.kind}"] = weakref.ref(sub)
    for other in server.media_room(ROOM).participants.values():
        for sub in other.subscriptions.values():
            if sub.publication.participant_id == participant_id:
                refs[f"a subscription to its {sub.kind}"] = weakref.ref(sub)
    return refs


async def _collected(refs: dict[str, weakref.ref[Any]]) -> None:
    """Every referent is collected (the loop runs a little: aiortc's close tasks end)."""
    for _ in range(100):
        gc.collect()
        if all(r() is None for r in refs.values()):
            return
        await asyncio.sleep(0.1)
    alive = sorted(name for name, r in refs.items() if r() is not None)
    pytest.fail(f"still referenced after the participant left: {alive}")


async def _publish_and_leave(
    server: Server, clients: Clients, doctor: ConsultClient, when: str
) -> dict[str, weakref.ref[Any]]:
    """A patient joins, publishes, and leaves at `when`; weak references to what it had."""
    patient = clients(server)
    await patient.connect(server.token("patient", room=ROOM, sub=f"u-{next(_users)}"))
    doctor_media = _media(server, doctor.participant_id)
    answered = doctor.negotiations
    if when == "offer-to-doctor-pending":
        doctor.auto_answer = False  # the doctor's answer is late
    await patient.publish(AudioStreamTrack(), PatternVideoTrack())
    pid = patient.participant_id or ""
    if when == "media-flowing":
        track = await doctor.wait_track(pid, "video", timeout_s=30)
        await asyncio.wait_for(track.recv(), 30)
    elif when == "offer-to-doctor-pending":
        subs = doctor_media.subscriptions
        await _until(lambda: len(subs) == 2 and doctor_media.pending_offer() is not None)
    else:
        assert when == "right-after-publish"
        await _until(lambda: bool(_media(server, pid).publications), what="publications")
    refs = _weakrefs(server, pid)
    assert "a subscription to its video" in refs  # the doctor subscribed (started or not)
    await patient.leave()
    await patient.close()
    del patient
    await _until(lambda: pid not in server.hub.consultations[ROOM].sessions, what="left")
    assert not doctor_media.subscriptions  # at once, whatever the timing
    if not doctor.auto_answer:  # the held offer is answered now (the next one follows)
        doctor.auto_answer = True
        await doctor._answer_offer(doctor.received("offer")[-1])
    await _until(lambda: doctor.negotiations > answered, what="the doctor renegotiated")
    return refs


@pytest.mark.parametrize(
    "when", ["media-flowing", "offer-to-doctor-pending", "right-after-publish"]
)
@pytest.mark.workers(0)  # reaches the in-process media objects
async def test_a_departed_publisher_is_collected(
    server: Server, clients: Clients, when: str
) -> None:
    doctor = await _doctor(server, clients)
    refs = await _publish_and_leave(server, clients, doctor, when)
    await _collected(refs)
    status, room = await server.api("GET", f"/api/v1/rooms/{ROOM}")
    assert status == 200
    (only,) = room["participants"]
    assert only["media"]["subscriptions"] == 0 and room["tracks"] == [
        t for t in room["tracks"] if t["participant"] == doctor.participant_id
    ]


@pytest.mark.workers(0)  # reaches the in-process media objects
async def test_join_publish_leave_cycles_leave_the_doctor_as_before(
    server: Server, clients: Clients
) -> None:
    """20 patients publish and leave in turn, each at another moment: the doctor's
    subscriptions are back to none, and nothing of any of them is left."""
    doctor = await _doctor(server, clients)
    refs: dict[str, weakref.ref[Any]] = {}
    moments = ["right-after-publish", "offer-to-doctor-pending", "media-flowing"]
    for n in range(20):
        cycle = await _publish_and_leave(server, clients, doctor, moments[n % 3])
        refs.update({f"{name} ({n})": ref for name, ref in cycle.items()})
    media = _media(server, doctor.participant_id)
    assert (
        not media.subscriptions
        and not media.negotiator.sub_by_transceiver
        and not media.demux.sub_by_ssrc
    )
    await _collected(refs)
    status, room = await server.api("GET", f"/api/v1/rooms/{ROOM}")
    assert status == 200 and room["participants"][0]["media"]["subscriptions"] == 0


# -- item 6: media sessions that never connect ---------------------------------------------------


@pytest.mark.workers(0)  # reaches the in-process media objects
async def test_an_unanswered_media_session_is_closed_and_reported(
    make_server: ServerFactory, clients: Clients
) -> None:
    """The server's offer is never answered (the session stays `new`): after peer_timeout_s
    the connection is closed and the client gets `media-timeout`; with no `reconnect` either,
    the participant is removed after peer_timeout_s more (close 4008)."""
    server = await make_server(peer_timeout_s=2.0)
    status, _ = await server.api("POST", "/api/v1/rooms", json={"id": ROOM, "waiting_room": False})
    assert status == 201
    doctor = clients(server)
    await doctor.connect(server.token("doctor", room=ROOM))
    silent = ConsultClient(server.url, auto_answer=False)
    try:
        await silent.connect(server.token("patient", room=ROOM))
        await silent.publish(AudioStreamTrack())
        await silent.wait_for("offer", timeout_s=30)
        media = _media(server, silent.participant_id)
        assert media.pending_offer() is not None and media.connection_state == "new"
        error = await silent.wait_for("error", timeout_s=30)
        assert error["code"] == "media-timeout" and error["ref"] is None
        assert media.connection_state == "closed" and not media.closed  # only the connection
        left = await doctor.wait_for("participant-left", timeout_s=30)
        assert left == {
            "type": "participant-left",
            "participant": silent.participant_id,
            "reason": "timeout",
        }
        assert await silent.wait_closed() == 4008
    finally:
        await silent.close()


@pytest.mark.workers(0)  # reaches the in-process media objects
async def test_a_lost_answer_is_recovered_by_the_client_itself(
    make_server: ServerFactory, clients: Clients
) -> None:
    """The client's answer to the server's first offer is lost: on `media-timeout` a plain
    ConsultClient (no `auto_reconnect`) starts a fresh connection, and what it asked to
    publish (never received on the old connection) is published on the new one."""
    server = await make_server(peer_timeout_s=2.0)
    status, _ = await server.api("POST", "/api/v1/rooms", json={"id": ROOM, "waiting_room": False})
    assert status == 201
    doctor = clients(server)
    await doctor.connect(server.token("doctor", room=ROOM))
    patient = clients(server)
    answer = patient._answer_offer
    lost: list[dict[str, Any]] = []

    async def lose_the_first(msg: dict[str, Any]) -> None:
        if not lost:
            lost.append(msg)  # as if the answer never reached the server
            return
        await answer(msg)

    patient._answer_offer = lose_the_first  # type: ignore[method-assign]
    await patient.connect(server.token("patient", room=ROOM))
    await patient.publish(AudioStreamTrack(), PatternVideoTrack())
    error = await patient.wait_for("error", timeout_s=30)
    assert error["code"] == "media-timeout" and lost
    track = await doctor.wait_track(patient.participant_id or "", "video", timeout_s=30)
    await asyncio.wait_for(track.recv(), 30)
    assert patient.reconnects == 1
    assert _media(server, patient.participant_id).connection_state == "connected"


@pytest.mark.workers(0)  # reaches the in-process media objects
async def test_tracks_a_client_offered_on_a_connection_that_never_connected_are_asked_again(
    make_server: ServerFactory, clients: Clients
) -> None:
    """A browser publishes by offering (consult.js): its sendonly camera and microphone are
    answered, but the connection never connects (here its answer is never applied: no ICE),
    so no publication starts. After `media-timeout` the client's `reconnect` must get an
    offer with a recvonly m-line per source it had offered, or its fresh connection can never
    publish them (a compat `codec` cell: the doctor never got the Firefox patient's camera)."""
    server = await make_server(peer_timeout_s=2.0)
    status, _ = await server.api("POST", "/api/v1/rooms", json={"id": ROOM, "waiting_room": False})
    assert status == 201
    doctor = clients(server)
    await doctor.connect(server.token("doctor", room=ROOM))
    browser = ConsultClient(server.url, auto_answer=False)
    pc = RTCPeerConnection()
    try:
        await browser.connect(server.token("patient", room=ROOM))
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        pc.addTransceiver(PatternVideoTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        mids = {t.kind: t.mid for t in pc.getTransceivers()}
        offered = {
            mids["audio"]: {"source": "microphone"},
            mids["video"]: {"source": "camera"},
        }
        reply = await browser.request("offer", sdp=pc.localDescription.sdp, tracks=offered)
        assert reply["type"] == "answer"  # never applied: this connection cannot connect
        media = _media(server, browser.participant_id)
        error = await browser.wait_for("error", timeout_s=30)
        assert error["code"] == "media-timeout"
        assert not media.publications
        await browser.request("reconnect")
        offer = await browser.wait_for("offer", timeout_s=30)
        asked = sorted(
            (t["kind"], t["source"])
            for t in offer["tracks"].values()
            if t.get("direction") == "recvonly"
        )
        assert asked == [("audio", "microphone"), ("video", "camera")], offer["tracks"]
    finally:
        await pc.close()
        await browser.close()


async def test_a_media_session_that_cannot_connect_is_restarted_by_the_client() -> None:
    """The patient (tests/peers/shaped_peer.py, in its own namespace) joins while its UDP is
    dropped: ICE never completes (`connecting`). After peer_timeout_s the server closes that
    connection and sends `media-timeout`; the client starts a fresh one (`reconnect`) by
    itself, again and again while UDP is down; once UDP is back, media flows both ways."""
    ok, why = shaping_available()
    if not ok:
        pytest.fail(f"cannot shape links here (make test runs as root): {why}")
    with NetNS("consult11") as ns, ShapedLink(ns) as link:
        link.udp_outage(True)
        call = ShapedCall(ns, link, peer_timeout_s=5.0)
        try:
            await call.start(wait_media=False)
            media = call.media()
            await call.wait_event(_media_timeout, 60, "media-timeout")
            await call.until(lambda: media.transport_restarts >= 1, 30, "a reconnect")
            assert call.media() is media and not media.closed  # the same participant
            assert not call.uplink_received()
            link.udp_outage(False)
            await call.until(call.media_flowing, 90, "media flowing after UDP is back")
            frames = call.events[-1].get("video_frames", 0)
            await call.wait_event(
                lambda e: e["event"] == "stats" and e["video_frames"] > frames + 10,
                30,
                "the patient decodes the doctor's video",
            )
        finally:
            for event in call.events[-60:]:
                print("patient:", json.dumps(event)[:300])
            await call.close()


def _media_timeout(event: dict[str, Any]) -> bool:
    message = event.get("message")
    return (
        event["event"] == "error"
        and isinstance(message, dict)
        and message.get("code") == "media-timeout"
    )
