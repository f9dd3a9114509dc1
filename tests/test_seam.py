"""The seam into aiortc's and aioice's internals (`mediaserver/rtc/`), in one place.

First, every private name the seam relies on: these tests fail loudly when a new aiortc or
aioice moves one (aiortc is pinned to 1.16.*). Then the seam's own functions, on real aiortc
objects. The seam's larger behaviours have their own files: test_seam_tap.py (the server's
peer connection), test_seam_batch.py (the batched send path), test_seam_jitter.py (the
client's skipping jitter buffer); ICE restart is in test_ice_restart.py.
"""

from __future__ import annotations

import asyncio
import inspect

import aioice.ice
import aiortc
import pytest
from aioice import Connection
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

from mediaserver.codecs import capabilities
from mediaserver.config import IceConfig
from mediaserver.rtc import media, peer
from mediaserver.rtc.ice import PortAllocator, gather_on_loopback
from mediaserver.rtc.tap import (
    MediaTransport,
    ServerPeerConnection,
    TapHooks,
    mline_index,
    negotiated_codecs,
    negotiated_header_extensions,
    receive_parameters,
)

# -- what the seam relies on ------------------------------------------------------------------


def test_aiortc_version_is_the_pinned_minor() -> None:
    assert aiortc.__version__.startswith("1.16."), aiortc.__version__


def test_private_methods_we_override_exist() -> None:
    for name in (
        "_RTCPeerConnection__createDtlsTransport",
        "_RTCPeerConnection__createTransceiver",
        "_RTCPeerConnection__createSctpTransport",
        "_RTCPeerConnection__remoteRtp",
        "_RTCPeerConnection__remoteDescription",
    ):
        assert callable(getattr(RTCPeerConnection, name)), name
    params = inspect.signature(RTCPeerConnection._RTCPeerConnection__createTransceiver).parameters  # type: ignore[attr-defined]
    assert list(params) == ["self", "direction", "kind", "sender_track"]
    for name in ("_handle_rtp_data", "_handle_rtcp_data", "_send_rtp"):
        assert inspect.iscoroutinefunction(getattr(RTCDtlsTransport, name)), name
    assert callable(RTCRtpReceiver.receive) and callable(RTCRtpSender.send)


def test_private_attributes_we_read_exist() -> None:
    source = inspect.getsource(RTCDtlsTransport)
    for attr in ("self._rx_srtp", "self._tx_srtp", "self._state", "self.transport"):
        assert attr in source, attr
    conn = Connection(ice_controlling=False)
    for attr in (
        "_nominated",
        "_protocols",
        "_local_candidates",
        "_local_candidates_start",
        "_local_candidates_end",
        "data_received",
        "gather_candidates",
    ):
        assert hasattr(conn, attr), attr
    sender_source = inspect.getsource(RTCRtpSender.__init__)
    assert "self._ssrc" in sender_source and "self._rtx_ssrc" in sender_source
    assert "_preferred_codecs" in inspect.getsource(aiortc.RTCRtpTransceiver.__init__)
    assert "self.__sctp._bundled" in inspect.getsource(RTCPeerConnection.setRemoteDescription)


def test_the_aiortc_and_aioice_seams_ice_restart_uses() -> None:
    """Fail loudly if a new aiortc or aioice moves what rtc/icerestart.py relies on."""
    transport_source = inspect.getsource(RTCIceTransport)
    for attr in (
        "self._connection = gatherer._connection",
        "self._recv = self._connection.recv",
        "self._send = self._connection.send",
        "self.__monitor_task",
        "await self._connection.get_event()",
    ):
        assert attr in transport_source, attr
    assert "self._remote_candidates_end" in inspect.getsource(RTCIceGatherer)
    assert "self._connection" in inspect.getsource(RTCIceGatherer.getLocalParameters)
    conn = Connection(ice_controlling=False)
    for attr in ("_queue", "_use_ipv4", "_use_ipv6", "_transport_policy", "_closed"):
        assert hasattr(conn, attr), attr
    assert "self._queue.get()" in inspect.getsource(Connection.recvfrom)
    assert "self._queue.put_nowait(None)" in inspect.getsource(Connection.close)
    assert "transport._recv()" in inspect.getsource(
        __import__("aiortc.rtcdtlstransport").rtcdtlstransport.RTCDtlsTransport._recv_next
    )
    assert isinstance(RTCPeerConnection.sctp, property)


