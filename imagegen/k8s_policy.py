"""What every built overlay must honour beyond the schemas: the deployment contract.

Each check returns problems as readable lines (empty: fine), so CI and `imagegen k8s check`
report every violation at once.
"""

from __future__ import annotations

import re
from typing import Any

from imagegen.kustomize import Resource, split_image

# How long a pod may need after SIGTERM to drain (stop fetching, finish the message in
# hand, commit): the generator's longest image (a large many-step image on a slow GPU)
# and, for the other consumers, one message of seconds with a wide margin.
DRAIN_SECONDS = {"generator": 60.0, "default": 30.0}
_SECRETISH = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|DATABASE_URL)", re.IGNORECASE)
MONITORING_NAMESPACE = "monitoring"
HEALTH_PORT = 8081


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
        drain = DRAIN_SECONDS.get(name, DRAIN_SECONDS["default"])
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
                if _SECRETISH.search(env["name"]) and "value" in env:
                    problems.append(f"{cwhere}: {env['name']} must come from a Secret")
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref is not None and ref not in config_maps:
                    problems.append(f"{cwhere}: ConfigMap {ref} is not in the build")
    for cm in _kind(resources, "ConfigMap"):
        for key in cm.get("data", {}):
            if _SECRETISH.search(key):
                problems.append(f"ConfigMap/{cm['metadata']['name']}: {key} belongs in a Secret")
    if _kind(resources, "Secret"):
        problems.append("Secrets are created by the operator, never committed")
    return problems


def check_network_policies(resources: list[Resource]) -> list[str]:
    """Default deny; only the gateway takes ingress; workers only Prometheus on 8081."""
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
            if not monitoring_only or ports != [HEALTH_PORT]:
                problems.append(
                    f"NetworkPolicy/{name}: lets ingress reach {sorted(selected)}; only the "
                    f"gateway takes ingress (workers: port {HEALTH_PORT} from "
                    f"{MONITORING_NAMESPACE})"
                )
    return problems


def check_autoscaling(resources: list[Resource], consumer_group: str) -> list[str]:
    """KEDA triggers read the generator's group on real topics; max never above partitions."""
    problems: list[str] = []
    config = _config(resources)
    partitions = {
        t["spec"]["topicName"]: t["spec"]["partitions"] for t in _kind(resources, "KafkaTopic")
    }
    deployments = {d["metadata"]["name"] for d in _kind(resources, "Deployment")}
    for so in _kind(resources, "ScaledObject"):
        where = f"ScaledObject/{so['metadata']['name']}"
        spec = so["spec"]
        if spec["scaleTargetRef"]["name"] not in deployments:
            problems.append(f"{where}: scales {spec['scaleTargetRef']['name']}, not in the build")
        if spec.get("minReplicaCount", 0) > spec["maxReplicaCount"]:
            problems.append(f"{where}: minReplicaCount above maxReplicaCount")
        for trigger in spec["triggers"]:
            meta = trigger["metadata"]
            topic = meta.get("topic", "")
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
    for hpa in _kind(resources, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] not in deployments:
            problems.append(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: target missing")
    return problems


def generator_gpu_problems(resources: list[Resource]) -> list[str]:
    """The generator requests one GPU, tolerates the GPU taint and selects GPU nodes."""
    gens = [d for d in _kind(resources, "Deployment") if d["metadata"]["name"] == "generator"]
    if not gens:
        return ["no generator Deployment"]
    pod = _pod(gens[0])
    problems = []
    for container in pod["containers"]:
        res = container.get("resources", {})
        if str(res.get("limits", {}).get("nvidia.com/gpu")) != "1":
            problems.append(
                f"generator container {container['name']}: no nvidia.com/gpu limit of 1"
            )
    if not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])):
        problems.append("generator: no toleration for the nvidia.com/gpu taint")
    if not pod.get("nodeSelector"):
        problems.append("generator: no nodeSelector for GPU nodes")
    return problems
