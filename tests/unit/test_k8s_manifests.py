"""k8s/ offline: every overlay renders (kubectl kustomize), validates against the Kubernetes
schemas (kubernetes-validate --strict, 1.29 and the newest bundled) and KEDA's
(cloudcoil-models-keda), passes checkov, and keeps the invariants no tool checks.

Without kubectl or a validator the tests skip; with CI=true they fail (ComponentMissing).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.components import ComponentMissing
from services.common.config import Settings
from services.common.queue import QUEUES, TASK_QUEUES
from tests.support.k8s import (
    K8S_DIR,
    OVERLAYS,
    REPO_ROOT,
    Doc,
    by_kind,
    compose_drift,
    container_env_keys,
    containers,
    kubectl,
    pod_labels,
    pod_spec,
    render,
    render_text,
    selects,
    workloads,
)

OLDEST_K8S = "1.29.0"
KEDA_GROUP = "keda.sh/"


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def docs(overlay: str) -> list[Doc]:
    return render(overlay)


def deployments(docs: list[Doc]) -> dict[str, Doc]:
    return by_kind(docs, "Deployment")


def app_workloads(docs: list[Doc]) -> list[Doc]:
    """Ours (gateway, workers, TorchServe, jobs), not the dev overlay's data services."""
    return [
        w
        for w in workloads(docs)
        if any("covidct-" in c["image"] for c in containers(pod_spec(w) or {}))
    ]


def long_running(docs: list[Doc]) -> list[Doc]:
    return [w for w in workloads(docs) if w["kind"] != "Job"]


def secret_values(secret: Doc) -> dict[str, str]:
    """A Secret's keys and values, generated (base64 ``data``) or written (``stringData``)."""
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return {**values, **(secret.get("stringData") or {})}


def containers_of(workload: Doc) -> Iterator[Doc]:
    """The main containers, without the init containers."""
    yield from (pod_spec(workload) or {}).get("containers", [])


def _secret_names(workload: Doc) -> set[str]:
    return {
        source["secretRef"]["name"]
        for container in containers(pod_spec(workload) or {})
        for source in container.get("envFrom", [])
        if "secretRef" in source
    }


def _secret_of(docs: list[Doc], workload: str) -> dict[str, str]:
    """The one Secret a workload of ours reads (envFrom), decoded."""
    named = {**deployments(docs), **by_kind(docs, "Job")}[workload]
    (name,) = _secret_names(named)
    return secret_values(by_kind(docs, "Secret")[name])


# --- tools ------------------------------------------------------------------------------------


def test_every_overlay_renders_into_one_namespace(docs: list[Doc]) -> None:
    kinds = Counter(d["kind"] for d in docs)
    assert kinds["Namespace"] == 1
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "covidct", doc["metadata"]["name"]


def test_kubernetes_schemas_strict(docs: list[Doc]) -> None:
    if importlib.util.find_spec("kubernetes_validate") is None:
        raise ComponentMissing("kubernetes-validate (pip install -e '.[dev]')")
    import kubernetes_validate

    newest = kubernetes_validate.latest_version()
    errors = []
    for version in (OLDEST_K8S, newest):
        for doc in docs:
            if doc["apiVersion"].startswith(KEDA_GROUP):
                continue  # CRDs: validated below with KEDA's own models
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                errors.append(f"{version} {doc['kind']}/{doc['metadata']['name']}: {error}")
    assert not errors, "\n".join(errors)


def _unknown_keys(given: Any, dumped: Any, path: str = "") -> list[str]:
    if isinstance(given, dict):
        found = []
        for key, value in given.items():
            if not isinstance(dumped, dict) or key not in dumped:
                found.append(f"{path}.{key}")
            else:
                found += _unknown_keys(value, dumped[key], f"{path}.{key}")
        return found
    if isinstance(given, list) and isinstance(dumped, list):
        return [
            k
            for i, (g, d) in enumerate(zip(given, dumped, strict=False))
            for k in _unknown_keys(g, d, f"{path}[{i}]")
        ]
    return []


