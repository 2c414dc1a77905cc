"""`ackwire`: one command for the whole suite (operations.md, "Driving the stack")."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import JsonValue, ValidationError

from ackwire.bus.subjects import InvalidNameError
from ackwire.logs import configure_logging
from ackwire.settings import JwtAlgorithm, Settings
from ackwire.tokens import (
    DevelopmentSecretError,
    mint_token,
    refuse_development_secret_beyond_loopback,
)
from ackwire.wire.topics import BadTopicError

DEMO_KIND_NAMES = "echo,sleep,fail,translate"
#: `ackwire bench`'s scenarios (ackwire.bench.command), named here so that a wrong name is
#: refused before the bench's imports.
BENCH_SCENARIOS = ("jobs", "messages", "fanout", "resume-storm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ackwire", description="Real-time delivery over WebSockets that provably arrives."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run the whole stack on one machine")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8765, help="first gateway's port")
    up.add_argument("--gateways", type=_positive, default=2)
    up.add_argument("--nodes", type=_positive, default=2)
    up.add_argument(
        "--schedulers", type=_positive, default=1, help="2 or more: replicas that hand over"
    )
    up.add_argument("--nats-url", help="use this NATS server or cluster instead of an embedded one")
    up.add_argument("--data-dir", type=Path, default=Path(".ackwire"))

    gateway = commands.add_parser("gateway", help="run one edge gateway")
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument("--port", type=int, help="default: ACKWIRE_GATEWAY_PORT")
    gateway.add_argument("--name", default="gw-1")
    _nats_url_flag(gateway)

    scheduler = commands.add_parser("scheduler", help="run the scheduler")
    scheduler.add_argument("--name", default="scheduler-1")
    scheduler.add_argument("--http-host", default="127.0.0.1")
    _nats_url_flag(scheduler)

    node = commands.add_parser("node", help="run a node serving job kinds")
    node.add_argument("--name", default="node-1")
    node.add_argument(
        "--kinds", default=DEMO_KIND_NAMES, help=f"comma-separated (default {DEMO_KIND_NAMES})"
    )
    node.add_argument("--capacity", type=_positive, default=4, help="jobs run at once")
    node.add_argument("--http-host", default="127.0.0.1")
    _nats_url_flag(node)

    _add_driving_commands(commands)
    return parser


def _add_driving_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """operations.md, "Driving the stack"."""
    token = commands.add_parser("token", help="print a client token (HS256)")
    token.add_argument("--sub", required=True, help="the user id")
    token.add_argument(
        "--topics", action="append", default=[], help="a topic pattern the user may subscribe to"
    )
    token.add_argument("--ttl", type=_positive, default=3600, help="seconds until it expires")
    token.add_argument("--aud", help="the `aud` claim (default: ACKWIRE_JWT_AUDIENCE)")
    token.add_argument("--iss", help="the `iss` claim (default: ACKWIRE_JWT_ISSUER)")
    _nats_url_flag(token)  # every driving command takes it; a token needs no NATS

    publish = commands.add_parser("publish", help="publish a topic event")
    publish.add_argument("--topic", required=True)
    publish.add_argument("--data", required=True, type=_json, help="the event, as JSON")
    publish.add_argument("--snapshot", action="store_true", help="also the topic's snapshot")
    _nats_url_flag(publish)

    send = commands.add_parser("send", help="send a message (acked, like a job result)")
    to = send.add_mutually_exclusive_group(required=True)
    to.add_argument("--user", help="every live or resumable session of this user")
    to.add_argument("--session", help="this session")
    send.add_argument("--data", required=True, type=_json, help="the message, as JSON")
    _nats_url_flag(send)

    sessions = commands.add_parser("sessions", help="list sessions: who is connected where")
    sessions.add_argument("--json", action="store_true", help="one JSON object a line")
    _nats_url_flag(sessions)

    owed = commands.add_parser("undelivered", help="list messages stored and not yet acked")
    owed.add_argument("--session", help="only this session's")
    owed.add_argument("--json", action="store_true", help="one JSON object a line")
    _nats_url_flag(owed)

    top = commands.add_parser(
        "top", help="the stack live: gateways, sessions, rates, jobs, who is owed most"
    )
    _nats_url_flag(top)

    bench = commands.add_parser(
        "bench", help="measure: each figure beside raw baselines from the same run"
    )
    bench.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of {', '.join(BENCH_SCENARIOS)} (default: all)",
    )
    bench.add_argument("--quick", action="store_true", help="small sizes: under a minute")
    bench.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    bench.add_argument("--nats-url", help="default: an embedded nats-server")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {
        key: value
        for key, value in {
            "nats_url": getattr(args, "nats_url", None),
            "gateway_port": getattr(args, "port", None) if args.command == "gateway" else None,
        }.items()
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        parser.exit(2, f"ackwire: bad setting: {_first_error(exc)}\n")
    # The operator's tools print their answer on stdout; their info lines would be noise.
    quiet = args.command in ("token", "sessions", "undelivered", "publish", "send", "bench", "top")
    configure_logging(settings.log_format, "warning" if quiet else settings.log_level)
    try:
        return _run(args, settings)
    except (InvalidNameError, BadTopicError) as exc:
        parser.exit(2, f"ackwire: {exc}\n")
    except DevelopmentSecretError as exc:
        parser.exit(2, f"ackwire {args.command}: {exc}\n")
    except OSError as exc:  # a port taken, a directory not writable: say it in one line
        print(f"ackwire {args.command}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace, settings: Settings) -> int:
    # Each command imports what it needs: `ackwire token` should not pay for the services.
    tools = {
        "token": _print_token,
        "sessions": _print_view,
        "undelivered": _print_view,
        "top": _top,
        "publish": _publish,
        "send": _publish,
        "bench": _bench,
        "up": _up,
    }
    tool = tools.get(args.command)
    if tool is not None:
        return tool(args, settings)
    return _serve(args, settings)


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from ackwire.cli.up import StackOptions, run_stack

    # Before anything starts: the gateways it would spawn would each refuse.
    refuse_development_secret_beyond_loopback(settings, args.host)
    options = StackOptions(
        host=args.host,
        port=args.port,
        gateways=args.gateways,
        nodes=args.nodes,
        schedulers=args.schedulers,
        nats_url=args.nats_url,
        data_dir=args.data_dir,
    )
    return asyncio.run(run_stack(options, settings))


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    unknown = [name for name in args.scenarios if name not in BENCH_SCENARIOS]
    if unknown:
        print(
            f"ackwire bench: no scenario {unknown[0]!r}; the scenarios are "
            + ", ".join(BENCH_SCENARIOS),
            file=sys.stderr,
        )
        return 2
    if args.json is not None and not args.json.parent.is_dir():
        print(f"ackwire bench: --json: no directory {args.json.parent}", file=sys.stderr)
        return 2
    try:
        from ackwire.bench import BenchFailedError
        from ackwire.bench.command import run_bench
    except ImportError as exc:  # the baselines' packages come with the `dev` extras
        print(
            f"ackwire bench: needs {exc.name}, which comes with the dev extras"
            " (pip install -e '.[dev]')",
            file=sys.stderr,
        )
        return 1
    from nats.errors import Error as NatsError

    from ackwire.bus.embedded import NatsServerError
    from ackwire.cli.bus import NatsUnreachableError
    from ackwire.cli.up import ChildFailedError

    names = list(dict.fromkeys(args.scenarios or BENCH_SCENARIOS))
    try:
        return asyncio.run(
            run_bench(
                names,
                quick=args.quick,
                json_path=args.json,
                settings=settings,
                nats_url=args.nats_url,
            )
        )
    except NatsUnreachableError as exc:
        print(f"ackwire bench: {exc}", file=sys.stderr)
        return 1
    except (BenchFailedError, ChildFailedError, NatsServerError, NatsError, TimeoutError) as exc:
        print(f"ackwire bench: failed: {exc or type(exc).__name__}", file=sys.stderr)
        return 1


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from ackwire.lifecycle import Service, run_until_stopped

    service: Service
    if args.command == "gateway":
        from ackwire.gateway.server import Gateway

        service = Gateway(settings, name=args.name, host=args.host, port=settings.gateway_port)
    elif args.command == "scheduler":
        from ackwire.scheduler.service import Scheduler

        service = Scheduler(settings, name=args.name, host=args.http_host)
    else:
        from ackwire.node.demo_kinds import DEMO_KINDS
        from ackwire.node.service import Node

        names = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
        unknown = sorted(set(names) - set(DEMO_KINDS))
        if unknown or not names:
            print(
                f"ackwire node: unknown kinds {unknown or names}; this node serves "
                + ", ".join(DEMO_KINDS),
                file=sys.stderr,
            )
            return 2
        kinds = {name: DEMO_KINDS[name] for name in names}
        service = Node(
            settings, name=args.name, kinds=kinds, capacity=args.capacity, host=args.http_host
        )
    asyncio.run(run_until_stopped(args.command, service))
    return 0


def _print_token(args: argparse.Namespace, settings: Settings) -> int:
    if settings.jwt_algorithm is not JwtAlgorithm.HS256:
        print(
            f"ackwire: token mints HS256 tokens; this deployment verifies {settings.jwt_algorithm}",
            file=sys.stderr,
        )
        return 2
    secret = settings.jwt_secret.get_secret_value()
    token = mint_token(
        secret,
        args.sub,
        topics=args.topics,
        ttl_s=args.ttl,
        audience=args.aud or settings.jwt_audience,
        issuer=args.iss or settings.jwt_issuer,
    )
    print(token)
    return 0


def _publish(args: argparse.Namespace, settings: Settings) -> int:
    from ackwire.cli import publishing
    from ackwire.cli.bus import NatsUnreachableError
    from ackwire.errors import BusError
    from ackwire.publisher import FrameTooLargeError, NoRecipientError

    try:
        if args.command == "publish":
            seq = asyncio.run(
                publishing.publish(settings, args.topic, args.data, snapshot=args.snapshot)
            )
            print(seq)
        else:
            message_id = asyncio.run(
                publishing.send(settings, args.data, user=args.user, session=args.session)
            )
            print(message_id)
    except (NatsUnreachableError, NoRecipientError, BusError) as exc:
        print(f"ackwire {args.command}: {exc}", file=sys.stderr)
        return 1
    except FrameTooLargeError as exc:  # bad input: no client could ever receive it
        print(f"ackwire {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


def _print_view(args: argparse.Namespace, settings: Settings) -> int:
    from ackwire.bus.subjects import session_token
    from ackwire.cli.bus import NatsUnreachableError
    from ackwire.cli.views import print_sessions, print_undelivered

    try:
        if args.command == "sessions":
            asyncio.run(print_sessions(settings, as_json=args.json))
        else:
            session = None if args.session is None else session_token(args.session)
            asyncio.run(print_undelivered(settings, session, as_json=args.json))
    except NatsUnreachableError as exc:
        print(f"ackwire {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _top(_args: argparse.Namespace, settings: Settings) -> int:
    from ackwire.cli.bus import NatsUnreachableError
    from ackwire.cli.top import run_top

    try:
        asyncio.run(run_top(settings))
    except NatsUnreachableError as exc:
        print(f"ackwire top: {exc}", file=sys.stderr)
        return 1
    return 0


def _nats_url_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats-url", help="default: ACKWIRE_NATS_URL")


def _json(text: str) -> JsonValue:
    try:
        return json.loads(text)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _first_error(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"])
    return f"ACKWIRE_{field.upper()}: {first['msg']}"
