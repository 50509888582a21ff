#!/usr/bin/env bash
# `make image-test`: build the runtime image from bin/warren and run it as the
# sidecar it is meant to be, beside a broker and a receiver on 127.0.0.1. It
# must run as a non-root user, read its config from a mounted folder, answer
# /readyz, deliver a published event and stop cleanly on `podman stop`.
# Everything it makes (container, images, queues, exchange, temp dir) is
# removed again.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/rabbitmq.sh
. .ci/podman.sh

export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}"
id="warren-image-test-$(date +%s)-$$"
tag="localhost/$id:latest"
secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
grace=5       # server.shutdown_grace, seconds
stop_after=15 # podman stop's SIGKILL deadline, above the grace period
tmp=$(mktemp -d)
receiver_pid=""
started=$SECONDS

say() { printf 'image-test: %s\n' "$*"; }
fail() {
  say "FAIL: $*" >&2
  if podman container exists "$id" 2>/dev/null; then
    echo "--- container log" >&2
    podman logs "$id" >&2 2>&1 || true
  fi
  if [ -s "$tmp/receiver.log" ]; then
    echo "--- receiver log" >&2
    cat "$tmp/receiver.log" >&2
  fi
  exit 1
}
running() { [ "$(podman inspect --format '{{.State.Running}}' "$id")" = true ]; }
exited() { fail "warren exited with code $(podman inspect --format '{{.State.ExitCode}}' "$id")"; }

cleanup() {
  set +e
  podman rm --force --time 0 "$id" >/dev/null 2>&1
  [ -n "$receiver_pid" ] && kill -TERM "$receiver_pid" 2>/dev/null && wait "$receiver_pid" 2>/dev/null
  # The build labels every image it commits, intermediate stages included.
  images=$(podman images --all --quiet --filter "label=warren-image-test=$id" 2>/dev/null)
  [ -n "$images" ] && podman rmi --force $images >/dev/null 2>&1
  if [ -f "$tmp/config/warren.yaml" ]; then
    # The exchange and queues the config implies, as `warren topology` names them.
    topo=$(bin/warren topology -c "$tmp/config/warren.yaml" 2>/dev/null)
    go run .ci/brokerclean/main.go -exchange "$id" $(awk '$1 == "queue" {print $2}' <<<"$topo") ||
      say "could not delete exchange $id and its queues; delete them by hand" >&2
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

ensure_rabbitmq
ensure_podman
use_podman_conf "$tmp"

say "building $tag from bin/warren"
bash .ci/image.sh "$tag" --quiet --label "warren-image-test=$id" >/dev/null ||
  fail "podman build failed"
user=$(podman image inspect --format '{{.Config.User}}' "$tag")
case "$user" in
  "" | 0 | 0:* | root | root:*) fail "the image runs as root (USER '$user')" ;;
esac

say "receiver: warren listen on 127.0.0.1 (verifies signatures)"
bin/warren listen --addr 127.0.0.1:0 --secret "$secret" > "$tmp/receiver.log" 2>&1 &
receiver_pid=$!
receiver=""
for _ in $(seq 1 50); do
  receiver=$(sed -n 's|^listening on http://\([0-9.:]*\)/.*|\1|p' "$tmp/receiver.log")
  [ -n "$receiver" ] && break
  sleep 0.1
done
[ -n "$receiver" ] || fail "warren listen did not start"

# The config folder is mounted read-only at /etc/warren, as in Kubernetes.
mkdir -m 755 "$tmp/config"
cat > "$tmp/config/warren.yaml" <<YAML
broker:
  url: \${AMQP_URL}
  exchange: $id
  queue_prefix: $id
server:
  listen: 127.0.0.1:0
  shutdown_grace: ${grace}s
subscriptions:
  - name: smoke
    url: http://$receiver/webhooks
    events: ["smoke.#"]
    secrets: ["$secret"]
    retry:
      delays: [1s]
YAML
chmod 644 "$tmp/config/warren.yaml"

say "starting the container (host network, config from $tmp/config)"
podman run --detach --name "$id" --network host \
  --env AMQP_URL --volume "$tmp/config:/etc/warren:ro" "$tag" >/dev/null ||
  fail "podman run failed"

pid=$(podman inspect --format '{{.State.Pid}}' "$id")
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
[ -n "$uid" ] || exited
[ "$uid" != 0 ] || fail "warren runs as root in the container"
say "warren runs as uid $uid"

addr=""
for _ in $(seq 1 100); do
  addr=$(podman logs "$id" 2>&1 | sed -n 's|.*"msg":"serving /metrics[^"]*".*"addr":"\([0-9.:]*\)".*|\1|p' | head -n 1)
  [ -n "$addr" ] && break
  running || exited
  sleep 0.2
done
[ -n "$addr" ] || fail "warren did not start its HTTP server"
ready=""
for _ in $(seq 1 100); do
  ready=$(curl -fsS "http://$addr/readyz" 2>/dev/null | tr -d ' \n') && break
  ready=""
  sleep 0.2
done
[ -n "$ready" ] || fail "http://$addr/readyz did not answer 200 within 20s"
say "/readyz on $addr: $ready"

event="evt_$id"
bin/warren publish -c "$tmp/config/warren.yaml" --id "$event" smoke.created '{"smoke":true}' >/dev/null ||
  fail "warren publish failed"
delivered=""
for _ in $(seq 1 100); do
  delivered=$(grep -F " $event " "$tmp/receiver.log" || true)
  [ -n "$delivered" ] && break
  sleep 0.2
done
[ -n "$delivered" ] || fail "event $event was not delivered within 20s"
case "$delivered" in
  *"[signature ok]"*) ;;
  *) fail "event delivered without a valid signature: $delivered" ;;
esac
say "receiver got: $delivered"

stop_start=$(date +%s%3N)
podman stop --time "$stop_after" "$id" >/dev/null || fail "podman stop failed"
took_ms=$(($(date +%s%3N) - stop_start))
code=$(podman inspect --format '{{.State.ExitCode}}' "$id")
[ "$code" = 0 ] || fail "warren exited with code $code after podman stop"
[ "$took_ms" -lt $((grace * 1000)) ] || fail "warren needed ${took_ms}ms to stop, more than its ${grace}s grace period"
podman logs "$id" 2>&1 | grep -q '"msg":"stopped"' || fail "no \"stopped\" line in the container log"
say "podman stop: exit code 0 after ${took_ms}ms, \"stopped\" logged"

say "ok in $((SECONDS - started))s"