def test_keda_objects_validate(docs: list[Doc]) -> None:
    if importlib.util.find_spec("cloudcoil.models.keda") is None:
        raise ComponentMissing("cloudcoil-models-keda (pip install -e '.[dev]')")
    from cloudcoil.models.keda import v1alpha1

    keda = [d for d in docs if d["apiVersion"].startswith(KEDA_GROUP)]
    assert {d["kind"] for d in keda} == {"ScaledObject", "TriggerAuthentication"}
    for doc in keda:
        model = getattr(v1alpha1, doc["kind"]).model_validate(doc)
        dumped = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
        # pydantic ignores unknown fields; a misspelt field must not pass unnoticed.
        assert _unknown_keys(doc, dumped) == [], doc["metadata"]["name"]


def _checkov() -> str:
    for candidate in (
        os.environ.get("CHECKOV"),
        str(REPO_ROOT / ".venv" / "tools" / "checkov" / "bin" / "checkov"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    raise ComponentMissing("checkov (make install puts it in .venv/tools/checkov)")


def test_checkov_clean(overlay: str, tmp_path: Path) -> None:
    checkov = _checkov()
    skips = yaml.safe_load((K8S_DIR / "checkov-skips.yaml").read_text())
    skipped = {**skips["all"], **(skips.get(overlay) or {})}
    assert all(str(reason).strip() for reason in skipped.values()), "every skip needs a reason"
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(render_text(overlay))
    result = subprocess.run(
        [
            checkov, "-f", str(rendered), "--framework", "kubernetes", "--skip-download",
            "--quiet", "--compact", "-o", "json", "--skip-check", ",".join(sorted(skipped)),
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']}"
        for c in report.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, "\n".join(failed)
    assert report["summary"]["passed"] > 100
    assert report["summary"]["parsing_errors"] == 0


# --- references and selectors -----------------------------------------------------------------


def test_selectors_match_their_pods(docs: list[Doc]) -> None:
    pods = {w["metadata"]["name"]: pod_labels(w) for w in workloads(docs)}
    for name, deployment in deployments(docs).items():
        assert selects(deployment["spec"]["selector"], pods[name]), name
        for spread in pod_spec(deployment).get("topologySpreadConstraints", []):  # type: ignore[union-attr]
            assert selects(spread["labelSelector"], pods[name]), name
    long_lived = {w["metadata"]["name"]: pod_labels(w) for w in long_running(docs)}
    for name, service in by_kind(docs, "Service").items():
        selector = {"matchLabels": service["spec"]["selector"]}
        matched = [w for w, labels in long_lived.items() if selects(selector, labels)]
        assert len(matched) == 1, (name, matched)
        ports = {
            p["name"]
            for c in containers(pod_spec(deployments(docs)[matched[0]]) or {})
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert isinstance(target, int) or target in ports, (name, target)
    for name, pdb in by_kind(docs, "PodDisruptionBudget").items():
        matched = [
            w for w, labels in long_lived.items() if selects(pdb["spec"]["selector"], labels)
        ]
        assert len(matched) == 1, (name, matched)
    for name, policy in by_kind(docs, "NetworkPolicy").items():
        if policy["spec"]["podSelector"]:
            assert any(selects(policy["spec"]["podSelector"], p) for p in pods.values()), name
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(selects(peer["podSelector"], p) for p in pods.values()), name


def test_every_reference_exists(docs: list[Doc]) -> None:
    names = {kind: set(by_kind(docs, kind)) for kind in ("ConfigMap", "Secret", "ServiceAccount")}
    names["PersistentVolumeClaim"] = set(by_kind(docs, "PersistentVolumeClaim"))
    missing = []

    def need(kind: str, name: str, where: str) -> None:
        if name not in names[kind]:
            missing.append(f"{where}: {kind} {name}")

    for workload in workloads(docs):
        where = workload["metadata"]["name"]
        spec = pod_spec(workload) or {}
        need("ServiceAccount", spec.get("serviceAccountName", "default"), where)
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                need("ConfigMap", volume["configMap"]["name"], where)
            if "secret" in volume:
                need("Secret", volume["secret"]["secretName"], where)
            if "persistentVolumeClaim" in volume:
                need("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"], where)
        for container in containers(spec):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    need("ConfigMap", source["configMapRef"]["name"], where)
                if "secretRef" in source:
                    need("Secret", source["secretRef"]["name"], where)
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    need("ConfigMap", ref["configMapKeyRef"]["name"], where)
                if "secretKeyRef" in ref:
                    need("Secret", ref["secretKeyRef"]["name"], where)
            mounted = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in spec.get("volumes", [])}, where
    auths = by_kind(docs, "TriggerAuthentication")
    for name, auth in auths.items():
        for ref in auth["spec"].get("secretTargetRef", []):
            need("Secret", ref["name"], name)
            assert ref["key"] in secret_values(by_kind(docs, "Secret")[ref["name"]]), ref
    for name, scaled in by_kind(docs, "ScaledObject").items():
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["authenticationRef"]["name"] in auths, name
    services = by_kind(docs, "Service")
    for name, ingress in by_kind(docs, "Ingress").items():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] in services, name
                ports = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in ports, name
        # TLS secrets are issued by cert-manager, named by the annotation.
        if ingress["spec"].get("tls"):
            assert "cert-manager.io/cluster-issuer" in ingress["metadata"]["annotations"], name
    assert not missing, missing


# --- autoscaling ------------------------------------------------------------------------------


def test_one_autoscaler_per_target_and_every_worker_scaled_by_its_queue(docs: list[Doc]) -> None:
    deps = deployments(docs)
    targets = [
        h["spec"]["scaleTargetRef"]["name"]
        for h in by_kind(docs, "HorizontalPodAutoscaler").values()
    ]
    scaled = by_kind(docs, "ScaledObject")
    targets += [s["spec"]["scaleTargetRef"]["name"] for s in scaled.values()]
    assert len(targets) == len(set(targets)), Counter(targets)
    assert set(targets) <= set(deps)
    assert by_kind(docs, "HorizontalPodAutoscaler")["covidct-gateway"]
    queues_of = {}
    for name, deployment in deps.items():
        args = next(containers_of(deployment)).get("args", [])
        if args[:1] == ["worker"]:
            queues_of[name] = args[args.index("--queues") + 1]
    # One Deployment per queue, and its ScaledObject reads that queue's list.
    assert sorted(queues_of.values()) == sorted(QUEUES)
    for name, queue in queues_of.items():
        so = next(s for s in scaled.values() if s["spec"]["scaleTargetRef"]["name"] == name)
        assert [t["metadata"]["listName"] for t in so["spec"]["triggers"]] == [queue]
    torchserve = next(
        s for s in scaled.values() if s["spec"]["scaleTargetRef"]["name"] == "covidct-torchserve"
    )
    inference = TASK_QUEUES["covidct.inference"]
    assert [t["metadata"]["listName"] for t in torchserve["spec"]["triggers"]] == [inference]
    for so in scaled.values():
        spec = so["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["cooldownPeriod"] >= 60
        assert all(t["type"] == "redis" for t in spec["triggers"])
    for name in targets:  # the autoscaler owns the count: an apply must not reset it
        assert "replicas" not in deps[name]["spec"], name


# --- pods -------------------------------------------------------------------------------------


def test_probes_resources_and_security_everywhere(docs: list[Doc]) -> None:
    for workload in workloads(docs):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload) or {}
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        for container in containers(spec):  # init containers too
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), (name, part)
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
        if workload["kind"] != "Job":
            for container in spec["containers"]:
                assert "livenessProbe" in container and "readinessProbe" in container, name


def _http_probe(container: Doc, probe: str) -> tuple[str, Any]:
    get = container[probe]["httpGet"]
    return get["path"], get["port"]


def test_health_endpoints(docs: list[Doc]) -> None:
    deps = deployments(docs)
    gateway = next(containers_of(deps["covidct-gateway"]))
    assert _http_probe(gateway, "livenessProbe") == ("/healthz", "http")
    assert _http_probe(gateway, "readinessProbe") == ("/readyz", "http")
    assert {"name": "http", "containerPort": 8000} in gateway["ports"]
    assert gateway["args"] == ["gateway", "--host", "0.0.0.0", "--port", "8000"]
    # Scorer health is the inference workers' own readiness, not the gateway's.
    inference = next(containers_of(deps["covidct-worker-inference"]))
    assert inference["readinessProbe"]["exec"]["command"][1:3] == ["probe", "scorer"]
    assert inference["readinessProbe"]["exec"]["command"][0] == "/opt/venv/bin/covidct"
    # /readyz and /metrics are for the kubelet and Prometheus: no ingress path names them
    # (the app also answers 404 to anything relayed with X-Forwarded-For).
    for ingress in by_kind(docs, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert not path["path"].startswith(("/readyz", "/metrics")), path
    torchserve = next(containers_of(deps["covidct-torchserve"]))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert _http_probe(torchserve, probe) == ("/ping", "inference")
    assert {"name": "inference", "containerPort": 8080} in torchserve["ports"]


def test_gpu_only_in_the_gpu_overlay(overlay: str, docs: list[Doc]) -> None:
    spec = pod_spec(deployments(docs)["covidct-torchserve"]) or {}
    limits = spec["containers"][0]["resources"]["limits"]
    if overlay == "gpu":
        assert int(limits["nvidia.com/gpu"]) >= 1
        # The GPU request places the pod; no label that only GPU feature discovery sets.
        assert "nvidia.com/gpu.present" not in spec.get("nodeSelector", {})
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
            "tolerations"
        ]
    else:
        assert "nvidia.com/gpu" not in render_text(overlay)


def test_settings_are_settings_fields_and_point_at_the_cluster(
    overlay: str, docs: list[Doc]
) -> None:
    fields = {f"COVIDCT_{name.upper()}" for name in Settings.model_fields}
    for workload in app_workloads(docs):
        for container in containers(pod_spec(workload) or {}):
            keys = {k for k in container_env_keys(docs, container) if k.startswith("COVIDCT_")}
            assert keys <= fields, (workload["metadata"]["name"], keys - fields)
    config = by_kind(docs, "ConfigMap")["covidct-config"]["data"]
    assert config["COVIDCT_STORAGE_URL"].startswith("s3://")  # blobs shared by all pods
    assert config["COVIDCT_SCORER_URL"] == "http://covidct-torchserve:8080"
    secrets = {name: secret_values(doc) for name, doc in by_kind(docs, "Secret").items()}
    gateway_keys = json.loads(_secret_of(docs, "covidct-gateway")["COVIDCT_SECRET_KEYS"])
    assert isinstance(gateway_keys, list) and gateway_keys
    # Several pods: the same encryption keys in each that encrypts or signs, not a key file
    # per pod.
    webhooks_keys = json.loads(_secret_of(docs, "covidct-worker-webhooks")["COVIDCT_SECRET_KEYS"])
    assert webhooks_keys == gateway_keys
    if overlay == "dev":  # a working (public, dev-only) key
        from cryptography.fernet import Fernet

        Fernet(gateway_keys[0].encode())
    assert secrets  # every Secret generated (base holds none: test_no_secret_in_the_base)


def test_uploads_shared_by_gateway_replicas(overlay: str, docs: list[Doc]) -> None:
    var_dir = by_kind(docs, "ConfigMap")["covidct-config"]["data"]["COVIDCT_VAR_DIR"]
    spec = pod_spec(deployments(docs)["covidct-gateway"]) or {}
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    assert claims[mounts[f"{var_dir}/uploads"]] == "covidct-uploads"  # Settings.upload_dir
    pvc = by_kind(docs, "PersistentVolumeClaim")["covidct-uploads"]
    expected = ["ReadWriteMany"] if overlay == "gpu" else ["ReadWriteOnce"]  # laptop: 1 node
    assert pvc["spec"]["accessModes"] == expected
    # Only the gateway mounts it: workers read uploads from blob storage. The DICOM
    # listener has a spool of its own.
    claims_of = {
        w["metadata"]["name"]: [
            v["persistentVolumeClaim"]["claimName"]
            for v in (pod_spec(w) or {}).get("volumes", [])
            if "persistentVolumeClaim" in v
        ]
        for w in workloads(docs)
    }
    users = {name: c for name, c in claims_of.items() if c}
    assert users == {
        "covidct-gateway": ["covidct-uploads"],
        "covidct-dicom-listen": ["covidct-dicom-spool"],
    }


def test_dicom_listener(docs: list[Doc]) -> None:
    """One listener at a time on a spool that survives it (a series stored in two spools
    would be two half jobs; instances answered "stored" must outlive a restart), its Service
    on TCP 11112, its probes, its settings, and DICOM ingress from the PACS network only."""
    listener = deployments(docs)["covidct-dicom-listen"]
    assert listener["spec"]["replicas"] == 1
    assert listener["spec"]["strategy"] == {"type": "Recreate"}
    container = next(containers_of(listener))
    assert container["args"] == ["dicom-listen", "--host", "0.0.0.0", "--port", "11112"]
    assert {"name": "dicom", "containerPort": 11112} in container["ports"]
    assert container["livenessProbe"]["tcpSocket"] == {"port": "dicom"}
    assert container["readinessProbe"]["exec"]["command"] == [
        "/opt/venv/bin/covidct", "probe", "dicom",
    ]  # fmt: skip
    var_dir = by_kind(docs, "ConfigMap")["covidct-config"]["data"]["COVIDCT_VAR_DIR"]
    spec = pod_spec(listener) or {}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[var_dir])
    assert volume["persistentVolumeClaim"]["claimName"] == "covidct-dicom-spool"
    assert by_kind(docs, "PersistentVolumeClaim")["covidct-dicom-spool"]["spec"]["accessModes"] == [
        "ReadWriteOnce"
    ]
    service = by_kind(docs, "Service")["covidct-dicom"]
    assert service["spec"]["ports"] == [
        {"name": "dicom", "port": 11112, "targetPort": "dicom", "protocol": "TCP"}
    ]
    settings = by_kind(docs, "ConfigMap")["covidct-dicom"]["data"]
    assert json.loads(settings["COVIDCT_DICOM_AE_TITLES"])  # an empty map does not start
    assert int(settings["COVIDCT_DICOM_PORT"]) == 11112
    # The same keys as the gateway (uploads, de-identification pseudonyms).
    assert _secret_names(listener) == {
        s for s in _secret_names(deployments(docs)["covidct-gateway"])
    }
    policy = by_kind(docs, "NetworkPolicy")["dicom-listen-ingress"]["spec"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 11112}]
    assert rule["from"] == [{"ipBlock": {"cidr": _cluster_values(docs)["dicom-peers-cidr"]}}]


