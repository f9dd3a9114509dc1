"""Micro benchmarks of the forwarding hot path (timeit, one CPU, no I/O).

    .venv/bin/python -m benchmarks.micro [--cpu 0] [--no-docs]

Each row is the best of several timeit repeats, in microseconds per call: the header rewrite
(Forwarder.rewrite) of a 1100-byte VP8 packet, the NACK packet cache, the whole per-packet
publication path (stats, cache, keyframe check, fan-out to 1 and 3 subscriptions through
their Forwarders, with a no-op send), SRTP protect/unprotect of a 1100-byte packet with the
profile aiortc negotiates between aiortc peers (AEAD_AES_256_GCM) and the common browser one
(AES128_CM_SHA1_80), RTCP parsing (RR + REMB compound, NACK), and the load generator's own
per-packet work (stamping a header, counting a received one: loadtest/). The table goes to
docs/benchmarks.md (section "micro").
"""

from __future__ import annotations

import argparse
import os
import shlex
import struct
import sys
import time
import timeit
from collections.abc import Callable

from pylibsrtp import Policy, Session

from benchmarks.common import table
from loadtest.report import machine_summary, write_section
from mediaserver.codecs import CodecInfo
from mediaserver.events import NodeCounters
from mediaserver.forwarder import ExtensionIds, Forwarder
from mediaserver.packetcache import PacketCache
from mediaserver.publication import Publication, payload_offset
from mediaserver.rtp import rtcp
from mediaserver.subscription import Subscription

PAYLOAD = 1100
VP8 = CodecInfo(
    mime_type="video/VP8",
    clock_rate=90000,
    channels=None,
    parameters={},
    payload_type=96,
    rtx_payload_type=97,
    nack=True,
)
EXT = ExtensionIds(mid=4, abs_send_time=2, audio_level=0)


def rtp_packet(seq: int, *, size: int = PAYLOAD, ssrc: int = 0x11223344) -> bytes:
    """A browser-like VP8 packet: one-byte extensions (mid, abs-send-time) + payload."""
    ext = bytes([0x40, ord("1"), 0x22, 0, 0, 0, 0, 0])  # mid "1" (id 4), abs-send-time (id 2)
    header = struct.pack("!BBHII", 0x90, 96, seq & 0xFFFF, seq * 3000 & 0xFFFFFFFF, ssrc)
    header += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    return header + b"\x10" + bytes(size - 1)


