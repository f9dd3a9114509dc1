"""Outgoing datagrams of one transport, sent once per event-loop pass in UDP GSO batches.

The event loop reads several datagrams per pass (uvloop/libuv reads up to 32 per readable
socket), and a video frame arrives as a burst of equal-size packets. Forwarding them one
`sendto` each pays the whole kernel send path per packet; queued and flushed once per pass,
a run of equal-size datagrams (the last one may be shorter) leaves in one `sendmsg` with the
UDP_SEGMENT control message and the kernel cuts it apart again (the receiver sees ordinary
datagrams). A singleton goes with plain `sendto`. Where the kernel refuses GSO (EIO, EINVAL,
ENOPROTOOPT) the batch falls back to one `sendto` per datagram for good.

Sizes and costs: docs/benchmarks.md ("veth").
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import Callable
from typing import Any

SOL_UDP = 17
UDP_SEGMENT = 103
GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS
GSO_MAX_BYTES = 65000  # below the 65507-byte UDP payload limit
GSO_REFUSED = (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT)

_u16 = struct.Struct("=H")  # UDP_SEGMENT's value: a native uint16
_cmsg: dict[int, list[tuple[int, int, bytes]]] = {}  # one control message per segment size


def next_run(q: list[bytes], i: int, n: int) -> int:
    """End (exclusive) of the GSO run that starts at q[i].

    Datagrams of q[i]'s size, at most GSO_MAX_SEGMENTS and GSO_MAX_BYTES in all; one
    shorter datagram may end the run (the kernel sends the last segment short).
    """
    size = len(q[i])
    j = i + 1
    total = size
    while j < n and j - i < GSO_MAX_SEGMENTS:
        ln = len(q[j])
        if ln > size or total + ln > GSO_MAX_BYTES:
            break
        j += 1
        total += ln
        if ln < size:
            break
    return j


def segment_cmsg(size: int) -> list[tuple[int, int, bytes]]:
    cmsg = _cmsg.get(size)
    if cmsg is None:
        cmsg = _cmsg[size] = [(SOL_UDP, UDP_SEGMENT, _u16.pack(size))]
    return cmsg


class DatagramBatch:
    """The datagrams queued for one (socket, address) during this event-loop pass."""

    __slots__ = (
        "addr",
        "batches",
        "call_soon",
        "datagrams",
        "flushes",
        "gso",
        "queue",
        "send_errors",
        "sendmsg",
        "sendto",
    )

    def __init__(
        self,
        addr: Any,
        sendto: Callable[[bytes, Any], Any],
        sendmsg: Callable[..., Any] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.addr = addr
        self.sendto = sendto
        self.sendmsg = sendmsg
        self.gso = sendmsg is not None
        self.call_soon = loop.call_soon
        self.queue: list[bytes] = []
        self.flushes = 0  # flushes that sent something (event-loop passes)
        self.batches = 0  # system calls made by flush
        self.datagrams = 0  # datagrams flushed
        self.send_errors = 0  # datagrams the socket refused (full buffer, closed socket...)

    @classmethod
    def for_socket(cls, sock: socket.socket, addr: Any) -> DatagramBatch:
        return cls(addr, sock.sendto, sock.sendmsg, asyncio.get_running_loop())

    def add(self, data: bytes) -> None:
        q = self.queue
        q.append(data)
        if len(q) == 1:
            self.call_soon(self.flush)

    def flush(self) -> None:
        q = self.queue
        n = len(q)
        if not n:
            return
        self.queue = []
        self.flushes += 1
        self.datagrams += n
        sendto, addr = self.sendto, self.addr
        i = 0
        try:
            while i < n:
                j = next_run(q, i, n) if self.gso else i + 1
                self.batches += 1
                if j - i == 1:
                    sendto(q[i], addr)
                else:
                    try:
                        self.sendmsg([b"".join(q[i:j])], segment_cmsg(len(q[i])), 0, addr)  # type: ignore[misc]
                    except OSError as exc:
                        if exc.errno not in GSO_REFUSED:
                            raise
                        self.gso = False  # no GSO on this path: one datagram at a time from now on
                        while i < j:
                            sendto(q[i], addr)
                            i += 1
                i = j
        except OSError:
            self.send_errors += n - i  # a full buffer drops the rest of this pass, as a network
