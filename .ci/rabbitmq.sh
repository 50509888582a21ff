# Sourced by .ci/run and examples/demo.sh: make sure RabbitMQ answers on
# 127.0.0.1:5672, starting it if installed and installing it if missing.

broker_answers() {
  (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

ensure_rabbitmq() {
  if broker_answers; then
    return
  fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "RabbitMQ is not installed; installing it"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  if ! broker_answers; then
    echo "starting RabbitMQ"
    # A classic queue holding messages keeps its index file open, so
    # thousands of subscriptions need thousands of descriptors (RabbitMQ's
    # production checklist asks for 50,000 or more): as many as allowed.
    (ulimit -n "$(ulimit -Hn)" 2>/dev/null; rabbitmq-server -detached) || true
  fi
  for _ in $(seq 1 120); do
    if broker_answers && rabbitmqctl -q status >/dev/null 2>&1; then
      echo "RabbitMQ is up"
      return
    fi
    sleep 1
  done
  echo "RabbitMQ did not start within 120s; see /var/log/rabbitmq/" >&2
  exit 1
}