def measure(fn: Callable[[], object], number: int, repeat: int = 7) -> float:
    """Best microseconds per call over `repeat` runs of `number` calls."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def bench_forwarder() -> list[tuple[str, float]]:
    fwd = Forwarder(ssrc=0x55667788, payload_type=97, mid="3", ext=EXT, gate_on_keyframe=False)
    packets = [rtp_packet(i) for i in range(1024)]
    off = payload_offset(packets[0])
    abs3 = b"\x01\x02\x03"
    state = [0]

    def rewrite() -> None:
        i = state[0] = (state[0] + 1) & 1023
        fwd.rewrite(packets[i], off, i, i * 3000, False, abs3, -1)

    return [("Forwarder.rewrite (1100 B video packet)", measure(rewrite, 50_000))]


def bench_cache() -> list[tuple[str, float]]:
    cache = PacketCache(1024)
    data = rtp_packet(0)
    state = [0]

    def put() -> None:
        state[0] = (state[0] + 1) & 0xFFFF
        cache.put(state[0], data)

    for i in range(1024):
        cache.put(i, data)

    def get() -> None:
        state[0] = (state[0] + 1) & 1023
        cache.get(state[0])

    return [("PacketCache.put", measure(put, 200_000)), ("PacketCache.get", measure(get, 200_000))]


def bench_publication(subscribers: int) -> tuple[str, float]:
    counters = NodeCounters()
    pub = Publication(
        participant_id="p",
        kind="video",
        source="camera",
        mid="1",
        codec=VP8,
        ssrc=0x11223344,
        rtx_ssrc=None,
        audio_level_id=0,
        cache_size=1024,
        counters=counters,
        send_rtcp=lambda _b: True,
        rtcp_ssrc=1,
        pli_throttle_s=0.5,
    )
    for k in range(subscribers):
        sub = Subscription(pub, send_rtp=lambda _b: True, counters=counters)
        sub.start(
            mid=str(k),
            ssrc=0x1000 + k,
            rtx_ssrc=0x2000 + k,
            payload_type=97,
            rtx_payload_type=98,
            ext=EXT,
        )
    packets = [rtp_packet(i) for i in range(0x10000)]
    state = [0]

    def on_rtp() -> None:
        i = state[0] = (state[0] + 1) & 0xFFFF
        pub.on_rtp(packets[i], time.monotonic())

    name = f"Publication.on_rtp, fan-out to {subscribers} (stats+cache+rewrite, no-op send)"
    return name, measure(on_rtp, 60_000)


def _srtp_rows(label: str, profile: int, key_len: int) -> list[tuple[str, float]]:
    key = os.urandom(key_len)

    def session(ssrc_type: int) -> Session:
        policy = Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile)
        policy.allow_repeat_tx = True
        policy.window_size = 1024
        return Session(policy)

    tx = session(Policy.SSRC_ANY_OUTBOUND)
    plain = [rtp_packet(i) for i in range(0x10000)]
    state = [0]

    def protect() -> None:
        state[0] = (state[0] + 1) & 0xFFFF
        tx.protect(plain[state[0]])

    # Unprotect: a fresh protected stream, each packet unprotected once, in order.
    tx2 = session(Policy.SSRC_ANY_OUTBOUND)
    protected = [tx2.protect(p) for p in plain]
    rx = session(Policy.SSRC_ANY_INBOUND)
    index = [0]

    def unprotect() -> None:
        index[0] += 1
        rx.unprotect(protected[index[0]])

    return [
        (f"SRTP protect, 1100 B ({label})", measure(protect, 20_000)),
        (f"SRTP unprotect, 1100 B ({label})", measure(unprotect, 8_000)),
    ]


def bench_srtp() -> list[tuple[str, float]]:
    return _srtp_rows("AEAD_AES_256_GCM", Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44) + _srtp_rows(
        "AES128_CM_SHA1_80", Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30
    )


def bench_rtcp() -> list[tuple[str, float]]:
    block = rtcp.ReportBlock(0x1234, 3, 10, 5000, 40, 0xAABBCCDD, 1000)
    compound = rtcp.receiver_report(0x99, [block, block]) + rtcp.remb(0x99, 1_500_000, [0x1234])
    nack = rtcp.nack(0x99, 0x1234, [100, 101, 103, 120])

    def parse(data: bytes) -> Callable[[], object]:
        return lambda: list(rtcp.parse(data))

    return [
        ("rtcp.parse RR(2 blocks)+REMB", measure(parse(compound), 50_000)),
        ("rtcp.parse NACK (4 seqs)", measure(parse(nack), 50_000)),
    ]


def bench_generator() -> list[tuple[str, float]]:
    """The load generator's own per-packet work (it must cost well under the server's)."""
    from loadtest.generator import StreamReceiver, StreamSender
    from loadtest.media import MediaLoop, MediaPacket

    packets = [
        MediaPacket(at=i / 1000, ts=i * 90, marker=False, keyframe=i == 0, payload=bytes(PAYLOAD))
        for i in range(1000)
    ]
    loop = MediaLoop(kind="video", clock_rate=90000, duration=1.0, period_ts=90000, packets=packets)
    sender = StreamSender(loop, lambda _b: True, ssrc=1, payload_type=96, start=0.0)
    clock = [0.0]

    def send() -> None:
        clock[0] += 0.001
        sender.send_due(clock[0])

    recv = StreamReceiver("video", 90000)
    recv.ts0 = 0
    data = [rtp_packet(i) for i in range(0x10000)]
    state = [0]

    def receive() -> None:
        i = state[0] = (state[0] + 1) & 0xFFFF
        d = data[i]
        recv.on_packet((d[2] << 8) | d[3], int.from_bytes(d[4:8], "big"), i / 30, len(d))

    return [
        ("generator StreamSender.send_due, 1 packet (no-op send)", measure(send, 50_000)),
        ("generator StreamReceiver.on_packet (clear header)", measure(receive, 50_000)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", type=int, default=None, help="pin to one CPU")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    rows: list[tuple[str, float]] = []
    rows += bench_forwarder()
    rows += bench_cache()
    rows.append(bench_publication(1))
    rows.append(bench_publication(3))
    rows += bench_srtp()
    rows += bench_rtcp()
    rows += bench_generator()
    text = table(["operation", "us per call"], [[name, f"{us:.2f}"] for name, us in rows])
    print(text)
    if args.no_docs:
        return
    command = ".venv/bin/python -m benchmarks.micro " + shlex.join(sys.argv[1:])
    body = "\n".join(
        [
            "## Hot path (micro)",
            "",
            f"Command: `{command.strip()}`",
            "",
            f"Machine: {machine_summary()}.",
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
            "",
            "Best of 7 timeit repeats, microseconds per call, one process, no I/O. The",
            "publication rows are the whole per-packet server path after decryption except the",
            "SSRC lookup and the send (stats, NACK cache, keyframe check, per-subscriber rewrite).",
            "",
            text,
        ]
    )
    write_section("micro", body)


if __name__ == "__main__":
    main()
