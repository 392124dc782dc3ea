#!/usr/bin/env bash
# make dev: the sandbox and the Dagster webserver and daemon, together on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export SYNC_DATA_DIR="${SYNC_DATA_DIR:-data}"
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD}"
export SYNC_MAX_CONCURRENT_SYNCS="${SYNC_MAX_CONCURRENT_SYNCS:-4}"
SANDBOX_PORT="${SANDBOX_PORT:-8765}"
DAGSTER_PORT="${DAGSTER_PORT:-3000}"
API_PORT="${API_PORT:-8080}"
export SYNC_API_TOKEN="${SYNC_API_TOKEN:-dev-write-token}"
export SYNC_API_READ_TOKEN="${SYNC_API_READ_TOKEN:-dev-read-token}"
export PRODUCT_SERVICE_URL="${PRODUCT_SERVICE_URL:-http://127.0.0.1:$SANDBOX_PORT}"
export GATEWAY_URL="${GATEWAY_URL:-http://127.0.0.1:$SANDBOX_PORT}"

# On any exit, stop every service and what it started (dagster dev runs a webserver, a daemon
# and a code server): ask first, then make sure.
kill_tree() { local child; for child in $(pgrep -P "$1"); do kill_tree "$child"; done; kill -KILL "$1" 2>/dev/null; }
stop_all() {
  trap - EXIT INT TERM
  local pid
  for pid in $(jobs -p); do kill -TERM "$pid" 2>/dev/null; done
  sleep 2
  for pid in $(jobs -p); do kill_tree "$pid"; done
}
trap stop_all EXIT INT TERM
$BIN/sync-pipeline sandbox --port "$SANDBOX_PORT" --state-file "$SYNC_DATA_DIR/sandbox-gateway.json" &
$BIN/dagster dev -w workspace.yaml -h 127.0.0.1 -p "$DAGSTER_PORT" &
$BIN/sync-pipeline api --port "$API_PORT" &
cat <<MSG

  sandbox (product service + gateway)  http://127.0.0.1:$SANDBOX_PORT
  Dagster UI (webserver + daemon)      http://127.0.0.1:$DAGSTER_PORT
  Sync API                             http://127.0.0.1:$API_PORT/product-gateway/v1
     write token: $SYNC_API_TOKEN    read token: $SYNC_API_READ_TOKEN

  Try:  curl -X PUT -H "Authorization: Bearer $SYNC_API_TOKEN" http://127.0.0.1:$API_PORT/product-gateway/v1/sync/PRODUCT
        curl -H "Authorization: Bearer $SYNC_API_READ_TOKEN" http://127.0.0.1:$API_PORT/product-gateway/v1/sync/PRODUCT/history
  Ctrl-C stops everything.

MSG
wait