def test_ingress_streams_large_uploads(docs: list[Doc]) -> None:
    ingresses = by_kind(docs, "Ingress")
    for ingress in ingresses.values():
        annotations = ingress["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
        assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    uploads = ingresses["covidct-uploads"]
    assert uploads["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"]
    assert uploads["spec"]["rules"][0]["http"]["paths"][0]["path"].startswith("/v1/uploads/")


def test_network_policies(docs: list[Doc]) -> None:
    pods = {w["metadata"]["name"]: pod_labels(w) for w in workloads(docs)}
    policies = by_kind(docs, "NetworkPolicy")
    assert policies["default-deny-all"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
    }
    dev_data = {"covidct-postgres", "covidct-redis", "covidct-minio"}
    for name, policy in policies.items():
        spec = policy["spec"]
        selected = {p for p, labels in pods.items() if selects(spec["podSelector"], labels)}
        for rule in spec.get("ingress", []):
            # From outside the namespace: the gateway only (dev: KEDA reads the dev Redis).
            if any("namespaceSelector" in peer for peer in rule.get("from", [])):
                assert selected <= {"covidct-gateway", "covidct-redis"}, name
            elif any("ipBlock" in peer for peer in rule.get("from", [])):
                assert selected == {"covidct-dicom-listen"}, name  # the PACS network
            else:
                assert selected <= {"covidct-gateway", "covidct-torchserve"} | dev_data, name
        for rule in spec.get("egress", []):
            for peer in rule.get("to", []):
                cidr = peer.get("ipBlock", {}).get("cidr")
                if cidr == "0.0.0.0/0":
                    assert selected == {"covidct-worker-webhooks"}, name
                    assert "169.254.0.0/16" in peer["ipBlock"]["except"]  # cloud metadata
    # Result destinations: the webhooks worker reaches the PACS network, and only it.
    pacs = policies["webhooks-to-pacs"]["spec"]
    assert {p for p, labels in pods.items() if selects(pacs["podSelector"], labels)} == {
        "covidct-worker-webhooks"
    }
    (rule,) = pacs["egress"]
    assert rule["to"] == [{"ipBlock": {"cidr": _cluster_values(docs)["dicom-peers-cidr"]}}]
    assert {p["port"] for p in rule["ports"]} >= {104, 11112}


# --- secrets, migrations, cluster values, connection budget (issue 19) -------------------------


def test_no_secret_in_the_base_or_any_committed_manifest() -> None:
    """`kubectl apply -k` must never overwrite real Secrets with placeholders: Secrets come from
    a secretGenerator over non-committed env files (k8s/secrets/*.env, gitignored)."""
    base = subprocess.run(
        [kubectl(), "kustomize", str(K8S_DIR / "base")],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert not [d for d in yaml.safe_load_all(base) if d and d["kind"] == "Secret"]
    for manifest in K8S_DIR.rglob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(manifest.read_text()) if isinstance(d, dict)]
        assert not [d for d in docs if d.get("kind") == "Secret"], manifest
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(K8S_DIR / "secrets" / "gateway.env")],
        cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert ignored.returncode == 0, "k8s/secrets/*.env must be gitignored"


