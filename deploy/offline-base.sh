#!/usr/bin/env bash
# The Dockerfile's base image, built here when no container registry can be reached: a
# debootstrap'd Debian 12 (bookworm, minbase) imported into podman as `debian:bookworm-slim`
# (the name the Dockerfile's BASE defaults to). docs/containers.md, "Offline base image".
#
#   deploy/offline-base.sh            # as root, on a Debian machine with podman and debootstrap
#
# The rootfs gets this machine's Debian mirror (bookworm, bookworm-updates, bookworm-security),
# the apt settings that reach it (proxy, validity of snapshot mirrors) and this machine's own
# CA certificates (/usr/local/share/ca-certificates: an intercepting proxy's), so that apt and
# pip work inside the build as they do here. Those CA files are trusted by an image built on
# this base once it installs ca-certificates (the builder stage does): such an image is for
# this machine, not for shipping; build the shipped one on the registry's base.
# Like the registry's slim image, documentation, man pages and locales are left out of it
# (dpkg path excludes, kept for later installs).
#
# Env: NAME (default debian:bookworm-slim), ROOTFS (default /var/tmp/consult-base-rootfs,
# removed at the end unless KEEP_ROOTFS=1), MIRROR (default: this machine's Debian mirror, the
# first non-security one of /etc/apt/sources.list*), ENGINE (default podman).
set -euo pipefail

NAME=${NAME:-debian:bookworm-slim}
ROOTFS=${ROOTFS:-/var/tmp/consult-base-rootfs}
ENGINE=${ENGINE:-podman}
[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap)" >&2; exit 2; }
command -v "$ENGINE" >/dev/null || { echo "$ENGINE is not installed (apt-get install podman)" >&2; exit 2; }
command -v debootstrap >/dev/null || {
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -yq debootstrap
}

host_mirror() {
  # The first Debian (not security) mirror of this machine's apt sources, deb822 or one-line.
  local m
  m=$(grep -hs -A3 '^Types:.*deb' /etc/apt/sources.list.d/*.sources |
    awk '/^URIs:/ {print $2}' | grep -v security | head -n1 || true)
  [ -n "$m" ] || m=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
    awk '{for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' |
    grep -v security | head -n1 || true)
  echo "$m"
}

MIRROR=${MIRROR:-$(host_mirror)}
[ -n "$MIRROR" ] || { echo "no Debian mirror in /etc/apt/sources.list*: set MIRROR" >&2; exit 2; }
SECURITY=${MIRROR%/debian}/debian-security

rm -rf "$ROOTFS"
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR"

rm -f "$ROOTFS"/etc/apt/sources.list
cat >"$ROOTFS"/etc/apt/sources.list.d/debian.sources <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
for f in /etc/apt/apt.conf.d/*; do # proxies, validity checks: only what reaches the mirror
  grep -qiE 'proxy|Check-Valid-Until' "$f" 2>/dev/null && cp -a "$f" "$ROOTFS"/etc/apt/apt.conf.d/
done
if [ -d /usr/local/share/ca-certificates ]; then
  mkdir -p "$ROOTFS"/usr/local/share/ca-certificates
  cp -a /usr/local/share/ca-certificates/. "$ROOTFS"/usr/local/share/ca-certificates/
fi

# What the registry's slim image leaves out, and how it keeps apt's cache empty.
cat >"$ROOTFS"/etc/dpkg/dpkg.cfg.d/slim <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
cat >"$ROOTFS"/etc/apt/apt.conf.d/docker-clean <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
find "$ROOTFS"/usr/share/doc -mindepth 2 ! -name copyright ! -type d -delete
find "$ROOTFS"/usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/*
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
  "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/*
: >"$ROOTFS"/etc/resolv.conf  # the engine provides one at run time
: >"$ROOTFS"/etc/hostname

tar -C "$ROOTFS" --numeric-owner -c . | "$ENGINE" import --change 'CMD ["bash"]' - "$NAME"
[ "${KEEP_ROOTFS:-0}" = 1 ] || rm -rf "$ROOTFS"
"$ENGINE" image ls "$NAME"
