#!/usr/bin/env bash
# Long differential run: the random operation sequences of
# tests/write_path.rs, applied call for call to layerfs and to kernel
# overlayfs over the same random lower stacks, for TOTAL_OPS operations per
# variant (plain, metacopy=on, xattr whiteouts, userxattr). Any difference
# in a result, errno or final tree is reported with its seed; the run goes
# on with the next seed, and the script exits non-zero if there was one.
#
#   bash scripts/dev/soak-diff.sh                  # 1,000,000 ops per variant
#   TOTAL_OPS=200000 OPS_PER_SEED=1000 VARIANTS=plain bash scripts/dev/soak-diff.sh
#
# A failing seed reproduces alone with
#   LAYERFS_DIFF_SEEDS=1 LAYERFS_DIFF_SEED_START=SEED LAYERFS_DIFF_OPS=N \
#     unshare -m --propagation private cargo test --release --test write_path -- --exact TEST
# Needs root; runs in a private mount namespace.
set -euo pipefail
cd "$(dirname "$0")/../.."

TOTAL_OPS=${TOTAL_OPS:-1000000}
OPS_PER_SEED=${OPS_PER_SEED:-2000}
# Seeds per test-binary run (a failure ends a run; the next starts after it).
CHUNK=${CHUNK:-50}
SEED_START=${SEED_START:-100000}
VARIANTS=${VARIANTS:-plain metacopy xattr_whiteouts userxattr}
# A hung run fails instead of blocking the soak.
RUN_TIMEOUT=${RUN_TIMEOUT:-1800}

[ "$(id -u)" = 0 ] || { echo "soak-diff: needs root" >&2; exit 1; }

bin=$(cargo test --release --test write_path --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*write_path[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "soak-diff: could not build tests/write_path.rs" >&2; exit 1; }

log_dir=${LOG_DIR:-$(mktemp -d /tmp/soak-diff.XXXXXX)}
mkdir -p "$log_dir"
seeds_per_variant=$(( (TOTAL_OPS + OPS_PER_SEED - 1) / OPS_PER_SEED ))
total_ops=0
failures=0
start_time=$(date +%s)

for variant in $VARIANTS; do
  case $variant in
    plain) test=random_operations_match_kernel_overlayfs ;;
    *) test=random_operations_match_kernel_overlayfs_with_$variant ;;
  esac
  seed=$SEED_START
  end=$((SEED_START + seeds_per_variant))
  vops=0
  vfail=0
  while [ "$seed" -lt "$end" ]; do
    n=$CHUNK
    [ $((seed + n)) -le "$end" ] || n=$((end - seed))
    out="$log_dir/$variant-$seed.log"
    status=0
    LAYERFS_DIFF_SEEDS=$n LAYERFS_DIFF_SEED_START=$seed LAYERFS_DIFF_OPS=$OPS_PER_SEED \
      timeout "$RUN_TIMEOUT" unshare -m --propagation private \
      "$bin" --exact "$test" >"$out" 2>&1 || status=$?
    if [ "$status" = 0 ]; then
      vops=$((vops + n * OPS_PER_SEED))
      seed=$((seed + n))
      rm -f "$out"
      continue
    fi
    # The panic names the seed; the seeds before it passed.
    bad=$(grep -o 'seed [0-9]*' "$out" | head -1 | cut -d' ' -f2 || true)
    if [ -z "$bad" ]; then
      echo "soak-diff: $variant: run from seed $seed failed (status $status) without naming a seed; see $out" >&2
      bad=$seed
    else
      echo "soak-diff: $variant: DIFFERENCE at seed $bad (log $out):" >&2
      grep -m1 -A3 "panicked" "$out" >&2 || true
    fi
    vfail=$((vfail + 1))
    # Count the passed seeds and the failed one's ops up to its failure as run.
    vops=$((vops + (bad - seed + 1) * OPS_PER_SEED))
    seed=$((bad + 1))
  done
  echo "soak-diff: $variant: $vops operations, $vfail seeds with a difference"
  total_ops=$((total_ops + vops))
  failures=$((failures + vfail))
done

elapsed=$(( $(date +%s) - start_time ))
echo "soak-diff: total $total_ops operations against kernel overlayfs in ${elapsed}s, $failures seeds with a difference (logs in $log_dir)"
[ "$failures" = 0 ]
