#!/usr/bin/env bash
# Long crash run: tests/crash.rs with KILLS kills of the daemon (default
# 1000) for each of SEEDS seeds (default 1 2 3), in a private mount
# namespace. Prints the test's summary line per seed; exits non-zero on the
# first failure (its directories are kept: LAYERFS_KEEP_TEST_DIRS).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "crash.sh: needs root" >&2; exit 1; }
KILLS=${KILLS:-1000}
for seed in ${SEEDS:-1 2 3}; do
  out=$(mktemp)
  status=0
  LAYERFS_CRASH_KILLS=$KILLS LAYERFS_CRASH_SEED=$seed LAYERFS_KEEP_TEST_DIRS=1 \
    timeout $((KILLS * 10 + 300)) unshare -m --propagation private \
    cargo test --release --test crash -- --nocapture >"$out" 2>&1 || status=$?
  if [ "$status" != 0 ]; then
    grep -A20 panicked "$out" >&2 || tail -40 "$out" >&2
    echo "crash.sh: seed $seed FAILED (log $out)" >&2
    exit 1
  fi
  echo "crash.sh: seed $seed: $(grep -E '^[0-9]+ kills' "$out")"
  rm -f "$out"
  # Passed: drop the kept directories.
  find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'lfscrash*' -exec rm -rf {} +
done
