#!/usr/bin/env bash
# Figures of live volume snapshots (issue 18), in one run, each beside what
# a user does without them: stop the container (here: unmount the volume),
# tar the volume, start it again (mount).
# - Barrier time of `snapshot` on a mounted volume, p50/p99/max over N
#   snapshots, with 0, 100 MiB and 1 GiB written (not fsynced) into the
#   volume just before each; the daemon's barrier_us, stopped_us and
#   sync_us, and the whole command.
# - A writer of 4 KiB blocks over a 256 MiB file (fsync each MiB) for 60 s,
#   with a live snapshot every 10 s against none: MB/s and latencies.
# - The first 4 KiB writes to a 1 GiB file after a snapshot (it is copied
#   up) on an ext4 store and on an XFS store with reflink (loop images).
# - `backup` of a 30,000-file volume, then again after changing 1% of it.
# Needs root; runs in a private mount namespace, all in a scratch dir that
# goes at exit. About 13 minutes on 2 busy cores.
#   scripts/bench/bench-live.sh [DIR]   (scratch dir, default a new temp dir)
# LAYERFS_BENCH_SNAPSHOTS (default 30) and LAYERFS_BENCH_SECONDS (default
# 60) make a shorter run for a try.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/volume-lib.sh
if [ "${LAYERFS_BENCH_NS:-}" != 1 ]; then
  need=()
  command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
  command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  fi
fi
in_private_namespace "$0" "$@"
B="$VOLUME_BIN"
PY="$PWD/scripts/bench/bench-live.py"
N="${LAYERFS_BENCH_SNAPSHOTS:-30}"
SECS="${LAYERFS_BENCH_SECONDS:-60}"
D="${1:-$(mktemp -d /tmp/layerfs-lbench.XXXXXX)}"
S="$D/store"
# The writer first, so that nothing holds the mounts; then the mounts under
# $D, deepest first (volumes before the loop-mounted stores they are on;
# a loop device mounted with -o loop goes with its last unmount).
cleanup() {
  if [ -n "${writer_pid:-}" ]; then kill "$writer_pid" 2>/dev/null || true; wait "$writer_pid" 2>/dev/null || true; fi
  umount_under "$D"
  rm -rf "$D"
}
trap cleanup EXIT
mkdir -p "$D"
log="$D/cli.log"
vol() { "$B" --store "$S" "$@" 2>>"$log"; }
now() { date +%s.%N; }
# MiB dirty or under writeback in the page cache, machine-wide.
dirty() { awk '/^(Dirty|Writeback):/ { k += $2 } END { printf "%d", k / 1024 }' /proc/meminfo; }
# A live snapshot: "barrier_us stopped_us sync_us command_us".
snap() {
  local store=$1 name=$2 id=$3 s e out
  s=$(date +%s%N)
  out=$("$B" --store "$store" snapshot "$name" "$id" 2>&1 >/dev/null) || { echo "$out" >&2; return 1; }
  e=$(date +%s%N)
  echo "$out" >>"$log"
  sed -n 's/.*live snapshot .*barrier_us=\([0-9]*\) stopped_us=\([0-9]*\) sync_us=\([0-9]*\).*/\1 \2 \3/p' <<<"$out" |
    tr '\n' ' '
  echo $(((e - s) / 1000))
}
# What a user does instead: stop the container (unmount the volume), start
# a helper that tars it (mount, tar through the mount), start the container
# again (the same mount serves it). "seconds tar_bytes".
stop_tar_start() {
  local store=$1 name=$2 tarf=$3 s e m
  s=$(now)
  "$B" --store "$store" umount "$name" 2>>"$log"
  m=$("$B" --store "$store" mount "$name" 2>>"$log")
  tar -cf "$tarf" -C "$m" .
  e=$(now)
  echo "$(echo "$e - $s" | bc) $(stat -c %s "$tarf")"
  rm -f "$tarf"
}
ms() { echo "scale=3; $1 / 1000" | bc; }
echo "machine: $(nproc) cores, kernel $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# 1. Barrier time against dirty data. Each round writes a new file and
# removes it after its snapshot; a compaction every 5 rounds (not timed)
# keeps the disk used to a few layers.
echo "barrier: ${N} snapshots each with 0, 100 and 1024 MiB dirty" >&2
vol create b >/dev/null
M=$(vol mount b)
: >"$D/barrier.txt"
for mib in 0 100 1024; do
  for i in $(seq "$N"); do
    if [ "$mib" -gt 0 ]; then dd if=/dev/zero of="$M/dirty$i" bs=1M count="$mib" status=none; fi
    dm=$(dirty)
    echo "$mib $(snap "$S" b "d$mib-$i") $dm" >>"$D/barrier.txt"
    rm -f "$M/dirty$i"
    if [ $((i % 5)) = 0 ]; then vol compact b >/dev/null; fi
  done
  # The same data, the volume stopped, tarred and started: 3 times.
  : >"$D/base$mib.txt"
  for i in 1 2 3; do
    if [ "$mib" -gt 0 ]; then dd if=/dev/zero of="$M/dirty" bs=1M count="$mib" status=none; fi
    r=$(stop_tar_start "$S" b "$D/b.tar")
    M=$(vol mount b) # already mounted: prints the mountpoint
    echo "$r" >>"$D/base$mib.txt"
    rm -f "$M/dirty"
  done
  vol compact b >/dev/null
