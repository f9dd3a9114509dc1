"""Configuration of the media plane (keyword-only dataclasses with embedded defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .bandwidth import FallbackConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class IceServer:
    """A STUN/TURN server handed to clients (and used by the server's own gatherer)."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"urls": list(self.urls)}
        if self.username is not None:
            d["username"] = self.username
        if self.credential is not None:
            d["credential"] = self.credential
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class IceConfig:
    """Where the server's media sockets live.

    host_addresses: local addresses to bind (empty = every interface address, loopback
    included). announced_address: the address written into candidates instead of the bound
    one (a public address in front of NAT, as mediasoup's announcedIp). min_port/max_port:
    the UDP range for media sockets (0/0 = any ephemeral port). ice_servers: handed to
    clients; the server itself uses none by default (no external STUN). restart_timeout_s:
    how long an ICE restart (a client offer with new ICE credentials) may take to connect
    before the server drops it and goes on with the old session.
    """

    host_addresses: tuple[str, ...] = ()
    announced_address: str | None = None
    min_port: int = 0
    max_port: int = 0
    ice_servers: tuple[IceServer, ...] = ()
    restart_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.restart_timeout_s <= 0:
            raise ValueError("restart_timeout_s must be positive")
        if (self.min_port == 0) != (self.max_port == 0):
            raise ValueError("min_port and max_port are set together")
        if self.min_port and not (1 <= self.min_port <= self.max_port <= 65535):
            raise ValueError("port range must satisfy 1 <= min_port <= max_port <= 65535")


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingConfig:
    """directory: where recordings go ("" disables recording). key_file: the AES-256 key
    (recorder/keys.py says its format). backend: the recorder factory, "module:function".
    queue_packets: packets a recording may have waiting for its writer thread (more are
    dropped and counted)."""

    directory: str = ""
    key_file: str = ""
    backend: str = "recorder.recording:open_recording"
    queue_packets: int = 8192


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaConfig:
    """Media-plane settings.

    pli_throttle_s: minimum interval between keyframe requests sent to one publisher.
    packet_cache_size: packets kept per publication to answer NACKs (power of two).
    rtcp_interval_s: how often receiver/sender reports and REMB are sent.
    max_video_bitrate_bps: ceiling of the REMB the server gives a video publisher.
    video_codecs: video codecs a room may use, in order of preference.
    fallback: thresholds of the bandwidth fallback (docs/fallback.md).
    offer_hold_s: how long a server offer waits for a transport that is still connecting
        after its first exchange (a Firefox page that answered one then never connected).
    """

    ice: IceConfig = field(default_factory=IceConfig)
    pli_throttle_s: float = 0.5
    packet_cache_size: int = 1024
    rtcp_interval_s: float = 1.0
    max_video_bitrate_bps: int = 2_500_000
    min_video_bitrate_bps: int = 100_000
    video_codecs: tuple[str, ...] = ("VP8", "H264")
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    offer_hold_s: float = 5.0
    recording: RecordingConfig = field(default_factory=RecordingConfig)

    def __post_init__(self) -> None:
        n = self.packet_cache_size
        if n < 64 or n & (n - 1):
            raise ValueError("packet_cache_size must be a power of two >= 64")
