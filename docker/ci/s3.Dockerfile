# CI only: an S3 server in place of the MinIO image of docker-compose.yml, which no registry
# here can give (MinIO ships no Debian package and PyPI has no MinIO server). moto's server
# mode (moto[server], from the host's wheelhouse) speaks the S3 HTTP API the app uses: bucket
# create/head, put, multipart, ranged get, list, batch delete. Unlike MinIO it keeps blobs in
# memory and accepts any credentials: a stand-in for the test stack, never for production.
ARG BASE_IMAGE=covidct-ci-base:bookworm
FROM ${BASE_IMAGE}
ARG WHEELHOUSE_URL=
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv tini; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/moto; \
    /opt/moto/bin/pip install --no-cache-dir --no-index --find-links "$WHEELHOUSE_URL" 'moto[server]'; \
    useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin moto
COPY docker/ci/s3-entrypoint.sh /usr/local/bin/s3-entrypoint
USER moto
EXPOSE 9000
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/s3-entrypoint"]
CMD ["server", "/data", "--address", ":9000"]
