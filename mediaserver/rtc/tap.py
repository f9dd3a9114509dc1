"""The server side of the seam into aiortc's private API (aiortc pinned to 1.16.*).

aiortc negotiates SDP, ICE and DTLS for us. Everything else on the media path is ours:
- received SRTP is taken straight from the aioice socket callback (no queue hop, no task
  wake-up per datagram), decrypted and handed to `on_rtp(bytes, arrival)` / `on_rtcp(bytes)`;
- aiortc's RTCRtpReceiver never starts its jitter buffer, decoder thread or RTCP task;
- aiortc's RTCRtpSender never starts its encoder loop or its RTCP task (we write the reports);
- sending is synchronous: SRTP protect at once, then queued per transport and sent once per
  event-loop pass, runs of equal-size datagrams in one UDP GSO `sendmsg` (rtc/batch.py).

`tests/test_seam_tap.py` fails loudly if one of these seams moves in a new aiortc.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import pylibsrtp
from aioice import Connection
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcrtpparameters import (
    RTCRtpDecodingParameters,
    RTCRtpReceiveParameters,
    RTCRtpRtxParameters,
    RTCRtpSendParameters,
)
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

from .batch import DatagramBatch
from .ice import PortAllocator
from .icerestart import IceRestart
from .peer import bundle_data_channel
from .sdp import parse as parse_sdp

logger = logging.getLogger(__name__)

RtpHandler = Callable[[bytes, float], None]
RtcpHandler = Callable[[bytes], None]
DatagramHandler = Callable[[bytes, int], None]
now = time.monotonic
CONNECTED = State.CONNECTED


def is_rtcp(data: bytes) -> bool:
    return len(data) >= 2 and 192 <= data[1] <= 223


class MediaTransport:
    """Byte-level access to one bundled DTLS transport."""

    __slots__ = (
        "__weakref__",  # tests prove a departed participant's transport is freed
        "_batch",
        "_conn",
        "_dtls",
        "_fallback",
        "_pair",
        "decrypt_errors",
        "encrypt_errors",
        "handler_errors",
        "on_rtcp",
        "on_rtp",
    )

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self._dtls = dtls
        self._conn = dtls.transport._connection
        self.on_rtp: RtpHandler = _drop_rtp
        self.on_rtcp: RtcpHandler = _drop_rtcp
        self.decrypt_errors = 0
        self.encrypt_errors = 0
        self.handler_errors = 0
        self._pair: Any = None
        self._batch: DatagramBatch | None = None
        # aiortc's own path (only reached before SRTP keys exist): route to ours anyway.
        dtls._handle_rtp_data = self._rtp_from_aiortc  # type: ignore[method-assign]
        dtls._handle_rtcp_data = self._rtcp_from_aiortc  # type: ignore[method-assign]
        self._fallback = self._conn.data_received
        self._conn.data_received = self._datagram  # type: ignore[method-assign]

    @property
    def dtls(self) -> RTCDtlsTransport:
        return self._dtls

    def _datagram(self, data: bytes, component: int) -> None:
        # Called by aioice's StunProtocol for every non-STUN datagram.
        rx = self._dtls._rx_srtp
        if rx is None or not 127 < data[0] < 192 or len(data) < 12:
            self._fallback(data, component)  # DTLS (and SCTP inside it) keeps aiortc's path
            return
        try:
            if is_rtcp(data):
                self.on_rtcp(rx.unprotect_rtcp(data))
            else:
                self.on_rtp(rx.unprotect(data), now())
        except pylibsrtp.Error:
            self.decrypt_errors += 1
        except Exception:  # a malformed packet must never reach aioice's socket callback
            self.handler_errors += 1
            if self.handler_errors & (self.handler_errors - 1) == 0:  # 1, 2, 4, 8...
                logger.exception("media packet handler failed (%d so far)", self.handler_errors)

    async def _rtp_from_aiortc(self, data: bytes, arrival_time_ms: int) -> None:
        self.on_rtp(data, now())

    async def _rtcp_from_aiortc(self, data: bytes) -> None:
        self.on_rtcp(data)

    # -- the send path (batched: rtc/batch.py) ---------------------------------------------

    def send(self, packet: bytes) -> bool:
        """Protect one RTP or RTCP packet and queue it for this pass; False when not connected."""
        pair = self._conn._nominated.get(1)
        if pair is not self._pair:
            self._select(pair)
        dtls = self._dtls
        batch = self._batch
        if batch is None or dtls._state is not CONNECTED:
            return False
        tx = dtls._tx_srtp
        try:
            data = tx.protect_rtcp(packet) if 191 < packet[1] < 224 else tx.protect(packet)
        except pylibsrtp.Error:  # e.g. a sequence number libsrtp's window refuses
            self.encrypt_errors += 1
            return False
        batch.add(data)
        return True

    def rtp_sender(self) -> Callable[[bytes], bool] | None:
        """`send` for RTP alone, bound to this moment's keys and nominated pair: protect and
        queue, without `send`'s per-packet checks (the load generator's pacer, whose pair
        does not change). None while not connected."""
        pair = self._conn._nominated.get(1)
        if pair is not self._pair:
            self._select(pair)
        dtls = self._dtls
        batch = self._batch
        tx = dtls._tx_srtp
        if batch is None or tx is None or dtls._state is not CONNECTED:
            return None
        protect, add = tx.protect, batch.add

        def send(packet: bytes) -> bool:
            try:
                add(protect(packet))
            except pylibsrtp.Error:
                self.encrypt_errors += 1
                return False
            return True

        return send

    @property
    def batch(self) -> DatagramBatch | None:
        """The current pair's outgoing batch (its counters: batches, datagrams, send_errors)."""
        return self._batch

    def _select(self, pair: Any) -> None:
        """Cache the nominated pair's socket and address (ICE may nominate another one)."""
        self._pair = pair
        if pair is None:
            self._batch = None
            return
        # The server gathers host candidates only (rtc/ice.py), on sockets it binds itself
        # (MediaStunProtocol.sock): GSO needs the socket. Another protocol (a client's aioice
        # gathering) keeps its transport's sendto, one datagram at a time.
        sock = getattr(pair.protocol, "sock", None)
        if sock is not None:
            self._batch = DatagramBatch.for_socket(sock, pair.remote_addr)
        else:
            transport = pair.protocol.transport
            loop = asyncio.get_running_loop()
            self._batch = DatagramBatch(pair.remote_addr, transport.sendto, None, loop)

    # -- end of the send path ----------------------------------------------------------------

    # -- ICE restart (rtc/icerestart.py) ----------------------------------------------------

    def adopt(self, conn: Connection) -> None:
        """A restart's new Connection: its SRTP comes straight to us too (DTLS to aiortc)."""
        conn.data_received = self._datagram  # type: ignore[method-assign]

    def use_connection(self, conn: Connection) -> None:
        """The restart connected: send on its nominated pair, DTLS records go to its queue."""
        self._conn = conn
        self._fallback = functools.partial(Connection.data_received, conn)
        self._pair = None
        self._batch = None

    # -- end ICE restart --

    # -- for the load generator (loadtest/generator.py) -------------------------------------

    def divert(self, handler: DatagramHandler) -> DatagramHandler:
        """Every non-STUN datagram goes to `handler(data, component)` first; returns this
        transport's own entry point (decrypt and dispatch), where `handler` hands on what it
        does not consume itself. Not carried over an ICE restart."""
        self._conn.data_received = handler  # type: ignore[method-assign,assignment]
        return self._datagram

    def unprotect_rtp(self, data: bytes) -> bytes | None:
        """One SRTP packet decrypted; None before the keys exist or when libsrtp refuses it
        (a replay, a bad tag). Use on a sample: the receive path decrypts by itself."""
        rx = self._dtls._rx_srtp
        if rx is None:
            return None
        try:
            return bytes(rx.unprotect(data))
        except Exception:
            return None

    def socket_transport(self) -> asyncio.BaseTransport | None:
        """The event loop's transport of the nominated pair's socket (None before ICE
        nominated one). Python 3.11's selector datagram transport is no DatagramTransport
        subclass: only BaseTransport is checked."""
        pair = self._conn._nominated.get(1)
        transport = getattr(getattr(pair, "protocol", None), "transport", None)
        return transport if isinstance(transport, asyncio.BaseTransport) else None


