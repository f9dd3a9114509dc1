"""M-line recycling (issue 11, items 5 and 11): a staying doctor's connection stays bounded.

Patients come and go while the doctor stays. Each new subscription reuses the inactive
sendonly transceiver a closed one left (same kind and codec) instead of adding one: the
doctor's peer connection holds no more transceivers than it ever carried at once, the reused
m-line keeps its mid and SSRC, the numbering continues (libsrtp refuses nothing) and the
doctor's client decodes the new patient's video and audio on it. A real node, real aiortc
clients (ConsultClient). Then the same in Chromium: the demo page (consult.js) shows the next
patient's video on the m-line the first one left.
"""

from __future__ import annotations

import asyncio
import fractions
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from av import AudioFrame, VideoFrame

from mediaserver.forwarder import MIN_TS_GAP_S, ExtensionIds, Forwarder
from mediaserver.publication import payload_offset
from signaling.auth import encode_token
from signaling.client import ConsultClient
from tests.netns import netns  # noqa: F401  (a fixture)

from .conftest import Server
from .test_browser import Call, browser, call  # noqa: F401  (fixtures)
from .test_browser import _until as _page_until
from .test_lifecycle import ROOM, _doctor, _media, _until

Clients = Callable[[Server], ConsultClient]
CYCLES = 20
# Each patient is told apart by what it sends: alternating colours and tones.
COLOURS = [(200, 40, 40), (40, 40, 200)]  # BGR: blue, red
TONES = [400.0, 1000.0]  # Hz
TONE_RATE = 8000


def _forwarder(first: tuple[int, int] | None = None, rtx_seq: int | None = None) -> Forwarder:
    return Forwarder(
        ssrc=0xABCDEF01,
        payload_type=96,
        mid="3",
        ext=ExtensionIds(),
        gate_on_keyframe=True,
        rtx_ssrc=0x22222222,
        rtx_payload_type=97,
        first_seq=first[0] if first else None,
        first_ts=first[1] if first else None,
        first_rtx_seq=rtx_seq,
    )


def _rtp(seq: int, ts: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 100, seq, ts, 0x11111111) + b"frame"


def _out(fwd: Forwarder, seq: int, ts: int) -> tuple[int, int]:
    data = _rtp(seq, ts)
    out = fwd.rewrite(data, payload_offset(data), seq, ts, True, b"\0\0\0", -1)
    assert out is not None
    return struct.unpack_from("!HI", out, 2)


def test_a_recycled_sender_numbers_on_after_the_last_subscription() -> None:
    """Unit (pure logic): the next Forwarder on the same sender continues its sequence
    (across the 16-bit wrap), its timestamps jump by the time passed (at least a frame) and
    its RTX sequence goes on."""
    t0 = 0xFFFFFF00
    last = (t0 + 3000) & 0xFFFFFFFF  # past the 32-bit wrap
    old = _forwarder((0xFFFE, t0))
    assert _out(old, 7000, 1000) == (0xFFFE, t0)
    assert _out(old, 7001, 4000) == (0xFFFF, last)
    rtx_before = old.retransmission(_rtp(7001, 4000), 12, b"\0\0\0")
    resume = old.continuation(100.0)
    assert (resume.seq, resume.ts) == (0xFFFF, last)
    frame = int(MIN_TS_GAP_S * 90000)
    assert resume.first(90000, 100.0) == (0, last + frame)  # no time passed: a frame anyway
    first = resume.first(90000, 102.0)
    assert first == (0, last + 180000)
    new = _forwarder(first, resume.rtx_seq)
    assert _out(new, 123, 555) == first  # another source, other numbers
    assert _out(new, 124, 555 + 3000) == (1, last + 183000)
    rtx_after = new.retransmission(_rtp(124, 3555), 12, b"\0\0\0")
    before = struct.unpack_from("!H", rtx_before, 2)[0]
    assert struct.unpack_from("!H", rtx_after, 2)[0] == (before + 1) & 0xFFFF


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


@pytest.mark.workers(0)  # reaches the in-process media objects
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
    assert not media.negotiator.sub_by_transceiver and not media.demux.sub_by_ssrc


@pytest.mark.workers(0)  # reaches the in-process media objects
async def test_a_subscription_recycles_an_m_line_whose_inactive_offer_is_unanswered(
    server: Server, clients: Clients
) -> None:
    """Patient A leaves while the doctor's answers are late: the offer that sets A's m-lines
    inactive is still unanswered when patient B publishes. B's subscriptions take A's
    transceivers back at once (sendonly again before inactive was ever negotiated); once the
    doctor answers, it decodes B's colour and tone on A's mids."""
    doctor = await _doctor(server, clients)
    media = _media(server, doctor.participant_id)
    first = clients(server)
    await first.connect(server.token("patient", room=ROOM, sub="u-first"))
    await first.publish(ToneTrack(TONES[0]), ColourTrack(COLOURS[0]))
    a = first.participant_id or ""
    await asyncio.wait_for(_sees_video(await doctor.wait_track(a, "video", timeout_s=60), 0), 60)
    senders = set(media.negotiator.sub_by_transceiver)
    mids = {str(t.mid) for t in senders}
    offers = len(doctor.received("offer"))
    doctor.auto_answer = False
    await first.leave()
    await first.close()
    await _until(lambda: not media.subscriptions, what="A's subscriptions closed")
    await _until(lambda: media.pending_offer() is not None, what="the offer setting inactive")
    assert len(doctor.received("offer")) == offers + 1
    held = doctor.received("offer")[-1]
    assert not any(m.get("participant") == a for m in held["tracks"].values())

    second = clients(server)
    await second.connect(server.token("patient", room=ROOM, sub="u-second"))
    await second.publish(ToneTrack(TONES[1]), ColourTrack(COLOURS[1]))
    b = second.participant_id or ""
    await _until(lambda: len(media.subscriptions) == 2, what="B's subscriptions")
    assert set(media.negotiator.sub_by_transceiver) == senders  # taken back before any answer
    doctor.auto_answer = True
    await doctor._answer_offer(held)
    video = await doctor.wait_track(b, "video", timeout_s=60)
    audio = await doctor.wait_track(b, "audio", timeout_s=60)
    await asyncio.wait_for(_sees_video(video, 1), 60)
    await asyncio.wait_for(_hears_tone(audio, TONES[1]), 60)
    assert {str(s.mid) for s in media.subscriptions.values()} == mids
    assert len(media.pc.getTransceivers()) == 4
    assert (a, "camera") not in doctor.remote_tracks  # the track is filed under B only
    assert media.transport is not None and media.transport.encrypt_errors == 0


