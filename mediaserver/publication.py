"""Publication: one track a participant sends, fanned out to its subscriptions as bytes."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .codecs import CodecInfo
from .devices import CaptureSettings
from .emitter import Emitter
from .events import CloseReason, NodeCounters, TrackInfo
from .packetcache import PacketCache
from .rtp import rtcp
from .rtp.keyframe import detector
from .rtp.stats import ReceiveStats

if TYPE_CHECKING:
    from .recording import TrackSink
    from .subscription import Subscription

KeyframeFn = Callable[[bytes, int], bool]
MAX_NACK_GAP = 64


def payload_offset(data: bytes) -> int:
    """Offset of the payload of an RTP packet (after CSRCs and extensions); IndexError if cut."""
    b0 = data[0]
    off = 12 + ((b0 & 0x0F) << 2)
    if not b0 & 0x10:
        return off
    return off + 4 + (((data[off + 2] << 8) | data[off + 3]) << 2)


class Publication(Emitter):
    """Receives the publisher's RTP (routed here by SSRC) and feeds every subscription.

    Events: "close" (reason).
    """

    def __init__(
        self,
        *,
        participant_id: str,
        kind: str,
        source: str,
        mid: str,
        codec: CodecInfo,
        ssrc: int | None,
        rtx_ssrc: int | None,
        audio_level_id: int,
        cache_size: int,
        counters: NodeCounters,
        send_rtcp: Callable[[bytes], bool],
        rtcp_ssrc: int,
        pli_throttle_s: float,
    ) -> None:
        super().__init__()
        self.track_id = secrets.token_hex(8)
        self.participant_id = participant_id
        self.kind = kind
        self.source = source
        self.channels = 1  # audio channels the publisher declared (devices.py)
        self.capture: CaptureSettings | None = None  # what the publisher reported (devices.py)
        self.warnings: tuple[str, ...] = ()  # e.g. a processed stethoscope (devices.py)
        self.mid = mid
        self.codec = codec
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.stats = ReceiveStats(codec.clock_rate)
        self.cache = PacketCache(cache_size)
        # Forwarding now (the packet path reads only this list): started, not paused by a
        # reconnection. Every subscription, started or not, is in `_subscriptions` from its
        # creation until it closes: closing the publication closes them all (issue 11).
        self.subscriptions: list[Subscription] = []
        self._subscriptions: list[Subscription] = []
        self.sinks: tuple[TrackSink, ...] = ()  # recorders: the same bytes (recording.py)
        self.last_sr: tuple[int, int, float] | None = None  # (ntp, rtp ts, local arrival)
        self.estimate_bps: int | None = None
        self.recent_loss = 0.0  # uplink loss of the last interval (bandwidth fallback)
        self._level_id = audio_level_id
        self._keyframe: KeyframeFn | None = detector(codec.mime_type)  # type: ignore[assignment]
        self._counters = counters
        self._send_rtcp = send_rtcp
        self._rtcp_ssrc = rtcp_ssrc
        self._pli_throttle = pli_throttle_s
        self._last_pli = -1e9
        self._closed = False

    def info(self) -> TrackInfo:
        return TrackInfo(
            track_id=self.track_id,
            participant_id=self.participant_id,
            kind=self.kind,
            source=self.source,
            codec=self.codec.name,
            mid=self.mid,
        )

    # -- the packet path -------------------------------------------------------------------

    def on_rtp(self, data: bytes, arrival: float) -> int:
        """A packet from the publisher; returns how many packets its sequence number says were
        skipped before it (0 in order)."""
        try:
            off = payload_offset(data)
        except IndexError:
            return 0
        n = len(data)
        if off > n:
            return 0
        seq = (data[2] << 8) | data[3]
        ts = int.from_bytes(data[4:8], "big")
        counters = self._counters
        counters.packets_in += 1
        counters.bytes_in += n
        skipped = self.stats.update(seq, ts, arrival, n)
        if skipped and self.codec.nack and skipped <= MAX_NACK_GAP:
            self._nack_upstream([(seq - i) & 0xFFFF for i in range(skipped, 0, -1)])
        self.cache.put(seq, data)
        self._fan_out(data, off, seq, ts, arrival)
        for sink in self.sinks:
            sink.on_rtp(data, arrival)
        return skipped

    def _fan_out(self, data: bytes, off: int, seq: int, ts: int, arrival: float) -> None:
        if not self.subscriptions:
            return
        keyframe = True if self._keyframe is None else self._keyframe(data, off)
        level = -1
        if self._level_id:
            value = extension_value(data, self._level_id)
            level = value[0] if value else -1
        abs3 = (int(arrival * 262144) & 0xFFFFFF).to_bytes(3, "big")  # 6.18 fixed point
        for sub in self.subscriptions:
            sub.send(data, off, seq, ts, keyframe, abs3, level)

    def on_rtx(self, data: bytes, arrival: float) -> None:
        """An RTX packet: unwrap what was missing; drop probes and duplicates."""
        try:
            off = payload_offset(data)
        except IndexError:
            return
        end = len(data) - (data[-1] if data[0] & 0x20 else 0)
        if end - off < 2:
            self._counters.padding_dropped += 1
            return
        osn = (data[off] << 8) | data[off + 1]
        if osn in self.cache or self.ssrc is None:
            return
        header = bytearray(data[:off])
        header[0] &= ~0x20 & 0xFF
        header[1] = (data[1] & 0x80) | self.codec.payload_type
        header[2:4] = osn.to_bytes(2, "big")
        header[8:12] = self.ssrc.to_bytes(4, "big")
        packet = bytes(header) + data[off + 2 : end]
        self.cache.put(osn, packet)
        self._fan_out(packet, off, osn, int.from_bytes(data[4:8], "big"), arrival)
        for sink in self.sinks:
            sink.on_rtp(packet, arrival)

    # -- RTCP ------------------------------------------------------------------------------

    def on_sender_report(self, sr: rtcp.SenderReport, arrival: float) -> None:
        self.last_sr = (sr.ntp, sr.rtp_timestamp, arrival)

    def request_keyframe(self, *, force: bool = False) -> bool:
        """Send a PLI to the publisher unless one went out within the throttle interval."""
        if self.kind != "video" or self.ssrc is None:
            return False
        t = time.monotonic()
        if not force and t - self._last_pli < self._pli_throttle:
            return False
        self._last_pli = t
        if self._send_rtcp(rtcp.pli(self._rtcp_ssrc, self.ssrc)):
            self._counters.plis_sent += 1
            return True
        return False

    def _nack_upstream(self, seqs: list[int]) -> None:
        if self.ssrc is not None:
            self._send_rtcp(rtcp.nack(self._rtcp_ssrc, self.ssrc, seqs))

    def resend_upstream(self, seqs: list[int]) -> None:
        """Ask the publisher for packets a subscriber lost that the cache no longer has."""
        if self.codec.nack:
            self._nack_upstream(seqs)

    # -- reconnection (issue 5) ----------------------------------------------------------------

    def rebind(
        self,
        *,
        mid: str,
        codec: CodecInfo,
        ssrc: int | None,
        rtx_ssrc: int | None,
        audio_level_id: int,
        gap_s: float,
    ) -> None:
        """The publisher reconnected with a fresh transport: its new sender for this source
        feeds this publication. Subscribers keep their SSRC; their numbering goes on after the
        last packet sent and their timestamps after a gap of `gap_s` (a keyframe first)."""
        self.mid = mid
        self.codec = codec
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self._level_id = audio_level_id
        self._keyframe = detector(codec.mime_type)  # type: ignore[assignment]
        self.stats = ReceiveStats(codec.clock_rate)
        self.cache.clear()
        self.last_sr = None
        gap = max(1, int(gap_s * codec.clock_rate))
        for sub in self.subscriptions:
            if sub.forwarder is not None:
                sub.forwarder.switch_source(gap)
        self._last_pli = -1e9

    # -- lifecycle -------------------------------------------------------------------------

    def add(self, subscription: Subscription) -> None:
        """A new subscription to this publication (Subscription's constructor): it is closed
        with the publication whether or not it ever forwarded a packet."""
        if self._closed:
            raise RuntimeError("publication is closed")
        self._subscriptions.append(subscription)

    def remove(self, subscription: Subscription) -> None:
        """A subscription closed: forget it."""
        self.detach(subscription)
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def add_sink(self, sink: TrackSink) -> None:
        """A recorder's sink: it gets every packet the subscriptions get, from now on."""
        if sink not in self.sinks:
            self.sinks = (*self.sinks, sink)

    def remove_sink(self, sink: TrackSink) -> None:
        self.sinks = tuple(s for s in self.sinks if s is not sink)

    def attach(self, subscription: Subscription) -> None:
        """Start forwarding to a subscription (its sender is negotiated and connected)."""
        if subscription not in self._subscriptions:
            return  # closed meanwhile
        if subscription not in self.subscriptions:
            self.subscriptions = [*self.subscriptions, subscription]
            self.request_keyframe(force=True)

    def detach(self, subscription: Subscription) -> None:
        """Stop forwarding to a subscription (closed, or its transport is being replaced)."""
        if subscription in self.subscriptions:
            self.subscriptions = [s for s in self.subscriptions if s is not subscription]

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self, reason: CloseReason = CloseReason.LEFT) -> None:
        if self._closed:
            return
        self._closed = True
        subscriptions, self._subscriptions = self._subscriptions, []
        self.subscriptions = []
        self.sinks = ()
        for sub in subscriptions:  # every one: started, waiting for an answer, reconnecting
            await sub._parent_closed(reason)
        self.cache.clear()
        self.emit("close", reason)
        self.remove_all_listeners()

    async def _parent_closed(self, reason: CloseReason) -> None:
        await self.close(reason)


def extension_value(data: bytes, wanted: int) -> bytes | None:
    """Value of a one-byte-header extension element, or None (used off the hot path)."""
    if not data:
        return None
    b0 = data[0]
    off = 12 + ((b0 & 0x0F) << 2)
    if not b0 & 0x10 or len(data) < off + 4 or data[off] != 0xBE or data[off + 1] != 0xDE:
        return None
    end = min(len(data), off + 4 + (((data[off + 2] << 8) | data[off + 3]) << 2))
    i = off + 4
    while i < end:
        b = data[i]
        if b == 0:
            i += 1
            continue
        ident, length = b >> 4, (b & 0x0F) + 1
        if ident == 15:
            return None
        if ident == wanted:
            return data[i + 1 : i + 1 + length]
        i += 1 + length
    return None
