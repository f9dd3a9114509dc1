# Redis for compose.yaml, from Debian's redis-server package on the node's base image (so the
# whole stack builds from one Debian base, offline too: deploy/offline-base.sh). The registry's
# `redis:7` image does the same job: compose.yaml names the swap.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ARG DEBIAN_FRONTEND=noninteractive
# Versions are those of the base's bookworm release, security updates included.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/*
# The package's `redis` system user (its home /var/lib/redis is the data folder), created
# with the next free system uid: no fixed number to give (compose only; the node's image runs
# as 10001).
# hadolint ignore=DL3066
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379/tcp
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"]
ENTRYPOINT ["redis-server"]
# Loopback only, no snapshots: the fleet's state is shared, short-lived coordination.
CMD ["--bind", "127.0.0.1", "--port", "6379", "--protected-mode", "yes", \
     "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis"]
