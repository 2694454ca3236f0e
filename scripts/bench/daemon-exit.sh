#!/usr/bin/env bash
# What a daemon costs after `umount`, beside whatever the host does next
# (often the next mount): three layers of 1,000 directories of 10 files
# are walked (`ls -lR`) through the daemon, then unmounted; prints the
# daemon's CPU from the unmount to its end (perf stat) and how long after
# the unmount began it was gone, ROUNDS times (default 3) for each binary.
#   scripts/bench/daemon-exit.sh [BINARY ...]   (default: target/release/layerfs
#   and fuse-overlayfs)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "daemon-exit.sh: needs root" >&2; exit 1; }
command -v perf >/dev/null || { echo "daemon-exit.sh: needs perf (linux-perf)" >&2; exit 1; }
if [ -z "${EXIT_IN_NS:-}" ]; then
  exec env EXIT_IN_NS=1 unshare -m --propagation private "$0" "$@"
fi
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(target/release/layerfs "$(command -v fuse-overlayfs)")
dir=$(mktemp -d /tmp/layerfs-exit.XXXXXX)
trap 'umount "$dir/m" 2>/dev/null || true; rm -rf "$dir"' EXIT
python3 - "$dir" <<'PY'
import os, sys
for l in range(3):
    for d in range(1000):
        p = f"{sys.argv[1]}/l{l}/d{d}"
        os.makedirs(p)
        for f in range(10):
            open(f"{p}/f{f}", "w").close()
PY
for round in $(seq "${ROUNDS:-3}"); do
  for bin in "${bins[@]}"; do
    rm -rf "$dir/u" "$dir/w"; mkdir -p "$dir/u" "$dir/w" "$dir/m"
    "$bin" -o "lowerdir=$dir/l0:$dir/l1:$dir/l2,upperdir=$dir/u,workdir=$dir/w" "$dir/m" 2>/dev/null
    pid=$(pgrep -n -f "upperdir=$dir/u")
    ls -lR "$dir/m" >/dev/null
    perf stat -e task-clock -p "$pid" -o "$dir/stat" & stat=$!
    sleep 0.2
    t0=$(date +%s%N)
    umount "$dir/m"
    while kill -0 "$pid" 2>/dev/null && ! grep -qs '^State:.*Z' "/proc/$pid/status"; do sleep 0.001; done
    t1=$(date +%s%N)
    wait "$stat" 2>/dev/null || true
    cpu=$(awk '/task-clock/ {print $1}' "$dir/stat")
    printf '%-40s round %s: CPU after umount %6s ms, gone %5d us after it began\n' \
      "$(basename "$bin")" "$round" "$cpu" $(( (t1 - t0) / 1000 ))
  done
done
