#!/usr/bin/env bash
# Side-by-side queue benchmark on this machine: zlh's durable SQLite queue
# (`zlh bench queue`) against BullMQ on a local Redis, once without persistence
# and once with appendfsync always (the closest match to zlh's synchronous=FULL).
#
# Env: JOBS (10000), CONCURRENCY (50), ZLH_BENCH_SKIP_BUILD=1 (no cargo build),
#      ZLH_BIN=path (zlh binary; default target/release/zlh).
# Output: a table on stdout; the three JSON lines in target/bench-queue.json.
# Only loopback is used: Redis binds 127.0.0.1 on a free port.
set -euo pipefail

JOBS=${JOBS:-10000}
CONCURRENCY=${CONCURRENCY:-50}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ZLH_BIN=${ZLH_BIN:-target/release/zlh}

log() { echo "bench-queue: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- zlh ---------------------------------------------------------------------
if [[ "${ZLH_BENCH_SKIP_BUILD:-}" != 1 ]]; then
  log "building zlh (release)"
  cargo build --release --locked >&2
fi
[[ -x "$ZLH_BIN" ]] || die "zlh binary not found at $ZLH_BIN (build it or set ZLH_BIN)"

log "running zlh bench queue (jobs=$JOBS concurrency=$CONCURRENCY)"
zlh_out=$("$ZLH_BIN" bench queue --jobs "$JOBS" --concurrency "$CONCURRENCY" --json)
zlh_json=$(grep '^{' <<<"$zlh_out" | tail -n 1 || true)
[[ -n "$zlh_json" ]] || die "zlh bench printed no JSON line"

# --- prerequisites -------------------------------------------------------------
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  [[ $(id -u) -eq 0 ]] || die "redis-server/redis-cli missing; install them (e.g. apt-get install redis-server)"
  log "installing redis-server"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
fi
for tool in node npm python3; do
  command -v "$tool" >/dev/null || die "$tool is required"
done

# --- scratch dir, cleaned up with any Redis we started ---------------------------
TMP=$(mktemp -d)
CHILD_PIDS=() # every redis-server and node bench we start
cleanup() {
  for pid in "${CHILD_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${CHILD_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
# Children run in the background and we `wait` for them, so these fire at once
# (instead of after the child finishes) and cleanup stops the children.
trap 'exit 130' INT
trap 'exit 143' TERM

log "installing bullmq + ioredis into $TMP"
(cd "$TMP" && npm install --no-audit --no-fund --silent --loglevel=error bullmq ioredis >&2)
cp "$ROOT/scripts/bench/bullmq-bench.mjs" "$TMP/"
BULLMQ_VERSION=$(node -p "require('$TMP/node_modules/bullmq/package.json').version")

# Ask the kernel for a free loopback port (tiny race window is acceptable here).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

REDIS_PORT=
REDIS_PID=
# start_redis DIR [extra redis-server args...]
start_redis() {
  local dir=$1; shift
  mkdir -p "$dir"
  REDIS_PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize no --save '' \
    --dir "$dir" --logfile "$dir/redis.log" "$@" &
  REDIS_PID=$!
  CHILD_PIDS+=("$REDIS_PID")
  local deadline=$((SECONDS + 20))
  until [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; do
    kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited early; see log: $(tail -n 5 "$dir/redis.log" 2>/dev/null)"
    ((SECONDS < deadline)) || die "redis-server on port $REDIS_PORT did not answer PING within 20s"
    sleep 0.05
  done
}

stop_redis() {
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || kill "$REDIS_PID" 2>/dev/null || true
  wait "$REDIS_PID" 2>/dev/null || true
}

# run_bullmq LABEL VAR -> stores the bench's JSON line in VAR
run_bullmq() {
  log "running BullMQ $BULLMQ_VERSION bench ($1)"
  local out="$TMP/bullmq-$REDIS_PORT.out" pid
  node "$TMP/bullmq-bench.mjs" --redis-port "$REDIS_PORT" --jobs "$JOBS" \
    --concurrency "$CONCURRENCY" --label "$1" >"$out" &
  pid=$!
  CHILD_PIDS+=("$pid")
  wait "$pid" || die "BullMQ bench ($1) failed"
  printf -v "$2" '%s' "$(grep '^{' "$out" | tail -n 1 || true)"
}

start_redis "$TMP/nopersist" --appendonly no
REDIS_VERSION=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info server | sed -n 's/^redis_version:\([^[:space:]]*\).*/\1/p')
run_bullmq "no persistence" bull_nopersist
stop_redis

start_redis "$TMP/aof" --appendonly yes --appendfsync always
run_bullmq "appendfsync always" bull_aof
stop_redis

[[ -n "$bull_nopersist" && -n "$bull_aof" ]] || die "BullMQ bench printed no JSON line"

mkdir -p target
printf '%s\n' "$zlh_json" "$bull_nopersist" "$bull_aof" >target/bench-queue.json

# --- report ------------------------------------------------------------------
BULLMQ_VERSION=$BULLMQ_VERSION REDIS_VERSION=$REDIS_VERSION python3 - target/bench-queue.json <<'PY'
import json, os, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
zlh, nopersist, aof = rows
print(f"queue benchmark: jobs={zlh['jobs']} concurrency={zlh['concurrency']} "
      f"(BullMQ {os.environ['BULLMQ_VERSION']}, Redis {os.environ['REDIS_VERSION']})")
head = f"{'system':<34} {'enqueue 1-by-1/s':>17} {'enqueue batch/s':>16} {'process/s':>12}"
print(head)
print("-" * len(head))
for r in rows:
    name = f"{r['system']} [{r['label']}]"
    print(f"{name:<34} {r['enqueue_one_by_one_jobs_per_s']:>17,.0f} "
          f"{r['enqueue_batched_jobs_per_s']:>16,.0f} {r['process_jobs_per_s']:>12,.0f}")
print()
z = zlh["process_jobs_per_s"]
r_np = z / nopersist["process_jobs_per_s"]
r_aof = z / aof["process_jobs_per_s"]
print(f"processing ratio zlh / bullmq(no persistence):     {r_np:.2f}x")
print(f"processing ratio zlh / bullmq(appendfsync always): {r_aof:.2f}x")
print(f"target: >= 1.30x BullMQ without persistence -> {'PASS' if r_np >= 1.30 else 'BELOW'}")
PY
