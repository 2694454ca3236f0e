#!/usr/bin/env bash
# Installs layerfs where mount(8) and mount.fuse3 find it, with its manual
# page layerfs(8), and layerfs-volume beside it (it runs the layerfs it
# finds there). PREFIX defaults to /usr/local.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ci/toolchain.sh
prefix=${PREFIX:-/usr/local}
build_release
install -D -m 0755 "$bin" "$prefix/bin/layerfs"
# The workspace's second crate; build_release's cargo build makes both.
install -D -m 0755 "${bin%/*}/layerfs-volume" "$prefix/bin/layerfs-volume"
install -d "$prefix/share/man/man8"
"$bin" --man > "$prefix/share/man/man8/layerfs.8"
# An older install put the page in section 1.
rm -f "$prefix/share/man/man1/layerfs.1"
echo "installed $prefix/bin/layerfs, $prefix/bin/layerfs-volume and" \
     "$prefix/share/man/man8/layerfs.8 (man 8 layerfs)"
