#!/usr/bin/env bash
# Restore a backup of scripts/compose/backup.sh into a NEW stack (empty volumes), then start it
# (every service, or only those named and what they depend on).
#   scripts/compose/restore.sh DIR [SERVICE...]
# Same .env as the backup's stack (COVIDCT_SECRET_KEYS above all; the passwords may differ).
# COVIDCT_COMPOSE as for backup.sh. Refuses a database that has jobs already.
set -euo pipefail
dir=${1:?usage: restore.sh DIR [SERVICE...]}
shift
read -r -a compose <<< "${COVIDCT_COMPOSE:-docker compose}"
started=$(date +%s)
(cd "$dir" && sha256sum --check --quiet SHA256SUMS)
"${compose[@]}" up --detach --wait postgres minio
"${compose[@]}" run --rm --no-deps -T s3-init
sql() {
    "${compose[@]}" exec -T postgres sh -c \
        'psql --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -tA -v ON_ERROR_STOP=1 -c "$0"' "$1"
}
if [ "$(sql "SELECT to_regclass('public.jobs') IS NOT NULL")" = "t" ] \
    && [ "$(sql "SELECT count(*) FROM jobs")" != "0" ]; then
    echo "restore.sh: the stack's database has jobs: restore into a new stack (empty volumes)" >&2
    exit 2
fi
"${compose[@]}" exec -T postgres sh -c \
    'pg_restore --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" --clean --if-exists --no-owner --exit-on-error' \
    < "$dir/postgres.dump"
"${compose[@]}" run --rm --no-deps -T s3-init blobs load < "$dir/blobs.tar"
# migrate (already at the dump's revision, or upgrades an older one), then everything else.
"${compose[@]}" up --detach --wait "$@"
echo "restored $dir in $(( $(date +%s) - started )) s"
