"""The cheap load generator's core: synthetic peers that never encode or decode.

A `SyntheticPeer` is an aiortc peer connection tapped at the byte level
(`mediaserver.rtc.tap.ServerPeerConnection` with our own hooks): aiortc negotiates SDP, ICE
and DTLS; we send pre-packetized RTP (`loadtest.media`) through `MediaTransport.send` (SRTP
protect, then the node's own batched send path, `mediaserver/rtc/batch.py`: the packets of a
pacer tick leave in UDP GSO batches once per event-loop pass) and read decrypted RTP headers
in `on_rtp` (sequence number, timestamp, arrival: loss, jitter, gaps), never the payload.

Negotiation is the server-offers flow (`Participant.request_publish`): the peer never offers;
it answers every server offer, turning the recvonly m-lines meant for its own tracks into
sendonly ones. Signaling transport is the caller's business (see `benchmarks/forwarding.py`).

Receiving is cheap: SRTP leaves the RTP header (sequence number, timestamp, SSRC) in the
clear, so `SyntheticPeer` reads loss, jitter, gaps and arrival from the encrypted datagram and
decrypts only RTX packets (their original sequence number is in the payload) and a sample of
packets (`SAMPLE_EVERY`). One-way latency: sender and receiver of a consultation live in the
same process (one clock). A decrypted sample's payload names its position in the sender's
loop (`MediaLoop.index`), hence its send time and the RTP timestamp it left with; the
difference to the forwarded timestamp is the server's timestamp offset (constant per
forwarder until a switch, re-checked on every sample). Every other packet's send time is then
`start + (ts - offset - base) / clock`, and its latency `arrival - send time`.

One `Pacer` per process sends every stream's due packets from one timer (a tick of a few
ms), looping the media with continuous sequence numbers and timestamps. A NACK is answered
from a short per-stream history (RTX when negotiated); a PLI needs nothing (the loop has a
keyframe every ~2 s). Receivers NACK sequence gaps once, so "loss" is after retransmission.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCRtpTransceiver, RTCSessionDescription

from mediaserver.codecs import capabilities, codec_info
from mediaserver.config import IceConfig
from mediaserver.rtc.ice import PortAllocator
from mediaserver.rtc.tap import (
    MediaTransport,
    RTCRtpReceiveParameters,
    RTCRtpSendParameters,
    ServerPeerConnection,
    TapHooks,
    sender_ssrcs,
    set_codec_preferences,
)
from mediaserver.rtp import rtcp

from .media import MediaLoop

_header = struct.Struct("!BBHII")
_timespec = struct.Struct("@qq")
SOL_UDP = getattr(socket, "SOL_UDP", 17)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python's socket lacks it
UDP_GRO = 104  # Linux: a GSO batch is received as one buffer, with its segment size
GRO_BUFFER = 65536  # one received buffer: a whole GSO batch (at most a UDP payload)
_int = struct.Struct("@i")
_pack_header = _header.pack
HISTORY = 512  # packets kept per sent stream to answer NACKs (power of two)
MAX_NACK_GAP = 64
DELAY_BINS = 2000  # 1 ms bins of added delay; the last one holds everything above
SAMPLE_EVERY = 64  # decrypt one received packet in this many (latency offset check)
FREEZE_S = 0.5  # a video gap longer than this is a freeze


def percentile(hist: dict[int, int], q: float) -> float:
    """The q-quantile (0..1) of a {bin: count} histogram, in bins."""
    total = sum(hist.values())
    if not total:
        return 0.0
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= q * total:
            return float(b)
    return float(max(hist))


now = time.monotonic
_indexes: dict[int, tuple[MediaLoop, dict[bytes, int]]] = {}


def loop_index(loop: MediaLoop) -> dict[bytes, int]:
    """`loop.index()`, computed once per loop object."""
    entry = _indexes.get(id(loop))
    if entry is None or entry[0] is not loop:
        entry = _indexes[id(loop)] = (loop, loop.index())
    return entry[1]


def loopback_ports() -> PortAllocator:
    return PortAllocator(IceConfig(host_addresses=("127.0.0.1",)))


# -- sending --------------------------------------------------------------------------------


class StreamSender:
    """One published stream: stamps RTP headers on the loop's cached payloads when due."""

    __slots__ = (
        "_base_ts",
        "_history",
        "_i",
        "_keyframes",
        "_lap",
        "_last_jump",
        "_loop",
        "_packets",
        "_pt",
        "_rtx_pt",
        "_rtx_seq",
        "_rtx_ssrc",
        "_send",
        "_start",
        "bytes_sent",
        "keyframes_forced",
        "kind",
        "late_max",
        "media",
        "next_due",
        "packets_sent",
        "retransmitted",
        "seq",
        "ssrc",
    )

    def __init__(
        self,
        loop: MediaLoop,
        send: Callable[[bytes], bool],
        *,
        ssrc: int,
        payload_type: int,
        rtx_ssrc: int = 0,
        rtx_payload_type: int = 0,
        start: float | None = None,
    ) -> None:
        self.kind = loop.kind
        self.media = loop
        self._loop = loop
        self._packets = loop.packets
        self._send = send
        self.ssrc = ssrc
        self._pt = payload_type
        self._rtx_ssrc = rtx_ssrc
        self._rtx_pt = rtx_payload_type
        self._rtx_seq = random.randrange(0x10000)
        self.seq = random.randrange(0x10000)
        self._base_ts = random.randrange(1 << 32)
        self._history: list[bytes | None] = [None] * HISTORY
        self._i = 0
        self._lap = 0
        self._start = now() if start is None else start
        self.next_due = self._start + self._packets[0].at
        self.packets_sent = 0
        self.bytes_sent = 0
        self.retransmitted = 0
        self.late_max = 0.0
        self._keyframes = [i for i, p in enumerate(self._packets) if p.keyframe]
        self._last_jump = -1.0
        self.keyframes_forced = 0

    def request_keyframe(self, t: float) -> bool:
        """Answer a PLI as an encoder would: jump ahead to the loop's next keyframe.

        The jump shifts the loop's start and base timestamp back by the skipped span, so the
        sequence numbers, timestamps and due times go on unbroken (the latency mapping holds).
        At most one jump per second (a PLI burst from several subscribers is one request).
        """
        if not self._keyframes or t - self._last_jump < 1.0 or self._packets[self._i].keyframe:
            return False
        i = self._i
        loop = self._loop
        p_i = self._packets[i]
        k = next((k for k in self._keyframes if k > i), None)
        wrapped = k is None
        if k is None:
            k = self._keyframes[0]
            span = loop.duration - p_i.at + self._packets[k].at
            span_ts = loop.period_ts - p_i.ts + self._packets[k].ts
        else:
            span = self._packets[k].at - p_i.at
            span_ts = self._packets[k].ts - p_i.ts
        self._last_jump = t
        self._i = k
        if wrapped:
            self._lap += 1
        self._start -= span
        self._base_ts = (self._base_ts - span_ts) & 0xFFFFFFFF
        self.keyframes_forced += 1
        return True

    def use(self, send: Callable[[bytes], bool]) -> None:
        """Send through `send` from now on (`MediaTransport.rtp_sender`, once connected)."""
        self._send = send

    @property
    def start(self) -> float:
        """When the loop's first packet was due (monotonic): send times count from here."""
        return self._start

    @property
    def base_ts(self) -> int:
        return self._base_ts

    def send_due(self, t: float) -> int:
        """Send every packet due at time `t`; returns how many were sent."""
        sent = 0
        packets = self._packets
        loop = self._loop
        while self.next_due <= t:
            late = t - self.next_due
            if late > self.late_max:
                self.late_max = late
            p = packets[self._i]
            seq = self.seq
            ts = (self._base_ts + self._lap * loop.period_ts + p.ts) & 0xFFFFFFFF
            data = (
                _pack_header(0x80, (0x80 if p.marker else 0) | self._pt, seq, ts, self.ssrc)
                + p.payload
            )
            if self._send(data):
                self.packets_sent += 1
                self.bytes_sent += len(p.payload)
            self._history[seq & (HISTORY - 1)] = data
            self.seq = (seq + 1) & 0xFFFF
            sent += 1
            self._i += 1
            if self._i == len(packets):
                self._i = 0
                self._lap += 1
            self.next_due = self._start + self._lap * loop.duration + packets[self._i].at
        return sent

    def on_nack(self, seqs: tuple[int, ...]) -> None:
        for seq in seqs:
            data = self._history[seq & (HISTORY - 1)]
            if data is None or ((data[2] << 8) | data[3]) != seq:
                continue
            if self._rtx_pt:
                data = (
                    _pack_header(
                        0x80,
                        (data[1] & 0x80) | self._rtx_pt,
                        self._rtx_seq,
                        int.from_bytes(data[4:8], "big"),
                        self._rtx_ssrc,
                    )
                    + data[2:4]
                    + data[12:]
                )
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            if self._send(data):
                self.retransmitted += 1

    def snapshot(self) -> dict[str, float]:
        late, self.late_max = self.late_max, 0.0
        return {
            "packets": self.packets_sent,
            "bytes": self.bytes_sent,
            "retransmitted": self.retransmitted,
            "late_max_ms": late * 1000,
        }


