"""deploy/kubernetes/ agrees with the code: every manifest parses; ports, probe ports and
health service names, the Service's targetPort and every environment variable name match
what the node really serves and reads (coordinator.config, coordinator.server); the pod
outlives its own drain; the disruption budget, the Service and the spread select the
coordinator pods; the pods run as the image's user.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from coordinator.config import Settings, load_settings
from coordinator.server import SERVICE_NAMES
from test_deploy import MENTIONED, config_variable_names
from test_dockerfile import dockerfile_user

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
COORDINATOR = "aitbc-coordinator"
TRIAL_REDIS = "aitbc-redis"
POD_NAME = "aitbc-coordinator-5d9c7b8f6d-x2x4z"
"""A pod name as a Deployment makes them: NODE_ID gets it through the downward API."""

DRAIN_TAIL_S = 5.0
"""After the shutdown grace: closing the streams, withdrawing the presence key, closing Redis
(each bounded by COORDINATOR_REDIS_TIMEOUT_S, 2 s by default), plus the kubelet's slack."""


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")


def load_all() -> list[dict[str, Any]]:
    """Every object of every manifest (yaml.safe_load_all), empty documents skipped."""
    objects = []
    for path in manifest_files():
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                objects.append(document)
    return objects


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in load_all() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def deployment() -> dict[str, Any]:
    return find("Deployment", COORDINATOR)


def pod_spec() -> dict[str, Any]:
    return deployment()["spec"]["template"]["spec"]


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    return only


def pod_labels(name: str = COORDINATOR) -> dict[str, str]:
    return find("Deployment", name)["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def config_map_data() -> dict[str, str]:
    return find("ConfigMap", COORDINATOR)["data"]


def secret_data() -> dict[str, str]:
    (secret,) = [o for o in load_all() if o["kind"] == "Secret"]
    return secret["stringData"]


def node_settings() -> Settings:
    """The settings a coordinator pod starts with: ConfigMap + Secret + its pod name."""
    environ = {**config_map_data(), **secret_data(), "NODE_ID": POD_NAME}
    return load_settings(environ)


def container_port(name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    return ports[name]


def env_entries() -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container().get("env", [])}


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    (image,) = kustomization["images"]
    assert container()["image"].split(":")[0] == image["name"]


def test_every_manifest_parses_into_named_objects() -> None:
    objects = load_all()
    assert {o["kind"] for o in objects} >= {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), keys
    for obj in objects:
        assert obj["apiVersion"] and obj["metadata"]["name"], obj


def test_configmap_secret_and_env_name_only_variables_config_reads() -> None:
    known = config_variable_names()
    used = set(config_map_data()) | set(secret_data()) | set(env_entries())
    assert used <= known, f"not read by coordinator/config.py: {sorted(used - known)}"
    assert set(secret_data()) == {"REDIS_URL"}
    assert not {"REDIS_URL", "NODE_ID"} & set(config_map_data()), "REDIS_URL: Secret; NODE_ID: pod"
    assert all(isinstance(v, str) for v in config_map_data().values()), "quote every value"


def test_a_pod_starts_with_valid_settings() -> None:
    settings = node_settings()  # raises ConfigError, naming the variable, if a value is bad
    assert settings.node_id == POD_NAME
    assert settings.redis_url == secret_data()["REDIS_URL"]


def test_deployment_reads_the_configmap_the_secret_and_its_pod_name() -> None:
    (source,) = container()["envFrom"]
    assert source["configMapRef"]["name"] == COORDINATOR
    redis_url = env_entries()["REDIS_URL"]["valueFrom"]["secretKeyRef"]
    (secret,) = [o for o in load_all() if o["kind"] == "Secret"]
    assert redis_url["name"] == secret["metadata"]["name"]
    assert redis_url["key"] in secret["stringData"]
    node_id = env_entries()["NODE_ID"]["valueFrom"]["fieldRef"]
    assert node_id["fieldPath"] == "metadata.name"


def test_ports_agree_with_the_configured_port() -> None:
    settings = node_settings()
    assert Settings().port == 9001
    assert settings.port == container_port("grpc") == 9001
    for probe in ("readinessProbe", "livenessProbe"):
        assert container()[probe]["grpc"]["port"] == settings.port, probe
    service = find("Service", COORDINATOR)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == settings.port
    target = ports["grpc"]["targetPort"]
    assert target == settings.port or container_port(target) == settings.port


def test_metrics_port_agrees_with_the_configured_one() -> None:
    settings = node_settings()
    assert settings.metrics_enabled
    assert container_port("metrics") == settings.metrics_port
    ports = {p["name"]: p for p in find("Service", COORDINATOR)["spec"]["ports"]}
    assert container_port(ports["metrics"]["targetPort"]) == settings.metrics_port


def test_probes_ask_for_real_health_service_names() -> None:
    liveness = container()["livenessProbe"]["grpc"]
    readiness = container()["readinessProbe"]["grpc"]
    assert liveness.get("service", "") == ""  # the whole server
    assert readiness["service"] in SERVICE_NAMES, readiness


def test_pods_outlive_their_drain() -> None:
    grace_s = node_settings().shutdown_grace_s
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    pre_stop_s = float(pre_stop[1])
    termination_s = pod_spec()["terminationGracePeriodSeconds"]
    assert termination_s > pre_stop_s + grace_s + DRAIN_TAIL_S, (
        f"terminationGracePeriodSeconds {termination_s} must exceed preStop {pre_stop_s} + "
        f"COORDINATOR_SHUTDOWN_GRACE_S {grace_s} + {DRAIN_TAIL_S} s"
    )


def test_three_replicas_one_disruption_at_a_time() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] == 3
    labels = pod_labels()
    assert selects(spec["selector"]["matchLabels"], labels)
    budget = find("PodDisruptionBudget", COORDINATOR)["spec"]
    assert selects(budget["selector"]["matchLabels"], labels)
    assert not selects(budget["selector"]["matchLabels"], pod_labels(TRIAL_REDIS))
    assert budget["maxUnavailable"] == 1
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_service_selects_the_coordinator_pods_only() -> None:
    selector = find("Service", COORDINATOR)["spec"]["selector"]
    assert selects(selector, pod_labels())
    assert not selects(selector, pod_labels(TRIAL_REDIS))


