# Shared by the fake Proxmox VE programs (tests/shipping.rs): each call is appended to
# $FAKE_PVE_LOG as one line (temporary paths as $TMP/<name>), state lives in
# $FAKE_PVE_STATE. They answer the way pveum, pveam, pct and openssl of PVE 8 do.
# shellcheck shell=bash
set -euo pipefail
record() {
  local line="$1" a
  shift
  for a in "$@"; do
    case "$a" in
      /tmp/tmp.*) a="\$TMP/$(basename "$a")" ;;
    esac
    line="$line $a"
  done
  printf '%s\n' "$line" >>"$FAKE_PVE_LOG"
}
S="$FAKE_PVE_STATE"
mkdir -p "$S"