def test_the_private_names_of_the_client_seams_exist() -> None:
    """rtc/peer.py, rtc/media.py, rtc/ice.py (gather_on_loopback) and tap's accessors."""
    assert "self._enabled = True" in inspect.getsource(RTCRtpSender.__init__)
    assert "if not self._enabled:" in inspect.getsource(RTCRtpSender)
    assert "self.__sctp: Optional[RTCSctpTransport] = None" in inspect.getsource(
        RTCPeerConnection.__init__
    )
    assert "self._connection" in inspect.getsource(RTCIceTransport.__init__)
    source = inspect.getsource(RTCRtpTransceiver)
    for name in ("def _get_mline_index", "self._codecs", "self._headerExtensions"):
        assert name in source, name
    assert "x._data for x in packets" in inspect.getsource(media.JitterBuffer)
    assert "self.codec.bit_rate" in inspect.getsource(media.OpusEncoder.__init__)
    assert "get_host_addresses(" in inspect.getsource(Connection.gather_candidates)


# -- the seam's functions ---------------------------------------------------------------------


class _Hooks(TapHooks):
    def transport_created(self, transport: MediaTransport) -> None:
        pass

    def transceiver_created(self, transceiver: RTCRtpTransceiver) -> None:
        pass


async def test_transceiver_accessors_read_what_the_answer_negotiated() -> None:
    server = ServerPeerConnection(hooks=_Hooks(), ports=PortAllocator(IceConfig()))
    client = RTCPeerConnection()
    try:
        client.addTransceiver("audio", direction="sendonly")
        video = client.addTransceiver("video", direction="sendonly")
        video.setCodecPreferences(capabilities("video", "video/VP8"))
        await client.setLocalDescription(await client.createOffer())
        await server.setRemoteDescription(client.localDescription)
        await server.setLocalDescription(await server.createAnswer())
        audio_t, video_t = server.getTransceivers()
        assert (mline_index(audio_t), mline_index(video_t)) == (0, 1)
        assert negotiated_codecs(audio_t)[0].mimeType == "audio/opus"
        assert [c.mimeType for c in negotiated_codecs(video_t)] == ["video/VP8", "video/rtx"]
        uris = {h.uri for h in negotiated_header_extensions(video_t)}
        assert "urn:ietf:params:rtp-hdrext:sdes:mid" in uris
        params = receive_parameters(
            video_t, negotiated_codecs(video_t), ssrc=1234, payload_type=97, rtx_ssrc=5678
        )
        assert params.muxId == video_t.mid and params.headerExtensions
        (enc,) = params.encodings
        assert (enc.ssrc, enc.payloadType, enc.rtx.ssrc if enc.rtx else None) == (1234, 97, 5678)
        bare = receive_parameters(video_t, [], ssrc=None, payload_type=97, rtx_ssrc=None)
        assert bare.encodings == [] and bare.codecs == []
        fresh = server.addTransceiver("video", direction="sendonly")
        assert mline_index(fresh) is None  # no m-line before our next offer
    finally:
        await client.close()
        await server.close()


async def _connected_pair() -> tuple[RTCPeerConnection, RTCPeerConnection, asyncio.Event]:
    """Two aiortc peers on loopback with the consult data channel; `opened`: b's side open."""
    a, b = RTCPeerConnection(), RTCPeerConnection()
    opened = asyncio.Event()
    for pc in (a, b):
        channel = pc.createDataChannel("consult", negotiated=True, id=0)
        peer.bundle_data_channel(pc)
        if pc is b:
            channel.on("open", opened.set)
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    return a, b, opened


async def test_watch_inbound_sees_every_datagram_once_per_watch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    gather_on_loopback()
    a, b, opened = await _connected_pair()
    try:
        arrivals: list[int] = []
        peer.watch_inbound(b, lambda: arrivals.append(1))
        conn = b.sctp.transport.transport._connection  # type: ignore[union-attr]
        hooked = conn.data_received
        peer.watch_inbound(b, lambda: arrivals.append(2))  # already watched: unchanged
        assert conn.data_received is hooked
        await asyncio.wait_for(opened.wait(), 20)  # DTLS and SCTP came in through the hook
        assert arrivals and set(arrivals) == {1}
    finally:
        await a.close()
        await b.close()


async def test_sender_enabled_is_aiortcs_switch() -> None:
    pc = RTCPeerConnection()
    try:
        sender = pc.addTransceiver("video", direction="sendonly").sender
        assert peer.sender_enabled(sender)
        peer.set_sender_enabled(sender, False)
        assert not peer.sender_enabled(sender) and sender._enabled is False
        peer.set_sender_enabled(sender, True)
        assert peer.sender_enabled(sender)
    finally:
        await pc.close()


async def test_bundle_data_channel_marks_the_sctp_transport_bundled() -> None:
    pc = RTCPeerConnection()
    try:
        peer.bundle_data_channel(pc)  # no data channel yet: nothing to mark
        pc.createDataChannel("consult", negotiated=True, id=0)
        assert pc.sctp is not None and not pc.sctp._bundled
        peer.bundle_data_channel(pc)
        assert pc.sctp._bundled
    finally:
        await pc.close()