def stop_event_loop_reading(transport: asyncio.BaseTransport) -> socket.socket | None:
    """Stop the stock event loop reading a datagram transport's socket, and return the socket
    (None, reading on, where the loop is not asyncio's selector loop: uvloop, a proactor).

    The loop's reader is removed directly, as `pause_reading` does where a datagram transport
    has it: Python 3.11.2 (Debian 12's) has it only on stream transports, its datagram
    transports raise NotImplementedError. The transport still sends, and closing it is as
    before (close removes a reader that is already gone without complaint)."""
    loop = getattr(transport, "_loop", None)
    sock = transport.get_extra_info("socket")
    sock = getattr(sock, "_sock", sock)  # asyncio's TransportSocket wraps the real one
    if not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        return None
    if not isinstance(sock, socket.socket):
        return None
    # The public remove_reader refuses a transport's socket; this is what pause_reading calls.
    loop._remove_reader(sock.fileno())  # type: ignore[attr-defined]
    return sock


class SocketDrain:
    """A peer's media socket read by the pacer: every queued datagram, once a tick.

    Arrival times are the kernel's receive timestamps (SO_TIMESTAMPNS, wall clock, mapped to
    the monotonic clock), so batching does not blur latency or jitter. STUN (ICE consent) and
    DTLS go to aioice's protocol as the event loop would have delivered them. With UDP_GRO
    set, a GSO batch from the SFU (ours sends them) arrives as one buffer and one system call,
    cut apart here by its segment size; datagrams sent one by one (Janus) arrive one by one.
    """

    __slots__ = ("peer", "protocol", "received", "sock")

    def __init__(self, sock: socket.socket, peer: SyntheticPeer, protocol: Any) -> None:
        self.sock = sock
        self.peer = peer
        self.protocol = protocol
        self.received = 0

    def drain(self, mono_minus_wall: float) -> None:
        recvmsg = self.sock.recvmsg
        on_datagram = self.peer.on_datagram
        unpack = _timespec.unpack_from
        for _ in range(4096):  # bounded: a tick never spins on a flooded socket
            try:
                data, anc, _flags, addr = recvmsg(GRO_BUFFER, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.received += 1
            if data and 127 < data[0] < 192:
                arrival = 0.0
                segment = 0
                for level, kind, value in anc:
                    if kind == SO_TIMESTAMPNS and level == socket.SOL_SOCKET:
                        sec, nsec = unpack(value)
                        arrival = sec + nsec * 1e-9 + mono_minus_wall
                    elif kind == UDP_GRO and level == SOL_UDP:
                        segment = _int.unpack_from(value)[0]
                if not arrival:
                    arrival = now()
                try:
                    if segment and len(data) > segment:  # a GSO batch (UDP_GRO): cut it apart
                        n = len(data)
                        self.received += (n - 1) // segment
                        for i in range(0, n, segment):
                            on_datagram(data[i : i + segment], arrival)
                    else:
                        on_datagram(data, arrival)
                except Exception:  # a malformed packet never stops the pacer
                    pass
            else:
                self.protocol.datagram_received(data, addr)


class Pacer:
    """Sends every stream's due packets from one timer per process (and drains sockets)."""

    def __init__(self, tick: float = 0.005) -> None:
        self.tick = tick
        self.drains: list[SocketDrain] = []
        self._by_fd: dict[int, SocketDrain] = {}
        self._ready = select.epoll()  # which drained sockets have data: one syscall a tick
        self.senders: list[StreamSender] = []
        self.ticks = 0
        self.late_ticks = 0  # ticks that woke more than one tick late

    def add_drain(self, drain: SocketDrain) -> None:
        fd = drain.sock.fileno()
        self._ready.register(fd, select.EPOLLIN)
        self._by_fd[fd] = drain
        self.drains = [*self.drains, drain]

    def add(self, sender: StreamSender) -> None:
        self.senders = [*self.senders, sender]

    def remove(self, sender: StreamSender) -> None:
        self.senders = [s for s in self.senders if s is not sender]

    async def run(self, until: float) -> None:
        """Send until monotonic time `until` (bounded)."""
        try:
            await self._run(until)
        finally:
            self._ready.close()

    async def _run(self, until: float) -> None:
        tick = self.tick
        next_tick = now()
        while True:
            t = now()
            if t >= until:
                return
            if t - next_tick > tick:
                self.late_ticks += 1
            self.ticks += 1
            if self.drains:
                ready = self._ready.poll(0)
                if ready:
                    offset = now() - time.time()
                    by_fd = self._by_fd
                    for fd, _ in ready:
                        by_fd[fd].drain(offset)
            for sender in self.senders:
                if sender.next_due <= t:
                    sender.send_due(t)
            next_tick += tick
            if next_tick < t:
                next_tick = t + tick
            await asyncio.sleep(next_tick - now())


# -- receiving ------------------------------------------------------------------------------


class StreamReceiver:
    """Loss (after retransmission), jitter, bytes and the longest gap of one received stream."""

    __slots__ = (
        "base",
        "bytes",
        "clock_rate",
        "delay_hist",
        "duplicates",
        "ext_ts",
        "first_arrival",
        "freezes",
        "gap_max",
        "jitter",
        "kind",
        "last_arrival",
        "last_ts",
        "latency_hist",
        "max_ext",
        "min_transit",
        "missing",
        "offset_changes",
        "received",
        "recovered",
        "sample_in",
        "samples",
        "source",
        "src_start",
        "started",
        "transit",
        "ts0",
    )

    def __init__(self, kind: str, clock_rate: int) -> None:
        self.kind = kind
        self.clock_rate = clock_rate
        self.started = False
        self.base = 0
        self.max_ext = 0
        self.received = 0
        self.duplicates = 0
        self.recovered = 0
        self.bytes = 0
        self.jitter = 0.0
        self.transit = 0.0
        self.last_arrival = 0.0
        self.gap_max = 0.0
        self.missing: set[int] = set()
        # Added delay: arrival - (unwrapped RTP time), above its minimum so far. The sender
        # paces by RTP time, so this is the queueing delay (server and both hosts) in 1 ms bins.
        self.last_ts = 0
        self.ext_ts = 0
        self.min_transit = float("inf")
        self.delay_hist = [0] * DELAY_BINS
        self.first_arrival = 0.0
        self.freezes = 0
        # One-way latency (see the module doc): the sending stream, once paired; `ts0` is the
        # forwarded timestamp of the sender's start (-1 until a decrypted sample gave it).
        self.source: StreamSender | None = None
        self.src_start = 0.0
        self.ts0 = -1
        self.sample_in = 0
        self.samples = 0
        self.offset_changes = 0
        self.latency_hist = [0] * DELAY_BINS

    def wants_sample(self) -> bool:
        """Whether the next packet should be decrypted (offset unknown, or one in N)."""
        if self.source is None:
            return False
        if self.ts0 < 0:
            return True
        self.sample_in -= 1
        return self.sample_in <= 0

    def on_sample(self, payload: bytes, ts: int, arrival: float) -> None:
        """A decrypted packet's payload: learn (or re-check) the timestamp offset."""
        src = self.source
        if src is None:
            return
        loop = src.media
        i = loop_index(loop).get(payload)
        if i is None:
            return  # a payload that occurs twice in the loop (silence): no verdict
        self.sample_in = SAMPLE_EVERY
        p = loop.packets[i]
        lap = int((arrival - src.start - p.at) // loop.duration)
        if lap < 0:
            return
        ts0 = (ts - lap * loop.period_ts - p.ts) & 0xFFFFFFFF
        self.samples += 1
        if ts0 != self.ts0:
            if self.ts0 >= 0:
                self.offset_changes += 1
            self.ts0 = ts0
            self.src_start = src.start

    @property
    def expected(self) -> int:
        return self.max_ext - self.base + 1 if self.started else 0

    @property
    def lost(self) -> int:
        return self.expected - self.received

    def on_packet(self, seq: int, ts: int, arrival: float, size: int) -> range | None:
        """Count one packet; returns the newly missing extended sequence numbers, if any."""
        self.bytes += size
        if not self.started:
            self.started = True
            self.base = self.max_ext = seq
            self.received = 1
            self.transit = arrival * self.clock_rate - ts
            self.last_arrival = arrival
            self.last_ts = ts
            self.min_transit = arrival
            self.delay_hist[0] += 1
            self.first_arrival = arrival
            return None
        delta = (seq - self.max_ext) & 0xFFFF
        if 0 < delta < 0x8000:
            ext = self.max_ext + delta
            gap = None
            if delta > 1:
                gap = range(self.max_ext + 1, ext)
                self.missing.update(gap)
                if len(self.missing) > 8192:
                    self._prune(ext)
            self.max_ext = ext
            self.received += 1
            # RFC 3550 A.8 jitter, as mediaserver/rtp/stats.py's ReceiveStats.update computes
            # it; inlined on purpose: a shared function costs a call per packet (~30 ns).
            transit = arrival * self.clock_rate - ts
            d = transit - self.transit
            self.transit = transit
            if d < 0:
                d = -d
            if d < self.clock_rate:
                self.jitter += (d - self.jitter) / 16
            g = arrival - self.last_arrival
            if g > self.gap_max:
                self.gap_max = g
            if g > FREEZE_S:
                self.freezes += 1
            self.last_arrival = arrival
            step = (ts - self.last_ts) & 0xFFFFFFFF
            self.ext_ts += step - (1 << 32) if step & 0x80000000 else step
            self.last_ts = ts
            rel = arrival - self.ext_ts / self.clock_rate
            if rel < self.min_transit:
                self.min_transit = rel
            ms = int((rel - self.min_transit) * 1000)
            self.delay_hist[ms if ms < DELAY_BINS else DELAY_BINS - 1] += 1
            if self.ts0 >= 0:
                ms = int(
                    (arrival - self.src_start - ((ts - self.ts0) & 0xFFFFFFFF) / self.clock_rate)
                    * 1000
                )
                self.latency_hist[ms if 0 <= ms < DELAY_BINS else (0 if ms < 0 else -1)] += 1
            return gap
        ext = self.max_ext - ((self.max_ext - seq) & 0xFFFF)
        if ext in self.missing:
            self.missing.discard(ext)
            self.received += 1
            self.recovered += 1
        else:
            self.duplicates += 1
        return None

    def _prune(self, ext: int) -> None:
        self.missing = {s for s in self.missing if s > ext - 4096}

    def snapshot(self) -> dict[str, Any]:
        gap, self.gap_max = self.gap_max, 0.0
        return {
            "expected": self.expected,
            "received": self.received,
            "bytes": self.bytes,
            "recovered": self.recovered,
            "duplicates": self.duplicates,
            "jitter_ms": self.jitter / self.clock_rate * 1000,
            "gap_max_ms": gap * 1000,
            "delay_hist": {str(i): n for i, n in enumerate(self.delay_hist) if n},
            "latency_hist": {str(i): n for i, n in enumerate(self.latency_hist) if n},
            "freezes": self.freezes,
            "samples": self.samples,
            "offset_changes": self.offset_changes,
        }


@dataclass(slots=True)
class _RecvSsrc:
    stream: StreamReceiver
    rtx: bool
    media_ssrc: int


# -- the synthetic peer ---------------------------------------------------------------------


class SyntheticPeer(TapHooks):
    """A client peer publishing looped pre-encoded VP8 + Opus and counting what it receives."""

    def __init__(
        self,
        name: str,
        *,
        video: MediaLoop,
        audio: MediaLoop,
        pacer: Pacer,
        ports: PortAllocator | None = None,
        datachannel: bool = True,
        decrypt_all: bool = False,
    ) -> None:
        """`datachannel=False` for SFUs that do not negotiate ours (Janus publishers and
        subscribers); `decrypt_all=True` decrypts every received packet (the old path, kept
        to measure what skipping it saves)."""
        self.name = name
        self.decrypt_all = decrypt_all
        self.receiving: dict[str, StreamReceiver] = {}
        self.decrypted = 0
        self.media = {"video": video, "audio": audio}
        self.pacer = pacer
        self.transport: MediaTransport | None = None
        self.senders: dict[str, StreamSender] = {}
        self.receivers: list[StreamReceiver] = []
        self._by_ssrc: dict[int, _RecvSsrc] = {}
        self._send_by_ssrc: dict[int, StreamSender] = {}
        self.rtcp_ssrc = random.randrange(1, 1 << 32)
        self.unknown_rtp = 0
        self.plis = 0
        self.nacks_sent = 0
        self.nacks_received = 0
        self.offers = 0
        self.pc = ServerPeerConnection(hooks=self, ports=ports or loopback_ports())
        self.channel = (
            self.pc.createDataChannel("consult", negotiated=True, id=0) if datachannel else None
        )

    @property
    def connection_state(self) -> str:
        return str(self.pc.connectionState)

    async def answer(self, sdp: str, tracks: dict[str, dict[str, Any]]) -> str:
        """Answer a server offer: m-lines the server receives on (recvonly) are our tracks."""
        self.offers += 1
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for tr in self.pc.getTransceivers():
            info = tracks.get(tr.mid or "")
            if info and info.get("direction") == "recvonly" and tr.kind not in self.senders:
                tr.direction = "sendonly"
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return str(self.pc.localDescription.sdp)

    async def offer(self, kinds: tuple[str, ...] = ("audio", "video")) -> str:
        """Offer to publish (SFUs where the client offers: Janus's VideoRoom publisher)."""
        for kind in kinds:
            self.pc.addTransceiver(kind, direction="sendonly")
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        return str(self.pc.localDescription.sdp)

    async def accept(self, sdp: str) -> None:
        """Apply the SFU's answer to our `offer()`."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def close(self) -> None:
        for sender in self.senders.values():
            self.pacer.remove(sender)
        await self.pc.close()

    # -- tap hooks ------------------------------------------------------------------------

    def transport_created(self, transport: MediaTransport) -> None:
        self.transport = transport
        transport.on_rtp = self._on_rtp
        transport.on_rtcp = self._on_rtcp
        # Read RTP headers before MediaTransport decrypts (see the module doc); everything
        # else (DTLS, RTCP, RTX, samples) takes MediaTransport's own path.
        self._decrypting = transport.divert(self._datagram)

    def transceiver_created(self, transceiver: RTCRtpTransceiver) -> None:
        want = "video/vp8" if transceiver.kind == "video" else "audio/opus"
        set_codec_preferences(transceiver, capabilities(transceiver.kind, want))

    def receiver_started(
        self, transceiver: RTCRtpTransceiver, parameters: RTCRtpReceiveParameters
    ) -> None:
        if not parameters.codecs or not parameters.encodings:
            return
        stream = StreamReceiver(transceiver.kind, codec_info(parameters.codecs).clock_rate)
        self.receivers.append(stream)
        self.receiving.setdefault(transceiver.kind, stream)
        enc = parameters.encodings[0]
        if enc.ssrc:
            self._by_ssrc[enc.ssrc] = _RecvSsrc(stream, False, enc.ssrc)
            if enc.rtx is not None and enc.rtx.ssrc:
                self._by_ssrc[enc.rtx.ssrc] = _RecvSsrc(stream, True, enc.ssrc)

    def sender_started(
        self, transceiver: RTCRtpTransceiver, parameters: RTCRtpSendParameters
    ) -> None:
        kind = transceiver.kind
        if not parameters.codecs or kind in self.senders or self.transport is None:
            return
        codec = codec_info(parameters.codecs)
        ssrc, rtx_ssrc = sender_ssrcs(transceiver)
        sender = StreamSender(
            self.media[kind],
            self.transport.send,
            ssrc=ssrc,
            payload_type=codec.payload_type,
            rtx_ssrc=rtx_ssrc if codec.rtx_payload_type else 0,
            rtx_payload_type=codec.rtx_payload_type,
        )
        self.senders[kind] = sender
        self._send_by_ssrc[ssrc] = sender
        self.pacer.add(sender)

    # -- packet path ----------------------------------------------------------------------

    def _datagram(self, data: bytes, component: int) -> None:
        """Every non-STUN datagram read by the event loop (before `detach_socket`)."""
        self.on_datagram(data, now())

    def on_datagram(self, data: bytes, arrival: float) -> None:
        """Media RTP is counted from its clear header, undecrypted; the rest goes on to
        MediaTransport (RTCP, RTX, DTLS)."""
        if 127 < data[0] < 192 and len(data) >= 12 and not 191 < data[1] < 224:
            entry = self._by_ssrc.get(int.from_bytes(data[8:12], "big"))
            if entry is not None and not entry.rtx and not self.decrypt_all:
                stream = entry.stream
                ts = int.from_bytes(data[4:8], "big")
                if stream.wants_sample():
                    self._sample(stream, data, ts, arrival)
                seq = (data[2] << 8) | data[3]
                gap = stream.on_packet(seq, ts, arrival, len(data))
                if gap is not None and len(gap) <= MAX_NACK_GAP and self.transport is not None:
                    self.nacks_sent += 1
                    self.transport.send(
                        rtcp.nack(self.rtcp_ssrc, entry.media_ssrc, [s & 0xFFFF for s in gap])
                    )
                return
        self._decrypting(data, 1)

    def detach_socket(self) -> SocketDrain | None:
        """Take the connected pair's socket away from the event loop: the pacer drains it once
        a tick (`SocketDrain`), so a received packet costs no event-loop wake-up. Needs the
        stock asyncio loop (`stop_event_loop_reading`; uvloop's transports cannot stop)."""
        if self.transport is None:
            return None
        transport = self.transport.socket_transport()
        if transport is None:
            return None
        sock = stop_event_loop_reading(transport)
        if sock is None:
            return None
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        with contextlib.suppress(OSError):  # a kernel without UDP_GRO: one datagram a call
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        send = self.transport.rtp_sender()  # the pacer's packets: no per-packet checks
        if send is not None:
            for sender in self.senders.values():
                sender.use(send)
        return SocketDrain(sock, self, transport.get_protocol())

    def _sample(self, stream: StreamReceiver, data: bytes, ts: int, arrival: float) -> None:
        plain = self.transport.unprotect_rtp(data) if self.transport is not None else None
        if plain is None:
            return  # no keys yet, a replay, a bad tag: no sample this time
        self.decrypted += 1
        b0 = plain[0]
        off = 12 + ((b0 & 0x0F) << 2)
        if b0 & 0x10 and len(plain) >= off + 4:
            off += 4 + (((plain[off + 2] << 8) | plain[off + 3]) << 2)
        end = len(plain) - (plain[-1] if b0 & 0x20 else 0)
        stream.on_sample(plain[off:end], ts, arrival)

    def _on_rtp(self, data: bytes, arrival: float) -> None:
        self.decrypted += 1
        entry = self._by_ssrc.get(int.from_bytes(data[8:12], "big"))
        if entry is None:
            self.unknown_rtp += 1
            return
        if entry.rtx:
            b0 = data[0]
            off = 12 + ((b0 & 0x0F) << 2)
            if b0 & 0x10:
                off += 4 + (((data[off + 2] << 8) | data[off + 3]) << 2)
            if len(data) < off + 2:
                return  # padding-only probe
            seq = (data[off] << 8) | data[off + 1]
        else:
            seq = (data[2] << 8) | data[3]
        gap = entry.stream.on_packet(seq, int.from_bytes(data[4:8], "big"), arrival, len(data))
        if gap is not None and len(gap) <= MAX_NACK_GAP and self.transport is not None:
            self.nacks_sent += 1
            self.transport.send(
                rtcp.nack(self.rtcp_ssrc, entry.media_ssrc, [s & 0xFFFF for s in gap])
            )

    def _on_rtcp(self, data: bytes) -> None:
        for item in rtcp.parse(data):
            if isinstance(item, rtcp.Nack):
                sender = self._send_by_ssrc.get(item.media_ssrc)
                if sender is not None:
                    self.nacks_received += 1
                    sender.on_nack(item.lost)
            elif isinstance(item, rtcp.KeyframeRequest):
                self.plis += 1
                sender = self._send_by_ssrc.get(item.media_ssrc)
                if sender is not None and sender.kind == "video":
                    sender.request_keyframe(now())

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.connection_state,
            "sent": {k: s.snapshot() for k, s in self.senders.items()},
            "received": [r.snapshot() | {"kind": r.kind} for r in self.receivers],
            "unknown_rtp": self.unknown_rtp,
            "plis": self.plis,
            "nacks_sent": self.nacks_sent,
            "nacks_received": self.nacks_received,
            "decrypt_errors": self.transport.decrypt_errors if self.transport else 0,
            "decrypted": self.decrypted,
        }
