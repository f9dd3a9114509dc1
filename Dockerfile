# The consultation node (`mediaserver run`) in a container: docs/containers.md.
#
#   podman build -t consult-node .        # or `docker build`, or `make image`
#
# BASE is a Debian 12 (bookworm) image; Debian's python3 there is Python 3.11, the one the
# venv is built with and run by. Without a reachable registry, import a debootstrap'd bookworm
# under this name first: deploy/offline-base.sh.
ARG BASE=debian:bookworm-slim

# ---- builder: a venv at /opt/consult with the node and its runtime dependencies only ---------
FROM ${BASE} AS builder
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Versions are those of the base's bookworm release (its security updates included): pinning
# Debian package versions would break the build at the next point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/consult
WORKDIR /src
# The runtime dependencies first, read from pyproject.toml's [project] dependencies (never the
# dev or loadtest extras): this layer is kept while only the code changes.
COPY pyproject.toml ./
# The requirements come from pyproject.toml, whose ranges are the project's pins.
# hadolint ignore=DL3042
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >/tmp/requirements.txt \
    && /opt/consult/bin/pip install -r /tmp/requirements.txt
# Only the node's packages: the test, benchmark, load-test and compatibility tools stay out,
# and so do the console scripts pyproject.toml declares for them (`compat`, `loadtest`).
# Nothing installs packages at run time: pip and setuptools leave the venv once it is checked.
COPY mediaserver ./mediaserver
COPY signaling ./signaling
RUN /opt/consult/bin/pip install --no-deps . \
    && /opt/consult/bin/pip check \
    && /opt/consult/bin/python -c 'import uvloop, aiortc, av, signaling.app, mediaserver.api' \
    && rm -f /opt/consult/bin/compat /opt/consult/bin/loadtest \
    && /opt/consult/bin/python -m pip uninstall -y -q pip setuptools \
    && rm -f /opt/consult/bin/activate* /opt/consult/bin/Activate.ps1
COPY deploy/healthcheck.py /opt/consult/healthcheck.py

# ---- runtime: Debian's python3, the venv, an unprivileged user ----------------------------
FROM ${BASE}
ARG DEBIAN_FRONTEND=noninteractive
# The same python3 as the builder's (same base, same bookworm release): the venv's interpreter.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin consult
COPY --from=builder /opt/consult /opt/consult
ENV PATH=/opt/consult/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONSULT_HOST=0.0.0.0 \
    CONSULT_PORT=8080 \
    CONSULT_RTC_PORTS=40000-40099
# HTTP and the signaling WebSocket (HTTPS/WSS with --tls-cert/--tls-key).
EXPOSE 8080/tcp
# Media: UDP on CONSULT_RTC_PORTS (40000-40099 by default, one slice per media worker). It is
# not EXPOSEd: `-P` would map each port to a random host port, and ICE announces the
# container's own port numbers. Publish the range 1:1 (`-p 40000-40099:40000-40099/udp`) with
# CONSULT_ICE_ANNOUNCE set to the host's public address, or run with host networking
# (docs/containers.md, "Networking for media").
USER 10001:10001
WORKDIR /opt/consult
# Liveness only (/healthz): /readyz turns 503 while draining, when the node must stay up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/bin/python3", "-I", "/opt/consult/healthcheck.py"]
# aiohttp stops the node on SIGTERM: listening sockets closed, every WebSocket closed with 1001
# (going away), media and workers stopped, exit 0. That is a stop, not a drain: drain first
# (POST /api/v1/node/drain, wait for `rooms` to reach 0), then stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/consult/bin/mediaserver"]
# Outside dev mode; the secrets as files, e.g. compose `secrets:` under /run/secrets.
CMD ["run", "--api-key-file", "/run/secrets/consult_api_key", \
     "--token-secret-file", "/run/secrets/consult_token_secret"]
