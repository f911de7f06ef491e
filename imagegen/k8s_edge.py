"""Deployment policy for the edge (Ingress, Gateway API, cert-manager) and CronJobs.

Run by `imagegen k8s check` beside imagegen/k8s_policy.py; each check returns readable
problem lines (empty: fine).
"""

from __future__ import annotations

import re
from typing import Any

from imagegen.kustomize import Resource, pod_template

DEFAULT_SSE_PING_S = 15.0
NGINX = "nginx.ingress.kubernetes.io/"
_DURATION = re.compile(r"(\d+)(h|ms|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
CLEANUP_COMMAND = ["imagegen", "storage", "cleanup"]


def _kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def _config(resources: list[Resource]) -> dict[str, str]:
    data: dict[str, str] = {}
    for cm in _kind(resources, "ConfigMap"):
        data.update(cm.get("data") or {})
    return data


def sse_ping_s(resources: list[Resource]) -> float:
    for cm in _kind(resources, "ConfigMap"):
        if "IMAGEGEN_SSE_PING_S" in cm.get("data", {}):
            return float(cm["data"]["IMAGEGEN_SSE_PING_S"])
    return DEFAULT_SSE_PING_S


def duration_s(text: str) -> float:
    """A Gateway API duration (`1h30m`, `3600s`) in seconds."""
    return sum(int(n) * _UNIT_S[unit] for n, unit in _DURATION.findall(text))


def _certified_secrets(resources: list[Resource]) -> dict[str, set[str]]:
    """Secret name -> DNS names, for every cert-manager Certificate."""
    return {
        c["spec"]["secretName"]: set(c["spec"].get("dnsNames", []))
        for c in _kind(resources, "Certificate")
    }


def check_ingress(resources: list[Resource]) -> list[str]:
    """SSE-safe proxying and cert-manager TLS for every Ingress and HTTPRoute."""
    problems: list[str] = []
    ping = sse_ping_s(resources)
    certs = _certified_secrets(resources)
    services = {s["metadata"]["name"] for s in _kind(resources, "Service")}
    for ing in _kind(resources, "Ingress"):
        where = f"Ingress/{ing['metadata']['name']}"
        notes = ing["metadata"].get("annotations", {})
        if notes.get(NGINX + "proxy-buffering") != "off":
            problems.append(f"{where}: SSE needs {NGINX}proxy-buffering: 'off'")
        for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
            value = float(notes.get(NGINX + timeout, "60"))
            if value <= 2 * ping:
                problems.append(
                    f"{where}: {timeout} {value:g}s must exceed twice the SSE heartbeat ({ping:g}s)"
                )
        hosts = {r.get("host") for r in ing["spec"].get("rules", [])}
        tls_hosts = set()
        for tls in ing["spec"].get("tls", []):
            secret = tls.get("secretName")
            if secret not in certs:
                problems.append(f"{where}: TLS Secret {secret} is not issued by a Certificate")
                continue
            tls_hosts |= set(tls.get("hosts", []))
            if not set(tls.get("hosts", [])) <= certs[secret]:
                problems.append(f"{where}: Certificate for {secret} does not cover its hosts")
        if not hosts <= tls_hosts:
            problems.append(f"{where}: hosts {sorted(hosts - tls_hosts)} are served without TLS")
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                name = path["backend"].get("service", {}).get("name")
                if name not in services:
                    problems.append(f"{where}: backend Service {name} is not in the build")
    gateways = {g["metadata"]["name"]: g for g in _kind(resources, "Gateway")}
    for route in _kind(resources, "HTTPRoute"):
        where = f"HTTPRoute/{route['metadata']['name']}"
        for ref in route["spec"].get("parentRefs", []):
            gateway = gateways.get(ref["name"])
            if gateway is None:
                continue  # a shared Gateway of the cluster: its owner checks its TLS
            for listener in gateway["spec"]["listeners"]:
                if ref.get("sectionName") not in (None, listener["name"]):
                    continue
                refs = listener.get("tls", {}).get("certificateRefs", [])
                if listener["protocol"] != "HTTPS" or not any(r["name"] in certs for r in refs):
                    problems.append(
                        f"{where}: listener {listener['name']} of Gateway/{ref['name']} is not"
                        " HTTPS with a cert-manager Certificate's Secret"
                    )
        for rule in route["spec"].get("rules", []):
            request = rule.get("timeouts", {}).get("request")
            if request is not None and 0 < duration_s(request) <= 2 * ping:
                problems.append(
                    f"{where}: timeouts.request {request} cuts SSE streams (heartbeat {ping:g}s)"
                )
            for backend in rule.get("backendRefs", []):
                if backend["name"] not in services:
                    problems.append(
                        f"{where}: backend Service {backend['name']} is not in the build"
                    )
    return problems


def _container_problems(where: str, pod: dict[str, Any]) -> list[str]:
    problems = []
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: automountServiceAccountToken must be false")
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or not psc.get("runAsUser"):
        problems.append(f"{where}: pod must run as a non-root uid")
    for container in pod["containers"]:
        csc = container.get("securityContext", {})
        if csc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        if csc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: the root filesystem must be read-only")
        if "ALL" not in csc.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities must drop ALL")
        res = container.get("resources", {})
        if not {"cpu", "memory"} <= set(res.get("requests", {})):
            problems.append(f"{where}: cpu and memory requests are required")
        if "memory" not in res.get("limits", {}):
            problems.append(f"{where}: a memory limit is required")
        for env in container.get("env", []):
            if re.search(r"(KEY|SECRET|PASSWORD|DATABASE_URL)$", env["name"]) and "value" in env:
                problems.append(f"{where}: {env['name']} must come from a Secret")
    return problems


def check_cronjobs(resources: list[Resource]) -> list[str]:
    """Never overlapping, bounded, hardened like the Deployments; storage clean-up scheduled."""
    problems: list[str] = []
    cleanup = False
    for cron in _kind(resources, "CronJob"):
        where = f"CronJob/{cron['metadata']['name']}"
        spec = cron["spec"]
        if spec.get("concurrencyPolicy") != "Forbid":
            problems.append(f"{where}: concurrencyPolicy must be Forbid (runs must not overlap)")
        if not spec.get("startingDeadlineSeconds"):
            problems.append(f"{where}: startingDeadlineSeconds is required")
        if not spec["jobTemplate"]["spec"].get("activeDeadlineSeconds"):
            problems.append(f"{where}: activeDeadlineSeconds is required (a hung run must end)")
        pod = pod_template(cron)["spec"]
        protocol = _config(resources).get("IMAGEGEN_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
        for container in pod["containers"]:
            sasl = [e["name"] for e in container.get("env", []) if "_KAFKA_SASL_" in e["name"]]
            if sasl and not protocol.startswith("SASL"):
                problems.append(f"{where}: sets {sasl} but the broker protocol is {protocol}")
        if pod.get("restartPolicy") not in ("Never", "OnFailure"):
            problems.append(f"{where}: restartPolicy must be Never or OnFailure")
        problems.extend(_container_problems(where, pod))
        for container in pod["containers"]:
            command = [*container.get("command", []), *container.get("args", [])]
            cleanup = cleanup or command[:3] == CLEANUP_COMMAND
    if not cleanup:
        problems.append("no CronJob runs `imagegen storage cleanup`")
    return problems
