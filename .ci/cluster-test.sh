#!/usr/bin/env bash
# make cluster-test: three RabbitMQ nodes on 127.0.0.1 (AMQP 5681-5683),
# clustered, each with its own name, ports and folders, sharing a cookie
# and an epmd of their own, so the default node on 5672 is never touched.
# Runs the Go test in agent/clustertest against them and removes every
# process and folder it made, even on failure (KEEP_LOGS=1 keeps the folder
# of a failed run).
#
#   .ci/cluster-test.sh                start the cluster, run the test, clean up
#   .ci/cluster-test.sh start-node N   (re)start node N of the running cluster
#   .ci/cluster-test.sh ctl N ARGS...  rabbitmqctl ARGS against node N
# The last two are for the test, which finds the cluster through $DIR.
set -euo pipefail

NODES=3
EPMD_PORT=4371
RABBIT_BIN=/usr/lib/rabbitmq/bin

node_name() { echo "warren-c$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
dist_port() { echo $((25680 + $1)); }

# Every RabbitMQ and Erlang command of this cluster runs with this
# environment: the cookie lives in $DIR (as HOME), epmd on its own port, no
# system-wide rabbitmq-env.conf. Only in subshells: go must keep its HOME.
cluster_env() {
  export HOME="$DIR"
  export ERL_EPMD_PORT=$EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
}

ctl() { # ctl N ARGS...: rabbitmqctl against node N
  local n=$1
  shift
  (cluster_env && exec "$RABBIT_BIN/rabbitmqctl" -q -n "$(node_name "$n")" "$@")
}

launch_node() {
  local n=$1
  (
    cluster_env
    export RABBITMQ_NODENAME RABBITMQ_NODE_PORT RABBITMQ_DIST_PORT
    RABBITMQ_NODENAME=$(node_name "$n")
    RABBITMQ_NODE_PORT=$(amqp_port "$n")
    RABBITMQ_DIST_PORT=$(dist_port "$n")
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_CONFIG_FILE="$DIR/n$n.conf"
    export RABBITMQ_MNESIA_BASE="$DIR/n$n/mnesia"
    export RABBITMQ_LOG_BASE="$DIR/n$n/log"
    export RABBITMQ_PID_FILE="$DIR/n$n.pid"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    rm -f "$RABBITMQ_PID_FILE"
    setsid "$RABBIT_BIN/rabbitmq-server" >>"$DIR/n$n/stdout.log" 2>&1 </dev/null &
  )
}

await_node() {
  local n=$1
  for _ in $(seq 1 120); do
    if [ -s "$DIR/n$n.pid" ] && ctl "$n" await_startup >/dev/null 2>&1; then
      return
    fi
    sleep 1
  done
  echo "node $(node_name "$n") did not start; see $DIR/n$n/log" >&2
  tail -20 "$DIR/n$n/stdout.log" >&2 || true
  return 1
}

# kill_owned FILE VAR=VALUE: kill -9 the process whose PID is in FILE if its
# environment holds VAR=VALUE, so a reused PID is never hit.
kill_owned() {
  local file=$1 mark=$2 pid
  [ -s "$file" ] || return 0
  pid=$(tr -dc 0-9 <"$file")
  [ -n "$pid" ] || return 0
  if tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF -- "$mark"; then
    kill -9 "$pid" 2>/dev/null || true
  fi
}

cleanup() {
  local status=$?
  set +e
  for f in "$DIR"/warren-*.pid; do kill_owned "$f" "WARREN_CLUSTER_DIR=$DIR"; done
  for n in $(seq 1 $NODES); do kill_owned "$DIR/n$n.pid" "RABBITMQ_NODENAME=$(node_name "$n")"; done
  [ -n "${EPMD_PID:-}" ] && kill -9 "$EPMD_PID" 2>/dev/null
  wait 2>/dev/null
  if [ "$status" -ne 0 ] && [ -n "${KEEP_LOGS:-}" ]; then
    echo "logs kept in $DIR" >&2
  else
    rm -rf "$DIR"
  fi
  exit "$status"
}

case "${1:-}" in
start-node)
  : "${DIR:?start-node runs inside cluster-test.sh}"
  launch_node "$2"
  await_node "$2"
  exit
  ;;
ctl)
  : "${DIR:?ctl runs inside cluster-test.sh}"
  shift
  ctl "$@"
  exit
  ;;
esac

cd "$(dirname "$0")/.."
if ! [ -x "$RABBIT_BIN/rabbitmq-server" ]; then
  echo "rabbitmq-server is not installed (apt-get install rabbitmq-server)" >&2
  exit 1
fi
for port in $EPMD_PORT $(for n in $(seq 1 $NODES); do amqp_port "$n"; dist_port "$n"; done); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use: is another cluster test running?" >&2
    exit 1
  fi
done

DIR=$(mktemp -d /tmp/warren-cluster.XXXXXX)
export DIR
trap cleanup EXIT
trap 'exit 130' INT TERM

head -c 32 /dev/urandom | base64 | tr -dc A-Za-z0-9 >"$DIR/.erlang.cookie"
chmod 400 "$DIR/.erlang.cookie"
: >"$DIR/rabbitmq-env.conf"
echo '[].' >"$DIR/enabled_plugins"
for n in $(seq 1 $NODES); do
  mkdir -p "$DIR/n$n"
  echo "# Names and ports come from the environment (launch_node)." >"$DIR/n$n.conf"
done

started=$(date +%s)
epmd -port $EPMD_PORT -address 127.0.0.1 &
EPMD_PID=$!

echo "starting $(for n in $(seq 1 $NODES); do printf '%s ' "$(node_name "$n")"; done)"
for n in $(seq 1 $NODES); do launch_node "$n"; done
for n in $(seq 1 $NODES); do await_node "$n"; done
for n in $(seq 2 $NODES); do
  if ! { ctl "$n" stop_app && ctl "$n" join_cluster "$(node_name 1)" && ctl "$n" start_app; } >"$DIR/join.log" 2>&1; then
    cat "$DIR/join.log" >&2
    exit 1
  fi
done
echo "cluster up in $(($(date +%s) - started))s"

export WARREN_CLUSTER_DIR="$DIR" WARREN_CLUSTER_NODES=$NODES
export WARREN_CLUSTER_URLS
WARREN_CLUSTER_URLS=$(for n in $(seq 1 $NODES); do printf 'amqp://guest:guest@127.0.0.1:%s/ ' "$(amqp_port "$n")"; done)
export WARREN_CLUSTER_SCRIPT="$PWD/.ci/cluster-test.sh" WARREN_BIN="$PWD/bin/warren"
go test -count=1 -v -timeout 10m -run TestCluster ./agent/clustertest/
echo "cluster test done in $(($(date +%s) - started))s"
