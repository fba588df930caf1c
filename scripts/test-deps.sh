#!/usr/bin/env bash
# Installs the third-party pieces the end-to-end agent tests need, into one folder:
#   $ZLH_TEST_DEPS/node_modules/flying-squid   (npm: flying-squid@1.12, a Minecraft 1.21.4 server in Node.js)
#   $ZLH_TEST_DEPS/venv                         (python venv with mcstatus, an independent SLP client,
#                                                and schemathesis, which fuzzes the API from its OpenAPI document)
#   /usr/bin/chromium, /usr/bin/chromedriver    (Debian: chromium, chromium-driver; the UI tests' headless browser)
#   shellcheck, systemd-analyze, objdump         (Debian: shellcheck, systemd, binutils; tests/shipping.rs)
# Default folder: <repo>/target/test-deps. Idempotent: a second run only checks and prints paths.
# See tests/support/FLYING_SQUID.md for how the server is started and configured.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="${ZLH_TEST_DEPS:-$REPO/target/test-deps}"
FS_SPEC="flying-squid@1.12"
MCSTATUS_SPEC="mcstatus>=11,<15"
SCHEMATHESIS_SPEC="schemathesis==4.32.5"

log() { printf 'test-deps: %s\n' "$*" >&2; }

# apt-get only as a last resort: as root, and only for a tool that is missing.
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    log "missing $* and not root: install it and re-run"; exit 1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v node >/dev/null || apt_install nodejs
command -v npm >/dev/null || apt_install npm
command -v python3 >/dev/null || apt_install python3
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  pyver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  apt_install "python${pyver}-venv" || apt_install python3-venv
fi

# ---- headless Chromium + chromedriver (Debian packages; tests/support/browser.rs) ----
CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver
if [ ! -x "$CHROMIUM" ] || [ ! -x "$CHROMEDRIVER" ]; then
  apt_install chromium chromium-driver
fi

# ---- shellcheck, systemd-analyze, objdump (tests/shipping.rs: scripts and the unit) ----
command -v shellcheck >/dev/null || apt_install shellcheck
command -v systemd-analyze >/dev/null || apt_install systemd
command -v objdump >/dev/null || apt_install binutils

mkdir -p "$DEPS"

# ---- flying-squid (npm, local prefix, no global install) ----
FS_DIR="$DEPS/node_modules/flying-squid"
fs_ok() {
  [ -f "$FS_DIR/package.json" ] &&
    node -e 'const v=require(process.argv[1]).version; process.exit(/^1\.12\./.test(v)?0:1)' "$FS_DIR/package.json" 2>/dev/null &&
    [ -f "$DEPS/.flying-squid-ok" ]
}
if ! fs_ok; then
  log "npm install $FS_SPEC into $DEPS (takes a minute the first time)"
  rm -f "$DEPS/.flying-squid-ok"
  # --no-audit/--no-fund: no extra registry round trips; engine warnings (node 20 vs >=22) are expected.
  npm install --prefix "$DEPS" --no-audit --no-fund --loglevel=error "$FS_SPEC" >&2
  # the package must at least load on this node (it is what the start command runs)
  (cd "$DEPS" && node -e 'require("flying-squid")') >&2
  touch "$DEPS/.flying-squid-ok"
fi

# ---- mcstatus (PyPI, in a venv) ----
VENV="$DEPS/venv"
mc_ok() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import mcstatus' 2>/dev/null; }
if ! mc_ok; then
  log "pip install '$MCSTATUS_SPEC' into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$MCSTATUS_SPEC" >&2
  mc_ok
fi

# ---- schemathesis (PyPI, same venv) ----
st_ok() { "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "${SCHEMATHESIS_SPEC#*==}"; }
if ! st_ok; then
  log "pip install '$SCHEMATHESIS_SPEC' into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$SCHEMATHESIS_SPEC" >&2
  st_ok
fi

FS_VERSION="$(node -p 'require(process.argv[1]).version' "$FS_DIR/package.json")"
MC_VERSION="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mcstatus"))')"
# KEY=value lines, easy to source or grep
echo "ZLH_TEST_DEPS=$DEPS"
echo "FLYING_SQUID_DIR=$FS_DIR"
echo "FLYING_SQUID_VERSION=$FS_VERSION"
echo "NODE_PATH=$DEPS/node_modules"
echo "NODE_VERSION=$(node --version)"
echo "MCSTATUS_PYTHON=$VENV/bin/python"
echo "MCSTATUS_VERSION=$MC_VERSION"
echo "SCHEMATHESIS=$VENV/bin/schemathesis"
echo "CHROMIUM=$CHROMIUM"
echo "CHROMIUM_VERSION=$("$CHROMIUM" --version 2>/dev/null | grep -oE '[0-9]+(\.[0-9]+){3}' | head -n1)"
echo "CHROMEDRIVER=$CHROMEDRIVER"
echo "CHROMEDRIVER_VERSION=$("$CHROMEDRIVER" --version 2>/dev/null | grep -oE '[0-9]+(\.[0-9]+){3}' | head -n1)"