done
vol umount b

# 2. A continuous writer for $SECS s, without snapshots, then (on a volume
# of its own) with one every 10 s.
echo "writer: ${SECS} s without snapshots, then ${SECS} s with one every 10 s" >&2
for run in none every10; do
  vol create "w$run" >/dev/null
  M=$(vol mount "w$run")
  : >"$D/snaps-$run.txt"
  python3 "$PY" writer "$M/data" "$SECS" "$D/writer-$run.json" &
  writer_pid=$!
  if [ "$run" = every10 ]; then
    start=$(now)
    for k in $(seq $(((SECS - 1) / 10))); do
      # To the k-th 10 s mark from the writer's start, not 10 s after the
      # previous snapshot ended, so that they stay 10 s apart.
      pause=$(echo "$start + 10 * $k - $(now)" | bc)
      if [ "$(echo "$pause > 0" | bc)" = 1 ]; then sleep "$pause"; fi
      a=$(now)
      snap "$S" "w$run" "t$k" >>"$D/writer-snaps.txt"
      echo "$a $(now)" >>"$D/snaps-$run.txt"
    done
  fi
  wait "$writer_pid"
  writer_pid=
done
# The writer's file stopped, tarred and started.
read -r w_base w_size < <(stop_tar_start "$S" wevery10 "$D/w.tar")
vol umount wnone
vol umount wevery10

# 3. The first writes to a 1 GiB file after a snapshot, on ext4 and on XFS
# with reflink, each a loop-mounted image in the scratch dir.
echo "first write after a snapshot: ext4, xfs (reflink)" >&2
for fs in ext4 xfs; do
  truncate -s 12G "$D/$fs.img"
  if [ "$fs" = xfs ]; then mkfs.xfs -q -m reflink=1 "$D/$fs.img"; else mkfs.ext4 -q "$D/$fs.img"; fi
  mkdir "$D/$fs"
  mount -o loop "$D/$fs.img" "$D/$fs"
  vs="$D/$fs/store"
  "$B" --store "$vs" create f >/dev/null 2>>"$log"
  m=$("$B" --store "$vs" mount f 2>>"$log")
  dd if=/dev/zero of="$m/big" bs=1M count=1024 conv=fsync status=none
  python3 "$PY" firstwrite "$m/big" 3 "$B" --store "$vs" snapshot f >"$D/first-$fs.txt"
  stop_tar_start "$vs" f "$D/$fs/f.tar" >"$D/first-base-$fs.txt"
  "$B" --store "$vs" umount f 2>>"$log"
  umount "$D/$fs"
  rm -f "$D/$fs.img"
done

