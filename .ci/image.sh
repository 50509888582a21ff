#!/usr/bin/env bash
# `make image`: the runtime image from bin/warren (built by `make build`),
# through the Dockerfile's prebuilt stage, so no base image is pulled.
#   bash .ci/image.sh [TAG [podman build flags...]]
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/podman.sh

tag=${1:-warren:latest}
shift || true
if [ ! -x bin/warren ]; then
  echo "image: bin/warren is missing; run make build first" >&2
  exit 1
fi
ensure_podman
# The host's CA bundle, so warren can verify https:// endpoints.
ca=/etc/ssl/certs/ca-certificates.crt
if [ ! -f "$ca" ]; then
  echo "image: $ca is missing; apt-get install ca-certificates" >&2
  exit 1
fi
cp "$ca" bin/ca-certificates.crt
podman build --build-arg BINARY=prebuilt --tag "$tag" "$@" .
