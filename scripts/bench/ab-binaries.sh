#!/usr/bin/env bash
# Compares two layerfs binaries on the request path, interleaved in one
# run (so that machine noise falls on both alike): warm find, ls -lR, tar
# and du over a 3,000-file lower tree, create+delete of 500 files, and
# copy-up appends. Prints the median of 7 rounds of each and new/old.
# Needs root (it mounts, in a private mount namespace of its own).
#   scripts/bench/ab-binaries.sh OLD_LAYERFS NEW_LAYERFS [EXTRA_MOUNT_OPTS]
#   e.g. scripts/bench/ab-binaries.sh /tmp/layerfs-before target/release/layerfs ,passthrough=off
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 OLD_LAYERFS NEW_LAYERFS [,EXTRA,OPTS]" >&2
    exit 2
fi
old=$(realpath "$1")
new=$(realpath "$2")
extra=${3:-}
for b in "$old" "$new"; do
    [ -x "$b" ] || { echo "$0: $b is not an executable" >&2; exit 2; }
done
if [ -z "${AB_IN_NS:-}" ]; then
    exec env AB_IN_NS=1 unshare -m --propagation private "$0" "$@"
fi
dir=$(mktemp -d /tmp/layerfs-ab.XXXXXX)
cleanup() {
    for v in old new; do umount "$dir/m-$v" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
mkdir -p "$dir/l/t"
for d in $(seq 1 300); do
    mkdir "$dir/l/t/d$d"
    for f in $(seq 1 10); do echo "file $d $f" > "$dir/l/t/d$d/f$f"; done
done
for v in old new; do
    mkdir "$dir/u-$v" "$dir/w-$v" "$dir/m-$v"
    bin=$old; [ $v = new ] && bin=$new
    "$bin" -o "lowerdir=$dir/l,upperdir=$dir/u-$v,workdir=$dir/w-$v$extra" "$dir/m-$v" 2>/dev/null
done

# Microseconds one shell command takes.
usecs() {
    local s e
    s=$(date +%s%N)
    eval "$1" >/dev/null 2>&1
    e=$(date +%s%N)
    echo $(((e - s) / 1000))
}
median() { tr ' ' '\n' | grep . | sort -n | sed -n 4p; }

# One row: $1 names it; $2 is the command with @M@ for the mountpoint and
# @R@ for the round number.
row() {
    local name=$1 cmd=$2 ro="" rn="" r
    for v in old new; do
        c=${cmd//@M@/$dir/m-$v}
        eval "${c//@R@/0}" >/dev/null 2>&1 || true
    done
    for r in 1 2 3 4 5 6 7; do
        c=${cmd//@M@/$dir/m-old}
        ro="$ro $(usecs "${c//@R@/$r}")"
        c=${cmd//@M@/$dir/m-new}
        rn="$rn $(usecs "${c//@R@/$r}")"
    done
    local mo mn
    mo=$(echo "$ro" | median)
    mn=$(echo "$rn" | median)
    printf '%-36s old %9d us  new %9d us  new/old %s\n' "$name" "$mo" "$mn" \
        "$(echo "scale=2; $mn / $mo" | bc)"
}

echo "old: $old"
echo "new: $new"
echo "options: lowerdir,upperdir,workdir$extra"
row "find -type f (warm)" "find @M@ -type f"
row "ls -lR (warm)" "ls -lR @M@"
row "tar cf of the tree (warm)" "tar cf - -C @M@ t | cat"
row "du -s (warm)" "du -s @M@"
row "create+delete 500 files" "python3 -c '
import os, sys
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
for i in range(500):
    fd = os.open(f\"{d}/f{i}\", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, b\"x\" * 100)
    os.close(fd)
for i in range(500):
    os.unlink(f\"{d}/f{i}\")
' @M@/cd-@R@"
row "copy-up: append to 10 lower files" "for f in 1 2 3 4 5 6 7 8 9 10; do echo y >> @M@/t/d\$((@R@ * 40 + f))/f1; done"
