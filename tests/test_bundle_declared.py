"""bundle.declared: a sender or receiver that aiortc starts before the answer is applied gets
the payload types and extension ids our SDP declared, not aiortc's defaults (a race that made
the server write audio level under the id the peer had for abs-send-time)."""

from __future__ import annotations

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from mediaserver.rtc.bundle import declared

SDP = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\n"
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n"
    "a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"
)


def test_aiortc_defaults_are_mapped_to_what_the_sdp_declared() -> None:
    video = [
        RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97),
        RTCRtpCodecParameters(
            mimeType="video/rtx", clockRate=90000, payloadType=98, parameters={"apt": 97}
        ),
    ]
    codecs, ext = declared(SDP, "1", video)
    assert [(c.mimeType, c.payloadType) for c in codecs] == [("video/VP8", 96), ("video/rtx", 97)]
    assert codecs[1].parameters["apt"] == 96
    assert ext == {
        "urn:ietf:params:rtp-hdrext:sdes:mid": 4,
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": 2,
    }
    audio = [
        RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=96)
    ]
    codecs, ext = declared(SDP, "0", audio)
    assert codecs[0].payloadType == 111
    assert ext["urn:ietf:params:rtp-hdrext:ssrc-audio-level"] == 1
    # a mid the SDP does not have: left as aiortc has it
    assert declared(SDP, "7", audio) == (audio, {})
