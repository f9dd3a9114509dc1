"""Recording keys: where the AES-256 key of sealed files comes from.

`KeyStore` is the hook a key-management service implements (`current()` seals new files,
`get(key_id)` opens old ones). `FileKeyStore` reads one key from a file (`--recording-key-file`):
`KEY_ID:SECRET` or just `SECRET`, the secret 32 bytes in hex (64 digits) or base64; without
an id the key id is the first 16 hex digits of the secret's SHA-256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Protocol

from .sealed import Key


class KeyError_(Exception):
    """No usable key (missing file, bad format, unknown id)."""


class KeyStore(Protocol):
    def current(self) -> Key: ...

    def get(self, key_id: str) -> Key: ...


def parse_key(text: str) -> Key:
    text = text.strip()
    key_id, sep, secret_text = text.rpartition(":")
    if not sep:
        secret_text = text
    secret = _decode_secret(secret_text.strip())
    if not key_id:
        key_id = hashlib.sha256(secret).hexdigest()[:16]
    try:
        return Key(key_id.strip(), secret)
    except ValueError as exc:
        raise KeyError_(str(exc)) from None


def _decode_secret(text: str) -> bytes:
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        secret = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyError_("a recording key is 32 bytes in hex or base64") from None
    if len(secret) != 32:
        raise KeyError_("a recording key is 32 bytes in hex or base64")
    return secret


class FileKeyStore:
    """One key, read from a file each time it is asked for (a rotated file is picked up)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def current(self) -> Key:
        if not self.path:
            raise KeyError_("no recording key configured (--recording-key-file)")
        try:
            with open(self.path, encoding="ascii") as f:
                return parse_key(f.read(4096))
        except OSError as exc:
            raise KeyError_(f"recording key file unreadable: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise KeyError_("recording key file is not text") from None

    def get(self, key_id: str) -> Key:
        key = self.current()
        if key.key_id != key_id:
            raise KeyError_(f"no key {key_id} (the key file holds {key.key_id})")
        return key


__all__ = ["FileKeyStore", "KeyError_", "KeyStore", "parse_key"]
