"""A plain-RTP device (what an ffmpeg or GStreamer gateway sends): PyAV encodes synthetic
video or audio and its `rtp` muxer sends it over UDP, in real time, from a thread.

    sender = RtpSender("127.0.0.1", port, "VP8", payload_type=96)
    sender.start(); ...; sender.stop()
"""

from __future__ import annotations

import fractions
import threading
import time

import av
import numpy as np

ENCODERS = {"VP8": "libvpx", "H264": "libx264", "OPUS": "libopus", "PCMU": "pcm_mulaw"}


class RtpSender:
    def __init__(
        self,
        host: str,
        port: int,
        codec: str,
        *,
        payload_type: int,
        width: int = 320,
        height: int = 240,
        fps: int = 30,
        keyframe_interval: int = 30,
        bitrate: int = 600_000,
    ) -> None:
        self.url = f"rtp://{host}:{port}"
        self.codec = codec.upper()
        self.payload_type = payload_type
        self.size = (width, height)
        self.fps = fps
        self.gop = keyframe_interval
        self.bitrate = bitrate
        self.frames = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rtp-{codec}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            out = av.open(
                self.url, "w", format="rtp", options={"payload_type": str(self.payload_type)}
            )
            try:
                if self.codec in ("VP8", "H264"):
                    self._video(out)
                else:
                    self._audio(out)
            finally:
                out.close()
        except BaseException as exc:  # reported to the test
            self.error = exc

    def _video(self, out: av.container.OutputContainer) -> None:
        stream = out.add_stream(ENCODERS[self.codec], rate=self.fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = self.size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = self.bitrate
        stream.codec_context.gop_size = self.gop
        if self.codec == "VP8":
            stream.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        else:
            stream.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline"}
        width, height = self.size
        start = time.monotonic()
        while not self._stop.is_set():
            img = np.full((height, width, 3), 40, np.uint8)
            x = (self.frames * 8) % width
            img[:, x : x + 16] = 230
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = self.frames
            frame.time_base = fractions.Fraction(1, self.fps)
            for packet in stream.encode(frame):
                out.mux(packet)
            self.frames += 1
            delay = start + self.frames / self.fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _audio(self, out: av.container.OutputContainer) -> None:
        rate = 8000 if self.codec == "PCMU" else 48000
        stream = out.add_stream(ENCODERS[self.codec], rate=rate)
        assert isinstance(stream, av.AudioStream)
        stream.layout = "mono"
        if self.codec == "OPUS":
            stream.bit_rate = 64000
        samples = rate // 50
        start = time.monotonic()
        pos = 0
        fmt = "s16"
        while not self._stop.is_set():
            t = (np.arange(pos, pos + samples) / rate).astype(np.float64)
            tone = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(tone[None, :], format=fmt, layout="mono")
            frame.sample_rate = rate
            frame.pts = pos
            frame.time_base = fractions.Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
            pos += samples
            self.frames += 1
            delay = start + pos / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
