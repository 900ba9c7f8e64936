# CI only: Redis 7 from Debian's packages on the locally made base (no registry here), run
# like the official redis image: `redis-server ...` as user redis, data in /data.
ARG BASE_IMAGE=covidct-ci-base:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; \
    rm -rf /var/lib/apt/lists/*; \
    install -d -o redis -g redis -m 0750 /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