# 4. Backups of a 30,000-file volume, full then after changing 1%.
echo "backup: 30,000 files, then 300 changed" >&2
mkdir -p "$D/bk"
make_seed "$D/seed"
vol create k --from "$D/seed" >/dev/null
M=$(vol mount k)
k_full=$(t vol backup k --to "$D/bk")
read -r kb_full kb_full_size < <(stop_tar_start "$S" k "$D/k.tar")
M=$(vol mount k)
for d in $(seq 0 299); do echo "changed $d" >"$M/d$d/f1"; done
k_incr=$(t vol backup k --to "$D/bk")
read -r kb_incr kb_incr_size < <(stop_tar_start "$S" k "$D/k.tar")
k_full_size=$(stat -c %s "$D"/bk/*.full.*.tar)
k_incr_size=$(stat -c %s "$D"/bk/*.incr.*.tar)
vol umount k

# The table.
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
f3() { printf '%.3f' "$1"; }
echo
echo "## Barrier of a live snapshot, ${N} snapshots each (ms; p50 / p99 / max)"
printf '%-6s %-24s %-24s %-24s %-24s %-12s | %s\n' "dirty" "barrier" "stopped (all requests)" "sync (after)" "snapshot command" "dirty seen" "stop+tar+start: s, tar bytes"
for mib in 0 100 1024; do
  awk -v m="$mib" '$1 == m' "$D/barrier.txt" >"$D/b.txt"
  col() { python3 "$PY" stats "$D/b.txt" "$1" | awk '{ printf "%.1f / %.1f / %.1f", $1 / 1000, $2 / 1000, $3 / 1000 }'; }
  seen=$(python3 "$PY" stats "$D/b.txt" 5 | awk '{ printf "%d MiB", $4 }')
  base=$(python3 "$PY" stats "$D/base$mib.txt" 0 | awk '{ printf "%.2f", $1 }')
  bsz=$(awk 'NR == 1 { print $2 }' "$D/base$mib.txt")
  printf '%-6s %-24s %-24s %-24s %-24s %-12s | %s s, %s\n' "${mib}M" "$(col 1)" "$(col 2)" "$(col 3)" "$(col 4)" "$seen" "$base" "$bsz"
done
echo "(dirty seen: Dirty+Writeback of /proc/meminfo just before each snapshot, mean; stop+tar+start: median of 3)"
echo
echo "## A writer of 4 KiB blocks over a 256 MiB file, fsync each MiB, ${SECS} s"
printf '%-22s %8s %-26s %-26s %s\n' "snapshots" "MB/s" "write p50/p99/max (ms)" "fsync p50/p99/max (ms)" "worst op near a snapshot (ms)"
for run in none every10; do
  read -r mbs w50 w99 wmx f50 f99 fmx worst < <(python3 "$PY" around "$D/writer-$run.json" "$D/snaps-$run.txt")
  printf '%-22s %8s %-26s %-26s %s\n' "$run" "$mbs" "$w50 / $w99 / $wmx" "$f50 / $f99 / $fmx" "$worst"
done
python3 "$PY" stats "$D/writer-snaps.txt" 0 | awk '{ printf "(those snapshots: barrier p50 %.1f ms, max %.1f ms;", $1 / 1000, $3 / 1000 }'
python3 "$PY" stats "$D/writer-snaps.txt" 3 | awk '{ printf " command p50 %.1f ms, max %.1f ms)\n", $1 / 1000, $3 / 1000 }'
echo "stop+tar+start of that volume: $(f3 "$w_base") s (writer stopped for it), tar $w_size bytes"
echo
echo "## First 4 KiB writes to a 1 GiB file after a snapshot (ms; median of 3, max)"
printf '%-6s %-16s %-16s %-16s %-16s %-16s %-16s | %s\n' "store" "held fd: write" "its fsync" "2nd write" "its fsync" "open+write" "2nd write" "stop+tar+start: s, tar bytes"
for fs in ext4 xfs; do
  c() { python3 "$PY" stats "$D/first-$fs.txt" "$1" | awk '{ printf "%.2f, %.2f", $1, $3 }'; }
  read -r fb fbs <"$D/first-base-$fs.txt"
  printf '%-6s %-16s %-16s %-16s %-16s %-16s %-16s | %s s, %s\n' "$fs" "$(c 0)" "$(c 1)" "$(c 2)" "$(c 3)" "$(c 4)" "$(c 5)" "$(f3 "$fb")" "$fbs"
done
echo
echo "## backup of a 30,000-file volume (seconds, tar bytes)"
printf '%-30s %10s %12s | %s\n' "run" "backup s" "tar bytes" "stop+tar+start: s, tar bytes"
printf '%-30s %10s %12s | %s s, %s\n' "full (first run)" "$(f3 "$k_full")" "$k_full_size" "$(f3 "$kb_full")" "$kb_full_size"
printf '%-30s %10s %12s | %s s, %s\n' "incremental (300 files changed)" "$(f3 "$k_incr")" "$k_incr_size" "$(f3 "$kb_incr")" "$kb_incr_size"
