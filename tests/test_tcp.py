"""The signaling sockets' TCP retransmission ceiling (signaling/tcp.py): real sockets on
loopback, a real server and client. Linux >= 6.15 takes `TCP_RTO_MAX_MS`; on an older kernel
the option is refused, `cap_retransmissions` says so and the tests of the server check that
nothing else changed."""

from __future__ import annotations

import socket
from collections.abc import Callable

from signaling.app import SOCKETS, OpenSockets
from signaling.client import ConsultClient
from signaling.tcp import TCP_RTO_MAX_MS, USER_TIMEOUT_MS, cap_retransmissions

from .conftest import Server, ServerFactory


def _kernel_has_rto_max() -> bool:
    with socket.socket() as sock:
        try:
            sock.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS)
        except OSError:
            return False
    return True


def _rto_max(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS)


def test_cap_retransmissions_on_a_connected_socket() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname()) as sock:
            took = cap_retransmissions(sock, 1000)
            assert took is _kernel_has_rto_max()
            if took:
                assert _rto_max(sock) == 1000
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == (
                    USER_TIMEOUT_MS
                )
            assert cap_retransmissions(sock, 10) is took  # raised to the kernel's 1 s floor
            if took:
                assert _rto_max(sock) == 1000


def test_nothing_to_cap() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert not cap_retransmissions(udp, 1000)
    with socket.socket() as sock:
        assert not cap_retransmissions(sock, 0)
        assert not cap_retransmissions(None, 1000)
        if _kernel_has_rto_max():
            assert _rto_max(sock) > 1000  # untouched: the kernel's 120 s


async def test_websockets_of_server_and_client_are_capped(
    make_server: ServerFactory, clients: Callable[[Server], ConsultClient]
) -> None:
    server = await make_server()
    client = clients(server)
    await client.connect(server.token("patient"))
    open_sockets: OpenSockets = server.app[SOCKETS]
    sockets = list(open_sockets)
    assert len(sockets) == 1
    served = sockets[0].get_extra_info("socket")
    assert client.ws is not None
    own = client.ws.get_extra_info("socket")
    if not _kernel_has_rto_max():
        return  # nothing to see: the kernel refused the option (and nothing failed)
    assert served.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS) == 1000
    assert own.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS) == 1000


async def test_a_ceiling_of_0_leaves_the_kernels_backoff(
    make_server: ServerFactory, clients: Callable[[Server], ConsultClient]
) -> None:
    server = await make_server(ws_rto_max_ms=0)
    client = clients(server)
    await client.connect(server.token("patient"))
    open_sockets: OpenSockets = server.app[SOCKETS]
    served = next(iter(open_sockets)).get_extra_info("socket")
    if _kernel_has_rto_max():
        assert served.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS) > 1000
