"""`imagegen`: the entry point for people (`imagegen up`, `imagegen token …`, `imagegen dlq …`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.topics import TopicNames

if TYPE_CHECKING:
    from imagegen.kafka.redrive import DeadLetter, RedriveResult
    from imagegen.settings import KafkaSettings


def _cmd_up(args: argparse.Namespace) -> int:
    from imagegen.stack.demo import run_demo
    from imagegen.stack.local import StackOptions, run_stack

    options = StackOptions(
        data_dir=Path(args.data_dir),
        gateway_port=args.gateway_port,
        analytics_port=args.analytics_port,
        kafka_port=args.kafka_port,
        s3_port=args.s3_port,
        pg_port=args.pg_port,
        database=args.database,
        namespace=args.namespace,
        backend=args.backend,
        model=args.model,
        restart=not args.no_restart,
        broker=args.broker,
        broker_storage=args.broker_storage,
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
                f"error: no IMAGEGEN_JWT_SECRET and no {path}; run `imagegen up` first, or,"
                " if the stack runs with another --data-dir, pass the same"
                " `--data-dir DIR` here (or set IMAGEGEN_JWT_SECRET)",
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


def _cmd_k8s(args: argparse.Namespace) -> int:
    from imagegen import k8s
    from imagegen.kustomize import build, to_yaml

    root = Path(args.root)
    if args.k8s_command == "generate":
        for path, generate in k8s.GENERATED_FILES.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(generate(root))
            print(f"wrote {path}")
        return 0
    if args.k8s_command == "build":
        print(to_yaml(build(root / k8s.OVERLAYS_DIR / args.overlay)), end="")
        return 0
    failed = False
    for path in k8s.drifted_files(root):
        print(f"DRIFT {path}: run `imagegen k8s generate`")
        failed = True
    overlays = args.overlay or sorted(p.name for p in (root / k8s.OVERLAYS_DIR).iterdir())
    for overlay in overlays:
        problems = k8s.check_overlay(root, overlay)
        for problem in problems:
            print(f"ERROR {overlay}: {problem}")
        print(f"{overlay}: {'FAILED' if problems else 'ok'}")
        failed = failed or bool(problems)
    return 1 if failed else 0


def _cmd_asyncapi(args: argparse.Namespace) -> int:
    from imagegen.asyncapi import render

    text = render()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0


def _dlq_where(args: argparse.Namespace) -> tuple[KafkaSettings, str]:
    """Broker settings (security included) and dead-letter topic: flags first, then
    `IMAGEGEN_KAFKA_*`."""
    from imagegen.settings import KafkaSettings

    kafka = KafkaSettings(**({"bootstrap": args.bootstrap} if args.bootstrap else {}))
    topics = TopicNames(args.namespace or kafka.namespace)
    return kafka, topics.dead_letter


def _refused(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def _cmd_dlq_list(args: argparse.Namespace) -> int:
    from imagegen.errors import BrokerAccessError
    from imagegen.kafka.redrive import load
    from imagegen.kafka.security import watched_config

    kafka, topic = _dlq_where(args)
    try:
        loaded = load(
            kafka.bootstrap, topic, idle_timeout=args.idle_timeout, extra=watched_config(kafka)
        )
    except BrokerAccessError as exc:
        return _refused(exc)
    letters = [d for d in loaded if args.topic is None or d.original_topic == args.topic]
    if args.json:
        for d in letters:
            print(json.dumps(_dlq_row(d)))
        return 0
    print(f"{len(letters)} dead letter(s) in {topic}")
    for d in letters:
        row = _dlq_row(d)
        status = f"redriven {row['redriven_at']}" if row["redriven_at"] else "pending"
        message = (row["error_message"] or "")[:200]
        print(
            f"{row['id']:>8}  {row['original'] or '?'}  key={row['key']}  {status}\n"
            f"          {row['failed_at']} {row['error_type']}: {message}"
        )
    return 0


def _dlq_row(letter: DeadLetter) -> dict[str, str | None]:
    info = letter.info
    return {
        "id": letter.id,
        "original": letter.origin,
        "original_topic": letter.original_topic,
        "key": letter.record.key,
        "error_type": info.error_type if info else None,
        "error_message": info.error_message if info else "(no dead-letter headers)",
        "failed_by": info.failed_by if info else None,
        "failed_at": info.failed_at if info else None,
        "redriven_at": letter.redriven_at,
    }


def _cmd_dlq_redrive(args: argparse.Namespace) -> int:
    import asyncio
    import getpass

    from imagegen.errors import BrokerAccessError, PermanentError
    from imagegen.kafka.confluent import KafkaPublisher
    from imagegen.kafka.redrive import load, redrive, select
    from imagegen.kafka.security import watched_config

    kafka, topic = _dlq_where(args)
    try:
        letters = load(
            kafka.bootstrap, topic, idle_timeout=args.idle_timeout, extra=watched_config(kafka)
        )
        chosen = select(letters, ids=args.id or (), topic=args.topic, everything=args.all)
    except (PermanentError, BrokerAccessError) as exc:
        return _refused(exc)

    async def republish() -> RedriveResult:
        publisher = KafkaPublisher(kafka.bootstrap, "imagegen-dlq", watched_config(kafka))
        try:
            return await redrive(
                publisher, topic, chosen, by=f"{getpass.getuser()}@cli", force=args.force
            )
        finally:
            await publisher.close()

    try:
        result = asyncio.run(republish())
    except BrokerAccessError as exc:  # a missing Write ACL on the original topic
        return _refused(exc)
    for d in result.redriven:
        print(f"redriven {d.id} -> {d.original_topic} (was {d.origin})")
    for d, reason in result.refused:
        print(f"refused {d.id}: {reason}", file=sys.stderr)
    print(f"{len(result.redriven)} redriven, {len(result.refused)} refused")
    return 1 if result.refused and not result.redriven else 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    import asyncio

    from imagegen.operations import MIGRATION_MODULES, migrate_all
    from imagegen.settings import ServiceSettings

    schemas = args.schema or list(MIGRATION_MODULES)
    versions = asyncio.run(migrate_all(ServiceSettings(), schemas))
    for schema, version in versions.items():
        print(f"{schema}: version {version}")
    return 0


def _cmd_storage_cleanup(args: argparse.Namespace) -> int:
    import asyncio
    from datetime import timedelta

    from imagegen.operations import storage_cleanup
    from services.storage.bucket_lifecycle import DELETED_STORY_RETENTION
    from services.storage.settings import StorageSettings

    settings = StorageSettings()
    lines = asyncio.run(
        storage_cleanup(
            settings,
            older_than=timedelta(hours=args.older_than),
            dry_run=args.dry_run,
            retain_deleted_stories=(
                DELETED_STORY_RETENTION if settings.retain_deleted_stories else None
            ),
        )
    )
    print("\n".join(lines))
    return 0


def _cmd_storage_lifecycle(args: argparse.Namespace) -> int:
    from imagegen.operations import LifecycleRefused, storage_lifecycle_apply
    from imagegen.settings import ServiceSettings
    from services.storage.bucket_lifecycle import configuration

    skip = frozenset(args.skip or ())
    try:
        if args.print:
            print(json.dumps(configuration(skip), indent=2))
            return 0
        print("\n".join(storage_lifecycle_apply(ServiceSettings(), skip=skip)))
    except (LifecycleRefused, ValueError) as exc:
        return _refused(exc)
    return 0


def _cmd_models_download(args: argparse.Namespace) -> int:
    from imagegen.models import run_download

    return run_download(args.model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagegen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole local stack until Ctrl-C")
    up.add_argument("--data-dir", default=".data", help="where everything persists")
    up.add_argument("--gateway-port", type=int, default=8000)
    up.add_argument(
        "--analytics-port", type=int, default=8010, help="the analytics API, metrics and page"
    )
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
    up.add_argument(
        "--backend",
        default="demo",
        choices=["demo", "diffusers", "instant"],
        help="demo: offline DCGAN faces; diffusers: --model; instant: solid colours, no compute"
        " (orchestration benchmarks)",
    )
    up.add_argument("--model", help="diffusers model id or local path")
    up.add_argument("--demo", action="store_true", help="run a 5-image pack once ready")
    up.add_argument("--no-restart", action="store_true", help="do not restart crashed services")
    up.add_argument(
        "--broker",
        default="auto",
        choices=["auto", "kafka", "tansu"],
        help="kafka: Apache Kafka (KRaft; needs Java 17+, jars fetched once with Maven);"
        " tansu: the no-JVM fallback; auto (default): kafka where a JDK 17+ is found",
    )
    up.add_argument(
        "--broker-storage",
        default="s3",
        choices=["s3", "memory"],
        help="Tansu only. s3: it keeps its log in the object store and survives restarts;"
        " memory: lost when the stack stops (cheaper: benchmarks of the services alone)",
    )
    up.set_defaults(func=_cmd_up)

    token = sub.add_parser("token", help="print a dev bearer token")
    token.add_argument("--user", required=True)
    token.add_argument("--tier", choices=["paid", "free"], default="free")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="seconds")
    token.add_argument("--data-dir", default=".data")
    token.set_defaults(func=_cmd_token)

    topics = sub.add_parser("k8s-topics", help="print Strimzi KafkaTopic resources")
    topics.set_defaults(func=_cmd_k8s_topics)

    kube = sub.add_parser("k8s", help="Kubernetes manifests: generate, build an overlay, check")
    kube.add_argument("--root", default=".", help="repository root (default: .)")
    kube_sub = kube.add_subparsers(dest="k8s_command", required=True)
    kube_sub.add_parser("generate", help="rewrite the files generated from the topic registry")
    kube_build = kube_sub.add_parser("build", help="print an overlay, as `kustomize build` does")
    kube_build.add_argument("overlay", help="dev or prod")
    kube_check = kube_sub.add_parser(
        "check", help="drift, Kubernetes/CRD schemas and deployment policy of every overlay"
    )
    kube_check.add_argument("overlay", nargs="*", help="only these overlays")
    kube.set_defaults(func=_cmd_k8s)

    asyncapi = sub.add_parser("asyncapi", help="print the AsyncAPI document of every topic")
    asyncapi.add_argument("--output", help="write it to this file (docs/asyncapi.yaml)")
    asyncapi.set_defaults(func=_cmd_asyncapi)

    dlq = sub.add_parser("dlq", help="list and re-drive dead-lettered messages")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, helptext, func in (
        ("list", "show dead letters: origin, key, error, time, re-drive status", _cmd_dlq_list),
        ("redrive", "republish dead letters to the topic they failed on", _cmd_dlq_redrive),
    ):
        cmd = dlq_sub.add_parser(name, help=helptext)
        cmd.add_argument("--bootstrap", help="broker (default: IMAGEGEN_KAFKA_BOOTSTRAP)")
        cmd.add_argument("--namespace", help="topic prefix (default: IMAGEGEN_KAFKA_NAMESPACE)")
        cmd.add_argument("--topic", help="only dead letters from this original topic")
        cmd.add_argument(
            "--idle-timeout",
            type=float,
            default=3.0,
            help="stop reading after this many seconds without a message",
        )
        cmd.set_defaults(func=func)
        if name == "list":
            cmd.add_argument("--json", action="store_true", help="one JSON object per line")
        else:
            which = cmd.add_mutually_exclusive_group(required=True)
            which.add_argument("--id", action="append", help="dead letter id (repeatable)")
            which.add_argument("--all", action="store_true", help="every pending dead letter")
            cmd.add_argument("--force", action="store_true", help="re-drive again if done before")

    mig = sub.add_parser("migrate", help="apply every service's database migrations")
    mig.add_argument(
        "--schema",
        action="append",
        choices=["gateway", "scheduler", "generator", "postprocess", "storage"],
        help="only this service's schema (repeatable; default: all)",
    )
    mig.set_defaults(func=_cmd_migrate)

    storage = sub.add_parser("storage", help="storage maintenance")
    storage_sub = storage.add_subparsers(dest="storage_command", required=True)
    clean = storage_sub.add_parser(
        "cleanup",
        help="remove old staging objects, final objects no image row points at, and images"
        " of deleted characters/stories",
    )
    clean.add_argument("--dry-run", action="store_true", help="only report what would go")
    clean.add_argument("--older-than", type=float, default=24.0, help="hours (default 24)")
    clean.set_defaults(func=_cmd_storage_cleanup)
    life = storage_sub.add_parser("lifecycle", help="the bucket's lifecycle rules")
    life_sub = life.add_subparsers(dest="lifecycle_command", required=True)
    apply = life_sub.add_parser(
        "apply",
        help="write the declared rules (services/storage/bucket_lifecycle.py) to the bucket",
    )
    apply.add_argument(
        "--skip", action="append", help="leave out this rule id (one this S3 lacks; repeatable)"
    )
    apply.add_argument("--print", action="store_true", help="print the document, write nothing")
    apply.set_defaults(func=_cmd_storage_lifecycle)

    models = sub.add_parser("models", help="model weights for self-hosted generators")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    fetch = models_sub.add_parser(
        "download", help="fetch the configured model(s) into the Hugging Face cache"
    )
    fetch.add_argument(
        "--model",
        action="append",
        help="hub id or local path (repeatable; default: IMAGEGEN_GENERATOR_MODEL + IP-Adapter)",
    )
    fetch.set_defaults(func=_cmd_models_download)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
