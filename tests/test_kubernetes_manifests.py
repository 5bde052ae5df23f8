"""deploy/kubernetes/ agrees with the code: every manifest parses; ports, probe ports and
health service names, the Service's targetPort and every environment variable name match
what the node really serves and reads (coordinator.config, coordinator.server); the pod
outlives its own drain; the disruption budget, the Service and the spread select the
coordinator pods; the pods run as the image's user.

And it is safe by default: TLS and authentication from mounted Secrets (which
make-secrets.sh really writes, and a pod really starts with), no COORDINATOR_INSECURE, a
NetworkPolicy admitting only the labelled namespaces, Pod Security Admission "restricted"
(which the pods meet), and a trial Redis that really refuses a client without its password.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml
from cryptography import x509

from coordinator.config import Settings, load_settings
from coordinator.server import SERVICE_NAMES
from support import free_port, wait_until
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


@cache
def load_all() -> list[dict[str, Any]]:
    """Every object of every manifest (yaml.safe_load_all), empty documents skipped. Parsed
    once per session: the tests only read them."""
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


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((KUBE / "kustomization.yaml").read_text())


def secret_generators() -> dict[str, dict[str, str]]:
    """{Secret name: {key: file under deploy/kubernetes}} of kustomization.yaml's generators."""
    result = {}
    for generator in kustomization()["secretGenerator"]:
        files = dict(entry.split("=", 1) for entry in generator["files"])
        result[generator["name"]] = files
    return result


