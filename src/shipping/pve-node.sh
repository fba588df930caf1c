#!/usr/bin/env bash
# Makes this Proxmox VE host a ready zlh node, in one run as root:
#   curl -fsSL '@@ZLH_URL@@/install/pve-node.sh?token=…' | bash
# 1. the role ZLH, the user zlh@pve and its privilege-separated API token zlh@pve!ctl
#    with exactly the privileges of zlh's docs/proxmox.md (pveum);
# 2. a Debian CT template (pveam) and from it the base template: the zlh binary from
#    the control plane (sha256-verified), a random bootstrap token (0600) and the agent's
#    systemd unit (pct push / pct exec), then `pct template`;
# 3. the certificate fingerprint of this node (/etc/pve/local/pve-ssl.pem);
# 4. registers the node with zlh using the one-time enrollment token.
# Running it again is safe: the role is refreshed, the user and a finished base template
# are reused, the API token is made anew (its secret cannot be read back). A spent or
# expired enrollment token stops it before anything is changed.
#
# Settings (environment): ZLH_TEMPLATE_VMID (9000), ZLH_BRIDGE (vmbr0), ZLH_STORAGE
# (local-lvm, the base template's disk), ZLH_TEMPLATE_STORAGE (local, CT templates),
# ZLH_PVE_API_URL (https://<first address of hostname -I>:8006), ZLH_PVE_NODE
# (hostname), ZLH_NODE_MEMORY_MB (the host's memory), ZLH_STATE_DIR (/root/.zlh),
# ZLH_ALLOW_LOOPBACK=1 / ZLH_ALLOW_INSECURE_HTTP=1 (an api_url on loopback / over http).
set -euo pipefail

ZLH_URL='@@ZLH_URL@@'
ENROLL_TOKEN='@@TOKEN@@'
NODE_NAME='@@NODE@@'
ZLH_SHA256='@@SHA256@@'

TEMPLATE_VMID="${ZLH_TEMPLATE_VMID:-9000}"
BRIDGE="${ZLH_BRIDGE:-vmbr0}"
STORAGE="${ZLH_STORAGE:-local-lvm}"
TEMPLATE_STORAGE="${ZLH_TEMPLATE_STORAGE:-local}"
STATE_DIR="${ZLH_STATE_DIR:-/root/.zlh}"
ROLE=ZLH
PVE_USER=zlh@pve
TOKEN_NAME=ctl
PRIVS=VM.Allocate,VM.Clone,VM.Audit,VM.Config.CPU,VM.Config.Memory,VM.Config.Network,VM.Config.Options,VM.PowerMgmt,Datastore.AllocateSpace,Datastore.Audit,SDN.Use,Sys.Audit
DESCRIPTION="zlh base template"

say() { printf 'zlh: %s\n' "$*" >&2; }
# True when $1 contains $2 (no pipe into grep -q: with pipefail its early exit fails the
# writer with SIGPIPE).
has() { [[ "$1" == *"$2"* ]]; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run this as root on the Proxmox VE host"
for c in pveum pveam pct openssl curl sha256sum; do
  command -v "$c" >/dev/null || die "$c is missing: is this a Proxmox VE host?"
done
case "$TEMPLATE_VMID" in *[!0-9]* | '') die "ZLH_TEMPLATE_VMID must be a number" ;; esac

# POSTs JSON ($2) to zlh ($1); prints the body, fails with zlh's message on an error.
zlh_post() {
  local body code
  body="$(mktemp)"
  code="$(curl -sS -o "$body" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    --data "$2" "$ZLH_URL$1")" || { rm -f "$body"; die "cannot reach zlh at $ZLH_URL"; }
  if [ "$code" != 200 ] && [ "$code" != 201 ]; then
    say "zlh answered $code: $(cat "$body")"
    rm -f "$body"
    return 1
  fi
  cat "$body"
  rm -f "$body"
}

# 0. Is the enrollment token still good? (Nothing is changed when it is not.)
zlh_post /install/pve-node/check "{\"token\":\"$ENROLL_TOKEN\"}" >/dev/null \
  || die "the enrollment token was refused: make a new one in zlh (Nodes -> Add Proxmox node)"

# 1. Role, user, API token.
if has "$(pveum role list --output-format json)" "\"roleid\":\"$ROLE\""; then
  say "refreshing the role $ROLE"
  pveum role modify "$ROLE" --privs "$PRIVS"
else
  say "creating the role $ROLE"
  pveum role add "$ROLE" --privs "$PRIVS"
fi
if has "$(pveum user list --output-format json)" "\"userid\":\"$PVE_USER\""; then
  say "reusing the user $PVE_USER"
else
  pveum user add "$PVE_USER" --comment "zlh control plane"
fi
if has "$(pveum user token list "$PVE_USER" --output-format json)" "\"tokenid\":\"$TOKEN_NAME\""; then
  say "replacing the API token $PVE_USER!$TOKEN_NAME (its secret cannot be read back)"
  pveum user token remove "$PVE_USER" "$TOKEN_NAME"
fi
token_json="$(pveum user token add "$PVE_USER" "$TOKEN_NAME" --privsep 1 --output-format json)"
TOKEN_SECRET="$(printf '%s' "$token_json" | sed -n 's/.*"value":"\([0-9a-fA-F-]*\)".*/\1/p')"
[ -n "$TOKEN_SECRET" ] || die "pveum printed no token secret"
pveum acl modify / --tokens "$PVE_USER!$TOKEN_NAME" --roles "$ROLE"

