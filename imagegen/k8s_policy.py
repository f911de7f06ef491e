"""What every built overlay must honour beyond the schemas: the deployment contract.

Each check returns problems as readable lines (empty: fine), so CI and `imagegen k8s check`
report every violation at once.
"""

from __future__ import annotations

import re
from typing import Any

from imagegen.kustomize import Resource, split_image
from schemas.topics import DEFAULT_NAMESPACE, Tier, TopicNames

TIERS_ENV = "IMAGEGEN_GENERATOR_TIERS"
COMPONENT = "app.kubernetes.io/component"

# How long a pod may need after SIGTERM to drain (stop fetching, finish the message in
# hand, commit): the generator's longest image (a large many-step image on a slow GPU)
# and, for the other consumers, one message of seconds with a wide margin.
DRAIN_SECONDS = {"generator": 60.0, "default": 30.0}
_SECRETISH = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|DATABASE_URL)", re.IGNORECASE)
# A file's path is no secret (IMAGEGEN_KAFKA_SSL_KEY_LOCATION: the key is in a mounted Secret).
_A_PATH = re.compile(r"_LOCATION$")
MONITORING_NAMESPACE = "monitoring"
HEALTH_PORT = 8081
ANALYTICS_PORT = 8010
ANALYTICS_SOURCES = (
    {"kubernetes.io/metadata.name": MONITORING_NAMESPACE},
    {"imagegen.io/analytics-access": "true"},
)
"""Who may reach the analytics API, page and /metrics: Prometheus and labelled namespaces."""


def _kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def _pod(deployment: Resource) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def _config(resources: list[Resource]) -> dict[str, str]:
    data: dict[str, str] = {}
    for cm in _kind(resources, "ConfigMap"):
        data.update(cm.get("data", {}))
    return data


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    match = selector.get("matchLabels", {})
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value = labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and value in expr["values"]:
            return False
    return True


def check_workloads(resources: list[Resource]) -> list[str]:
    """Probes, resources, security context, secrets by reference, graceful termination, PDBs."""
    problems: list[str] = []
    config = _config(resources)
    pdbs = _kind(resources, "PodDisruptionBudget")
    config_maps = {cm["metadata"]["name"] for cm in _kind(resources, "ConfigMap")}
    for dep in _kind(resources, "Deployment"):
        name = dep["metadata"]["name"]
        pod = _pod(dep)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        where = f"Deployment/{name}"
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken must be false")
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or not psc.get("runAsUser"):
            problems.append(f"{where}: pod must run as a non-root uid")
        if not any(_selects(p["spec"]["selector"], labels) for p in pdbs):
            problems.append(f"{where}: no PodDisruptionBudget selects its pods")
        # By component: the per-tier generators (generator-realtime, ...) drain as one.
        drain = DRAIN_SECONDS.get(labels.get(COMPONENT, name), DRAIN_SECONDS["default"])
        if name == "gateway":
            drain = float(config.get("IMAGEGEN_SHUTDOWN_TIMEOUT_S", "10"))
        for container in pod["containers"]:
            cwhere = f"{where} container {container['name']}"
            pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
            sleep = pre_stop.get("command", ["", "0"])
            drain_total = drain + (float(sleep[-1]) if sleep[0] == "sleep" else 0.0)
            if pod.get("terminationGracePeriodSeconds", 30) <= drain_total:
                problems.append(f"{cwhere}: terminationGracePeriodSeconds <= drain {drain_total}s")
            for probe in ("livenessProbe", "readinessProbe"):
                if "httpGet" not in container.get(probe, {}):
                    problems.append(f"{cwhere}: no HTTP {probe}")
            paths = {
                container.get(p, {}).get("httpGet", {}).get("path")
                for p in ("livenessProbe", "startupProbe")
            }
            if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
                problems.append(f"{cwhere}: readiness must probe /readyz")
            if paths - {"/healthz", None} or "/healthz" not in paths:
                problems.append(f"{cwhere}: liveness/startup must probe /healthz")
            res = container.get("resources", {})
            if not {"cpu", "memory"} <= set(res.get("requests", {})):
                problems.append(f"{cwhere}: cpu and memory requests are required")
            if "memory" not in res.get("limits", {}):
                problems.append(f"{cwhere}: a memory limit is required")
            csc = container.get("securityContext", {})
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cwhere}: allowPrivilegeEscalation must be false")
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cwhere}: the root filesystem must be read-only")
            if "ALL" not in csc.get("capabilities", {}).get("drop", []):
                problems.append(f"{cwhere}: capabilities must drop ALL")
            _, tag, _digest = split_image(container["image"])
            if tag == "latest":
                problems.append(f"{cwhere}: image tag 'latest' is not reproducible")
            for env in container.get("env", []):
                secretish = _SECRETISH.search(env["name"]) and not _A_PATH.search(env["name"])
                if secretish and "value" in env:
                    problems.append(f"{cwhere}: {env['name']} must come from a Secret")
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref is not None and ref not in config_maps:
                    problems.append(f"{cwhere}: ConfigMap {ref} is not in the build")
    for cm in _kind(resources, "ConfigMap"):
        for key in cm.get("data", {}):
            if _SECRETISH.search(key) and not _A_PATH.search(key):
                problems.append(f"ConfigMap/{cm['metadata']['name']}: {key} belongs in a Secret")
    if _kind(resources, "Secret"):
        problems.append("Secrets are created by the operator, never committed")
    return problems


