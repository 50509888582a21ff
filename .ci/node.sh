# Sourced by .ci/run: make sure Node.js 18 or later and npm are installed,
# for the sample receiver's tests in examples/receivers/node.

ensure_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "Node.js is not installed; installing it"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nodejs npm >/dev/null
  fi
  local version major
  version="$(node --version)"
  major="${version#v}"
  major="${major%%.*}"
  if [ "$major" -lt 18 ]; then
    echo "Node.js $version is too old for examples/receivers/node (want 18 or later)" >&2
    exit 1
  fi
  echo "Node.js $version"
}
