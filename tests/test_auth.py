"""HS256 tokens and resume tokens (pure logic)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable
from typing import Any

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


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    payload: dict[str, object], secret: str | bytes = SECRET, *, header: bytes | None = None
) -> str:
    """An HS256 token signed by hand: any header and payload (NaN, Infinity...)."""
    key = secret.encode() if isinstance(secret, str) else secret
    head = b64(header if header is not None else b'{"alg":"HS256","typ":"JWT"}')
    body = b64(json.dumps(payload).encode())
    sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


SOON = time.time() + 60  # an exp within any lifetime limit
CLAIMS: dict[str, object] = {"room": "r", "sub": "s", "role": "doctor", "name": "n"}


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
            forge({"room": "r", "sub": "s", "role": "admin", "name": "n", "exp": SOON}),
            secret=SECRET,
        )
    with pytest.raises(TokenError, match="missing exp"):
        verify_token(forge({"room": "r", "sub": "s", "role": "doctor", "name": "n"}), secret=SECRET)
    with pytest.raises(TokenError, match="missing name"):
        verify_token(forge({"room": "r", "sub": "s", "role": "doctor", "exp": SOON}), secret=SECRET)
    with pytest.raises(TokenError, match="not yet valid"):
        verify_token(
            forge(
                {
                    "room": "r",
                    "sub": "s",
                    "role": "doctor",
                    "name": "n",
                    "exp": SOON,
                    "nbf": SOON - 1,
                }
            ),
            secret=SECRET,
            now=SOON - 100,
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


# -- issue 11, item 7: PyJWT, finite and bounded times, strict form, asymmetric keys ----------


def verifier(**options: object) -> Any:
    from signaling.auth import TokenVerifier

    return TokenVerifier(**{"secret": SECRET, **options})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exp", "reason"),
    [
        (math.nan, "exp is not a finite number"),
        (math.inf, "exp is not a finite number"),
        (-math.inf, "exp is not a finite number"),
        (1e400, "exp is not a finite number"),  # JSON 1e400: Infinity
        (10**30, "exp is not a finite number"),
        (253402300799, "lifetime too long"),  # 9999-12-31
        (time.time() + 2 * 86400, "lifetime too long"),
        ("2030-01-01", "exp is not a number"),
        (True, "exp is not a number"),
    ],
)
def test_exp_must_be_finite_and_within_the_lifetime(exp: object, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        verify_token(forge({**CLAIMS, "exp": exp}), secret=SECRET)
    with pytest.raises(TokenError, match=reason):  # a resume checks them too
        verify_token(forge({**CLAIMS, "exp": exp}), secret=SECRET, check_expiry=False)


def test_max_lifetime_is_configurable_and_counts_from_iat() -> None:
    now = time.time()
    two_days = forge({**CLAIMS, "exp": now + 2 * 86400})
    verifier(max_lifetime_s=3 * 86400).verify(two_days)
    with pytest.raises(TokenError, match="lifetime too long"):
        verifier().verify(two_days)
    old_iat = forge({**CLAIMS, "iat": now - 2 * 86400, "exp": now + 60})
    with pytest.raises(TokenError, match="lifetime too long"):
        verifier().verify(old_iat)
    with pytest.raises(TokenError, match="iat is not a finite number"):
        verifier().verify(forge({**CLAIMS, "iat": math.nan, "exp": now + 60}))


@pytest.mark.parametrize("junk", ["!", "!!!!", "=", "==", " ", "\n", ".", ".x", "A", "%00", "~"])
def test_junk_after_the_signature_is_refused(junk: str) -> None:
    good = forge({**CLAIMS, "exp": SOON})
    verify_token(good, secret=SECRET)
    with pytest.raises(TokenError):  # "A" makes a 33-byte signature: a bad one
        verify_token(good + junk, secret=SECRET)


def test_non_canonical_signature_bits_are_refused() -> None:
    good = forge({**CLAIMS, "exp": SOON})
    head, body, sig = good.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(sig[-1]) ^ 1]  # a 43-char segment: the last 2 bits unused
    with pytest.raises(TokenError, match="malformed token"):
        verify_token(f"{head}.{body}.{sig[:-1]}{last}", secret=SECRET)


@pytest.mark.parametrize(
    "header",
    [b"[" * 5000, b'{"alg":"HS256","x":' + b"[" * 2500 + b"]" * 2500 + b"}", b'"HS256"'],
)
def test_nested_or_odd_header_is_a_malformed_token(header: bytes) -> None:
    with pytest.raises(TokenError, match="malformed token"):
        verify_token(forge({**CLAIMS, "exp": SOON}, header=header), secret=SECRET)


def _rsa_pair() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _pems(key, serialization)


def _ec_pair() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return _pems(ec.generate_private_key(ec.SECP256R1()), serialization)


def _pems(key: Any, serialization: Any) -> tuple[str, str]:
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@pytest.mark.parametrize(("pair", "alg"), [(_rsa_pair, "RS256"), (_ec_pair, "ES256")])
def test_asymmetric_tokens_are_verified_with_the_public_key(
    pair: Callable[[], tuple[str, str]], alg: str
) -> None:
    private, public = pair()
    token = encode_token(
        private_key=private, room="r1", sub="u-1", role=Role.PATIENT, name="P", ttl_s=60
    )
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["alg"] == alg
    node = verifier(secret="", public_key=public)
    claims = node.verify(token, room="r1")
    assert (claims.sub, claims.role) == ("u-1", Role.PATIENT)
    other_private, _ = pair()  # another key: refused
    forged = encode_token(
        private_key=other_private, room="r1", sub="u-1", role=Role.DOCTOR, name="P", ttl_s=60
    )
    with pytest.raises(TokenError, match="bad signature"):
        node.verify(forged)
    # the node holds no secret: an HS256 token is refused, whatever key signed it
    with pytest.raises(TokenError, match="alg not allowed"):
        node.verify(forge({**CLAIMS, "exp": SOON}, secret=public))
    with pytest.raises(TokenError, match="alg not allowed"):
        node.verify(
            forge({**CLAIMS, "exp": SOON}, header=b'{"alg":"none"}').rsplit(".", 1)[0] + "."
        )


def test_hs256_signed_with_the_public_key_is_refused_when_both_are_allowed() -> None:
    _, public = _rsa_pair()
    node = verifier(public_key=public, algorithms=("HS256", "RS256"))
    node.verify(forge({**CLAIMS, "exp": SOON}))  # the secret still works
    with pytest.raises(TokenError, match="bad signature"):  # the public key is no HMAC key
        node.verify(forge({**CLAIMS, "exp": SOON}, secret=public))
    confused = forge({**CLAIMS, "exp": SOON}, secret=public, header=b'{"alg":"RS256"}')
    with pytest.raises(TokenError):  # an HMAC tag is no RSA signature
        node.verify(confused)


def test_verifier_configuration_is_checked() -> None:
    _, public = _ec_pair()
    for options in (
        {"algorithms": ("none",)},
        {"algorithms": ("RS256",)},  # no public key
        {"secret": "", "algorithms": ("HS256",)},
        {"public_key": public, "algorithms": ("RS256",)},  # an EC key verifies ES256
        {"max_lifetime_s": math.inf},
        {"public_key": "not a pem"},
    ):
        with pytest.raises(ValueError):
            verifier(**options)


def test_audience_and_issuer_when_configured() -> None:
    good = forge({**CLAIMS, "exp": SOON, "aud": "consult", "iss": "platform"})
    verifier().verify(good)  # not configured: not checked
    verifier(audience="consult", issuer="platform").verify(good)
    with pytest.raises(TokenError, match="wrong audience"):
        verifier(audience="other").verify(good)
    with pytest.raises(TokenError, match="wrong issuer"):
        verifier(issuer="other").verify(good)
    with pytest.raises(TokenError, match="missing"):
        verifier(audience="consult").verify(forge({**CLAIMS, "exp": SOON}))


def test_telemetry_claim_never_for_observers() -> None:
    def claims(role: str, **extra: object) -> Any:
        return verify_token(forge({**CLAIMS, "role": role, "exp": SOON, **extra}), secret=SECRET)

    assert claims("patient", telemetry=True).telemetry is True
    assert claims("patient").telemetry is False
    assert claims("patient", telemetry="yes").telemetry is False
    assert claims("observer", telemetry=True).telemetry is False


def test_token_command_mints_with_a_private_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    from signaling.__main__ import main

    private, public = _ec_pair()
    key_file = tmp_path / "platform.pem"
    key_file.write_text(private)
    args = ["token", "--room", "demo", "--sub", "u1", "--role", "doctor", "--name", "D"]
    assert main([*args, "--private-key", str(key_file)]) == 0
    claims = verifier(secret="", public_key=public).verify(capsys.readouterr().out.strip())
    assert claims.role is Role.DOCTOR
