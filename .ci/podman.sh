# Sourced by .ci/image.sh and .ci/image-test.sh: podman with runc, installed
# with apt-get when missing. crun (podman's usual runtime) refuses hybrid
# cgroup v1/v2 hosts and the default rlimits; runc runs there.

ensure_podman() {
  if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1; then
    return
  fi
  echo "podman or runc is not installed; installing them"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq podman runc >/dev/null
}

# use_podman_conf DIR writes a containers.conf into DIR and points podman at
# it: no default ulimits (runc cannot raise them inside an unprivileged
# container) and cgroupfs, since there may be no systemd to manage cgroups.
use_podman_conf() {
  cat > "$1/containers.conf" <<'CONF'
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
CONF
  export CONTAINERS_CONF="$1/containers.conf"
}
