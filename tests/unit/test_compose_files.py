"""The compose files, without a daemon: ``docker compose config -q`` and the compose-spec
schema (check-jsonschema) for every combination of docker-compose.yml with its overrides,
plus what the deployment promises (roles, networks, health checks, volumes, image names)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from harness.compose import (
    COMPOSE_FILE,
    OVERRIDES,
    check_jsonschema,
    compose_config,
    file_combinations,
)
from services.common.config import REPO_ROOT

ENV_EXAMPLE = REPO_ROOT / ".env.example"
WORKERS = ("worker-preprocess", "worker-inference", "worker-ensemble", "worker-webhooks")
APP_SERVICES = ("s3-init", "migrate", "gateway", *WORKERS)
ONE_SHOTS = ("s3-init", "migrate")
TEST_OVERRIDE = "tests/deploy/docker-compose.test.yml"


def _schema_check(path: Path) -> None:
    result = subprocess.run(
        [check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"{path}: {result.stdout}{result.stderr}"


@pytest.mark.parametrize("files", file_combinations(), ids="+".join)
def test_config_is_valid_for_every_combination(files: tuple[str, ...], tmp_path: Path) -> None:
    compose_config(files, ENV_EXAMPLE, "--quiet")
    merged = tmp_path / "merged.yml"
    merged.write_text(compose_config(files, ENV_EXAMPLE))
    _schema_check(merged)


@pytest.mark.parametrize("name", [COMPOSE_FILE, *OVERRIDES, TEST_OVERRIDE])
def test_each_file_matches_the_compose_spec(name: str) -> None:
    _schema_check(REPO_ROOT / name)


def test_the_ci_stack_with_the_test_override_is_valid() -> None:
    compose_config((COMPOSE_FILE, "docker-compose.ci.yml", TEST_OVERRIDE), ENV_EXAMPLE, "-q")


def _merged(*files: str) -> dict:
    return yaml.safe_load(compose_config((COMPOSE_FILE, *files), ENV_EXAMPLE))


def test_services_roles_images_and_dependencies() -> None:
    config = _merged()
    services = config["services"]
    assert set(services) == {"postgres", "redis", "minio", "torchserve", *APP_SERVICES}
    for name in APP_SERVICES:
        assert services[name]["image"] == "covidct-app:0.1.0", name
    assert services["torchserve"]["image"] == "covidct-torchserve:0.1.0"
    assert [services[w]["command"][:3] for w in WORKERS] == [
        ["worker", "--queues", q] for q in ("preprocess", "inference", "ensemble", "webhooks")
    ]
    for name in ("gateway", *WORKERS):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["worker-inference"]["depends_on"]["torchserve"]["condition"] == (
        "service_healthy"
    )
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["s3-init"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["s3-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["s3-init"]["command"] == ["blobs", "ensure-bucket"]
    # Scalable: no fixed container names, no host ports but the gateway's.
    for name, service in services.items():
        assert "container_name" not in service, name
        assert ("ports" in service) == (name == "gateway"), name
    # Health checks everywhere but the one-shots.
    for name, service in services.items():
        if name not in ONE_SHOTS:
            assert "healthcheck" in service or name == "torchserve", name
    env = services["gateway"]["environment"]
    assert env["COVIDCT_SCORER_URL"] == "http://torchserve:8080"
    assert env["COVIDCT_DATABASE_URL"].startswith("postgresql+psycopg://covidct:")
    assert env["COVIDCT_BROKER_URL"].startswith("redis://:")
    assert env["COVIDCT_WEBHOOK_ALLOW_HTTP"] == "false"
    # One blob path with Kubernetes: S3 (MinIO here), credentials from .env.
    assert env["COVIDCT_STORAGE_URL"] == "s3://covidct/blobs"
    assert env["COVIDCT_STORAGE_ENDPOINT_URL"] == "http://minio:9000"
    minio = services["minio"]["environment"]
    assert env["COVIDCT_STORAGE_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert env["COVIDCT_STORAGE_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]


def _bytes(quantity: str | int) -> int:
    text = str(quantity).lower()
    for suffix, factor in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if text.endswith(suffix):
            return int(float(text[:-1]) * factor)
    return int(text)


@pytest.mark.parametrize("profiles", [(), ("tls",)], ids=["default", "tls"])
def test_every_container_has_limits_and_rotated_logs(profiles: tuple[str, ...]) -> None:
    config = yaml.safe_load(compose_config((COMPOSE_FILE,), ENV_EXAMPLE, profiles=profiles))
    services = config["services"]
    assert ("caddy" in services) == ("tls" in profiles)
    for name, service in services.items():
        limits = service["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) > 0 and _bytes(limits["memory"]) >= 256 * 1024**2, name
        logging = service["logging"]
        assert logging["driver"] == "json-file", name
        assert logging["options"]["max-size"] and int(logging["options"]["max-file"]) >= 2, name
    # The study decoder needs the most: a 1000-slice study and its masks.
    assert _bytes(services["worker-preprocess"]["deploy"]["resources"]["limits"]["memory"]) >= (
        4 * 1024**3
    )


def test_redis_password_is_not_on_a_command_line() -> None:
    redis = _merged()["services"]["redis"]
    password = next(
        line.split("=", 1)[1]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.startswith("REDIS_PASSWORD=")
    )
    assert password not in " ".join(redis["command"][:2])  # sh -c ...
    script = redis["command"][2]
    assert password not in script and "redis-server -" in script  # config on stdin
    assert "$REDIS_PASSWORD" in script and "--requirepass" not in script


def test_tls_proxy_keeps_operations_endpoints_inside() -> None:
    config = yaml.safe_load(compose_config((COMPOSE_FILE,), ENV_EXAMPLE, profiles=["tls"]))
    caddy = config["services"]["caddy"]
    assert caddy["profiles"] == ["tls"]
    assert caddy["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert [p["target"] for p in caddy["ports"]] == [8443]
    caddyfile = (REPO_ROOT / "docker" / "caddy" / "Caddyfile").read_text()
    assert "tls {$COVIDCT_TLS_ISSUER:internal}" in caddyfile
    assert "@ops path /metrics /metrics/* /readyz /healthz" in caddyfile
    assert "respond @ops 404" in caddyfile and "reverse_proxy gateway:8000" in caddyfile


def test_networks_and_volumes() -> None:
    config = _merged()
    services = config["services"]
    assert config["networks"]["backend"]["internal"] is True
    for name, service in services.items():
        outside = {"gateway", "worker-webhooks"}
        assert ("edge" in service["networks"]) == (name in outside), name
    assert {"postgres-data", "redis-data", "covidct-data", "s3-data"} <= set(config["volumes"])
    for name in ("gateway", *WORKERS):
        targets = {v["target"]: v["source"] for v in services[name]["volumes"]}
        assert targets["/var/lib/covidct"] == "covidct-data", name
    assert "--appendonly yes" in services["redis"]["command"][2]


def test_overrides_gpu_and_ci() -> None:
    gpu = _merged("docker-compose.gpu.yml")["services"]["torchserve"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert "cuda" in gpu["build"]["args"]["BASE_IMAGE"]
    ci = _merged("docker-compose.ci.yml")["services"]
    assert ci["postgres"]["image"] == "covidct-ci-postgres:15"
    assert ci["redis"]["image"] == "covidct-ci-redis:7"
    assert ci["minio"]["image"] == "covidct-ci-s3:moto5"
    for name in ("postgres", "redis", "minio", "migrate", "torchserve"):
        assert ci[name]["build"]["network"] == "host", name
        assert ci[name]["build"]["args"]["BASE_IMAGE"] == "covidct-ci-base:bookworm", name


def test_image_tag_can_be_overridden(tmp_path: Path) -> None:
    env = tmp_path / "tag.env"
    env.write_text(ENV_EXAMPLE.read_text() + "COVIDCT_IMAGE_TAG=9.9.9\n")
    services = yaml.safe_load(compose_config((COMPOSE_FILE,), env))["services"]
    assert services["gateway"]["image"] == "covidct-app:9.9.9"
    assert services["torchserve"]["image"] == "covidct-torchserve:9.9.9"


def test_env_file_is_never_committed_and_images_get_no_data() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT, check=False
    ).returncode
    assert ignored == 0
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    dockerignore = [line for line in lines if line and not line.startswith("#")]
    assert dockerignore[0] == "**"  # an allow-list: everything not named is excluded
    allowed = {line[1:].rstrip("/") for line in dockerignore if line.startswith("!")}
    assert not allowed & {".venv", "var", ".env", "data", "build"}
