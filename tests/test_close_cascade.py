"""One test per close cascade: Node -> Room -> Participant -> Publication -> Subscription."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mediaserver.api import CloseReason, IceConfig, MediaConfig, Role
from mediaserver.node import Node
from mediaserver.room import Room
from tests.media_peers import Peer, av_tracks


class Call:
    def __init__(self, node: Node, room: Room, doctor: Peer, patient: Peer) -> None:
        self.node, self.room, self.doctor, self.patient = node, room, doctor, patient
        self.events: list[tuple[str, object]] = []


@pytest.fixture
async def call() -> AsyncIterator[Call]:
    node = Node(MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",))))
    room = node.create_room("r")
    doctor = Peer(room.add_participant("d", role=Role.DOCTOR))
    patient = Peer(room.add_participant("p", role=Role.PATIENT))
    await doctor.publish(av_tracks())
    await patient.publish(av_tracks())
    await patient.wait_frames("video", 3)
    await doctor.wait_frames("video", 3)
    c = Call(node, room, doctor, patient)
    for name in ("participant-removed", "track-unpublished", "close"):
        room.on(name, lambda *args, name=name: c.events.append((name, args)))
    yield c
    await doctor.close()
    await patient.close()
    await node.close()


def closes(emitter: object) -> list[object]:
    seen: list[object] = []
    emitter.on("close", seen.append)  # type: ignore[attr-defined]
    return seen


async def test_subscription_close_is_idempotent_and_renegotiates(call: Call) -> None:
    patient = call.room.participants["p"]
    sub = next(s for s in patient.subscriptions.values() if s.kind == "video")
    pub = sub.publication
    seen = closes(sub)
    offers_before = call.patient.offers
    await sub.close(CloseReason.LEFT)
    await sub.close(CloseReason.LEFT)
    assert seen == [CloseReason.LEFT]
    assert sub not in pub.subscriptions and pub.track_id not in patient.subscriptions
    await asyncio.wait_for(_until(lambda: call.patient.offers > offers_before), 10)
    directions = [t.direction for t in patient.pc.getTransceivers()]
    assert "inactive" in directions


async def test_publication_close_closes_its_subscriptions(call: Call) -> None:
    doctor = call.room.participants["d"]
    patient = call.room.participants["p"]
    pub = next(p for p in doctor.publications.values() if p.kind == "video")
    subs = list(pub.subscriptions)
    assert subs
    seen = [closes(s) for s in subs]
    await pub.close(CloseReason.LEFT)
    assert all(s == [CloseReason.LEFT] for s in seen)
    assert pub.track_id not in doctor.publications
    assert pub.track_id not in patient.subscriptions
    assert ("track-unpublished", (pub.info(),)) in call.events


async def test_publication_close_closes_subscriptions_that_never_started(call: Call) -> None:
    """A subscriber that never answered the offer (its subscriptions never forwarded) loses
    them with the publication too (issue 11: they used to stay, holding the publisher)."""
    late = call.room.add_participant("late", role=Role.OBSERVER)  # no client: never answers
    doctor = call.room.participants["d"]
    pub = next(p for p in doctor.publications.values() if p.kind == "video")
    sub = late.subscriptions[pub.track_id]
    assert sub.forwarder is None and sub not in pub.subscriptions  # not forwarding
    seen = closes(sub)
    await pub.close(CloseReason.LEFT)
    assert seen == [CloseReason.LEFT] and sub.closed
    assert pub.track_id not in late.subscriptions
    assert all(s.publication is not pub for s in late.negotiator.sub_by_transceiver.values())


async def test_participant_close_cascades_to_its_tracks_and_the_room(call: Call) -> None:
    doctor = call.room.participants["d"]
    pubs = list(doctor.publications.values())
    own_subs = list(doctor.subscriptions.values())
    seen = closes(doctor)
    await doctor.close(CloseReason.KICKED)
    await doctor.close(CloseReason.KICKED)
    assert seen == [CloseReason.KICKED]
    assert all(p.closed for p in pubs) and all(s.closed for s in own_subs)
    assert "d" not in call.room.participants
    assert ("participant-removed", ("d", CloseReason.KICKED)) in call.events
    assert doctor.pc.connectionState == "closed"
    assert not call.room.participants["p"].subscriptions  # nothing left to receive


async def test_room_close_closes_participants_and_leaves_the_node(call: Call) -> None:
    participants = list(call.room.participants.values())
    seen = [closes(p) for p in participants]
    await call.room.close(CloseReason.ENDED)
    assert all(s == [CloseReason.ENDED] for s in seen)
    assert "r" not in call.node.rooms
    assert call.room.closed and not call.room.participants
    with pytest.raises(RuntimeError):
        call.room.add_participant("late", role=Role.PATIENT)


async def test_node_close_shuts_every_room(call: Call) -> None:
    other = call.node.create_room("other")
    seen = closes(call.room)
    other_seen = closes(other)
    await call.node.close()
    assert seen == [CloseReason.SHUTDOWN] and other_seen == [CloseReason.SHUTDOWN]
    assert not call.node.rooms
    with pytest.raises(RuntimeError):
        call.node.create_room("again")


async def test_a_failing_listener_never_breaks_a_cascade(call: Call) -> None:
    doctor = call.room.participants["d"]

    def boom(*_: object) -> None:
        raise RuntimeError("listener bug")

    for pub in doctor.publications.values():
        pub.on("close", boom)
        for sub in pub.subscriptions:
            sub.on("close", boom)
    doctor.on("close", boom)
    await doctor.close(CloseReason.LEFT)
    assert doctor.closed and not doctor.publications
    assert "d" not in call.room.participants


async def _until(predicate: object) -> None:
    while not predicate():  # type: ignore[operator]
        await asyncio.sleep(0.05)
