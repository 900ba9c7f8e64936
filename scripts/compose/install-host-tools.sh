#!/usr/bin/env bash
# What `make compose-test` needs on the host, installed only when missing: Debian's docker.io
# (dockerd; the docker client is used from PATH when present) and debootstrap (the base
# image), then the Compose v2 plugin under var/tools/docker (harness/compose.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
missing=()
command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        iptables ca-certificates >/dev/null
fi
"${PYTHON:-.venv/bin/python}" -m harness.compose install-tools
