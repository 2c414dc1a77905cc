"""Client tokens: JWTs whose `sub` is the user and whose `topics` claim lists patterns.

HS256 with the deployment's secret by default; RS256/ES256 with a configured
public key. The gateway verifies, `ackwire token` mints (HS256 only: a
deployment on public keys mints with its own identity provider). With
`ACKWIRE_JWT_AUDIENCE` / `ACKWIRE_JWT_ISSUER` set, a token must also carry that
`aud` / `iss`.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import jwt

from ackwire.errors import InvalidTokenError
from ackwire.settings import JwtAlgorithm, Settings

__all__ = [
    "DevelopmentSecretError",
    "Identity",
    "InvalidTokenError",
    "OtherUserTokenError",
    "TokenVerifier",
    "is_loopback",
    "mint_token",
    "refuse_development_secret_beyond_loopback",
]

_SUB_MAX = 256
_TOPIC_MAX = 256
_TOPICS_MAX = 256
_LEEWAY_S = 5


class OtherUserTokenError(InvalidTokenError):
    """A valid token, but for another user than the connection it was meant to refresh."""


class DevelopmentSecretError(ValueError):
    """A gateway would listen beyond loopback with the public development secret."""


def refuse_development_secret_beyond_loopback(settings: Settings, host: str) -> None:
    """Raise `DevelopmentSecretError` if clients on other machines could reach a gateway
    whose tokens anyone can mint. On loopback the development secret is only warned of."""
    if settings.uses_development_secret and not is_loopback(host):
        raise DevelopmentSecretError(
            f"refusing to listen on {host or 'every address'} with the development secret "
            "(anyone can mint tokens with it); set ACKWIRE_JWT_SECRET, or listen on 127.0.0.1"
        )


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`: 127.0.0.0/8, ::1 or localhost. A wildcard
    (0.0.0.0, ::, the empty host) is every address; other names are not resolved."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for."""

    user: str
    topics: tuple[str, ...]
    expires_at: float


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self._algorithm = settings.jwt_algorithm
        if self._algorithm is JwtAlgorithm.HS256:
            self._key: str = settings.jwt_secret.get_secret_value()
        elif settings.jwt_public_key:
            self._key = settings.jwt_public_key
        else:
            raise ValueError(f"ACKWIRE_JWT_PUBLIC_KEY is required for {self._algorithm}")
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer

    def verify(self, token: str) -> Identity:
        """The identity a token proves; raises `InvalidTokenError` saying why not."""
        if not token:
            raise InvalidTokenError("missing token")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm.value],
                options={"require": ["sub", "exp"]},
                leeway=_LEEWAY_S,
                audience=self._audience,
                issuer=self._issuer,
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidTokenError("token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidTokenError(
                "token's `aud` is not this deployment's audience"
                if self._audience
                else "token carries an `aud` claim; this deployment expects none"
            ) from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidTokenError("token's `iss` is not this deployment's issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidTokenError(f"token has no `{exc.claim}` claim") from exc
        except jwt.InvalidTokenError as exc:
            raise InvalidTokenError(f"invalid token: {exc}") from exc
        sub = claims["sub"]
        if not isinstance(sub, str) or not 0 < len(sub) <= _SUB_MAX:
            raise InvalidTokenError(f"claim `sub` must be a string of 1-{_SUB_MAX} characters")
        topics = claims.get("topics", [])
        if (
            not isinstance(topics, list)
            or len(topics) > _TOPICS_MAX
            or not all(isinstance(t, str) and 0 < len(t) <= _TOPIC_MAX for t in topics)
        ):
            raise InvalidTokenError("claim `topics` must be a list of topic patterns")
        return Identity(user=sub, topics=tuple(topics), expires_at=float(claims["exp"]))

    def verify_refresh(self, token: str, current: Identity) -> Identity:
        """The identity a `refresh` token proves for a connection now holding `current`.

        Raises `InvalidTokenError` as `verify` does, or `OtherUserTokenError` when the
        token names another `sub`: a connection's user never changes."""
        renewed = self.verify(token)
        if renewed.user != current.user:
            raise OtherUserTokenError("token names another `sub` than this connection's user")
        return renewed


def mint_token(
    secret: str,
    sub: str,
    *,
    topics: list[str] | None = None,
    ttl_s: float = 3600.0,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """An HS256 token for `sub`, valid for `ttl_s` seconds, with `aud` and `iss` if given."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": sub, "iat": now, "exp": now + int(ttl_s)}
    if topics:
        claims["topics"] = topics
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