def test_each_component_gets_only_its_secrets(docs: list[Doc]) -> None:
    users: dict[str, set[str]] = {}
    for workload in app_workloads(docs):
        for name in _secret_names(workload):
            users.setdefault(name, set()).add(workload["metadata"]["name"])
    # The preprocess worker parses untrusted archives: a Secret of its own, no webhook keys,
    # its own ServiceAccount (its own IAM role for S3).
    preprocess = _secret_of(docs, "covidct-worker-preprocess")
    assert "COVIDCT_SECRET_KEYS" not in preprocess
    (preprocess_secret,) = _secret_names(deployments(docs)["covidct-worker-preprocess"])
    assert users[preprocess_secret] == {"covidct-worker-preprocess"}
    spec = pod_spec(deployments(docs)["covidct-worker-preprocess"]) or {}
    assert spec["serviceAccountName"] == "covidct-preprocess"
    assert set(_secret_of(docs, "covidct-migrate")) == {"COVIDCT_DATABASE_URL"}
    webhooks = _secret_of(docs, "covidct-worker-webhooks")
    assert "COVIDCT_SECRET_KEYS" in webhooks
    # It builds the SEG sent to result destinations from the job's masks: it reads blobs.
    assert {"COVIDCT_STORAGE_ACCESS_KEY_ID", "COVIDCT_STORAGE_SECRET_ACCESS_KEY"} <= set(webhooks)
    for worker in ("covidct-worker-inference", "covidct-worker-ensemble"):
        assert "COVIDCT_SECRET_KEYS" not in _secret_of(docs, worker)


