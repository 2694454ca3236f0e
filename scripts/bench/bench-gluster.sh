#!/usr/bin/env bash
# GlusterFS rows of the benchmark: first write to lower files, untar, find
# and reading every small file, on the bare GlusterFS mount, fuse-overlayfs
# and layerfs (lower, upper and work on the volume), as ratios to the bare
# mount. Starts a throw-away volume (scripts/dev/gluster-env.sh) in its own
# network and mount namespaces and removes it afterwards. Needs root.
#   scripts/bench/bench-gluster.sh [--files N] [--reps N]
set -euo pipefail
cd "$(dirname "$0")/../.."
need=()
command -v glusterd >/dev/null || need+=(glusterfs-server)
command -v glusterfs >/dev/null || need+=(glusterfs-client)
command -v fuse-overlayfs >/dev/null || need+=(fuse-overlayfs)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
cargo build --release
bin=$PWD/target/release/layerfs
dir=$(mktemp -d /tmp/lfs-bench-gluster.XXXXXX)
trap 'bash scripts/dev/gluster-env.sh down "$dir" >/dev/null 2>&1 || true' EXIT
bash scripts/dev/gluster-env.sh up "$dir" >/dev/null
host=$(bash scripts/dev/gluster-env.sh host "$dir" bench)
echo "machine: $(nproc) cores, kernel $(uname -r), $(glusterfs --version | head -1), $(fuse-overlayfs --version 2>/dev/null | head -1)"
nsenter -t "$host" -m -n -u -- python3 "$PWD/scripts/bench/bench-gluster.py" \
  --dir "$dir/gl/bench" --layerfs "$bin" "$@"
