# The `pacs` profile's hospital PACS: Debian's Orthanc with its DICOMweb plugin, on the same
# Debian base as the other images (COVIDCT_ORTHANC_BASE_IMAGE=covidct-ci-base:bookworm builds
# it offline from the debootstrapped base, as docker-compose.ci.yml does for PostgreSQL and
# Redis). Configuration: docker/orthanc/covidct.json (env substitution for the password).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        orthanc orthanc-dicomweb; \
    rm -rf /var/lib/apt/lists/*; \
    rm -f /etc/orthanc/orthanc.json; \
    install -d -o orthanc -g orthanc -m 0750 /var/lib/orthanc/db
COPY docker/orthanc/covidct.json /etc/orthanc/covidct.json
USER orthanc
EXPOSE 4242 8042
# Orthanc substitutes ${ORTHANC_PASSWORD} in its configuration; an empty one is refused.
CMD ["sh", "-c", "test -n \"$ORTHANC_PASSWORD\" || { echo 'set ORTHANC_PASSWORD in .env' >&2; exit 1; }; exec /usr/sbin/Orthanc /etc/orthanc/"]
