# The application images, two targets of this file: `app` (default; every Celery worker,
# migrations and the CLI; the command picks the role: `worker --queues inference`, `migrate`,
# ...) and `gateway` (the API process only: the base dependencies of pyproject.toml, no
# torch/xgboost/scikit-learn/TorchServe; docs/images.md has the sizes).
#
# Production default: FROM python:3.11-slim-bookworm, Python packages from PyPI with the
# PyTorch CPU index as an extra index (torch==2.13.0 -> the +cpu build, not the multi-GB CUDA one).
# CI: BASE_IMAGE=covidct-ci-base:bookworm (debootstrapped Debian, no registry) and
# WHEELHOUSE_URL=http://127.0.0.1:PORT/ (a wheelhouse made on the host and served over
# loopback to the build, which runs with `network: host`): pip then installs with
# --no-index, so no certificate of the CI machine is needed and none enters the image.
# (Debian's docker.io 20.10 BuildKit has no named build contexts, hence HTTP, not
# --build-context.)  Only the built-in Dockerfile frontend is used: nothing is pulled.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG WHEELHOUSE_URL=
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM ${BASE_IMAGE} AS python
# Python 3.11 from the base (python:3.11-slim) or, on a plain Debian/Ubuntu base, the
# distribution's python3.11; tini as PID 1 (forwards SIGTERM, reaps), libgomp for
# torch/xgboost, ca-certificates (the distribution's) for https callbacks.
RUN set -eux; \
    packages="tini libgomp1 ca-certificates"; \
    command -v python3.11 >/dev/null || packages="$packages python3.11 python3.11-venv"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*

# The requirement lists of pyproject.toml, nothing else of it: an install below is redone
# only when its list changes (COPY --from is cached by content). requirements-gateway.txt:
# the base dependencies; requirements.txt: those and the [worker] and [torchserve] extras.
FROM python AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python3.11 -c 'import tomllib; p = tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]; x = p["optional-dependencies"]; open("/tmp/requirements-gateway.txt", "w").write("\n".join(p["dependencies"]) + "\n"); open("/tmp/requirements.txt", "w").write("\n".join(p["dependencies"] + x["worker"] + x["torchserve"]) + "\n")'

# pip into /opt/venv from the wheelhouse (CI) or PyPI + the PyTorch CPU index: venv-install FILE.
FROM python AS pip
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3.11 -m venv /opt/venv \
    && printf '%s\n' '#!/bin/sh' 'set -eu' \
        'if [ -n "$WHEELHOUSE_URL" ]; then set -- --no-index --find-links "$WHEELHOUSE_URL" -r "$1";' \
        'else set -- --extra-index-url "$TORCH_INDEX_URL" -r "$1"; fi' \
        'exec /opt/venv/bin/pip install "$@"' > /usr/local/bin/venv-install \
    && chmod 0755 /usr/local/bin/venv-install

# The gateway's environment: no torch, xgboost, scikit-learn, scipy or TorchServe.
FROM pip AS build-gateway
ARG WHEELHOUSE_URL
ARG TORCH_INDEX_URL
COPY --from=requirements /tmp/requirements-gateway.txt /tmp/requirements-gateway.txt
RUN set -eux; \
    venv-install /tmp/requirements-gateway.txt; \
    /opt/venv/bin/python -c 'import importlib.util as u, cv2, fastapi, highdicom, psycopg, celery; heavy = [m for m in ("torch", "xgboost", "sklearn", "scipy", "ts") if u.find_spec(m)]; assert not heavy, heavy'; \
    find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# Every role's environment (workers, TorchServe's handler, training and diagnose in the CLI).
