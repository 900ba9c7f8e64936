# TorchServe 0.12 serving the shipped slice CNN (`covidct models build-mar`, built into the
# image). The archive's handler imports services.inference.handler, so TorchServe must run
# from a Python environment that has this repository and its dependencies: this image takes
# the virtual environment and the code from the application image (APP_IMAGE, build it
# first) and adds Java 17 on BASE_IMAGE.
#
# CPU (default): BASE_IMAGE=python:3.11-slim-bookworm, the app image's torch (2.13.0+cpu).
# GPU: BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 (Python 3.11 from Ubuntu's
# python3.11) and TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128, which replaces
# torch with the CUDA build (docker-compose.gpu.yml sets both). The official
# pytorch/torchserve GPU image is not used: its Python is not 3.11, which the package needs.
# CI: BASE_IMAGE=covidct-ci-base:bookworm, apt over the host network (build `network: host`).
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG APP_IMAGE=covidct-app:0.1.0

FROM ${APP_IMAGE} AS app

FROM ${BASE_IMAGE} AS torchserve
USER root
RUN set -eux; \
    packages="tini libgomp1 ca-certificates openjdk-17-jre-headless"; \
    command -v python3.11 >/dev/null || packages="$packages python3.11 python3.11-venv"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*
COPY --from=app /opt/venv /opt/venv
COPY --from=app /app /app
ARG TORCH_INDEX_URL=
# Point the copied environment at this base's python3.11; on a GPU build, swap in CUDA torch.
RUN set -eux; \
    rm -f /opt/venv/bin/python /opt/venv/bin/python3 /opt/venv/bin/python3.11; \
    python3.11 -m venv --upgrade --without-pip /opt/venv; \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        /opt/venv/bin/pip install --no-cache-dir --force-reinstall \
            --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple torch==2.13.0; \
    fi; \
    PYTHONPATH=/app /opt/venv/bin/python -c 'import torch, ts, services.inference.handler'
ARG VERSION=0.1.0
ARG SLICE_MODEL_VERSION=v1.1
LABEL org.opencontainers.image.title="covidct-torchserve" \
      org.opencontainers.image.description="TorchServe 0.12 serving the covidct slice CNN" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.covidct.slice-model-version="${SLICE_MODEL_VERSION}" \
      io.covidct.torchserve-version="0.12.0"
RUN groupadd --system --gid 10002 model-server \
    && useradd --system --uid 10002 --gid model-server --home-dir /home/model-server \
       --create-home model-server \
    && install -d -o model-server -g model-server /home/model-server/logs /home/model-server/tmp
COPY docker/torchserve/config.properties /home/model-server/config.properties
COPY docker/torchserve/healthcheck.py /usr/local/bin/torchserve-healthcheck
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    COVIDCT_MODELS_DIR=/app/models \
    COVIDCT_SLICE_MODEL_VERSION=${SLICE_MODEL_VERSION} \
    LOG_LOCATION=/home/model-server/logs \
    METRICS_LOCATION=/home/model-server/logs \
    TEMP=/home/model-server/tmp \
    OMP_NUM_THREADS=2 \
    MKL_NUM_THREADS=2
# The model archive, built from the shipped artefacts of SLICE_MODEL_VERSION.
RUN cd /app && TMPDIR=/tmp python -m services.cli models build-mar \
        --version "${SLICE_MODEL_VERSION}" --out /home/model-server/model-store \
    && chown -R root:root /home/model-server/model-store && chmod 0755 /usr/local/bin/torchserve-healthcheck
USER 10002:10002
WORKDIR /home/model-server
EXPOSE 8080 8082
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD ["/opt/venv/bin/python", "/usr/local/bin/torchserve-healthcheck"]
ENTRYPOINT ["/usr/bin/tini", "--", "torchserve", "--foreground", "--ncs", \
            "--model-store", "/home/model-server/model-store", \
            "--ts-config", "/home/model-server/config.properties"]