def check_network_policies(resources: list[Resource]) -> list[str]:
    """Default deny; only the gateway takes ingress; workers only Prometheus on 8081; the
    analytics API on 8010 only from Prometheus and namespaces labelled for analysts."""
    problems: list[str] = []
    policies = _kind(resources, "NetworkPolicy")
    if not any(
        p["spec"]["podSelector"] == {} and {"Ingress", "Egress"} <= set(p["spec"]["policyTypes"])
        for p in policies
    ):
        problems.append("no default-deny NetworkPolicy (empty podSelector, Ingress and Egress)")
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in _kind(resources, "Deployment")
    }
    for policy in policies:
        name = policy["metadata"]["name"]
        selected = {
            n for n, labels in pods.items() if _selects(policy["spec"]["podSelector"], labels)
        }
        for rule in policy["spec"].get("ingress", []):
            if selected <= {"gateway"}:
                continue
            sources = rule.get("from", [])
            ports = [p.get("port") for p in rule.get("ports", [])]
            monitoring_only = bool(sources) and all(
                s.get("namespaceSelector", {}).get("matchLabels")
                == {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}
                for s in sources
            )
            analytics_only = (
                selected <= {"analytics"}
                and ports == [ANALYTICS_PORT]
                and bool(sources)
                and all(
                    s.get("namespaceSelector", {}).get("matchLabels") in ANALYTICS_SOURCES
                    and "podSelector" not in s
                    for s in sources
                )
            )
            if analytics_only:
                continue
            if not monitoring_only or ports != [HEALTH_PORT]:
                problems.append(
                    f"NetworkPolicy/{name}: lets ingress reach {sorted(selected)}; only the "
                    f"gateway takes ingress (workers: port {HEALTH_PORT} from "
                    f"{MONITORING_NAMESPACE})"
                )
    return problems


