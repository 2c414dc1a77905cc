import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ackwire.settings import DEVELOPMENT_SECRET, JwtAlgorithm, Settings
from ackwire.tokens import (
    DevelopmentSecretError,
    Identity,
    InvalidTokenError,
    OtherUserTokenError,
    TokenVerifier,
    is_loopback,
    mint_token,
    refuse_development_secret_beyond_loopback,
)
from support.auth import TEST_SECRET


def test_a_minted_token_verifies_with_its_claims() -> None:
    verifier = TokenVerifier(Settings(jwt_secret=TEST_SECRET))
    identity = verifier.verify(mint_token(TEST_SECRET, "alice", topics=["chat.*"], ttl_s=60))
    assert identity.user == "alice"
    assert identity.topics == ("chat.*",)
    assert identity.expires_at > time.time()


def test_no_topics_claim_means_no_topic() -> None:
    verifier = TokenVerifier(Settings(jwt_secret=TEST_SECRET))
    assert verifier.verify(mint_token(TEST_SECRET, "bob")).topics == ()


#: An `exp` for tokens made when tests are collected: the suite runs for minutes, and a token
#: meant to fail for another reason must not expire first.
LATER = int(time.time()) + 86400


def _alice_connected(verifier: TokenVerifier) -> Identity:
    return verifier.verify(mint_token(TEST_SECRET, "alice", topics=["chat.*"], ttl_s=60))


def test_a_refresh_for_the_same_user_gives_the_new_identity() -> None:
    verifier = TokenVerifier(Settings(jwt_secret=TEST_SECRET))
    current = _alice_connected(verifier)
    renewed = verifier.verify_refresh(
        mint_token(TEST_SECRET, "alice", topics=["news.>"], ttl_s=7200), current
    )
    assert renewed.user == "alice"
    assert renewed.topics == ("news.>",)  # the new token's claim, not the old one's
    assert renewed.expires_at >= current.expires_at + 7200 - 60


def test_a_refresh_naming_another_user_is_refused_saying_so() -> None:
    verifier = TokenVerifier(Settings(jwt_secret=TEST_SECRET))
    with pytest.raises(OtherUserTokenError, match="another `sub`"):
        verifier.verify_refresh(mint_token(TEST_SECRET, "bob"), _alice_connected(verifier))


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("", "missing token"),
        ("not-a-jwt", "invalid token"),
        (jwt.encode({"sub": "alice", "exp": int(time.time()) - 60}, TEST_SECRET), "expired"),
        (
            jwt.encode(
                {"sub": "alice", "exp": LATER},
                "another-secret-that-is-long-enough-for-hs256",
            ),
            "invalid token",
        ),
    ],
)
def test_a_refresh_with_a_bad_or_expired_token_is_refused_saying_why(token: str, says: str) -> None:
    verifier = TokenVerifier(Settings(jwt_secret=TEST_SECRET))
    with pytest.raises(InvalidTokenError, match=says) as refused:
        verifier.verify_refresh(token, _alice_connected(verifier))
    assert not isinstance(refused.value, OtherUserTokenError)