def _drop_rtp(data: bytes, arrival: float) -> None:
    pass


def _drop_rtcp(data: bytes) -> None:
    pass


class TapHooks:
    """What the media plane provides to a ServerPeerConnection."""

    def transport_created(self, transport: MediaTransport) -> None:
        raise NotImplementedError

    def transceiver_created(self, transceiver: RTCRtpTransceiver) -> None:
        raise NotImplementedError

    def receiver_started(
        self, transceiver: RTCRtpTransceiver, parameters: RTCRtpReceiveParameters
    ) -> None:
        raise NotImplementedError

    def sender_started(
        self, transceiver: RTCRtpTransceiver, parameters: RTCRtpSendParameters
    ) -> None:
        raise NotImplementedError


class ServerPeerConnection(RTCPeerConnection):
    """An RTCPeerConnection whose media is forwarded as bytes, never decoded or encoded."""

    def __init__(self, *, hooks: TapHooks, ports: PortAllocator) -> None:
        super().__init__(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self._hooks = hooks
        self._ports = ports
        self.media_transport: MediaTransport | None = None
        self.ice_restart: IceRestart | None = None

    @property
    def has_remote_description(self) -> bool:
        """Whether a remote description is applied. aiortc's `remoteDescription` property
        serialises it anew on each read (and raises on a c= line it parsed but cannot write)."""
        return self._RTCPeerConnection__remoteDescription() is not None  # type: ignore[attr-defined]

    async def setLocalDescription(
        self, sessionDescription: RTCSessionDescription | None = None
    ) -> None:
        if sessionDescription is not None and sessionDescription.type == "answer":
            # aiortc derives every transceiver's current direction from the direction the
            # remote offer gave it, even for a transceiver of ours that no offer carried yet (a
            # subscription added while the client's offer was in flight): `None` there raised
            # "None is not in list" and the client's offer failed. Such a transceiver is
            # inactive until our next offer is answered, which sets its direction.
            for transceiver in self.getTransceivers():
                if transceiver._offerDirection is None:
                    transceiver._offerDirection = "inactive"
        await super().setLocalDescription(sessionDescription)

    def _RTCPeerConnection__createDtlsTransport(self) -> RTCDtlsTransport:
        dtls: RTCDtlsTransport = RTCPeerConnection._RTCPeerConnection__createDtlsTransport(self)  # type: ignore[attr-defined]
        self._ports.install(dtls.transport.iceGatherer._connection)
        if self.media_transport is None:
            self.media_transport = MediaTransport(dtls)
            self._hooks.transport_created(self.media_transport)
        return dtls

    def _RTCPeerConnection__createSctpTransport(self) -> None:
        # The data channel is created first, so the SCTP transport owns the one bundled DTLS
        # transport. aiortc marks it unbundled, and a remote offer listing media first would
        # then make aiortc stop that transport as a "slave" of itself: mark it bundled.
        RTCPeerConnection._RTCPeerConnection__createSctpTransport(self)  # type: ignore[attr-defined]
        bundle_data_channel(self)

    def _RTCPeerConnection__createTransceiver(
        self, direction: str, kind: str, sender_track: Any = None
    ) -> RTCRtpTransceiver:
        transceiver: RTCRtpTransceiver = RTCPeerConnection._RTCPeerConnection__createTransceiver(  # type: ignore[attr-defined]
            self, direction, kind, sender_track
        )
        hooks = self._hooks

        async def receive(parameters: RTCRtpReceiveParameters | None) -> None:
            if parameters is None:
                return  # not described yet (`__remoteRtp` below): the next description starts it
            if not getattr(transceiver, "_tap_receiving", False):
                transceiver._tap_receiving = True  # type: ignore[attr-defined]
                hooks.receiver_started(transceiver, parameters)

        async def send(parameters: RTCRtpSendParameters) -> None:
            if not getattr(transceiver, "_tap_sending", False):
                transceiver._tap_sending = True  # type: ignore[attr-defined]
                hooks.sender_started(transceiver, parameters)

        transceiver.receiver.receive = receive  # type: ignore[method-assign]
        transceiver.sender.send = send  # type: ignore[method-assign]
        hooks.transceiver_created(transceiver)
        return transceiver

    def _RTCPeerConnection__remoteRtp(
        self, transceiver: RTCRtpTransceiver
    ) -> RTCRtpReceiveParameters | None:
        # aiortc's connect task awaits the DTLS handshake, then builds every receiver's
        # parameters from the remote description of *that* moment. A description applied
        # meanwhile may not cover a transceiver yet (its m-line index past the description's
        # media): aiortc raised IndexError there, the task died, and no transceiver after it
        # (nor the data channel) ever started: a call with no media at all. Such a transceiver
        # now waits for the next description, whose connect task starts it.
        remote = self._RTCPeerConnection__remoteDescription()  # type: ignore[attr-defined]
        index = mline_index(transceiver)
        if remote is None or index is None or index >= len(remote.media):
            return None
        params: RTCRtpReceiveParameters = RTCPeerConnection._RTCPeerConnection__remoteRtp(  # type: ignore[attr-defined]
            self, transceiver
        )
        return params

    # -- ICE restart: a remote offer with new ICE credentials (rtc/icerestart.py) -------------

    async def setRemoteDescription(self, sessionDescription: RTCSessionDescription) -> None:
        restart = await self._prepare_ice_restart(sessionDescription)
        unoffered = self._hide_unoffered(sessionDescription)
        try:
            await super().setRemoteDescription(sessionDescription)
        except BaseException:
            if restart is not None:
                restart.abandon()
            raise
        finally:
            for transceiver in unoffered:
                transceiver._RTCRtpTransceiver__mid = None  # type: ignore[attr-defined]
        if restart is not None:
            restart.start()

    def _hide_unoffered(self, description: RTCSessionDescription) -> list[RTCRtpTransceiver]:
        """Transceivers of ours that no offer carried yet (a subscription waiting for our next
        offer) must not take a new m-line of a remote offer: aiortc gives such an m-line the
        first transceiver of its kind without a mid, so a client's new camera became our
        subscription's m-line (both sending: inactive; the camera was never published and
        the subscription never sent). JSEP (RFC 8829 5.10) pairs a remote offer's new m-line
        only with a transceiver created by addTrack; ours come from addTransceiver. They get
        a placeholder mid while aiortc applies the offer (restored afterwards), so aiortc
        creates a new transceiver for the client's m-line and our next offer carries ours."""
        if description.type != "offer":
            return []
        hidden = [t for t in self.getTransceivers() if t.mid is None]
        for n, transceiver in enumerate(hidden):
            transceiver._set_mid(f"unoffered-{n}")
        return hidden

    async def _prepare_ice_restart(self, description: RTCSessionDescription) -> IceRestart | None:
        """Fresh local credentials and candidates before aiortc applies the offer, so that
        the offer's candidates and our answer belong to the new session."""
        transport = self.media_transport
        if description.type != "offer" or transport is None:
            return None
        credentials = remote_ice_credentials(description.sdp)
        if credentials is None:
            return None
        restart = self.ice_restart
        if restart is None:
            restart = IceRestart(
                transport.dtls.transport,
                install=self._install_restart_connection,
                on_switch=transport.use_connection,
                timeout_s=self._ports.config.restart_timeout_s,
            )
        if not restart.remote_changed(*credentials):
            return None
        self.ice_restart = restart
        # The remote offered: it is controlling (browsers take that role on a restart offer).
        await restart.prepare(controlling=False, remote=credentials)
        return restart

    def _install_restart_connection(self, conn: Connection) -> None:
        self._ports.install(conn)
        if self.media_transport is not None:
            self.media_transport.adopt(conn)

    async def close(self) -> None:
        if self.ice_restart is not None:
            await self.ice_restart.close()
        await super().close()

    # -- end ICE restart --


def remote_ice_credentials(text: str) -> tuple[str, str] | None:
    """The ICE ufrag and password of a description's bundle transport (its first mid)."""
    try:
        description = parse_sdp(text)
    except Exception:
        return None  # aiortc refuses it with the reason
    bundle = next((g for g in description.group if g.semantic == "BUNDLE" and g.items), None)
    media = description.media
    if bundle is not None:
        media = [m for m in media if m.rtp.muxId == bundle.items[0]] or media
    ice = media[0].ice if media else None
    if ice is None or not ice.usernameFragment or not ice.password:
        return None
    return ice.usernameFragment, ice.password


def sender_ssrcs(transceiver: RTCRtpTransceiver) -> tuple[int, int]:
    """The SSRC and RTX SSRC aiortc announced for this transceiver's sender."""
    sender = transceiver.sender
    return sender._ssrc, sender._rtx_ssrc


def mline_index(transceiver: RTCRtpTransceiver) -> int | None:
    """The index of the transceiver's m-line in the descriptions (None before it has one)."""
    index: int | None = transceiver._get_mline_index()
    return index


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs the last applied description negotiated for the transceiver (aiortc's
    payload types until an answer gave it ours: see `bundle.declared`)."""
    return list(transceiver._codecs)


def negotiated_header_extensions(
    transceiver: RTCRtpTransceiver,
) -> list[RTCRtpHeaderExtensionParameters]:
    """The header extensions the last applied description negotiated for the transceiver."""
    return list(transceiver._headerExtensions)


def receive_parameters(
    transceiver: RTCRtpTransceiver,
    codecs: list[RTCRtpCodecParameters],
    *,
    ssrc: int | None,
    payload_type: int,
    rtx_ssrc: int | None,
) -> RTCRtpReceiveParameters:
    """The parameters aiortc hands `receiver_started` for this transceiver's m-line, with
    these codecs and SSRCs (a publication re-created on the same mid: codec-late)."""
    encodings = []
    if ssrc is not None:
        rtx = RTCRtpRtxParameters(ssrc=rtx_ssrc) if rtx_ssrc else None
        encodings.append(RTCRtpDecodingParameters(ssrc=ssrc, payloadType=payload_type, rtx=rtx))
    return RTCRtpReceiveParameters(
        codecs=codecs,
        headerExtensions=negotiated_header_extensions(transceiver),
        muxId=transceiver.mid or "",
        encodings=encodings,
    )


def set_codec_preferences(transceiver: RTCRtpTransceiver, codecs: list[Any]) -> None:
    """Preferences that also apply to a transceiver created by a remote offer."""
    transceiver._preferred_codecs = codecs


def recycle_sender(transceiver: RTCRtpTransceiver, codecs: list[Any]) -> None:
    """Send on an inactive transceiver again (a new subscription on a recycled m-line).

    aiortc 1.16 never reuses a transceiver by itself. This one keeps its mid, its sender and
    that sender's SSRCs; it is sendonly from our next offer on, with these codec preferences,
    and its sender reports `sender_started` again once that offer is answered (aiortc calls
    `send` after every description; ours starts nothing of aiortc's, so there is no task of a
    track-less sender to cancel), with the parameters then negotiated.
    """
    transceiver.direction = "sendonly"
    set_codec_preferences(transceiver, codecs)
    transceiver._tap_sending = False  # type: ignore[attr-defined]
