#!/bin/sh
# The MinIO image's command line (`server DIR --address [HOST]:PORT`) onto moto_server.
set -eu
port=9000
if [ "${1:-}" = "server" ]; then
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --address) port="${2##*:}"; shift 2 ;;
            *) shift ;;
        esac
    done
    exec /opt/moto/bin/moto_server -H 0.0.0.0 -p "$port"
fi
exec "$@"
