"""Container health check of the covidct image: the role is PID 1's command line (tini --
covidct ROLE ...). gateway: GET /healthz; worker: a Celery ping of this container's node
(``covidct@<hostname>``, as ``covidct worker`` names it); other roles: healthy."""

from __future__ import annotations

import socket
import sys
import urllib.request


def role() -> str:
    try:
        with open("/proc/1/cmdline", "rb") as handle:
            args = handle.read().decode(errors="replace").split("\0")
    except OSError:
        return ""
    for name in ("gateway", "worker"):
        if name in args:
            return name
    return ""


def main() -> int:
    current = role()
    if current == "gateway":
        with urllib.request.urlopen("http://127.0.0.1:8000/healthz", timeout=10) as response:
            return 0 if response.status == 200 else 1
    if current == "worker":
        from services.common.config import get_settings
        from services.common.queue import celery_app, configure

        configure(get_settings())
        node = f"covidct@{socket.gethostname()}"
        replies = celery_app.control.ping(destination=[node], timeout=5.0)
        return 0 if any(node in reply for reply in replies) else 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # any failure is "unhealthy", with the reason in docker inspect
        print(f"unhealthy: {exc}", file=sys.stderr)
        sys.exit(1)
