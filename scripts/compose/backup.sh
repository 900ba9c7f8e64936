#!/usr/bin/env bash
# Back up a running compose stack into DIR: the database (pg_dump, custom format) and every blob
# (covidct blobs dump: a tar streamed out of the S3 bucket). Usage:
#   scripts/compose/backup.sh DIR
# COVIDCT_COMPOSE: the compose command of the stack (default: docker compose; add -p/-f/
# --env-file as you run it). Keep .env beside the backup, offline: COVIDCT_SECRET_KEYS decrypts
# the webhook secrets in the dump. Redis (the queue) is not backed up: a job queued or running
# at backup time is in the dump as such and is queued again by the workers' lease recovery.
set -euo pipefail
dir=${1:?usage: backup.sh DIR}
read -r -a compose <<< "${COVIDCT_COMPOSE:-docker compose}"
umask 077
mkdir -p "$dir"
started=$(date +%s)
# The database first: a blob is written before the row that names it, so every blob the dump
# names exists when the blob copy starts (blobs written after are extra, and harmless).
"${compose[@]}" exec -T postgres sh -c \
    'pg_dump --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" --format custom' \
    > "$dir/postgres.dump"
"${compose[@]}" run --rm --no-deps -T s3-init blobs dump > "$dir/blobs.tar"
(cd "$dir" && sha256sum postgres.dump blobs.tar > SHA256SUMS)
echo "backup in $dir: $(du -sh "$dir" | cut -f1), $(( $(date +%s) - started )) s"
