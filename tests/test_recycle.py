"""M-line recycling (issue 11, items 5 and 11): a staying doctor's connection stays bounded.

Patients come and go while the doctor stays. Each new subscription reuses the inactive
sendonly transceiver a closed one left (same kind and codec) instead of adding one: the
doctor's peer connection holds no more transceivers than it ever carried at once, the reused
m-line keeps its mid and SSRC, the numbering continues (libsrtp refuses nothing) and the
doctor's client decodes the new patient's video and audio on it. A real node, real aiortc
clients (ConsultClient). The browser side is in tests/test_recycle_browser.py.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable

import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from av import AudioFrame, VideoFrame

from signaling.client import ConsultClient

from .conftest import Server
from .test_lifecycle import ROOM, _doctor, _media, _until

Clients = Callable[[Server], ConsultClient]
CYCLES = 20
# Each patient is told apart by what it sends: alternating colours and tones.
COLOURS = [(200, 40, 40), (40, 40, 200)]  # BGR: blue, red
TONES = [400.0, 1000.0]  # Hz
TONE_RATE = 8000


class ColourTrack(VideoStreamTrack):
    """Solid colour frames (what the doctor decodes says which patient sent them)."""

    def __init__(self, bgr: tuple[int, int, int]) -> None:
        super().__init__()
        self.img = np.zeros((240, 320, 3), np.uint8)
        self.img[:] = bgr

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame.from_ndarray(self.img, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class ToneTrack(AudioStreamTrack):
    """A sine at `freq` (what the doctor decodes says which patient sent it)."""

    def __init__(self, freq: float) -> None:
        super().__init__()
        self.freq = freq
        self.pos = 0
        self.start: float | None = None

    async def recv(self) -> AudioFrame:
        samples = TONE_RATE // 50
        if self.start is None:
            self.start = time.time()
        else:
            await asyncio.sleep(max(0.0, self.start + self.pos / TONE_RATE - time.time()))
        t = (np.arange(self.pos, self.pos + samples) / TONE_RATE).astype(np.float64)
        pcm = (np.sin(2 * np.pi * self.freq * t) * 12000).astype(np.int16)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.pts, frame.sample_rate = self.pos, TONE_RATE
        frame.time_base = fractions.Fraction(1, TONE_RATE)
        self.pos += samples
        return frame


def _colour(frame: VideoFrame) -> int:
    """Which of COLOURS the frame shows (-1: neither)."""
    mean = frame.to_ndarray(format="bgr24").reshape(-1, 3).mean(axis=0)
    for n, bgr in enumerate(COLOURS):
        if np.abs(mean - np.array(bgr)).max() < 30:
            return n
    return -1


def _tone(frames: list[AudioFrame]) -> float:
    """The dominant frequency of some decoded audio frames."""
    pcm = np.concatenate([f.to_ndarray().reshape(-1, len(f.layout.channels))[:, 0] for f in frames])
    rate = frames[0].sample_rate
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    spectrum[: int(100 * len(pcm) / rate)] = 0  # no DC, no hum
    return float(np.argmax(spectrum) * rate / len(pcm))


async def _sees_video(track: MediaStreamTrack, n: int) -> None:
    while _colour(await track.recv()) != n:  # type: ignore[arg-type]
        pass  # what is queued from the patient before (same track: a reused m-line)


async def _hears_tone(track: MediaStreamTrack, freq: float) -> None:
    window: list[AudioFrame] = []
    while True:
        window.append(await track.recv())  # type: ignore[arg-type]
        window = window[-10:]
        if len(window) == 10 and abs(_tone(window) - freq) < 50:
            return


async def test_churning_patients_reuse_the_doctors_m_lines(
    server: Server, clients: Clients
) -> None:
    """20 patients in turn join, publish audio and video, are seen and heard by the doctor,
    and leave. The doctor's connection keeps its first transceivers (its own two and two
    senders): each later patient comes on the same mids and SSRCs, with no sequence libsrtp
    refuses, and the doctor decodes that patient's colour and tone on them."""
    doctor = await _doctor(server, clients)
    media = _media(server, doctor.participant_id)
    sender_mids: set[str] = set()
    sender_ssrcs: set[int] = set()
    for n in range(CYCLES):
        patient = clients(server)
        await patient.connect(server.token("patient", room=ROOM, sub=f"u-recycle-{n}"))
        await patient.publish(ToneTrack(TONES[n % 2]), ColourTrack(COLOURS[n % 2]))
        pid = patient.participant_id or ""
        video = await doctor.wait_track(pid, "video", timeout_s=60)
        audio = await doctor.wait_track(pid, "audio", timeout_s=60)
        await asyncio.wait_for(_sees_video(video, n % 2), 60)
        await asyncio.wait_for(_hears_tone(audio, TONES[n % 2]), 60)
        subs = list(media.subscriptions.values())
        assert len(subs) == 2 and all(s.publication.participant_id == pid for s in subs)
        mids = {str(s.mid) for s in subs}
        ssrcs = {s.ssrc for s in subs}
        if n == 0:
            sender_mids, sender_ssrcs = mids, ssrcs
        else:  # frames of this patient arrive on the m-lines of the first one
            assert mids == sender_mids and ssrcs == sender_ssrcs, (n, mids, sender_mids)
        receivers = {t.receiver.track for t in doctor.pc.getTransceivers()}  # type: ignore[union-attr]
        assert video in receivers and audio in receivers
        count = len(media.pc.getTransceivers())
        assert count <= 2 + 2, f"cycle {n}: the doctor's connection holds {count} transceivers"
        assert len(doctor.pc.getTransceivers()) <= 2 + 2  # type: ignore[union-attr]
        await patient.leave()
        await patient.close()
        sessions = server.hub.consultations[ROOM].sessions
        await _until(lambda: pid not in sessions, what="left")  # noqa: B023 (awaited here)
        await _until(lambda: not media.subscriptions, what="the doctor's subscriptions closed")
    assert media.transport is not None and media.transport.encrypt_errors == 0
    assert not media._sub_by_transceiver and not media._sub_by_ssrc


pytestmark = pytest.mark.timeout(600)