def test_pods_spread_over_machines() -> None:
    constraints = {c["topologyKey"]: c for c in pod_spec()["topologySpreadConstraints"]}
    by_host = constraints["kubernetes.io/hostname"]
    assert by_host["maxSkew"] == 1
    assert selects(by_host["labelSelector"]["matchLabels"], pod_labels())


@pytest.mark.parametrize("name", [COORDINATOR, TRIAL_REDIS])
def test_containers_have_requests_and_limits(name: str) -> None:
    for each in find("Deployment", name)["spec"]["template"]["spec"]["containers"]:
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(each["resources"][kind]), (name, kind)


def test_pods_run_as_the_images_non_root_user() -> None:
    security = pod_spec()["securityContext"]
    uid, _, gid = dockerfile_user().partition(":")
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == int(uid)
    assert security["runAsGroup"] == int(gid or uid)
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True
    assert container()["securityContext"]["allowPrivilegeEscalation"] is False


def test_trial_redis_is_one_aof_pod_that_the_secret_points_at() -> None:
    text = (KUBE / "redis-trial.yaml").read_text()
    assert "NOT FOR PRODUCTION" in text
    redis = find("Deployment", TRIAL_REDIS)["spec"]
    assert redis["replicas"] == 1
    assert redis["strategy"]["type"] == "Recreate"
    args = redis["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    url = urlsplit(secret_data()["REDIS_URL"])
    service = find("Service", TRIAL_REDIS)
    assert url.hostname == service["metadata"]["name"]
    assert url.port == service["spec"]["ports"][0]["port"]


@pytest.mark.parametrize(
    "doc",
    [KUBE / "README.md", ROOT / "docs" / "operations.md"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_docs_mention_only_variables_config_reads(doc: Path) -> None:
    unknown = set(MENTIONED.findall(doc.read_text())) - config_variable_names()
    assert not unknown, f"{doc.name} mentions variables config.py does not read: {unknown}"


def test_manifest_comments_mention_only_variables_config_reads() -> None:
    text = "\n".join(p.read_text() for p in manifest_files())
    unknown = set(re.findall(MENTIONED, text)) - config_variable_names()
    assert not unknown, unknown
