#!/usr/bin/env bash
# The cost of one FUSE round trip: a loop of getxattr of an absent name on
# a lower file (layerfs answers it from the inode, without a syscall;
# fuse-overlayfs makes one), 20,000 calls, three times, with the caller
# and the daemon free to run on any CPU, then both pinned to CPU 0.
# Prints microseconds per call for each binary (kernel overlayfs, which
# makes no round trip, for reference).
#   scripts/bench/round-trip.sh [BINARY ...]   (default: target/release/layerfs
#   and fuse-overlayfs)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "round-trip.sh: needs root" >&2; exit 1; }
if [ -z "${RT_IN_NS:-}" ]; then
  exec env RT_IN_NS=1 unshare -m --propagation private "$0" "$@"
fi
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(target/release/layerfs "$(command -v fuse-overlayfs)")
dir=$(mktemp -d /tmp/layerfs-rt.XXXXXX)
trap 'umount "$dir/m" 2>/dev/null || true; rm -rf "$dir"' EXIT
mkdir -p "$dir/l"
echo x >"$dir/l/f"
loop() {
  $1 python3 - "$dir/m/f" <<'PY'
import os, sys, time
p, n, runs = sys.argv[1], 20000, []
for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(n):
        try:
            os.getxattr(p, "user.absent")
        except OSError:
            pass
    runs.append((time.perf_counter() - t0) / n * 1e6)
print(" ".join(f"{r:5.1f}" for r in runs), end="")
PY
}
for pin in "" "taskset -c 0"; do
  for bin in kernel "${bins[@]}"; do
    rm -rf "$dir/u" "$dir/w"; mkdir -p "$dir/u" "$dir/w" "$dir/m"
    opts="lowerdir=$dir/l,upperdir=$dir/u,workdir=$dir/w"
    if [ "$bin" = kernel ]; then
      mount -t overlay overlay -o "$opts" "$dir/m"
    else
      $pin "$bin" -o "$opts" "$dir/m" 2>/dev/null
    fi
    where="any CPU"
    [ -z "$pin" ] || where="pinned to CPU 0"
    printf '%-24s %-16s us per call: %s\n' "$(basename "$bin")" "$where" "$(loop "$pin")"
    umount "$dir/m"
    sleep 0.3
  done
done
