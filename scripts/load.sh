#!/usr/bin/env bash
# Long load run: tests/load.rs's 64 threads of mixed operations on
# overlapping names for SECS seconds (default 300), in a private mount
# namespace. A 30 s stall fails it (watchdog in the test).
#   bash scripts/load.sh                 # 5 minutes, 64 threads
#   SECS=60 THREADS=128 bash scripts/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "load.sh: needs root" >&2; exit 1; }
SECS=${SECS:-300}
LAYERFS_LOAD_SECS=$SECS LAYERFS_LOAD_THREADS=${THREADS:-64} LAYERFS_LOAD_SEED=${SEED:-$RANDOM} \
  timeout $((SECS + 600)) unshare -m --propagation private \
  cargo test --release --test load -- --exact many_threads_mixed_operations_on_overlapping_names --nocapture