def test_depayloaded_feeds_aiortcs_jitter_buffer() -> None:
    vp8 = next(c for c in capabilities("video", "video/VP8") if c.mimeType == "video/VP8")
    codec = aiortc.RTCRtpCodecParameters(mimeType=vp8.mimeType, clockRate=90000, payloadType=96)
    header = bytes([0x80, 0xE0, 0, 1]) + (3000).to_bytes(4, "big") + (7).to_bytes(4, "big")
    descriptor = b"\x10"  # VP8 payload descriptor: S=1, partition 0 (stripped by depayload)
    packet = media.depayloaded(header + descriptor + b"\x9d\x01\x2a" + bytes(40), codec)
    payload = b"\x9d\x01\x2a" + bytes(40)
    assert packet.sequence_number == 1 and packet._data == payload  # type: ignore[attr-defined]
    buffer = media.JitterBuffer(capacity=16, is_video=True)
    buffer.add(packet)
    nxt = media.depayloaded(
        header[:2] + b"\x00\x02" + (6000).to_bytes(4, "big") + header[8:] + descriptor, codec
    )
    _, frame = buffer.add(nxt)
    assert frame is not None and frame.data == payload  # the first frame, as depayloaded
    with pytest.raises(ValueError):
        media.depayloaded(b"\x80\x60", codec)


def test_set_opus_bitrate_applies_to_new_encoders_and_none_restores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(media.OpusEncoder, "__init__", media.OpusEncoder.__init__)
    default = media.OpusEncoder().codec.bit_rate
    media.set_opus_bitrate(24000)
    assert media.OpusEncoder().codec.bit_rate == 24000
    media.set_opus_bitrate(40000)  # replaces, does not stack
    assert media.OpusEncoder().codec.bit_rate == 40000
    media.set_opus_bitrate(None)
    assert media.OpusEncoder().codec.bit_rate == default


async def test_gather_on_loopback_gathers_on_127_0_0_1_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    gather_on_loopback()
    conn = Connection(ice_controlling=True)
    try:
        await conn.gather_candidates()
        assert {c.host for c in conn.local_candidates} == {"127.0.0.1"}
    finally:
        await conn.close()


class _Recorder(TapHooks):
    """Keeps the transport and every decrypted RTP packet."""

    def __init__(self) -> None:
        self.transport: MediaTransport | None = None
        self.rtp: list[bytes] = []
        self.got = asyncio.Event()

    def transport_created(self, transport: MediaTransport) -> None:
        self.transport = transport
        transport.on_rtp = self._on_rtp

    def _on_rtp(self, data: bytes, arrival: float) -> None:
        self.rtp.append(data)
        self.got.set()

    def transceiver_created(self, transceiver: RTCRtpTransceiver) -> None:
        pass


async def test_the_load_generators_transport_functions_on_a_live_connection() -> None:
    """`rtp_sender`, `divert`, `unprotect_rtp` and `socket_transport` between two tapped
    peers on loopback: what loadtest/generator.py uses instead of aiortc's internals."""
    ports = PortAllocator(IceConfig(host_addresses=("127.0.0.1",)))
    a_hooks, b_hooks = _Recorder(), _Recorder()
    a = ServerPeerConnection(hooks=a_hooks, ports=ports)
    b = ServerPeerConnection(hooks=b_hooks, ports=ports)
    try:
        a.createDataChannel("consult", negotiated=True, id=0)
        b.createDataChannel("consult", negotiated=True, id=0)
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        for _ in range(400):
            if a.connectionState == "connected" and b.connectionState == "connected":
                break
            await asyncio.sleep(0.05)
        assert a.connectionState == b.connectionState == "connected"
        ta, tb = a_hooks.transport, b_hooks.transport
        assert ta is not None and tb is not None
        transport = ta.socket_transport()
        assert transport is not None and transport.get_extra_info("socket") is not None
        raw: list[bytes] = []

        def peek(data: bytes, component: int) -> None:
            raw.append(data)
            decrypt(data, component)

        decrypt = tb.divert(peek)
        send = ta.rtp_sender()
        assert send is not None
        packet = bytes([0x80, 96, 0, 7]) + (1234).to_bytes(4, "big") + (42).to_bytes(4, "big")
        assert send(packet + b"payload")
        await asyncio.wait_for(b_hooks.got.wait(), 20)
        assert b_hooks.rtp == [packet + b"payload"]  # handed on by `peek`, decrypted once
        assert len(raw) == 1 and raw[0] != packet + b"payload"  # it was SRTP on the wire
        assert tb.unprotect_rtp(raw[0]) is None  # a replay: libsrtp refuses it
        assert send(packet[:2] + b"\x00\x08" + packet[4:] + b"second")
        for _ in range(400):
            if len(raw) == 2:
                break
            await asyncio.sleep(0.01)
        assert tb.unprotect_rtp(b"\x80\x60" + bytes(30)) is None  # garbage: no exception
    finally:
        await a.close()
        await b.close()
