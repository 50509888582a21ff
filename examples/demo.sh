#!/usr/bin/env bash
# `make demo`: warren end to end on the local broker. A development receiver
# verifies signatures, warren runs on examples/quickstart.yaml, a few events
# are published and delivered, one bad event is parked, then both stop.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/rabbitmq.sh
ensure_rabbitmq

warren=bin/warren
config=examples/quickstart.yaml
secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
logs=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "receiver: warren listen on 127.0.0.1:8080 (verifies signatures)"
$warren listen --addr 127.0.0.1:8080 --secret "$secret" > "$logs/receiver.log" 2>&1 &
pids+=($!)

step "agent: warren run -c $config"
$warren run -c "$config" --log-format text > "$logs/warren.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do
  curl -fsS http://127.0.0.1:9464/readyz >/dev/null 2>&1 && break
  sleep 0.2
done
curl -sS http://127.0.0.1:9464/readyz

step "which subscriptions a routing key reaches"
$warren routes -c "$config" order.created
$warren routes -c "$config" user.signup

step "publish four events (the last one is not JSON)"
$warren publish -c "$config" order.created '{"order_id":"o-1001","total":42.5}'
$warren publish -c "$config" payment.captured.eu '{"payment_id":"p-77","amount":4250}'
$warren publish -c "$config" order.cancelled '{"order_id":"o-1002"}'
$warren publish -c "$config" --id evt_not_json order.created 'this is not JSON'
sleep 2

step "what the receiver got"
cat "$logs/receiver.log"

step "what warren logged"
cat "$logs/warren.log"

step "parked messages: warren dead list demo"
$warren dead list -c "$config" demo

step "metrics"
curl -fsS http://127.0.0.1:9464/metrics | grep -E '^warren_deliveries_total'

step "clean up: purge the parked message, stop warren and the receiver"
$warren dead purge -c "$config" demo
cleanup
tail -n 1 "$logs/warren.log"
rm -rf "$logs"