def test_migrations_before_rollout_and_apply_twice(overlay: str, docs: list[Doc]) -> None:
    """Every app pod waits for the Alembic head; the migration Job's spec does not change
    when the Secrets do, so `kubectl apply -k` again (new secret values) does not hit the
    immutable Job template, while the Deployments roll (their Secrets' names change)."""
    for name, deployment in deployments(docs).items():
        if not name.startswith(("covidct-gateway", "covidct-worker-")):
            continue
        init = (pod_spec(deployment) or {})["initContainers"]
        assert init[0]["args"] == ["migrate", "--wait", "--timeout", "900"], name
        assert init[0]["image"] == next(containers_of(deployment))["image"], name
    job = by_kind(docs, "Job")["covidct-migrate"]
    assert next(containers_of(job))["args"] == ["migrate"]
    assert 0 < job["spec"]["ttlSecondsAfterFinished"] <= 3600
    if overlay == "dev":
        return  # dev's secrets are fixed files
    other = render(overlay, password="another-password")
    assert by_kind(other, "Job")["covidct-migrate"] == job
    assert (
        deployments(other)["covidct-gateway"]["spec"]["template"]
        != deployments(docs)["covidct-gateway"]["spec"]["template"]
    )


def _cluster_values(docs: list[Doc]) -> dict[str, str]:
    values: dict[str, str] = by_kind(docs, "ConfigMap")["covidct-cluster-values"]["data"]
    return values


