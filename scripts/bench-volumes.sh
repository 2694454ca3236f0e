#!/usr/bin/env bash
# Volume figures for issue 11, in one run, as ratios: creating a volume from
# a 30,000-file seed against `cp -a` of the seed, snapshot and clone time,
# `export --since` after changing 1% of the files against a full export, and
# writing 2,000 small files into a mounted volume against a plain
# directory. Needs root; runs in a private mount namespace.
#   scripts/bench-volumes.sh [DIR]   (scratch dir, default a new temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${LAYERFS_BENCH_NS:-}" != 1 ]; then
  cargo build --release -q
  exec env LAYERFS_BENCH_NS=1 unshare -m --propagation private "$0" "$@"
fi
B="${CARGO_TARGET_DIR:-$PWD/target}/release/layerfs-volume"
D="${1:-$(mktemp -d /tmp/layerfs-vbench.XXXXXX)}"
S="$D/store"
trap 'for m in $(grep -o " $D[^ ]*" /proc/self/mounts | sort -r); do umount -l "$m"; done; rm -rf "$D"' EXIT
mkdir -p "$D/seed" "$D/plain"
for d in $(seq 0 2999); do
  mkdir "$D/seed/d$d"
  for f in 0 1 2 3 4 5 6 7 8 9; do echo "file $d $f" > "$D/seed/d$d/f$f"; done
done
sync
# Seconds a command takes.
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
ratio() { echo "scale=4; $1 / $2" | bc; }

empty=$(t "$B" --store "$S" create empty)
seeded=$(t "$B" --store "$S" create seeded --from "$D/seed")
cpa=$(t cp -a "$D/seed" "$D/copy")
snap=$(t "$B" --store "$S" snapshot seeded s1)
clone=$(t "$B" --store "$S" clone seeded@s1 cl)
M=$("$B" --store "$S" mount seeded)
for d in $(seq 0 99); do echo changed > "$M/d$d/f1"; rm "$M/d$d/f2"; done
for d in $(seq 100 199); do echo more >> "$M/d$d/f3"; done
"$B" --store "$S" umount seeded
E=$("$B" --store "$S" mount empty)
w_vol=$(t sh -c "for i in \$(seq 2000); do echo \$i > $E/\$i; done")
w_dir=$(t sh -c "for i in \$(seq 2000); do echo \$i > $D/plain/\$i; done")
"$B" --store "$S" umount empty
full=$(t "$B" --store "$S" export seeded -o "$D/full.tar")
inc=$(t "$B" --store "$S" export seeded --since s1 -o "$D/inc.tar")
fsz=$(stat -c %s "$D/full.tar"); isz=$(stat -c %s "$D/inc.tar")

printf '%-44s %10s %10s\n' "what" "seconds" "ratio"
printf '%-44s %10.3f %10s\n' "create empty volume" "$empty" "1.00"
printf '%-44s %10.3f %10.2f\n' "create from 30,000-file seed (vs empty)" "$seeded" "$(ratio "$seeded" "$empty")"
printf '%-44s %10.3f %10.2f\n' "cp -a of the seed (vs create from seed)" "$cpa" "$(ratio "$cpa" "$seeded")"
printf '%-44s %10.3f\n' "snapshot" "$snap"
printf '%-44s %10.3f\n' "clone" "$clone"
printf '%-44s %10.3f %10s\n' "export full ($fsz bytes)" "$full" "1.00"
printf '%-44s %10.3f %10.4f\n' "export --since, 1% changed ($isz bytes)" "$inc" "$(ratio "$isz" "$fsz")"
printf '%-44s %10.3f %10.2f\n' "2,000 small writes: volume (vs plain dir)" "$w_vol" "$(ratio "$w_vol" "$w_dir")"
printf '%-44s %10.3f %10s\n' "2,000 small writes: plain dir" "$w_dir" "1.00"
"$B" --store "$S" rm cl
