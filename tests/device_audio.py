"""Test helpers for device audio: a synthetic heart and lung sound, a sender that configures
libopus from the negotiated fmtp the way libwebrtc does, and the spectral fidelity score.

libwebrtc (Chrome, Safari, Android's WebView) picks its Opus encoder settings from the remote
description's fmtp (AudioEncoderOpus::SdpToConfig): `stereo=1` -> two channels and the
`audio` application, otherwise mono and the `voip` application (speech: libopus high-passes
the signal at 60-100 Hz); `maxaveragebitrate` -> the bitrate, else 32 kbps per channel;
`usedtx`, `useinbandfec`. `FmtpOpusTrack` does the same with PyAV's libopus and hands aiortc
ready-made Opus packets (aiortc's own encoder ignores the fmtp: voip at 96 kbps).
"""

from __future__ import annotations

import asyncio
import fractions
import time
import wave
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

SR = 48000
FRAME = 960  # 20 ms
THRESHOLD = 0.95  # docs/devices.md: spectral correlation 20-1000 Hz


def heart_and_lung(seconds: float, seed: int = 7) -> np.ndarray:
    """Mono float32 in [-0.5, 0.5]: S1/S2 (30-160 Hz), a 25 Hz rumble, breath noise 100-1000 Hz.

    Beat intervals vary (70 +- 6 bpm) so that alignment by cross-correlation is unambiguous.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    x = np.zeros(n)
    start = 0.1
    while start < seconds:
        for offset, freq, amp, dur in ((0.0, 45.0, 1.0, 0.10), (0.30, 70.0, 0.7, 0.08)):
            t0 = start + offset
            m = (t >= t0) & (t < t0 + dur)
            tt = t[m] - t0
            env = np.sin(np.pi * tt / dur) ** 2
            wave = np.sin(2 * np.pi * freq * tt) + 0.5 * np.sin(4.4 * np.pi * freq * tt)
            x[m] += amp * env * wave
        start += 60.0 / rng.uniform(64, 76)
    noise = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    noise[(freqs < 100) | (freqs > 1000)] = 0
    lung = np.fft.irfft(noise, n)
    lung *= 0.15 / np.abs(lung).max() * (0.6 + 0.4 * np.sin(2 * np.pi * 0.25 * t))
    y = x + lung + 0.2 * np.sin(2 * np.pi * 25 * t)
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


def encoder_settings(fmtp: dict[str, str]) -> dict[str, object]:
    """What libwebrtc configures from an Opus fmtp."""
    channels = 2 if fmtp.get("stereo") == "1" else 1
    return {
        "channels": channels,
        "application": "audio" if channels == 2 else "voip",
        "bitrate": int(fmtp.get("maxaveragebitrate", 32000 * channels)),
        "dtx": fmtp.get("usedtx") == "1",
        "fec": fmtp.get("useinbandfec") == "1",
    }


class FmtpOpusTrack(MediaStreamTrack):
    """Sends `signal` (looped, real time) as Opus packets encoded per the negotiated fmtp."""

    kind = "audio"

    def __init__(self, signal: np.ndarray, fmtp: Callable[[MediaStreamTrack], dict[str, str]]):
        super().__init__()
        self.signal = (signal * 32767).astype(np.int16)
        self._fmtp = fmtp
        self._encoder: av.AudioCodecContext | None = None
        self.settings: dict[str, object] = {}
        self._pos = 0
        self._start: float | None = None
        self._pending: list[av.Packet] = []

    def _open(self) -> av.AudioCodecContext:
        self.settings = encoder_settings(self._fmtp(self))
        enc = av.CodecContext.create("libopus", "w")
        assert isinstance(enc, av.AudioCodecContext)
        enc.sample_rate = SR
        enc.layout = "stereo" if self.settings["channels"] == 2 else "mono"
        enc.format = "s16"
        enc.bit_rate = int(self.settings["bitrate"])  # type: ignore[call-overload]
        enc.time_base = fractions.Fraction(1, SR)
        enc.options = {
            "application": str(self.settings["application"]),
            "dtx": "1" if self.settings["dtx"] else "0",
            "fec": "1" if self.settings["fec"] else "0",
        }
        return enc

    async def recv(self) -> av.Packet:
        if self._encoder is None:
            self._encoder = self._open()
            self._start = time.monotonic()
        assert self._start is not None
        while not self._pending:
            due = self._start + self._pos / SR
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            idx = np.arange(self._pos, self._pos + FRAME) % len(self.signal)
            chunk = self.signal[idx]
            channels = int(self.settings["channels"])  # type: ignore[call-overload]
            data = np.repeat(chunk[None, :], channels, axis=0).T.reshape(1, -1)
            layout = "stereo" if channels == 2 else "mono"
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data), format="s16", layout=layout
            )
            frame.sample_rate = SR
            frame.pts = self._pos
            frame.time_base = fractions.Fraction(1, SR)
            self._pos += FRAME
            self._pending.extend(self._encoder.encode(frame))
        packet = self._pending.pop(0)
        packet.time_base = fractions.Fraction(1, SR)
        return packet


def to_mono(frame: av.AudioFrame) -> np.ndarray:
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        samples = data.astype(np.float32)
    else:
        samples = data.reshape(-1, channels).T.astype(np.float32)
    return samples.mean(axis=0) / 32768.0


def align(reference: np.ndarray, received: np.ndarray) -> np.ndarray:
    """The segment of `reference` (the looped signal) that `received` is a copy of (FFT
    cross-correlation)."""
    n = len(reference)
    size = 1 << int(np.ceil(np.log2(n + len(received))))
    corr = np.fft.irfft(np.fft.rfft(reference, size) * np.conj(np.fft.rfft(received, size)), size)
    lag = int(np.argmax(corr[: n - len(received) + 1]))
    return reference[lag : lag + len(received)]


def fidelity(reference: np.ndarray, received: np.ndarray, lo: float = 20, hi: float = 1e3) -> float:
    """Pearson correlation of magnitude spectra in [lo, hi] Hz after alignment.

    `reference` is the looped signal (at least two periods longer than `received`): the
    received segment is located in it by FFT cross-correlation, then both are Hann-windowed.
    """
    ref = align(reference, received)
    window = np.hanning(len(received))
    a = np.abs(np.fft.rfft(ref * window))
    b = np.abs(np.fft.rfft(received * window))
    freqs = np.fft.rfftfreq(len(received), 1 / SR)
    band = (freqs >= lo) & (freqs <= hi)
    return float(np.corrcoef(a[band], b[band])[0, 1])


def log_spectrum(x: np.ndarray, segment: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Welch power spectrum in dB (Hann segments, half overlap): (freqs, dB)."""
    window = np.hanning(segment)
    starts = range(0, len(x) - segment + 1, segment // 2)
    power = np.mean([np.abs(np.fft.rfft(x[i : i + segment] * window)) ** 2 for i in starts], 0)
    return np.fft.rfftfreq(segment, 1 / SR), 10 * np.log10(power + 1e-20)


def log_fidelity(
    reference: np.ndarray, received: np.ndarray, lo: float = 20, hi: float = 1e3
) -> float:
    """Pearson correlation of the log (dB) power spectra in [lo, hi] Hz after alignment.

    Insensitive to an overall gain (an offset in dB), sensitive to any band lost or boosted
    relative to the others: what speech processing (high-pass, noise suppression) does.
    """
    freqs, a = log_spectrum(align(reference, received))
    _, b = log_spectrum(received)
    band = (freqs >= lo) & (freqs <= hi)
    return float(np.corrcoef(a[band], b[band])[0, 1])


def band_levels_db(
    reference: np.ndarray, received: np.ndarray, bands: tuple[tuple[float, float], ...]
) -> list[float]:
    """Per band: received minus sent power in dB, after alignment and removing the overall
    gain (the median over 20-1000 Hz)."""
    freqs, a = log_spectrum(align(reference, received))
    _, b = log_spectrum(received)
    diff = b - a
    gain = float(np.median(diff[(freqs >= 20) & (freqs <= 1000)]))
    out = []
    for lo, hi in bands:
        m = (freqs >= lo) & (freqs < hi)
        power_a = float(np.sum(10 ** (a[m] / 10)))
        power_b = float(np.sum(10 ** (b[m] / 10)))
        out.append(10 * np.log10(power_b / power_a) - gain)
    return out


def write_wav(path: str, signal: np.ndarray) -> None:
    """`signal` (mono float in [-1, 1]) as a 48 kHz 16-bit mono WAV file."""
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())
