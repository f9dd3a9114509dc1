"""Server-side ICE gathering: configured addresses, a fixed UDP port range, announced address.

aioice binds every non-loopback interface on a random port; a server behind a firewall needs a
known range and a public address in its candidates (mediasoup's announcedIp), and tests on
loopback need 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aioice
import aioice.ice
from aioice import Candidate
from aioice.ice import StunProtocol, candidate_foundation, candidate_priority, get_host_addresses

from ..config import IceConfig

RCVBUF = 1024 * 1024


class MediaStunProtocol(StunProtocol):
    """aioice's socket protocol, with RTP/RTCP (first byte 128-191) skipping the STUN parse.

    `sock` is the socket it reads, bound by PortAllocator: the media send path writes UDP GSO
    batches on it (rtc/batch.py), which the event loop's transport cannot do.
    """

    sock: socket.socket | None = None

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        if type(data) is bytes and data and 127 < data[0] < 192:
            self.receiver.data_received(data, 1)
            return
        super().datagram_received(data, addr)


class PortAllocator:
    """Binds UDP sockets on configured addresses, cycling through the configured port range."""

    def __init__(self, config: IceConfig) -> None:
        self.config = config
        self._next = config.min_port

    def addresses(self) -> list[str]:
        if self.config.host_addresses:
            return list(self.config.host_addresses)
        return ["127.0.0.1", *get_host_addresses(use_ipv4=True, use_ipv6=False)]

    async def bind(
        self, address: str, factory: Any
    ) -> tuple[asyncio.DatagramTransport, StunProtocol]:
        loop = asyncio.get_running_loop()
        if not self.config.min_port:
            ports = [0]
        else:
            ports = []
            for _ in range(self.config.max_port - self.config.min_port + 1):
                ports.append(self._next)
                self._next = (
                    self._next + 1 if self._next < self.config.max_port else self.config.min_port
                )
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        for port in ports:
            # Our own socket, handed to the loop (which closes it with the transport): the
            # protocol keeps it for the batched send path.
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((address, port))
                sock.setblocking(False)
                transport, protocol = await loop.create_datagram_endpoint(factory, sock=sock)
            except OSError:
                sock.close()
                if port == 0:
                    raise
                continue
            if isinstance(protocol, MediaStunProtocol):
                protocol.sock = sock
            return transport, protocol
        raise OSError(f"no free UDP port in {self.config.min_port}-{self.config.max_port}")

    def install(self, connection: aioice.Connection) -> None:
        """Replace the connection's host-candidate gathering with ours."""

        async def gather_candidates() -> None:
            if connection._local_candidates_start:
                return
            connection._local_candidates_start = True
            for address in self.addresses():
                try:
                    transport, protocol = await self.bind(
                        address, lambda: MediaStunProtocol(connection)
                    )
                except OSError:
                    continue
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                bound = transport.get_extra_info("sockname")
                host = self.config.announced_address or bound[0]
                protocol.local_candidate = Candidate(
                    foundation=candidate_foundation("host", "udp", host),
                    component=1,
                    transport="udp",
                    priority=candidate_priority(1, "host"),
                    host=host,
                    port=bound[1],
                    type="host",
                )
                connection._protocols.append(protocol)
                connection._local_candidates.append(protocol.local_candidate)
            connection._local_candidates_end = True

        connection.gather_candidates = gather_candidates  # type: ignore[method-assign]


def gather_on_loopback() -> None:
    """Every aioice connection of this process (aiortc clients) gathers host candidates on
    127.0.0.1 only: a network namespace that holds only `lo`, which aioice skips by itself.
    The node's own gathering (`PortAllocator`) does not depend on it."""
    aioice.ice.get_host_addresses = _loopback_addresses


def _loopback_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"]
