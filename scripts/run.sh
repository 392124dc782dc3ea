#!/usr/bin/env bash
# make run: start the sandbox on a free loopback port, run a full sync of both entity types
# through Dagster, print the status, stop the sandbox. The sandbox keeps the gateway's
# holdings in data/, so a second run finds them and publishes nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export SYNC_DATA_DIR="${SYNC_DATA_DIR:-data}"
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD}"
export SYNC_MAX_CONCURRENT_SYNCS="${SYNC_MAX_CONCURRENT_SYNCS:-4}"
port=$($BIN/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PRODUCT_SERVICE_URL="http://127.0.0.1:$port" GATEWAY_URL="http://127.0.0.1:$port"

$BIN/sync-pipeline sandbox --port "$port" --state-file "$SYNC_DATA_DIR/sandbox-gateway.json" >"$SYNC_DATA_DIR/sandbox.log" 2>&1 &
sandbox=$!
trap 'kill $sandbox 2>/dev/null; wait $sandbox 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  kill -0 $sandbox 2>/dev/null || { cat "$SYNC_DATA_DIR/sandbox.log"; exit 1; }
  sleep 0.2
done
echo "sandbox on http://127.0.0.1:$port"

status=0
$BIN/sync-pipeline sync all --mode full || status=$?
echo
$BIN/sync-pipeline status --limit 5
exit $status
