"""The seam for any aiortc peer connection (the Python client, the test and load-test peers).

What an aiortc client needs from aiortc's private API, each behind one function:
- `bundle_data_channel(pc)`: the max-bundle fix for a data channel created first;
- `watch_inbound(pc, on_datagram)`: a callback per received datagram (the client's watchdog);
- `set_sender_enabled(sender, enabled)` / `sender_enabled(sender)`: aiortc's switch that drops
  frames before encoding.

`tests/test_seam_peer.py` fails loudly if one of these moves in a new aiortc.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpSender

HOOKED = "_consult_watched"  # marks an aioice Connection whose datagrams are watched


def bundle_data_channel(pc: RTCPeerConnection) -> None:
    """Work around aiortc with max-bundle when the data channel exists before any transceiver.

    Its SCTP transport then owns the one DTLS transport but is marked unbundled, and a
    description whose BUNDLE group lists media first makes aiortc stop that transport as a
    "slave" of itself (every track is dead). Any aiortc peer (our clients too) calls this
    right after creating its first data channel.
    """
    sctp = pc._RTCPeerConnection__sctp  # type: ignore[attr-defined]
    if sctp is not None:
        sctp._bundled = True


def watch_inbound(pc: RTCPeerConnection, on_datagram: Callable[[], None]) -> None:
    """Call `on_datagram()` for every non-STUN datagram the pc's ICE connections receive.

    Idempotent per ICE connection: call it again after a renegotiation that may have added a
    transport. STUN (consent checks) does not count: only media, DTLS and data channel records.
    """
    transports: list[Any] = [pc._RTCPeerConnection__sctp]  # type: ignore[attr-defined]
    transports += [t.receiver.transport for t in pc.getTransceivers()]
    for transport in transports:
        dtls = getattr(transport, "transport", transport)  # an SCTP transport's DTLS transport
        conn = getattr(getattr(dtls, "transport", None), "_connection", None)
        if conn is None or getattr(conn, HOOKED, False):
            continue
        original = conn.data_received

        def received(data: bytes, component: int, original: Any = original) -> None:
            on_datagram()
            original(data, component)

        conn.data_received = received
        setattr(conn, HOOKED, True)


def set_sender_enabled(sender: RTCRtpSender, enabled: bool) -> None:
    """aiortc's sender drops frames before encoding them while disabled (no bytes sent)."""
    sender._enabled = enabled


def sender_enabled(sender: RTCRtpSender) -> bool:
    """Whether the sender encodes and sends (`set_sender_enabled`)."""
    return bool(sender._enabled)
