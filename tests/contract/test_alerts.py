"""The operators' alerts (imagegen/alerts.py): each rule fires on synthetic series that break
its promise and stays quiet on series that keep it (`promtool test rules`, Debian's
`prometheus` package, which ./dev installs); the committed PrometheusRule, dashboard and
ServiceMonitors are what the module generates; the lag ceilings are the ScaledObjects'.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagegen import alerts
from imagegen import k8s_monitoring as monitoring
from imagegen.alerts import SERVICES, Alert, job, lag_ceiling
from imagegen.k8s_generators import TIERS_FILE, tier_partitions
from schemas.topics import Tier, TopicNames

ROOT = Path(__file__).resolve().parents[2]
TEAM = {"team": "imagegen"}


def _labels(alert: Alert, **extra: str) -> dict[str, str]:
    return {**extra, "severity": alert.severity, **TEAM}


def _by_name() -> dict[str, Alert]:
    return {a.name: a for a in alerts.alerts()}


def _case(
    series: list[tuple[str, str]], checks: list[tuple[str, str, list[dict[str, str]]]]
) -> dict[str, Any]:
    """A promtool test: input series (name{labels}, values) and (time, alert, labels fired)."""
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": [
            {"eval_time": t, "alertname": name, "exp_alerts": [{"exp_labels": x} for x in fired]}
            for t, name, fired in checks
        ],
    }


def _budget_cases() -> list[dict[str, Any]]:
    warn, spent = _by_name()["ImagegenBudget80Percent"], _by_name()["ImagegenBudgetExhausted"]

    def spend(openai: int, fal: int) -> list[tuple[str, str]]:
        return [
            (
                'imagegen_analytics_spend_usd_today{provider="openai",model="gpt-image-1"}',
                f"{openai}x10",
            ),
            ('imagegen_analytics_spend_usd_today{provider="fal",model="flux-dev"}', f"{fal}x10"),
            ("imagegen_analytics_budget_usd_daily", "500x10"),
        ]

    return [
        # $410 of $500 (82%): the warning, not yet the exhausted alert.
        _case(spend(300, 110), [("5m", warn.name, [_labels(warn)]), ("5m", spent.name, [])]),
        # $390 (78%): neither.
        _case(spend(300, 90), [("5m", warn.name, []), ("5m", spent.name, [])]),
        # $510 (102%): both.
        _case(
            spend(400, 110),
            [("5m", warn.name, [_labels(warn)]), ("5m", spent.name, [_labels(spent)])],
        ),
    ]


def _images(outcome: str, per_minute: int, tier: str = "realtime") -> tuple[str, str]:
    labels = f'outcome="{outcome}",tier="{tier}",provider="fal",model="flux-dev",error_type=""'
    return f"imagegen_analytics_images_total{{{labels}}}", f"0+{per_minute}x40"


def _success_cases() -> list[dict[str, Any]]:
    rule = _by_name()["ImagegenSuccessRateLow"]
    return [
        # 90% stored, for longer than the rule's `for`.
        _case(
            [_images("completed", 9), _images("failed", 1), _images("requested", 10)],
            [("30m", rule.name, [_labels(rule)])],
        ),
        # 99% stored; the requested count (in flight) does not lower the rate.
        _case(
            [_images("completed", 99), _images("failed", 1), _images("requested", 200)],
            [("30m", rule.name, [])],
        ),
        # Nothing stored at all, only failures: 0%, not an empty result.
        _case([_images("failed", 2)], [("30m", rule.name, [_labels(rule)])]),
        # No traffic: no rate, no alert.
        _case([("imagegen_analytics_budget_usd_daily", "500x40")], [("30m", rule.name, [])]),
    ]


def _ttfi_cases() -> list[dict[str, Any]]:
    rule = _by_name()["ImagegenTimeToFirstImageSlow"]
    name = "imagegen_analytics_time_to_first_image_seconds_bucket"

    def buckets(tier: str, under_10: int, under_60: int) -> list[tuple[str, str]]:
        counts = {
            "10": under_10,
            "30": under_10,
            "60": under_10 + under_60,
            "+Inf": under_10 + under_60,
        }
        return [(f'{name}{{tier="{tier}",le="{le}"}}', f"0+{n}x40") for le, n in counts.items()]

    return [
        # Realtime: every first image between 30 and 60 s; economy: all under 10 s.
        _case(
            [*buckets("realtime", 0, 10), *buckets("economy", 10, 0)],
            [("30m", rule.name, [_labels(rule, tier="realtime")])],
        ),
        # 97 of 100 under 10 s: p95 is under 10 s.
        _case([*buckets("realtime", 97, 3)], [("30m", rule.name, [])]),
    ]


def _dead_letter_cases() -> list[dict[str, Any]]:
    rule = _by_name()["ImagegenDeadLettersGrowing"]
    series = (
        'imagegen_dead_letters_total{job="imagegen-storage",instance="10.0.0.7:8081",'
        'topic="imagegen.images.processed.v1",error_type="PoisonMessageError"}'
    )
    fired = _labels(rule, job="imagegen-storage", topic="imagegen.images.processed.v1")
    return [
        _case([(series, "0 0 0 1 1 1 1 1 1 1")], [("6m", rule.name, [fired])]),
        # Dead letters from long ago, none since: quiet.
        _case([(series, "3x40")], [("30m", rule.name, [])]),
    ]


def _lag_cases(tier: Tier) -> list[dict[str, Any]]:
    rule = _by_name()[f"ImagegenLag{tier.value.capitalize()}BeyondKeda"]
    topic = TopicNames().jobs(tier)
    ceiling = lag_ceiling(tier)
    partitions = tier_partitions()[tier]

    def lag(total: int, group: str = "imagegen.generator") -> list[tuple[str, str]]:
        per, extra = divmod(total, partitions)
        return [
            (
                f'kafka_consumergroup_lag{{consumergroup="{group}",topic="{topic}",'
                f'partition="{p}"}}',
                f"{per + (1 if p < extra else 0)}x40",
            )
            for p in range(partitions)
        ]

    return [
        _case(lag(ceiling + 8), [("15m", rule.name, [_labels(rule, topic=topic)])]),
        # At the ceiling KEDA still keeps up; another group's lag is not the generators'.
        _case([*lag(ceiling), *lag(10 * ceiling, "someone-else")], [("15m", rule.name, [])]),
    ]


def _service_cases(service: str) -> list[dict[str, Any]]:
    rule = _by_name()[f"Imagegen{service.capitalize()}NotReady"]

    def up(n: int, ready: str = "true") -> str:
        return f'up{{job="{job(service)}",instance="10.0.0.{n}:8081",ready="{ready}"}}'

    return [
        # Every instance down.
        _case(
            [(up(1), "0x20"), (up(2), "1 1 0x18")],
            [("10m", rule.name, [_labels(rule)])],
        ),
        # Scraped, but failing its readiness probe (the one ready pod went down).
        _case(
            [(up(1, "false"), "1x20"), (up(2), "1 1 0x18")],
            [("10m", rule.name, [_labels(rule)])],
        ),
        # No target at all (pods gone, or the ServiceMonitor selects nothing).
        _case(
            [('up{job="imagegen-other",ready="true"}', "1x20")],
            [("10m", rule.name, [_labels(rule, job=job(service), ready="true")])],
        ),
        # One of two instances ready and up is still a ready service.
        _case(
            [(up(1, "false"), "1x20"), (up(2), "1x20")],
            [("10m", rule.name, [])],
        ),
    ]


def test_cases() -> list[dict[str, Any]]:
    return [
        *_budget_cases(),
        *_success_cases(),
        *_ttfi_cases(),
        *_dead_letter_cases(),
        *(case for tier in Tier for case in _lag_cases(tier)),
        *(case for service in SERVICES for case in _service_cases(service)),
    ]


test_cases.__test__ = False  # type: ignore[attr-defined]  # a builder, not a test


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool not found: install Debian's `prometheus` package (./dev does, as root"
            " with apt) to test the alerting rules"
        )
    return found


def test_every_alert_fires_on_broken_promises_and_not_on_kept_ones(tmp_path: Path) -> None:
    cases = test_cases()
    tested = {check["alertname"] for case in cases for check in case["alert_rule_test"]}
    assert tested == set(_by_name()), "every alert has its promtool cases"
    # Each alert is tested both firing and quiet.
    firing = {c["alertname"] for case in cases for c in case["alert_rule_test"] if c["exp_alerts"]}
    quiet = {
        c["alertname"] for case in cases for c in case["alert_rule_test"] if not c["exp_alerts"]
    }
    assert firing == quiet == set(_by_name())
    # The rules under test are the generated ones without annotations (promtool would
    # compare their rendered text too); `promtool check rules` checks those templates.
    groups = alerts.rule_groups()
    for rule in groups["groups"][0]["rules"]:
        del rule["annotations"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": cases}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    run = subprocess.run(
        [_promtool(), "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_committed_rules_pass_promtool_check(tmp_path: Path) -> None:
    committed = yaml.safe_load((ROOT / monitoring.RULES_FILE).read_text())
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(committed["spec"]))
    run = subprocess.run(
        [_promtool(), "check", "rules", str(tmp_path / "rules.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_committed_monitoring_files_are_generated() -> None:
    assert (ROOT / monitoring.RULES_FILE).read_text() == monitoring.prometheus_rule_yaml()
    assert (
        ROOT / monitoring.SERVICE_MONITORS_FILE
    ).read_text() == monitoring.service_monitors_yaml()
    assert (ROOT / monitoring.DASHBOARD_FILE).read_text() == monitoring.dashboard_json()
    configmap = yaml.safe_load((ROOT / monitoring.DASHBOARD_CONFIGMAP_FILE).read_text())
    assert configmap["data"]["imagegen.json"] == monitoring.dashboard_json()


def test_the_dashboard_graphs_each_alert_with_its_threshold() -> None:
    board = json.loads((ROOT / monitoring.DASHBOARD_FILE).read_text())
    panels = {p["targets"][0]["expr"]: p for p in board["panels"]}
    for alert in alerts.alerts():
        panel = panels[alert.series]
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert alert.threshold in [s["value"] for s in steps], alert.name
        assert alert.name in panel["title"]


def test_lag_ceilings_are_what_the_scaledobjects_can_absorb() -> None:
    scaled = [
        d
        for d in yaml.safe_load_all((ROOT / TIERS_FILE).read_text())
        if d and d["kind"] == "ScaledObject"
    ]
    rules = {r["alert"]: r for r in alerts.rule_groups()["groups"][0]["rules"]}
    for obj in scaled:
        [trigger] = obj["spec"]["triggers"]
        tier = trigger["metadata"]["topic"].split(".")[-2]
        ceiling = int(trigger["metadata"]["lagThreshold"]) * obj["spec"]["maxReplicaCount"]
        rule = rules[f"ImagegenLag{tier.capitalize()}BeyondKeda"]
        assert rule["expr"].endswith(f" > {ceiling}"), rule["expr"]
        assert trigger["metadata"]["consumerGroup"] in rule["expr"]


def test_a_service_monitor_per_service_with_its_job() -> None:
    docs = [
        d for d in yaml.safe_load_all((ROOT / monitoring.SERVICE_MONITORS_FILE).read_text()) if d
    ]
    assert [d["metadata"]["name"] for d in docs] == list(SERVICES)
    for doc in docs:
        [endpoint] = doc["spec"]["endpoints"]
        relabel = endpoint["relabelings"]
        assert {"targetLabel": "job", "replacement": job(doc["metadata"]["name"])} in relabel
        ready = {"sourceLabels": ["__meta_kubernetes_endpoint_ready"], "targetLabel": "ready"}
        assert ready in relabel