def test_cluster_choices_are_overlay_values(overlay: str, docs: list[Doc]) -> None:
    values = _cluster_values(docs)
    egress = by_kind(docs, "NetworkPolicy")["app-to-data-services"]["spec"]["egress"]
    cidrs = [rule["to"][0]["ipBlock"]["cidr"] for rule in egress]
    assert cidrs == [values["data-services-cidr"], values["object-store-cidr"], values["sts-cidr"]]
    pvc = by_kind(docs, "PersistentVolumeClaim")["covidct-uploads"]
    if overlay == "gpu":
        assert pvc["spec"]["storageClassName"] == values["uploads-storage-class"]
    else:  # a laptop: its default class
        assert "storageClassName" not in pvc["spec"]


def _replica_cap(docs: list[Doc], workload: Doc) -> int:
    """The most pods a workload can have at once: its autoscaler's cap plus the rolling
    update's surge (Jobs: their parallelism)."""
    name = workload["metadata"]["name"]
    if workload["kind"] == "Job":
        return int(workload["spec"].get("parallelism", 1))
    caps = [
        h["spec"]["maxReplicas"]
        for h in by_kind(docs, "HorizontalPodAutoscaler").values()
        if h["spec"]["scaleTargetRef"]["name"] == name
    ] + [
        s["spec"]["maxReplicaCount"]
        for s in by_kind(docs, "ScaledObject").values()
        if s["spec"]["scaleTargetRef"]["name"] == name
    ]
    cap = int(caps[0]) if caps else int(workload["spec"].get("replicas", 1))
    strategy = workload["spec"].get("strategy", {})
    if strategy.get("type") == "Recreate":
        return cap  # the old pods end before the new start
    surge = strategy.get("rollingUpdate", {}).get("maxSurge", "25%")
    extra = math.ceil(cap * int(surge[:-1]) / 100) if isinstance(surge, str) else int(surge)
    return cap + extra


