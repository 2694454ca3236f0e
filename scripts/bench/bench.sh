#!/usr/bin/env bash
# Benchmarks layerfs against the native filesystem, kernel overlayfs and
# fuse-overlayfs on the same image, interleaved. Needs root.
#   scripts/bench/bench.sh            full run (30,000 files, 512 MiB big file)
#   scripts/bench/bench.sh --quick    about a minute
#   scripts/bench/bench.sh --only "find,ls"   selected workloads
#   scripts/bench/bench.sh --rootless the same as an unprivileged user in its own
#                               user namespace (root still starts it: it
#                               makes the user and drops caches)
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v fuse-overlayfs >/dev/null || { apt-get update -qq && apt-get install -y -qq fuse-overlayfs; }
command -v setfattr >/dev/null || apt-get install -y -qq attr
if [[ " $* " == *" --rootless "* ]]; then
  command -v newuidmap >/dev/null || apt-get install -y -qq uidmap
fi
cargo build --release -q
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r), $(fuse-overlayfs --version 2>/dev/null | head -1)"
exec python3 scripts/bench/bench.py --layerfs "${CARGO_TARGET_DIR:-$PWD/target}/release/layerfs" "$@"
