"""The batched media send path (mediaserver/rtc/batch.py): run splitting, and real sockets."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from typing import Any

import pytest

from mediaserver.rtc.batch import GSO_MAX_BYTES, GSO_MAX_SEGMENTS, DatagramBatch, next_run


def runs(sizes: list[int]) -> list[tuple[int, int]]:
    q = [bytes(s) for s in sizes]
    out = []
    i = 0
    while i < len(q):
        j = next_run(q, i, len(q))
        out.append((i, j))
        i = j
    return out


def test_runs_of_equal_size_end_with_one_shorter_datagram() -> None:
    assert runs([1200, 1200, 1200, 800, 1200]) == [(0, 4), (4, 5)]
    assert runs([1200, 800, 800]) == [(0, 2), (2, 3)]
    assert runs([100, 1200, 1200]) == [(0, 1), (1, 3)]  # a longer datagram starts a new run
    assert runs([500]) == [(0, 1)]
    assert runs([]) == []


def test_runs_respect_the_kernel_limits() -> None:
    assert runs([100] * (GSO_MAX_SEGMENTS + 3)) == [(0, GSO_MAX_SEGMENTS), (GSO_MAX_SEGMENTS, 67)]
    per = GSO_MAX_BYTES // 1400
    got = runs([1400] * (per + 5))
    assert got[0] == (0, per) and sum(1400 * (j - i) <= GSO_MAX_BYTES for i, j in got) == 2


class Refusing:
    """A socket whose kernel refuses GSO (as over some tunnels)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.sendmsg_calls = 0

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append(data)

    def sendmsg(self, *args: Any) -> None:
        self.sendmsg_calls += 1
        raise OSError(errno.EIO, "no GSO")


async def test_gso_refusal_falls_back_to_sendto_for_good() -> None:
    sock = Refusing()
    batch = DatagramBatch(("127.0.0.1", 9), sock.sendto, sock.sendmsg, asyncio.get_running_loop())
    packets = [bytes([i]) * 1000 for i in range(5)]
    for p in packets:
        batch.add(p)
    batch.flush()
    assert sock.sent == packets and not batch.gso and batch.send_errors == 0
    for p in packets:
        batch.add(p)
    batch.flush()
    assert sock.sent == packets * 2 and sock.sendmsg_calls == 1


async def test_a_socket_error_is_counted_not_raised() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    batch = DatagramBatch.for_socket(sock, ("127.0.0.1", 9))
    sock.close()
    for _ in range(3):
        batch.add(bytes(1000))
    batch.add(bytes(10))
    await asyncio.sleep(0)  # the flush scheduled by the first add runs
    await asyncio.sleep(0)
    assert batch.send_errors == 4 and batch.datagrams == 4 and not batch.queue


@pytest.mark.parametrize("use_uvloop", [False, True])
def test_batched_datagrams_arrive_intact_in_order_and_separate(use_uvloop: bool) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(10)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind(("127.0.0.1", 0))
        batch = DatagramBatch.for_socket(sender, receiver.getsockname())
        sizes = [1200] * 7 + [300] + [1200] * 3 + [90, 1100] + [1000] * 70 + [40]
        packets = [i.to_bytes(2, "big") + bytes([i % 251]) * (s - 2) for i, s in enumerate(sizes)]
        flushed = loop.create_future()
        for p in packets:  # one event-loop pass: one flush
            batch.add(p)
        loop.call_soon(flushed.set_result, None)
        await flushed
        assert not batch.queue and batch.datagrams == len(packets)
        got = [await loop.run_in_executor(None, receiver.recv, 65536) for _ in packets]
        assert got == packets
        assert batch.gso and batch.batches < len(packets) // 10  # GSO works on loopback
        assert batch.send_errors == 0
        sender.close()
        receiver.close()

    if use_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


class Collector:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, float]] = []

    def on_datagram(self, data: bytes, arrival: float) -> None:
        self.got.append((data, arrival))


async def test_generator_drain_cuts_a_gro_buffer_into_the_sent_datagrams() -> None:
    """The node's GSO batch reaches a generator socket with UDP_GRO as one buffer (loopback
    keeps it whole); loadtest's SocketDrain hands every datagram over, in order, intact."""
    from loadtest.generator import SO_TIMESTAMPNS, UDP_GRO, SocketDrain

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    receiver.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    batch = DatagramBatch.for_socket(sender, receiver.getsockname())
    sizes = [1200] * 5 + [700, 1200, 1200, 160]
    packets = [bytes([0x80, i]) + bytes([i]) * (s - 2) for i, s in enumerate(sizes)]
    for p in packets:
        batch.add(p)
    batch.flush()
    assert batch.batches == 2  # 5 x 1200 + 700, then 1200 x 2 + 160
    peer = Collector()
    drain = SocketDrain(receiver, peer, None)  # type: ignore[arg-type]
    for _ in range(200):
        drain.drain(time.monotonic() - time.time())
        if len(peer.got) >= len(packets):
            break
        await asyncio.sleep(0.01)
    assert [d for d, _ in peer.got] == packets and drain.received == len(packets)
    assert all(abs(a - time.monotonic()) < 60 for _, a in peer.got)  # kernel stamps, mapped
    sender.close()
    receiver.close()