def _hs256_signed_with(secret: bytes, claims: dict[str, object]) -> str:
    """Forged by hand: pyjwt itself refuses to use a PEM key as an HMAC secret."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


def _pem_pair(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[bytes, str]:
    private = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public.decode()


@pytest.mark.parametrize(
    ("algorithm", "key"),
    [
        (JwtAlgorithm.RS256, rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        (JwtAlgorithm.ES256, ec.generate_private_key(ec.SECP256R1())),
    ],
)
def test_public_key_algorithms_verify_and_refuse_hs256(
    algorithm: JwtAlgorithm, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
) -> None:
    private, public = _pem_pair(key)
    verifier = TokenVerifier(Settings(jwt_algorithm=algorithm, jwt_public_key=public))
    claims = {"sub": "carol", "exp": int(time.time()) + 60}
    assert verifier.verify(jwt.encode(claims, private, algorithm=algorithm.value)).user == "carol"
    # An HS256 token signed with the public key as its secret is the classic confusion attack.
    with pytest.raises(InvalidTokenError):
        verifier.verify(
            _hs256_signed_with(public.encode(), {"sub": "mallory", "exp": claims["exp"]})
        )


def test_a_public_key_algorithm_without_a_key_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="ACKWIRE_JWT_PUBLIC_KEY"):
        TokenVerifier(Settings(jwt_algorithm=JwtAlgorithm.RS256))


AUDIENCE = "ackwire-test"
ISSUER = "https://id.example.test"


def _claims(**extra: object) -> dict[str, object]:
    return {"sub": "alice", "exp": LATER, **extra}


@pytest.mark.parametrize(
    "claims",
    [
        _claims(aud=AUDIENCE, iss=ISSUER),
        _claims(aud=["another-service", AUDIENCE], iss=ISSUER),  # one of several audiences
    ],
)
def test_a_configured_audience_and_issuer_accept_matching_tokens(
    claims: dict[str, object],
) -> None:
    verifier = TokenVerifier(
        Settings(jwt_secret=TEST_SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER)
    )
    assert verifier.verify(jwt.encode(claims, TEST_SECRET)).user == "alice"


@pytest.mark.parametrize(
    ("claims", "says"),
    [
        (_claims(iss=ISSUER), "token has no `aud` claim"),
        (_claims(aud="another-service", iss=ISSUER), "`aud` is not this deployment's audience"),
        (_claims(aud=["a", "b"], iss=ISSUER), "`aud` is not this deployment's audience"),
        (_claims(aud=7, iss=ISSUER), "`aud` is not this deployment's audience"),
        (_claims(aud=AUDIENCE), "token has no `iss` claim"),
        (_claims(aud=AUDIENCE, iss="https://evil.test"), "`iss` is not this deployment's issuer"),
    ],
)
def test_a_configured_audience_and_issuer_refuse_other_tokens_saying_which(
    claims: dict[str, object], says: str
) -> None:
    verifier = TokenVerifier(
        Settings(jwt_secret=TEST_SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER)
    )
    with pytest.raises(InvalidTokenError, match=says):
        verifier.verify(jwt.encode(claims, TEST_SECRET))


def test_unconfigured_a_token_meant_for_an_audience_is_refused_and_any_issuer_accepted() -> None:
    verifier = TokenVerifier(Settings(jwt_secret=TEST_SECRET))
    assert verifier.verify(jwt.encode(_claims(iss=ISSUER), TEST_SECRET)).user == "alice"
    with pytest.raises(InvalidTokenError, match="expects none"):
        verifier.verify(jwt.encode(_claims(aud=AUDIENCE), TEST_SECRET))


def test_a_minted_token_carries_the_audience_and_issuer_asked_for() -> None:
    token = mint_token(TEST_SECRET, "alice", audience=AUDIENCE, issuer=ISSUER)
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"], audience=AUDIENCE)
    assert (claims["aud"], claims["iss"]) == (AUDIENCE, ISSUER)
    assert "aud" not in jwt.decode(mint_token(TEST_SECRET, "alice"), TEST_SECRET, ["HS256"])


def test_an_empty_audience_setting_is_a_bad_setting() -> None:
    with pytest.raises(ValueError, match="jwt_audience"):
        Settings(jwt_audience="")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),  # every address
        ("::", False),
        ("", False),
        ("10.0.0.7", False),
        ("gateway.example.test", False),  # a name is not resolved: it may be anything
    ],
)
def test_loopback_is_127_0_0_0_8_ipv6_1_and_localhost(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_development_secret_is_refused_beyond_loopback_only() -> None:
    development = Settings(jwt_secret=DEVELOPMENT_SECRET)
    refuse_development_secret_beyond_loopback(development, "127.0.0.1")
    with pytest.raises(DevelopmentSecretError, match=r"0\.0\.0\.0.*ACKWIRE_JWT_SECRET"):
        refuse_development_secret_beyond_loopback(development, "0.0.0.0")
    refuse_development_secret_beyond_loopback(Settings(jwt_secret=TEST_SECRET), "0.0.0.0")
