"""Rendering k8s/ overlays offline and the checks no tool makes (tests/unit/test_k8s_manifests.py).

``compose_drift`` compares the rendered manifests with docker-compose files: the same
covidct images (name and tag) and, for the app image, every COVIDCT_* setting compose sets
is set in Kubernetes too.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from harness.components import ComponentMissing

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "k8s"
OVERLAYS = ("gpu", "cpu", "dev")
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}

Doc = dict[str, Any]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise ComponentMissing("kubectl (renders k8s/ with `kubectl kustomize`)")
    return path


SECRETS_DIR = K8S_DIR / "secrets"


def _copy_with_example_secrets(target: Path, password: str) -> Path:
    """k8s/ copied to ``target``, its secrets/*.env made from the committed *.env.example
    (CHANGE-ME replaced by ``password``): an operator's real env files are never read."""
    secrets = str(SECRETS_DIR)

    def ignore(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if n.endswith(".env")] if directory == secrets else []

    root = target / "k8s"
    shutil.copytree(K8S_DIR, root, ignore=ignore)
    for example in (root / "secrets").glob("*.env.example"):
        text = example.read_text().replace("CHANGE-ME", password)
        example.with_name(example.name.removesuffix(".example")).write_text(text)
    return root


@functools.cache
def render_text(overlay: str, password: str = "CHANGE-ME") -> str:
    """``kubectl kustomize k8s/overlays/<overlay>`` with the example secrets."""
    with tempfile.TemporaryDirectory() as tmp:
        root = _copy_with_example_secrets(Path(tmp), password)
        result = subprocess.run(
            [kubectl(), "kustomize", str(root / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {overlay} failed:\n{result.stderr}")
    return result.stdout


def render(overlay: str, password: str = "CHANGE-ME") -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(render_text(overlay, password)) if doc]


def by_kind(docs: Iterable[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(doc: Doc) -> Doc | None:
    if doc["kind"] in WORKLOAD_KINDS:
        spec: Doc = doc["spec"]["template"]["spec"]
        return spec
    return None


def pod_labels(doc: Doc) -> dict[str, str]:
    labels: dict[str, str] = doc["spec"]["template"]["metadata"].get("labels", {})
    return labels


def workloads(docs: Iterable[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def containers(spec: Doc) -> Iterator[Doc]:
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels + matchExpressions) selects ``labels``."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def container_env_keys(docs: list[Doc], container: Doc) -> set[str]:
    """Every variable a container gets: env, and all keys of its envFrom sources."""
    keys = {e["name"] for e in container.get("env", [])}
    config_maps, secrets = by_kind(docs, "ConfigMap"), by_kind(docs, "Secret")
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            keys |= set(config_maps[source["configMapRef"]["name"]].get("data", {}))
        if "secretRef" in source:
            secret = secrets[source["secretRef"]["name"]]
            keys |= set(secret.get("stringData", {})) | set(secret.get("data", {}))
    return keys


# --- docker compose ---------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}")


def interpolate_defaults(text: str) -> str:
    """``${VAR:-default}`` -> default, ``${VAR}`` / ``${VAR:?message}`` -> '' (no .env)."""

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if ":-" in whole or whole.startswith("${" + match.group(1) + "-"):
            return match.group(2) or ""
        return ""

    return _INTERPOLATION.sub(replace, text)


def _compose_services(compose_texts: Iterable[str]) -> dict[str, Doc]:
    """The services of several compose files merged as `docker compose -f a -f b` does
    (enough of it: image replaced, environment merged)."""
    services: dict[str, Doc] = {}
    for text in compose_texts:
        loaded = yaml.safe_load(text) or {}
        for name, service in (loaded.get("services") or {}).items():
            merged = services.setdefault(name, {})
            for key, value in (service or {}).items():
                if key == "environment":
                    env = dict(_environment(merged.get("environment")))
                    env.update(_environment(value))
                    merged["environment"] = env
                else:
                    merged[key] = value
    return services


def _environment(value: Any) -> dict[str, str]:
    if not value:
        return {}
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    pairs = (str(item).split("=", 1) for item in value)
    return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}


def covidct_images(images: Iterable[str]) -> set[str]:
    return {image.rsplit("/", 1)[-1] for image in images if "covidct-" in image}


# Settings Kubernetes gives only to the components that need them (one Secret each).
PER_COMPONENT_SECRETS = {
    "COVIDCT_BROKER_URL",
    "COVIDCT_SECRET_KEYS",
    "COVIDCT_STORAGE_ACCESS_KEY_ID",
    "COVIDCT_STORAGE_SECRET_ACCESS_KEY",
}

# The address of a self-hosted S3 (compose's MinIO, the dev overlay's): AWS S3 needs none.
DEPLOYMENT_SPECIFIC = {"COVIDCT_STORAGE_ENDPOINT_URL"}


def compose_drift(docs: list[Doc], compose_texts: Iterable[str]) -> list[str]:
    """What differs between the rendered manifests and the compose files: covidct images
    (name:tag) used by one and not the other, and COVIDCT_* settings that compose gives the
    app image but Kubernetes does not. Empty when they agree."""
    services = _compose_services(interpolate_defaults(text) for text in compose_texts)
    # Services under a profile (`pacs`: a demo PACS and the DICOM listener) are opt-in
    # extras of one Docker host, not part of the deployment Kubernetes mirrors.
    services = {name: s for name, s in services.items() if not s.get("profiles")}
    compose_images = covidct_images(str(s["image"]) for s in services.values() if "image" in s)
    k8s_images = covidct_images(
        c["image"] for w in workloads(docs) for c in containers(pod_spec(w) or {})
    )
    problems = [f"image {i} in compose, not in k8s" for i in sorted(compose_images - k8s_images)]
    problems += [f"image {i} in k8s, not in compose" for i in sorted(k8s_images - compose_images)]

    compose_keys: set[str] = set()
    for service in services.values():
        if "covidct-app:" in str(service.get("image", "")):
            compose_keys |= {
                k for k in _environment(service.get("environment")) if k.startswith("COVIDCT_")
            }
    # Kubernetes gives each component only the secrets it needs (k8s/secrets): those must
    # reach some app container, not every one.
    everywhere = compose_keys - PER_COMPONENT_SECRETS - DEPLOYMENT_SPECIFIC
    somewhere: set[str] = set()
    for workload in workloads(docs):
        for container in containers(pod_spec(workload) or {}):
            if "covidct-app:" not in container["image"]:
                continue
            keys = container_env_keys(docs, container)
            somewhere |= keys
            problems += [
                f"{workload['metadata']['name']}/{container['name']}: {key} set in compose, "
                "not in k8s"
                for key in sorted(everywhere - keys)
            ]
    problems += [
        f"{key} set in compose, in no k8s app container"
        for key in sorted((compose_keys & PER_COMPONENT_SECRETS) - somewhere)
    ]
    return problems