# -- Chromium ---------------------------------------------------------------------------------

# Video frames decoded on one mid (inbound-rtp), and what the page shows for it.
MID_JS = """async (mid) => {
  let frames = 0;
  (await consultation.getStats()).forEach((r) => {
    if (r.type !== 'inbound-rtp' || r.kind !== 'video' || r.mid !== mid) return;
    frames += r.framesDecoded || 0;
  });
  const tr = consultation.peerConnection.getTransceivers().find((t) => t.mid === mid);
  const tile = document.querySelector(`figure[data-key="remote:${mid}"]`);
  const video = tile && tile.querySelector('video');
  const shown = consultation.remoteTracks.find((t) => t.mid === mid);
  return {
    frames, direction: tr && tr.currentDirection,
    participant: shown ? shown.participant : null,
    live: Boolean(shown && shown.track.readyState === 'live' && !shown.track.muted),
    caption: tile ? tile.querySelector('figcaption').textContent : null,
    width: video ? video.videoWidth : 0,
    transceivers: consultation.peerConnection.getTransceivers().length,
  };
}"""


def _patient_token(c: Call, n: int) -> str:
    name = f"Patient {n}"
    return encode_token(secret=c.secret, room=c.room, sub=f"u-p{n}", role="patient", name=name)


async def _admit_patient(c: Call, page: Any, n: int) -> str:
    """Patient n (tests/peers/aiortc_peer.py) joins, is admitted, publishes; its video mid."""
    c.peer_out = c.tmp / f"peer{n}.out"
    c.peer_err = c.tmp / f"peer{n}.err"
    c.start_peer(_patient_token(c, n))
    knock = "document.querySelectorAll('#knocks button.admit').length === 1"
    await _page_until("the patient's knock", lambda: c.page_true(knock), 30, c.diag)
    await page.click("#knocks button.admit")
    video = (
        "consultation.remoteTracks.find((t) => t.kind === 'video'"
        " && consultation.participants.find((p) => p.id === t.participant)?.name"
        f" === 'Patient {n}')"
    )
    await _page_until(f"patient {n}'s video", lambda: c.page_true(f"!!({video})"), 30, c.diag)
    return str(await page.evaluate(f"({video}).mid"))


async def _shows_video(c: Call, page: Any, mid: str, n: int) -> dict[str, Any]:
    """The page decodes and shows patient n's video on `mid`."""
    first = await page.evaluate(MID_JS, mid)

    async def shown() -> bool:
        now = await page.evaluate(MID_JS, mid)
        decoding = now["frames"] > first["frames"] + 10 or 10 < now["frames"] < first["frames"]
        return bool(
            decoding and now["live"] and now["width"] > 0 and f"Patient {n}" in now["caption"]
        )

    await _page_until(f"patient {n}'s video shown on mid {mid}", shown, 40, c.diag)
    return dict(await page.evaluate(MID_JS, mid))


async def test_browser_shows_the_next_patient_on_a_reused_m_line(
    call: Call,  # noqa: F811
    browser: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A patient leaves (the doctor removes them) and another joins: the doctor's page gets
    the new patient's video on the m-line the first one had (the same mid, inactive in
    between), shows it in its tile and decodes it; its connection does not grow."""
    page = await call.open_page(browser, call.token("doctor", "Dr Test"))
    admitted = "window.consultation && consultation.state === 'admitted'"
    await _page_until("the doctor's admission", lambda: call.page_true(admitted), 20, call.diag)
    peers = []
    try:
        mid = await _admit_patient(call, page, 1)
        peers.append(call.peer)
        before = await _shows_video(call, page, mid, 1)
        first = before["participant"]
        await page.evaluate(f"consultation.kick({first!r})")
        await _page_until(
            "the first patient's m-line to go inactive",
            lambda: call.page_true(
                "consultation.peerConnection.getTransceivers()"
                f".find((t) => t.mid === {mid!r}).currentDirection === 'inactive'"
            ),
            30,
            call.diag,
        )
        again = await _admit_patient(call, page, 2)
        peers.append(call.peer)
        assert again == mid, f"patient 2's video came on mid {again}, not the reused {mid}"
        after = await _shows_video(call, page, mid, 2)
        assert after["participant"] != first and after["direction"] == "recvonly"
        assert after["transceivers"] == before["transceivers"], (before, after)
        assert not call.page_errors(), call.page_errors()
    finally:
        for peer in peers:
            peer.terminate()


pytestmark = pytest.mark.timeout(600)