def _container_setting(docs: list[Doc], container: Doc, name: str) -> str | None:
    """A variable's value as the container sees it: env over envFrom (later sources win)."""
    value = None
    config_maps = by_kind(docs, "ConfigMap")
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            value = config_maps[source["configMapRef"]["name"]].get("data", {}).get(name, value)
        if "secretRef" in source:
            secret = secret_values(by_kind(docs, "Secret")[source["secretRef"]["name"]])
            value = secret.get(name, value)
    for env in container.get("env", []):
        if env["name"] == name and "value" in env:
            value = env["value"]
    return value


def connection_budget(docs: list[Doc]) -> dict[str, int]:
    """Postgres connections each workload can hold at its replica cap: pods x processes per
    pod (a Celery worker: its pool children and the main process) x each process's pool
    (db_pool_size + db_max_overflow, from the rendered settings or Settings' defaults)."""
    defaults = Settings.model_fields
    budget = {}
    for workload in app_workloads(docs):
        for container in containers_of(workload):
            if _container_setting(docs, container, "COVIDCT_DATABASE_URL") is None:
                continue
            per_process = sum(
                int(_container_setting(docs, container, f"COVIDCT_{field.upper()}")
                    or defaults[field].default)
                for field in ("db_pool_size", "db_max_overflow")
            )  # fmt: skip
            args = container.get("args", [])
            processes = 1
            if args[:1] == ["worker"]:
                processes = int(args[args.index("--concurrency") + 1]) + 1
            if args[:1] == ["gateway"]:
                threads = _container_setting(docs, container, "COVIDCT_GATEWAY_THREADS")
                needed = int(threads or defaults["gateway_threads"].default) + 1
                assert per_process >= needed, "the gateway refuses a pool below threads + 1"
            pods = _replica_cap(docs, workload)
            budget[workload["metadata"]["name"]] = pods * processes * per_process
    return budget


def test_connection_budget_fits_max_connections(overlay: str, docs: list[Doc]) -> None:
    """Every pod at its autoscaler's cap (and a rollout's surge) with every pool full stays
    within the Postgres max_connections the overlay declares (docs/deploy-kubernetes.md)."""
    budget = connection_budget(docs)
    assert {"covidct-gateway", "covidct-worker-preprocess", "covidct-migrate"} <= set(budget)
    allowed = int(_cluster_values(docs)["postgres-max-connections"])
    assert sum(budget.values()) <= allowed, budget
    if overlay == "dev":  # the in-cluster server is configured with what the values say
        postgres = next(containers_of(deployments(docs)["covidct-postgres"]))
        (setting,) = [a for a in postgres["args"] if a.startswith("max_connections=")]
        reserved = 3  # superuser_reserved_connections
        assert int(setting.split("=")[1]) - reserved == allowed


