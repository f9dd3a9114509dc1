"""Device track labels and the Opus parameters each audio source is negotiated with.

Every published track carries a `source` label that the whole stack knows (signaling, the room
API, the clients, the bandwidth fallback): see docs/devices.md.

| source | kind | what it is |
|---|---|---|
| `microphone` | audio | a person's voice (speech-tuned Opus: in-band FEC) |
| `stethoscope` | audio | a digital stethoscope: heart and lung sounds from 20 Hz (fidelity Opus) |
| `camera` | video | a webcam |
| `exam-camera` | video | an examination camera (otoscope, dermatoscope...), full resolution |
| `screen` | video | a shared screen |

Opus fmtp per source (written by the server in its answers to publishers and in its offers to
subscribers; the server itself forwards the bytes and never re-encodes):
- speech sources: `minptime=10;useinbandfec=1`;
- `stethoscope`: `minptime=10;maxplaybackrate=48000;sprop-maxcapturerate=48000;
  maxaveragebitrate=128000;stereo=1;usedtx=0;useinbandfec=0`, plus `sprop-stereo=1` when the
  device declared two channels. `stereo=1` is asked for even from a mono device: libwebrtc
  (browsers) encodes mono with the `voip` application, whose high-pass filter (60-100 Hz)
  removes heart sounds, and switches to the `audio` application only for two channels.
  No comfort noise: the server never offers CN.

Capture settings: a publisher reports what its capture does (`CaptureSettings`: echo
cancellation, noise suppression, auto gain, channels, sample rate, as the browser's
`getSettings()` names them). A stethoscope that arrives with speech processing on, or from a
WebRTC client that reported nothing, is flagged (`capture_warnings`): the doctor's side and
the room API show it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

SOURCES: dict[str, str] = {
    "microphone": "audio",
    "stethoscope": "audio",
    "camera": "video",
    "exam-camera": "video",
    "screen": "video",
}
DEVICE_SOURCES = frozenset({"stethoscope", "exam-camera"})
FIDELITY_SOURCES = frozenset({"stethoscope"})

SPEECH_OPUS_FMTP = "minptime=10;useinbandfec=1"
STETHOSCOPE_BITRATE_BPS = 128_000
_FIDELITY_OPUS_FMTP = (
    "minptime=10;maxplaybackrate=48000;sprop-maxcapturerate=48000;"
    f"maxaveragebitrate={STETHOSCOPE_BITRATE_BPS};stereo=1;usedtx=0;useinbandfec=0"
)


def validate_source(kind: str, source: str) -> str:
    """The source label if it is known and carries this kind; ValueError otherwise."""
    expected = SOURCES.get(source)
    if expected is None:
        raise ValueError(f"unknown track source {source[:32]!r} (one of {', '.join(SOURCES)})")
    if expected != kind:
        raise ValueError(f"source {source} carries {expected}, not {kind}")
    return source


def validate_channels(value: object) -> int:
    if value is None:
        return 1
    if value == 1 or value == 2:
        if not isinstance(value, bool):
            return 1 if value == 1 else 2
    raise ValueError("channels must be 1 or 2")


def opus_fmtp(source: str | None, channels: int = 1) -> str:
    """The Opus fmtp line value for a track of this source."""
    if source in FIDELITY_SOURCES:
        return _FIDELITY_OPUS_FMTP + (";sprop-stereo=1" if channels == 2 else "")
    return SPEECH_OPUS_FMTP


def apply_opus_fmtp(sdp: str, sources: Mapping[str, tuple[str, int]]) -> str:
    """Write an Opus fmtp on every audio m-line that has none (aiortc writes none).

    `sources` maps a mid to (source, channels); unknown mids get the speech parameters.
    """
    out: list[str] = []
    sections = re.split(r"(?=^m=)", sdp, flags=re.MULTILINE)
    for section in sections:
        if section.startswith("m=audio"):
            mid_match = re.search(r"^a=mid:(\S+)", section, re.MULTILINE)
            source, channels = sources.get(mid_match.group(1) if mid_match else "", (None, 1))
            fmtp = opus_fmtp(source, channels)
            for pt in re.findall(r"^a=rtpmap:(\d+) opus/48000/2\r?$", section, re.M | re.I):
                if f"a=fmtp:{pt} " not in section:
                    section = re.sub(
                        rf"^(a=rtpmap:{pt} opus/48000/2)(\r?)$",
                        rf"\1\2\na=fmtp:{pt} {fmtp}\2",
                        section,
                        count=1,
                        flags=re.MULTILINE | re.IGNORECASE,
                    )
        out.append(section)
    return "".join(out)


def mid_order(sdp: str) -> list[str]:
    """The mid of each m-line, in order ("" for one without)."""
    out = []
    for section in re.split(r"(?=^m=)", sdp, flags=re.MULTILINE)[1:]:
        match = re.search(r"^a=mid:(\S+)", section, re.MULTILINE)
        out.append(match.group(1) if match else "")
    return out


def parse_opus_fmtp(sdp: str, mid: str) -> dict[str, str]:
    """The Opus fmtp parameters of one m-line (clients use it to configure their encoder)."""
    for section in re.split(r"(?=^m=)", sdp, flags=re.MULTILINE):
        if not section.startswith("m=audio") or not re.search(
            rf"^a=mid:{re.escape(mid)}\r?$", section, re.MULTILINE
        ):
            continue
        pts = re.findall(r"^a=rtpmap:(\d+) opus/48000/2\r?$", section, re.M | re.I)
        for pt in pts:
            match = re.search(rf"^a=fmtp:{pt} (.*?)\r?$", section, re.MULTILINE)
            if match:
                return dict(item.split("=", 1) for item in match.group(1).split(";") if "=" in item)
    return {}


# -- capture settings (issue 19) ---------------------------------------------------------------

PROCESSED_AUDIO = "processed-audio"  # echo cancellation, noise suppression or auto gain on
CAPTURE_UNVERIFIED = "capture-unverified"  # a WebRTC stethoscope that reported no settings
_FLAGS = ("echoCancellation", "noiseSuppression", "autoGainControl")


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    """What a publisher's audio capture does (the browser's `MediaTrackSettings` names)."""

    echo_cancellation: bool | None = None
    noise_suppression: bool | None = None
    auto_gain_control: bool | None = None
    channel_count: int | None = None
    sample_rate: int | None = None

    @property
    def processed(self) -> bool:
        """Any speech processing on (what is not reported is not assumed)."""
        return True in (self.echo_cancellation, self.noise_suppression, self.auto_gain_control)

    def as_dict(self) -> dict[str, bool | int]:
        values = (
            self.echo_cancellation,
            self.noise_suppression,
            self.auto_gain_control,
            self.channel_count,
            self.sample_rate,
        )
        names = (*_FLAGS, "channelCount", "sampleRate")
        return {k: v for k, v in zip(names, values, strict=True) if v is not None}


def parse_capture(value: object) -> CaptureSettings | None:
    """A track's reported `settings`, or None when absent; ValueError when malformed.

    Only the five known keys are read (others are ignored): the flags are booleans,
    `channelCount` 1-32, `sampleRate` 8000-768000.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("track settings must be an object")
    flags: list[bool | None] = []
    for key in _FLAGS:
        flag = value.get(key)
        if flag is not None and not isinstance(flag, bool):
            raise ValueError(f"settings.{key} must be a boolean")
        flags.append(flag)
    numbers: list[int | None] = []
    for key, lo, hi in (("channelCount", 1, 32), ("sampleRate", 8000, 768_000)):
        number = value.get(key)
        if number is not None and (
            isinstance(number, bool) or not isinstance(number, int) or not lo <= number <= hi
        ):
            raise ValueError(f"settings.{key} must be an integer {lo}-{hi}")
        numbers.append(number)
    return CaptureSettings(*flags, *numbers)


def capture_warnings(source: str, capture: CaptureSettings | None) -> tuple[str, ...]:
    """What the doctor must know about a WebRTC publication of this source."""
    if source not in FIDELITY_SOURCES:
        return ()
    if capture is None:
        return (CAPTURE_UNVERIFIED,)
    return (PROCESSED_AUDIO,) if capture.processed else ()
