# TorchServe 0.12 serving the shipped slice CNN (`covidct models build-mar`, built into the
# image). The archive's handler imports services.inference.handler, so TorchServe must run
# from a Python environment that has this repository and its dependencies: this image takes
# the virtual environment and the code from the application image (APP_IMAGE, build it
# first) and adds Java 17 on BASE_IMAGE.
#
# CPU (default): the app image's torch (2.13.0+cpu).
# GPU (`make gpu-image`, docker-compose.gpu.yml): the same BASE_IMAGE, torch swapped for the
# CUDA build of the package index - PyPI's torch 2.13.0 for Linux x86_64 is built with CUDA
# 13.0 and brings the CUDA runtime, cuBLAS, cuDNN and NCCL as nvidia-* wheels, so no CUDA base
# image is pulled; the host needs only the NVIDIA driver (580 or newer for CUDA 13.0) and the
# NVIDIA Container Toolkit. TORCH_INDEX_URL picks the index (https://pypi.org/simple for
# that build); TORCH_WHEELHOUSE_URL, a wheelhouse served on loopback (CI, offline), wins.
# docs/images.md has the sizes and build times.
# CI: BASE_IMAGE=covidct-ci-base:bookworm, apt over the host network (build `network: host`).
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG APP_IMAGE=covidct-app:0.1.0

FROM ${APP_IMAGE} AS app

# Java for TorchServe's frontend, Python 3.11 for its workers.
FROM ${BASE_IMAGE} AS runtime
USER root
RUN set -eux; \
    packages="tini libgomp1 ca-certificates openjdk-17-jre-headless"; \
    command -v python3.11 >/dev/null || packages="$packages python3.11 python3.11-venv"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*

# The environment TorchServe runs: the app's, pointed at this base's python3.11, and on a GPU
# build with the CUDA torch instead of the CPU one. A stage of its own, so the image holds one
# torch (not the CUDA build over a CPU build's layer), and fed by the app's /opt/venv alone
# (COPY --from is cached by content), so a code change does not redo the torch swap.
FROM runtime AS venv
COPY --from=app /opt/venv /opt/venv
ARG TORCH_INDEX_URL=
ARG TORCH_WHEELHOUSE_URL=
RUN set -eux; \
    rm -f /opt/venv/bin/python /opt/venv/bin/python3 /opt/venv/bin/python3.11; \
    python3.11 -m venv --upgrade --without-pip /opt/venv; \
    if [ -n "$TORCH_WHEELHOUSE_URL" ]; then \
        set -- --no-index --find-links "$TORCH_WHEELHOUSE_URL"; \
    elif [ -n "$TORCH_INDEX_URL" ]; then \
        set -- --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple; \
    fi; \
    if [ "$#" -gt 0 ]; then \
        /opt/venv/bin/pip uninstall -y torch; \
        /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check "$@" torch==2.13.0; \
        /opt/venv/bin/python -c 'import torch; assert torch.version.cuda, torch.__version__; print("torch", torch.__version__, "CUDA", torch.version.cuda)'; \
        find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +; \
    fi

FROM runtime AS torchserve
COPY --from=venv /opt/venv /opt/venv
COPY --from=app /app /app
RUN PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/app /opt/venv/bin/python -c 'import torch, ts, services.inference.handler'
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
