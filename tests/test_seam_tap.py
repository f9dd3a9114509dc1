"""The aiortc seams mediaserver/rtc/tap.py relies on: fail loudly if aiortc moves them."""

from __future__ import annotations

import inspect

import pytest
from aiortc import RTCPeerConnection, sdp
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

from mediaserver.config import IceConfig
from mediaserver.rtc.ice import PortAllocator
from mediaserver.rtc.tap import MediaTransport, ServerPeerConnection, TapHooks


class _NoHooks(TapHooks):
    def transport_created(self, transport: MediaTransport) -> None:
        pass

    def transceiver_created(self, transceiver: RTCRtpTransceiver) -> None:
        pass


async def client_offers(client: RTCPeerConnection, server: ServerPeerConnection) -> None:
    """The client offers one more sending audio m-line; the server answers it."""
    client.addTransceiver("audio", direction="sendonly")
    await client.setLocalDescription(await client.createOffer())
    await server.setRemoteDescription(client.localDescription)
    await server.setLocalDescription(await server.createAnswer())


async def test_client_offer_while_a_server_transceiver_awaits_its_offer() -> None:
    """A subscription added while the client's offer was in flight: the answer still works."""
    server = ServerPeerConnection(hooks=_NoHooks(), ports=PortAllocator(IceConfig()))
    client = RTCPeerConnection()
    try:
        await client_offers(client, server)
        await client.setRemoteDescription(server.localDescription)
        # Ours, not offered yet (the server's next offer would carry it).
        pending = server.addTransceiver("video", direction="sendonly")
        await client_offers(client, server)
        assert server.signalingState == "stable"
        assert len(sdp.SessionDescription.parse(server.localDescription.sdp).media) == 2
        assert pending.mid is None  # still waiting for the server's own offer
    finally:
        await client.close()
        await server.close()


async def test_a_transceiver_no_remote_description_covers_yet_waits_for_one() -> None:
    """aiortc's connect task raised IndexError for such a transceiver and died, starting no
    media at all; ours skips it until a description covers it."""
    server = ServerPeerConnection(hooks=_NoHooks(), ports=PortAllocator(IceConfig()))
    client = RTCPeerConnection()
    try:
        await client_offers(client, server)
        covered = server.getTransceivers()[0]
        later = server.addTransceiver("video", direction="sendonly")
        await server.setLocalDescription(await server.createOffer())  # m-line 1, not answered
        assert later._get_mline_index() == 1
        with pytest.raises(IndexError):  # what aiortc itself does
            RTCPeerConnection._RTCPeerConnection__remoteRtp(server, later)  # type: ignore[attr-defined]
        assert server._RTCPeerConnection__remoteRtp(later) is None
        assert server._RTCPeerConnection__remoteRtp(covered) is not None
    finally:
        await client.close()
        await server.close()


async def test_client_offer_new_mline_does_not_take_a_server_transceiver() -> None:
    """A client's new camera m-line, offered while our subscription of the same kind awaits
    its first offer: aiortc gave the m-line to our transceiver (first of its kind without a
    mid), so both sides sent on it (inactive), the camera was never received and the
    subscription never sent (compat chromium-firefox `codec-late`). The m-line gets a new
    transceiver of its own; ours keeps waiting for our next offer, which then carries it."""
    assert "self.__mid: Optional[str] = None" in inspect.getsource(RTCRtpTransceiver.__init__)
    server = ServerPeerConnection(hooks=_NoHooks(), ports=PortAllocator(IceConfig()))
    client = RTCPeerConnection()
    try:
        await client_offers(client, server)
        await client.setRemoteDescription(server.localDescription)
        pending = server.addTransceiver("video", direction="sendonly")  # a subscription
        camera = client.addTransceiver("video", direction="sendonly")
        await client.setLocalDescription(await client.createOffer())
        await server.setRemoteDescription(client.localDescription)
        await server.setLocalDescription(await server.createAnswer())
        answer = sdp.SessionDescription.parse(server.localDescription.sdp)
        assert [m.direction for m in answer.media] == ["recvonly", "recvonly"]
        assert pending.mid is None
        received = [t for t in server.getTransceivers() if t.mid == camera.mid]
        assert len(received) == 1 and received[0] is not pending
        await client.setRemoteDescription(server.localDescription)
        assert camera.currentDirection == "sendonly"

        # Our next offer carries the subscription on an m-line of its own.
        await server.setLocalDescription(await server.createOffer())
        offer = sdp.SessionDescription.parse(server.localDescription.sdp)
        assert pending.mid is not None and pending.mid not in ("0", "1")
        assert [m.direction for m in offer.media][-1] == "sendonly"
        await client.setRemoteDescription(server.localDescription)
        await client.setLocalDescription(await client.createAnswer())
        await server.setRemoteDescription(client.localDescription)
        assert pending.currentDirection == "sendonly"
    finally:
        await client.close()
        await server.close()
