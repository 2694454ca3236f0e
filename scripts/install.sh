#!/usr/bin/env bash
# Installs layerfs where mount(8) and mount.fuse3 find it, with its manual
# page. PREFIX defaults to /usr/local.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${PREFIX:-/usr/local}
cargo build --release -q
install -D -m 0755 target/release/layerfs "$prefix/bin/layerfs"
install -d "$prefix/share/man/man1"
target/release/layerfs --man > "$prefix/share/man/man1/layerfs.1"
echo "installed $prefix/bin/layerfs and $prefix/share/man/man1/layerfs.1"
