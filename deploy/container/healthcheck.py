"""The image's HEALTHCHECK: liveness, as Kubernetes' probe asks it (``GET /healthz``)."""

import os
import sys
import urllib.request

port = os.environ.get("RELAY_PORT", "8080")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except OSError:
    sys.exit(1)