@cache
def made_secrets() -> Path:
    """What make-secrets.sh writes (once per test session, in a folder of its own)."""
    import atexit
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="aitbc-secrets-")) / "secrets"
    atexit.register(shutil.rmtree, folder.parent, True)
    subprocess.run(
        ["bash", str(KUBE / "make-secrets.sh"), str(folder)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return folder


def secret_files(name: str) -> dict[str, Path]:
    """{key: the file make-secrets.sh wrote for it} of one generated Secret."""
    return {
        key: made_secrets() / Path(path).relative_to("secrets")
        for key, path in secret_generators()[name].items()
    }


def secret_data(name: str = "aitbc-coordinator-redis") -> dict[str, str]:
    return {key: path.read_text() for key, path in secret_files(name).items()}


def secret_volumes() -> dict[str, str]:
    """{mountPath: Secret name} of the coordinator container's Secret volumes."""
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    return {
        mount["mountPath"]: volumes[mount["name"]]["secret"]["secretName"]
        for mount in container()["volumeMounts"]
        if "secret" in volumes[mount["name"]]
    }


def mounted_file(value: str) -> tuple[str, str] | None:
    """(Secret name, key) of a path inside one of the pod's Secret mounts, else None."""
    for mount_path, secret in secret_volumes().items():
        if value.startswith(mount_path + "/"):
            return secret, value[len(mount_path) + 1 :]
    return None


def pod_environment() -> dict[str, str]:
    """The ConfigMap, with every path into a mounted Secret replaced by the file
    make-secrets.sh wrote for it, plus REDIS_URL and the pod name."""
    environ = {}
    for name, value in config_map_data().items():
        inside = mounted_file(value)
        environ[name] = str(secret_files(inside[0])[inside[1]]) if inside else value
    return {**environ, **secret_data(), "NODE_ID": POD_NAME}


def node_settings() -> Settings:
    """The settings a coordinator pod starts with: ConfigMap + Secrets + its pod name."""
    return load_settings(pod_environment())


def container_port(name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    return ports[name]


def env_entries() -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container().get("env", [])}


def test_kustomization_lists_every_manifest() -> None:
    assert kustomization()["kind"] == "Kustomization"
    assert sorted(kustomization()["resources"]) == [p.name for p in manifest_files()]
    (image,) = kustomization()["images"]
    assert container()["image"].split(":")[0] == image["name"]


def test_every_manifest_parses_into_named_objects() -> None:
    objects = load_all()
    assert {o["kind"] for o in objects} >= {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    # Secrets are made by kustomization.yaml from files never committed (make-secrets.sh).
    assert "Secret" not in {o["kind"] for o in objects}
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
    assert settings.host == "0.0.0.0"
    # Without an explicit host the node picks 0.0.0.0 only when authentication is on: the
    # pods' settings turn it on.
    without_host = {k: v for k, v in pod_environment().items() if k != "COORDINATOR_HOST"}
    assert load_settings(without_host).host == "0.0.0.0"
    # configmap.yaml's way to mutual TLS, the CA being the mounted ca.crt, is valid too.
    assert (
        'COORDINATOR_TLS_CLIENT_CA_FILE: "/etc/aitbc/tls/ca.crt"'
        in (KUBE / "configmap.yaml").read_text()
    )
    ca = str(secret_files(TLS_SECRET)["ca.crt"])
    load_settings({**pod_environment(), "COORDINATOR_TLS_CLIENT_CA_FILE": ca})


def test_deployment_reads_the_configmap_the_secret_and_its_pod_name() -> None:
    (source,) = container()["envFrom"]
    assert source["configMapRef"]["name"] == COORDINATOR
    redis_url = env_entries()["REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert redis_url["key"] in secret_generators()[redis_url["name"]]
    node_id = env_entries()["NODE_ID"]["valueFrom"]["fieldRef"]
    assert node_id["fieldPath"] == "metadata.name"


def test_ports_agree_with_the_configured_port() -> None:
    settings = node_settings()
    assert Settings().port == 9001
    assert settings.port == container_port("grpc") == 9001
    # The probes cannot speak TLS: they ask the plaintext, health-only port.
    health_port = int(config_map_data()["COORDINATOR_HEALTH_PORT"])
    assert container_port("health") == health_port != settings.port
    for probe in ("readinessProbe", "livenessProbe"):
        assert container()[probe]["grpc"]["port"] == health_port, probe
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
    redis_spec = find("Deployment", TRIAL_REDIS)["spec"]
    assert redis_spec["replicas"] == 1
    assert redis_spec["strategy"]["type"] == "Recreate"
    args = redis_spec["template"]["spec"]["containers"][0]["args"]
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


# --- Safe by default ------------------------------------------------------------------------

TLS_SECRET = "aitbc-coordinator-tls"
AUTH_SECRET = "aitbc-coordinator-auth"
TRIAL_REDIS_SECRET = "aitbc-redis-trial"
FILE_SETTINGS = {
    "COORDINATOR_TLS_CERT_FILE": (TLS_SECRET, "tls.crt"),
    "COORDINATOR_TLS_KEY_FILE": (TLS_SECRET, "tls.key"),
    "COORDINATOR_AUTH_JWT_HS256_SECRET_FILE": (AUTH_SECRET, "jwt-hs256.secret"),
    "COORDINATOR_AUTH_TOKEN_FILE": (AUTH_SECRET, "tokens.csv"),
    "COORDINATOR_METRICS_TOKEN_FILE": (AUTH_SECRET, "metrics.token"),
}
"""Every credential a pod needs, and the Secret and key it must come from."""
SHIPPED = [
    *manifest_files(),
    *sorted((KUBE / "cert-manager").glob("*.yaml")),
    KUBE / "kustomization.yaml",
    ROOT / "deploy" / "Dockerfile",
    ROOT / "deploy" / "systemd" / "aitbc-agent-coordinator.service",
]


def test_tls_and_auth_come_from_mounted_secrets() -> None:
    data = config_map_data()
    for name, (secret, key) in FILE_SETTINGS.items():
        assert name in data, f"configmap.yaml does not set {name}"
        assert mounted_file(data[name]) == (secret, key), (name, data[name])
        assert key in secret_generators()[secret], (secret, key)
    # mTLS is optional (tokens authenticate); when on, its CA is the mounted ca.crt.
    if "COORDINATOR_TLS_CLIENT_CA_FILE" in data:
        assert mounted_file(data["COORDINATOR_TLS_CLIENT_CA_FILE"]) == (TLS_SECRET, "ca.crt")
    assert "ca.crt" in secret_generators()[TLS_SECRET], "clients verify the node with it"
    tls = next(g for g in kustomization()["secretGenerator"] if g["name"] == TLS_SECRET)
    assert tls["type"] == "kubernetes.io/tls", "the type cert-manager writes"
    # Fixed names: an updated Secret reaches the running pods' files, which the node re-reads.
    assert kustomization()["generatorOptions"]["disableNameSuffixHash"] is True


def test_secrets_are_mounted_whole_read_only_and_for_the_pod_only() -> None:
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert set(secret_volumes().values()) == {TLS_SECRET, AUTH_SECRET}
    for mount in container()["volumeMounts"]:
        # A subPath mount never sees an updated Secret: rotation would need a restart.
        assert "subPath" not in mount and "subPathExpr" not in mount, mount
        assert mount["readOnly"] is True, mount
        assert volumes[mount["name"]]["secret"]["defaultMode"] == 0o440, mount
    assert pod_spec()["securityContext"]["fsGroup"] == pod_spec()["securityContext"]["runAsGroup"]


def test_make_secrets_writes_every_file_and_keeps_them() -> None:
    for name in secret_generators():
        for key, path in secret_files(name).items():
            assert path.is_file() and path.stat().st_size, (name, key)
            assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    # The operator token is handed out, not deployed: tokens.csv holds its hash only.
    token = (made_secrets() / "operator.token").read_text()
    digest = hashlib.sha256(token.encode()).hexdigest()
    lines = [
        line
        for line in secret_data(AUTH_SECRET)["tokens.csv"].splitlines()
        if line and not line.startswith("#")
    ]
    assert lines == [f"sha256:{digest},ops-admin,operator,"]
    assert token not in "".join(secret_data(AUTH_SECRET).values())
    assert len(secret_data(AUTH_SECRET)["jwt-hs256.secret"].encode()) >= 32
    # The trial Redis' password is the one REDIS_URL carries.
    password = secret_data(TRIAL_REDIS_SECRET)["password"]
    assert len(password) >= 32
    assert urlsplit(secret_data()["REDIS_URL"]).password == password
    # Run again: nothing is overwritten.
    before = {p.name: p.read_bytes() for p in made_secrets().iterdir()}
    subprocess.run(["bash", str(KUBE / "make-secrets.sh"), str(made_secrets())], check=True)
    assert {p.name: p.read_bytes() for p in made_secrets().iterdir()} == before


def test_the_trial_certificate_names_the_service_and_chains_to_the_ca() -> None:
    files = secret_files(TLS_SECRET)
    certificate = x509.load_pem_x509_certificate(files["tls.crt"].read_bytes())
    ca = x509.load_pem_x509_certificate(files["ca.crt"].read_bytes())
    certificate.verify_directly_issued_by(ca)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    dns = set(names.value.get_values_for_type(x509.DNSName))
    assert service_dns_names() <= dns
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage


def service_dns_names() -> set[str]:
    namespace = kustomization()["namespace"]
    service = find("Service", COORDINATOR)["metadata"]["name"]
    return {
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        "localhost",  # kubectl port-forward
    }


def test_cert_manager_certificate_fills_the_mounted_tls_secret() -> None:
    folder = KUBE / "cert-manager"
    objects = [
        o for p in sorted(folder.glob("*.yaml")) for o in yaml.safe_load_all(p.read_text()) if o
    ]
    listed = yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in folder.glob("*.yaml") if p.stem != "kustomization"
    )
    certificate = next(
        o for o in objects if o["kind"] == "Certificate" and o["metadata"]["name"] == COORDINATOR
    )["spec"]
    assert certificate["secretName"] == TLS_SECRET
    assert set(certificate["dnsNames"]) >= service_dns_names()
    assert "server auth" in certificate["usages"]
    issuer = next(
        o
        for o in objects
        if o["kind"] == "Issuer" and o["metadata"]["name"] == certificate["issuerRef"]["name"]
    )
    assert "ca" in issuer["spec"], "a CA issuer writes ca.crt, which verifies client certificates"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_shipped_file_turns_insecure_on(path: Path) -> None:
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        assert "COORDINATOR_INSECURE" not in line, f"{path.name}: {line.strip()}"
    assert '--protected-mode\n            - "no"' not in path.read_text()


def network_policies() -> list[dict[str, Any]]:
    return [o for o in load_all() if o["kind"] == "NetworkPolicy"]


def port_number(pod_labels_of: str, port: int | str) -> int:
    if isinstance(port, int):
        return port
    spec = find("Deployment", pod_labels_of)["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c["ports"]}
    return ports[port]


NAMESPACE_LABELS = {"aitbc.io/agents", "aitbc.io/clients", "aitbc.io/metrics-scraper"}


def test_a_default_deny_isolates_every_pod_of_the_namespace() -> None:
    deny = [p for p in network_policies() if p["spec"]["podSelector"] == {}]
    assert deny and all(not p["spec"].get("ingress") for p in deny)
    assert any("Ingress" in p["spec"]["policyTypes"] for p in deny)


def test_network_policy_admits_only_labelled_namespaces_to_the_coordinator() -> None:
    policies = [
        p
        for p in network_policies()
        if selects(p["spec"]["podSelector"].get("matchLabels", {}), pod_labels())
    ]
    assert len(policies) == 1, "one NetworkPolicy selects the coordinator pods"
    spec = policies[0]["spec"]
    assert not selects(spec["podSelector"]["matchLabels"], pod_labels(TRIAL_REDIS))
    assert spec["policyTypes"] == ["Ingress"]
    grpc = container_port("grpc")
    admitted: dict[int, list[dict[str, Any]]] = {}
    for rule in spec["ingress"]:
        ports = [port_number(COORDINATOR, p["port"]) for p in rule["ports"]]
        assert ports, "a rule without ports would admit every port"
        for port in ports:
            admitted.setdefault(port, []).append(rule)
    assert set(admitted) == {grpc, container_port("health"), container_port("metrics")}
    # gRPC and metrics: only from namespaces carrying the documented labels.
    for port in (grpc, container_port("metrics")):
        for rule in admitted[port]:
            assert rule.get("from"), f"port {port} admitted from everywhere"
            for peer in rule["from"]:
                assert set(peer) == {"namespaceSelector"}, peer
                labels = peer["namespaceSelector"]["matchLabels"]
                assert set(labels) <= NAMESPACE_LABELS and set(labels.values()) == {"true"}
    sources = {
        key
        for rule in admitted[grpc]
        for peer in rule["from"]
        for key in peer["namespaceSelector"]["matchLabels"]
    }
    assert sources == {"aitbc.io/agents", "aitbc.io/clients"}
    # The health port: from anywhere (the kubelet), and that rule opens nothing else.
    for rule in admitted[container_port("health")]:
        assert [port_number(COORDINATOR, p["port"]) for p in rule["ports"]] == [
            container_port("health")
        ]
    readme = (KUBE / "README.md").read_text()
    assert all(label in readme for label in NAMESPACE_LABELS), "document the labels"


def test_the_trial_redis_admits_the_coordinator_pods_only() -> None:
    (policy,) = [
        p
        for p in network_policies()
        if selects(p["spec"]["podSelector"].get("matchLabels", {}), pod_labels(TRIAL_REDIS))
    ]
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}
    assert selects(peer["podSelector"]["matchLabels"], pod_labels())


def test_namespace_enforces_pod_security_restricted() -> None:
    labels = find("Namespace", kustomization()["namespace"])["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode


ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


@pytest.mark.parametrize("name", [COORDINATOR, TRIAL_REDIS])
def test_pods_meet_the_restricted_profile(name: str) -> None:
    """What Pod Security Admission "restricted" checks, so that the namespace's enforce label
    does not refuse our own pods."""
    spec = find("Deployment", name)["spec"]["template"]["spec"]
    pod_security = spec.get("securityContext", {})
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    for volume in spec.get("volumes", []):
        assert set(volume) - {"name"} <= ALLOWED_VOLUMES, volume
    for each in spec["containers"] + spec.get("initContainers", []):
        security = each.get("securityContext", {})
        assert security.get("allowPrivilegeEscalation") is False, name
        assert security.get("privileged") is not True, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert not security["capabilities"].get("add"), name
        assert (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")) is True
        assert (security.get("runAsUser") or pod_security.get("runAsUser")) != 0
        seccomp = security.get("seccompProfile") or pod_security.get("seccompProfile")
        assert seccomp["type"] in ("RuntimeDefault", "Localhost"), name
        assert not any(p.get("hostPort") for p in each.get("ports", [])), name


def redis_container() -> dict[str, Any]:
    (only,) = find("Deployment", TRIAL_REDIS)["spec"]["template"]["spec"]["containers"]
    return only


def test_trial_redis_takes_its_password_from_the_secret() -> None:
    args = redis_container()["args"]
    assert args[args.index("--protected-mode") + 1] == "yes"
    reference = args[args.index("--requirepass") + 1]
    variable = re.fullmatch(r"\$\((\w+)\)", reference)
    assert variable, "the password is a $(VAR) reference, never a literal"
    env = {e["name"]: e for e in redis_container()["env"]}
    for name in (variable.group(1), "REDISCLI_AUTH"):  # REDISCLI_AUTH: the probes' redis-cli
        source = env[name]["valueFrom"]["secretKeyRef"]
        assert source["key"] in secret_generators()[source["name"]], name
        assert source["name"] == TRIAL_REDIS_SECRET


def test_trial_redis_refuses_a_client_without_the_password(tmp_path: Path) -> None:
    """The trial Redis' real arguments (the password substituted as Kubernetes does, the
    data folder and port local): a client without the password is refused; the coordinators'
    REDIS_URL, with the port changed, gets in."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (make test installs it)"
    password = secret_data(TRIAL_REDIS_SECRET)["password"]
    args = [
        password if a == "$(REDIS_PASSWORD)" else str(tmp_path) if a == "/data" else a
        for a in redis_container()["args"][1:]
    ]
    port = free_port()
    process = subprocess.Popen(
        [binary, *args, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        anonymous = redis.Redis(port=port, socket_timeout=2)

        def refused() -> bool:
            try:
                anonymous.ping()
            except redis.AuthenticationError:
                return True
            except redis.ConnectionError:
                return False
            raise AssertionError("the trial Redis answered a client without its password")

        wait_until(refused, 10.0, what="the trial redis-server")
        url = urlsplit(secret_data()["REDIS_URL"])
        with_password = redis.Redis.from_url(
            url._replace(netloc=f":{url.password}@127.0.0.1:{port}").geturl(), socket_timeout=2
        )
        assert with_password.ping()
        assert with_password.config_get("protected-mode") == {"protected-mode": "yes"}
        with_password.close()
        anonymous.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
