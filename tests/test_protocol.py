"""Message parsing and validation (pure logic)."""

from __future__ import annotations

import json

import pytest

from signaling.protocol import (
    ErrorCode,
    ProtocolError,
    mid_kinds,
    parse_codecs,
    parse_message,
    require_sdp,
)


def code_of(raw: str, max_bytes: int = 1024) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        parse_message(raw, max_bytes=max_bytes)
    return info.value.code


def test_parse_ok() -> None:
    msg = parse_message('{"type":"ping","id":"1"}', max_bytes=1024)
    assert msg == {"type": "ping", "id": "1"}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", ErrorCode.BAD_JSON),
        ("[1,2]", ErrorCode.BAD_JSON),
        ('{"id":"1"}', ErrorCode.BAD_REQUEST),
        ('{"type":"ping"}', ErrorCode.BAD_REQUEST),
        ('{"type":"ping","id":7}', ErrorCode.BAD_REQUEST),
        ('{"type":"fly","id":"1"}', ErrorCode.UNKNOWN_TYPE),
        (json.dumps({"type": "chat", "id": "1", "text": "x" * 2000}), ErrorCode.TOO_LARGE),
    ],
)
def test_parse_errors(raw: str, code: ErrorCode) -> None:
    assert code_of(raw) is code


def test_error_keeps_ref() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_message('{"type":"fly","id":"abc"}', max_bytes=1024)
    assert info.value.to_message() == {
        "type": "error",
        "code": "unknown-type",
        "message": "unknown message type",
        "ref": "abc",
    }


def test_multibyte_size_counts_bytes() -> None:
    raw = json.dumps({"type": "chat", "id": "1", "text": "é" * 600}, ensure_ascii=False)
    assert len(raw) < 1024 < len(raw.encode())
    assert code_of(raw) is ErrorCode.TOO_LARGE


def test_sdp_checks_and_mids() -> None:
    sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
    sdp += "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n"
    assert require_sdp({"id": "1", "sdp": sdp}) == sdp
    assert mid_kinds(sdp) == {"0": "audio", "1": "video"}
    with pytest.raises(ProtocolError) as info:
        require_sdp({"id": "1", "sdp": "garbage"})
    assert info.value.code is ErrorCode.BAD_SDP
    with pytest.raises(ProtocolError):
        require_sdp({"id": "1"})


def test_codecs() -> None:
    assert parse_codecs({"id": "1"}) is None
    assert parse_codecs({"id": "1", "codecs": ["vp8", "H264"]}) == frozenset({"VP8", "H264"})
    with pytest.raises(ProtocolError):
        parse_codecs({"id": "1", "codecs": "VP8"})
