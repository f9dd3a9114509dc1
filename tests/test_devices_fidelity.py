"""Stethoscope fidelity through a real node: a device publishes the same synthetic heart and
lung sound as `stethoscope` and as `microphone`; each is encoded the way libwebrtc encodes
under the fmtp the server negotiated for that source (tests/device_audio.py); the doctor
(aiortc) decodes both, and the magnitude spectra in 20-1000 Hz are compared with what was sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from mediaserver.api import parse_opus_fmtp
from signaling.client import ConsultClient

from .conftest import Server
from .device_audio import SR, THRESHOLD, FmtpOpusTrack, fidelity, heart_and_lung, to_mono

Clients = Callable[[Server], ConsultClient]
SECONDS = 4.0


def fmtp_of(client: ConsultClient) -> Callable[[MediaStreamTrack], dict[str, str]]:
    def lookup(track: MediaStreamTrack) -> dict[str, str]:
        assert client.pc is not None and client.pc.remoteDescription is not None
        for transceiver in client.pc.getTransceivers():
            if transceiver.sender.track is track and transceiver.mid is not None:
                return parse_opus_fmtp(client.pc.remoteDescription.sdp, transceiver.mid)
        raise AssertionError("track not attached")

    return lookup


async def record(track: MediaStreamTrack, seconds: float) -> np.ndarray:
    chunks: list[np.ndarray] = []
    skipped = 0.0
    while skipped < 1.0:  # let the jitter buffer settle
        frame = await asyncio.wait_for(track.recv(), 20)
        assert isinstance(frame, av.AudioFrame)
        skipped += frame.samples / SR
    total = 0
    while total < seconds * SR:
        frame = await asyncio.wait_for(track.recv(), 20)
        assert isinstance(frame, av.AudioFrame)
        samples = to_mono(frame)
        chunks.append(samples)
        total += len(samples)
    return np.concatenate(chunks)


def band_limit(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    spectrum[(freqs < lo) | (freqs > hi)] = 0
    return np.fft.irfft(spectrum, len(x)).astype(np.float32)


async def test_stethoscope_keeps_heart_sounds_that_a_speech_path_loses(
    server: Server, clients: Clients
) -> None:
    doctor = clients(server)
    await doctor.connect(server.token("doctor"))
    device = clients(server)
    await device.connect(server.token("device"))
    await device.wait_state("admitted")
    sound = heart_and_lung(8.0)
    steth = FmtpOpusTrack(sound, fmtp_of(device))
    mic = FmtpOpusTrack(sound, fmtp_of(device))
    await device.publish(steth, mic, sources=["stethoscope", "microphone"])
    pid = device.participant_id or ""

    async def track(source: str) -> MediaStreamTrack:
        while (pid, source) not in doctor.remote_tracks:
            await doctor.wait_track(pid, "audio", timeout_s=20)
            await asyncio.sleep(0.1)
        return doctor.remote_tracks[(pid, source)]

    got_steth, got_mic = await asyncio.wait_for(
        asyncio.gather(
            record(await track("stethoscope"), SECONDS), record(await track("microphone"), SECONDS)
        ),
        90,
    )
    # what the server negotiated, seen by the device (answer side) and the doctor (offer side)
    assert steth.settings == {
        "channels": 2,
        "application": "audio",
        "bitrate": 128000,
        "dtx": False,
        "fec": False,
    }
    assert mic.settings["application"] == "voip" and mic.settings["channels"] == 1
    assert doctor.pc is not None and doctor.pc.remoteDescription is not None
    offered = doctor.pc.remoteDescription.sdp
    steth_mid = next(
        mid for mid, meta in doctor._track_meta.items() if meta.get("source") == "stethoscope"
    )
    assert parse_opus_fmtp(offered, steth_mid)["maxaveragebitrate"] == "128000"
    assert parse_opus_fmtp(offered, steth_mid)["usedtx"] == "0"
    assert " CN/" not in offered

    reference = np.concatenate([sound, sound, sound])
    score_steth = fidelity(reference, got_steth)
    score_mic = fidelity(reference, got_mic)
    # a telephone-band path (300-3400 Hz, what a PSTN/G.711 gateway keeps) of the same audio
    score_phone = fidelity(reference, band_limit(got_steth, 300, 3400))
    print(
        f"fidelity 20-1000 Hz: stethoscope {score_steth:.4f}, microphone {score_mic:.4f}, "
        f"300-3400 Hz band {score_phone:.4f} (threshold {THRESHOLD})"
    )
    assert score_steth >= THRESHOLD
    # the threshold discriminates: speech tuning loses what lies below 60-100 Hz
    assert score_mic < THRESHOLD
    assert score_phone < THRESHOLD
