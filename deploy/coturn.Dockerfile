# coturn for compose.yaml, from Debian's coturn package on the node's base image (offline too:
# deploy/offline-base.sh). The registry's `coturn/coturn` image does the same job, with its own
# way of taking the secret: compose.yaml names the swap.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ARG DEBIAN_FRONTEND=noninteractive
# Versions are those of the base's bookworm release, security updates included.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends coturn tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 consult \
    && usermod --append --groups consult turnserver
# The secret files are shared with the nodes (uid 10001, group 10001): group `consult`, the
# nodes' group, lets turnserver read a `root:10001` 0440 file too (docs/containers.md).
COPY --chmod=755 coturn-entrypoint.sh /usr/local/bin/coturn-entrypoint
# The package creates this system user with the next free system uid: no fixed number to
# give (compose only; the node's image runs as 10001).
# hadolint ignore=DL3066
USER turnserver
EXPOSE 3478/udp 3478/tcp
# A STUN binding request to the listening port compose.yaml gives (--listening-port=3478).
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
    CMD ["turnutils_stunclient", "-p", "3478", "127.0.0.1"]
# turnserver handles neither SIGTERM nor SIGINT, and a process with pid 1 ignores a signal it
# does not handle: tini is pid 1 and passes SIGTERM on, so that `stop` ends turnserver at
# once instead of killing it after the grace period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/coturn-entrypoint"]
