"""The signaling sockets' TCP retransmission ceiling (docs/fallback.md, "Control messages").

On a congested link a WebSocket's segments and ACKs are lost with the media around them, and
TCP's retransmission timer doubles at each loss (0.2, 0.4 ... 12.8 s): once the media stops
(the fallback's chat-only), a `pause` or a chat still waited out that timer, 8-13 s at
20 kbit/s (issue 20). Linux 6.15 lets a socket cap the timer (`TCP_RTO_MAX_MS`, 1 s at least):
retransmissions then come every second at worst, and a message crosses a link that cleared
within about a second. With the cap, Linux declares a connection dead after its usual 15
retransmissions, about 14 s, instead of minutes: `TCP_USER_TIMEOUT` sets that to a time
instead, longer than the WebSocket's heartbeat, so a socket dies of the heartbeat as before.
On an older kernel the options are refused and nothing changes.
"""

from __future__ import annotations

import socket
from typing import Protocol

TCP_RTO_MAX_MS = getattr(socket, "TCP_RTO_MAX_MS", 44)  # Linux >= 6.15 (include/uapi/linux/tcp.h)
USER_TIMEOUT_MS = 60_000  # unacknowledged data for this long: the connection is dead


class TcpSocket(Protocol):
    """A socket, or the transport's stand-in for it (asyncio's and uvloop's)."""

    @property
    def family(self) -> int: ...

    @property
    def type(self) -> int: ...

    def setsockopt(self, level: int, optname: int, value: int, /) -> None: ...


def cap_retransmissions(sock: TcpSocket | None, rto_max_ms: int) -> bool:
    """Cap the TCP retransmission timer of `sock` at `rto_max_ms` (0: leave it); returns
    whether the kernel took it."""
    if sock is None or rto_max_ms <= 0 or sock.type != socket.SOCK_STREAM:
        return False
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS, max(1000, rto_max_ms))
    except OSError:
        return False  # an older kernel (ENOPROTOOPT): the default backoff stays
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    except OSError:
        pass
    return True