# 2. The base template.
umask 077
mkdir -p "$STATE_DIR"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
is_ours=0
is_template=0
if conf="$(pct config "$TEMPLATE_VMID" 2>/dev/null)"; then
  has $'\n'"$conf" $'\n'"description: $DESCRIPTION" && is_ours=1
  has $'\n'"$conf" $'\n''template: 1' && is_template=1
  [ "$is_ours" = 1 ] || die "VMID $TEMPLATE_VMID is taken by something else: set ZLH_TEMPLATE_VMID"
fi
if [ "$is_template" = 1 ] && [ -s "$STATE_DIR/bootstrap-token" ]; then
  say "reusing the base template $TEMPLATE_VMID"
  BOOTSTRAP="$(cat "$STATE_DIR/bootstrap-token")"
else
  if [ "$is_ours" = 1 ]; then
    say "removing the unfinished base template $TEMPLATE_VMID"
    pct destroy "$TEMPLATE_VMID" --purge 1
  fi
  pveam update >/dev/null
  ct="$(pveam available --section system | awk '$2 ~ /^debian-12-standard_/ {print $2}' | sort -V | tail -n 1)"
  [ -n "$ct" ] || die "pveam offers no debian-12-standard template"
  if has "$(pveam list "$TEMPLATE_STORAGE")" "vztmpl/$ct"; then
    say "reusing $ct"
  else
    pveam download "$TEMPLATE_STORAGE" "$ct"
  fi
  curl -fsSL -o "$work/zlh" "$ZLH_URL/install/zlh"
  printf '%s  %s\n' "$ZLH_SHA256" "$work/zlh" | sha256sum -c --quiet - \
    || die "the zlh binary from $ZLH_URL does not match its sha256"
  BOOTSTRAP="$(openssl rand -hex 32)"
  printf '%s\n' "$BOOTSTRAP" >"$work/bootstrap-token"
  cat >"$work/zlh-agent.service" <<'UNIT'
[Unit]
Description=zlh agent
After=network-online.target
Wants=network-online.target

[Service]
Environment=ZLH_AGENT_TOKEN_FILE=/etc/zlh/bootstrap-token
ExecStart=/usr/local/bin/zlh agent --listen 0.0.0.0:18888 --dir /opt/zlh-agent
Restart=always
KillMode=mixed
TimeoutStopSec=60

[Install]
WantedBy=multi-user.target
UNIT
  pct create "$TEMPLATE_VMID" "$TEMPLATE_STORAGE:vztmpl/$ct" --hostname zlh-base \
    --description "$DESCRIPTION" --memory 1024 --cores 1 --unprivileged 1 \
    --net0 "name=eth0,bridge=$BRIDGE,ip=dhcp" --storage "$STORAGE"
  pct start "$TEMPLATE_VMID"
  pct exec "$TEMPLATE_VMID" -- mkdir -p /etc/zlh /opt/zlh-agent
  pct push "$TEMPLATE_VMID" "$work/zlh" /usr/local/bin/zlh --perms 0755
  pct push "$TEMPLATE_VMID" "$work/bootstrap-token" /etc/zlh/bootstrap-token --perms 0600
  pct push "$TEMPLATE_VMID" "$work/zlh-agent.service" /etc/systemd/system/zlh-agent.service --perms 0644
  pct exec "$TEMPLATE_VMID" -- systemctl enable zlh-agent.service
  pct shutdown "$TEMPLATE_VMID"
  pct template "$TEMPLATE_VMID"
  # Kept (0600) so that a second run can reuse the template.
  printf '%s\n' "$BOOTSTRAP" >"$STATE_DIR/bootstrap-token"
fi

# 3. This node's certificate fingerprint and API address.
FINGERPRINT="$(openssl x509 -in /etc/pve/local/pve-ssl.pem -noout -fingerprint -sha256 | sed 's/^.*=//')"
case "$FINGERPRINT" in *[!0-9A-Fa-f:]* | '') die "cannot read the certificate fingerprint" ;; esac
API_URL="${ZLH_PVE_API_URL:-https://$(hostname -I | awk '{print $1}'):8006}"
PVE_NODE="${ZLH_PVE_NODE:-$(hostname)}"
MEMORY_MB="${ZLH_NODE_MEMORY_MB:-$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)}"
flags=""
# Pinned unless the API is plain http (nothing to pin: test setups with ZLH_PVE_API_URL).
[[ "$API_URL" == https://* ]] && flags="$flags,\"tls_fingerprint\":\"$FINGERPRINT\""
[ "${ZLH_ALLOW_LOOPBACK:-0}" = 1 ] && flags="$flags,\"allow_loopback\":true"
[ "${ZLH_ALLOW_INSECURE_HTTP:-0}" = 1 ] && flags="$flags,\"allow_insecure_http\":true"

# 4. Register.
settings="{\"api_url\":\"$API_URL\",\"token_id\":\"$PVE_USER!$TOKEN_NAME\",\"token_secret\":\"$TOKEN_SECRET\",\"node\":\"$PVE_NODE\",\"template_vmid\":$TEMPLATE_VMID,\"bridge\":\"$BRIDGE\",\"bootstrap_token\":\"$BOOTSTRAP\"$flags}"
zlh_post /install/pve-node/register \
  "{\"token\":\"$ENROLL_TOKEN\",\"memory_mb\":$MEMORY_MB,\"settings\":$settings}" >/dev/null \
  || die "zlh refused the registration (see above)"
say "registered the node $NODE_NAME with zlh at $ZLH_URL: it is ready for game servers"
