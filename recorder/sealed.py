"""Sealed files: media and logs encrypted at rest with AES-256-GCM, chunk by chunk.

A sealed file is a header, then records, each a 4-byte big-endian length and one AES-GCM
ciphertext (chunk plus its 16-byte tag):

    header   = MAGIC (8 bytes) | key id length (1 byte) | key id (ASCII) | nonce prefix (8 bytes)
    record   = length (4 bytes, big-endian) | AES-256-GCM(key, nonce, chunk, aad)
    nonce    = nonce prefix (8 random bytes, one per file) | chunk index (4 bytes, big-endian)
    aad      = header | chunk index (4 bytes) | final flag (1 byte: 1 on the last chunk)

The writer seals a chunk once CHUNK_BYTES are buffered or on `flush()`, and the last one
(final flag set) on `close()`. Plaintext lives only in the writer's memory buffer. A file cut
short (a crash) keeps every complete record: `unseal` returns them and says the file was
truncated. A record changed, moved, dropped or taken from another file fails its tag.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"CSEAL\x00\x01\n"
CHUNK_BYTES = 64 * 1024
TAG_BYTES = 16
MAX_RECORD = CHUNK_BYTES * 64  # a length beyond this is corruption, not a chunk
SUFFIX = ".sealed"


class SealError(Exception):
    """A sealed file that cannot be opened: wrong magic, key or a tampered record."""


@dataclass(frozen=True, slots=True)
class Key:
    """An AES-256 key and the id written into every file sealed with it."""

    key_id: str
    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise ValueError("a recording key is 32 bytes")
        if not self.key_id or len(self.key_id) > 64 or not self.key_id.isascii():
            raise ValueError("a key id is 1-64 ASCII characters")

    def __repr__(self) -> str:  # never the secret
        return f"Key(key_id={self.key_id!r})"


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + struct.pack(">IB", index, 1 if final else 0)


class SealedWriter:
    """A write-only file object (what a muxer writes into) that seals what it is given."""

    def __init__(self, path: str, key: Key, *, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._file: BinaryIO = open(path, "xb")
        self._aes = AESGCM(key.secret)
        kid = key.key_id.encode("ascii")
        self._prefix = os.urandom(8)
        self._header = MAGIC + bytes([len(kid)]) + kid + self._prefix
        self._buffer = bytearray()
        self._chunk = chunk_bytes
        self._index = 0
        self.plain_bytes = 0
        self.sealed_bytes = 0
        self.closed = False
        self._file.write(self._header)
        self._file.flush()
        self.sealed_bytes += len(self._header)

    def write(self, data: bytes) -> int:
        if self.closed:
            raise ValueError("sealed file is closed")
        self._buffer += data
        self.plain_bytes += len(data)
        while len(self._buffer) >= self._chunk:
            chunk = bytes(self._buffer[: self._chunk])
            del self._buffer[: self._chunk]
            self._seal(chunk, final=False)
        return len(data)

    def flush(self) -> None:
        """Seal what is buffered now (a crash loses nothing written before a flush)."""
        if self._buffer and not self.closed:
            chunk = bytes(self._buffer)
            self._buffer.clear()
            self._seal(chunk, final=False)

    def close(self) -> None:
        if self.closed:
            return
        try:
            chunk = bytes(self._buffer)
            self._buffer.clear()
            self._seal(chunk, final=True)
        finally:
            self.closed = True
            self._file.close()

    def abandon(self) -> None:
        """Close without a final chunk (after a write error): what was sealed stays readable."""
        self.closed = True
        self._buffer.clear()
        try:
            self._file.close()
        except OSError:
            pass

    def _seal(self, chunk: bytes, *, final: bool) -> None:
        nonce = self._prefix + struct.pack(">I", self._index)
        sealed = self._aes.encrypt(nonce, chunk, _aad(self._header, self._index, final))
        self._index += 1
        self._file.write(struct.pack(">I", len(sealed)) + sealed)
        self._file.flush()
        self.sealed_bytes += 4 + len(sealed)


def key_id_of(path: str) -> str:
    """The key id a sealed file names (SealError if it is no sealed file)."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 1 + 64)
    if not head.startswith(MAGIC) or len(head) < len(MAGIC) + 1:
        raise SealError(f"{os.path.basename(path)}: not a sealed file")
    n = head[len(MAGIC)]
    return head[len(MAGIC) + 1 : len(MAGIC) + 1 + n].decode("ascii", "replace")


@dataclass(frozen=True, slots=True)
class Unsealed:
    data: bytes
    complete: bool  # False: the file was cut short (its complete chunks are in `data`)
    chunks: int


def unseal(path: str, key: Key) -> Unsealed:
    """Decrypt a sealed file: every complete chunk, in order; SealError on tampering."""
    parts = []
    complete = False
    count = 0
    for chunk, final in _chunks(path, key):
        parts.append(chunk)
        count += 1
        complete = final
    return Unsealed(b"".join(parts), complete, count)


def _chunks(path: str, key: Key) -> Iterator[tuple[bytes, bool]]:
    with open(path, "rb") as f:
        magic = f.read(len(MAGIC))
        if len(magic) < len(MAGIC) and MAGIC.startswith(magic):
            return  # cut inside the header: nothing was sealed yet
        if magic != MAGIC:
            raise SealError(f"{os.path.basename(path)}: not a sealed file")
        n = f.read(1)
        kid = f.read(n[0]) if n else b""
        prefix = f.read(8)
        if not n or len(kid) != n[0] or len(prefix) != 8:
            return  # cut inside the header: nothing was sealed yet
        if kid.decode("ascii", "replace") != key.key_id:
            raise SealError(f"sealed with key {kid.decode('ascii', 'replace')}, not {key.key_id}")
        header = magic + n + kid + prefix
        aes = AESGCM(key.secret)
        index = 0
        while True:
            raw_len = f.read(4)
            if len(raw_len) < 4:
                return
            length = struct.unpack(">I", raw_len)[0]
            if not TAG_BYTES <= length <= MAX_RECORD + TAG_BYTES:
                raise SealError(f"chunk {index}: bad length {length}")
            sealed = f.read(length)
            if len(sealed) < length:
                return  # cut inside the last record: a crash
            nonce = prefix + struct.pack(">I", index)
            chunk, final = _open(aes, nonce, sealed, header, index)
            yield chunk, final
            if final:
                if f.read(1):
                    raise SealError(f"data after the final chunk {index}")
                return
            index += 1


def _open(
    aes: AESGCM, nonce: bytes, sealed: bytes, header: bytes, index: int
) -> tuple[bytes, bool]:
    for final in (False, True):
        try:
            return aes.decrypt(nonce, sealed, _aad(header, index, final)), final
        except InvalidTag:
            continue
    raise SealError(f"chunk {index} failed authentication (tampered, or the wrong key)")


__all__ = [
    "CHUNK_BYTES",
    "MAGIC",
    "SUFFIX",
    "Key",
    "SealError",
    "SealedWriter",
    "Unsealed",
    "key_id_of",
    "unseal",
]
