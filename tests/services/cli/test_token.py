"""`ackwire token` prints a JWT and nothing else; bad input exits 2 with one short line."""

import jwt
import pytest

from ackwire.settings import Settings
from ackwire.tokens import TokenVerifier
from support.auth import TEST_SECRET
from support.processes import AckwireProcess


async def test_token_prints_only_a_verifiable_jwt() -> None:
    process = await AckwireProcess.start(
        "token", "--sub", "alice", "--topics", "pipeline.>", "--topics", "chat.*", "--ttl", "60",
        env={"ACKWIRE_JWT_SECRET": TEST_SECRET},
    )  # fmt: skip
    assert await process.exit_code() == 0
    assert len(process.stdout_lines) == 1
    identity = TokenVerifier(Settings(jwt_secret=TEST_SECRET)).verify(process.stdout_lines[0])
    assert identity.user == "alice"
    assert identity.topics == ("pipeline.>", "chat.*")


async def test_token_takes_nats_url_like_every_driving_command() -> None:
    process = await AckwireProcess.start(
        "token", "--sub", "alice", "--nats-url", "nats://127.0.0.1:1",
        env={"ACKWIRE_JWT_SECRET": TEST_SECRET},
    )  # fmt: skip
    assert await process.exit_code() == 0
    assert TokenVerifier(Settings(jwt_secret=TEST_SECRET)).verify(process.stdout_lines[0])


async def test_token_carries_the_deployments_audience_and_issuer_or_the_flags() -> None:
    deployment = {
        "ACKWIRE_JWT_SECRET": TEST_SECRET,
        "ACKWIRE_JWT_AUDIENCE": "ackwire-prod",
        "ACKWIRE_JWT_ISSUER": "https://id.example.test",
    }
    verifier = TokenVerifier(
        Settings(jwt_secret=TEST_SECRET, jwt_audience="dev", jwt_issuer="https://dev.test")
    )
    by_flags = await AckwireProcess.start(
        "token", "--sub", "alice", "--aud", "dev", "--iss", "https://dev.test", env=deployment
    )
    assert await by_flags.exit_code() == 0
    assert verifier.verify(by_flags.stdout_lines[0]).user == "alice"
    by_settings = await AckwireProcess.start("token", "--sub", "bob", env=deployment)
    assert await by_settings.exit_code() == 0
    claims = jwt.decode(
        by_settings.stdout_lines[0], TEST_SECRET, algorithms=["HS256"], audience="ackwire-prod"
    )
    assert (claims["sub"], claims["iss"]) == ("bob", "https://id.example.test")


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["token"], {}, "--sub"),
        (["token", "--sub", "a", "--ttl", "-5"], {}, "must be 1 or more"),
        (["token", "--sub", "a"], {"ACKWIRE_WINDOW": "lots"}, "ACKWIRE_WINDOW"),
        (["token", "--sub", "a"], {"ACKWIRE_JWT_ALGORITHM": "RS256"}, "HS256"),
        (["teleport"], {}, "invalid choice"),
    ],
)
async def test_bad_input_exits_2_with_a_short_reason(
    args: list[str], env: dict[str, str], says: str
) -> None:
    process = await AckwireProcess.start(*args, env=env)
    assert await process.exit_code() == 2
    stderr = "".join(process.stderr_text)
    assert says in stderr
    assert "Traceback" not in stderr
    assert process.stdout_lines == []
