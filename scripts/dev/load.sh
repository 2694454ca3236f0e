#!/usr/bin/env bash
# Long load run of tests/load.rs for SECS seconds (default 300), in a
# private mount namespace. A 30 s stall fails it (watchdog in the test).
#   MODE=threads    64 threads of one process doing mixed operations on
#                   overlapping names (the default)
#   MODE=processes  64 processes, half of them under other uids and gids,
#                   with permission checks across owners
#   bash scripts/dev/load.sh                 # 5 minutes, 64 threads
#   SECS=60 THREADS=128 bash scripts/dev/load.sh
#   MODE=processes PROCS=64 bash scripts/dev/load.sh
# The seed is printed (SEED=N replays the same choices).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "load.sh: needs root" >&2; exit 1; }
SECS=${SECS:-300}
SEED=${SEED:-$RANDOM}
case ${MODE:-threads} in
  threads) test=many_threads_mixed_operations_on_overlapping_names ;;
  processes) test=processes::many_processes_mixed_operations_across_owners ;;
  *) echo "load.sh: MODE is threads or processes" >&2; exit 2 ;;
esac
echo "load.sh: MODE=${MODE:-threads} SEED=$SEED SECS=$SECS"
LAYERFS_LOAD_SECS=$SECS LAYERFS_LOAD_THREADS=${THREADS:-64} LAYERFS_LOAD_PROCS=${PROCS:-64} \
  LAYERFS_LOAD_SEED=$SEED \
  timeout $((SECS + 600)) unshare -m --propagation private \
  cargo test --release --test load -- --exact "$test" --nocapture
