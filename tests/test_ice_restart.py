"""ICE restart on the server's peer connection, driven by a real aiortc client on loopback.

aiortc cannot restart ICE by itself, so the client side swaps its own aioice Connection with
the same helper the server uses (mediaserver/rtc/icerestart.py) and offers the new
credentials: exactly what a browser's `pc.restartIce()` puts on the wire. The browser side is
proven by the compat `ice-restart` scenario (tests/test_compat.py runs it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiortc import RTCSessionDescription
from aiortc.rtcicetransport import RTCIceTransport

from mediaserver.api import IceConfig, MediaConfig, Role
from mediaserver.node import Node
from mediaserver.participant import Participant
from mediaserver.room import Room
from mediaserver.rtc.icerestart import IceRestart
from mediaserver.rtc.tap import ServerPeerConnection, remote_ice_credentials
from tests.media_peers import Peer, av_tracks

WAIT_S = 30.0


@pytest.fixture
async def quick_room() -> AsyncIterator[Room]:
    """A node that drops an ICE restart after 2 s without a nominated pair (default 30 s)."""
    node = Node(MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",), restart_timeout_s=2.0)))
    await node.start()
    yield node.create_room("r1")
    await node.close()


async def eventually(what: str, predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class RestartingPeer(Peer):
    """A client that restarts ICE the way a browser does: an offer with new credentials."""

    def __init__(self, participant: Participant) -> None:
        super().__init__(participant)
        self.restart: IceRestart | None = None

    def ice(self) -> RTCIceTransport:
        sctp = self.pc.sctp
        assert sctp is not None
        return sctp.transport.transport

    async def restart_ice(self, *, connect: bool = True, controlling: bool = True) -> str:
        """Offer fresh ICE credentials; returns the server's answer. connect=False: the new
        session never checks or nominates (an ICE restart that cannot connect).
        controlling=False: a client that keeps the controlled role (RFC 8445 keeps roles
        across a restart; browsers take the controlling one): aioice repairs the conflict."""
        async with self._negotiation:
            if self.restart is None:
                self.restart = IceRestart(self.ice())
            await self.restart.prepare(controlling=controlling)
            await self.pc.setLocalDescription(await self.pc.createOffer())
            answer = await self.participant.handle_offer(self.pc.localDescription.sdp, {})
            assert answer is not None
            credentials = remote_ice_credentials(answer)
            assert credentials is not None
            self.restart.set_remote(*credentials)
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            if connect:
                self.restart.start()
            return answer

    def give_up(self) -> None:
        assert self.restart is not None
        self.restart.abandon()

    async def close(self) -> None:
        if self.restart is not None:
            await self.restart.close()
        await super().close()


def restart_done(pc: ServerPeerConnection, n: int) -> bool:
    return pc.ice_restart is not None and pc.ice_restart.completed == n


def ufrag(sdp: str) -> str:
    credentials = remote_ice_credentials(sdp)
    assert credentials is not None
    return credentials[0]


def candidate_ports(sdp: str) -> set[int]:
    return {int(line.split()[5]) for line in sdp.splitlines() if line.startswith("a=candidate:")}


def frames(peer: Peer, kind: str) -> int:
    return sum(r.frames for r in peer.received if r.kind == kind)


async def media_flows_both_ways(a: Peer, b: Peer) -> None:
    """Both sides decode new video and audio frames from now on."""
    start = {(p, k): frames(p, k) for p in (a, b) for k in ("video", "audio")}
    for (peer, kind), count in start.items():
        target = count + (15 if kind == "video" else 25)

        def decoded(peer: Peer = peer, kind: str = kind, target: int = target) -> bool:
            return frames(peer, kind) >= target

        await eventually(f"{kind} frames", decoded)


async def data_channel_works(peer: Peer, participant: Participant, text: str) -> None:
    got: list[str] = []
    participant.on("data", got.append)
    await eventually("the data channel open", lambda: peer.channel.readyState == "open")
    peer.channel.send(text)
    await eventually("the data channel message", lambda: text in got)
    participant.remove_listener("data", got.append)


async def call(room: Room) -> tuple[RestartingPeer, Peer, Participant, list[str]]:
    doctor_p = room.add_participant("d", role=Role.DOCTOR)
    states: list[str] = []
    doctor_p.on("connectionstatechange", states.append)
    doctor = RestartingPeer(doctor_p)
    patient = Peer(room.add_participant("p", role=Role.PATIENT))
    await doctor.publish(av_tracks())
    await patient.publish(av_tracks())
    for peer in (doctor, patient):
        await peer.wait_frames("video", 10, timeout=WAIT_S)
        await peer.wait_frames("audio", 10, timeout=WAIT_S)
    return doctor, patient, doctor_p, states


@pytest.mark.parametrize("controlling", [True, False], ids=["client-controlling", "role-conflict"])
async def test_restart_gets_new_credentials_and_media_moves_to_the_new_session(
    room: Room, controlling: bool
) -> None:
    doctor, patient, server, states = await call(room)
    try:
        pc = server.pc
        transport = server.transport
        assert transport is not None
        dtls, sctp = transport.dtls, pc.sctp
        first = pc.localDescription.sdp
        seen = [ufrag(first)]
        for n in (1, 2):  # a second restart works the same way
            old = dtls.transport._connection
            answer = await doctor.restart_ice(controlling=controlling)
            # RFC 8445 section 9: the answer to a restart offer carries new credentials, and
            # the new session's own candidates (new sockets).
            assert ufrag(answer) not in seen
            seen.append(ufrag(answer))
            assert candidate_ports(answer) and not candidate_ports(answer) & candidate_ports(first)
            restart = pc.ice_restart
            assert restart is not None
            await eventually("the server's restart to complete", lambda: restart_done(pc, n))  # noqa: B023
            await eventually("the old session closed", lambda: bool(old._closed))  # noqa: B023
            assert transport._conn is restart.active and restart.pending is None
            assert pc.media_transport is transport and transport.dtls is dtls and pc.sctp is sctp
            assert dtls.state == "connected"
            # Media goes both ways on the new session (the old one's sockets are closed).
            await media_flows_both_ways(doctor, patient)
            await data_channel_works(doctor, server, f"after restart {n}")
            # The server's next offer describes the new session too.
            assert ufrag(pc.localDescription.sdp) == seen[-1]
        assert pc.ice_restart is not None and pc.ice_restart.failed == 0
        assert "failed" not in states and "closed" not in states
        assert server.connection_state == "connected"
        assert server.transport_restarts == 0  # no fresh transport was needed
        assert transport.decrypt_errors == 0
    finally:
        await doctor.close()
        await patient.close()


async def test_a_restart_that_never_connects_leaves_the_call_up(quick_room: Room) -> None:
    doctor, patient, server, states = await call(quick_room)
    try:
        pc = server.pc
        session = pc.media_transport.dtls.transport._connection  # type: ignore[union-attr]
        # The client offers new credentials but its new session never checks.
        answer = await doctor.restart_ice(connect=False)
        restart = pc.ice_restart
        assert restart is not None and restart.pending is not None
        await eventually("the server to drop the restart", lambda: restart.failed == 1)
        doctor.give_up()
        # The server goes on with the old session: same connection, media both ways.
        assert restart.pending is None and restart.active is session and not session._closed
        assert pc.media_transport is not None
        assert pc.media_transport.dtls.transport._connection is session
        assert ufrag(answer) != session.local_username
        await media_flows_both_ways(doctor, patient)
        assert server.connection_state == "connected" and not server.closed
        # A later restart still works.
        restart.timeout_s = WAIT_S
        await doctor.restart_ice()
        await eventually("the second restart to complete", lambda: restart.completed == 1)
        await eventually("the old session closed", lambda: session._closed)
        await media_flows_both_ways(doctor, patient)
        assert "failed" not in states and "closed" not in states
    finally:
        await doctor.close()
        await patient.close()


async def test_a_participant_closed_mid_restart_leaves_no_session_behind(room: Room) -> None:
    doctor, patient, server, _ = await call(room)
    try:
        await doctor.restart_ice(connect=False)
        restart = server.pc.ice_restart
        assert restart is not None
        pending = restart.pending
        assert pending is not None
        await server.close()
        assert pending._closed and restart.active._closed
    finally:
        await doctor.close()
        await patient.close()


async def test_a_refused_restart_offer_keeps_the_old_session(room: Room) -> None:
    doctor, patient, server, _ = await call(room)
    restart = IceRestart(doctor.ice())
    try:
        pc = server.pc
        session = pc.media_transport.dtls.transport._connection  # type: ignore[union-attr]
        await restart.prepare(controlling=True)
        await doctor.pc.setLocalDescription(await doctor.pc.createOffer())
        # New credentials, but an m-line aiortc refuses (no rtcp-mux): the offer is refused.
        broken = doctor.pc.localDescription.sdp.replace("a=rtcp-mux\r\n", "")
        with pytest.raises(ValueError):
            await server.handle_offer(broken, {})
        assert pc.media_transport.dtls.transport._connection is session  # type: ignore[union-attr]
        assert pc.ice_restart is not None and pc.ice_restart.pending is None
        assert ufrag(pc.localDescription.sdp) == session.local_username
        assert server.connection_state == "connected"
    finally:
        await restart.close()
        await doctor.close()
        await patient.close()
