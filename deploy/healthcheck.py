"""Container health probe: exit 0 only when the gateway answers ``/v2/health/ready`` with 200.

Stdlib only (the slim image has no curl); the port follows ``INFERGATE_HTTP_PORT`` like the server,
and ``INFERGATE_TLS_CERT_FILE`` switches it to HTTPS (the local probe does not verify the
certificate, which names the public host). Under mTLS use a TCP probe instead.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("INFERGATE_HTTP_PORT", "8000")
    tls = bool(os.environ.get("INFERGATE_TLS_CERT_FILE"))
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/v2/health/ready"
    context = ssl._create_unverified_context() if tls else None  # noqa: S323 - local probe
    try:
        with urllib.request.urlopen(url, timeout=2.0, context=context) as response:  # noqa: S310
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"not ready: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
