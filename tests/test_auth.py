"""HS256 tokens and resume tokens (pure logic)."""

from __future__ import annotations

import base64
import json

import pytest

from mediaserver.api import Role
from signaling.auth import ResumeTokens, TokenError, encode_token, verify_token

SECRET = "s3cret"


def mint(**overrides: object) -> str:
    values: dict[str, object] = {
        "secret": SECRET,
        "room": "r1",
        "sub": "u-42",
        "role": Role.DOCTOR,
        "name": "Dr Who",
        "ttl_s": 60.0,
        "now": 1_000_000.0,
    }
    values.update(overrides)
    return encode_token(**values)  # type: ignore[arg-type]


def forge(payload: dict[str, object], secret: str = SECRET) -> str:
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def test_round_trip() -> None:
    claims = verify_token(mint(), secret=SECRET, room="r1", now=1_000_010.0)
    assert (claims.room, claims.sub, claims.role, claims.name) == (
        "r1",
        "u-42",
        Role.DOCTOR,
        "Dr Who",
    )
    assert claims.exp == 1_000_060
    assert "u-42" not in repr(claims) and "Dr Who" not in repr(claims)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("not-a-jwt", "malformed token"),
        ("a.b.c", "malformed token"),
        (mint(secret="other"), "bad signature"),
        (mint()[:-4] + "AAAA", "bad signature"),
    ],
)
def test_refusals(token: str, reason: str) -> None:
    with pytest.raises(TokenError) as info:
        verify_token(token, secret=SECRET, now=1_000_010.0)
    assert info.value.reason == reason


def test_expired_and_leeway() -> None:
    token = mint(ttl_s=10)
    verify_token(token, secret=SECRET, now=1_000_030.0)  # within the 30 s leeway
    with pytest.raises(TokenError, match="expired"):
        verify_token(token, secret=SECRET, now=1_000_100.0)
    verify_token(token, secret=SECRET, now=1_000_100.0, check_expiry=False)


def test_wrong_room() -> None:
    with pytest.raises(TokenError, match="wrong room"):
        verify_token(mint(), secret=SECRET, room="r2", now=1_000_010.0)


def test_bad_role_and_missing_claims() -> None:
    with pytest.raises(TokenError, match="bad role"):
        verify_token(
            forge({"room": "r", "sub": "s", "role": "admin", "name": "n", "exp": 2e9}),
            secret=SECRET,
        )
    with pytest.raises(TokenError, match="missing exp"):
        verify_token(forge({"room": "r", "sub": "s", "role": "doctor", "name": "n"}), secret=SECRET)
    with pytest.raises(TokenError, match="missing name"):
        verify_token(forge({"room": "r", "sub": "s", "role": "doctor", "exp": 2e9}), secret=SECRET)
    with pytest.raises(TokenError, match="not yet valid"):
        verify_token(
            forge(
                {"room": "r", "sub": "s", "role": "doctor", "name": "n", "exp": 2e9, "nbf": 1.9e9}
            ),
            secret=SECRET,
            now=1e9,
        )


def test_alg_none_refused() -> None:
    head = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    body = mint().split(".")[1]
    with pytest.raises(TokenError, match="alg"):
        verify_token(f"{head}.{body}.", secret=SECRET)


def test_resume_tokens_rotate_and_expire() -> None:
    tokens = ResumeTokens()
    t1 = tokens.issue("r1", "p1")
    assert tokens.consume(t1, "r2") is None  # other room: refused (and kept)
    assert tokens.peek(t1, "r1") == "p1"  # peeking keeps it
    assert tokens.consume(t1, "r1") == "p1"
    t2 = tokens.issue("r1", "p1")  # the resumed `joined` carries t2 ...
    # ... and is lost with its socket: the client still has only t1, which still works.
    assert tokens.consume(t1, "r1") == "p1"
    t3 = tokens.issue("r1", "p1")
    assert tokens.peek(t2, "r1") is None  # never presented, superseded
    assert tokens.consume(t3, "r1") == "p1"  # the client got t3 and uses it:
    assert tokens.peek(t1, "r1") is None  # from now on t1 is gone
    t4 = tokens.issue("r1", "p1")
    t5 = tokens.issue("r1", "p1")  # a second `joined` with no resume between
    assert tokens.peek(t4, "r1") is None and tokens.peek(t3, "r1") == "p1"
    tokens.start_expiry("p1", 5.0, now=100.0)
    assert tokens.consume(t5, "r1", now=106.0) is None
    assert tokens.consume(t3, "r1", now=106.0) is None  # the fallback expires too
    t6 = tokens.issue("r1", "p1")
    tokens.start_expiry("p1", 5.0, now=100.0)
    assert tokens.consume(t6, "r1", now=104.0) == "p1"
    tokens.revoke("p1")
    tokens.issue("r1", "p2")
    tokens.revoke("p2")
    assert len(tokens) == 0


def test_token_command_prints_a_valid_jwt(capsys: pytest.CaptureFixture[str]) -> None:
    from signaling.__main__ import main

    args = ["token", "--room", "demo", "--sub", "u1", "--role", "patient", "--name", "Pat"]
    assert main([*args, "--secret", SECRET, "--ttl", "60"]) == 0
    claims = verify_token(capsys.readouterr().out.strip(), secret=SECRET, room="demo")
    assert (claims.sub, claims.role, claims.name) == ("u1", Role.PATIENT, "Pat")