def _bytes(quantity: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def test_scratch_volumes_are_sized_to_what_fills_them(docs: list[Doc]) -> None:
    """A pod whose emptyDirs may fill past its ephemeral-storage limit is evicted: the main
    containers' limits cover every emptyDir's sizeLimit; the blob cache, the upload being
    read and an extracted archive fit their volumes."""
    for workload in app_workloads(docs):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload) or {}
        scratch = {
            v["name"]: _bytes(v["emptyDir"]["sizeLimit"])
            for v in spec.get("volumes", [])
            if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"
        }
        limit = sum(
            _bytes(c["resources"]["limits"].get("ephemeral-storage", "0"))
            for c in spec["containers"]
        )
        assert sum(scratch.values()) <= limit, (name, scratch, limit)
        main = spec["containers"][0]
        if main.get("args", [""])[0] not in {"gateway", "worker"}:
            continue

        def setting(field: str, container: Doc = main) -> int:
            value = _container_setting(docs, container, f"COVIDCT_{field.upper()}")
            return int(value or Settings.model_fields[field].default)

        # The cache cap, plus the copy being read (kept beyond the cap).
        cache = setting("storage_cache_max_bytes")
        if name == "covidct-gateway":  # no blob cache: every blob is read by range or whole
            gateway_code = (REPO_ROOT / "services" / "gateway").rglob("*.py")
            assert not [p for p in gateway_code if ".local_path(" in p.read_text()]
            assert scratch["var"] <= 256 * 1024**2, name
        if name == "covidct-worker-preprocess":  # an upload; archives extracted into /tmp
            assert cache + setting("max_upload_bytes") <= scratch["var"], name
            assert setting("max_uncompressed_bytes") <= scratch["tmp"], name


# --- docker compose ---------------------------------------------------------------------------

FIXTURE_COMPOSE = """
x-app: &app
  image: covidct-app:${COVIDCT_IMAGE_TAG:-0.1.0}
  environment:
    COVIDCT_DATABASE_URL: postgresql+psycopg://covidct:${POSTGRES_PASSWORD:?set}@postgres/covidct
    COVIDCT_BROKER_URL: redis://redis:6379/0
    COVIDCT_SCORER_URL: http://torchserve:8080
    COVIDCT_VAR_DIR: /var/lib/covidct
    COVIDCT_STORAGE_URL: ${COVIDCT_STORAGE_URL:-/var/lib/covidct/blobs}
services:
  gateway:
    <<: *app
    command: ["gateway", "--host", "0.0.0.0", "--port", "8000"]
  worker-preprocess:
    <<: *app
    command: ["worker", "--queues", "preprocess"]
  torchserve:
    image: covidct-torchserve:${COVIDCT_IMAGE_TAG:-0.1.0}
  redis:
    image: redis:7.0-bookworm
"""
FIXTURE_COMPOSE_GPU = """
services:
  torchserve:
    image: covidct-torchserve:${COVIDCT_IMAGE_TAG:-0.1.0}-gpu
"""


def test_compose_comparison_on_a_fixture() -> None:
    assert compose_drift(render("cpu"), [FIXTURE_COMPOSE]) == []
    assert compose_drift(render("gpu"), [FIXTURE_COMPOSE, FIXTURE_COMPOSE_GPU]) == []
    assert compose_drift(render("gpu"), [FIXTURE_COMPOSE]) == [
        "image covidct-torchserve:0.1.0 in compose, not in k8s",
        "image covidct-torchserve:0.1.0-gpu in k8s, not in compose",
    ]
    drifted = FIXTURE_COMPOSE.replace("0.1.0}", "0.2.0}").replace(
        "COVIDCT_VAR_DIR", "COVIDCT_HEATMAP_TOP_K: '5'\n    COVIDCT_VAR_DIR"
    )
    problems = compose_drift(render("cpu"), [drifted])
    assert "image covidct-app:0.2.0 in compose, not in k8s" in problems
    assert "image covidct-app:0.1.0 in k8s, not in compose" in problems
    assert any("COVIDCT_HEATMAP_TOP_K set in compose, not in k8s" in p for p in problems)


def test_same_images_and_settings_as_docker_compose(overlay: str, docs: list[Doc]) -> None:
    compose = REPO_ROOT / "docker-compose.yml"
    if not compose.exists():
        pytest.skip("no docker-compose.yml in this checkout")
    texts = [compose.read_text()]
    gpu = REPO_ROOT / "docker-compose.gpu.yml"
    if overlay == "gpu" and gpu.exists():
        texts.append(gpu.read_text())
    assert compose_drift(docs, texts) == []
