"""TorchServe health: a READY worker for the model (management API) and /ping answering."""

from __future__ import annotations

import json
import os
import sys
import urllib.request

MODEL = os.environ.get("COVIDCT_SCORER_MODEL_NAME", "slice-cnn")


def main() -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:8081/models/{MODEL}", timeout=5) as response:
        entries = json.load(response)
    if not any(w.get("status") == "READY" for e in entries for w in e.get("workers", [])):
        print(f"no READY worker for {MODEL}", file=sys.stderr)
        return 1
    with urllib.request.urlopen("http://127.0.0.1:8080/ping", timeout=5) as response:
        return 0 if response.status == 200 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        sys.exit(1)
