# The `pacs` profile's hospital PACS: Debian's Orthanc with its DICOMweb plugin, on the same
# Debian base as the other images (COVIDCT_ORTHANC_BASE_IMAGE=covidct-ci-base:bookworm builds
# it offline from the debootstrapped base, as docker-compose.ci.yml does).
# Configuration: docker/orthanc/covidct.json alone (env substitution for the password).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# policy-rc.d: the package's postinst must not start an Orthanc in the build (a debootstrapped
# base, unlike Docker's debian images, has no such file).
RUN set -eux; \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 0755 /usr/sbin/policy-rc.d; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        orthanc orthanc-dicomweb; \
    rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d; \
    install -d -o orthanc -g orthanc -m 0750 /var/lib/orthanc/db
COPY docker/orthanc/covidct.json /etc/orthanc/covidct.json
USER orthanc
EXPOSE 4242 8042
# Only covidct.json: given the folder /etc/orthanc/, Orthanc would read the package's
# credentials.json (RegisteredUsers) and dicomweb.json (DicomWeb) too and refuse to start on
# sections defined twice. An empty ${ORTHANC_PASSWORD} is refused.
CMD ["sh", "-c", "test -n \"$ORTHANC_PASSWORD\" || { echo 'set ORTHANC_PASSWORD in .env' >&2; exit 1; }; exec /usr/sbin/Orthanc /etc/orthanc/covidct.json"]
