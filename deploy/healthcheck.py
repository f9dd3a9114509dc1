"""The container's HEALTHCHECK: GET /healthz on this node, exit 0 on `200`, 1 otherwise.

Standard library only, so that it starts fast (every interval) and needs nothing but Python.
It reads what the node reads: CONSULT_PORT (default 8080), CONSULT_HOST (a wildcard address
is asked on loopback) and CONSULT_TLS_CERT (set: HTTPS, the certificate left unchecked: it
names the public host, and this is a liveness probe, not a client). A node whose port was
given with `--port` instead of CONSULT_PORT needs CONSULT_PORT set for this check too.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

TIMEOUT_S = 2.0
WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def healthz_url(env: Mapping[str, str]) -> str:
    """The address of this node's /healthz, from the environment the node reads."""
    host = env.get("CONSULT_HOST", "127.0.0.1").strip()
    if host in WILDCARDS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    port = int(env.get("CONSULT_PORT", "8080"))
    scheme = "https" if env.get("CONSULT_TLS_CERT") else "http"
    return f"{scheme}://{host}:{port}/healthz"


def check(url: str, timeout_s: float = TIMEOUT_S) -> tuple[bool, str]:
    """(healthy, what was seen) for one GET of url."""
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            return response.status == 200, f"{response.status} {response.read(200)!r}"
    except urllib.error.HTTPError as exc:
        return False, f"{exc.code} {exc.reason}"
    except (OSError, ValueError) as exc:
        return False, f"{type(exc).__name__}: {exc}"


def main() -> int:
    try:
        url = healthz_url(os.environ)
    except ValueError as exc:
        print(f"unhealthy: bad CONSULT_PORT ({exc})", file=sys.stderr)
        return 1
    healthy, seen = check(url)
    print(f"{'healthy' if healthy else 'unhealthy'}: {url}: {seen}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
