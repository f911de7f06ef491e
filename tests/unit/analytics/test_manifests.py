"""The analytics Deployment's changelog topics match what the service declares itself."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.analytics.app import events_partitions
from services.analytics.changelogs import changelog_specs
from services.analytics.settings import AnalyticsSettings

MANIFEST = Path(__file__).resolve().parents[3] / "deploy/k8s/base/analytics.yaml"


def test_changelog_topics_in_the_manifest_equal_the_declared_ones() -> None:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    topics = {
        d["spec"]["topicName"]: (d["spec"]["partitions"], d["spec"]["config"])
        for d in docs
        if d["kind"] == "KafkaTopic"
    }
    settings = AnalyticsSettings(_env_file=None)
    declared = {
        s.name: (s.partitions, s.configs)
        for s in changelog_specs(settings, events_partitions(settings))
    }
    assert topics == declared
    [user] = [d for d in docs if d["kind"] == "KafkaUser"]
    prefixes = {
        (a["resource"]["type"], a["resource"].get("name"))
        for a in user["spec"]["authorization"]["acls"]
        if a["resource"].get("patternType") == "prefix"
    }
    # faust names its internal topics after the app id.
    assert prefixes == {("topic", "imagegen.analytics-")}
    assert all(name.startswith("imagegen.analytics-") for name in declared)
