# What the volume benchmarks (bench-volumes.sh, bench-live.sh) share;
# sourced by them from the repository's root.

# Builds the release binaries and runs the calling script again in a
# private mount namespace, so that no mount of its can leak to the host's.
# Call as: in_private_namespace "$0" "$@"
in_private_namespace() {
  if [ "${LAYERFS_BENCH_NS:-}" != 1 ]; then
    cargo build --release -q
    exec env LAYERFS_BENCH_NS=1 unshare -m --propagation private "$@"
  fi
}

# The layerfs-volume binary that build made.
VOLUME_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/layerfs-volume"

# Unmounts everything mounted under a directory, deepest first (a volume
# before the loop-mounted store it is on).
umount_under() {
  local m
  for m in $(grep -o " $1[^ ]*" /proc/self/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
}

# The 30,000-file seed in a new directory: 3,000 directories of 10 small
# files.
make_seed() {
  local d f
  mkdir -p "$1"
  for d in $(seq 0 2999); do
    mkdir "$1/d$d"
    for f in 0 1 2 3 4 5 6 7 8 9; do echo "file $d $f" >"$1/d$d/f$f"; done
  done
  sync
}

# Seconds a command takes (its output dropped).
t() {
  local s e
  s=$(date +%s.%N)
  "$@" >/dev/null || return 1
  e=$(date +%s.%N)
  echo "$e - $s" | bc
}
