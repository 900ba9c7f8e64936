# CI only: Caddy from Debian's package on the locally made base (no registry here), run like
# the official caddy image: `caddy run --config /etc/caddy/Caddyfile`, data under /data.
ARG BASE_IMAGE=covidct-ci-base:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends caddy ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    install -d -m 0700 /data /config
ENV XDG_DATA_HOME=/data XDG_CONFIG_HOME=/config
EXPOSE 8443
CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
