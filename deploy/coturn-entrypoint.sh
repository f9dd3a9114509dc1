#!/bin/sh
# turnserver with its shared secret (TURN REST API credentials, `use-auth-secret`) read from a
# file: turnserver takes it only as an option or in its config file, and an option is visible
# in `ps`. The file is $TURN_SECRET_FILE (default /run/secrets/turn_secret). It is written to
# a config file of mode 0600 under $TMPDIR (a tmpfs in compose.yaml), with
# `external-ip=$TURN_EXTERNAL_IP` when that is set; turnserver gets that config file and this
# script's arguments.
set -eu
secret_file=${TURN_SECRET_FILE:-/run/secrets/turn_secret}
secret=$(tr -d '\r\n' <"$secret_file")
[ -n "$secret" ] || { echo "coturn: the TURN secret file $secret_file is empty" >&2; exit 2; }
umask 077
conf=$(mktemp "${TMPDIR:-/tmp}/turnserver.XXXXXX")
printf 'use-auth-secret\nstatic-auth-secret=%s\n' "$secret" >"$conf"
unset secret
if [ -n "${TURN_EXTERNAL_IP:-}" ]; then
  printf 'external-ip=%s\n' "$TURN_EXTERNAL_IP" >>"$conf"
fi
exec turnserver -c "$conf" "$@"
