"""Sealed files: AES-256-GCM chunks round trip, a cut file keeps its whole chunks, tampering
and a wrong key are refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recorder.keys import FileKeyStore, KeyError_, parse_key
from recorder.sealed import Key, SealedWriter, SealError, key_id_of, unseal

KEY = Key("k1", bytes(range(32)))


def write(path: Path, data: bytes, *, chunk: int = 1000, close: bool = True) -> SealedWriter:
    writer = SealedWriter(str(path), KEY, chunk_bytes=chunk)
    for i in range(0, len(data), 333):
        writer.write(data[i : i + 333])
    if close:
        writer.close()
    return writer


def test_round_trip_in_chunks(tmp_path: Path) -> None:
    data = os.urandom(10_500)
    write(tmp_path / "f", data)
    out = unseal(str(tmp_path / "f"), KEY)
    assert out.data == data and out.complete and out.chunks == 11
    assert key_id_of(str(tmp_path / "f")) == "k1"
    raw = (tmp_path / "f").read_bytes()
    assert data[:64] not in raw and data[5000:5064] not in raw


def test_flush_seals_a_short_chunk(tmp_path: Path) -> None:
    writer = SealedWriter(str(tmp_path / "f"), KEY)
    writer.write(b"hello")
    writer.flush()  # the process may die now: "hello" is on disk, sealed
    out = unseal(str(tmp_path / "f"), KEY)
    assert (out.data, out.complete) == (b"hello", False)
    writer.close()
    assert unseal(str(tmp_path / "f"), KEY).complete


def test_a_cut_file_keeps_its_complete_chunks(tmp_path: Path) -> None:
    data = os.urandom(5_000)
    write(tmp_path / "f", data)
    raw = (tmp_path / "f").read_bytes()
    for cut in (len(raw) - 1, len(raw) - 700, 30, 5):
        (tmp_path / "cut").write_bytes(raw[:cut])
        out = unseal(str(tmp_path / "cut"), KEY)
        assert not out.complete
        assert data.startswith(out.data)
        assert len(out.data) == out.chunks * 1000


def test_tampering_and_wrong_key_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "f", os.urandom(3_000))
    raw = bytearray((tmp_path / "f").read_bytes())
    flipped = bytearray(raw)
    flipped[-20] ^= 1
    (tmp_path / "t").write_bytes(flipped)
    with pytest.raises(SealError):
        unseal(str(tmp_path / "t"), KEY)
    header = 8 + 1 + 2 + 8
    record = 4 + 1000 + 16
    swapped = raw[:header] + raw[header + record : header + 2 * record] + raw[header:]
    (tmp_path / "s").write_bytes(swapped[: len(raw)])
    with pytest.raises(SealError):
        unseal(str(tmp_path / "s"), KEY)
    with pytest.raises(SealError):
        unseal(str(tmp_path / "f"), Key("k1", bytes(32)))
    with pytest.raises(SealError):
        unseal(str(tmp_path / "f"), Key("k2", bytes(range(32))))


def test_key_file_formats(tmp_path: Path) -> None:
    secret = bytes(range(32))
    assert parse_key("main:" + secret.hex()) == Key("main", secret)
    import base64

    assert parse_key(base64.b64encode(secret).decode()).secret == secret
    with pytest.raises(KeyError_):
        parse_key("k:abcd")
    with pytest.raises(KeyError_):
        FileKeyStore(str(tmp_path / "missing")).current()
    with pytest.raises(KeyError_):
        FileKeyStore("").current()
    assert repr(KEY) == "Key(key_id='k1')"


def test_decrypt_cli_refuses_a_tampered_file(tmp_path: Path) -> None:
    from recorder.cli import main

    (tmp_path / "key").write_text("k1:" + bytes(range(32)).hex())
    rec = tmp_path / "rec"
    rec.mkdir()
    write(rec / "00-audio-microphone.webm.sealed", os.urandom(3_000))
    out = tmp_path / "out"
    assert main(["decrypt", str(rec), str(out), "--key-file", str(tmp_path / "key")]) == 0
    raw = bytearray((rec / "00-audio-microphone.webm.sealed").read_bytes())
    raw[40] ^= 0x80
    (rec / "00-audio-microphone.webm.sealed").write_bytes(raw)
    assert main(["decrypt", str(rec), str(out), "--key-file", str(tmp_path / "key")]) == 1
    (tmp_path / "other").write_text("k1:" + bytes(32).hex())
    assert main(["decrypt", str(rec), str(out), "--key-file", str(tmp_path / "other")]) == 1