def generators(resources: list[Resource]) -> list[Resource]:
    """The generator Deployments (the all-tier one, or one per tier)."""
    return [
        d
        for d in _kind(resources, "Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get(COMPONENT) == "generator"
    ]


def served_tiers(resources: list[Resource], deployment: Resource) -> tuple[set[Tier], list[str]]:
    """The tiers a generator Deployment's pods consume (`IMAGEGEN_GENERATOR_TIERS`), and
    problems with the value; unset or empty means every tier, as in the generator."""
    config_maps = {
        cm["metadata"]["name"]: cm.get("data", {}) for cm in _kind(resources, "ConfigMap")
    }
    value = ""
    for container in _pod(deployment)["containers"]:
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef", {}).get("name")
            value = config_maps.get(ref, {}).get(TIERS_ENV, value)
        for env in container.get("env", []):
            if env["name"] == TIERS_ENV:
                value = env.get("value", "")
    names = [n.strip() for n in str(value).split(",") if n.strip()]
    known = {t.value: t for t in Tier}
    problems = [
        f"Deployment/{deployment['metadata']['name']}: {TIERS_ENV} names unknown tier {n!r}"
        for n in names
        if n not in known
    ]
    tiers = {known[n] for n in names if n in known}
    return (tiers or set(Tier)), problems


def check_generator_tiers(resources: list[Resource]) -> list[str]:
    """Every tier topic is consumed by some generator Deployment; tier names are known."""
    problems: list[str] = []
    served: set[Tier] = set()
    for deployment in generators(resources):
        tiers, bad = served_tiers(resources, deployment)
        served |= tiers
        problems += bad
    missing = sorted(t.value for t in set(Tier) - served)
    if missing:
        problems.append(
            f"no generator Deployment consumes tier(s) {missing}: their jobs would wait"
        )
    return problems


def check_autoscaling(resources: list[Resource], consumer_group: str) -> list[str]:
    """KEDA triggers read the generator's group on real topics; max never above partitions;
    each ScaledObject scales a Deployment whose pods consume exactly its triggers' tiers."""
    problems: list[str] = []
    config = _config(resources)
    topics = TopicNames(config.get("IMAGEGEN_KAFKA_NAMESPACE", DEFAULT_NAMESPACE))
    tier_of = {topics.jobs(t): t for t in Tier}
    partitions = {
        t["spec"]["topicName"]: t["spec"]["partitions"] for t in _kind(resources, "KafkaTopic")
    }
    deployments = {d["metadata"]["name"]: d for d in _kind(resources, "Deployment")}
    for so in _kind(resources, "ScaledObject"):
        where = f"ScaledObject/{so['metadata']['name']}"
        spec = so["spec"]
        target = deployments.get(spec["scaleTargetRef"]["name"])
        if target is None:
            problems.append(f"{where}: scales {spec['scaleTargetRef']['name']}, not in the build")
        if spec.get("minReplicaCount", 0) > spec["maxReplicaCount"]:
            problems.append(f"{where}: minReplicaCount above maxReplicaCount")
        trigger_tiers: set[Tier] = set()
        for trigger in spec["triggers"]:
            meta = trigger["metadata"]
            topic = meta.get("topic", "")
            if topic in tier_of:
                trigger_tiers.add(tier_of[topic])
            if topic not in partitions:
                problems.append(f"{where}: trigger topic {topic!r} has no KafkaTopic")
            elif spec["maxReplicaCount"] > partitions[topic]:
                problems.append(
                    f"{where}: maxReplicaCount {spec['maxReplicaCount']} > {partitions[topic]} "
                    f"partitions of {topic}: extra pods would idle"
                )
            if meta.get("consumerGroup") != consumer_group:
                problems.append(
                    f"{where}: consumerGroup {meta.get('consumerGroup')!r} "
                    f"is not {consumer_group!r}"
                )
            if meta.get("bootstrapServers") != config.get("IMAGEGEN_KAFKA_BOOTSTRAP"):
                problems.append(f"{where}: bootstrapServers differ from IMAGEGEN_KAFKA_BOOTSTRAP")
        if target is not None and trigger_tiers:
            served, _ = served_tiers(resources, target)
            if served != trigger_tiers:
                problems.append(
                    f"{where}: triggers on tier(s) {sorted(t.value for t in trigger_tiers)} but "
                    f"Deployment/{target['metadata']['name']} consumes "
                    f"{sorted(t.value for t in served)} ({TIERS_ENV})"
                )
            if Tier.REALTIME in served and spec.get("minReplicaCount", 0) < 1:
                problems.append(
                    f"{where}: serves realtime with minReplicaCount < 1: interactive jobs "
                    f"would wait for a cold start"
                )
    for hpa in _kind(resources, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] not in deployments:
            problems.append(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: target missing")
    return problems


def generator_gpu_problems(resources: list[Resource]) -> list[str]:
    """Every generator requests one GPU, tolerates the GPU taint and selects GPU nodes."""
    gens = generators(resources)
    if not gens:
        return ["no generator Deployment"]
    problems = []
    for gen in gens:
        name = gen["metadata"]["name"]
        pod = _pod(gen)
        for container in pod["containers"]:
            res = container.get("resources", {})
            if str(res.get("limits", {}).get("nvidia.com/gpu")) != "1":
                problems.append(
                    f"{name} container {container['name']}: no nvidia.com/gpu limit of 1"
                )
        if not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])):
            problems.append(f"{name}: no toleration for the nvidia.com/gpu taint")
        if not pod.get("nodeSelector"):
            problems.append(f"{name}: no nodeSelector for GPU nodes")
    return problems
