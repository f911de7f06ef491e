"""`imagegen`: the entry point for people (`imagegen up`, `imagegen token …`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _cmd_up(args: argparse.Namespace) -> int:
    from imagegen.stack.demo import run_demo
    from imagegen.stack.local import StackOptions, run_stack

    options = StackOptions(
        data_dir=Path(args.data_dir),
        gateway_port=args.gateway_port,
        kafka_port=args.kafka_port,
        s3_port=args.s3_port,
        pg_port=args.pg_port,
        database=args.database,
        namespace=args.namespace,
        backend=args.backend,
        model=args.model,
        restart=not args.no_restart,
    )
    hooks: list[object] = [run_demo] if args.demo else []
    return run_stack(options, on_ready=hooks)


def _cmd_token(args: argparse.Namespace) -> int:
    from imagegen.stack.local import StackSecrets
    from services.gateway.auth import issue_token

    secret = os.environ.get("IMAGEGEN_JWT_SECRET")
    if not secret:
        path = Path(args.data_dir) / "secrets.json"
        if not path.exists():
            print(
                f"error: no IMAGEGEN_JWT_SECRET and no {path}; run `imagegen up` first",
                file=sys.stderr,
            )
            return 2
        secret = StackSecrets.load_or_create(Path(args.data_dir)).jwt_secret
    print(issue_token(secret, args.user, args.tier, ttl=args.ttl))
    return 0


def _cmd_k8s_topics(args: argparse.Namespace) -> int:
    from imagegen.k8s import kafka_topics_yaml

    print(kafka_topics_yaml(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagegen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole local stack until Ctrl-C")
    up.add_argument("--data-dir", default=".data", help="where everything persists")
    up.add_argument("--gateway-port", type=int, default=8000)
    up.add_argument("--kafka-port", type=int, default=9092)
    up.add_argument("--s3-port", type=int, default=8333)
    up.add_argument(
        "--pg-port",
        type=int,
        default=5432,
        help="use PostgreSQL on this port if one answers, else start an embedded one",
    )
    up.add_argument("--database", default="imagegen")
    up.add_argument("--namespace", default="imagegen", help="topic name prefix")
    up.add_argument("--backend", default="demo", choices=["demo", "diffusers"])
    up.add_argument("--model", help="diffusers model id or local path")
    up.add_argument("--demo", action="store_true", help="run a 5-image pack once ready")
    up.add_argument("--no-restart", action="store_true", help="do not restart crashed services")
    up.set_defaults(func=_cmd_up)

    token = sub.add_parser("token", help="print a dev bearer token")
    token.add_argument("--user", required=True)
    token.add_argument("--tier", choices=["paid", "free"], default="free")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="seconds")
    token.add_argument("--data-dir", default=".data")
    token.set_defaults(func=_cmd_token)

    topics = sub.add_parser("k8s-topics", help="print Strimzi KafkaTopic resources")
    topics.set_defaults(func=_cmd_k8s_topics)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
