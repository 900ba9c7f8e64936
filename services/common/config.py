"""Settings read from the environment (prefix ``COVIDCT_``), one place for every knob."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.caches import process_cache

REPO_ROOT = Path(__file__).resolve().parents[2]

# The placeholders of .env.example and k8s/secrets.example.env: a process configured with one
# refuses to start (a template copied unchanged is a known password, not a secret).
PLACEHOLDER_MARKERS = ("change-me", "changeme")
MAKE_FERNET_KEY = (
    "python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'"
)


def holds_placeholder(value: str) -> bool:
    lowered = value.lower()
    return any(marker in lowered for marker in PLACEHOLDER_MARKERS)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COVIDCT_", env_file=".env", extra="ignore")

    # Shared, never-committed data sets (../shared/data beside the checkout).
    data_dir: Path = REPO_ROOT.parent / "shared" / "data"
    # Shipped, versioned model artefacts.
    models_dir: Path = REPO_ROOT / "models"
    slice_model_version: str = "v1.1"
    ensemble_model_version: str = "v3"

    # Input limits: a hospital upload must never exhaust disk or memory.
    max_slices: int = 1000
    max_uncompressed_bytes: int = 4 * 1024**3
    max_compression_ratio: float = 200.0
    max_archive_members: int = 20_000

    # Service stack. Switching embedded <-> production is configuration only.
    # Embedded default: SQLite file + local blobs under var_dir, an embedded Redis.
    var_dir: Path = REPO_ROOT / "var"
    database_url: str | None = None  # None -> sqlite:///<var_dir>/covidct.db
    broker_url: str | None = None  # None -> the embedded Redis started by `covidct up`
    storage_url: str | None = None  # None -> <var_dir>/blobs (a directory or file:// URL)
    # S3-compatible blob storage (storage_url=s3://bucket/prefix; the bucket must exist). Unset
    # endpoint/region/keys fall back to boto3's default chain (AWS_* variables, web identity
    # as with IRSA, instance profile). An endpoint URL (MinIO, Ceph) implies path-style URLs.
    storage_endpoint_url: str | None = None
    storage_region: str | None = None
    storage_access_key_id: str | None = None
    storage_secret_access_key: SecretStr | None = None
    # Files above the threshold go up in parts of this size, several at once (an upload of
    # many GB never sits in memory; S3 allows 10,000 parts, so 64 MiB parts reach 640 GB).
    storage_multipart_threshold_bytes: int = 64 * 1024**2
    storage_multipart_chunk_bytes: int = 64 * 1024**2
    storage_max_concurrency: int = 4
    # Local copies of S3 blobs a stage reads as a file (<var_dir>/blob-cache/<pid>/): the
    # oldest are removed once they hold more than this (the newest one is always kept).
    storage_cache_max_bytes: int = 4 * 1024**3
    scorer_url: str | None = None  # None -> in-process scorer; else TorchServe inference URL
    scorer_model_name: str = "slice-cnn"
    scorer_batch_size: int = 16  # slices per /predictions request
    scorer_concurrency: int = 4  # parallel requests, so TorchServe can batch them
    scorer_timeout_s: float = 120.0
    public_url: str | None = None  # absolute base for upload_url; None -> a path
    # Origins (scheme://host[:port]) of a console or web app served elsewhere that may call
    # the API and tus from a browser (CORS). Empty: same origin only (the console at /).
    cors_allowed_origins: list[str] = []
    # The built web console (console/ -> npm run build), served by the gateway at /.
    console_dir: Path = REPO_ROOT / "console" / "dist"
    max_upload_bytes: int = 2 * 1024**3
    upload_expiry_days: int = 2  # unfinished tus uploads are removed after this
    # tus Upload-Metadata bounds: more keys or longer keys/values are refused (400) before
    # anything is written.
    upload_metadata_max_keys: int = 16
    upload_metadata_max_key_chars: int = 64
    upload_metadata_max_value_chars: int = 1000
    # fsync every PATCH before its offset is acknowledged, so acknowledged bytes survive a
    # power loss, at ~0.75x the throughput. Off (as tusd's file store and a plain HTTP PUT),
    # they survive a process crash; after a power loss the client's sha256 catches a torn file.
    upload_fsync: bool = False
    heatmap_top_k: int = 3
    webhook_max_attempts: int = 6
    webhook_backoff_s: float = 5.0  # first retry delay; doubles each attempt
    webhook_timeout_s: float = 10.0  # total deadline per attempt (connect, TLS, send, read)
    # Callback URL policy (services/common/urls.py). The defaults suit the embedded service and
    # its tests (receivers on http://127.0.0.1); a production deployment sets
    # COVIDCT_WEBHOOK_ALLOW_HTTP=false and COVIDCT_WEBHOOK_ALLOWED_NETWORKS='[]', so callbacks
    # go only to https on globally routable addresses (or to the networks/hosts listed here).
    webhook_allow_http: bool = True  # plain http callbacks (false: https only)
    # CIDRs, addresses or host names a callback may reach although not globally routable.
    webhook_allowed_networks: list[str] = ["127.0.0.0/8", "::1/128"]
    webhook_max_response_bytes: int = 64 * 1024  # read no more of a receiver's answer
    # Results sent to a tenant's PACS (services/webhooks/destinations.py): the deadline of one
    # attempt (a STOW-RS or C-STORE of the SR and SEG); attempts and backoff as callbacks.
    destination_timeout_s: float = 120.0
    task_time_limit_s: int = 900  # hard Celery limit per task
    # Crash recovery without waiting for the broker's visibility timeout: a running stage
    # renews its job's lease every job_heartbeat_s; every worker checks every
    # recovery_interval_s for leases older than job_lease_s (their worker died) and queues
    # those jobs again (re-running a stage is safe).
    job_heartbeat_s: float = 10.0
    job_lease_s: float = 60.0
    recovery_interval_s: float = 30.0
    # A stage whose worker died is started again at most this many times in all; then the
    # job fails `stage_crashed` (the study may be what kills workers) and keeps its evidence.
    stage_max_attempts: int = 3
    # A step (or callback) handed to the broker that no worker started within this is sent
    # again by the sweeper (its message was lost with the broker); a duplicate is a no-op.
    step_redispatch_s: float = 300.0
    broker_visibility_timeout_s: int = 1800  # must exceed the longest task, or it runs twice

    # Reverse proxies (addresses or CIDRs) whose X-Forwarded-For names the client; from any
    # other peer the header is ignored. Empty (the default): the peer address is the client.
    trusted_proxies: list[str] = []
    # Failed authentications per client address / key prefix before a 429 (per process).
    auth_failure_limit: int = 20
    auth_failure_window_s: float = 60.0

    # Console sign-in (services.common.accounts): a session cookie lives this long.
    session_ttl_s: int = 8 * 3600
    # Optional OpenID Connect single sign-on (all three set: on). Users sign in at the issuer
    # and land in oidc_tenant as the user whose username equals the oidc_username_claim; one
    # an admin has not created is refused unless oidc_auto_create_role names a role.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_tenant: str | None = None
    oidc_username_claim: str = "preferred_username"
    oidc_auto_create_role: str | None = None
    oidc_scopes: str = "openid profile email"

    # Keys (Fernet, urlsafe base64 of 32 bytes) that encrypt webhook secrets at rest. The first
    # encrypts; all decrypt, so a key is rotated by putting a new one first, running
    # `covidct tenants reencrypt-secrets`, then dropping the old one. Empty: one key is made
    # once in <var_dir>/secret.key (owner-only) -- fine for one machine; a deployment with
    # several (compose, Kubernetes) must set COVIDCT_SECRET_KEYS, the same on every process.
    secret_keys: list[SecretStr] = []

    # Retention (`services.common.retention`, swept by every gateway at this interval). The raw
    # upload (PHI in DICOM headers) is deleted when its job ends; derived data (prepared slices,
    # heatmaps, per-slice rows and the result) is deleted this many days after the job ended
    # (0: keep them for ever). The job row itself stays so clients see what happened.
    retention_keep_raw_upload: bool = False
    retention_derived_days: int = 30
    retention_sweep_interval_s: int = 3600

    # De-identify DICOM uploads (services/upload/deidentify.py) before they are stored:
    # PS3.15 basic profile via dicognito, pseudonyms keyed per tenant.
    deidentify_uploads: bool = False

    # DICOM intake (services/upload/stow.py, services/upload/scp.py). The C-STORE SCP
    # (`covidct dicom-listen`) answers as dicom_ae_title on dicom_port; a calling AE title
    # names the tenant its studies belong to (JSON map AE title -> tenant name or id; an AE
    # title not listed is refused at association). A series is complete once no instance of
    # it arrived for dicom_stable_age_s (Orthanc's StableAge), then it becomes one job.
    dicom_ae_title: str = "COVIDCT"
    dicom_port: int = 11112
    dicom_ae_titles: dict[str, str] = {}
    dicom_stable_age_s: float = 60.0
    dicom_max_associations: int = 10

    @property
    def dicom_spool_dir(self) -> Path:
        """Instances received by the SCP, per tenant and series, until the series is done."""
        return self.var_dir / "dicom-spool"

    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("secret_keys")
    @classmethod
    def _fernet_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        """Checked at start-up, so a bad key stops the process with one clear line instead of
        failing the first request that encrypts (the value itself is never printed)."""
        for number, key in enumerate(keys, start=1):
            value = key.get_secret_value()
            if holds_placeholder(value):
                raise ValueError(
                    f"key {number} is a placeholder; make a key with {MAKE_FERNET_KEY}"
                )
            try:
                Fernet(value.encode())
            except ValueError:
                raise ValueError(
                    f"key {number} is not a Fernet key (urlsafe base64 of 32 bytes); "
                    f"make one with {MAKE_FERNET_KEY}"
                ) from None
        return keys

    @field_validator("oidc_issuer")
    @classmethod
    def _https_issuer(cls, issuer: str | None) -> str | None:
        """ID tokens and their keys come from here: https only, but for this machine."""
        if issuer is None:
            return None
        parts = urlsplit(issuer)
        local = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and local):
            raise ValueError("must be an https:// URL (http only for 127.0.0.1/localhost)")
        return issuer

    @field_validator("oidc_auto_create_role")
    @classmethod
    def _known_role(cls, role: str | None) -> str | None:
        if role is not None and role not in ("viewer", "uploader", "admin"):
            raise ValueError("is viewer, uploader or admin (or unset: no accounts made)")
        return role

    @field_validator("database_url", "broker_url", "storage_url")
    @classmethod
    def _no_placeholder_password(cls, url: str | None) -> str | None:
        if url is not None and holds_placeholder(url):
            raise ValueError("holds a placeholder password (change-me): set a real one")
        return url

    @field_validator("storage_secret_access_key")
    @classmethod
    def _no_placeholder_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and holds_placeholder(secret.get_secret_value()):
            raise ValueError("is a placeholder: set the real key or leave it unset")
        return secret

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.var_dir / 'covidct.db'}"

    @property
    def upload_dir(self) -> Path:
        """Unfinished tus uploads (only the gateway writes here)."""
        return self.var_dir / "uploads"

    @property
    def slice_model_dir(self) -> Path:
        return self.models_dir / "slice-cnn" / self.slice_model_version

    @property
    def ensemble_model_dir(self) -> Path:
        return self.models_dir / "ensemble" / self.ensemble_model_version

    # Web process under load (gateway). Every database session of the web process is opened
    # and closed inside one call on one thread, so at most gateway_threads + 1 (the event
    # loop) connections are ever checked out: create_app refuses a pool smaller than that,
    # so a checkout never waits for another thread (no deadlock, no pool timeout).
    db_pool_size: int = 10  # connections kept open per process
    db_max_overflow: int = 30  # more, opened on demand and closed when returned
    db_pool_timeout_s: float = 10.0  # a checkout waiting longer is a 503, never a hang
    gateway_threads: int = 32  # AnyIO worker threads (sync routes and dependencies)
    gateway_max_in_flight: int = 24  # /v1/jobs requests served at once
    gateway_max_uploads_in_flight: int = 32  # /v1/uploads requests (a PATCH holds its slot)
    # ... of which one API key may hold this many, and one client address this many (several
    # tenants may share an address behind a NAT): a client with many slow connections cannot
    # take every other tenant's slots (429).
    gateway_max_uploads_per_key: int = 8
    gateway_max_uploads_per_address: int = 16
    # A request body (tus PATCH, creation POST, job JSON) that delivers nothing for this long
    # is ended as if the client had gone (a PATCH keeps what arrived), freeing its slot.
    gateway_body_timeout_s: float = 30.0
    gateway_queue_timeout_s: float = 0.5  # wait this long for a slot, then 503
    gateway_retry_after_s: int = 1  # Retry-After of a 503


@process_cache
def get_settings() -> Settings:
    """The process's settings: the one way code that is not handed settings obtains them."""
    return Settings()


def ensure_directories(settings: Settings) -> None:
    """Create the working directories once, at process start (not on every request).

    They hold raw uploads (PHI: patient names in DICOM headers), the SQLite database and
    blobs, so they and everything this process creates later are owner-only: umask 077,
    directories 0700 (an existing var dir is tightened too).
    """
    os.umask(0o077)
    for directory in (settings.var_dir, settings.upload_dir):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A mounted volume's root (Kubernetes: a PVC or emptyDir made group-writable through
        # fsGroup) belongs to root; only what this user owns can be tightened.
        if directory.stat().st_uid == os.getuid():
            directory.chmod(0o700)