FROM pip AS build
ARG WHEELHOUSE_URL
ARG TORCH_INDEX_URL
COPY --from=requirements /tmp/requirements.txt /tmp/requirements.txt
RUN set -eux; \
    venv-install /tmp/requirements.txt; \
    /opt/venv/bin/python -c 'import torch, cv2, xgboost, psycopg; assert "+cpu" in torch.__version__ or torch.version.cuda, torch.__version__'; \
    # xgboost pulls NCCL (~470 MB) for multi-GPU training only; it is dlopen-ed on demand,
    # never on the CPU, so a CPU image drops it.
    if /opt/venv/bin/python -c 'import sys, torch; sys.exit(torch.version.cuda is not None)'; then \
        /opt/venv/bin/pip uninstall -y nvidia-nccl-cu12; \
        /opt/venv/bin/python -c 'import numpy, xgboost; xgboost.XGBClassifier(n_estimators=2).fit(numpy.eye(4), [0, 1, 0, 1])'; \
    fi; \
    find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# This checkout's code and the `covidct` command, shared by both images.
FROM python AS code
WORKDIR /app
COPY alembic.ini pyproject.toml ./
COPY migrations ./migrations
COPY models ./models
COPY services ./services
COPY docker/healthcheck.py /usr/local/bin/covidct-healthcheck
# `covidct` runs this checkout's code (its paths - models/, migrations/ - are relative to it).
RUN printf '#!/bin/sh\nexec /opt/venv/bin/python -m services.cli "$@"\n' > /usr/local/bin/covidct \
    && chmod 0755 /usr/local/bin/covidct /usr/local/bin/covidct-healthcheck \
    && python3.11 -m compileall -q /app/services /app/migrations

# The gateway's copy: model cards and configs, not the weights (it scores nothing).
FROM code AS code-gateway
RUN find /app/models -name '*.pt' -delete

# What both images have besides their environment and code: user, settings, entry point.
FROM python AS runtime
ARG VERSION=0.1.0
ARG SLICE_MODEL_VERSION=v1.1
ARG ENSEMBLE_MODEL_VERSION=v3
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.covidct.slice-model-version="${SLICE_MODEL_VERSION}" \
      io.covidct.ensemble-model-version="${ENSEMBLE_MODEL_VERSION}"
RUN groupadd --system --gid 10001 covidct \
    && useradd --system --uid 10001 --gid covidct --home-dir /home/covidct --create-home covidct \
    && install -d -o covidct -g covidct -m 0700 /var/lib/covidct
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    COVIDCT_VAR_DIR=/var/lib/covidct \
    COVIDCT_MODELS_DIR=/app/models \
    COVIDCT_SLICE_MODEL_VERSION=${SLICE_MODEL_VERSION} \
    COVIDCT_ENSEMBLE_MODEL_VERSION=${ENSEMBLE_MODEL_VERSION}
USER 10001:10001
EXPOSE 8000
# The role is read from PID 1's command line: gateway -> GET /healthz, worker -> Celery ping
# of this container's node, anything else (migrate, CLI) -> healthy.
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["/opt/venv/bin/python", "/usr/local/bin/covidct-healthcheck"]
ENTRYPOINT ["/usr/bin/tini", "--", "covidct"]
CMD ["gateway"]

# The slim gateway image (--target gateway): the API, uploads, migrations and admin commands
# (`covidct migrate | tenants | users`); no pipeline (`covidct diagnose`, workers but webhooks).
FROM runtime AS gateway
LABEL org.opencontainers.image.title="covidct-gateway" \
      org.opencontainers.image.description="covidct gateway (API, uploads), migrations and admin CLI"
COPY --from=build-gateway /opt/venv /opt/venv
COPY --from=code /usr/local/bin/covidct /usr/local/bin/covidct-healthcheck /usr/local/bin/
COPY --from=code-gateway /app /app

# The full image (default target): every Celery worker, migrations, the CLI; the gateway too.
FROM runtime AS app
LABEL org.opencontainers.image.title="covidct-app" \
      org.opencontainers.image.description="covidct gateway, Celery workers, migrations and CLI"
COPY --from=build /opt/venv /opt/venv
COPY --from=code /usr/local/bin/covidct /usr/local/bin/covidct-healthcheck /usr/local/bin/
COPY --from=code /app /app
